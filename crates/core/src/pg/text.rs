//! The text side of the wire: parameters as the text Bind carries (the service's own as plain
//! text, its SQL casting each; a callback's as the text of the type the server inferred), and
//! text-format rows decoded by column type the way node-postgres (pg-types) parses them.
//!
//! A callback's non-string parameter is first encoded by the binary encoder of its described
//! type (so the same values are accepted and refused as before), then written as the text
//! PostgreSQL's input function reads back to that same value.

use super::codec::{
  array_element, as_json, as_text, decode_numeric, encode, encode_scalar, is_known_oid, is_textual,
  is_textual_oid, oid, type_name, type_oid, PG_EPOCH_DAYS, PG_EPOCH_MICROS,
};
use crate::error::{Error, Result};
use crate::value::{civil, format_number, iso_string, Cell, Param};
use sqlx::postgres::PgTypeInfo;

/// Text bound as a parameter: PostgreSQL text cannot hold NUL, and the server's answer for one
/// is given here, before anything is sent.
fn checked(s: String) -> Result<String> {
  if s.contains('\0') {
    return Err(Error::Database {
      sqlstate: Some("22021".into()),
      message: "invalid byte sequence for encoding \"UTF8\": 0x00".into(),
    });
  }
  Ok(s)
}

/// A parameter of the service's own SQL, where every placeholder carries a cast (`$1::int4`):
/// its plain text form (`None`: NULL).
pub(crate) fn param_text(p: &Param) -> Result<Option<String>> {
  Ok(match p {
    Param::Null => None,
    Param::Array(items) => Some(checked(array_literal(items, &|item| {
      Ok(match item {
        Param::Null => None,
        other => Some(plain_text(other)?),
      })
    })?)?),
    other => Some(checked(plain_text(other)?)?),
  })
}

fn plain_text(p: &Param) -> Result<String> {
  Ok(match p {
    Param::Bool(b) => if *b { "t" } else { "f" }.into(),
    Param::Number(n) => float_text(*n),
    Param::Bytes(b) => hex(b),
    Param::Date(ms) => iso_string(*ms).ok_or_else(|| Error::invalid("invalid Date"))?,
    other => as_text(other).map_err(Error::invalid)?,
  })
}

/// A callback's parameter as the text of the type the server inferred for it (`None`: NULL).
/// A string or a BigInt goes as it is, as node-postgres sends it (the type's input function
/// judges it); any other JS value is checked against the type and written as its text.
pub(crate) fn typed(p: &Param, ty: &PgTypeInfo, index: usize) -> Result<Option<String>> {
  match p {
    Param::Null => return Ok(None),
    Param::Text(s) | Param::BigInt(s) => return checked(s.clone()).map(Some),
    // NaN and ±Infinity as node-postgres writes them (`String(n)`): float, numeric, timestamp
    // and date read them; other types refuse them, server-side, as they would its.
    Param::Number(n) if !n.is_finite() => return Ok(Some(float_text(*n))),
    _ => {}
  }
  let refuse = |why: String| {
    Error::invalid(format!(
      "parameter ${} cannot be sent as {}: {why}",
      index + 1,
      type_name(ty)
    ))
  };
  // The binary encoder decides what is accepted.
  let bytes = encode(p, ty).map_err(refuse)?;
  let t = type_oid(ty);
  let text = if let Some(elem) = array_element(t) {
    let Param::Array(items) = p else {
      return Err(refuse("expected an array".into()));
    };
    array_literal(items, &|item| {
      Ok(match item {
        Param::Null => None,
        other if is_textual_oid(elem) => Some(as_text(other).map_err(&refuse)?),
        other => {
          let b = encode_scalar(other, elem, "array element").map_err(&refuse)?;
          Some(scalar_text(other, &b, elem))
        }
      })
    })?
  } else if let (Param::Array(items), false) = (p, is_known_oid(t)) {
    // An array of a type we do not know (an enum[]…): its elements as text.
    array_literal(items, &|item| {
      Ok(match item {
        Param::Null => None,
        other => Some(as_text(other).map_err(&refuse)?),
      })
    })?
  } else if is_textual(ty) {
    as_text(p).map_err(refuse)?
  } else {
    scalar_text(p, &bytes, t)
  };
  checked(text).map(Some)
}

