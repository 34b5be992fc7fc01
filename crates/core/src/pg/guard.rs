//! What a stage callback may not send on PostgreSQL, read by one lexer that reads SQL as the
//! server's (`scan.l`): nested `/* */` comments, `--` comments ended by a newline or a carriage
//! return, `'…'` strings (backslash escapes when `standard_conforming_strings` is off), `E'…'`,
//! `U&'…'`, `B'…'`, `X'…'`, `N'…'`, string continuation across a newline, `"…"` and `U&"…"`
//! identifiers, `$tag$…$tag$` dollar quotes, `$n` parameters and leading `;`s (empty
//! statements the parser drops).
//!
//! Refused, typed (`INVALID_ARGUMENT`), before anything is sent:
//! - **transaction control**, which would commit or discard the stage's work behind its back:
//!   BEGIN, START TRANSACTION, COMMIT, END, ABORT, ROLLBACK (but `ROLLBACK TO SAVEPOINT`),
//!   PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED;
//! - **session state**, which would outlive the stage on a pooled connection and reach the
//!   next request: SET and RESET (but `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`),
//!   `set_config(…, …, <not true>)`, DISCARD, LISTEN, UNLISTEN, LOAD, SQL-level PREPARE /
//!   EXECUTE / DEALLOCATE, temporary tables, views and sequences (`CREATE TEMP …` but
//!   `… ON COMMIT DROP`, `SELECT … INTO TEMP`), cursors `WITH HOLD`, session-level advisory locks;
//! - **COPY through the client** (`FROM STDIN`, `TO STDOUT`), whose data would stream over
//!   the stage's connection.
//!
//! The server itself refuses a string of several statements in the extended protocol, so the
//! first statement is the only one. What no lexer can see (a function that calls `set_config`
//! or `SET` inside its body) is caught after the stage: a connection whose reported settings
//! changed is closed, not reused (`pool`).

use crate::error::{Error, Result};

/// A token of the statement, as far as the guard needs them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Token {
  /// A bare word (keyword or identifier), upper-cased (ASCII only, as the server folds).
  Word(String),
  /// A quoted identifier's name.
  Quoted(String),
  /// A string constant's body (escapes not applied).
  Str(String),
  /// `$n`.
  Param(usize),
  Semicolon,
  /// Any other character: punctuation, an operator, a digit.
  Other(char),
}

/// Why a statement cannot be read: it is left open (the server refuses it as well).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unterminated;

