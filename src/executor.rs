//! A caller's executor (TypeORM `EntityManager`, node-postgres client, anything with
//! `query(sql, params) => Promise`) as the core's `SharedExec`. `index.js` wraps the executor
//! in a function that never rejects and normalises result shapes; this side converts the
//! parameters to JS and the rows back.

use crate::js;
use crate::raw::{Cx, FromJs, IntoJs, Js, Kind, Read, Val};
use idempotency_core::{Cell, Error, Param, QueryResult, SharedExec};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunction;
use std::sync::Arc;

/// Parameters as node-postgres takes them; JSON goes as text (the SQL casts it), so
/// node-postgres never turns a JSON array into a PostgreSQL array.
pub struct JsParams(pub Vec<Param>);

fn param_to_js<'e>(cx: Cx<'e>, p: &Param) -> Result<Val<'e>> {
  match p {
    Param::Null => cx.null(),
    Param::Bool(b) => cx.bool(*b),
    Param::Number(n) => cx.number(*n),
    Param::BigInt(s) | Param::Text(s) => cx.string(s),
    Param::Bytes(b) => cx.buffer(b),
    Param::Date(ms) => cx.date(*ms),
    Param::Json(v) => cx.string(&v.to_string()),
    Param::Array(items) => cx.array(items.iter().map(|i| param_to_js(cx, i))),
  }
}

impl IntoJs for JsParams {
  fn into_js(self, cx: Cx<'_>) -> Result<Val<'_>> {
    param_to_js(cx, &Param::Array(self.0))
  }
}

/// `{ rows }` or `{ error: { code, message } }` from the wrapper in index.js, read on the JS
/// thread as `Read<ExecReply>` (see `raw`).
pub struct ExecReply(QueryResult);

impl FromJs for ExecReply {
  fn from_js(v: Val<'_>) -> std::result::Result<Self, Error> {
    read_reply(v).map(ExecReply)
  }
}

fn read_reply(v: Val<'_>) -> std::result::Result<QueryResult, Error> {
  let executor_error = |m: &str| Error::Database {
    sqlstate: None,
    message: format!("the executor returned {m}"),
  };
  if v.kind() != Kind::Object {
    return Err(executor_error("something other than rows"));
  }
  let err = v.get("error", "error")?;
  if !err.is_nullish() {
    let code = err.get("code", "code")?;
    let code = if code.kind() == Kind::String {
      Some(code.string("code")?)
    } else {
      None
    };
    let message = err.get("message", "message")?;
    let message = message
      .string("message")
      .unwrap_or_else(|_| "query failed".into());
    return Err(Error::Database {
      sqlstate: code,
      message,
    });
  }
  let rows = v.get("rows", "rows")?;
  let rows = rows
    .array_items("rows")
    .map_err(|_| executor_error("no rows array"))?;
  let mut out = QueryResult::default();
  let mut position = std::collections::HashMap::new();
  for (i, row) in rows.into_iter().enumerate() {
    let fields = row.own_keys("row")?;
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
        cells[pos] = js::to_cell(val)?;
      }
    }
    out.rows.push(cells);
  }
  Ok(out)
}

type ExecFn = ThreadsafeFunction<
  FnArgs<(String, Js<JsParams>)>,
  Promise<Read<ExecReply>>,
  FnArgs<(String, Js<JsParams>)>,
  Status,
  false,
  true, // weak: a bound service must not keep Node's event loop alive
>;

/// The executor's normalised `query` function, callable from any thread.
#[derive(Clone)]
pub struct JsExecutor(Arc<ExecFn>);

impl JsExecutor {
  /// `f`, a JS function (checked by the caller), made callable from any thread.
  pub fn from_function(f: Val<'_>) -> Result<Self> {
    Ok(JsExecutor(Arc::new(f.threadsafe::<ExecFn>()?)))
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
        .call_async_catch(FnArgs::from((sql, Js(JsParams(params)))))
        .await;
      let reply = match call {
        Ok(promise) => promise.await,
        Err(e) => Err(e),
      };
      match reply {
        Ok(Read(r)) => r.map(|ExecReply(rows)| rows),
        Err(e) => Err(Error::Database {
          sqlstate: None,
          message: format!("the executor failed: {}", e.reason),
        }),
      }
    })
  }
}
