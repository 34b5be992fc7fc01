//! The service methods' positional arguments as types: keys, request fingerprints, `create()`
//! payloads, `update()` fields, `retrieve()` selectors, SQL and its parameters. Each is read
//! from an `Arg` (see `raw`) with `FromJs`, so every odd value (a number for a key, a throwing
//! getter, a BigInt in `reqParams`) is refused with a typed `INVALID_ARGUMENT`, where a
//! `String` or `#[napi(object)]` parameter would throw a napi status error before the method
//! runs.

use crate::js;
use crate::raw::{FromJs, JsResult, Kind, Val};
use idempotency_core::{Error, Fingerprint, Param, UpdateValue};
use serde_json::Value;

/// An idempotency key (`idempotencyKey`).
pub struct Key(pub String);

impl FromJs for Key {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    v.string("idempotencyKey").map(Key)
  }
}

/// A string, or `None` for `undefined`/`null`.
fn nullable_string(v: Val<'_>, what: &str) -> JsResult<Option<String>> {
  if v.is_nullish() {
    Ok(None)
  } else {
    v.string(what).map(Some)
  }
}

/// `initializeRequest`'s header key: empty or absent means "make one".
pub struct HeaderKey(pub Option<String>);

impl FromJs for HeaderKey {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    nullable_string(v, "headerKey").map(HeaderKey)
  }
}

/// `reqMethod`.
pub struct ReqMethod(pub Option<String>);

impl FromJs for ReqMethod {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    nullable_string(v, "reqMethod").map(ReqMethod)
  }
}

/// `reqPath`.
pub struct ReqPath(pub Option<String>);

impl FromJs for ReqPath {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    nullable_string(v, "reqPath").map(ReqPath)
  }
}

/// `reqParams` as JSON (`null` and `undefined` are none).
pub struct ReqParams(pub Option<Value>);

impl FromJs for ReqParams {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    Ok(ReqParams(
      js::to_json(v, "reqParams")?.filter(|j| !j.is_null()),
    ))
  }
}

/// `create()`'s payload: the key (if given), the fingerprint and the recovery point.
pub struct CreatePayload {
  pub key: Option<String>,
  pub fingerprint: Fingerprint,
  pub recovery_point: Option<String>,
}

impl FromJs for CreatePayload {
  fn from_js(p: Val<'_>) -> JsResult<Self> {
    if p.is_nullish() {
      return Ok(CreatePayload {
        key: None,
        fingerprint: Fingerprint::default(),
        recovery_point: None,
      });
    }
    if p.kind() != Kind::Object {
      return Err(Error::InvalidArgument("payload must be an object".into()));
    }
    // The three properties are read before any is converted, as they always were.
    let get = |n: &str| p.get(n, n);
    let (method, params, path) = (
      get("request_method")?,
      get("request_params")?,
      get("request_path")?,
    );
    let (method, params, path) = (
      ReqMethod::from_js(method)?,
      ReqParams::from_js(params)?,
      ReqPath::from_js(path)?,
    );
    let key = js::opt_string(p, "idempotency_key")?;
    Ok(CreatePayload {
      key,
      fingerprint: fingerprint(method, params, path),
      recovery_point: js::opt_string(p, "recovery_point")?,
    })
  }
}

pub(crate) fn fingerprint(method: ReqMethod, params: ReqParams, path: ReqPath) -> Fingerprint {
  Fingerprint {
    method: method.0,
    params: params.0,
    path: path.0,
  }
}

/// The columns an `update()` object or a `retrieve()` selector names (`undefined` skipped).
fn fields(v: Val<'_>, what: &str) -> JsResult<Vec<(String, UpdateValue)>> {
  if v.kind() != Kind::Object {
    return Err(Error::InvalidArgument(format!("{what} must be an object")));
  }
  let mut out = Vec::new();
  for (k, val) in v.own_keys(what)? {
    if let Some(u) = js::to_update_value(val, &k)? {
      out.push((k, u));
    }
  }
  Ok(out)
}

/// `update()`'s fields.
pub struct UpdateFields(pub Vec<(String, UpdateValue)>);

impl FromJs for UpdateFields {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    fields(v, "update").map(UpdateFields)
  }
}

/// What `retrieve()` looks a key up by.
pub enum By {
  Key(String),
  /// The selector's columns, and how Medusa's not-found message shows it.
  Selector(Vec<(String, UpdateValue)>, String),
}

impl FromJs for By {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    match v.kind() {
      Kind::Undefined | Kind::Null => Err(Error::NotFound(
        "\"idempotencyKeyOrSelector\" must be defined".into(),
      )),
      Kind::String => Ok(By::Key(Key::from_js(v)?.0)),
      _ => {
        let f = fields(v, "selector")?;
        if f.is_empty() {
          // TypeORM would return an arbitrary row for `{}`; a selector must select.
          return Err(Error::InvalidArgument(
            "the selector names no column".into(),
          ));
        }
        let shown = format!("with constraints {{{}}}", shown_selector(&f));
        Ok(By::Selector(f, shown))
      }
    }
  }
}

/// Medusa's wording, with the selector as JSON.stringify prints it (key order kept).
fn shown_selector(f: &[(String, UpdateValue)]) -> String {
  let entries: Vec<String> = f
    .iter()
    .map(|(k, v)| {
      let value = match v {
        UpdateValue::Json(j) => j.to_string(),
        UpdateValue::Null => "null".to_owned(),
        UpdateValue::Date(d) => format!(
          "\"{}\"",
          d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
      };
      format!("{}:{value}", serde_json::Value::String(k.clone()))
    })
    .collect();
  entries.join(",")
}

/// `forTenant`'s tenant id (checked by the core).
pub struct Tenant(pub String);

impl FromJs for Tenant {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    v.string("tenant").map(Tenant)
  }
}

/// `TransactionManager.query`'s statement.
pub struct Sql(pub String);

impl FromJs for Sql {
  fn from_js(v: Val<'_>) -> JsResult<Self> {
    v.string("sql").map(Sql)
  }
}

/// `TransactionManager.query`'s parameters (`undefined`/`null`: none).
pub struct Params(pub Vec<Param>);

impl FromJs for Params {
  fn from_js(p: Val<'_>) -> JsResult<Self> {
    if p.is_nullish() {
      return Ok(Params(Vec::new()));
    }
    p.array_items("params")?
      .into_iter()
      .map(|v| js::to_param(v, 0))
      .collect::<JsResult<_>>()
      .map(Params)
  }
}