fn ident_start(c: char) -> bool {
  c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn ident_cont(c: char) -> bool {
  ident_start(c) || c.is_ascii_digit() || c == '$'
}

/// Whitespace as the server's lexer has it (PostgreSQL 16 adds `\v`; taken here too, so a
/// newer server never reads a word the guard did not).
fn space(c: char) -> bool {
  matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c' | '\x0b')
}

/// Lex `sql`: its tokens, or `Unterminated` with the tokens read before the open one.
pub(crate) fn lex(sql: &str, scs: bool) -> (Vec<Token>, Option<Unterminated>) {
  let chars: Vec<char> = sql.chars().collect();
  let mut tokens = Vec::new();
  let mut i = 0;
  let at = |i: usize| chars.get(i).copied();
  while i < chars.len() {
    let c = chars[i];
    if space(c) {
      i += 1;
      continue;
    }
    if c == '-' && at(i + 1) == Some('-') {
      while i < chars.len() && chars[i] != '\n' && chars[i] != '\r' {
        i += 1;
      }
      continue;
    }
    if c == '/' && at(i + 1) == Some('*') {
      let mut depth = 0usize;
      loop {
        match (at(i), at(i + 1)) {
          (Some('/'), Some('*')) => {
            depth += 1;
            i += 2;
          }
          (Some('*'), Some('/')) => {
            depth -= 1;
            i += 2;
            if depth == 0 {
              break;
            }
          }
          (Some(_), _) => i += 1,
          (None, _) => return (tokens, Some(Unterminated)),
        }
      }
      continue;
    }
    if c == ';' {
      tokens.push(Token::Semicolon);
      i += 1;
      continue;
    }
    if c == '\'' {
      match string(&chars, i, !scs) {
        Some((end, body)) => {
          tokens.push(Token::Str(body));
          i = end;
        }
        None => return (tokens, Some(Unterminated)),
      }
      continue;
    }
    if c == '"' {
      match quoted_ident(&chars, i) {
        Some((end, name)) => {
          tokens.push(Token::Quoted(name));
          i = end;
        }
        None => return (tokens, Some(Unterminated)),
      }
      continue;
    }
    if c == '$' {
      if at(i + 1).is_some_and(|d| d.is_ascii_digit()) {
        let mut j = i + 1;
        let mut n = 0usize;
        while let Some(d) = at(j).and_then(|d| d.to_digit(10)) {
          n = n.saturating_mul(10).saturating_add(d as usize);
          j += 1;
        }
        tokens.push(Token::Param(n));
        i = j;
        continue;
      }
      // `$tag$` or `$$`.
      let mut j = i + 1;
      if at(j).is_some_and(ident_start) {
        while at(j).is_some_and(|d| ident_start(d) || d.is_ascii_digit()) {
          j += 1;
        }
      }
      if at(j) == Some('$') {
        let tag: String = chars[i..=j].iter().collect();
        let tag_chars: Vec<char> = tag.chars().collect();
        let body_start = j + 1;
        let mut k = body_start;
        let close = loop {
          if k + tag_chars.len() > chars.len() {
            break None;
          }
          if chars[k..k + tag_chars.len()] == tag_chars[..] {
            break Some(k);
          }
          k += 1;
        };
        match close {
          Some(k) => {
            tokens.push(Token::Str(chars[body_start..k].iter().collect()));
            i = k + tag_chars.len();
          }
          None => return (tokens, Some(Unterminated)),
        }
        continue;
      }
      tokens.push(Token::Other('$'));
      i += 1;
      continue;
    }
    if ident_start(c) {
      // String and identifier prefixes: E'…', B'…', X'…', N'…', U&'…', U&"…".
      let next = at(i + 1);
      if matches!(c, 'e' | 'E') && next == Some('\'') {
        match string(&chars, i + 1, true) {
          Some((end, body)) => {
            tokens.push(Token::Str(body));
            i = end;
          }
          None => return (tokens, Some(Unterminated)),
        }
        continue;
      }
      if matches!(c, 'b' | 'B' | 'x' | 'X' | 'n' | 'N') && next == Some('\'') {
        // N'…' reads backslashes as a plain '…' does (by standard_conforming_strings); B'…'
        // and X'…' hold no backslash or quote that matters.
        match string(&chars, i + 1, matches!(c, 'n' | 'N') && !scs) {
          Some((end, body)) => {
            tokens.push(Token::Str(body));
            i = end;
          }
          None => return (tokens, Some(Unterminated)),
        }
        continue;
      }
      if matches!(c, 'u' | 'U') && next == Some('&') {
        match at(i + 2) {
          Some('\'') => {
            match string(&chars, i + 2, false) {
              Some((end, body)) => {
                tokens.push(Token::Str(body));
                i = end;
              }
              None => return (tokens, Some(Unterminated)),
            }
            continue;
          }
          Some('"') => {
            match quoted_ident(&chars, i + 2) {
              Some((end, name)) => {
                tokens.push(Token::Quoted(unicode_unescape(&name)));
                i = end;
              }
              None => return (tokens, Some(Unterminated)),
            }
            continue;
          }
          _ => {}
        }
      }
      let mut j = i;
      while at(j).is_some_and(ident_cont) {
        j += 1;
      }
      let word: String = chars[i..j].iter().collect();
      tokens.push(Token::Word(word.to_ascii_uppercase()));
      i = j;
      continue;
    }
    tokens.push(Token::Other(c));
    i += 1;
  }
  (tokens, None)
}

/// A string constant whose opening quote is at `start`: the index after it (continuations
/// across a newline included) and its body. `escapes`: backslash escapes a character.
fn string(chars: &[char], start: usize, escapes: bool) -> Option<(usize, String)> {
  let mut i = start + 1;
  let mut body = String::new();
  loop {
    let c = *chars.get(i)?;
    if escapes && c == '\\' {
      body.push(c);
      body.push(*chars.get(i + 1)?);
      i += 2;
      continue;
    }
    if c == '\'' {
      if chars.get(i + 1) == Some(&'\'') {
        body.push('\'');
        i += 2;
        continue;
      }
      // `'a'` newline `'b'` is one constant, in the first one's escape mode.
      match continuation(chars, i + 1) {
        Some(next) => {
          i = next + 1;
          continue;
        }
        None => return Some((i + 1, body)),
      }
    }
    body.push(c);
    i += 1;
  }
}

/// Where a string constant continues after its closing quote: whitespace with at least one
/// newline (and `--` comments, which end in one), then a quote; the index of that quote.
fn continuation(chars: &[char], from: usize) -> Option<usize> {
  let mut i = from;
  let mut newline = false;
  loop {
    match *chars.get(i)? {
      '\n' | '\r' => {
        newline = true;
        i += 1;
      }
      c if space(c) => i += 1,
      '-' if chars.get(i + 1) == Some(&'-') => {
        while !matches!(*chars.get(i)?, '\n' | '\r') {
          i += 1;
        }
      }
      '\'' if newline => return Some(i),
      _ => return None,
    }
  }
}

/// A `U&"…"` identifier's name with its `\XXXX` / `\+XXXXXX` escapes applied (the default
/// escape character; a statement with `UESCAPE` is refused whole, see [`judge`]).
fn unicode_unescape(name: &str) -> String {
  let chars: Vec<char> = name.chars().collect();
  let mut out = String::new();
  let mut i = 0;
  while i < chars.len() {
    if chars[i] == '\\' {
      let hex = |from: usize, n: usize| -> Option<char> {
        let s: String = chars.get(from..from + n)?.iter().collect();
        char::from_u32(u32::from_str_radix(&s, 16).ok()?)
      };
      if chars.get(i + 1) == Some(&'\\') {
        out.push('\\');
        i += 2;
        continue;
      }
      if chars.get(i + 1) == Some(&'+') {
        if let Some(c) = hex(i + 2, 6) {
          out.push(c);
          i += 8;
          continue;
        }
      } else if let Some(c) = hex(i + 1, 4) {
        out.push(c);
        i += 5;
        continue;
      }
    }
    out.push(chars[i]);
    i += 1;
  }
  out
}

fn quoted_ident(chars: &[char], start: usize) -> Option<(usize, String)> {
  let mut i = start + 1;
  let mut name = String::new();
  loop {
    let c = *chars.get(i)?;
    if c == '"' {
      if chars.get(i + 1) == Some(&'"') {
        name.push('"');
        i += 2;
        continue;
      }
      return Some((i + 1, name));
    }
    name.push(c);
    i += 1;
  }
}

/// What the guard makes of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
  Allowed,
  TransactionControl,
  SessionState,
  CopyThroughClient,
}

