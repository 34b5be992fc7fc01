//! How a service connects and how its stages behave, whichever backend it runs on.

use crate::error::{Error, Result};
use std::time::Duration;

/// Transaction isolation of native stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
  ReadCommitted,
  RepeatableRead,
  Serializable,
}

impl Isolation {
  pub fn parse(s: &str) -> Result<Self> {
    match s.to_ascii_uppercase().replace(['_', '-'], " ").as_str() {
      "READ COMMITTED" => Ok(Isolation::ReadCommitted),
      "REPEATABLE READ" => Ok(Isolation::RepeatableRead),
      "SERIALIZABLE" => Ok(Isolation::Serializable),
      _ => Err(Error::invalid(
        "isolationLevel must be READ COMMITTED, REPEATABLE READ or SERIALIZABLE",
      )),
    }
  }
}

/// How a service connects and how its stages behave.
#[derive(Debug, Clone)]
pub struct Options {
  pub url: String,
  pub max_connections: u32,
  pub isolation: Isolation,
  /// How long a request lease (and `lock()`) holds without progress.
  pub lock_timeout: Duration,
  /// Re-runs of a stage after 40001 / 40P01 / 53200.
  pub max_retries: u32,
  /// A stage whose callback has not settled by then is rolled back; `None` waits forever.
  pub stage_timeout: Option<Duration>,
  /// How long a caller waits for a pooled connection.
  pub acquire_timeout: Duration,
  /// SQLite: how long a writer waits for the database's write lock.
  pub busy_timeout: Duration,
  /// PostgreSQL: one connection attempt (TCP, TLS, authentication); `None`: the URL's
  /// `connect_timeout` (seconds, as libpq reads it), else `acquire_timeout`.
  pub connect_timeout: Option<Duration>,
  /// PostgreSQL: a connection older than this is closed instead of reused; `None` keeps it.
  pub max_lifetime: Option<Duration>,
  /// PostgreSQL: a connection unused for this long is closed, so an idle pool shrinks.
  pub idle_timeout: Option<Duration>,
  /// PostgreSQL: protocol-level named statements cached per connection (direct connections,
  /// session pooling, poolers that track them); the default sends the unnamed statement only.
  pub prepared_statements: bool,
  /// PostgreSQL: TLS given in code, overriding the URL's `sslmode`.
  pub ssl: Option<Ssl>,
}

/// TLS for PostgreSQL, as node-postgres' `ssl` option takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ssl {
  /// Off: a plain connection (`sslmode=disable`).
  pub disable: bool,
  /// PEM certificates to trust instead of the bundled web roots.
  pub ca: Option<String>,
  /// PEM client certificate and key.
  pub cert: Option<String>,
  pub key: Option<String>,
  /// Verify the chain and the host name (`verify-full`, the default); false encrypts without
  /// verifying (`require`).
  pub verify: bool,
}

impl Options {
  pub fn new(url: impl Into<String>) -> Self {
    Options {
      url: url.into(),
      max_connections: 10,
      isolation: Isolation::Serializable,
      lock_timeout: Duration::from_millis(1000),
      max_retries: 3,
      stage_timeout: Some(Duration::from_secs(60)),
      acquire_timeout: Duration::from_secs(10),
      busy_timeout: Duration::from_secs(5),
      connect_timeout: None,
      // sqlx's pool defaults: connections live 30 min, idle ones go after 10 min.
      max_lifetime: Some(Duration::from_secs(30 * 60)),
      idle_timeout: Some(Duration::from_secs(10 * 60)),
      prepared_statements: false,
      ssl: None,
    }
  }
}
