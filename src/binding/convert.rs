//! Reading JavaScript values: any value as JSON (with the path of a bad field named), then into
//! the core's request types through serde.

use serde::de::DeserializeOwned;

use napi::bindgen_prelude::*;
use serde_json::Value;

use super::*;

/// Reads any JavaScript value as JSON. Values JSON cannot hold (NaN, Infinity, functions,
/// symbols, BigInt, cycles deeper than 64) are `INVALID_ARGUMENT` naming where they were. Only an
/// object's own enumerable string-keyed properties are read (nothing inherited from its
/// prototype); a getter or Proxy trap that throws, or a revoked Proxy, is `INVALID_ARGUMENT` with
/// the exception's message (the exception is taken, not left pending); a string with an unpaired
/// surrogate is `INVALID_ARGUMENT` unless it is free text (see [`free_text`]).
pub(crate) fn js_value(env: &Env, what: &str, v: Option<Unknown<'_>>) -> CoreResult<Value> {
  match v {
    None => Ok(Value::Null),
    // SAFETY: `env` and `u` come from napi-rs for the synchronous call being served, on the
    // JavaScript thread, so the raw env and the value's handle are live for this whole call
    // (`u` borrows from the call's handle scope and cannot outlive it).
    Some(u) => unsafe { to_json(env.raw(), u.raw(), what, 0) },
  }
}

/// Whether the value at path `at` is free text (a prompt, system prompt, compaction instructions
/// or the text of `countTokens`), whose unpaired surrogates become U+FFFD as `TextEncoder` has
/// them. Everywhere else (ids, titles, models, paths, tool rules, keys) they are refused, so that
/// two different strings can never become the same value.
pub(crate) fn free_text(at: &str) -> bool {
  at == "text" || matches!(at.rsplit('.').next(), Some("prompt" | "appendSystemPrompt" | "summaryInstructions"))
}

/// Takes the JavaScript exception a failed napi call left pending (a throwing getter or Proxy
/// trap, a revoked Proxy) so that it is not thrown when the call returns, and describes it:
/// `": <message>"`, or an empty string when no exception was pending.
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on.
pub(crate) unsafe fn take_exception(env: napi::sys::napi_env) -> String {
  use napi::sys;
  let mut pending = false;
  // SAFETY: `env` is live on this thread (this function's contract); `pending` is a local `bool`.
  if unsafe { sys::napi_is_exception_pending(env, &mut pending) } != sys::Status::napi_ok || !pending {
    return String::new();
  }
  let mut exc = std::ptr::null_mut();
  // SAFETY: as above; `exc` is a local `napi_value` that receives the exception's handle.
  if unsafe { sys::napi_get_and_clear_last_exception(env, &mut exc) } != sys::Status::napi_ok {
    return String::new();
  }
  // The message: a thrown string as it is, or an object's `message` when that is a string. Reading
  // `message` may itself throw (a Proxy, a getter); that exception is dropped too.
  let mut t = 0;
  // SAFETY: as above; `exc` was just returned by a successful napi call in the open handle scope.
  if unsafe { sys::napi_typeof(env, exc, &mut t) } != sys::Status::napi_ok {
    return String::new();
  }
  let mut msg = exc;
  if t == sys::ValueType::napi_object {
    // SAFETY: as above; `exc` is an object, the name a NUL-terminated C string literal, `msg` a
    // local `napi_value`.
    if unsafe { sys::napi_get_named_property(env, exc, c"message".as_ptr(), &mut msg) } != sys::Status::napi_ok {
      let mut again = std::ptr::null_mut();
      // SAFETY: as above; `again` is a local `napi_value` for the exception, which is dropped.
      unsafe { sys::napi_get_and_clear_last_exception(env, &mut again) };
      return String::new();
    }
  }
  let mut buf = [0u8; 256];
  let mut written = 0usize;
  // SAFETY: as above; `msg` is a handle in the open scope (a non-string fails with
  // `napi_string_expected` and writes nothing); `buf` is a local array of exactly the size passed.
  if unsafe { sys::napi_get_value_string_utf8(env, msg, buf.as_mut_ptr().cast(), buf.len(), &mut written) } != sys::Status::napi_ok {
    return String::new();
  }
  format!(": {}", String::from_utf8_lossy(&buf[..written.min(buf.len())]))
}

