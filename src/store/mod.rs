//! The session store: [`Store`] is the one value the manager holds, whatever database holds the
//! sessions; it derefs to the [`Backend`] interface, one trait per concern (`interface.rs`:
//! sessions, tasks and leases, the meter, transcripts, the inbox, warm holds, budgets). Each
//! backend lives in a folder of its own, and the manager never learns which one it has:
//!
//! - [`SqliteStore`] (`sqlite/`): one file shared by every process of a server. WAL mode, a busy
//!   timeout and `BEGIN IMMEDIATE` for every write, so concurrent writers queue instead of
//!   failing; the schema is versioned with `PRAGMA user_version` and migrated forward on open.
//!   It keeps no transcripts ([`Backend::transcripts`] is `None`).
//! - [`PgStore`] (`postgres/`): one PostgreSQL database shared by several nodes, chosen by a
//!   `postgres://` / `postgresql://` `databaseUrl`; leases with fencing tokens on the database
//!   clock, and the transcripts.
//!
//! What is not dialect-specific lives here: the row types, what a budget and the inbox are
//! (`budgets.rs`, `inbox.rs`). `tests/conformance/` runs one suite on every backend.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::Result;

mod budgets;
pub mod doorbell;
mod events;
mod inbox;
mod interface;
mod postgres;
mod sqlite;

pub use budgets::{
  Admit, Budget, BudgetDefaults, BudgetKey, CallAdmit, CallTokens, UsageQuery, UsageRow, PERIODS as BUDGET_PERIODS, SCOPES as BUDGET_SCOPES,
};
pub use events::{EventBounds, EventRow, Notice, RunningTask, NOTIFY_ABORT, NOTIFY_EVENTS};
pub use inbox::{Delivery, Receipt};
pub use interface::{Backend, Branches, Budgets, Doorbell, Events, Inbox, Meter, Sessions, Tasks, Transcripts, WarmHolds};
pub use postgres::{is_postgres_url, validate_schema as validate_pg_schema, PgStore, PG_SCHEMA_VERSION};
pub use sqlite::{SqliteStore, SCHEMA_VERSION};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
  SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Token counts as the API reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
  pub input_tokens: u64,
  pub output_tokens: u64,
  pub cache_read_input_tokens: u64,
  pub cache_creation_input_tokens: u64,
}

impl Usage {
  /// Everything the model saw and wrote in one call: the size of the context after it.
  pub fn context_total(&self) -> u64 {
    self.input_tokens + self.output_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens
  }
}

/// The last measurement of a session's context.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextSnapshot {
  pub tokens: u64,
  pub window: u64,
  /// `api` when the number is what the API reported, `estimate` otherwise.
  pub source: String,
  pub measured_at: i64,
}

/// A session row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
  pub id: String,
  pub project_id: String,
  pub user_id: String,
  pub status: String,
  pub parent_id: Option<String>,
  pub title: Option<String>,
  pub model: String,
  pub working_directory: String,
  pub created_at: i64,
  pub updated_at: i64,
  pub last_active_at: i64,
  pub task_count: u64,
  pub total_cost_usd: f64,
  pub usage: Usage,
  pub context: Option<ContextSnapshot>,
  /// Whether the CLI has a transcript for this session yet (its first task ran).
  pub materialized: bool,
  pub cli_cost_watermark: f64,
  /// The CLI's `CLAUDE_CONFIG_DIR` for this session when tenants are isolated.
  pub config_dir: Option<String>,
  /// The scope of the spend cap that stopped the session's last task (`user`, `project`,
  /// `session`); cleared by the end of a task that a cap did not stop.
  pub paused: Option<String>,
}

/// Where a session branches (`store::Branches`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BranchPoint {
  /// The parent's message (its `getMessages` id) a fork continues from.
  pub fork_at: Option<String>,
  /// The transcript entry the next run continues from (`--resume-session-at`): a fork's first run,
  /// or a pending rewind. Cleared once a run used it.
  pub resume_at: Option<String>,
  /// The one prompt a pending rewind drops (`--resume-drops-turn`), when it drops exactly one.
  pub resume_drops: Option<String>,
}

