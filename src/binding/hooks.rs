//! `executeTask`'s hooks: the `onEvent` callback called from other threads, and the caller's
//! `AbortSignal` wired to the task's cancel token (its listener removed when the task settles).
//!
//! `onEvent` is the caller's code, run on the JavaScript thread from a threadsafe function. A
//! throw, or a returned promise that rejects, must not reach Node as an uncaught exception or an
//! unhandled rejection (either ends the process): both are caught here, the task goes on, and
//! the task's result lists them in `warnings`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use napi::threadsafe_function::ThreadsafeFunctionCallMode;

use napi::bindgen_prelude::*;
use serde_json::Value;

use super::*;

/// How many distinct `onEvent` failures a result lists before summing up the rest.
const MAX_LISTED_FAILURES: usize = 10;
/// How much of one failure's message a warning keeps.
const MAX_FAILURE_CHARS: usize = 300;
/// How long a finished task's result waits for its queued `onEvent` calls to be made.
const CALLS_GRACE: Duration = Duration::from_secs(5);
/// How long a finished task's result waits for promises returned by `onEvent` to settle.
const PROMISES_GRACE: Duration = Duration::from_secs(1);

/// What went wrong in one task's `onEvent` calls, and what is still in flight, so that the
/// result (made once the task ends) can wait for the calls and list the failures.
#[derive(Default)]
pub(crate) struct EventFailures {
  state: Mutex<FailureState>,
  changed: tokio::sync::Notify,
}

#[derive(Default)]
struct FailureState {
  /// Calls handed to the JavaScript thread and not made yet.
  queued: usize,
  /// Promises returned by `onEvent` that have not settled yet.
  unsettled: usize,
  /// Distinct failures, first seen first, with how often each happened.
  listed: Vec<(String, u64)>,
  /// Failures beyond the listed ones.
  more: u64,
}

/// One queued `onEvent` call; dropped when the call has been made, or when it never will be (a
/// closing threadsafe function drops it).
struct QueuedCall(Arc<EventFailures>);

impl Drop for QueuedCall {
  fn drop(&mut self) {
    self.0.update(|s| s.queued -= 1);
  }
}

impl EventFailures {
  fn update(&self, f: impl FnOnce(&mut FailureState)) {
    f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    self.changed.notify_waiters();
  }

  fn queue(self: &Arc<Self>) -> QueuedCall {
    self.update(|s| s.queued += 1);
    QueuedCall(self.clone())
  }

  fn record(&self, what: &str, message: String) {
    let entry = format!("{what}: {message}");
    self.update(|s| {
      if let Some((_, n)) = s.listed.iter_mut().find(|(e, _)| *e == entry) {
        *n += 1;
      } else if s.listed.len() < MAX_LISTED_FAILURES {
        s.listed.push((entry, 1));
      } else {
        s.more += 1;
      }
    });
  }

  /// Runs on the JavaScript thread right after `onEvent` returned or threw.
  fn after_call(self: &Arc<Self>, env: &Env, ret: napi::Result<Unknown<'_>>) {
    match ret {
      // The threadsafe function took the exception off the env; `reason` is its message, read
      // without running any of the caller's code.
      Err(e) => self.record("onEvent threw", clip(if e.reason.is_empty() { "a value that is not an Error".into() } else { e.reason })),
      Ok(v) => {
        if let Err(why) = self.watch_thenable(env, v) {
          self.record("onEvent", why);
        }
      }
    }
  }

