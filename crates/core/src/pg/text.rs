//! The text side of the wire, for the pooler-safe statement mode: parameters written into the
//! SQL as escaped literals (no server-side prepared statement outlives its message), and rows
//! of the simple query protocol, which arrive as text, decoded by column type the way
//! node-postgres parses them.
//!
//! A user's parameter is first encoded by the binary encoder of its described type (so the
//! same values are accepted and refused, with the same messages, in both modes), then written
//! as the text PostgreSQL's input function reads back to that same value.

use super::codec::{
  array_element, as_json, as_text, decode_numeric, encode, encode_scalar, is_known_oid, is_textual,
  is_textual_oid, oid, type_name, type_oid, PG_EPOCH_DAYS, PG_EPOCH_MICROS,
};
use crate::error::{Error, Result};
use crate::value::{civil, format_number, iso_string, Cell, Param};
use sqlx::postgres::PgTypeInfo;

/// An escape-string literal (`E'…'`): read the same whatever `standard_conforming_strings`
/// says, so nothing depends on a session setting a pooler might not carry.
pub(crate) fn quote(s: &str) -> Result<String> {
  if s.contains('\0') {
    // What the server answers for a NUL in a bound text parameter, so both statement modes
    // fail the same way.
    return Err(Error::Database {
      sqlstate: Some("22021".into()),
      message: "invalid byte sequence for encoding \"UTF8\": 0x00".into(),
    });
  }
  let mut out = String::with_capacity(s.len() + 4);
  out.push_str("E'");
  for c in s.chars() {
    match c {
      '\\' => out.push_str("\\\\"),
      '\'' => out.push_str("''"),
      c => out.push(c),
    }
  }
  out.push('\'');
  Ok(out)
}

/// A parameter of the service's own SQL, where every placeholder carries a cast (`$1::int4`):
/// its plain text form, quoted.
pub(crate) fn literal(p: &Param) -> Result<String> {
  Ok(match p {
    Param::Null => "NULL".into(),
    Param::Array(items) => quote(&array_literal(items, &|item| {
      Ok(match item {
        Param::Null => None,
        other => Some(plain_text(other)?),
      })
    })?)?,
    other => quote(&plain_text(other)?)?,
  })
}

fn plain_text(p: &Param) -> Result<String> {
  Ok(match p {
    Param::Bool(b) => if *b { "t" } else { "f" }.into(),
    Param::Number(n) => float_text(*n),
    Param::Bytes(b) => hex(b),
    Param::Date(ms) => iso_string(*ms).ok_or_else(|| Error::invalid("invalid Date"))?,
    other => as_text(other).map_err(Error::invalid)?,
  })
}

/// Replace `$1…$n` in the service's own SQL (which holds no string or identifier with a `$`)
/// with the parameters' literals.
pub(crate) fn inline(sql: &str, params: &[Param]) -> Result<String> {
  let rendered = params.iter().map(literal).collect::<Result<Vec<_>>>()?;
  let mut out = String::with_capacity(sql.len() + rendered.iter().map(String::len).sum::<usize>());
  let mut rest = sql;
  while let Some(at) = rest.find('$') {
    out.push_str(&rest[..at]);
    let digits = rest[at + 1..]
      .bytes()
      .take_while(u8::is_ascii_digit)
      .count();
    let n: usize = rest[at + 1..at + 1 + digits].parse().unwrap_or(0);
    let value = n
      .checked_sub(1)
      .and_then(|i| rendered.get(i))
      .ok_or_else(|| Error::Internal(format!("no parameter ${n} for the service's statement")))?;
    out.push_str(value);
    rest = &rest[at + 1 + digits..];
  }
  out.push_str(rest);
  Ok(out)
}

