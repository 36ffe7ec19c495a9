//! `new SessionManager(options)`: the options (their shapes checked where they came in) and the
//! resolved configuration, with every default and environment variable applied and what depends
//! on this machine (folders, the database) checked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::validate;

/// Options of `new SessionManager(options)`, their shapes checked where they came in (the
/// binding's `TryFrom`); [`Config::resolve`] applies the defaults and environment variables and
/// checks what depends on this machine (folders, the database).
#[derive(Debug, Clone, Default)]
pub struct Options {
  pub database_path: Option<String>,
  pub database_url: Option<String>,
  pub database_schema: Option<String>,
  pub working_directory: Option<String>,
  pub workspace_root: Option<String>,
  pub allow_server_folder_as_workspace: bool,
  pub default_model: Option<String>,
  /// At least 1.
  pub context_window: Option<u64>,
  /// A percentage in (0, 100].
  pub compact_threshold: Option<f64>,
  pub claude_path: Option<String>,
  pub env: std::collections::BTreeMap<String, String>,
  pub allow_bypass_permissions: bool,
  /// At least 1.
  pub max_concurrent_tasks: Option<u64>,
  /// At least 1.
  pub max_concurrent_tasks_total: Option<u64>,
  pub queue_timeout: Option<Duration>,
  /// Zero turns the stall timeout off.
  pub stall_timeout: Option<Duration>,
  /// 0 to 19.
  pub cli_niceness: Option<u8>,
  pub allowed_roots: Vec<String>,
  pub isolate_tenants: Option<Isolation>,
  pub tenant_config_root: Option<String>,
  pub state_directory: Option<String>,
  pub sandbox: Option<SandboxMode>,
  /// `sandboxPaths.readOnly` and `readWrite`.
  pub sandbox_read_only: Vec<String>,
  pub sandbox_read_write: Vec<String>,
  /// `sandboxLimits`, with the defaults of what was not given.
  pub sandbox_limits: crate::cli::SandboxLimits,
  /// `sandboxNetwork.allowDomains`.
  pub sandbox_allow_domains: Vec<String>,
  pub expose_api_key_to_agent: bool,
  /// Each a command such as `/context`.
  pub allow_slash_commands: Vec<String>,
  pub allow_file_mentions: bool,
  pub allow_background_tools: bool,
  /// Each `user`, `project` or `local`.
  pub setting_sources: Vec<String>,
  /// `fileCheckpoints` (default true).
  pub file_checkpoints: Option<bool>,
  /// 1 to 200 characters without control characters.
  pub node_id: Option<String>,
  /// [`MIN_LEASE_TTL_MS`] to 24 hours.
  pub lease_ttl: Option<Duration>,
  /// Zero turns warm processes off.
  pub warm_idle: Option<Duration>,
  /// At least 1.
  pub max_warm_sessions: Option<u64>,
  /// At least 1 ms.
  pub permission_timeout: Option<Duration>,
  /// At least 1.
  pub max_transcript_bytes: Option<u64>,
  /// At least 1 ms.
  pub event_retention: Option<Duration>,
  /// `redis://`, `rediss://` or `redis+unix://` (checked by the binding).
  pub redis_url: Option<String>,
  /// Spend caps where none is stored (`budgets.rs`).
  pub budgets: Option<super::budgets::BudgetOptions>,
  /// Prices that replace the list prices of the key proxy's meter.
  pub model_prices: Vec<super::budgets::ModelPrice>,
}

