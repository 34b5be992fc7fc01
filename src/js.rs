//! Conversions between raw JS values and the core's types, written against the N-API C
//! calls so every odd input (getters that throw, cycles, BigInt, Symbols, functions) becomes a
//! typed `invalid_data` error instead of a napi status string or a pending exception.

use chrono::{DateTime, Utc};
use idempotency_core::{Cell, Error, IdempotencyKey, KeyRecords, Param, QueryResult, UpdateValue};
use napi::bindgen_prelude::*;
use napi::sys;
use num_traits::ToPrimitive;
use serde_json::Value;
use std::ptr;

type Raw = sys::napi_value;
type Env_ = sys::napi_env;
pub type JsResult<T> = std::result::Result<T, Error>;

const MAX_DEPTH: usize = 64;

fn invalid(msg: impl Into<String>) -> Error {
  Error::InvalidArgument(msg.into())
}

/// Turn a failed N-API call into `invalid_data`, clearing any exception it left pending.
unsafe fn check_status(env: Env_, status: sys::napi_status, what: &str) -> JsResult<()> {
  if status == sys::Status::napi_ok {
    return Ok(());
  }
  let mut pending = false;
  sys::napi_is_exception_pending(env, &mut pending);
  if pending {
    let mut exc = ptr::null_mut();
    sys::napi_get_and_clear_last_exception(env, &mut exc);
    return Err(invalid(format!("{what}: reading the value threw")));
  }
  Err(invalid(format!("{what}: not a supported value")))
}

pub(crate) unsafe fn type_of(env: Env_, v: Raw) -> sys::napi_valuetype {
  let mut t = 0;
  sys::napi_typeof(env, v, &mut t);
  t
}

pub(crate) unsafe fn is_nullish(env: Env_, v: Raw) -> bool {
  v.is_null()
    || matches!(
      type_of(env, v),
      sys::ValueType::napi_undefined | sys::ValueType::napi_null
    )
}

pub(crate) unsafe fn is_undefined(env: Env_, v: Raw) -> bool {
  v.is_null() || type_of(env, v) == sys::ValueType::napi_undefined
}

pub(crate) unsafe fn get_string(env: Env_, v: Raw, what: &str) -> JsResult<String> {
  if type_of(env, v) != sys::ValueType::napi_string {
    return Err(invalid(format!("{what} must be a string")));
  }
  let mut len = 0usize;
  check_status(
    env,
    sys::napi_get_value_string_utf8(env, v, ptr::null_mut(), 0, &mut len),
    what,
  )?;
  let mut buf = vec![0u8; len + 1];
  let mut written = 0usize;
  check_status(
    env,
    sys::napi_get_value_string_utf8(env, v, buf.as_mut_ptr().cast(), len + 1, &mut written),
    what,
  )?;
  buf.truncate(written);
  // N-API replaces lone surrogates with U+FFFD, so this is valid UTF-8.
  String::from_utf8(buf).map_err(|_| invalid(format!("{what} is not valid UTF-16")))
}

unsafe fn get_number(env: Env_, v: Raw) -> f64 {
  let mut n = 0.0;
  sys::napi_get_value_double(env, v, &mut n);
  n
}

/// A boolean option: `undefined`/`null` is `None`, anything but a boolean is refused.
pub(crate) unsafe fn opt_bool(env: Env_, obj: Raw, name: &str) -> JsResult<Option<bool>> {
  let v = get_property(env, obj, name, name)?;
  if is_nullish(env, v) {
    return Ok(None);
  }
  if type_of(env, v) != sys::ValueType::napi_boolean {
    return Err(invalid(format!("{name} must be a boolean")));
  }
  Ok(Some(get_bool(env, v)))
}

/// A string option: `undefined`/`null` is `None`.
pub(crate) unsafe fn opt_string(env: Env_, obj: Raw, name: &str) -> JsResult<Option<String>> {
  let v = get_property(env, obj, name, name)?;
  if is_nullish(env, v) {
    return Ok(None);
  }
  get_string(env, v, name).map(Some)
}

pub(crate) unsafe fn get_bool(env: Env_, v: Raw) -> bool {
  let mut b = false;
  sys::napi_get_value_bool(env, v, &mut b);
  b
}

