//! The request types as JavaScript gives them: each struct is the one definition of its JS shape.
//! It generates the `.d.ts` interface (`#[napi(object)]`, doc comments included) and reads the
//! input (serde over the JSON form of the JS value, so that every shape error is an
//! `INVALID_ARGUMENT` naming the field and unknown keys are refused); `typed.rs` then converts it
//! once into the core's typed request. A struct that has a core counterpart is named `Js…` with
//! `js_name` giving its `.d.ts` name, so that the two are never confused.

use std::collections::HashMap;

use napi_derive::napi;
use serde::Deserialize;

/// Options of `new SessionManager(options)`. Unknown keys are rejected.
#[napi(object, object_from_js = false)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionManagerOptions {
  /// SQLite file. Default: env `CLAUDE_SESSIONS_DB`, else `sessions.db` in `stateDirectory`
  /// (created `0600`). Keep it out of every working directory: an agent must not reach it.
  pub database_path: Option<String>,
  /// Keep sessions in PostgreSQL instead of SQLite, so that several servers (nodes) share them:
  /// a `postgres://` or `postgresql://` URL (any other value is taken as a SQLite file, like
  /// `databasePath`; give one or the other). Default: env `CLAUDE_SESSIONS_DATABASE_URL` (never
  /// `DATABASE_URL`: pass `process.env.DATABASE_URL` yourself to share the app's database).
  /// Prisma's URL parameters are accepted: `connection_limit` sizes the pool (default 8),
  /// `pool_timeout` (seconds) bounds the wait for a connection, `schema` and `pgbouncer` are
  /// ignored. `sslmode=require` uses TLS and verifies the server's certificate against the
  /// public web roots. A database that cannot be reached, or refuses the login, throws
  /// `STORE_ERROR` (the message never contains the password). The conversation is mirrored into
  /// the database while a task runs, so any node can resume, fork or read a session; the files
  /// the agent edited stay on the node that ran it.
  pub database_url: Option<String>,
  /// The PostgreSQL schema holding the addon's tables, created if needed (lowercase letters,
  /// digits, underscores). Default `claude_sessions`, apart from the app's own (`public`) tables.
  pub database_schema: Option<String>,
  /// Where the CLI runs for new sessions. Default: env `CLAUDE_WORKING_DIR`, else each session
  /// gets a folder of its own under `workspaceRoot`. Refused (`INVALID_ARGUMENT`) when it contains
  /// the state folder, the database or the tenant folders, and, unless
  /// `allowServerFolderAsWorkspace`, when it is the server's folder (`process.cwd()`) or contains
  /// it, or has a `.env*` file at its top.
  pub working_directory: Option<String>,
  /// Where sessions without a working directory get a folder each (`<workspaceRoot>/<session
  /// id>`, `0711`: searchable, for the sandbox run as root), created `0700`. Default `$XDG_DATA_HOME` (or `~/.local/share`)
  /// `/claude-session-manager/workspaces/<server folder name>-<hash>`. It may not contain the
  /// state folder or lie inside it.
  pub workspace_root: Option<String>,
  /// UNSAFE: let a working directory be the server's own folder (or contain it), or have `.env*`
  /// files at its top; an agent there can read the server's code and secrets. Default false.
  pub allow_server_folder_as_workspace: Option<bool>,
  /// Model for new sessions. Default: env `CLAUDE_DEFAULT_MODEL`, else `sonnet`.
  pub default_model: Option<String>,
  /// Context window when the CLI does not report one. Default 200000 (500000 on enterprise plans).
  pub context_window: Option<f64>,
  /// Percent of the window at which `shouldCompact` turns true. Default 80.
  pub compact_threshold: Option<f64>,
  /// The `claude` binary. Default: env `CLAUDE_PATH`, the `@anthropic-ai/claude-code` package, `PATH`.
  pub claude_path: Option<String>,
  /// Extra environment for the CLI, passed as given. The CLI otherwise gets only what it needs
  /// from this process (HOME, PATH, locale, proxy settings, `CLAUDE_CONFIG_DIR`, the CLI's own
  /// model and behaviour variables; see the README's Security section), never other credentials.
  /// The API key, auth/OAuth token and `ANTHROPIC_CUSTOM_HEADERS` never reach it: the key proxy
  /// sends them upstream (see `exposeApiKeyToAgent`).
  pub env: Option<HashMap<String, String>>,
  /// Allow `permissionMode: 'bypassPermissions'`. Default false.
  pub allow_bypass_permissions: Option<bool>,
  /// Tasks that run at once in this process; more wait in line. Default 8. Per process: see
  /// `maxConcurrentTasksTotal` for a cap over every process sharing the database.
  pub max_concurrent_tasks: Option<f64>,
  /// Tasks that run at once across every process (and node) sharing the database, counted
  /// through the store's leases when a task starts; more wait in line (within `queueTimeoutMs`,
  /// then `SESSION_BUSY`, as for `maxConcurrentTasks`). A task holds its place from the start of
  /// its CLI to the CLI's exit; a dead process's place frees when its lease expires (30 s).
  /// Default: no limit beyond `maxConcurrentTasks` per process.
  pub max_concurrent_tasks_total: Option<f64>,
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
  pub sandbox_paths: Option<SandboxPaths>,
  /// What each sandbox may use: `{ tmpMb?, homeMb?, processes?, memoryMb? }`. Defaults: `/tmp` 512
  /// MiB, `HOME` 512 MiB (tmpfs, in memory), 512 processes and threads (`RLIMIT_NPROC`, per
  /// sandbox), 4096 MiB of address space per process (`RLIMIT_AS`).
  #[napi(ts_type = "SandboxLimits")]
  pub sandbox_limits: Option<JsSandboxLimits>,
  /// The sandbox's network besides the key proxy: `{ allowDomains: ['example.com', '*.docs.rs',
  /// 'host:8443'] }` lets the agent's web tools open HTTPS tunnels (`CONNECT`, port 443 unless
  /// given) to those host names only, through a proxy in this process (`HTTPS_PROXY` in the
  /// sandbox). Default none: the sandbox reaches nothing but the key proxy.
  pub sandbox_network: Option<SandboxNetwork>,
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
  /// Let the agent use the CLI's tools that schedule work for later, outside any task
  /// (`CronCreate`, `ScheduleWakeup`, `RemoteTrigger`): such work would call the model when no
  /// task runs (the key proxy refuses it then) and is asked of nobody. Default false: they are
  /// disallowed whatever `allowedTools` says.
  pub allow_background_tools: Option<bool>,
  /// The CLI backs up every file before its edit tools (Write, Edit, NotebookEdit) change it, so
  /// that `rewind` with `files` can restore the working directory. Default true; false turns the
  /// backups off (a rewind with `files` then has nothing to restore).
  pub file_checkpoints: Option<bool>,
  /// The CLI's setting sources (`--setting-sources`). Default none: no settings file, which an
  /// agent or another tenant could write, changes permissions.
  #[napi(ts_type = "Array<'user' | 'project' | 'local'>")]
  pub setting_sources: Option<Vec<String>>,
  /// This server's name in the store: recorded on every task row (PostgreSQL), 1 to 200
  /// characters. Default `<host name>:<pid>`.
  pub node_id: Option<String>,
  /// How long a session's lease lasts without renewal (ms, at least 300); it is renewed every
  /// third of it while a task runs. A node that dies holds its sessions at most this long; a
  /// node that cannot renew in time (the database unreachable, the process frozen) stops its CLI
  /// and the task ends `interrupted` with `LEASE_LOST`. Default 30000.
  pub lease_ttl_ms: Option<f64>,
  /// Keep a session's CLI running this long (ms) after its task, so that the next task on the
  /// session is one line on its stdin instead of a new process (a follow-up in ~50 ms instead of
  /// ~0.5 s on the stand-in). Each idle process holds ~100 MB of private memory (PSS; it grows
  /// with the conversation). 0 turns warm
  /// processes off: every task starts its own `claude -p`. Default 600000 (10 min).
  pub warm_idle_ms: Option<f64>,
  /// At most this many warm processes in this manager; the least recently used idle one is
  /// closed first. Default 16 (1.6 GB PSS measured for 16 idle processes, `benchmark/RESULTS-warm.md`).
  pub max_warm_sessions: Option<f64>,
  /// How long a `canUseTool` decision may take (ms) before the request is answered deny.
  /// Default 300000 (5 min).
  pub permission_timeout_ms: Option<f64>,
  /// How long a task's events stay in the store's event log after the task ended (ms), for
  /// `streamEvents`; swept in the background. Default 86400000 (one day).
  pub event_retention_ms: Option<f64>,
  /// A Redis server on which live task events are also published (`redis://`, `rediss://` for
  /// TLS, `redis+unix://`; a user and password in the URL), so that `streamEvents` on other
  /// nodes gets them without reading the database. The store's event log stays the record and
  /// the replay path: while Redis is unreachable followers read the log (one warning on stderr),
  /// and no event is lost. Default: env `CLAUDE_SESSIONS_REDIS_URL`, else none.
  pub redis_url: Option<String>,
  /// The largest transcript (bytes) `getMessages`, `estimatePromptTokens` and the PostgreSQL
  /// store read whole; a longer one fails with `TRANSCRIPT_TOO_LARGE` (it is not read, so a
  /// huge transcript costs no memory). A single line over 8 MiB is skipped. Default 268435456
  /// (256 MiB).
  pub max_transcript_bytes: Option<f64>,
  /// Spend caps where none is set with `setBudget`: `perUser: { usd, period? }` (each user's spend,
  /// `period` `'day'` or `'month'` (UTC, database clock) or none for a lifetime cap) and
  /// `perSession: { usd }` (the lifetime spend of each session together with its forks and
  /// theirs: a session's lineage). Enforced by the key proxy on every
  /// model call; refused with `exposeApiKeyToAgent: true` (`INVALID_ARGUMENT`).
  #[napi(ts_type = "BudgetDefaults")]
  pub budgets: Option<JsBudgetDefaults>,
  /// Prices the key proxy charges model calls at, replacing Anthropic's list prices (USD per
  /// million tokens) for models whose id contains `model` (a family such as `opus`, or a model id;
  /// the longest match wins). `cacheWrite` defaults to 1.25 × `input`, `cacheRead` to 0.1 × `input`.
  /// A model matching nothing is priced as the most expensive family.
  #[napi(ts_type = "Array<ModelPrice>")]
  pub model_prices: Option<Vec<JsModelPrice>>,
}