/// Whether the CLI runs in a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
  /// Bubblewrap where it works (Linux with `bwrap`), else none.
  Auto,
  /// Bubblewrap or a failing constructor.
  Bubblewrap,
  /// No sandbox: the agent runs as the server's user.
  None,
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
  /// The SQLite file (unused when `database_url` is set).
  pub database_path: PathBuf,
  /// A `postgres://` / `postgresql://` URL: the sessions live in PostgreSQL instead of SQLite.
  pub database_url: Option<String>,
  /// The PostgreSQL schema holding the addon's tables.
  pub database_schema: String,
  /// The configured working directory (`workingDirectory`, env `CLAUDE_WORKING_DIR`), if any.
  pub working_directory: Option<PathBuf>,
  /// Where a session without a configured working directory gets a folder of its own
  /// (`<workspaceRoot>/<session id>`, `0700`).
  pub workspace_root: PathBuf,
  /// The server's folder (`process.cwd()` at construction), where the CLI is looked up and which
  /// no agent works in unless `allowServerFolderAsWorkspace`.
  pub server_directory: PathBuf,
  /// `allowServerFolderAsWorkspace` (unsafe): the server's folder (or an ancestor) may be a
  /// working directory.
  pub allow_server_folder: bool,
  /// Folders no working directory may contain: the state folder, the database, the tenant
  /// configuration folders (with what each is, for the message).
  pub protected: Vec<(PathBuf, &'static str)>,
  pub default_model: String,
  pub context_window: u64,
  pub compact_threshold: f64,
  pub claude_path: Option<String>,
  pub env: Vec<(String, String)>,
  pub allow_bypass_permissions: bool,
  pub max_concurrent_tasks: usize,
  /// Tasks that run at once across every process sharing the database (live leases).
  pub max_concurrent_tasks_total: Option<u64>,
  pub queue_timeout: Duration,
  pub stall_timeout: Option<Duration>,
  /// Nice increment of the CLI relative to this process.
  pub cli_niceness: i32,
  /// How long a session's lease lasts without renewal (`leaseTtlMs`): the longest a dead node
  /// can hold a session, and the time a holder that cannot renew has before it stops its CLI.
  pub lease_ttl: Duration,
  /// This node's name on task rows (`nodeId`; default `<host name>:<pid>`).
  pub node_id: String,
  pub allowed_roots: Vec<PathBuf>,
  pub isolation: Isolation,
  pub tenant_config_root: PathBuf,
  /// The addon's own folder (database, tenant configuration), outside every working directory.
  pub state_directory: PathBuf,
  pub sandbox: SandboxMode,
  pub sandbox_read_only: Vec<PathBuf>,
  pub sandbox_read_write: Vec<PathBuf>,
  /// What each sandbox may use (`sandboxLimits`).
  pub sandbox_limits: crate::cli::SandboxLimits,
  /// Where a sandboxed agent's web tools may connect (`sandboxNetwork.allowDomains`).
  pub sandbox_allow_domains: Vec<crate::cli::sandbox::egress::Allowed>,
  pub expose_api_key: bool,
  /// Spend caps where none is stored (`budgets`).
  pub budget_defaults: crate::store::BudgetDefaults,
  /// What the key proxy prices model calls at (`modelPrices` over the list prices).
  pub model_prices: crate::cli::key_proxy::PriceTable,
  /// Slash commands a prompt may run (each `/name`); every other prompt is plain text.
  pub allow_slash_commands: Vec<String>,
  pub allow_file_mentions: bool,
  /// Let the agent schedule work of its own (`BACKGROUND_TOOLS`: CronCreate, ScheduleWakeup, RemoteTrigger); off: they are disallowed.
  pub allow_background_tools: bool,
  /// The CLI backs up files before its edit tools change them (`rewind` with `files`).
  pub file_checkpoints: bool,
  /// The CLI's `--setting-sources` (default none: no settings file an agent could write counts).
  pub setting_sources: Vec<String>,
  /// How long a session's CLI is kept running after its task; `None`: warm processes are off.
  pub warm_idle: Option<Duration>,
  /// At most this many warm processes (the least recently used is closed first).
  pub max_warm_sessions: usize,
  /// How long a permission request waits for the host's decision before it is denied.
  pub permission_timeout: Duration,
  /// A transcript longer than this is not read whole (`TRANSCRIPT_TOO_LARGE`).
  pub max_transcript_bytes: u64,
  /// How long a task's events stay in the log after it ended (`eventRetentionMs`).
  pub event_retention: Duration,
  /// Where live events are also published (`redisUrl`, env `CLAUDE_SESSIONS_REDIS_URL`).
  pub redis_url: Option<String>,
}

