//! Medusa's `IdempotencyKeyService`: the orchestration of every method over three kinds of
//! connection — our PostgreSQL pool, our SQLite pool, or a caller's transaction (a stage
//! handle of ours, or a JS executor such as TypeORM's `EntityManager`). The statements live
//! in `pgsql` (PostgreSQL, both native and through a caller's executor) and `lite` (SQLite);
//! this module decides which runs where, owns stage transactions, retries and leases.

use crate::error::{Error, Result};
use crate::key::{
  validate_key, Claim, Fingerprint, IdempotencyKey, KeyUpdate, UpdateValue, FINISHED,
};
use crate::lite;
use crate::pgpool::{PgPool, PoolConfig};
use crate::pgsql::{self, Exec, Shared, SharedExec};
use crate::stage::{ConnRef, StageTx, TxConn};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
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
  /// PostgreSQL: one connection attempt (TCP, TLS, authentication); `None`: the URL's
  /// `connect_timeout` (seconds, as libpq reads it), else `acquire_timeout`.
  pub connect_timeout: Option<Duration>,
  /// PostgreSQL: a connection older than this is closed instead of reused; `None` keeps it.
  pub max_lifetime: Option<Duration>,
  /// PostgreSQL: a connection unused for this long is closed, so an idle pool shrinks.
  pub idle_timeout: Option<Duration>,
  /// PostgreSQL: keep statements prepared on the server across transactions (direct
  /// connections and session pooling only); the default is pooler-safe.
  pub prepared_statements: bool,
  /// PostgreSQL: TLS given in code, overriding the URL's `sslmode`.
  pub ssl: Option<Ssl>,
}

/// TLS for PostgreSQL, as node-postgres' `ssl` option takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ssl {
  /// Off: a plain connection (`sslmode=disable`).
  pub disable: bool,
  /// PEM certificates to trust instead of the bundled web roots.
  pub ca: Option<String>,
  /// PEM client certificate and key.
  pub cert: Option<String>,
  pub key: Option<String>,
  /// Verify the chain and the host name (`verify-full`, the default); false encrypts without
  /// verifying (`require`).
  pub verify: bool,
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
      connect_timeout: None,
      // sqlx's pool defaults: connections live 30 min, idle ones go after 10 min.
      max_lifetime: Some(Duration::from_secs(30 * 60)),
      idle_timeout: Some(Duration::from_secs(10 * 60)),
      prepared_statements: false,
      ssl: None,
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

impl StageResult {
  /// As Medusa applies it: with a recovery point the response fields are ignored (and never
  /// sent to the database).
  fn normalized(self) -> Self {
    if self.recovery_point.is_some() {
      StageResult {
        recovery_point: self.recovery_point,
        response_code: None,
        response_body: None,
      }
    } else {
      self
    }
  }
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

/// Where a method runs: on the service's own connections, inside one of our stage
/// transactions, or through a caller's executor (bound mode).
#[derive(Clone, Copy)]
pub enum Target<'a> {
  Pool,
  Tx(&'a StageTx),
  Exec(&'a dyn SharedExec),
}

/// sqlx's options from the URL (which reads libpq's `sslmode`, `sslrootcert`, `sslcert`,
/// `sslkey`), with TLS given in code applied over them. No startup parameter beyond the ones
/// a transaction-mode pooler passes through (PgBouncer refuses `options` and
/// `extra_float_digits` unless told to ignore them).
fn pg_connect_options(url: &str, ssl: Option<&Ssl>) -> Result<PgConnectOptions> {
  use sqlx::postgres::PgSslMode;
  let mut o = PgConnectOptions::from_str(url)
    .map_err(|_| Error::invalid("invalid PostgreSQL connection URL"))?
    .extra_float_digits(None);
  // sqlx reads these files at connect time and reports a missing one as a bare "entity not
  // found"; name it here (a path, never a credential).
  for name in ["sslrootcert", "sslcert", "sslkey"] {
    if let Some(path) = url_param(url, name) {
      let path = percent_decode(path);
      if !std::path::Path::new(&path).is_file() {
        return Err(Error::invalid(format!("{name} file not found: {path}")));
      }
    }
  }
  if let Some(ssl) = ssl {
    o = if ssl.disable {
      o.ssl_mode(PgSslMode::Disable)
    } else {
      o.ssl_mode(if ssl.verify {
        PgSslMode::VerifyFull
      } else {
        PgSslMode::Require
      })
    };
    if let Some(ca) = &ssl.ca {
      o = o.ssl_root_cert_from_pem(ca.as_bytes().to_vec());
    }
    if let Some(cert) = &ssl.cert {
      o = o.ssl_client_cert_from_pem(cert.as_bytes());
    }
    if let Some(key) = &ssl.key {
      o = o.ssl_client_key_from_pem(key.as_bytes());
    }
  }
  Ok(o)
}

/// libpq's `connect_timeout` (whole seconds; 0 or less waits forever, which we leave to the
/// other bounds; 1 is taken as 2, as libpq does).
fn url_connect_timeout(url: &str) -> Option<Duration> {
  let secs: u64 = url_param(url, "connect_timeout")?
    .trim()
    .parse()
    .ok()
    .filter(|s| *s > 0)?;
  Some(Duration::from_secs(secs.max(2)))
}

/// `%2F` → `/` and the like (an invalid escape stays as it is).
fn percent_decode(s: &str) -> String {
  let b = s.as_bytes();
  let mut out = Vec::with_capacity(b.len());
  let mut i = 0;
  while i < b.len() {
    let hex = b
      .get(i + 1..i + 3)
      .and_then(|h| std::str::from_utf8(h).ok())
      .and_then(|h| u8::from_str_radix(h, 16).ok());
    match (b[i], hex) {
      (b'%', Some(x)) => {
        out.push(x);
        i += 3;
      }
      (b'+', _) => {
        out.push(b' ');
        i += 1;
      }
      (c, _) => {
        out.push(c);
        i += 1;
      }
    }
  }
  String::from_utf8_lossy(&out).into_owned()
}

/// A query parameter of a connection URL, as given (not percent-decoded).
fn url_param<'u>(url: &'u str, name: &str) -> Option<&'u str> {
  url
    .split_once('?')?
    .1
    .split('&')
    .filter_map(|kv| kv.split_once('='))
    .find(|(k, _)| *k == name)
    .map(|(_, v)| v)
}

