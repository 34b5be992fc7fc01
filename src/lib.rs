//! The Node binding: argument conversion, error mapping and the `#[napi]` classes. All logic
//! and SQL live in `idempotency-core`; this crate only moves values across the boundary and
//! bridges the stage callback (a JS async function) into the core's Rust-owned transaction.

#![deny(clippy::all)]

mod executor;
mod js;

use executor::JsExecutor;
use futures_util::FutureExt;
use idempotency_core::{
  Error, Fingerprint, IdempotencyKey, Isolation, KeyUpdate, Options, Param, QueryResult, Service,
  Ssl, StageError, StageResult, StageTx, Target,
};
use js::JsResult;
use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

type Raw = sys::napi_value;

/// Panics inside our async work are caught and become typed `INTERNAL_ERROR` rejections; keep
/// the default hook from also printing them to the host server's stderr. Panics elsewhere (the
/// JS thread, other addons' threads) still reach the previous hook.
#[napi_derive::module_init]
fn quiet_caught_panics() {
  let previous = std::panic::take_hook();
  std::panic::set_hook(Box::new(move |info| {
    if std::thread::current().name() != Some("tokio-rt-worker") {
      previous(info);
    }
  }));
}

/// A value on its way to JS: the result, or a core error that becomes a typed JS `Error`.
pub struct Reply<T>(JsResult<T>);

pub trait IntoJs {
  /// # Safety
  /// `env` must be the live environment of the JS thread this is called on.
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw>;
}

impl IntoJs for IdempotencyKey {
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw> {
    js::key_to_js(env, &self)
  }
}

impl IntoJs for u64 {
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw> {
    ToNapiValue::to_napi_value(env, self as f64)
  }
}

impl IntoJs for Vec<IdempotencyKey> {
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw> {
    let mut arr = std::ptr::null_mut();
    sys::napi_create_array_with_length(env, self.len(), &mut arr);
    for (i, k) in self.iter().enumerate() {
      sys::napi_set_element(env, arr, i as u32, js::key_to_js(env, k)?);
    }
    Ok(arr)
  }
}

impl IntoJs for QueryResult {
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw> {
    js::rows_to_js(env, &self)
  }
}

impl IntoJs for () {
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw> {
    let mut v = std::ptr::null_mut();
    sys::napi_get_undefined(env, &mut v);
    Ok(v)
  }
}

impl IntoJs for IdempotencyKeyService {
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw> {
    ToNapiValue::to_napi_value(env, self)
  }
}

/// Reject with a typed JS error built on the JS thread (napi reuses the object as is).
unsafe fn reject(env: sys::napi_env, e: &Error) -> napi::Error {
  match js::error_to_js(env, e) {
    Ok(raw) => match Unknown::from_napi_value(env, raw) {
      Ok(u) => napi::Error::from(u),
      Err(x) => x,
    },
    Err(x) => x,
  }
}

impl<T: IntoJs> ToNapiValue for Reply<T> {
  unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<Raw> {
    match val.0 {
      Ok(v) => v.into_js(env),
      Err(e) => Err(reject(env, &e)),
    }
  }
}

impl<T> TypeName for Reply<T> {
  fn type_name() -> &'static str {
    "Reply"
  }
  fn value_type() -> ValueType {
    ValueType::Unknown
  }
}

/// A raw JS value returned as is.
pub struct RawValue(Raw);

impl ToNapiValue for RawValue {
  unsafe fn to_napi_value(_: sys::napi_env, val: Self) -> Result<Raw> {
    Ok(val.0)
  }
}

/// Start a future whose core errors reject as typed JS errors. A panic (a bug) becomes a typed
/// `INTERNAL_ERROR` rejection instead of napi's untyped one.
fn spawn<'env, T: IntoJs + Send + 'static>(
  env: &'env Env,
  fut: impl std::future::Future<Output = JsResult<T>> + Send + 'static,
) -> Result<PromiseRaw<'env, Reply<T>>> {
  env.spawn_future(async move {
    let caught = AssertUnwindSafe(fut).catch_unwind().await;
    Ok(Reply(caught.unwrap_or_else(|p| Err(Error::from_panic(p)))))
  })
}

/// Bad arguments reject (never throw synchronously) like any other failure of an async method.
fn rejected<'env, T: IntoJs + Send + 'static>(
  env: &'env Env,
  e: Error,
) -> Result<PromiseRaw<'env, Reply<T>>> {
  spawn(env, async move { Err(e) })
}

/// Runs an argument conversion; the closure gives `?` inside it a scope of its own.
fn convert<T>(f: impl FnOnce() -> JsResult<T>) -> JsResult<T> {
  f()
}

macro_rules! args {
  ($env:expr, $e:expr) => {
    match convert(|| unsafe { $e }) {
      Ok(v) => v,
      Err(e) => return rejected($env, e),
    }
  };
}

fn opt_u32(env: sys::napi_env, obj: Raw, name: &str) -> JsResult<Option<u32>> {
  unsafe {
    let v = js::get_property(env, obj, name, name)?;
    if js::is_nullish(env, v) {
      return Ok(None);
    }
    let n = f64::from_napi_value(env, v)
      .map_err(|_| Error::InvalidArgument(format!("{name} must be a number")))?;
    if !(n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= u32::MAX as f64) {
      return Err(Error::InvalidArgument(format!(
        "{name} must be a non-negative integer"
      )));
    }
    Ok(Some(n as u32))
  }
}