/// The CLI's tools that schedule work to run later, outside any task (a cron job, a wake-up, a
/// remote trigger): disallowed (`--disallowedTools`) unless `allowBackgroundTools`.
pub const BACKGROUND_TOOLS: [&str; 3] = ["CronCreate", "ScheduleWakeup", "RemoteTrigger"];

/// The CLI's default nice increment: below the Node process serving requests, still above batch
/// work at 19.
pub const DEFAULT_NICENESS: u8 = 10;

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
    let cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
    let configured = o.working_directory.clone().or_else(|| env_var("CLAUDE_WORKING_DIR")).map(PathBuf::from);
    let working_directory = match configured {
      Some(w) => {
        let w = if w.is_absolute() { w } else { cwd.join(w) };
        Some(validate::working_directory("workingDirectory", &w.to_string_lossy(), &allowed_roots)?)
      }
      None => None,
    };
    // What the default state folder and workspace root are named after: the configured working
    // directory, else the server's folder (as before per-session workspaces).
    let base = working_directory.clone().unwrap_or_else(|| cwd.clone());
    let isolation = o.isolate_tenants.unwrap_or(Isolation::User);
    let (database_url, url_path) = database_url(&o)?;
    let database_schema = o.database_schema.clone().unwrap_or_else(|| "claude_sessions".into());
    crate::store::validate_pg_schema(&database_schema)?;
    let explicit_db = o
      .database_path
      .clone()
      .or(url_path)
      .or_else(|| if database_url.is_some() { None } else { env_var("CLAUDE_SESSIONS_DB") })
      .map(PathBuf::from);
    let (state_directory, database_path) = state_and_database(o.state_directory.clone(), explicit_db, &base, &cwd)?;
    let n = Numbers::resolve(&o)?;
    let env = checked_env(&o.env)?;
    if let Some(p) = &o.claude_path {
      validate::cli_value("claudePath", p, 4096)?;
    }
    let tenant_config_root = match &o.tenant_config_root {
      Some(r) => validate::working_directory("tenantConfigRoot", r, &[])?,
      None => state_directory.join("claude-config"),
    };
    // Made (and checked) when sessions will use it: no configured working directory, or given.
    let uses_root = working_directory.is_none() || o.workspace_root.is_some();
    let workspace_root = workspace_root(o.workspace_root.clone(), &base, uses_root, &allowed_roots)?;
    let sqlite = database_url.is_none().then_some(database_path.as_path());
    let protected = protected_folders(&state_directory, &tenant_config_root, sqlite, &cwd);
    let guard = Guard { server: &cwd, allow_server_folder: o.allow_server_folder_as_workspace, protected: &protected };
    guard.check_roots(&allowed_roots, working_directory.as_deref(), uses_root.then_some(workspace_root.as_path()))?;
    let sandbox = o.sandbox.unwrap_or(SandboxMode::Auto);
    if o.sandbox_allow_domains.len() > 256 {
      return Err(Error::invalid("sandboxNetwork.allowDomains may list at most 256 entries"));
    }
    let sandbox_allow_domains =
      o.sandbox_allow_domains.iter().map(|d| crate::cli::sandbox::egress::Allowed::parse(d)).collect::<Result<Vec<_>>>()?;
    let sandbox_read_only = checked_paths("sandboxPaths.readOnly entry", &o.sandbox_read_only)?;
    let sandbox_read_write = checked_paths("sandboxPaths.readWrite entry", &o.sandbox_read_write)?;
    let lease_ttl = o.lease_ttl.unwrap_or(Duration::from_secs(30));
    let node_id = o.node_id.clone().unwrap_or_else(|| format!("{}:{}", host_name(), std::process::id()));
    let redis_url = o.redis_url.clone().or_else(|| env_var("CLAUDE_SESSIONS_REDIS_URL"));
    if let Some(u) = &redis_url {
      super::fanout::check_url(u).map_err(|e| {
        if o.redis_url.is_some() {
          e
        } else {
          Error::invalid(format!("CLAUDE_SESSIONS_REDIS_URL: {}", e.message))
        }
      })?;
    }
    Ok(Config {
      database_path,
      database_url,
      database_schema,
      working_directory,
      workspace_root,
      server_directory: cwd,
      allow_server_folder: o.allow_server_folder_as_workspace,
      protected,
      default_model: n.default_model,
      context_window: n.context_window,
      compact_threshold: n.compact_threshold,
      claude_path: o.claude_path,
      env,
      allow_bypass_permissions: o.allow_bypass_permissions,
      max_concurrent_tasks: n.max_concurrent_tasks,
      max_concurrent_tasks_total: n.max_concurrent_tasks_total,
      queue_timeout: n.queue_timeout,
      stall_timeout: n.stall_timeout,
      cli_niceness: n.cli_niceness,
      lease_ttl,
      node_id,
      allowed_roots,
      isolation,
      tenant_config_root,
      state_directory,
      sandbox,
      sandbox_read_only,
      sandbox_read_write,
      sandbox_limits: o.sandbox_limits,
      sandbox_allow_domains,
      expose_api_key: o.expose_api_key_to_agent,
      budget_defaults: super::budgets::resolve_defaults(o.budgets, o.expose_api_key_to_agent)?,
      model_prices: super::budgets::resolve_prices(o.model_prices),
      allow_slash_commands: o.allow_slash_commands,
      allow_file_mentions: o.allow_file_mentions,
      allow_background_tools: o.allow_background_tools,
      file_checkpoints: o.file_checkpoints.unwrap_or(true),
      setting_sources: o.setting_sources,
      warm_idle: n.warm_idle,
      max_warm_sessions: n.max_warm_sessions,
      permission_timeout: n.permission_timeout,
      max_transcript_bytes: n.max_transcript_bytes,
      event_retention: o.event_retention.unwrap_or(Duration::from_secs(24 * 60 * 60)),
      redis_url,
    })
  }
}