/// The text form of a value already encoded in binary as type `t`.
fn scalar_text(p: &Param, b: &[u8], t: u32) -> String {
  let be4 = || <[u8; 4]>::try_from(b).unwrap_or_default();
  let be8 = || <[u8; 8]>::try_from(b).unwrap_or_default();
  match t {
    oid::BOOL => if b.first() == Some(&1) { "t" } else { "f" }.into(),
    oid::INT2 => i16::from_be_bytes(<[u8; 2]>::try_from(b).unwrap_or_default()).to_string(),
    oid::INT4 => i32::from_be_bytes(be4()).to_string(),
    oid::OID => u32::from_be_bytes(be4()).to_string(),
    oid::INT8 => i64::from_be_bytes(be8()).to_string(),
    oid::FLOAT4 => float_text(f64::from(f32::from_be_bytes(be4()))),
    oid::FLOAT8 => float_text(f64::from_be_bytes(be8())),
    oid::NUMERIC => decode_numeric(b).unwrap_or_default(),
    oid::UUID => uuid::Uuid::from_slice(b)
      .map(|u| u.hyphenated().to_string())
      .unwrap_or_default(),
    oid::JSON => String::from_utf8_lossy(b).into_owned(),
    oid::JSONB => String::from_utf8_lossy(b.get(1..).unwrap_or_default()).into_owned(),
    oid::BYTEA => hex(b),
    oid::TIMESTAMPTZ | oid::TIMESTAMP => {
      timestamp_text(i64::from_be_bytes(be8()).saturating_add(PG_EPOCH_MICROS))
    }
    oid::DATE => {
      let days = i64::from(i32::from_be_bytes(be4())) + PG_EPOCH_DAYS;
      date_text(days)
    }
    // Types the binary encoder writes as text (json-like and textual ones are handled above).
    _ => as_json(p).unwrap_or_default(),
  }
}

