//! The session store: [`Store`] is the one interface the manager calls, whatever database holds
//! the sessions; each backend lives in its own module and the manager never learns which one it
//! has.
//!
//! - [`SqliteStore`] (this module with `sessions.rs`, `leases.rs`, `meter.rs`, `schema.rs`): one
//!   file shared by every process of a server. WAL mode, a busy timeout and `BEGIN IMMEDIATE` for
//!   every write, so concurrent writers queue instead of failing; the schema is versioned with
//!   `PRAGMA user_version` and migrated forward on open.
//! - [`PgStore`] (`postgres.rs`): one PostgreSQL database shared by several nodes, chosen by a
//!   `postgres://` / `postgresql://` `databaseUrl`; leases with fencing tokens on the database
//!   clock.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use serde::Serialize;

use crate::error::{Error, Result};

mod budgets;
mod inbox;
mod leases;
mod meter;
mod postgres;
mod schema;
mod sessions;
mod warm_holds;

pub use budgets::{
  Admit, Budget, BudgetDefaults, BudgetKey, CallAdmit, CallTokens, UsageQuery, UsageRow, PERIODS as BUDGET_PERIODS, SCOPES as BUDGET_SCOPES,
};
pub use inbox::{Delivery, Receipt};
pub use postgres::{is_postgres_url, validate_schema as validate_pg_schema, PgStore, PG_SCHEMA_VERSION};
use schema::MIGRATIONS;
pub use schema::SCHEMA_VERSION;

/// How long a writer waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where this thread is in a [`Store::now`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Now {
  /// Not in one: store calls wait for locks as usual.
  Off,
  /// Nothing done yet: the next store call gives up instead of waiting.
  Trying,
  /// A store call went through: the rest wait as usual.
  Done,
  /// A store call would have waited and gave up.
  WouldBlock,
}

thread_local! {
  static NOW: std::cell::Cell<Now> = const { std::cell::Cell::new(Now::Off) };
}

fn would_block() -> Error {
  NOW.with(|n| n.set(Now::WouldBlock));
  Error::store("the store is busy (the caller waits where it may)")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
  SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `execute` through the connection's statement cache: the statements every task runs are
/// parsed and planned once per connection.
pub(crate) fn exec<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
  c.prepare_cached(sql)?.execute(params)
}

/// Whether a query returns a row, through the statement cache.
pub(crate) fn exists<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> Result<bool> {
  Ok(c.prepare_cached(sql)?.query_row(params, |_| Ok(())).optional()?.is_some())
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
}

pub(crate) const SESSION_COLUMNS: &str = "id, project_id, user_id, status, parent_id, title, model, working_directory, \
  created_at, updated_at, last_active_at, task_count, total_cost_usd, input_tokens, output_tokens, \
  cache_read_tokens, cache_creation_tokens, context_tokens, context_window, context_source, \
  context_measured_at, materialized, cli_cost_watermark, config_dir";

pub(crate) fn session_from_row(r: &Row<'_>) -> rusqlite::Result<Session> {
  let context_tokens: Option<i64> = r.get(17)?;
  let context = match context_tokens {
    Some(tokens) => Some(ContextSnapshot {
      tokens: tokens as u64,
      window: r.get::<_, Option<i64>>(18)?.unwrap_or(0) as u64,
      source: r.get::<_, Option<String>>(19)?.unwrap_or_else(|| "estimate".into()),
      measured_at: r.get::<_, Option<i64>>(20)?.unwrap_or(0),
    }),
    None => None,
  };
  Ok(Session {
    id: r.get(0)?,
    project_id: r.get(1)?,
    user_id: r.get(2)?,
    status: r.get(3)?,
    parent_id: r.get(4)?,
    title: r.get(5)?,
    model: r.get(6)?,
    working_directory: r.get(7)?,
    created_at: r.get(8)?,
    updated_at: r.get(9)?,
    last_active_at: r.get(10)?,
    task_count: r.get::<_, i64>(11)? as u64,
    total_cost_usd: r.get(12)?,
    usage: Usage {
      input_tokens: r.get::<_, i64>(13)? as u64,
      output_tokens: r.get::<_, i64>(14)? as u64,
      cache_read_input_tokens: r.get::<_, i64>(15)? as u64,
      cache_creation_input_tokens: r.get::<_, i64>(16)? as u64,
    },
    context,
    materialized: r.get::<_, i64>(21)? != 0,
    cli_cost_watermark: r.get(22)?,
    config_dir: r.get(23)?,
  })
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
  /// Keep the session's lease: the CLI is still exiting, and [`Store::release_lease`] frees it.
  pub keep_lease: bool,
  /// The context window the CLI reported for a model, to remember (see [`Store::window_for`]).
  pub window: Option<(String, u64)>,
  /// Compactions the task did.
  pub compactions: Vec<Compaction>,
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

/// One line of a session's transcript as the store keeps it (PostgreSQL; see `transcripts.rs`).
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

/// A task about to start, as [`Store::begin_task`] records it.
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

/// What [`Store::begin_task`] did.
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

/// The store. Methods block; callers run them off the JavaScript thread.
pub struct SqliteStore {
  conn: Mutex<Connection>,
  path: PathBuf,
  /// The file's identity when opened: a file deleted or replaced under an open connection is
  /// caught before work is done on a copy no other process sees.
  identity: Option<(u64, u64)>,
  /// Held open so the inode cannot be reused by a replacement file while this store lives.
  /// Declared after `conn`: it closes after the connection, so SQLite's POSIX locks (which any
  /// close of the file releases) are never dropped under a live connection.
  _pin: Option<std::fs::File>,
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
  #[cfg(unix)]
  {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
  }
  #[cfg(not(unix))]
  {
    let _ = path;
    None
  }
}

fn store_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
  Error::store(format!("{what} {}: {e}", path.display()))
}

