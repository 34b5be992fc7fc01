//! int2, int4, int8, oid, float4, float8 and numeric. Parameters: a number, a BigInt or a
//! numeric string, range-checked by the binary encoder, then written as text. Text rows as
//! pg-types parses them: int2, int4 and oid as numbers, float4 and float8 as numbers
//! (`NaN`, `Infinity`), int8 and numeric as the server's text (the dispatch's default). Binary
//! rows alike: int8 and numeric as their decimal text.

use super::{exact, EncodeResult};
use crate::value::{format_number, safe_integer, Cell, Param};

// ---------------------------------------------------------------------------------------------
// Parameters

fn as_int(param: &Param) -> std::result::Result<i64, String> {
  match param {
    Param::Number(n) => safe_integer(*n)
      .ok_or_else(|| "not an integer (or beyond 2^53; pass a string or BigInt)".into()),
    Param::BigInt(s) | Param::Text(s) => {
      s.trim().parse::<i64>().map_err(|_| "not an integer".into())
    }
    Param::Bool(b) => Ok(i64::from(*b)),
    _ => Err("expected an integer".into()),
  }
}

fn as_float(param: &Param) -> std::result::Result<f64, String> {
  match param {
    Param::Number(n) => Ok(*n),
    Param::BigInt(s) | Param::Text(s) => s.trim().parse::<f64>().map_err(|_| "not a number".into()),
    _ => Err("expected a number".into()),
  }
}

/// A float4 parameter: the nearest f32, as PostgreSQL's own float4 input rounds.
#[expect(
  clippy::cast_possible_truncation,
  reason = "rounding to the nearest f32 is float4's conversion"
)]
fn to_float4(n: f64) -> f32 {
  n as f32
}

pub(super) fn encode_int2(param: &Param) -> EncodeResult {
  Ok(
    i16::try_from(as_int(param)?)
      .map_err(|_| "out of range for int2")?
      .to_be_bytes()
      .to_vec(),
  )
}

pub(super) fn encode_int4(param: &Param) -> EncodeResult {
  Ok(
    i32::try_from(as_int(param)?)
      .map_err(|_| "out of range for int4")?
      .to_be_bytes()
      .to_vec(),
  )
}

pub(super) fn encode_oid(param: &Param) -> EncodeResult {
  Ok(
    u32::try_from(as_int(param)?)
      .map_err(|_| "out of range for oid")?
      .to_be_bytes()
      .to_vec(),
  )
}

pub(super) fn encode_int8(param: &Param) -> EncodeResult {
  Ok(as_int(param)?.to_be_bytes().to_vec())
}

pub(super) fn encode_float4(param: &Param) -> EncodeResult {
  Ok(to_float4(as_float(param)?).to_be_bytes().to_vec())
}

pub(super) fn encode_float8(param: &Param) -> EncodeResult {
  Ok(as_float(param)?.to_be_bytes().to_vec())
}

pub(super) fn encode_numeric(param: &Param) -> EncodeResult {
  numeric_binary(&match param {
    Param::Number(n) if n.is_finite() => format_number(*n),
    Param::BigInt(s) | Param::Text(s) => s.trim().to_owned(),
    _ => return Err("expected a number or numeric string".into()),
  })
}

/// Like JS `String(n)` for integers; otherwise the shortest text that reads back exactly.
pub(super) fn float_text(n: f64) -> String {
  if n.is_nan() {
    "NaN".into()
  } else if n.is_infinite() {
    if n > 0.0 { "Infinity" } else { "-Infinity" }.into()
  } else {
    format_number(n)
  }
}

// The text of a value encoded by this file's encoders (the right length by construction).

pub(super) fn int2_text(b: &[u8]) -> String {
  i16::from_be_bytes(exact(b).unwrap_or_default()).to_string()
}

pub(super) fn int4_text(b: &[u8]) -> String {
  i32::from_be_bytes(exact(b).unwrap_or_default()).to_string()
}

pub(super) fn oid_text(b: &[u8]) -> String {
  u32::from_be_bytes(exact(b).unwrap_or_default()).to_string()
}

