//! The transaction handle a stage callback receives, and the discipline around it: queries
//! are counted when they start (so a query the callback did not await is never committed
//! around), the first failed statement is remembered (PostgreSQL aborts the transaction, and
//! sqlx reports COMMIT of an aborted transaction as success), and once the stage ends the
//! handle refuses every further query.

use crate::backend::Transaction;
use crate::error::{Error, Result};
use crate::value::{Param, QueryResult};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, Notify};

/// A live stage transaction, shared between the stage driver and the JS handle.
#[derive(Clone)]
pub struct StageTx {
  inner: Arc<Inner>,
}

struct Inner {
  tx: Mutex<Option<Box<dyn Transaction>>>,
  pending: AtomicUsize,
  idle: Notify,
  closed: AtomicBool,
  cancel: Notify,
  /// A statement was abandoned when the stage ended: the server may still be running it.
  abandoned: AtomicBool,
  failure: StdMutex<Option<Error>>,
}

/// Proof that a query was counted as started; dropping it marks the query finished.
pub struct Pending(Arc<Inner>);

impl Drop for Pending {
  fn drop(&mut self) {
    if self.0.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
      self.0.idle.notify_waiters();
    }
  }
}

impl StageTx {
  pub(crate) fn new(tx: Box<dyn Transaction>) -> Self {
    StageTx {
      inner: Arc::new(Inner {
        tx: Mutex::new(Some(tx)),
        pending: AtomicUsize::new(0),
        idle: Notify::new(),
        closed: AtomicBool::new(false),
        cancel: Notify::new(),
        abandoned: AtomicBool::new(false),
        failure: StdMutex::new(None),
      }),
    }
  }

  /// Count a query as started. Call synchronously, before the callback can settle.
  pub fn start_query(&self) -> Pending {
    self.inner.pending.fetch_add(1, Ordering::SeqCst);
    Pending(self.inner.clone())
  }

  pub fn is_active(&self) -> bool {
    !self.inner.closed.load(Ordering::SeqCst)
  }

  /// Run one statement with node-postgres-style parameters inside the stage transaction.
  pub async fn query(&self, _pending: Pending, sql: &str, params: &[Param]) -> Result<QueryResult> {
    check_statement(sql)?;
    let mut guard = self.inner.tx.lock().await;
    if self.inner.closed.load(Ordering::SeqCst) {
      return Err(Error::TransactionClosed);
    }
    let tx = guard.as_mut().ok_or(Error::TransactionClosed)?;
    let run = async { tx.query(sql, params).await };
    let run = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run));
    let result = self
      .until_closed(async { run.await.unwrap_or_else(|p| Err(Error::from_panic(p))) })
      .await;
    if let Err(e) = &result {
      if matches!(e, Error::Database { .. } | Error::Internal(_)) {
        let mut f = self.inner.failure.lock().unwrap();
        f.get_or_insert_with(|| e.clone());
      }
    }
    result
  }

  /// Run `op` (a statement on the stage's connection, under its lock) until it finishes or the
  /// stage ends: a stage that ended (its timeout) abandons it with `TransactionClosed`, so
  /// `take()` gets the lock even when the statement never returns (a lock wait, a server that
  /// stopped answering).
  pub(crate) async fn until_closed<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
    let cancelled = self.inner.cancel.notified();
    tokio::pin!(cancelled);
    cancelled.as_mut().enable();
    if self.inner.closed.load(Ordering::SeqCst) {
      return Err(Error::TransactionClosed);
    }
    tokio::select! {
      r = op => r,
      _ = cancelled => {
        self.inner.abandoned.store(true, Ordering::SeqCst);
        Err(Error::TransactionClosed)
      }
    }
  }

  /// The transaction's connection, for a statement of the service itself.
  pub(crate) async fn conn(&self) -> Result<MappedMutexGuard<'_, Box<dyn Transaction>>> {
    let guard = self.inner.tx.lock().await;
    MutexGuard::try_map(guard, |o| o.as_mut()).map_err(|_| Error::TransactionClosed)
  }

  /// Wait until no query the callback started is running; returns how many were running
  /// when called.
  pub(crate) async fn await_queries(&self) -> usize {
    let running = self.inner.pending.load(Ordering::SeqCst);
    loop {
      let idle = self.inner.idle.notified();
      if self.inner.pending.load(Ordering::SeqCst) == 0 {
        return running;
      }
      idle.await;
    }
  }

  /// Queries started and not yet finished.
  pub(crate) fn in_flight(&self) -> usize {
    self.inner.pending.load(Ordering::SeqCst)
  }

  /// Whether a statement was abandoned when the stage ended (known once `take()` returned).
  pub(crate) fn abandoned(&self) -> bool {
    self.inner.abandoned.load(Ordering::SeqCst)
  }

  pub(crate) fn failure(&self) -> Option<Error> {
    self.inner.failure.lock().unwrap().clone()
  }

  pub(crate) fn set_failure(&self, f: Option<Error>) {
    *self.inner.failure.lock().unwrap() = f;
  }

  /// End the handle: later queries get `TransactionClosed`, a running one is abandoned.
  pub(crate) fn close(&self) {
    self.inner.closed.store(true, Ordering::SeqCst);
    self.inner.cancel.notify_waiters();
  }

  /// Close the handle and take the transaction out to commit or roll back.
  pub(crate) async fn take(&self) -> Option<Box<dyn Transaction>> {
    self.close();
    self.inner.tx.lock().await.take()
  }
}

/// A NUL byte ends no statement well on either backend (SQLite would spin on it). What else a
/// callback may not send is the backend's to judge: `pg::guard` on PostgreSQL (transaction
/// control, session state, COPY through the client), the authorizer in `sqlite` on SQLite.
fn check_statement(sql: &str) -> Result<()> {
  if sql.contains('\0') {
    return Err(Error::invalid("SQL cannot contain NUL characters"));
  }
  Ok(())
}
