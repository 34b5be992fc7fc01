//! The `IdempotencyKeyService` class: Medusa's methods, each reading its typed arguments (`Arg`,
//! so hostile values reject typed; see `raw`, `args` and `options`), calling the core, and replying
//! through `reply`. A service copy may be bound to a caller's transaction or scoped to a tenant.

use crate::args::{
  fingerprint, By, CreatePayload, HeaderKey, Key, ReqMethod, ReqParams, ReqPath, Tenant,
  UpdateFields,
};
use crate::executor::JsExecutor;
use crate::options::{
  ConnectOptions, DetachedOptions, ListAbandonedOptions, ReapOptions, WorkStageOptions,
};
use crate::raw::{reject, Arg, Callback, Cx, IntoJs, JsResult, Val};
use crate::reply::{args, convert, spawn, Reply};
use crate::statements::StatementLog;
use crate::transaction::{
  callback_outcome, stage_reply, ExecutorCallback, StageCallback, TransactionManager,
};
use idempotency_core::{
  observe, Error, IdempotencyKey, KeyRecords, KeyUpdate, Options, Service, StageTx, Target,
};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::future::Future;
use std::sync::Arc;

/// Anything that runs SQL in the caller's transaction: a TypeORM `EntityManager`, a
/// node-postgres `Client`/`PoolClient`, or a `TransactionManager`.
#[napi(object)]
pub struct QueryExecutor {
  #[napi(ts_type = "(sql: string, params?: unknown[]) => Promise<unknown>")]
  pub query: Unknown<'static>,
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

/// Whether a handler accepted a key's request (`inspect`).
#[napi(object)]
pub struct KeyAcceptance {
  /// The route that took the request (`METHOD /path`), when it was named.
  #[napi(ts_type = "string | null")]
  pub route: Null,
  #[napi(js_name = "accepted_at", ts_type = "Date")]
  pub accepted_at: Null,
}

/// The completer's attempts at a key (`inspect`).
#[napi(object)]
pub struct CompleterAttempts {
  pub attempts: u32,
  #[napi(js_name = "last_attempt_at", ts_type = "Date")]
  pub last_attempt_at: Null,
  /// When a failed attempt may be retried (its backoff).
  #[napi(js_name = "next_attempt_at", ts_type = "Date | null")]
  pub next_attempt_at: Null,
  #[napi(js_name = "last_error_code", ts_type = "string | null")]
  pub last_error_code: Null,
  #[napi(js_name = "last_error", ts_type = "string | null")]
  pub last_error: Null,
  /// Set when the completer gave up on the key (its `maxAttempts` reached).
  #[napi(js_name = "gave_up_at", ts_type = "Date | null")]
  pub gave_up_at: Null,
}

/// What `inspect` returns: the key, and what else the database holds about it.
#[napi(object)]
pub struct KeyInspection {
  #[napi(ts_type = "IdempotencyKey")]
  pub key: Null,
  #[napi(ts_type = "KeyAcceptance | null")]
  pub accepted: Null,
  #[napi(ts_type = "CompleterAttempts | null")]
  pub completer: Null,
}

/// Medusa's `IdempotencyKeyService`, backed by Rust and a connection pool.
#[napi]
pub struct IdempotencyKeyService {
  core: Arc<Service>,
  bound: Option<CallerTx>,
  /// Where this copy's calls record their statements (`withStatementLog`), if anywhere.
  log: Option<observe::StatementLog>,
}

/// The caller's transaction a service copy is bound to.
#[derive(Clone)]
enum CallerTx {
  /// One of our stage handles (`withTransaction(tx)` inside a native stage).
  Tx(StageTx),
  /// A caller's executor: TypeORM `EntityManager`, node-postgres client…
  Exec(JsExecutor),
}

fn target(bound: &Option<CallerTx>) -> Target<'_> {
  match bound {
    None => Target::Pool,
    Some(CallerTx::Tx(tx)) => Target::Tx(tx),
    Some(CallerTx::Exec(ex)) => Target::Exec(ex),
  }
}

impl IntoJs for IdempotencyKeyService {
  fn into_js(self, cx: Cx<'_>) -> Result<Val<'_>> {
    cx.value(self)
  }
}

impl IdempotencyKeyService {
  /// Run one core call for this copy (its pool or tenant, and its binding) as a promise.
  fn run<'env, T, F>(
    &self,
    env: &'env Env,
    call: impl FnOnce(Arc<Service>, Option<CallerTx>) -> F,
  ) -> Result<PromiseRaw<'env, Reply<T>>>
  where
    T: IntoJs + Send + 'static,
    F: Future<Output = JsResult<T>> + Send + 'static,
  {
    let call = call(self.core.clone(), self.bound.clone());
    spawn(env, recorded(self.log.clone(), call))
  }
}

