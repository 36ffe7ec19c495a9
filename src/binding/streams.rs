//! The napi door of the event log (`sessions/events.rs`): `streamEvents` (an `EventStream`, an
//! async iterator of `StreamedEvent`), `getRunningTask` and `abortTask`.

use std::future::Future;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde::Deserialize;
use serde_json::Value;

use super::{js_error, js_value, parse, promise, promise_then, read_execute_options, ExecuteHooks, Promised, SessionManager};
use crate::cli::CancelToken;
use crate::sessions as manager;

/// `streamEvents`: which session's events, after which one, for how long.
#[napi(object, object_from_js = false)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamEventsRequest {
  pub session_id: String,
  pub user_id: String,
  /// The `seq` of the last event the caller has: the stream starts right after it (default: from
  /// the first event kept). A whole number from 0 to the session's last `seq`; anything else
  /// rejects with `INVALID_ARGUMENT`. Older than what `eventRetentionMs` kept: the stream starts
  /// with one `events_truncated` event.
  pub after: Option<f64>,
  /// Omitted: the logged events, then the running task's live ones until it ends (at once when
  /// none runs). `false`: the logged events only. `true`: the session's events, task after task,
  /// until `signal` aborts or the stream is closed (`break`, `return()`).
  pub follow: Option<bool>,
  /// Instead of `after`: from the first event of this task (the `taskId` of its `task_started`),
  /// or what comes next when it has logged none yet.
  pub task_id: Option<String>,
  /// `true`: the events as they were logged, server details included (the CLI's `init` event
  /// names the tenant's folders, its tools and versions): for server code only. By default they
  /// are as a browser may see them: the `init` event reduced to its type, session, model and
  /// permission mode, and the fields naming server paths, sockets, tools and versions dropped
  /// from every other event (the Next.js routes' rules).
  pub expose_server_details: Option<bool>,
}

/// One event of a session's log.
#[napi(object)]
pub struct StreamedEvent {
  /// Its number in the session's log: contiguous, never reused; use it as the SSE `id` and as
  /// `after` to resume.
  pub seq: f64,
  /// The task it belongs to (`null` for `events_truncated`).
  pub task_id: Option<String>,
  /// When it was written (ms since the epoch).
  pub at: f64,
  /// The event: what `onEvent` saw (`task_started`, the CLI's lines, `stream_event`s with text
  /// deltas after a pause at once, faster ones joined per 8 ms, `background_activity`), `permission_request` /
  /// `permission_resolved`, `user_message` (steering), `task_end` (`{ result }` or `{ error }`),
  /// or `events_truncated` (`{ firstSeq }`: earlier events were swept; reload the history with
  /// `getMessages`).
  pub event: Value,
}

impl From<manager::StreamedEvent> for StreamedEvent {
  fn from(e: manager::StreamedEvent) -> Self {
    StreamedEvent { seq: e.seq as f64, task_id: e.task_id, at: e.at as f64, event: e.event }
  }
}

/// The task running on a session, wherever it runs.
#[napi(object)]
pub struct RunningTask {
  pub task_id: String,
  /// `task` or `compact`.
  pub kind: String,
  pub started_at: f64,
  /// The node running it (`nodeId`, PostgreSQL); `null` on SQLite (one machine).
  pub node_id: Option<String>,
  /// Its process id (on that node).
  pub pid: f64,
  /// Whether a stop was requested (`abortTask`).
  pub abort_requested: bool,
  /// The session's last event `seq`: `streamEvents({ after: lastSeq })` gets what comes next.
  pub last_seq: f64,
}

impl From<manager::RunningTaskInfo> for RunningTask {
  fn from(r: manager::RunningTaskInfo) -> Self {
    let t = r.task;
    RunningTask {
      task_id: t.task_id,
      kind: t.kind,
      started_at: t.started_at as f64,
      node_id: t.node_id,
      pid: t.owner_pid as f64,
      abort_requested: t.abort_requested,
      last_seq: r.last_seq as f64,
    }
  }
}

/// A session's events: `for await (const e of stream)`. Ends when the task ends (or as
/// `follow` says), when `signal` aborts, or on `break`. Holds at most a page of events: a
/// slow reader never slows the task.
#[napi(async_iterator)]
pub struct EventStream {
  follower: Arc<tokio::sync::Mutex<manager::Follower>>,
  cancel: CancelToken,
  /// Cancelled once the stream is over (or collected): the signal's listener is removed then.
  done: Done,
}

