//! The options objects methods take, as `#[napi(object)]` structs: their field docs are the
//! d.ts docs, and `TryFrom`/`From` turn them into the core's `Options` and `Ssl`.
//!
//! They are filled by the readers below (`FromJs`, from an `Arg`), not by napi's generated
//! `FromNapiValue`: that one would throw napi status errors synchronously (`NumberExpected`, a
//! getter's own exception), wrap `-1` or `1.5` into a `u32` silently, and run before the
//! method could reject. SPEC §6
//! wants a typed `INVALID_ARGUMENT` rejection for each of those, with the messages below.

use crate::js;
use crate::raw::{FromJs, JsResult, Kind, Val};
use idempotency_core::{Error, Isolation, Options, Ssl};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::time::Duration;

/// The embedded default when neither a URL nor `DATABASE_URL` is given.
const EMBEDDED_URL: &str = "sqlite://./idempotency.db";

/// How long `reap()` keeps keys by default: 24 h, as Stripe does.
const DEFAULT_RETENTION_MS: u32 = 24 * 60 * 60 * 1000;

/// Options for {@link IdempotencyKeyService.connect}.
#[napi(object, object_to_js = false)]
#[derive(Default)]
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
  /// PostgreSQL: protocol-level named statements, cached per connection (default false: the unnamed statement only, correct behind every transaction-mode pooler). For direct connections, session pooling, and poolers that track named statements (PgBouncer >= 1.21 with max_prepared_statements, Neon, PgDog).
  pub prepared_statements: Option<bool>,
  /// PostgreSQL TLS, overriding the URL's `sslmode`: `true` (verify-full against the bundled web roots), `false` (plain), or `{ ca, cert, key, rejectUnauthorized }` with PEM strings (`rejectUnauthorized: false` encrypts without verifying).
  pub ssl: Option<Either<bool, SslOptions>>,
}

/// TLS given in code (node-postgres' `ssl` object): PEM strings, e.g. your provider's CA bundle.
#[napi(object, object_to_js = false)]
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

/// Optional third argument of `workStage`.
#[napi(object, object_to_js = false)]
#[derive(Default)]
pub struct WorkStageOptions {
  /// The recovery point the caller read; a key that has moved elsewhere fails with `IDEMPOTENCY_KEY_STALE` before the callback runs.
  pub recovery_point: Option<String>,
}

/// Options of {@link IdempotencyKeyService.reap}.
#[napi(object, object_to_js = false)]
#[derive(Default)]
pub struct ReapOptions {
  /// Keys created more than this many ms ago are removed (default 86400000, 24 h).
  pub older_than_ms: Option<u32>,
  /// Keys deleted per statement, each batch its own short statement (default 1000).
  pub batch_size: Option<u32>,
}

/// Options of {@link IdempotencyKeyService.listAbandoned}.
#[napi(object, object_to_js = false)]
#[derive(Default)]
pub struct ListAbandonedOptions {
  /// How long a key must have made no progress (no stage commit, else no creation), in ms (default 60000).
  pub idle_ms: Option<u32>,
  /// At most this many keys (default 100).
  pub limit: Option<u32>,
}

fn default_url() -> String {
  std::env::var("DATABASE_URL").unwrap_or_else(|_| EMBEDDED_URL.to_owned())
}

fn ms(n: u32) -> Duration {
  Duration::from_millis(u64::from(n))
}

/// 0 means "never" for these durations.
fn ms_or_never(n: u32) -> Option<Duration> {
  (n != 0).then(|| ms(n))
}

impl TryFrom<ConnectOptions> for Options {
  type Error = Error;