unsafe fn connect_options(env: sys::napi_env, arg: Raw) -> JsResult<Options> {
  match js::type_of(env, arg) {
    sys::ValueType::napi_string => Ok(Options::new(js::get_string(env, arg, "url")?)),
    sys::ValueType::napi_undefined | sys::ValueType::napi_null => default_url().map(Options::new),
    sys::ValueType::napi_object => {
      let url = js::get_property(env, arg, "url", "url")?;
      let url = if js::is_nullish(env, url) {
        default_url()?
      } else {
        js::get_string(env, url, "url")?
      };
      connect_options_object(env, arg, url)
    }
    _ => Err(Error::InvalidArgument(
      "connect() takes a connection URL or an options object".into(),
    )),
  }
}

/// The tuning fields of {@link ConnectOptions}.
unsafe fn connect_options_object(env: sys::napi_env, arg: Raw, url: String) -> JsResult<Options> {
  let mut o = Options::new(url);
  if let Some(n) = opt_u32(env, arg, "maxConnections")? {
    o.max_connections = n;
  }
  let iso = js::get_property(env, arg, "isolationLevel", "isolationLevel")?;
  if !js::is_nullish(env, iso) {
    o.isolation = Isolation::parse(&js::get_string(env, iso, "isolationLevel")?)?;
  }
  if let Some(n) = opt_u32(env, arg, "maxRetries")? {
    o.max_retries = n;
  }
  // Durations in ms; `Some(None)` is 0 where 0 means "never".
  let ms = |name: &str| -> JsResult<Option<Duration>> {
    Ok(opt_u32(env, arg, name)?.map(|n| Duration::from_millis(u64::from(n))))
  };
  let ms_or_never = |name: &str| -> JsResult<Option<Option<Duration>>> {
    Ok(ms(name)?.map(|d| (!d.is_zero()).then_some(d)))
  };
  if let Some(d) = ms("lockTimeoutMs")? {
    o.lock_timeout = d;
  }
  if let Some(d) = ms("acquireTimeoutMs")? {
    o.acquire_timeout = d;
  }
  if let Some(d) = ms("busyTimeoutMs")? {
    o.busy_timeout = d;
  }
  if let Some(d) = ms("connectTimeoutMs")? {
    o.connect_timeout = Some(d);
  }
  if let Some(d) = ms_or_never("stageTimeoutMs")? {
    o.stage_timeout = d;
  }
  if let Some(d) = ms_or_never("maxLifetimeMs")? {
    o.max_lifetime = d;
  }
  if let Some(d) = ms_or_never("idleTimeoutMs")? {
    o.idle_timeout = d;
  }
  if let Some(b) = js::opt_bool(env, arg, "preparedStatements")? {
    o.prepared_statements = b;
  }
  o.ssl = ssl_option(env, arg)?;
  Ok(o)
}

/// `ssl`: `true` (verify against the bundled web roots), `false` (plain), or
/// `{ ca, cert, key, rejectUnauthorized }` as node-postgres takes it.
unsafe fn ssl_option(env: sys::napi_env, arg: Raw) -> JsResult<Option<Ssl>> {
  let v = js::get_property(env, arg, "ssl", "ssl")?;
  if js::is_nullish(env, v) {
    return Ok(None);
  }
  match js::type_of(env, v) {
    sys::ValueType::napi_boolean => Ok(Some(Ssl {
      disable: js::opt_bool(env, arg, "ssl")? == Some(false),
      verify: true,
      ..Ssl::default()
    })),
    sys::ValueType::napi_object => Ok(Some(Ssl {
      disable: false,
      ca: js::opt_string(env, v, "ca")?,
      cert: js::opt_string(env, v, "cert")?,
      key: js::opt_string(env, v, "key")?,
      verify: js::opt_bool(env, v, "rejectUnauthorized")?.unwrap_or(true),
    })),
    _ => Err(Error::InvalidArgument(
      "ssl must be a boolean or an object { ca, cert, key, rejectUnauthorized }".into(),
    )),
  }
}

/// How long `reap()` keeps keys by default: 24 h, as Stripe does.
const DEFAULT_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

/// The embedded default when neither a URL nor `DATABASE_URL` is given.
const EMBEDDED_URL: &str = "sqlite://./idempotency.db";

fn default_url() -> JsResult<String> {
  Ok(std::env::var("DATABASE_URL").unwrap_or_else(|_| EMBEDDED_URL.to_owned()))
}