/// The folder under which sessions get folders of their own; made, private, and checked when
/// sessions `use` it.
fn workspace_root(configured: Option<String>, base: &Path, used: bool, allowed_roots: &[PathBuf]) -> Result<PathBuf> {
  let root = match configured {
    Some(r) => {
      let r = PathBuf::from(r);
      if !r.is_absolute() {
        return Err(Error::invalid(format!("workspaceRoot must be an absolute path, got {:?}", r.display())));
      }
      r
    }
    None => default_workspace_root(base),
  };
  if !used {
    return Ok(root);
  }
  private_dir(&root)?;
  validate::working_directory("workspaceRoot", &root.to_string_lossy(), allowed_roots)
}

/// The state folder (made, private, unless it is the database's own folder, which must exist: a
/// typo must not create a new, empty store) and the SQLite file.
fn state_and_database(configured: Option<String>, explicit_db: Option<PathBuf>, base: &Path, cwd: &Path) -> Result<(PathBuf, PathBuf)> {
  let (state_directory, create) = match configured.or_else(|| env_var("CLAUDE_SESSIONS_STATE_DIR")) {
    Some(d) => (PathBuf::from(d), true),
    None => match explicit_db.as_ref().and_then(|p| p.parent()).filter(|p| !p.as_os_str().is_empty()) {
      Some(parent) => (parent.to_path_buf(), false),
      None => (default_state_directory(base)?, true),
    },
  };
  let state_directory = if state_directory.is_absolute() { state_directory } else { cwd.join(state_directory) };
  if create {
    private_dir(&state_directory)?;
  }
  // A database an older version kept at `<workingDirectory>/.claude-sessions/` is not
  // adopted: that folder is the agent's, and a file there may be one it made.
  let database_path = explicit_db.unwrap_or_else(|| state_directory.join("sessions.db"));
  Ok((state_directory, database_path))
}

