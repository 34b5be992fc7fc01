//! Medusa's `IdempotencyKeyService`: the orchestration of every method over a [`Backend`]
//! (PostgreSQL or SQLite, `backend.rs` has the boundary) or a caller's transaction (a stage
//! handle of ours, or a JS executor such as TypeORM's `EntityManager`). This module decides
//! which connection runs what, owns stage transactions, retries, leases and tenants; the
//! statements live with each backend.

use crate::backend::{Backend, Conn, SharedExec, Transaction};
use crate::error::{Error, Result};
use crate::model::{
  column_cast, validate_key, Claim, Fingerprint, IdempotencyKey, KeyRecords, KeyUpdate,
  StageResult, UpdateValue, COLUMNS, FINISHED,
};
use crate::options::Options;
use crate::pg::{Detached, PgBackend};
use crate::sqlite::LiteBackend;
use crate::stage::StageTx;
use serde_json::Value;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Why a stage failed: the callback's own error (passed back untouched) or ours.
#[derive(Debug)]
pub enum StageError<E> {
  Callback(E),
  Core(Error),
}

impl<E> From<Error> for StageError<E> {
  fn from(e: Error) -> Self {
    StageError::Core(e)
  }
}

/// Where a method runs: on the service's own connections, inside one of our stage
/// transactions, or through a caller's executor (bound mode).
#[derive(Clone, Copy)]
pub enum Target<'a> {
  Pool,
  Tx(&'a StageTx),
  Exec(&'a dyn SharedExec),
}

/// PostgreSQL's own default `max_connections` is 100; a pool far beyond that is a mistake.
const MAX_CONNECTIONS: u32 = 1000;

pub struct Service {
  backend: Arc<dyn Backend>,
  opts: Options,
  /// Set by `for_tenant`: this copy sees only the tenant's keys, stored as `<tenant>/<key>`.
  tenant: Option<Arc<str>>,
}

/// A connection held for one operation: one of the backend's, a caller's executor, or the
/// connection of one of our stage transactions (held under its lock).
enum Held<'a> {
  Own(Box<dyn Conn + 'a>),
  Tx(tokio::sync::MappedMutexGuard<'a, Box<dyn Transaction>>),
}

impl Held<'_> {
  fn conn(&mut self) -> &mut dyn Conn {
    match self {
      Held::Own(c) => &mut **c,
      Held::Tx(t) => t.conn(),
    }
  }
}

impl Service {
  /// Connect to `postgres://…` or `sqlite://path` / `sqlite::memory:`.
  pub async fn connect(opts: Options) -> Result<Self> {
    if opts.max_connections == 0 {
      return Err(Error::invalid("maxConnections must be at least 1"));
    }
    if opts.max_connections > MAX_CONNECTIONS {
      return Err(Error::invalid(format!(
        "maxConnections must be at most {MAX_CONNECTIONS}"
      )));
    }
    let url = opts.url.as_str();
    let backend: Arc<dyn Backend> =
      if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Arc::new(PgBackend::connect(&opts).await?)
      } else if url.starts_with("sqlite:") {
        Arc::new(LiteBackend::connect(&opts).await?)
      } else {
        return Err(Error::invalid(
          "unsupported database URL: use postgres://… or sqlite://…",
        ));
      };
    Ok(Service {
      backend,
      opts,
      tenant: None,
    })
  }

  /// A service without a pool: every call must be bound to a caller's executor; `release`
  /// runs the lease release after a failed stage (Medusa's container uses `cradle.manager`).
  pub fn detached(opts: Options, release: Arc<dyn SharedExec>) -> Self {
    Service {
      tenant: None,
      backend: Arc::new(Detached(release)),
      opts,
    }
  }

  /// A copy of this service that sees only `tenant`'s keys: the same client key sent by two
  /// tenants names two rows. Keys are stored as `<tenant>/<key>`, so Medusa's table and its
  /// unique index hold them unchanged; the copy shares the pool. Tenant ids are 1–128
  /// printable ASCII characters without `/`.
  pub fn for_tenant(&self, tenant: &str) -> Result<Service> {
    if let Some(current) = self.tenant() {
      // A tenant's copy must not be able to step into another tenant.
      return Err(Error::invalid(format!(
        "this service is already scoped to tenant '{current}'; call forTenant on the unscoped service"
      )));
    }
    if tenant.is_empty()
      || tenant.len() > 128
      || !tenant
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'/')
    {
      return Err(Error::invalid(
        "tenant must be 1-128 printable ASCII characters without '/'",
      ));
    }
    Ok(Service {
      backend: self.backend.clone(),
      opts: self.opts.clone(),
      tenant: Some(format!("{tenant}/").into()),
    })
  }

  /// The tenant this copy is scoped to, if any.
  pub fn tenant(&self) -> Option<&str> {
    self.tenant.as_deref().map(|t| &t[..t.len() - 1])
  }

  /// The stored form of a client key.
  fn db_key(&self, key: &str) -> String {
    match &self.tenant {
      Some(prefix) => format!("{prefix}{key}"),
      None => key.to_owned(),
    }
  }

  /// The client's form of a stored key, for messages.
  fn client_key<'k>(&self, key: &'k str) -> &'k str {
    match &self.tenant {
      Some(prefix) => key.strip_prefix(&**prefix).unwrap_or(key),
      None => key,
    }
  }

  /// `FOR UPDATE NOWAIT` meeting a row another transaction holds (55P03) is `Locked`, named
  /// by the client's key.
  fn busy_is_locked(&self, stored: &str, e: Error) -> Error {
    if e.sqlstate() == Some("55P03") {
      Error::locked(self.client_key(stored))
    } else {
      e
    }
  }

  /// A row as the caller sees it: a scoped copy strips its tenant from the key.
  fn shown(&self, mut k: IdempotencyKey) -> IdempotencyKey {
    if let Some(prefix) = &self.tenant {
      if let Some(client) = k.idempotency_key.strip_prefix(&**prefix) {
        k.idempotency_key = client.to_owned();
      }
    }
    k
  }

  pub fn options(&self) -> &Options {
    &self.opts
  }

  /// What the database is, as OpenTelemetry's `db.system.name` names it: "postgresql" or
  /// "sqlite" (a service without a pool, `detached`, binds to callers' PostgreSQL executors).
  pub fn system(&self) -> &'static str {
    self.backend.system()
  }

  /// Whether this service's calls can run through `ex`, a caller's executor (bound mode):
  /// the backend's refusal (`Error::InvalidArgument`) when they cannot. `ex` is not called.
  pub fn check_bind(&self, ex: &dyn SharedExec) -> Result<()> {
    self.backend.bind(ex).map(drop)
  }

  pub async fn close(&self) {
    self.backend.close().await
  }

  /// The connection `target` names, held for one operation.
  async fn acquire<'a>(&'a self, target: Target<'a>) -> Result<Held<'a>> {
    Ok(match target {
      Target::Pool => Held::Own(self.backend.acquire().await?),
      Target::Tx(tx) => Held::Tx(tx.conn().await?),
      Target::Exec(ex) => Held::Own(self.backend.bind(ex)?),
    })
  }

  /// Create Medusa's table when missing; a no-op on a Medusa database and when run twice.
  pub async fn migrate(&self) -> Result<()> {
    self.backend.migrate().await
  }

  /// Medusa's `initializeRequest`, with client keys honoured, a fingerprint check and the
  /// request lease (SPEC §3–§4).
  pub async fn initialize_request(
    &self,
    target: Target<'_>,
    header_key: Option<&str>,
    fp: Fingerprint,
  ) -> Result<IdempotencyKey> {
    let key = match header_key {
      Some(k) if !k.is_empty() => {
        validate_key(k)?;
        k.to_owned()
      }
      _ => uuid::Uuid::new_v4().to_string(),
    };
    let shown = key;
    let key = self.db_key(&shown);
    let lease_ms = self.opts.lock_timeout.as_millis() as f64;
    let id = crate::model::new_id();
    let in_tx = matches!(target, Target::Tx(_) | Target::Exec(_));
    let claim = {
      let mut held = self.acquire(target).await?;
      let op = held.conn().initialize(&id, &key, &fp, lease_ms, in_tx);
      abandonable(target, op).await
    }?;
    match claim {
      Claim::Got(k) => Ok(self.shown(k)),
      Claim::Vanished => Err(Error::locked(&shown)),
      Claim::Existing {
        key: found,
        same_request,
      } => {
        if !same_request {
          return Err(Error::Reused(shown));
        }
        if found.is_finished() {
          return Ok(self.shown(found));
        }
        Err(Error::locked(&shown))
      }
    }
  }

  /// Medusa's `create`: a new key, the client's value when given.
  pub async fn create(
    &self,
    target: Target<'_>,
    key: Option<&str>,
    fp: Fingerprint,
    recovery_point: Option<String>,
  ) -> Result<IdempotencyKey> {
    let key = match key {
      Some(k) => {
        validate_key(k)?;
        k.to_owned()
      }
      None => uuid::Uuid::new_v4().to_string(),
    };
    let id = crate::model::new_id();
    let stored = self.db_key(&key);
    {
      let mut held = self.acquire(target).await?;
      let op = held.conn().create(&id, &stored, &fp, recovery_point);
      abandonable(target, op).await
    }
    .map(|k| self.shown(k))
    .map_err(|e| match e {
      Error::Database {
        sqlstate: Some(s), ..
      } if s == "23505" => Error::Database {
        sqlstate: Some(s),
        message: format!("Idempotency key {key} already exists"),
      },
      other => other,
    })
  }

  /// Medusa's `retrieve` by key.
  pub async fn retrieve(&self, target: Target<'_>, key: &str) -> Result<IdempotencyKey> {
    let selector = vec![("idempotency_key".to_owned(), UpdateValue::Json(key.into()))];
    self.retrieve_by(target, selector, key).await
  }

  /// The key with what else the database holds about it: whether a handler accepted its
  /// request, and the completer's attempts at it (for operators: the CLI's `inspect`).
  pub async fn inspect(
    &self,
    target: Target<'_>,
    key: &str,
  ) -> Result<(IdempotencyKey, KeyRecords)> {
    let stored = self.db_key(key);
    let mut held = self.acquire(target).await?;
    let conn = held.conn();
    let row = abandonable(target, conn.select_key(&stored))
      .await?
      .ok_or_else(|| Error::not_found(key))?;
    let records = abandonable(target, conn.records(&row.id)).await?;
    Ok((self.shown(row), records))
  }

  /// Medusa's `retrieve` by selector: equality on named columns, `null` is IS NULL, an array
  /// is IN. Column names come from a fixed list, never from the caller's strings.
  pub async fn retrieve_by(
    &self,
    target: Target<'_>,
    selector: Vec<(String, UpdateValue)>,
    shown: &str,
  ) -> Result<IdempotencyKey> {
    let mut checked: Vec<(&'static str, UpdateValue)> = Vec::with_capacity(selector.len());
    for (name, value) in selector {
      let col = COLUMNS
        .split(", ")
        .find(|c| *c == name)
        .ok_or_else(|| Error::invalid(format!("'{name}' is not a column of idempotency_key")))?;
      check_selector_value(col, &value)?;
      let value = match (col, value) {
        ("idempotency_key", UpdateValue::Json(v)) => UpdateValue::Json(self.db_keys(v)),
        (_, v) => v,
      };
      checked.push((col, value));
    }
    let prefix = self.tenant.as_deref();
    let mut rows = {
      let mut held = self.acquire(target).await?;
      abandonable(target, held.conn().select_by(&checked, prefix)).await
    }?;
    match rows.len() {
      0 => Err(Error::not_found(shown)),
      1 => Ok(self.shown(rows.remove(0))),
      _ => Err(Error::Ambiguous(format!(
        "More than one idempotency key matches {shown}"
      ))),
    }
  }

  /// The selector value of `idempotency_key` (a key or an array of keys) in stored form.
  fn db_keys(&self, v: Value) -> Value {
    match v {
      Value::String(k) => Value::String(self.db_key(&k)),
      Value::Array(items) => Value::Array(items.into_iter().map(|i| self.db_keys(i)).collect()),
      other => other,
    }
  }

  /// Medusa's `lock`: one conditional UPDATE on the database clock; of N concurrent callers
  /// exactly one wins, and the lock lapses after `lock_timeout`.
  pub async fn lock(&self, target: Target<'_>, key: &str) -> Result<IdempotencyKey> {
    let lease_ms = self.opts.lock_timeout.as_millis() as f64;
    let stored = self.db_key(key);
    {
      let mut held = self.acquire(target).await?;
      let conn = held.conn();
      let (won, exists) = abandonable(target, async {
        Ok(match conn.lock(&stored, lease_ms).await? {
          Some(k) => (Some(k), true),
          None => (None, conn.select_key(&stored).await?.is_some()),
        })
      })
      .await?;
      match (won, exists) {
        (Some(k), _) => Ok(self.shown(k)),
        (None, true) => Err(Error::Locked("Key already locked".into())),
        (None, false) => Err(Error::not_found(key)),
      }
    }
  }

  /// Medusa's `update`: set the given columns. Setting `finished` clears the lease unless
  /// `locked_at` is given too.
  pub async fn update(
    &self,
    target: Target<'_>,
    key: &str,
    mut u: KeyUpdate,
  ) -> Result<IdempotencyKey> {
    if u.recovery_point.as_deref() == Some(FINISHED) && u.locked_at.is_none() {
      u.locked_at = Some(None);
    }
    let stored = self.db_key(key);
    {
      let mut held = self.acquire(target).await?;
      abandonable(target, held.conn().update(&stored, u)).await
    }?
    .map(|k| self.shown(k))
    .ok_or_else(|| Error::not_found(key))
  }

  /// Delete keys created more than `older_than` ago, in batches of `batch` (each its own short
  /// statement), never a key a stage is working on or whose request lease is fresh. Returns
  /// how many were removed.
  pub async fn reap(&self, target: Target<'_>, older_than: Duration, batch: u32) -> Result<u64> {
    if batch == 0 {
      return Err(Error::invalid("batchSize must be at least 1"));
    }
    let older_ms = older_than.as_millis() as f64;
    let lease_ms = self.opts.lock_timeout.as_millis() as f64;
    let batch = i32::try_from(batch).unwrap_or(i32::MAX);
    let prefix = self.tenant.as_deref();
    let mut total = 0;
    loop {
      let removed = {
        let mut held = self.acquire(target).await?;
        let op = held.conn().reap_batch(older_ms, batch, lease_ms, prefix);
        abandonable(target, op).await?
      };
      total += removed;
      if removed < u64::from(batch.unsigned_abs()) {
        return Ok(total);
      }
    }
  }

  /// Unfinished keys with no progress for `idle`, least recent first, so an application can
  /// drive them forward (rocket-rides' completer).
  pub async fn list_abandoned(
    &self,
    target: Target<'_>,
    idle: Duration,
    limit: u32,
  ) -> Result<Vec<IdempotencyKey>> {
    let idle_ms = idle.as_millis() as f64;
    let limit = i32::try_from(limit).unwrap_or(i32::MAX);
    let prefix = self.tenant.as_deref();
    let mut held = self.acquire(target).await?;
    let keys = abandonable(target, held.conn().abandoned(idle_ms, limit, prefix)).await?;
    Ok(keys.into_iter().map(|k| self.shown(k)).collect())
  }

  /// Open a stage transaction with the key's row claimed for this stage, checked against the
  /// caller's expected recovery point.
  async fn begin_stage(
    &self,
    key: &str,
    expected: Option<&str>,
  ) -> Result<(Box<dyn Transaction>, IdempotencyKey)> {
    let (tx, found) = self
      .backend
      .begin_stage(self.opts.isolation, key)
      .await
      .map_err(|e| self.busy_is_locked(key, e))?;
    match check_expected(found, self.client_key(key), expected) {
      Ok(k) => Ok((tx, k)),
      Err(e) => {
        tx.rollback().await;
        Err(e)
      }
    }
  }

  /// Medusa's `workStage` (SPEC §4) in native mode: our transaction, our isolation, our
  /// retries. `callback` is called once per attempt with a fresh handle; its error comes
  /// back untouched as `StageError::Callback`.
  pub async fn work_stage<E, F, Fut>(
    &self,
    target: Target<'_>,
    key: &str,
    expected: Option<&str>,
    mut callback: F,
  ) -> std::result::Result<IdempotencyKey, StageError<E>>
  where
    F: FnMut(StageTx) -> Fut,
    Fut: Future<Output = std::result::Result<StageResult, StageError<E>>>,
  {
    let stored = self.db_key(key);
    let key = stored.as_str();
    match target {
      Target::Tx(parent) => {
        return self
          .work_stage_nested(parent, key, expected, callback)
          .await
          .map(|k| self.shown(k))
      }
      Target::Exec(_) => {
        return Err(StageError::Core(Error::invalid(
          "a stage bound to a caller's executor runs through work_stage_bound",
        )))
      }
      Target::Pool => {}
    }
    let mut attempt = 0;
    loop {
      let (tx, locked) = match self.begin_stage(key, expected).await {
        Ok(t) => t,
        Err(e) if e.is_retryable() && attempt < self.opts.max_retries => {
          attempt += 1;
          backoff(attempt).await;
          continue;
        }
        Err(e) => return Err(StageError::Core(e)),
      };
      let stx = StageTx::new(tx);
      let outcome = self.run_callback(&stx, key, &mut callback).await;
      let failure = stx.failure();
      let in_flight = stx.in_flight();
      let Some(tx) = stx.take().await else {
        return Err(StageError::Core(Error::TransactionClosed));
      };
      let result = match outcome {
        Err(StageError::Core(e @ Error::StageTimeout { .. })) => {
          let release = self.backend.release(key.to_owned());
          if in_flight == 0 && !stx.abandoned() {
            tx.rollback().await;
            release.await;
          } else {
            // A statement was still running on the connection: the server may go on holding
            // the key's row until it ends, and the release waits for that row. Do not make
            // the caller wait too.
            tokio::spawn(async move {
              tx.rollback().await;
              release.await;
            });
          }
          return Err(StageError::Core(e));
        }
        Err(e) => {
          tx.rollback().await;
          Err(e)
        }
        Ok(_) if failure.is_some() => {
          tx.rollback().await;
          Err(StageError::Core(caught(failure.clone().unwrap())))
        }
        // Rolls back by itself when the write or the commit fails.
        Ok(r) => match tx.apply_and_commit(locked.id, r).await {
          Ok(updated) => return Ok(self.shown(updated)),
          Err(e) => Err(StageError::Core(e)),
        },
      };
      let retryable = match (&result, &failure) {
        (_, Some(f)) if f.is_retryable() => true,
        (Err(StageError::Core(e)), _) => e.is_retryable(),
        _ => false,
      };
      if retryable && attempt < self.opts.max_retries {
        attempt += 1;
        backoff(attempt).await;
        continue;
      }
      self.backend.release(key.to_owned()).await;
      return result;
    }
  }

  /// Call the callback and wait for the queries it started, within `stage_timeout`.
  async fn run_callback<E, Fut>(
    &self,
    stx: &StageTx,
    key: &str,
    callback: impl FnOnce(StageTx) -> Fut,
  ) -> std::result::Result<StageResult, StageError<E>>
  where
    Fut: Future<Output = std::result::Result<StageResult, StageError<E>>>,
  {
    let run = async {
      let outcome = callback(stx.clone()).await;
      let running = stx.await_queries().await;
      match outcome {
        Ok(_) if running > 0 => Err(StageError::Core(Error::QueryNotAwaited)),
        other => other,
      }
    };
    self.within_stage_timeout(key, run).await
  }

  async fn within_stage_timeout<E>(
    &self,
    key: &str,
    run: impl Future<Output = std::result::Result<StageResult, StageError<E>>>,
  ) -> std::result::Result<StageResult, StageError<E>> {
    let outcome = match self.opts.stage_timeout {
      None => run.await,
      Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
        Err(StageError::Core(Error::StageTimeout {
          key: self.client_key(key).to_owned(),
          ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }))
      }),
    };
    outcome.map(StageResult::normalized)
  }

  /// A stage inside one of our stage transactions (`withTransaction(tx)`): a savepoint makes
  /// it atomic on its own; isolation and retries belong to the enclosing stage.
  async fn work_stage_nested<E, F, Fut>(
    &self,
    parent: &StageTx,
    key: &str,
    expected: Option<&str>,
    callback: F,
  ) -> std::result::Result<IdempotencyKey, StageError<E>>
  where
    F: FnMut(StageTx) -> Fut,
    Fut: Future<Output = std::result::Result<StageResult, StageError<E>>>,
  {
    const SAVEPOINT: &str = "SAVEPOINT medusa_idempotency_stage";
    const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT medusa_idempotency_stage";
    const RELEASE: &str = "RELEASE SAVEPOINT medusa_idempotency_stage";
    let before = parent.failure();
    let locked = {
      let mut held = self.acquire(Target::Tx(parent)).await?;
      let conn = held.conn();
      parent
        .until_closed(async {
          conn.execute(SAVEPOINT).await?;
          let locked = conn
            .lock_row(key)
            .await
            .map_err(|e| self.busy_is_locked(key, e))
            .and_then(|k| check_expected(k, self.client_key(key), expected));
          if locked.is_err() {
            let _ = conn.execute(ROLLBACK_TO).await;
          }
          locked
        })
        .await?
    };
    let outcome = self.run_callback(parent, key, callback).await;
    let failed_inside = parent.failure().is_some() && before.is_none();
    let result = match outcome {
      Ok(r) if !failed_inside => async {
        let mut held = self.acquire(Target::Tx(parent)).await?;
        let conn = held.conn();
        parent
          .until_closed(async {
            let updated = conn.apply(&locked.id, r).await?;
            conn.execute(RELEASE).await?;
            Ok(updated)
          })
          .await
      }
      .await
      .map_err(StageError::Core),
      Ok(_) => Err(StageError::Core(caught(parent.failure().unwrap()))),
      Err(e) => Err(e),
    };
    if result.is_err() {
      if let Ok(mut held) = self.acquire(Target::Tx(parent)).await {
        let _ = parent.until_closed(held.conn().execute(ROLLBACK_TO)).await;
      }
      parent.set_failure(before);
      tokio::spawn(self.backend.release(key.to_owned()));
    }
    result
  }

  /// A stage in a caller's transaction through its executor (TypeORM, node-postgres): the
  /// row is locked with `FOR UPDATE NOWAIT` there, the callback works through that same
  /// executor, and the caller's commit or rollback decides. A failed stage releases the lease
  /// in the background through our own connections, without waiting on the caller.
  pub async fn work_stage_bound<E, F, Fut>(
    &self,
    ex: &dyn SharedExec,
    key: &str,
    expected: Option<&str>,
    callback: F,
  ) -> std::result::Result<IdempotencyKey, StageError<E>>
  where
    F: FnOnce() -> Fut,
    Fut: Future<Output = std::result::Result<StageResult, StageError<E>>>,
  {
    let stored = self.db_key(key);
    let key = stored.as_str();
    let mut conn = self.backend.bind(ex).map_err(StageError::Core)?;
    let locked = conn
      .lock_row(key)
      .await
      .map_err(|e| self.busy_is_locked(key, e))
      .and_then(|k| check_expected(k, self.client_key(key), expected))
      .map_err(StageError::Core)?;
    let outcome = self.within_stage_timeout(key, callback()).await;
    let result = match outcome {
      Ok(r) => conn.apply(&locked.id, r).await.map_err(StageError::Core),
      Err(e) => Err(e),
    };
    if result.is_err() {
      tokio::spawn(self.backend.release(key.to_owned()));
    }
    result.map(|k| self.shown(k))
  }
}

