//! Values as they cross the boundary to JS, whichever database they came from: a parameter
//! as the binding read it, a cell as node-postgres would return it, and the few conversions
//! both backends make the way JS does (`toISOString`, `JSON.stringify`). How PostgreSQL
//! encodes and decodes them is `pg::types`.

/// A JS value bound as a query parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
  Null,
  Bool(bool),
  Number(f64),
  /// A JS BigInt, as its decimal digits.
  BigInt(String),
  Text(String),
  Bytes(Vec<u8>),
  /// A JS Date, in epoch milliseconds.
  Date(f64),
  /// A JS array: a PostgreSQL array, or JSON when the parameter is json/jsonb.
  Array(Vec<Param>),
  /// A plain JS object, sent as JSON.
  Json(serde_json::Value),
}

/// A column value as node-postgres would return it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
  Null,
  Bool(bool),
  Number(f64),
  /// text, varchar, uuid, int8 and numeric (as strings, like node-postgres).
  Text(String),
  Json(serde_json::Value),
  /// timestamptz, timestamp and date, in epoch milliseconds.
  Date(f64),
  Bytes(Vec<u8>),
  Array(Vec<Cell>),
}

/// Rows of one statement: column names once, then values by position.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
  pub columns: Vec<String>,
  pub rows: Vec<Vec<Cell>>,
  pub rows_affected: u64,
}

/// `n` as an integer when it is one exactly (no fraction, within i64): the checked `n as i64`.
pub(crate) fn exact_i64(n: f64) -> Option<i64> {
  // 2^63 is exact as an f64; every integral f64 below it in magnitude fits.
  if n.fract() != 0.0 || !n.is_finite() || n.abs() >= 9_223_372_036_854_775_808.0 {
    return None;
  }
  #[expect(
    clippy::cast_possible_truncation,
    reason = "integral and within i64, checked above"
  )]
  Some(n as i64)
}

/// A JS safe integer (|n| ≤ 2^53) as an i64.
pub(crate) fn safe_integer(n: f64) -> Option<i64> {
  exact_i64(n).filter(|i| i.unsigned_abs() <= 1 << 53)
}

/// Like JS `String(n)` for the values we meet: integers without a fraction.
pub(crate) fn format_number(n: f64) -> String {
  if n.fract() == 0.0 && n.abs() < 1e21 {
    // Integral and below 1e21: printed exactly, without a fraction (and -0 as 0, as JS does).
    format!("{:.0}", if n == 0.0 { 0.0 } else { n })
  } else {
    format!("{n}")
  }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970 (Howard Hinnant's
/// civil_from_days), for any year PostgreSQL or JS holds.
pub(crate) fn civil(days: i64) -> (i64, i64, i64) {
  let z = days + 719_468;
  let era = z.div_euclid(146_097);
  let doe = z.rem_euclid(146_097);
  let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
  let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  let mp = (5 * doy + 2) / 153;
  let day = doy - (153 * mp + 2) / 5 + 1;
  let month = if mp < 10 { mp + 3 } else { mp - 9 };
  (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// `Date.prototype.toISOString` for a time value, over the whole JS range (years −271821 to
/// 275760, beyond chrono's): `None` for an invalid Date, which `JSON.stringify` prints as null.
pub fn iso_string(ms: f64) -> Option<String> {
  if !ms.is_finite() || ms.abs() > 8.64e15 {
    return None;
  }
  let ms = exact_i64(ms.trunc())?;
  let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
  let (year, month, day) = civil(days);
  let year = if (0..=9999).contains(&year) {
    format!("{year:04}")
  } else {
    format!("{}{:06}", if year < 0 { '-' } else { '+' }, year.abs())
  };
  let (h, m, s, milli) = (
    in_day / 3_600_000,
    in_day / 60_000 % 60,
    in_day / 1000 % 60,
    in_day % 1000,
  );
  Some(format!(
    "{year}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z"
  ))
}

/// A parameter as JSON (arrays and objects for json/jsonb columns).
pub fn to_json(param: &Param) -> serde_json::Value {
  use serde_json::Value;
  match param {
    Param::Null => Value::Null,
    Param::Bool(b) => Value::Bool(*b),
    Param::Number(n) => serde_json::Number::from_f64(*n)
      .map(|num| safe_integer(*n).map_or(Value::Number(num), Value::from))
      .unwrap_or(Value::Null),
    Param::BigInt(s) | Param::Text(s) => Value::String(s.clone()),
    Param::Bytes(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
    Param::Date(ms) => iso_string(*ms).map_or(Value::Null, Value::String),
    Param::Array(items) => Value::Array(items.iter().map(to_json).collect()),
    Param::Json(v) => v.clone(),
  }
}

#[cfg(test)]
mod tests {
  #[test]
  fn iso_string_is_to_iso_string_over_the_whole_js_range() {
    use super::iso_string;
    assert_eq!(iso_string(0.0).unwrap(), "1970-01-01T00:00:00.000Z");
    assert_eq!(iso_string(-1.0).unwrap(), "1969-12-31T23:59:59.999Z");
    assert_eq!(
      iso_string(951_827_696_789.0).unwrap(),
      "2000-02-29T12:34:56.789Z"
    );
    assert_eq!(
      iso_string(-62_167_219_200_000.0).unwrap(),
      "0000-01-01T00:00:00.000Z"
    );
    assert_eq!(
      iso_string(-62_167_219_200_001.0).unwrap(),
      "-000001-12-31T23:59:59.999Z"
    );
    assert_eq!(
      iso_string(253_402_300_800_000.0).unwrap(),
      "+010000-01-01T00:00:00.000Z"
    );
    assert_eq!(iso_string(8.64e15).unwrap(), "+275760-09-13T00:00:00.000Z");
    assert_eq!(iso_string(-8.64e15).unwrap(), "-271821-04-20T00:00:00.000Z");
    assert_eq!(iso_string(8.64e15 + 1.0), None);
    assert_eq!(iso_string(f64::NAN), None);
    assert_eq!(iso_string(f64::INFINITY), None);
  }
}
