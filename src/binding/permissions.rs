//! `executeTask(request, { canUseTool })`: the Agent SDK's permission callback, called on the
//! JavaScript thread for each `can_use_tool` request of the task's CLI. Its promise's value is
//! the answer (read as a [`Decision`]); its `signal` aborts when the request is withdrawn or times out (see
//! `cli::warm`).

use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode};
use serde_json::Value;
use tokio::sync::oneshot;

use super::hooks::{describe, take_exception_text};
use crate::cli::{CanUseTool, CancelToken, Decision, PermissionRequest};
use crate::error::{Error as CoreError, Result as CoreResult};

/// Where the callback's answer goes, once; `settled` wakes the request's abort watcher.
#[derive(Default)]
struct Slot {
  tx: Mutex<Option<oneshot::Sender<std::result::Result<Value, String>>>>,
  settled: tokio::sync::Notify,
}
type Answer = Arc<Slot>;

/// One request on its way to the JavaScript thread.
struct Call {
  req: PermissionRequest,
  token: CancelToken,
  answer: Answer,
}

type Args = FnArgs<(String, Value, ObjectRef)>;
type PermissionFn = ThreadsafeFunction<Call, Unknown<'static>, Args, Status, false, true>;
type ThenMethod<'a> = Function<'a, FnArgs<(Function<'a, Unknown<'a>, ()>, Function<'a, Unknown<'a>, ()>)>, Unknown<'a>>;

fn settle(answer: &Answer, v: std::result::Result<Value, String>) {
  if let Some(tx) = answer.tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
    let _ = tx.send(v);
  }
  answer.settled.notify_one();
}

/// Reads `canUseTool` (an own property) from `executeTask`'s options.
pub(crate) fn read_can_use_tool(env: &Env, options: Option<Unknown<'_>>) -> CoreResult<Option<CanUseTool>> {
  let bad = |why: &str| {
    CoreError::invalid(format!("executeTask options: {why}{}", take_exception_text(env).map(|e| format!(": {e}")).unwrap_or_default()))
  };
  let Some(o) = options else { return Ok(None) };
  if o.get_type().ok() != Some(ValueType::Object) {
    return Ok(None);
  }
  // SAFETY: `get_type` just reported an object.
  let o: Object = unsafe { o.cast() }.map_err(|_| bad("must be an object"))?;
  if !o.has_own_property("canUseTool").map_err(|_| bad("cannot read canUseTool"))? {
    return Ok(None);
  }
  let v: Unknown = o.get_named_property("canUseTool").map_err(|_| bad("cannot read canUseTool"))?;
  match v.get_type().map_err(|_| bad("cannot read canUseTool"))? {
    ValueType::Undefined | ValueType::Null => return Ok(None),
    ValueType::Function => {}
    _ => return Err(bad("canUseTool must be a function")),
  }
  // SAFETY: `get_type` just reported a function; the type parameters only shape conversions.
  let f: Function<Args, Unknown<'static>> = unsafe { v.cast() }.map_err(|_| bad("canUseTool must be a function"))?;
  let tsfn: PermissionFn = f
    .build_threadsafe_function::<Call>()
    .callee_handled::<false>()
    .weak::<true>()
    .build_callback(|ctx: ThreadsafeCallContext<Call>| {
      let env = ctx.env;
      let Call { req, token, answer } = ctx.value;
      // The request's AbortController, aborted from any thread through a threadsafe function.
      let ctor: Function<(), Unknown> = env.get_global()?.get_named_property("AbortController")?;
      // SAFETY: `new AbortController()` returns an object.
      let controller: Object = unsafe { ctor.new_instance(())?.cast() }?;
      let signal: Unknown = controller.get_named_property("signal")?;
      let abort: Function<(), ()> = controller.get_named_property("abort")?;
      let abort = abort.bind(controller)?;
      let abort: ThreadsafeFunction<(), (), (), Status, false, true> =
        abort.build_threadsafe_function().callee_handled::<false>().weak::<true>().build()?;
      // Until the callback settles (`notify_one` keeps a wake-up that comes first).
      let answered = answer.clone();
      napi::bindgen_prelude::spawn(async move {
        tokio::select! {
          _ = token.cancelled() => {
            abort.call((), ThreadsafeFunctionCallMode::NonBlocking);
          }
          _ = answered.settled.notified() => {}
        }
      });
      let mut options = Object::new(&env)?;
      options.set_named_property("signal", signal)?;
      options.set_named_property("suggestions", req.suggestions.clone())?;
      if let Some(id) = &req.tool_use_id {
        options.set_named_property("toolUseID", id.as_str())?;
      }
      options.set_named_property("requestId", req.request_id.as_str())?;
      Ok(FnArgs::from((req.tool_name, req.input, options.create_ref()?)))
    })
    .map_err(|e| bad(&format!("cannot wrap canUseTool: {e}")))?;
  let tsfn = Arc::new(tsfn);
  Ok(Some(Arc::new(move |req: PermissionRequest, token: CancelToken| {
    let (tx, rx) = oneshot::channel();
    let answer: Answer = Arc::new(Slot { tx: Mutex::new(Some(tx)), settled: tokio::sync::Notify::new() });
    let a = answer.clone();
    tsfn.call_with_return_value(Call { req, token, answer }, ThreadsafeFunctionCallMode::NonBlocking, move |ret, env| {
      match ret {
        Err(e) => settle(&a, Err(format!("canUseTool threw: {}", e.reason))),
        Ok(v) => {
          if let Err(e) = watch(&env, v, a.clone()) {
            settle(&a, Err(e));
          }
        }
      }
      Ok(())
    });
    Box::pin(async move {
      let answer = rx.await.unwrap_or_else(|_| Err("canUseTool was not called".into()));
      answer.map(|v| Decision::from_callback(&v))
    })
  })))
}

