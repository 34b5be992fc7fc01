//! How results and failures cross back into JS: every async method returns a promise of a
//! `Reply`, whose core errors become typed JS `Error`s (SPEC §6) on the JS thread, and whose
//! panics become typed `INTERNAL_ERROR` rejections instead of napi's untyped ones. Bad
//! arguments reject the same way (never throw synchronously), through `args!`. napi's
//! conversion of a `Reply` (`ToNapiValue`) is in `raw`.

use crate::js;
use crate::raw::{Cx, IntoJs, JsResult, Val};
use futures_util::FutureExt;
use idempotency_core::{Error, IdempotencyKey, KeyRecords, QueryResult};
use napi::bindgen_prelude::*;
use std::panic::AssertUnwindSafe;

/// A value on its way to JS: the result, or a core error that becomes a typed JS `Error`
/// (napi converts it with `raw`'s `ToNapiValue`).
pub struct Reply<T>(pub(crate) JsResult<T>);

impl IntoJs for IdempotencyKey {
  fn into_js(self, cx: Cx<'_>) -> Result<Val<'_>> {
    js::key_to_js(cx, &self)
  }
}

impl IntoJs for (IdempotencyKey, KeyRecords) {
  fn into_js(self, cx: Cx<'_>) -> Result<Val<'_>> {
    js::inspection_to_js(cx, &self.0, &self.1)
  }
}

impl IntoJs for u64 {
  fn into_js(self, cx: Cx<'_>) -> Result<Val<'_>> {
    // A count of rows: far below 2^53, where f64 stops being exact.
    cx.number(self as f64)
  }
}

impl IntoJs for Vec<IdempotencyKey> {
  fn into_js(self, cx: Cx<'_>) -> Result<Val<'_>> {
    cx.array(self.iter().map(|k| js::key_to_js(cx, k)))
  }
}

impl IntoJs for QueryResult {
  fn into_js(self, cx: Cx<'_>) -> Result<Val<'_>> {
    js::rows_to_js(cx, &self)
  }
}

impl IntoJs for () {
  fn into_js(self, cx: Cx<'_>) -> Result<Val<'_>> {
    cx.undefined()
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

/// Read a method's arguments (`Arg::read`, in the method's order); a refused one returns a
/// rejected promise from the method.
macro_rules! args {
  ($env:expr, $e:expr) => {
    match $crate::reply::convert(|| $e) {
      Ok(v) => v,
      Err(e) => return $crate::reply::rejected($env, e),
    }
  };
}
pub(crate) use args;
