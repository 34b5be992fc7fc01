//! How results and failures cross back into JS: every async method returns a promise of a
//! `Reply`, whose core errors become typed JS `Error`s (SPEC §6) on the JS thread, and whose
//! panics become typed `INTERNAL_ERROR` rejections instead of napi's untyped ones. Bad
//! arguments reject the same way (never throw synchronously), through `args!`.

use crate::js::{self, JsResult};
use futures_util::FutureExt;
use idempotency_core::{Error, IdempotencyKey, KeyRecords, QueryResult};
use napi::bindgen_prelude::*;
use napi::sys;
use std::panic::AssertUnwindSafe;

pub(crate) type Raw = sys::napi_value;

/// A value on its way to JS: the result, or a core error that becomes a typed JS `Error`.
pub struct Reply<T>(pub(crate) JsResult<T>);

/// A Rust value that can be built as a JS value (on the JS thread, when its promise settles).
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

impl IntoJs for (IdempotencyKey, KeyRecords) {
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw> {
    js::inspection_to_js(env, &self.0, &self.1)
  }
}

impl IntoJs for u64 {
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw> {
    // A count of rows: far below 2^53, where f64 stops being exact.
    ToNapiValue::to_napi_value(env, self as f64)
  }
}

impl IntoJs for Vec<IdempotencyKey> {
  unsafe fn into_js(self, env: sys::napi_env) -> Result<Raw> {
    js::js_array(env, self.iter().map(|k| js::key_to_js(env, k)))
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

/// Reject with a typed JS error built on the JS thread (napi reuses the object as is).
///
/// # Safety
/// `env` must be the live environment of the JS thread this is called on.
pub(crate) unsafe fn reject(env: sys::napi_env, e: &Error) -> napi::Error {
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
pub struct RawValue(pub(crate) Raw);

impl ToNapiValue for RawValue {
  unsafe fn to_napi_value(_: sys::napi_env, val: Self) -> Result<Raw> {
    Ok(val.0)
  }
}

/// Start a future whose core errors reject as typed JS errors. A panic (a bug) becomes a typed
/// `INTERNAL_ERROR` rejection instead of napi's untyped one.
pub(crate) fn spawn<'env, T: IntoJs + Send + 'static>(
  env: &'env Env,
  fut: impl std::future::Future<Output = JsResult<T>> + Send + 'static,
) -> Result<PromiseRaw<'env, Reply<T>>> {
  env.spawn_future(async move {
    let caught = AssertUnwindSafe(fut).catch_unwind().await;
    Ok(Reply(caught.unwrap_or_else(|p| Err(Error::from_panic(p)))))
  })
}

/// Bad arguments reject (never throw synchronously) like any other failure of an async method.
pub(crate) fn rejected<'env, T: IntoJs + Send + 'static>(
  env: &'env Env,
  e: Error,
) -> Result<PromiseRaw<'env, Reply<T>>> {
  spawn(env, async move { Err(e) })
}

/// Runs an argument conversion; the closure gives `?` inside it a scope of its own.
pub(crate) fn convert<T>(f: impl FnOnce() -> JsResult<T>) -> JsResult<T> {
  f()
}

/// Convert a method's arguments with the raw readers of `js`; a failure returns a rejected
/// promise from the method.
///
/// The expression runs in an `unsafe` block: callers pass only values napi handed this call,
/// read on the JS thread of `$env`, which is what the raw readers require.
macro_rules! args {
  ($env:expr, $e:expr) => {
    match $crate::reply::convert(|| {
      // SAFETY: the raw readers are called on the JS thread, during the napi callback, with
      // the env and the argument values of that callback (see the macro's doc).
      unsafe { $e }
    }) {
      Ok(v) => v,
      Err(e) => return $crate::reply::rejected($env, e),
    }
  };
}
pub(crate) use args;
