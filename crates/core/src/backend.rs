//! The one boundary between the orchestrator (`service`) and a database: what the service
//! needs from a backend, declared here and implemented by `pg` and `sqlite`, including bound
//! mode (a backend's connection over a caller's executor, `Backend::bind`). The service never
//! asks which backend it has: what differs is what a backend does or reports through these
//! traits; a backend never sees the service.
//!
//! The traits are object-safe (`dyn`, futures boxed): the service holds `Arc<dyn Backend>`, so
//! the binding has one service type whatever the URL said. A boxed future per operation costs
//! one allocation against a database round trip (README, *Development*, has the measurement).

use crate::error::Result;
use crate::model::{
  Claim, Fingerprint, IdempotencyKey, KeyRecords, KeyUpdate, StageResult, UpdateValue,
};
use crate::options::Isolation;
use crate::value::{Param, QueryResult};
use futures_util::future::BoxFuture;

/// A stage transaction just begun, and the key's row as it read it (`None`: no such key).
pub(crate) type Begun = (Box<dyn Transaction>, Option<IdempotencyKey>);

/// A caller's executor (bound mode: a TypeORM `EntityManager`, a node-postgres client), which
/// runs PostgreSQL's SQL, shared: `query` may be called concurrently (the binding serialises
/// nothing; the caller's executor does what it does).
pub trait SharedExec: Send + Sync {
  fn query(&self, sql: String, params: Vec<Param>) -> BoxFuture<'static, Result<QueryResult>>;
}

/// A database the service runs on: its connections, its stage transactions, its schema.
pub(crate) trait Backend: Send + Sync {
  /// What the database is, as OpenTelemetry's `db.system.name` names it: "postgresql" or
  /// "sqlite".
  fn system(&self) -> &'static str;

  /// A connection for one operation outside any transaction of ours (autocommit).
  fn acquire(&self) -> BoxFuture<'_, Result<Box<dyn Conn + '_>>>;

  /// Bound mode: a connection whose statements run through `ex`, a caller's executor, inside
  /// the caller's transaction. A backend whose SQL a caller's executor does not run refuses
  /// (`Error::InvalidArgument`, saying what to bind to instead) without calling `ex`.
  fn bind<'a>(&'a self, ex: &'a dyn SharedExec) -> Result<Box<dyn Conn + 'a>>;

  /// Open a stage transaction with `key`'s row claimed for this stage, and read the row (`None`
  /// when there is no such key). A row another stage holds is `Error::row_locked()`. On an
  /// error nothing is left open.
  fn begin_stage<'a>(&'a self, isolation: Isolation, key: &'a str) -> BoxFuture<'a, Result<Begun>>;

  /// Release the lease of `key` after a failed stage, on the backend's own connections (never
  /// the caller's transaction, which may still hold the row lock). Best effort.
  fn release(&self, key: String) -> BoxFuture<'static, ()>;

  /// Create Medusa's table and indexes when missing; safe to run twice or concurrently.
  fn migrate(&self) -> BoxFuture<'_, Result<()>>;

  fn close(&self) -> BoxFuture<'_, ()>;
}

/// The statements of every operation, on one connection in the backend's dialect: pooled, a
/// stage transaction's, or a caller's executor. Keys are in stored form (tenant prefixed).
pub(crate) trait Conn: Send {
  /// `initializeRequest`: insert the key leased, or claim an existing one whose lease is free
  /// and whose fingerprint matches, or report what is there. `in_tx`: inside a transaction
  /// that a failed statement must not abort.
  fn initialize<'a>(
    &'a mut self,
    id: &'a str,
    key: &'a str,
    fp: &'a Fingerprint,
    lease_ms: f64,
    in_tx: bool,
  ) -> BoxFuture<'a, Result<Claim>>;

  fn create<'a>(
    &'a mut self,
    id: &'a str,
    key: &'a str,
    fp: &'a Fingerprint,
    recovery_point: Option<String>,
  ) -> BoxFuture<'a, Result<IdempotencyKey>>;

  /// Up to two rows matching every (column, value): `Null` is IS NULL, a JSON array IN. The
  /// columns are checked by the caller; `prefix` limits to one tenant's keys.
  fn select_by<'a>(
    &'a mut self,
    selector: &'a [(&'static str, UpdateValue)],
    prefix: Option<&'a str>,
  ) -> BoxFuture<'a, Result<Vec<IdempotencyKey>>>;

  fn select_key<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<IdempotencyKey>>>;

  /// `lock()`: take the lease if it is free; `None` when it is not (or there is no key).
  fn lock<'a>(
    &'a mut self,
    key: &'a str,
    lease_ms: f64,
  ) -> BoxFuture<'a, Result<Option<IdempotencyKey>>>;

  fn update<'a>(
    &'a mut self,
    key: &'a str,
    u: KeyUpdate,
  ) -> BoxFuture<'a, Result<Option<IdempotencyKey>>>;

  /// The stage's row, claimed for this stage inside the current transaction without waiting
  /// (a row another stage holds is `Error::row_locked()`).
  fn lock_row<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<IdempotencyKey>>>;

  /// Write a stage's result (see `StageResult`) to the row with this id.
  fn apply<'a>(&'a mut self, id: &'a str, r: StageResult) -> BoxFuture<'a, Result<IdempotencyKey>>;

  /// Delete up to `batch` keys created before `older_than_ms` ago, oldest first, skipping
  /// keys a stage holds and keys whose lease is fresh. Returns how many.
  fn reap_batch<'a>(
    &'a mut self,
    older_than_ms: f64,
    batch: i32,
    lease_ms: f64,
    prefix: Option<&'a str>,
  ) -> BoxFuture<'a, Result<u64>>;

  /// Unfinished keys with no progress for `idle_ms`, least recent first.
  fn abandoned<'a>(
    &'a mut self,
    idle_ms: f64,
    limit: i32,
    prefix: Option<&'a str>,
  ) -> BoxFuture<'a, Result<Vec<IdempotencyKey>>>;

  /// Whether a handler accepted key `key_id`'s request and the completer's attempts at it
  /// (empty when the schema predates their tables).
  fn records<'a>(&'a mut self, key_id: &'a str) -> BoxFuture<'a, Result<KeyRecords>>;

  /// A statement without parameters or rows (the savepoints of nested stages).
  fn execute<'a>(&'a mut self, sql: &'static str) -> BoxFuture<'a, Result<()>>;
}

/// A stage transaction of ours, open on one connection.
pub(crate) trait Transaction: Send {
  /// The transaction's connection, for the service's own statements inside it.
  fn conn(&mut self) -> &mut dyn Conn;

  /// One statement of the stage callback, with node-postgres-style `$n` parameters.
  fn query<'a>(
    &'a mut self,
    sql: &'a str,
    params: &'a [Param],
  ) -> BoxFuture<'a, Result<QueryResult>>;

  /// Write the stage's result and commit (one round trip on PostgreSQL); rolls back when the
  /// write or the commit fails.
  fn apply_and_commit(
    self: Box<Self>,
    id: String,
    r: StageResult,
  ) -> BoxFuture<'static, Result<IdempotencyKey>>;

  fn rollback(self: Box<Self>) -> BoxFuture<'static, ()>;
}
