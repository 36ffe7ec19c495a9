//! The session manager without Node: the session API and task execution. The napi binding is a
//! thin door over [`Manager`].
//!
//! - `config`: options and their resolution;
//! - `types`: requests and results;
//! - `api`: sessions (create, list, fork, delete, the context meter, history);
//! - `tasks`: a task or a compaction asked for (the request, the session to run in);
//! - `run`: one run of the CLI on a held session (queue, slot, lease, cold or warm CLI, settle);
//! - `finish`: what a finished run means (result, error code, the store's bookkeeping), pure;
//! - `events`: the task's events in the store's log, followed from anywhere; stopping a task;
//! - `fanout`: the live events on Redis (`redisUrl`).

mod api;
mod branching;
pub(crate) mod budgets;
mod checkpoints;
mod config;
mod events;
mod fanout;
mod finish;
mod inbox;
mod mirror;
mod permissions;
mod prewarm;
mod run;
mod slot;
mod tasks;
mod types;
mod warm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::cli::{self, CancelToken};
use crate::error::{Error, ErrorCode, Result};
use crate::store::{NewSession, Owner, PgStore, Session, Store};
use crate::{transcript, validate};

pub use branching::{Branch, FileChanges, FilesMode, RewindResult};
pub use budgets::{BudgetOptions, BudgetPeriod, BudgetRequest, BudgetScope, ModelPrice, SetBudgetRequest, UsageGroupBy, UsageRequest};
pub use config::{Config, Isolation, Options, SandboxMode, DEFAULT_NICENESS, MIN_LEASE_TTL_MS};
pub use events::{hide_folders, public_event, Follower, HiddenFolders, RunningTaskInfo, StreamRequest, StreamedEvent};
pub use fanout::check_url as check_redis_url;
pub use finish::classify_result;
pub use permissions::PermissionResponse;
pub use prewarm::{PrewarmRequest, Prewarmed};
pub use types::{
  CleanupRequest, CompactRequest, CompactTrigger, ForkRequest, ListRequest, MessagesOptions, MessagesPage, PermissionMode, PromptEstimate,
  SendMessageRequest, SessionStatus, TaskDuration, TaskError, TaskKind, TaskRequest, TaskResult, ThresholdOptions, DEFAULT_LIST, MAX_LIST,
  MAX_MESSAGES, MAX_TOOL_RULES, MAX_TURNS,
};

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
  /// Sessions whose last task's CLI has exited, with that task: its lease, kept while the CLI
  /// exited, is being released, and the next task here may take it over instead
  /// ([`crate::store::TaskStart::after`]). Removed once the release is sent.
  handed_over: Arc<Mutex<HashMap<String, String>>>,
  /// Whether a task's start was refused (the session held elsewhere, or every place of
  /// `maxConcurrentTasksTotal` taken) since the last start that took its lease: no CLI is started
  /// early meanwhile (`run::early`), so that refused requests cost no CLI start each.
  early_paused: std::sync::atomic::AtomicBool,
  closed: AtomicBool,
  /// The agent's sandbox, when tasks run in one.
  sandbox: Option<cli::Sandbox>,
  /// Every task between its call and its end, so that `close()` can abort and await them all.
  tasks: Arc<Mutex<HashMap<u64, CancelToken>>>,
  next_task: std::sync::atomic::AtomicU64,
  /// The API-key proxy, started with the first task that needs it (`None`: no key to hide).
  key_proxy: tokio::sync::OnceCell<Option<cli::KeyProxy>>,
  /// Idle warm CLIs by session (`warmIdleMs`).
  warm: Arc<warm::WarmPool>,
  /// Permission requests of this manager's tasks waiting for an answer (`inbox`), and the
  /// sessions' always-allow rules (`permissions`).
  waiting: Arc<inbox::Waiting>,
  /// The event log's doorbell in this process and the writers of the tasks running here.
  logs: Arc<events::Logs>,
}

/// Keeps a task in the manager's registry until dropped.
pub(crate) struct TaskRegistration {
  tasks: Arc<Mutex<HashMap<u64, CancelToken>>>,
  id: u64,
}

impl Drop for TaskRegistration {
  fn drop(&mut self) {
    self.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
  }
}