fn word(t: Option<&Token>) -> &str {
  match t {
    Some(Token::Word(w)) => w,
    _ => "",
  }
}

/// Judge one statement (see the module's documentation).
pub(crate) fn judge(sql: &str, scs: bool) -> Verdict {
  let (tokens, _) = lex(sql, scs);
  let start = tokens
    .iter()
    .position(|t| *t != Token::Semicolon)
    .unwrap_or(tokens.len());
  let t = &tokens[start..];
  let (w0, w1, w2) = (word(t.first()), word(t.get(1)), word(t.get(2)));
  let control = match w0 {
    "BEGIN" | "COMMIT" | "END" | "ABORT" => true,
    "START" => w1 == "TRANSACTION",
    // ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name
    "ROLLBACK" => !(w1 == "TO" || (matches!(w1, "WORK" | "TRANSACTION") && w2 == "TO")),
    "PREPARE" => w1 == "TRANSACTION",
    _ => false,
  };
  if control {
    return Verdict::TransactionControl;
  }
  let temp = |p: &[Token]| matches!(word(p.first()), "TEMP" | "TEMPORARY");
  let session = match w0 {
    // search_path, even for the transaction: the stage's own UPDATE of its key must reach the
    // table its lock read, not one the callback's path put first.
    "SET" => {
      !matches!(w1, "LOCAL" | "TRANSACTION" | "CONSTRAINTS")
        || t.iter().skip(1).any(|x| word(Some(x)) == "SEARCH_PATH")
    }
    "RESET" | "DISCARD" | "LISTEN" | "UNLISTEN" | "LOAD" | "PREPARE" | "EXECUTE" | "DEALLOCATE" => {
      true
    }
    _ => false,
  }
    || lasting_temp_object(t)
    // SELECT … INTO [GLOBAL | LOCAL] TEMP t; cursors WITH HOLD.
    || t.windows(3).any(|p| {
      (word(p.first()) == "INTO"
        && (temp(&p[1..]) || (matches!(word(p.get(1)), "LOCAL" | "GLOBAL") && temp(&p[2..]))))
        || (word(p.first()) == "WITH" && word(p.get(1)) == "HOLD")
    })
    || t.last().is_some_and(|x| word(Some(x)) == "HOLD") && t.len() >= 2 && word(t.get(t.len() - 2)) == "WITH"
    // Anything named in pg_temp (CREATE TABLE pg_temp.t …), and U&"…" UESCAPE, which this
    // lexer does not decode.
    || t.iter().any(|x| match x {
      Token::Word(w) => w == "PG_TEMP" || w == "UESCAPE",
      Token::Quoted(q) => q.eq_ignore_ascii_case("pg_temp"),
      _ => false,
    })
    || t.iter().enumerate().any(|(i, x)| session_call(t, i, x));
  if session {
    return Verdict::SessionState;
  }
  if w0 == "COPY"
    && t
      .iter()
      .any(|x| matches!(word(Some(x)), "STDIN" | "STDOUT"))
  {
    return Verdict::CopyThroughClient;
  }
  Verdict::Allowed
}