/// `budgets` in the manager's options.
#[napi(object, object_from_js = false, js_name = "BudgetDefaults")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsBudgetDefaults {
  pub per_user: Option<DefaultCap>,
  pub per_session: Option<DefaultCap>,
}

/// A default spend cap.
#[napi(object, object_from_js = false)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultCap {
  pub usd: f64,
  /// Per user only.
  #[napi(ts_type = "'day' | 'month'")]
  pub period: Option<String>,
}

/// One entry of `modelPrices` (USD per million tokens).
#[napi(object, object_from_js = false, js_name = "ModelPrice")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsModelPrice {
  pub model: String,
  pub input: f64,
  pub output: f64,
  pub cache_write: Option<f64>,
  pub cache_read: Option<f64>,
}

/// `setBudget`, `getBudget` and `deleteBudget`: a cap of a user, of a user's project, or of a
/// session (which must be the user's): the cap of the session's lineage, the session it was
/// forked from (and so on up) and every fork of them, which one cap covers.
#[napi(object, object_from_js = false, js_name = "BudgetRequest")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsBudgetRequest {
  #[napi(ts_type = "'user' | 'project' | 'session'")]
  pub scope: String,
  /// The user; required, except that a project cap without one is the project's across all its
  /// users.
  pub user_id: Option<String>,
  pub project_id: Option<String>,
  pub session_id: Option<String>,
  /// The cap in US dollars (`setBudget` only): finite, 0 or more.
  pub usd: Option<f64>,
  /// `'day'` or `'month'` (UTC, on the database clock); none for a lifetime cap. Not for a
  /// session cap.
  #[napi(ts_type = "'day' | 'month'")]
  pub period: Option<String>,
}