impl SqliteStore {
  /// Opens (creating if needed) the database at `path` and migrates it. The folder must exist.
  /// A file that is not a SQLite database is reported, never overwritten.
  pub fn open(path: &Path) -> Result<SqliteStore> {
    if path.as_os_str().is_empty() {
      return Err(Error::invalid("databasePath must not be empty"));
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
      return Err(Error::store(format!(
        "cannot open the session store {}: the folder {} does not exist",
        path.display(),
        parent.display()
      )));
    }
    if path.is_dir() {
      return Err(Error::store(format!("cannot open the session store {}: it is a folder, not a file", path.display())));
    }
    let conn = Connection::open_with_flags(
      path,
      OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| store_err(path, "cannot open the session store", e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| store_err(path, "cannot configure the session store", e))?;
    // Read before writing anything: a file that is not a database fails here, untouched.
    let version: i64 =
      conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| store_err(path, "cannot read the session store", e))?;
    if version > SCHEMA_VERSION {
      return Err(Error::store(format!(
        "the session store {} has schema version {version}, newer than this build's {SCHEMA_VERSION}: upgrade claude-session-manager",
        path.display()
      )));
    }
    // Switching to WAL needs a moment alone with the file; when several processes open a new
    // database at once, the losers retry instead of failing.
    let wal_deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
      let mode: rusqlite::Result<String> = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0));
      if mode.as_deref().map(|m| m.eq_ignore_ascii_case("wal")).unwrap_or(false) {
        break;
      }
      match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
        Ok(m) if m.eq_ignore_ascii_case("wal") => break,
        Err(rusqlite::Error::SqliteFailure(f, _))
          if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            && std::time::Instant::now() < wal_deadline =>
        {
          std::thread::sleep(Duration::from_millis(10));
        }
        Ok(m) => return Err(Error::store(format!("cannot enable WAL on the session store {}: journal mode stayed {m}", path.display()))),
        Err(e) => return Err(store_err(path, "cannot enable WAL on the session store", e)),
      }
    }
    conn
      .pragma_update(None, "foreign_keys", "ON")
      .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
      .map_err(|e| store_err(path, "cannot configure the session store", e))?;
    // A file this process may only read (e.g. `chmod 444` for a non-root user) opens, and every
    // write would fail later: say so now, with the path.
    if conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
      return Err(Error::store(format!(
        "the session store {} is read-only for this process (check the file's and its folder's permissions)",
        path.display()
      )));
    }
    // The statements a task runs are prepared once per connection, not on every call.
    conn.set_prepared_statement_cache_capacity(64);
    let pin = std::fs::File::open(path).ok();
    let identity = file_identity(path);
    let mut store = SqliteStore { conn: Mutex::new(conn), path: path.to_path_buf(), identity, _pin: pin };
    store.migrate()?;
    Ok(store)
  }

  /// The file this store lives in.
  pub fn path(&self) -> &Path {
    &self.path
  }

  fn migrate(&mut self) -> Result<()> {
    let path = self.path.clone();
    let conn = self.conn.get_mut().map_err(|_| Error::internal("store lock poisoned"))?;
    let tx = conn
      .transaction_with_behavior(TransactionBehavior::Immediate)
      .map_err(|e| store_err(&path, "cannot migrate the session store", e))?;
    // Re-read inside the write lock: another process may have migrated meanwhile.
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
      tx.execute_batch(sql).map_err(|e| store_err(&path, &format!("migration {} -> {} failed on", i, i + 1), e))?;
    }
    if version < SCHEMA_VERSION {
      tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit().map_err(|e| store_err(&path, "cannot migrate the session store", e))?;
    Ok(())
  }

  pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
    let trying = NOW.with(|n| n.get()) == Now::Trying;
    let mut conn = if trying {
      match self.conn.try_lock() {
        Ok(c) => c,
        Err(std::sync::TryLockError::WouldBlock) => return Err(would_block()),
        Err(std::sync::TryLockError::Poisoned(_)) => return Err(Error::internal("store lock poisoned")),
      }
    } else {
      self.conn.lock().map_err(|_| Error::internal("store lock poisoned"))?
    };
    if self.identity.is_some() && file_identity(&self.path) != self.identity {
      return Err(Error::store(format!(
        "the session store {} was deleted or replaced while open; nothing was written. Restore the file or create a new SessionManager",
        self.path.display()
      )));
    }
    if !trying {
      return f(&mut conn).map_err(|e| self.named(e));
    }
    // SQLite calls this instead of waiting for another process's lock: give up at once.
    conn.busy_handler(Some(|_| {
      NOW.with(|n| n.set(Now::WouldBlock));
      false
    }))?;
    let r = f(&mut conn);
    let restored = conn.busy_timeout(BUSY_TIMEOUT);
    if NOW.with(|n| n.get()) == Now::Trying {
      // It went through: whatever follows in the same `now` call runs to the end, waiting if it
      // must, so that a call is never half done and then run again.
      NOW.with(|n| n.set(Now::Done));
    }
    restored?;
    r.map_err(|e| self.named(e))
  }

  /// A SQLite error (`session store: database or disk is full`) with the file it is about.
  fn named(&self, e: Error) -> Error {
    match e.message.strip_prefix("session store: ") {
      Some(rest) if e.code == crate::error::ErrorCode::StoreError => Error::store(format!("session store {}: {rest}", self.path.display())),
      _ => e,
    }
  }

  /// Runs `f` (which makes store calls on this store) on this thread if its first store call
  /// can go through without waiting: the connection is free and SQLite needs no lock that
  /// another process holds. `None` when it would have waited; nothing was done then (a write
  /// takes its lock first, with `BEGIN IMMEDIATE`), and the caller runs `f` where waiting is
  /// fine. Store calls after the first one wait as usual. See [`Store::now`].
  pub(crate) fn try_now<T>(&self, f: impl FnOnce() -> Result<T>) -> Option<Result<T>> {
    /// Puts the thread's state back even if `f` panics (a caught panic must not leave later
    /// store calls on this thread in "give up" mode).
    struct Restore(Now);
    impl Drop for Restore {
      fn drop(&mut self) {
        NOW.with(|n| n.set(self.0));
      }
    }
    let _restore = Restore(NOW.with(|n| n.replace(Now::Trying)));
    let r = f();
    let gave_up = NOW.with(|n| n.get()) == Now::WouldBlock;
    (!gave_up).then_some(r)
  }

  pub(crate) fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
    self.with(|conn| {
      let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
      let out = f(&tx)?;
      tx.commit()?;
      Ok(out)
    })
  }

  /// The schema version of the open file.
  pub fn schema_version(&self) -> Result<i64> {
    self.with(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
  }
}

