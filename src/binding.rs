//! The napi edge: converts JavaScript values to core requests and core results to JavaScript
//! objects, maps errors to `Error` objects with a stable `code`, and turns panics into `INTERNAL`.
//! No logic lives here.

use std::future::Future;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error as CoreError, ErrorCode};
use crate::executor::CancelToken;
use crate::{context, manager, store, tokens};

type CoreResult<T> = std::result::Result<T, CoreError>;

// ---- errors and promises ----------------------------------------------------------------------

/// Builds a JavaScript `Error` whose `code` is the core error's code.
fn js_error(env: &Env, e: CoreError) -> napi::Error {
  let build = || -> napi::Result<napi::Error> {
    let code = env.create_string(e.code.as_str())?;
    let msg = env.create_string(&e.message)?;
    let mut raw = std::ptr::null_mut();
    let status = unsafe { napi::sys::napi_create_error(env.raw(), code.raw(), msg.raw(), &mut raw) };
    if status != napi::sys::Status::napi_ok {
      return Err(napi::Error::from_reason("cannot create an error object"));
    }
    let unknown = unsafe { Unknown::from_napi_value(env.raw(), raw)? };
    Ok(napi::Error::from(unknown))
  };
  build().unwrap_or_else(|_| napi::Error::new(Status::GenericFailure, format!("{}: {}", e.code.as_str(), e.message)))
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
  p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into())
}

/// Runs a core future on napi's tokio runtime and settles a promise with its mapped result. A
/// panic becomes a rejection with code `INTERNAL`.
fn promise<'e, T, V, F>(env: &'e Env, fut: F, map: fn(T) -> V) -> napi::Result<PromiseRaw<'e, V>>
where
  T: Send + 'static,
  V: ToNapiValue + 'static,
  F: Future<Output = CoreResult<T>> + Send + 'static,
{
  promise_then(env, fut, map, |_| ())
}

/// [`promise`], with `cleanup` run on the JavaScript thread once the future has settled.
fn promise_then<'e, T, V, F>(env: &'e Env, fut: F, map: fn(T) -> V, cleanup: impl FnOnce(&Env) + 'static) -> napi::Result<PromiseRaw<'e, V>>
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
fn debug_panic_hook() {
  #[cfg(debug_assertions)]
  if std::env::var_os("CSM_DEBUG_PANIC").is_some() {
    panic!("CSM_DEBUG_PANIC is set");
  }
}

/// Runs a synchronous core call, mapping errors and panics.
fn sync<T>(env: &Env, f: impl FnOnce() -> CoreResult<T>) -> napi::Result<T> {
  match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
    debug_panic_hook();
    f()
  })) {
    Ok(Ok(t)) => Ok(t),
    Ok(Err(e)) => Err(js_error(env, e)),
    Err(p) => Err(js_error(env, CoreError::internal(format!("panic: {}", panic_message(p))))),
  }
}

/// Reads any JavaScript value as JSON. Values JSON cannot hold (NaN, Infinity, functions,
/// symbols, BigInt, cycles deeper than 64) are `INVALID_ARGUMENT` naming where they were.
fn js_value(env: &Env, what: &str, v: Option<Unknown<'_>>) -> CoreResult<Value> {
  match v {
    None => Ok(Value::Null),
    Some(u) => unsafe { to_json(env.raw(), u.raw(), what, 0) },
  }
}

