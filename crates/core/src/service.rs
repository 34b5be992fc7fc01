//! Medusa's `IdempotencyKeyService` on PostgreSQL (and SQLite, see `lite`): every method as one or two statements
//! whose concurrency lives in SQL (conditional `UPDATE … RETURNING`, `INSERT … ON CONFLICT`,
//! `FOR UPDATE NOWAIT`), and `work_stage`, which runs a caller-supplied callback inside a
//! transaction this module owns.

use crate::error::{Error, Result};
use crate::key::{
  validate_key, Fingerprint, IdempotencyKey, KeyUpdate, UpdateValue, COLUMNS, FINISHED,
};
use crate::lite::{self, Claim};
use crate::stage::{ConnRef, StageTx, TxConn};
use futures_util::FutureExt;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use std::collections::HashSet;
use std::future::Future;
use std::str::FromStr;
use std::sync::Mutex as StdMutex;
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

  fn begin_sql(self) -> &'static str {
    match self {
      Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
      Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
      Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
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
    }
  }
}

/// What a stage callback returned, as Medusa applies it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageResult {
  /// Truthy: only the recovery point moves.
  pub recovery_point: Option<String>,
  /// Otherwise the key is finished with these (`None` leaves the column alone).
  pub response_code: Option<Option<i32>>,
  pub response_body: Option<Option<Value>>,
}

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

/// Where a method runs: on the service's pool, or inside a stage transaction it is bound to.
#[derive(Clone, Copy)]
pub enum Target<'a> {
  Pool,
  Tx(&'a StageTx),
}

pub struct Service {
  backend: Backend,
  opts: Options,
}

enum Backend {
  Pg(PgPool),
  Lite {
    pool: SqlitePool,
    /// Keys whose stage is running in this process: SQLite's stand-in for a held row lock.
    working: StdMutex<HashSet<String>>,
    /// Stages queue here for the single write lock instead of polling SQLite's busy handler.
    writer: tokio::sync::Mutex<()>,
  },
}

/// Removes a key from the working set when its SQLite stage ends, however it ends.
struct Working<'a>(&'a StdMutex<HashSet<String>>, String);

impl Drop for Working<'_> {
  fn drop(&mut self) {
    self.0.lock().unwrap().remove(&self.1);
  }
}

const LOCK_SQL: &str =
  "SELECT id, idempotency_key, created_at, locked_at, request_method, request_params, \
  request_path, response_code, response_body, recovery_point FROM idempotency_key \
  WHERE idempotency_key = $1 FOR UPDATE NOWAIT";

/// Apply a stage result. `$2` NULL finishes the key: the lease is cleared, response columns
/// are written only when flagged. Otherwise the lease is refreshed with the commit-time clock.
const APPLY_SQL: &str = "UPDATE idempotency_key SET \
  recovery_point = COALESCE($2, 'finished'), \
  locked_at = CASE WHEN $2 IS NULL THEN NULL ELSE clock_timestamp() END, \
  response_code = CASE WHEN $2 IS NULL AND $3 THEN $4 ELSE response_code END, \
  response_body = CASE WHEN $2 IS NULL AND $5 THEN $6 ELSE response_body END \
  WHERE id = $1 RETURNING id, idempotency_key, created_at, locked_at, request_method, \
  request_params, request_path, response_code, response_body, recovery_point";

const RELEASE_SQL: &str =
  "UPDATE idempotency_key SET locked_at = NULL WHERE idempotency_key = $1 AND recovery_point <> 'finished'";

fn boxed<'c, T: 'c>(
  f: impl Future<Output = Result<T>> + Send + 'c,
) -> futures_util::future::BoxFuture<'c, Result<T>> {
  f.boxed()
}