/// Options for {@link IdempotencyKeyService.connect}.
#[napi(object)]
pub struct ConnectOptions {
  /// `postgres://user@host:port/db`, `sqlite://./file.db` or `sqlite::memory:`. Defaults to
  /// `DATABASE_URL`, else the embedded SQLite file `./idempotency.db`.
  pub url: Option<String>,
  /// Pool size (default 10; always 1 for `sqlite::memory:`).
  pub max_connections: Option<u32>,
  /// Isolation of native stages: `"SERIALIZABLE"` (default), `"REPEATABLE READ"` or `"READ COMMITTED"`.
  pub isolation_level: Option<String>,
  /// How long a request lease and `lock()` hold without progress, in ms (default 1000, Medusa's `KEY_LOCKED_TIMEOUT`).
  pub lock_timeout_ms: Option<u32>,
  /// Re-runs of a stage after a serialization failure or deadlock (40001 / 40P01 / 53200); default 3.
  pub max_retries: Option<u32>,
  /// A stage whose callback has not settled by then is rolled back with `STAGE_TIMEOUT`; default 60000, 0 disables.
  pub stage_timeout_ms: Option<u32>,
  /// How long a call waits for a pooled connection before `POOL_TIMEOUT`, in ms (default 10000).
  pub acquire_timeout_ms: Option<u32>,
  /// SQLite: how long a writer waits for the write lock before `DATABASE_BUSY`, in ms (default 5000).
  pub busy_timeout_ms: Option<u32>,
  /// PostgreSQL: one connection attempt (TCP, TLS, authentication) fails with `CONNECTION_FAILED` after this many ms (default: the URL's `connect_timeout`, else `acquireTimeoutMs`).
  pub connect_timeout_ms: Option<u32>,
  /// PostgreSQL: connections older than this many ms are replaced (default 1800000, 30 min; 0 keeps them).
  pub max_lifetime_ms: Option<u32>,
  /// PostgreSQL: connections unused for this many ms are closed, so an idle pool shrinks (default 600000, 10 min; 0 keeps them).
  pub idle_timeout_ms: Option<u32>,
  /// PostgreSQL: keep statements prepared on the server across transactions (default false: pooler-safe, correct behind PgBouncer in transaction mode). Only for direct connections or session pooling.
  pub prepared_statements: Option<bool>,
  /// PostgreSQL TLS, overriding the URL's `sslmode`: `true` (verify-full against the bundled web roots), `false` (plain), or `{ ca, cert, key, rejectUnauthorized }` with PEM strings (`rejectUnauthorized: false` encrypts without verifying).
  #[napi(ts_type = "boolean | SslOptions")]
  pub ssl: Option<Unknown<'static>>,
}

/// TLS given in code (node-postgres' `ssl` object): PEM strings, e.g. your provider's CA bundle.
#[napi(object)]
pub struct SslOptions {
  /// PEM certificate(s) to trust instead of the bundled web roots.
  pub ca: Option<String>,
  /// PEM client certificate.
  pub cert: Option<String>,
  /// PEM client key.
  pub key: Option<String>,
  /// Verify the certificate chain and the host name (default true); false encrypts without verifying, like `sslmode=require`.
  pub reject_unauthorized: Option<bool>,
}

/// Anything that runs SQL in the caller's transaction: a TypeORM `EntityManager`, a
/// node-postgres `Client`/`PoolClient`, or a `TransactionManager`.
#[napi(object)]
pub struct QueryExecutor {
  #[napi(ts_type = "(sql: string, params?: unknown[]) => Promise<unknown>")]
  pub query: Unknown<'static>,
}

/// Optional third argument of `workStage`.
#[napi(object)]
pub struct WorkStageOptions {
  /// The recovery point the caller read; a key that has moved elsewhere fails with `IDEMPOTENCY_KEY_STALE` before the callback runs.
  pub recovery_point: Option<String>,
}

/// A row of Medusa's `idempotency_key` table, every field present.
#[napi(object, js_name = "IdempotencyKey")]
pub struct IdempotencyKeyObject {
  pub id: String,
  #[napi(js_name = "idempotency_key")]
  pub idempotency_key: String,
  #[napi(js_name = "created_at", ts_type = "Date")]
  pub created_at: String,
  #[napi(js_name = "locked_at", ts_type = "Date | null")]
  pub locked_at: Null,
  #[napi(js_name = "request_method", ts_type = "string | null")]
  pub request_method: Null,
  #[napi(js_name = "request_params", ts_type = "any")]
  pub request_params: Null,
  #[napi(js_name = "request_path", ts_type = "string | null")]
  pub request_path: Null,
  #[napi(js_name = "response_code", ts_type = "number | null")]
  pub response_code: Null,
  #[napi(js_name = "response_body", ts_type = "any")]
  pub response_body: Null,
  #[napi(js_name = "recovery_point")]
  pub recovery_point: String,
}

/// What a stage callback returns: a `recovery_point` to move to, or the response that finishes the key.
#[napi(object)]
pub struct StageReturnValue {
  #[napi(js_name = "recovery_point")]
  pub recovery_point: Option<String>,
  #[napi(js_name = "response_code")]
  pub response_code: Option<u32>,
  #[napi(js_name = "response_body", ts_type = "any")]
  pub response_body: Option<Null>,
}

/// Medusa's `IdempotencyKeyService`, backed by Rust and a connection pool.
#[napi]
pub struct IdempotencyKeyService {
  core: Arc<Service>,
  bound: Option<Bound>,
}

/// The caller's transaction a service copy is bound to.
#[derive(Clone)]
enum Bound {
  /// One of our stage handles (`withTransaction(tx)` inside a native stage).
  Tx(StageTx),
  /// A caller's executor: TypeORM `EntityManager`, node-postgres client…
  Exec(JsExecutor),
}

fn target(bound: &Option<Bound>) -> Target<'_> {
  match bound {
    None => Target::Pool,
    Some(Bound::Tx(tx)) => Target::Tx(tx),
    Some(Bound::Exec(ex)) => Target::Exec(ex),
  }
}