unsafe fn is(env: Env_, v: Raw, f: unsafe fn(Env_, Raw, *mut bool) -> sys::napi_status) -> bool {
  let mut b = false;
  f(env, v, &mut b) == sys::Status::napi_ok && b
}

unsafe fn date_ms(env: Env_, v: Raw) -> f64 {
  let mut ms = 0.0;
  sys::napi_get_date_value(env, v, &mut ms);
  ms
}

unsafe fn bigint_string(env: Env_, v: Raw) -> JsResult<String> {
  let mut s = ptr::null_mut();
  check_status(env, sys::napi_coerce_to_string(env, v, &mut s), "BigInt")?;
  get_string(env, s, "BigInt")
}

pub(crate) unsafe fn get_property(env: Env_, obj: Raw, name: &str, what: &str) -> JsResult<Raw> {
  let mut out = ptr::null_mut();
  let key = std::ffi::CString::new(name).map_err(|_| invalid("bad property name"))?;
  check_status(
    env,
    sys::napi_get_named_property(env, obj, key.as_ptr(), &mut out),
    what,
  )?;
  Ok(out)
}

/// Own enumerable string keys, like `Object.keys`.
pub(crate) unsafe fn own_keys(env: Env_, obj: Raw, what: &str) -> JsResult<Vec<(String, Raw)>> {
  let mut names = ptr::null_mut();
  check_status(
    env,
    sys::napi_get_all_property_names(
      env,
      obj,
      sys::KeyCollectionMode::own_only,
      sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
      sys::KeyConversion::numbers_to_strings,
      &mut names,
    ),
    what,
  )?;
  let mut len = 0u32;
  check_status(env, sys::napi_get_array_length(env, names, &mut len), what)?;
  let mut out = Vec::with_capacity(len as usize);
  for i in 0..len {
    let mut k = ptr::null_mut();
    check_status(env, sys::napi_get_element(env, names, i, &mut k), what)?;
    let mut val = ptr::null_mut();
    check_status(env, sys::napi_get_property(env, obj, k, &mut val), what)?;
    out.push((get_string(env, k, what)?, val));
  }
  Ok(out)
}

/// Longest array we convert: a sparse `new Array(2 ** 32 - 1)` must be refused, not walked.
const MAX_ARRAY: u32 = 1 << 20;

/// The elements of a JS array (`invalid_data` for a non-array, an over-long array, or an
/// element getter that throws).
pub(crate) unsafe fn array_items(env: Env_, arr: Raw, what: &str) -> JsResult<Vec<Raw>> {
  if !is(env, arr, sys::napi_is_array) {
    return Err(invalid(format!("{what} must be an array")));
  }
  let mut len = 0u32;
  check_status(env, sys::napi_get_array_length(env, arr, &mut len), what)?;
  if len > MAX_ARRAY {
    return Err(invalid(format!(
      "{what} has more than {MAX_ARRAY} elements"
    )));
  }
  let mut out = Vec::with_capacity(len as usize);
  for i in 0..len {
    let mut v = ptr::null_mut();
    check_status(env, sys::napi_get_element(env, arr, i, &mut v), what)?;
    out.push(v);
  }
  Ok(out)
}

unsafe fn buffer_bytes(env: Env_, v: Raw) -> Option<Vec<u8>> {
  if is(env, v, sys::napi_is_buffer) {
    let mut data = ptr::null_mut();
    let mut len = 0usize;
    sys::napi_get_buffer_info(env, v, &mut data, &mut len);
    return Some(if len == 0 {
      vec![]
    } else {
      std::slice::from_raw_parts(data as *const u8, len).to_vec()
    });
  }
  if is(env, v, sys::napi_is_typedarray) {
    let mut kind = 0;
    let mut len = 0usize;
    let mut data = ptr::null_mut();
    let mut ab = ptr::null_mut();
    let mut off = 0usize;
    sys::napi_get_typedarray_info(env, v, &mut kind, &mut len, &mut data, &mut ab, &mut off);
    if kind == sys::TypedarrayType::uint8_array {
      return Some(if len == 0 {
        vec![]
      } else {
        std::slice::from_raw_parts(data as *const u8, len).to_vec()
      });
    }
  }
  None
}