/// `f`, recording the service's statements it sends in `log` when there is one.
async fn recorded<F: Future>(log: Option<observe::StatementLog>, f: F) -> F::Output {
  match log {
    Some(log) => observe::scope(log, f).await,
    None => f.await,
  }
}

/// A new service object for a sync method to return.
fn service(core: Arc<Service>, bound: Option<CallerTx>) -> IdempotencyKeyService {
  IdempotencyKeyService {
    core,
    bound,
    log: None,
  }
}

/// What `IdempotencyKeyService.database` returns.
#[napi(object)]
pub struct DatabaseInfo {
  pub system: String,
  pub url: Option<String>,
}

/// `url` without its user and password (the authority's part before `@`) and without its
/// query string (`?password=…`, `sslkey=…`).
fn redact_url(url: &str) -> String {
  let url = url.split(['?', '#']).next().unwrap_or("");
  let Some(scheme_end) = url.find("://") else {
    return url.to_owned();
  };
  let rest = &url[scheme_end + 3..];
  let authority_end = rest.find('/').unwrap_or(rest.len());
  let authority = &rest[..authority_end];
  let host = authority
    .rsplit_once('@')
    .map_or(authority, |(_, host)| host);
  format!(
    "{}{}{}",
    &url[..scheme_end + 3],
    host,
    &rest[authority_end..]
  )
}

