//! Our own PostgreSQL connection pool, and the lease a caller holds on one connection.
//!
//! Every statement goes on the wire as node-postgres sends a query with values (`wire`): Parse,
//! Bind, Describe, Execute, then one Sync, in one write. A stage costs three round trips:
//! BEGIN and the row lock in one flight, each callback statement in one flight, the result's
//! UPDATE and COMMIT in one flight.
//!
//! Two statement modes:
//!
//! - **default**: the unnamed statement only, so nothing outlives the flight that made it:
//!   correct behind every transaction-mode pooler (PgBouncer of any version, Supavisor, RDS
//!   Proxy, PgCat, Neon), none of which pins a session on it.
//! - **prepared** (opt-in): protocol-level named statements, cached per connection (at most
//!   [`PREPARED_MAX`], the least recently used closed first), so nothing is re-planned. Safe on
//!   direct connections, session pooling, and transaction poolers that track protocol-level
//!   statements (PgBouncer ≥ 1.21 with `max_prepared_statements`, Neon, PgDog, Supavisor with
//!   named prepared statements on); not on PgBouncer < 1.21 or PgCat without its cache.
//!
//! A lease is in one of the [`State`]s; dropping it in any but `Clean` closes the connection
//! (the server rolls back whatever was open), so a dropped future never returns a connection
//! in an unknown state. Connections are replaced after `max_lifetime` and closed after
//! `idle_timeout` unused.

use super::codec::type_of_oid;
use super::config::Config;
use super::wire::{Answer, CancelKey, Format, Outcome, Raw, Stmt, Wire, Wired};
use super::{guard, rows, text};
use crate::error::{Error, Result};
use crate::value::{Param, QueryResult};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How the pool connects and recycles.
#[derive(Debug, Clone)]
pub(crate) struct PoolConfig {
  pub(crate) size: u32,
  /// The whole wait for a connection: a free permit, then a new connection if none is idle.
  pub(crate) acquire_timeout: Duration,
  /// One connection attempt: TCP, TLS and authentication.
  pub(crate) connect_timeout: Duration,
  pub(crate) max_lifetime: Option<Duration>,
  pub(crate) idle_timeout: Option<Duration>,
  /// The prepared statement mode (else the unnamed statement only).
  pub(crate) prepared: bool,
}

/// Named statements per connection in the prepared mode.
pub(crate) const PREPARED_MAX: usize = 256;

/// The settings a value's text form depends on, as node-postgres reads it with its defaults.
const PINNED: [(&str, &str); 4] = [
  ("DateStyle", "ISO, MDY"),
  ("IntervalStyle", "postgres"),
  ("extra_float_digits", "1"),
  ("bytea_output", "hex"),
];

/// A pooled connection and what this pool knows of it.
pub(crate) struct Conn {
  wire: Wire,
  cancel: CancelKey,
  /// Prepared mode: SQL text → (statement name, last use).
  named: HashMap<String, (String, u64)>,
  /// Named statements to Close in the next flight (evicted from `named`).
  closing: Vec<String>,
  /// The database's defaults for the unreported settings in [`PINNED`] differ from what
  /// node-postgres expects, so a stage pins them before its first callback statement.
  defaults_differ: bool,
  born: Instant,
  idle_since: Instant,
}

/// Statements' parameter types, by SQL text, for the whole process.
const DESCRIBED_MAX: usize = 1024;

struct Inner {
  config: Config,
  cfg: PoolConfig,
  idle: Mutex<Vec<Conn>>,
  permits: Arc<Semaphore>,
  closed: AtomicBool,
  described: Mutex<HashMap<String, Arc<Vec<u32>>>>,
  names: AtomicU64,
}

#[derive(Clone)]
pub(crate) struct PgPool(Arc<Inner>);

/// Where a lease's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
  /// Idle, nothing open: it may go back to the pool.
  Clean,
  /// An operation outside a transaction is under way (or failed in a way that leaves the
  /// connection unknown).
  Busy,
  /// A transaction of ours is open.
  InTx,
  /// A transaction is open and a statement in it was abandoned before its answer (the stage
  /// ended: its timeout), or the connection broke: nothing more can be sent on it; it is
  /// cancelled and closed, and the server rolls back.
  Stuck,
}

