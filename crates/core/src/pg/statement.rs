//! The statement path on a lease's connection: the service's own statements (binary results),
//! a stage's BEGIN with its row lock and its UPDATE with COMMIT, each in one flight, and a
//! callback's statements (checked by the guard, parameters as text of the types the server
//! infers, text rows as node-postgres parses them, the output settings pinned when the
//! database's differ). In the prepared mode each statement goes under a protocol-level name
//! cached per connection; in the default mode, the unnamed statement.

use super::pool::{is_fatal, Lease, State, DESCRIBED_MAX, PREPARED_MAX};
use super::types::{param_text, type_of_oid, typed};
use super::wire::{Answer, Format, Outcome, Raw, Stmt, Wired};
use super::{guard, rows};
use crate::error::{Error, Result};
use crate::observe;
use crate::value::{Param, QueryResult};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The settings a value's text form depends on, set as node-postgres reads them with its
/// defaults, for the transaction only (`set_config(…, true)`). DateStyle's output style only:
/// the field order for input (MDY, DMY) stays the database's.
pub(super) const PIN_SQL: &str = "SELECT set_config('DateStyle', 'ISO', true), \
  set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true), \
  set_config('bytea_output', 'hex', true)";

/// Node-postgres' rows from a statement's raw answer.
fn decoded(raw: Raw) -> Result<QueryResult> {
  rows::decode(raw)
}

/// A statement's outcome in a flight as a result.
fn outcome(o: Outcome) -> Result<QueryResult> {
  match o {
    Outcome::Done(raw) => decoded(raw),
    Outcome::Failed(e) => Err(e),
    Outcome::Skipped => Err(Error::Database {
      sqlstate: Some("25P02".into()),
      message: "the statement did not run: an earlier statement in its flight failed".into(),
    }),
  }
}

/// The rows a flight returned or touched (each statement's command tag, else its rows), or its
/// first failure: what the statement log records.
fn counted(answer: &Answer) -> std::result::Result<u64, &Error> {
  let mut n = 0;
  for o in &answer.outcomes {
    match o {
      Outcome::Done(raw) => {
        let tagged = raw
          .tag
          .rsplit(' ')
          .next()
          .and_then(|c| c.parse::<u64>().ok());
        n += tagged.unwrap_or(raw.rows.len() as u64);
      }
      Outcome::Failed(e) => return Err(e),
      Outcome::Skipped => {}
    }
  }
  Ok(n)
}

