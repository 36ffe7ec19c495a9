//! Errors and promises: a core error becomes a JS `Error` with a stable `code`, a panic becomes
//! `INTERNAL`, and futures become promises.

use std::future::Future;

use napi::bindgen_prelude::*;

use super::*;

/// Builds a JavaScript `Error` whose `code` is the core error's code.
pub(crate) fn js_error(env: &Env, e: CoreError) -> napi::Error {
  let build = || -> napi::Result<napi::Error> {
    let code = env.create_string(e.code.as_str())?;
    let msg = env.create_string(&e.message)?;
    let mut raw = std::ptr::null_mut();
    // SAFETY: `env` is the live env of the JavaScript thread this runs on (an `&Env` is only
    // handed out there), `code` and `msg` are string handles just created in the current handle
    // scope, and `raw` is a local `napi_value` for the result.
    let status = unsafe { napi::sys::napi_create_error(env.raw(), code.raw(), msg.raw(), &mut raw) };
    if status != napi::sys::Status::napi_ok {
      return Err(napi::Error::from_reason("cannot create an error object"));
    }
    // SAFETY: `napi_create_error` succeeded, so `raw` is a valid handle to the new error object
    // in the current scope on this env; `Unknown` accepts a value of any type.
    let unknown = unsafe { Unknown::from_napi_value(env.raw(), raw)? };
    Ok(napi::Error::from(unknown))
  };
  build().unwrap_or_else(|_| napi::Error::new(Status::GenericFailure, format!("{}: {}", e.code.as_str(), e.message)))
}

pub(crate) fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
  p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into())
}

/// Runs a core future on napi's tokio runtime and settles a promise with its mapped result. A
/// panic becomes a rejection with code `INTERNAL`.
pub(crate) fn promise<'e, T, V, F>(env: &'e Env, fut: F, map: fn(T) -> V) -> napi::Result<PromiseRaw<'e, V>>
where
  T: Send + 'static,
  V: ToNapiValue + 'static,
  F: Future<Output = CoreResult<T>> + Send + 'static,
{
  promise_then(env, fut, map, |_| ())
}

/// [`promise`], with `cleanup` run on the JavaScript thread once the future has settled.
pub(crate) fn promise_then<'e, T, V, F>(
  env: &'e Env,
  fut: F,
  map: fn(T) -> V,
  cleanup: impl FnOnce(&Env) + 'static,
) -> napi::Result<PromiseRaw<'e, V>>
where
  T: Send + 'static,
  V: ToNapiValue + 'static,
  F: Future<Output = CoreResult<T>> + Send + 'static,
{
  env.spawn_future_with_callback(
    async move {
      let r = match tokio::spawn(async move {
        debug_panic_hook();
        fut.await
      })
      .await
      {
        Ok(r) => r,
        Err(join) if join.is_panic() => Err(CoreError::internal(format!("panic: {}", panic_message(join.into_panic())))),
        Err(join) => Err(CoreError::internal(format!("task failed: {join}"))),
      };
      Ok::<_, napi::Error>(r)
    },
    move |env, r| {
      cleanup(env);
      match r {
        Ok(t) => Ok(map(t)),
        Err(e) => Err(js_error(env, e)),
      }
    },
  )
}

/// Debug builds only: panics when `CSM_DEBUG_PANIC` is set, so tests can prove that a panic
/// becomes an `INTERNAL` rejection instead of crashing Node. Release builds compile it away.
pub(crate) fn debug_panic_hook() {
  #[cfg(debug_assertions)]
  if std::env::var_os("CSM_DEBUG_PANIC").is_some() {
    panic!("CSM_DEBUG_PANIC is set");
  }
}

/// Runs a synchronous core call, mapping errors and panics.
pub(crate) fn sync<T>(env: &Env, f: impl FnOnce() -> CoreResult<T>) -> napi::Result<T> {
  match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
    debug_panic_hook();
    f()
  })) {
    Ok(Ok(t)) => Ok(t),
    Ok(Err(e)) => Err(js_error(env, e)),
    Err(p) => Err(js_error(env, CoreError::internal(format!("panic: {}", panic_message(p))))),
  }
}
