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
