//! The one error type of the core. Every variant has a stable `code()` and the Medusa
//! `MedusaError.Types` string it maps to (`kind()`), so the binding maps errors in one place
//! and tests assert codes, never message text. Messages never carry SQL text or URLs.

use std::fmt;

/// Medusa's `MedusaError.Types` strings that Medusa's error handler maps to HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
  NotFound,
  Conflict,
  DuplicateError,
  InvalidData,
  DatabaseError,
  UnexpectedState,
}

impl Kind {
  pub fn as_str(self) -> &'static str {
    match self {
      Kind::NotFound => "not_found",
      Kind::Conflict => "conflict",
      Kind::DuplicateError => "duplicate_error",
      Kind::InvalidData => "invalid_data",
      Kind::DatabaseError => "database_error",
      Kind::UnexpectedState => "unexpected_state",
    }
  }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
  /// No key (or no row for a selector).
  #[error("{0}")]
  NotFound(String),
  /// The key is leased by another request, or its row is locked by another stage.
  #[error("{0}")]
  Locked(String),
  /// The key has moved past the recovery point the caller expected.
  #[error("Idempotency key {key} is at recovery point '{actual}', not '{expected}'")]
  Stale {
    key: String,
    expected: String,
    actual: String,
  },
  /// The key exists for a different request (method, path or params differ).
  #[error("Idempotency key {0} was already used for a different request")]
  Reused(String),
  /// A bad argument: type, length, unknown column, bad callback result.
  #[error("{0}")]
  InvalidArgument(String),
  /// More than one row matched a selector.
  #[error("{0}")]
  Ambiguous(String),
  /// A stage callback did not settle within `stageTimeoutMs`.
  #[error("Stage for idempotency key {key} did not settle within {ms} ms and was rolled back")]
  StageTimeout { key: String, ms: u64 },
  /// The transaction handle was used after its stage ended.
  #[error("The transaction of this stage is no longer active (already committed or rolled back)")]
  TransactionClosed,
  /// The callback settled while a query it started was still running.
  #[error("The stage callback settled while a query it started was still running; await every tx.query() before returning")]
  QueryNotAwaited,
  /// A statement failed inside a stage (the SQLSTATE is kept as the code).
  #[error("{message}")]
  Database {
    sqlstate: Option<String>,
    message: String,
  },
  /// Waiting for a pooled connection ran out.
  #[error("Timed out waiting for a database connection from the pool")]
  PoolTimeout,
  /// SQLite: the write lock stayed taken for longer than the busy timeout.
  #[error("The database stayed locked by another writer for longer than the busy timeout")]
  Busy,
  /// A bug: a panic caught at the boundary.
  #[error("internal error: {0}")]
  Internal(String),
  /// The service was closed.
  #[error("The service is closed")]
  Closed,
  /// The connection to the database failed.
  #[error("Could not reach the database: {0}")]
  Connection(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
  /// Stable machine-readable code (SQLSTATE for database failures).
  pub fn code(&self) -> &str {
    match self {
      Error::NotFound(_) => "IDEMPOTENCY_KEY_NOT_FOUND",
      Error::Locked(_) => "IDEMPOTENCY_KEY_LOCKED",
      Error::Stale { .. } => "IDEMPOTENCY_KEY_STALE",
      Error::Reused(_) => "IDEMPOTENCY_KEY_REUSED",
      Error::InvalidArgument(_) => "INVALID_ARGUMENT",
      Error::Ambiguous(_) => "IDEMPOTENCY_KEY_AMBIGUOUS",
      Error::StageTimeout { .. } => "STAGE_TIMEOUT",
      Error::TransactionClosed => "TRANSACTION_CLOSED",
      Error::QueryNotAwaited => "QUERY_NOT_AWAITED",
      Error::Database { sqlstate, .. } => sqlstate.as_deref().unwrap_or("DATABASE_ERROR"),
      Error::PoolTimeout => "POOL_TIMEOUT",
      Error::Internal(_) => "INTERNAL_ERROR",
      Error::Busy => "DATABASE_BUSY",
      Error::Closed => "SERVICE_CLOSED",
      Error::Connection(_) => "CONNECTION_FAILED",
    }
  }

  /// The Medusa error type this maps to.
  pub fn kind(&self) -> Kind {
    match self {
      Error::NotFound(_) => Kind::NotFound,
      Error::Locked(_) | Error::Stale { .. } | Error::Busy => Kind::Conflict,
      Error::Reused(_) => Kind::DuplicateError,
      Error::InvalidArgument(_) => Kind::InvalidData,
      Error::Ambiguous(_)
      | Error::StageTimeout { .. }
      | Error::TransactionClosed
      | Error::QueryNotAwaited
      | Error::Internal(_) => Kind::UnexpectedState,
      Error::Database { sqlstate, .. } => match sqlstate.as_deref() {
        Some("23505") => Kind::DuplicateError,
        Some(s) if is_retryable_state(s) => Kind::Conflict,
        Some("55P03") => Kind::Conflict,
        _ => Kind::DatabaseError,
      },
      Error::PoolTimeout | Error::Closed | Error::Connection(_) => Kind::DatabaseError,
    }
  }

  /// A serialization failure, deadlock or exhausted SSI pool: the whole stage may be re-run.
  pub fn is_retryable(&self) -> bool {
    matches!(self, Error::Database { sqlstate: Some(s), .. } if is_retryable_state(s))
  }

  pub fn sqlstate(&self) -> Option<&str> {
    match self {
      Error::Database { sqlstate, .. } => sqlstate.as_deref(),
      _ => None,
    }
  }

  /// A caught panic's payload as an error.
  pub fn from_panic(p: Box<dyn std::any::Any + Send>) -> Self {
    let msg = p
      .downcast_ref::<&str>()
      .map(|s| s.to_string())
      .or_else(|| p.downcast_ref::<String>().cloned())
      .unwrap_or_else(|| "panic".into());
    Error::Internal(msg)
  }

  pub(crate) fn not_found(key: &str) -> Self {
    Error::NotFound(format!("Idempotency key {key} was not found"))
  }

  pub(crate) fn locked(key: &str) -> Self {
    Error::Locked(format!(
      "Idempotency key {key} is being used by another request; retry later"
    ))
  }

  /// The row is held by another stage's transaction: PostgreSQL's `lock_not_available`, which
  /// `FOR UPDATE NOWAIT` raises; SQLite's working set reports the same.
  pub(crate) fn row_locked() -> Self {
    Error::Database {
      sqlstate: Some("55P03".into()),
      message: "the row is locked by another stage".into(),
    }
  }

  pub(crate) fn invalid(msg: impl fmt::Display) -> Self {
    Error::InvalidArgument(msg.to_string())
  }
}

