//! Raw readers of the service methods' positional arguments: keys, request fingerprints,
//! `create()` payloads, `update()` fields and `retrieve()` selectors. Raw, not napi-typed
//! parameters, because SPEC §6 wants every odd value (a number for a key, a throwing getter,
//! a BigInt in `reqParams`) to reject with a typed `INVALID_ARGUMENT`, where a `String` or
//! `#[napi(object)]` parameter would throw a napi status error before the method runs.

use crate::js::{self, JsResult};
use crate::reply::Raw;
use idempotency_core::{Error, Fingerprint, UpdateValue};
use napi::sys;

/// # Safety (every function here)
/// `env` and the values must belong to the JS thread the function is called on.
pub(crate) unsafe fn key_arg(env: sys::napi_env, v: Raw) -> JsResult<String> {
  js::get_string(env, v, "idempotencyKey")
}

/// A string, or `None` for `undefined`/`null`.
unsafe fn nullable_string(env: sys::napi_env, v: Raw, what: &str) -> JsResult<Option<String>> {
  if js::is_nullish(env, v) {
    Ok(None)
  } else {
    js::get_string(env, v, what).map(Some)
  }
}

/// `initializeRequest`'s header key: empty or absent means "make one".
pub(crate) unsafe fn header_key(env: sys::napi_env, v: Raw) -> JsResult<Option<String>> {
  nullable_string(env, v, "headerKey")
}

pub(crate) unsafe fn fingerprint(
  env: sys::napi_env,
  method: Raw,
  params: Raw,
  path: Raw,
) -> JsResult<Fingerprint> {
  Ok(Fingerprint {
    method: nullable_string(env, method, "reqMethod")?,
    params: js::to_json(env, params, "reqParams")?.filter(|j| !j.is_null()),
    path: nullable_string(env, path, "reqPath")?,
  })
}

/// `create()`'s payload: the key (if given), the fingerprint and the recovery point.
pub(crate) unsafe fn create_payload(
  env: sys::napi_env,
  p: Raw,
) -> JsResult<(Option<String>, Fingerprint, Option<String>)> {
  if js::is_nullish(env, p) {
    return Ok((None, Fingerprint::default(), None));
  }
  if js::type_of(env, p) != sys::ValueType::napi_object {
    return Err(Error::InvalidArgument("payload must be an object".into()));
  }
  let get = |n: &str| js::get_property(env, p, n, n);
  let fp = fingerprint(
    env,
    get("request_method")?,
    get("request_params")?,
    get("request_path")?,
  )?;
  let key = js::opt_string(env, p, "idempotency_key")?;
  Ok((key, fp, js::opt_string(env, p, "recovery_point")?))
}

/// The columns an `update()` object or a `retrieve()` selector names (`undefined` skipped).
pub(crate) unsafe fn fields(
  env: sys::napi_env,
  v: Raw,
  what: &str,
) -> JsResult<Vec<(String, UpdateValue)>> {
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

/// What `retrieve()` looks a key up by.
pub(crate) enum By {
  Key(String),
  /// The selector's columns, and how Medusa's not-found message shows it.
  Selector(Vec<(String, UpdateValue)>, String),
}

pub(crate) unsafe fn retrieve_by(env: sys::napi_env, v: Raw) -> JsResult<By> {
  match js::type_of(env, v) {
    sys::ValueType::napi_undefined | sys::ValueType::napi_null => Err(Error::NotFound(
      "\"idempotencyKeyOrSelector\" must be defined".into(),
    )),
    sys::ValueType::napi_string => Ok(By::Key(key_arg(env, v)?)),
    _ => {
      let f = fields(env, v, "selector")?;
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