/// A JS value as JSON, following `JSON.stringify`: `undefined`, functions and Symbols are
/// dropped from objects and become `null` in arrays; Dates become ISO strings.
pub(crate) unsafe fn to_json(env: Env_, v: Raw, what: &str) -> JsResult<Option<Value>> {
  to_json_at(env, v, what, 0)
}

unsafe fn to_json_at(env: Env_, v: Raw, what: &str, depth: usize) -> JsResult<Option<Value>> {
  if depth > MAX_DEPTH {
    return Err(invalid(format!("{what} is nested too deeply or is cyclic")));
  }
  Ok(Some(match type_of(env, v) {
    sys::ValueType::napi_undefined
    | sys::ValueType::napi_function
    | sys::ValueType::napi_symbol => return Ok(None),
    sys::ValueType::napi_null => Value::Null,
    sys::ValueType::napi_boolean => Value::Bool(get_bool(env, v)),
    sys::ValueType::napi_number => number_json(get_number(env, v)),
    sys::ValueType::napi_string => Value::String(get_string(env, v, what)?),
    sys::ValueType::napi_bigint => {
      return Err(invalid(format!(
        "{what}: a BigInt cannot be stored as JSON"
      )))
    }
    sys::ValueType::napi_object => {
      if is(env, v, sys::napi_is_date) {
        idempotency_core::iso_string(date_ms(env, v)).map_or(Value::Null, Value::String)
      } else if let Some(bytes) = buffer_bytes(env, v) {
        // As JSON.stringify prints a Buffer, read in one copy rather than element by element.
        let data = bytes.into_iter().map(Value::from).collect();
        serde_json::json!({ "type": "Buffer", "data": Value::Array(data) })
      } else if is(env, v, sys::napi_is_array) {
        let mut items = Vec::new();
        for item in array_items(env, v, what)? {
          items.push(to_json_at(env, item, what, depth + 1)?.unwrap_or(Value::Null));
        }
        Value::Array(items)
      } else {
        let mut map = serde_json::Map::new();
        for (k, val) in own_keys(env, v, what)? {
          if let Some(j) = to_json_at(env, val, what, depth + 1)? {
            map.insert(k, j);
          }
        }
        Value::Object(map)
      }
    }
    _ => return Err(invalid(format!("{what} is not a supported value"))),
  }))
}

/// `n` as a `u32` if it is one exactly: finite, integral, within `0..=u32::MAX`.
pub(crate) fn integral_u32(n: f64) -> Option<u32> {
  if n.fract() == 0.0 {
    n.to_u32()
  } else {
    None
  }
}

/// `n` as an `i32` if it is one exactly.
pub(crate) fn integral_i32(n: f64) -> Option<i32> {
  if n.fract() == 0.0 {
    n.to_i32()
  } else {
    None
  }
}

/// Largest integer an f64 holds exactly (2^53).
const MAX_SAFE: f64 = 9.007_199_254_740_992e15;

fn number_json(n: f64) -> Value {
  match n.to_i64() {
    Some(i) if n.fract() == 0.0 && n.abs() <= MAX_SAFE => Value::from(i),
    _ => serde_json::Number::from_f64(n)
      .map(Value::Number)
      .unwrap_or(Value::Null),
  }
}

/// A query parameter, mapped like node-postgres maps it.
pub(crate) unsafe fn to_param(env: Env_, v: Raw, depth: usize) -> JsResult<Param> {
  if depth > MAX_DEPTH {
    return Err(invalid("query parameter is nested too deeply or is cyclic"));
  }
  Ok(match type_of(env, v) {
    sys::ValueType::napi_undefined | sys::ValueType::napi_null => Param::Null,
    sys::ValueType::napi_boolean => Param::Bool(get_bool(env, v)),
    sys::ValueType::napi_number => Param::Number(get_number(env, v)),
    sys::ValueType::napi_string => Param::Text(get_string(env, v, "query parameter")?),
    sys::ValueType::napi_bigint => Param::BigInt(bigint_string(env, v)?),
    sys::ValueType::napi_object => {
      if is(env, v, sys::napi_is_date) {
        Param::Date(date_ms(env, v))
      } else if let Some(bytes) = buffer_bytes(env, v) {
        Param::Bytes(bytes)
      } else if is(env, v, sys::napi_is_array) {
        let mut items = Vec::new();
        for item in array_items(env, v, "query parameter")? {
          items.push(to_param(env, item, depth + 1)?);
        }
        Param::Array(items)
      } else {
        Param::Json(to_json(env, v, "query parameter")?.unwrap_or(Value::Null))
      }
    }
    _ => return Err(invalid("query parameters cannot be functions or Symbols")),
  })
}

