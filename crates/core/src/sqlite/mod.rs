//! SQLite, the embedded default: the same operations as on PostgreSQL, in SQLite's dialect
//! (`sql`, `conn`).
//!
//! SQLite has one writer at a time and no row locks, so a stage takes the write lock up front
//! (`BEGIN IMMEDIATE`, `transaction`), "another stage is working this key" is known in-process
//! (`file`: the keys whose stage is running, per database file) instead of through `FOR UPDATE
//! NOWAIT`, and an authorizer (`authorizer`) keeps a callback's statements from ending the
//! stage's transaction.

mod authorizer;
mod conn;
mod file;
mod sql;
mod transaction;

use crate::backend::{Backend, Begun, Conn, SharedExec, Transaction};
use crate::error::{Error, Result};
use crate::observe;
use crate::options::{Isolation, Options};
use conn::LiteConn;
use file::{FileState, Working};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use transaction::LiteStage;

/// A service's SQLite database file (or in-memory database).
pub(crate) struct LiteBackend {
  pool: SqlitePool,
  file: Arc<FileState>,
  /// How long a stage waits for the write lock.
  busy_timeout: Duration,
}

impl LiteBackend {
  pub(crate) async fn connect(opts: &Options) -> Result<Self> {
    let url = opts.url.as_str();
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    // SQLite takes the busy timeout as an int of ms (sqlx panics beyond): 24.8 days is as good
    // as forever for a larger value.
    let busy_timeout = opts
      .busy_timeout
      .min(Duration::from_millis(i32::MAX.unsigned_abs().into()));
    let connect = SqliteConnectOptions::from_str(url)
      .map_err(|_| Error::invalid("invalid SQLite URL"))?
      .create_if_missing(true)
      .busy_timeout(busy_timeout)
      .foreign_keys(true);
    let connect = if memory {
      connect
    } else {
      connect.journal_mode(SqliteJournalMode::Wal)
    };
    let path = (!memory).then(|| connect.get_filename().to_path_buf());
    // Every connection to `sqlite::memory:` is a separate database: one connection only.
    let size = if memory { 1 } else { opts.max_connections };
    let pool = SqlitePoolOptions::new()
      .max_connections(size)
      .acquire_timeout(opts.acquire_timeout)
      .test_before_acquire(false)
      .connect_with(connect)
      .await?;
    Ok(LiteBackend {
      pool,
      file: FileState::for_path(path),
      busy_timeout: opts.busy_timeout,
    })
  }
}

impl Backend for LiteBackend {
  fn system(&self) -> &'static str {
    "sqlite"
  }

  fn acquire(&self) -> BoxFuture<'_, Result<Box<dyn Conn + '_>>> {
    async move {
      let c = self.pool.acquire().await?;
      Ok(Box::new(LiteConn {
        c,
        file: self.file.clone(),
      }) as Box<dyn Conn>)
    }
    .boxed()
  }

  /// A caller's executor runs PostgreSQL's SQL: on SQLite, calls bind to a stage handle of
  /// ours (`withTransaction(tx)`) instead.
  fn bind<'a>(&'a self, _ex: &'a dyn SharedExec) -> Result<Box<dyn Conn + 'a>> {
    Err(Error::invalid(
      "withTransaction(executor) needs a PostgreSQL service; on SQLite pass a TransactionManager",
    ))
  }

  /// The write lock is taken up front, and a key another stage of this process is working is
  /// refused at once, like `FOR UPDATE NOWAIT` on PostgreSQL.
  fn begin_stage<'a>(
    &'a self,
    _isolation: Isolation,
    key: &'a str,
  ) -> BoxFuture<'a, Result<Begun>> {
    async move {
      let working = Working::take(&self.file, key).ok_or_else(Error::row_locked)?;
      let gate = tokio::time::timeout(self.busy_timeout, self.file.writer.lock())
        .await
        .map_err(|_| Error::Busy)?;
      let begin = async { Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?) };
      let tx = observe::timed("BEGIN IMMEDIATE", |_| 0, begin).await?;
      drop(gate); // SQLite's own write lock now serialises writers.
      let mut conn = LiteConn {
        c: tx,
        file: self.file.clone(),
      };
      match sql::select_key(&mut conn.c, key).await {
        Ok(found) => Ok((
          Box::new(LiteStage::new(conn, working)) as Box<dyn Transaction>,
          found,
        )),
        Err(e) => {
          let _ = transaction::rollback(conn.c).await;
          Err(e)
        }
      }
    }
    .boxed()
  }

  fn release(&self, key: String) -> BoxFuture<'static, ()> {
    let pool = self.pool.clone();
    async move {
      let _ = sqlx::query(sql::RELEASE_SQL).bind(key).execute(&pool).await;
    }
    .boxed()
  }

  fn migrate(&self) -> BoxFuture<'_, Result<()>> {
    async move {
      let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
      for (_, sql) in crate::migrations::MIGRATIONS_SQLITE {
        sqlx::Executor::execute(&mut *tx, *sql).await?;
      }
      tx.commit().await?;
      Ok(())
    }
    .boxed()
  }

  fn close(&self) -> BoxFuture<'_, ()> {
    self.pool.close().boxed()
  }
}
