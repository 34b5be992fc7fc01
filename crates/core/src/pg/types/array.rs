//! Arrays: parameters of the array types below (binary, element by element with the element
//! type's encoder, then written as an array literal with every element quoted); text rows of
//! the array types pg-types parses (nested, element by element with the element type's text
//! decoder); binary rows of the array types below.

use super::{decode_binary, decode_text, encode_scalar, oid, text::as_text, EncodeResult};
use crate::error::Result;
use crate::value::{Cell, Param};

/// Element type of the array types we encode and decode in binary.
pub(super) fn array_element(array_oid: u32) -> Option<u32> {
  Some(match array_oid {
    1000 => oid::BOOL,
    1001 => oid::BYTEA,
    1002 => oid::CHAR,
    1003 => oid::NAME,
    1005 => oid::INT2,
    1007 => oid::INT4,
    1016 => oid::INT8,
    1009 => oid::TEXT,
    1028 => oid::OID,
    199 => oid::JSON,
    1021 => oid::FLOAT4,
    1022 => oid::FLOAT8,
    1014 => oid::BPCHAR,
    1015 => oid::VARCHAR,
    1182 => oid::DATE,
    1115 => oid::TIMESTAMP,
    1185 => oid::TIMESTAMPTZ,
    1231 => oid::NUMERIC,
    2951 => oid::UUID,
    3807 => oid::JSONB,
    _ => return None,
  })
}

/// The array types node-postgres (`pg-types`) parses into JS arrays, and their element
/// types; any other array (char[], name[], an enum's…) comes back as the server's text.
pub(super) fn parsed_array_element(t: u32) -> Option<u32> {
  Some(match t {
    1000 => oid::BOOL,
    1001 => oid::BYTEA,
    1005 => oid::INT2,
    1007 => oid::INT4,
    1028 => oid::OID,
    1016 => oid::INT8,
    1017 => oid::POINT,
    1021 => oid::FLOAT4,
    1022 => oid::FLOAT8,
    1231 => oid::NUMERIC,
    // Parsed as arrays of strings.
    1014 | 1015 | 1008 | 1009 | 1040 | 1041 | 651 | 3907 | 2951 | 791 | 1183 | 1270 => oid::TEXT,
    1115 => oid::TIMESTAMP,
    1182 => oid::DATE,
    1185 => oid::TIMESTAMPTZ,
    1187 => oid::INTERVAL,
    199 => oid::JSON,
    3807 => oid::JSONB,
    _ => return None,
  })
}

// ---------------------------------------------------------------------------------------------
// Parameters

/// A length as the wire's int4.
fn len_i32(n: usize) -> std::result::Result<i32, String> {
  i32::try_from(n).map_err(|_| "too long for PostgreSQL (more than 2^31 - 1)".to_owned())
}

/// A one-dimensional array of `elem` in binary (what is accepted is each element's encoder's
/// judgement; a textual element is its text).
pub(super) fn encode_array(param: &Param, elem: u32, textual: bool) -> EncodeResult {
  let items = match param {
    Param::Array(items) => items,
    _ => return Err("expected an array".into()),
  };
  let mut out = Vec::with_capacity(20 + items.len() * 8);
  let has_null = items.iter().any(|p| matches!(p, Param::Null));
  out.extend_from_slice(&1i32.to_be_bytes()); // dimensions
  out.extend_from_slice(&i32::from(has_null).to_be_bytes());
  out.extend_from_slice(&elem.to_be_bytes());
  out.extend_from_slice(&len_i32(items.len())?.to_be_bytes());
  out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
  for item in items {
    match item {
      Param::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
      p => {
        let bytes = if textual {
          as_text(p)?.into_bytes()
        } else {
          encode_scalar(p, elem, "array element")?
        };
        out.extend_from_slice(&len_i32(bytes.len())?.to_be_bytes());
        out.extend_from_slice(&bytes);
      }
    }
  }
  Ok(out)
}