unsafe fn to_json(env: napi::sys::napi_env, v: napi::sys::napi_value, at: &str, depth: u32) -> CoreResult<Value> {
  use napi::sys;
  let bad = |why: &str| CoreError::invalid(format!("{at} {why}"));
  let ok = |s: sys::napi_status| if s == sys::Status::napi_ok { Ok(()) } else { Err(CoreError::invalid(format!("{at} cannot be read"))) };
  if depth > 64 {
    return Err(bad("is nested too deeply"));
  }
  let mut t = 0;
  ok(sys::napi_typeof(env, v, &mut t))?;
  match t {
    sys::ValueType::napi_undefined | sys::ValueType::napi_null => Ok(Value::Null),
    sys::ValueType::napi_boolean => {
      let mut b = false;
      ok(sys::napi_get_value_bool(env, v, &mut b))?;
      Ok(Value::Bool(b))
    }
    sys::ValueType::napi_number => {
      let mut n = 0f64;
      ok(sys::napi_get_value_double(env, v, &mut n))?;
      serde_json::Number::from_f64(n).map(Value::Number).ok_or_else(|| bad(&format!("must be a finite number, got {n}")))
    }
    sys::ValueType::napi_string => {
      let mut len = 0usize;
      ok(sys::napi_get_value_string_utf8(env, v, std::ptr::null_mut(), 0, &mut len))?;
      let mut buf = vec![0u8; len + 1];
      let mut written = 0usize;
      ok(sys::napi_get_value_string_utf8(env, v, buf.as_mut_ptr().cast(), buf.len(), &mut written))?;
      buf.truncate(written);
      Ok(Value::String(String::from_utf8_lossy(&buf).into_owned()))
    }
    sys::ValueType::napi_object => {
      let mut is_array = false;
      ok(sys::napi_is_array(env, v, &mut is_array))?;
      if is_array {
        let mut n = 0u32;
        ok(sys::napi_get_array_length(env, v, &mut n))?;
        if n > 100_000 {
          return Err(bad("has too many elements"));
        }
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
          let mut e = std::ptr::null_mut();
          ok(sys::napi_get_element(env, v, i, &mut e))?;
          out.push(to_json(env, e, &format!("{at}[{i}]"), depth + 1)?);
        }
        return Ok(Value::Array(out));
      }
      let mut keys = std::ptr::null_mut();
      ok(sys::napi_get_property_names(env, v, &mut keys))?;
      let mut n = 0u32;
      ok(sys::napi_get_array_length(env, keys, &mut n))?;
      let mut map = serde_json::Map::new();
      for i in 0..n {
        let mut k = std::ptr::null_mut();
        ok(sys::napi_get_element(env, keys, i, &mut k))?;
        let key = match to_json(env, k, at, depth + 1)? {
          Value::String(s) => s,
          other => other.to_string(),
        };
        let mut val = std::ptr::null_mut();
        ok(sys::napi_get_property(env, v, k, &mut val))?;
        let mut vt = 0;
        ok(sys::napi_typeof(env, val, &mut vt))?;
        if vt == sys::ValueType::napi_undefined {
          continue; // `{ x: undefined }` reads as an absent x, as JSON.stringify would have it.
        }
        let child = to_json(env, val, &format!("{at}.{key}"), depth + 1)?;
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
fn parse<T: DeserializeOwned>(what: &str, v: Value) -> CoreResult<T> {
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
fn parse_optional<T: DeserializeOwned + Default>(what: &str, v: Value) -> CoreResult<T> {
  match v {
    Value::Null => Ok(T::default()),
    v => parse(what, v),
  }
}

fn string_arg(field: &str, v: Value) -> CoreResult<String> {
  match v {
    Value::String(s) => Ok(s),
    other => Err(CoreError::invalid(format!("{field} must be a string, got {}", type_name(&other)))),
  }
}

fn type_name(v: &Value) -> &'static str {
  match v {
    Value::Null => "null or undefined",
    Value::Bool(_) => "a boolean",
    Value::Number(_) => "a number",
    Value::String(_) => "a string",
    Value::Array(_) => "an array",
    Value::Object(_) => "an object",
  }
}

fn num(v: u64) -> f64 {
  v as f64
}

// ---- output types -----------------------------------------------------------------------------

/// Token counts as the Anthropic API reports them.
#[napi(object)]
pub struct TokenUsage {
  /// Input tokens that were not read from or written to the prompt cache.
  pub input_tokens: f64,
  /// Output tokens.
  pub output_tokens: f64,
  /// Input tokens read from the prompt cache.
  pub cache_read_input_tokens: f64,
  /// Input tokens written to the prompt cache.
  pub cache_creation_input_tokens: f64,
}

impl From<store::Usage> for TokenUsage {
  fn from(u: store::Usage) -> Self {
    TokenUsage {
      input_tokens: num(u.input_tokens),
      output_tokens: num(u.output_tokens),
      cache_read_input_tokens: num(u.cache_read_input_tokens),
      cache_creation_input_tokens: num(u.cache_creation_input_tokens),
    }
  }
}

/// The last measurement of a session's context window.
#[napi(object)]
pub struct ContextSnapshot {
  /// Tokens in the context after the last model call.
  pub tokens: f64,
  /// The model's context window.
  pub window: f64,
  /// `api` when the number is what the API reported; `estimate` otherwise.
  #[napi(ts_type = "'api' | 'estimate'")]
  pub source: String,
  /// When it was measured (ms since the epoch).
  pub measured_at: f64,
}

/// A persisted session. Its `id` is the id the `claude` CLI uses for the conversation.
#[napi(object)]
pub struct Session {
  /// UUID v4; the CLI's session id.
  pub id: String,
  pub project_id: String,
  pub user_id: String,
  /// `active` or `archived`.
  #[napi(ts_type = "'active' | 'archived'")]
  pub status: String,
  /// The session this one was forked from.
  pub parent_id: Option<String>,
  pub title: Option<String>,
  /// The model alias or name tasks use unless a request names another.
  pub model: String,
  /// The folder the CLI runs in for this session (resume is scoped to it).
  pub working_directory: String,
  /// Milliseconds since the epoch.
  pub created_at: f64,
  pub updated_at: f64,
  pub last_active_at: f64,
  /// Tasks run in this session (compactions included).
  pub task_count: f64,
  /// Sum of the tasks' costs in US dollars.
  pub total_cost_usd: f64,
  /// Sum of the tasks' token usage.
  pub usage: TokenUsage,
  /// The last context measurement, if any task ran.
  pub context: Option<ContextSnapshot>,
}

impl From<store::Session> for Session {
  fn from(s: store::Session) -> Self {
    Session {
      id: s.id,
      project_id: s.project_id,
      user_id: s.user_id,
      status: s.status,
      parent_id: s.parent_id,
      title: s.title,
      model: s.model,
      working_directory: s.working_directory,
      created_at: s.created_at as f64,
      updated_at: s.updated_at as f64,
      last_active_at: s.last_active_at as f64,
      task_count: num(s.task_count),
      total_cost_usd: s.total_cost_usd,
      usage: s.usage.into(),
      context: s.context.map(|c| ContextSnapshot {
        tokens: num(c.tokens),
        window: num(c.window),
        source: c.source,
        measured_at: c.measured_at as f64,
      }),
    }
  }
}

fn sessions(v: Vec<store::Session>) -> Vec<Session> {
  v.into_iter().map(Session::from).collect()
}

/// How full a session's context window is.
#[napi(object)]
pub struct ContextInfo {
  /// Tokens in the context (as the API reported for the last call, or estimated).
  pub estimated_tokens: f64,
  /// The context window.
  pub max_tokens: f64,
  /// `estimatedTokens / maxTokens` in percent, two decimals.
  pub usage_percentage: f64,
  /// At or over the compaction threshold.
  pub should_compact: bool,
  /// Room is left for another prompt.
  pub can_continue: bool,
  /// Where `estimatedTokens` came from.
  #[napi(ts_type = "'api' | 'estimate'")]
  pub source: String,
  /// When it was measured (ms since the epoch); absent for a session that never ran.
  pub measured_at: Option<f64>,
}

impl From<context::ContextInfo> for ContextInfo {
  fn from(c: context::ContextInfo) -> Self {
    ContextInfo {
      estimated_tokens: num(c.estimated_tokens),
      max_tokens: num(c.max_tokens),
      usage_percentage: c.usage_percentage,
      should_compact: c.should_compact,
      can_continue: c.can_continue,
      source: c.source,
      measured_at: c.measured_at.map(|t| t as f64),
    }
  }
}

/// Why a task failed.
#[napi(object)]
pub struct TaskError {
  /// `API_ERROR`, `MAX_TURNS`, `BUDGET_EXCEEDED`, `CLI_ERROR`, `ABORTED`, `TIMEOUT`, ...
  pub code: String,
  pub message: String,
  /// The HTTP status of an `API_ERROR`.
  pub status: Option<u32>,
}

/// Wall-clock and API time of a task.
#[napi(object)]
pub struct TaskDuration {
  /// From the call to the end, queueing included (ms).
  pub total: f64,
  /// Time spent waiting for the model API, as the CLI measured it (ms).
  pub api: f64,
}

/// What `executeTask` resolves to. Failures of the model or the CLI resolve with
/// `success: false` and an `error`; invalid requests reject instead.
#[napi(object)]
pub struct TaskResult {
  pub success: bool,
  /// The session the task ran in (a new id when the request forked).
  pub session_id: String,
  /// The task's row id.
  pub task_id: String,
  /// For a fork: the session it was forked from.
  pub parent_session_id: Option<String>,
  /// The model's final text.
  pub result: String,
  /// The session's context after the task.
  pub context_info: ContextInfo,
  pub duration: TaskDuration,
  /// This task's cost in US dollars.
  pub cost: f64,
  /// Model turns the task took.
  pub turns: f64,
  /// Tokens used by this task.
  pub usage: TokenUsage,
  /// Tool uses the permission mode refused, as the CLI reported them.
  pub permission_denials: Vec<serde_json::Value>,
  /// The model's last stop reason (`end_turn`, `tool_use`, `max_tokens`, ...).
  pub stop_reason: Option<String>,
  /// The model that answered, as the CLI reported it.
  pub model: Option<String>,
  /// The session was compacted before or during the task.
  pub compacted: bool,
  /// Those compactions, with their before and after token counts.
  pub compactions: Vec<CompactionRecord>,
  /// CLI output lines that could not be read; the task went on without them.
  pub warnings: Vec<String>,
  pub error: Option<TaskError>,
}

impl From<manager::TaskResult> for TaskResult {
  fn from(r: manager::TaskResult) -> Self {
    TaskResult {
      success: r.success,
      session_id: r.session_id,
      task_id: r.task_id,
      parent_session_id: r.parent_session_id,
      result: r.result,
      context_info: r.context_info.into(),
      duration: TaskDuration { total: num(r.duration_total_ms), api: num(r.duration_api_ms) },
      cost: r.cost,
      turns: num(r.turns),
      usage: r.usage.into(),
      permission_denials: r.permission_denials,
      stop_reason: r.stop_reason,
      model: r.model,
      compacted: r.compacted,
      compactions: compaction_records(r.compactions),
      warnings: r.warnings,
      error: r.error.map(|e| TaskError { code: e.code, message: e.message, status: e.status.map(|s| s as u32) }),
    }
  }
}

/// A compaction of a session's context.
#[napi(object)]
pub struct CompactionRecord {
  pub session_id: String,
  /// The run that compacted.
  pub task_id: Option<String>,
  /// `manual` (compactSession), or `auto` (autoCompact, or the CLI on its own).
  #[napi(ts_type = "'manual' | 'auto'")]
  pub trigger: String,
  /// Context tokens before, as the CLI counted them.
  pub pre_tokens: Option<f64>,
  /// Context tokens after, as the CLI counted them.
  pub post_tokens: Option<f64>,
  /// When it ran (ms since the epoch).
  pub started_at: f64,
  /// How long the summary took (ms).
  pub duration_ms: Option<f64>,
}

fn compaction_records(v: Vec<store::Compaction>) -> Vec<CompactionRecord> {
  v.into_iter()
    .map(|c| CompactionRecord {
      session_id: c.session_id,
      task_id: c.task_id,
      trigger: c.trigger,
      pre_tokens: c.pre_tokens.map(num),
      post_tokens: c.post_tokens.map(num),
      started_at: c.started_at as f64,
      duration_ms: c.duration_ms.map(num),
    })
    .collect()
}

/// A task row as stored.
#[napi(object)]
pub struct TaskRecord {
  pub id: String,
  pub session_id: String,
  /// `running`, `succeeded`, `failed`, `aborted`, `timed_out` or `interrupted`.
  pub status: String,
  /// `task` or `compact`.
  pub kind: String,
  pub started_at: f64,
  pub ended_at: Option<f64>,
  pub model: Option<String>,
  pub turns: Option<f64>,
  pub usage: TokenUsage,
  pub cost_usd: f64,
  pub error_code: Option<String>,
  pub error_message: Option<String>,
  /// The `claude` CLI version that ran it.
  pub cli_version: Option<String>,
}

fn task_records(v: Vec<store::TaskRecord>) -> Vec<TaskRecord> {
  v.into_iter()
    .map(|t| TaskRecord {
      id: t.id,
      session_id: t.session_id,
      status: t.status,
      kind: t.kind,
      started_at: t.started_at as f64,
      ended_at: t.ended_at.map(|x| x as f64),
      model: t.model,
      turns: t.turns.map(num),
      usage: t.usage.into(),
      cost_usd: t.cost_usd,
      error_code: t.error_code,
      error_message: t.error_message,
      cli_version: t.cli_version,
    })
    .collect()
}

/// `getOrCreateSession`'s answer.
#[napi(object)]
pub struct GetOrCreateResult {
  pub session: Session,
  /// True when no active session existed and a new one was made.
  pub created: bool,
}

/// `startFresh`'s answer.
#[napi(object)]
pub struct StartFreshResult {
  /// The new active session.
  pub session: Session,
  /// How many active sessions were archived.
  pub archived: f64,
}

/// `cleanupSessions`'s answer.
#[napi(object)]
pub struct CleanupResult {
  /// Sessions deleted.
  pub deleted: f64,
  /// The user's (project's) sessions left.
  pub remaining: f64,
}

/// One message of a session's conversation, as `getMessages` returns it: a user message, or one
/// API response of the model with all its content blocks.
#[allow(dead_code)]
#[napi(object, object_from_js = false)]
pub struct HistoryMessage {
  /// The uuid of the message's first transcript line.
  pub uuid: String,
  pub parent_uuid: Option<String>,
  #[napi(ts_type = "'user' | 'assistant'")]
  pub role: String,
  /// `prompt` (typed by the user), `toolResults`, `command` (a slash command), `notification`,
  /// `compactSummary` (the summary a compaction left), `meta`, or `assistant`.
  #[napi(ts_type = "'prompt' | 'toolResults' | 'command' | 'notification' | 'compactSummary' | 'meta' | 'assistant'")]
  pub kind: String,
  /// The text blocks joined by blank lines.
  pub text: String,
  /// The content blocks in order.
  #[napi(ts_type = "Array<{ type: 'text'; text: string } | { type: 'thinking'; text: string } | { type: 'toolUse'; id: string; name: string; input: any } | { type: 'toolResult'; toolUseId: string; toolName?: string; content: string; isError: boolean; truncated: boolean; contentChars: number; images: number } | { type: 'image'; mediaType?: string } | { type: 'other'; blockType: string }>")]
  pub blocks: Vec<serde_json::Value>,
  /// The API message id of an assistant message.
  pub message_id: Option<String>,
  pub model: Option<String>,
  /// ISO-8601 time.
  pub timestamp: Option<String>,
  /// API usage of an assistant message (the input side is exact; output may be partial).
  pub usage: Option<TokenUsage>,
  /// Set on compaction summaries.
  #[napi(ts_type = "{ trigger?: 'auto' | 'manual'; preTokens?: number }")]
  pub compaction: Option<serde_json::Value>,
}

/// A page of a session's conversation.
#[allow(dead_code)]
#[napi(object, object_from_js = false)]
pub struct MessagesPage {
  /// Oldest first.
  pub messages: Vec<HistoryMessage>,
  /// Index of the first returned message in the whole conversation.
  pub offset: f64,
  /// Messages in the whole conversation.
  pub total: f64,
  /// Index of the first message still in the model's context (the latest compaction summary).
  pub live_from: f64,
  /// Compactions the conversation went through.
  pub compactions: f64,
}

/// How many tokens a prompt would add to a session, and whether it still fits.
#[napi(object)]
pub struct PromptEstimate {
  /// Tokens the prompt is expected to add: `tiktokenTokens × factor`.
  pub tokens: f64,
  /// Its tiktoken (`o200k_base`) count.
  pub tiktoken_tokens: f64,
  /// Claude tokens per tiktoken token: a prior per model family fitted on real transcripts,
  /// refined by this session's own turns.
  pub factor: f64,
  #[napi(ts_type = "'opus' | 'sonnet' | 'haiku' | 'other'")]
  pub family: String,
  /// Turns of this session the factor learned from (0: the prior alone).
  pub observations: f64,
  /// The session's context with the prompt added: `canContinue` says whether it fits.
  pub context_info: ContextInfo,
}

// ---- input types (typing only: inputs are read through serde so that every shape error is an
// INVALID_ARGUMENT naming the field) ----------------------------------------------------------

/// Options of `new SessionManager(options)`. Unknown keys are rejected.
#[allow(dead_code)]
#[napi(object, object_from_js = false)]
pub struct SessionManagerOptions {
  /// SQLite file. Default: env `CLAUDE_SESSIONS_DB`, else `.claude-sessions/sessions.db` under
  /// `workingDirectory`. Its folder must exist.
  pub database_path: Option<String>,
  /// Where the CLI runs for new sessions. Default: env `CLAUDE_WORKING_DIR`, else `process.cwd()`.
  pub working_directory: Option<String>,
  /// Model for new sessions. Default: env `CLAUDE_DEFAULT_MODEL`, else `sonnet`.
  pub default_model: Option<String>,
  /// Context window when the CLI does not report one. Default 200000 (500000 on enterprise plans).
  pub context_window: Option<f64>,
  /// Percent of the window at which `shouldCompact` turns true. Default 80.
  pub compact_threshold: Option<f64>,
  /// The `claude` binary. Default: env `CLAUDE_PATH`, the `@anthropic-ai/claude-code` package, `PATH`.
  pub claude_path: Option<String>,
  /// Extra environment for the CLI. The CLI otherwise gets only what it needs from this process
  /// (API key, base URL, proxy, HOME, PATH, `CLAUDE_CODE_*`): other server secrets do not pass.
  pub env: Option<std::collections::HashMap<String, String>>,
  /// Allow `permissionMode: 'bypassPermissions'`. Default false.
  pub allow_bypass_permissions: Option<bool>,
  /// Tasks that run at once in this process; more wait in line. Default 8.
  pub max_concurrent_tasks: Option<f64>,
  /// How long a task waits for a busy session before failing with `SESSION_BUSY` (ms). Default 60000.
  pub queue_timeout_ms: Option<f64>,
  /// Stop a CLI that prints nothing for this long (ms); 0 disables. Default 900000.
  pub stall_timeout_ms: Option<f64>,
  /// How much lower the CLI's CPU priority is than this process's: a Unix nice increment, 0–19
  /// (0 keeps it equal). Default 10, so that a burst of CLIs starting up (and the tools they run)
  /// leaves the Node event loop serving requests on time. Ignored on Windows.
  pub cli_niceness: Option<f64>,
  /// When set, every working directory (the manager's and each session's) must resolve, through
  /// `..` and symlinks, inside one of these folders.
  pub allowed_roots: Option<Vec<String>>,
  /// Give each user (or each user's project) its own `CLAUDE_CONFIG_DIR`, so transcripts of
  /// different tenants never share a folder. Default `none`.
  #[napi(ts_type = "'none' | 'user' | 'project'")]
  pub isolate_tenants: Option<String>,
  /// Where tenant configuration folders live. Default: `claude-config` beside the database.
  pub tenant_config_root: Option<String>,
}

/// Filters of `listSessions`.
#[allow(dead_code)]
#[napi(object, object_from_js = false)]
pub struct ListSessionsRequest {
  pub user_id: String,
  pub project_id: Option<String>,
  #[napi(ts_type = "'active' | 'archived'")]
  pub status: Option<String>,
  /// Only forks of this session.
  pub parent_id: Option<String>,
  /// At most this many (1..1000). Default 50.
  pub limit: Option<f64>,
  pub offset: Option<f64>,
}

/// A request to run a prompt in a session.
#[allow(dead_code)]
#[napi(object, object_from_js = false)]
pub struct TaskRequest {
  /// The prompt; it reaches the CLI on stdin, never in argv.
  pub prompt: String,
  pub project_id: String,
  pub user_id: String,
  /// Omit to start a new session.
  pub session_id: Option<String>,
  /// `sonnet`, `opus`, `haiku` or a full model name. Default: the session's model.
  pub model: Option<String>,
  pub max_turns: Option<f64>,
  /// Tools allowed without asking, passed to the CLI exactly as given (e.g. `Bash(git log:*)`).
  pub allowed_tools: Option<Array<'static>>,
  /// Tools refused, passed to the CLI exactly as given.
  pub disallowed_tools: Option<Array<'static>>,
  /// `bypassPermissions` needs `allowBypassPermissions` on the manager.
  #[napi(ts_type = "'default' | 'acceptEdits' | 'plan' | 'bypassPermissions'")]
  pub permission_mode: Option<String>,
  pub append_system_prompt: Option<String>,
  pub max_budget_usd: Option<f64>,
  pub fallback_model: Option<String>,
  /// Compact first when the session is at or over the threshold.
  pub auto_compact: Option<bool>,
  /// Percent; default the manager's `compactThreshold`.
  pub compact_threshold: Option<f64>,
  /// Run in a new fork of `sessionId`; the parent is left as it was.
  pub fork_session: Option<bool>,
  /// Stop the task after this long (ms): it resolves with `TIMEOUT`.
  pub timeout_ms: Option<f64>,
  /// Also deliver `stream_event` partial messages (text deltas) to `onEvent`.
  pub include_partial_messages: Option<bool>,
  /// Title for a new session or fork.
  pub title: Option<String>,
  /// For a new session: the absolute folder the CLI runs in (inside `allowedRoots` when set).
  /// An existing session always runs in its own folder.
  pub working_directory: Option<String>,
  /// How long to wait while the session runs another task before failing with `SESSION_BUSY`
  /// (ms; 0 fails at once). Default: the manager's `queueTimeoutMs`.
  pub queue_timeout_ms: Option<f64>,
}

/// How a caller follows and cancels a task.
#[allow(dead_code)]
#[napi(object, object_from_js = false)]
pub struct ExecuteOptions {
  /// Called with every event as it arrives: `{ type: 'task_queued', sessionId }` at once,
  /// `{ type: 'task_started', sessionId, taskId }` when the CLI starts, then the CLI's
  /// stream-json messages (`system`, `assistant`, `user`, `result`, and `stream_event` when
  /// `includePartialMessages`).
  #[napi(ts_type = "(event: { type: string; subtype?: string; [key: string]: any }) => void")]
  pub on_event: Option<Unknown<'static>>,
  /// Aborting it stops the CLI's whole process group; the task resolves with `ABORTED`.
  #[napi(ts_type = "AbortSignal")]
  pub signal: Option<Unknown<'static>>,
}

// ---- the class --------------------------------------------------------------------------------

type EventFn = ThreadsafeFunction<Value, (), Value, Status, false, true>;

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
      let opts: manager::Options = parse_optional("SessionManager options", options?)?;
      Ok(SessionManager { inner: Arc::new(manager::Manager::open(opts)?) })
    })
  }

  /// The SQLite file in use.
  #[napi(getter)]
  pub fn database_path(&self) -> String {
    self.inner.config().database_path.to_string_lossy().into_owned()
  }

  /// Sessions of a user, newest activity first.
  #[napi(ts_args_type = "request: ListSessionsRequest", ts_return_type = "Promise<Session[]>")]
  pub fn list_sessions<'e>(&self, env: &'e Env, request: Unknown<'e>) -> napi::Result<PromiseRaw<'e, Vec<Session>>> {
    let request = js_value(env, "request", Some(request));
    let m = self.inner.clone();
    promise(env, async move { m.list_sessions(parse("listSessions", request?)?).await }, sessions)
  }

  /// One session. Another user's session rejects with `SESSION_NOT_FOUND`, as a missing one does.
  #[napi(ts_args_type = "sessionId: string, userId: string", ts_return_type = "Promise<Session>")]
  pub fn get_session<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> napi::Result<PromiseRaw<'e, Session>> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    // A point read that needs no waiting is answered here: a trip through the worker threads
    // costs more than the read.
    if let (Ok(Value::String(id)), Ok(Value::String(user))) = (&session_id, &user_id) {
      if let Some(s) = self.inner.get_session_now(id, user) {
        return PromiseRaw::resolve(env, Session::from(s));
      }
    }
    let m = self.inner.clone();
    promise(
      env,
      async move { m.get_session(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?).await },
      Session::from,
    )
  }

  /// The newest active session of the user's project, or a new one (`preferActive` defaults to
  /// true; false always creates).
  #[napi(
    ts_args_type = "request: { projectId: string; userId: string; preferActive?: boolean; workingDirectory?: string }",
    ts_return_type = "Promise<GetOrCreateResult>"
  )]
  pub fn get_or_create_session<'e>(&self, env: &'e Env, request: Unknown<'e>) -> napi::Result<PromiseRaw<'e, GetOrCreateResult>> {
    let request = js_value(env, "request", Some(request));
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Req {
      project_id: String,
      user_id: String,
      prefer_active: Option<bool>,
      working_directory: Option<String>,
    }
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let r: Req = parse("getOrCreateSession", request?)?;
        m.get_or_create(&r.project_id, &r.user_id, r.prefer_active.unwrap_or(true), r.working_directory.as_deref()).await
      },
      |(s, created)| GetOrCreateResult { session: s.into(), created },
    )
  }

  /// Archives the user's active sessions of the project and returns a new one (optionally with a
  /// chosen UUID).
  #[napi(
    ts_args_type = "request: { projectId: string; userId: string; sessionId?: string; workingDirectory?: string }",
    ts_return_type = "Promise<StartFreshResult>"
  )]
  pub fn start_fresh<'e>(&self, env: &'e Env, request: Unknown<'e>) -> napi::Result<PromiseRaw<'e, StartFreshResult>> {
    let request = js_value(env, "request", Some(request));
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Req {
      project_id: String,
      user_id: String,
      session_id: Option<String>,
      working_directory: Option<String>,
    }
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let r: Req = parse("startFresh", request?)?;
        m.start_fresh(&r.project_id, &r.user_id, r.session_id.as_deref(), r.working_directory.as_deref()).await
      },
      |(s, archived)| StartFreshResult { session: s.into(), archived: num(archived) },
    )
  }

  /// Marks a session archived; it stays readable and resumable.
  #[napi(ts_args_type = "sessionId: string, userId: string", ts_return_type = "Promise<Session>")]
  pub fn archive_session<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> napi::Result<PromiseRaw<'e, Session>> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let m = self.inner.clone();
    promise(
      env,
      async move { m.archive_session(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?).await },
      Session::from,
    )
  }

  /// Deletes a session with its task and compaction rows (not the CLI's transcript). A session
  /// running a task rejects with `SESSION_BUSY`.
  #[napi(ts_args_type = "sessionId: string, userId: string", ts_return_type = "Promise<void>")]
  pub fn delete_session<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> napi::Result<PromiseRaw<'e, ()>> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let m = self.inner.clone();
    promise(
      env,
      async move { m.delete_session(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?).await },
      |()| (),
    )
  }

  /// Deletes the user's sessions idle for longer than `maxAgeMs` (only archived ones while
  /// `keepActive`, the default).
  #[napi(
    ts_args_type = "request: { userId: string; projectId?: string; maxAgeMs: number; keepActive?: boolean }",
    ts_return_type = "Promise<CleanupResult>"
  )]
  pub fn cleanup_sessions<'e>(&self, env: &'e Env, request: Unknown<'e>) -> napi::Result<PromiseRaw<'e, CleanupResult>> {
    let request = js_value(env, "request", Some(request));
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Req {
      user_id: String,
      project_id: Option<String>,
      max_age_ms: f64,
      keep_active: Option<bool>,
    }
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let r: Req = parse("cleanupSessions", request?)?;
        m.cleanup(&r.user_id, r.project_id.as_deref(), r.max_age_ms, r.keep_active.unwrap_or(true)).await
      },
      |(deleted, remaining)| CleanupResult { deleted: num(deleted), remaining: num(remaining) },
    )
  }

  /// A new session that continues from `sessionId`, made at once without calling the model; its
  /// first task forks the CLI's transcript. The parent is never changed by the fork.
  #[napi(
    ts_args_type = "request: { sessionId: string; userId: string; title?: string }",
    ts_return_type = "Promise<Session>"
  )]
  pub fn fork<'e>(&self, env: &'e Env, request: Unknown<'e>) -> napi::Result<PromiseRaw<'e, Session>> {
    let request = js_value(env, "request", Some(request));
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Req {
      session_id: String,
      user_id: String,
      title: Option<String>,
    }
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let r: Req = parse("fork", request?)?;
        m.fork(&r.session_id, &r.user_id, r.title).await
      },
      Session::from,
    )
  }

  /// How full the session's context is, from the store (nothing is spawned). `threshold` is a
  /// percentage; default the manager's `compactThreshold`.
  #[napi(
    ts_args_type = "sessionId: string, userId: string, options?: { threshold?: number }",
    ts_return_type = "Promise<ContextInfo>"
  )]
  pub fn get_session_context<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>, options: Option<Unknown<'e>>) -> napi::Result<PromiseRaw<'e, ContextInfo>> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let options = js_value(env, "options", options);
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Opts {
      threshold: Option<f64>,
    }
    // Answered here when the store can be read without waiting (see `getSession`).
    if let (Ok(Value::String(id)), Ok(Value::String(user)), Ok(o)) = (&session_id, &user_id, &options) {
      let threshold = match o {
        Value::Null => Some(None),
        v => parse::<Opts>("getSessionContext options", v.clone()).ok().map(|o| o.threshold),
      };
      if let Some(ci) = threshold.and_then(|t| self.inner.get_context_now(id, user, t)) {
        return PromiseRaw::resolve(env, ContextInfo::from(ci));
      }
    }
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let o: Opts = parse_optional("getSessionContext options", options?)?;
        m.get_context(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?, o.threshold).await
      },
      ContextInfo::from,
    )
  }

  /// The tasks run in a session, oldest first.
  #[napi(ts_args_type = "sessionId: string, userId: string", ts_return_type = "Promise<TaskRecord[]>")]
  pub fn list_tasks<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> napi::Result<PromiseRaw<'e, Vec<TaskRecord>>> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let m = self.inner.clone();
    promise(
      env,
      async move { m.list_tasks(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?).await },
      task_records,
    )
  }

  /// The compactions of a session, oldest first.
  #[napi(ts_args_type = "sessionId: string, userId: string", ts_return_type = "Promise<CompactionRecord[]>")]
  pub fn list_compactions<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>) -> napi::Result<PromiseRaw<'e, Vec<CompactionRecord>>> {
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let m = self.inner.clone();
    promise(
      env,
      async move { m.list_compactions(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?).await },
      compaction_records,
    )
  }

  /// The conversation the model has, read from the CLI's transcript: the chain from the newest
  /// message back to the first (dead branches left out, compaction summaries marked), one entry
  /// per user message or model response. Without `offset`, the newest `limit` (default 100)
  /// messages, oldest first.
  #[napi(
    ts_args_type = "sessionId: string, userId: string, options?: { limit?: number; offset?: number }",
    ts_return_type = "Promise<MessagesPage>"
  )]
  pub fn get_messages<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>, options: Option<Unknown<'e>>) -> napi::Result<PromiseRaw<'e, serde_json::Value>> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Opts {
      limit: Option<f64>,
      offset: Option<f64>,
    }
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let options = js_value(env, "options", options);
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let o: Opts = parse_optional("getMessages options", options?)?;
        let page = m.get_messages(&string_arg("sessionId", session_id?)?, &string_arg("userId", user_id?)?, o.limit, o.offset).await?;
        serde_json::to_value(page).map_err(|e| CoreError::internal(format!("cannot encode messages: {e}")))
      },
      |v| v,
    )
  }

  /// Predicts how many tokens a prompt would add to the session (Claude's tokenizer is not
  /// public: tiktoken × a factor learned per model family) and whether it still fits.
  #[napi(
    ts_args_type = "sessionId: string, userId: string, prompt: string, options?: { threshold?: number }",
    ts_return_type = "Promise<PromptEstimate>"
  )]
  pub fn estimate_prompt_tokens<'e>(&self, env: &'e Env, session_id: Unknown<'e>, user_id: Unknown<'e>, prompt: Unknown<'e>, options: Option<Unknown<'e>>) -> napi::Result<PromiseRaw<'e, PromptEstimate>> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Opts {
      threshold: Option<f64>,
    }
    let session_id = js_value(env, "sessionId", Some(session_id));
    let user_id = js_value(env, "userId", Some(user_id));
    let prompt = js_value(env, "prompt", Some(prompt));
    let options = js_value(env, "options", options);
    let m = self.inner.clone();
    promise(
      env,
      async move {
        let o: Opts = parse_optional("estimatePromptTokens options", options?)?;
        let (sid, uid, p) = (string_arg("sessionId", session_id?)?, string_arg("userId", user_id?)?, string_arg("prompt", prompt?)?);
        m.estimate_prompt_tokens(&sid, &uid, p, o.threshold).await
      },
      |e| PromptEstimate {
        tokens: num(e.tokens),
        tiktoken_tokens: num(e.tiktoken_tokens),
        factor: e.factor,
        family: e.family,
        observations: num(e.observations),
        context_info: e.context_info.into(),
      },
    )
  }

  /// Runs a prompt through the `claude` CLI in a session (a new one when `sessionId` is omitted).
  /// Invalid requests reject before anything is spawned; model and CLI failures resolve with
  /// `success: false` and an `error.code`.
  #[napi(ts_args_type = "request: TaskRequest, options?: ExecuteOptions", ts_return_type = "Promise<TaskResult>")]
  pub fn execute_task<'e>(&self, env: &'e Env, request: Unknown<'e>, options: Option<Unknown<'e>>) -> napi::Result<PromiseRaw<'e, TaskResult>> {
    let request = js_value(env, "request", Some(request));
    let ExecuteHooks { sink, cancel, abort } = match read_execute_options(env, "executeTask", options) {
      Ok(x) => x,
      Err(e) => return PromiseRaw::reject(env, js_error(env, e)),
    };
    let m = self.inner.clone();
    promise_then(
      env,
      async move {
        let r: manager::TaskRequest = parse("executeTask", request?)?;
        m.execute_task(r, sink, cancel).await
      },
      TaskResult::from,
      ExecuteHooks::cleanup(abort),
    )
  }

  /// Compacts a session through the CLI's `/compact` and records the before/after tokens. A
  /// failed compaction rejects with `COMPACT_FAILED` and leaves the session as it was.
  #[napi(
    ts_args_type = "request: { sessionId: string; userId: string; summaryInstructions?: string }, options?: ExecuteOptions",
    ts_return_type = "Promise<TaskResult>"
  )]
  pub fn compact_session<'e>(&self, env: &'e Env, request: Unknown<'e>, options: Option<Unknown<'e>>) -> napi::Result<PromiseRaw<'e, TaskResult>> {
    let request = js_value(env, "request", Some(request));
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Req {
      session_id: String,
      user_id: String,
      summary_instructions: Option<String>,
    }
    let ExecuteHooks { sink, cancel, abort } = match read_execute_options(env, "compactSession", options) {
      Ok(x) => x,
      Err(e) => return PromiseRaw::reject(env, js_error(env, e)),
    };
    let m = self.inner.clone();
    promise_then(
      env,
      async move {
        let r: Req = parse("compactSession", request?)?;
        m.compact(&r.session_id, &r.user_id, r.summary_instructions, sink, cancel).await
      },
      TaskResult::from,
      ExecuteHooks::cleanup(abort),
    )
  }

  /// Aborts running tasks, waits for them to settle, and refuses further calls with `CLOSED`.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'e>(&self, env: &'e Env) -> napi::Result<PromiseRaw<'e, ()>> {
    let m = self.inner.clone();
    promise(env, async move { m.close().await }, |()| ())
  }
}