/// `getUsage`: the key proxy's ledger of model calls, filtered and grouped.
#[napi(object, object_from_js = false, js_name = "UsageRequest")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsUsageRequest {
  pub user_id: Option<String>,
  pub project_id: Option<String>,
  pub session_id: Option<String>,
  /// From this time (ms since the epoch, inclusive).
  pub since: Option<f64>,
  /// Until this time (ms since the epoch, exclusive).
  pub until: Option<f64>,
  #[napi(ts_type = "'day' | 'model' | 'session'")]
  pub group_by: String,
}

/// Filters of `listSessions`.
#[napi(object, object_from_js = false)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListSessionsRequest {
  pub user_id: String,
  pub project_id: Option<String>,
  /// `active` lists paused sessions too (a paused session is an active one a spend cap stopped).
  #[napi(ts_type = "'active' | 'archived'")]
  pub status: Option<String>,
  /// Only forks of this session.
  pub parent_id: Option<String>,
  /// At most this many (1..1000). Default 50.
  pub limit: Option<f64>,
  pub offset: Option<f64>,
}

/// A request to run a prompt in a session.
#[napi(object, object_from_js = false, js_name = "TaskRequest")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsTaskRequest {
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
  pub allowed_tools: Option<Vec<String>>,
  /// Tools refused, passed to the CLI exactly as given.
  pub disallowed_tools: Option<Vec<String>>,
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
  /// Run in a new fork of `sessionId` made at this message (a `getMessages` id): the model sees
  /// the conversation up to it, then the prompt (see `fork`).
  pub at_message_id: Option<String>,
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