  fn try_from(c: ConnectOptions) -> JsResult<Options> {
    let mut o = Options::new(c.url.unwrap_or_else(default_url));
    if let Some(n) = c.max_connections {
      o.max_connections = n;
    }
    if let Some(level) = &c.isolation_level {
      o.isolation = Isolation::parse(level)?;
    }
    if let Some(n) = c.max_retries {
      o.max_retries = n;
    }
    if let Some(n) = c.lock_timeout_ms {
      o.lock_timeout = ms(n);
    }
    if let Some(n) = c.acquire_timeout_ms {
      o.acquire_timeout = ms(n);
    }
    if let Some(n) = c.busy_timeout_ms {
      o.busy_timeout = ms(n);
    }
    if let Some(n) = c.connect_timeout_ms {
      o.connect_timeout = Some(ms(n));
    }
    if let Some(n) = c.stage_timeout_ms {
      o.stage_timeout = ms_or_never(n);
    }
    if let Some(n) = c.max_lifetime_ms {
      o.max_lifetime = ms_or_never(n);
    }
    if let Some(n) = c.idle_timeout_ms {
      o.idle_timeout = ms_or_never(n);
    }
    if let Some(b) = c.prepared_statements {
      o.prepared_statements = b;
    }
    o.ssl = c.ssl.map(|s| match s {
      Either::A(on) => Ssl {
        disable: !on,
        verify: true,
        ..Ssl::default()
      },
      Either::B(given) => given.into(),
    });
    Ok(o)
  }
}

impl From<SslOptions> for Ssl {
  fn from(s: SslOptions) -> Ssl {
    Ssl {
      disable: false,
      ca: s.ca,
      cert: s.cert,
      key: s.key,
      verify: s.reject_unauthorized.unwrap_or(true),
    }
  }
}

impl ReapOptions {
  /// The retention, defaulting to Stripe's 24 h.
  pub fn older_than(&self) -> Duration {
    ms(self.older_than_ms.unwrap_or(DEFAULT_RETENTION_MS))
  }

  pub fn batch_size(&self) -> u32 {
    self.batch_size.unwrap_or(1000)
  }
}

impl ListAbandonedOptions {
  pub fn idle(&self) -> Duration {
    ms(self.idle_ms.unwrap_or(60_000))
  }

  pub fn limit(&self) -> u32 {
    self.limit.unwrap_or(100)
  }
}

// ---- readers (hostile values become typed errors; see the module doc) ----

/// `undefined`/`null` is the defaults; anything but an object is refused with `refusal`.
fn options_object<T: Default>(
  v: Val<'_>,
  refusal: &str,
  read: impl FnOnce(Val<'_>) -> JsResult<T>,
) -> JsResult<T> {
  if v.is_nullish() {
    Ok(T::default())
  } else if v.kind() != Kind::Object {
    Err(Error::InvalidArgument(refusal.into()))
  } else {
    read(v)
  }
}

/// A count or a duration in ms: a non-negative integer that fits a `u32`.
fn opt_u32(obj: Val<'_>, name: &str) -> JsResult<Option<u32>> {
  let v = obj.get(name, name)?;
  if v.is_nullish() {
    return Ok(None);
  }
  if v.kind() != Kind::Number {
    return Err(Error::InvalidArgument(format!("{name} must be a number")));
  }
  js::integral_u32(v.number())
    .map(Some)
    .ok_or_else(|| Error::InvalidArgument(format!("{name} must be a non-negative integer")))
}

/// `connect()`'s argument: a URL, nothing (the defaults), or an options object.
impl FromJs for ConnectOptions {
  fn from_js(arg: Val<'_>) -> JsResult<ConnectOptions> {
    match arg.kind() {
      Kind::String => Ok(ConnectOptions {
        url: Some(arg.string("url")?),
        ..ConnectOptions::default()
      }),
      Kind::Undefined | Kind::Null => Ok(ConnectOptions::default()),
      Kind::Object => {
        let url = js::opt_string(arg, "url")?;
        Ok(ConnectOptions {
          url,
          ..ConnectOptions::tuning_from_js(arg)?
        })
      }
      _ => Err(Error::InvalidArgument(
        "connect() takes a connection URL or an options object".into(),
      )),
    }
  }
}

/// `detached()`'s options: every field of `ConnectOptions` but `url` and `maxConnections`.
pub struct DetachedOptions(pub ConnectOptions);

impl FromJs for DetachedOptions {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    options_object(
      v,
      "options must be an object",
      ConnectOptions::tuning_from_js,
    )
    .map(DetachedOptions)
  }
}