/// `{a,"b c",NULL}`: every element quoted, so no element text needs inspecting.
pub(super) fn array_literal(
  items: &[Param],
  element: &dyn Fn(&Param) -> Result<Option<String>>,
) -> Result<String> {
  let mut out = String::from("{");
  for (i, item) in items.iter().enumerate() {
    if i > 0 {
      out.push(',');
    }
    match element(item)? {
      None => out.push_str("NULL"),
      Some(s) => {
        out.push('"');
        for c in s.chars() {
          if c == '"' || c == '\\' {
            out.push('\\');
          }
          out.push(c);
        }
        out.push('"');
      }
    }
  }
  out.push('}');
  Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Rows in text format

/// PostgreSQL's array text (`{1,2}`, `{{1,2},{3,4}}`, `{"a b",NULL}`, optionally prefixed by
/// `[1:2]=` bounds), nested as node-postgres nests it.
pub(super) fn parse_array(s: &str, elem: u32) -> Option<Cell> {
  let s = match s.strip_prefix('[') {
    Some(_) => &s[s.find('=')? + 1..],
    None => s,
  };
  let b = s.as_bytes();
  let mut pos = 0;
  let cell = parse_array_at(b, &mut pos, elem)?;
  (pos == b.len()).then_some(cell)
}

fn parse_array_at(b: &[u8], pos: &mut usize, elem: u32) -> Option<Cell> {
  if b.get(*pos) != Some(&b'{') {
    return None;
  }
  *pos += 1;
  let mut items = Vec::new();
  if b.get(*pos) == Some(&b'}') {
    *pos += 1;
    return Some(Cell::Array(items));
  }
  loop {
    match b.get(*pos)? {
      b'{' => items.push(parse_array_at(b, pos, elem)?),
      b'"' => {
        *pos += 1;
        let mut raw = Vec::new();
        loop {
          match *b.get(*pos)? {
            b'\\' => {
              raw.push(*b.get(*pos + 1)?);
              *pos += 2;
            }
            b'"' => {
              *pos += 1;
              break;
            }
            c => {
              raw.push(c);
              *pos += 1;
            }
          }
        }
        items.push(element(&String::from_utf8(raw).ok()?, elem)?);
      }
      _ => {
        let start = *pos;
        while !matches!(b.get(*pos)?, b',' | b'}') {
          *pos += 1;
        }
        let word = std::str::from_utf8(&b[start..*pos]).ok()?;
        if word.eq_ignore_ascii_case("NULL") {
          items.push(Cell::Null);
        } else {
          items.push(element(word, elem)?);
        }
      }
    }
    match b.get(*pos)? {
      b',' => *pos += 1,
      b'}' => {
        *pos += 1;
        return Some(Cell::Array(items));
      }
      _ => return None,
    }
  }
}

fn element(s: &str, elem: u32) -> Option<Cell> {
  match decode_text(s, elem).ok()? {
    // node-postgres parses numeric[] elements with parseFloat (unlike a numeric column).
    Cell::Text(t) if elem == oid::NUMERIC => Some(Cell::Number(
      super::numeric::parse_float(&t).unwrap_or(f64::NAN),
    )),
    other => Some(other),
  }
}

// ---------------------------------------------------------------------------------------------
// Rows in binary format

/// ndim, has-null flag, element type, then each dimension's length and lower bound, then each
/// element (length, bytes; -1 for NULL), nested as node-postgres nests it.
pub(super) fn decode_array(b: &[u8], elem: u32) -> Option<Cell> {
  let i32_at =
    |i: usize| -> Option<i32> { Some(i32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?)) };
  let ndim = i32_at(0)?;
  if ndim == 0 {
    return Some(Cell::Array(vec![]));
  }
  let dims: Vec<usize> = (0..usize::try_from(ndim).ok()?)
    .map(|d| i32_at(12 + d * 8).and_then(|n| usize::try_from(n).ok()))
    .collect::<Option<_>>()?;
  let mut pos = 12 + dims.len() * 8;
  let total: usize = dims.iter().product();
  let mut items = Vec::with_capacity(total);
  for _ in 0..total {
    let n = i32_at(pos)?;
    pos += 4;
    if let Ok(n) = usize::try_from(n) {
      let slice = b.get(pos..pos + n)?;
      pos += n;
      let cell = match decode_binary(slice, elem).ok()? {
        // node-postgres parses numeric[] elements with parseFloat (unlike a numeric column).
        Cell::Text(t) if elem == oid::NUMERIC => Cell::Number(t.parse().unwrap_or(f64::NAN)),
        other => other,
      };
      items.push(cell);
    } else {
      items.push(Cell::Null);
    }
  }
  // Nest row-major, innermost dimension first, as node-postgres does.
  for &len in dims[1..].iter().rev() {
    items = items
      .chunks(len.max(1))
      .map(|c| Cell::Array(c.to_vec()))
      .collect();
  }
  Some(Cell::Array(items))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn arrays_parse_nested_quoted_and_null() {
    assert_eq!(
      parse_array(r#"{{1,2},{3,NULL}}"#, oid::INT4),
      Some(Cell::Array(vec![
        Cell::Array(vec![Cell::Number(1.0), Cell::Number(2.0)]),
        Cell::Array(vec![Cell::Number(3.0), Cell::Null]),
      ]))
    );
    assert_eq!(
      parse_array(r#"{"a \"b\"","NULL",NULL,c}"#, oid::TEXT),
      Some(Cell::Array(vec![
        Cell::Text("a \"b\"".into()),
        Cell::Text("NULL".into()),
        Cell::Null,
        Cell::Text("c".into()),
      ]))
    );
    assert_eq!(parse_array("[0:1]={7,8}", oid::INT8).map(|_| ()), Some(()));
    assert_eq!(parse_array("{}", oid::INT4), Some(Cell::Array(vec![])));
  }

  #[test]
  fn array_parameters_in_binary() {
    let items = Param::Array(vec![Param::Number(1.0), Param::Null]);
    assert_eq!(
      encode_array(&items, oid::INT4, false),
      Ok(vec![
        0, 0, 0, 1, // one dimension
        0, 0, 0, 1, // has a NULL
        0, 0, 0, 23, // int4
        0, 0, 0, 2, // two elements
        0, 0, 0, 1, // lower bound
        0, 0, 0, 4, 0, 0, 0, 1, // 1
        0xff, 0xff, 0xff, 0xff, // NULL
      ])
    );
    assert_eq!(
      encode_array(&Param::Array(vec![Param::Number(1.0)]), oid::TEXT, true),
      Ok(vec![
        0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, b'1'
      ])
    );
    assert_eq!(
      encode_array(&Param::Array(vec![Param::Number(1e6)]), oid::INT2, false),
      Err("out of range for int2".into())
    );
    assert_eq!(
      encode_array(&Param::Text("{1}".into()), oid::INT4, false),
      Err("expected an array".into())
    );
  }

  #[test]
  fn array_literals_quote_every_element() {
    let items = [
      Param::Text(r#"a"b\c"#.into()),
      Param::Null,
      Param::Text("".into()),
      Param::Text("NULL".into()),
    ];
    let literal = array_literal(&items, &|p| {
      Ok(match p {
        Param::Null => None,
        Param::Text(s) => Some(s.clone()),
        _ => unreachable!(),
      })
    });
    assert_eq!(literal.unwrap(), r#"{"a\"b\\c",NULL,"","NULL"}"#);
    assert_eq!(array_literal(&[], &|_| Ok(None)).unwrap(), "{}");
  }

  #[test]
  fn array_rows_in_text_by_element_type() {
    // numeric[] elements as numbers (pg-types' parseFloat), unlike a numeric column.
    let Some(Cell::Array(nums)) = parse_array("{1.50,NaN,-2}", oid::NUMERIC) else {
      panic!("numeric[]");
    };
    assert_eq!(nums[0], Cell::Number(1.5));
    assert!(matches!(nums[1], Cell::Number(n) if n.is_nan()));
    assert_eq!(nums[2], Cell::Number(-2.0));
    assert_eq!(
      parse_array("[0:1]={7,8}", oid::INT8),
      Some(Cell::Array(vec![
        Cell::Text("7".into()),
        Cell::Text("8".into())
      ]))
    );
    assert_eq!(
      parse_array(r#"{"1 day","00:00:01"}"#, oid::INTERVAL),
      Some(Cell::Array(vec![
        Cell::Json(serde_json::json!({ "days": 1.0 })),
        Cell::Json(serde_json::json!({ "seconds": 1.0 })),
      ]))
    );
    assert_eq!(
      parse_array(r#"{"(1,2)"}"#, oid::POINT),
      Some(Cell::Array(vec![Cell::Json(
        serde_json::json!({ "x": 1.0, "y": 2.0 })
      )]))
    );
    assert_eq!(
      parse_array(r#"{"\\x01ff"}"#, oid::BYTEA),
      Some(Cell::Array(vec![Cell::Bytes(vec![1, 0xff])]))
    );
    assert_eq!(
      parse_array("{t,f}", oid::BOOL),
      Some(Cell::Array(vec![Cell::Bool(true), Cell::Bool(false)]))
    );
    // An element its type refuses, and malformed literals.
    assert_eq!(parse_array("{1,x}", oid::INT4), None);
    assert_eq!(parse_array("{1,2", oid::INT4), None);
    assert_eq!(parse_array("{1,2}x", oid::INT4), None);
    assert_eq!(parse_array("1,2", oid::INT4), None);
    assert_eq!(parse_array(r#"{"a}"#, oid::TEXT), None);
  }

  /// A binary array: header, each dimension's (length, lower bound), then (length, bytes).
  fn binary_array(elem: u32, dims: &[i32], items: &[Option<&[u8]>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&i32::try_from(dims.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&i32::from(items.iter().any(Option::is_none)).to_be_bytes());
    out.extend_from_slice(&elem.to_be_bytes());
    for d in dims {
      out.extend_from_slice(&d.to_be_bytes());
      out.extend_from_slice(&1i32.to_be_bytes());
    }
    for item in items {
      match item {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(b) => {
          out.extend_from_slice(&i32::try_from(b.len()).unwrap().to_be_bytes());
          out.extend_from_slice(b);
        }
      }
    }
    out
  }

  #[test]
  fn array_rows_in_binary() {
    let one = 1i32.to_be_bytes();
    let two = 2i32.to_be_bytes();
    let three = 3i32.to_be_bytes();
    let b = binary_array(
      oid::INT4,
      &[2, 2],
      &[Some(&one), Some(&two), Some(&three), None],
    );
    assert_eq!(
      decode_array(&b, oid::INT4),
      Some(Cell::Array(vec![
        Cell::Array(vec![Cell::Number(1.0), Cell::Number(2.0)]),
        Cell::Array(vec![Cell::Number(3.0), Cell::Null]),
      ]))
    );
    assert_eq!(decode_array(&[0; 12], oid::INT4), Some(Cell::Array(vec![])));
    let half = numeric_of("0.5");
    assert_eq!(
      decode_array(
        &binary_array(oid::NUMERIC, &[1], &[Some(&half)]),
        oid::NUMERIC
      ),
      Some(Cell::Array(vec![Cell::Number(0.5)]))
    );
    assert_eq!(
      decode_array(&binary_array(oid::TEXT, &[1], &[Some(b"a")]), oid::TEXT),
      Some(Cell::Array(vec![Cell::Text("a".into())]))
    );
    // Truncated, and an element of the wrong length.
    assert_eq!(decode_array(&b[..b.len() - 5], oid::INT4), None);
    assert_eq!(
      decode_array(&binary_array(oid::INT4, &[1], &[Some(&[1, 2])]), oid::INT4),
      None
    );
  }

  fn numeric_of(s: &str) -> Vec<u8> {
    super::super::numeric::encode_numeric(&Param::Text(s.into())).unwrap()
  }
}
