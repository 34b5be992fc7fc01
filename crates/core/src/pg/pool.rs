//! Our own PostgreSQL connection pool, for the stage path's round trips.
//!
//! sqlx's pool pings every connection when it is returned (one extra round trip per
//! operation), and its transactions cannot carry a statement in the same message as their
//! BEGIN or COMMIT. Here a stage costs three round trips: `BEGIN …; <lock the row>` as one
//! simple-protocol message, the callback's statements, `<apply>; COMMIT` as one message.
//!
//! Two statement modes:
//!
//! - **pooler-safe** (the default): no server-side prepared statement outlives the message
//!   that made it, so the service is correct behind a transaction-mode pooler (PgBouncer),
//!   where consecutive transactions of one client land on different server connections. The
//!   service's own statements carry their parameters as escaped literals; a callback's
//!   statement is described once per process (inside its stage transaction: PREPARE under a
//!   random name, read `pg_prepared_statements`, DEALLOCATE, in one message), then run as
//!   `PREPARE x AS …; EXECUTE x(<literals>); DEALLOCATE x` in one message, so values go only
//!   into SQL of ours, never into the caller's statement.
//! - **prepared** (opt-in, direct connections or session pooling): the stage statements are
//!   `PREPARE`d once per connection at the SQL level and a callback's statements are cached
//!   per connection as protocol-level named statements (sqlx's cache), so nothing is
//!   re-planned.
//!
//! A connection whose operation did not finish cleanly (a dropped future, an I/O error) is
//! closed instead of returned, so the next caller gets a fresh one. Connections are replaced
//! after `max_lifetime` and closed after `idle_timeout` unused, so an idle pool shrinks.

use super::codec::{bind, decode_bytes, type_of_oid, type_oid};
use super::exec::Exec;
use super::{sql, text};
use crate::error::{Error, Result};
use crate::stage::strip_leading_comments;
use crate::value::{exact_i64, Cell, Param, QueryResult};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, TryStreamExt};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgTypeInfo, PgValueRef};
use sqlx::{Column, Connection, Executor, Postgres, Row, Statement, ValueRef};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
  /// The prepared statement mode (else pooler-safe).
  pub(crate) prepared: bool,
}

/// A pooled connection and what this pool has set up on it.
pub(crate) struct Conn {
  raw: PgConnection,
  /// The stage statements are PREPAREd on it (prepared mode).
  prepared: bool,
  born: Instant,
  idle_since: Instant,
}

/// What the server inferred for a callback's statement: its parameter types, to encode each
/// JS value as its type.
struct Described {
  params: Vec<PgTypeInfo>,
}

/// A statement name no other client uses: a leaked one can never be run or collided with.
fn statement_name() -> String {
  format!("medusa_ikey_q{:016x}", rand::random::<u64>())
}

/// Statements described per process, by SQL text; cleared when it reaches this size.
const DESCRIBED_MAX: usize = 1024;

struct Inner {
  options: PgConnectOptions,
  cfg: PoolConfig,
  idle: Mutex<Vec<Conn>>,
  permits: Arc<Semaphore>,
  closed: AtomicBool,
  described: Mutex<HashMap<String, Arc<Described>>>,
}

#[derive(Clone)]
pub(crate) struct PgPool(Arc<Inner>);

/// A connection on loan. Returned to the pool on drop only if marked clean.
pub(crate) struct Lease {
  conn: Option<Conn>,
  clean: bool,
  /// The connection sat idle in the pool and has not run anything in this lease yet: if the
  /// server dropped it meanwhile (a restart, `pg_terminate_backend`), nothing sent on it ran,
  /// so it is safe to replace it and send again.
  reused: bool,
  /// A transaction of ours is open on the connection.
  in_tx: bool,
  /// A statement in the transaction was abandoned before it finished (the stage ended: its
  /// timeout), or failed leaving the connection in a state we cannot tell (the connection or
  /// the protocol broke): ROLLBACK would wait for an answer that may never come, so the
  /// connection is closed instead, and the server rolls back.
  unsure: bool,
  /// Pooler-safe mode: statements PREPAREd in this transaction whose DEALLOCATE did not run
  /// (their EXECUTE failed); deallocated in the message that ends the transaction, which
  /// still runs on the same server connection.
  leaked: Vec<String>,
  pool: Arc<Inner>,
  _permit: OwnedSemaphorePermit,
}