/// The transaction a `workStage` callback runs in. `query` has TypeORM's
/// `EntityManager.query` signature and returns rows as node-postgres would.
#[napi]
pub struct TransactionManager {
  tx: StageTx,
}

#[napi]
impl TransactionManager {
  /// Run one statement (`$1`, `$2`… placeholders) inside the stage's transaction and
  /// resolve to its rows. Parameters bind like node-postgres: strings are accepted for any
  /// type the server infers; Date, number, boolean, null, Buffer, arrays and plain objects
  /// (as JSON) too. A failed statement fails the whole stage, even if it is caught.
  #[napi(
    ts_args_type = "sql: string, params?: unknown[]",
    ts_return_type = "Promise<any[]>"
  )]
  pub fn query<'env>(
    &self,
    env: &'env Env,
    sql: Unknown,
    params: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<QueryResult>>> {
    let e = env.raw();
    let (sql, params) = args!(env, {
      let sql = js::get_string(e, sql.raw(), "sql")?;
      let p = params.raw();
      let params: Vec<Param> = if js::is_nullish(e, p) {
        Vec::new()
      } else {
        js::array_items(e, p, "params")?
          .into_iter()
          .map(|v| js::to_param(e, v, 0))
          .collect::<JsResult<_>>()?
      };
      Ok((sql, params))
    });
    // Counted now, on the JS thread, so the stage cannot settle around this query.
    let pending = self.tx.start_query();
    let tx = self.tx.clone();
    spawn(env, async move { tx.query(pending, &sql, &params).await })
  }

  /// False once the stage has committed or rolled back.
  #[napi(getter)]
  pub fn active(&self) -> bool {
    self.tx.is_active()
  }
}

/// The callback's result, read on the JS thread. Never fails to convert: a bad value is kept
/// as an `invalid_data` error so it is not mistaken for the callback's own rejection.
struct StageReturn(JsResult<StageResult>);

impl TypeName for StageReturn {
  fn type_name() -> &'static str {
    "StageReturnValue"
  }
  fn value_type() -> ValueType {
    ValueType::Unknown
  }
}

impl ValidateNapiValue for StageReturn {
  unsafe fn validate(_: sys::napi_env, _: Raw) -> Result<Raw> {
    Ok(std::ptr::null_mut())
  }
}

impl FromNapiValue for StageReturn {
  unsafe fn from_napi_value(env: sys::napi_env, v: Raw) -> Result<Self> {
    Ok(StageReturn(read_stage_return(env, v)))
  }
}

unsafe fn read_stage_return(env: sys::napi_env, v: Raw) -> JsResult<StageResult> {
  let bad = |m: &str| Error::InvalidArgument(m.into());
  if js::type_of(env, v) != sys::ValueType::napi_object {
    return Err(bad("the stage callback must return an object like { recovery_point } or { response_code, response_body }"));
  }
  let mut r = StageResult::default();
  let rp = js::get_property(env, v, "recovery_point", "recovery_point")?;
  match js::type_of(env, rp) {
    sys::ValueType::napi_undefined | sys::ValueType::napi_null => {}
    sys::ValueType::napi_string => {
      let s = js::get_string(env, rp, "recovery_point")?;
      if !s.is_empty() {
        r.recovery_point = Some(s);
      }
    }
    _ => return Err(bad("recovery_point must be a string")),
  }
  let code = js::get_property(env, v, "response_code", "response_code")?;
  if !js::is_undefined(env, code) {
    r.response_code = Some(if js::is_nullish(env, code) {
      None
    } else {
      let n = f64::from_napi_value(env, code).map_err(|_| bad("response_code must be a number"))?;
      if n.fract() != 0.0 || n < i32::MIN as f64 || n > i32::MAX as f64 {
        return Err(bad("response_code must be an integer"));
      }
      Some(n as i32)
    });
  }
  let body = js::get_property(env, v, "response_body", "response_body")?;
  if !js::is_undefined(env, body) {
    r.response_body = Some(js::to_json(env, body, "response_body")?.filter(|j| !j.is_null()));
  }
  Ok(r)
}

/// A stage callback of a service bound to a caller's executor: called with no handle of ours.
type BoundCallback =
  ThreadsafeFunction<(), Either<Promise<StageReturn>, StageReturn>, (), Status, false>;

/// Await what the callback returned (a promise or a plain value).
async fn settle(
  called: Result<Either<Promise<StageReturn>, StageReturn>>,
) -> std::result::Result<StageResult, StageError<napi::Error>> {
  let settled = match called {
    Ok(Either::A(promise)) => match promise.await {
      // napi's own error when the JS promise was garbage-collected without settling (its
      // then-handlers went with it): it can never settle, so wait for the stage timeout.
      Err(e) if e.reason == "oneshot canceled" => std::future::pending().await,
      other => other,
    },
    Ok(Either::B(value)) => Ok(value),
    Err(thrown) => Err(thrown),
  };
  match settled {
    Ok(StageReturn(r)) => r.map_err(StageError::Core),
    Err(thrown) => Err(StageError::Callback(thrown)),
  }
}