/// Settles `answer` with the callback's value, or with its promise's value once it settles.
fn watch(env: &Env, v: Unknown<'_>, answer: Answer) -> std::result::Result<(), String> {
  let value_of = |env: &Env, v: Unknown<'_>| -> std::result::Result<Value, String> {
    // SAFETY: `v` is a live value of this env, on the JavaScript thread.
    unsafe { Value::from_napi_value(env.raw(), v.raw()) }.map_err(|e| format!("canUseTool's answer is not JSON: {e}"))
  };
  let thenable = matches!(v.get_type(), Ok(ValueType::Object))
    // SAFETY: `get_type` just reported an object.
    && unsafe { v.cast::<Object>() }.ok().and_then(|o| o.get_named_property::<Unknown>("then").ok()).and_then(|t| t.get_type().ok())
      == Some(ValueType::Function);
  if !thenable {
    settle(&answer, value_of(env, v));
    return Ok(());
  }
  // SAFETY: checked above: an object with a `then` function.
  let target: Object = unsafe { v.cast() }.map_err(|e| e.to_string())?;
  let then: Unknown = target.get_named_property("then").map_err(|e| e.to_string())?;
  // SAFETY: `then` is a function (checked above).
  let then: ThenMethod<'_> = unsafe { then.cast() }.map_err(|e| e.to_string())?;
  let fulfilled = {
    let answer = answer.clone();
    env
      .create_function_from_closure::<Unknown, (), _>("canUseToolAnswered", move |ctx| {
        let v = ctx.get::<Unknown>(0)?;
        // SAFETY: `v` is this call's argument, on the JavaScript thread.
        let value = unsafe { Value::from_napi_value(ctx.env.raw(), v.raw()) }.map_err(|e| format!("canUseTool's answer is not JSON: {e}"));
        settle(&answer, value);
        Ok(())
      })
      .map_err(|e| e.to_string())?
  };
  let rejected = {
    let answer = answer.clone();
    env
      .create_function_from_closure::<Unknown, (), _>("canUseToolRejected", move |ctx| {
        // Described without running the caller's code, as `onEvent`'s rejections are.
        let why = ctx.get::<Unknown>(0).map(describe).unwrap_or_else(|_| "undefined".into());
        settle(&answer, Err(format!("canUseTool rejected: {why}")));
        Ok(())
      })
      .map_err(|e| e.to_string())?
  };
  then.apply(target, (fulfilled, rejected).into()).map_err(|e| e.to_string())?;
  Ok(())
}
