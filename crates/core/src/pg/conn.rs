//! [`Conn`] on PostgreSQL: the statements of `sql` over any [`Exec`] — a pooled connection, a
//! stage transaction's, or a caller's executor.

use super::exec::Exec;
use super::sql;
use crate::backend::Conn;
use crate::error::Result;
use crate::model::{
  Claim, Fingerprint, IdempotencyKey, KeyRecords, KeyUpdate, StageResult, UpdateValue,
};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

/// A PostgreSQL connection for the service's statements.
pub(crate) struct PgConn<E>(pub(crate) E);

impl<E: Exec> Conn for PgConn<E> {
  fn initialize<'a>(
    &'a mut self,
    id: &'a str,
    key: &'a str,
    fp: &'a Fingerprint,
    lease_ms: f64,
    in_tx: bool,
  ) -> BoxFuture<'a, Result<Claim>> {
    sql::initialize(&mut self.0, id, key, fp, lease_ms, in_tx).boxed()
  }

  fn create<'a>(
    &'a mut self,
    id: &'a str,
    key: &'a str,
    fp: &'a Fingerprint,
    recovery_point: Option<String>,
  ) -> BoxFuture<'a, Result<IdempotencyKey>> {
    sql::create(&mut self.0, id, key, fp, recovery_point).boxed()
  }

  fn select_by<'a>(
    &'a mut self,
    selector: &'a [(&'static str, UpdateValue)],
    prefix: Option<&'a str>,
  ) -> BoxFuture<'a, Result<Vec<IdempotencyKey>>> {
    sql::select_by(&mut self.0, selector, prefix).boxed()
  }

  fn select_key<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<IdempotencyKey>>> {
    sql::select_key(&mut self.0, key).boxed()
  }

  fn records<'a>(&'a mut self, key_id: &'a str) -> BoxFuture<'a, Result<KeyRecords>> {
    sql::records(&mut self.0, key_id).boxed()
  }

  fn lock<'a>(
    &'a mut self,
    key: &'a str,
    lease_ms: f64,
  ) -> BoxFuture<'a, Result<Option<IdempotencyKey>>> {
    sql::lock(&mut self.0, key, lease_ms).boxed()
  }

  fn update<'a>(
    &'a mut self,
    key: &'a str,
    u: KeyUpdate,
  ) -> BoxFuture<'a, Result<Option<IdempotencyKey>>> {
    sql::update(&mut self.0, key, u).boxed()
  }

  fn lock_row<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<IdempotencyKey>>> {
    sql::lock_row(&mut self.0, key).boxed()
  }

  fn apply<'a>(&'a mut self, id: &'a str, r: StageResult) -> BoxFuture<'a, Result<IdempotencyKey>> {
    sql::apply(&mut self.0, id, r).boxed()
  }

  fn reap_batch<'a>(
    &'a mut self,
    older_than_ms: f64,
    batch: i32,
    lease_ms: f64,
    prefix: Option<&'a str>,
  ) -> BoxFuture<'a, Result<u64>> {
    sql::reap_batch(&mut self.0, older_than_ms, batch, lease_ms, prefix).boxed()
  }

  fn abandoned<'a>(
    &'a mut self,
    idle_ms: f64,
    limit: i32,
    prefix: Option<&'a str>,
  ) -> BoxFuture<'a, Result<Vec<IdempotencyKey>>> {
    sql::abandoned(&mut self.0, idle_ms, limit, prefix).boxed()
  }

  fn execute<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, Result<()>> {
    self.0.execute(sql)
  }
}