/// Throw `e` as a typed JS error from a sync method.
fn throw(env: &Env, e: &Error) -> napi::Error {
  reject(Cx::of(env), e)
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
    url_or_options: Arg<'env, ConnectOptions>,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKeyService>>> {
    let opts = args!(env, Options::try_from(url_or_options.read()?));
    spawn(env, async move {
      let core = Service::connect(opts).await?;
      Ok(IdempotencyKeyService {
        core: Arc::new(core),
        bound: None,
        log: None,
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
    header_key: Arg<'env, HeaderKey>,
    req_method: Arg<'env, ReqMethod>,
    req_params: Arg<'env, ReqParams>,
    req_path: Arg<'env, ReqPath>,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let (HeaderKey(key), fp) = args!(env, {
      let key = header_key.read()?;
      let (method, params) = (req_method.read()?, req_params.read()?);
      Ok((key, fingerprint(method, params, req_path.read()?)))
    });
    self.run(env, |core, bound| async move {
      core
        .initialize_request(target(&bound), key.as_deref(), fp)
        .await
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
    payload: Arg<'env, CreatePayload>,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let p = args!(env, payload.read());
    self.run(env, |core, bound| async move {
      core
        .create(
          target(&bound),
          p.key.as_deref(),
          p.fingerprint,
          p.recovery_point,
        )
        .await
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
    idempotency_key_or_selector: Arg<'env, By>,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let by = args!(env, idempotency_key_or_selector.read());
    self.run(env, |core, bound| async move {
      let target = target(&bound);
      match by {
        By::Key(k) => core.retrieve(target, &k).await,
        By::Selector(f, shown) => core.retrieve_by(target, f, &shown).await,
      }
    })
  }

  /// A key with what else the database holds about it, for operators (the CLI's `inspect`):
  /// `accepted` (the route whose handler took the request, and when) and `completer` (the
  /// completer's attempts, its last error, its backoff, whether it gave up), each null when
  /// there is none. Reads only; a key another request holds is read all the same.
  #[napi(
    ts_args_type = "idempotencyKey: string",
    ts_return_type = "Promise<KeyInspection>"
  )]
  pub fn inspect<'env>(
    &self,
    env: &'env Env,
    idempotency_key: Arg<'env, Key>,
  ) -> Result<PromiseRaw<'env, Reply<(IdempotencyKey, KeyRecords)>>> {
    let Key(key) = args!(env, idempotency_key.read());
    self.run(env, |core, bound| async move {
      core.inspect(target(&bound), &key).await
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
    idempotency_key: Arg<'env, Key>,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let Key(key) = args!(env, idempotency_key.read());
    self.run(env, |core, bound| async move {
      core.lock(target(&bound), &key).await
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
    idempotency_key: Arg<'env, Key>,
    update: Arg<'env, UpdateFields>,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let (key, u) = args!(env, {
      let Key(key) = idempotency_key.read()?;
      Ok((key, KeyUpdate::from_fields(update.read()?.0)?))
    });
    self.run(env, |core, bound| async move {
      core.update(target(&bound), &key, u).await
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
    idempotency_key: Arg<'env, Key>,
    callback: Arg<'env, Callback>,
    options: Arg<'env, WorkStageOptions>,
  ) -> Result<PromiseRaw<'env, Reply<IdempotencyKey>>> {
    let (key, callback, expected) = args!(env, {
      let Key(key) = idempotency_key.read()?;
      let callback = callback.function("callback must be a function")?;
      Ok((key, callback, options.read()?.recovery_point))
    });
    let (core, bound) = (self.core.clone(), self.bound.clone());
    if let Some(CallerTx::Exec(ex)) = bound {
      // Bound to a caller's executor: index.js hands the callback that executor itself.
      let tsfn: ExecutorCallback = callback.threadsafe()?;
      let stage = async move {
        let result = core
          .work_stage_bound(&ex, &key, expected.as_deref(), || async {
            callback_outcome(tsfn.call_async_catch(()).await).await
          })
          .await;
        stage_reply(result)
      };
      return env.spawn_future(recorded(self.log.clone(), stage));
    }
    let tsfn: StageCallback = callback.threadsafe()?;
    let stage = async move {
      let tsfn = &tsfn;
      let result = core
        .work_stage(target(&bound), &key, expected.as_deref(), |tx| async move {
          callback_outcome(tsfn.call_async_catch(TransactionManager { tx }).await).await
        })
        .await;
      stage_reply(result)
    };
    env.spawn_future(recorded(self.log.clone(), stage))
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
  pub fn with_transaction<'env>(
    &self,
    env: &Env,
    this: This<'env>,
    manager: Option<Either<&TransactionManager, Unknown>>,
  ) -> Result<Either<IdempotencyKeyService, Object<'env>>> {
    let tm = match manager {
      Some(Either::A(tm)) => tm,
      Some(Either::B(other))
        if !matches!(other.get_type()?, ValueType::Undefined | ValueType::Null) =>
      {
        let why = "withTransaction() takes a TransactionManager";
        return Err(throw(env, &Error::InvalidArgument(why.into())));
      }
      _ => return Ok(Either::B(this.object)),
    };
    let bound = Some(CallerTx::Tx(tm.tx.clone()));
    Ok(Either::A(service(self.core.clone(), bound)))
  }

  /// A copy of the service that sees only `tenant`'s keys (a customer, an API client): the
  /// same client key from two tenants names two keys, and no method of the copy reads, locks,
  /// lists or reaps another tenant's. Keys are stored as `<tenant>/<key>` in Medusa's table;
  /// the copy shares the pool and any transaction binding. Tenant ids are 1–128 printable
  /// ASCII characters without `/`.
  // `Arg`, not `String`: a non-string throws a typed INVALID_ARGUMENT, not napi's StringExpected.
  #[napi(ts_args_type = "tenant: string")]
  pub fn for_tenant<'env>(
    &self,
    env: &'env Env,
    tenant: Arg<'env, Tenant>,
  ) -> Result<IdempotencyKeyService> {
    let scoped = tenant
      .read()
      .and_then(|Tenant(t)| self.core.for_tenant(&t))
      .map_err(|err| throw(env, &err))?;
    Ok(service(Arc::new(scoped), self.bound.clone()))
  }

  /// A copy of the service (same pool, tenant and transaction binding) whose calls record the
  /// service's own statements in `log`: for tracing (`lib/tracing.js`), not for applications.
  #[napi]
  pub fn with_statement_log(&self, log: &StatementLog) -> IdempotencyKeyService {
    IdempotencyKeyService {
      core: self.core.clone(),
      bound: self.bound.clone(),
      log: Some(log.log.clone()),
    }
  }

  /// The tenant this copy is scoped to (`forTenant`), or null.
  #[napi(getter)]
  pub fn tenant(&self) -> Option<String> {
    self.core.tenant().map(str::to_owned)
  }

  /// The database this service talks to, for tracing and tools: `system` is `"postgresql"` or
  /// `"sqlite"`; `url` is the connection URL without its credentials (user, password) and
  /// query string, absent for a service without a pool of its own (`detached`).
  #[napi(
    getter,
    ts_return_type = "{ system: 'postgresql' | 'sqlite', url?: string }"
  )]
  pub fn database(&self) -> DatabaseInfo {
    let url = &self.core.options().url;
    DatabaseInfo {
      system: self.core.system().to_owned(),
      url: (!url.is_empty()).then(|| redact_url(url)),
    }
  }

  /// How long a request lease holds without progress, in ms (`lockTimeoutMs`): a refused
  /// request may come back after at most this long.
  #[napi(getter)]
  pub fn lock_timeout_ms(&self) -> f64 {
    self.core.options().lock_timeout.as_secs_f64() * 1000.0
  }

  /// Bound mode, used by `withTransaction(executor)` in index.js: a copy of the service whose
  /// every statement goes through `query`, the executor's `query` wrapped so that it resolves
  /// to `{ rows }` or `{ error: { code, message } }`.
  // `Arg`, not a napi function type: a non-function throws a typed INVALID_ARGUMENT, not napi's
  // FunctionExpected.
  #[napi(ts_args_type = "query: (sql: string, params: unknown[]) => Promise<unknown>")]
  pub fn bind_executor<'env>(
    &self,
    env: &'env Env,
    query: Arg<'env, Callback>,
  ) -> Result<IdempotencyKeyService> {
    let query = query
      .function("query must be a function")
      .map_err(|err| throw(env, &err))?;
    let ex = JsExecutor::from_function(query)?;
    // Refused by a backend whose SQL a caller's executor does not run (SQLite).
    self.core.check_bind(&ex).map_err(|err| throw(env, &err))?;
    Ok(service(self.core.clone(), Some(CallerTx::Exec(ex))))
  }

  /// A service with no pool of its own, for the Medusa container class: every call is bound
  /// to a caller's executor with `bindExecutor`; `release` (a wrapped executor outside any
  /// transaction, Medusa's `cradle.manager`) releases leases after failed stages.
  // `Arg`s: a non-function `release` or bad options throw a typed INVALID_ARGUMENT.
  #[napi(
    ts_args_type = "release: (sql: string, params: unknown[]) => Promise<unknown>, options?: Omit<ConnectOptions, 'url' | 'maxConnections'>"
  )]
  pub fn detached<'env>(
    env: &'env Env,
    release: Arg<'env, Callback>,
    options: Arg<'env, DetachedOptions>,
  ) -> Result<IdempotencyKeyService> {
    let built = convert(|| {
      let release = release.function("release must be a function")?;
      let DetachedOptions(given) = options.read()?;
      let opts = Options::try_from(ConnectOptions {
        url: Some(String::new()),
        ..given
      })?;
      Ok((release, opts))
    });
    let (release, opts) = built.map_err(|err| throw(env, &err))?;
    let ex = JsExecutor::from_function(release)?;
    Ok(service(
      Arc::new(Service::detached(opts, Arc::new(ex))),
      None,
    ))
  }

  /// Delete keys past their retention, in batches (each a short statement, so the table is
  /// never locked for long), never a key a stage is working on or whose request lease is
  /// fresh. Resolves to how many were removed. Defaults: `olderThanMs` 24 h (Stripe's
  /// retention), `batchSize` 1000.
  #[napi(
    ts_args_type = "options?: ReapOptions",
    ts_return_type = "Promise<number>"
  )]
  pub fn reap<'env>(
    &self,
    env: &'env Env,
    options: Arg<'env, ReapOptions>,
  ) -> Result<PromiseRaw<'env, Reply<u64>>> {
    let o = args!(env, options.read());
    self.run(env, |core, bound| async move {
      core
        .reap(target(&bound), o.older_than(), o.batch_size())
        .await
    })
  }

  /// Unfinished keys with no progress (no stage commit, else no creation) for `idleMs`
  /// (default 60000), least recent first, at most `limit` (default 100): requests a client
  /// abandoned half-way, for the application to drive forward.
  #[napi(
    ts_args_type = "options?: ListAbandonedOptions",
    ts_return_type = "Promise<IdempotencyKey[]>"
  )]
  pub fn list_abandoned<'env>(
    &self,
    env: &'env Env,
    options: Arg<'env, ListAbandonedOptions>,
  ) -> Result<PromiseRaw<'env, Reply<Vec<IdempotencyKey>>>> {
    let o = args!(env, options.read());
    self.run(env, |core, bound| async move {
      core
        .list_abandoned(target(&bound), o.idle(), o.limit())
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
