//! The `TransactionManager` class a native stage's callback runs in, and the bridge from the
//! callback (a JS function, sync or async) into the core's Rust-owned transaction: how it is
//! called, how what it returns is read, and how its own errors come back untouched.

use crate::js::{self, JsResult};
use crate::reply::{args, spawn, Raw, Reply};
use idempotency_core::{
  Error, IdempotencyKey, Param, QueryResult, StageError, StageResult, StageTx,
};
use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;

/// The transaction a `workStage` callback runs in. `query` has TypeORM's
/// `EntityManager.query` signature and returns rows as node-postgres would.
#[napi]
pub struct TransactionManager {
  pub(crate) tx: StageTx,
}

#[napi]
impl TransactionManager {
  /// Run one statement (`$1`, `$2`… placeholders) inside the stage's transaction and
  /// resolve to its rows. Parameters bind like node-postgres: strings are accepted for any
  /// type the server infers; Date, number, boolean, null, Buffer, arrays and plain objects
  /// (as JSON) too. A failed statement fails the whole stage, even if it is caught.
  // Raw arguments: a non-string `sql`, a params array with throwing getters, cycles, BigInt or
  // Symbols must reject typed (INVALID_ARGUMENT), which a `String`/`Vec<Value>` parameter
  // would turn into a synchronous napi status error.
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

/// What a stage callback returns: a `recovery_point` to move to, or the response that finishes the key.
#[napi(object, object_to_js = false)]
pub struct StageReturnValue {
  #[napi(js_name = "recovery_point")]
  pub recovery_point: Option<String>,
  #[napi(js_name = "response_code")]
  pub response_code: Option<u32>,
  #[napi(js_name = "response_body", ts_type = "any")]
  pub response_body: Option<Null>,
}

/// The callback's result, read on the JS thread. Never fails to convert: a bad value is kept
/// as an `invalid_data` error so it is not mistaken for the callback's own rejection. Read raw
/// (not as a `StageReturnValue`): a result with throwing getters, a BigInt or a cycle in
/// `response_body` must fail the stage with a typed error.
pub(crate) struct StageReturn(JsResult<StageResult>);

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
      Some(js::integral_i32(n).ok_or_else(|| bad("response_code must be an integer"))?)
    });
  }
  let body = js::get_property(env, v, "response_body", "response_body")?;
  if !js::is_undefined(env, body) {
    r.response_body = Some(js::to_json(env, body, "response_body")?.filter(|j| !j.is_null()));
  }
  Ok(r)
}

/// What a stage callback may return: a promise, or (a plain function) the value itself.
type Returned = Either<Promise<StageReturn>, StageReturn>;

/// A native stage's callback: called with the stage's `TransactionManager`.
pub(crate) type StageCallback =
  ThreadsafeFunction<TransactionManager, Returned, TransactionManager, Status, false>;

/// A stage callback of a service bound to a caller's executor: called with no handle of ours.
pub(crate) type ExecutorCallback = ThreadsafeFunction<(), Returned, (), Status, false>;

/// The stage callback's outcome: what it returned (a promise, awaited, or a plain value) as a
/// stage result, or what it threw.
pub(crate) async fn callback_outcome(
  called: Result<Returned>,
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

pub(crate) fn stage_reply(
  result: std::result::Result<IdempotencyKey, StageError<napi::Error>>,
) -> Result<Reply<IdempotencyKey>> {
  match result {
    Ok(k) => Ok(Reply(Ok(k))),
    Err(StageError::Core(err)) => Ok(Reply(Err(err))),
    // The callback's own error value, passed back untouched.
    Err(StageError::Callback(thrown)) => Err(thrown),
  }
}