pub(super) fn int8_text(b: &[u8]) -> String {
  i64::from_be_bytes(exact(b).unwrap_or_default()).to_string()
}

pub(super) fn float4_text(b: &[u8]) -> String {
  float_text(f64::from(f32::from_be_bytes(exact(b).unwrap_or_default())))
}

pub(super) fn float8_text(b: &[u8]) -> String {
  float_text(f64::from_be_bytes(exact(b).unwrap_or_default()))
}

pub(super) fn numeric_text(b: &[u8]) -> String {
  numeric_decimal(b).unwrap_or_default()
}

/// Binary NUMERIC from decimal text: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric_binary(s: &str) -> EncodeResult {
  let bad = || "not a numeric value".to_string();
  let (neg, body) = match s.strip_prefix('-') {
    Some(rest) => (true, rest),
    None => (false, s.strip_prefix('+').unwrap_or(s)),
  };
  if body.eq_ignore_ascii_case("nan") {
    let mut out = Vec::with_capacity(8);
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&0xC000u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    return Ok(out);
  }
  // Expand exponent notation (JS prints 1e21 and up that way).
  let (mantissa, exp) = match body.find(['e', 'E']) {
    Some(i) => (&body[..i], body[i + 1..].parse::<i32>().map_err(|_| bad())?),
    None => (body, 0),
  };
  let (int_part, frac_part) = match mantissa.find('.') {
    Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
    None => (mantissa, ""),
  };
  if int_part.is_empty() && frac_part.is_empty()
    || !int_part.bytes().all(|b| b.is_ascii_digit())
    || !frac_part.bytes().all(|b| b.is_ascii_digit())
  {
    return Err(bad());
  }
  let mut digits: String = format!("{int_part}{frac_part}");
  // The position of the decimal point in `digits`.
  let point = i64::try_from(int_part.len()).map_err(|_| bad())? + i64::from(exp);
  let point = if point < 0 {
    digits = "0".repeat(usize::try_from(-point).map_err(|_| bad())?) + &digits;
    0
  } else {
    usize::try_from(point).map_err(|_| bad())?
  };
  if point > digits.len() {
    digits += &"0".repeat(point - digits.len());
  }
  let dscale = u16::try_from(digits.len().saturating_sub(point)).map_err(|_| bad())?;
  let (ip, fp) = digits.split_at(point);
  // Pad to whole base-10000 groups around the decimal point.
  let ip_pad = (4 - ip.len() % 4) % 4;
  let fp_pad = (4 - fp.len() % 4) % 4;
  let all = format!("{}{}{}{}", "0".repeat(ip_pad), ip, fp, "0".repeat(fp_pad));
  let groups: Vec<i16> = all
    .as_bytes()
    .chunks(4)
    .map(|c| std::str::from_utf8(c).unwrap().parse::<i16>().unwrap())
    .collect();
  let mut weight = i16::try_from((ip.len() + ip_pad) / 4).map_err(|_| bad())? - 1;
  // Strip leading and trailing zero groups.
  let mut start = 0;
  while start < groups.len() && groups[start] == 0 {
    start += 1;
    weight -= 1;
  }
  let mut end = groups.len();
  while end > start && groups[end - 1] == 0 {
    end -= 1;
  }
  let used = &groups[start..end];
  if used.is_empty() {
    weight = 0;
  }
  let mut out = Vec::with_capacity(8 + used.len() * 2);
  out.extend_from_slice(&i16::try_from(used.len()).map_err(|_| bad())?.to_be_bytes());
  out.extend_from_slice(&weight.to_be_bytes());
  out.extend_from_slice(
    &(if neg && !used.is_empty() {
      0x4000u16
    } else {
      0
    })
    .to_be_bytes(),
  );
  out.extend_from_slice(&dscale.to_be_bytes());
  for g in used {
    out.extend_from_slice(&g.to_be_bytes());
  }
  Ok(out)
}

