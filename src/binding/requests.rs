//! The request types as the `.d.ts` shows them.

use napi_derive::napi;

use napi::bindgen_prelude::*;

// ---- input types (typing only: inputs are read through serde so that every shape error is an
// INVALID_ARGUMENT naming the field) ----------------------------------------------------------

/// Options of `new SessionManager(options)`. Unknown keys are rejected.
#[allow(dead_code)]
#[napi(object, object_from_js = false)]
pub struct SessionManagerOptions {
  /// SQLite file. Default: env `CLAUDE_SESSIONS_DB`, else `sessions.db` in `stateDirectory`
  /// (created `0600`). Keep it out of every working directory: an agent must not reach it.
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
  /// (API key, base URL, proxy, HOME, PATH, `CLAUDE_CODE_*`). The API key itself never reaches
  /// it (see `exposeApiKeyToAgent`).
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
  /// Give each user (or each user's project) its own `CLAUDE_CONFIG_DIR`, so transcripts,
  /// settings and running agents of different tenants never share a folder. Default `user`;
  /// `none` shares one folder between every tenant.
  #[napi(ts_type = "'none' | 'user' | 'project'")]
  pub isolate_tenants: Option<String>,
  /// Where tenant configuration folders live (`0700`). Default: `claude-config` in `stateDirectory`.
  pub tenant_config_root: Option<String>,
  /// The addon's own folder (database, tenant folders), created `0700`. Default: env
  /// `CLAUDE_SESSIONS_STATE_DIR`, else the folder of `databasePath` when given, else
  /// `$XDG_STATE_HOME` (or `~/.local/state`)`/claude-session-manager/<workingDirectory name>-<hash>`.
  pub state_directory: Option<String>,
  /// Where the agent runs. `auto` (default): inside bubblewrap where it works (Linux with `bwrap`),
  /// else unsandboxed; `bubblewrap`: sandboxed or the constructor throws `SANDBOX_UNAVAILABLE`;
  /// `none`: the agent runs as the server's user and reaches what it can. See `info().sandbox`.
  #[napi(ts_type = "'auto' | 'bubblewrap' | 'none'")]
  pub sandbox: Option<String>,
  /// Extra host folders the sandbox shows the agent (absolute paths), besides `/usr`, the CLI, the
  /// session's working directory and the tenant's configuration folder.
  #[napi(ts_type = "{ readOnly?: string[]; readWrite?: string[] }")]
  pub sandbox_paths: Option<serde_json::Value>,
  /// Give the CLI the real API key (UNSAFE: an agent can read it). By default the CLI gets a
  /// per-task token for a loopback proxy in this process that adds the key; the token is void
  /// once the task ends. Default false.
  pub expose_api_key_to_agent: Option<bool>,
  /// Slash commands a prompt may run, e.g. `['/context']`. Every other prompt is plain text (the
  /// CLI runs with `--disable-slash-commands`). `compactSession` works regardless. Default none.
  pub allow_slash_commands: Option<Vec<String>>,
  /// Let `@path` in a prompt inline files (the CLI does that whatever the tool permissions say).
  /// Default false.
  pub allow_file_mentions: Option<bool>,
  /// The CLI's setting sources (`--setting-sources`). Default none: no settings file, which an
  /// agent or another tenant could write, changes permissions.
  #[napi(ts_type = "Array<'user' | 'project' | 'local'>")]
  pub setting_sources: Option<Vec<String>>,
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
  /// `includePartialMessages`). A throw, or a returned promise that rejects, does not stop the
  /// task or reach Node as an uncaught error: later events still arrive and the result's
  /// `warnings` say what failed.
  #[napi(ts_type = "(event: { type: string; subtype?: string; [key: string]: any }) => void")]
  pub on_event: Option<Unknown<'static>>,
  /// Aborting it stops the CLI's whole process group; the task resolves with `ABORTED`.
  #[napi(ts_type = "AbortSignal")]
  pub signal: Option<Unknown<'static>>,
}
