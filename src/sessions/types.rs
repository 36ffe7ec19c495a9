//! The requests and results of the session API. A request is typed (counts, `Duration`s, enums,
//! canonical ids) and arrives checked: the binding's `TryFrom` (`binding/typed.rs`) made it from
//! the JavaScript value, so the manager checks only what depends on its settings or its store.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::context::ContextInfo;
use crate::store::{Compaction, Session, Usage};
use crate::transcript;

/// `listSessions` filters, checked where they came in.
#[derive(Debug, Clone)]
pub struct ListRequest {
  pub user_id: String,
  pub project_id: Option<String>,
  pub status: Option<SessionStatus>,
  /// A session id in its canonical (lower-case) form.
  pub parent_id: Option<String>,
  /// 1 to [`MAX_LIST`].
  pub limit: u64,
  pub offset: u64,
}

/// Most sessions one `listSessions` call returns (a larger `limit` is cut to it).
pub const MAX_LIST: u64 = 1000;
/// `listSessions`' `limit` when none is given.
pub const DEFAULT_LIST: u64 = 50;

/// A session's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
  Active,
  Archived,
}

impl SessionStatus {
  pub const ALL: [SessionStatus; 2] = [SessionStatus::Active, SessionStatus::Archived];

  /// The status as JavaScript and the store spell it.
  pub fn as_str(self) -> &'static str {
    match self {
      SessionStatus::Active => "active",
      SessionStatus::Archived => "archived",
    }
  }
}

/// `cleanupSessions`, checked where it came in.
#[derive(Debug, Clone)]
pub struct CleanupRequest {
  pub user_id: String,
  pub project_id: Option<String>,
  /// Sessions idle for longer than this are deleted.
  pub max_age: Duration,
  /// Delete only archived sessions.
  pub keep_active: bool,
}

/// `fork`, checked where it came in.
#[derive(Debug, Clone, Default)]
pub struct ForkRequest {
  pub session_id: String,
  pub user_id: String,
  /// A valid title; default the parent's.
  pub title: Option<String>,
  /// Fork at this message of the parent's conversation (checked by `fork_at`); default the end.
  pub at_message_id: Option<String>,
}

/// Options of `getSessionContext` and `estimatePromptTokens`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThresholdOptions {
  /// A percentage in (0, 100]; default the manager's `compactThreshold`.
  pub threshold: Option<f64>,
}

/// `getMessages`' options.
#[derive(Debug, Clone, Copy)]
pub struct MessagesOptions {
  /// 1 to [`MAX_MESSAGES`].
  pub limit: usize,
  /// Index of the first message; without it, the newest `limit` messages.
  pub offset: Option<usize>,
}

/// Most messages one `getMessages` call returns (a larger `limit` is cut to it).
pub const MAX_MESSAGES: usize = 10_000;

impl Default for MessagesOptions {
  fn default() -> Self {
    MessagesOptions { limit: 100, offset: None }
  }
}

/// An `executeTask` request, checked field by field where it came in (the binding's
/// `TryFrom`): ids, the prompt, models, tool rules, titles and numbers are valid here, so the
/// manager checks only what depends on its own settings (`bypassPermissions`, the working
/// directory's roots, the session's owner).
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
  /// Non-empty, at most `validate::MAX_PROMPT_BYTES`, no NUL.
  pub prompt: String,
  pub project_id: String,
  pub user_id: String,
  /// A session id in its canonical (lower-case) form.
  pub session_id: Option<String>,
  pub model: Option<String>,
  /// 1 to [`MAX_TURNS`].
  pub max_turns: Option<u32>,
  /// One tool rule per entry, at most [`MAX_TOOL_RULES`].
  pub allowed_tools: Vec<String>,
  pub disallowed_tools: Vec<String>,
  pub permission_mode: Option<PermissionMode>,
  pub append_system_prompt: Option<String>,
  /// US dollars, 0.0001 to 10000 (checked by the binding).
  pub max_budget_usd: Option<f64>,
  pub fallback_model: Option<String>,
  pub auto_compact: bool,
  /// A percentage in (0, 100].
  pub compact_threshold: Option<f64>,
  /// Run in a new fork of `session_id` (which is then set).
  pub fork_session: bool,
  /// Fork `session_id` at this message of its conversation and run there.
  pub at_message_id: Option<String>,
  /// At least 1 ms.
  pub timeout: Option<Duration>,
  pub include_partial_messages: bool,
  pub title: Option<String>,
  /// For a new session only (`session_id` is then `None`): the folder the CLI runs in (default:
  /// the manager's).
  pub working_directory: Option<String>,
  /// How long to wait while the session runs another task (zero: fail at once with SESSION_BUSY).
  pub queue_timeout: Option<Duration>,
}

/// A `compactSession` request.
#[derive(Debug, Clone, Default)]
pub struct CompactRequest {
  pub session_id: String,
  pub user_id: String,
  /// What the summary should keep (appended to `/compact`): a flag value of at most 64 KiB.
  pub summary_instructions: Option<String>,
}

/// A `sendMessage` request, checked where it came in.
#[derive(Debug, Clone, Default)]
pub struct SendMessageRequest {
  pub session_id: String,
  pub user_id: String,
  /// Text (not a slash command): not blank, no NUL, at most `validate::MAX_PROMPT_BYTES`.
  pub prompt: String,
}

