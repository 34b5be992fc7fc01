//! date, time, timestamp, timestamptz and interval. Parameters: a Date, epoch milliseconds or
//! an ISO 8601 string, checked by the binary encoder, then written as the text PostgreSQL reads
//! back (UTC, ` BC` before year 1). Text rows (DateStyle ISO, IntervalStyle postgres, as the
//! statement path pins them) as pg-types parses them: timestamps and dates as Dates (rounded
//! down to the millisecond) or ±Infinity, an interval as postgres-interval's object. Binary
//! rows: timestamps and dates as Dates, a time as its text.

use super::{exact, EncodeResult};
use crate::value::{civil, exact_i64, Cell, Param};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

const PG_EPOCH_MICROS: i64 = 946_684_800_000_000; // 2000-01-01 in Unix microseconds
const PG_EPOCH_DAYS: i64 = 10_957; // 2000-01-01 in Unix days

// ---------------------------------------------------------------------------------------------
// Parameters

fn as_datetime(param: &Param) -> std::result::Result<DateTime<Utc>, String> {
  match param {
    Param::Date(ms) => exact_i64(ms.trunc())
      .and_then(DateTime::from_timestamp_millis)
      .ok_or_else(|| "invalid Date".into()),
    Param::Number(ms) => exact_i64(ms.trunc())
      .and_then(DateTime::from_timestamp_millis)
      .ok_or_else(|| "invalid time".into()),
    Param::Text(s) => parse_timestamp_param(s.trim()).ok_or_else(|| "not a timestamp".into()),
    _ => Err("expected a Date or an ISO 8601 string".into()),
  }
}

/// A parameter's timestamp text: RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]±zz[:zz]`, without an
/// offset (UTC), or a date alone (its midnight, UTC).
fn parse_timestamp_param(s: &str) -> Option<DateTime<Utc>> {
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

/// timestamp and timestamptz: microseconds since 2000-01-01 UTC.
pub(super) fn encode_timestamp(param: &Param) -> EncodeResult {
  let micros = match param {
    // Straight from the time value: every valid JS Date, also beyond chrono's years
    // (PostgreSQL itself refuses those before 4713 BC).
    Param::Date(ms) if ms.is_finite() && ms.abs() <= 8.64e15 => {
      exact_i64(ms.trunc()).ok_or("invalid Date")? * 1000
    }
    other => as_datetime(other)?.timestamp_micros(),
  } - PG_EPOCH_MICROS;
  Ok(micros.to_be_bytes().to_vec())
}

/// date: days since 2000-01-01.
pub(super) fn encode_date(param: &Param) -> EncodeResult {
  let date = match param {
    Param::Text(s) if s.len() == 10 => {
      NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| "not a date")?
    }
    other => as_datetime(other)?.date_naive(),
  };
  let days = date.signed_duration_since(NaiveDate::from_ymd_opt(2000, 1, 1).unwrap());
  Ok(
    i32::try_from(days.num_days())
      .map_err(|_| "date out of range")?
      .to_be_bytes()
      .to_vec(),
  )
}

/// The text of a timestamp encoded by [`encode_timestamp`].
pub(super) fn timestamp_text(b: &[u8]) -> String {
  format_timestamp(i64::from_be_bytes(exact(b).unwrap_or_default()).saturating_add(PG_EPOCH_MICROS))
}