/// Binary NUMERIC as its decimal text (`NaN`, `Infinity`, `-Infinity` for the specials).
fn numeric_decimal(b: &[u8]) -> Option<String> {
  let rd =
    |i: usize| -> Option<i16> { Some(i16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?)) };
  let ndigits = usize::try_from(rd(0)?).ok()?;
  let weight = i32::from(rd(2)?);
  let sign = rd(4)?.to_be_bytes();
  let sign = u16::from_be_bytes(sign);
  let dscale = usize::try_from(rd(6)?).ok()?;
  match sign {
    0xC000 => return Some("NaN".into()),
    0xD000 => return Some("Infinity".into()),
    0xF000 => return Some("-Infinity".into()),
    _ => {}
  }
  let groups: Vec<i16> = (0..ndigits).map(|i| rd(8 + i * 2)).collect::<Option<_>>()?;
  let mut int_part = String::new();
  for w in 0..=weight.max(-1) {
    let g = usize::try_from(w)
      .ok()
      .and_then(|w| groups.get(w).copied())
      .unwrap_or(0);
    if int_part.is_empty() {
      if g != 0 {
        int_part = g.to_string();
      }
    } else {
      int_part += &format!("{g:04}");
    }
  }
  if int_part.is_empty() {
    int_part = "0".into();
  }
  let mut frac = String::new();
  if dscale > 0 {
    let mut idx = weight + 1; // first group after the point
    while frac.len() < dscale {
      let g = usize::try_from(idx)
        .ok()
        .and_then(|i| groups.get(i).copied())
        .unwrap_or(0);
      frac += &format!("{g:04}");
      idx += 1;
    }
    frac.truncate(dscale);
  }
  let mut s = String::new();
  if sign == 0x4000 {
    s.push('-');
  }
  s += &int_part;
  if !frac.is_empty() {
    s.push('.');
    s += &frac;
  }
  Some(s)
}

// ---------------------------------------------------------------------------------------------
// Rows

/// int2, int4 and oid text as a number.
pub(super) fn parse_int(s: &str) -> Option<Cell> {
  Some(Cell::Number(s.parse::<i64>().ok()? as f64))
}

/// float4 and float8 text (also numeric[] elements) as pg-types' parseFloat reads it.
pub(super) fn parse_float(s: &str) -> Option<f64> {
  match s {
    "NaN" => Some(f64::NAN),
    "Infinity" => Some(f64::INFINITY),
    "-Infinity" => Some(f64::NEG_INFINITY),
    _ => s.parse().ok(),
  }
}

pub(super) fn decode_int2(b: &[u8]) -> Option<Cell> {
  Some(Cell::Number(f64::from(i16::from_be_bytes(exact(b)?))))
}

pub(super) fn decode_int4(b: &[u8]) -> Option<Cell> {
  Some(Cell::Number(f64::from(i32::from_be_bytes(exact(b)?))))
}

pub(super) fn decode_oid(b: &[u8]) -> Option<Cell> {
  Some(Cell::Number(f64::from(u32::from_be_bytes(exact(b)?))))
}

pub(super) fn decode_int8(b: &[u8]) -> Option<Cell> {
  Some(Cell::Text(i64::from_be_bytes(exact(b)?).to_string()))
}

/// Through the shortest decimal form, as node-postgres parses float4 text: 0.1, not
/// 0.10000000149.
pub(super) fn decode_float4(b: &[u8]) -> Option<Cell> {
  Some(Cell::Number(
    f32::from_be_bytes(exact(b)?)
      .to_string()
      .parse()
      .unwrap_or(f64::NAN),
  ))
}

pub(super) fn decode_float8(b: &[u8]) -> Option<Cell> {
  Some(Cell::Number(f64::from_be_bytes(exact(b)?)))
}

