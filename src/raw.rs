//! The binding's only `unsafe` code: the N-API calls, and napi's conversion traits
//! (`FromNapiValue`, `ToNapiValue`, `ValidateNapiValue`), whose methods are `unsafe fn`.
//!
//! Everything else handles JS values through two safe handles made only here:
//! - [`Cx`], the environment of the napi callback running now, on the JS thread (made from
//!   napi's `&Env`, or from the env napi hands a conversion trait);
//! - [`Val`], a JS value of that callback.
//!
//! Both carry the lifetime of the callback and hold raw pointers (neither `Send` nor `Sync`),
//! so neither can be sent to another thread or into a spawned future: that is the one
//! invariant every `unsafe` below relies on. (A method must name its `Arg`s with the lifetime
//! of its `&'env Env`, never `'static`, as napi's own `Unknown<'env>` must be.) Reads never throw: a failed
//! call (a getter or a Proxy trap that throws, a BigInt, a value of the wrong type) becomes a
//! typed `INVALID_ARGUMENT` with any pending exception cleared, as SPEC §6 wants.
//!
//! Arguments arrive as [`Arg`] (a method's parameter, read when the method asks, so the first
//! bad argument is reported and later ones are not touched) or [`Read`] (a value napi converts
//! for us, a callback's result: read at once, its error kept for later). Neither ever fails the
//! conversion napi runs at the boundary, which would throw napi's untyped status error.

use crate::reply::Reply;
use idempotency_core::Error;
use napi::bindgen_prelude::*;
use napi::sys;
use std::marker::PhantomData;
use std::ptr;

pub type JsResult<T> = std::result::Result<T, Error>;

fn invalid(msg: impl Into<String>) -> Error {
  Error::InvalidArgument(msg.into())
}

/// The environment of the napi callback running now, on the JS thread.
#[derive(Clone, Copy)]
pub struct Cx<'e> {
  env: sys::napi_env,
  _callback: PhantomData<&'e Env>,
}

/// A JS value of the napi callback running now.
#[derive(Clone, Copy)]
pub struct Val<'e> {
  cx: Cx<'e>,
  raw: sys::napi_value,
}

/// What `typeof` says (with `null` apart).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
  Undefined,
  Null,
  Boolean,
  Number,
  String,
  Symbol,
  Object,
  Function,
  External,
  BigInt,
}

/// One N-API call `sys::$f(env, args…)`, returning its status.
///
/// Only for calls whose arguments are the `Cx`'s env, `raw` values of `Val`s of that `Cx`, and
/// pointers made from `&mut`/`&` references to the caller's locals.
macro_rules! napi_call {
  ($cx:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
    let env: sys::napi_env = $cx.env;
    // SAFETY: `env` is the env of the napi callback running now on this thread (a `Cx` is made
    // only from one and cannot outlive it); the values are of that callback; every pointer
    // comes from a reference to a live local, valid for the call (see the macro's doc).
    unsafe { sys::$f(env $(, $arg)*) }
  }};
}

impl<'e> Cx<'e> {
  /// The environment napi passed to the running `#[napi]` method.
  pub fn of(env: &'e Env) -> Cx<'e> {
    Cx {
      env: env.raw(),
      _callback: PhantomData,
    }
  }

  fn from_sys(env: sys::napi_env) -> Cx<'e> {
    Cx {
      env,
      _callback: PhantomData,
    }
  }