impl Service {
  /// Connect to `postgres://…` or `sqlite://path` / `sqlite::memory:`.
  pub async fn connect(opts: Options) -> Result<Self> {
    if opts.max_connections == 0 {
      return Err(Error::invalid("maxConnections must be at least 1"));
    }
    let url = opts.url.as_str();
    let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
      let connect = PgConnectOptions::from_str(url)
        .map_err(|_| Error::invalid("invalid PostgreSQL connection URL"))?;
      let pool = PgPoolOptions::new()
        .max_connections(opts.max_connections)
        .acquire_timeout(opts.acquire_timeout)
        // The ping on every acquire costs a round trip per operation; a broken connection
        // surfaces as a typed error on first use instead and is then dropped by the pool.
        .test_before_acquire(false)
        .connect_with(connect)
        .await?;
      Backend::Pg(pool)
    } else if url.starts_with("sqlite:") {
      let memory = url.contains(":memory:") || url.contains("mode=memory");
      let connect = SqliteConnectOptions::from_str(url)
        .map_err(|_| Error::invalid("invalid SQLite URL"))?
        .create_if_missing(true)
        .busy_timeout(opts.busy_timeout)
        .foreign_keys(true);
      let connect = if memory {
        connect
      } else {
        connect.journal_mode(SqliteJournalMode::Wal)
      };
      // Every connection to `sqlite::memory:` is a separate database: one connection only.
      let size = if memory { 1 } else { opts.max_connections };
      let pool = SqlitePoolOptions::new()
        .max_connections(size)
        .acquire_timeout(opts.acquire_timeout)
        .test_before_acquire(false)
        .connect_with(connect)
        .await?;
      Backend::Lite {
        pool,
        working: StdMutex::new(HashSet::new()),
        writer: tokio::sync::Mutex::new(()),
      }
    } else {
      return Err(Error::invalid(
        "unsupported database URL: use postgres://… or sqlite://…",
      ));
    };
    Ok(Service { backend, opts })
  }

  /// "postgres" or "sqlite".
  pub fn backend_name(&self) -> &'static str {
    match self.backend {
      Backend::Pg(_) => "postgres",
      Backend::Lite { .. } => "sqlite",
    }
  }

  fn lite_working(&self, key: &str) -> bool {
    match &self.backend {
      Backend::Lite { working, .. } => working.lock().unwrap().contains(key),
      Backend::Pg(_) => false,
    }
  }

  pub fn options(&self) -> &Options {
    &self.opts
  }

  pub async fn close(&self) {
    match &self.backend {
      Backend::Pg(p) => p.close().await,
      Backend::Lite { pool, .. } => pool.close().await,
    }
  }

  /// Run `f` on a pooled connection or on the bound stage's connection.
  async fn on<T: Send>(
    &self,
    target: Target<'_>,
    f: impl for<'c> FnOnce(ConnRef<'c>) -> futures_util::future::BoxFuture<'c, Result<T>>,
  ) -> Result<T> {
    match (target, &self.backend) {
      (Target::Tx(tx), _) => tx.with_conn(f).await,
      (Target::Pool, Backend::Pg(pool)) => {
        let mut conn = pool.acquire().await?;
        f(ConnRef::Pg(&mut conn)).await
      }
      (Target::Pool, Backend::Lite { pool, .. }) => {
        let mut conn = pool.acquire().await?;
        f(ConnRef::Lite(&mut conn)).await
      }
    }
  }

  /// Create Medusa's table when missing; a no-op on a Medusa database and when run twice.
  pub async fn migrate(&self) -> Result<()> {
    let pool = match &self.backend {
      Backend::Pg(p) => p,
      Backend::Lite { pool, .. } => {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for (_, sql) in crate::MIGRATIONS_SQLITE {
          sqlx::Executor::execute(&mut *tx, *sql).await?;
        }
        tx.commit().await?;
        return Ok(());
      }
    };
    let mut tx = pool.begin().await?;
    // Serialise concurrent migrations (two processes starting at once would otherwise race
    // on CREATE TABLE IF NOT EXISTS and fail with 23505 on pg_type).
    sqlx::query("SELECT pg_advisory_xact_lock(8245017791)")
      .execute(&mut *tx)
      .await?;
    for (_, sql) in crate::MIGRATIONS_POSTGRES {
      // Simple protocol: a migration file may hold several statements.
      sqlx::Executor::execute(&mut *tx, *sql).await?;
    }
    tx.commit().await?;
    Ok(())
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
    let lease_ms = self.opts.lock_timeout.as_millis() as f64;
    let id = crate::key::new_id();
    let params = fp.params.clone().map(sqlx::types::Json);
    let may_claim = !self.lite_working(&key);
    self
      .on(target, move |c| {
        boxed(async move {
          let c = match c {
            ConnRef::Pg(c) => c,
            ConnRef::Lite(c) => {
              return match lite::insert_or_claim(c, &id, &key, &fp, lease_ms, may_claim).await? {
                Claim::Got(k) => Ok(k),
                Claim::Existing { key: found, same_request } => classify(found, same_request, &key),
              };
            }
          };
          const INSERT: &str = concat!(
            "INSERT INTO idempotency_key (id, idempotency_key, locked_at, request_method, request_params, request_path) ",
            "VALUES ($1, $2, clock_timestamp(), $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING RETURNING ",
            "id, idempotency_key, created_at, locked_at, request_method, request_params, request_path, response_code, response_body, recovery_point"
          );
          let inserted = sqlx::query(INSERT)
            .bind(&id)
            .bind(&key)
            .bind(&fp.method)
            .bind(&params)
            .bind(&fp.path)
            .fetch_optional(&mut *c)
            .await?;
          if let Some(row) = inserted {
            return IdempotencyKey::from_pg(&row);
          }
          // The key exists: a different request is refused first, a finished one replayed,
          // then the lease is claimed if it is free. A claim blocked by a stage's row lock
          // is a held lease.
          const CLAIM: &str = concat!(
            "WITH k AS (SELECT id FROM idempotency_key WHERE idempotency_key = $1 FOR UPDATE NOWAIT) ",
            "UPDATE idempotency_key t SET locked_at = clock_timestamp() FROM k WHERE t.id = k.id ",
            "AND t.recovery_point <> 'finished' ",
            "AND (t.locked_at IS NULL OR t.locked_at <= clock_timestamp() - $2 * interval '1 millisecond') ",
            "AND (t.request_method IS NULL OR t.request_method IS NOT DISTINCT FROM $3) ",
            "AND (t.request_path IS NULL OR t.request_path IS NOT DISTINCT FROM $4) ",
            "AND (t.request_params IS NULL OR t.request_params IS NOT DISTINCT FROM $5) ",
            "RETURNING t.id, t.idempotency_key, t.created_at, t.locked_at, t.request_method, t.request_params, ",
            "t.request_path, t.response_code, t.response_body, t.recovery_point"
          );
          let claimed = sqlx::query(CLAIM)
            .bind(&key)
            .bind(lease_ms)
            .bind(&fp.method)
            .bind(&fp.path)
            .bind(&params)
            .fetch_optional(&mut *c)
            .await;
          match claimed {
            Ok(Some(row)) => return IdempotencyKey::from_pg(&row),
            Ok(None) => {}
            Err(e) => {
              let e = Error::from(e);
              if !matches!(e.sqlstate(), Some("55P03" | "40001" | "40P01")) {
                return Err(e);
              }
            }
          }
          const CLASSIFY: &str = concat!(
            "SELECT id, idempotency_key, created_at, locked_at, request_method, request_params, request_path, ",
            "response_code, response_body, recovery_point, ",
            "((request_method IS NULL OR request_method IS NOT DISTINCT FROM $2) ",
            "AND (request_path IS NULL OR request_path IS NOT DISTINCT FROM $3) ",
            "AND (request_params IS NULL OR request_params IS NOT DISTINCT FROM $4)) AS same_request ",
            "FROM idempotency_key WHERE idempotency_key = $1"
          );
          let row = sqlx::query(CLASSIFY)
            .bind(&key)
            .bind(&fp.method)
            .bind(&fp.path)
            .bind(&params)
            .fetch_optional(&mut *c)
            .await?
            // Deleted between our statements (a reap): the caller may simply retry.
            .ok_or_else(|| Error::locked(&key))?;
          let same: bool = row.try_get("same_request")?;
          classify(IdempotencyKey::from_pg(&row)?, same, &key)
        })
      })
      .await
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
    let id = crate::key::new_id();
    self
      .on(target, move |c| {
        boxed(async move {
          let c = match c {
            ConnRef::Pg(c) => c,
            ConnRef::Lite(c) => return lite::create(c, &id, &key, &fp, recovery_point).await.map_err(|e| duplicate(e, &key)),
          };
          const SQL: &str = concat!(
            "INSERT INTO idempotency_key (id, idempotency_key, request_method, request_params, request_path, recovery_point) ",
            "VALUES ($1, $2, $3, $4, $5, COALESCE($6, 'started')) RETURNING ",
            "id, idempotency_key, created_at, locked_at, request_method, request_params, request_path, response_code, response_body, recovery_point"
          );
          let row = sqlx::query(SQL)
            .bind(&id)
            .bind(&key)
            .bind(&fp.method)
            .bind(fp.params.map(sqlx::types::Json))
            .bind(&fp.path)
            .bind(recovery_point)
            .fetch_one(&mut *c)
            .await
            .map_err(|e| duplicate(Error::from(e), &key))?;
          IdempotencyKey::from_pg(&row)
        })
      })
      .await
  }

  /// Medusa's `retrieve` by key.
  pub async fn retrieve(&self, target: Target<'_>, key: &str) -> Result<IdempotencyKey> {
    self
      .retrieve_by(
        target,
        vec![(
          "idempotency_key".into(),
          UpdateValue::Json(Value::String(key.into())),
        )],
        key,
      )
      .await
  }

  /// Medusa's `retrieve` by selector: equality on named columns, `null` is IS NULL, an array
  /// is IN. Column names come from a fixed list, never from the caller's strings.
  pub async fn retrieve_by(
    &self,
    target: Target<'_>,
    selector: Vec<(String, UpdateValue)>,
    shown: &str,
  ) -> Result<IdempotencyKey> {
    let mut sql = format!("SELECT {COLUMNS} FROM idempotency_key WHERE TRUE");
    let mut lite_where = String::new();
    let mut binds: Vec<(&'static str, UpdateValue)> = Vec::new();
    for (name, value) in selector {
      let (col, cast) = match name.as_str() {
        "id" => ("id", ""),
        "idempotency_key" => ("idempotency_key", ""),
        "request_method" => ("request_method", ""),
        "request_path" => ("request_path", ""),
        "recovery_point" => ("recovery_point", ""),
        "response_code" => ("response_code", ""),
        "created_at" => ("created_at", ""),
        "locked_at" => ("locked_at", ""),
        "request_params" => ("request_params", "::jsonb"),
        "response_body" => ("response_body", "::jsonb"),
        _ => {
          return Err(Error::invalid(format!(
            "'{name}' is not a column of idempotency_key"
          )))
        }
      };
      match value {
        UpdateValue::Null => {
          sql += &format!(" AND {col} IS NULL");
          lite_where += &format!(" AND {col} IS NULL");
        }
        UpdateValue::Json(Value::Array(items)) if cast.is_empty() => {
          binds.push((col, UpdateValue::Json(Value::Array(items))));
          sql += &format!(" AND {col} = ANY(${})", binds.len());
          lite_where += &format!(" AND {col} {}", lite::in_list(binds.len()));
        }
        v => {
          binds.push((col, v));
          sql += &format!(" AND {col} = ${}{cast}", binds.len());
          lite_where += &format!(" AND {col} = ?{}", binds.len());
        }
      }
    }
    sql += " LIMIT 2";
    let shown = shown.to_owned();
    let mut rows = self
      .on(target, move |c| {
        boxed(async move {
          let c = match c {
            ConnRef::Pg(c) => c,
            ConnRef::Lite(c) => {
              let binds: Vec<_> = binds.into_iter().map(|(c, v)| (c, false, v)).collect();
              return lite::select_by(c, &binds, &lite_where).await;
            }
          };
          let mut q = sqlx::query(&sql);
          for (col, v) in &binds {
            q = bind_column(q, col, v)?;
          }
          q.fetch_all(&mut *c)
            .await?
            .iter()
            .map(IdempotencyKey::from_pg)
            .collect()
        })
      })
      .await?;
    match rows.len() {
      0 => Err(Error::not_found(&shown)),
      1 => Ok(rows.remove(0)),
      _ => Err(Error::Ambiguous(format!(
        "More than one idempotency key matches {shown}"
      ))),
    }
  }

  /// Medusa's `lock`: one conditional UPDATE on the database clock; of N concurrent callers
  /// exactly one wins, and the lock lapses after `lock_timeout`.
  pub async fn lock(&self, target: Target<'_>, key: &str) -> Result<IdempotencyKey> {
    let lease_ms = self.opts.lock_timeout.as_millis() as f64;
    let key = key.to_owned();
    self
      .on(target, move |c| {
        boxed(async move {
          let c = match c {
            ConnRef::Pg(c) => c,
            ConnRef::Lite(c) => {
              return match lite::lock(c, &key, lease_ms).await? {
                Some(k) => Ok(k),
                None if lite::exists(c, &key).await? => Err(Error::Locked("Key already locked".into())),
                None => Err(Error::not_found(&key)),
              };
            }
          };
          const SQL: &str = concat!(
            "UPDATE idempotency_key SET locked_at = clock_timestamp() WHERE idempotency_key = $1 ",
            "AND (locked_at IS NULL OR locked_at <= clock_timestamp() - $2 * interval '1 millisecond') RETURNING ",
            "id, idempotency_key, created_at, locked_at, request_method, request_params, request_path, response_code, response_body, recovery_point"
          );
          if let Some(row) = sqlx::query(SQL).bind(&key).bind(lease_ms).fetch_optional(&mut *c).await? {
            return IdempotencyKey::from_pg(&row);
          }
          let exists = sqlx::query("SELECT 1 FROM idempotency_key WHERE idempotency_key = $1")
            .bind(&key)
            .fetch_optional(&mut *c)
            .await?;
          Err(match exists {
            Some(_) => Error::Locked("Key already locked".into()),
            None => Error::not_found(&key),
          })
        })
      })
      .await
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
    let mut sets = Vec::new();
    let mut n = 1;
    let mut push = |col: &str, cast: &str, present: bool| {
      if present {
        n += 1;
        sets.push(format!("{col} = ${n}{cast}"));
      }
    };
    push("locked_at", "", u.locked_at.is_some());
    push("request_method", "", u.request_method.is_some());
    push("request_params", "", u.request_params.is_some());
    push("request_path", "", u.request_path.is_some());
    push("response_code", "", u.response_code.is_some());
    push("response_body", "", u.response_body.is_some());
    push("recovery_point", "", u.recovery_point.is_some());
    let sql = if sets.is_empty() {
      format!("SELECT {COLUMNS} FROM idempotency_key WHERE idempotency_key = $1")
    } else {
      format!(
        "UPDATE idempotency_key SET {} WHERE idempotency_key = $1 RETURNING {COLUMNS}",
        sets.join(", ")
      )
    };
    let key = key.to_owned();
    self
      .on(target, move |c| {
        boxed(async move {
          let c = match c {
            ConnRef::Pg(c) => c,
            ConnRef::Lite(c) => {
              return lite::update(c, &key, u)
                .await?
                .ok_or_else(|| Error::not_found(&key))
            }
          };
          let mut q = sqlx::query(&sql).bind(&key);
          if let Some(v) = u.locked_at {
            q = q.bind(v);
          }
          if let Some(v) = u.request_method {
            q = q.bind(v);
          }
          if let Some(v) = u.request_params {
            q = q.bind(v.map(sqlx::types::Json));
          }
          if let Some(v) = u.request_path {
            q = q.bind(v);
          }
          if let Some(v) = u.response_code {
            q = q.bind(v);
          }
          if let Some(v) = u.response_body {
            q = q.bind(v.map(sqlx::types::Json));
          }
          if let Some(v) = u.recovery_point {
            q = q.bind(v);
          }
          match q.fetch_optional(&mut *c).await? {
            Some(row) => IdempotencyKey::from_pg(&row),
            None => Err(Error::not_found(&key)),
          }
        })
      })
      .await
  }

  /// Release the lease of a key whose stage failed after its callback ran. On the pool:
  /// when bound, the caller's open transaction still holds the row lock, so this runs in the
  /// background and must not be awaited by the stage.
  fn release_in_background(&self, key: String) {
    match &self.backend {
      Backend::Pg(pool) => {
        let pool = pool.clone();
        tokio::spawn(async move {
          let _ = sqlx::query(RELEASE_SQL).bind(key).execute(&pool).await;
        });
      }
      Backend::Lite { pool, .. } => {
        let pool = pool.clone();
        tokio::spawn(async move {
          let _ = sqlx::query(lite::RELEASE_SQL)
            .bind(key)
            .execute(&pool)
            .await;
        });
      }
    }
  }

  async fn release(&self, key: &str) {
    let _ = match &self.backend {
      Backend::Pg(pool) => sqlx::query(RELEASE_SQL)
        .bind(key)
        .execute(pool)
        .await
        .map(|_| ()),
      Backend::Lite { pool, .. } => sqlx::query(lite::RELEASE_SQL)
        .bind(key)
        .execute(pool)
        .await
        .map(|_| ()),
    };
  }

  /// Open a stage transaction with the key's row claimed for this stage. On SQLite the write
  /// lock is taken up front and a key another stage of this process is working is refused
  /// at once, like `FOR UPDATE NOWAIT` on PostgreSQL.
  async fn begin_stage<'s>(
    &'s self,
    key: &str,
    expected: Option<&str>,
  ) -> Result<(TxConn, IdempotencyKey, Option<Working<'s>>)> {
    match &self.backend {
      Backend::Pg(pool) => {
        let mut tx = pool.begin_with(self.opts.isolation.begin_sql()).await?;
        match lock_row(&mut tx, key, expected).await {
          Ok(k) => Ok((TxConn::Pg(tx), k, None)),
          Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
          }
        }
      }
      Backend::Lite {
        pool,
        working,
        writer,
      } => {
        if !working.lock().unwrap().insert(key.to_owned()) {
          return Err(Error::locked(key));
        }
        let guard = Working(working, key.to_owned());
        let gate = tokio::time::timeout(self.opts.busy_timeout, writer.lock())
          .await
          .map_err(|_| Error::Busy)?;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        drop(gate); // SQLite's own write lock now serialises writers.
        let row = lite::select_key(&mut tx, key).await;
        let checked = row.and_then(|r| {
          let k = r.ok_or_else(|| Error::not_found(key))?;
          check_expected(k, key, expected)
        });
        match checked {
          Ok(k) => Ok((TxConn::Lite(tx), k, Some(guard))),
          Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
          }
        }
      }
    }
  }

  /// Medusa's `workStage` (SPEC §4). `callback` is called once per attempt with a fresh
  /// transaction handle; its error comes back untouched as `StageError::Callback`.
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
    if let Target::Tx(parent) = target {
      return self.work_stage_bound(parent, key, expected, callback).await;
    }
    let mut attempt = 0;
    loop {
      let (tx, locked, working) = match self.begin_stage(key, expected).await {
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
      let Some(mut tx) = stx.take().await else {
        return Err(StageError::Core(Error::TransactionClosed));
      };
      let result = match outcome {
        Err(StageError::Core(e @ Error::StageTimeout { .. })) => {
          let release = self.release_task(key.to_owned());
          if in_flight == 0 {
            tx.rollback().await;
            release.await;
          } else {
            // A query is still running on the connection and the rollback waits for it:
            // do not make the caller wait too.
            tokio::spawn(async move {
              tx.rollback().await;
              release.await;
            });
          }
          drop(working);
          return Err(StageError::Core(e));
        }
        Err(e) => Err(e),
        Ok(_) if failure.is_some() => Err(StageError::Core(caught(failure.clone().unwrap()))),
        Ok(r) => apply_any(tx.conn(), &locked.id, r)
          .await
          .map_err(StageError::Core),
      };
      let result = match result {
        Ok(updated) => match tx.commit().await {
          Ok(()) => return Ok(updated),
          Err(e) => Err(StageError::Core(e)),
        },
        Err(e) => {
          tx.rollback().await;
          Err(e)
        }
      };
      drop(working);
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
      self.release(key).await;
      return result;
    }
  }

  /// A future releasing `key`'s lease on the pool, for use after the stage returned.
  fn release_task(&self, key: String) -> futures_util::future::BoxFuture<'static, ()> {
    match &self.backend {
      Backend::Pg(pool) => {
        let pool = pool.clone();
        boxed_unit(async move {
          let _ = sqlx::query(RELEASE_SQL).bind(key).execute(&pool).await;
        })
      }
      Backend::Lite { pool, .. } => {
        let pool = pool.clone();
        boxed_unit(async move {
          let _ = sqlx::query(lite::RELEASE_SQL)
            .bind(key)
            .execute(&pool)
            .await;
        })
      }
    }
  }

  /// Call the callback and wait for the queries it started, within `stage_timeout`.
  async fn run_callback<E, F, Fut>(
    &self,
    stx: &StageTx,
    key: &str,
    callback: &mut F,
  ) -> std::result::Result<StageResult, StageError<E>>
  where
    F: FnMut(StageTx) -> Fut,
    Fut: Future<Output = std::result::Result<StageResult, StageError<E>>>,
  {
    let run = async {
      let outcome = callback(stx.clone()).await;
      let running = stx.settle().await;
      match outcome {
        Ok(_) if running > 0 => Err(StageError::Core(Error::QueryNotAwaited)),
        other => other,
      }
    };
    match self.opts.stage_timeout {
      None => run.await,
      Some(limit) => match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => Err(StageError::Core(Error::StageTimeout {
          key: key.to_owned(),
          ms: limit.as_millis() as u64,
        })),
      },
    }
  }

  /// A stage inside a caller's stage transaction: a savepoint makes it atomic on its own;
  /// isolation and retries belong to the caller.
  async fn work_stage_bound<E, F, Fut>(
    &self,
    parent: &StageTx,
    key: &str,
    expected: Option<&str>,
    mut callback: F,
  ) -> std::result::Result<IdempotencyKey, StageError<E>>
  where
    F: FnMut(StageTx) -> Fut,
    Fut: Future<Output = std::result::Result<StageResult, StageError<E>>>,
  {
    let before = parent.failure();
    let k = key.to_owned();
    let exp = expected.map(str::to_owned);
    parent
      .with_conn(|c| boxed(savepoint(c, "SAVEPOINT medusa_idempotency_stage")))
      .await?;
    let locked = parent
      .with_conn(move |c| {
        boxed(async move {
          match c {
            ConnRef::Pg(c) => lock_row(c, &k, exp.as_deref()).await,
            ConnRef::Lite(c) => {
              let found = lite::select_key(c, &k)
                .await?
                .ok_or_else(|| Error::not_found(&k))?;
              check_expected(found, &k, exp.as_deref())
            }
          }
        })
      })
      .await;
    let locked = match locked {
      Ok(k) => k,
      Err(e) => {
        let _ = parent
          .with_conn(|c| {
            boxed(savepoint(
              c,
              "ROLLBACK TO SAVEPOINT medusa_idempotency_stage",
            ))
          })
          .await;
        return Err(StageError::Core(e));
      }
    };
    let outcome = self.run_callback(parent, key, &mut callback).await;
    let failed_inside = parent.failure().is_some() && before.is_none();
    let result = match outcome {
      Ok(r) if !failed_inside => {
        let id = locked.id.clone();
        parent
          .with_conn(move |mut c| {
            boxed(async move {
              let updated = apply_any(reborrow(&mut c), &id, r).await?;
              savepoint(c, "RELEASE SAVEPOINT medusa_idempotency_stage").await?;
              Ok(updated)
            })
          })
          .await
          .map_err(StageError::Core)
      }
      Ok(_) => Err(StageError::Core(caught(parent.failure().unwrap()))),
      Err(e) => Err(e),
    };
    if result.is_err() {
      let _ = parent
        .with_conn(|c| {
          boxed(savepoint(
            c,
            "ROLLBACK TO SAVEPOINT medusa_idempotency_stage",
          ))
        })
        .await;
      parent.set_failure(before);
      self.release_in_background(key.to_owned());
    }
    result
  }
}