fn stage_reply(
  result: std::result::Result<IdempotencyKey, StageError<napi::Error>>,
) -> Result<Reply<IdempotencyKey>> {
  match result {
    Ok(k) => Ok(Reply(Ok(k))),
    Err(StageError::Core(err)) => Ok(Reply(Err(err))),
    // The callback's own error value, passed back untouched.
    Err(StageError::Callback(thrown)) => Err(thrown),
  }
}

type StageCallback = ThreadsafeFunction<
  TransactionManager,
  Either<Promise<StageReturn>, StageReturn>,
  TransactionManager,
  Status,
  false,
>;

unsafe fn fingerprint(
  env: sys::napi_env,
  method: Raw,
  params: Raw,
  path: Raw,
) -> JsResult<Fingerprint> {
  let opt_str = |v: Raw, what: &str| -> JsResult<Option<String>> {
    if js::is_nullish(env, v) {
      Ok(None)
    } else {
      js::get_string(env, v, what).map(Some)
    }
  };
  Ok(Fingerprint {
    method: opt_str(method, "reqMethod")?,
    params: js::to_json(env, params, "reqParams")?.filter(|j| !j.is_null()),
    path: opt_str(path, "reqPath")?,
  })
}

unsafe fn key_arg(env: sys::napi_env, v: Raw) -> JsResult<String> {
  js::get_string(env, v, "idempotencyKey")
}

unsafe fn fields(
  env: sys::napi_env,
  v: Raw,
  what: &str,
) -> JsResult<Vec<(String, idempotency_core::UpdateValue)>> {
  if js::type_of(env, v) != sys::ValueType::napi_object {
    return Err(Error::InvalidArgument(format!("{what} must be an object")));
  }
  let mut out = Vec::new();
  for (k, val) in js::own_keys(env, v, what)? {
    if let Some(u) = js::to_update_value(env, val, &k)? {
      out.push((k, u));
    }
  }
  Ok(out)
}

