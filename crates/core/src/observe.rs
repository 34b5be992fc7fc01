//! What the service's own statements report, when and only when a caller asked: each round
//! trip's statements, when it started, how long it took, how many rows it returned or touched
//! and how it failed. A caller runs an operation inside [`scope`] with a [`StatementLog`]; the
//! backends time each round trip they send while a log is in scope and append to it. Outside a
//! scope, `start` is one task-local lookup and nothing is timed, built or kept.
//!
//! The scope is the operation's own task: a stage callback's statements (`tx.query`) run on
//! their own tasks and are not recorded here (the binding reports those itself).

use crate::error::{Error, Result};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// One round trip of the service's own statements.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
  /// The statements sent together (PostgreSQL pipelines a stage's BEGIN with its row lock, and
  /// its UPDATE with COMMIT); their text, never their parameters' values.
  pub sql: Vec<String>,
  /// When it was sent, in milliseconds since the Unix epoch.
  pub start_ms: f64,
  pub duration_ms: f64,
  /// Rows returned, or for a write the rows it touched (the command tag's count), summed over
  /// the round trip's statements; `None` when it failed.
  pub rows: Option<u64>,
  /// The failure: its SQLSTATE when the server sent one, the service's error code, and the
  /// message.
  pub error: Option<StatementError>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatementError {
  pub sqlstate: Option<String>,
  pub code: String,
  pub message: String,
}

impl From<&Error> for StatementError {
  fn from(e: &Error) -> Self {
    StatementError {
      sqlstate: e.sqlstate().map(str::to_owned),
      code: e.code().to_owned(),
      message: e.to_string(),
    }
  }
}

/// Where an operation's statements are appended; cloned handles share one list.
#[derive(Debug, Clone, Default)]
pub struct StatementLog(Arc<Mutex<Vec<Statement>>>);

impl StatementLog {
  pub fn new() -> Self {
    Self::default()
  }

  /// The statements recorded so far, leaving the log empty.
  pub fn take(&self) -> Vec<Statement> {
    std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
  }

  fn push(&self, s: Statement) {
    self.0.lock().unwrap_or_else(|p| p.into_inner()).push(s);
  }
}

tokio::task_local! {
  static LOG: StatementLog;
}

/// Run `f` with `log` recording the service's statements it sends.
pub async fn scope<F: Future>(log: StatementLog, f: F) -> F::Output {
  LOG.scope(log, f).await
}

/// A round trip being timed for the log in scope.
pub(crate) struct Timer {
  log: StatementLog,
  start_ms: f64,
  started: Instant,
}

/// Start timing a round trip if a log is in scope; `None` (and no clock read) otherwise.
pub(crate) fn start() -> Option<Timer> {
  LOG
    .try_with(|log| Timer {
      log: log.clone(),
      start_ms: SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
      started: Instant::now(),
    })
    .ok()
}

impl Timer {
  /// Record the round trip: its statements, and the rows it counted or how it failed.
  pub(crate) fn finish<S: AsRef<str>>(self, sql: &[S], outcome: std::result::Result<u64, &Error>) {
    self.log.push(Statement {
      sql: sql.iter().map(|s| s.as_ref().to_owned()).collect(),
      start_ms: self.start_ms,
      duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
      rows: outcome.as_ref().ok().copied(),
      error: outcome.err().map(StatementError::from),
    });
  }
}

/// Run one statement `fut` of `sql`, recorded when a log is in scope (`rows` counts what it
/// returned or touched).
pub(crate) async fn timed<T, F>(sql: &str, rows: impl FnOnce(&T) -> u64, fut: F) -> Result<T>
where
  F: Future<Output = Result<T>>,
{
  let Some(timer) = start() else {
    return fut.await;
  };
  let r = fut.await;
  timer.finish(&[sql], r.as_ref().map(rows));
  r
}

#[cfg(test)]
mod tests {
  use super::*;

  #[tokio::test]
  async fn records_only_inside_a_scope() {
    assert!(start().is_none());
    let log = StatementLog::new();
    scope(log.clone(), async {
      start().expect("in scope").finish(&["SELECT 1"], Ok(1));
      let e = Error::Database {
        sqlstate: Some("55P03".into()),
        message: "could not obtain lock".into(),
      };
      start()
        .expect("in scope")
        .finish(&["BEGIN", "SELECT x"], Err(&e));
    })
    .await;
    let got = log.take();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].sql, vec!["SELECT 1"]);
    assert_eq!(got[0].rows, Some(1));
    assert!(got[0].start_ms > 1.6e12, "epoch milliseconds");
    let err = got[1].error.as_ref().expect("failed");
    assert_eq!(err.sqlstate.as_deref(), Some("55P03"));
    assert_eq!(got[1].rows, None);
    assert!(log.take().is_empty(), "take empties the log");
    assert!(start().is_none(), "the scope ended");
  }
}
