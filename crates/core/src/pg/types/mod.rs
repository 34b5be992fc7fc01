//! Values both ways, one file per type family, each holding that family's parameter encoding
//! (binary, which decides what is accepted, then the text Bind carries), its text-row decoding
//! (as node-postgres' pg-types parses it) and its binary-row decoding (the service's own
//! results): `boolean`, `numeric` (int2, int4, int8, oid, float4, float8, numeric), `text` (the
//! textual types and uuid), `json` (json, jsonb), `bytea`, `datetime` (date, time, timestamp,
//! timestamptz, interval), `geometric` (point, circle) and `array`. Here: the OID table, which
//! types are known and which textual, and the dispatch by OID.
//!
//! Parameters go as text: the service's own as plain text, its SQL casting each
//! ([`param_text`]); a callback's as the text of the type the server inferred ([`typed`]): a
//! non-string parameter is first encoded by the binary encoder of its described type (so the
//! same values are accepted and refused as before), then written as the text PostgreSQL's input
//! function reads back to that same value. Rows come back in text (a callback's, decoded by
//! [`decode_text`]) or in binary (the service's own, by [`decode_binary`]).

mod array;
mod boolean;
mod bytea;
mod datetime;
mod geometric;
mod json;
mod numeric;
#[cfg(test)]
mod server_tests;
mod text;

use crate::error::{Error, Result};
use crate::value::{iso_string, Cell, Param};
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
  // Decoded from text rows only (not known to the encoder: see `is_known_oid`).
  pub const POINT: u32 = 600;
  pub const CIRCLE: u32 = 718;
  pub const INTERVAL: u32 = 1186;
}

type EncodeResult = std::result::Result<Vec<u8>, String>;

/// `b` as exactly `N` bytes (a fixed-size binary value), or `None` for any other length.
fn exact<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
  b.try_into().ok()
}

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
  array::array_element(t).is_some()
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
  let elem = array::array_element(t);
  let name = match elem.unwrap_or(t) {
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
  if elem.is_some() {
    format!("{name}[]")
  } else {
    name.to_owned()
  }
}

