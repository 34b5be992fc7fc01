//! Our own PostgreSQL connection pool, for the stage path's round trips.
//!
//! sqlx's pool pings every connection when it is returned (one extra round trip per
//! operation), and its transactions cannot carry a statement in the same message as their
//! BEGIN or COMMIT. Here a stage costs three round trips: `BEGIN …; EXECUTE lock(…)` as one
//! simple-protocol message, the callback's statements, `EXECUTE apply(…); COMMIT` as one
//! message — with the two statements PREPAREd once per connection, so they are not re-planned.
//! A connection whose operation did not finish cleanly (a dropped future, an I/O error) is
//! closed instead of returned, so the next caller gets a fresh one.

use crate::error::{Error, Result};
use crate::key::COLUMNS;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A pooled connection and what this pool has set up on it.
pub(crate) struct Conn {
  pub(crate) raw: PgConnection,
  prepared: bool,
}

struct Inner {
  options: PgConnectOptions,
  idle: Mutex<Vec<Conn>>,
  permits: Arc<Semaphore>,
  acquire_timeout: Duration,
  closed: AtomicBool,
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
  pool: Arc<Inner>,
  _permit: OwnedSemaphorePermit,
}

impl PgPool {
  /// Opens one connection up front, so a bad URL or an unreachable server fails `connect()`.
  pub(crate) async fn connect(
    options: PgConnectOptions,
    size: u32,
    acquire_timeout: Duration,
  ) -> Result<Self> {
    let first = PgConnection::connect_with(&options).await?;
    let pool = PgPool(Arc::new(Inner {
      options,
      idle: Mutex::new(Vec::new()),
      permits: Arc::new(Semaphore::new(size as usize)),
      acquire_timeout,
      closed: AtomicBool::new(false),
    }));
    pool.0.idle.lock().unwrap().push(Conn {
      raw: first,
      prepared: false,
    });
    Ok(pool)
  }

