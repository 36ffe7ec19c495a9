//! `new SessionManager(options)`: the options as read from JavaScript and the resolved
//! configuration, with every default and environment variable applied and every value checked.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::validate;

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
    let working_directory = PathBuf::from(
      o.working_directory.clone().or_else(|| env_var("CLAUDE_WORKING_DIR")).unwrap_or_else(|| cwd.to_string_lossy().into_owned()),
    );
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
