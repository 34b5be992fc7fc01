//! Values crossing between JS and PostgreSQL the way node-postgres maps them.
//!
//! Parameters arrive untyped (a JS string may be meant for an integer, uuid or timestamptz
//! column), while sqlx always sends parameters in binary with a declared type. So a statement
//! is first prepared without parameter types, the server's inferred types are read back (sqlx
//! caches the statement per connection by SQL text, so this is free after the first call), and
//! each JS value is encoded in the binary format of its inferred type. Rows come back in binary
//! and are decoded by column type OID into [`Cell`]s, which the binding turns into JS values.

use crate::error::{Error, Result};
use crate::value::{exact_i64, format_number, iso_string, safe_integer, to_json, Cell, Param};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgTypeInfo, PgTypeKind};
use sqlx::TypeInfo;

pub(crate) mod oid {
  pub const BOOL: u32 = 16;
  pub const BYTEA: u32 = 17;
  pub const CHAR: u32 = 18;
  pub const NAME: u32 = 19;
  pub const INT8: u32 = 20;
  pub const INT2: u32 = 21;
  pub const INT4: u32 = 23;
  pub const TEXT: u32 = 25;
  pub const OID: u32 = 26;
  pub const JSON: u32 = 114;
  pub const XML: u32 = 142;
  pub const FLOAT4: u32 = 700;
  pub const FLOAT8: u32 = 701;
  pub const UNKNOWN: u32 = 705;
  pub const BPCHAR: u32 = 1042;
  pub const VARCHAR: u32 = 1043;
  pub const DATE: u32 = 1082;
  pub const TIME: u32 = 1083;
  pub const TIMESTAMP: u32 = 1114;
  pub const TIMESTAMPTZ: u32 = 1184;
  pub const NUMERIC: u32 = 1700;
  pub const UUID: u32 = 2950;
  pub const JSONB: u32 = 3802;
}

/// Element type of the array types we encode and decode.
pub(crate) fn array_element(array_oid: u32) -> Option<u32> {
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

pub(crate) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000; // 2000-01-01 in Unix microseconds
pub(crate) const PG_EPOCH_DAYS: i64 = 10_957; // 2000-01-01 in Unix days

pub(crate) fn type_oid(ty: &PgTypeInfo) -> u32 {
  ty.oid().map(|o| o.0).unwrap_or(0)
}

pub(crate) fn is_textual_oid(t: u32) -> bool {
  matches!(
    t,
    oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::UNKNOWN | oid::XML
  )
}

/// Types sent and received as UTF-8 text. Only types the server described may be asked for
/// their kind: sqlx panics on a type built from a bare OID (whose name is "?"). A bare OID we
/// do not know (an enum, a domain, an extension's type) is sent as text, which its input
/// function reads.
pub(crate) fn is_textual(ty: &PgTypeInfo) -> bool {
  let t = type_oid(ty);
  if ty.name() == "?" {
    return is_textual_oid(t) || !is_known_oid(t);
  }
  is_textual_oid(t)
    || matches!(ty.kind(), PgTypeKind::Enum(_))
    || ty.name().eq_ignore_ascii_case("citext")
}

/// The OIDs this module encodes and decodes itself.
pub(crate) fn is_known_oid(t: u32) -> bool {
  array_element(t).is_some()
    || matches!(
      t,
      oid::BOOL
        | oid::BYTEA
        | oid::CHAR
        | oid::NAME
        | oid::INT8
        | oid::INT2
        | oid::INT4
        | oid::TEXT
        | oid::OID
        | oid::JSON
        | oid::XML
        | oid::FLOAT4
        | oid::FLOAT8
        | oid::UNKNOWN
        | oid::BPCHAR
        | oid::VARCHAR
        | oid::DATE
        | oid::TIME
        | oid::TIMESTAMP
        | oid::TIMESTAMPTZ
        | oid::NUMERIC
        | oid::UUID
        | oid::JSONB
    )
}

/// A type known only by its OID (from `pg_prepared_statements`).
pub(crate) fn type_of_oid(t: u32) -> PgTypeInfo {
  PgTypeInfo::with_oid(Oid(t))
}

/// A type's name for messages: the server's, or ours for a bare OID.
pub(crate) fn type_name(ty: &PgTypeInfo) -> String {
  if ty.name() != "?" {
    return ty.name().to_owned();
  }
  let t = type_oid(ty);
  let name = match array_element(t).unwrap_or(t) {
    oid::BOOL => "bool",
    oid::BYTEA => "bytea",
    oid::INT2 => "int2",
    oid::INT4 => "int4",
    oid::INT8 => "int8",
    oid::OID => "oid",
    oid::FLOAT4 => "float4",
    oid::FLOAT8 => "float8",
    oid::NUMERIC => "numeric",
    oid::UUID => "uuid",
    oid::JSON => "json",
    oid::JSONB => "jsonb",
    oid::DATE => "date",
    oid::TIME => "time",
    oid::TIMESTAMP => "timestamp",
    oid::TIMESTAMPTZ => "timestamptz",
    oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR => "text",
    _ => return format!("the type with oid {t}"),
  };
  if array_element(t).is_some() {
    format!("{name}[]")
  } else {
    name.to_owned()
  }
}

type EncodeResult = std::result::Result<Vec<u8>, String>;

/// A length as the wire's int4.
fn len_i32(n: usize) -> std::result::Result<i32, String> {
  i32::try_from(n).map_err(|_| "too long for PostgreSQL (more than 2^31 - 1)".to_owned())
}

/// A float4 parameter: the nearest f32, as PostgreSQL's own float4 input rounds.
#[expect(
  clippy::cast_possible_truncation,
  reason = "rounding to the nearest f32 is float4's conversion"
)]
fn to_float4(n: f64) -> f32 {
  n as f32
}