  fn val(self, raw: sys::napi_value) -> Val<'e> {
    Val { cx: self, raw }
  }

  /// Turn a failed call into `invalid_data`, clearing any exception it left pending.
  fn ok(self, status: sys::napi_status, what: &str) -> JsResult<()> {
    if status == sys::Status::napi_ok {
      return Ok(());
    }
    let mut pending = false;
    napi_call!(self, napi_is_exception_pending(&mut pending));
    if pending {
      let mut exc = ptr::null_mut();
      napi_call!(self, napi_get_and_clear_last_exception(&mut exc));
      return Err(invalid(format!("{what}: reading the value threw")));
    }
    Err(invalid(format!("{what}: not a supported value")))
  }

  // ---- Rust -> JS ----

  fn made(self, status: sys::napi_status, v: sys::napi_value) -> Result<Val<'e>> {
    if status != sys::Status::napi_ok {
      return Err(napi::Error::new(
        Status::GenericFailure,
        "could not create a JS value",
      ));
    }
    Ok(self.val(v))
  }

  pub fn null(self) -> Result<Val<'e>> {
    let mut v = ptr::null_mut();
    self.made(napi_call!(self, napi_get_null(&mut v)), v)
  }

  pub fn undefined(self) -> Result<Val<'e>> {
    let mut v = ptr::null_mut();
    self.made(napi_call!(self, napi_get_undefined(&mut v)), v)
  }

  pub fn string(self, s: &str) -> Result<Val<'e>> {
    let mut v = ptr::null_mut();
    // A Rust string is at most isize::MAX bytes long, so this never fails.
    let len = isize::try_from(s.len()).map_err(|_| too_big())?;
    // SAFETY: `self.env` is the running callback's env (see `Cx`); `s` is `len` bytes of valid
    // UTF-8 that outlive the call; `v` is a local.
    let status = unsafe { sys::napi_create_string_utf8(self.env, s.as_ptr().cast(), len, &mut v) };
    self.made(status, v)
  }

  pub fn number(self, n: f64) -> Result<Val<'e>> {
    let mut v = ptr::null_mut();
    self.made(napi_call!(self, napi_create_double(n, &mut v)), v)
  }

  pub fn bool(self, b: bool) -> Result<Val<'e>> {
    let mut v = ptr::null_mut();
    self.made(napi_call!(self, napi_get_boolean(b, &mut v)), v)
  }

  pub fn date(self, ms: f64) -> Result<Val<'e>> {
    let mut v = ptr::null_mut();
    self.made(napi_call!(self, napi_create_date(ms, &mut v)), v)
  }

  /// A `Buffer` holding a copy of `b`.
  pub fn buffer(self, b: &[u8]) -> Result<Val<'e>> {
    let mut v = ptr::null_mut();
    let mut data = ptr::null_mut();
    // SAFETY: `self.env` is the running callback's env (see `Cx`); `b` is `b.len()` readable
    // bytes, copied before the call returns; `data` and `v` are locals.
    let status = unsafe {
      sys::napi_create_buffer_copy(self.env, b.len(), b.as_ptr().cast(), &mut data, &mut v)
    };
    self.made(status, v)
  }

  pub fn object(self) -> Result<Val<'e>> {
    let mut v = ptr::null_mut();
    self.made(napi_call!(self, napi_create_object(&mut v)), v)
  }

  /// `obj[key] = val`, `key` a JS value (a row's column names are made once per result).
  pub fn set_key(self, obj: Val<'e>, key: Val<'e>, val: Val<'e>) -> Result<()> {
    let status = napi_call!(self, napi_set_property(obj.raw, key.raw, val.raw));
    self.made(status, obj.raw).map(drop)
  }

  /// `obj[name] = val`.
  pub fn set(self, obj: Val<'e>, name: &str, val: Val<'e>) -> Result<()> {
    self.set_key(obj, self.string(name)?, val)
  }

  /// An own data property, as `JSON.parse` creates one (for the key `__proto__`, a plain
  /// assignment would run the setter and replace the object's prototype).
  pub fn define_own(self, obj: Val<'e>, name: &str, val: Val<'e>) -> Result<()> {
    use sys::PropertyAttributes::{configurable, enumerable, writable};
    let desc = sys::napi_property_descriptor {
      utf8name: ptr::null(),
      name: self.string(name)?.raw,
      method: None,
      getter: None,
      setter: None,
      value: val.raw,
      attributes: writable | enumerable | configurable,
      data: ptr::null_mut(),
    };
    let status = napi_call!(self, napi_define_properties(obj.raw, 1, &desc));
    self.made(status, obj.raw).map(drop)
  }

  pub fn array(self, items: impl ExactSizeIterator<Item = Result<Val<'e>>>) -> Result<Val<'e>> {
    let mut arr = ptr::null_mut();
    let status = napi_call!(self, napi_create_array_with_length(items.len(), &mut arr));
    let arr = self.made(status, arr)?;
    for (i, item) in items.enumerate() {
      let i = u32::try_from(i).map_err(|_| too_big())?;
      let status = napi_call!(self, napi_set_element(arr.raw, i, item?.raw));
      self.made(status, arr.raw)?;
    }
    Ok(arr)
  }

  /// `new Error(msg)` with `code` set by N-API.
  pub fn error(self, code: Val<'e>, msg: Val<'e>) -> Result<Val<'e>> {
    let mut err = ptr::null_mut();
    self.made(
      napi_call!(self, napi_create_error(code.raw, msg.raw, &mut err)),
      err,
    )
  }

  /// Any value napi converts itself (a `#[napi]` class instance, a number).
  pub fn value<T: ToNapiValue>(self, v: T) -> Result<Val<'e>> {
    // SAFETY: `self.env` is the running callback's env, on its thread (see `Cx`).
    let raw = unsafe { T::to_napi_value(self.env, v)? };
    Ok(self.val(raw))
  }
}

