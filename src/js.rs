//! Conversions between JS values and the core's types, on the safe handles of `raw`: every odd
//! input (getters that throw, cycles, BigInt, Symbols, functions) becomes a typed
//! `invalid_data` error instead of a napi status string or a pending exception.

use crate::raw::{Cx, JsResult, Kind, Val};
use chrono::{DateTime, Utc};
use idempotency_core::{Cell, Error, IdempotencyKey, KeyRecords, Param, QueryResult, UpdateValue};
use napi::bindgen_prelude::*;
use num_traits::ToPrimitive;
use serde_json::Value;

const MAX_DEPTH: usize = 64;

fn invalid(msg: impl Into<String>) -> Error {
  Error::InvalidArgument(msg.into())
}

/// A boolean option: `undefined`/`null` is `None`, anything but a boolean is refused.
pub(crate) fn opt_bool(obj: Val<'_>, name: &str) -> JsResult<Option<bool>> {
  let v = obj.get(name, name)?;
  if v.is_nullish() {
    return Ok(None);
  }
  if v.kind() != Kind::Boolean {
    return Err(invalid(format!("{name} must be a boolean")));
  }
  Ok(Some(v.bool()))
}

/// A string option: `undefined`/`null` is `None`.
pub(crate) fn opt_string(obj: Val<'_>, name: &str) -> JsResult<Option<String>> {
  let v = obj.get(name, name)?;
  if v.is_nullish() {
    return Ok(None);
  }
  v.string(name).map(Some)
}

/// A JS value as JSON, following `JSON.stringify`: `undefined`, functions and Symbols are
/// dropped from objects and become `null` in arrays; Dates become ISO strings.
pub(crate) fn to_json(v: Val<'_>, what: &str) -> JsResult<Option<Value>> {
  to_json_at(v, what, 0)
}