/// Reads `{ onEvent, signal }`: wraps the callback for use from other threads and hooks the
/// signal's `abort` event to a cancel token.
/// The `abort` listener a task put on a caller's signal, removed when the task settles so that a
/// long-lived signal does not collect listeners.
struct AbortHook {
  signal: ObjectRef,
  listener: FunctionRef<(), ()>,
}

impl AbortHook {
  fn remove(self, env: &Env) {
    let AbortHook { signal, listener } = self;
    let _ = (|| -> napi::Result<()> {
      let target = signal.get_value(env)?;
      let f = listener.borrow_back(env)?;
      let remove: Function<FnArgs<(String, Function<(), ()>)>, ()> = target.get_named_property("removeEventListener")?;
      remove.apply(target, ("abort".to_string(), f).into())
    })();
    // Release the references here, on the JavaScript thread.
    let _ = signal.unref(env);
    drop(listener);
  }
}

/// What `{ onEvent, signal }` turn into.
struct ExecuteHooks {
  sink: Option<manager::EventSink>,
  cancel: CancelToken,
  abort: Option<AbortHook>,
}

impl ExecuteHooks {
  fn cleanup(abort: Option<AbortHook>) -> impl FnOnce(&Env) + 'static {
    move |env| {
      if let Some(h) = abort {
        h.remove(env);
      }
    }
  }
}

