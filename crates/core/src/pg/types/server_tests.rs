//! The type families against a real PostgreSQL, as sqlx's `tests/postgres/types.rs` does: what
//! the server sends is decoded through `rows::decode` (binary, as the service's own statements
//! get it; text, in the settings the statement path pins), and parameters go as the text
//! `typed` and `param_text` write and come back from the server in binary.
//!
//! The server: `TEST_PG_ADMIN_URL`, else PostgreSQL at 127.0.0.1:5432 as user postgres (as
//! `tests/postgres.rs`). Only SELECTs and session settings run here, on the admin database: no
//! database of its own is needed.

use super::{oid, param_text, type_of_oid, typed};
use crate::pg::config::Config;
use crate::pg::rows;
use crate::pg::statement::PIN_SQL;
use crate::pg::wire::{Format, Outcome, Stmt, Wire, Wired};
use crate::value::{Cell, Param};
use serde_json::json;

const DAY_MS: f64 = 86_400_000.0;

/// Settings unlike the ones the statement path pins, so text rows show that the pin is what
/// they are read in; binary rows and the parameters' text must not depend on them.
const OTHER_SETTINGS: &str = "SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'; \
  SET extra_float_digits = 0; SET bytea_output = 'escape'; SET TimeZone = 'America/St_Johns'";

async fn connect() -> Wire {
  let url = std::env::var("TEST_PG_ADMIN_URL")
    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
  let mut wire = Wire::connect(&Config::parse(&url, None).unwrap())
    .await
    .unwrap();
  wire.simple_query(OTHER_SETTINGS).await.unwrap();
  wire
}

/// The first column of a one-row statement's answer, decoded as the statement path does.
async fn value(wire: &mut Wire, sql: &str, params: &[Wired], result: Format) -> Cell {
  let stmt = Stmt {
    sql,
    params,
    result,
    name: "",
    parse: true,
  };
  let answer = wire.flight(&[], &[stmt]).await.unwrap();
  let raw = match answer.outcomes.into_iter().next() {
    Some(Outcome::Done(raw)) => raw,
    other => panic!("{sql}: {other:?}"),
  };
  let mut decoded = rows::decode(raw).unwrap();
  assert_eq!(decoded.rows.len(), 1, "{sql}");
  decoded.rows.remove(0).remove(0)
}

async fn binary(wire: &mut Wire, sql: &str) -> Cell {
  value(wire, sql, &[], Format::Binary).await
}

async fn text(wire: &mut Wire, sql: &str) -> Cell {
  value(wire, sql, &[], Format::Text).await
}

fn is_nan(c: &Cell) -> bool {
  matches!(c, Cell::Number(n) if n.is_nan())
}