/// What a new session row starts with.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
  pub id: String,
  pub project_id: String,
  pub user_id: String,
  pub parent_id: Option<String>,
  pub title: Option<String>,
  pub model: String,
  pub working_directory: String,
  pub context: Option<ContextSnapshot>,
  /// For forks: the parent's running total of CLI-reported cost (see `context::task_cost`).
  pub cli_cost_watermark: f64,
  pub config_dir: Option<String>,
}

/// Filters of `list_sessions`.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
  pub user_id: String,
  pub project_id: Option<String>,
  pub status: Option<String>,
  pub parent_id: Option<String>,
  pub limit: u64,
  pub offset: u64,
}

/// A task row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
  pub id: String,
  pub session_id: String,
  pub status: String,
  pub kind: String,
  pub started_at: i64,
  pub ended_at: Option<i64>,
  pub model: Option<String>,
  pub turns: Option<u64>,
  pub usage: Usage,
  pub cost_usd: f64,
  pub error_code: Option<String>,
  pub error_message: Option<String>,
  pub cli_version: Option<String>,
}

/// How a task ended, written together with the session's totals in one transaction.
#[derive(Debug, Clone, Default)]
pub struct TaskEnd {
  pub status: String,
  pub model: Option<String>,
  pub turns: Option<u64>,
  pub usage: Usage,
  pub cost_usd: f64,
  pub cli_reported_cost_usd: Option<f64>,
  pub duration_api_ms: Option<u64>,
  pub error_code: Option<String>,
  pub error_message: Option<String>,
  pub cli_version: Option<String>,
  /// The new context snapshot, when the task measured one.
  pub context: Option<ContextSnapshot>,
  /// Whether the CLI now has a transcript for the session.
  pub materialized: bool,
  /// Keep the session's lease: the CLI is still exiting, and [`Tasks::release_lease`] frees it.
  pub keep_lease: bool,
  /// The context window the CLI reported for a model, to remember (see [`Meter::window_for`]).
  pub window: Option<(String, u64)>,
  /// Compactions the task did.
  pub compactions: Vec<Compaction>,
  /// The scope of the spend cap that stopped the task: the session is paused (see
  /// [`Session::paused`]).
  pub paused: Option<String>,
}

/// One write of a task's end, as every backend makes them, in this order and in one transaction
/// (see [`TaskEnd::steps`]); each backend says only how, in its SQL.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EndStep<'a> {
  /// The task's row: status, end time, usage, cost, error.
  TaskRow,
  /// The session's totals: task count, cost, tokens, activity, `materialized`, the watermark.
  Totals,
  /// The session's new context snapshot.
  Context(&'a ContextSnapshot),
  /// The window a model reported, remembered per model.
  Window(&'a str, u64),
  /// One compaction of the task.
  Compaction(&'a Compaction),
  /// The session's lease, freed (not when the CLI is still exiting: `keep_lease`).
  ReleaseLease,
}

/// A task end's counts as the databases store them (signed 64-bit).
pub(crate) struct EndCounts {
  pub input: i64,
  pub output: i64,
  pub cache_read: i64,
  pub cache_creation: i64,
  pub turns: Option<i64>,
  pub duration_api_ms: Option<i64>,
}

impl TaskEnd {
  /// What recording this end writes, in order: the task's row and the session's totals always,
  /// the context, the window and the compactions when there are any, the lease unless kept.
  pub(crate) fn steps(&self) -> Vec<EndStep<'_>> {
    let mut steps = vec![EndStep::TaskRow, EndStep::Totals];
    steps.extend(self.context.as_ref().map(EndStep::Context));
    steps.extend(self.window.as_ref().map(|(model, window)| EndStep::Window(model, *window)));
    steps.extend(self.compactions.iter().map(EndStep::Compaction));
    if !self.keep_lease {
      steps.push(EndStep::ReleaseLease);
    }
    steps
  }

  /// The counts, converted once for either dialect.
  pub(crate) fn counts(&self) -> EndCounts {
    let u = &self.usage;
    EndCounts {
      input: u.input_tokens as i64,
      output: u.output_tokens as i64,
      cache_read: u.cache_read_input_tokens as i64,
      cache_creation: u.cache_creation_input_tokens as i64,
      turns: self.turns.map(|t| t as i64),
      duration_api_ms: self.duration_api_ms.map(|t| t as i64),
    }
  }
}

/// A compaction row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Compaction {
  pub session_id: String,
  pub task_id: Option<String>,
  pub trigger: String,
  pub pre_tokens: Option<u64>,
  pub post_tokens: Option<u64>,
  pub started_at: i64,
  pub duration_ms: Option<u64>,
}