/// One connection attempt, bounded.
async fn open(options: &PgConnectOptions, limit: Duration) -> Result<Conn> {
  let raw = tokio::time::timeout(limit, PgConnection::connect_with(options))
    .await
    .map_err(|_| {
      Error::Connection(format!(
        "no answer from the database server within {} ms (connect timeout)",
        limit.as_millis()
      ))
    })??;
  let now = Instant::now();
  Ok(Conn {
    raw,
    prepared: false,
    born: now,
    idle_since: now,
  })
}

/// Close a connection politely in the background (a Terminate message), if there is a runtime.
fn retire(conn: Conn) {
  if let Ok(rt) = tokio::runtime::Handle::try_current() {
    rt.spawn(async move {
      let _ = conn.raw.close().await;
    });
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
  pub(crate) async fn connect(options: PgConnectOptions, cfg: PoolConfig) -> Result<Self> {
    let first = open(&options, cfg.connect_timeout.min(cfg.acquire_timeout)).await?;
    let every = [cfg.idle_timeout, cfg.max_lifetime]
      .into_iter()
      .flatten()
      .min()
      .map(|d| (d / 4).clamp(Duration::from_millis(10), Duration::from_secs(30)));
    let pool = PgPool(Arc::new(Inner {
      options,
      idle: Mutex::new(vec![first]),
      permits: Arc::new(Semaphore::new(cfg.size as usize)),
      closed: AtomicBool::new(false),
      described: Mutex::new(HashMap::new()),
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
        open(&self.0.options, self.0.cfg.connect_timeout.min(left)).await?
      }
    };
    Ok(Lease {
      conn: Some(conn),
      clean: false,
      reused,
      in_tx: false,
      unsure: false,
      leaked: Vec::new(),
      pool: self.0.clone(),
      _permit: permit,
    })
  }

  pub(crate) async fn close(&self) {
    self.0.closed.store(true, Ordering::SeqCst);
    self.0.permits.close();
    let idle: Vec<Conn> = std::mem::take(&mut *self.0.idle.lock().unwrap());
    for c in idle {
      let _ = c.raw.close().await;
    }
  }
}

impl Lease {
  pub(crate) fn raw(&mut self) -> &mut PgConnection {
    &mut self
      .conn
      .as_mut()
      .expect("a lease holds its connection until dropped")
      .raw
  }

  fn prepared_mode(&self) -> bool {
    self.pool.cfg.prepared
  }

  /// The connection is in a known, idle state: it may go back to the pool.
  pub(crate) fn done(&mut self) {
    self.clean = true;
  }

  /// An operation on the connection is starting; until `done()`, dropping the lease closes it.
  pub(crate) fn busy(&mut self) {
    self.clean = false;
  }

  /// Whether a failed operation left the connection usable (an ordinary database error) or
  /// not (the connection or the server session is gone).
  pub(crate) fn settle_after(&mut self, e: &Error) {
    self.clean = matches!(
      e,
      Error::Database {
        sqlstate: Some(_),
        ..
      }
    ) && !is_fatal(e);
  }

  /// The first statement on a connection that waited in the pool failed because the
  /// connection was already dead: replace it, once, and say whether to send again.
  pub(crate) async fn replace_if_dead(&mut self, e: &Error) -> Result<bool> {
    if !(std::mem::take(&mut self.reused) && is_fatal(e)) {
      return Ok(false);
    }
    self.conn = Some(open(&self.pool.options, self.pool.cfg.connect_timeout).await?);
    Ok(true)
  }

  /// A statement ran on this lease's connection.
  pub(crate) fn used(&mut self) {
    self.reused = false;
  }

  /// A statement of the service itself (every parameter cast in the SQL). Outside a
  /// transaction the lease's state follows the outcome; inside one it stays busy until the
  /// transaction ends.
  pub(crate) async fn service_query(&mut self, sql: &str, params: &[Param]) -> Result<QueryResult> {
    if self.in_tx {
      let before = self.watch();
      let r = self.service_once(sql, params).await;
      self.watched(before, &r);
      return r;
    }
    self.busy();
    let mut r = self.service_once(sql, params).await;
    if let Err(e) = &r {
      if self.replace_if_dead(e).await? {
        r = self.service_once(sql, params).await;
      }
    }
    self.used();
    match &r {
      Ok(_) => self.done(),
      Err(e) => self.settle_after(e),
    }
    r
  }

  async fn service_once(&mut self, sql: &str, params: &[Param]) -> Result<QueryResult> {
    if self.prepared_mode() {
      run_query(self.raw(), sql, params).await
    } else {
      let inlined = text::inline(sql, params)?;
      simple(self.raw(), &inlined).await.0
    }
  }

  /// A statement without parameters or rows (savepoints), in the simple protocol.
  pub(crate) async fn plain(&mut self, sql: &str) -> Result<()> {
    let before = self.watch();
    let r = self
      .raw()
      .execute(sql)
      .await
      .map(|_| ())
      .map_err(Error::from);
    self.watched(before, &r);
    r
  }

  /// A statement inside the transaction is starting: if its future is dropped before
  /// [`watched`](Self::watched), the lease stays `unsure`. Returns the state before it.
  fn watch(&mut self) -> bool {
    let before = self.unsure;
    if self.in_tx {
      self.unsure = true;
    }
    before
  }

  /// The statement finished: the lease is `unsure` if it was before or the connection broke.
  fn watched<T>(&mut self, before: bool, r: &Result<T>) {
    if self.in_tx {
      self.unsure = before || matches!(r, Err(e) if is_fatal(e));
    }
  }

  /// A stage callback's statement, inside the stage transaction.
  pub(crate) async fn user_query(&mut self, sql: &str, params: &[Param]) -> Result<QueryResult> {
    let before = self.watch();
    let r = self.user_once(sql, params).await;
    self.watched(before, &r);
    r
  }

  async fn user_once(&mut self, sql: &str, params: &[Param]) -> Result<QueryResult> {
    if text::copies_through_client(sql) == Some(true) {
      return Err(Error::invalid(
        "COPY FROM STDIN / TO STDOUT cannot run inside a stage (its data would stream over the \
         stage's connection): use INSERT … VALUES / INSERT … SELECT, or a SELECT",
      ));
    }
    if self.prepared_mode() {
      return run_query(self.raw(), sql, params).await;
    }
    if !preparable(sql) {
      // DDL, SET, SAVEPOINT, CALL…: PREPARE does not take them. Without parameters they run
      // as they are (once checked to be one statement); with parameters (CALL, EXPLAIN) they
      // would need the values written into the caller's SQL, which this mode never does.
      if text::placeholders(sql)? > 0 || !params.is_empty() {
        return Err(Error::invalid(
          "a statement with parameters must be one PREPARE takes (SELECT, INSERT, UPDATE, DELETE, \
           MERGE, VALUES) in the pooler-safe statement mode; call a procedure through a SELECT of \
           a function, or connect with preparedStatements: true (no transaction-mode pooler)",
        ));
      }
      return simple(self.raw(), sql).await.0;
    }
    let described = self.describe(sql).await?;
    check_count(described.params.len(), params.len())?;
    if params.is_empty() {
      // Checked to be one statement: the simple protocol runs it as is.
      return simple(self.raw(), sql).await.0;
    }
    // The values go only into SQL of ours (EXECUTE's arguments), never into the caller's
    // statement; EXECUTE converts each literal to its parameter's type as a bound value is.
    let values = params
      .iter()
      .zip(&described.params)
      .enumerate()
      .map(|(i, (p, ty))| text::typed_literal(p, ty, i))
      .collect::<Result<Vec<_>>>()?;
    let name = statement_name();
    let batch = format!(
      "PREPARE {name} AS {sql}\n;EXECUTE {name}({});DEALLOCATE {name}",
      values.join(", ")
    );
    let (r, completed) = simple(self.raw(), &batch).await;
    if r.is_err() && left_prepared(completed) {
      // PREPARE ran, DEALLOCATE did not: deallocated when the transaction ends.
      self.leaked.push(name);
    }
    r
  }

  /// The server's parameter types for a callback's statement: from the process cache, else
  /// asked of the server in one message that PREPAREs it under a name of its own, reads
  /// `pg_prepared_statements` and DEALLOCATEs it (a protocol-level describe would name its
  /// statement like every other sqlx client, and collide with what they leave on a pooled
  /// server connection).
  async fn describe(&mut self, sql: &str) -> Result<Arc<Described>> {
    if let Some(d) = self.pool.described.lock().unwrap().get(sql) {
      return Ok(d.clone());
    }
    text::one_statement(sql)?;
    let name = statement_name();
    let batch = format!(
      "PREPARE {name} AS {sql}\n;SELECT parameter_types::oid[] AS t \
       FROM pg_prepared_statements WHERE name = '{name}';DEALLOCATE {name}"
    );
    let (r, completed) = simple(self.raw(), &batch).await;
    if r.is_err() && left_prepared(completed) {
      self.leaked.push(name);
    }
    let r = r?;
    let unreadable = || Error::Internal("could not read the statement's parameter types".into());
    let row = r.rows.first().ok_or_else(unreadable)?;
    let oids = match row.first() {
      Some(Cell::Array(items)) => items
        .iter()
        .map(|c| match c {
          Cell::Number(n) => exact_i64(*n).and_then(|i| u32::try_from(i).ok()),
          _ => None,
        })
        .collect::<Option<Vec<u32>>>(),
      _ => None,
    }
    .ok_or_else(unreadable)?;
    let described = Arc::new(Described {
      params: oids.into_iter().map(type_of_oid).collect(),
    });
    let mut cache = self.pool.described.lock().unwrap();
    if cache.len() >= DESCRIBED_MAX {
      cache.clear();
    }
    cache.insert(sql.to_owned(), described.clone());
    Ok(described)
  }

  /// PREPARE the stage statements on this connection once (prepared mode).
  async fn prepare(&mut self) -> Result<()> {
    if self.conn.as_ref().is_some_and(|c| c.prepared) {
      return Ok(());
    }
    let sql = format!(
      "PREPARE medusa_ikey_lock(varchar) AS {}; PREPARE medusa_ikey_apply(varchar, varchar, boolean, int4, boolean, jsonb) AS {}",
      sql::lock_row_sql(),
      sql::apply_sql()
    );
    self.raw().execute(sql.as_str()).await?;
    if let Some(c) = self.conn.as_mut() {
      c.prepared = true;
    }
    Ok(())
  }

  /// `BEGIN …; <lock the key's row>` in one round trip; the transaction stays open on this
  /// lease. Any failure rolls back before returning.
  pub(crate) async fn begin_and_lock(&mut self, begin: &str, key: &str) -> Result<QueryResult> {
    self.busy();
    self.in_tx = true;
    let key = [Param::Text(key.to_owned())];
    let mut ran = self.begin_and_lock_once(begin, &key).await;
    if let Err(e) = &ran {
      if self.replace_if_dead(e).await? {
        ran = self.begin_and_lock_once(begin, &key).await;
      }
    }
    self.used();
    match ran {
      Ok(r) => Ok(r),
      Err(e) => {
        self.rollback().await;
        Err(e)
      }
    }
  }

  async fn begin_and_lock_once(&mut self, begin: &str, key: &[Param]) -> Result<QueryResult> {
    let sql = if self.prepared_mode() {
      self.prepare().await?;
      format!(
        "{begin}; EXECUTE medusa_ikey_lock({})",
        text::literal(&key[0])?
      )
    } else {
      format!("{begin}; {}", text::inline(&sql::lock_row_sql(), key)?)
    };
    simple(self.raw(), &sql).await.0
  }

  /// What ends a transaction: `COMMIT` or `ROLLBACK`, and the DEALLOCATE of statements a
  /// failed EXECUTE left behind.
  fn ending(&self, end: &str) -> String {
    let mut sql = end.to_owned();
    for name in &self.leaked {
      sql += "; DEALLOCATE ";
      sql += name;
    }
    sql
  }

  fn ended(&mut self) {
    self.in_tx = false;
    self.leaked.clear();
    self.done();
  }

  /// `<apply>; COMMIT` in one round trip (the parameters of `pgsql::apply`). On failure the
  /// transaction is rolled back.
  pub(crate) async fn apply_and_commit(&mut self, params: &[Param]) -> Result<QueryResult> {
    self.busy();
    let apply = if self.prepared_mode() {
      let args = params
        .iter()
        .map(text::literal)
        .collect::<Result<Vec<_>>>()?;
      format!("EXECUTE medusa_ikey_apply({})", args.join(", "))
    } else {
      text::inline(&sql::apply_sql(), params)?
    };
    let sql = format!("{apply}; {}", self.ending("COMMIT"));
    match simple(self.raw(), &sql).await.0 {
      Ok(r) => {
        self.ended();
        Ok(r)
      }
      Err(e) => {
        self.rollback().await;
        Err(e)
      }
    }
  }

  pub(crate) async fn commit(&mut self) -> Result<()> {
    self.busy();
    let sql = self.ending("COMMIT");
    match self.raw().execute(sql.as_str()).await {
      Ok(_) => {
        self.ended();
        Ok(())
      }
      Err(e) => {
        self.rollback().await;
        Err(e.into())
      }
    }
  }

  pub(crate) async fn rollback(&mut self) {
    self.busy();
    if self.unsure {
      // Dropped with the transaction open: the socket closes, the server rolls back.
      return;
    }
    let sql = self.ending("ROLLBACK");
    if self.raw().execute(sql.as_str()).await.is_ok() {
      self.ended();
    }
  }
}

/// A pooled connection: outside a transaction, while a statement runs the lease is busy, so a
/// dropped future or a broken connection closes it instead of returning it to the pool.
impl Exec for Lease {
  fn query<'a>(
    &'a mut self,
    sql: &'a str,
    params: Vec<Param>,
  ) -> BoxFuture<'a, Result<QueryResult>> {
    async move { self.service_query(sql, &params).await }.boxed()
  }

  /// In the simple protocol: no statement is prepared on the server.
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
      if self.clean && !self.in_tx && !self.pool.closed.load(Ordering::SeqCst) && !outlived {
        conn.idle_since = now;
        self.pool.idle.lock().unwrap().push(conn);
      } else if self.clean && !self.in_tx {
        retire(conn);
      }
      // Otherwise the connection is dropped: its socket closes and the server rolls back
      // whatever was open on it. The permit goes back either way.
    }
  }
}

