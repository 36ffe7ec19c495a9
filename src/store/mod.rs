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
use std::sync::Arc;
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
pub use interface::{Backend, Branches, Budgets, Doorbell, Events, FileBackups, Inbox, Meter, Sessions, Tasks, Transcripts, WarmHolds};
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
  /// The session's lineage: the root of its `parent_id` chain (its own id when it was not
  /// forked, stored as `''`; a fork's is its parent's, and stays when the parent is deleted). A
  /// session cap covers the lineage (`budgets.rs`).
  pub lineage_id: String,
}

/// A session's lineage as [`Session::lineage_id`] has it: the stored root, or the session itself
/// where none is stored (`''`: a root).
pub(crate) fn lineage_or_self(stored: String, id: String) -> String {
  if stored.is_empty() {
    id
  } else {
    stored
  }
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
  /// For forks: the parent's pause (the same caps apply to the fork).
  pub paused: Option<String>,
}

impl NewSession {
  /// The session as it will be stored, before it is (times from this machine's clock; the store's
  /// row replaces it once read): a new session's first task builds its run from it and stores it
  /// with its start ([`Backend::create_and_start`]).
  pub fn unstored(&self) -> Session {
    let now = now_ms();
    Session {
      id: self.id.clone(),
      project_id: self.project_id.clone(),
      user_id: self.user_id.clone(),
      status: "active".into(),
      parent_id: self.parent_id.clone(),
      title: self.title.clone(),
      model: self.model.clone(),
      working_directory: self.working_directory.clone(),
      created_at: now,
      updated_at: now,
      last_active_at: now,
      task_count: 0,
      total_cost_usd: 0.0,
      usage: Usage::default(),
      context: self.context.clone(),
      materialized: false,
      cli_cost_watermark: self.cli_cost_watermark,
      config_dir: self.config_dir.clone(),
      paused: self.paused.clone(),
      lineage_id: self.id.clone(),
    }
  }
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
  /// The row and the lease only: the session's totals, activity and pause are left as they are
  /// (a `rewind` with files, which calls no model).
  pub record_only: bool,
}

/// The error of a task's end the store refused: another task took the session's lease over.
pub(crate) fn end_refused(session_id: &str, task_id: &str) -> crate::error::Error {
  crate::error::Error::store(format!(
    "task {task_id} no longer holds the lease of session {session_id} (another task took it over); its end was not recorded"
  ))
}

/// What a task's end stores with it, in the same transaction ([`Tasks::finish_task_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct EndWith<'a> {
  /// The transcript's lines the task's mirror has not stored yet (PostgreSQL).
  pub lines: &'a [TranscriptEntry],
  /// The task's events not yet in the log, in order.
  pub events: &'a [String],
  /// The `task_end` event, logged after the end only if the end was recorded.
  pub end_event: Option<&'a str>,
}

/// What [`Tasks::finish_task_with`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndWritten {
  /// The end (and the lines and the end event) was recorded; false: the task no longer held the
  /// session's lease, and only the events were written.
  pub ended: bool,
  /// The log's last seq once the events (and the end event) were appended, when any was.
  pub last_event: Option<i64>,
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
    let mut steps = vec![EndStep::TaskRow];
    if !self.record_only {
      steps.push(EndStep::Totals);
    }
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
  /// A task of the same owner whose end was recorded with its lease kept while its CLI exited,
  /// once that CLI is gone and the store holds its lines: the start takes that lease over
  /// instead of waiting for its release (its later writes are then fenced out). Any other
  /// holder, or that task while still `running`, holds the start as before.
  pub after: Option<&'a str>,
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

/// What a run reads once its task started ([`Start::Started`]), in the same trip where the
/// backend can.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Began {
  /// The session as it is now (`None` if it is not the user's).
  pub session: Option<Session>,
  /// The session's transcript head in the store ([`Transcripts::transcript_head`]), when read.
  pub transcript_head: Option<i64>,
  /// How many other managers keep an idle warm CLI of the session once asked to give it up
  /// ([`WarmHolds::warm_elsewhere`]), when asked: `Some(0)` when none does.
  pub warm_left: Option<u64>,
  /// The session's branch point ([`Branches::branch_point`]), when read: `Some(None)` when it has none.
  pub branch_point: Option<Option<BranchPoint>>,
}

/// What [`Tasks::start_task`] did: [`Begin`] with what the caller reads next.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
  /// The lease is the task's.
  Started(Box<Began>),
  /// Another live task holds the session's lease; whether its CLI is exiting after its end.
  SessionHeld { exiting: bool },
  /// `max_running` live leases are held across the database.
  Full,
}

/// Who holds work in this store: one per manager instance.
#[derive(Debug, Clone)]
pub struct Owner {
  pub id: String,
  pub pid: u32,
}