#[tokio::test]
async fn binary_rows_from_the_server() {
  let mut w = connect().await;
  let cases: Vec<(&str, Cell)> = vec![
    // Whatever the session's TimeZone: an instant, rounded down to the millisecond.
    (
      "SELECT '2024-05-06 07:08:09.123456+02:30'::timestamptz",
      Cell::Date(1_714_970_289_123.0),
    ),
    (
      "SELECT '1969-12-31 23:59:59.9999+00'::timestamptz",
      Cell::Date(-1.0),
    ),
    (
      "SELECT '2024-05-06 07:08:09'::timestamp",
      Cell::Date(1_714_979_289_000.0),
    ),
    (
      "SELECT 'infinity'::timestamptz",
      Cell::Number(f64::INFINITY),
    ),
    (
      "SELECT '-infinity'::timestamp",
      Cell::Number(f64::NEG_INFINITY),
    ),
    ("SELECT '2024-02-29'::date", Cell::Date(19_782.0 * DAY_MS)),
    (
      "SELECT '0001-12-31 BC'::date",
      Cell::Date(-719_163.0 * DAY_MS),
    ),
    (
      "SELECT '13:14:15.000016'::time",
      Cell::Text("13:14:15.000016".into()),
    ),
    ("SELECT '-32768'::int2", Cell::Number(-32768.0)),
    ("SELECT 2147483647::int4", Cell::Number(2_147_483_647.0)),
    ("SELECT 4294967295::oid", Cell::Number(4_294_967_295.0)),
    (
      "SELECT 9223372036854775807::int8",
      Cell::Text("9223372036854775807".into()),
    ),
    ("SELECT 0.1::float4", Cell::Number(0.1)),
    (
      "SELECT 0.1::float8 + 0.2::float8",
      Cell::Number(0.300_000_000_000_000_04),
    ),
    (
      "SELECT '-12345.678900'::numeric",
      Cell::Text("-12345.678900".into()),
    ),
    (
      "SELECT 1e-20::numeric",
      Cell::Text("0.00000000000000000001".into()),
    ),
    (
      "SELECT 123456789012345678901234567890::numeric",
      Cell::Text("123456789012345678901234567890".into()),
    ),
    ("SELECT 0::numeric(5,2)", Cell::Text("0.00".into())),
    ("SELECT 'NaN'::numeric", Cell::Text("NaN".into())),
    (
      "SELECT '-Infinity'::numeric",
      Cell::Text("-Infinity".into()),
    ),
    (
      "SELECT '6F9619FF-8B86-D011-B42D-00C04FC964FF'::uuid",
      Cell::Text("6f9619ff-8b86-d011-b42d-00c04fc964ff".into()),
    ),
    (
      r#"SELECT '{"b": [1, null], "a": "x"}'::jsonb"#,
      Cell::Json(json!({ "a": "x", "b": [1, null] })),
    ),
    (
      r#"SELECT '{"a": 1.5}'::json"#,
      Cell::Json(json!({ "a": 1.5 })),
    ),
    (
      r"SELECT '\x00ff5c'::bytea",
      Cell::Bytes(vec![0, 0xff, 0x5c]),
    ),
    ("SELECT true", Cell::Bool(true)),
    ("SELECT 'café'::varchar(10)", Cell::Text("café".into())),
    ("SELECT 'ab'::char(3)", Cell::Text("ab ".into())),
    (
      "SELECT ARRAY[[1,2],[3,NULL]]::int4[]",
      Cell::Array(vec![
        Cell::Array(vec![Cell::Number(1.0), Cell::Number(2.0)]),
        Cell::Array(vec![Cell::Number(3.0), Cell::Null]),
      ]),
    ),
    // numeric[] elements as numbers, as node-postgres parses them.
    (
      "SELECT ARRAY[1.50, NULL]::numeric[]",
      Cell::Array(vec![Cell::Number(1.5), Cell::Null]),
    ),
    ("SELECT '{}'::int4[]", Cell::Array(vec![])),
    (
      "SELECT ARRAY['a\"b', NULL]::text[]",
      Cell::Array(vec![Cell::Text("a\"b".into()), Cell::Null]),
    ),
    (
      "SELECT ARRAY['2000-01-01 00:00:00+00']::timestamptz[]",
      Cell::Array(vec![Cell::Date(946_684_800_000.0)]),
    ),
  ];
  for (sql, want) in cases {
    assert_eq!(binary(&mut w, sql).await, want, "{sql}");
  }
  assert!(is_nan(&binary(&mut w, "SELECT 'NaN'::float8").await));
  w.close().await;
}