fn read_execute_options(env: &Env, what: &str, options: Option<Unknown<'_>>) -> CoreResult<ExecuteHooks> {
  let cancel = CancelToken::new();
  let bad = |why: &str| CoreError::invalid(format!("{what} options: {why}"));
  let none = |cancel| Ok(ExecuteHooks { sink: None, cancel, abort: None });
  let Some(o) = options else { return none(cancel) };
  let o: Object = match o.get_type().map_err(|_| bad("cannot read options"))? {
    ValueType::Undefined | ValueType::Null => return none(cancel),
    ValueType::Object => unsafe { o.cast() }.map_err(|_| bad("must be an object"))?,
    _ => return Err(bad("must be an object like { onEvent, signal }")),
  };
  let mut sink: Option<manager::EventSink> = None;
  if o.has_named_property("onEvent").map_err(|_| bad("cannot read onEvent"))? {
    let v: Unknown = o.get_named_property("onEvent").map_err(|_| bad("cannot read onEvent"))?;
    match v.get_type().map_err(|_| bad("cannot read onEvent"))? {
      ValueType::Undefined | ValueType::Null => {}
      ValueType::Function => {
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
          let add: Function<FnArgs<(String, Function<(), ()>)>, ()> = unsafe { add.cast() }.map_err(|_| bad("signal must be an AbortSignal"))?;
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

/// Counts tokens with tiktoken (`o200k_base` by default, or `cl100k_base`). Claude's own
/// tokenizer is not public: treat the count as an estimate of Claude tokens. The encoding can be
/// given as a string, `countTokens(text, 'cl100k_base')`, the fastest form for short texts, or as
/// `{ encoding }`, whose keys are checked.
#[napi(ts_args_type = "text: string, options?: 'o200k_base' | 'cl100k_base' | { encoding?: 'o200k_base' | 'cl100k_base' }")]
pub fn count_tokens(env: Env, text: Unknown<'_>, options: Option<Unknown<'_>>) -> napi::Result<u32> {
  // Fast path (a string, no options or only `encoding`): the text goes from V8 straight into a
  // UTF-8 buffer in one pass, with no intermediate JSON value or copy.
  if let Some(enc) = fast_encoding(&env, options) {
    if let Some(n) = unsafe { with_js_str(env.raw(), text.raw(), |s| sync(&env, || Ok(tokens::count(s, enc) as u32))) } {
      return n;
    }
  }
  let text = js_value(&env, "text", Some(text));
  let options = js_value(&env, "options", options);
  sync(&env, || {
    let text = string_arg("text", text?)?;
    let enc = encoding_of(options?)?;
    Ok(tokens::count(&text, enc) as u32)
  })
}

/// `countTokens` off the JavaScript thread, for large texts: the promise settles with the count.
#[napi(ts_args_type = "text: string, options?: 'o200k_base' | 'cl100k_base' | { encoding?: 'o200k_base' | 'cl100k_base' }", ts_return_type = "Promise<number>")]
pub fn count_tokens_async<'e>(env: &'e Env, text: Unknown<'e>, options: Option<Unknown<'e>>) -> napi::Result<PromiseRaw<'e, u32>> {
  if let Some(enc) = fast_encoding(env, options) {
    match unsafe { js_string_len16(env.raw(), text.raw()) } {
      // A short text is counted at once (faster than a trip to another thread and back) and the
      // promise is returned already resolved.
      Some(len) if len <= ASYNC_INLINE_MAX_UTF16 => {
        if let Some(Ok(n)) = unsafe { with_js_str(env.raw(), text.raw(), |s| sync(env, || Ok(tokens::count(s, enc) as u32))) } {
          return PromiseRaw::resolve(env, n);
        }
      }
      Some(_) => {
        if let Some(text) = unsafe { with_js_str(env.raw(), text.raw(), |s| s.to_owned()) } {
          return promise(env, async move { count_blocking(text, enc).await }, |n| n as u32);
        }
      }
      None => {}
    }
  }
  let text = js_value(env, "text", Some(text));
  let options = js_value(env, "options", options);
  promise(
    env,
    async move {
      let text = string_arg("text", text?)?;
      let enc = encoding_of(options?)?;
      count_blocking(text, enc).await
    },
    |n| n as u32,
  )
}

/// Texts up to this many UTF-16 code units are counted by `countTokensAsync` on the calling thread.
const ASYNC_INLINE_MAX_UTF16: usize = 1024;

async fn count_blocking(text: String, enc: tokens::Encoding) -> CoreResult<usize> {
  tokio::task::spawn_blocking(move || tokens::count(&text, enc))
    .await
    .map_err(|e| CoreError::internal(format!("token counting failed: {e}")))
}

/// The encoding when `options` is absent, `undefined`, `null`, `{}` or `{ encoding: <valid name> }`;
/// `None` for anything else, which the general path then validates (and rejects with its message).
fn fast_encoding(env: &Env, options: Option<Unknown<'_>>) -> Option<tokens::Encoding> {
  use napi::sys;
  let Some(options) = options else { return Some(tokens::Encoding::O200kBase) };
  let (env, v) = (env.raw(), options.raw());
  let ok = |s: sys::napi_status| (s == sys::Status::napi_ok).then_some(());
  unsafe {
    let mut t = 0;
    ok(sys::napi_typeof(env, v, &mut t))?;
    match t {
      sys::ValueType::napi_undefined | sys::ValueType::napi_null => return Some(tokens::Encoding::O200kBase),
      // The shorthand `countTokens(text, 'cl100k_base')`: one napi call, no keys to check.
      sys::ValueType::napi_string => return tokens::Encoding::parse(Some(small_str(env, v, &mut [0u8; 32])?)).ok(),
      sys::ValueType::napi_object => {}
      _ => return None,
    }
    let mut is_array = false;
    ok(sys::napi_is_array(env, v, &mut is_array))?;
    if is_array {
      return None;
    }
    let mut keys = std::ptr::null_mut();
    ok(sys::napi_get_property_names(env, v, &mut keys))?;
    let mut n = 0u32;
    ok(sys::napi_get_array_length(env, keys, &mut n))?;
    match n {
      0 => Some(tokens::Encoding::O200kBase),
      1 => {
        let mut k = std::ptr::null_mut();
        ok(sys::napi_get_element(env, keys, 0, &mut k))?;
        if small_str(env, k, &mut [0u8; 16])? != "encoding" {
          return None;
        }
        let mut val = std::ptr::null_mut();
        ok(sys::napi_get_property(env, v, k, &mut val))?;
        // Not a string (`undefined` included): the general path decides.
        tokens::Encoding::parse(Some(small_str(env, val, &mut [0u8; 32])?)).ok()
      }
      _ => None,
    }
  }
}

/// A short JavaScript string read in one call into `buf`; `None` for a non-string or one that
/// does not fit (which then matches nothing a caller looks for).
unsafe fn small_str<'b>(env: napi::sys::napi_env, v: napi::sys::napi_value, buf: &'b mut [u8]) -> Option<&'b str> {
  let mut written = 0usize;
  if napi::sys::napi_get_value_string_utf8(env, v, buf.as_mut_ptr().cast(), buf.len(), &mut written) != napi::sys::Status::napi_ok
    || written + 1 >= buf.len()
  {
    return None;
  }
  std::str::from_utf8(&buf[..written]).ok()
}