/// The session store the manager uses: one backend behind the same methods. Methods block; the
/// manager runs them off the JavaScript thread (or, through [`Store::now`], right where it is
/// when that cannot wait).
pub enum Store {
  /// One SQLite file (the default).
  Sqlite(SqliteStore),
  /// A PostgreSQL database shared by several nodes (`databaseUrl`).
  Postgres(PgStore),
}

/// Forwards each listed method to the backend.
macro_rules! dispatch {
  ($( $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty; )*) => {
    impl Store {
      $(
        $(#[$m])*
        pub fn $name(&self $(, $arg: $ty)*) -> $ret {
          match self {
            Store::Sqlite(s) => s.$name($($arg),*),
            Store::Postgres(p) => p.$name($($arg),*),
          }
        }
      )*
    }
  };
}

dispatch! {
  /// Creates a session.
  fn create_session(&self, s: &NewSession) -> Result<Session>;
  /// One session of one user; another user's session is `None`, as a missing one is.
  fn get_session(&self, id: &str, user_id: &str) -> Result<Option<Session>>;
  /// Sessions of a user, newest activity first.
  fn list_sessions(&self, q: &ListQuery) -> Result<Vec<Session>>;
  /// The newest active session of a user's project, or a new one made from `new`, atomically.
  fn get_or_create(&self, new: &NewSession, prefer_active: bool) -> Result<(Session, bool)>;
  /// Archives the user's active sessions of the project and creates `new`, atomically.
  fn start_fresh(&self, new: &NewSession) -> Result<(Session, u64)>;
  /// Archives one session.
  fn archive_session(&self, id: &str, user_id: &str) -> Result<Session>;
  /// Deletes one session with its tasks and compactions; a session running a task is busy.
  fn delete_session(&self, id: &str, user_id: &str) -> Result<()>;
  /// Deletes idle sessions; returns how many.
  fn cleanup(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<u64>;
  /// Deletes idle sessions; returns them.
  fn cleanup_sessions(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<Vec<Session>>;
  /// Counts a user's sessions.
  fn count_sessions(&self, user_id: &str, project_id: Option<&str>) -> Result<u64>;
  /// Replaces the context snapshot of a session.
  fn set_context(&self, id: &str, ctx: &ContextSnapshot) -> Result<()>;
  /// Whether the session's lease is held past its task's end (that task's CLI is exiting).
  fn lease_kept_after_end(&self, session_id: &str) -> Result<bool>;
  /// Takes the session's lease and inserts the task row as `running`, atomically, unless
  /// another live task holds the lease or `start.max_running` live leases are held across the
  /// database (counted and taken in one step, so concurrent starters never exceed it).
  fn begin_task(&self, session_id: &str, start: &TaskStart<'_>) -> Result<Begin>;
  /// Extends a held lease; false when it is no longer this task's.
  fn renew_lease(&self, session_id: &str, task_id: &str, ttl: Duration) -> Result<bool>;
  /// Ends a task: its row, the session's totals, the context snapshot, the lease.
  fn finish_task(&self, session_id: &str, task_id: &str, end: &TaskEnd, cli_cost_watermark: Option<f64>) -> Result<()>;
  /// Frees the lease a task kept past its end.
  fn release_lease(&self, session_id: &str, task_id: &str) -> Result<()>;
  /// Marks `running` tasks whose holder is gone as `interrupted`; returns how many.
  fn recover_interrupted(&self, is_alive: &dyn Fn(u32) -> bool) -> Result<u64>;
  /// Tasks of a session, oldest first.
  fn list_tasks(&self, session_id: &str) -> Result<Vec<TaskRecord>>;
  /// The last context window reported for a model, if any.
  fn window_for(&self, model: &str) -> Result<Option<u64>>;
  /// Compactions of a session, oldest first.
  fn list_compactions(&self, session_id: &str) -> Result<Vec<Compaction>>;
  /// The schema version of the open store.
  fn schema_version(&self) -> Result<i64>;
  /// The newest transcript `seq` stored for a session (0: none; always 0 on SQLite).
  fn transcript_head(&self, session_id: &str) -> Result<i64>;
  /// Appends transcript lines for a task, fenced by its lease; false when it lost the lease.
  fn append_transcript(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool>;
  /// Appends lines a task's CLI wrote after the task ended, unless another task took the
  /// session's lease since; false then.
  fn append_transcript_after_end(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool>;
  /// A session's stored transcript lines after `after` (0: all), in order (none on SQLite).
  fn load_transcript(&self, session_id: &str, after: i64) -> Result<Vec<TranscriptEntry>>;
  /// How many lines of one transcript file of a session are stored.
  fn transcript_len(&self, session_id: &str, subpath: &str) -> Result<i64>;
  /// The bytes of every stored transcript line of a session (what `load_transcript(id, 0)`
  /// returns), to refuse a load that would not fit before it is made.
  fn transcript_bytes(&self, session_id: &str) -> Result<i64>;
  /// The task's manager starts reading its inbox (`inbox.rs`): it takes steering messages and
  /// answers to its permission requests from other processes and nodes.
  fn inbox_open(&self, session_id: &str, task_id: &str) -> Result<()>;
  /// The task's manager stops reading its inbox: its pending requests go, messages not yet
  /// handled are refused.
  fn inbox_close(&self, session_id: &str, task_id: &str) -> Result<()>;
  /// Records a permission request of the task as pending.
  fn inbox_ask(&self, session_id: &str, task_id: &str, request_id: &str) -> Result<()>;
  /// A permission request is settled: no longer pending.
  fn inbox_forget(&self, session_id: &str, request_id: &str) -> Result<()>;
  /// Writes the answer (JSON) to a pending request not yet answered; false when there is none.
  fn inbox_answer(&self, session_id: &str, request_id: &str, answer: &str) -> Result<bool>;
  /// Leaves a message for the session's watched running task: its id, or `None` when none runs.
  fn inbox_send(&self, session_id: &str, text: &str) -> Result<Option<i64>>;
  /// Where a message left by `inbox_send` is; its row goes once it is steered or refused.
  fn inbox_receipt(&self, id: i64) -> Result<Receipt>;
  /// What waits for a task: answers to its permission requests, messages not yet handled.
  fn inbox_poll(&self, session_id: &str, task_id: &str) -> Result<Vec<Delivery>>;
  /// Records whether a message was steered into its task.
  fn inbox_mark(&self, id: i64, steered: bool) -> Result<()>;
  /// This manager keeps an idle warm CLI of the session (`warm_holds.rs`), until `ttl` from now.
  fn warm_hold(&self, session_id: &str, owner: &Owner, ttl: Duration) -> Result<()>;
  /// The manager's warm CLI of the session is gone.
  fn warm_release(&self, session_id: &str, owner_id: &str) -> Result<()>;
  /// Extends every warm hold of the manager by `ttl` from now.
  fn warm_renew(&self, owner_id: &str, ttl: Duration) -> Result<()>;
  /// The sessions whose warm CLI another manager wants this one to give up.
  fn warm_wanted(&self, owner_id: &str) -> Result<Vec<String>>;
  /// Asks the other managers keeping a warm CLI of the session to give it up; how many are left.
  fn warm_elsewhere(&self, session_id: &str, owner_id: &str, is_alive: &dyn Fn(u32) -> bool) -> Result<u64>;
  /// Checks every spend cap that applies to a model call against its reserve and records the
  /// call at its reserve, atomically (`budgets.rs`).
  fn admit_call(&self, call: &CallAdmit<'_>, defaults: &BudgetDefaults) -> Result<Admit>;
  /// Records what an admitted call really cost.
  fn settle_call(&self, id: i64, model: &str, t: &CallTokens, usd: f64) -> Result<()>;
  /// Sets (or replaces) a spend cap.
  fn set_budget(&self, k: &BudgetKey, usd: f64, period: Option<&str>) -> Result<()>;
  /// A stored spend cap with its scope's spend in the current period.
  fn get_budget(&self, k: &BudgetKey) -> Result<Option<Budget>>;
  /// What a scope spent in the current `period`, and when that period started.
  fn spent_in(&self, k: &BudgetKey, period: Option<&str>) -> Result<(f64, i64)>;
  /// Deletes a spend cap; whether there was one.
  fn delete_budget(&self, k: &BudgetKey) -> Result<bool>;
  /// The ledger of model calls summed by day, model or session.
  fn usage_report(&self, q: &UsageQuery) -> Result<Vec<UsageRow>>;
}

/// SQLite serves one machine, where the CLI's transcript file is the conversation: there is
/// nothing to carry to another node, so the transcript methods store nothing (the manager does
/// not mirror on this backend; see `Store::shares_transcripts`).
impl SqliteStore {
  pub fn transcript_head(&self, _session_id: &str) -> Result<i64> {
    Ok(0)
  }
  pub fn append_transcript(&self, _session_id: &str, _task_id: &str, _entries: &[TranscriptEntry]) -> Result<bool> {
    Ok(true)
  }
  pub fn append_transcript_after_end(&self, _session_id: &str, _task_id: &str, _entries: &[TranscriptEntry]) -> Result<bool> {
    Ok(true)
  }
  pub fn load_transcript(&self, _session_id: &str, _after: i64) -> Result<Vec<TranscriptEntry>> {
    Ok(vec![])
  }
  pub fn transcript_len(&self, _session_id: &str, _subpath: &str) -> Result<i64> {
    Ok(0)
  }
  pub fn transcript_bytes(&self, _session_id: &str) -> Result<i64> {
    Ok(0)
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

  /// [`Store::begin_task`] without a database-wide limit: true when the task started.
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
    matches!(self, Store::Postgres(_))
  }

  /// Which backend this is: `sqlite` or `postgres`.
  pub fn backend(&self) -> &'static str {
    match self {
      Store::Sqlite(_) => "sqlite",
      Store::Postgres(_) => "postgres",
    }
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
