//! The napi edge: converts JavaScript values to core requests and core results to JavaScript
//! objects, maps errors to `Error` objects with a stable `code`, and turns panics into `INTERNAL`.
//! No logic lives here.

use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;
use serde_json::Value;

use crate::cli::CancelToken;
use crate::context::tokens as core_tokens;
use crate::error::{Error as CoreError, ErrorCode};
use crate::{context, sessions as manager, store};

mod convert;
mod errors;
mod hooks;
mod permissions;
mod requests;
mod results;
mod streams;
mod tokens;
mod typed;

use convert::*;
use errors::*;
use hooks::*;
pub use requests::*;
pub use results::*;
pub use streams::*;
pub use tokens::*;

type CoreResult<T> = std::result::Result<T, CoreError>;
/// What every async method returns.
type Promised<'e, T> = napi::Result<PromiseRaw<'e, T>>;

// ---- the class --------------------------------------------------------------------------------

type EventFn = ThreadsafeFunction<Value, Unknown<'static>, Value, Status, false, true>;

/// Runs Claude Code tasks in sessions that persist (SQLite), resume, fork and compact.
/// Create one per server process and share it.
#[napi]
pub struct SessionManager {
  inner: Arc<manager::Manager>,
}

#[napi]
impl SessionManager {
  /// Opens (or creates) the session store and marks tasks left running by dead processes as
  /// `interrupted`. Throws `INVALID_ARGUMENT` for bad options and `STORE_ERROR` when the database
  /// cannot be opened.
  #[napi(constructor, ts_args_type = "options?: SessionManagerOptions")]
  pub fn new(env: Env, options: Option<Unknown<'_>>) -> napi::Result<Self> {
    let options = js_value(&env, "options", options);
    sync(&env, || {
      let opts: SessionManagerOptions = parse_optional("SessionManager options", options?)?;
      Ok(SessionManager { inner: Arc::new(manager::Manager::open(opts.try_into()?)?) })
    })
  }

  /// The SQLite file in use, or with `databaseUrl` the PostgreSQL database
  /// (`postgresql://user@host:port/db`, never the password).
  #[napi(getter)]
  pub fn database_path(&self) -> String {
    self.inner.info().database_path
  }