/// A value JS cannot hold (a string over isize::MAX bytes, an array over 2^32 - 1 elements).
fn too_big() -> napi::Error {
  napi::Error::new(Status::GenericFailure, "value too large for JS")
}

/// Longest array we read: a sparse `new Array(2 ** 32 - 1)` must be refused, not walked.
const MAX_ARRAY: u32 = 1 << 20;

impl<'e> Val<'e> {
  pub fn cx(self) -> Cx<'e> {
    self.cx
  }

  pub fn kind(self) -> Kind {
    if self.raw.is_null() {
      return Kind::Undefined;
    }
    let mut t = 0;
    napi_call!(self.cx, napi_typeof(self.raw, &mut t));
    match t {
      sys::ValueType::napi_null => Kind::Null,
      sys::ValueType::napi_boolean => Kind::Boolean,
      sys::ValueType::napi_number => Kind::Number,
      sys::ValueType::napi_string => Kind::String,
      sys::ValueType::napi_symbol => Kind::Symbol,
      sys::ValueType::napi_object => Kind::Object,
      sys::ValueType::napi_function => Kind::Function,
      sys::ValueType::napi_external => Kind::External,
      sys::ValueType::napi_bigint => Kind::BigInt,
      _ => Kind::Undefined,
    }
  }

  pub fn is_nullish(self) -> bool {
    matches!(self.kind(), Kind::Undefined | Kind::Null)
  }

  pub fn is_undefined(self) -> bool {
    self.kind() == Kind::Undefined
  }

  /// The string, or `invalid_data` ("`what` must be a string") for anything else.
  pub fn string(self, what: &str) -> JsResult<String> {
    if self.kind() != Kind::String {
      return Err(invalid(format!("{what} must be a string")));
    }
    let (cx, v) = (self.cx, self.raw);
    let mut len = 0usize;
    let status = napi_call!(
      cx,
      napi_get_value_string_utf8(v, ptr::null_mut(), 0, &mut len)
    );
    cx.ok(status, what)?;
    let mut buf = vec![0u8; len + 1];
    let mut written = 0usize;
    // SAFETY: `cx.env` and `v` are of the running callback (see `Val`); `buf` is `len + 1`
    // writable bytes, the size passed; `written` is a local.
    let status = unsafe {
      sys::napi_get_value_string_utf8(cx.env, v, buf.as_mut_ptr().cast(), len + 1, &mut written)
    };
    cx.ok(status, what)?;
    buf.truncate(written);
    // N-API replaces lone surrogates with U+FFFD, so this is valid UTF-8.
    String::from_utf8(buf).map_err(|_| invalid(format!("{what} is not valid UTF-16")))
  }

  /// A boolean's value (`false` for anything else).
  pub fn bool(self) -> bool {
    let mut b = false;
    napi_call!(self.cx, napi_get_value_bool(self.raw, &mut b));
    b
  }

  /// A number's value (0 for anything else).
  pub fn number(self) -> f64 {
    let mut n = 0.0;
    napi_call!(self.cx, napi_get_value_double(self.raw, &mut n));
    n
  }

  /// `obj[name]`, running a getter or a Proxy trap (`what` names it in the error if it throws).
  pub fn get(self, name: &str, what: &str) -> JsResult<Val<'e>> {
    let mut out = ptr::null_mut();
    let key = std::ffi::CString::new(name).map_err(|_| invalid("bad property name"))?;
    let status = napi_call!(
      self.cx,
      napi_get_named_property(self.raw, key.as_ptr(), &mut out)
    );
    self.cx.ok(status, what)?;
    Ok(self.cx.val(out))
  }

  /// Own enumerable string keys and their values, like `Object.keys`.
  pub fn own_keys(self, what: &str) -> JsResult<Vec<(String, Val<'e>)>> {
    let cx = self.cx;
    let mut names = ptr::null_mut();
    let status = napi_call!(
      cx,
      napi_get_all_property_names(
        self.raw,
        sys::KeyCollectionMode::own_only,
        sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
        sys::KeyConversion::numbers_to_strings,
        &mut names,
      )
    );
    cx.ok(status, what)?;
    let mut len = 0u32;
    cx.ok(napi_call!(cx, napi_get_array_length(names, &mut len)), what)?;
    let mut out = Vec::with_capacity(len as usize);
    for i in 0..len {
      let mut k = ptr::null_mut();
      cx.ok(napi_call!(cx, napi_get_element(names, i, &mut k)), what)?;
      let mut val = ptr::null_mut();
      cx.ok(
        napi_call!(cx, napi_get_property(self.raw, k, &mut val)),
        what,
      )?;
      out.push((cx.val(k).string(what)?, cx.val(val)));
    }
    Ok(out)
  }

  fn is(self, f: unsafe fn(sys::napi_env, sys::napi_value, *mut bool) -> sys::napi_status) -> bool {
    let mut b = false;
    // SAFETY: `f` is one of N-API's `napi_is_*` checks, called with the running callback's env
    // and value (see `Val`) and a local.
    unsafe { f(self.cx.env, self.raw, &mut b) == sys::Status::napi_ok && b }
  }

  pub fn is_array(self) -> bool {
    self.is(sys::napi_is_array)
  }

  /// The elements of an array (`invalid_data` for a non-array, an over-long array, or an
  /// element getter that throws).
  pub fn array_items(self, what: &str) -> JsResult<Vec<Val<'e>>> {
    if !self.is_array() {
      return Err(invalid(format!("{what} must be an array")));
    }
    let cx = self.cx;
    let mut len = 0u32;
    cx.ok(
      napi_call!(cx, napi_get_array_length(self.raw, &mut len)),
      what,
    )?;
    if len > MAX_ARRAY {
      return Err(invalid(format!(
        "{what} has more than {MAX_ARRAY} elements"
      )));
    }
    let mut out = Vec::with_capacity(len as usize);
    for i in 0..len {
      let mut v = ptr::null_mut();
      cx.ok(napi_call!(cx, napi_get_element(self.raw, i, &mut v)), what)?;
      out.push(cx.val(v));
    }
    Ok(out)
  }

  /// A `Date`'s time in ms since the epoch (`None` for anything else).
  pub fn date_ms(self) -> Option<f64> {
    if self.kind() != Kind::Object || !self.is(sys::napi_is_date) {
      return None;
    }
    let mut ms = 0.0;
    napi_call!(self.cx, napi_get_date_value(self.raw, &mut ms));
    Some(ms)
  }

  /// A copy of a `Buffer`'s or a `Uint8Array`'s bytes (`None` for anything else).
  pub fn bytes(self) -> Option<Vec<u8>> {
    let mut data = ptr::null_mut();
    let mut len = 0usize;
    if self.is(sys::napi_is_buffer) {
      napi_call!(self.cx, napi_get_buffer_info(self.raw, &mut data, &mut len));
    } else if self.is(sys::napi_is_typedarray) {
      let mut kind = 0;
      let mut ab = ptr::null_mut();
      let mut off = 0usize;
      napi_call!(
        self.cx,
        napi_get_typedarray_info(self.raw, &mut kind, &mut len, &mut data, &mut ab, &mut off)
      );
      if kind != sys::TypedarrayType::uint8_array {
        return None;
      }
    } else {
      return None;
    }
    if len == 0 || data.is_null() {
      return Some(vec![]);
    }
    // SAFETY: N-API reported `len` bytes at `data`, the backing store of a value of the running
    // callback, which no JS runs to detach or resize while we copy it.
    Some(unsafe { std::slice::from_raw_parts(data as *const u8, len) }.to_vec())
  }

  /// A BigInt's decimal digits (`String(v)`).
  pub fn bigint_string(self) -> JsResult<String> {
    let mut s = ptr::null_mut();
    let status = napi_call!(self.cx, napi_coerce_to_string(self.raw, &mut s));
    self.cx.ok(status, "BigInt")?;
    self.cx.val(s).string("BigInt")
  }

  /// The value as a napi type that takes a JS function (a `ThreadsafeFunction`, callable from
  /// any thread); the caller has checked that it is a function.
  pub fn threadsafe<T: FromNapiValue>(self) -> Result<T> {
    // SAFETY: the running callback's env and value, on its thread (see `Val`).
    unsafe { T::from_napi_value(self.cx.env, self.raw) }
  }

  /// The value as napi's error carrying it (napi rejects or throws that very object).
  pub fn into_error(self) -> napi::Error {
    // SAFETY: the running callback's env and value, on its thread (see `Val`).
    match unsafe { Unknown::from_napi_value(self.cx.env, self.raw) } {
      Ok(u) => napi::Error::from(u),
      Err(x) => x,
    }
  }
}