pub(crate) fn encode(param: &Param, ty: &PgTypeInfo) -> EncodeResult {
  let t = type_oid(ty);
  if let Some(elem) = array_element(t) {
    return encode_array(param, elem, is_textual_oid(elem));
  }
  // An array of a described type sent as text (an enum[], a citext[]).
  if ty.name() != "?" {
    if let PgTypeKind::Array(elem) = ty.kind() {
      if is_textual(elem) {
        return encode_array(param, type_oid(elem), true);
      }
    }
  }
  if is_textual(ty) {
    return Ok(as_text(param)?.into_bytes());
  }
  encode_scalar(param, t, &type_name(ty))
}

pub(crate) fn encode_scalar(param: &Param, t: u32, name: &str) -> EncodeResult {
  Ok(match t {
    oid::BOOL => vec![match param {
      Param::Bool(b) => *b as u8,
      Param::Number(n) => (*n != 0.0) as u8,
      Param::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "yes" | "on" | "1" => 1,
        "f" | "false" | "no" | "off" | "0" => 0,
        _ => return Err("not a boolean".into()),
      },
      _ => return Err("expected a boolean".into()),
    }],
    oid::INT2 => i16::try_from(as_int(param)?)
      .map_err(|_| "out of range for int2")?
      .to_be_bytes()
      .to_vec(),
    oid::INT4 => i32::try_from(as_int(param)?)
      .map_err(|_| "out of range for int4")?
      .to_be_bytes()
      .to_vec(),
    oid::OID => u32::try_from(as_int(param)?)
      .map_err(|_| "out of range for oid")?
      .to_be_bytes()
      .to_vec(),
    oid::INT8 => as_int(param)?.to_be_bytes().to_vec(),
    oid::FLOAT4 => to_float4(as_float(param)?).to_be_bytes().to_vec(),
    oid::FLOAT8 => as_float(param)?.to_be_bytes().to_vec(),
    oid::NUMERIC => encode_numeric(&match param {
      Param::Number(n) if n.is_finite() => format_number(*n),
      Param::BigInt(s) | Param::Text(s) => s.trim().to_owned(),
      _ => return Err("expected a number or numeric string".into()),
    })?,
    oid::UUID => match param {
      Param::Text(s) => uuid::Uuid::parse_str(s.trim())
        .map_err(|_| "not a uuid")?
        .as_bytes()
        .to_vec(),
      Param::Bytes(b) if b.len() == 16 => b.clone(),
      _ => return Err("expected a uuid string".into()),
    },
    oid::JSON => as_json(param)?.into_bytes(),
    oid::JSONB => {
      let mut v = vec![1u8];
      v.extend_from_slice(as_json(param)?.as_bytes());
      v
    }
    oid::BYTEA => match param {
      Param::Bytes(b) => b.clone(),
      Param::Text(s) => s.as_bytes().to_vec(),
      _ => return Err("expected a Buffer".into()),
    },
    oid::TIMESTAMPTZ | oid::TIMESTAMP => {
      let micros = match param {
        // Straight from the time value: every valid JS Date, also beyond chrono's years
        // (PostgreSQL itself refuses those before 4713 BC).
        Param::Date(ms) if ms.is_finite() && ms.abs() <= 8.64e15 => {
          exact_i64(ms.trunc()).ok_or("invalid Date")? * 1000
        }
        other => as_datetime(other)?.timestamp_micros(),
      } - PG_EPOCH_MICROS;
      micros.to_be_bytes().to_vec()
    }
    oid::DATE => {
      let date = match param {
        Param::Text(s) if s.len() == 10 => {
          NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| "not a date")?
        }
        other => as_datetime(other)?.date_naive(),
      };
      let days = date.signed_duration_since(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap());
      i32::try_from(days.num_days())
        .map_err(|_| "date out of range")?
        .to_be_bytes()
        .to_vec()
    }
    _ => {
      return Err(format!(
        "type {name} is not supported for parameters; cast it in SQL (for example $1::text)"
      ))
    }
  })
}

