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

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn parameters_as_text() {
    assert_eq!(as_text(&Param::Text("a b".into())).unwrap(), "a b");
    assert_eq!(as_text(&Param::BigInt("-12".into())).unwrap(), "-12");
    assert_eq!(as_text(&Param::Number(1.5)).unwrap(), "1.5");
    assert_eq!(as_text(&Param::Number(2.0)).unwrap(), "2");
    assert_eq!(as_text(&Param::Bool(true)).unwrap(), "true");
    assert_eq!(
      as_text(&Param::Date(0.0)).unwrap(),
      "1970-01-01T00:00:00.000Z"
    );
    assert_eq!(as_text(&Param::Date(f64::NAN)), Err("invalid Date".into()));
    assert_eq!(
      as_text(&Param::Json(serde_json::json!({ "a": [1, null] }))).unwrap(),
      r#"{"a":[1,null]}"#
    );
    assert_eq!(as_text(&Param::Bytes(b"hi".to_vec())).unwrap(), "hi");
    assert_eq!(
      as_text(&Param::Bytes(vec![0xff])),
      Err("Buffer is not UTF-8".into())
    );
    assert_eq!(
      as_text(&Param::Array(vec![
        Param::Number(1.0),
        Param::Text("a".into()),
        Param::Null
      ]))
      .unwrap(),
      r#"[1,"a",null]"#
    );
  }

  #[test]
  fn uuid_both_ways() {
    let bytes = [
      0x6f, 0x96, 0x19, 0xff, 0x8b, 0x86, 0xd0, 0x11, 0xb4, 0x2d, 0x00, 0xc0, 0x4f, 0xc9, 0x64,
      0xff,
    ];
    let hyphenated = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
    assert_eq!(
      encode_uuid(&Param::Text(
        " 6F9619FF-8B86-D011-B42D-00C04FC964FF ".into()
      )),
      Ok(bytes.to_vec())
    );
    assert_eq!(
      encode_uuid(&Param::Text("6f9619ff8b86d011b42d00c04fc964ff".into())),
      Ok(bytes.to_vec())
    );
    assert_eq!(
      encode_uuid(&Param::Bytes(bytes.to_vec())),
      Ok(bytes.to_vec())
    );
    assert_eq!(
      encode_uuid(&Param::Text("6f9619ff-8b86".into())),
      Err("not a uuid".into())
    );
    assert_eq!(
      encode_uuid(&Param::Bytes(vec![0; 15])),
      Err("expected a uuid string".into())
    );
    assert_eq!(uuid_text(&bytes), hyphenated);
    assert_eq!(decode_uuid(&bytes), Some(Cell::Text(hyphenated.into())));
    assert_eq!(decode_uuid(&bytes[..15]), None);
  }

  #[test]
  fn textual_binary_rows_are_utf8_lossy() {
    assert_eq!(decode_textual("café".as_bytes()), Cell::Text("café".into()));
    assert_eq!(
      decode_textual(&[b'a', 0xff]),
      Cell::Text("a\u{fffd}".into())
    );
  }
}
