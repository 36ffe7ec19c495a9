//! The session manager without Node: configuration, request validation, the session API and task
//! execution. The napi binding is a thin shell over this type.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::context::{self, ContextInfo};
use crate::error::{Error, ErrorCode, Result};
use crate::executor::{self, CancelToken, CliArgs, EndReason, RunOutcome, RunSpec, SessionMode};
use crate::store::{self, Compaction, ContextSnapshot, ListQuery, NewSession, Owner, Session, Store, TaskEnd, Usage};
use crate::stream::{Kind, Line};
use crate::{estimate, transcript, validate};

/// Options of `new SessionManager(options)`, as read from JavaScript.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Options {
  pub database_path: Option<String>,
  pub working_directory: Option<String>,
  pub default_model: Option<String>,
  pub context_window: Option<f64>,
  pub compact_threshold: Option<f64>,
  pub claude_path: Option<String>,
  #[serde(default)]
  pub env: std::collections::BTreeMap<String, String>,
  #[serde(default)]
  pub allow_bypass_permissions: bool,
  pub max_concurrent_tasks: Option<f64>,
  pub queue_timeout_ms: Option<f64>,
  pub stall_timeout_ms: Option<f64>,
  pub cli_niceness: Option<f64>,
  #[serde(default)]
  pub allowed_roots: Vec<String>,
  pub isolate_tenants: Option<String>,
  pub tenant_config_root: Option<String>,
}

/// Which tenants get a `CLAUDE_CONFIG_DIR` of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
  None,
  User,
  Project,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
  pub database_path: PathBuf,
  pub working_directory: PathBuf,
  pub default_model: String,
  pub context_window: u64,
  pub compact_threshold: f64,
  pub claude_path: Option<String>,
  pub env: Vec<(String, String)>,
  pub allow_bypass_permissions: bool,
  pub max_concurrent_tasks: usize,
  pub queue_timeout: Duration,
  pub stall_timeout: Option<Duration>,
  /// Nice increment of the CLI relative to this process.
  pub cli_niceness: i32,
  pub lease_ttl: Duration,
  pub allowed_roots: Vec<PathBuf>,
  pub isolation: Isolation,
  pub tenant_config_root: PathBuf,
}

/// The CLI's default nice increment: below the Node process serving requests, still above batch
/// work at 19.
pub const DEFAULT_NICENESS: u64 = 10;

fn env_var(k: &str) -> Option<String> {
  std::env::var(k).ok().filter(|v| !v.is_empty())
}

impl Config {
  /// Applies defaults and environment variables, and checks every value.
  pub fn resolve(o: Options) -> Result<Config> {
    let cwd = std::env::current_dir().map_err(|e| Error::invalid(format!("cannot read the current directory: {e}")))?;
    let mut allowed_roots = Vec::new();
    for r in &o.allowed_roots {
      allowed_roots.push(validate::working_directory("allowedRoots entry", r, &[])?);
    }
    let working_directory = PathBuf::from(o.working_directory.clone().or_else(|| env_var("CLAUDE_WORKING_DIR")).unwrap_or_else(|| cwd.to_string_lossy().into_owned()));
    let working_directory = if working_directory.is_absolute() { working_directory } else { cwd.join(working_directory) };
    let working_directory = validate::working_directory("workingDirectory", &working_directory.to_string_lossy(), &allowed_roots)?;
    let isolation = match o.isolate_tenants.as_deref() {
      None | Some("none") => Isolation::None,
      Some("user") => Isolation::User,
      Some("project") => Isolation::Project,
      Some(other) => return Err(Error::invalid(format!("isolateTenants must be \"none\", \"user\" or \"project\", got {:?}", other))),
    };
    let database_path = match o.database_path.clone().or_else(|| env_var("CLAUDE_SESSIONS_DB")) {
      Some(p) => PathBuf::from(p),
      None => {
        let dir = working_directory.join(".claude-sessions");
        std::fs::create_dir_all(&dir).map_err(|e| Error::store(format!("cannot create {}: {e}", dir.display())))?;
        dir.join("sessions.db")
      }
    };
    let default_model = o.default_model.clone().or_else(|| env_var("CLAUDE_DEFAULT_MODEL")).unwrap_or_else(|| "sonnet".into());
    validate::cli_value("defaultModel", &default_model, 128)?;
    let context_window = match o.context_window {
      Some(w) => validate::positive_int("contextWindow", w)?,
      None => 200_000,
    };
    let compact_threshold = validate::percent("compactThreshold", o.compact_threshold.unwrap_or(80.0))?;
    let max_concurrent_tasks = match o.max_concurrent_tasks {
      Some(n) => validate::positive_int("maxConcurrentTasks", n)?.min(1024) as usize,
      None => 8,
    };
    let queue_timeout = Duration::from_millis(match o.queue_timeout_ms {
      Some(t) => validate::non_negative_int("queueTimeoutMs", t)?,
      None => 60_000,
    });
    let stall_timeout = match o.stall_timeout_ms {
      Some(0.0) => None,
      Some(t) => Some(Duration::from_millis(validate::positive_int("stallTimeoutMs", t)?)),
      None => Some(Duration::from_secs(15 * 60)),
    };
    let cli_niceness = match o.cli_niceness {
      Some(n) => validate::non_negative_int("cliNiceness", n)?,
      None => DEFAULT_NICENESS,
    };
    if cli_niceness > 19 {
      return Err(Error::invalid(format!("cliNiceness must be an integer from 0 to 19, got {cli_niceness}")));
    }
    let env: Vec<(String, String)> = o.env.into_iter().collect();
    for (k, v) in &env {
      if v.contains('\0') {
        return Err(Error::invalid(format!("env variable {k} contains a NUL byte")));
      }
      if k.is_empty() || k.contains('=') || k.contains('\0') {
        return Err(Error::invalid(format!("env has an invalid variable name {:?}", k)));
      }
    }
    if let Some(p) = &o.claude_path {
      validate::cli_value("claudePath", p, 4096)?;
    }
    let tenant_config_root = match &o.tenant_config_root {
      Some(r) => validate::working_directory("tenantConfigRoot", r, &[])?,
      None => database_path.parent().map(|p| p.join("claude-config")).unwrap_or_else(|| PathBuf::from("claude-config")),
    };
    Ok(Config {
      database_path,
      working_directory,
      default_model,
      context_window,
      compact_threshold,
      claude_path: o.claude_path,
      env,
      allow_bypass_permissions: o.allow_bypass_permissions,
      max_concurrent_tasks,
      queue_timeout,
      stall_timeout,
      cli_niceness: cli_niceness as i32,
      lease_ttl: Duration::from_secs(30),
      allowed_roots,
      isolation,
      tenant_config_root,
    })
  }
}

