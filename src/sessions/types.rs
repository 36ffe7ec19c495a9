//! The requests and results of the session API, as the binding reads and returns them.

use serde::Serialize;
use serde_json::Value;

use crate::context::ContextInfo;
use crate::store::{Compaction, Session, Usage};
use crate::transcript;

/// `listSessions` filters.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
  pub user_id: String,
  pub project_id: Option<String>,
  pub status: Option<String>,
  pub parent_id: Option<String>,
  pub limit: Option<f64>,
  pub offset: Option<f64>,
}

/// An `executeTask` request.
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
  pub prompt: String,
  pub project_id: String,
  pub user_id: String,
  pub session_id: Option<String>,
  pub model: Option<String>,
  pub max_turns: Option<f64>,
  pub allowed_tools: Option<Vec<String>>,
  pub disallowed_tools: Option<Vec<String>>,
  pub permission_mode: Option<String>,
  pub append_system_prompt: Option<String>,
  pub max_budget_usd: Option<f64>,
  pub fallback_model: Option<String>,
  pub auto_compact: Option<bool>,
  pub compact_threshold: Option<f64>,
  pub fork_session: Option<bool>,
  /// Fork `session_id` at this message of its conversation and run there.
  pub at_message_id: Option<String>,
  pub timeout_ms: Option<f64>,
  pub include_partial_messages: Option<bool>,
  pub title: Option<String>,
  /// For a new session: the folder the CLI runs in (default: the manager's).
  pub working_directory: Option<String>,
  /// How long to wait while the session runs another task (0: fail at once with SESSION_BUSY).
  pub queue_timeout_ms: Option<f64>,
}

/// A task failure as the result reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskError {
  pub code: String,
  pub message: String,
  pub status: Option<u64>,
}

/// What `executeTask` resolves to.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
  pub success: bool,
  pub session_id: String,
  pub task_id: String,
  pub parent_session_id: Option<String>,
  pub result: String,
  pub context_info: ContextInfo,
  pub duration_total_ms: u64,
  pub duration_api_ms: u64,
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
      duration_total_ms: 0,
      duration_api_ms: 0,
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