/// Of `PREPARE; <statement>; DEALLOCATE` in one message, with this many completed on the server:
/// whether the statement stayed prepared.
fn left_prepared(completed: usize) -> bool {
  (1..3).contains(&completed)
}

fn check_count(expected: usize, given: usize) -> Result<()> {
  if expected != given {
    return Err(Error::invalid(format!(
      "the statement expects {expected} parameter(s), {given} given"
    )));
  }
  Ok(())
}

/// Statements `PREPARE` takes: SELECT, INSERT, UPDATE, DELETE, MERGE, VALUES (and WITH or a
/// parenthesised query leading to them).
fn preparable(sql: &str) -> bool {
  let mut rest = strip_leading_comments(sql);
  while let Some(r) = rest.strip_prefix('(') {
    rest = strip_leading_comments(r);
  }
  let word: String = rest
    .chars()
    .take_while(|c| c.is_ascii_alphabetic())
    .collect::<String>()
    .to_ascii_uppercase();
  matches!(
    word.as_str(),
    "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "VALUES" | "WITH" | "TABLE"
  )
}

/// Prepare without declared parameter types, bind by the types the server inferred, and
/// decode the rows by column type (prepared mode: sqlx caches the statement per connection).
pub(crate) async fn run_query(
  conn: &mut PgConnection,
  sql: &str,
  params: &[Param],
) -> Result<QueryResult> {
  let stmt = (&mut *conn).prepare_with(sql, &[]).await?;
  let types = match stmt.parameters() {
    Some(sqlx::Either::Left(types)) => types.to_vec(),
    _ => Vec::new(),
  };
  check_count(types.len(), params.len())?;
  let mut query = sqlx::query::<Postgres>(sql);
  for (i, (p, ty)) in params.iter().zip(&types).enumerate() {
    query = query.bind(bind(p, ty, i)?);
  }
  let mut out = rows(conn.fetch_many(query)).await?;
  if out.columns.is_empty() {
    out.columns = stmt.columns().iter().map(|c| c.name().to_owned()).collect();
  }
  Ok(out)
}