/// Reject or throw with a typed JS error built on the JS thread (napi reuses the object).
pub fn reject(cx: Cx<'_>, e: &Error) -> napi::Error {
  match crate::js::error_to_js(cx, e) {
    Ok(v) => v.into_error(),
    Err(x) => x,
  }
}

// ---- napi's conversion traits ----

/// A Rust value read from a JS value; a value it refuses is an `invalid_data` error.
pub trait FromJs: Sized {
  fn from_js(v: Val<'_>) -> JsResult<Self>;
}

/// A Rust value that can be built as a JS value.
pub trait IntoJs {
  fn into_js(self, cx: Cx<'_>) -> Result<Val<'_>>;
}

/// A method's argument, a `T` to be: kept as the JS value and read by [`Arg::read`] when the
/// method asks, in the method's own order. Never fails napi's conversion, so a hostile value
/// is refused by the method (a typed rejection, or a typed throw from a sync method).
pub struct Arg<'e, T> {
  val: Val<'e>,
  _to: PhantomData<fn() -> T>,
}

impl<T: FromJs> Arg<'_, T> {
  pub fn read(self) -> JsResult<T> {
    T::from_js(self.val)
  }
}

/// A function argument (its TS type is given where the method is declared).
pub struct Callback;

impl<'e> Arg<'e, Callback> {
  /// The function, or `refusal` as a typed `INVALID_ARGUMENT` for any other value.
  pub fn function(self, refusal: &str) -> JsResult<Val<'e>> {
    if self.val.kind() == Kind::Function {
      Ok(self.val)
    } else {
      Err(invalid(refusal))
    }
  }
}