fn encode_array(param: &Param, elem: u32, textual: bool) -> EncodeResult {
  let items = match param {
    Param::Array(items) => items,
    _ => return Err("expected an array".into()),
  };
  let mut out = Vec::with_capacity(20 + items.len() * 8);
  let has_null = items.iter().any(|p| matches!(p, Param::Null));
  out.extend_from_slice(&1i32.to_be_bytes()); // dimensions
  out.extend_from_slice(&(has_null as i32).to_be_bytes());
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

pub(crate) fn as_text(param: &Param) -> std::result::Result<String, String> {
  Ok(match param {
    Param::Text(s) => s.clone(),
    Param::BigInt(s) => s.clone(),
    Param::Number(n) => format_number(*n),
    Param::Bool(b) => b.to_string(),
    Param::Date(ms) => iso_string(*ms).ok_or("invalid Date")?,
    Param::Json(v) => v.to_string(),
    Param::Bytes(b) => String::from_utf8(b.clone()).map_err(|_| "Buffer is not UTF-8")?,
    Param::Array(_) => to_json(param).to_string(),
    Param::Null => unreachable!("NULL is never encoded"),
  })
}

fn as_int(param: &Param) -> std::result::Result<i64, String> {
  match param {
    Param::Number(n) => safe_integer(*n)
      .ok_or_else(|| "not an integer (or beyond 2^53; pass a string or BigInt)".into()),
    Param::BigInt(s) | Param::Text(s) => {
      s.trim().parse::<i64>().map_err(|_| "not an integer".into())
    }
    Param::Bool(b) => Ok(*b as i64),
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

pub(crate) fn as_json(param: &Param) -> std::result::Result<String, String> {
  Ok(match param {
    // node-postgres sends a string as is: the caller serialised it.
    Param::Text(s) => s.clone(),
    other => to_json(other).to_string(),
  })
}

fn as_datetime(param: &Param) -> std::result::Result<DateTime<Utc>, String> {
  match param {
    Param::Date(ms) => exact_i64(ms.trunc())
      .and_then(DateTime::from_timestamp_millis)
      .ok_or_else(|| "invalid Date".into()),
    Param::Number(ms) => exact_i64(ms.trunc())
      .and_then(DateTime::from_timestamp_millis)
      .ok_or_else(|| "invalid time".into()),
    Param::Text(s) => parse_timestamp(s.trim()).ok_or_else(|| "not a timestamp".into()),
    _ => Err("expected a Date or an ISO 8601 string".into()),
  }
}

fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
  if let Ok(d) = DateTime::parse_from_rfc3339(s) {
    return Some(d.with_timezone(&Utc));
  }
  for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%:z"] {
    if let Ok(d) = DateTime::parse_from_str(s, fmt) {
      return Some(d.with_timezone(&Utc));
    }
  }
  for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
    if let Ok(d) = NaiveDateTime::parse_from_str(s, fmt) {
      return Some(Utc.from_utc_datetime(&d));
    }
  }
  NaiveDate::parse_from_str(s, "%Y-%m-%d")
    .ok()
    .map(|d| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap()))
}