/// A field value of `update()` or a `retrieve()` selector.
pub(crate) unsafe fn to_update_value(
  env: Env_,
  v: Raw,
  what: &str,
) -> JsResult<Option<UpdateValue>> {
  match type_of(env, v) {
    sys::ValueType::napi_null => return Ok(Some(UpdateValue::Null)),
    sys::ValueType::napi_undefined => return Ok(None),
    sys::ValueType::napi_function | sys::ValueType::napi_symbol => {
      return Err(invalid(format!("{what} cannot be a function or Symbol")))
    }
    _ => {}
  }
  if type_of(env, v) == sys::ValueType::napi_object && is(env, v, sys::napi_is_date) {
    let ms = date_ms(env, v);
    // Truncated toward zero like `as`; NaN, infinities and out-of-range values are refused.
    return ms
      .to_i64()
      .and_then(DateTime::from_timestamp_millis)
      .map(|d| Some(UpdateValue::Date(d)))
      .ok_or_else(|| invalid(format!("{what} is an invalid Date")));
  }
  Ok(to_json(env, v, what)?.map(UpdateValue::Json))
}

// ---- Rust -> JS ----

macro_rules! napi_try {
  ($e:expr) => {{
    let status = $e;
    if status != sys::Status::napi_ok {
      return Err(napi::Error::new(
        Status::GenericFailure,
        "could not create a JS value",
      ));
    }
  }};
}

/// A value JS cannot hold (a string over isize::MAX bytes, an array over 2^32 - 1 elements).
fn too_big() -> napi::Error {
  napi::Error::new(Status::GenericFailure, "value too large for JS")
}

pub(crate) unsafe fn js_null(env: Env_) -> Result<Raw> {
  let mut v = ptr::null_mut();
  napi_try!(sys::napi_get_null(env, &mut v));
  Ok(v)
}

pub(crate) unsafe fn js_string(env: Env_, s: &str) -> Result<Raw> {
  let mut v = ptr::null_mut();
  // A Rust string is at most isize::MAX bytes long, so this never fails.
  let len = isize::try_from(s.len()).map_err(|_| too_big())?;
  napi_try!(sys::napi_create_string_utf8(
    env,
    s.as_ptr().cast(),
    len,
    &mut v
  ));
  Ok(v)
}

unsafe fn js_number(env: Env_, n: f64) -> Result<Raw> {
  let mut v = ptr::null_mut();
  napi_try!(sys::napi_create_double(env, n, &mut v));
  Ok(v)
}

unsafe fn js_bool(env: Env_, b: bool) -> Result<Raw> {
  let mut v = ptr::null_mut();
  napi_try!(sys::napi_get_boolean(env, b, &mut v));
  Ok(v)
}

pub(crate) unsafe fn js_date(env: Env_, ms: f64) -> Result<Raw> {
  let mut v = ptr::null_mut();
  napi_try!(sys::napi_create_date(env, ms, &mut v));
  Ok(v)
}

unsafe fn js_buffer(env: Env_, b: &[u8]) -> Result<Raw> {
  let mut v = ptr::null_mut();
  let mut data = ptr::null_mut();
  napi_try!(sys::napi_create_buffer_copy(
    env,
    b.len(),
    b.as_ptr().cast(),
    &mut data,
    &mut v
  ));
  Ok(v)
}

pub(crate) unsafe fn js_object(env: Env_) -> Result<Raw> {
  let mut v = ptr::null_mut();
  napi_try!(sys::napi_create_object(env, &mut v));
  Ok(v)
}

pub(crate) unsafe fn set(env: Env_, obj: Raw, name: &str, val: Raw) -> Result<()> {
  let key = js_string(env, name)?;
  napi_try!(sys::napi_set_property(env, obj, key, val));
  Ok(())
}