/// One line of a session's transcript as the store keeps it (PostgreSQL; see `postgres/transcripts.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptEntry {
  /// Order within the session, given by the lease holder.
  pub seq: i64,
  /// `""` for the main transcript, else the file under the session's folder (e.g.
  /// `subagents/agent-1`), without `.jsonl`.
  pub subpath: String,
  pub uuid: Option<String>,
  /// The JSON line as the CLI wrote it.
  pub line: String,
}

/// A task about to start, as [`Tasks::begin_task`] records it.
#[derive(Debug, Clone, Copy)]
pub struct TaskStart<'a> {
  pub task_id: &'a str,
  /// `task` or `compact`.
  pub kind: &'a str,
  pub model: &'a str,
  pub owner: &'a Owner,
  /// How long the lease lasts unless renewed.
  pub ttl: Duration,
  /// At most this many live leases in the whole database, whichever process holds them
  /// (`maxConcurrentTasksTotal`); `None`: no limit beyond one per session.
  pub max_running: Option<u64>,
}

/// What [`Tasks::begin_task`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
  /// The lease is the task's and its row is `running`.
  Started,
  /// Another live task holds the session's lease; nothing was written.
  SessionHeld,
  /// `max_running` live leases are held across the database; nothing was written.
  Full,
}

/// Who holds work in this store: one per manager instance.
#[derive(Debug, Clone)]
pub struct Owner {
  pub id: String,
  pub pid: u32,
}

/// The session store the manager uses: one backend, whose concerns ([`Backend`]) it derefs to.
/// Methods block; the manager runs them off the JavaScript thread (or, through [`Store::now`],
/// right where it is when that cannot wait).
// One `Store` per manager, behind an `Arc`: the variants' sizes cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Store {
  /// One SQLite file (the default).
  Sqlite(SqliteStore),
  /// A PostgreSQL database shared by several nodes (`databaseUrl`).
  Postgres(PgStore),
}

/// Every concern of the interface, whichever backend answers.
impl std::ops::Deref for Store {
  type Target = dyn Backend;
  fn deref(&self) -> &(dyn Backend + 'static) {
    match self {
      Store::Sqlite(s) => s,
      Store::Postgres(p) => p,
    }
  }
}

impl Store {
  /// Opens (creating if needed) the SQLite database at `path` and migrates it.
  pub fn open(path: &Path) -> Result<Store> {
    SqliteStore::open(path).map(Store::Sqlite)
  }

  /// Connects to the PostgreSQL database at `url` (`postgres://` or `postgresql://`), keeping
  /// the tables in `schema`, and migrates it.
  pub fn connect(url: &str, schema: &str) -> Result<Store> {
    PgStore::connect(url, schema).map(Store::Postgres)
  }

  /// [`Tasks::begin_task`] without a database-wide limit: true when the task started.
  pub fn try_begin_task(&self, session_id: &str, task_id: &str, kind: &str, model: &str, owner: &Owner, ttl: Duration) -> Result<bool> {
    let start = TaskStart { task_id, kind, model, owner, ttl, max_running: None };
    Ok(self.begin_task(session_id, &start)? == Begin::Started)
  }

