//! The session manager without Node: the session API and task execution. The napi binding is a
//! thin door over [`Manager`].
//!
//! - `config`: options and their resolution;
//! - `types`: requests and results;
//! - `api`: sessions (create, list, fork, delete, the context meter, history);
//! - `tasks`: running a task or a compaction (queue, lease, concurrency slot, the CLI);
//! - `finish`: what a finished run means (result, error code, the store's bookkeeping), pure.

mod api;
mod config;
mod finish;
mod tasks;
mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::cli::{self, CancelToken, CliArgs};
use crate::error::{Error, ErrorCode, Result};
use crate::store::{NewSession, Owner, Session, Store};
use crate::{transcript, validate};

pub use config::{Config, Isolation, Options, DEFAULT_NICENESS};
pub use finish::classify_result;
pub use types::{ListRequest, MessagesPage, PromptEstimate, TaskError, TaskRequest, TaskResult};

/// How `run_locked` runs one CLI process.
pub(crate) struct RunOptions {
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
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
  fn drop(&mut self) {
    self.0.abort();
  }
}

/// Work left after a task settled: the CLI's exit, then freeing what the task held.
pub(crate) type Tail = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

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
    store.recover_interrupted(&cli::pid_alive)?;
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

  pub(crate) fn check_open(&self) -> Result<()> {
    if self.closed.load(Ordering::SeqCst) {
      return Err(Error::new(ErrorCode::Closed, "this SessionManager was closed; create a new one"));
    }
    Ok(())
  }

  /// Runs blocking work (a store call that may wait, reading a transcript) on the blocking pool.
  pub(crate) async fn blocking<T: Send + 'static>(&self, what: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    self.check_open()?;
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("{what} failed: {e}")))?
  }

  /// Runs a store call on the blocking pool.
  pub(crate) async fn db<T: Send + 'static>(&self, f: impl FnOnce(&Store) -> Result<T> + Send + 'static) -> Result<T> {
    let store = self.store.clone();
    self.blocking("store worker", move || f(&store)).await
  }

  /// A point read or small write (by primary key, a few rows): run right here, on the tokio
  /// worker, when it can go through without waiting (see [`Store::now`]), because it takes tens
  /// of microseconds, less than a hop to the blocking pool and back; else as [`Self::db`]. (Not
  /// `block_in_place`: that can turn this worker into a pool thread that exits when idle, and a
  /// CLI spawned from a thread gets its parent-death signal when that thread exits.)
  pub(crate) async fn point<T: Send + 'static>(&self, f: impl Fn(&Store) -> Result<T> + Send + 'static) -> Result<T> {
    self.check_open()?;
    if let Some(r) = self.store.now(&f) {
      return r;
    }
    self.db(f).await
  }

  /// Resolves a requested working directory (or the manager's) inside the allowed roots.
  pub(crate) fn working_dir(&self, requested: Option<&str>) -> Result<PathBuf> {
    match requested {
      Some(w) => validate::working_directory("workingDirectory", w, &self.cfg.allowed_roots),
      None => Ok(self.cfg.working_directory.clone()),
    }
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
    let mut h: u64 = 0xcbf29ce484222325; // FNV-1a: stable across builds and platforms.
    for b in id.as_bytes() {
      h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    Some(self.cfg.tenant_config_root.join(format!("{kind}-{readable}-{h:016x}")).to_string_lossy().into_owned())
  }

  pub(crate) fn new_session(
    &self,
    project_id: &str,
    user_id: &str,
    id: Option<String>,
    model: Option<String>,
    working_directory: PathBuf,
  ) -> NewSession {
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

  pub(crate) fn session_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut m = self.session_locks.lock().unwrap_or_else(|p| p.into_inner());
    m.retain(|_, l| Arc::strong_count(l) > 1);
    m.entry(id.to_owned()).or_default().clone()
  }

  /// The CLI's environment for a session: what the CLI needs, the manager's `env`, and the
  /// tenant's own configuration folder when tenants are isolated.
  pub(crate) fn child_env(&self, session: &Session) -> Result<Vec<(String, String)>> {
    let mut env = cli::child_env(std::env::vars(), &self.cfg.env);
    if let Some(dir) = &session.config_dir {
      std::fs::create_dir_all(dir).map_err(|e| Error::store(format!("cannot create the CLI configuration folder {dir}: {e}")))?;
      env.retain(|(k, _)| k != "CLAUDE_CONFIG_DIR");
      env.push(("CLAUDE_CONFIG_DIR".into(), dir.clone()));
    }
    Ok(env)
  }

  pub(crate) fn search_dirs(&self) -> Vec<PathBuf> {
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

  /// The transcript file of a session.
  pub(crate) fn transcript_of(&self, session: &Session) -> Result<Option<PathBuf>> {
    let env = self.child_env(session)?;
    Ok(transcript::config_dir(&env).map(|d| transcript::transcript_path(&d, Path::new(&session.working_directory), &session.id)))
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
}