/// Whether the JavaScript string `v` holds an unpaired surrogate (read as UTF-16).
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on, and `v` a string
/// handle valid in the currently open handle scope.
unsafe fn has_lone_surrogate(env: napi::sys::napi_env, v: napi::sys::napi_value) -> bool {
  use napi::sys;
  let mut len = 0usize;
  // SAFETY: per this function's contract; a null buffer of size 0 only asks for the length.
  if unsafe { sys::napi_get_value_string_utf16(env, v, std::ptr::null_mut(), 0, &mut len) } != sys::Status::napi_ok {
    return false;
  }
  let mut buf = vec![0u16; len + 1];
  let mut written = 0usize;
  // SAFETY: per this function's contract; `buf` is an initialised, writable allocation of exactly
  // `buf.len()` code units, the size passed, so napi writes within it (NUL included).
  if unsafe { sys::napi_get_value_string_utf16(env, v, buf.as_mut_ptr(), buf.len(), &mut written) } != sys::Status::napi_ok {
    return false;
  }
  char::decode_utf16(buf[..written.min(len)].iter().copied()).any(|c| c.is_err())
}

/// Reads the JavaScript value `v` as JSON; see [`js_value`].
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on (no other thread
/// may call it), and `v` a handle valid in the handle scope that is open for the whole call,
/// i.e. both taken from the synchronous N-API callback being served.
pub(crate) unsafe fn to_json(env: napi::sys::napi_env, v: napi::sys::napi_value, at: &str, depth: u32) -> CoreResult<Value> {
  use napi::sys;
  let bad = |why: &str| CoreError::invalid(format!("{at} {why}"));
  // SAFETY: `env` is live on this thread, as the caller guarantees.
  let ok = |s: sys::napi_status| unsafe { checked(env, at, s) };
  if depth > 64 {
    return Err(bad("is nested too deeply"));
  }
  // In every `unsafe` block below: `env` is live on this thread and `v` valid, as the caller
  // guarantees; every other handle (`e`, `keys`, `k`, `val`) was just returned by a successful
  // napi call on the same env, so it lives in the same open handle scope; and every out-pointer
  // is a `&mut` to a local of exactly the type napi writes.
  let mut t = 0;
  // SAFETY: see above; `t` is a local `napi_valuetype`.
  ok(unsafe { sys::napi_typeof(env, v, &mut t) })?;
  match t {
    sys::ValueType::napi_undefined | sys::ValueType::napi_null => Ok(Value::Null),
    sys::ValueType::napi_boolean => {
      let mut b = false;
      // SAFETY: see above; `v` is a boolean (checked by `napi_typeof`), `b` a local `bool`.
      ok(unsafe { sys::napi_get_value_bool(env, v, &mut b) })?;
      Ok(Value::Bool(b))
    }
    sys::ValueType::napi_number => {
      let mut n = 0f64;
      // SAFETY: see above; `v` is a number (checked by `napi_typeof`), `n` a local `f64`.
      ok(unsafe { sys::napi_get_value_double(env, v, &mut n) })?;
      serde_json::Number::from_f64(n).map(Value::Number).ok_or_else(|| bad(&format!("must be a finite number, got {n}")))
    }
    sys::ValueType::napi_string => {
      let mut len = 0usize;
      // SAFETY: see above; a null buffer with size 0 only asks for the length, written to `len`.
      ok(unsafe { sys::napi_get_value_string_utf8(env, v, std::ptr::null_mut(), 0, &mut len) })?;
      let mut buf = vec![0u8; len + 1];
      let mut written = 0usize;
      // SAFETY: see above; `buf` is an initialised, writable allocation of exactly `buf.len()`
      // bytes, the size passed, so napi writes at most that many (NUL included) and reports
      // `written <= buf.len() - 1` bytes.
      ok(unsafe { sys::napi_get_value_string_utf8(env, v, buf.as_mut_ptr().cast(), buf.len(), &mut written) })?;
      buf.truncate(written);
      let s = String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
      // V8 writes an unpaired surrogate as U+FFFD: only a string with one can hold any, and only
      // then is it read again as UTF-16 to tell a real U+FFFD from a replaced surrogate.
      // SAFETY: see above; `v` is a string (checked by `napi_typeof`).
      if s.contains('\u{FFFD}') && !free_text(at) && unsafe { has_lone_surrogate(env, v) } {
        return Err(bad(
          "contains an unpaired surrogate (U+D800–U+DFFF without its partner), which is not Unicode text; pass a well-formed string \
           (String.prototype.toWellFormed())",
        ));
      }
      Ok(Value::String(s))
    }
    // SAFETY: the caller's guarantees, passed on; `v` is an object (checked by `napi_typeof`).
    sys::ValueType::napi_object => unsafe { object_to_json(env, v, at, depth) },
    sys::ValueType::napi_bigint => Err(bad("is a BigInt; pass a number")),
    sys::ValueType::napi_function => Err(bad("is a function; a plain value was expected")),
    sys::ValueType::napi_symbol => Err(bad("is a symbol; a plain value was expected")),
    _ => Err(bad("is not a plain value")),
  }
}

/// `Ok` when a napi call succeeded, else the pending exception taken and described.
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on.
unsafe fn checked(env: napi::sys::napi_env, at: &str, s: napi::sys::napi_status) -> CoreResult<()> {
  if s == napi::sys::Status::napi_ok {
    return Ok(());
  }
  // SAFETY: `env` is live on this thread, as the caller guarantees.
  let why = unsafe { take_exception(env) };
  Err(CoreError::invalid(format!("{at} cannot be read{why}")))
}

/// [`to_json`] of an array or an object (its own enumerable string keys).
///
/// # Safety
///
/// As [`to_json`]; `v` is an object.
unsafe fn object_to_json(env: napi::sys::napi_env, v: napi::sys::napi_value, at: &str, depth: u32) -> CoreResult<Value> {
  use napi::sys;
  let bad = |why: &str| CoreError::invalid(format!("{at} {why}"));
  // SAFETY: `env` is live on this thread, as the caller guarantees.
  let ok = |s: sys::napi_status| unsafe { checked(env, at, s) };
  // In every `unsafe` block below: `env` is live on this thread and `v` valid, as the caller
  // guarantees; every other handle (`e`, `keys`, `k`, `val`) was just returned by a successful
  // napi call on the same env, so it lives in the same open handle scope; and every out-pointer
  // is a `&mut` to a local of exactly the type napi writes.
  let mut is_array = false;
  // SAFETY: see above; `is_array` is a local `bool`.
  ok(unsafe { sys::napi_is_array(env, v, &mut is_array) })?;
  if is_array {
    let mut n = 0u32;
    // SAFETY: see above; `v` is an array (checked by `napi_is_array`), `n` a local `u32`.
    ok(unsafe { sys::napi_get_array_length(env, v, &mut n) })?;
    if n > 100_000 {
      return Err(bad("has too many elements"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
      let mut e = std::ptr::null_mut();
      // SAFETY: see above; `e` is a local `napi_value` for the element handle.
      ok(unsafe { sys::napi_get_element(env, v, i, &mut e) })?;
      // SAFETY: same `env`, on the same thread; `e` was just returned by `napi_get_element`
      // and is valid in the same handle scope.
      out.push(unsafe { to_json(env, e, &format!("{at}[{i}]"), depth + 1) }?);
    }
    return Ok(Value::Array(out));
  }
  let mut keys = std::ptr::null_mut();
  // Own enumerable string keys only, as `Object.keys` has them: a key inherited from the
  // prototype (`Object.create({ prompt })`, a polluted `Object.prototype`) is not a field.
  // SAFETY: see above; `v` is an object (checked by `napi_typeof`), `keys` a local `napi_value`.
  ok(unsafe {
    sys::napi_get_all_property_names(
      env,
      v,
      sys::KeyCollectionMode::own_only,
      sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
      sys::KeyConversion::numbers_to_strings,
      &mut keys,
    )
  })?;
  let mut n = 0u32;
  // SAFETY: see above; `keys` is the array `napi_get_all_property_names` returned, `n` a local `u32`.
  ok(unsafe { sys::napi_get_array_length(env, keys, &mut n) })?;
  let mut map = serde_json::Map::new();
  for i in 0..n {
    let mut k = std::ptr::null_mut();
    // SAFETY: see above; `k` is a local `napi_value` for the key handle.
    ok(unsafe { sys::napi_get_element(env, keys, i, &mut k) })?;
    // SAFETY: same `env`, on the same thread; `k` was just returned by `napi_get_element`
    // and is valid in the same handle scope.
    let key = match unsafe { to_json(env, k, at, depth + 1) }? {
      Value::String(s) => s,
      other => other.to_string(),
    };
    let mut val = std::ptr::null_mut();
    // SAFETY: see above; `k` is one of `v`'s own keys, `val` a local `napi_value`.
    ok(unsafe { sys::napi_get_property(env, v, k, &mut val) })?;
    let mut vt = 0;
    // SAFETY: see above; `val` was just returned by `napi_get_property`, `vt` a local
    // `napi_valuetype`.
    ok(unsafe { sys::napi_typeof(env, val, &mut vt) })?;
    if vt == sys::ValueType::napi_undefined {
      continue; // `{ x: undefined }` reads as an absent x, as JSON.stringify would have it.
    }
    // SAFETY: same `env`, on the same thread; `val` was just returned by `napi_get_property`
    // and is valid in the same handle scope.
    let child = unsafe { to_json(env, val, &format!("{at}.{key}"), depth + 1) }?;
    map.insert(key, child);
  }
  Ok(Value::Object(map))
}

/// Reads a JavaScript value into a core request type; shape errors are `INVALID_ARGUMENT`.
pub(crate) fn parse<T: DeserializeOwned>(what: &str, v: Value) -> CoreResult<T> {
  T::deserialize(&v).map_err(|e| {
    let msg = e.to_string();
    // serde names a missing or unknown field but not the one whose value has the wrong type:
    // find it (on this error path only) by reading each field alone.
    let culprit = match &v {
      Value::Object(m) if !msg.contains('`') => m
        .iter()
        .find(|(k, x)| {
          let alone = Value::Object(std::iter::once(((*k).clone(), (*x).clone())).collect());
          T::deserialize(&alone).err().is_some_and(|e| e.to_string() == msg)
        })
        .map(|(k, _)| k.clone()),
      _ => None,
    };
    match culprit {
      Some(field) => CoreError::invalid(format!("{what}: {field}: {msg}")),
      None => CoreError::invalid(format!("{what}: {msg}")),
    }
  })
}

/// Like [`parse`], with `null`/`undefined` meaning the type's defaults (optional option bags).
pub(crate) fn parse_optional<T: DeserializeOwned + Default>(what: &str, v: Value) -> CoreResult<T> {
  match v {
    Value::Null => Ok(T::default()),
    v => parse(what, v),
  }
}

pub(crate) fn string_arg(field: &str, v: Value) -> CoreResult<String> {
  match v {
    Value::String(s) => Ok(s),
    other => Err(CoreError::invalid(format!("{field} must be a string, got {}", type_name(&other)))),
  }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
  match v {
    Value::Null => "null or undefined",
    Value::Bool(_) => "a boolean",
    Value::Number(_) => "a number",
    Value::String(_) => "a string",
    Value::Array(_) => "an array",
    Value::Object(_) => "an object",
  }
}

pub(crate) fn num(v: u64) -> f64 {
  v as f64
}

/// Reads `(sessionId, userId)` and runs `call` with them on the manager: the shape of every
/// method that addresses one of the user's sessions.
pub(crate) fn by_session<'e, T, V, F>(
  env: &'e Env,
  inner: &std::sync::Arc<manager::Manager>,
  session_id: Unknown<'e>,
  user_id: Unknown<'e>,
  call: impl FnOnce(std::sync::Arc<manager::Manager>, String, String) -> F + Send + 'static,
  map: fn(T) -> V,
) -> napi::Result<PromiseRaw<'e, V>>
where
  T: Send + 'static,
  V: ToNapiValue + 'static,
  F: std::future::Future<Output = CoreResult<T>> + Send + 'static,
{
  let session_id = js_value(env, "sessionId", Some(session_id));
  let user_id = js_value(env, "userId", Some(user_id));
  let m = inner.clone();
  promise(env, async move { call(m, string_arg("sessionId", session_id?)?, string_arg("userId", user_id?)?).await }, map)
}