/// Run `op`, a statement on the connection `target` names: on one of our stage transactions it
/// is abandoned when that stage ends (its timeout), as the callback's own `tx.query` is, so the
/// stage can end even while the statement never returns.
async fn abandonable<T>(target: Target<'_>, op: impl Future<Output = Result<T>>) -> Result<T> {
  match target {
    Target::Tx(tx) => tx.until_closed(op).await,
    _ => op.await,
  }
}

/// A selector value must be of its column's type (or an array of them, meaning IN).
fn check_selector_value(col: &str, value: &UpdateValue) -> Result<()> {
  let cast = column_cast(col).unwrap_or("varchar");
  let scalar_ok = |v: &Value| match (cast, v) {
    ("varchar", Value::String(_)) => true,
    ("int4", Value::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
    _ => false,
  };
  let ok = match (cast, value) {
    (_, UpdateValue::Null)
    | ("jsonb", UpdateValue::Json(_))
    | ("timestamptz", UpdateValue::Date(_)) => true,
    (_, UpdateValue::Json(Value::Array(items))) => items.iter().all(scalar_ok),
    (_, UpdateValue::Json(v)) => scalar_ok(v),
    _ => false,
  };
  if ok {
    Ok(())
  } else {
    Err(Error::invalid(format!(
      "selector value for '{col}' has the wrong type"
    )))
  }
}

/// A missing key is `not_found`; a key past the caller's recovery point is `Stale`.
fn check_expected(
  found: Option<IdempotencyKey>,
  key: &str,
  expected: Option<&str>,
) -> Result<IdempotencyKey> {
  let current = found.ok_or_else(|| Error::not_found(key))?;
  if let Some(exp) = expected {
    if current.recovery_point != exp {
      return Err(Error::Stale {
        key: key.to_owned(),
        expected: exp.to_owned(),
        actual: current.recovery_point,
      });
    }
  }
  Ok(current)
}

/// A statement failed inside the stage and the callback caught it: the transaction is
/// aborted, so the stage fails with that statement's error.
fn caught(e: Error) -> Error {
  match e {
    Error::Database { sqlstate, message } => Error::Database {
      sqlstate,
      message: format!(
        "a query in this stage failed and the transaction was rolled back: {message}"
      ),
    },
    other => other,
  }
}

async fn backoff(attempt: u32) {
  // Exponential, with full jitter (a uniform wait up to the step): stages that failed together
  // on one conflict do not retry together into the next one. 20, 40, 80 … ms steps, at most
  // 640 ms.
  let step = 10u64 << attempt.clamp(1, 6);
  let wait = rand::random::<u64>() % (step + 1);
  tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
}