/// The session store the manager uses: one backend, whose concerns ([`Backend`]) it derefs to.
/// Every method is a future. The manager calls the store one way, [`Store::call`], with a waiting
/// policy ([`Wait`]); PostgreSQL's futures are awaited where they are (async all the way down),
/// SQLite's do their blocking work when polled, so `call` polls them on the blocking pool (or
/// right here when they cannot wait). A thread that may block waits with [`block_on`].
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
  pub async fn try_begin_task(
    &self,
    session_id: &str,
    task_id: &str,
    kind: &str,
    model: &str,
    owner: &Owner,
    ttl: Duration,
  ) -> Result<bool> {
    let start = TaskStart { task_id, kind, model, owner, ttl, max_running: None, after: None };
    Ok(self.begin_task(session_id, &start).await? == Begin::Started)
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

  /// Calls the store with the waiting policy `wait`: the one way the manager calls it. `f` makes
  /// the calls (one or several, awaiting each) on the store it is given.
  ///
  /// - PostgreSQL: `f`'s future is awaited right here, whatever the policy (a network round trip
  ///   waits without holding a thread).
  /// - SQLite: a call blocks its thread while it runs. [`Wait::Briefly`] runs `f` on this thread
  ///   when its first call can go through without waiting (the connection is free and no other
  ///   process holds a lock it needs), else as [`Wait::Blocking`] does: on tokio's blocking pool.
  ///
  /// `f` owns what it captures (`async move`, owned strings): a borrowed capture, even a
  /// `&'static str`, keeps the caller's future from being proven `Send` (a limit of today's
  /// compiler with async closures: "implementation of `Send` is not general enough").
  pub async fn call<T, F>(self: &Arc<Self>, wait: Wait, f: F) -> Result<T>
  where
    T: Send + 'static,
    F: AsyncFn(&Store) -> Result<T> + Send + Sync + 'static,
  {
    match &**self {
      Store::Postgres(_) => f(self).await,
      Store::Sqlite(_) => {
        if wait == Wait::Briefly {
          if let Some(r) = self.now(&f) {
            return r;
          }
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || block_on(f(&store)))
          .await
          .map_err(|e| crate::error::Error::internal(format!("store worker failed: {e}")))?
      }
    }
  }

  /// Runs `f` on this thread if its first store call can go through without waiting: the
  /// never-waiting policy, for the JavaScript thread. `None` when it would have waited, or when
  /// the backend cannot tell without a network round trip (PostgreSQL); nothing was done then,
  /// and the caller calls the store where waiting is fine. Store calls after the first one wait
  /// as usual.
  pub fn now<T>(&self, f: impl AsyncFnOnce(&Store) -> Result<T>) -> Option<Result<T>> {
    match self {
      // SQLite's futures do their work when first polled.
      Store::Sqlite(s) => s.try_now(|| block_on(f(self))),
      // Every call is a network round trip that may wait: never on the caller's thread.
      Store::Postgres(_) => None,
    }
  }

  /// `get_session` if it can be answered without waiting (see [`Store::now`]); `None` means "ask
  /// again the waiting way". Meant for the JavaScript thread: a point read by primary key takes
  /// microseconds, less than a trip to another thread and back.
  pub fn get_session_now(&self, id: &str, user_id: &str) -> Option<Result<Option<Session>>> {
    self.now(async |s| s.get_session(id, user_id).await)
  }

  /// `window_for`, answered without waiting or not at all, as `get_session_now` is.
  pub fn window_for_now(&self, model: &str) -> Option<Result<Option<u64>>> {
    self.now(async |s| s.window_for(model).await)
  }
}

/// How long a store call may keep its caller waiting ([`Store::call`]). The third policy, never
/// waiting (answered right here or not at all, for the JavaScript thread), is [`Store::now`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
  /// A point read or small write (by primary key, a few rows): on SQLite, run right here, on the
  /// tokio worker, when it can go through without waiting, because it takes tens of
  /// microseconds, less than a hop to the blocking pool and back; else on the blocking pool.
  /// (Not `block_in_place`: that can turn this worker into a pool thread that exits when idle,
  /// and a CLI spawned from a thread gets its parent-death signal when that thread exits.)
  Briefly,
  /// A call that may wait (a scan, a lock): on SQLite, on the blocking pool.
  Blocking,
}

/// `.wait()` on a store call: [`block_on`] it (tests, and code on a thread that may block).
pub trait Blocking: std::future::Future + Sized {
  /// Waits for the call on this thread.
  fn wait(self) -> Self::Output {
    block_on(self)
  }
}

impl<F: std::future::Future> Blocking for F {}

/// Waits for a store call on this thread, for the threads that may block: tests, the addon's
/// constructors. It parks the thread between polls (no nested runtime: it works on any thread,
/// a tokio worker's included), inside a small runtime's context of its own that the connection
/// pool's timers need.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
  use std::sync::OnceLock;
  use std::task::{Context, Poll, Wake, Waker};
  /// Wakes the parked thread.
  struct Unpark(std::thread::Thread);
  impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
      self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
      self.0.unpark();
    }
  }
  static TIMERS: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
  let timers = TIMERS
    .get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("csm-store-wait").enable_all().build().ok());
  let _entered = timers.as_ref().map(|rt| rt.enter());
  let mut f = std::pin::pin!(f);
  let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
  let mut cx = Context::from_waker(&waker);
  loop {
    if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
      return v;
    }
    std::thread::park();
  }
}