fn reborrow<'a>(c: &'a mut ConnRef<'_>) -> ConnRef<'a> {
  match c {
    ConnRef::Pg(c) => ConnRef::Pg(c),
    ConnRef::Lite(c) => ConnRef::Lite(c),
  }
}

async fn savepoint(c: ConnRef<'_>, sql: &'static str) -> Result<()> {
  match c {
    ConnRef::Pg(c) => sqlx::query(sql).execute(c).await.map(|_| ()),
    ConnRef::Lite(c) => sqlx::query(sql).execute(c).await.map(|_| ()),
  }
  .map_err(Error::from)
}

fn boxed_unit(
  f: impl Future<Output = ()> + Send + 'static,
) -> futures_util::future::BoxFuture<'static, ()> {
  f.boxed()
}

async fn apply_any(c: ConnRef<'_>, id: &str, r: StageResult) -> Result<IdempotencyKey> {
  match c {
    ConnRef::Pg(c) => apply(c, id, r).await,
    ConnRef::Lite(c) => lite::apply(c, id, r).await,
  }
}

/// A found key: a different request is refused, a finished one replayed, else it is leased.
fn classify(found: IdempotencyKey, same_request: bool, key: &str) -> Result<IdempotencyKey> {
  if !same_request {
    return Err(Error::Reused(key.to_owned()));
  }
  if found.is_finished() {
    return Ok(found);
  }
  Err(Error::locked(key))
}