/// A connection on loan. Returned to the pool on drop only when `Clean`.
pub(crate) struct Lease {
  conn: Option<Conn>,
  state: State,
  /// The connection sat idle in the pool and has not run anything in this lease yet: if the
  /// server dropped it meanwhile (a restart, `pg_terminate_backend`), nothing sent on it ran,
  /// so it is safe to replace it and send again.
  reused: bool,
  /// Settings pinned in the current transaction (see [`PINNED`]).
  pinned: bool,
  /// The server's reported settings when the transaction began, to tell whether a stage left
  /// session state behind.
  reported: Option<HashMap<String, String>>,
  pool: Arc<Inner>,
  _permit: OwnedSemaphorePermit,
}

/// One connection attempt, bounded; then the database's defaults for the unreported settings
/// a value's text form depends on (one round trip per new connection).
async fn open(config: &Config, limit: Duration) -> Result<Conn> {
  let attempt = async {
    let mut wire = Wire::connect(config).await?;
    let check = "SELECT current_setting('extra_float_digits') = '1' \
      AND current_setting('bytea_output') = 'hex'";
    let answer = wire
      .flight(
        &[],
        &[Stmt {
          sql: check,
          params: &[],
          result: Format::Text,
          name: "",
          parse: true,
        }],
      )
      .await?;
    let same = match answer.outcomes.into_iter().next() {
      Some(Outcome::Done(raw)) => raw
        .rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .is_some_and(|v| &v[..] == b"t"),
      _ => false,
    };
    Ok::<_, Error>((wire, same))
  };
  let (wire, same) = tokio::time::timeout(limit, attempt).await.map_err(|_| {
    Error::Connection(format!(
      "no answer from the database server within {} ms (connect timeout)",
      limit.as_millis()
    ))
  })??;
  let now = Instant::now();
  Ok(Conn {
    cancel: wire.cancel_key(config),
    wire,
    named: HashMap::new(),
    closing: Vec::new(),
    defaults_differ: !same,
    born: now,
    idle_since: now,
  })
}

/// Close a connection politely in the background (a Terminate message), if there is a runtime.
fn retire(conn: Conn) {
  if let Ok(rt) = tokio::runtime::Handle::try_current() {
    rt.spawn(conn.wire.close());
  }
}

impl Inner {
  fn expired(&self, c: &Conn, now: Instant) -> bool {
    self
      .cfg
      .max_lifetime
      .is_some_and(|l| now.duration_since(c.born) >= l)
      || self
        .cfg
        .idle_timeout
        .is_some_and(|l| now.duration_since(c.idle_since) >= l)
  }

  /// Take idle connections past their lifetime or idle timeout out of the pool.
  fn sweep(&self) -> Vec<Conn> {
    let now = Instant::now();
    let mut idle = self.idle.lock().unwrap();
    let (old, keep): (Vec<Conn>, Vec<Conn>) = idle.drain(..).partition(|c| self.expired(c, now));
    *idle = keep;
    old
  }
}

/// Retire expired idle connections every so often, until the pool is closed or dropped.
async fn sweeper(pool: Weak<Inner>, every: Duration) {
  loop {
    tokio::time::sleep(every).await;
    let Some(inner) = pool.upgrade() else { return };
    if inner.closed.load(Ordering::SeqCst) {
      return;
    }
    for c in inner.sweep() {
      retire(c);
    }
  }
}

impl PgPool {
  /// Opens one connection up front, so a bad URL or an unreachable server fails `connect()`.
  pub(crate) async fn connect(config: Config, cfg: PoolConfig) -> Result<Self> {
    let first = open(&config, cfg.connect_timeout.min(cfg.acquire_timeout)).await?;
    let every = [cfg.idle_timeout, cfg.max_lifetime]
      .into_iter()
      .flatten()
      .min()
      .map(|d| (d / 4).clamp(Duration::from_millis(10), Duration::from_secs(30)));
    let pool = PgPool(Arc::new(Inner {
      config,
      idle: Mutex::new(vec![first]),
      permits: Arc::new(Semaphore::new(cfg.size as usize)),
      closed: AtomicBool::new(false),
      described: Mutex::new(HashMap::new()),
      names: AtomicU64::new(0),
      cfg,
    }));
    if let (Some(every), Ok(rt)) = (every, tokio::runtime::Handle::try_current()) {
      rt.spawn(sweeper(Arc::downgrade(&pool.0), every));
    }
    Ok(pool)
  }

