//! Our own PostgreSQL connection pool, and the lease a caller holds on one connection (what
//! runs on a lease is `statement`).
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

use super::config::Config;
use super::wire::{CancelKey, Format, Outcome, Stmt, Wire};
use crate::error::{Error, Result};
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

/// A pooled connection and what this pool knows of it.
pub(crate) struct Conn {
  pub(super) wire: Wire,
  pub(super) cancel: CancelKey,
  /// Prepared mode: SQL text → (statement name, last use).
  pub(super) named: HashMap<String, (String, u64)>,
  /// Named statements to Close in the next flight (evicted from `named`).
  pub(super) closing: Vec<String>,
  /// The database's defaults for the unreported settings in [`super::statement::PIN_SQL`] differ from what
  /// node-postgres expects, so a stage pins them before its first callback statement.
  pub(super) defaults_differ: bool,
  /// The session's reported settings as the connection opened, and the count of reported
  /// changes (`Wire::params_changed`) up to which the settings were last found equal to them:
  /// a stage that leaves them otherwise (a `SET` inside a function, say) is not reused.
  baseline: HashMap<String, String>,
  checked: u64,
  born: Instant,
  idle_since: Instant,
}

/// Statements' parameter types, by SQL text, for the whole process.
pub(super) const DESCRIBED_MAX: usize = 1024;

pub(super) struct Inner {
  pub(super) config: Config,
  pub(super) cfg: PoolConfig,
  idle: Mutex<Vec<Conn>>,
  permits: Arc<Semaphore>,
  closed: AtomicBool,
  pub(super) described: Mutex<HashMap<String, Arc<Vec<u32>>>>,
  pub(super) names: AtomicU64,
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
  pub(super) conn: Option<Conn>,
  pub(super) state: State,
  /// The connection sat idle in the pool and has not run anything in this lease yet: if the
  /// server dropped it meanwhile (a restart, `pg_terminate_backend`), nothing sent on it ran,
  /// so it is safe to replace it and send again.
  pub(super) reused: bool,
  /// Settings pinned in the current transaction (see [`super::statement::PIN_SQL`]).
  pub(super) pinned: bool,
  pub(super) pool: Arc<Inner>,
  _permit: OwnedSemaphorePermit,
}

/// One connection attempt, bounded; then the database's defaults for the unreported settings
/// a value's text form depends on (one round trip per new connection).
pub(super) async fn open(config: &Config, limit: Duration) -> Result<Conn> {
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
    baseline: wire.params.clone(),
    checked: wire.params_changed,
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

impl Conn {
  /// Whether the session's reported settings are still those it opened with. Compared only
  /// when the server reported a change since the last check (a stage's `SET LOCAL` and its
  /// revert at the end of the transaction, a pin): nothing per stage otherwise.
  pub(super) fn settings_as_opened(&mut self) -> bool {
    if self.wire.params_changed == self.checked {
      return true;
    }
    let same = self.wire.params == self.baseline;
    if same {
      self.checked = self.wire.params_changed;
    }
    same
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

impl Lease {
  pub(super) fn conn(&mut self) -> &mut Conn {
    self
      .conn
      .as_mut()
      .expect("a lease holds its connection until dropped")
  }

  pub(super) fn prepared_mode(&self) -> bool {
    self.pool.cfg.prepared
  }

  /// The connection is in a known, idle state: it may go back to the pool.
  pub(crate) fn done(&mut self) {
    self.state = State::Clean;
  }

  /// Whether a failed operation left the connection usable (an ordinary database error) or
  /// not (the connection or the server session is gone).
  pub(super) fn settle_after(&mut self, e: &Error) {
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
  pub(super) async fn replace_if_dead(&mut self, e: &Error) -> Result<bool> {
    // Only a connection-level failure (the socket), never a statement's error.
    if !(std::mem::take(&mut self.reused) && matches!(e, Error::Connection(_))) {
      return Ok(false);
    }
    self.conn = Some(open(&self.pool.config, self.pool.cfg.connect_timeout).await?);
    Ok(true)
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