/// `CREATE [OR REPLACE] [GLOBAL | LOCAL] {TEMP | TEMPORARY} …` anywhere in the statement
/// (`EXPLAIN ANALYZE CREATE …` too), unless it ends with the transaction (`ON COMMIT DROP`) and
/// cannot stand in for the service's own table.
fn lasting_temp_object(t: &[Token]) -> bool {
  let creates_temp = t.iter().enumerate().any(|(i, x)| {
    word(Some(x)) == "CREATE"
      && t[i + 1..]
        .iter()
        .map(|x| word(Some(x)))
        .find(|w| !matches!(*w, "OR" | "REPLACE" | "GLOBAL" | "LOCAL"))
        .is_some_and(|w| matches!(w, "TEMP" | "TEMPORARY"))
  });
  let dropped_at_commit = t
    .windows(3)
    .any(|p| word(p.first()) == "ON" && word(p.get(1)) == "COMMIT" && word(p.get(2)) == "DROP");
  let shadows_ours = t.iter().any(|x| word(Some(x)) == "IDEMPOTENCY_KEY");
  creates_temp && (!dropped_at_commit || shadows_ours)
}

/// A call at `i` of a function that sets session state: `set_config` unless its third argument
/// is the literal `true`, or a session-level advisory lock.
fn session_call(t: &[Token], i: usize, x: &Token) -> bool {
  let name = match x {
    Token::Word(w) => w.to_ascii_lowercase(),
    Token::Quoted(q) => q.clone(),
    _ => return false,
  };
  if t.get(i + 1) != Some(&Token::Other('(')) {
    return false;
  }
  match name.as_str() {
    "pg_advisory_lock"
    | "pg_advisory_lock_shared"
    | "pg_try_advisory_lock"
    | "pg_try_advisory_lock_shared" => true,
    "set_config" if matches!(t.get(i + 2), Some(Token::Str(s)) if s.eq_ignore_ascii_case("search_path")) => {
      true
    }
    "set_config" => {
      // The third argument's tokens, at depth 1.
      let mut depth = 0usize;
      let mut arg = 0usize;
      let mut third = Vec::new();
      for tok in &t[i + 1..] {
        match tok {
          Token::Other('(') => {
            depth += 1;
            if depth == 1 {
              continue;
            }
          }
          Token::Other(')') => {
            depth -= 1;
            if depth == 0 {
              break;
            }
          }
          Token::Other(',') if depth == 1 => {
            arg += 1;
            continue;
          }
          _ => {}
        }
        if arg == 2 {
          third.push(tok.clone());
        }
      }
      let local = match third.as_slice() {
        [Token::Word(w)] => w == "TRUE",
        [Token::Str(s)] => matches!(
          s.to_ascii_lowercase().as_str(),
          "t" | "true" | "on" | "yes" | "1"
        ),
        _ => false,
      };
      !local
    }
    _ => false,
  }
}