  pub(crate) async fn acquire(&self) -> Result<Lease> {
    if self.0.closed.load(Ordering::SeqCst) {
      return Err(Error::Closed);
    }
    let started = Instant::now();
    let limit = self.0.cfg.acquire_timeout;
    let permit = tokio::time::timeout(limit, self.0.permits.clone().acquire_owned())
      .await
      .map_err(|_| Error::PoolTimeout)?
      .map_err(|_| Error::Closed)?;
    let idle = loop {
      let next = self.0.idle.lock().unwrap().pop();
      match next {
        Some(c) if self.0.expired(&c, Instant::now()) => retire(c),
        other => break other,
      }
    };
    let reused = idle.is_some();
    let conn = match idle {
      Some(c) => c,
      None => {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
          return Err(Error::PoolTimeout);
        }
        open(&self.0.config, self.0.cfg.connect_timeout.min(left)).await?
      }
    };
    Ok(Lease {
      conn: Some(conn),
      state: State::Busy,
      reused,
      pinned: false,
      reported: None,
      pool: self.0.clone(),
      _permit: permit,
    })
  }

  pub(crate) async fn close(&self) {
    self.0.closed.store(true, Ordering::SeqCst);
    self.0.permits.close();
    let idle: Vec<Conn> = std::mem::take(&mut *self.0.idle.lock().unwrap());
    for c in idle {
      c.wire.close().await;
    }
  }
}

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

/// The service's own parameters (every placeholder carries a cast): their plain text.
fn service_params(params: &[Param]) -> Result<Vec<Wired>> {
  params
    .iter()
    .map(|p| Ok(text::plain(p)?.map_or(Wired::Null, Wired::Text)))
    .collect()
}

impl Lease {
  fn conn(&mut self) -> &mut Conn {
    self
      .conn
      .as_mut()
      .expect("a lease holds its connection until dropped")
  }

  fn prepared_mode(&self) -> bool {
    self.pool.cfg.prepared
  }

  /// The connection is in a known, idle state: it may go back to the pool.
  pub(crate) fn done(&mut self) {
    self.state = State::Clean;
  }

  /// Whether a failed operation left the connection usable (an ordinary database error) or
  /// not (the connection or the server session is gone).
  fn settle_after(&mut self, e: &Error) {
    self.state = if matches!(
      e,
      Error::Database {
        sqlstate: Some(_),
        ..
      }
    ) && !is_fatal(e)
    {
      State::Clean
    } else {
      State::Busy
    };
  }