  /// When `onEvent` returned a thenable, hands it a rejection handler (so that a rejection is
  /// handled, and reported) and a fulfilment handler (so that the result knows it settled).
  fn watch_thenable(self: &Arc<Self>, env: &Env, v: Unknown<'_>) -> std::result::Result<(), String> {
    if !matches!(v.get_type(), Ok(ValueType::Object | ValueType::Function)) {
      return Ok(());
    }
    // SAFETY: `get_type` just reported an object or a function; both are read as an `Object`.
    let Ok(target) = (unsafe { v.cast::<Object>() }) else { return Ok(()) };
    let then: Unknown = match target.get_named_property("then") {
      Ok(t) => t,
      Err(_) => return Err(format!("reading `then` of its return value threw: {}", take_exception_text(env).unwrap_or_default())),
    };
    if then.get_type().ok() != Some(ValueType::Function) {
      return Ok(());
    }
    // SAFETY: `get_type` just reported a function; the argument and return types only shape
    // how napi-rs converts them.
    let Ok(then) = (unsafe { then.cast::<ThenMethod<'_>>() }) else { return Ok(()) };
    let done = Arc::new(AtomicBool::new(false));
    let settle = {
      let (me, done) = (self.clone(), done.clone());
      move || {
        if !done.swap(true, Ordering::SeqCst) {
          me.update(|s| s.unsettled -= 1);
        }
      }
    };
    let on_fulfilled = {
      let settle = settle.clone();
      env
        .create_function_from_closure::<(), (), _>("onEventSettled", move |_| {
          settle();
          Ok(())
        })
        .map_err(|e| format!("cannot watch its promise: {e}"))?
    };
    let on_rejected = {
      let (me, settle) = (self.clone(), settle.clone());
      env
        .create_function_from_closure::<(), (), _>("onEventRejected", move |ctx| {
          let reason = ctx.get::<Unknown>(0).map(describe).unwrap_or_else(|_| "undefined".into());
          me.record("onEvent rejected", reason);
          settle();
          Ok(())
        })
        .map_err(|e| format!("cannot watch its promise: {e}"))?
    };
    self.update(|s| s.unsettled += 1);
    if then.apply(target, (on_fulfilled, on_rejected).into()).is_err() {
      settle();
      return Err(format!("calling `then` of its return value threw: {}", take_exception_text(env).unwrap_or_default()));
    }
    Ok(())
  }

  /// Waits (boundedly) for the queued calls and their promises, then adds the failures to a
  /// finished task's warnings.
  pub(crate) async fn add_to(&self, out: CoreResult<manager::TaskResult>) -> CoreResult<manager::TaskResult> {
    let mut r = out?;
    let start = tokio::time::Instant::now();
    loop {
      let changed = self.changed.notified();
      let now = tokio::time::Instant::now();
      let wait_for = {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.queued > 0 {
          CALLS_GRACE
        } else if s.unsettled > 0 {
          PROMISES_GRACE
        } else {
          break;
        }
      };
      let Some(left) = (start + wait_for).checked_duration_since(now).filter(|d| !d.is_zero()) else { break };
      let _ = tokio::time::timeout(left, changed).await;
    }
    let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
    for (entry, n) in &s.listed {
      r.warnings.push(if *n > 1 { format!("{entry} ({n} times)") } else { entry.clone() });
    }
    if s.more > 0 {
      r.warnings.push(format!("… and {} more onEvent failures", s.more));
    }
    Ok(r)
  }
}

/// `then(onFulfilled, onRejected)` as called here.
type ThenMethod<'a> = Function<'a, FnArgs<(Function<'a, (), ()>, Function<'a, (), ()>)>, Unknown<'a>>;

/// Takes the pending JavaScript exception off the env, if there is one, as readable text.
pub(crate) fn take_exception_text(env: &Env) -> Option<String> {
  let mut pending = false;
  // SAFETY: `env` is the live env of the JavaScript thread this runs on (an `&Env` is only
  // handed out there) and `pending` is a local out-parameter.
  let status = unsafe { napi::sys::napi_is_exception_pending(env.raw(), &mut pending) };
  if status != napi::sys::Status::napi_ok || !pending {
    return None;
  }
  let mut raw = std::ptr::null_mut();
  // SAFETY: as above; an exception is pending, so this takes it and leaves the env clean.
  let status = unsafe { napi::sys::napi_get_and_clear_last_exception(env.raw(), &mut raw) };
  if status != napi::sys::Status::napi_ok || raw.is_null() {
    return Some("an exception".into());
  }
  // SAFETY: `raw` is the exception value just returned for this env, live in the current
  // handle scope; `Unknown` accepts a value of any type.
  Some(describe(unsafe { Unknown::from_raw_unchecked(env.raw(), raw) }))
}

/// A thrown or rejected value as text, without running the caller's code (no `toString`, no
/// getters): an `Error`'s own `message`, a string as it is, otherwise its type.
pub(crate) fn describe(v: Unknown<'_>) -> String {
  let ty = v.get_type();
  let reason = napi::Error::from_unknown_without_coercion(v).reason;
  if !reason.is_empty() {
    return clip(reason);
  }
  match ty {
    // SAFETY: `get_type` just reported a number.
    Ok(ValueType::Number) => unsafe { v.cast::<f64>() }.map(|n| n.to_string()).unwrap_or_else(|_| "a number".into()),
    // SAFETY: `get_type` just reported a boolean.
    Ok(ValueType::Boolean) => unsafe { v.cast::<bool>() }.map(|b| b.to_string()).unwrap_or_else(|_| "a boolean".into()),
    Ok(ValueType::Undefined) => "undefined".into(),
    Ok(ValueType::Null) => "null".into(),
    Ok(ValueType::String) => "an empty string".into(),
    Ok(ValueType::BigInt) => "a bigint".into(),
    Ok(ValueType::Symbol) => "a symbol".into(),
    Ok(ValueType::Function) => "a function".into(),
    _ => "an object that is not an Error".into(),
  }
}

fn clip(mut s: String) -> String {
  if let Some((i, _)) = s.char_indices().nth(MAX_FAILURE_CHARS) {
    s.truncate(i);
    s.push('…');
  }
  s
}

/// Reads `{ onEvent, signal }`: wraps the callback for use from other threads and hooks the
/// signal's `abort` event to a cancel token.
/// The `abort` listener a task put on a caller's signal, removed when the task settles so that a
/// long-lived signal does not collect listeners.
pub(crate) struct AbortHook {
  signal: ObjectRef,
  listener: FunctionRef<(), ()>,
}

impl AbortHook {
  fn remove(self, env: &Env) {
    let AbortHook { signal, listener } = self;
    let _ = (|| -> napi::Result<()> {
      let target = signal.get_value(env)?;
      let f = listener.borrow_back(env)?;
      let remove: ListenerMethod<'_> = target.get_named_property("removeEventListener")?;
      remove.apply(target, ("abort".to_string(), f).into())
    })();
    // Release the references here, on the JavaScript thread.
    let _ = signal.unref(env);
    drop(listener);
  }
}

/// `EventTarget.addEventListener` / `removeEventListener` as called here: `(type, listener)`.
type ListenerMethod<'a> = Function<'a, FnArgs<(String, Function<'a, (), ()>)>, ()>;

/// What `{ onEvent, signal }` turn into.
pub(crate) struct ExecuteHooks {
  pub(crate) sink: Option<manager::EventSink>,
  pub(crate) cancel: CancelToken,
  pub(crate) abort: Option<AbortHook>,
  /// `onEvent`'s failures, for the result's `warnings`.
  pub(crate) failures: Arc<EventFailures>,
}

impl ExecuteHooks {
  pub(crate) fn cleanup(abort: Option<AbortHook>) -> impl FnOnce(&Env) + 'static {
    move |env| {
      if let Some(h) = abort {
        h.remove(env);
      }
    }
  }
}

pub(crate) fn read_execute_options(env: &Env, what: &str, options: Option<Unknown<'_>>) -> CoreResult<ExecuteHooks> {
  let cancel = CancelToken::new();
  let failures = Arc::new(EventFailures::default());
  // A getter, a Proxy trap or a method of the caller's may have thrown: its exception is taken
  // off the env (so it is not thrown at the caller as well) and becomes part of the message.
  let bad = |why: &str| match take_exception_text(env) {
    Some(e) => CoreError::invalid(format!("{what} options: {why}: {e}")),
    None => CoreError::invalid(format!("{what} options: {why}")),
  };
  let none = |cancel| Ok(ExecuteHooks { sink: None, cancel, abort: None, failures: Arc::new(EventFailures::default()) });
  let Some(o) = options else { return none(cancel) };
  let o: Object = match o.get_type().map_err(|_| bad("cannot read options"))? {
    ValueType::Undefined | ValueType::Null => return none(cancel),
    // SAFETY: `get_type` just reported an object, so the value can be read as an `Object`.
    ValueType::Object => unsafe { o.cast() }.map_err(|_| bad("must be an object"))?,
    _ => return Err(bad("must be an object like { onEvent, signal }")),
  };
  let mut sink: Option<manager::EventSink> = None;
  // Own properties only: an inherited (or polluted `Object.prototype`) `onEvent`/`signal` is no option.
  if o.has_own_property("onEvent").map_err(|_| bad("cannot read onEvent"))? {
    let v: Unknown = o.get_named_property("onEvent").map_err(|_| bad("cannot read onEvent"))?;
    match v.get_type().map_err(|_| bad("cannot read onEvent"))? {
      ValueType::Undefined | ValueType::Null => {}
      ValueType::Function => {
        // SAFETY: `get_type` just reported a function, so the value can be read as a `Function`
        // (its argument and return types only shape how napi-rs converts them on each call).
        let f: Function<Value, Unknown<'static>> = unsafe { v.cast() }.map_err(|_| bad("onEvent must be a function"))?;
        let tsfn: EventFn = f
          .build_threadsafe_function()
          .callee_handled::<false>()
          .weak::<true>()
          .build()
          .map_err(|e| bad(&format!("cannot wrap onEvent: {e}")))?;
        let tsfn = Arc::new(tsfn);
        let failures = failures.clone();
        sink = Some(Arc::new(move |ev: Value| {
          let queued = failures.queue();
          let failures = failures.clone();
          // With a return-value callback the threadsafe function catches a throw and hands it
          // over here instead of raising it as an uncaught exception. The callback must not
          // fail: an `Err` would be raised as one.
          tsfn.call_with_return_value(ev, ThreadsafeFunctionCallMode::NonBlocking, move |ret, env| {
            failures.after_call(&env, ret);
            drop(queued);
            Ok(())
          });
        }));
      }
      _ => return Err(bad("onEvent must be a function")),
    }
  }
  let mut abort = None;
  if o.has_own_property("signal").map_err(|_| bad("cannot read signal"))? {
    let v: Unknown = o.get_named_property("signal").map_err(|_| bad("cannot read signal"))?;
    match v.get_type().map_err(|_| bad("cannot read signal"))? {
      ValueType::Undefined | ValueType::Null => {}
      ValueType::Object => {
        // SAFETY: `get_type` just reported an object, so the value can be read as an `Object`.
        let signal: Object = unsafe { v.cast() }.map_err(|_| bad("signal must be an AbortSignal"))?;
        let add: Unknown = signal.get_named_property("addEventListener").map_err(|_| bad("signal must be an AbortSignal"))?;
        if add.get_type().ok() != Some(ValueType::Function) {
          return Err(bad("signal must be an AbortSignal"));
        }
        let aborted = match signal.get_named_property::<bool>("aborted") {
          Ok(a) => a,
          // Not a boolean: not aborted. A throwing getter: refused.
          Err(_) => match take_exception_text(env) {
            Some(e) => return Err(CoreError::invalid(format!("{what} options: reading signal.aborted threw: {e}"))),
            None => false,
          },
        };
        if aborted {
          cancel.cancel();
        } else {
          let token = cancel.clone();
          let listener = env
            .create_function_from_closure::<(), (), _>("onAbort", move |_| {
              token.cancel();
              Ok(())
            })
            .map_err(|_| bad("cannot listen to signal"))?;
          // SAFETY: `add` was checked above to be a function (`get_type` is `Function`), so it can
          // be read as a `Function`; the argument and return types only shape the conversions.
          let add: ListenerMethod<'_> = unsafe { add.cast() }.map_err(|_| bad("signal must be an AbortSignal"))?;
          add.apply(signal, ("abort".to_string(), listener).into()).map_err(|_| bad("signal.addEventListener threw"))?;
          abort = Some(AbortHook {
            signal: signal.create_ref().map_err(|_| bad("cannot keep signal"))?,
            listener: listener.create_ref().map_err(|_| bad("cannot keep listener"))?,
          });
        }
      }
      _ => return Err(bad("signal must be an AbortSignal")),
    }
  }
  Ok(ExecuteHooks { sink, cancel, abort, failures })
}

/// Runs a task-like call with `{ onEvent, signal }` read from `options`: the result's warnings
/// get `onEvent`'s failures, and the signal's listener is removed when the promise settles.
pub(crate) fn with_hooks<'e, F>(
  env: &'e Env,
  what: &str,
  options: Option<Unknown<'e>>,
  run: impl FnOnce(Option<manager::EventSink>, CancelToken) -> F,
) -> napi::Result<PromiseRaw<'e, JsTaskResult>>
where
  F: std::future::Future<Output = CoreResult<manager::TaskResult>> + Send + 'static,
{
  let ExecuteHooks { sink, cancel, abort, failures } = match read_execute_options(env, what, options) {
    Ok(x) => x,
    Err(e) => return PromiseRaw::reject(env, js_error(env, e)),
  };
  let fut = run(sink, cancel);
  promise_then(env, async move { failures.add_to(fut.await).await }, JsTaskResult::from, ExecuteHooks::cleanup(abort))
}
