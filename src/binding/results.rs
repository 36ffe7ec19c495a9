//! What the addon returns to JavaScript: `#[napi(object)]` mirrors of the core's results.

use napi_derive::napi;

use super::*;

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
#[napi(object, js_name = "ContextSnapshot")]
pub struct JsContextSnapshot {
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
#[napi(object, js_name = "Session")]
pub struct JsSession {
  /// UUID v4; the CLI's session id.
  pub id: String,
  pub project_id: String,
  pub user_id: String,
  /// `active`, `archived`, or `paused`: active, but its last task was stopped by a spend cap
  /// (`pausedBy` says which), or it is a fork of a paused session (the same caps apply to it); a
  /// task on it after the cap is raised or its period rolled over continues the conversation and
  /// ends the pause.
  #[napi(ts_type = "'active' | 'archived' | 'paused'")]
  pub status: String,
  /// The scope of the spend cap that paused the session.
  #[napi(ts_type = "'user' | 'project' | 'session'")]
  pub paused_by: Option<String>,
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
  pub context: Option<JsContextSnapshot>,
}

impl From<store::Session> for JsSession {
  fn from(s: store::Session) -> Self {
    JsSession {
      id: s.id,
      project_id: s.project_id,
      user_id: s.user_id,
      status: if s.paused.is_some() && s.status == "active" { "paused".into() } else { s.status },
      paused_by: s.paused,
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
      context: s.context.map(|c| JsContextSnapshot {
        tokens: num(c.tokens),
        window: num(c.window),
        source: c.source,
        measured_at: c.measured_at as f64,
      }),
    }
  }
}

pub(crate) fn sessions(v: Vec<store::Session>) -> Vec<JsSession> {
  v.into_iter().map(JsSession::from).collect()
}

/// How full a session's context window is.
#[napi(object, js_name = "ContextInfo")]
pub struct JsContextInfo {
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

impl From<context::ContextInfo> for JsContextInfo {
  fn from(c: context::ContextInfo) -> Self {
    JsContextInfo {
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
#[napi(object, js_name = "TaskError")]
pub struct JsTaskError {
  /// `API_ERROR`, `AUTH_ERROR` (no API key reached the CLI, or the API refused it: set
  /// `ANTHROPIC_API_KEY` in the server's environment), `MAX_TURNS`, `BUDGET_EXCEEDED`,
  /// `CLI_ERROR`, `ABORTED`, `TIMEOUT`, ...
  pub code: String,
  pub message: String,
  /// The HTTP status of an `API_ERROR` (or of an `AUTH_ERROR` the API answered: 401).
  pub status: Option<u32>,
  /// For a `BUDGET_EXCEEDED` from a spend cap (`setBudget`, `budgets`): the cap's scope.
  #[napi(ts_type = "'user' | 'project' | 'session'")]
  pub scope: Option<String>,
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
#[napi(object, js_name = "TaskResult")]
pub struct JsTaskResult {
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
  pub context_info: JsContextInfo,
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
  /// CLI output lines that could not be read, and `onEvent` calls that threw or returned a
  /// promise that rejected (`onEvent threw: …`, `onEvent rejected: …`, each distinct failure once
  /// with a count, at most ten); the task went on regardless.
  pub warnings: Vec<String>,
  /// Whether the CLI ran in the sandbox (see `SessionManager.info()`).
  pub sandboxed: bool,
  pub error: Option<JsTaskError>,
}

impl From<manager::TaskResult> for JsTaskResult {
  fn from(r: manager::TaskResult) -> Self {
    JsTaskResult {
      success: r.success,
      session_id: r.session_id,
      task_id: r.task_id,
      parent_session_id: r.parent_session_id,
      result: r.result,
      context_info: r.context_info.into(),
      duration: TaskDuration { total: num(r.duration.total_ms), api: num(r.duration.api_ms) },
      cost: r.cost,
      turns: num(r.turns),
      usage: r.usage.into(),
      permission_denials: r.permission_denials,
      stop_reason: r.stop_reason,
      model: r.model,
      compacted: r.compacted,
      compactions: compaction_records(r.compactions),
      warnings: r.warnings,
      sandboxed: r.sandboxed,
      error: r.error.map(|e| JsTaskError { code: e.code, message: e.message, status: e.status.map(|s| s as u32), scope: e.scope }),
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

pub(crate) fn compaction_records(v: Vec<store::Compaction>) -> Vec<CompactionRecord> {
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
#[napi(object, js_name = "TaskRecord")]
pub struct JsTaskRecord {
  pub id: String,
  pub session_id: String,
  /// `running`, `succeeded`, `failed`, `aborted`, `timed_out` or `interrupted`.
  pub status: String,
  /// `task`, `compact`, or `rewind` (a `rewind` with `files`: the working directory restored under
  /// the session's lease, no model call, no cost).
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

pub(crate) fn task_records(v: Vec<store::TaskRecord>) -> Vec<JsTaskRecord> {
  v.into_iter()
    .map(|t| JsTaskRecord {
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
  pub session: JsSession,
  /// True when no active session existed and a new one was made.
  pub created: bool,
}

/// `startFresh`'s answer.
#[napi(object)]
pub struct StartFreshResult {
  /// The new active session.
  pub session: JsSession,
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
  #[napi(
    ts_type = "Array<{ type: 'text'; text: string } | { type: 'thinking'; text: string } | { type: 'toolUse'; id: string; name: string; input: any } | { type: 'toolResult'; toolUseId: string; toolName?: string; content: string; isError: boolean; truncated: boolean; contentChars: number; images: number } | { type: 'image'; mediaType?: string } | { type: 'other'; blockType: string }>"
  )]
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
#[napi(object, object_from_js = false, js_name = "MessagesPage")]
pub struct JsMessagesPage {
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
  /// Sessions forked from this one, with the message each continues from (`null`: the end, as it
  /// was then).
  #[napi(ts_type = "Array<{ sessionId: string; atMessageId: string | null }>")]
  pub branches: Vec<serde_json::Value>,
  /// For a fork made at a message: that message of the parent (`parentId`).
  pub forked_at: Option<String>,
}

/// What `rewind` did.
#[allow(dead_code)]
#[napi(object, object_from_js = false, js_name = "RewindResult")]
pub struct JsRewindResult {
  pub session: JsSession,
  /// The message the session now continues from.
  pub to_message_id: String,
  /// Messages no longer on the live conversation (they stay in the transcript as a dead branch).
  pub dropped_messages: f64,
  /// The context meter re-derived at the branch point.
  pub context_info: JsContextInfo,
  /// With `files`: the working directory's changes.
  #[napi(ts_type = "FileChanges")]
  pub files: Option<JsFileChanges>,
}

/// The working directory's changes of a `rewind` with `files`.
#[napi(object, js_name = "FileChanges")]
pub struct JsFileChanges {
  /// Whether the files were restored (false for a dry run, and when nothing changed).
  pub restored: bool,
  /// The files that changed (a dry run: would change), relative to the working directory.
  pub changed: Vec<String>,
  /// Lines the restore adds back.
  pub insertions: f64,
  /// Lines the restore removes.
  pub deletions: f64,
}

/// How many tokens a prompt would add to a session, and whether it still fits.
#[napi(object, js_name = "PromptEstimate")]
pub struct JsPromptEstimate {
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
  pub context_info: JsContextInfo,
}

/// `SessionManager.info()`.
#[napi(object, object_from_js = false, js_name = "ManagerInfo")]
pub struct JsManagerInfo {
  /// Where the agent runs: `bubblewrap` (sandboxed) or `none`.
  #[napi(ts_type = "'bubblewrap' | 'none'")]
  pub sandbox: String,
  /// Whether the CLI gets a per-task token for the loopback key proxy instead of the API key
  /// (false when there is no key to hide, e.g. a cloud provider, or with `exposeApiKeyToAgent`).
  pub api_key_proxy: bool,
  /// Requests the key proxy answered itself without forwarding them since the manager started:
  /// anything but a model call, a token not live (no task running on its CLI), over a connection
  /// limit. 0 while the proxy has not started.
  pub proxy_refused: f64,
  pub state_directory: String,
  /// The SQLite file, or with `databaseUrl` the PostgreSQL database (`postgresql://user@host:port/db`,
  /// never the password).
  pub database_path: String,
  #[napi(ts_type = "'none' | 'user' | 'project'")]
  pub isolate_tenants: String,
  /// How the sandbox is built here; absent without one.
  // (Named here: napi's type generator learns `js_name` in file order, and `JsSandboxDetails`
  // comes below.)
  #[napi(ts_type = "SandboxDetails")]
  pub sandbox_details: Option<JsSandboxDetails>,
}

/// How the sandbox is built here (`info().sandboxDetails`).
#[napi(object, js_name = "SandboxDetails")]
pub struct JsSandboxDetails {
  /// `user-namespace`: the agent has the server's uid inside a user namespace of its own (the
  /// server is not root); `unprivileged-uid`: the server is root and each sandbox runs as an
  /// unprivileged uid of its own, its folders idmapped.
  #[napi(ts_type = "'user-namespace' | 'unprivileged-uid'")]
  pub identity: String,
  /// `proxy-only`: a network namespace whose one address is the key proxy; `host`: the host's
  /// network (there is no key proxy: `exposeApiKeyToAgent`, a cloud provider, no credentials).
  #[napi(ts_type = "'proxy-only' | 'host'")]
  pub network: String,
  /// Size of the agent's `/tmp`, MiB.
  pub tmp_mb: f64,
  /// Size of the agent's `HOME`, MiB.
  pub home_mb: f64,
  /// Processes and threads of one sandbox.
  pub processes: f64,
  /// How processes are limited: `rlimit` (`RLIMIT_NPROC`, counted per sandbox).
  #[napi(ts_type = "'rlimit'")]
  pub process_limit: String,
  /// How memory is limited: `rlimit-per-process` (`RLIMIT_AS` on each process, not a total).
  #[napi(ts_type = "'rlimit-per-process'")]
  pub memory_limit: String,
  /// Address space of each process, MiB.
  pub memory_mb: f64,
}

impl From<manager::ManagerInfo> for JsManagerInfo {
  fn from(i: manager::ManagerInfo) -> Self {
    JsManagerInfo {
      sandbox: i.sandbox.into(),
      api_key_proxy: i.api_key_proxy,
      proxy_refused: i.proxy_refused as f64,
      state_directory: i.state_directory.to_string_lossy().into_owned(),
      database_path: i.database_path,
      isolate_tenants: i.isolate_tenants.into(),
      sandbox_details: i.sandbox_details.map(|d| JsSandboxDetails {
        identity: d.identity.into(),
        network: d.network.into(),
        tmp_mb: (d.limits.tmp_bytes >> 20) as f64,
        home_mb: (d.limits.home_bytes >> 20) as f64,
        processes: d.limits.processes as f64,
        process_limit: d.process_limit.into(),
        memory_limit: d.memory_limit.into(),
        memory_mb: (d.limits.memory_bytes >> 20) as f64,
      }),
    }
  }
}

impl From<manager::PromptEstimate> for JsPromptEstimate {
  fn from(e: manager::PromptEstimate) -> Self {
    JsPromptEstimate {
      tokens: num(e.tokens),
      tiktoken_tokens: num(e.tiktoken_tokens),
      factor: e.factor,
      family: e.family,
      observations: num(e.observations),
      context_info: e.context_info.into(),
    }
  }
}

/// A spend cap and what its scope spent this period (`setBudget`, `getBudget`).
#[napi(object, js_name = "Budget")]
pub struct JsBudget {
  #[napi(ts_type = "'user' | 'project' | 'session'")]
  pub scope: String,
  /// Absent for a project's cap across all its users.
  pub user_id: Option<String>,
  pub project_id: Option<String>,
  /// The session asked about; a session cap is its lineage's (`spentUsd` counts the session it
  /// was forked from and every fork).
  pub session_id: Option<String>,
  /// The cap in US dollars.
  pub usd: f64,
  #[napi(ts_type = "'day' | 'month' | undefined")]
  pub period: Option<String>,
  /// Charged by the key proxy since the period started (calls in flight at their reserve).
  pub spent_usd: f64,
  /// `usd - spentUsd`, not below 0.
  pub remaining_usd: f64,
  /// When the period started (ms since the epoch); 0 for a lifetime cap.
  pub period_start: f64,
}

impl From<store::Budget> for JsBudget {
  fn from(b: store::Budget) -> Self {
    let some = |s: String| (!s.is_empty()).then_some(s);
    JsBudget {
      scope: b.key.scope,
      user_id: some(b.key.user_id),
      project_id: some(b.key.project_id),
      session_id: some(b.key.session_id),
      usd: b.usd,
      period: b.period,
      spent_usd: b.spent_usd,
      remaining_usd: (b.usd - b.spent_usd).max(0.0),
      period_start: b.period_start as f64,
    }
  }
}

/// One group of `getUsage`: the key proxy's ledger of model calls summed.
#[napi(object)]
pub struct UsageGroup {
  /// The day (`YYYY-MM-DD`, UTC), the model (as upstream reported it) or the session id.
  pub key: String,
  pub calls: f64,
  pub input_tokens: f64,
  pub output_tokens: f64,
  pub cache_read_input_tokens: f64,
  pub cache_creation_input_tokens: f64,
  /// At the key proxy's prices (`modelPrices` over Anthropic's list prices).
  pub usd: f64,
}

impl From<store::UsageRow> for UsageGroup {
  fn from(r: store::UsageRow) -> Self {
    UsageGroup {
      key: r.key,
      calls: r.calls as f64,
      input_tokens: r.tokens.input as f64,
      output_tokens: r.tokens.output as f64,
      cache_read_input_tokens: r.tokens.cache_read as f64,
      cache_creation_input_tokens: r.tokens.cache_write as f64,
      usd: r.usd,
    }
  }
}