fn to_json_at(v: Val<'_>, what: &str, depth: usize) -> JsResult<Option<Value>> {
  if depth > MAX_DEPTH {
    return Err(invalid(format!("{what} is nested too deeply or is cyclic")));
  }
  Ok(Some(match v.kind() {
    Kind::Undefined | Kind::Function | Kind::Symbol => return Ok(None),
    Kind::Null => Value::Null,
    Kind::Boolean => Value::Bool(v.bool()),
    Kind::Number => number_json(v.number()),
    Kind::String => Value::String(v.string(what)?),
    Kind::BigInt => {
      return Err(invalid(format!(
        "{what}: a BigInt cannot be stored as JSON"
      )))
    }
    Kind::Object => {
      if let Some(ms) = v.date_ms() {
        idempotency_core::iso_string(ms).map_or(Value::Null, Value::String)
      } else if let Some(bytes) = v.bytes() {
        // As JSON.stringify prints a Buffer, read in one copy rather than element by element.
        let data = bytes.into_iter().map(Value::from).collect();
        serde_json::json!({ "type": "Buffer", "data": Value::Array(data) })
      } else if v.is_array() {
        let mut items = Vec::new();
        for item in v.array_items(what)? {
          items.push(to_json_at(item, what, depth + 1)?.unwrap_or(Value::Null));
        }
        Value::Array(items)
      } else {
        let mut map = serde_json::Map::new();
        for (k, val) in v.own_keys(what)? {
          if let Some(j) = to_json_at(val, what, depth + 1)? {
            map.insert(k, j);
          }
        }
        Value::Object(map)
      }
    }
    Kind::External => return Err(invalid(format!("{what} is not a supported value"))),
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
pub(crate) fn to_param(v: Val<'_>, depth: usize) -> JsResult<Param> {
  if depth > MAX_DEPTH {
    return Err(invalid("query parameter is nested too deeply or is cyclic"));
  }
  Ok(match v.kind() {
    Kind::Undefined | Kind::Null => Param::Null,
    Kind::Boolean => Param::Bool(v.bool()),
    Kind::Number => Param::Number(v.number()),
    Kind::String => Param::Text(v.string("query parameter")?),
    Kind::BigInt => Param::BigInt(v.bigint_string()?),
    Kind::Object => {
      if let Some(ms) = v.date_ms() {
        Param::Date(ms)
      } else if let Some(bytes) = v.bytes() {
        Param::Bytes(bytes)
      } else if v.is_array() {
        let mut items = Vec::new();
        for item in v.array_items("query parameter")? {
          items.push(to_param(item, depth + 1)?);
        }
        Param::Array(items)
      } else {
        Param::Json(to_json(v, "query parameter")?.unwrap_or(Value::Null))
      }
    }
    _ => return Err(invalid("query parameters cannot be functions or Symbols")),
  })
}

/// A field value of `update()` or a `retrieve()` selector.
pub(crate) fn to_update_value(v: Val<'_>, what: &str) -> JsResult<Option<UpdateValue>> {
  match v.kind() {
    Kind::Null => return Ok(Some(UpdateValue::Null)),
    Kind::Undefined => return Ok(None),
    Kind::Function | Kind::Symbol => {
      return Err(invalid(format!("{what} cannot be a function or Symbol")))
    }
    _ => {}
  }
  if let Some(ms) = v.date_ms() {
    // Truncated toward zero like `as`; NaN, infinities and out-of-range values are refused.
    return ms
      .to_i64()
      .and_then(DateTime::from_timestamp_millis)
      .map(|d| Some(UpdateValue::Date(d)))
      .ok_or_else(|| invalid(format!("{what} is an invalid Date")));
  }
  Ok(to_json(v, what)?.map(UpdateValue::Json))
}

// ---- Rust -> JS ----

pub(crate) fn json_to_js<'e>(cx: Cx<'e>, v: &Value) -> Result<Val<'e>> {
  match v {
    Value::Null => cx.null(),
    Value::Bool(b) => cx.bool(*b),
    Value::Number(n) => cx.number(n.as_f64().unwrap_or(f64::NAN)),
    Value::String(s) => cx.string(s),
    Value::Array(items) => cx.array(items.iter().map(|i| json_to_js(cx, i))),
    Value::Object(map) => {
      let obj = cx.object()?;
      for (k, val) in map {
        let val = json_to_js(cx, val)?;
        if k == "__proto__" {
          // Stored request params `{"__proto__": {"isAdmin": true}}` must not come back
          // inheriting `isAdmin`.
          cx.define_own(obj, k, val)?;
        } else {
          cx.set(obj, k, val)?;
        }
      }
      Ok(obj)
    }
  }
}

fn cell_to_js<'e>(cx: Cx<'e>, c: &Cell) -> Result<Val<'e>> {
  match c {
    Cell::Null => cx.null(),
    Cell::Bool(b) => cx.bool(*b),
    Cell::Number(n) => cx.number(*n),
    Cell::Text(s) => cx.string(s),
    Cell::Json(v) => json_to_js(cx, v),
    Cell::Date(ms) => cx.date(*ms),
    Cell::Bytes(b) => cx.buffer(b),
    Cell::Array(items) => cx.array(items.iter().map(|i| cell_to_js(cx, i))),
  }
}

fn date_to_ms(d: &DateTime<Utc>) -> f64 {
  d.timestamp_micros() as f64 / 1000.0
}

fn opt<'e, T>(cx: Cx<'e>, v: &Option<T>, f: impl FnOnce(&T) -> Result<Val<'e>>) -> Result<Val<'e>> {
  match v {
    Some(x) => f(x),
    None => cx.null(),
  }
}

/// `inspect`'s answer: `{ key, accepted, completer }`, snake_case like the key's own fields.
pub(crate) fn inspection_to_js<'e>(
  cx: Cx<'e>,
  k: &IdempotencyKey,
  r: &KeyRecords,
) -> Result<Val<'e>> {
  let date = |d: &DateTime<Utc>| cx.date(date_to_ms(d));
  let text = |s: &String| cx.string(s);
  let o = cx.object()?;
  cx.set(o, "key", key_to_js(cx, k)?)?;
  let accepted = opt(cx, &r.accepted, |a| {
    let a_js = cx.object()?;
    cx.set(a_js, "route", opt(cx, &a.route, text)?)?;
    cx.set(a_js, "accepted_at", date(&a.accepted_at)?)?;
    Ok(a_js)
  })?;
  cx.set(o, "accepted", accepted)?;
  let completer = opt(cx, &r.completer, |c| {
    let c_js = cx.object()?;
    cx.set(c_js, "attempts", cx.number(f64::from(c.attempts))?)?;
    cx.set(c_js, "last_attempt_at", date(&c.last_attempt_at)?)?;
    cx.set(c_js, "next_attempt_at", opt(cx, &c.next_attempt_at, date)?)?;
    cx.set(c_js, "last_error_code", opt(cx, &c.last_error_code, text)?)?;
    cx.set(c_js, "last_error", opt(cx, &c.last_error, text)?)?;
    cx.set(c_js, "gave_up_at", opt(cx, &c.gave_up_at, date)?)?;
    Ok(c_js)
  })?;
  cx.set(o, "completer", completer)?;
  Ok(o)
}

