//! json and jsonb. Parameters: a string as it is (the caller serialised it, as node-postgres
//! sends it), anything else serialised; jsonb's binary form is a version byte (1) and the text.
//! Rows, in text or binary, parsed as JSON.

use super::EncodeResult;
use crate::value::{to_json, Cell, Param};

pub(super) fn as_json(param: &Param) -> std::result::Result<String, String> {
  Ok(match param {
    // node-postgres sends a string as is: the caller serialised it.
    Param::Text(s) => s.clone(),
    other => to_json(other).to_string(),
  })
}

pub(super) fn encode_json(param: &Param) -> EncodeResult {
  Ok(as_json(param)?.into_bytes())
}

pub(super) fn encode_jsonb(param: &Param) -> EncodeResult {
  let mut v = vec![1u8];
  v.extend_from_slice(as_json(param)?.as_bytes());
  Ok(v)
}

/// The text of a json value encoded by [`encode_json`].
pub(super) fn json_text(b: &[u8]) -> String {
  String::from_utf8_lossy(b).into_owned()
}

/// The text of a jsonb value encoded by [`encode_jsonb`] (past its version byte).
pub(super) fn jsonb_text(b: &[u8]) -> String {
  String::from_utf8_lossy(b.get(1..).unwrap_or_default()).into_owned()
}

pub(super) fn parse_json(s: &str) -> Option<Cell> {
  Some(Cell::Json(serde_json::from_str(s).ok()?))
}

pub(super) fn decode_json(b: &[u8]) -> Option<Cell> {
  Some(Cell::Json(serde_json::from_slice(b).ok()?))
}

pub(super) fn decode_jsonb(b: &[u8]) -> Option<Cell> {
  Some(Cell::Json(serde_json::from_slice(b.get(1..)?).ok()?))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn json_parameters() {
    // A string is the caller's JSON, sent as it is.
    assert_eq!(
      as_json(&Param::Text(r#"{"a": 1}"#.into())).unwrap(),
      r#"{"a": 1}"#
    );
    assert_eq!(
      as_json(&Param::Json(serde_json::json!({ "b": [1, 2] }))).unwrap(),
      r#"{"b":[1,2]}"#
    );
    assert_eq!(
      as_json(&Param::Array(vec![Param::Number(1.0), Param::Null])).unwrap(),
      "[1,null]"
    );
    assert_eq!(as_json(&Param::Number(1.5)).unwrap(), "1.5");
    assert_eq!(as_json(&Param::Bool(false)).unwrap(), "false");
    assert_eq!(encode_json(&Param::Text("[]".into())), Ok(b"[]".to_vec()));
    assert_eq!(
      encode_jsonb(&Param::Text("[]".into())),
      Ok(vec![1, b'[', b']'])
    );
    assert_eq!(json_text(b"[1]"), "[1]");
    assert_eq!(jsonb_text(&[1, b'[', b'1', b']']), "[1]");
    assert_eq!(jsonb_text(&[]), "");
  }

  #[test]
  fn json_rows_in_text_and_binary() {
    let v = serde_json::json!({ "a": [1, "x", null] });
    assert_eq!(
      parse_json(r#"{"a":[1,"x",null]}"#),
      Some(Cell::Json(v.clone()))
    );
    assert_eq!(parse_json("{"), None);
    assert_eq!(
      decode_json(br#"{"a":[1,"x",null]}"#),
      Some(Cell::Json(v.clone()))
    );
    assert_eq!(decode_json(b"nope"), None);
    let mut jsonb = vec![1u8];
    jsonb.extend_from_slice(br#"{"a":[1,"x",null]}"#);
    assert_eq!(decode_jsonb(&jsonb), Some(Cell::Json(v)));
    assert_eq!(decode_jsonb(&[]), None);
  }
}