/// What a run of the CLI is for (recorded on its task row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
  /// A prompt (`executeTask`).
  Task,
  /// `/compact` (`compactSession`, or before a task with `autoCompact`).
  Compact,
  /// `rewind` with `files`: the working directory restored by a CLI of the session, under the
  /// session's lease (no model call).
  Rewind,
}

impl TaskKind {
  /// As the store records it.
  pub fn as_str(self) -> &'static str {
    match self {
      TaskKind::Task => "task",
      TaskKind::Compact => "compact",
      TaskKind::Rewind => "rewind",
    }
  }
}

/// Why a compaction ran (recorded instead of the CLI's own label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactTrigger {
  /// `compactSession`.
  Manual,
  /// `autoCompact` before a task.
  Auto,
}

impl CompactTrigger {
  /// As the store and `getSessionContext` show it.
  pub fn as_str(self) -> &'static str {
    match self {
      CompactTrigger::Manual => "manual",
      CompactTrigger::Auto => "auto",
    }
  }
}

/// Most turns a task may be given (`maxTurns`).
pub const MAX_TURNS: u32 = 10_000;
/// Most entries of `allowedTools` or `disallowedTools`.
pub const MAX_TOOL_RULES: usize = 256;

/// How the CLI asks for permission (`--permission-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PermissionMode {
  #[default]
  Default,
  AcceptEdits,
  Plan,
  /// Only with the manager's `allowBypassPermissions`.
  BypassPermissions,
}

impl PermissionMode {
  /// Every mode, as JavaScript spells it.
  pub const ALL: [PermissionMode; 4] =
    [PermissionMode::Default, PermissionMode::AcceptEdits, PermissionMode::Plan, PermissionMode::BypassPermissions];

  /// The mode as JavaScript and the CLI spell it.
  pub fn as_str(self) -> &'static str {
    match self {
      PermissionMode::Default => "default",
      PermissionMode::AcceptEdits => "acceptEdits",
      PermissionMode::Plan => "plan",
      PermissionMode::BypassPermissions => "bypassPermissions",
    }
  }
}

/// A task failure as the result reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskError {
  pub code: String,
  pub message: String,
  #[serde(skip_serializing_if = "Option::is_none")]
  pub status: Option<u64>,
  /// For `BUDGET_EXCEEDED` from a spend cap: the cap's scope (`user`, `project`, `session`).
  #[serde(skip_serializing_if = "Option::is_none")]
  pub scope: Option<String>,
}

/// How long a task took, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TaskDuration {
  /// From the request to the result (queueing included).
  #[serde(rename = "total")]
  pub total_ms: u64,
  /// Waiting for the API, as the CLI measured it.
  #[serde(rename = "api")]
  pub api_ms: u64,
}

/// What `executeTask` resolves to. Its JSON (in the event log's `task_end`) has the shape of the
/// JS `TaskResult`, absent optional fields included.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
  pub success: bool,
  pub session_id: String,
  pub task_id: String,
  #[serde(skip_serializing_if = "Option::is_none")]
  pub parent_session_id: Option<String>,
  pub result: String,
  pub context_info: ContextInfo,
  pub duration: TaskDuration,
  pub cost: f64,
  pub turns: u64,
  pub usage: Usage,
  pub permission_denials: Vec<Value>,
  pub stop_reason: Option<String>,
  pub model: Option<String>,
  pub compacted: bool,
  /// Compactions during this run (or just before it, with `autoCompact`).
  pub compactions: Vec<Compaction>,
  /// CLI output lines that could not be read (the task went on without them).
  pub warnings: Vec<String>,
  /// Whether the CLI ran in the sandbox.
  pub sandboxed: bool,
  #[serde(skip_serializing_if = "Option::is_none")]
  pub error: Option<TaskError>,
}

impl TaskResult {
  /// A result with nothing measured yet.
  pub(crate) fn empty(session: &Session, task_id: &str, context_info: ContextInfo) -> TaskResult {
    TaskResult {
      success: false,
      session_id: session.id.clone(),
      task_id: task_id.to_owned(),
      parent_session_id: session.parent_id.clone(),
      result: String::new(),
      context_info,
      duration: TaskDuration::default(),
      cost: 0.0,
      turns: 0,
      usage: Usage::default(),
      permission_denials: vec![],
      stop_reason: None,
      model: None,
      compacted: false,
      compactions: vec![],
      warnings: vec![],
      sandboxed: false,
      error: None,
    }
  }
}

/// A page of a session's conversation, as `getMessages` returns it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesPage {
  /// Oldest first.
  pub messages: Vec<transcript::Message>,
  /// Index of the first returned message in the whole conversation.
  pub offset: usize,
  /// Messages in the whole conversation.
  pub total: usize,
  /// Index of the first message still in the model's context (the latest compaction summary).
  pub live_from: usize,
  /// Compactions the conversation went through.
  pub compactions: usize,
  /// Sessions forked from this one, with the message each continues from.
  pub branches: Vec<super::Branch>,
  /// For a fork made at a message: that message of the parent (`parentId`).
  pub forked_at: Option<String>,
}

/// What `estimatePromptTokens` says about a prompt.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromptEstimate {
  /// Tokens the prompt is expected to add to the context.
  pub tokens: u64,
  /// Its tiktoken (`o200k_base`) count.
  pub tiktoken_tokens: u64,
  /// Claude tokens per tiktoken token used for the estimate.
  pub factor: f64,
  /// The model family the factor belongs to.
  pub family: String,
  /// How many of the session's own turns the factor learned from (0: the prior alone).
  pub observations: u64,
  /// The session's context if the prompt were added now.
  pub context_info: ContextInfo,
}