#[tokio::test]
async fn text_rows_in_the_pinned_settings() {
  let mut w = connect().await;
  // The statement path pins these for the transaction when the database's differ.
  w.simple_query(&format!("BEGIN; {PIN_SQL}")).await.unwrap();
  let cases: Vec<(&str, Cell)> = vec![
    (
      "SELECT '1 year 2 months -3 days -04:05:06.789'::interval",
      Cell::Json(json!({
        "years": 1.0, "months": 2.0, "days": -3.0,
        "hours": -4.0, "minutes": -5.0, "seconds": -6.0, "milliseconds": -789.0,
      })),
    ),
    (
      "SELECT '0.000123 seconds'::interval",
      Cell::Json(json!({ "milliseconds": 0.123 })),
    ),
    ("SELECT '0'::interval", Cell::Json(json!({}))),
    // In the session's TimeZone (St John's, -02:30 in May), read back as the same instant.
    (
      "SELECT '2024-05-06 07:08:09.123456+02:30'::timestamptz",
      Cell::Date(1_714_970_289_123.0),
    ),
    (
      "SELECT '0001-01-01 00:00:00+00 BC'::timestamptz",
      Cell::Date(-62_167_219_200_000.0),
    ),
    (
      "SELECT '2024-05-06 07:08:09.5'::timestamp",
      Cell::Date(1_714_979_289_500.0),
    ),
    (
      "SELECT 'infinity'::timestamptz",
      Cell::Number(f64::INFINITY),
    ),
    (
      "SELECT '0001-12-31 BC'::date",
      Cell::Date(-719_163.0 * DAY_MS),
    ),
    ("SELECT '-infinity'::date", Cell::Number(f64::NEG_INFINITY)),
    // extra_float_digits 1: the shortest text that reads back exactly.
    (
      "SELECT 0.1::float8 + 0.2::float8",
      Cell::Number(0.300_000_000_000_000_04),
    ),
    ("SELECT 0.1::float4", Cell::Number(0.1)),
    (
      "SELECT '-Infinity'::float8",
      Cell::Number(f64::NEG_INFINITY),
    ),
    ("SELECT 7::int2", Cell::Number(7.0)),
    (
      "SELECT 9223372036854775807::int8",
      Cell::Text("9223372036854775807".into()),
    ),
    (
      "SELECT '-12345.678900'::numeric",
      Cell::Text("-12345.678900".into()),
    ),
    (
      r"SELECT '\x00ff5c'::bytea",
      Cell::Bytes(vec![0, 0xff, 0x5c]),
    ),
    ("SELECT false", Cell::Bool(false)),
    (
      r#"SELECT '{"a": [1, null]}'::jsonb"#,
      Cell::Json(json!({ "a": [1, null] })),
    ),
    (
      "SELECT '(1.5,-2)'::point",
      Cell::Json(json!({ "x": 1.5, "y": -2.0 })),
    ),
    (
      "SELECT '<(1,2),3.25>'::circle",
      Cell::Json(json!({ "x": 1.0, "y": 2.0, "radius": 3.25 })),
    ),
    (
      "SELECT '6F9619FF-8B86-D011-B42D-00C04FC964FF'::uuid",
      Cell::Text("6f9619ff-8b86-d011-b42d-00c04fc964ff".into()),
    ),
    ("SELECT '08:00'::time", Cell::Text("08:00:00".into())),
    (
      "SELECT ARRAY[[1,2],[3,NULL]]::int4[]",
      Cell::Array(vec![
        Cell::Array(vec![Cell::Number(1.0), Cell::Number(2.0)]),
        Cell::Array(vec![Cell::Number(3.0), Cell::Null]),
      ]),
    ),
    (
      r#"SELECT ARRAY['a "b"', 'NULL', NULL, 'c\d']::text[]"#,
      Cell::Array(vec![
        Cell::Text("a \"b\"".into()),
        Cell::Text("NULL".into()),
        Cell::Null,
        Cell::Text("c\\d".into()),
      ]),
    ),
    (
      "SELECT '{1 day, 2 hours}'::interval[]",
      Cell::Array(vec![
        Cell::Json(json!({ "days": 1.0 })),
        Cell::Json(json!({ "hours": 2.0 })),
      ]),
    ),
    (
      "SELECT ARRAY['2000-01-01 00:00:00+00']::timestamptz[]",
      Cell::Array(vec![Cell::Date(946_684_800_000.0)]),
    ),
    (
      "SELECT ARRAY['\\x01'::bytea]",
      Cell::Array(vec![Cell::Bytes(vec![1])]),
    ),
    (
      "SELECT ARRAY[1.50, NULL]::numeric[]",
      Cell::Array(vec![Cell::Number(1.5), Cell::Null]),
    ),
    (
      "SELECT ARRAY['(1,2)'::point]",
      Cell::Array(vec![Cell::Json(json!({ "x": 1.0, "y": 2.0 }))]),
    ),
    // An array pg-types does not parse: the server's text.
    (
      "SELECT ARRAY['a', 'b c']::name[]",
      Cell::Text(r#"{a,"b c"}"#.into()),
    ),
  ];
  for (sql, want) in cases {
    assert_eq!(text(&mut w, sql).await, want, "{sql}");
  }
  assert!(is_nan(&text(&mut w, "SELECT 'NaN'::float4").await));
  w.close().await;
}

/// A callback's parameter: the type the server infers for `$1`, the text `typed` writes for
/// it, and what the server read, back in binary.
async fn typed_round_trip(w: &mut Wire, sql: &str, p: Param) -> Cell {
  let types = w.describe(sql).await.unwrap();
  let sent = typed(&p, &type_of_oid(types[0]), 0).unwrap();
  let params = [sent.map_or(Wired::Null, Wired::Text)];
  value(w, sql, &params, Format::Binary).await
}

#[tokio::test]
async fn callback_parameters_read_back_by_the_server() {
  let mut w = connect().await;
  let before_year_1 = -62_135_596_800_000.0 - DAY_MS;
  let cases: Vec<(&str, Param, Cell)> = vec![
    ("SELECT $1::float4", Param::Number(0.1), Cell::Number(0.1)),
    (
      "SELECT $1::float8",
      Param::Number(0.1 + 0.2),
      Cell::Number(0.300_000_000_000_000_04),
    ),
    (
      "SELECT $1::numeric",
      Param::Number(0.1),
      Cell::Text("0.1".into()),
    ),
    (
      "SELECT $1::numeric",
      Param::Number(1e21),
      Cell::Text("1000000000000000000000".into()),
    ),
    (
      "SELECT $1::int8",
      Param::Number(-9_007_199_254_740_991.0),
      Cell::Text("-9007199254740991".into()),
    ),
    ("SELECT $1::int2", Param::Bool(true), Cell::Number(1.0)),
    (
      "SELECT $1::oid",
      Param::Number(4_294_967_295.0),
      Cell::Number(4_294_967_295.0),
    ),
    ("SELECT $1::bool", Param::Number(0.0), Cell::Bool(false)),
    (
      "SELECT $1::timestamptz",
      Param::Date(1_714_970_289_123.0),
      Cell::Date(1_714_970_289_123.0),
    ),
    // A Date is written in UTC: a timestamp gets its UTC wall time, whatever the TimeZone.
    (
      "SELECT $1::timestamp",
      Param::Date(1_714_970_289_123.0),
      Cell::Date(1_714_970_289_123.0),
    ),
    (
      "SELECT $1::timestamptz",
      Param::Date(-1.5),
      Cell::Date(-1.0),
    ),
    (
      "SELECT $1::timestamptz",
      Param::Date(before_year_1),
      Cell::Date(before_year_1),
    ),
    (
      "SELECT $1::timestamptz",
      Param::Number(1000.0),
      Cell::Date(1000.0),
    ),
    (
      "SELECT $1::date",
      Param::Date(before_year_1),
      Cell::Date(before_year_1),
    ),
    (
      "SELECT $1::date",
      Param::Date(19_782.0 * DAY_MS + 5.0),
      Cell::Date(19_782.0 * DAY_MS),
    ),
    (
      "SELECT $1::uuid",
      Param::Bytes(vec![0xab; 16]),
      Cell::Text("abababab-abab-abab-abab-abababababab".into()),
    ),
    (
      "SELECT $1::bytea",
      Param::Bytes(vec![0, 0x5c, 0xff]),
      Cell::Bytes(vec![0, 0x5c, 0xff]),
    ),
    (
      "SELECT $1::jsonb",
      Param::Json(json!({ "a": [1, "x\"y"] })),
      Cell::Json(json!({ "a": [1, "x\"y"] })),
    ),
    (
      "SELECT $1::json",
      Param::Array(vec![Param::Number(1.0), Param::Null]),
      Cell::Json(json!([1, null])),
    ),
    (
      "SELECT $1::int4[]",
      Param::Array(vec![Param::Number(1.0), Param::Null, Param::Number(-3.0)]),
      Cell::Array(vec![Cell::Number(1.0), Cell::Null, Cell::Number(-3.0)]),
    ),
    (
      "SELECT $1::text[]",
      Param::Array(vec![
        Param::Text(r#"a"b\c"#.into()),
        Param::Null,
        Param::Text(String::new()),
        Param::Text("NULL".into()),
        Param::Number(2.0),
      ]),
      Cell::Array(vec![
        Cell::Text(r#"a"b\c"#.into()),
        Cell::Null,
        Cell::Text(String::new()),
        Cell::Text("NULL".into()),
        Cell::Text("2".into()),
      ]),
    ),
    (
      "SELECT $1::timestamptz[]",
      Param::Array(vec![Param::Date(0.0)]),
      Cell::Array(vec![Cell::Date(0.0)]),
    ),
    (
      "SELECT $1::bytea[]",
      Param::Array(vec![Param::Bytes(vec![1, 2])]),
      Cell::Array(vec![Cell::Bytes(vec![1, 2])]),
    ),
    (
      "SELECT $1::float8",
      Param::Number(f64::NEG_INFINITY),
      Cell::Number(f64::NEG_INFINITY),
    ),
  ];
  for (sql, p, want) in cases {
    assert_eq!(
      typed_round_trip(&mut w, sql, p.clone()).await,
      want,
      "{sql} {p:?}"
    );
  }
  w.close().await;
}

#[tokio::test]
async fn service_parameters_read_back_by_the_server() {
  let mut w = connect().await;
  let cases: Vec<(&str, Param, Cell)> = vec![
    ("SELECT $1::bool", Param::Bool(true), Cell::Bool(true)),
    ("SELECT $1::float8", Param::Number(0.1), Cell::Number(0.1)),
    (
      "SELECT $1::int8",
      Param::BigInt("9223372036854775807".into()),
      Cell::Text("9223372036854775807".into()),
    ),
    (
      "SELECT $1::timestamptz",
      Param::Date(1_714_970_289_123.0),
      Cell::Date(1_714_970_289_123.0),
    ),
    (
      "SELECT $1::bytea",
      Param::Bytes(vec![0, 0xff]),
      Cell::Bytes(vec![0, 0xff]),
    ),
    (
      "SELECT $1::jsonb",
      Param::Json(json!({ "k": "v" })),
      Cell::Json(json!({ "k": "v" })),
    ),
    (
      "SELECT $1::text[]",
      Param::Array(vec![
        Param::Text(r#"a"b\c"#.into()),
        Param::Null,
        Param::Bool(false),
      ]),
      Cell::Array(vec![
        Cell::Text(r#"a"b\c"#.into()),
        Cell::Null,
        Cell::Text("f".into()),
      ]),
    ),
  ];
  for (sql, p, want) in cases {
    let params = [param_text(&p).unwrap().map_or(Wired::Null, Wired::Text)];
    assert_eq!(
      value(&mut w, sql, &params, Format::Binary).await,
      want,
      "{sql} {p:?}"
    );
  }
  // The OID table agrees with the server's catalogue.
  for (name, t) in [
    ("bool", oid::BOOL),
    ("int8", oid::INT8),
    ("numeric", oid::NUMERIC),
    ("timestamptz", oid::TIMESTAMPTZ),
    ("interval", oid::INTERVAL),
    ("point", oid::POINT),
    ("circle", oid::CIRCLE),
    ("jsonb", oid::JSONB),
    ("uuid", oid::UUID),
  ] {
    let sql = format!("SELECT '{name}'::regtype::oid");
    assert_eq!(
      binary(&mut w, &sql).await,
      Cell::Number(f64::from(t)),
      "{name}"
    );
  }
  w.close().await;
}