fn duplicate(e: Error, key: &str) -> Error {
  match e {
    Error::Database {
      sqlstate: Some(s), ..
    } if s == "23505" => Error::Database {
      sqlstate: Some(s),
      message: format!("Idempotency key {key} already exists"),
    },
    other => other,
  }
}

fn check_expected(
  current: IdempotencyKey,
  key: &str,
  expected: Option<&str>,
) -> Result<IdempotencyKey> {
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

/// The stage's row, locked without waiting; refused when another stage holds it, missing, or
/// already past the caller's recovery point.
async fn lock_row(
  c: &mut PgConnection,
  key: &str,
  expected: Option<&str>,
) -> Result<IdempotencyKey> {
  let row = match sqlx::query(LOCK_SQL)
    .bind(key)
    .fetch_optional(&mut *c)
    .await
  {
    Ok(r) => r,
    Err(e) => {
      let e = Error::from(e);
      return Err(if e.sqlstate() == Some("55P03") {
        Error::locked(key)
      } else {
        e
      });
    }
  };
  let current = IdempotencyKey::from_pg(&row.ok_or_else(|| Error::not_found(key))?)?;
  check_expected(current, key, expected)
}

async fn apply(c: &mut PgConnection, id: &str, r: StageResult) -> Result<IdempotencyKey> {
  let (set_code, code) = match r.response_code {
    Some(v) => (true, v),
    None => (false, None),
  };
  let (set_body, body) = match r.response_body {
    Some(v) => (true, v),
    None => (false, None),
  };
  let row = sqlx::query(APPLY_SQL)
    .bind(id)
    .bind(r.recovery_point)
    .bind(set_code)
    .bind(code)
    .bind(set_body)
    .bind(body.map(sqlx::types::Json))
    .fetch_one(&mut *c)
    .await?;
  IdempotencyKey::from_pg(&row)
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
  let base = 5u64 * (1 << attempt.min(5));
  let jitter = rand::random::<u64>() % (base + 1);
  tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
}

fn bind_column<'q>(
  q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
  col: &str,
  v: &'q UpdateValue,
) -> Result<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>> {
  let bad = || Error::invalid(format!("selector value for '{col}' has the wrong type"));
  Ok(match (col, v) {
    ("request_params" | "response_body", UpdateValue::Json(j)) => q.bind(sqlx::types::Json(j)),
    ("response_code", UpdateValue::Json(Value::Number(n))) => q.bind(
      n.as_i64()
        .and_then(|i| i32::try_from(i).ok())
        .ok_or_else(bad)?,
    ),
    ("response_code", UpdateValue::Json(Value::Array(items))) => q.bind(
      items
        .iter()
        .map(|i| i.as_i64().and_then(|i| i32::try_from(i).ok()))
        .collect::<Option<Vec<i32>>>()
        .ok_or_else(bad)?,
    ),
    ("created_at" | "locked_at", UpdateValue::Date(d)) => q.bind(*d),
    ("created_at" | "locked_at", _) => return Err(bad()),
    (_, UpdateValue::Json(Value::String(s))) => q.bind(s.as_str()),
    (_, UpdateValue::Json(Value::Array(items))) => q.bind(
      items
        .iter()
        .map(|i| i.as_str().map(str::to_owned))
        .collect::<Option<Vec<String>>>()
        .ok_or_else(bad)?,
    ),
    _ => return Err(bad()),
  })
}
