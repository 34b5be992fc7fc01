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