/// `{a,"b c",NULL}`: every element quoted, so no element text needs inspecting.
fn array_literal(
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

/// Like JS `String(n)` for integers; otherwise the shortest text that reads back exactly.
fn float_text(n: f64) -> String {
  if n.is_nan() {
    "NaN".into()
  } else if n.is_infinite() {
    if n > 0.0 { "Infinity" } else { "-Infinity" }.into()
  } else {
    format_number(n)
  }
}

fn hex(b: &[u8]) -> String {
  let mut s = String::with_capacity(2 + b.len() * 2);
  s.push_str("\\x");
  for x in b {
    s.push_str(&format!("{x:02x}"));
  }
  s
}

/// Days since 1970 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
  let y = if m <= 2 { y - 1 } else { y };
  let era = y.div_euclid(400);
  let yoe = y.rem_euclid(400);
  let mp = if m > 2 { m - 3 } else { m + 9 };
  let doy = (153 * mp + 2) / 5 + d - 1;
  let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD`, with PostgreSQL's ` BC` for years before 1.
fn date_parts(days: i64) -> (String, &'static str) {
  let (y, m, d) = civil(days);
  if y <= 0 {
    (format!("{:04}-{m:02}-{d:02}", 1 - y), " BC")
  } else {
    (format!("{y:04}-{m:02}-{d:02}"), "")
  }
}

fn date_text(days: i64) -> String {
  let (date, era) = date_parts(days);
  format!("{date}{era}")
}

/// An instant in Unix microseconds as PostgreSQL reads it for timestamptz (UTC) and
/// timestamp (the offset is ignored there, which leaves the UTC wall time).
fn timestamp_text(micros: i64) -> String {
  let (days, in_day) = (
    micros.div_euclid(86_400_000_000),
    micros.rem_euclid(86_400_000_000),
  );
  let (date, era) = date_parts(days);
  let secs = in_day / 1_000_000;
  format!(
    "{date} {:02}:{:02}:{:02}.{:06}+00{era}",
    secs / 3600,
    secs / 60 % 60,
    secs % 60,
    in_day % 1_000_000
  )
}

// ---------------------------------------------------------------------------------------------
// Rows in text format

/// One column value in text format, by its type OID, as node-postgres parses it.
pub(crate) fn decode(s: &str, t: u32) -> Result<Cell> {
  let bad = || Error::Database {
    sqlstate: None,
    message: format!("could not decode a value of type oid {t}"),
  };
  if let Some(elem) = parsed_array_element(t) {
    return parse_array(s, elem).ok_or_else(bad);
  }
  Ok(match t {
    INTERVAL => parse_interval(s).ok_or_else(bad)?,
    POINT => parse_point(s).map_or(Cell::Null, Cell::Json),
    CIRCLE => parse_circle(s).map_or(Cell::Null, Cell::Json),
    oid::BOOL => Cell::Bool(s == "t"),
    oid::INT2 | oid::INT4 | oid::OID => Cell::Number(s.parse::<i64>().map_err(|_| bad())? as f64),
    oid::FLOAT4 | oid::FLOAT8 => Cell::Number(parse_float(s).ok_or_else(bad)?),
    oid::JSON | oid::JSONB => Cell::Json(serde_json::from_str(s).map_err(|_| bad())?),
    oid::BYTEA => Cell::Bytes(parse_bytea(s).ok_or_else(bad)?),
    oid::TIMESTAMPTZ | oid::TIMESTAMP => parse_timestamp(s).ok_or_else(bad)?,
    oid::DATE => match s {
      "infinity" => Cell::Number(f64::INFINITY),
      "-infinity" => Cell::Number(f64::NEG_INFINITY),
      _ => {
        let (days, rest) = parse_date(s).ok_or_else(bad)?;
        if !rest.is_empty() {
          return Err(bad());
        }
        Cell::Date((days * 86_400_000) as f64)
      }
    },
    // int8, numeric, uuid, the text types and every other type: the server's text, as is.
    _ => Cell::Text(s.to_owned()),
  })
}

const INTERVAL: u32 = 1186;
const POINT: u32 = 600;
const CIRCLE: u32 = 718;

/// The array types node-postgres (`pg-types`) parses into JS arrays, and their element
/// types; any other array (char[], name[], an enum's…) comes back as the server's text.
fn parsed_array_element(t: u32) -> Option<u32> {
  Some(match t {
    1000 => oid::BOOL,
    1001 => oid::BYTEA,
    1005 => oid::INT2,
    1007 => oid::INT4,
    1028 => oid::OID,
    1016 => oid::INT8,
    1017 => POINT,
    1021 => oid::FLOAT4,
    1022 => oid::FLOAT8,
    1231 => oid::NUMERIC,
    // Parsed as arrays of strings.
    1014 | 1015 | 1008 | 1009 | 1040 | 1041 | 651 | 3907 | 2951 | 791 | 1183 | 1270 => oid::TEXT,
    1115 => oid::TIMESTAMP,
    1182 => oid::DATE,
    1185 => oid::TIMESTAMPTZ,
    1187 => INTERVAL,
    199 => oid::JSON,
    3807 => oid::JSONB,
    _ => return None,
  })
}

/// An interval in IntervalStyle `postgres` (`1 year 2 mons -3 days -04:05:06.789`) as
/// node-postgres' `postgres-interval` makes it: only the non-zero fields of years, months,
/// days, hours, minutes, seconds and milliseconds (the time's sign applies to its parts).
fn parse_interval(s: &str) -> Option<Cell> {
  use serde_json::{Map, Number, Value};
  let mut out = Map::new();
  let mut put = |k: &str, v: f64| {
    if v != 0.0 {
      out.insert(
        k.into(),
        Number::from_f64(v).map_or(Value::Null, Value::Number),
      );
    }
  };
  let mut words = s.split_whitespace().peekable();
  while let Some(w) = words.next() {
    if w.contains(':') {
      let (neg, body) = match w.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, w.strip_prefix('+').unwrap_or(w)),
      };
      let mut parts = body.split(':');
      let h: f64 = parts.next()?.parse().ok()?;
      let m: f64 = parts.next()?.parse().ok()?;
      let sec = parts.next()?;
      let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
      let secs: f64 = whole.parse().ok()?;
      let ms = if frac.is_empty() {
        0.0
      } else {
        let padded = format!("{frac:0<6}");
        padded.get(..6)?.parse::<f64>().ok()? / 1000.0
      };
      let sign = if neg { -1.0 } else { 1.0 };
      put("hours", sign * h);
      put("minutes", sign * m);
      put("seconds", sign * secs);
      put("milliseconds", sign * ms);
      continue;
    }
    let n: f64 = w.parse().ok()?;
    let unit = words.next()?;
    let key = match unit.trim_end_matches('s') {
      "year" => "years",
      "mon" => "months",
      "day" => "days",
      _ => return None,
    };
    put(key, n);
  }
  // postgres-interval's order of fields.
  let order = [
    "years",
    "months",
    "days",
    "hours",
    "minutes",
    "seconds",
    "milliseconds",
  ];
  let mut sorted = Map::new();
  for k in order {
    if let Some(v) = out.remove(k) {
      sorted.insert(k.into(), v);
    }
  }
  Some(Cell::Json(Value::Object(sorted)))
}

fn numbers_in(s: &str) -> Vec<f64> {
  s.trim_matches(|c| matches!(c, '(' | ')' | '<' | '>'))
    .split(',')
    .map(|p| parse_float(p.trim_matches(|c| matches!(c, '(' | ')' | ' '))).unwrap_or(f64::NAN))
    .collect()
}

fn json_number(n: f64) -> serde_json::Value {
  serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// `(x,y)` as `{ x, y }` (pg-types' parsePoint).
fn parse_point(s: &str) -> Option<serde_json::Value> {
  if !s.starts_with('(') {
    return None;
  }
  let n = numbers_in(s);
  Some(serde_json::json!({ "x": json_number(*n.first()?), "y": json_number(*n.get(1)?) }))
}

/// `<(x,y),r>` as `{ x, y, radius }` (pg-types' parseCircle).
fn parse_circle(s: &str) -> Option<serde_json::Value> {
  if !s.starts_with('<') {
    return None;
  }
  let n = numbers_in(s);
  Some(serde_json::json!({
    "x": json_number(*n.first()?),
    "y": json_number(*n.get(1)?),
    "radius": json_number(*n.get(2)?),
  }))
}

fn parse_float(s: &str) -> Option<f64> {
  match s {
    "NaN" => Some(f64::NAN),
    "Infinity" => Some(f64::INFINITY),
    "-Infinity" => Some(f64::NEG_INFINITY),
    _ => s.parse().ok(),
  }
}

fn parse_bytea(s: &str) -> Option<Vec<u8>> {
  if let Some(h) = s.strip_prefix("\\x") {
    let digits = h.as_bytes();
    if digits.len() % 2 != 0 {
      return None;
    }
    return digits
      .chunks(2)
      .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
      .collect();
  }
  // bytea_output = escape: `\\` and `\ooo`, everything else as is.
  let b = s.as_bytes();
  let mut out = Vec::with_capacity(b.len());
  let mut i = 0;
  while i < b.len() {
    if b[i] == b'\\' {
      if b.get(i + 1) == Some(&b'\\') {
        out.push(b'\\');
        i += 2;
      } else {
        let o = std::str::from_utf8(b.get(i + 1..i + 4)?).ok()?;
        out.push(u8::from_str_radix(o, 8).ok()?);
        i += 4;
      }
    } else {
      out.push(b[i]);
      i += 1;
    }
  }
  Some(out)
}

/// `YYYY-MM-DD` (more year digits allowed) and the text after it, as days since 1970; a
/// trailing ` BC` anywhere after it is applied by the caller via `bc`.
fn parse_date(s: &str) -> Option<(i64, &str)> {
  let (body, bc) = match s.strip_suffix(" BC") {
    Some(b) => (b, true),
    None => (s, false),
  };
  let dash = body.find('-')?;
  let y: i64 = body[..dash].parse().ok()?;
  let m: i64 = body.get(dash + 1..dash + 3)?.parse().ok()?;
  let d: i64 = body.get(dash + 4..dash + 6)?.parse().ok()?;
  if body.as_bytes().get(dash + 3) != Some(&b'-') {
    return None;
  }
  let y = if bc { 1 - y } else { y };
  let rest = &body[dash + 6..];
  Some((days_from_civil(y, m, d), rest))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]` as a Date (ms, rounded down like the
/// binary decoder), or ±Infinity.
fn parse_timestamp(s: &str) -> Option<Cell> {
  match s {
    "infinity" => return Some(Cell::Number(f64::INFINITY)),
    "-infinity" => return Some(Cell::Number(f64::NEG_INFINITY)),
    _ => {}
  }
  let (days, rest) = parse_date(s)?;
  let rest = rest.strip_prefix(' ')?;
  let num = |a: usize, b: usize| -> Option<i64> { rest.get(a..b)?.parse().ok() };
  let (h, mi, sec) = (num(0, 2)?, num(3, 5)?, num(6, 8)?);
  let mut rest = &rest[8..];
  let mut micros = 0i64;
  if let Some(frac) = rest.strip_prefix('.') {
    let n = frac.bytes().take_while(u8::is_ascii_digit).count();
    let digits = &frac[..n.min(6)];
    micros = digits.parse::<i64>().ok()? * 10i64.pow(u32::try_from(6 - digits.len()).ok()?);
    rest = &frac[n..];
  }
  let mut offset_secs = 0i64;
  if let Some(sign) = rest.chars().next().filter(|c| *c == '+' || *c == '-') {
    let parts: Vec<i64> = rest[1..]
      .split(':')
      .map(|p| p.parse().ok())
      .collect::<Option<_>>()?;
    let total =
      parts.first()? * 3600 + parts.get(1).unwrap_or(&0) * 60 + parts.get(2).unwrap_or(&0);
    offset_secs = if sign == '-' { -total } else { total };
  } else if !rest.is_empty() {
    return None;
  }
  // Beyond i64 microseconds (after year 292277): no JS Date holds it, as in the binary decoder.
  let unix_micros = days
    .checked_mul(86_400)
    .and_then(|s| s.checked_add(h * 3600 + mi * 60 + sec - offset_secs))
    .and_then(|s| s.checked_mul(1_000_000))
    .and_then(|us| us.checked_add(micros));
  Some(match unix_micros {
    Some(us) => Cell::Date(us.div_euclid(1000) as f64),
    None if days > 0 => Cell::Number(f64::INFINITY),
    None => Cell::Number(f64::NEG_INFINITY),
  })
}

/// PostgreSQL's array text (`{1,2}`, `{{1,2},{3,4}}`, `{"a b",NULL}`, optionally prefixed by
/// `[1:2]=` bounds), nested as node-postgres nests it.
fn parse_array(s: &str, elem: u32) -> Option<Cell> {
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
  match decode(s, elem).ok()? {
    // node-postgres parses numeric[] elements with parseFloat (unlike a numeric column).
    Cell::Text(t) if elem == oid::NUMERIC => {
      Some(Cell::Number(parse_float(&t).unwrap_or(f64::NAN)))
    }
    other => Some(other),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn timestamps_round_trip_through_text() {
    for micros in [
      0i64,
      1_700_000_000_123_456,
      -1,
      -62_135_596_800_000_000 - 86_400_000_000, // 1 BC, Dec 31
      253_402_300_800_000_000,                  // year 10000
    ] {
      let text = timestamp_text(micros);
      assert_eq!(
        parse_timestamp(&text),
        Some(Cell::Date(micros.div_euclid(1000) as f64)),
        "{text}"
      );
    }
    assert_eq!(
      parse_timestamp("2024-05-06 07:08:09.5+02:30"),
      Some(Cell::Date(1_714_970_289_500.0)) // 04:38:09.5 UTC
    );
  }

  #[test]
  fn timestamps_beyond_i64_micros_are_infinite() {
    assert_eq!(
      parse_timestamp("294276-12-31 23:59:59+00"),
      Some(Cell::Number(f64::INFINITY))
    );
  }

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
  fn bytea_text_in_both_output_formats() {
    assert_eq!(parse_bytea("\\x00ff5c"), Some(vec![0, 255, 0x5c]));
    assert_eq!(parse_bytea("a\\\\\\001"), Some(vec![b'a', b'\\', 1]));
  }
}