/// The length of a JavaScript string in UTF-16 code units (O(1)), or `None` for a non-string.
unsafe fn js_string_len16(env: napi::sys::napi_env, v: napi::sys::napi_value) -> Option<usize> {
  use napi::sys;
  // Fails with `napi_string_expected` for anything but a string: no separate type check needed.
  let mut len = 0usize;
  (sys::napi_get_value_string_utf16(env, v, std::ptr::null_mut(), 0, &mut len) == sys::Status::napi_ok).then_some(len)
}

/// Calls `f` with a JavaScript string as UTF-8 (lone surrogates become U+FFFD, as `TextEncoder`
/// has them), converted in one pass into a stack buffer for short strings; `None` for a non-string.
/// A UTF-16 code unit never takes more than 3 bytes of UTF-8, so `3 × length` always suffices.
unsafe fn with_js_str<R>(env: napi::sys::napi_env, v: napi::sys::napi_value, f: impl FnOnce(&str) -> R) -> Option<R> {
  use napi::sys;
  let len16 = js_string_len16(env, v)?;
  let cap = len16 * 3 + 1;
  let mut stack = std::mem::MaybeUninit::<[u8; 2048]>::uninit();
  let mut heap = Vec::new();
  let buf: *mut u8 = if cap <= 2048 {
    stack.as_mut_ptr().cast()
  } else {
    heap.reserve_exact(cap);
    heap.as_mut_ptr()
  };
  let mut written = 0usize;
  if sys::napi_get_value_string_utf8(env, v, buf.cast(), cap, &mut written) != sys::Status::napi_ok {
    return None;
  }
  let bytes = std::slice::from_raw_parts(buf, written);
  Some(match std::str::from_utf8(bytes) {
    Ok(s) => f(s),
    Err(_) => f(&String::from_utf8_lossy(bytes)),
  })
}

fn encoding_of(options: Value) -> CoreResult<tokens::Encoding> {
  if let Value::String(name) = &options {
    return tokens::Encoding::parse(Some(name));
  }
  #[derive(serde::Deserialize, Default)]
  #[serde(deny_unknown_fields)]
  struct Opts {
    encoding: Option<String>,
  }
  let o: Opts = parse_optional("countTokens options", options)?;
  tokens::Encoding::parse(o.encoding.as_deref())
}

/// Every error code this package uses, for documentation and exhaustive handling.
#[napi]
pub fn error_codes() -> Vec<String> {
  ErrorCode::ALL.iter().map(|c| c.as_str().to_string()).collect()
}
