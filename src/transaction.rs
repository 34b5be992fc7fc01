//! The `TransactionManager` class a native stage's callback runs in, and the bridge from the
//! callback (a JS function, sync or async) into the core's Rust-owned transaction: how it is
//! called, how what it returns is read, and how its own errors come back untouched.

use crate::args::{Params, Sql};
use crate::js;
use crate::raw::{Arg, FromJs, JsResult, Kind, Read, Val};
use crate::reply::{args, spawn, Reply};
use idempotency_core::{Error, IdempotencyKey, QueryResult, StageError, StageResult, StageTx};
use napi::bindgen_prelude::*;
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
  // Typed `Arg`s, not `String`/`Vec<Value>`: a non-string `sql`, a params array with throwing
  // getters, cycles, BigInt or Symbols must reject typed (INVALID_ARGUMENT), which napi's own
  // conversions would turn into a synchronous napi status error.
  #[napi(
    ts_args_type = "sql: string, params?: unknown[]",
    ts_return_type = "Promise<any[]>"
  )]
  pub fn query<'env>(
    &self,
    env: &'env Env,
    sql: Arg<'env, Sql>,
    params: Arg<'env, Params>,
  ) -> Result<PromiseRaw<'env, Reply<QueryResult>>> {
    let (Sql(sql), Params(params)) = args!(env, Ok((sql.read()?, params.read()?)));
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

/// The callback's result, read on the JS thread (as `Read<StageResult>`, see `raw`). Never
/// fails to convert: a bad value is kept as an `invalid_data` error so it is not mistaken for
/// the callback's own rejection. Read field by field (not as a `StageReturnValue`): a result
/// with throwing getters, a BigInt or a cycle in `response_body` must fail the stage with a
/// typed error.
impl FromJs for StageResult {
  fn from_js(v: Val<'_>) -> JsResult<StageResult> {
    let bad = |m: &str| Error::InvalidArgument(m.into());
    if v.kind() != Kind::Object {
      return Err(bad("the stage callback must return an object like { recovery_point } or { response_code, response_body }"));
    }
    let mut r = StageResult::default();
    let rp = v.get("recovery_point", "recovery_point")?;
    match rp.kind() {
      Kind::Undefined | Kind::Null => {}
      Kind::String => {
        let s = rp.string("recovery_point")?;
        if !s.is_empty() {
          r.recovery_point = Some(s);
        }
      }
      _ => return Err(bad("recovery_point must be a string")),
    }
    let code = v.get("response_code", "response_code")?;
    if !code.is_undefined() {
      r.response_code = Some(if code.is_nullish() {
        None
      } else {
        if code.kind() != Kind::Number {
          return Err(bad("response_code must be a number"));
        }
        Some(
          js::integral_i32(code.number()).ok_or_else(|| bad("response_code must be an integer"))?,
        )
      });
    }
    let body = v.get("response_body", "response_body")?;
    if !body.is_undefined() {
      r.response_body = Some(js::to_json(body, "response_body")?.filter(|j| !j.is_null()));
    }
    Ok(r)
  }
}

/// What a stage callback may return: a promise, or (a plain function) the value itself.
type Returned = Either<Promise<Read<StageResult>>, Read<StageResult>>;

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
    Ok(Read(r)) => r.map_err(StageError::Core),
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