  /// Sessions of a user, newest activity first.
  #[napi(ts_args_type = "request: ListSessionsRequest", ts_return_type = "Promise<Session[]>")]
  pub fn list_sessions<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, Vec<JsSession>> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(env, async move { m.list_sessions(parse::<ListSessionsRequest>("listSessions", request?)?.try_into()?).await }, sessions)
  }

  /// One session. Another user's session rejects with `SESSION_NOT_FOUND`, as a missing one does.
  #[napi(ts_args_type = "sessionId: string, userId: string", ts_return_type = "Promise<Session>")]
  pub fn get_session<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> Promised<'e, JsSession> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    // A point read that needs no waiting is answered here: a trip through the worker threads
    // costs more than the read.
    if let (Ok(Value::String(id)), Ok(Value::String(user))) = (&session_id, &user_id) {
      if let Some(s) = self.inner.get_session_now(id, user) {
        return PromiseRaw::resolve(env, JsSession::from(s));
      }
    }
    let m = self.inner.clone();
    promise(
      env,
      async move { m.get_session(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?).await },
      JsSession::from,
    )
  }

  /// The newest active session of the user's project, or a new one (`preferActive` defaults to
  /// true; false always creates).
  #[napi(ts_args_type = "request: GetOrCreateRequest", ts_return_type = "Promise<GetOrCreateResult>")]
  pub fn get_or_create_session<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, GetOrCreateResult> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let r: GetOrCreateRequest = parse("getOrCreateSession", request?)?;
        m.get_or_create(&r.project_id, &r.user_id, r.prefer_active.unwrap_or(true), r.working_directory.as_deref()).await
      },
      |(s, created)| GetOrCreateResult { session: s.into(), created },
    )
  }

  /// Archives the user's active sessions of the project and returns a new one (optionally with a
  /// chosen UUID).
  #[napi(ts_args_type = "request: StartFreshRequest", ts_return_type = "Promise<StartFreshResult>")]
  pub fn start_fresh<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, StartFreshResult> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let r: StartFreshRequest = parse("startFresh", request?)?;
        m.start_fresh(&r.project_id, &r.user_id, r.session_id.as_deref(), r.working_directory.as_deref()).await
      },
      |(s, archived)| StartFreshResult { session: s.into(), archived: num(archived) },
    )
  }

  /// Marks a session archived; it stays readable and resumable.
  #[napi(ts_args_type = "sessionId: string, userId: string", ts_return_type = "Promise<Session>")]
  pub fn archive_session<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> Promised<'e, JsSession> {
    by_session(env, &self.inner, session_id, user_id, |m, id, user| async move { m.archive_session(&id, &user).await }, JsSession::from)
  }

  /// Deletes a session with its task and compaction rows and the CLI's transcript (unless
  /// `keepTranscript`). Its id is never given out again. A session running a task rejects with
  /// `SESSION_BUSY`.
  #[napi(ts_args_type = "sessionId: string, userId: string, options?: DeleteSessionOptions", ts_return_type = "Promise<void>")]
  pub fn delete_session<'e>(
    &self,
    env: &'e Env,
    session_id: Unknown<'e>,
    user_id: Unknown<'e>,
    options: Option<Unknown<'e>>,
  ) -> Promised<'e, ()> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let options = js_value(env, "options", options);
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let o: DeleteSessionOptions = parse_optional("deleteSession options", options?)?;
        m.delete_session(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?, o.keep_transcript.unwrap_or(false)).await
      },
      |()| (),
    )
  }

  /// Deletes the user's sessions idle for longer than `maxAgeMs` (only archived ones while
  /// `keepActive`, the default).
  #[napi(ts_args_type = "request: CleanupRequest", ts_return_type = "Promise<CleanupResult>")]
  pub fn cleanup_sessions<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, CleanupResult> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(
      env,
      async move { m.cleanup(parse::<JsCleanupRequest>("cleanupSessions", request?)?.try_into()?).await },
      |(deleted, remaining)| CleanupResult { deleted: num(deleted), remaining: num(remaining) },
    )
  }

  /// A new session that continues from `sessionId`, made at once without calling the model; its
  /// first task forks the CLI's transcript. The parent is never changed by the fork. The fork is
  /// in the parent's lineage: the parent's session cap covers it (and a paused parent's fork
  /// starts paused).
  #[napi(ts_args_type = "request: ForkRequest", ts_return_type = "Promise<Session>")]
  pub fn fork<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, JsSession> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let r: manager::ForkRequest = parse::<JsForkRequest>("fork", request?)?.try_into()?;
        m.fork_at(&r.session_id, &r.user_id, r.at_message_id.as_deref(), r.title).await
      },
      JsSession::from,
    )
  }

  /// The session continues from an earlier message of its conversation (`toMessageId`, a
  /// `getMessages` id), without calling the model: the next task's model sees the conversation up
  /// to it. The dropped turns stay in the transcript as a dead branch (`getMessages` shows the
  /// live one); the meter is re-derived at the message; costs already spent stay spent; an idle
  /// warm CLI of the session is stopped.
  #[napi(ts_args_type = "request: RewindRequest", ts_return_type = "Promise<RewindResult>")]
  pub fn rewind<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, JsRewindResult> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let r: JsRewindRequest = parse("rewind", request?)?;
        let files = match r.files {
          None | Some(Value::Null) | Some(Value::Bool(false)) => None,
          Some(Value::Bool(true)) => Some(manager::FilesMode::Restore),
          Some(Value::String(s)) if s == "dryRun" => Some(manager::FilesMode::DryRun),
          Some(_) => return Err(CoreError::invalid("files must be true, false or 'dryRun'")),
        };
        m.rewind(&r.session_id, &r.user_id, &r.to_message_id, files).await
      },
      |r| JsRewindResult {
        session: JsSession::from(r.session),
        to_message_id: r.to_message_id,
        dropped_messages: r.dropped_messages as f64,
        context_info: JsContextInfo::from(r.context_info),
        files: r.files.map(|f| JsFileChanges {
          restored: f.restored,
          changed: f.changed,
          insertions: f.insertions as f64,
          deletions: f.deletions as f64,
        }),
      },
    )
  }

  /// How full the session's context is, from the store (nothing is spawned). `threshold` is a
  /// percentage; default the manager's `compactThreshold`.
  #[napi(ts_args_type = "sessionId: string, userId: string, options?: ThresholdOptions", ts_return_type = "Promise<ContextInfo>")]
  pub fn get_session_context<'e>(
    &self,
    env: &'e Env,
    session_id: Unknown<'e>,
    user_id: Unknown<'e>,
    options: Option<Unknown<'e>>,
  ) -> Promised<'e, JsContextInfo> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let options = js_value(env, "options", options);
    // Answered here when the store can be read without waiting (see `getSession`).
    if let (Ok(Value::String(id)), Ok(Value::String(user)), Ok(o)) = (&session_id, &user_id, &options) {
      let options = match o {
        Value::Null => Some(manager::ThresholdOptions::default()),
        v => parse::<JsThresholdOptions>("getSessionContext options", v.clone()).ok().and_then(|o| o.try_into().ok()),
      };
      if let Some(ci) = options.and_then(|o| self.inner.get_context_now(id, user, o)) {
        return PromiseRaw::resolve(env, JsContextInfo::from(ci));
      }
    }
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let o: JsThresholdOptions = parse_optional("getSessionContext options", options?)?;
        m.get_context(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?, o.try_into()?).await
      },
      JsContextInfo::from,
    )
  }

  /// The tasks run in a session, oldest first.
  #[napi(ts_args_type = "sessionId: string, userId: string", ts_return_type = "Promise<TaskRecord[]>")]
  pub fn list_tasks<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> Promised<'e, Vec<JsTaskRecord>> {
    by_session(env, &self.inner, session_id, user_id, |m, id, user| async move { m.list_tasks(&id, &user).await }, task_records)
  }

  /// The compactions of a session, oldest first.
  #[napi(ts_args_type = "sessionId: string, userId: string", ts_return_type = "Promise<CompactionRecord[]>")]
  pub fn list_compactions<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> Promised<'e, Vec<CompactionRecord>> {
    by_session(env, &self.inner, session_id, user_id, |m, id, user| async move { m.list_compactions(&id, &user).await }, compaction_records)
  }

  /// The conversation the model has, read from the CLI's transcript: the chain from the newest
  /// message back to the first (dead branches left out, compaction summaries marked), one entry
  /// per user message or model response. Without `offset`, the newest `limit` (default 100)
  /// messages, oldest first.
  #[napi(ts_args_type = "sessionId: string, userId: string, options?: MessagesOptions", ts_return_type = "Promise<MessagesPage>")]
  pub fn get_messages<'e>(
    &self,
    env: &'e Env,
    session_id: Unknown<'e>,
    user_id: Unknown<'e>,
    options: Option<Unknown<'e>>,
  ) -> Promised<'e, serde_json::Value> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let options = js_value(env, "options", options);
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let o: JsMessagesOptions = parse_optional("getMessages options", options?)?;
        let page = m.get_messages(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?, o.try_into()?).await?;
        serde_json::to_value(page).map_err(|e| CoreError::internal(format!("cannot encode messages: {e}")))
      },
      |v| v,
    )
  }

  /// Predicts how many tokens a prompt would add to the session (Claude's tokenizer is not
  /// public: tiktoken × a factor learned per model family) and whether it still fits.
  #[napi(
    ts_args_type = "sessionId: string, userId: string, prompt: string, options?: ThresholdOptions",
    ts_return_type = "Promise<PromptEstimate>"
  )]
  pub fn estimate_prompt_tokens<'e>(
    &self,
    env: &'e Env,
    session_id: Unknown<'e>,
    user_id: Unknown<'e>,
    prompt: Unknown<'e>,
    options: Option<Unknown<'e>>,
  ) -> Promised<'e, JsPromptEstimate> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let prompt = js_value(env, "prompt", Some(prompt));
    let options = js_value(env, "options", options);
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let o: JsThresholdOptions = parse_optional("estimatePromptTokens options", options?)?;
        let (sid, uid, p) = (string_arg("sessionId", session_id?)?, string_arg("userId", user_id?)?, string_arg("prompt", prompt?)?);
        m.estimate_prompt_tokens(&sid, &uid, p, o.try_into()?).await
      },
      JsPromptEstimate::from,
    )
  }

  /// Runs a prompt through the `claude` CLI in a session (a new one when `sessionId` is omitted).
  /// Invalid requests reject before anything is spawned; model and CLI failures resolve with
  /// `success: false` and an `error.code`.
  #[napi(ts_args_type = "request: TaskRequest, options?: ExecuteOptions", ts_return_type = "Promise<TaskResult>")]
  pub fn execute_task<'e>(&self, env: &'e Env, request: Unknown<'e>, options: Option<Unknown<'e>>) -> Promised<'e, JsTaskResult> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    let can_use_tool = permissions::read_can_use_tool(env, options);
    with_hooks(env, "executeTask", options, move |sink, cancel| async move {
      let r = manager::TaskRequest::try_from(parse::<JsTaskRequest>("executeTask", request?)?)?;
      m.execute_task_with(r, sink, cancel, can_use_tool?).await
    })
  }

  /// Compacts a session through the CLI's `/compact` and records the before/after tokens. A
  /// failed compaction rejects with `COMPACT_FAILED` and leaves the session as it was.
  #[napi(ts_args_type = "request: CompactRequest, options?: ExecuteOptions", ts_return_type = "Promise<TaskResult>")]
  pub fn compact_session<'e>(&self, env: &'e Env, request: Unknown<'e>, options: Option<Unknown<'e>>) -> Promised<'e, JsTaskResult> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    with_hooks(env, "compactSession", options, move |sink, cancel| async move {
      let r = manager::CompactRequest::try_from(parse::<JsCompactRequest>("compactSession", request?)?)?;
      m.compact(r, sink, cancel).await
    })
  }

  /// How tasks run here: whether the agent is sandboxed, whether the API key is hidden behind the
  /// per-task proxy, and where the addon keeps its state.
  #[napi]
  pub fn info(&self) -> JsManagerInfo {
    self.inner.info().into()
  }

  /// Starts the session's CLI before its next prompt, so that the prompt does not wait for the
  /// CLI's start-up: the process is the one the next task with these options would start (same
  /// identity, sandbox and working directory), kept like a warm CLI after a task (`warmIdleMs`,
  /// `maxWarmSessions`), and costs no model call. Another user's session rejects with
  /// `SESSION_NOT_FOUND`; bad options as `executeTask` would.
  #[napi(ts_args_type = "request: PrewarmRequest", ts_return_type = "Promise<PrewarmResult>")]
  pub fn prewarm<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, PrewarmResult> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(env, async move { m.prewarm(parse::<JsPrewarmRequest>("prewarm", request?)?.try_into()?).await }, |p| PrewarmResult {
      status: p.as_str().to_owned(),
    })
  }

  /// Adds a message to the task running on the session in a warm process, in this manager or in
  /// another one sharing the store (forwarded through it; resolves once that manager has steered
  /// it): the CLI runs it after the current prompt and the task ends at its result. Rejects with
  /// `INVALID_ARGUMENT` when no such task is running there.
  #[napi(ts_args_type = "request: SendMessageRequest", ts_return_type = "Promise<void>")]
  pub fn send_message<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, ()> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(env, async move { m.send_message(parse::<JsSendMessageRequest>("sendMessage", request?)?.try_into()?).await }, |()| ())
  }

  /// Answers a permission request of a task on the user's session, wherever the task runs (in
  /// this manager, or in another one sharing the store: forwarded through it). The task goes on
  /// as if its `canUseTool` had answered, and that callback's `signal` aborts. Another user's
  /// session rejects with `SESSION_NOT_FOUND`; a request not pending (answered, withdrawn, timed
  /// out, unknown) with `PERMISSION_REQUEST_NOT_FOUND`.
  #[napi(ts_args_type = "request: PermissionResponse", ts_return_type = "Promise<void>")]
  pub fn respond_to_permission<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, ()> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(
      env,
      async move { m.respond_to_permission(parse::<JsPermissionResponse>("respondToPermission", request?)?.try_into()?).await },
      |()| (),
    )
  }

  /// The session's context: the CLI's own breakdown (`get_context_usage`, no API call) when it
  /// has a warm process here (`{ source: 'cli', usage: { categories, totalTokens, maxTokens,
  /// percentage, ... } }`), else the stored meter (`{ source: 'store', contextInfo }`).
  #[napi(
    ts_args_type = "sessionId: string, userId: string",
    ts_return_type = "Promise<{ source: 'cli'; usage: Record<string, any> } | { source: 'store'; contextInfo: ContextInfo }>"
  )]
  pub fn get_context_usage<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> Promised<'e, Value> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let m = self.inner.clone();
    promise(env, async move { m.get_context_usage(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?).await }, |v| v)
  }

  /// Aborts running tasks, waits for them to settle, and refuses further calls with `CLOSED`.
  /// Sets (or replaces) a spend cap: `scope` `'user'`, `'project'` (with `projectId`) or
  /// `'session'` (with `sessionId`, the user's: the cap of its lineage, the session it was forked
  /// from and every fork, which their spend counts against together), `usd`, `period` `'day'` |
  /// `'month'` (not for a session). The key proxy refuses a model call whose reserve could cross
  /// any cap that applies; the task ends `BUDGET_EXCEEDED`.
  #[napi(ts_args_type = "request: BudgetRequest", ts_return_type = "Promise<Budget>")]
  pub fn set_budget<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, JsBudget> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(env, async move { m.set_budget(parse::<JsBudgetRequest>("setBudget", request?)?.try_into()?).await }, JsBudget::from)
  }

  /// A spend cap with what its scope spent this period: the one set, else the constructor's
  /// default that applies, else `null`.
  #[napi(ts_args_type = "request: BudgetRequest", ts_return_type = "Promise<Budget | null>")]
  pub fn get_budget<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, Option<JsBudget>> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(env, async move { m.get_budget(parse::<JsBudgetRequest>("getBudget", request?)?.try_into()?).await }, |b| b.map(JsBudget::from))
  }

  /// Deletes a spend cap set with `setBudget` (a default one applies again); whether there was one.
  #[napi(ts_args_type = "request: BudgetRequest", ts_return_type = "Promise<boolean>")]
  pub fn delete_budget<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, bool> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(env, async move { m.delete_budget(parse::<JsBudgetRequest>("deleteBudget", request?)?.try_into()?).await }, |b| b)
  }

  /// The key proxy's ledger of model calls (every call made with a task's token, the agent's own
  /// included), filtered by user, project, session and time and summed by day, model or session.
  #[napi(ts_args_type = "request: UsageRequest", ts_return_type = "Promise<UsageGroup[]>")]
  pub fn get_usage<'e>(&self, env: &'e Env, request: Unknown<'e>) -> Promised<'e, Vec<UsageGroup>> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(env, async move { m.get_usage(parse::<JsUsageRequest>("getUsage", request?)?.try_into()?).await }, |rows| {
      rows.into_iter().map(UsageGroup::from).collect()
    })
  }

  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'e>(&self, env: &'e Env) -> Promised<'e, ()> {
    let m = self.inner.clone();
    promise(env, async move { m.close().await }, |()| ())
  }
}

/// Every error code this package uses, for documentation and exhaustive handling.
#[napi]
pub fn error_codes() -> Vec<String> {
  ErrorCode::ALL.iter().map(|c| c.as_str().to_string()).collect()
}