/// A user's parameter as a literal of the type the server inferred for it.
pub(crate) fn typed_literal(p: &Param, ty: &PgTypeInfo, index: usize) -> Result<String> {
  if matches!(p, Param::Null) {
    return Ok("NULL".into());
  }
  let refuse = |why: String| {
    Error::invalid(format!(
      "parameter ${} cannot be sent as {}: {why}",
      index + 1,
      type_name(ty)
    ))
  };
  // The binary encoder decides what is accepted, in both modes alike.
  let bytes = encode(p, ty).map_err(refuse)?;
  let t = type_oid(ty);
  let text = if let Some(elem) = array_element(t) {
    let Param::Array(items) = p else {
      return Err(refuse("expected an array".into()));
    };
    array_literal(items, &|item| {
      Ok(match item {
        Param::Null => None,
        other if is_textual_oid(elem) => Some(as_text(other).map_err(&refuse)?),
        other => {
          let b = encode_scalar(other, elem, "array element").map_err(&refuse)?;
          Some(scalar_text(other, &b, elem))
        }
      })
    })?
  } else if let (Param::Array(items), false) = (p, is_known_oid(t)) {
    // An array of a type we do not know (an enum[]…): its elements as text.
    array_literal(items, &|item| {
      Ok(match item {
        Param::Null => None,
        other => Some(as_text(other).map_err(&refuse)?),
      })
    })?
  } else if is_textual(ty) {
    as_text(p).map_err(refuse)?
  } else {
    scalar_text(p, &bytes, t)
  };
  quote(&text)
}

/// The text form of a value already encoded in binary as type `t`.
fn scalar_text(p: &Param, b: &[u8], t: u32) -> String {
  let be4 = || <[u8; 4]>::try_from(b).unwrap_or_default();
  let be8 = || <[u8; 8]>::try_from(b).unwrap_or_default();
  match t {
    oid::BOOL => if b.first() == Some(&1) { "t" } else { "f" }.into(),
    oid::INT2 => i16::from_be_bytes(<[u8; 2]>::try_from(b).unwrap_or_default()).to_string(),
    oid::INT4 => i32::from_be_bytes(be4()).to_string(),
    oid::OID => u32::from_be_bytes(be4()).to_string(),
    oid::INT8 => i64::from_be_bytes(be8()).to_string(),
    oid::FLOAT4 => float_text(f64::from(f32::from_be_bytes(be4()))),
    oid::FLOAT8 => float_text(f64::from_be_bytes(be8())),
    oid::NUMERIC => decode_numeric(b).unwrap_or_default(),
    oid::UUID => uuid::Uuid::from_slice(b)
      .map(|u| u.hyphenated().to_string())
      .unwrap_or_default(),
    oid::JSON => String::from_utf8_lossy(b).into_owned(),
    oid::JSONB => String::from_utf8_lossy(b.get(1..).unwrap_or_default()).into_owned(),
    oid::BYTEA => hex(b),
    oid::TIMESTAMPTZ | oid::TIMESTAMP => {
      timestamp_text(i64::from_be_bytes(be8()).saturating_add(PG_EPOCH_MICROS))
    }
    oid::DATE => {
      let days = i64::from(i32::from_be_bytes(be4())) + PG_EPOCH_DAYS;
      date_text(days)
    }
    // Types the binary encoder writes as text (json-like and textual ones are handled above).
    _ => as_json(p).unwrap_or_default(),
  }
}

/// `{a,"b c",NULL}`: every element quoted, so no element text needs inspecting.
fn array_literal(
  items: &[Param],
  element: &dyn Fn(&Param) -> Result<Option<String>>,
) -> Result<String> {
  let mut out = String::from("{");
  for (i, item) in items.iter().enumerate() {
    if i > 0 {
      out.push(',');
    }
    match element(item)? {
      None => out.push_str("NULL"),
      Some(s) => {
        out.push('"');
        for c in s.chars() {
          if c == '"' || c == '\\' {
            out.push('\\');
          }
          out.push(c);
        }
        out.push('"');
      }
    }
  }
  out.push('}');
  Ok(out)
}

/// Like JS `String(n)` for integers; otherwise the shortest text that reads back exactly.
fn float_text(n: f64) -> String {
  if n.is_nan() {
    "NaN".into()
  } else if n.is_infinite() {
    if n > 0.0 { "Infinity" } else { "-Infinity" }.into()
  } else {
    format_number(n)
  }
}

fn hex(b: &[u8]) -> String {
  let mut s = String::with_capacity(2 + b.len() * 2);
  s.push_str("\\x");
  for x in b {
    s.push_str(&format!("{x:02x}"));
  }
  s
}