/// `prewarm`: a session's CLI started before its next prompt, and its first turn run and taken
/// back (a warm-up no model sees), so that the prompt runs as a follow-up would. Resolves once
/// the warm-up is over. The options are the next task's (those that decide which CLI it runs
/// in): a task with other options starts a CLI of its own.
#[napi(object, object_from_js = false, js_name = "PrewarmRequest")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsPrewarmRequest {
  pub session_id: String,
  pub user_id: String,
  /// When given, the session must be in this project (else `SESSION_NOT_FOUND`).
  pub project_id: Option<String>,
  pub model: Option<String>,
  pub max_turns: Option<f64>,
  pub allowed_tools: Option<Vec<String>>,
  pub disallowed_tools: Option<Vec<String>>,
  #[napi(ts_type = "'default' | 'acceptEdits' | 'plan' | 'bypassPermissions'")]
  pub permission_mode: Option<String>,
  pub append_system_prompt: Option<String>,
  pub fallback_model: Option<String>,
  /// Whether the next task will have a `canUseTool` callback (the Next.js routes with
  /// `permissionPrompts`): its CLI is started for permission prompts.
  pub permission_prompts: Option<bool>,
}

/// What `prewarm` did: `started` (a CLI now waits for the session's next task), `already_warm`
/// (one that fits is kept; its idle time starts again), or why none was started:
/// `warm_disabled` (`warmIdleMs: 0`), `busy` (a task runs on the session, or one in another
/// process wanted it while the CLI warmed up), `held_elsewhere`
/// (another process or node keeps the session's CLI), `branch_point` (the next task continues
/// from a rewind, which starts a CLI of its own), `at_capacity` (every `maxConcurrentTasks` place
/// of this process is taken: a prewarm starts a CLI only in a free one, and never waits for it).
#[napi(object)]
pub struct PrewarmResult {
  #[napi(ts_type = "'started' | 'already_warm' | 'warm_disabled' | 'busy' | 'held_elsewhere' | 'branch_point' | 'at_capacity'")]
  pub status: String,
}

/// `sendMessage`: a message for the task running on a session.
#[napi(object, object_from_js = false, js_name = "SendMessageRequest")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsSendMessageRequest {
  pub session_id: String,
  pub user_id: String,
  /// Plain text (not a slash command); it reaches the CLI on stdin.
  pub prompt: String,
}