pub(crate) unsafe fn js_array(
  env: Env_,
  items: impl ExactSizeIterator<Item = Result<Raw>>,
) -> Result<Raw> {
  let mut arr = ptr::null_mut();
  napi_try!(sys::napi_create_array_with_length(
    env,
    items.len(),
    &mut arr
  ));
  for (i, item) in items.enumerate() {
    let i = u32::try_from(i).map_err(|_| too_big())?;
    napi_try!(sys::napi_set_element(env, arr, i, item?));
  }
  Ok(arr)
}

pub(crate) unsafe fn json_to_js(env: Env_, v: &Value) -> Result<Raw> {
  match v {
    Value::Null => js_null(env),
    Value::Bool(b) => js_bool(env, *b),
    Value::Number(n) => js_number(env, n.as_f64().unwrap_or(f64::NAN)),
    Value::String(s) => js_string(env, s),
    Value::Array(items) => js_array(env, items.iter().map(|i| json_to_js(env, i))),
    Value::Object(map) => {
      let obj = js_object(env)?;
      for (k, val) in map {
        let val = json_to_js(env, val)?;
        if k == "__proto__" {
          define_own(env, obj, k, val)?;
        } else {
          set(env, obj, k, val)?;
        }
      }
      Ok(obj)
    }
  }
}

/// An own data property, as `JSON.parse` creates one: for the key `__proto__`, a plain
/// assignment would run the setter and replace the object's prototype (stored request params
/// `{"__proto__": {"isAdmin": true}}` would come back inheriting `isAdmin`).
unsafe fn define_own(env: Env_, obj: Raw, name: &str, val: Raw) -> Result<()> {
  use sys::PropertyAttributes::{configurable, enumerable, writable};
  let desc = sys::napi_property_descriptor {
    utf8name: ptr::null(),
    name: js_string(env, name)?,
    method: None,
    getter: None,
    setter: None,
    value: val,
    attributes: writable | enumerable | configurable,
    data: ptr::null_mut(),
  };
  napi_try!(sys::napi_define_properties(env, obj, 1, &desc));
  Ok(())
}

unsafe fn cell_to_js(env: Env_, c: &Cell) -> Result<Raw> {
  match c {
    Cell::Null => js_null(env),
    Cell::Bool(b) => js_bool(env, *b),
    Cell::Number(n) => js_number(env, *n),
    Cell::Text(s) => js_string(env, s),
    Cell::Json(v) => json_to_js(env, v),
    Cell::Date(ms) => js_date(env, *ms),
    Cell::Bytes(b) => js_buffer(env, b),
    Cell::Array(items) => js_array(env, items.iter().map(|i| cell_to_js(env, i))),
  }
}

fn date_to_ms(d: &DateTime<Utc>) -> f64 {
  d.timestamp_micros() as f64 / 1000.0
}

unsafe fn opt<T>(env: Env_, v: &Option<T>, f: impl FnOnce(&T) -> Result<Raw>) -> Result<Raw> {
  match v {
    Some(x) => f(x),
    None => js_null(env),
  }
}

/// `inspect`'s answer: `{ key, accepted, completer }`, snake_case like the key's own fields.
pub(crate) unsafe fn inspection_to_js(
  env: Env_,
  k: &IdempotencyKey,
  r: &KeyRecords,
) -> Result<Raw> {
  let date = |d: &DateTime<Utc>| js_date(env, date_to_ms(d));
  let text = |s: &String| js_string(env, s);
  let o = js_object(env)?;
  set(env, o, "key", key_to_js(env, k)?)?;
  let accepted = opt(env, &r.accepted, |a| {
    let a_js = js_object(env)?;
    set(env, a_js, "route", opt(env, &a.route, text)?)?;
    set(env, a_js, "accepted_at", date(&a.accepted_at)?)?;
    Ok(a_js)
  })?;
  set(env, o, "accepted", accepted)?;
  let completer = opt(env, &r.completer, |c| {
    let c_js = js_object(env)?;
    set(
      env,
      c_js,
      "attempts",
      js_number(env, f64::from(c.attempts))?,
    )?;
    set(env, c_js, "last_attempt_at", date(&c.last_attempt_at)?)?;
    set(
      env,
      c_js,
      "next_attempt_at",
      opt(env, &c.next_attempt_at, date)?,
    )?;
    set(
      env,
      c_js,
      "last_error_code",
      opt(env, &c.last_error_code, text)?,
    )?;
    set(env, c_js, "last_error", opt(env, &c.last_error, text)?)?;
    set(env, c_js, "gave_up_at", opt(env, &c.gave_up_at, date)?)?;
    Ok(c_js)
  })?;
  set(env, o, "completer", completer)?;
  Ok(o)
}