impl<T> TypeName for Arg<'_, T> {
  fn type_name() -> &'static str {
    "unknown"
  }
  fn value_type() -> ValueType {
    ValueType::Unknown
  }
}

impl<T> ValidateNapiValue for Arg<'_, T> {
  /// Accepts every value: the method itself refuses what it cannot use.
  // SAFETY: reads nothing; napi's contract for the pointers is not relied on.
  unsafe fn validate(_: sys::napi_env, _: sys::napi_value) -> Result<sys::napi_value> {
    Ok(ptr::null_mut())
  }
}

impl<T> FromNapiValue for Arg<'_, T> {
  // SAFETY: napi's contract: called by napi during the method's callback, with its env and
  // argument, so the `Val` made here is of the running callback; `Arg`'s lifetime is the
  // method's, so it cannot outlive it.
  unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
    Ok(Arg {
      val: Cx::from_sys(env).val(v),
      _to: PhantomData,
    })
  }
}

/// A value napi converts on the JS thread for code running elsewhere (what a stage callback
/// returns, what an executor resolves to): read at once, a refused value kept as its error so
/// it is reported as ours, not mistaken for the callback's own failure.
pub struct Read<T>(pub JsResult<T>);

impl<T> TypeName for Read<T> {
  fn type_name() -> &'static str {
    "unknown"
  }
  fn value_type() -> ValueType {
    ValueType::Unknown
  }
}

impl<T> ValidateNapiValue for Read<T> {
  /// Accepts every value: a refused one is kept as its error.
  // SAFETY: reads nothing; napi's contract for the pointers is not relied on.
  unsafe fn validate(_: sys::napi_env, _: sys::napi_value) -> Result<sys::napi_value> {
    Ok(ptr::null_mut())
  }
}

impl<T: FromJs> FromNapiValue for Read<T> {
  // SAFETY: napi's contract: called by napi on the JS thread with the env and value of the
  // callback converting it; the `Val` is used only during this call.
  unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
    Ok(Read(T::from_js(Cx::from_sys(env).val(v))))
  }
}

/// A Rust value napi sends to JS (a threadsafe function's argument), built by `IntoJs`.
pub struct Js<T>(pub T);

impl<T: IntoJs> ToNapiValue for Js<T> {
  // SAFETY: napi's contract: called by napi on the JS thread with that callback's env.
  unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
    Ok(val.0.into_js(Cx::from_sys(env))?.raw)
  }
}

impl<T: IntoJs> ToNapiValue for Reply<T> {
  // SAFETY: napi's contract: called by napi on the JS thread, as the promise settles, with
  // that callback's env.
  unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
    let cx = Cx::from_sys(env);
    match val.0 {
      Ok(v) => Ok(v.into_js(cx)?.raw),
      Err(e) => Err(reject(cx, &e)),
    }
  }
}