  pub(crate) async fn acquire(&self) -> Result<Lease> {
    if self.0.closed.load(Ordering::SeqCst) {
      return Err(Error::Closed);
    }
    let permit = tokio::time::timeout(
      self.0.acquire_timeout,
      self.0.permits.clone().acquire_owned(),
    )
    .await
    .map_err(|_| Error::PoolTimeout)?
    .map_err(|_| Error::Closed)?;
    let idle = self.0.idle.lock().unwrap().pop();
    let reused = idle.is_some();
    let conn = match idle {
      Some(c) => c,
      None => Conn {
        raw: PgConnection::connect_with(&self.0.options).await?,
        prepared: false,
      },
    };
    Ok(Lease {
      conn: Some(conn),
      clean: false,
      reused,
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
    let raw = PgConnection::connect_with(&self.pool.options).await?;
    self.conn = Some(Conn {
      raw,
      prepared: false,
    });
    Ok(true)
  }

  /// A statement ran on this lease's connection.
  pub(crate) fn used(&mut self) {
    self.reused = false;
  }

  /// PREPARE the stage statements on this connection once.
  async fn prepare(&mut self) -> Result<()> {
    if self.conn.as_ref().is_some_and(|c| c.prepared) {
      return Ok(());
    }
    let sql = format!(
      "PREPARE medusa_ikey_lock(varchar) AS SELECT {COLUMNS} FROM idempotency_key \
       WHERE idempotency_key = $1 FOR UPDATE NOWAIT; \
       PREPARE medusa_ikey_apply(varchar, varchar, boolean, int4, boolean, jsonb) AS \
       UPDATE idempotency_key SET recovery_point = COALESCE($2, 'finished'), \
       locked_at = CASE WHEN $2 IS NULL THEN NULL ELSE clock_timestamp() END, \
       response_code = CASE WHEN $2 IS NULL AND $3 THEN $4 ELSE response_code END, \
       response_body = CASE WHEN $2 IS NULL AND $5 THEN $6 ELSE response_body END \
       WHERE id = $1 RETURNING {COLUMNS}"
    );
    self.raw().execute(sql.as_str()).await?;
    if let Some(c) = self.conn.as_mut() {
      c.prepared = true;
    }
    Ok(())
  }

  /// `BEGIN …; EXECUTE medusa_ikey_lock(key)` in one round trip; the transaction stays open
  /// on this lease. Any failure rolls back before returning.
  pub(crate) async fn begin_and_lock(
    &mut self,
    begin: &str,
    key: &str,
  ) -> Result<crate::value::QueryResult> {
    self.busy();
    let sql = format!("{begin}; EXECUTE medusa_ikey_lock({})", literal(key)?);
    let mut ran = self.prepare_and_run(&sql).await;
    if let Err(e) = &ran {
      if self.replace_if_dead(e).await? {
        ran = self.prepare_and_run(&sql).await;
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

  async fn prepare_and_run(&mut self, sql: &str) -> Result<crate::value::QueryResult> {
    self.prepare().await?;
    simple(self.raw(), sql).await
  }

  /// `EXECUTE medusa_ikey_apply(…); COMMIT` in one round trip. On failure the transaction is
  /// rolled back.
  pub(crate) async fn apply_and_commit(
    &mut self,
    args: &[Literal<'_>],
  ) -> Result<crate::value::QueryResult> {
    self.busy();
    let rendered = args
      .iter()
      .map(Literal::render)
      .collect::<Result<Vec<_>>>()?;
    let sql = format!("EXECUTE medusa_ikey_apply({}); COMMIT", rendered.join(", "));
    match simple(self.raw(), &sql).await {
      Ok(r) => {
        self.done();
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
    match self.raw().execute("COMMIT").await {
      Ok(_) => {
        self.done();
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
    if self.raw().execute("ROLLBACK").await.is_ok() {
      self.done();
    }
  }
}

impl Drop for Lease {
  fn drop(&mut self) {
    if let Some(conn) = self.conn.take() {
      if self.clean && !self.pool.closed.load(Ordering::SeqCst) {
        self.pool.idle.lock().unwrap().push(conn);
      }
      // Otherwise the connection is dropped: its socket closes and the server rolls back
      // whatever was open on it. The permit goes back either way.
    }
  }
}

/// A value written into a simple-protocol statement.
pub(crate) enum Literal<'a> {
  Text(Option<&'a str>),
  Bool(bool),
  Int(Option<i32>),
  Json(Option<&'a serde_json::Value>),
}

impl Literal<'_> {
  fn render(&self) -> Result<String> {
    Ok(match self {
      Literal::Text(None) | Literal::Int(None) | Literal::Json(None) => "NULL".into(),
      Literal::Text(Some(s)) => literal(s)?,
      Literal::Bool(b) => b.to_string(),
      Literal::Int(Some(n)) => n.to_string(),
      Literal::Json(Some(v)) => literal(&v.to_string())?,
    })
  }
}

/// A standard-conforming string literal (the connection sets `standard_conforming_strings`).
fn literal(s: &str) -> Result<String> {
  if s.contains('\0') {
    return Err(Error::invalid("strings cannot contain NUL characters"));
  }
  Ok(format!("'{}'", s.replace('\'', "''")))
}

/// Run a simple-protocol batch and keep the rows of its last row-returning statement.
async fn simple(conn: &mut PgConnection, sql: &str) -> Result<crate::value::QueryResult> {
  use sqlx::{Column, Row};
  let mut out = crate::value::QueryResult::default();
  let mut stream = conn.fetch_many(sql);
  while let Some(item) = stream.try_next().await? {
    if let sqlx::Either::Right(row) = item {
      if out.columns.is_empty() {
        out.columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
      }
      let mut cells = Vec::with_capacity(row.len());
      for i in 0..row.len() {
        cells.push(crate::value::decode(row.try_get_raw(i)?)?);
      }
      out.rows.push(cells);
    }
  }
  Ok(out)
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