impl ConnectOptions {
  /// Every field but `url` (what `detached()` takes too), in the order they are documented, so
  /// the first bad field is the one reported.
  fn tuning_from_js(obj: Val<'_>) -> JsResult<ConnectOptions> {
    let max_connections = opt_u32(obj, "maxConnections")?;
    let isolation_level = js::opt_string(obj, "isolationLevel")?;
    if let Some(level) = &isolation_level {
      // Checked here, not only in `TryFrom`, so a bad level is reported before later fields
      // are read (their getters are not run), as it always was.
      Isolation::parse(level)?;
    }
    Ok(ConnectOptions {
      url: None,
      max_connections,
      isolation_level,
      max_retries: opt_u32(obj, "maxRetries")?,
      lock_timeout_ms: opt_u32(obj, "lockTimeoutMs")?,
      acquire_timeout_ms: opt_u32(obj, "acquireTimeoutMs")?,
      busy_timeout_ms: opt_u32(obj, "busyTimeoutMs")?,
      connect_timeout_ms: opt_u32(obj, "connectTimeoutMs")?,
      stage_timeout_ms: opt_u32(obj, "stageTimeoutMs")?,
      max_lifetime_ms: opt_u32(obj, "maxLifetimeMs")?,
      idle_timeout_ms: opt_u32(obj, "idleTimeoutMs")?,
      prepared_statements: js::opt_bool(obj, "preparedStatements")?,
      ssl: ssl_from_js(obj)?,
    })
  }
}

/// `ssl`: `true`, `false`, or `{ ca, cert, key, rejectUnauthorized }` as node-postgres takes it.
fn ssl_from_js(obj: Val<'_>) -> JsResult<Option<Either<bool, SslOptions>>> {
  let v = obj.get("ssl", "ssl")?;
  if v.is_nullish() {
    return Ok(None);
  }
  match v.kind() {
    Kind::Boolean => Ok(Some(Either::A(v.bool()))),
    Kind::Object => Ok(Some(Either::B(SslOptions {
      ca: js::opt_string(v, "ca")?,
      cert: js::opt_string(v, "cert")?,
      key: js::opt_string(v, "key")?,
      reject_unauthorized: js::opt_bool(v, "rejectUnauthorized")?,
    }))),
    _ => Err(Error::InvalidArgument(
      "ssl must be a boolean or an object { ca, cert, key, rejectUnauthorized }".into(),
    )),
  }
}

impl FromJs for WorkStageOptions {
  fn from_js(v: Val<'_>) -> JsResult<WorkStageOptions> {
    options_object(v, "options must be an object", |o| {
      Ok(WorkStageOptions {
        recovery_point: js::opt_string(o, "recoveryPoint")?,
      })
    })
  }
}

impl FromJs for ReapOptions {
  fn from_js(v: Val<'_>) -> JsResult<ReapOptions> {
    options_object(v, "reap() takes an options object", |o| {
      Ok(ReapOptions {
        older_than_ms: opt_u32(o, "olderThanMs")?,
        batch_size: opt_u32(o, "batchSize")?,
      })
    })
  }
}

impl FromJs for ListAbandonedOptions {
  fn from_js(v: Val<'_>) -> JsResult<ListAbandonedOptions> {
    options_object(v, "listAbandoned() takes an options object", |o| {
      Ok(ListAbandonedOptions {
        idle_ms: opt_u32(o, "idleMs")?,
        limit: opt_u32(o, "limit")?,
      })
    })
  }
}