/// Cancels its token when dropped.
struct Done(CancelToken);

impl Drop for Done {
  fn drop(&mut self) {
    self.0.cancel();
  }
}

#[napi]
impl AsyncGenerator for EventStream {
  type Yield = StreamedEvent;
  type Next = Undefined;
  type Return = Undefined;

  fn next(&mut self, _value: Option<Undefined>) -> impl Future<Output = napi::Result<Option<StreamedEvent>>> + Send + 'static {
    let (follower, done) = (self.follower.clone(), self.done.0.clone());
    async move {
      let next = follower.lock().await.next().await;
      if !matches!(next, Ok(Some(_))) {
        done.cancel();
      }
      next.map(|e| e.map(StreamedEvent::from)).map_err(|e| napi::Error::from_reason(format!("{}: {}", e.code.as_str(), e.message)))
    }
  }

  fn complete(&mut self, _value: Option<Undefined>) -> impl Future<Output = napi::Result<Option<StreamedEvent>>> + Send + 'static {
    self.cancel.cancel();
    self.done.0.cancel();
    async { Ok(None) }
  }
}

#[napi]
impl SessionManager {
  /// The session's events after `after`, then the live ones, from whichever process or node
  /// runs the task (see `StreamEventsRequest`). Another user's session rejects with
  /// `SESSION_NOT_FOUND`, as a missing one does; a bad `after` with `INVALID_ARGUMENT`.
  #[napi(ts_args_type = "request: StreamEventsRequest, options?: { signal?: AbortSignal }", ts_return_type = "Promise<EventStream>")]
  pub fn stream_events<'e>(&self, env: &'e Env, request: Unknown<'e>, options: Option<Unknown<'e>>) -> Promised<'e, EventStream> {
    let request = js_value(env, "request", Some(request));
    let ExecuteHooks { cancel, abort, .. } = match read_execute_options(env, "streamEvents", options) {
      Ok(h) => h,
      Err(e) => return PromiseRaw::reject(env, js_error(env, e)),
    };
    // The signal's listener is removed (on this thread) once the stream is over.
    let done = CancelToken::new();
    if abort.is_some() {
      let d = done.clone();
      promise_then(
        env,
        async move {
          d.cancelled().await;
          Ok(())
        },
        |()| (),
        ExecuteHooks::cleanup(abort),
      )?;
    }
    let m = self.inner.clone();
    // Dropped on any failure below (cancelling `done`), else kept by the stream.
    let done = Done(done);
    promise(
      env,
      async move {
        let r: StreamEventsRequest = parse("streamEvents", request?)?;
        let req = manager::StreamRequest {
          session_id: r.session_id,
          user_id: r.user_id,
          after: r.after,
          follow: r.follow,
          task_id: r.task_id,
          expose_server_details: r.expose_server_details.unwrap_or(false),
        };
        let f = m.stream_events(req, cancel.clone()).await?;
        Ok((f, cancel, done))
      },
      |(f, cancel, done)| EventStream { follower: Arc::new(tokio::sync::Mutex::new(f)), cancel, done },
    )
  }

  /// The task running on the user's session (in any process or node), or `null`.
  #[napi(ts_args_type = "request: { sessionId: string; userId: string }", ts_return_type = "Promise<RunningTask | null>")]
  pub fn get_running_task<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, Option<RunningTask>> {
    let (m, request) = (self.inner.clone(), js_value(env, "request", Some(request)));
    promise(
      env,
      async move {
        let r: SessionRef = parse("getRunningTask", request?)?;
        m.get_running_task(&r.session_id, &r.user_id).await
      },
      |r| r.map(RunningTask::from),
    )
  }

  /// Stops the task running on the user's session, wherever it runs (recorded in the store; the
  /// manager running it stops the CLI at once when it is this one, else within a poll or a
  /// notification). Resolves with whether a task was running; the task ends `aborted`.
  #[napi(ts_args_type = "request: { sessionId: string; userId: string }", ts_return_type = "Promise<boolean>")]
  pub fn abort_task<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, bool> {
    let (m, request) = (self.inner.clone(), js_value(env, "request", Some(request)));
    promise(
      env,
      async move {
        let r: SessionRef = parse("abortTask", request?)?;
        m.abort_task(&r.session_id, &r.user_id).await
      },
      |b| b,
    )
  }
}

/// `{ sessionId, userId }`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SessionRef {
  session_id: String,
  user_id: String,
}
