//! point and circle: text rows as pg-types parses them (text that is not one gives null).
//! Parameters of these types go as their text (the encoder does not know them), and a binary
//! row of them (never one of the service's) falls to the dispatch's default.

use super::numeric::parse_float;

fn numbers_in(s: &str) -> Vec<f64> {
  s.trim_matches(|c| matches!(c, '(' | ')' | '<' | '>'))
    .split(',')
    .map(|p| parse_float(p.trim_matches(|c| matches!(c, '(' | ')' | ' '))).unwrap_or(f64::NAN))
    .collect()
}

fn json_number(n: f64) -> serde_json::Value {
  serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// `(x,y)` as `{ x, y }` (pg-types' parsePoint).
pub(super) fn parse_point(s: &str) -> Option<serde_json::Value> {
  if !s.starts_with('(') {
    return None;
  }
  let n = numbers_in(s);
  Some(serde_json::json!({ "x": json_number(*n.first()?), "y": json_number(*n.get(1)?) }))
}

/// `<(x,y),r>` as `{ x, y, radius }` (pg-types' parseCircle).
pub(super) fn parse_circle(s: &str) -> Option<serde_json::Value> {
  if !s.starts_with('<') {
    return None;
  }
  let n = numbers_in(s);
  Some(serde_json::json!({
    "x": json_number(*n.first()?),
    "y": json_number(*n.get(1)?),
    "radius": json_number(*n.get(2)?),
  }))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn points_and_circles() {
    assert_eq!(
      parse_point("(1.5,-2)"),
      Some(serde_json::json!({ "x": 1.5, "y": -2.0 }))
    );
    assert_eq!(parse_point("1,2"), None);
    assert_eq!(parse_point("(1)"), None);
    assert_eq!(
      parse_circle("<(1,2),3.25>"),
      Some(serde_json::json!({ "x": 1.0, "y": 2.0, "radius": 3.25 }))
    );
    assert_eq!(parse_circle("(1,2)"), None);
    assert_eq!(parse_circle("<(1,2)>"), None);
  }
}