/// The key as a plain object with all ten fields, snake_case like Medusa's entity.
pub(crate) unsafe fn key_to_js(env: Env_, k: &IdempotencyKey) -> Result<Raw> {
  let o = js_object(env)?;
  set(env, o, "id", js_string(env, &k.id)?)?;
  set(
    env,
    o,
    "idempotency_key",
    js_string(env, &k.idempotency_key)?,
  )?;
  set(
    env,
    o,
    "created_at",
    js_date(env, date_to_ms(&k.created_at))?,
  )?;
  set(
    env,
    o,
    "locked_at",
    opt(env, &k.locked_at, |d| js_date(env, date_to_ms(d)))?,
  )?;
  set(
    env,
    o,
    "request_method",
    opt(env, &k.request_method, |s| js_string(env, s))?,
  )?;
  set(
    env,
    o,
    "request_params",
    opt(env, &k.request_params, |v| json_to_js(env, v))?,
  )?;
  set(
    env,
    o,
    "request_path",
    opt(env, &k.request_path, |s| js_string(env, s))?,
  )?;
  set(
    env,
    o,
    "response_code",
    opt(env, &k.response_code, |n| js_number(env, f64::from(*n)))?,
  )?;
  set(
    env,
    o,
    "response_body",
    opt(env, &k.response_body, |v| json_to_js(env, v))?,
  )?;
  set(env, o, "recovery_point", js_string(env, &k.recovery_point)?)?;
  Ok(o)
}

/// Rows as node-postgres returns them: one object per row, keyed by column name.
pub(crate) unsafe fn rows_to_js(env: Env_, r: &QueryResult) -> Result<Raw> {
  let keys = r
    .columns
    .iter()
    .map(|c| js_string(env, c))
    .collect::<Result<Vec<_>>>()?;
  js_array(
    env,
    r.rows.iter().map(|row| {
      let o = js_object(env)?;
      for (k, cell) in keys.iter().zip(row) {
        napi_try!(sys::napi_set_property(env, o, *k, cell_to_js(env, cell)?));
      }
      Ok(o)
    }),
  )
}

/// A JS `Error` with Medusa's `type`, our stable `code`, the `message` and a `date`.
pub(crate) unsafe fn error_to_js(env: Env_, e: &Error) -> Result<Raw> {
  let code = js_string(env, e.code())?;
  let msg = js_string(env, &e.to_string())?;
  let mut err = ptr::null_mut();
  napi_try!(sys::napi_create_error(env, code, msg, &mut err));
  set(env, err, "type", js_string(env, e.kind().as_str())?)?;
  set(env, err, "code", code)?;
  set(
    env,
    err,
    "date",
    js_date(env, Utc::now().timestamp_millis() as f64)?,
  )?;
  Ok(err)
}

/// A value of a row a caller's executor returned, as a cell.
pub(crate) unsafe fn to_cell(env: Env_, v: Raw) -> JsResult<Cell> {
  Ok(match type_of(env, v) {
    sys::ValueType::napi_undefined | sys::ValueType::napi_null => Cell::Null,
    sys::ValueType::napi_boolean => Cell::Bool(get_bool(env, v)),
    sys::ValueType::napi_number => Cell::Number(get_number(env, v)),
    sys::ValueType::napi_string => Cell::Text(get_string(env, v, "row value")?),
    sys::ValueType::napi_bigint => Cell::Text(bigint_string(env, v)?),
    sys::ValueType::napi_object if is(env, v, sys::napi_is_date) => Cell::Date(date_ms(env, v)),
    sys::ValueType::napi_object => match buffer_bytes(env, v) {
      Some(b) => Cell::Bytes(b),
      None => Cell::Json(to_json(env, v, "row value")?.unwrap_or(Value::Null)),
    },
    _ => Cell::Null,
  })
}