/// The `env` option: names and values the CLI's environment can hold.
fn checked_env(env: &std::collections::BTreeMap<String, String>) -> Result<Vec<(String, String)>> {
  let env: Vec<(String, String)> = env.clone().into_iter().collect();
  for (k, v) in &env {
    if v.contains('\0') {
      return Err(Error::invalid(format!("env variable {k} contains a NUL byte")));
    }
    if k.is_empty() || k.contains('=') || k.contains('\0') {
      return Err(Error::invalid(format!("env has an invalid variable name {:?}", k)));
    }
  }
  Ok(env)
}

/// Folders no agent may work in: the state folder, the tenant configuration folders, and the
/// SQLite file (when the store is one).
fn protected_folders(state: &Path, tenant_root: &Path, sqlite: Option<&Path>, cwd: &Path) -> Vec<(PathBuf, &'static str)> {
  let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
  let mut protected = vec![(canon(state), "the addon's state folder"), (canon(tenant_root), "the tenant configuration folders")];
  if let Some(database_path) = sqlite {
    let db = match (database_path.parent().filter(|p| !p.as_os_str().is_empty()), database_path.file_name()) {
      (Some(parent), Some(name)) => canon(parent).join(name),
      _ => canon(&cwd.join(database_path)),
    };
    protected.push((db, "the session database"));
  }
  protected
}

/// Absolute folders, each checked as a working directory would be.
fn checked_paths(field: &str, paths: &[String]) -> Result<Vec<PathBuf>> {
  paths.iter().map(|p| validate::working_directory(field, p, &[])).collect()
}

/// The numeric options (and the default model), with their defaults.
struct Numbers {
  default_model: String,
  context_window: u64,
  compact_threshold: f64,
  max_concurrent_tasks: usize,
  max_concurrent_tasks_total: Option<u64>,
  queue_timeout: Duration,
  stall_timeout: Option<Duration>,
  warm_idle: Option<Duration>,
  max_warm_sessions: usize,
  permission_timeout: Duration,
  max_transcript_bytes: u64,
  cli_niceness: i32,
}

impl Numbers {
  fn resolve(o: &Options) -> Result<Numbers> {
    let default_model = o.default_model.clone().or_else(|| env_var("CLAUDE_DEFAULT_MODEL")).unwrap_or_else(|| "sonnet".into());
    validate::model("defaultModel", &default_model)?;
    // Zero turns a timeout off.
    let off_at_zero = |d: Option<Duration>, default: Duration| match d {
      Some(d) if d.is_zero() => None,
      d => Some(d.unwrap_or(default)),
    };
    Ok(Numbers {
      default_model,
      context_window: o.context_window.unwrap_or(200_000),
      compact_threshold: o.compact_threshold.unwrap_or(80.0),
      max_concurrent_tasks: o.max_concurrent_tasks.map_or(8, |n| n.min(1024) as usize),
      max_concurrent_tasks_total: o.max_concurrent_tasks_total.map(|n| n.min(1_000_000)),
      queue_timeout: o.queue_timeout.unwrap_or(Duration::from_secs(60)),
      stall_timeout: off_at_zero(o.stall_timeout, Duration::from_secs(15 * 60)),
      warm_idle: off_at_zero(o.warm_idle, Duration::from_secs(10 * 60)),
      max_warm_sessions: o.max_warm_sessions.map_or(16, |n| n.min(4096) as usize),
      permission_timeout: o.permission_timeout.unwrap_or(Duration::from_secs(5 * 60)),
      max_transcript_bytes: o.max_transcript_bytes.unwrap_or(crate::transcript::DEFAULT_MAX_TRANSCRIPT_BYTES),
      cli_niceness: i32::from(o.cli_niceness.unwrap_or(DEFAULT_NICENESS)),
    })
  }
}

