//! bytea. Parameters: a Buffer (or a string's UTF-8 bytes) as hex text (`\x…`). Text rows in
//! either bytea_output (hex, escape) as a Buffer; binary rows as the bytes.

use super::EncodeResult;
use crate::value::{Cell, Param};

pub(super) fn encode_bytea(param: &Param) -> EncodeResult {
  Ok(match param {
    Param::Bytes(b) => b.clone(),
    Param::Text(s) => s.as_bytes().to_vec(),
    _ => return Err("expected a Buffer".into()),
  })
}

/// Bytes as bytea's hex text.
pub(super) fn hex(b: &[u8]) -> String {
  let mut s = String::with_capacity(2 + b.len() * 2);
  s.push_str("\\x");
  for x in b {
    s.push_str(&format!("{x:02x}"));
  }
  s
}

pub(super) fn parse_bytea(s: &str) -> Option<Vec<u8>> {
  if let Some(h) = s.strip_prefix("\\x") {
    let digits = h.as_bytes();
    if digits.len() % 2 != 0 {
      return None;
    }
    return digits
      .chunks(2)
      .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
      .collect();
  }
  // bytea_output = escape: `\\` and `\ooo`, everything else as is.
  let b = s.as_bytes();
  let mut out = Vec::with_capacity(b.len());
  let mut i = 0;
  while i < b.len() {
    if b[i] == b'\\' {
      if b.get(i + 1) == Some(&b'\\') {
        out.push(b'\\');
        i += 2;
      } else {
        let o = std::str::from_utf8(b.get(i + 1..i + 4)?).ok()?;
        out.push(u8::from_str_radix(o, 8).ok()?);
        i += 4;
      }
    } else {
      out.push(b[i]);
      i += 1;
    }
  }
  Some(out)
}

pub(super) fn decode_bytea(b: &[u8]) -> Cell {
  Cell::Bytes(b.to_vec())
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn bytea_text_in_both_output_formats() {
    assert_eq!(parse_bytea("\\x00ff5c"), Some(vec![0, 255, 0x5c]));
    assert_eq!(parse_bytea("a\\\\\\001"), Some(vec![b'a', b'\\', 1]));
  }

  #[test]
  fn bytea_parameters_as_hex() {
    assert_eq!(
      encode_bytea(&Param::Bytes(vec![0, 0xab])),
      Ok(vec![0, 0xab])
    );
    assert_eq!(encode_bytea(&Param::Text("é".into())), Ok(vec![0xc3, 0xa9]));
    assert_eq!(
      encode_bytea(&Param::Number(1.0)),
      Err("expected a Buffer".into())
    );
    assert_eq!(hex(&[0, 0xab, 0x5c]), "\\x00ab5c");
    assert_eq!(hex(&[]), "\\x");
  }

  #[test]
  fn bytea_rows_refuse_bad_text() {
    assert_eq!(parse_bytea("\\x"), Some(vec![]));
    assert_eq!(parse_bytea("\\x0"), None);
    assert_eq!(parse_bytea("\\xzz"), None);
    assert_eq!(parse_bytea("a\\12"), None);
    assert_eq!(parse_bytea("a\\9zz"), None);
    assert_eq!(decode_bytea(&[1, 2]), Cell::Bytes(vec![1, 2]));
  }
}
