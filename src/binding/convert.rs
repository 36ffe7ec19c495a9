//! Reading JavaScript values: any value as JSON (with the path of a bad field named), then into
//! the core's request types through serde.

use serde::de::DeserializeOwned;

use napi::bindgen_prelude::*;
use serde_json::Value;

use super::*;

/// Reads any JavaScript value as JSON. Values JSON cannot hold (NaN, Infinity, functions,
/// symbols, BigInt, cycles deeper than 64) are `INVALID_ARGUMENT` naming where they were.
pub(crate) fn js_value(env: &Env, what: &str, v: Option<Unknown<'_>>) -> CoreResult<Value> {
  match v {
    None => Ok(Value::Null),
    // SAFETY: `env` and `u` come from napi-rs for the synchronous call being served, on the
    // JavaScript thread, so the raw env and the value's handle are live for this whole call
    // (`u` borrows from the call's handle scope and cannot outlive it).
    Some(u) => unsafe { to_json(env.raw(), u.raw(), what, 0) },
  }
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
  let ok = |s: sys::napi_status| if s == sys::Status::napi_ok { Ok(()) } else { Err(CoreError::invalid(format!("{at} cannot be read"))) };
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
      Ok(Value::String(String::from_utf8_lossy(&buf).into_owned()))
    }
    sys::ValueType::napi_object => {
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
      // SAFETY: see above; `v` is an object (checked by `napi_typeof`), `keys` a local `napi_value`.
      ok(unsafe { sys::napi_get_property_names(env, v, &mut keys) })?;
      let mut n = 0u32;
      // SAFETY: see above; `keys` is the array `napi_get_property_names` returned, `n` a local `u32`.
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
    sys::ValueType::napi_bigint => Err(bad("is a BigInt; pass a number")),
    sys::ValueType::napi_function => Err(bad("is a function; a plain value was expected")),
    sys::ValueType::napi_symbol => Err(bad("is a symbol; a plain value was expected")),
    _ => Err(bad("is not a plain value")),
  }
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