/// `databaseUrl` (or env `CLAUDE_SESSIONS_DATABASE_URL`; never `DATABASE_URL`, which usually
/// belongs to the app): PostgreSQL when it says so, else a SQLite file as `databasePath` (returned second).
fn database_url(o: &Options) -> Result<(Option<String>, Option<String>)> {
  let url = o.database_url.clone().or_else(|| if o.database_path.is_some() { None } else { env_var("CLAUDE_SESSIONS_DATABASE_URL") });
  Ok(match url {
    Some(_) if o.database_url.is_some() && o.database_path.is_some() => {
      return Err(Error::invalid("give databaseUrl or databasePath, not both"));
    }
    Some(u) if crate::store::is_postgres_url(&u) => (Some(u), None),
    Some(u) => {
      let path = u.strip_prefix("sqlite://").or_else(|| u.strip_prefix("sqlite:")).or_else(|| u.strip_prefix("file:")).unwrap_or(&u);
      if path.is_empty() {
        return Err(Error::invalid("databaseUrl must be a postgres:// or postgresql:// URL or a SQLite file path"));
      }
      (None, Some(path.to_owned()))
    }
    None => (None, None),
  })
}

/// The shortest `leaseTtlMs`: renewals go out every third of it, and each is a round trip.
pub const MIN_LEASE_TTL_MS: u64 = 300;

/// This machine's host name, for the default `nodeId`.
fn host_name() -> String {
  std::fs::read_to_string("/proc/sys/kernel/hostname")
    .ok()
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty())
    .or_else(|| env_var("HOSTNAME"))
    .or_else(|| env_var("COMPUTERNAME"))
    .unwrap_or_else(|| "localhost".into())
}

/// The default state folder: `$XDG_STATE_HOME` (else `~/.local/state`)
/// `/claude-session-manager/<working directory's name>-<hash>`, one per working directory.
fn default_state_directory(working_directory: &std::path::Path) -> Result<PathBuf> {
  let base = env_var("XDG_STATE_HOME")
    .map(PathBuf::from)
    .or_else(|| env_var("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
    .unwrap_or_else(std::env::temp_dir);
  let name: String = working_directory
    .file_name()
    .map(|n| n.to_string_lossy().chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect())
    .unwrap_or_else(|| "root".into());
  Ok(base.join("claude-session-manager").join(format!("{name}-{:016x}", fnv1a(working_directory.to_string_lossy().as_bytes()))))
}

/// The default workspace root: `$XDG_DATA_HOME` (else `~/.local/share`)
/// `/claude-session-manager/workspaces/<name>-<hash>`, apart from the state folder.
fn default_workspace_root(base: &std::path::Path) -> PathBuf {
  let data = env_var("XDG_DATA_HOME")
    .map(PathBuf::from)
    .or_else(|| env_var("HOME").map(|h| PathBuf::from(h).join(".local").join("share")))
    .unwrap_or_else(std::env::temp_dir);
  let name: String = base
    .file_name()
    .map(|n| n.to_string_lossy().chars().take(40).map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect())
    .unwrap_or_else(|| "root".into());
  data.join("claude-session-manager").join("workspaces").join(format!("{name}-{:016x}", fnv1a(base.to_string_lossy().as_bytes())))
}

/// What no agent's working directory may be or contain.
pub(crate) struct Guard<'a> {
  /// The server's folder (`process.cwd()`).
  pub server: &'a std::path::Path,
  pub allow_server_folder: bool,
  pub protected: &'a [(PathBuf, &'static str)],
}