/// Binary NUMERIC: ndigits, weight, sign, dscale, then base-10000 digits.
fn encode_numeric(s: &str) -> EncodeResult {
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

pub(crate) fn decode_numeric(b: &[u8]) -> Option<String> {
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

pub(crate) fn decode_oid(b: &[u8], t: u32) -> Result<Cell> {
  let bad = || Error::Database {
    sqlstate: None,
    message: format!("could not decode a value of type oid {t}"),
  };
  if is_textual_oid(t) {
    return Ok(Cell::Text(String::from_utf8_lossy(b).into_owned()));
  }
  if let Some(elem) = array_element(t) {
    return decode_array(b, elem).ok_or_else(bad);
  }
  let be = |n: usize| -> Result<&[u8]> {
    if b.len() == n {
      Ok(b)
    } else {
      Err(bad())
    }
  };
  Ok(match t {
    oid::BOOL => Cell::Bool(be(1)?[0] != 0),
    oid::INT2 => Cell::Number(i16::from_be_bytes(be(2)?.try_into().unwrap()) as f64),
    oid::INT4 => Cell::Number(i32::from_be_bytes(be(4)?.try_into().unwrap()) as f64),
    oid::OID => Cell::Number(u32::from_be_bytes(be(4)?.try_into().unwrap()) as f64),
    oid::INT8 => Cell::Text(i64::from_be_bytes(be(8)?.try_into().unwrap()).to_string()),
    // Through the shortest decimal form, as node-postgres parses float4 text: 0.1, not 0.10000000149.
    oid::FLOAT4 => Cell::Number(
      f32::from_be_bytes(be(4)?.try_into().unwrap())
        .to_string()
        .parse()
        .unwrap_or(f64::NAN),
    ),
    oid::FLOAT8 => Cell::Number(f64::from_be_bytes(be(8)?.try_into().unwrap())),
    oid::NUMERIC => Cell::Text(decode_numeric(b).ok_or_else(bad)?),
    oid::UUID => Cell::Text(
      uuid::Uuid::from_slice(b)
        .map_err(|_| bad())?
        .hyphenated()
        .to_string(),
    ),
    oid::JSON => Cell::Json(serde_json::from_slice(b).map_err(|_| bad())?),
    oid::JSONB => {
      Cell::Json(serde_json::from_slice(b.get(1..).ok_or_else(bad)?).map_err(|_| bad())?)
    }
    oid::BYTEA => Cell::Bytes(b.to_vec()),
    oid::TIMESTAMPTZ | oid::TIMESTAMP => {
      let micros = i64::from_be_bytes(be(8)?.try_into().unwrap());
      match micros {
        i64::MAX => Cell::Number(f64::INFINITY),
        i64::MIN => Cell::Number(f64::NEG_INFINITY),
        // JS Dates hold milliseconds; round down like node-postgres (also before 1970).
        // Beyond i64 after the epoch shift (year 294276): no JS Date holds it anyway.
        m => match m.checked_add(PG_EPOCH_MICROS) {
          Some(unix) => Cell::Date(unix.div_euclid(1000) as f64),
          None => Cell::Number(f64::INFINITY),
        },
      }
    }
    oid::DATE => {
      let days = i32::from_be_bytes(be(4)?.try_into().unwrap()) as i64;
      Cell::Date(((days + PG_EPOCH_DAYS) * 86_400_000) as f64)
    }
    oid::TIME => {
      let micros = i64::from_be_bytes(be(8)?.try_into().unwrap());
      let secs = micros / 1_000_000;
      let frac = micros % 1_000_000;
      let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
      if frac != 0 {
        s += &format!(".{frac:06}");
      }
      Cell::Text(s)
    }
    // Anything else: its bytes as text when they are text, else as a Buffer.
    _ => match std::str::from_utf8(b) {
      Ok(s) => Cell::Text(s.to_owned()),
      Err(_) => Cell::Bytes(b.to_vec()),
    },
  })
}

fn decode_array(b: &[u8], elem: u32) -> Option<Cell> {
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
      let cell = match decode_oid(slice, elem).ok()? {
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
      let enc = encode_numeric(s).unwrap();
      assert_eq!(decode_numeric(&enc).unwrap(), s, "{s}");
    }
    assert_eq!(
      decode_numeric(&encode_numeric("1e3").unwrap()).unwrap(),
      "1000"
    );
    assert!(encode_numeric("abc").is_err());
  }
}
