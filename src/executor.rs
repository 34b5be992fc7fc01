//! A caller's executor (TypeORM `EntityManager`, node-postgres client, anything with
//! `query(sql, params) => Promise`) as the core's `SharedExec`. `index.js` wraps the executor
//! in a function that never rejects and normalises result shapes; this side converts the
//! parameters to JS and the rows back.

use crate::js;
use idempotency_core::{Cell, Error, Param, QueryResult, SharedExec};
use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::ThreadsafeFunction;
use std::sync::Arc;

type Raw = sys::napi_value;

/// Parameters as node-postgres takes them; JSON goes as text (the SQL casts it), so
/// node-postgres never turns a JSON array into a PostgreSQL array.
pub struct JsParams(pub Vec<Param>);

unsafe fn param_to_js(env: sys::napi_env, p: &Param) -> Result<Raw> {
  match p {
    Param::Null => js::js_null(env),
    Param::Bool(b) => ToNapiValue::to_napi_value(env, *b),
    Param::Number(n) => ToNapiValue::to_napi_value(env, *n),
    Param::BigInt(s) | Param::Text(s) => js::js_string(env, s),
    Param::Bytes(b) => ToNapiValue::to_napi_value(env, Buffer::from(b.clone())),
    Param::Date(ms) => js::js_date(env, *ms),
    Param::Json(v) => js::js_string(env, &v.to_string()),
    Param::Array(items) => js::js_array(env, items.iter().map(|i| param_to_js(env, i))),
  }
}

impl ToNapiValue for JsParams {
  unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<Raw> {
    param_to_js(env, &Param::Array(val.0))
  }
}

/// `{ rows }` or `{ error: { code, message } }` from the wrapper in index.js.
pub struct ExecReply(std::result::Result<QueryResult, Error>);

impl TypeName for ExecReply {
  fn type_name() -> &'static str {
    "ExecReply"
  }
  fn value_type() -> ValueType {
    ValueType::Object
  }
}

impl ValidateNapiValue for ExecReply {}

impl FromNapiValue for ExecReply {
  unsafe fn from_napi_value(env: sys::napi_env, v: Raw) -> Result<Self> {
    Ok(ExecReply(read_reply(env, v)))
  }
}

unsafe fn read_reply(env: sys::napi_env, v: Raw) -> std::result::Result<QueryResult, Error> {
  let executor_error = |m: &str| Error::Database {
    sqlstate: None,
    message: format!("the executor returned {m}"),
  };
  if js::type_of(env, v) != sys::ValueType::napi_object {
    return Err(executor_error("something other than rows"));
  }
  let err = js::get_property(env, v, "error", "error")?;
  if !js::is_nullish(env, err) {
    let code = js::get_property(env, err, "code", "code")?;
    let code = if js::type_of(env, code) == sys::ValueType::napi_string {
      Some(js::get_string(env, code, "code")?)
    } else {
      None
    };
    let message = js::get_property(env, err, "message", "message")?;
    let message = js::get_string(env, message, "message").unwrap_or_else(|_| "query failed".into());
    return Err(Error::Database {
      sqlstate: code,
      message,
    });
  }
  let rows = js::get_property(env, v, "rows", "rows")?;
  let rows = js::array_items(env, rows, "rows").map_err(|_| executor_error("no rows array"))?;
  let mut out = QueryResult::default();
  let mut position = std::collections::HashMap::new();
  for (i, row) in rows.into_iter().enumerate() {
    let fields = js::own_keys(env, row, "row")?;
    if i == 0 {
      out.columns = fields.iter().map(|(k, _)| k.clone()).collect();
      position = out
        .columns
        .iter()
        .enumerate()
        .map(|(p, c)| (c.clone(), p))
        .collect();
    }
    let mut cells = vec![Cell::Null; out.columns.len()];
    for (k, val) in fields {
      if let Some(&pos) = position.get(&k) {
        cells[pos] = js::to_cell(env, val)?;
      }
    }
    out.rows.push(cells);
  }
  Ok(out)
}

type ExecFn = ThreadsafeFunction<
  FnArgs<(String, JsParams)>,
  Promise<ExecReply>,
  FnArgs<(String, JsParams)>,
  Status,
  false,
  true, // weak: a bound service must not keep Node's event loop alive
>;

/// The executor's normalised `query` function, callable from any thread.
#[derive(Clone)]
pub struct JsExecutor(Arc<ExecFn>);

impl JsExecutor {
  /// # Safety
  /// `f` must be a function value of the JS thread `env` belongs to.
  pub unsafe fn from_function(env: sys::napi_env, f: Raw) -> Result<Self> {
    Ok(JsExecutor(Arc::new(ExecFn::from_napi_value(env, f)?)))
  }
}

impl SharedExec for JsExecutor {
  fn query(
    &self,
    sql: String,
    params: Vec<Param>,
  ) -> futures_util::future::BoxFuture<'static, idempotency_core::Result<QueryResult>> {
    let f = self.0.clone();
    Box::pin(async move {
      let call = f
        .call_async_catch(FnArgs::from((sql, JsParams(params))))
        .await;
      let reply = match call {
        Ok(promise) => promise.await,
        Err(e) => Err(e),
      };
      match reply {
        Ok(ExecReply(r)) => r,
        Err(e) => Err(Error::Database {
          sqlstate: None,
          message: format!("the executor failed: {}", e.reason),
        }),
      }
    })
  }
}