/// What `SessionManager.info()` reports: how tasks are run.
#[derive(Debug, Clone)]
pub struct ManagerInfo {
  /// `bubblewrap` or `none`.
  pub sandbox: &'static str,
  /// Whether the CLI gets a per-task token for a loopback proxy instead of the API key.
  pub api_key_proxy: bool,
  /// Requests the key proxy answered itself, not forwarded ([`cli::KeyProxy::refused`]).
  pub proxy_refused: u64,
  pub state_directory: PathBuf,
  /// The SQLite file, or the PostgreSQL database without its password.
  pub database_path: String,
  pub isolate_tenants: &'static str,
  /// How the sandbox is built, when there is one.
  pub sandbox_details: Option<SandboxDetails>,
}

/// What the sandbox does here (`info().sandboxDetails`).
#[derive(Debug, Clone)]
pub struct SandboxDetails {
  /// `user-namespace` (the server's uid, in a user namespace of its own) or `unprivileged-uid`
  /// (the server is root: an unprivileged uid per sandbox).
  pub identity: &'static str,
  /// `proxy-only` (a network namespace whose one address is the key proxy) or `host` (no key
  /// proxy to route through: `exposeApiKeyToAgent`, a cloud provider or no credentials).
  pub network: &'static str,
  pub limits: cli::SandboxLimits,
  /// How processes are limited: `rlimit` (RLIMIT_NPROC, counted per sandbox).
  pub process_limit: &'static str,
  /// How memory is limited: `rlimit-per-process` (RLIMIT_AS on each process).
  pub memory_limit: &'static str,
}

pub(crate) use crate::store::Wait;

/// Rings the store's doorbell for `notice` in this process at once, then in every other process
/// and node ([`crate::store::Doorbell::ring`], where waiting is fine). A ring that could not be
/// sent is found by the subscribers' periodic read.
pub(crate) async fn ring(store: &Arc<Store>, notice: crate::store::Notice) {
  store.ring_here(notice.clone());
  let _ = store.call(Wait::Briefly, async move |s| s.ring(&notice).await).await;
}

/// Creates a file only its owner can read (`0600` on Unix), or tightens an existing one.
fn private_file(path: &Path) -> Result<()> {
  #[cfg(unix)]
  {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if !path.exists() {
      let _ = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    } else if let Ok(m) = path.metadata() {
      if m.is_file() && m.permissions().mode() & 0o077 != 0 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
      }
    }
  }
  #[cfg(not(unix))]
  let _ = path;
  Ok(())
}