/// `listSessions` filters, as read from JavaScript.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListRequest {
  pub user_id: String,
  pub project_id: Option<String>,
  pub status: Option<String>,
  pub parent_id: Option<String>,
  pub limit: Option<f64>,
  pub offset: Option<f64>,
}

/// `executeTask` request, as read from JavaScript.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
  pub error: Option<TaskError>,
}

impl TaskResult {
  /// A result with nothing measured yet.
  fn empty(session: &Session, task_id: &str, context_info: ContextInfo) -> TaskResult {
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

/// How `run_locked` runs one CLI process.
struct RunOptions {
  /// `task` or `compact`, as the task row records it.
  kind: &'static str,
  /// The CLI's flags; how it picks the session up is decided once the session is held.
  cli: CliArgs,
  include_partials: bool,
  threshold: f64,
  /// The compaction trigger to record instead of the CLI's own label.
  trigger: Option<&'static str>,
  /// How long to wait for a busy session; default the manager's `queueTimeoutMs`.
  queue_timeout: Option<Duration>,
}

/// A task handle aborted when dropped (the lease renewal: it must never outlive its task).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
  fn drop(&mut self) {
    self.0.abort();
  }
}

/// Work left after a task settled: the CLI's exit, then freeing what the task held.
type Tail = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Receives every event of a task as it arrives.
pub type EventSink = Arc<dyn Fn(Value) + Send + Sync>;

/// The manager.
pub struct Manager {
  store: Arc<Store>,
  cfg: Config,
  owner: Owner,
  session_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
  slots: Arc<Semaphore>,
  /// Tasks between start and the CLI's exit (which can come after the task has settled).
  running: Arc<Mutex<HashMap<String, CancelToken>>>,
  /// Sessions whose last task has settled while its CLI is still exiting: the receiver sees its
  /// channel close once the session is free again.
  finishing: Arc<Mutex<HashMap<String, tokio::sync::watch::Receiver<()>>>>,
  closed: AtomicBool,
}

const VALID_STATUSES: [&str; 2] = ["active", "archived"];
const PERMISSION_MODES: [&str; 4] = ["default", "acceptEdits", "plan", "bypassPermissions"];
const MAX_LIST: u64 = 1000;

fn validate_user_project(user_id: &str, project_id: Option<&str>) -> Result<()> {
  validate::id("userId", user_id)?;
  if let Some(p) = project_id {
    validate::id("projectId", p)?;
  }
  Ok(())
}

impl Manager {
  /// Opens the store, migrates it and marks tasks of dead processes `interrupted`.
  pub fn open(options: Options) -> Result<Manager> {
    let cfg = Config::resolve(options)?;
    let store = Store::open(&cfg.database_path)?;
    store.recover_interrupted(&executor::pid_alive)?;
    Ok(Manager {
      store: Arc::new(store),
      slots: Arc::new(Semaphore::new(cfg.max_concurrent_tasks)),
      cfg,
      owner: Owner { id: uuid::Uuid::new_v4().to_string(), pid: std::process::id() },
      session_locks: Mutex::new(HashMap::new()),
      running: Arc::new(Mutex::new(HashMap::new())),
      finishing: Arc::new(Mutex::new(HashMap::new())),
      closed: AtomicBool::new(false),
    })
  }

  pub fn config(&self) -> &Config {
    &self.cfg
  }

  fn check_open(&self) -> Result<()> {
    if self.closed.load(Ordering::SeqCst) {
      return Err(Error::new(ErrorCode::Closed, "this SessionManager was closed; create a new one"));
    }
    Ok(())
  }