/// PostgreSQL's own default `max_connections` is 100; a pool far beyond that is a mistake.
const MAX_CONNECTIONS: u32 = 1000;

pub struct Service {
  backend: Backend,
  opts: Options,
  /// Set by `for_tenant`: this copy sees only the tenant's keys, stored as `<tenant>/<key>`.
  tenant: Option<Arc<str>>,
}

#[derive(Clone)]
enum Backend {
  Pg(PgPool),
  Lite {
    pool: SqlitePool,
    file: Arc<lite::FileState>,
  },
  /// No pool of our own: everything runs through callers' executors; unbound statements (the
  /// lease release after a failed stage) through this one, in autocommit.
  Detached(Arc<dyn SharedExec>),
}

/// Removes a key from the working set when its SQLite stage ends, however it ends.
struct Working(Arc<lite::FileState>, String);

impl Drop for Working {
  fn drop(&mut self) {
    self.0.working.lock().unwrap().remove(&self.1);
  }
}

/// One operation's connection, by dialect.
enum Dialect<'c> {
  Pg(&'c mut dyn Exec),
  Lite(&'c mut sqlx::SqliteConnection),
}

/// A connection held for one operation.
enum Held<'a> {
  Pg(crate::pgpool::Lease),
  Lite(PoolConnection<sqlx::Sqlite>),
  Shared(Shared<'a>),
  Tx(tokio::sync::MappedMutexGuard<'a, TxConn>),
}

impl Held<'_> {
  fn dialect(&mut self) -> Dialect<'_> {
    match self {
      Held::Pg(lease) => Dialect::Pg(lease),
      Held::Lite(c) => Dialect::Lite(c),
      Held::Shared(s) => Dialect::Pg(s),
      Held::Tx(t) => match t.conn() {
        ConnRef::Pg(c) => Dialect::Pg(c),
        ConnRef::Lite(c) => Dialect::Lite(c),
      },
    }
  }
}

