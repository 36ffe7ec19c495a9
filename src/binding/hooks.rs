//! `executeTask`'s hooks: the `onEvent` callback called from other threads, and the caller's
//! `AbortSignal` wired to the task's cancel token (its listener removed when the task settles).

use napi::threadsafe_function::ThreadsafeFunctionCallMode;

use napi::bindgen_prelude::*;
use serde_json::Value;

use super::*;

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
  let bad = |why: &str| CoreError::invalid(format!("{what} options: {why}"));
  let none = |cancel| Ok(ExecuteHooks { sink: None, cancel, abort: None });
  let Some(o) = options else { return none(cancel) };
  let o: Object = match o.get_type().map_err(|_| bad("cannot read options"))? {
    ValueType::Undefined | ValueType::Null => return none(cancel),
    // SAFETY: `get_type` just reported an object, so the value can be read as an `Object`.
    ValueType::Object => unsafe { o.cast() }.map_err(|_| bad("must be an object"))?,
    _ => return Err(bad("must be an object like { onEvent, signal }")),
  };
  let mut sink: Option<manager::EventSink> = None;
  if o.has_named_property("onEvent").map_err(|_| bad("cannot read onEvent"))? {
    let v: Unknown = o.get_named_property("onEvent").map_err(|_| bad("cannot read onEvent"))?;
    match v.get_type().map_err(|_| bad("cannot read onEvent"))? {
      ValueType::Undefined | ValueType::Null => {}
      ValueType::Function => {
        // SAFETY: `get_type` just reported a function, so the value can be read as a `Function`
        // (its argument and return types only shape how napi-rs converts them on each call).
        let f: Function<Value, ()> = unsafe { v.cast() }.map_err(|_| bad("onEvent must be a function"))?;
        let tsfn: EventFn = f
          .build_threadsafe_function()
          .callee_handled::<false>()
          .weak::<true>()
          .build()
          .map_err(|e| bad(&format!("cannot wrap onEvent: {e}")))?;
        let tsfn = Arc::new(tsfn);
        sink = Some(Arc::new(move |ev: Value| {
          tsfn.call(ev, ThreadsafeFunctionCallMode::NonBlocking);
        }));
      }
      _ => return Err(bad("onEvent must be a function")),
    }
  }
  let mut abort = None;
  if o.has_named_property("signal").map_err(|_| bad("cannot read signal"))? {
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
        if signal.get_named_property::<bool>("aborted").unwrap_or(false) {
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
          add.apply(signal, ("abort".to_string(), listener).into()).map_err(|e| bad(&format!("cannot listen to signal: {e}")))?;
          abort = Some(AbortHook {
            signal: signal.create_ref().map_err(|_| bad("cannot keep signal"))?,
            listener: listener.create_ref().map_err(|_| bad("cannot keep listener"))?,
          });
        }
      }
      _ => return Err(bad("signal must be an AbortSignal")),
    }
  }
  Ok(ExecuteHooks { sink, cancel, abort })
}
