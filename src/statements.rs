//! SQL for the JS side: the `StatementLog` class (the service's own statements of one call,
//! `withStatementLog`, handed to `lib/tracing.js`, which publishes them on the `query`
//! TracingChannel), and the bookkeeping statements the middleware and the completer run.

use idempotency_core::{bookkeeping, observe};
use napi_derive::napi;
use std::collections::HashMap;

/// Records the service's own statements of the calls made through
/// `service.withStatementLog(log)`: each round trip's SQL, when it started, how long it took,
/// its rows, how it failed. For tracing (`lib/tracing.js`); not needed by applications.
#[napi]
#[derive(Default)]
pub struct StatementLog {
  pub(crate) log: observe::StatementLog,
}

/// One round trip of the service's own statements.
#[napi(object)]
pub struct StatementRecord {
  /// The statements sent together, their text only (never their values).
  pub sql: Vec<String>,
  /// When it was sent, in milliseconds since the Unix epoch.
  pub start_time: f64,
  /// How long it took, in milliseconds.
  pub duration: f64,
  /// Rows returned, or touched by a write; absent when it failed.
  pub rows: Option<f64>,
  /// The SQLSTATE of its failure, when the server sent one.
  pub sqlstate: Option<String>,
  /// The service's error code of its failure (`DATABASE_ERROR`, `CONNECTION_FAILED`…).
  pub code: Option<String>,
  pub message: Option<String>,
}

#[napi]
impl StatementLog {
  #[napi(constructor)]
  pub fn new() -> Self {
    Self::default()
  }

  /// The round trips recorded so far, oldest first, leaving the log empty.
  #[napi]
  pub fn take(&self) -> Vec<StatementRecord> {
    self
      .log
      .take()
      .into_iter()
      .map(|s| {
        let (sqlstate, code, message) = match s.error {
          Some(e) => (e.sqlstate, Some(e.code), Some(e.message)),
          None => (None, None, None),
        };
        StatementRecord {
          sql: s.sql,
          start_time: s.start_ms,
          duration: s.duration_ms,
          rows: s.rows.map(|n| n as f64),
          sqlstate,
          code,
          message,
        }
      })
      .collect()
  }
}

/// The statements of the tables the JS side keeps (accepted requests, the completer's
/// attempts), by name: their SQL lives in the core beside those tables' migrations
/// (`idempotency_core::bookkeeping`). For `lib/`, not for applications.
#[napi(skip_typescript)]
pub fn bookkeeping_statements() -> HashMap<String, String> {
  bookkeeping::STATEMENTS
    .iter()
    .map(|(name, sql)| ((*name).to_owned(), (*sql).to_owned()))
    .collect()
}

/// The completer's listing for `routes` registered routes (of one tenant when `scoped`):
/// `{ sql, countSql }`, see `bookkeeping::completer_list`. For `lib/completer.js`.
#[napi(skip_typescript)]
pub fn completer_list_statements(routes: u32, scoped: bool) -> HashMap<String, String> {
  let l = bookkeeping::completer_list(routes as usize, scoped);
  HashMap::from([
    ("sql".to_owned(), l.sql),
    ("countSql".to_owned(), l.count_sql),
  ])
}