  /// The first statement on a connection that waited in the pool failed because the
  /// connection was already dead: replace it, once, and say whether to send again.
  async fn replace_if_dead(&mut self, e: &Error) -> Result<bool> {
    if !(std::mem::take(&mut self.reused) && is_fatal(e)) {
      return Ok(false);
    }
    self.conn = Some(open(&self.pool.config, self.pool.cfg.connect_timeout).await?);
    Ok(true)
  }

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
    let answer = conn.wire.flight(&closing, &wire_stmts).await?;
    if prepared {
      let tick = names.fetch_add(1, Ordering::Relaxed);
      for (i, ((sql, _, _), (name, parse))) in stmts.iter().zip(&plan).enumerate() {
        if *parse && answer.parsed.get(i).copied().unwrap_or(false) {
          conn.named.insert((*sql).to_owned(), (name.clone(), tick));
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
    let answer = self.flight(stmts).await;
    let answer = match answer {
      Ok(a) => a,
      Err(e) => return Err(e), // stays Stuck: the connection broke mid-flight
    };
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
  pub(crate) async fn plain(&mut self, sql: &str) -> Result<()> {
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
      .map(|(i, (p, t))| Ok(text::typed(p, &type_of_oid(*t), i)?.map_or(Wired::Null, Wired::Text)))
      .collect::<Result<Vec<_>>>()?;
    let mut stmts: Vec<(&str, Vec<Wired>, Format)> = Vec::with_capacity(2);
    let pin = self.needs_pin();
    let pin_sql = pin_sql();
    if pin {
      stmts.push((pin_sql.as_str(), Vec::new(), Format::Text));
    }
    stmts.push((sql, wired, Format::Text));
    let r = self.in_tx_flight(&stmts).await;
    if pin && self.state == State::InTx {
      self.pinned = true;
    }
    r
  }

  /// Whether the settings in [`PINNED`] must be set for this transaction before a callback's
  /// statement: the database's defaults differ, or a reported one (DateStyle, IntervalStyle)
  /// is not what node-postgres reads.
  fn needs_pin(&mut self) -> bool {
    if self.pinned {
      return false;
    }
    let conn = self.conn();
    let reported = |k: &str, want: &str| conn.wire.params.get(k).is_none_or(|v| v == want);
    conn.defaults_differ
      || !reported("DateStyle", "ISO, MDY")
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
    self.reported = Some(self.conn().wire.params.clone());
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
    let changed = match (&self.reported, &self.conn) {
      (Some(before), Some(c)) => {
        let now = &c.wire.params;
        now.iter().any(|(k, v)| before.get(k) != Some(v))
      }
      _ => false,
    };
    self.reported = None;
    self.pinned = false;
    self.state = if changed { State::Busy } else { State::Clean };
  }

  /// The stage result's UPDATE and COMMIT in one flight. On failure the transaction is
  /// rolled back.
  pub(crate) async fn apply_and_commit(
    &mut self,
    apply_sql: &str,
    params: &[Param],
  ) -> Result<QueryResult> {
    let wired = service_params(params)?;
    let first = [
      (apply_sql, wired, Format::Binary),
      ("COMMIT", Vec::new(), Format::Text),
    ];
    if self.state == State::Stuck {
      return Err(Error::TransactionClosed);
    }
    self.state = State::Stuck;
    let answer = match self.flight(&first).await {
      Ok(a) => a,
      Err(e) => return Err(e),
    };
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
    let r = self.conn().wire.simple(sql).await;
    match &r {
      Ok(()) if self.conn().wire.status == b'I' => self.done(),
      Ok(()) => {}
      Err(e) => {
        if self.conn().wire.status == b'E' || self.conn().wire.status == b'T' {
          let _ = self.conn().wire.simple("ROLLBACK").await;
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
        let r = self.flight(&[("ROLLBACK", Vec::new(), Format::Text)]).await;
        if r.is_ok() {
          self.ended();
        }
      }
    }
  }
}

/// `SELECT set_config(…, true)` for each of [`PINNED`]: for the transaction only.
fn pin_sql() -> String {
  let sets: Vec<String> = PINNED
    .iter()
    .map(|(k, v)| format!("set_config('{k}', '{v}', true)"))
    .collect();
  format!("SELECT {}", sets.join(", "))
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

  fn plain<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, Result<()>> {
    Lease::plain(self, sql).boxed()
  }
}

impl Drop for Lease {
  fn drop(&mut self) {
    if let Some(mut conn) = self.conn.take() {
      let now = Instant::now();
      let outlived = self
        .pool
        .cfg
        .max_lifetime
        .is_some_and(|l| now.duration_since(conn.born) >= l);
      let clean = self.state == State::Clean && conn.wire.status == b'I';
      if clean && !self.pool.closed.load(Ordering::SeqCst) && !outlived {
        conn.idle_since = now;
        self.pool.idle.lock().unwrap().push(conn);
      } else if clean {
        retire(conn);
      }
      // Otherwise the connection is dropped: its socket closes and the server rolls back
      // whatever was open on it. The permit goes back either way.
    }
  }
}

/// The connection (class 08), or the server session (57P01 admin shutdown, 57P02 crash
/// shutdown, 57P03 cannot connect now), is gone; or the protocol broke.
pub(crate) fn is_fatal(e: &Error) -> bool {
  match e {
    Error::Connection(_) => true,
    Error::Database { sqlstate: None, .. } => true,
    Error::Database {
      sqlstate: Some(s), ..
    } => s.starts_with("08") || matches!(s.as_str(), "57P01" | "57P02" | "57P03"),
    _ => false,
  }
}