/// Days since 1970 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
  let y = if m <= 2 { y - 1 } else { y };
  let era = y.div_euclid(400);
  let yoe = y.rem_euclid(400);
  let mp = if m > 2 { m - 3 } else { m + 9 };
  let doy = (153 * mp + 2) / 5 + d - 1;
  let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD`, with PostgreSQL's ` BC` for years before 1.
fn date_parts(days: i64) -> (String, &'static str) {
  let (y, m, d) = civil(days);
  if y <= 0 {
    (format!("{:04}-{m:02}-{d:02}", 1 - y), " BC")
  } else {
    (format!("{y:04}-{m:02}-{d:02}"), "")
  }
}

fn date_text(days: i64) -> String {
  let (date, era) = date_parts(days);
  format!("{date}{era}")
}

/// An instant in Unix microseconds as PostgreSQL reads it for timestamptz (UTC) and
/// timestamp (the offset is ignored there, which leaves the UTC wall time).
fn timestamp_text(micros: i64) -> String {
  let (days, in_day) = (
    micros.div_euclid(86_400_000_000),
    micros.rem_euclid(86_400_000_000),
  );
  let (date, era) = date_parts(days);
  let secs = in_day / 1_000_000;
  format!(
    "{date} {:02}:{:02}:{:02}.{:06}+00{era}",
    secs / 3600,
    secs / 60 % 60,
    secs % 60,
    in_day % 1_000_000
  )
}

// ---------------------------------------------------------------------------------------------
// Rows in text format

/// One column value in text format, by its type OID, as node-postgres parses it.
pub(crate) fn decode(s: &str, t: u32) -> Result<Cell> {
  let bad = || Error::Database {
    sqlstate: None,
    message: format!("could not decode a value of type oid {t}"),
  };
  if let Some(elem) = array_element(t) {
    return parse_array(s, elem).ok_or_else(bad);
  }
  Ok(match t {
    oid::BOOL => Cell::Bool(s == "t"),
    oid::INT2 | oid::INT4 | oid::OID => Cell::Number(s.parse::<i64>().map_err(|_| bad())? as f64),
    oid::FLOAT4 | oid::FLOAT8 => Cell::Number(parse_float(s).ok_or_else(bad)?),
    oid::JSON | oid::JSONB => Cell::Json(serde_json::from_str(s).map_err(|_| bad())?),
    oid::BYTEA => Cell::Bytes(parse_bytea(s).ok_or_else(bad)?),
    oid::TIMESTAMPTZ | oid::TIMESTAMP => parse_timestamp(s).ok_or_else(bad)?,
    oid::DATE => match s {
      "infinity" => Cell::Number(f64::INFINITY),
      "-infinity" => Cell::Number(f64::NEG_INFINITY),
      _ => {
        let (days, rest) = parse_date(s).ok_or_else(bad)?;
        if !rest.is_empty() {
          return Err(bad());
        }
        Cell::Date((days * 86_400_000) as f64)
      }
    },
    // int8, numeric, uuid, the text types and every other type: the server's text, as is.
    _ => Cell::Text(s.to_owned()),
  })
}

fn parse_float(s: &str) -> Option<f64> {
  match s {
    "NaN" => Some(f64::NAN),
    "Infinity" => Some(f64::INFINITY),
    "-Infinity" => Some(f64::NEG_INFINITY),
    _ => s.parse().ok(),
  }
}

fn parse_bytea(s: &str) -> Option<Vec<u8>> {
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

/// `YYYY-MM-DD` (more year digits allowed) and the text after it, as days since 1970; a
/// trailing ` BC` anywhere after it is applied by the caller via `bc`.
fn parse_date(s: &str) -> Option<(i64, &str)> {
  let (body, bc) = match s.strip_suffix(" BC") {
    Some(b) => (b, true),
    None => (s, false),
  };
  let dash = body.find('-')?;
  let y: i64 = body[..dash].parse().ok()?;
  let m: i64 = body.get(dash + 1..dash + 3)?.parse().ok()?;
  let d: i64 = body.get(dash + 4..dash + 6)?.parse().ok()?;
  if body.as_bytes().get(dash + 3) != Some(&b'-') {
    return None;
  }
  let y = if bc { 1 - y } else { y };
  let rest = &body[dash + 6..];
  Some((days_from_civil(y, m, d), rest))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]` as a Date (ms, rounded down like the
/// binary decoder), or ±Infinity.
fn parse_timestamp(s: &str) -> Option<Cell> {
  match s {
    "infinity" => return Some(Cell::Number(f64::INFINITY)),
    "-infinity" => return Some(Cell::Number(f64::NEG_INFINITY)),
    _ => {}
  }
  let (days, rest) = parse_date(s)?;
  let rest = rest.strip_prefix(' ')?;
  let num = |a: usize, b: usize| -> Option<i64> { rest.get(a..b)?.parse().ok() };
  let (h, mi, sec) = (num(0, 2)?, num(3, 5)?, num(6, 8)?);
  let mut rest = &rest[8..];
  let mut micros = 0i64;
  if let Some(frac) = rest.strip_prefix('.') {
    let n = frac.bytes().take_while(u8::is_ascii_digit).count();
    let digits = &frac[..n.min(6)];
    micros = digits.parse::<i64>().ok()? * 10i64.pow(u32::try_from(6 - digits.len()).ok()?);
    rest = &frac[n..];
  }
  let mut offset_secs = 0i64;
  if let Some(sign) = rest.chars().next().filter(|c| *c == '+' || *c == '-') {
    let parts: Vec<i64> = rest[1..]
      .split(':')
      .map(|p| p.parse().ok())
      .collect::<Option<_>>()?;
    let total =
      parts.first()? * 3600 + parts.get(1).unwrap_or(&0) * 60 + parts.get(2).unwrap_or(&0);
    offset_secs = if sign == '-' { -total } else { total };
  } else if !rest.is_empty() {
    return None;
  }
  // Beyond i64 microseconds (after year 292277): no JS Date holds it, as in the binary decoder.
  let unix_micros = days
    .checked_mul(86_400)
    .and_then(|s| s.checked_add(h * 3600 + mi * 60 + sec - offset_secs))
    .and_then(|s| s.checked_mul(1_000_000))
    .and_then(|us| us.checked_add(micros));
  Some(match unix_micros {
    Some(us) => Cell::Date(us.div_euclid(1000) as f64),
    None if days > 0 => Cell::Number(f64::INFINITY),
    None => Cell::Number(f64::NEG_INFINITY),
  })
}

/// PostgreSQL's array text (`{1,2}`, `{{1,2},{3,4}}`, `{"a b",NULL}`, optionally prefixed by
/// `[1:2]=` bounds), nested as node-postgres nests it.
fn parse_array(s: &str, elem: u32) -> Option<Cell> {
  let s = match s.strip_prefix('[') {
    Some(_) => &s[s.find('=')? + 1..],
    None => s,
  };
  let b = s.as_bytes();
  let mut pos = 0;
  let cell = parse_array_at(b, &mut pos, elem)?;
  (pos == b.len()).then_some(cell)
}

fn parse_array_at(b: &[u8], pos: &mut usize, elem: u32) -> Option<Cell> {
  if b.get(*pos) != Some(&b'{') {
    return None;
  }
  *pos += 1;
  let mut items = Vec::new();
  if b.get(*pos) == Some(&b'}') {
    *pos += 1;
    return Some(Cell::Array(items));
  }
  loop {
    match b.get(*pos)? {
      b'{' => items.push(parse_array_at(b, pos, elem)?),
      b'"' => {
        *pos += 1;
        let mut raw = Vec::new();
        loop {
          match *b.get(*pos)? {
            b'\\' => {
              raw.push(*b.get(*pos + 1)?);
              *pos += 2;
            }
            b'"' => {
              *pos += 1;
              break;
            }
            c => {
              raw.push(c);
              *pos += 1;
            }
          }
        }
        items.push(element(&String::from_utf8(raw).ok()?, elem)?);
      }
      _ => {
        let start = *pos;
        while !matches!(b.get(*pos)?, b',' | b'}') {
          *pos += 1;
        }
        let word = std::str::from_utf8(&b[start..*pos]).ok()?;
        if word.eq_ignore_ascii_case("NULL") {
          items.push(Cell::Null);
        } else {
          items.push(element(word, elem)?);
        }
      }
    }
    match b.get(*pos)? {
      b',' => *pos += 1,
      b'}' => {
        *pos += 1;
        return Some(Cell::Array(items));
      }
      _ => return None,
    }
  }
}

fn element(s: &str, elem: u32) -> Option<Cell> {
  match decode(s, elem).ok()? {
    // node-postgres parses numeric[] elements with parseFloat (unlike a numeric column).
    Cell::Text(t) if elem == oid::NUMERIC => {
      Some(Cell::Number(parse_float(&t).unwrap_or(f64::NAN)))
    }
    other => Some(other),
  }
}

// ---------------------------------------------------------------------------------------------
// A statement written into a simple-protocol message

/// Check that `sql` is one statement that ends where its text ends, as PostgreSQL's lexer
/// reads it, before it is written into a message with statements of ours after it: no `;`
/// followed by another statement, and no string, quoted identifier, dollar quote or comment
/// left open (which would swallow what follows). String literals are read with
/// `standard_conforming_strings` on (PostgreSQL's default since 9.1; poolers pass it through).
pub(crate) fn one_statement(sql: &str) -> Result<()> {
  scan(sql).map(|_| ())
}

/// `COPY … FROM STDIN` / `TO STDOUT`: a statement that streams its data over the connection
/// in COPY sub-protocol messages, which a stage's connection does not speak (the server would
/// wait for CopyData forever). Read by words outside quotes and comments, so a quoted
/// `"stdin"` table is no stream. `None` when the text does not scan (the server judges it).
pub(crate) fn copies_through_client(sql: &str) -> Option<bool> {
  let (_, words) = scan_words(sql).ok()?;
  let word = |&(a, b): &(usize, usize)| &sql[a..b];
  let mut all = words.iter().map(word);
  Some(
    all.next().is_some_and(|w| w.eq_ignore_ascii_case("copy"))
      && all.any(|w| w.eq_ignore_ascii_case("stdin") || w.eq_ignore_ascii_case("stdout")),
  )
}

/// How many `$n` placeholders the statement refers to (the highest n), once checked to be one
/// statement as [`one_statement`] checks it.
pub(crate) fn placeholders(sql: &str) -> Result<usize> {
  Ok(scan(sql)?.iter().map(|p| p.2).max().unwrap_or(0))
}

/// Lex `sql` as [`one_statement`] describes; the `$n` placeholders found: (start, end, n).
fn scan(sql: &str) -> Result<Vec<(usize, usize, usize)>> {
  scan_words(sql).map(|(places, _)| places)
}

/// The placeholders (`$n`: start, end, n) and the bare words (start, end) of one statement.
type Scanned = (Vec<(usize, usize, usize)>, Vec<(usize, usize)>);

fn scan_words(sql: &str) -> Result<Scanned> {
  let mut places = Vec::new();
  let mut words = Vec::new();
  let syntax = |why: &str| Error::Database {
    sqlstate: Some("42601".into()),
    message: why.to_owned(),
  };
  let b = sql.as_bytes();
  let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
  let mut i = 0;
  let mut ended = false; // a top-level `;` was seen
  while i < b.len() {
    let c = b[i];
    match c {
      b'-' if b.get(i + 1) == Some(&b'-') => {
        // PostgreSQL ends a `--` comment at a newline or a carriage return.
        i = sql[i..].find(['\n', '\r']).map_or(b.len(), |n| i + n + 1);
        continue;
      }
      b'/' if b.get(i + 1) == Some(&b'*') => {
        let mut depth = 0;
        loop {
          if b.get(i..i + 2) == Some(b"/*") {
            depth += 1;
            i += 2;
          } else if b.get(i..i + 2) == Some(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
              break;
            }
          } else if i >= b.len() {
            return Err(syntax("unterminated /* comment"));
          } else {
            i += 1;
          }
        }
        continue;
      }
      _ if c.is_ascii_whitespace() => {
        i += 1;
        continue;
      }
      b';' => {
        ended = true;
        i += 1;
        continue;
      }
      _ => {}
    }
    if ended {
      return Err(syntax(
        "cannot insert multiple commands into a prepared statement",
      ));
    }
    match c {
      b'\'' => {
        i = quoted(b, i, b'\'', false).ok_or_else(|| syntax("unterminated quoted string"))?
      }
      b'"' => {
        i = quoted(b, i, b'"', false).ok_or_else(|| syntax("unterminated quoted identifier"))?
      }
      b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
        let digits = b[i + 1..].iter().take_while(|x| x.is_ascii_digit()).count();
        let n: usize = sql[i + 1..i + 1 + digits]
          .parse()
          .map_err(|_| syntax("bad parameter number"))?;
        if n == 0 {
          return Err(syntax("there is no parameter $0"));
        }
        places.push((i, i + 1 + digits, n));
        i += 1 + digits;
      }
      b'$' => {
        // A dollar quote: $$ or $tag$ (a tag does not start with a digit).
        let tag_len = b[i + 1..]
          .iter()
          .take_while(|&&x| ident(x) && x != b'$')
          .count();
        if b.get(i + 1 + tag_len) == Some(&b'$') {
          let tag = &sql[i..i + tag_len + 2];
          let body = i + tag.len();
          let close = sql[body..]
            .find(tag)
            .ok_or_else(|| syntax("unterminated dollar-quoted string"))?;
          i = body + close + tag.len();
        } else {
          i += 1;
        }
      }
      _ if ident(c) => {
        let start = i;
        while i < b.len() && ident(b[i]) {
          i += 1;
        }
        // E'…' reads backslash escapes; other prefixes (B, X, N, U&) do not.
        if b.get(i) == Some(&b'\'') && sql[start..i].eq_ignore_ascii_case("e") {
          i = quoted(b, i, b'\'', true).ok_or_else(|| syntax("unterminated quoted string"))?;
        } else {
          words.push((start, i));
        }
      }
      _ => i += 1,
    }
  }
  Ok((places, words))
}