  /// Runs blocking work (a store call that may wait, reading a transcript) on the blocking pool.
  async fn blocking<T: Send + 'static>(&self, what: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    self.check_open()?;
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("{what} failed: {e}")))?
  }

  /// Runs a store call on the blocking pool.
  async fn db<T: Send + 'static>(&self, f: impl FnOnce(&Store) -> Result<T> + Send + 'static) -> Result<T> {
    let store = self.store.clone();
    self.blocking("store worker", move || f(&store)).await
  }

  /// A point read or small write (by primary key, a few rows): run right here, on the tokio
  /// worker, when it can go through without waiting (see [`Store::now`]), because it takes tens
  /// of microseconds, less than a hop to the blocking pool and back; else as [`Self::db`]. (Not
  /// `block_in_place`: that can turn this worker into a pool thread that exits when idle, and a
  /// CLI spawned from a thread gets its parent-death signal when that thread exits.)
  async fn point<T: Send + 'static>(&self, f: impl Fn(&Store) -> Result<T> + Send + 'static) -> Result<T> {
    self.check_open()?;
    if let Some(r) = self.store.now(&f) {
      return r;
    }
    self.db(f).await
  }

  /// Resolves a requested working directory (or the manager's) inside the allowed roots.
  fn working_dir(&self, requested: Option<&str>) -> Result<PathBuf> {
    match requested {
      Some(w) => validate::working_directory("workingDirectory", w, &self.cfg.allowed_roots),
      None => Ok(self.cfg.working_directory.clone()),
    }
  }

  /// The CLI configuration folder of a tenant, when tenants are isolated: a stable name made
  /// from the id (readable prefix plus a hash), under `tenantConfigRoot`.
  fn tenant_config_dir(&self, project_id: &str, user_id: &str) -> Option<String> {
    let (kind, id) = match self.cfg.isolation {
      Isolation::None => return None,
      Isolation::User => ("user", user_id.to_owned()),
      Isolation::Project => ("project", format!("{user_id}\u{0}{project_id}")),
    };
    let readable: String = id.chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let mut h: u64 = 0xcbf29ce484222325; // FNV-1a: stable across builds and platforms.
    for b in id.as_bytes() {
      h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    Some(self.cfg.tenant_config_root.join(format!("{kind}-{readable}-{h:016x}")).to_string_lossy().into_owned())
  }

  fn new_session(&self, project_id: &str, user_id: &str, id: Option<String>, model: Option<String>, working_directory: PathBuf) -> NewSession {
    NewSession {
      id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
      project_id: project_id.to_owned(),
      user_id: user_id.to_owned(),
      parent_id: None,
      title: None,
      model: model.unwrap_or_else(|| self.cfg.default_model.clone()),
      working_directory: working_directory.to_string_lossy().into_owned(),
      context: None,
      cli_cost_watermark: 0.0,
      config_dir: self.tenant_config_dir(project_id, user_id),
    }
  }

  // ---- session API ------------------------------------------------------------------------

  pub async fn list_sessions(&self, r: ListRequest) -> Result<Vec<Session>> {
    validate_user_project(&r.user_id, r.project_id.as_deref())?;
    if let Some(s) = &r.status {
      if !VALID_STATUSES.contains(&s.as_str()) {
        return Err(Error::invalid(format!("status must be \"active\" or \"archived\", got {:?}", s)));
      }
    }
    let parent_id = r.parent_id.as_deref().map(|p| validate::session_id("parentId", p)).transpose()?;
    let limit = match r.limit {
      Some(l) => validate::positive_int("limit", l)?.min(MAX_LIST),
      None => 50,
    };
    let offset = match r.offset {
      Some(o) => validate::non_negative_int("offset", o)?,
      None => 0,
    };
    let q = ListQuery { user_id: r.user_id, project_id: r.project_id, status: r.status, parent_id, limit, offset };
    self.db(move |s| s.list_sessions(&q)).await
  }

  pub async fn get_session(&self, session_id: &str, user_id: &str) -> Result<Session> {
    let id = validate::session_id("sessionId", session_id)?;
    validate::id("userId", user_id)?;
    let user = user_id.to_owned();
    let shown = id.clone();
    self.point(move |s| s.get_session(&id, &user)).await?.ok_or_else(|| Error::not_found(&shown))
  }

  pub async fn get_or_create(&self, project_id: &str, user_id: &str, prefer_active: bool, working_directory: Option<&str>) -> Result<(Session, bool)> {
    validate_user_project(user_id, Some(project_id))?;
    let wd = self.working_dir(working_directory)?;
    let new = self.new_session(project_id, user_id, None, None, wd);
    self.db(move |s| s.get_or_create(&new, prefer_active)).await
  }

  pub async fn start_fresh(&self, project_id: &str, user_id: &str, session_id: Option<&str>, working_directory: Option<&str>) -> Result<(Session, u64)> {
    validate_user_project(user_id, Some(project_id))?;
    let id = session_id.map(|s| validate::session_id("sessionId", s)).transpose()?;
    let wd = self.working_dir(working_directory)?;
    let new = self.new_session(project_id, user_id, id, None, wd);
    self.db(move |s| s.start_fresh(&new)).await
  }

  pub async fn archive_session(&self, session_id: &str, user_id: &str) -> Result<Session> {
    let id = validate::session_id("sessionId", session_id)?;
    validate::id("userId", user_id)?;
    let user = user_id.to_owned();
    self.db(move |s| s.archive_session(&id, &user)).await
  }

  pub async fn delete_session(&self, session_id: &str, user_id: &str) -> Result<()> {
    let id = validate::session_id("sessionId", session_id)?;
    validate::id("userId", user_id)?;
    let user = user_id.to_owned();
    self.db(move |s| s.delete_session(&id, &user)).await
  }

  /// Returns `(deleted, remaining)`.
  pub async fn cleanup(&self, user_id: &str, project_id: Option<&str>, max_age_ms: f64, keep_active: bool) -> Result<(u64, u64)> {
    validate_user_project(user_id, project_id)?;
    let age = validate::non_negative_int("maxAgeMs", max_age_ms)?;
    let (user, project) = (user_id.to_owned(), project_id.map(str::to_owned));
    self
      .db(move |s| {
        let deleted = s.cleanup(&user, project.as_deref(), age, keep_active)?;
        Ok((deleted, s.count_sessions(&user, project.as_deref())?))
      })
      .await
  }

  /// A new session that continues from `session_id` without calling the model; its first task
  /// makes the CLI fork the transcript.
  pub async fn fork(&self, session_id: &str, user_id: &str, title: Option<String>) -> Result<Session> {
    if let Some(t) = &title {
      validate::title(t)?;
    }
    let parent = self.get_session(session_id, user_id).await?;
    let new = NewSession {
      parent_id: Some(parent.id.clone()),
      title: title.or_else(|| parent.title.clone()),
      model: parent.model.clone(),
      working_directory: parent.working_directory.clone(),
      context: parent.context.clone(),
      cli_cost_watermark: parent.cli_cost_watermark,
      config_dir: parent.config_dir.clone(),
      ..self.new_session(&parent.project_id, &parent.user_id, None, None, PathBuf::from(&parent.working_directory))
    };
    self.point(move |s| s.create_session(&new)).await
  }

  pub async fn get_context(&self, session_id: &str, user_id: &str, threshold: Option<f64>) -> Result<ContextInfo> {
    let threshold = validate::percent("threshold", threshold.unwrap_or(self.cfg.compact_threshold))?;
    let s = self.get_session(session_id, user_id).await?;
    let window = self.window_of(&s).await?;
    Ok(context::context_info(s.context.as_ref(), window, threshold, 0))
  }

  /// The window of a session not measured yet: what the CLI last reported for its model, else
  /// the `contextWindow` option.
  async fn window_of(&self, s: &Session) -> Result<u64> {
    if s.context.is_some() {
      return Ok(self.cfg.context_window);
    }
    let model = s.model.clone();
    Ok(self.point(move |st| st.window_for(&model)).await?.unwrap_or(self.cfg.context_window))
  }

  /// A session answered at once, on the calling thread, when the store can be read without
  /// waiting (see `Store::get_session_now`); `None` for anything else (a miss, an invalid
  /// argument, a busy store), which the async `get_session` then answers.
  pub fn get_session_now(&self, session_id: &str, user_id: &str) -> Option<Session> {
    self.check_open().ok()?;
    let id = validate::session_id("sessionId", session_id).ok()?;
    validate::id("userId", user_id).ok()?;
    self.store.get_session_now(&id, user_id)?.ok()?
  }

  /// `get_context` answered at once, as `get_session_now` is.
  pub fn get_context_now(&self, session_id: &str, user_id: &str, threshold: Option<f64>) -> Option<ContextInfo> {
    let threshold = validate::percent("threshold", threshold.unwrap_or(self.cfg.compact_threshold)).ok()?;
    let s = self.get_session_now(session_id, user_id)?;
    // As `window_of`: a session not measured yet takes the window last reported for its model.
    let window = match s.context {
      Some(_) => self.cfg.context_window,
      None => self.store.window_for_now(&s.model)?.ok()?.unwrap_or(self.cfg.context_window),
    };
    Some(context::context_info(s.context.as_ref(), window, threshold, 0))
  }

  pub async fn list_tasks(&self, session_id: &str, user_id: &str) -> Result<Vec<store::TaskRecord>> {
    let s = self.get_session(session_id, user_id).await?;
    self.db(move |st| st.list_tasks(&s.id)).await
  }

  pub async fn list_compactions(&self, session_id: &str, user_id: &str) -> Result<Vec<Compaction>> {
    let s = self.get_session(session_id, user_id).await?;
    self.db(move |st| st.list_compactions(&s.id)).await
  }

  /// Cancels every running task and refuses further calls. Waits for the tasks to settle.
  pub async fn close(&self) -> Result<()> {
    self.closed.store(true, Ordering::SeqCst);
    let tokens: Vec<CancelToken> = self.running.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
    for t in &tokens {
      t.cancel();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && self.running.lock().map(|m| !m.is_empty()).unwrap_or(false) {
      tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
  }

  // ---- tasks ------------------------------------------------------------------------------

  fn validate_task(&self, r: &TaskRequest) -> Result<CliArgs> {
    validate_user_project(&r.user_id, Some(&r.project_id))?;
    if r.prompt.trim().is_empty() {
      return Err(Error::invalid("prompt must be a non-empty string"));
    }
    if r.prompt.len() > validate::MAX_PROMPT_BYTES {
      return Err(Error::new(
        ErrorCode::ContextOverflow,
        format!("the prompt is {} bytes; the limit is {} bytes, far beyond any model's context window", r.prompt.len(), validate::MAX_PROMPT_BYTES),
      ));
    }
    if r.prompt.contains('\0') {
      return Err(Error::invalid("prompt contains a NUL byte"));
    }
    if let Some(m) = &r.model {
      validate::cli_value("model", m, 128)?;
    }
    if let Some(m) = &r.fallback_model {
      validate::cli_value("fallbackModel", m, 128)?;
    }
    let max_turns = r.max_turns.map(|t| validate::positive_int("maxTurns", t)).transpose()?;
    if let Some(t) = max_turns {
      if t > 10_000 {
        return Err(Error::invalid("maxTurns must be at most 10000"));
      }
    }
    let tools = |field: &str, list: &Option<Vec<String>>| -> Result<Vec<String>> {
      let list = list.clone().unwrap_or_default();
      if list.len() > 256 {
        return Err(Error::invalid(format!("{field} has more than 256 entries")));
      }
      for t in &list {
        validate::cli_value(field, t, 512)?;
        if t.chars().any(|c| c.is_control()) {
          return Err(Error::invalid(format!("{field} entry {:?} contains a control character", t)));
        }
      }
      Ok(list)
    };
    let allowed_tools = tools("allowedTools", &r.allowed_tools)?;
    let disallowed_tools = tools("disallowedTools", &r.disallowed_tools)?;
    if let Some(m) = &r.permission_mode {
      if !PERMISSION_MODES.contains(&m.as_str()) {
        return Err(Error::invalid(format!("permissionMode must be one of default, acceptEdits, plan; got {:?}", m)));
      }
      if m == "bypassPermissions" && !self.cfg.allow_bypass_permissions {
        return Err(Error::invalid(
          "permissionMode \"bypassPermissions\" is refused: construct the SessionManager with allowBypassPermissions: true to allow it",
        ));
      }
    }
    if let Some(s) = &r.append_system_prompt {
      validate::cli_value("appendSystemPrompt", s, 64 * 1024)?;
    }
    if let Some(b) = r.max_budget_usd {
      if !b.is_finite() || b <= 0.0 {
        return Err(Error::invalid(format!("maxBudgetUsd must be a positive number, got {b}")));
      }
    }
    if let Some(t) = r.compact_threshold {
      validate::percent("compactThreshold", t)?;
    }
    if let Some(t) = r.timeout_ms {
      validate::positive_int("timeoutMs", t)?;
    }
    if let Some(t) = r.queue_timeout_ms {
      validate::non_negative_int("queueTimeoutMs", t)?;
    }
    if let Some(t) = &r.title {
      validate::title(t)?;
    }
    if r.fork_session == Some(true) && r.session_id.is_none() {
      return Err(Error::invalid("forkSession needs the sessionId of the session to fork"));
    }
    Ok(CliArgs {
      session: None,
      model: r.model.clone(),
      max_turns,
      allowed_tools,
      disallowed_tools,
      permission_mode: r.permission_mode.clone(),
      append_system_prompt: r.append_system_prompt.clone(),
      max_budget_usd: r.max_budget_usd,
      fallback_model: r.fallback_model.clone(),
    })
  }

  /// How the CLI picks the session up: resume it, fork it from its parent on its first run, or
  /// start it under its id.
  async fn session_mode(&self, session: &Session) -> Result<SessionMode> {
    if session.materialized {
      return Ok(SessionMode::Resume(session.id.clone()));
    }
    if let Some(parent) = &session.parent_id {
      let (pid, user) = (parent.clone(), session.user_id.clone());
      if let Some(p) = self.point(move |s| s.get_session(&pid, &user)).await? {
        if p.materialized {
          return Ok(SessionMode::Fork { parent: p.id, child: session.id.clone() });
        }
      }
    }
    Ok(SessionMode::New(session.id.clone()))
  }

  /// Rejects a prompt whose own tokens exceed the window, before anything is stored or spawned.
  /// A token is at least one byte, so only prompts longer than the window in bytes are counted.
  async fn check_prompt_fits(&self, prompt: &str, window: u64) -> Result<()> {
    if (prompt.len() as u64) <= window {
      return Ok(());
    }
    let text = prompt.to_owned();
    let n = tokio::task::spawn_blocking(move || crate::tokens::count(&text, crate::tokens::Encoding::O200kBase) as u64)
      .await
      .map_err(|e| Error::internal(format!("token counting failed: {e}")))?;
    if n >= window {
      return Err(Error::new(
        ErrorCode::ContextOverflow,
        format!("the prompt alone is about {n} tokens; the context window is {window}: split it or send it as a file the agent can read"),
      ));
    }
    Ok(())
  }

  fn session_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut m = self.session_locks.lock().unwrap_or_else(|p| p.into_inner());
    m.retain(|_, l| Arc::strong_count(l) > 1);
    m.entry(id.to_owned()).or_default().clone()
  }

  /// The CLI's environment for a session: what the CLI needs, the manager's `env`, and the
  /// tenant's own configuration folder when tenants are isolated.
  fn child_env(&self, session: &Session) -> Result<Vec<(String, String)>> {
    let mut env = executor::child_env(std::env::vars(), &self.cfg.env);
    if let Some(dir) = &session.config_dir {
      std::fs::create_dir_all(dir).map_err(|e| Error::store(format!("cannot create the CLI configuration folder {dir}: {e}")))?;
      env.retain(|(k, _)| k != "CLAUDE_CONFIG_DIR");
      env.push(("CLAUDE_CONFIG_DIR".into(), dir.clone()));
    }
    Ok(env)
  }

  /// Runs a task. Invalid requests are rejected before anything is spawned; failures of the model
  /// or the CLI resolve with `success: false` and a code.
  pub async fn execute_task(self: &Arc<Self>, r: TaskRequest, sink: Option<EventSink>, cancel: CancelToken) -> Result<TaskResult> {
    self.check_open()?;
    let mut args = self.validate_task(&r)?;
    let session_id = r.session_id.as_deref().map(|s| validate::session_id("sessionId", s)).transpose()?;
    if session_id.is_some() && r.working_directory.is_some() {
      return Err(Error::invalid("workingDirectory applies to new sessions only: a session always runs in its own folder, where the CLI keeps its transcript"));
    }
    let wd = self.working_dir(r.working_directory.as_deref())?;
    self.check_prompt_fits(&r.prompt, self.cfg.context_window).await?;
    let program = executor::resolve_cli(self.cfg.claude_path.as_deref(), &self.search_dirs())?;

    // The session to run in.
    let (session, forked_from) = match (&session_id, r.fork_session.unwrap_or(false)) {
      (None, _) => {
        let mut new = self.new_session(&r.project_id, &r.user_id, None, r.model.clone(), wd);
        new.title = r.title.clone();
        (self.point(move |s| s.create_session(&new)).await?, None)
      }
      (Some(id), fork) => {
        let s = self.get_session(id, &r.user_id).await?;
        if s.project_id != r.project_id {
          return Err(Error::not_found(id));
        }
        if fork {
          let child = self.fork(id, &r.user_id, r.title.clone()).await?;
          (child, Some(s.id))
        } else {
          (s, None)
        }
      }
    };
    if args.model.is_none() {
      args.model = Some(session.model.clone());
    }
    let threshold = r.compact_threshold.unwrap_or(self.cfg.compact_threshold);
    let mut compacted = None;
    if r.auto_compact == Some(true) && session.materialized {
      let next = {
        let (me, s2, p) = (self.clone(), session.clone(), r.prompt.clone());
        tokio::task::spawn_blocking(move || me.estimate_prompt(&s2, &p)).await.unwrap_or(0)
      };
      let info = context::context_info(session.context.as_ref(), self.cfg.context_window, threshold, next);
      if info.should_compact {
        let done = self.compact_inner(&session, None, "auto", sink.clone(), cancel.clone()).await?;
        compacted = done.compactions.into_iter().next();
      }
    }
    let spec = self.run_spec(&session, program, r.prompt.clone(), r.timeout_ms.map(|t| Duration::from_millis(t as u64)))?;
    let include_partials = r.include_partial_messages.unwrap_or(false);
    let queue_timeout = r.queue_timeout_ms.map(|t| Duration::from_millis(t as u64));
    let opts = RunOptions { kind: "task", cli: args, include_partials, threshold, trigger: None, queue_timeout };
    let mut res = self.run_locked(&session, spec, sink, cancel, opts).await?;
    res.parent_session_id = forked_from.or(res.parent_session_id);
    res.compacted = compacted.is_some() || res.compacted;
    if let Some(c) = compacted {
      res.compactions.insert(0, c);
    }
    Ok(res)
  }

  /// How a CLI process for the session is started: its folder, environment, priority and limits.
  /// The argv is built once the session is held (see `run_locked`).
  fn run_spec(&self, session: &Session, program: PathBuf, stdin: String, timeout: Option<Duration>) -> Result<RunSpec> {
    Ok(RunSpec {
      program,
      args: vec![],
      cwd: PathBuf::from(&session.working_directory),
      env: self.child_env(session)?,
      stdin,
      timeout,
      stall_timeout: self.cfg.stall_timeout,
      niceness: self.cfg.cli_niceness,
    })
  }

  /// The transcript file of a session.
  fn transcript_of(&self, session: &Session) -> Result<Option<PathBuf>> {
    let env = self.child_env(session)?;
    Ok(transcript::config_dir(&env).map(|d| transcript::transcript_path(&d, Path::new(&session.working_directory), &session.id)))
  }

  /// Tokens a prompt is expected to add to a session's context: its tiktoken count times a
  /// factor per model family, learned from the session's own transcript on top of a prior fitted
  /// on real transcripts (see `estimate`). Reads the transcript: call it off the async threads.
  fn estimate_blocking(&self, session: &Session, prompt: &str) -> Result<(u64, u64, f64, estimate::Family, u64)> {
    let family = estimate::Family::of_model(&session.model);
    let mut est = estimate::Estimator::new();
    if let Some(path) = self.transcript_of(session)? {
      if path.is_file() {
        est.train_on_transcript(&path)?;
      }
    }
    let tiktoken = crate::tokens::count(prompt, crate::tokens::Encoding::O200kBase) as u64;
    Ok((est.estimate(family, tiktoken), tiktoken, est.factor(family), family, est.learned(family).observations))
  }

  /// Tokens a prompt is expected to add (see `estimate_blocking`); a failure to read the
  /// transcript falls back to the prior.
  pub fn estimate_prompt(&self, session: &Session, prompt: &str) -> u64 {
    self.estimate_blocking(session, prompt).map(|e| e.0).unwrap_or_else(|_| {
      let f = estimate::Family::of_model(&session.model);
      estimate::Estimator::new().estimate(f, crate::tokens::count(prompt, crate::tokens::Encoding::O200kBase) as u64)
    })
  }

  /// `estimatePromptTokens`: how much a prompt would add and whether it still fits.
  pub async fn estimate_prompt_tokens(self: &Arc<Self>, session_id: &str, user_id: &str, prompt: String, threshold: Option<f64>) -> Result<PromptEstimate> {
    let threshold = validate::percent("threshold", threshold.unwrap_or(self.cfg.compact_threshold))?;
    if prompt.len() > validate::MAX_PROMPT_BYTES * 4 {
      return Err(Error::invalid(format!("prompt is longer than {} bytes", validate::MAX_PROMPT_BYTES * 4)));
    }
    let session = self.get_session(session_id, user_id).await?;
    let (me, s2) = (self.clone(), session.clone());
    // It reads the transcript: off the async workers.
    let (tokens, tiktoken, factor, family, observations) = self.blocking("estimator", move || me.estimate_blocking(&s2, &prompt)).await?;
    let window = self.window_of(&session).await?;
    let context_info = context::context_info(session.context.as_ref(), window, threshold, tokens);
    Ok(PromptEstimate { tokens, tiktoken_tokens: tiktoken, factor, family: family.as_str().to_string(), observations, context_info })
  }

  /// `getMessages`: the conversation the model has, from the CLI's transcript. Without `offset`
  /// it returns the newest `limit` (default 100) messages, oldest first.
  pub async fn get_messages(&self, session_id: &str, user_id: &str, limit: Option<f64>, offset: Option<f64>) -> Result<MessagesPage> {
    let limit = match limit {
      Some(l) => validate::positive_int("limit", l)?.min(10_000) as usize,
      None => 100,
    };
    let offset = offset.map(|o| validate::non_negative_int("offset", o)).transpose()?.map(|o| o as usize);
    let session = self.get_session(session_id, user_id).await?;
    let path = self.transcript_of(&session)?;
    // Reading a transcript can take milliseconds: off the async workers.
    self.blocking("transcript reader", move || {
        let history = match path {
          Some(p) => transcript::read_messages(&p)?,
          None => transcript::History::default(),
        };
        let page = match offset {
          Some(o) => history.page(o, limit),
          None => history.page_from_end(0, limit),
        };
        Ok(MessagesPage { messages: page.messages, offset: page.offset, total: page.total, live_from: history.live_from, compactions: history.compactions })
      })
      .await
  }

  fn search_dirs(&self) -> Vec<PathBuf> {
    let mut v = vec![self.cfg.working_directory.clone()];
    if let Ok(c) = std::env::current_dir() {
      v.push(c);
    }
    if let Ok(exe) = std::env::current_exe() {
      if let Some(d) = exe.parent() {
        v.push(d.to_path_buf());
      }
    }
    v
  }

  /// Takes the session (in-process queue, then the cross-process lease, then a concurrency slot),
  /// runs the CLI and records the end.
  async fn run_locked(&self, session: &Session, mut spec: RunSpec, sink: Option<EventSink>, cancel: CancelToken, o: RunOptions) -> Result<TaskResult> {
    let RunOptions { kind, mut cli, include_partials, threshold, trigger, queue_timeout } = o;
    let queue_timeout = queue_timeout.unwrap_or(self.cfg.queue_timeout);
    let queued = Instant::now();
    if let Some(s) = &sink {
      s(json!({ "type": "task_queued", "sessionId": session.id }));
    }
    let busy = || {
      Error::new(
        ErrorCode::SessionBusy,
        format!("session {} is running another task; waited {} ms", session.id, queue_timeout.as_millis()),
      )
    };
    let task_id = uuid::Uuid::new_v4().to_string();
    // A task that has settled but whose CLI is still exiting holds the session for a moment
    // more: wait for that first, so that it does not count against `queueTimeoutMs` (the caller
    // sees no task running).
    let exiting = self.finishing.lock().unwrap_or_else(|p| p.into_inner()).get(&session.id).cloned();
    if let Some(mut exiting) = exiting {
      tokio::select! {
        _ = exiting.changed() => {}
        _ = cancel.cancelled() => return self.aborted_in_queue(session, &task_id, kind, queued, threshold).await,
      }
    }
    let queued_for_lock = Instant::now();
    let lock = self.session_lock(&session.id);
    let guard = tokio::select! {
      g = tokio::time::timeout(queue_timeout, lock.lock_owned()) => g.map_err(|_| busy())?,
      _ = cancel.cancelled() => return self.aborted_in_queue(session, &task_id, kind, queued, threshold).await,
    };
    let model = cli.model.clone().unwrap_or_else(|| session.model.clone());
    // Once the lease is ours, the session is read again (in the same trip to the store): a task
    // that ran while this one waited (in this process or another) may have created its
    // transcript or moved its cost watermark.
    // Time spent behind another process's exiting CLI does not count, as above.
    let mut excused = Duration::ZERO;
    let mut last = Instant::now();
    let fresh = loop {
      let (sid, uid, tid, m, owner, ttl) = (session.id.clone(), session.user_id.clone(), task_id.clone(), model.clone(), self.owner.clone(), self.cfg.lease_ttl);
      let began = self
        .point(move |s| {
          Ok(if s.try_begin_task(&sid, &tid, kind, &m, &owner, ttl)? {
            Ok(s.get_session(&sid, &uid).ok().flatten())
          } else {
            Err(s.lease_kept_after_end(&sid)?)
          })
        })
        .await?;
      let exiting_elsewhere = match began {
        Ok(fresh) => break fresh,
        Err(exiting) => exiting,
      };
      let now = Instant::now();
      if exiting_elsewhere {
        excused += now - last;
      }
      last = now;
      if queued_for_lock.elapsed().saturating_sub(excused) >= queue_timeout {
        return Err(busy());
      }
      tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        _ = cancel.cancelled() => return self.aborted_in_queue(session, &task_id, kind, queued, threshold).await,
      }
    };
    let session = &fresh.unwrap_or_else(|| session.clone());
    let mode = self.session_mode(session).await;
    self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(task_id.clone(), cancel.clone());
    let renew = {
      let (store, sid, tid, ttl) = (self.store.clone(), session.id.clone(), task_id.clone(), self.cfg.lease_ttl);
      AbortOnDrop(tokio::spawn(async move {
        loop {
          tokio::time::sleep(ttl / 3).await;
          let (store, sid, tid) = (store.clone(), sid.clone(), tid.clone());
          let _ = tokio::task::spawn_blocking(move || store.renew_lease(&sid, &tid, ttl)).await;
        }
      }))
    };
    let outcome = match mode {
      Ok(mode) => {
        cli.session = Some(mode);
        spec.args = executor::build_args(&cli);
        self.run_with_slot(&session.id, &task_id, spec, sink, &cancel, include_partials).await
      }
      Err(e) => Err(e),
    };
    let (outcome, tail) = match outcome {
      Ok((out, tail)) => (Ok(out), tail),
      Err(e) => (Err(e), None),
    };
    let Some(tail) = tail else {
      drop(renew);
      self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&task_id);
      return self.finish(session, &task_id, outcome, queued, threshold, trigger, false).await;
    };
    // The task settles at the CLI's result line. The session stays held (the in-process queue,
    // the lease and its renewal, the concurrency slot) until the CLI has exited, so the next task
    // on it starts only after this CLI is gone; `close()` waits for that too.
    let res = self.finish(session, &task_id, outcome, queued, threshold, trigger, true).await;
    // If the end could not be recorded, the row is still `running`: leave the lease to expire,
    // and the next task marks it `interrupted` (as after a crash).
    let recorded = res.is_ok();
    let (exiting_tx, exiting_rx) = tokio::sync::watch::channel(());
    self.finishing.lock().unwrap_or_else(|p| p.into_inner()).insert(session.id.clone(), exiting_rx);
    let (store, running, finishing, sid, tid) = (self.store.clone(), self.running.clone(), self.finishing.clone(), session.id.clone(), task_id.clone());
    tokio::spawn(async move {
      tail.await;
      drop(renew);
      if recorded {
        let (sid2, tid2) = (sid.clone(), tid.clone());
        let _ = tokio::task::spawn_blocking(move || store.release_lease(&sid2, &tid2)).await;
      }
      running.lock().unwrap_or_else(|p| p.into_inner()).remove(&tid);
      finishing.lock().unwrap_or_else(|p| p.into_inner()).remove(&sid);
      drop(guard);
      drop(exiting_tx);
    });
    res
  }

  /// A task aborted before it got its session: one `aborted` row, and a result saying so.
  async fn aborted_in_queue(&self, session: &Session, task_id: &str, kind: &'static str, queued: Instant, threshold: f64) -> Result<TaskResult> {
    let msg = "the task was aborted while it waited for its session";
    let (sid, tid, owner) = (session.id.clone(), task_id.to_owned(), self.owner.clone());
    self.point(move |s| s.record_unstarted_task(&sid, &tid, kind, &owner, "aborted", "ABORTED", msg)).await?;
    let mut res = TaskResult::empty(session, task_id, context::context_info(session.context.as_ref(), self.cfg.context_window, threshold, 0));
    res.duration_total_ms = queued.elapsed().as_millis() as u64;
    res.error = Some(TaskError { code: ErrorCode::Aborted.as_str().into(), message: msg.into(), status: None });
    Ok(res)
  }

  async fn run_with_slot(
    &self,
    session_id: &str,
    task_id: &str,
    spec: RunSpec,
    sink: Option<EventSink>,
    cancel: &CancelToken,
    include_partials: bool,
  ) -> Result<(RunOutcome, Option<Tail>)> {
    let permit = tokio::select! {
      p = self.slots.clone().acquire_owned() => p.map_err(|_| Error::new(ErrorCode::Closed, "the manager was closed"))?,
      _ = cancel.cancelled() => return Err(Error::new(ErrorCode::Aborted, "the task was aborted while it waited for a free slot")),
    };
    if let Some(s) = &sink {
      s(json!({ "type": "task_started", "sessionId": session_id, "taskId": task_id }));
    }
    let forward = |line: &Line| {
      if let Some(s) = &sink {
        if include_partials || !matches!(line.kind, Kind::Partial { .. }) {
          s(line.raw.clone());
        }
      }
    };
    let (out, tail) = executor::run_until_result(&spec, cancel, forward, true).await?;
    // The slot is the CLI's: it is freed when the CLI has exited.
    Ok((out, tail.map(|t| -> Tail {
      Box::pin(async move {
        t.finish().await;
        drop(permit);
      })
    })))
  }

  async fn finish(
    &self,
    session: &Session,
    task_id: &str,
    outcome: Result<RunOutcome>,
    queued: Instant,
    threshold: f64,
    trigger: Option<&'static str>,
    keep_lease: bool,
  ) -> Result<TaskResult> {
    let env = self.child_env(session).unwrap_or_default();
    let transcript_exists = transcript::config_dir(&env)
      .map(|d| transcript::transcript_path(&d, Path::new(&session.working_directory), &session.id).is_file())
      .unwrap_or(false);
    let mut end = TaskEnd { materialized: session.materialized || transcript_exists, keep_lease, ..Default::default() };
    let mut res = TaskResult::empty(session, task_id, context::context_info(session.context.as_ref(), self.cfg.context_window, threshold, 0));
    let mut watermark = None;
    let mut compactions: Vec<executor::CompactEvent> = vec![];
    let fail = |code: ErrorCode, message: String, status: Option<u64>| TaskError { code: code.as_str().into(), message, status };
    match outcome {
      Err(e) => {
        res.error = Some(fail(e.code, e.message.clone(), None));
        end.status = if e.code == ErrorCode::Aborted { "aborted" } else { "failed" }.into();
      }
      Ok(out) => {
        end.cli_version = out.cli_version.clone();
        res.model = out.model.clone();
        compactions = out.compactions.clone();
        let tail = out.stderr_tail.trim();
        let tail = if tail.is_empty() {
          String::new()
        } else {
          let mut cut = tail.len().saturating_sub(1000);
          while !tail.is_char_boundary(cut) {
            cut += 1;
          }
          format!("; stderr: {}", &tail[cut..])
        };
        if let Some(r) = &out.result {
          res.result = r.result.clone().unwrap_or_default();
          res.turns = r.num_turns.unwrap_or(0);
          res.usage = r.usage;
          res.duration_api_ms = r.duration_api_ms.unwrap_or(0);
          res.permission_denials = r.permission_denials.clone();
          res.stop_reason = r.stop_reason.clone();
          let (cost, w) = context::task_cost(r, session.cli_cost_watermark);
          res.cost = cost;
          watermark = Some(w);
          end.cli_reported_cost_usd = r.total_cost_usd;
          let window = context::window_from_result(r).unwrap_or(self.cfg.context_window);
          if let Some(u) = out.context.filter(|u| u.context_total() > 0) {
            end.context = Some(ContextSnapshot { tokens: u.context_total(), window, source: "api".into(), measured_at: store::now_ms() });
          } else if let Some(c) = out.compactions.last().and_then(|c| c.post_tokens) {
            end.context = Some(ContextSnapshot { tokens: c, window, source: "estimate".into(), measured_at: store::now_ms() });
          }
        } else if let Some(c) = out.compactions.last().and_then(|c| c.post_tokens) {
          end.context = Some(ContextSnapshot { tokens: c, window: self.cfg.context_window, source: "estimate".into(), measured_at: store::now_ms() });
        }
        let error = match (out.reason, &out.result) {
          (EndReason::Aborted, _) => Some(fail(ErrorCode::Aborted, "the task was aborted".into(), None)),
          (EndReason::TimedOut, _) => Some(fail(ErrorCode::Timeout, format!("the task ran past its timeout after {} ms", out.elapsed.as_millis()), None)),
          (EndReason::Stalled, _) => Some(fail(ErrorCode::Timeout, format!("the CLI printed nothing for {} ms and was stopped{tail}", self.cfg.stall_timeout.map(|d| d.as_millis()).unwrap_or(0)), None)),
          (EndReason::Exited, None) => Some(fail(
            ErrorCode::CliError,
            format!("the CLI ended without a result (exit code {:?}, signal {:?}){tail}", out.exit_code, out.signal),
            None,
          )),
          (EndReason::Exited, Some(r)) => classify_result(r).or_else(|| {
            // A `/compact` that failed reports it through system/status, not the result.
            (out.compactions.is_empty() && !out.compact_errors.is_empty())
              .then(|| fail(ErrorCode::CompactFailed, out.compact_errors.join("; "), None))
          }),
        };
        // Reported, not fatal.
        res.warnings = out.malformed.iter().map(|m| format!("malformed CLI output line: {m}")).collect();
        end.status = match (&error, out.reason) {
          (None, _) => "succeeded",
          (_, EndReason::Aborted) => "aborted",
          (_, EndReason::TimedOut) | (_, EndReason::Stalled) => "timed_out",
          _ => "failed",
        }
        .into();
        res.compacted = !out.compactions.is_empty();
        res.error = error;
      }
    }
    res.success = res.error.is_none();
    res.duration_total_ms = queued.elapsed().as_millis() as u64;
    end.model = res.model.clone();
    end.turns = Some(res.turns);
    end.usage = res.usage;
    end.cost_usd = res.cost;
    end.duration_api_ms = Some(res.duration_api_ms);
    end.error_code = res.error.as_ref().map(|e| e.code.clone());
    end.error_message = res.error.as_ref().map(|e| e.message.clone());
    if let Some(ctx) = &end.context {
      res.context_info = context::context_info(Some(ctx), self.cfg.context_window, threshold, 0);
    }
    let started = store::now_ms();
    res.compactions = compactions
      .into_iter()
      .map(|c| Compaction {
        session_id: session.id.clone(),
        task_id: Some(task_id.to_owned()),
        // The CLI labels a `/compact` we sent for autoCompact as manual; record what it was.
        trigger: trigger.map(str::to_owned).unwrap_or(c.trigger),
        pre_tokens: c.pre_tokens,
        post_tokens: c.post_tokens,
        started_at: started,
        duration_ms: c.duration_ms,
      })
      .collect();
    let (sid, tid) = (session.id.clone(), task_id.to_owned());
    end.window = end.context.as_ref().filter(|c| c.source == "api").map(|c| (session.model.clone(), c.window));
    end.compactions = res.compactions.clone();
    // One transaction: the row, the totals, the window, the compactions and the lease.
    self.point(move |s| s.finish_task(&sid, &tid, &end, watermark)).await?;
    Ok(res)
  }

  /// Compacts a session through the CLI's `/compact`.
  pub async fn compact(&self, session_id: &str, user_id: &str, instructions: Option<String>, sink: Option<EventSink>, cancel: CancelToken) -> Result<TaskResult> {
    self.check_open()?;
    if let Some(i) = &instructions {
      validate::cli_value("summaryInstructions", i, 64 * 1024)?;
    }
    let session = self.get_session(session_id, user_id).await?;
    self.compact_inner(&session, instructions, "manual", sink, cancel).await
  }

  async fn compact_inner(&self, session: &Session, instructions: Option<String>, trigger: &'static str, sink: Option<EventSink>, cancel: CancelToken) -> Result<TaskResult> {
    // A fork that has not run yet compacts its parent's conversation into its own transcript.
    if matches!(self.session_mode(session).await?, SessionMode::New(_)) {
      return Err(Error::new(ErrorCode::CompactFailed, format!("session {} has no conversation yet; there is nothing to compact", session.id)));
    }
    let program = executor::resolve_cli(self.cfg.claude_path.as_deref(), &self.search_dirs())?;
    let args = CliArgs { model: Some(session.model.clone()), ..Default::default() };
    let prompt = match instructions {
      Some(i) => format!("/compact {i}"),
      None => "/compact".to_string(),
    };
    let spec = self.run_spec(session, program, prompt, None)?;
    let opts = RunOptions { kind: "compact", cli: args, include_partials: false, threshold: self.cfg.compact_threshold, trigger: Some(trigger), queue_timeout: None };
    let res = self.run_locked(session, spec, sink, cancel, opts).await?;
    if res.compactions.is_empty() {
      let why = res.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_else(|| "the CLI did not confirm a compaction".into());
      return Err(Error::new(ErrorCode::CompactFailed, format!("compaction of session {} failed ({why}); the session is unchanged", session.id)));
    }
    Ok(res)
  }
}

/// Maps a `result` line to a task error, or `None` for success. A `success` subtype with
/// `is_error: true` is a failure (an API error after the CLI's retries).
pub fn classify_result(r: &crate::stream::ResultLine) -> Option<TaskError> {
  let msg = r.result.clone().filter(|s| !s.is_empty()).or_else(|| r.errors.first().cloned()).unwrap_or_else(|| r.subtype.clone());
  let e = |code: ErrorCode, status: Option<u64>| Some(TaskError { code: code.as_str().into(), message: msg.clone(), status });
  match r.subtype.as_str() {
    "success" if !r.is_error => None,
    "error_max_turns" => e(ErrorCode::MaxTurns, None),
    "error_max_budget_usd" => e(ErrorCode::BudgetExceeded, None),
    _ if r.api_error_status.is_some() => e(ErrorCode::ApiError, r.api_error_status),
    _ if msg.starts_with("API Error") => e(ErrorCode::ApiError, parse_status(&msg)),
    _ => e(ErrorCode::CliError, None),
  }
}

fn parse_status(msg: &str) -> Option<u64> {
  msg.split(|c: char| !c.is_ascii_digit()).find(|w| w.len() == 3).and_then(|w| w.parse().ok())
}