/// The guard as an error: `Ok` when the statement may run in a stage.
pub(crate) fn check_stage_statement(sql: &str, scs: bool) -> Result<()> {
  if sql.contains('\0') {
    return Err(Error::invalid("SQL cannot contain NUL characters"));
  }
  match judge(sql, scs) {
    Verdict::Allowed => Ok(()),
    Verdict::TransactionControl => Err(Error::invalid(
      "transaction control is not allowed inside a stage: the stage commits or rolls back itself",
    )),
    Verdict::SessionState => Err(Error::invalid(
      "a statement that changes session state (SET without LOCAL, set_config(…, false), RESET, \
       DISCARD, LISTEN, PREPARE, temporary tables, cursors WITH HOLD, session advisory locks) is \
       not allowed inside a stage: it would outlive the stage on a pooled connection; use \
       SET LOCAL or set_config(…, true)",
    )),
    Verdict::CopyThroughClient => Err(Error::invalid(
      "COPY FROM STDIN / TO STDOUT cannot run inside a stage (its data would stream over the \
       stage's connection): use INSERT … VALUES / INSERT … SELECT, or a SELECT",
    )),
  }
}

#[cfg(test)]
mod tests {
  use super::{judge, Verdict};

  fn v(sql: &str) -> Verdict {
    judge(sql, true)
  }

  #[test]
  fn transaction_control_however_spelled() {
    for sql in [
      "COMMIT",
      "commit",
      "  /* a */ COMMIT",
      "/* x /* y */ z */ ROLLBACK",
      "/* a /* b */ SELECT */ COMMIT",
      "-- c\rROLLBACK",
      ";;; COMMIT",
      "END",
      "abort",
      "BEGIN",
      "START TRANSACTION",
      "ROLLBACK AND CHAIN",
      "PREPARE TRANSACTION 'x'",
      "COMMIT PREPARED 'x'",
      "ROLLBACK PREPARED 'x'",
      "\x0bCOMMIT",
    ] {
      assert_eq!(v(sql), Verdict::TransactionControl, "{sql:?}");
    }
    for sql in [
      "ROLLBACK TO SAVEPOINT s",
      "ROLLBACK TO s",
      "rollback work to savepoint s",
      "ROLLBACK TRANSACTION TO s",
      "SAVEPOINT s",
      "RELEASE SAVEPOINT s",
      "SELECT 'COMMIT'",
      "SELECT $$ COMMIT $$",
      "/* COMMIT */ SELECT 1",
      "\"commit\"",
    ] {
      assert_eq!(v(sql), Verdict::Allowed, "{sql:?}");
    }
  }

