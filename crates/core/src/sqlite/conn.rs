//! [`Conn`] on SQLite: the statements of `sql` on a pooled connection or a stage
//! transaction's, with the file's working set standing in for row locks.

use super::file::FileState;
use super::sql;
use crate::backend::Conn;
use crate::error::Result;
use crate::model::{
  Claim, Fingerprint, IdempotencyKey, KeyRecords, KeyUpdate, StageResult, UpdateValue,
};
use crate::observe;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::sqlite::SqliteConnection;
use std::ops::DerefMut;
use std::sync::Arc;

/// A SQLite connection (`C`: pooled, or an open transaction) and its file's shared state.
pub(crate) struct LiteConn<C> {
  pub(crate) c: C,
  pub(crate) file: Arc<FileState>,
}

impl<C> LiteConn<C> {
  fn working(&self, key: &str) -> bool {
    self.file.working.lock().unwrap().contains(key)
  }
}

impl<C: DerefMut<Target = SqliteConnection> + Send> Conn for LiteConn<C> {
  fn initialize<'a>(
    &'a mut self,
    id: &'a str,
    key: &'a str,
    fp: &'a Fingerprint,
    lease_ms: f64,
    _in_tx: bool,
  ) -> BoxFuture<'a, Result<Claim>> {
    // A key a stage of this process is working is leased whatever `locked_at` says.
    let may_claim = !self.working(key);
    sql::insert_or_claim(&mut self.c, id, key, fp, lease_ms, may_claim).boxed()
  }

  fn create<'a>(
    &'a mut self,
    id: &'a str,
    key: &'a str,
    fp: &'a Fingerprint,
    recovery_point: Option<String>,
  ) -> BoxFuture<'a, Result<IdempotencyKey>> {
    sql::create(&mut self.c, id, key, fp, recovery_point).boxed()
  }

  fn select_by<'a>(
    &'a mut self,
    selector: &'a [(&'static str, UpdateValue)],
    prefix: Option<&'a str>,
  ) -> BoxFuture<'a, Result<Vec<IdempotencyKey>>> {
    sql::select_by(&mut self.c, selector, prefix).boxed()
  }

  fn select_key<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<IdempotencyKey>>> {
    sql::select_key(&mut self.c, key).boxed()
  }

  fn records<'a>(&'a mut self, key_id: &'a str) -> BoxFuture<'a, Result<KeyRecords>> {
    sql::records(&mut self.c, key_id).boxed()
  }

  fn lock<'a>(
    &'a mut self,
    key: &'a str,
    lease_ms: f64,
  ) -> BoxFuture<'a, Result<Option<IdempotencyKey>>> {
    sql::lock(&mut self.c, key, lease_ms).boxed()
  }

  fn update<'a>(
    &'a mut self,
    key: &'a str,
    u: KeyUpdate,
  ) -> BoxFuture<'a, Result<Option<IdempotencyKey>>> {
    sql::update(&mut self.c, key, u).boxed()
  }

  /// Only ever inside a stage transaction of ours, which holds SQLite's write lock: no other
  /// stage can be writing the row, so reading it is claiming it.
  fn lock_row<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<IdempotencyKey>>> {
    sql::select_key(&mut self.c, key).boxed()
  }

  fn apply<'a>(&'a mut self, id: &'a str, r: StageResult) -> BoxFuture<'a, Result<IdempotencyKey>> {
    sql::apply(&mut self.c, id, r).boxed()
  }

  fn reap_batch<'a>(
    &'a mut self,
    older_than_ms: f64,
    batch: i32,
    lease_ms: f64,
    prefix: Option<&'a str>,
  ) -> BoxFuture<'a, Result<u64>> {
    // Keys a stage of this process is working are skipped, as SKIP LOCKED does on PostgreSQL.
    let working: Vec<String> = self.file.working.lock().unwrap().iter().cloned().collect();
    async move {
      sql::reap_batch(
        &mut self.c,
        older_than_ms,
        batch,
        lease_ms,
        &working,
        prefix,
      )
      .await
    }
    .boxed()
  }

  fn abandoned<'a>(
    &'a mut self,
    idle_ms: f64,
    limit: i32,
    prefix: Option<&'a str>,
  ) -> BoxFuture<'a, Result<Vec<IdempotencyKey>>> {
    sql::abandoned(&mut self.c, idle_ms, limit, prefix).boxed()
  }

  fn execute<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, Result<()>> {
    async move {
      let run = async { Ok(sqlx::query(sql).execute(&mut *self.c).await?) };
      observe::timed(sql, |r| r.rows_affected(), run)
        .await
        .map(|_| ())
    }
    .boxed()
  }
}