fn boxed<'c, T: 'c>(f: impl Future<Output = Result<T>> + Send + 'c) -> BoxFuture<'c, Result<T>> {
  f.boxed()
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
    let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
      let connect = pg_connect_options(url, opts.ssl.as_ref())?;
      let cfg = PoolConfig {
        size: opts.max_connections,
        acquire_timeout: opts.acquire_timeout,
        connect_timeout: opts
          .connect_timeout
          .or_else(|| url_connect_timeout(url))
          .unwrap_or(opts.acquire_timeout),
        max_lifetime: opts.max_lifetime,
        idle_timeout: opts.idle_timeout,
        prepared: opts.prepared_statements,
      };
      Backend::Pg(PgPool::connect(connect, cfg).await?)
    } else if url.starts_with("sqlite:") {
      let memory = url.contains(":memory:") || url.contains("mode=memory");
      let connect = SqliteConnectOptions::from_str(url)
        .map_err(|_| Error::invalid("invalid SQLite URL"))?
        .create_if_missing(true)
        // SQLite takes the busy timeout as an int of ms (sqlx panics beyond): 24.8 days
        // is as good as forever for a larger value.
        .busy_timeout(
          opts
            .busy_timeout
            .min(Duration::from_millis(i32::MAX as u64)),
        )
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
      Backend::Lite {
        pool,
        file: lite::FileState::for_path(path),
      }
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
      backend: Backend::Detached(release),
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

  /// "postgres" or "sqlite".
  pub fn backend_name(&self) -> &'static str {
    match self.backend {
      Backend::Pg(_) | Backend::Detached(_) => "postgres",
      Backend::Lite { .. } => "sqlite",
    }
  }

  pub async fn close(&self) {
    match &self.backend {
      Backend::Pg(p) => p.close().await,
      Backend::Lite { pool, .. } => pool.close().await,
      Backend::Detached(_) => {}
    }
  }

  fn lite_working(&self, key: &str) -> bool {
    match &self.backend {
      Backend::Lite { file, .. } => file.working.lock().unwrap().contains(key),
      _ => false,
    }
  }

  /// The connection `target` names, held for one operation.
  async fn acquire<'a>(&'a self, target: Target<'a>) -> Result<Held<'a>> {
    Ok(match (target, &self.backend) {
      (Target::Exec(ex), _) => Held::Shared(Shared(ex)),
      (Target::Tx(tx), _) => Held::Tx(tx.conn().await?),
      (Target::Pool, Backend::Pg(pool)) => {
        let mut lease = pool.acquire().await?;
        lease.done();
        Held::Pg(lease)
      }
      (Target::Pool, Backend::Lite { pool, .. }) => Held::Lite(pool.acquire().await?),
      (Target::Pool, Backend::Detached(ex)) => Held::Shared(Shared(ex.as_ref())),
    })
  }

  /// Create Medusa's table when missing; a no-op on a Medusa database and when run twice.
  pub async fn migrate(&self) -> Result<()> {
    match &self.backend {
      Backend::Pg(pool) => {
        let mut lease = pool.acquire().await?;
        // Serialise concurrent migrations (two processes starting at once would otherwise
        // race on CREATE TABLE IF NOT EXISTS and fail with 23505 on pg_type).
        let mut script = String::from("BEGIN; SELECT pg_advisory_xact_lock(8245017791);\n");
        for (_, sql) in crate::MIGRATIONS_POSTGRES {
          script += sql;
          script += "\n";
        }
        // Simple protocol: a migration file may hold several statements.
        let ran = sqlx::Executor::execute(lease.raw(), script.as_str()).await;
        match ran {
          Ok(_) => lease.commit().await?,
          Err(e) => {
            lease.rollback().await;
            return Err(e.into());
          }
        }
      }
      Backend::Lite { pool, .. } => {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for (_, sql) in crate::MIGRATIONS_SQLITE {
          sqlx::Executor::execute(&mut *tx, *sql).await?;
        }
        tx.commit().await?;
      }
      Backend::Detached(_) => {
        return Err(Error::invalid(
          "run migrate() on a connected service, or Medusa's migrations",
        ))
      }
    }
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
    let shown = key;
    let key = self.db_key(&shown);
    let lease_ms = self.opts.lock_timeout.as_millis() as f64;
    let id = crate::key::new_id();
    // A key a stage of this process is working (SQLite) is leased whatever `locked_at` says.
    let may_claim = !self.lite_working(&key);
    let in_tx = matches!(target, Target::Tx(_) | Target::Exec(_));
    let claim = {
      let mut held = self.acquire(target).await?;
      match held.dialect() {
        Dialect::Pg(ex) => pgsql::initialize(ex, &id, &key, &fp, lease_ms, in_tx).await,
        Dialect::Lite(c) => lite::insert_or_claim(c, &id, &key, &fp, lease_ms, may_claim).await,
      }
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
    let id = crate::key::new_id();
    let stored = self.db_key(&key);
    {
      let mut held = self.acquire(target).await?;
      match held.dialect() {
        Dialect::Pg(ex) => pgsql::create(ex, &id, &stored, &fp, recovery_point).await,
        Dialect::Lite(c) => lite::create(c, &id, &stored, &fp, recovery_point).await,
      }
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
      let col = crate::key::COLUMNS
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
      match held.dialect() {
        Dialect::Pg(ex) => pgsql::select_by(ex, &checked, prefix).await,
        Dialect::Lite(c) => lite::select_by(c, &checked, prefix).await,
      }
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
      let (won, exists) = match held.dialect() {
        Dialect::Pg(ex) => match pgsql::lock(ex, &stored, lease_ms).await? {
          Some(k) => (Some(k), true),
          None => (None, pgsql::select_key(ex, &stored).await?.is_some()),
        },
        Dialect::Lite(c) => match lite::lock(c, &stored, lease_ms).await? {
          Some(k) => (Some(k), true),
          None => (None, lite::select_key(c, &stored).await?.is_some()),
        },
      };
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
      match held.dialect() {
        Dialect::Pg(ex) => pgsql::update(ex, &stored, u).await,
        Dialect::Lite(c) => lite::update(c, &stored, u).await,
      }
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
      let working: Vec<String> = match &self.backend {
        Backend::Lite { file, .. } => file.working.lock().unwrap().iter().cloned().collect(),
        _ => Vec::new(),
      };
      let removed = {
        let mut held = self.acquire(target).await?;
        match held.dialect() {
          Dialect::Pg(ex) => pgsql::reap_batch(ex, older_ms, batch, lease_ms, prefix).await?,
          Dialect::Lite(c) => {
            lite::reap_batch(c, older_ms, batch, lease_ms, &working, prefix).await?
          }
        }
      };
      total += removed;
      if removed < batch as u64 {
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
    let keys = match held.dialect() {
      Dialect::Pg(ex) => pgsql::abandoned(ex, idle_ms, limit, prefix).await,
      Dialect::Lite(c) => lite::abandoned(c, idle_ms, limit, prefix).await,
    }?;
    Ok(keys.into_iter().map(|k| self.shown(k)).collect())
  }

  /// Release the lease of a key whose stage failed after its callback ran, on our own
  /// connections (never the caller's transaction, which may still hold the row lock).
  fn release_task(&self, key: String) -> BoxFuture<'static, ()> {
    match &self.backend {
      Backend::Pg(pool) => {
        let pool = pool.clone();
        async move {
          if let Ok(mut lease) = pool.acquire().await {
            let _ = pgsql::release(&mut lease, &key).await;
          }
        }
        .boxed()
      }
      Backend::Lite { pool, .. } => {
        let pool = pool.clone();
        async move {
          let _ = sqlx::query(lite::RELEASE_SQL)
            .bind(key)
            .execute(&pool)
            .await;
        }
        .boxed()
      }
      Backend::Detached(ex) => {
        let ex = ex.clone();
        async move {
          let _ = pgsql::release(&mut Shared(ex.as_ref()), &key).await;
        }
        .boxed()
      }
    }
  }

  /// Open a stage transaction with the key's row claimed for this stage. On SQLite the write
  /// lock is taken up front and a key another stage of this process is working is refused
  /// at once, like `FOR UPDATE NOWAIT` on PostgreSQL.
  async fn begin_stage(
    &self,
    key: &str,
    expected: Option<&str>,
  ) -> Result<(TxConn, IdempotencyKey, Option<Working>)> {
    match &self.backend {
      Backend::Pg(pool) => {
        let mut lease = pool.acquire().await?;
        let found = match lease
          .begin_and_lock(self.opts.isolation.begin_sql(), key)
          .await
        {
          Ok(rows) => pgsql::first(rows),
          Err(e) => Err(self.busy_is_locked(key, e)),
        };
        match found.and_then(|k| check_expected(k, self.client_key(key), expected)) {
          Ok(k) => Ok((TxConn::Pg(lease), k, None)),
          Err(e) => {
            // begin_and_lock rolled back on its own failures; a stale key is still open.
            lease.rollback().await;
            Err(e)
          }
        }
      }
      Backend::Lite { pool, file } => {
        if !file.working.lock().unwrap().insert(key.to_owned()) {
          return Err(Error::locked(self.client_key(key)));
        }
        let guard = Working(file.clone(), key.to_owned());
        let gate = tokio::time::timeout(self.opts.busy_timeout, file.writer.lock())
          .await
          .map_err(|_| Error::Busy)?;
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        drop(gate); // SQLite's own write lock now serialises writers.
        let found = lite::select_key(&mut tx, key).await;
        match found.and_then(|k| check_expected(k, self.client_key(key), expected)) {
          Ok(k) => Ok((TxConn::Lite(None, tx), k, Some(guard))),
          Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
          }
        }
      }
      Backend::Detached(_) => Err(Error::invalid(
        "this service has no connection of its own: call withTransaction(manager) first",
      )),
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
      let Some(tx) = stx.take().await else {
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
        Ok(r) => match tx.apply_and_commit(&locked.id, r).await {
          Ok(updated) => return Ok(self.shown(updated)),
          Err(e) => Err(StageError::Core(e)),
        },
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
      self.release_task(key.to_owned()).await;
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
      let running = stx.settle().await;
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
          ms: limit.as_millis() as u64,
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
    parent.with_conn(|c| boxed(plain(c, SAVEPOINT))).await?;
    let locked = {
      let mut held = self.acquire(Target::Tx(parent)).await?;
      match held.dialect() {
        Dialect::Pg(ex) => pgsql::lock_row(ex, key).await,
        Dialect::Lite(c) => lite::select_key(c, key).await,
      }
    }
    .map_err(|e| self.busy_is_locked(key, e))
    .and_then(|k| check_expected(k, self.client_key(key), expected));
    let locked = match locked {
      Ok(k) => k,
      Err(e) => {
        let _ = parent.with_conn(|c| boxed(plain(c, ROLLBACK_TO))).await;
        return Err(StageError::Core(e));
      }
    };
    let outcome = self.run_callback(parent, key, callback).await;
    let failed_inside = parent.failure().is_some() && before.is_none();
    let result = match outcome {
      Ok(r) if !failed_inside => parent
        .with_conn(|mut c| {
          boxed(async move {
            let updated = apply(reborrow(&mut c), &locked.id, r).await?;
            plain(c, RELEASE).await?;
            Ok(updated)
          })
        })
        .await
        .map_err(StageError::Core),
      Ok(_) => Err(StageError::Core(caught(parent.failure().unwrap()))),
      Err(e) => Err(e),
    };
    if result.is_err() {
      let _ = parent.with_conn(|c| boxed(plain(c, ROLLBACK_TO))).await;
      parent.set_failure(before);
      tokio::spawn(self.release_task(key.to_owned()));
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
    let mut conn = Shared(ex);
    let locked = pgsql::lock_row(&mut conn, key)
      .await
      .map_err(|e| self.busy_is_locked(key, e))
      .and_then(|k| check_expected(k, self.client_key(key), expected))
      .map_err(StageError::Core)?;
    let outcome = self.within_stage_timeout(key, callback()).await;
    let result = match outcome {
      Ok(r) => pgsql::apply(&mut conn, &locked.id, r)
        .await
        .map_err(StageError::Core),
      Err(e) => Err(e),
    };
    if result.is_err() {
      tokio::spawn(self.release_task(key.to_owned()));
    }
    result.map(|k| self.shown(k))
  }
}

fn reborrow<'a>(c: &'a mut ConnRef<'_>) -> ConnRef<'a> {
  match c {
    ConnRef::Pg(c) => ConnRef::Pg(c),
    ConnRef::Lite(c) => ConnRef::Lite(c),
  }
}

/// A statement without parameters or rows (savepoints).
async fn plain(c: ConnRef<'_>, sql: &'static str) -> Result<()> {
  match c {
    // The simple protocol: no statement is prepared on the server.
    ConnRef::Pg(c) => c.plain(sql).await,
    ConnRef::Lite(c) => sqlx::query(sql)
      .execute(c)
      .await
      .map(|_| ())
      .map_err(Error::from),
  }
}

async fn apply(c: ConnRef<'_>, id: &str, r: StageResult) -> Result<IdempotencyKey> {
  match c {
    ConnRef::Pg(c) => pgsql::apply(c, id, r).await,
    ConnRef::Lite(c) => lite::apply(c, id, r).await,
  }
}

/// A selector value must be of its column's type (or an array of them, meaning IN).
fn check_selector_value(col: &str, value: &UpdateValue) -> Result<()> {
  let cast = pgsql::column_cast(col).unwrap_or("varchar");
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
  let base = 5u64 * (1 << attempt.min(5));
  let jitter = rand::random::<u64>() % (base + 1);
  tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
}