  #[test]
  fn session_state() {
    for sql in [
      "SET statement_timeout = 1",
      "SET SESSION default_transaction_read_only = on",
      "set DateStyle = 'SQL, DMY'",
      "RESET ALL",
      "DISCARD ALL",
      "LISTEN x",
      "SELECT set_config('a.b', 'c', false)",
      "SELECT pg_catalog.set_config('a.b', 'c', $1)",
      "SELECT set_config('a.b', (SELECT 'x'), 'false')",
      "CREATE TEMP TABLE t (a int)",
      "CREATE GLOBAL TEMPORARY TABLE t (a int)",
      "create or replace temp view v as select 1",
      "SELECT 1 INTO TEMP t",
      "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
      "PREPARE p AS SELECT 1",
      "EXECUTE p",
      "DEALLOCATE p",
      "SELECT pg_advisory_lock(1)",
      "SELECT U&\"\\0073et_config\"('statement_timeout', '1', false)",
      "SELECT U&\"pg\\005fadvisory_lock\"(1)",
      "SELECT 1 INTO LOCAL TEMP t",
      "SELECT 1 INTO GLOBAL TEMPORARY t",
      "CREATE TABLE pg_temp.t (a int)",
      "CREATE VIEW \"pg_temp\".v AS SELECT 1",
      "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
      "SET LOCAL search_path = tenant_b",
      "SELECT set_config('search_path', 'x', true)",
      "CREATE TEMP TABLE idempotency_key (LIKE public.idempotency_key) ON COMMIT DROP",
      "SELECT U&\"a!0061\" UESCAPE '!' FROM t",
    ] {
      assert_eq!(v(sql), Verdict::SessionState, "{sql:?}");
    }
    for sql in [
      "SET LOCAL statement_timeout = 1",
      "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
      "SET CONSTRAINTS ALL DEFERRED",
      "SELECT set_config('a.b', 'c', true)",
      "SELECT set_config('a.b', 'c', 't')",
      "SELECT pg_advisory_xact_lock(1)",
      "CREATE TABLE temp (a int)",
      "CREATE TEMP TABLE t (a int) ON COMMIT DROP",
    ] {
      assert_eq!(v(sql), Verdict::Allowed, "{sql:?}");
    }
  }

  #[test]
  fn copy_through_the_client_is_told_from_other_statements() {
    for sql in [
      "COPY t FROM STDIN",
      "copy t (a, b) from stdin with (format csv)",
      "/* c */ COPY (SELECT 1) TO STDOUT",
      "COPY t TO stdout",
    ] {
      assert_eq!(v(sql), Verdict::CopyThroughClient, "{sql}");
    }
    for sql in [
      "COPY t FROM '/tmp/f'",
      "COPY \"stdin\" FROM '/tmp/f'",
      "SELECT 'COPY t FROM STDIN'",
      "SELECT stdin FROM copy",
      "INSERT INTO t SELECT 1 -- COPY t FROM STDIN",
    ] {
      assert_eq!(v(sql), Verdict::Allowed, "{sql}");
    }
  }

  #[test]
  fn n_strings_follow_standard_conforming_strings_too() {
    // With it off, N'\'' is one string holding a quote: set_config is outside it.
    assert_eq!(
      judge(
        "SELECT N'\\'', set_config('statement_timeout','1',false) --'",
        false
      ),
      Verdict::SessionState
    );
  }

  #[test]
  fn strings_follow_standard_conforming_strings() {
    // With it off, a backslash escapes the quote: the string runs on and swallows the rest.
    assert_eq!(
      judge("SELECT 'a\\'; SET x = 1 --'", false),
      Verdict::Allowed
    );
    assert_eq!(
      judge("SELECT 'a\\', set_config('x', 'y', false)", true),
      Verdict::SessionState
    );
  }
}