#[napi]
impl IdempotencyKeyService {
  /// Connect to PostgreSQL (`postgres://postgres@127.0.0.1:5432/app`) or SQLite
  /// (`sqlite://./idempotency.db`, `sqlite::memory:`). Takes a URL or {@link ConnectOptions};
  /// with neither, `DATABASE_URL`, else the embedded SQLite file `./idempotency.db`.
  /// Does not migrate: call `migrate()`.
  #[napi(
    ts_args_type = "urlOrOptions?: string | ConnectOptions",
    ts_return_type = "Promise<IdempotencyKeyService>"
  )]
  pub fn connect<'env>(
    env: &'env Env,
    arg: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKeyService>>> {
    let opts = args!(env, connect_options(env.raw(), arg.raw()));
    spawn(env, async move {
      let core = Service::connect(opts).await?;
      Ok(IdempotencyKeyService {
        core: Arc::new(core),
        bound: None,
      })
    })
  }

  /// Create Medusa's `idempotency_key` table (same columns, constraint and index names) if it
  /// is missing. A no-op on a Medusa database and when run twice.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn migrate<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, Reply<()>>> {
    let core = self.core.clone();
    spawn(env, async move { core.migrate().await })
  }

  /// Execute the initial step of an idempotent request: return the key (creating it with the
  /// client's value, or a fresh UUID when `headerKey` is empty) and claim it for this request.
  /// Fails with `IDEMPOTENCY_KEY_LOCKED` while another request holds an unfinished key, and
  /// `IDEMPOTENCY_KEY_REUSED` when the key was created for a different request. A finished key
  /// is returned to everyone (replay).
  #[napi(
    ts_args_type = "headerKey: string | undefined | null, reqMethod?: string | null, reqParams?: unknown, reqPath?: string | null",
    ts_return_type = "Promise<IdempotencyKey>"
  )]
  pub fn initialize_request<'env>(
    &self,
    env: &'env Env,
    header_key: Unknown,
    method: Unknown,
    params: Unknown,
    path: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let e = env.raw();
    let (key, fp) = args!(env, {
      let hk = header_key.raw();
      let key = if js::is_nullish(e, hk) {
        None
      } else {
        Some(js::get_string(e, hk, "headerKey")?)
      };
      Ok((key, fingerprint(e, method.raw(), params.raw(), path.raw())?))
    });
    let (core, bound) = (self.core.clone(), self.bound.clone());
    spawn(env, async move {
      let target = target(&bound);
      core.initialize_request(target, key.as_deref(), fp).await
    })
  }

  /// Create a key. `payload.idempotency_key` is used when given, else a UUID v4. A duplicate
  /// key fails with type `duplicate_error`, code `23505`.
  #[napi(
    ts_args_type = "payload: { idempotency_key?: string | null, request_method?: string | null, request_params?: unknown, request_path?: string | null, recovery_point?: string }",
    ts_return_type = "Promise<IdempotencyKey>"
  )]
  pub fn create<'env>(
    &self,
    env: &'env Env,
    payload: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let e = env.raw();
    let (key, fp, rp) = args!(env, {
      let p = payload.raw();
      if js::is_nullish(e, p) {
        return Ok((None, Fingerprint::default(), None));
      }
      if js::type_of(e, p) != sys::ValueType::napi_object {
        return Err(Error::InvalidArgument("payload must be an object".into()));
      }
      let get = |n: &str| js::get_property(e, p, n, n);
      let opt = |n: &str| -> JsResult<Option<String>> {
        let v = get(n)?;
        if js::is_nullish(e, v) {
          Ok(None)
        } else {
          js::get_string(e, v, n).map(Some)
        }
      };
      let fp = fingerprint(
        e,
        get("request_method")?,
        get("request_params")?,
        get("request_path")?,
      )?;
      Ok((opt("idempotency_key")?, fp, opt("recovery_point")?))
    });
    let (core, bound) = (self.core.clone(), self.bound.clone());
    spawn(env, async move {
      let target = target(&bound);
      core.create(target, key.as_deref(), fp, rp).await
    })
  }

  /// Retrieve a key by its value, or by a selector of column equalities (`null` is IS NULL,
  /// an array is IN), as Medusa's Stripe plugin does with `{ request_path, idempotency_key }`.
  #[napi(
    ts_args_type = "idempotencyKeyOrSelector: string | Partial<Record<keyof IdempotencyKey, unknown>>",
    ts_return_type = "Promise<IdempotencyKey>"
  )]
  pub fn retrieve<'env>(
    &self,
    env: &'env Env,
    arg: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let e = env.raw();
    enum By {
      Key(String),
      Selector(Vec<(String, idempotency_core::UpdateValue)>, String),
    }
    let by = args!(env, {
      let v = arg.raw();
      match js::type_of(e, v) {
        sys::ValueType::napi_undefined | sys::ValueType::napi_null => Err(Error::NotFound(
          "\"idempotencyKeyOrSelector\" must be defined".into(),
        )),
        sys::ValueType::napi_string => Ok(By::Key(key_arg(e, v)?)),
        _ => {
          let f = fields(e, v, "selector")?;
          if f.is_empty() {
            // TypeORM would return an arbitrary row for `{}`; a selector must select.
            return Err(Error::InvalidArgument(
              "the selector names no column".into(),
            ));
          }
          // Medusa's wording, with the selector as JSON.stringify prints it (key order kept).
          let entries: Vec<String> = f
            .iter()
            .map(|(k, v)| {
              let value = match v {
                idempotency_core::UpdateValue::Json(j) => j.to_string(),
                idempotency_core::UpdateValue::Null => "null".to_owned(),
                idempotency_core::UpdateValue::Date(d) => format!(
                  "\"{}\"",
                  d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
              };
              format!("{}:{value}", serde_json::Value::String(k.clone()))
            })
            .collect();
          let shown = format!("with constraints {{{}}}", entries.join(","));
          Ok(By::Selector(f, shown))
        }
      }
    });
    let (core, bound) = (self.core.clone(), self.bound.clone());
    spawn(env, async move {
      let target = target(&bound);
      match by {
        By::Key(k) => core.retrieve(target, &k).await,
        By::Selector(f, shown) => core.retrieve_by(target, f, &shown).await,
      }
    })
  }

  /// Lock a key: atomically set `locked_at` unless another caller locked it within
  /// `lockTimeoutMs`. Of N concurrent callers exactly one wins; the others get `conflict`.
  #[napi(
    ts_args_type = "idempotencyKey: string",
    ts_return_type = "Promise<IdempotencyKey>"
  )]
  pub fn lock<'env>(
    &self,
    env: &'env Env,
    key: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let key = args!(env, key_arg(env.raw(), key.raw()));
    let (core, bound) = (self.core.clone(), self.bound.clone());
    spawn(env, async move {
      let target = target(&bound);
      core.lock(target, &key).await
    })
  }

  /// Set the given columns of a key (`undefined` leaves a column alone, `null` writes NULL).
  /// Setting `recovery_point: "finished"` also releases the request lease.
  #[napi(
    ts_args_type = "idempotencyKey: string, update: Partial<Omit<IdempotencyKey, 'id' | 'idempotency_key' | 'created_at'>>",
    ts_return_type = "Promise<IdempotencyKey>"
  )]
  pub fn update<'env>(
    &self,
    env: &'env Env,
    key: Unknown,
    update: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let e = env.raw();
    let (key, u) = args!(env, {
      let key = key_arg(e, key.raw())?;
      Ok((
        key,
        KeyUpdate::from_fields(fields(e, update.raw(), "update")?)?,
      ))
    });
    let (core, bound) = (self.core.clone(), self.bound.clone());
    spawn(env, async move {
      let target = target(&bound);
      core.update(target, &key, u).await
    })
  }

  /// Run `callback` inside a database transaction with the key's row locked (`FOR UPDATE
  /// NOWAIT`: a key another stage is working fails at once with `IDEMPOTENCY_KEY_LOCKED`, before
  /// the callback runs). What the callback writes through `tx` and the key's new state commit
  /// together. The callback returns `{ recovery_point }` to move on, or `{ response_code,
  /// response_body }` to finish. If it throws, everything rolls back and the same error value is
  /// rethrown. Pass `{ recoveryPoint }` to refuse a stale stage (`IDEMPOTENCY_KEY_STALE`).
  #[napi(
    ts_args_type = "idempotencyKey: string, callback: (tx: TransactionManager | any) => StageReturnValue | Promise<StageReturnValue>, options?: WorkStageOptions",
    ts_return_type = "Promise<IdempotencyKey>"
  )]
  pub fn work_stage<'env>(
    &self,
    env: &'env Env,
    key: Unknown,
    callback: Unknown,
    options: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let e = env.raw();
    let (key, expected) = args!(env, {
      let key = key_arg(e, key.raw())?;
      if js::type_of(e, callback.raw()) != sys::ValueType::napi_function {
        return Err(Error::InvalidArgument("callback must be a function".into()));
      }
      let o = options.raw();
      let expected = if js::is_nullish(e, o) {
        None
      } else if js::type_of(e, o) != sys::ValueType::napi_object {
        return Err(Error::InvalidArgument("options must be an object".into()));
      } else {
        let rp = js::get_property(e, o, "recoveryPoint", "recoveryPoint")?;
        if js::is_nullish(e, rp) {
          None
        } else {
          Some(js::get_string(e, rp, "recoveryPoint")?)
        }
      };
      Ok((key, expected))
    });
    let (core, bound) = (self.core.clone(), self.bound.clone());
    if let Some(Bound::Exec(ex)) = bound {
      // Bound to a caller's executor: index.js hands the callback that executor itself.
      let tsfn: BoundCallback = unsafe { BoundCallback::from_napi_value(e, callback.raw())? };
      return env.spawn_future(async move {
        let result = core
          .work_stage_bound(&ex, &key, expected.as_deref(), || async {
            settle(tsfn.call_async_catch(()).await).await
          })
          .await;
        stage_reply(result)
      });
    }
    let tsfn: StageCallback = unsafe { StageCallback::from_napi_value(e, callback.raw())? };
    env.spawn_future(async move {
      let tsfn = &tsfn;
      let result = core
        .work_stage(target(&bound), &key, expected.as_deref(), |tx| async move {
          settle(tsfn.call_async_catch(TransactionManager { tx }).await).await
        })
        .await;
      stage_reply(result)
    })
  }

  /// Return a copy of the service whose every statement runs in `manager`'s transaction: a
  /// `TransactionManager` from a native stage, or any executor with `query(sql, params)` — a
  /// TypeORM `EntityManager` inside `manager.transaction(...)`, a node-postgres client inside
  /// `BEGIN … COMMIT`. Stages of the copy lock the key's row there, hand the callback that same
  /// executor, and commit or roll back with the caller. No argument returns the service itself.
  #[napi(
    ts_args_type = "manager?: TransactionManager | QueryExecutor",
    ts_return_type = "IdempotencyKeyService"
  )]
  pub fn with_transaction(
    &self,
    env: &Env,
    this: This,
    manager: Option<Either<&TransactionManager, Unknown>>,
  ) -> Result<RawValue> {
    let e = env.raw();
    let tm = match manager {
      Some(Either::A(tm)) => tm,
      Some(Either::B(other)) if unsafe { !js::is_nullish(e, other.raw()) } => {
        return Err(unsafe {
          reject(
            e,
            &Error::InvalidArgument("withTransaction() takes a TransactionManager".into()),
          )
        })
      }
      _ => return Ok(RawValue(this.object.raw())),
    };
    let copy = IdempotencyKeyService {
      core: self.core.clone(),
      bound: Some(Bound::Tx(tm.tx.clone())),
    };
    Ok(RawValue(unsafe { ToNapiValue::to_napi_value(e, copy)? }))
  }

  /// A copy of the service that sees only `tenant`'s keys (a customer, an API client): the
  /// same client key from two tenants names two keys, and no method of the copy reads, locks,
  /// lists or reaps another tenant's. Keys are stored as `<tenant>/<key>` in Medusa's table;
  /// the copy shares the pool and any transaction binding. Tenant ids are 1–128 printable
  /// ASCII characters without `/`.
  #[napi(
    ts_args_type = "tenant: string",
    ts_return_type = "IdempotencyKeyService"
  )]
  pub fn for_tenant(&self, env: &Env, tenant: Unknown) -> Result<RawValue> {
    let e = env.raw();
    let scoped = unsafe {
      let t = if js::type_of(e, tenant.raw()) == sys::ValueType::napi_string {
        js::get_string(e, tenant.raw(), "tenant")
      } else {
        Err(Error::InvalidArgument("tenant must be a string".into()))
      };
      t.and_then(|t| self.core.for_tenant(&t))
        .map_err(|err| reject(e, &err))?
    };
    let copy = IdempotencyKeyService {
      core: Arc::new(scoped),
      bound: self.bound.clone(),
    };
    Ok(RawValue(unsafe { ToNapiValue::to_napi_value(e, copy)? }))
  }

  /// The tenant this copy is scoped to (`forTenant`), or null.
  #[napi(getter, ts_return_type = "string | null")]
  pub fn tenant(&self) -> Option<String> {
    self.core.tenant().map(str::to_owned)
  }

  /// Bound mode, used by `withTransaction(executor)` in index.js: a copy of the service whose
  /// every statement goes through `query`, the executor's `query` wrapped so that it resolves
  /// to `{ rows }` or `{ error: { code, message } }`.
  #[napi(
    ts_args_type = "query: (sql: string, params: unknown[]) => Promise<unknown>",
    ts_return_type = "IdempotencyKeyService"
  )]
  pub fn bind_executor(&self, env: &Env, query: Unknown) -> Result<RawValue> {
    let e = env.raw();
    if unsafe { js::type_of(e, query.raw()) } != sys::ValueType::napi_function {
      return Err(unsafe {
        reject(
          e,
          &Error::InvalidArgument("query must be a function".into()),
        )
      });
    }
    if self.core.backend_name() == "sqlite" {
      // A caller's executor speaks PostgreSQL; on SQLite bind to a native stage handle instead.
      let why =
        "withTransaction(executor) needs a PostgreSQL service; on SQLite pass a TransactionManager";
      return Err(unsafe { reject(e, &Error::InvalidArgument(why.into())) });
    }
    let copy = IdempotencyKeyService {
      core: self.core.clone(),
      bound: Some(Bound::Exec(unsafe {
        JsExecutor::from_function(e, query.raw())?
      })),
    };
    Ok(RawValue(unsafe { ToNapiValue::to_napi_value(e, copy)? }))
  }

  /// A service with no pool of its own, for the Medusa container class: every call is bound
  /// to a caller's executor with `bindExecutor`; `release` (a wrapped executor outside any
  /// transaction, Medusa's `cradle.manager`) releases leases after failed stages.
  #[napi(
    ts_args_type = "release: (sql: string, params: unknown[]) => Promise<unknown>, options?: Omit<ConnectOptions, 'url' | 'maxConnections'>",
    ts_return_type = "IdempotencyKeyService"
  )]
  pub fn detached(env: &Env, release: Unknown, options: Unknown) -> Result<RawValue> {
    let e = env.raw();
    let built = (|| -> JsResult<Options> {
      unsafe {
        if js::type_of(e, release.raw()) != sys::ValueType::napi_function {
          return Err(Error::InvalidArgument("release must be a function".into()));
        }
        let mut o = if js::is_nullish(e, options.raw()) {
          Options::new("")
        } else if js::type_of(e, options.raw()) != sys::ValueType::napi_object {
          return Err(Error::InvalidArgument("options must be an object".into()));
        } else {
          connect_options_object(e, options.raw(), String::new())?
        };
        o.url = String::new();
        Ok(o)
      }
    })();
    let opts = built.map_err(|err| unsafe { reject(e, &err) })?;
    let ex = unsafe { JsExecutor::from_function(e, release.raw())? };
    let service = IdempotencyKeyService {
      core: Arc::new(Service::detached(opts, Arc::new(ex))),
      bound: None,
    };
    Ok(RawValue(unsafe { ToNapiValue::to_napi_value(e, service)? }))
  }

  /// Delete keys past their retention, in batches (each a short statement, so the table is
  /// never locked for long), never a key a stage is working on or whose request lease is
  /// fresh. Resolves to how many were removed. Defaults: `olderThanMs` 24 h (Stripe's
  /// retention), `batchSize` 1000.
  #[napi(
    ts_args_type = "options?: { olderThanMs?: number, batchSize?: number }",
    ts_return_type = "Promise<number>"
  )]
  pub fn reap<'env>(
    &self,
    env: &'env Env,
    options: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<u64>>> {
    let e = env.raw();
    let (older, batch) = args!(env, {
      let o = options.raw();
      if js::is_nullish(e, o) {
        Ok((None, None))
      } else if js::type_of(e, o) != sys::ValueType::napi_object {
        Err(Error::InvalidArgument(
          "reap() takes an options object".into(),
        ))
      } else {
        Ok((opt_u32(e, o, "olderThanMs")?, opt_u32(e, o, "batchSize")?))
      }
    });
    let older = Duration::from_millis(older.map_or(DEFAULT_RETENTION_MS, u64::from));
    let (core, bound) = (self.core.clone(), self.bound.clone());
    spawn(env, async move {
      core
        .reap(target(&bound), older, batch.unwrap_or(1000))
        .await
    })
  }

  /// Unfinished keys with no progress (no stage commit, else no creation) for `idleMs`
  /// (default 60000), least recent first, at most `limit` (default 100): requests a client
  /// abandoned half-way, for the application to drive forward.
  #[napi(
    ts_args_type = "options?: { idleMs?: number, limit?: number }",
    ts_return_type = "Promise<IdempotencyKey[]>"
  )]
  pub fn list_abandoned<'env>(
    &self,
    env: &'env Env,
    options: Unknown,
  ) -> Result<PromiseRaw<'env, Reply<Vec<IdempotencyKey>>>> {
    let e = env.raw();
    let (idle, limit) = args!(env, {
      let o = options.raw();
      if js::is_nullish(e, o) {
        Ok((None, None))
      } else if js::type_of(e, o) != sys::ValueType::napi_object {
        Err(Error::InvalidArgument(
          "listAbandoned() takes an options object".into(),
        ))
      } else {
        Ok((opt_u32(e, o, "idleMs")?, opt_u32(e, o, "limit")?))
      }
    });
    let idle = Duration::from_millis(idle.map_or(60_000, u64::from));
    let (core, bound) = (self.core.clone(), self.bound.clone());
    spawn(env, async move {
      core
        .list_abandoned(target(&bound), idle, limit.unwrap_or(100))
        .await
    })
  }

  /// Close the pool, waiting for connections in use to be returned.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, Reply<()>>> {
    let core = self.core.clone();
    spawn(env, async move {
      core.close().await;
      Ok(())
    })
  }
}