/// The text of a date encoded by [`encode_date`].
pub(super) fn date_text(b: &[u8]) -> String {
  let days = i64::from(i32::from_be_bytes(exact(b).unwrap_or_default())) + PG_EPOCH_DAYS;
  format_date(days)
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

/// Days since 1970 as a date's text.
fn format_date(days: i64) -> String {
  let (date, era) = date_parts(days);
  format!("{date}{era}")
}

/// An instant in Unix microseconds as PostgreSQL reads it for timestamptz (UTC) and
/// timestamp (the offset is ignored there, which leaves the UTC wall time).
fn format_timestamp(micros: i64) -> String {
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

/// `YYYY-MM-DD` (more year digits allowed) and the text after it, as days since 1970; a
/// trailing ` BC` (after any time and offset) is applied here.
fn parse_ymd(s: &str) -> Option<(i64, &str)> {
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

/// A date's text as a Date (its midnight, UTC), or ±Infinity.
pub(super) fn parse_date(s: &str) -> Option<Cell> {
  Some(match s {
    "infinity" => Cell::Number(f64::INFINITY),
    "-infinity" => Cell::Number(f64::NEG_INFINITY),
    _ => {
      let (days, rest) = parse_ymd(s)?;
      if !rest.is_empty() {
        return None;
      }
      Cell::Date((days * 86_400_000) as f64)
    }
  })
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]` as a Date (ms, rounded down like the
/// binary decoder), or ±Infinity.
pub(super) fn parse_timestamp(s: &str) -> Option<Cell> {
  match s {
    "infinity" => return Some(Cell::Number(f64::INFINITY)),
    "-infinity" => return Some(Cell::Number(f64::NEG_INFINITY)),
    _ => {}
  }
  let (days, rest) = parse_ymd(s)?;
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

/// An interval in IntervalStyle `postgres` (`1 year 2 mons -3 days -04:05:06.789`) as
/// node-postgres' `postgres-interval` makes it: only the non-zero fields of years, months,
/// days, hours, minutes, seconds and milliseconds (the time's sign applies to its parts).
pub(super) fn parse_interval(s: &str) -> Option<Cell> {
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

// ---------------------------------------------------------------------------------------------
// Rows in binary format

/// timestamp and timestamptz: microseconds since 2000-01-01 (i64::MAX and MIN: ±infinity).
pub(super) fn decode_timestamp(b: &[u8]) -> Option<Cell> {
  let micros = i64::from_be_bytes(exact(b)?);
  Some(match micros {
    i64::MAX => Cell::Number(f64::INFINITY),
    i64::MIN => Cell::Number(f64::NEG_INFINITY),
    // JS Dates hold milliseconds; round down like node-postgres (also before 1970).
    // Beyond i64 after the epoch shift (year 294276): no JS Date holds it anyway.
    m => match m.checked_add(PG_EPOCH_MICROS) {
      Some(unix) => Cell::Date(unix.div_euclid(1000) as f64),
      None => Cell::Number(f64::INFINITY),
    },
  })
}

/// date: days since 2000-01-01.
pub(super) fn decode_date(b: &[u8]) -> Option<Cell> {
  let days = i64::from(i32::from_be_bytes(exact(b)?));
  Some(Cell::Date(((days + PG_EPOCH_DAYS) * 86_400_000) as f64))
}

/// time: microseconds since midnight, as `HH:MM:SS[.ffffff]`.
pub(super) fn decode_time(b: &[u8]) -> Option<Cell> {
  let micros = i64::from_be_bytes(exact(b)?);
  let secs = micros / 1_000_000;
  let frac = micros % 1_000_000;
  let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
  if frac != 0 {
    s += &format!(".{frac:06}");
  }
  Some(Cell::Text(s))
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
      let text = format_timestamp(micros);
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

  const DAY_MS: f64 = 86_400_000.0;

  fn err(s: &str) -> EncodeResult {
    Err(s.to_owned())
  }

  #[test]
  fn timestamp_parameters_and_their_text() {
    let text = |p: Param| timestamp_text(&encode_timestamp(&p).unwrap());
    assert_eq!(
      encode_timestamp(&Param::Date(0.0)),
      Ok((-PG_EPOCH_MICROS).to_be_bytes().to_vec())
    );
    assert_eq!(
      text(Param::Date(DAY_MS + 1.0)),
      "1970-01-02 00:00:00.001000+00"
    );
    // A Date's fraction of a millisecond is dropped, toward zero.
    assert_eq!(text(Param::Date(-1.5)), "1969-12-31 23:59:59.999000+00");
    assert_eq!(text(Param::Number(0.0)), "1970-01-01 00:00:00.000000+00");
    assert_eq!(
      text(Param::Text(" 2024-05-06T07:08:09.5+02:30 ".into())),
      "2024-05-06 04:38:09.500000+00"
    );
    assert_eq!(
      text(Param::Text("2024-05-06 07:08:09.123456-01".into())),
      "2024-05-06 08:08:09.123456+00"
    );
    assert_eq!(
      text(Param::Text("2024-05-06T07:08:09".into())),
      "2024-05-06 07:08:09.000000+00"
    );
    assert_eq!(
      text(Param::Text("2024-05-06".into())),
      "2024-05-06 00:00:00.000000+00"
    );
    // Day 0 of year 1 is 1 BC, Dec 31.
    assert_eq!(
      text(Param::Date(-62_135_596_800_000.0 - DAY_MS)),
      "0001-12-31 00:00:00.000000+00 BC"
    );
    assert_eq!(
      encode_timestamp(&Param::Text("yesterday".into())),
      err("not a timestamp")
    );
    assert_eq!(
      encode_timestamp(&Param::Date(f64::NAN)),
      err("invalid Date")
    );
    assert_eq!(
      encode_timestamp(&Param::Number(0.5e20)),
      err("invalid time")
    );
    assert_eq!(
      encode_timestamp(&Param::Bool(true)),
      err("expected a Date or an ISO 8601 string")
    );
  }

  #[test]
  fn date_parameters_and_their_text() {
    assert_eq!(
      encode_date(&Param::Text("2000-01-02".into())),
      Ok(1i32.to_be_bytes().to_vec())
    );
    assert_eq!(date_text(&1i32.to_be_bytes()), "2000-01-02");
    assert_eq!(
      date_text(&encode_date(&Param::Date(-DAY_MS)).unwrap()),
      "1969-12-31"
    );
    assert_eq!(
      date_text(&encode_date(&Param::Text("2024-02-29T23:00:00-02:00".into())).unwrap()),
      "2024-03-01"
    );
    assert_eq!(
      date_text(&encode_date(&Param::Date(-62_135_596_800_000.0 - DAY_MS)).unwrap()),
      "0001-12-31 BC"
    );
    assert_eq!(
      encode_date(&Param::Text("2000-13-01".into())),
      err("not a date")
    );
  }

  #[test]
  fn date_rows_in_text() {
    assert_eq!(
      parse_date("2024-02-29"),
      Some(Cell::Date(19_782.0 * DAY_MS))
    );
    assert_eq!(parse_date("1970-01-01"), Some(Cell::Date(0.0)));
    assert_eq!(
      parse_date("0001-12-31 BC"),
      Some(Cell::Date(-719_163.0 * DAY_MS))
    );
    assert_eq!(parse_date("infinity"), Some(Cell::Number(f64::INFINITY)));
    assert_eq!(
      parse_date("-infinity"),
      Some(Cell::Number(f64::NEG_INFINITY))
    );
    assert_eq!(parse_date("2024-02-29 00:00:00"), None);
    assert_eq!(parse_date("2024/02/29"), None);
    assert_eq!(parse_date("02-29-2024"), None);
  }

  #[test]
  fn timestamp_rows_in_text() {
    assert_eq!(
      parse_timestamp("2024-05-06 07:08:09"),
      Some(Cell::Date(1_714_979_289_000.0))
    );
    // Rounded down to the millisecond, before 1970 too.
    assert_eq!(
      parse_timestamp("1969-12-31 23:59:59.9999+00"),
      Some(Cell::Date(-1.0))
    );
    assert_eq!(
      parse_timestamp("2024-05-06 07:08:09+05:30:15"),
      Some(Cell::Date(1_714_979_289_000.0 - 19_815_000.0))
    );
    assert_eq!(
      parse_timestamp("infinity"),
      Some(Cell::Number(f64::INFINITY))
    );
    assert_eq!(
      parse_timestamp("-infinity"),
      Some(Cell::Number(f64::NEG_INFINITY))
    );
    assert_eq!(parse_timestamp("2024-05-06"), None);
    assert_eq!(parse_timestamp("2024-05-06 07:08:09 UTC"), None);
    assert_eq!(parse_timestamp("2024-05-06T07:08:09"), None);
  }

  fn interval(fields: serde_json::Value) -> Option<Cell> {
    Some(Cell::Json(fields))
  }

  #[test]
  fn interval_rows_as_postgres_interval() {
    assert_eq!(
      parse_interval("1 year 2 mons -3 days -04:05:06.789"),
      interval(serde_json::json!({
        "years": 1.0, "months": 2.0, "days": -3.0,
        "hours": -4.0, "minutes": -5.0, "seconds": -6.0, "milliseconds": -789.0,
      }))
    );
    assert_eq!(
      parse_interval("5 years 1 day +00:00:01.5"),
      interval(
        serde_json::json!({ "years": 5.0, "days": 1.0, "seconds": 1.0, "milliseconds": 500.0 })
      )
    );
    // Microseconds as a fraction of a millisecond.
    assert_eq!(
      parse_interval("00:00:00.000123"),
      interval(serde_json::json!({ "milliseconds": 0.123 }))
    );
    assert_eq!(parse_interval("00:00:00"), interval(serde_json::json!({})));
    assert_eq!(
      parse_interval("-1 days"),
      interval(serde_json::json!({ "days": -1.0 }))
    );
    assert_eq!(parse_interval("1 fortnight"), None);
    assert_eq!(parse_interval("P1Y2M"), None);
    assert_eq!(parse_interval("1"), None);
  }

  #[test]
  fn datetime_rows_in_binary() {
    let epoch_ms = 946_684_800_000.0;
    assert_eq!(
      decode_timestamp(&0i64.to_be_bytes()),
      Some(Cell::Date(epoch_ms))
    );
    assert_eq!(
      decode_timestamp(&(-1i64).to_be_bytes()),
      Some(Cell::Date(epoch_ms - 1.0))
    );
    // Rounded down before 1970 too (1 µs before it).
    assert_eq!(
      decode_timestamp(&(-PG_EPOCH_MICROS - 1).to_be_bytes()),
      Some(Cell::Date(-1.0))
    );
    assert_eq!(
      decode_timestamp(&i64::MAX.to_be_bytes()),
      Some(Cell::Number(f64::INFINITY))
    );
    assert_eq!(
      decode_timestamp(&i64::MIN.to_be_bytes()),
      Some(Cell::Number(f64::NEG_INFINITY))
    );
    assert_eq!(
      decode_timestamp(&(i64::MAX - 1).to_be_bytes()),
      Some(Cell::Number(f64::INFINITY))
    );
    assert_eq!(decode_timestamp(&[0; 4]), None);
    assert_eq!(decode_date(&0i32.to_be_bytes()), Some(Cell::Date(epoch_ms)));
    assert_eq!(
      decode_date(&(-1i32).to_be_bytes()),
      Some(Cell::Date(epoch_ms - DAY_MS))
    );
    assert_eq!(decode_date(&[0; 8]), None);
    assert_eq!(
      decode_time(&0i64.to_be_bytes()),
      Some(Cell::Text("00:00:00".into()))
    );
    assert_eq!(
      decode_time(&47_655_000_016i64.to_be_bytes()),
      Some(Cell::Text("13:14:15.000016".into()))
    );
    assert_eq!(
      decode_time(&86_400_000_000i64.to_be_bytes()),
      Some(Cell::Text("24:00:00".into()))
    );
    assert_eq!(decode_time(&[0; 4]), None);
  }
}