impl Guard<'_> {
  /// The configured folders checked at start-up: `allowedRoots` entries, the working directory,
  /// and the workspace root when sessions use it (which may not be inside a protected folder).
  fn check_roots(&self, allowed_roots: &[PathBuf], working_directory: Option<&Path>, workspace_root: Option<&Path>) -> Result<()> {
    for r in allowed_roots {
      self.protected_inside("allowedRoots entry", r)?;
    }
    if let Some(w) = working_directory {
      self.check("workingDirectory", w)?;
    }
    let Some(root) = workspace_root else { return Ok(()) };
    self.protected_inside("workspaceRoot", root)?;
    for (p, what) in self.protected {
      if root.starts_with(p) {
        return Err(Error::invalid(format!(
          "workspaceRoot {} is inside {what} {}: agents must not work there; choose a folder outside it",
          root.display(),
          p.display()
        )));
      }
    }
    Ok(())
  }

  /// Refuses a folder (a root) that contains the state folder, the database or the tenant folders.
  pub fn protected_inside(&self, field: &str, dir: &std::path::Path) -> Result<()> {
    for (p, what) in self.protected {
      if p.starts_with(dir) {
        return Err(Error::invalid(format!(
          "{field} {} contains {what} {}: an agent working there could read or change every tenant's sessions; keep the state folder and the database outside every working directory and allowed root",
          dir.display(),
          p.display()
        )));
      }
    }
    Ok(())
  }

  /// Refuses a working directory (resolved) that holds the addon's state, or the server's own
  /// folder (unless the host opted in: `allowServerFolderAsWorkspace`). A `.env*` file is no
  /// reason: an agent could plant one to keep the server from starting.
  pub fn check(&self, field: &str, dir: &std::path::Path) -> Result<()> {
    self.protected_inside(field, dir)?;
    if self.allow_server_folder {
      return Ok(());
    }
    if self.server.starts_with(dir) {
      return Err(Error::invalid(format!(
        "{field} {} is the server's own folder or contains it (process.cwd() is {}): an agent there could read and change the server's code and secrets; leave workingDirectory unset (each session then gets a folder of its own under workspaceRoot), give another folder, or pass allowServerFolderAsWorkspace: true (unsafe)",
        dir.display(),
        self.server.display()
      )));
    }
    Ok(())
  }
}

/// FNV-1a: a stable hash across builds and platforms, for folder names.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
  let mut h: u64 = 0xcbf29ce484222325;
  for b in bytes {
    h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
  }
  h
}

/// Creates a folder only its owner can enter (`0700` on Unix), and tightens an existing one.
/// Called for every task and transcript read (`child_env`): a folder already there and private
/// costs one `stat`, with no `mkdir` or `chmod` (which would write the inode's change time).
pub(crate) fn private_dir(dir: &std::path::Path) -> Result<()> {
  dir_with_mode(dir, 0o700)
}

/// A session's own folder under `workspaceRoot`: `0711` on Unix. Its parent (`0700`) already
/// keeps every other user of the host out; the search bit lets bubblewrap, which runs as root
/// without capabilities when the server is root, enter it (`--chdir`) once it is idmapped to the
/// agent's uid (a `0700` folder is then closed to root). Nobody can list it but its owner.
pub(crate) fn session_dir(dir: &std::path::Path) -> Result<()> {
  dir_with_mode(dir, 0o711)
}

fn dir_with_mode(dir: &std::path::Path, mode: u32) -> Result<()> {
  #[cfg(unix)]
  {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    // Ours (as the chmod below requires), a folder, and with exactly that mode.
    if std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == me && m.permissions().mode() & 0o777 == mode) {
      return Ok(());
    }
  }
  std::fs::create_dir_all(dir).map_err(|e| Error::store(format!("cannot create {}: {e}", dir.display())))?;
  #[cfg(unix)]
  {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
      .map_err(|e| Error::store(format!("cannot make {} private: {e}", dir.display())))?;
  }
  #[cfg(not(unix))]
  let _ = mode;
  Ok(())
}

#[cfg(all(test, unix))]
mod tests {
  use std::os::unix::fs::{MetadataExt, PermissionsExt};

  use super::private_dir;

  #[test]
  fn private_dir_creates_tightens_and_leaves_a_private_folder_untouched() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tenant");
    let mode = |d: &std::path::Path| std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
    private_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700, "created private");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    private_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700, "tightened again");
    // Already private: no chmod, so the inode's change time stays (a chmod always sets it).
    let ctime = |d: &std::path::Path| {
      let m = std::fs::metadata(d).unwrap();
      (m.ctime(), m.ctime_nsec())
    };
    let before = ctime(&dir);
    std::thread::sleep(std::time::Duration::from_millis(20));
    private_dir(&dir).unwrap();
    assert_eq!(ctime(&dir), before, "left untouched");
    std::fs::remove_dir(&dir).unwrap();
    private_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700, "made again after it was removed");
    // A file where the folder should be is still an error.
    let file = root.path().join("file");
    std::fs::write(&file, "").unwrap();
    assert!(private_dir(&file).is_err());
  }
}