pub(super) fn decode_numeric(b: &[u8]) -> Option<Cell> {
  numeric_decimal(b).map(Cell::Text)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn numeric_round_trips() {
    for s in [
      "0",
      "1",
      "-1",
      "12345.6789",
      "0.0001",
      "100000000",
      "3.14",
      "-0.5",
      "99999999999999999999.123456789",
    ] {
      let enc = numeric_binary(s).unwrap();
      assert_eq!(numeric_decimal(&enc).unwrap(), s, "{s}");
    }
    assert_eq!(
      numeric_decimal(&numeric_binary("1e3").unwrap()).unwrap(),
      "1000"
    );
    assert!(numeric_binary("abc").is_err());
  }

  fn err(s: &str) -> EncodeResult {
    Err(s.to_owned())
  }

  #[test]
  fn integer_parameters_are_range_checked() {
    assert_eq!(encode_int2(&Param::Number(32767.0)), Ok(vec![0x7f, 0xff]));
    assert_eq!(
      encode_int2(&Param::Number(32768.0)),
      err("out of range for int2")
    );
    assert_eq!(
      encode_int4(&Param::Text(" -2147483648 ".into())),
      Ok(vec![0x80, 0, 0, 0])
    );
    assert_eq!(
      encode_int4(&Param::BigInt("2147483648".into())),
      err("out of range for int4")
    );
    assert_eq!(encode_int4(&Param::Bool(true)), Ok(vec![0, 0, 0, 1]));
    assert_eq!(
      encode_oid(&Param::Number(-1.0)),
      err("out of range for oid")
    );
    assert_eq!(
      encode_oid(&Param::Number(4_294_967_295.0)),
      Ok(vec![0xff; 4])
    );
    assert_eq!(
      encode_int8(&Param::BigInt("-9223372036854775808".into())),
      Ok(i64::MIN.to_be_bytes().to_vec())
    );
    let beyond = "not an integer (or beyond 2^53; pass a string or BigInt)";
    assert_eq!(encode_int8(&Param::Number(1.5)), err(beyond));
    assert_eq!(
      encode_int8(&Param::Number(2f64.powi(53) + 2.0)),
      err(beyond)
    );
    assert_eq!(
      encode_int4(&Param::Text("1.0".into())),
      err("not an integer")
    );
    assert_eq!(
      encode_int4(&Param::Json(serde_json::json!(1))),
      err("expected an integer")
    );
  }

  #[test]
  fn integer_parameter_text() {
    assert_eq!(int2_text(&encode_int2(&Param::Number(-5.0)).unwrap()), "-5");
    assert_eq!(int4_text(&[0x80, 0, 0, 0]), "-2147483648");
    assert_eq!(oid_text(&[0xff; 4]), "4294967295");
    assert_eq!(int8_text(&i64::MAX.to_be_bytes()), "9223372036854775807");
  }

  #[test]
  fn float_parameters_and_their_text() {
    assert_eq!(float_text(f64::NAN), "NaN");
    assert_eq!(float_text(f64::INFINITY), "Infinity");
    assert_eq!(float_text(f64::NEG_INFINITY), "-Infinity");
    assert_eq!(float_text(-0.0), "0");
    assert_eq!(float_text(0.1), "0.1");
    assert_eq!(float_text(1e21), "1000000000000000000000");
    // float4 goes as the exact text of the nearest f32, which float4's input reads back to it.
    let f4 = encode_float4(&Param::Number(0.1)).unwrap();
    assert_eq!(f4, 0.1f32.to_be_bytes());
    assert_eq!(float4_text(&f4), "0.10000000149011612");
    assert_eq!(
      float8_text(&encode_float8(&Param::Text(" 2.5 ".into())).unwrap()),
      "2.5"
    );
    assert_eq!(encode_float8(&Param::Text("x".into())), err("not a number"));
    assert_eq!(encode_float8(&Param::Bool(true)), err("expected a number"));
  }

  #[test]
  fn numeric_parameters() {
    // 0.1: one base-10000 digit (1000) at weight -1, dscale 1.
    assert_eq!(
      encode_numeric(&Param::Number(0.1)),
      Ok(vec![0, 1, 0xff, 0xff, 0, 0, 0, 1, 0x03, 0xe8])
    );
    assert_eq!(
      encode_numeric(&Param::Number(f64::NAN)),
      err("expected a number or numeric string")
    );
    assert_eq!(
      encode_numeric(&Param::Bool(true)),
      err("expected a number or numeric string")
    );
    let text = |s: &str| numeric_text(&encode_numeric(&Param::Text(s.into())).unwrap());
    assert_eq!(text(" NaN "), "NaN");
    assert_eq!(text("1.5e-3"), "0.0015");
    assert_eq!(text("-0"), "0");
    assert_eq!(text("+12."), "12");
    assert_eq!(text(".50"), "0.50");
    assert_eq!(text("-1E+2"), "-100");
    for bad in ["", ".", "1e", "1.2.3", "0x10", "--1"] {
      assert_eq!(
        encode_numeric(&Param::Text(bad.into())),
        err("not a numeric value"),
        "{bad:?}"
      );
    }
  }

  #[test]
  fn numeric_binary_specials_and_truncation() {
    assert_eq!(
      numeric_decimal(&[0, 0, 0, 0, 0xd0, 0, 0, 0]).unwrap(),
      "Infinity"
    );
    assert_eq!(
      numeric_decimal(&[0, 0, 0, 0, 0xf0, 0, 0, 0]).unwrap(),
      "-Infinity"
    );
    assert_eq!(
      numeric_decimal(&[0, 0, 0, 0, 0xc0, 0, 0, 0]).unwrap(),
      "NaN"
    );
    // 1 at weight 0 with dscale 6.
    assert_eq!(
      numeric_decimal(&[0, 1, 0, 0, 0, 0, 0, 6, 0, 1]).unwrap(),
      "1.000000"
    );
    // Two digits announced, one present.
    assert_eq!(numeric_decimal(&[0, 2, 0, 0, 0, 0, 0, 0, 0, 1]), None);
    assert_eq!(numeric_decimal(&[0, 0, 0]), None);
    assert_eq!(numeric_text(&[0, 0, 0]), "");
  }

  #[test]
  fn number_rows_in_text() {
    assert_eq!(parse_int("-32768"), Some(Cell::Number(-32768.0)));
    assert_eq!(parse_int("4294967295"), Some(Cell::Number(4_294_967_295.0)));
    assert_eq!(parse_int("1.5"), None);
    assert_eq!(parse_int(""), None);
    assert_eq!(parse_float("Infinity"), Some(f64::INFINITY));
    assert_eq!(parse_float("-Infinity"), Some(f64::NEG_INFINITY));
    assert!(parse_float("NaN").unwrap().is_nan());
    assert_eq!(parse_float("1e-07"), Some(1e-7));
    assert_eq!(parse_float("0.30000000000000004"), Some(0.1 + 0.2));
    assert_eq!(parse_float("1,5"), None);
  }

  #[test]
  fn number_rows_in_binary() {
    assert_eq!(decode_int2(&[0xff, 0xfe]), Some(Cell::Number(-2.0)));
    assert_eq!(decode_int2(&[0]), None);
    assert_eq!(decode_int4(&[0, 1, 0, 0]), Some(Cell::Number(65536.0)));
    assert_eq!(decode_int4(&[0, 1, 0]), None);
    assert_eq!(decode_oid(&[0xff; 4]), Some(Cell::Number(4_294_967_295.0)));
    assert_eq!(
      decode_int8(&i64::MIN.to_be_bytes()),
      Some(Cell::Text("-9223372036854775808".into()))
    );
    assert_eq!(decode_int8(&[0; 4]), None);
    // float4 through its shortest text, as node-postgres reads float4 text.
    assert_eq!(
      decode_float4(&0.1f32.to_be_bytes()),
      Some(Cell::Number(0.1))
    );
    assert!(matches!(
      decode_float4(&f32::NAN.to_be_bytes()),
      Some(Cell::Number(n)) if n.is_nan()
    ));
    assert_eq!(
      decode_float8(&(0.1 + 0.2f64).to_be_bytes()),
      Some(Cell::Number(0.30000000000000004))
    );
    assert_eq!(decode_float8(&[0; 4]), None);
    assert_eq!(
      decode_numeric(&numeric_binary("-12345.6789").unwrap()),
      Some(Cell::Text("-12345.6789".into()))
    );
    assert_eq!(decode_numeric(&[0, 1]), None);
  }
}