/// The key as a plain object with all ten fields, snake_case like Medusa's entity.
pub(crate) fn key_to_js<'e>(cx: Cx<'e>, k: &IdempotencyKey) -> Result<Val<'e>> {
  let o = cx.object()?;
  cx.set(o, "id", cx.string(&k.id)?)?;
  cx.set(o, "idempotency_key", cx.string(&k.idempotency_key)?)?;
  cx.set(o, "created_at", cx.date(date_to_ms(&k.created_at))?)?;
  cx.set(
    o,
    "locked_at",
    opt(cx, &k.locked_at, |d| cx.date(date_to_ms(d)))?,
  )?;
  cx.set(
    o,
    "request_method",
    opt(cx, &k.request_method, |s| cx.string(s))?,
  )?;
  cx.set(
    o,
    "request_params",
    opt(cx, &k.request_params, |v| json_to_js(cx, v))?,
  )?;
  cx.set(
    o,
    "request_path",
    opt(cx, &k.request_path, |s| cx.string(s))?,
  )?;
  cx.set(
    o,
    "response_code",
    opt(cx, &k.response_code, |n| cx.number(f64::from(*n)))?,
  )?;
  cx.set(
    o,
    "response_body",
    opt(cx, &k.response_body, |v| json_to_js(cx, v))?,
  )?;
  cx.set(o, "recovery_point", cx.string(&k.recovery_point)?)?;
  Ok(o)
}

/// Rows as node-postgres returns them: one object per row, keyed by column name.
pub(crate) fn rows_to_js<'e>(cx: Cx<'e>, r: &QueryResult) -> Result<Val<'e>> {
  let keys = r
    .columns
    .iter()
    .map(|c| cx.string(c))
    .collect::<Result<Vec<_>>>()?;
  cx.array(r.rows.iter().map(|row| {
    let o = cx.object()?;
    for (k, cell) in keys.iter().zip(row) {
      cx.set_key(o, *k, cell_to_js(cx, cell)?)?;
    }
    Ok(o)
  }))
}

/// A JS `Error` with Medusa's `type`, our stable `code`, the `message` and a `date`.
pub(crate) fn error_to_js<'e>(cx: Cx<'e>, e: &Error) -> Result<Val<'e>> {
  let code = cx.string(e.code())?;
  let msg = cx.string(&e.to_string())?;
  let err = cx.error(code, msg)?;
  cx.set(err, "type", cx.string(e.kind().as_str())?)?;
  cx.set(err, "code", code)?;
  cx.set(err, "date", cx.date(Utc::now().timestamp_millis() as f64)?)?;
  Ok(err)
}

/// A value of a row a caller's executor returned, as a cell.
pub(crate) fn to_cell(v: Val<'_>) -> JsResult<Cell> {
  Ok(match v.kind() {
    Kind::Undefined | Kind::Null => Cell::Null,
    Kind::Boolean => Cell::Bool(v.bool()),
    Kind::Number => Cell::Number(v.number()),
    Kind::String => Cell::Text(v.string("row value")?),
    Kind::BigInt => Cell::Text(v.bigint_string()?),
    Kind::Object => match v.date_ms() {
      Some(ms) => Cell::Date(ms),
      None => match v.bytes() {
        Some(b) => Cell::Bytes(b),
        None => Cell::Json(to_json(v, "row value")?.unwrap_or(Value::Null)),
      },
    },
    _ => Cell::Null,
  })
}