fn is_retryable_state(s: &str) -> bool {
  matches!(s, "40001" | "40P01" | "53200")
}

impl From<sqlx::Error> for Error {
  fn from(e: sqlx::Error) -> Self {
    match e {
      sqlx::Error::Database(db) => {
        if db
          .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
          .is_some()
        {
          return Error::Database {
            sqlstate: db.code().map(|c| c.into_owned()),
            message: db.message().to_owned(),
          };
        }
        // SQLite: result codes, not SQLSTATEs. Map the ones callers act on.
        let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
        let primary = code.parse::<i32>().map(|c| c & 0xff).unwrap_or(-1);
        match (db.kind(), primary) {
          (_, 5) | (_, 6) => Error::Busy,
          (sqlx::error::ErrorKind::UniqueViolation, _) => Error::Database {
            sqlstate: Some("23505".into()),
            message: db.message().to_owned(),
          },
          _ => Error::Database {
            sqlstate: Some(format!("SQLITE_{code}")),
            message: db.message().to_owned(),
          },
        }
      }
      sqlx::Error::PoolTimedOut => Error::PoolTimeout,
      sqlx::Error::PoolClosed => Error::Closed,
      // Io/Tls/Protocol errors describe the socket, never the URL.
      // rustls reports a refused handshake or certificate as InvalidData around its error.
      sqlx::Error::Io(io) => match io.get_ref() {
        Some(inner) if io.kind() == std::io::ErrorKind::InvalidData => {
          Error::Connection(format!("TLS handshake failed: {inner}"))
        }
        _ => Error::Connection(io.kind().to_string()),
      },
      sqlx::Error::Tls(e) => Error::Connection(format!("TLS: {e}")),
      sqlx::Error::Configuration(_) => Error::invalid("invalid database URL or options"),
      sqlx::Error::RowNotFound => Error::NotFound("row not found".into()),
      sqlx::Error::ColumnDecode { index, source } => Error::Database {
        sqlstate: None,
        message: format!("could not decode column {index}: {source}"),
      },
      other => Error::Database {
        sqlstate: None,
        message: other.to_string(),
      },
    }
  }
}
