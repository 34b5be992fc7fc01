//! bool: a parameter (a boolean, a number, or the words PostgreSQL's input accepts) as `t` or
//! `f`; a text row's `t` or `f` (what the server sends); a binary row's byte.

use super::{exact, EncodeResult};
use crate::value::{Cell, Param};

pub(super) fn encode_bool(param: &Param) -> EncodeResult {
  Ok(vec![match param {
    Param::Bool(b) => u8::from(*b),
    Param::Number(n) => u8::from(*n != 0.0),
    Param::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
      "t" | "true" | "yes" | "on" | "1" => 1,
      "f" | "false" | "no" | "off" | "0" => 0,
      _ => return Err("not a boolean".into()),
    },
    _ => return Err("expected a boolean".into()),
  }])
}

/// A boolean as PostgreSQL's text.
pub(super) fn bool_literal(b: bool) -> String {
  if b { "t" } else { "f" }.into()
}

/// The text of a bool encoded by [`encode_bool`].
pub(super) fn bool_text(b: &[u8]) -> String {
  bool_literal(b.first() == Some(&1))
}

pub(super) fn parse_bool(s: &str) -> Cell {
  Cell::Bool(s == "t")
}

pub(super) fn decode_bool(b: &[u8]) -> Option<Cell> {
  let [byte] = exact::<1>(b)?;
  Some(Cell::Bool(byte != 0))
}
#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn bool_parameters_accept_postgres_words_and_refuse_others() {
    for (p, want) in [
      (Param::Bool(true), 1u8),
      (Param::Bool(false), 0),
      (Param::Number(2.0), 1),
      (Param::Number(0.0), 0),
      (Param::Text(" Yes ".into()), 1),
      (Param::Text("ON".into()), 1),
      (Param::Text("1".into()), 1),
      (Param::Text("off".into()), 0),
      (Param::Text("F".into()), 0),
    ] {
      assert_eq!(encode_bool(&p), Ok(vec![want]), "{p:?}");
    }
    assert_eq!(
      encode_bool(&Param::Text("maybe".into())),
      Err("not a boolean".to_owned())
    );
    assert_eq!(
      encode_bool(&Param::Json(serde_json::json!({}))),
      Err("expected a boolean".to_owned())
    );
  }

  #[test]
  fn bool_text_is_t_or_f() {
    assert_eq!(bool_literal(true), "t");
    assert_eq!(bool_literal(false), "f");
    assert_eq!(bool_text(&[1]), "t");
    assert_eq!(bool_text(&[0]), "f");
  }

  #[test]
  fn bool_rows_in_text_and_binary() {
    assert_eq!(parse_bool("t"), Cell::Bool(true));
    assert_eq!(parse_bool("f"), Cell::Bool(false));
    assert_eq!(decode_bool(&[1]), Some(Cell::Bool(true)));
    assert_eq!(decode_bool(&[0]), Some(Cell::Bool(false)));
    assert_eq!(decode_bool(&[]), None);
    assert_eq!(decode_bool(&[1, 0]), None);
  }
}