/// `respondToPermission`: the user's answer to a permission request of a task on their session.
/// Unknown keys are refused (so is `updatedPermissions`: a user's answer never changes what the
/// session may do next).
#[napi(object, object_from_js = false, js_name = "PermissionResponse")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsPermissionResponse {
  pub session_id: String,
  pub user_id: String,
  /// The request's id (`options.requestId` of the callback, `requestId` of the Next.js event).
  pub request_id: String,
  #[napi(ts_type = "'allow' | 'deny'")]
  pub behavior: String,
  /// Why (deny); default "the user denied this".
  pub message: Option<String>,
  /// The tool's input to run with instead (allow): an object.
  #[napi(ts_type = "Record<string, unknown>")]
  #[serde(default, deserialize_with = "present")]
  pub updated_input: Option<serde_json::Value>,
  /// Also end the turn (deny).
  pub interrupt: Option<bool>,
  /// With an allow: also allow, without asking, the session's later requests for the same tool
  /// on a file in the same folder (file tools; the folder must be inside the session's working
  /// directory) or for exactly the same Bash command. A rule the manager running the session's
  /// tasks keeps in memory (until the session is deleted or the manager closes); never a
  /// change to the CLI's own permission settings. Other tools are allowed once.
  #[napi(ts_type = "'session'")]
  pub remember: Option<String>,
}

/// A field that is there, even as `null` (which the check then refuses).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
  serde_json::Value::deserialize(d).map(Some)
}

/// How a caller follows and cancels a task. Read by `hooks` (functions and signals are no JSON).
#[allow(dead_code, reason = "typing only: hooks::read_execute_options reads it from the JS object")]
#[napi(object, object_from_js = false)]
pub struct ExecuteOptions {
  /// Called with every event as it arrives: `{ type: 'task_queued', sessionId }` at once,
  /// `{ type: 'task_started', sessionId, taskId }` when the CLI starts, then the CLI's
  /// stream-json messages (`system`, `assistant`, `user`, `result`, and `stream_event` when
  /// `includePartialMessages`); in a warm CLI also `{ type: 'background_activity', sessionId,
  /// events }`, the lines of turns the CLI ran by itself (a background job finishing) since the
  /// last task. A throw, or a returned promise that rejects, does not stop the
  /// task or reach Node as an uncaught error: later events still arrive and the result's
  /// `warnings` say what failed.
  #[napi(ts_type = "(event: { type: string; subtype?: string; [key: string]: any }) => void")]
  pub on_event: Option<napi::bindgen_prelude::Unknown<'static>>,
  /// Aborting it stops the CLI's whole process group; the task resolves with `ABORTED`.
  #[napi(ts_type = "AbortSignal")]
  pub signal: Option<napi::bindgen_prelude::Unknown<'static>>,
  /// The Agent SDK's permission callback (`executeTask` only): asked before a tool that needs
  /// permission runs (the CLI runs with `--permission-prompt-tool=stdio`). `signal` aborts when
  /// the CLI withdraws the request (the task was aborted), nobody decided within the manager's
  /// `permissionTimeoutMs` (the answer is then deny), or the request was answered through
  /// `respondToPermission` (in any manager sharing the store, with `requestId`). A throw, a
  /// rejection or an answer that is neither allow nor deny denies. `remember: 'session'` with an
  /// allow records the session's always-allow rule, as with `respondToPermission`.
  #[napi(
    ts_type = "(toolName: string, input: Record<string, unknown>, options: { signal: AbortSignal; suggestions: any[]; toolUseID?: string; requestId: string }) => Promise<{ behavior: 'allow'; updatedInput?: Record<string, unknown>; updatedPermissions?: any[]; remember?: 'session' } | { behavior: 'deny'; message: string; interrupt?: boolean }>"
  )]
  pub can_use_tool: Option<napi::bindgen_prelude::Unknown<'static>>,
}

/// Extra host folders the sandbox shows the agent (absolute paths).
#[napi(object, object_from_js = false)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxPaths {
  /// Shown read-only.
  pub read_only: Option<Vec<String>>,
  /// Shown read-write.
  pub read_write: Option<Vec<String>>,
}

/// The sandbox's network besides the key proxy.
#[napi(object, object_from_js = false)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxNetwork {
  /// Host names (`example.com`), `*.` and a domain (any name below it), each with an optional
  /// `:port` (443 otherwise). IP addresses are refused.
  pub allow_domains: Option<Vec<String>>,
}