/// The service's own parameters (every placeholder carries a cast): their plain text.
fn service_params(params: &[Param]) -> Result<Vec<Wired>> {
  params
    .iter()
    .map(|p| Ok(param_text(p)?.map_or(Wired::Null, Wired::Text)))
    .collect()
}
impl Lease {
  /// Run one flight on the connection. In the prepared mode each statement goes under its
  /// cached name (Parse only the first time on this connection); in the default mode, the
  /// unnamed statement.
  async fn flight(&mut self, stmts: &[(&str, Vec<Wired>, Format)]) -> Result<Answer> {
    let prepared = self.prepared_mode();
    let names = &self.pool.names;
    let conn = self.conn.as_mut().expect("a lease holds its connection");
    let mut plan: Vec<(String, bool)> = Vec::with_capacity(stmts.len());
    if prepared {
      let tick = names.fetch_add(1, Ordering::Relaxed);
      for (sql, _, _) in stmts {
        match conn.named.get_mut(*sql) {
          Some((name, used)) => {
            *used = tick;
            plan.push((name.clone(), false));
          }
          None => {
            let name = format!("medusa_ikey_{}", names.fetch_add(1, Ordering::Relaxed));
            plan.push((name, true));
          }
        }
      }
    } else {
      plan = stmts.iter().map(|_| (String::new(), true)).collect();
    }
    let wire_stmts: Vec<Stmt<'_>> = stmts
      .iter()
      .zip(&plan)
      .map(|((sql, params, format), (name, parse))| Stmt {
        sql,
        params,
        result: *format,
        name,
        parse: *parse,
      })
      .collect();
    let closing = std::mem::take(&mut conn.closing);
    let timer = observe::start();
    let answer = conn.wire.flight(&closing, &wire_stmts).await;
    if let Some(timer) = timer {
      let sql: Vec<&str> = stmts.iter().map(|(sql, _, _)| *sql).collect();
      timer.finish(&sql, answer.as_ref().and_then(counted));
    }
    let answer = answer?;
    if prepared {
      let tick = names.fetch_add(1, Ordering::Relaxed);
      for (i, ((sql, _, _), (name, parse))) in stmts.iter().zip(&plan).enumerate() {
        if *parse && answer.parsed.get(i).copied().unwrap_or(false) {
          conn.named.insert((*sql).to_owned(), (name.clone(), tick));
        }
      }
      // A cached statement the server no longer runs (its result type changed after DDL: 0A000;
      // gone: 26000) is dropped, to be prepared again on next use.
      for (i, ((sql, _, _), _)) in stmts.iter().zip(&plan).enumerate() {
        if let Some(Outcome::Failed(e)) = answer.outcomes.get(i) {
          if matches!(e.sqlstate(), Some("0A000" | "26000")) {
            if let Some((name, _)) = conn.named.remove(*sql) {
              conn.closing.push(name);
            }
          }
        }
      }
      while conn.named.len() > PREPARED_MAX {
        let oldest = conn
          .named
          .iter()
          .min_by_key(|(_, (_, used))| *used)
          .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
          if let Some((name, _)) = conn.named.remove(&k) {
            conn.closing.push(name);
          }
        }
      }
    }
    Ok(answer)
  }

  /// A statement of the service itself (every parameter cast in the SQL), with binary
  /// results (exact whatever the session's settings). Outside a transaction the lease's state
  /// follows the outcome; inside one it stays in the transaction.
  pub(crate) async fn service_query(&mut self, sql: &str, params: &[Param]) -> Result<QueryResult> {
    let wired = service_params(params)?;
    if self.in_tx() {
      return self.in_tx_flight(&[(sql, wired, Format::Binary)]).await;
    }
    self.state = State::Busy;
    let mut r = self.one(sql, &wired, Format::Binary).await;
    if let Err(e) = &r {
      if self.replace_if_dead(e).await? {
        r = self.one(sql, &wired, Format::Binary).await;
      }
    }
    self.reused = false;
    match &r {
      Ok(_) => self.done(),
      Err(e) => self.settle_after(e),
    }
    r
  }

  async fn one(&mut self, sql: &str, params: &[Wired], format: Format) -> Result<QueryResult> {
    let answer = self.flight(&[(sql, params.to_vec(), format)]).await?;
    outcome(
      answer
        .outcomes
        .into_iter()
        .next()
        .unwrap_or(Outcome::Skipped),
    )
  }

  fn in_tx(&self) -> bool {
    matches!(self.state, State::InTx | State::Stuck)
  }

  /// A flight inside our transaction: if its future is dropped before the answer, or the
  /// connection breaks, the lease is `Stuck`. Returns the last statement's result (an earlier
  /// one's error first).
  async fn in_tx_flight(&mut self, stmts: &[(&str, Vec<Wired>, Format)]) -> Result<QueryResult> {
    if self.state == State::Stuck {
      return Err(Error::TransactionClosed);
    }
    self.state = State::Stuck;
    let answer = match self.flight(stmts).await {
      Ok(a) => a,
      // Refused before anything was sent (a value too large): the transaction is as it was.
      Err(e @ Error::InvalidArgument(_)) => {
        self.state = State::InTx;
        return Err(e);
      }
      Err(e) => return Err(e), // stays Stuck: the connection broke mid-flight
    };
    if answer.status == b'I' {
      // The transaction ended under us (nothing the guard lets through should do that): never
      // send the stage's UPDATE and COMMIT into an implicit transaction of their own.
      return Err(Error::Internal(
        "the stage's transaction ended before the stage did".into(),
      ));
    }
    self.state = State::InTx;
    let mut last = Ok(QueryResult::default());
    for o in answer.outcomes {
      last = outcome(o);
      if last.is_err() {
        break;
      }
    }
    if let Err(e) = &last {
      if is_fatal(e) {
        self.state = State::Stuck;
      }
    }
    last
  }

  /// A statement without parameters or rows (savepoints).
  pub(crate) async fn execute(&mut self, sql: &str) -> Result<()> {
    if self.in_tx() {
      return self
        .in_tx_flight(&[(sql, Vec::new(), Format::Text)])
        .await
        .map(|_| ());
    }
    self.service_query(sql, &[]).await.map(|_| ())
  }

  /// The server's parameter types for a callback's statement: from the process cache, else
  /// asked of the server (Parse unnamed, Describe, Sync, inside the stage's transaction).
  async fn describe(&mut self, sql: &str) -> Result<Arc<Vec<u32>>> {
    if let Some(d) = self.pool.described.lock().unwrap().get(sql) {
      return Ok(d.clone());
    }
    self.state = State::Stuck;
    let r = self.conn().wire.describe(sql).await;
    self.state = State::InTx;
    if let Err(e) = &r {
      if is_fatal(e) {
        self.state = State::Stuck;
      }
    }
    let types = Arc::new(r?);
    let mut cache = self.pool.described.lock().unwrap();
    if cache.len() >= DESCRIBED_MAX {
      cache.clear();
    }
    cache.insert(sql.to_owned(), types.clone());
    Ok(types)
  }

  /// A stage callback's statement, inside the stage transaction: checked by the guard,
  /// parameters as text of the types the server infers, rows in text as node-postgres reads
  /// them (with the settings that text depends on pinned for the transaction when the
  /// database's differ).
  pub(crate) async fn user_query(&mut self, sql: &str, params: &[Param]) -> Result<QueryResult> {
    let scs = self
      .conn()
      .wire
      .params
      .get("standard_conforming_strings")
      .is_none_or(|v| v == "on");
    guard::check_stage_statement(sql, scs)?;
    let types = self.describe(sql).await?;
    if types.len() != params.len() {
      return Err(Error::invalid(format!(
        "the statement expects {} parameter(s), {} given",
        types.len(),
        params.len()
      )));
    }
    let wired = params
      .iter()
      .zip(types.iter())
      .enumerate()
      .map(|(i, (p, t))| Ok(typed(p, &type_of_oid(*t), i)?.map_or(Wired::Null, Wired::Text)))
      .collect::<Result<Vec<_>>>()?;
    let mut stmts: Vec<(&str, Vec<Wired>, Format)> = Vec::with_capacity(2);
    let pin = self.needs_pin();
    if pin {
      stmts.push((PIN_SQL, Vec::new(), Format::Text));
    }
    stmts.push((sql, wired, Format::Text));
    let r = self.in_tx_flight(&stmts).await;
    if pin && self.state == State::InTx {
      self.pinned = true;
    }
    r
  }

  /// Whether the settings in [`PIN_SQL`] must be set for this transaction before a callback's
  /// statement: the database's defaults differ, or a reported one (DateStyle, IntervalStyle)
  /// is not what node-postgres reads.
  fn needs_pin(&mut self) -> bool {
    if self.pinned {
      return false;
    }
    let conn = self.conn();
    let reported = |k: &str, want: &str| conn.wire.params.get(k).is_none_or(|v| v == want);
    conn.defaults_differ
      || !conn
        .wire
        .params
        .get("DateStyle")
        .is_none_or(|v| v.starts_with("ISO"))
      || !reported("IntervalStyle", "postgres")
  }

  /// `BEGIN …` and the key's row lock in one flight; the transaction stays open on this lease.
  /// Any failure rolls back before returning.
  pub(crate) async fn begin_and_lock(
    &mut self,
    begin: &str,
    lock_sql: &str,
    key: &str,
  ) -> Result<QueryResult> {
    self.state = State::Busy;
    let key = service_params(&[Param::Text(key.to_owned())])?;
    let mut ran = self.begin_and_lock_once(begin, lock_sql, &key).await;
    if let Err(e) = &ran {
      if self.replace_if_dead(e).await? {
        ran = self.begin_and_lock_once(begin, lock_sql, &key).await;
      }
    }
    self.reused = false;
    match ran {
      Ok(r) => Ok(r),
      Err(e) => {
        self.rollback().await;
        Err(e)
      }
    }
  }

  async fn begin_and_lock_once(
    &mut self,
    begin: &str,
    lock_sql: &str,
    key: &[Wired],
  ) -> Result<QueryResult> {
    self.pinned = false;
    let stmts = [
      (begin, Vec::new(), Format::Text),
      (lock_sql, key.to_vec(), Format::Binary),
    ];
    self.state = State::InTx;
    self.in_tx_flight(&stmts).await
  }

  /// The transaction ended: the lease is clean, unless the stage left session state behind
  /// that the server reports (a `SET` through a function, say): then the connection is not
  /// reused.
  fn ended(&mut self) {
    let kept = self.conn.as_mut().is_none_or(|c| c.settings_as_opened());
    self.pinned = false;
    self.state = if kept { State::Clean } else { State::Busy };
  }

  /// The stage result's UPDATE and COMMIT in one flight. On failure the transaction is
  /// rolled back.
  pub(crate) async fn apply_and_commit(
    &mut self,
    apply_sql: &str,
    params: &[Param],
  ) -> Result<QueryResult> {
    let wired = service_params(params)?;
    let stmts = [
      (apply_sql, wired, Format::Binary),
      ("COMMIT", Vec::new(), Format::Text),
    ];
    if self.state == State::Stuck {
      return Err(Error::TransactionClosed);
    }
    if self.conn().wire.status != b'T' {
      // Failed (E) or, never expected, ended (I): nothing may commit.
      self.rollback().await;
      return Err(Error::Database {
        sqlstate: Some("25P02".into()),
        message: "the stage's transaction is not open: nothing was committed".into(),
      });
    }
    // Stuck until the answer: a dropped future or a broken connection closes the connection.
    self.state = State::Stuck;
    let answer = self.flight(&stmts).await?;
    self.state = State::InTx;
    let mut outcomes = answer.outcomes.into_iter();
    let applied = outcome(outcomes.next().unwrap_or(Outcome::Skipped));
    let committed = outcome(outcomes.next().unwrap_or(Outcome::Skipped));
    match (applied, committed, answer.status) {
      (Ok(r), Ok(_), b'I') => {
        self.ended();
        Ok(r)
      }
      (Err(e), _, _) | (Ok(_), Err(e), _) => {
        self.rollback().await;
        Err(e)
      }
      // COMMIT of a transaction the server had already failed answers ROLLBACK.
      (Ok(_), Ok(_), _) => {
        self.rollback().await;
        Err(Error::Database {
          sqlstate: Some("40000".into()),
          message: "the transaction was rolled back by the server".into(),
        })
      }
    }
  }

  /// Run a simple-protocol script (migrations) in a transaction of its own.
  pub(crate) async fn script(&mut self, sql: &str) -> Result<()> {
    self.state = State::Busy;
    let r = self.conn().wire.simple_query(sql).await;
    match &r {
      Ok(()) if self.conn().wire.status == b'I' => self.done(),
      Ok(()) => {}
      Err(e) => {
        if self.conn().wire.status == b'E' || self.conn().wire.status == b'T' {
          let _ = self.conn().wire.simple_query("ROLLBACK").await;
        }
        if self.conn().wire.status == b'I' {
          self.settle_after(e);
        }
      }
    }
    r
  }

  /// Roll back. A `Stuck` lease (a statement was abandoned mid-flight, or the connection
  /// broke) gets its running statement cancelled on the server (a CancelRequest, as libpq's
  /// `PQcancel` sends) and is closed: the server rolls back.
  pub(crate) async fn rollback(&mut self) {
    match self.state {
      State::Stuck => {
        let key = self.conn().cancel.clone();
        key.cancel(Duration::from_secs(2)).await;
        // Dropping the lease in this state closes the socket.
      }
      State::Clean => {}
      _ => {
        self.state = State::Stuck;
        // Bounded: a server that stopped answering gets the connection closed instead (it
        // rolls back on its own), never a caller or a pool slot held forever.
        let r = tokio::time::timeout(
          Duration::from_secs(5),
          self.flight(&[("ROLLBACK", Vec::new(), Format::Text)]),
        )
        .await;
        if matches!(r, Ok(Ok(_))) {
          self.ended();
        }
      }
    }
  }
}

/// A pooled connection: outside a transaction, while a statement runs the lease is busy, so a
/// dropped future or a broken connection closes it instead of returning it to the pool.
impl super::exec::Exec for Lease {
  fn query<'a>(
    &'a mut self,
    sql: &'a str,
    params: Vec<Param>,
  ) -> BoxFuture<'a, Result<QueryResult>> {
    async move { self.service_query(sql, &params).await }.boxed()
  }

  fn execute<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, Result<()>> {
    Lease::execute(self, sql).boxed()
  }
}