// ---------------------------------------------------------------------------------------------
// Parameters

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
    Param::Array(items) => Some(checked(array::array_literal(items, &|item| {
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
    Param::Bool(b) => boolean::bool_literal(*b),
    Param::Number(n) => numeric::float_text(*n),
    Param::Bytes(b) => bytea::hex(b),
    Param::Date(ms) => iso_string(*ms).ok_or_else(|| Error::invalid("invalid Date"))?,
    other => text::as_text(other).map_err(Error::invalid)?,
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
    Param::Number(n) if !n.is_finite() => return Ok(Some(numeric::float_text(*n))),
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
  let text = if let Some(elem) = array::array_element(t) {
    let Param::Array(items) = p else {
      return Err(refuse("expected an array".into()));
    };
    array::array_literal(items, &|item| {
      Ok(match item {
        Param::Null => None,
        other if is_textual_oid(elem) => Some(text::as_text(other).map_err(&refuse)?),
        other => {
          let b = encode_scalar(other, elem, "array element").map_err(&refuse)?;
          Some(scalar_text(other, &b, elem))
        }
      })
    })?
  } else if let (Param::Array(items), false) = (p, is_known_oid(t)) {
    // An array of a type we do not know (an enum[]…): its elements as text.
    array::array_literal(items, &|item| {
      Ok(match item {
        Param::Null => None,
        other => Some(text::as_text(other).map_err(&refuse)?),
      })
    })?
  } else if is_textual(ty) {
    text::as_text(p).map_err(refuse)?
  } else {
    scalar_text(p, &bytes, t)
  };
  checked(text).map(Some)
}

/// A parameter in the binary format of its described type: what it would be accepted as.
fn encode(param: &Param, ty: &PgTypeInfo) -> EncodeResult {
  let t = type_oid(ty);
  if let Some(elem) = array::array_element(t) {
    return array::encode_array(param, elem, is_textual_oid(elem));
  }
  // An array of a described type sent as text (an enum[], a citext[]).
  if ty.name() != "?" {
    if let PgTypeKind::Array(elem) = ty.kind() {
      if is_textual(elem) {
        return array::encode_array(param, type_oid(elem), true);
      }
    }
  }
  if is_textual(ty) {
    return Ok(text::as_text(param)?.into_bytes());
  }
  encode_scalar(param, t, &type_name(ty))
}

/// A scalar parameter in the binary format of type `t` (`name` for the message).
fn encode_scalar(param: &Param, t: u32, name: &str) -> EncodeResult {
  match t {
    oid::BOOL => boolean::encode_bool(param),
    oid::INT2 => numeric::encode_int2(param),
    oid::INT4 => numeric::encode_int4(param),
    oid::OID => numeric::encode_oid(param),
    oid::INT8 => numeric::encode_int8(param),
    oid::FLOAT4 => numeric::encode_float4(param),
    oid::FLOAT8 => numeric::encode_float8(param),
    oid::NUMERIC => numeric::encode_numeric(param),
    oid::UUID => text::encode_uuid(param),
    oid::JSON => json::encode_json(param),
    oid::JSONB => json::encode_jsonb(param),
    oid::BYTEA => bytea::encode_bytea(param),
    oid::TIMESTAMPTZ | oid::TIMESTAMP => datetime::encode_timestamp(param),
    oid::DATE => datetime::encode_date(param),
    _ => Err(format!(
      "type {name} is not supported for parameters; cast it in SQL (for example $1::text)"
    )),
  }
}

/// The text form of a value already encoded in binary as type `t`.
fn scalar_text(p: &Param, b: &[u8], t: u32) -> String {
  match t {
    oid::BOOL => boolean::bool_text(b),
    oid::INT2 => numeric::int2_text(b),
    oid::INT4 => numeric::int4_text(b),
    oid::OID => numeric::oid_text(b),
    oid::INT8 => numeric::int8_text(b),
    oid::FLOAT4 => numeric::float4_text(b),
    oid::FLOAT8 => numeric::float8_text(b),
    oid::NUMERIC => numeric::numeric_text(b),
    oid::UUID => text::uuid_text(b),
    oid::JSON => json::json_text(b),
    oid::JSONB => json::jsonb_text(b),
    oid::BYTEA => bytea::hex(b),
    oid::TIMESTAMPTZ | oid::TIMESTAMP => datetime::timestamp_text(b),
    oid::DATE => datetime::date_text(b),
    // Types the binary encoder writes as text (json-like and textual ones are handled above).
    _ => json::as_json(p).unwrap_or_default(),
  }
}

// ---------------------------------------------------------------------------------------------
// Rows

fn undecodable(t: u32) -> Error {
  Error::Database {
    sqlstate: None,
    message: format!("could not decode a value of type oid {t}"),
  }
}

/// One column value in text format, by its type OID, as node-postgres parses it.
pub(crate) fn decode_text(s: &str, t: u32) -> Result<Cell> {
  if let Some(elem) = array::parsed_array_element(t) {
    return array::parse_array(s, elem).ok_or_else(|| undecodable(t));
  }
  let cell = match t {
    oid::INTERVAL => datetime::parse_interval(s),
    oid::POINT => Some(geometric::parse_point(s).map_or(Cell::Null, Cell::Json)),
    oid::CIRCLE => Some(geometric::parse_circle(s).map_or(Cell::Null, Cell::Json)),
    oid::BOOL => Some(boolean::parse_bool(s)),
    oid::INT2 | oid::INT4 | oid::OID => numeric::parse_int(s),
    oid::FLOAT4 | oid::FLOAT8 => numeric::parse_float(s).map(Cell::Number),
    oid::JSON | oid::JSONB => json::parse_json(s),
    oid::BYTEA => bytea::parse_bytea(s).map(Cell::Bytes),
    oid::TIMESTAMPTZ | oid::TIMESTAMP => datetime::parse_timestamp(s),
    oid::DATE => datetime::parse_date(s),
    // int8, numeric, uuid, the text types and every other type: the server's text, as is.
    _ => Some(Cell::Text(s.to_owned())),
  };
  cell.ok_or_else(|| undecodable(t))
}

/// One column value in binary format, by its type OID.
pub(crate) fn decode_binary(b: &[u8], t: u32) -> Result<Cell> {
  if is_textual_oid(t) {
    return Ok(text::decode_textual(b));
  }
  if let Some(elem) = array::array_element(t) {
    return array::decode_array(b, elem).ok_or_else(|| undecodable(t));
  }
  let cell = match t {
    oid::BOOL => boolean::decode_bool(b),
    oid::INT2 => numeric::decode_int2(b),
    oid::INT4 => numeric::decode_int4(b),
    oid::OID => numeric::decode_oid(b),
    oid::INT8 => numeric::decode_int8(b),
    oid::FLOAT4 => numeric::decode_float4(b),
    oid::FLOAT8 => numeric::decode_float8(b),
    oid::NUMERIC => numeric::decode_numeric(b),
    oid::UUID => text::decode_uuid(b),
    oid::JSON => json::decode_json(b),
    oid::JSONB => json::decode_jsonb(b),
    oid::BYTEA => Some(bytea::decode_bytea(b)),
    oid::TIMESTAMPTZ | oid::TIMESTAMP => datetime::decode_timestamp(b),
    oid::DATE => datetime::decode_date(b),
    oid::TIME => datetime::decode_time(b),
    // Anything else: its bytes as text when they are text, else as a Buffer.
    _ => Some(match std::str::from_utf8(b) {
      Ok(s) => Cell::Text(s.to_owned()),
      Err(_) => Cell::Bytes(b.to_vec()),
    }),
  };
  cell.ok_or_else(|| undecodable(t))
}

#[cfg(test)]
mod tests {
  use super::*;

  fn invalid(e: Error) -> String {
    match e {
      Error::InvalidArgument(m) => m,
      other => panic!("expected an invalid argument, got {other:?}"),
    }
  }

  #[test]
  fn service_parameters_as_plain_text() {
    let text = |p: Param| param_text(&p).unwrap();
    assert_eq!(text(Param::Null), None);
    assert_eq!(text(Param::Bool(true)).as_deref(), Some("t"));
    assert_eq!(text(Param::Number(1.5)).as_deref(), Some("1.5"));
    assert_eq!(text(Param::Number(f64::NAN)).as_deref(), Some("NaN"));
    assert_eq!(
      text(Param::Bytes(vec![1, 0xab])).as_deref(),
      Some("\\x01ab")
    );
    assert_eq!(
      text(Param::Date(0.0)).as_deref(),
      Some("1970-01-01T00:00:00.000Z")
    );
    assert_eq!(
      text(Param::Json(serde_json::json!({ "a": 1 }))).as_deref(),
      Some(r#"{"a":1}"#)
    );
    assert_eq!(
      text(Param::Array(vec![
        Param::Text("a\"".into()),
        Param::Null,
        Param::Bool(false)
      ]))
      .as_deref(),
      Some(r#"{"a\"",NULL,"f"}"#)
    );
    assert_eq!(
      invalid(param_text(&Param::Date(f64::NAN)).unwrap_err()),
      "invalid Date"
    );
    let nul = param_text(&Param::Text("a\0b".into())).unwrap_err();
    assert_eq!(nul.sqlstate(), Some("22021"));
    assert_eq!(
      nul.to_string(),
      "invalid byte sequence for encoding \"UTF8\": 0x00"
    );
  }

  #[test]
  fn callback_parameters_as_the_inferred_types_text() {
    let typed_text = |p: Param, t: u32| typed(&p, &type_of_oid(t), 0).unwrap();
    assert_eq!(typed_text(Param::Null, oid::INT4), None);
    // Strings and BigInts as they are: the type's input function judges them.
    assert_eq!(
      typed_text(Param::Text("abc".into()), oid::INT4).as_deref(),
      Some("abc")
    );
    assert_eq!(
      typed_text(Param::BigInt("9007199254740993".into()), oid::INT8).as_deref(),
      Some("9007199254740993")
    );
    assert_eq!(
      typed_text(Param::Number(f64::INFINITY), oid::INT4).as_deref(),
      Some("Infinity")
    );
    assert_eq!(
      typed_text(Param::Number(7.0), oid::INT2).as_deref(),
      Some("7")
    );
    assert_eq!(
      typed_text(Param::Bool(true), oid::BOOL).as_deref(),
      Some("t")
    );
    assert_eq!(
      typed_text(Param::Number(1.0), oid::BOOL).as_deref(),
      Some("t")
    );
    assert_eq!(
      typed_text(Param::Number(0.1), oid::FLOAT4).as_deref(),
      Some("0.10000000149011612")
    );
    assert_eq!(
      typed_text(Param::Number(0.1), oid::NUMERIC).as_deref(),
      Some("0.1")
    );
    assert_eq!(
      typed_text(Param::Date(0.0), oid::TIMESTAMPTZ).as_deref(),
      Some("1970-01-01 00:00:00.000000+00")
    );
    assert_eq!(
      typed_text(Param::Date(0.0), oid::DATE).as_deref(),
      Some("1970-01-01")
    );
    assert_eq!(
      typed_text(Param::Bytes(vec![0xde, 0xad]), oid::BYTEA).as_deref(),
      Some("\\xdead")
    );
    assert_eq!(
      typed_text(Param::Json(serde_json::json!([1, "a"])), oid::JSONB).as_deref(),
      Some(r#"[1,"a"]"#)
    );
    assert_eq!(
      typed_text(Param::Number(2.0), oid::TEXT).as_deref(),
      Some("2")
    );
    // Arrays: each element by its type, quoted.
    assert_eq!(
      typed_text(
        Param::Array(vec![Param::Number(1.0), Param::Null, Param::Number(-3.0)]),
        1007
      )
      .as_deref(),
      Some(r#"{"1",NULL,"-3"}"#)
    );
    assert_eq!(
      typed_text(Param::Array(vec![Param::Date(0.0)]), 1185).as_deref(),
      Some(r#"{"1970-01-01 00:00:00.000000+00"}"#)
    );
    assert_eq!(
      typed_text(
        Param::Array(vec![Param::Number(1.0), Param::Bool(true)]),
        1009
      )
      .as_deref(),
      Some(r#"{"1","true"}"#)
    );
    // An array of a type we do not know: its elements as text.
    assert_eq!(
      typed_text(Param::Array(vec![Param::Text("x y".into())]), 99_999).as_deref(),
      Some(r#"{"x y"}"#)
    );
    // A JS array for a json column is JSON.
    assert_eq!(
      typed_text(Param::Array(vec![Param::Number(1.0)]), oid::JSON).as_deref(),
      Some("[1]")
    );
  }

  #[test]
  fn callback_parameters_refused_with_the_types_name() {
    let refused =
      |p: Param, t: u32, index: usize| invalid(typed(&p, &type_of_oid(t), index).unwrap_err());
    assert_eq!(
      refused(Param::Number(70_000.0), oid::INT2, 1),
      "parameter $2 cannot be sent as int2: out of range for int2"
    );
    assert_eq!(
      refused(Param::Number(1.0), oid::TIME, 0),
      "parameter $1 cannot be sent as time: type time is not supported for parameters; cast it \
       in SQL (for example $1::text)"
    );
    assert_eq!(
      refused(Param::Number(1.0), 1007, 0),
      "parameter $1 cannot be sent as int4[]: expected an array"
    );
    assert_eq!(
      refused(Param::Array(vec![Param::Text("x".into())]), 1007, 0),
      "parameter $1 cannot be sent as int4[]: not an integer"
    );
    assert_eq!(
      refused(Param::Bool(true), oid::UUID, 2),
      "parameter $3 cannot be sent as uuid: expected a uuid string"
    );
    assert_eq!(
      refused(Param::Date(f64::NAN), oid::TIMESTAMP, 0),
      "parameter $1 cannot be sent as timestamp: invalid Date"
    );
    let nul = typed(&Param::Text("\0".into()), &type_of_oid(oid::TEXT), 0).unwrap_err();
    assert_eq!(nul.sqlstate(), Some("22021"));
  }

  #[test]
  fn bare_oids_known_textual_and_named() {
    let name = |t: u32| type_name(&type_of_oid(t));
    assert_eq!(name(oid::INT4), "int4");
    assert_eq!(name(1007), "int4[]");
    assert_eq!(name(oid::VARCHAR), "text");
    assert_eq!(name(1015), "text[]");
    assert_eq!(name(oid::TIMESTAMPTZ), "timestamptz");
    assert_eq!(name(oid::POINT), "the type with oid 600");
    assert!(is_known_oid(oid::TIME) && is_known_oid(3807));
    assert!(!is_known_oid(oid::INTERVAL) && !is_known_oid(1187));
    // A bare OID we do not know goes as text; a known non-textual one does not.
    assert!(is_textual(&type_of_oid(99_999)));
    assert!(is_textual(&type_of_oid(oid::XML)));
    assert!(!is_textual(&type_of_oid(oid::UUID)));
    assert_eq!(type_oid(&type_of_oid(1186)), 1186);
  }

  #[test]
  fn text_rows_by_oid() {
    let cell = |s: &str, t: u32| decode_text(s, t).unwrap();
    assert_eq!(cell("12", oid::INT4), Cell::Number(12.0));
    assert_eq!(cell("12", oid::INT8), Cell::Text("12".into()));
    assert_eq!(cell("1.50", oid::NUMERIC), Cell::Text("1.50".into()));
    assert_eq!(cell("-0.5", oid::FLOAT8), Cell::Number(-0.5));
    assert_eq!(cell("t", oid::BOOL), Cell::Bool(true));
    assert_eq!(cell("\\x00", oid::BYTEA), Cell::Bytes(vec![0]));
    assert_eq!(cell("[1]", oid::JSONB), Cell::Json(serde_json::json!([1])));
    assert_eq!(cell("1970-01-02", oid::DATE), Cell::Date(86_400_000.0));
    assert_eq!(
      cell("1970-01-01 00:00:01+00", oid::TIMESTAMPTZ),
      Cell::Date(1000.0)
    );
    assert_eq!(
      cell("1 day", oid::INTERVAL),
      Cell::Json(serde_json::json!({ "days": 1.0 }))
    );
    assert_eq!(
      cell("(1,2)", oid::POINT),
      Cell::Json(serde_json::json!({ "x": 1.0, "y": 2.0 }))
    );
    // Text that is not a point or circle gives null, as pg-types'.
    assert_eq!(cell("junk", oid::POINT), Cell::Null);
    assert_eq!(cell("junk", oid::CIRCLE), Cell::Null);
    assert_eq!(
      cell("{1,2}", 1007),
      Cell::Array(vec![Cell::Number(1.0), Cell::Number(2.0)])
    );
    // Arrays pg-types does not parse (name[]) and other types: the server's text.
    assert_eq!(cell("{a}", 1003), Cell::Text("{a}".into()));
    assert_eq!(cell("08:00:00", oid::TIME), Cell::Text("08:00:00".into()));
    for (s, t) in [
      ("x", oid::INT4),
      ("x", oid::FLOAT4),
      ("{", oid::JSON),
      ("\\x0", oid::BYTEA),
      ("x", oid::DATE),
      ("x", oid::TIMESTAMP),
      ("1 fortnight", oid::INTERVAL),
      ("{1,x}", 1007),
    ] {
      let e = decode_text(s, t).unwrap_err();
      assert_eq!(
        e.to_string(),
        format!("could not decode a value of type oid {t}"),
        "{s:?}"
      );
      assert_eq!(e.sqlstate(), None);
    }
  }

  #[test]
  fn binary_rows_by_oid() {
    let cell = |b: &[u8], t: u32| decode_binary(b, t).unwrap();
    assert_eq!(cell(b"abc", oid::NAME), Cell::Text("abc".into()));
    assert_eq!(cell(&[0, 7], oid::INT2), Cell::Number(7.0));
    assert_eq!(cell(&[1], oid::BOOL), Cell::Bool(true));
    assert_eq!(cell(&[9], oid::BYTEA), Cell::Bytes(vec![9]));
    assert_eq!(cell(b"[]", oid::JSON), Cell::Json(serde_json::json!([])));
    // Any other type: its bytes as text when they are UTF-8, else as a Buffer.
    assert_eq!(cell(b"x", 99_999), Cell::Text("x".into()));
    assert_eq!(cell(&[0xff], 99_999), Cell::Bytes(vec![0xff]));
    for (b, t) in [
      (&[1u8, 2][..], oid::INT4),
      (&[][..], oid::BOOL),
      (&[0; 15][..], oid::UUID),
      (&b"{"[..], oid::JSONB),
      (&[0; 4][..], oid::TIMESTAMPTZ),
      (&[0; 3][..], 1007),
    ] {
      assert_eq!(
        decode_binary(b, t).unwrap_err().to_string(),
        format!("could not decode a value of type oid {t}")
      );
    }
  }
}
