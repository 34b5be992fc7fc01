//! The textual types (text, varchar, char, name, xml, unknown; an enum, citext or a type we do
//! not know is sent as text too) and uuid. Parameters as their text (a uuid checked first);
//! text rows as the server's text (the dispatch's default); binary rows as UTF-8 (lossy) and a
//! uuid hyphenated.

use super::EncodeResult;
use crate::value::{format_number, iso_string, to_json, Cell, Param};

/// A parameter as the text a textual type receives.
pub(super) fn as_text(param: &Param) -> std::result::Result<String, String> {
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

pub(super) fn encode_uuid(param: &Param) -> EncodeResult {
  Ok(match param {
    Param::Text(s) => uuid::Uuid::parse_str(s.trim())
      .map_err(|_| "not a uuid")?
      .as_bytes()
      .to_vec(),
    Param::Bytes(b) if b.len() == 16 => b.clone(),
    _ => return Err("expected a uuid string".into()),
  })
}

/// The text of a uuid encoded by [`encode_uuid`].
pub(super) fn uuid_text(b: &[u8]) -> String {
  uuid::Uuid::from_slice(b)
    .map(|u| u.hyphenated().to_string())
    .unwrap_or_default()
}

/// A textual type's binary value (its UTF-8 bytes).
pub(super) fn decode_textual(b: &[u8]) -> Cell {
  Cell::Text(String::from_utf8_lossy(b).into_owned())
}

pub(super) fn decode_uuid(b: &[u8]) -> Option<Cell> {
  Some(Cell::Text(
    uuid::Uuid::from_slice(b).ok()?.hyphenated().to_string(),
  ))
}