/// Where the CLI's API calls go and with which credentials, when it uses the Anthropic API with a
/// key or token (not a cloud provider, which the proxy does not sign for): `ANTHROPIC_AUTH_TOKEN`,
/// else `ANTHROPIC_API_KEY`, else `CLAUDE_CODE_OAUTH_TOKEN` (sent as a bearer token with the
/// OAuth beta), plus the `ANTHROPIC_CUSTOM_HEADERS` lines.
fn upstream_of(env: &[(String, String)]) -> Option<cli::Upstream> {
  let get = |k: &str| env.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
  let on = |k: &str| get(k).is_some_and(|v| v != "0" && v != "false");
  if on("CLAUDE_CODE_USE_BEDROCK") || on("CLAUDE_CODE_USE_VERTEX") || on("CLAUDE_CODE_USE_FOUNDRY") {
    return None;
  }
  let (api_key, mut auth_token) = (get("ANTHROPIC_API_KEY"), get("ANTHROPIC_AUTH_TOKEN"));
  let mut oauth = false;
  if api_key.is_none() && auth_token.is_none() {
    auth_token = get("CLAUDE_CODE_OAUTH_TOKEN");
    oauth = auth_token.is_some();
  }
  if api_key.is_none() && auth_token.is_none() {
    return None;
  }
  Some(cli::Upstream {
    base_url: get("ANTHROPIC_BASE_URL").unwrap_or_else(|| "https://api.anthropic.com".into()),
    api_key,
    auth_token,
    oauth,
    headers: get("ANTHROPIC_CUSTOM_HEADERS").unwrap_or_default(),
  })
}

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
    let sandbox = cli::Sandbox::detect(
      cfg.sandbox,
      cfg.sandbox_read_only.clone(),
      cfg.sandbox_read_write.clone(),
      cfg.sandbox_limits,
      &cfg.state_directory,
      cfg.sandbox_allow_domains.clone(),
    )?;
    let store = match &cfg.database_url {
      Some(url) => {
        let mut pg = PgStore::connect(url, &cfg.database_schema)?;
        pg.set_node(&cfg.node_id);
        // Session folders are stored relative to the configured working directory, else to the
        // workspace root (per-session folders), so each node resolves them under its own.
        let working = cfg.working_directory.clone().unwrap_or_else(|| cfg.workspace_root.clone());
        pg.set_roots(working, cfg.tenant_config_root.clone());
        Store::Postgres(pg)
      }
      None => {
        private_file(&cfg.database_path)?;
        let store = Store::open(&cfg.database_path)?;
        for suffix in ["-wal", "-shm"] {
          let p = PathBuf::from(format!("{}{suffix}", cfg.database_path.display()));
          if p.exists() {
            private_file(&p)?;
          }
        }
        store
      }
    };
    config::private_dir(&cfg.tenant_config_root)?;
    crate::store::block_on(store.recover_interrupted(&cli::pid_alive))?;
    let fanout = match &cfg.redis_url {
      Some(url) => Some(Arc::new(fanout::Fanout::new(url, &store.shared_name())?)),
      None => None,
    };
    Ok(Manager {
      store: Arc::new(store),
      slots: Arc::new(Semaphore::new(cfg.max_concurrent_tasks)),
      cfg,
      owner: Owner { id: uuid::Uuid::new_v4().to_string(), pid: std::process::id() },
      session_locks: Mutex::new(HashMap::new()),
      running: Arc::new(Mutex::new(HashMap::new())),
      finishing: Arc::new(Mutex::new(HashMap::new())),
      handed_over: Arc::new(Mutex::new(HashMap::new())),
      early_paused: Default::default(),
      closed: AtomicBool::new(false),
      sandbox,
      tasks: Arc::new(Mutex::new(HashMap::new())),
      next_task: std::sync::atomic::AtomicU64::new(0),
      key_proxy: tokio::sync::OnceCell::new(),
      warm: Arc::new(warm::WarmPool::default()),
      waiting: Arc::new(inbox::Waiting::default()),
      logs: Arc::new(events::Logs::new(fanout)),
    })
  }

  /// How tasks are run: sandboxed or not, the key proxy, where the state lives.
  pub fn info(&self) -> ManagerInfo {
    ManagerInfo {
      sandbox: if self.sandbox.is_some() { "bubblewrap" } else { "none" },
      api_key_proxy: !self.cfg.expose_api_key && upstream_of(&self.base_env()).is_some(),
      proxy_refused: self.key_proxy.get().and_then(|p| p.as_ref()).map_or(0, |p| p.refused()),
      state_directory: self.cfg.state_directory.clone(),
      database_path: self.store.describe(),
      sandbox_details: self.sandbox.as_ref().map(|s| SandboxDetails {
        identity: if s.drops_root() { "unprivileged-uid" } else { "user-namespace" },
        network: if !self.cfg.expose_api_key && upstream_of(&self.base_env()).is_some() { "proxy-only" } else { "host" },
        limits: s.limits(),
        process_limit: "rlimit",
        memory_limit: "rlimit-per-process",
      }),
      isolate_tenants: match self.cfg.isolation {
        Isolation::None => "none",
        Isolation::User => "user",
        Isolation::Project => "project",
      },
    }
  }

  fn base_env(&self) -> Vec<(String, String)> {
    cli::child_env(std::env::vars(), &self.cfg.env)
  }

  /// Makes a CLI run safe to start: the API key replaced by a per-task token of the key proxy
  /// (returned: the token is revoked when dropped), then the sandbox around the CLI.
  pub(crate) async fn secure(&self, spec: &mut cli::RunSpec) -> Result<Option<cli::TaskToken>> {
    let mut proxy_addr = None;
    let token = if self.cfg.expose_api_key {
      None
    } else if let Some(upstream) = upstream_of(&spec.env) {
      let proxy = self
        .key_proxy
        .get_or_try_init(|| async {
          // Every model call is metered into the store's ledger and checked against the caps.
          let metering = cli::key_proxy::Metering {
            ledger: Arc::new(budgets::StoreLedger::new(self.store.clone(), self.cfg.budget_defaults.clone())),
            prices: self.cfg.model_prices.clone(),
          };
          cli::KeyProxy::start_metered(upstream, cli::ProxyLimits::default(), Some(metering))
            .await
            .map(Some)
            .map_err(|e| Error::internal(format!("cannot start the API-key proxy: {e}")))
        })
        .await?;
      match proxy {
        Some(proxy) => {
          let token = proxy.issue();
          proxy_addr = Some(proxy.addr());
          spec.env.retain(|(k, _)| !cli::args::API_ACCESS.contains(&k.as_str()));
          spec.env.push(("ANTHROPIC_BASE_URL".into(), proxy.base_url()));
          spec.env.push(("ANTHROPIC_API_KEY".into(), token.as_str().to_owned()));
          Some(token)
        }
        None => None,
      }
    } else {
      // A cloud provider (the proxy does not sign for those) or no credentials: an OAuth token
      // is of no use to the CLI then.
      spec.env.retain(|(k, _)| k != "CLAUDE_CODE_OAUTH_TOKEN");
      None
    };
    if let Some(sandbox) = &self.sandbox {
      let config_dir = transcript::config_dir(&spec.env).ok_or_else(|| Error::internal("the CLI has no configuration folder"))?;
      sandbox.wrap(spec, &config_dir, proxy_addr)?;
    }
    Ok(token)
  }

  /// Whether tasks run sandboxed.
  pub fn sandboxed(&self) -> bool {
    self.sandbox.is_some()
  }

  pub fn config(&self) -> &Config {
    &self.cfg
  }

  pub(crate) fn check_open(&self) -> Result<()> {
    if self.closed.load(Ordering::SeqCst) {
      return Err(Error::new(ErrorCode::Closed, "this SessionManager was closed; create a new one"));
    }
    Ok(())
  }

  /// Registers a task's cancel token until the returned guard drops, so that `close()` aborts it
  /// wherever it is (queued, waiting for a slot, running).
  pub(crate) fn register(&self, cancel: &CancelToken) -> TaskRegistration {
    let id = self.next_task.fetch_add(1, Ordering::SeqCst);
    self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(id, cancel.clone());
    if self.closed.load(Ordering::SeqCst) {
      cancel.cancel();
    }
    TaskRegistration { tasks: self.tasks.clone(), id }
  }

  /// A store call while the manager is open, with the waiting policy `wait` ([`Store::call`]; a
  /// write that completes a task, which `close()` waits for, calls the store itself: it is made
  /// even once the manager is closed).
  pub(crate) async fn store_call<T, F>(&self, wait: Wait, f: F) -> Result<T>
  where
    T: Send + 'static,
    F: AsyncFn(&Store) -> Result<T> + Send + Sync + 'static,
  {
    self.check_open()?;
    self.store.call(wait, f).await
  }

  /// Runs blocking work that is not a store call (an estimate, reading a transcript) on the
  /// blocking pool.
  pub(crate) async fn blocking<T: Send + 'static>(&self, what: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    self.check_open()?;
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("{what} failed: {e}")))?
  }

  /// Resolves a requested working directory (or the manager's) inside the allowed roots, and
  /// refuses one that holds the addon's state, the server's code or `.env*` files (see
  /// [`config::Guard`]). `None`: the session gets a folder of its own under `workspaceRoot`.
  pub(crate) fn working_dir(&self, requested: Option<&str>) -> Result<Option<PathBuf>> {
    match requested {
      Some(w) => {
        let wd = validate::working_directory("workingDirectory", w, &self.cfg.allowed_roots)?;
        self.guard().check("workingDirectory", &wd)?;
        Ok(Some(wd))
      }
      None => Ok(self.cfg.working_directory.clone()),
    }
  }

  fn guard(&self) -> config::Guard<'_> {
    config::Guard { server: &self.cfg.server_directory, allow_server_folder: self.cfg.allow_server_folder, protected: &self.cfg.protected }
  }

  /// Makes a session's own folder under `workspaceRoot` (`0711` inside the `0700` root, see
  /// [`config::session_dir`]) when it is one and is missing (a new session, or one made on
  /// another node). The stored folder is checked again first (the store is not taken on trust):
  /// it may not hold the state folder, the database or the tenant folders, and with
  /// `allowedRoots` it must be inside one of them, the manager's working directory or the
  /// workspace root.
  pub(crate) fn ensure_workspace(&self, session: &Session) -> Result<()> {
    let wd = Path::new(&session.working_directory);
    self.guard().protected_inside("the session's working directory", wd)?;
    if !self.cfg.allowed_roots.is_empty() {
      let inside = |root: &Path| wd.starts_with(root);
      let ok = self.cfg.allowed_roots.iter().any(|r| inside(r))
        || inside(&self.cfg.workspace_root)
        || self.cfg.working_directory.as_deref().is_some_and(inside);
      if !ok {
        return Err(Error::invalid(format!(
          "the session's working directory {} is outside allowedRoots and the workspace root",
          wd.display()
        )));
      }
    }
    if wd.parent() == Some(self.cfg.workspace_root.as_path()) {
      config::session_dir(wd)?;
    }
    Ok(())
  }

  /// The CLI configuration folder of a tenant, when tenants are isolated: a stable name made
  /// from the id (readable prefix plus a hash), under `tenantConfigRoot`.
  pub(crate) fn tenant_config_dir(&self, project_id: &str, user_id: &str) -> Option<String> {
    let (kind, id) = match self.cfg.isolation {
      Isolation::None => return None,
      Isolation::User => ("user", user_id.to_owned()),
      Isolation::Project => ("project", format!("{user_id}\u{0}{project_id}")),
    };
    let readable: String = id.chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let h = config::fnv1a(id.as_bytes());
    Some(self.cfg.tenant_config_root.join(format!("{kind}-{readable}-{h:016x}")).to_string_lossy().into_owned())
  }

  pub(crate) fn new_session(
    &self,
    project_id: &str,
    user_id: &str,
    id: Option<String>,
    model: Option<String>,
    working_directory: Option<PathBuf>,
  ) -> NewSession {
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let working_directory = working_directory.unwrap_or_else(|| self.cfg.workspace_root.join(&id));
    NewSession {
      id,
      project_id: project_id.to_owned(),
      user_id: user_id.to_owned(),
      parent_id: None,
      title: None,
      model: model.unwrap_or_else(|| self.cfg.default_model.clone()),
      working_directory: working_directory.to_string_lossy().into_owned(),
      context: None,
      cli_cost_watermark: 0.0,
      config_dir: self.tenant_config_dir(project_id, user_id),
      paused: None,
    }
  }

  pub(crate) fn session_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut m = self.session_locks.lock().unwrap_or_else(|p| p.into_inner());
    m.retain(|_, l| Arc::strong_count(l) > 1);
    m.entry(id.to_owned()).or_default().clone()
  }

  /// The CLI's environment for a session: what the CLI needs, the manager's `env`, and the
  /// tenant's own configuration folder when tenants are isolated.
  pub(crate) fn child_env(&self, session: &Session) -> Result<Vec<(String, String)>> {
    let mut env = self.base_env();
    if let Some(dir) = &session.config_dir {
      config::private_dir(Path::new(dir))?;
      env.retain(|(k, _)| k != "CLAUDE_CONFIG_DIR");
      env.push(("CLAUDE_CONFIG_DIR".into(), dir.clone()));
    } else if !env.iter().any(|(k, _)| k == "CLAUDE_CONFIG_DIR") {
      // Shared by every tenant (isolateTenants: 'none'), but still the addon's, not ~/.claude.
      let dir = self.cfg.state_directory.join("claude-config");
      config::private_dir(&dir)?;
      env.push(("CLAUDE_CONFIG_DIR".into(), dir.to_string_lossy().into_owned()));
    }
    if self.cfg.file_checkpoints {
      env.retain(|(k, _)| k != branching::CHECKPOINTS_ENV);
      env.push((branching::CHECKPOINTS_ENV.into(), "1".into()));
    }
    if !self.cfg.allow_file_mentions {
      // `@path` in a prompt would inline files whatever the tool permissions say.
      env.retain(|(k, _)| k != "CLAUDE_CODE_DISABLE_FILE_MENTIONS");
      env.push(("CLAUDE_CODE_DISABLE_FILE_MENTIONS".into(), "1".into()));
    }
    Ok(env)
  }

  pub(crate) fn search_dirs(&self) -> Vec<PathBuf> {
    let mut v = vec![self.cfg.working_directory.clone().unwrap_or_else(|| self.cfg.server_directory.clone())];
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

  /// The transcript file of a session (below its configuration folder, which the agent can
  /// write: only ever opened through [`transcript::TenantFile`]).
  pub(crate) fn transcript_of(&self, session: &Session) -> Result<Option<transcript::TenantFile>> {
    let env = self.child_env(session)?;
    Ok(transcript::config_dir(&env).map(|d| transcript::transcript_path(&d, Path::new(&session.working_directory), &session.id)))
  }

  /// Refuses further calls, aborts every task (queued, waiting for a slot or running), and waits
  /// until each has recorded its end (`aborted`) and its CLI has exited.
  pub async fn close(&self) -> Result<()> {
    self.closed.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
      let tokens: Vec<CancelToken> = self.tasks.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
      let running: Vec<CancelToken> = self.running.lock().map(|m| m.values().cloned().collect()).unwrap_or_default();
      if (tokens.is_empty() && running.is_empty()) || Instant::now() >= deadline {
        break;
      }
      for t in tokens.iter().chain(running.iter()) {
        t.cancel();
      }
      tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then the idle warm CLIs: stdin EOF, signals after a grace.
    self.warm.shutdown().await;
    Ok(())
  }
}