/// The index after a quoted token starting at `start` (doubled quotes inside; backslash
/// escapes when `escapes`), or `None` if it never closes.
fn quoted(b: &[u8], start: usize, q: u8, escapes: bool) -> Option<usize> {
  let mut i = start + 1;
  loop {
    match *b.get(i)? {
      b'\\' if escapes => i += 2,
      c if c == q => {
        if b.get(i + 1) == Some(&q) {
          i += 2;
        } else if q == b'\'' {
          // `'a'` newline `'b'` is one string constant, in the first one's escape mode.
          match continuation(b, i + 1) {
            Some(next) => i = next + 1,
            None => return Some(i + 1),
          }
        } else {
          return Some(i + 1);
        }
      }
      _ => i += 1,
    }
  }
}

/// Where a string constant continues after its closing quote at `from - 1`: whitespace with at
/// least one newline (and `--` comments ending in one), then a quote; the index of that quote.
fn continuation(b: &[u8], from: usize) -> Option<usize> {
  let mut i = from;
  let mut newline = false;
  loop {
    match *b.get(i)? {
      b'\n' | b'\r' => {
        newline = true;
        i += 1;
      }
      b' ' | b'\t' | b'\x0c' => i += 1,
      b'-' if newline && b.get(i + 1) == Some(&b'-') => {
        while !matches!(*b.get(i)?, b'\n' | b'\r') {
          i += 1;
        }
      }
      b'\'' if newline => return Some(i),
      _ => return None,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn copy_through_the_client_is_told_from_other_statements() {
    for sql in [
      "COPY t FROM STDIN",
      "copy t (a, b) from stdin with (format csv)",
      "/* c */ COPY (SELECT 1) TO STDOUT",
      "COPY t TO stdout",
    ] {
      assert_eq!(copies_through_client(sql), Some(true), "{sql}");
    }
    for sql in [
      "COPY t FROM '/tmp/f'",
      "COPY \"stdin\" FROM '/tmp/f'",
      "SELECT 'COPY t FROM STDIN'",
      "SELECT stdin FROM copy",
      "INSERT INTO t SELECT 1 -- COPY t FROM STDIN",
    ] {
      assert_eq!(copies_through_client(sql), Some(false), "{sql}");
    }
    assert_eq!(copies_through_client("COPY t FROM STDIN; SELECT 1"), None);
  }

  #[test]
  fn timestamps_round_trip_through_text() {
    for micros in [
      0i64,
      1_700_000_000_123_456,
      -1,
      -62_135_596_800_000_000 - 86_400_000_000, // 1 BC, Dec 31
      253_402_300_800_000_000,                  // year 10000
    ] {
      let text = timestamp_text(micros);
      assert_eq!(
        parse_timestamp(&text),
        Some(Cell::Date(micros.div_euclid(1000) as f64)),
        "{text}"
      );
    }
    assert_eq!(
      parse_timestamp("2024-05-06 07:08:09.5+02:30"),
      Some(Cell::Date(1_714_970_289_500.0)) // 04:38:09.5 UTC
    );
  }

  #[test]
  fn timestamps_beyond_i64_micros_are_infinite() {
    assert_eq!(
      parse_timestamp("294276-12-31 23:59:59+00"),
      Some(Cell::Number(f64::INFINITY))
    );
  }

  #[test]
  fn arrays_parse_nested_quoted_and_null() {
    assert_eq!(
      parse_array(r#"{{1,2},{3,NULL}}"#, oid::INT4),
      Some(Cell::Array(vec![
        Cell::Array(vec![Cell::Number(1.0), Cell::Number(2.0)]),
        Cell::Array(vec![Cell::Number(3.0), Cell::Null]),
      ]))
    );
    assert_eq!(
      parse_array(r#"{"a \"b\"","NULL",NULL,c}"#, oid::TEXT),
      Some(Cell::Array(vec![
        Cell::Text("a \"b\"".into()),
        Cell::Text("NULL".into()),
        Cell::Null,
        Cell::Text("c".into()),
      ]))
    );
    assert_eq!(parse_array("[0:1]={7,8}", oid::INT8).map(|_| ()), Some(()));
    assert_eq!(parse_array("{}", oid::INT4), Some(Cell::Array(vec![])));
  }

  #[test]
  fn literals_escape_quotes_and_backslashes() {
    assert_eq!(quote(r"it's \n").unwrap(), r"E'it''s \\n'");
    assert!(quote("a\0b").is_err());
    assert_eq!(
      inline(
        "SELECT $1::int4, $2::text, $10",
        &[
          Param::Number(1.0),
          Param::Text("x".into()),
          Param::Null,
          Param::Null,
          Param::Null,
          Param::Null,
          Param::Null,
          Param::Null,
          Param::Null,
          Param::Bool(true),
        ]
      )
      .unwrap(),
      "SELECT E'1'::int4, E'x'::text, E't'"
    );
  }

  #[test]
  fn one_statement_as_postgres_lexes_it() {
    for ok in [
      "SELECT 1",
      "SELECT 1;",
      "SELECT 1; -- done",
      "SELECT 1 ;; /* c */ ;",
      "SELECT ';' AS a, \"x;\"\"y\" FROM t -- ; DROP",
      "SELECT $$ ; $$, $tag$ ' ; $$ $tag$, $1, a$b",
      "SELECT E'it\\'s ; fine', 'a''b;'",
      "SELECT /* nested /* ; */ still */ 1",
    ] {
      assert!(one_statement(ok).is_ok(), "{ok}");
    }
    for bad in [
      "SELECT 1; SELECT 2",
      "SELECT 1; DROP TABLE t",
      "SELECT 'open",
      "SELECT \"open",
      "SELECT 1 /* open",
      "SELECT /* a /* b */ 1",
      "SELECT $x$ open",
      "SELECT E'\\'; DROP TABLE t",
      "SELECT 1 -- x\r; DROP TABLE t",
      "SELECT E'a'\n'\\', 1 --'; DROP TABLE t",
      "SELECT 'a\\'; SELECT 2",
    ] {
      assert!(one_statement(bad).is_err(), "{bad}");
    }
  }

  #[test]
  fn bytea_text_in_both_output_formats() {
    assert_eq!(parse_bytea("\\x00ff5c"), Some(vec![0, 255, 0x5c]));
    assert_eq!(parse_bytea("a\\\\\\001"), Some(vec![b'a', b'\\', 1]));
  }
}