/// Collect a result stream: the rows of its last row-returning statement, the affected
/// counts of all.
async fn rows<'e>(
  mut stream: futures_util::stream::BoxStream<
    'e,
    std::result::Result<
      sqlx::Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>,
      sqlx::Error,
    >,
  >,
) -> Result<QueryResult> {
  let mut out = QueryResult::default();
  while let Some(item) = stream.try_next().await? {
    collect(&mut out, item)?;
  }
  Ok(out)
}

fn collect(
  out: &mut QueryResult,
  item: sqlx::Either<sqlx::postgres::PgQueryResult, sqlx::postgres::PgRow>,
) -> Result<()> {
  match item {
    sqlx::Either::Left(done) => out.rows_affected += done.rows_affected(),
    sqlx::Either::Right(row) => {
      if out.columns.is_empty() && !row.columns().is_empty() {
        out.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
      }
      let mut cells = Vec::with_capacity(row.len());
      for i in 0..row.len() {
        cells.push(decode(row.try_get_raw(i)?)?);
      }
      out.rows.push(cells);
    }
  }
  Ok(())
}

/// Run a simple-protocol batch: its rows (text format, decoded by type) and how many of its
/// statements completed on the server. A row that fails to decode here fails the batch, but
/// Decode one column value by its type OID: binary (the extended protocol) or text (the simple
/// protocol).
fn decode(value: PgValueRef<'_>) -> Result<Cell> {
  if value.is_null() {
    return Ok(Cell::Null);
  }
  let ty = value.type_info().into_owned();
  let bytes = value.as_bytes().map_err(|e| Error::Database {
    sqlstate: None,
    message: e.to_string(),
  })?;
  if value.format() == sqlx::postgres::PgValueFormat::Text {
    // The simple query protocol: text, decoded by type OID only (a type the server did not
    // describe has no name or kind to ask for).
    let s = std::str::from_utf8(bytes).map_err(|_| Error::Database {
      sqlstate: None,
      message: "a text-format value is not UTF-8".into(),
    })?;
    return text::decode(s, type_oid(&ty));
  }
  decode_bytes(bytes, &ty)
}

/// the rest is still read, so the count says what the server ran.
pub(crate) async fn simple(conn: &mut PgConnection, sql: &str) -> (Result<QueryResult>, usize) {
  let mut out = Ok(QueryResult::default());
  let mut completed = 0;
  let mut stream = conn.fetch_many(sql);
  loop {
    match stream.try_next().await {
      Ok(Some(item)) => {
        if matches!(item, sqlx::Either::Left(_)) {
          completed += 1;
        }
        if let Ok(r) = &mut out {
          if let Err(e) = collect(r, item) {
            out = Err(e);
          }
        }
      }
      Ok(None) => return (out, completed),
      Err(e) => return (Err(e.into()), completed),
    }
  }
}

/// The connection (class 08), or the server session (57P01 admin shutdown, 57P02 crash
/// shutdown, 57P03 cannot connect now), is gone; or the protocol broke.
fn is_fatal(e: &Error) -> bool {
  match e {
    Error::Connection(_) => true,
    Error::Database { sqlstate: None, .. } => true,
    Error::Database {
      sqlstate: Some(s), ..
    } => s.starts_with("08") || matches!(s.as_str(), "57P01" | "57P02" | "57P03"),
    _ => false,
  }
}