/// What each sandbox may use.
#[napi(object, object_from_js = false, js_name = "SandboxLimits")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsSandboxLimits {
  /// Size of the agent's `/tmp` (a tmpfs), MiB, 1 to 65536. Default 512.
  pub tmp_mb: Option<f64>,
  /// Size of the agent's `HOME` (a tmpfs), MiB, 1 to 65536. Default 512.
  pub home_mb: Option<f64>,
  /// Processes and threads of one sandbox, 32 to 1000000. Default 512.
  pub processes: Option<f64>,
  /// Address space of each process in the sandbox (`RLIMIT_AS`), MiB, 1024 to 1048576. Default
  /// 4096. A bound per process, not per sandbox (no cgroup is made).
  pub memory_mb: Option<f64>,
}

/// `getOrCreateSession`.
#[napi(object, object_from_js = false)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GetOrCreateRequest {
  pub project_id: String,
  pub user_id: String,
  /// Return the newest active session of the project if there is one. Default true; false always
  /// creates.
  pub prefer_active: Option<bool>,
  /// For a new session: the absolute folder the CLI runs in (inside `allowedRoots` when set).
  pub working_directory: Option<String>,
}

/// `startFresh`.
#[napi(object, object_from_js = false)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartFreshRequest {
  pub project_id: String,
  pub user_id: String,
  /// The user's own session of `projectId` to start over from (it is archived with the
  /// project's other active sessions). The new session always gets a fresh id: a client never
  /// picks one. A missing id and another user's session answer `SESSION_NOT_FOUND`, alike.
  pub session_id: Option<String>,
  /// The absolute folder the CLI runs in (inside `allowedRoots` when set).
  pub working_directory: Option<String>,
}

/// `cleanupSessions`.
#[napi(object, object_from_js = false, js_name = "CleanupRequest")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsCleanupRequest {
  pub user_id: String,
  pub project_id: Option<String>,
  /// Sessions idle for longer than this (ms) are deleted.
  pub max_age_ms: f64,
  /// Delete only archived sessions. Default true.
  pub keep_active: Option<bool>,
}

/// `fork`.
#[napi(object, object_from_js = false, js_name = "ForkRequest")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsForkRequest {
  pub session_id: String,
  pub user_id: String,
  /// Default: the parent's title.
  pub title: Option<String>,
  /// Fork at this message of the parent's conversation (a `getMessages` id): the fork's history
  /// ends there. A prompt or an answer without tool calls, at or after the latest compaction; a
  /// message inside a tool call is `INVALID_ARGUMENT`, an id not on the parent's live
  /// conversation `MESSAGE_NOT_FOUND`. Default: the end.
  pub at_message_id: Option<String>,
}

/// `rewind`.
#[napi(object, object_from_js = false, js_name = "RewindRequest")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsRewindRequest {
  pub session_id: String,
  pub user_id: String,
  /// The message to continue from (a `getMessages` id), with the rules of `fork`'s `atMessageId`.
  pub to_message_id: String,
  /// Restore the working directory too, as it was before the first dropped prompt (`true`), or
  /// only list what that would change (`'dryRun'`: nothing changes, the conversation included).
  /// Needs `fileCheckpoints`; only changes of the CLI's edit tools are undone.
  #[napi(ts_type = "boolean | 'dryRun'")]
  pub files: Option<serde_json::Value>,
}

/// `compactSession`.
#[napi(object, object_from_js = false, js_name = "CompactRequest")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsCompactRequest {
  pub session_id: String,
  pub user_id: String,
  /// What the summary should keep (appended to `/compact`).
  pub summary_instructions: Option<String>,
}

/// `deleteSession`'s options.
#[napi(object, object_from_js = false)]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteSessionOptions {
  /// Keep the CLI's transcript file. Default false.
  pub keep_transcript: Option<bool>,
}

/// Options of `getSessionContext` and `estimatePromptTokens`.
#[napi(object, object_from_js = false, js_name = "ThresholdOptions")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsThresholdOptions {
  /// Percent at which `shouldCompact` turns true; default the manager's `compactThreshold`.
  pub threshold: Option<f64>,
}

/// `getMessages`' options.
#[napi(object, object_from_js = false, js_name = "MessagesOptions")]
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsMessagesOptions {
  /// At most this many messages (1..10000). Default 100.
  pub limit: Option<f64>,
  /// Index of the first message; without it, the newest `limit` messages.
  pub offset: Option<f64>,
}