  /// The SQLite file, for the SQLite backend.
  pub fn path(&self) -> Option<&Path> {
    match self {
      Store::Sqlite(s) => Some(s.path()),
      Store::Postgres(_) => None,
    }
  }

  /// Where the sessions live, for messages and `info()`: the SQLite file, or the PostgreSQL
  /// database without its password.
  pub fn describe(&self) -> String {
    match self {
      Store::Sqlite(s) => s.path().display().to_string(),
      Store::Postgres(p) => p.describe().to_owned(),
    }
  }

  /// Whether the conversation is kept in the store for other nodes (PostgreSQL): tasks mirror
  /// the CLI's transcript into it and nodes refresh their local copy from it.
  pub fn shares_transcripts(&self) -> bool {
    self.transcripts().is_some()
  }

  /// The store's transcripts, where only a backend that keeps them can be (a task's mirror, a
  /// node's refresh): an internal error on one that does not.
  pub fn shared_transcripts(&self) -> Result<&dyn Transcripts> {
    self.transcripts().ok_or_else(|| crate::error::Error::internal(format!("the {} store keeps no transcripts", self.name())))
  }

  /// The store's doorbell (`doorbell.rs`): new events, stop requests, inbox answers and
  /// messages, warm holds wanted and released, from this process and from any other process or
  /// node sharing the store. Starts the store's listener (PostgreSQL `LISTEN`, SQLite's reader
  /// of `notices`) with the first subscriber; it says [`Notice::Listening`] when it is up.
  pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notice> {
    let bus = doorbell::bus(&self.scope());
    let rx = bus.subscribe();
    match self {
      Store::Sqlite(s) => s.listen(&bus),
      Store::Postgres(p) => p.listen(&bus),
    }
    rx
  }

  /// Rings for `notice` in this process only: what the store rang for elsewhere already (an
  /// append, a stop request), or before [`Doorbell::ring`] does.
  pub fn ring_here(&self, notice: Notice) {
    let _ = doorbell::bus(&self.scope()).send(notice);
  }

  /// What names this store to every node sharing it, whatever address each reaches it by (the
  /// channels of `redisUrl`): the PostgreSQL database's name and schema, or the SQLite file.
  pub fn shared_name(&self) -> String {
    match self {
      Store::Sqlite(_) => self.scope(),
      Store::Postgres(p) => p.shared_name(),
    }
  }

  /// What names this store in the process's doorbell channels: the SQLite file, or the
  /// PostgreSQL database and schema.
  pub fn scope(&self) -> String {
    match self {
      Store::Sqlite(s) => s.scope.clone(),
      Store::Postgres(p) => p.scope(),
    }
  }

  /// Which backend this is: `sqlite` or `postgres`.
  pub fn backend(&self) -> &'static str {
    self.name()
  }

  /// Runs `f` on this thread if its first store call can go through without waiting (SQLite:
  /// the connection is free and no other process holds a lock it needs). `None` when it would
  /// have waited, or when the backend cannot tell without a network round trip (PostgreSQL);
  /// nothing was done then, and the caller runs `f` where waiting is fine. Store calls after
  /// the first one wait as usual.
  pub fn now<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Option<Result<T>> {
    match self {
      Store::Sqlite(s) => s.try_now(|| f(self)),
      // Every call is a network round trip that may wait: never on the caller's thread.
      Store::Postgres(_) => None,
    }
  }

  /// `get_session` if it can be answered without waiting (see [`Store::now`]); `None` means "ask
  /// again the blocking way". Meant for the JavaScript thread: a point read by primary key takes
  /// microseconds, less than a trip to another thread and back.
  pub fn get_session_now(&self, id: &str, user_id: &str) -> Option<Result<Option<Session>>> {
    self.now(|s| s.get_session(id, user_id))
  }

  /// `window_for`, answered without waiting or not at all, as `get_session_now` is.
  pub fn window_for_now(&self, model: &str) -> Option<Result<Option<u64>>> {
    self.now(|s| s.window_for(model))
  }
}
