//! The SQLite session store: one file shared by every process of a server. WAL mode, a busy
//! timeout and `BEGIN IMMEDIATE` for every write, so concurrent writers queue instead of failing;
//! the schema is versioned with `PRAGMA user_version` and migrated forward on open.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use serde::Serialize;

use crate::error::{Error, Result};

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

/// Forward migrations; entry `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
  // 0 -> 1: the first release: sessions only.
  r#"
  CREATE TABLE sessions (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'archived')),
    parent_id TEXT,
    title TEXT,
    model TEXT NOT NULL,
    working_directory TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL
  );
  CREATE INDEX sessions_by_user ON sessions (user_id, last_active_at DESC);
  "#,
  // 1 -> 2: tasks, compactions, leases, totals and the context snapshot.
  r#"
  ALTER TABLE sessions ADD COLUMN task_count INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN total_cost_usd REAL NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN cache_creation_tokens INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN context_tokens INTEGER;
  ALTER TABLE sessions ADD COLUMN context_window INTEGER;
  ALTER TABLE sessions ADD COLUMN context_source TEXT;
  ALTER TABLE sessions ADD COLUMN context_measured_at INTEGER;
  ALTER TABLE sessions ADD COLUMN materialized INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE sessions ADD COLUMN cli_cost_watermark REAL NOT NULL DEFAULT 0;
  CREATE INDEX sessions_by_project ON sessions (user_id, project_id, status, last_active_at DESC);
  CREATE INDEX sessions_by_parent ON sessions (parent_id);

  CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN
      ('running', 'succeeded', 'failed', 'aborted', 'timed_out', 'interrupted')),
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    model TEXT,
    turns INTEGER,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    cli_reported_cost_usd REAL,
    duration_api_ms INTEGER,
    error_code TEXT,
    error_message TEXT,
    cli_version TEXT,
    owner_id TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'task'
  );
  CREATE INDEX tasks_by_session ON tasks (session_id, started_at);
  CREATE INDEX tasks_by_status ON tasks (status);

  CREATE TABLE compactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    task_id TEXT,
    trigger TEXT NOT NULL CHECK (trigger IN ('manual', 'auto')),
    pre_tokens INTEGER,
    post_tokens INTEGER,
    started_at INTEGER NOT NULL,
    duration_ms INTEGER
  );
  CREATE INDEX compactions_by_session ON compactions (session_id, started_at);

  CREATE TABLE leases (
    session_id TEXT PRIMARY KEY NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    owner_id TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL
  );
  "#,
  // 2 -> 3: per-tenant CLI configuration folders.
  r#"
  ALTER TABLE sessions ADD COLUMN config_dir TEXT;
  "#,
  // 3 -> 4: the context window the CLI last reported per model, for sessions not yet measured.
  r#"
  CREATE TABLE model_windows (
    model TEXT PRIMARY KEY NOT NULL,
    context_window INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
  );
  "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
  SystemTime::now()
    .duration_since(UNIX_EPOCH)
    .map(|d| d.as_millis() as i64)
    .unwrap_or(0)
}

/// `execute` through the connection's statement cache: the statements every task runs are
/// parsed and planned once per connection.
fn exec<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
  c.prepare_cached(sql)?.execute(params)
}

/// Whether a query returns a row, through the statement cache.
fn exists<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> Result<bool> {
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

const SESSION_COLUMNS: &str = "id, project_id, user_id, status, parent_id, title, model, working_directory, \
  created_at, updated_at, last_active_at, task_count, total_cost_usd, input_tokens, output_tokens, \
  cache_read_tokens, cache_creation_tokens, context_tokens, context_window, context_source, \
  context_measured_at, materialized, cli_cost_watermark, config_dir";

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<Session> {
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
#[derive(Debug, Clone)]
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

/// Who holds work in this store: one per manager instance.
#[derive(Debug, Clone)]
pub struct Owner {
  pub id: String,
  pub pid: u32,
}

/// The store. Methods block; callers run them off the JavaScript thread.
pub struct Store {
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

impl Store {
  /// Opens (creating if needed) the database at `path` and migrates it. The folder must exist.
  /// A file that is not a SQLite database is reported, never overwritten.
  pub fn open(path: &Path) -> Result<Store> {
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
      return Err(Error::store(format!(
        "cannot open the session store {}: it is a folder, not a file",
        path.display()
      )));
    }
    let conn = Connection::open_with_flags(
      path,
      OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| store_err(path, "cannot open the session store", e))?;
    conn
      .busy_timeout(BUSY_TIMEOUT)
      .map_err(|e| store_err(path, "cannot configure the session store", e))?;
    // Read before writing anything: a file that is not a database fails here, untouched.
    let version: i64 = conn
      .query_row("PRAGMA user_version", [], |r| r.get(0))
      .map_err(|e| store_err(path, "cannot read the session store", e))?;
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
    // The statements a task runs are prepared once per connection, not on every call.
    conn.set_prepared_statement_cache_capacity(64);
    let pin = std::fs::File::open(path).ok();
    let identity = file_identity(path);
    let mut store = Store { conn: Mutex::new(conn), path: path.to_path_buf(), identity, _pin: pin };
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
      tx.execute_batch(sql)
        .map_err(|e| store_err(&path, &format!("migration {} -> {} failed on", i, i + 1), e))?;
    }
    if version < SCHEMA_VERSION {
      tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit().map_err(|e| store_err(&path, "cannot migrate the session store", e))?;
    Ok(())
  }

  fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
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
      return f(&mut conn);
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
    r
  }

  /// Runs `f` on this thread if its first store call can go through without waiting: the
  /// connection is free and SQLite needs no lock that another process holds. `None` when it
  /// would have waited; nothing was done then (a write takes its lock first, with
  /// `BEGIN IMMEDIATE`), and the caller runs `f` where waiting is fine. Store calls after the
  /// first one wait as usual.
  pub fn now<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Option<Result<T>> {
    /// Puts the thread's state back even if `f` panics (a caught panic must not leave later
    /// store calls on this thread in "give up" mode).
    struct Restore(Now);
    impl Drop for Restore {
      fn drop(&mut self) {
        NOW.with(|n| n.set(self.0));
      }
    }
    let _restore = Restore(NOW.with(|n| n.replace(Now::Trying)));
    let r = f(self);
    let gave_up = NOW.with(|n| n.get()) == Now::WouldBlock;
    (!gave_up).then_some(r)
  }

  fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
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

  // ---- sessions -------------------------------------------------------------------------

  fn insert_session(tx: &rusqlite::Transaction<'_>, s: &NewSession, now: i64) -> Result<()> {
    if exists(tx, "SELECT 1 FROM sessions WHERE id = ?1", [&s.id])? {
      return Err(Error::invalid(format!("a session with id {} already exists", s.id)));
    }
    let ctx = s.context.as_ref();
    tx.prepare_cached(
      "INSERT INTO sessions (id, project_id, user_id, status, parent_id, title, model, working_directory,
         created_at, updated_at, last_active_at, context_tokens, context_window, context_source, context_measured_at,
         cli_cost_watermark, config_dir)
       VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6, ?7, ?8, ?8, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        s.id,
        s.project_id,
        s.user_id,
        s.parent_id,
        s.title,
        s.model,
        s.working_directory,
        now,
        ctx.map(|c| c.tokens as i64),
        ctx.map(|c| c.window as i64),
        ctx.map(|c| c.source.clone()),
        ctx.map(|c| c.measured_at),
        s.cli_cost_watermark,
        s.config_dir,
      ])?;
    Ok(())
  }

  fn get_in(tx: &Connection, id: &str, user_id: &str) -> Result<Option<Session>> {
    Ok(
      tx.prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1 AND user_id = ?2"))?
        .query_row(params![id, user_id], session_from_row)
        .optional()?,
    )
  }

  /// Creates a session.
  pub fn create_session(&self, s: &NewSession) -> Result<Session> {
    self.write(|tx| {
      Self::insert_session(tx, s, now_ms())?;
      Self::get_in(tx, &s.id, &s.user_id)?.ok_or_else(|| Error::internal("inserted session vanished"))
    })
  }

  /// One session of one user; another user's session is `None`, as a missing one is.
  pub fn get_session(&self, id: &str, user_id: &str) -> Result<Option<Session>> {
    self.with(|c| Self::get_in(c, id, user_id))
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

  /// Sessions of a user, newest activity first.
  pub fn list_sessions(&self, q: &ListQuery) -> Result<Vec<Session>> {
    self.with(|c| {
      let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1");
      let mut args: Vec<rusqlite::types::Value> = vec![q.user_id.clone().into()];
      if let Some(p) = &q.project_id {
        args.push(p.clone().into());
        sql += &format!(" AND project_id = ?{}", args.len());
      }
      if let Some(s) = &q.status {
        args.push(s.clone().into());
        sql += &format!(" AND status = ?{}", args.len());
      }
      if let Some(p) = &q.parent_id {
        args.push(p.clone().into());
        sql += &format!(" AND parent_id = ?{}", args.len());
      }
      args.push((q.limit as i64).into());
      args.push((q.offset as i64).into());
      sql += &format!(
        " ORDER BY last_active_at DESC, created_at DESC, id LIMIT ?{} OFFSET ?{}",
        args.len() - 1,
        args.len()
      );
      let mut stmt = c.prepare_cached(&sql)?;
      let rows = stmt.query_map(rusqlite::params_from_iter(args), session_from_row)?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }

  /// The newest active session of a user's project, or a new one made from `new` — atomically,
  /// so two processes asking at once get the same session.
  pub fn get_or_create(&self, new: &NewSession, prefer_active: bool) -> Result<(Session, bool)> {
    self.write(|tx| {
      if prefer_active {
        let found = tx
          .query_row(
            &format!(
              "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1 AND project_id = ?2 AND status = 'active'
               ORDER BY last_active_at DESC, created_at DESC LIMIT 1"
            ),
            params![new.user_id, new.project_id],
            session_from_row,
          )
          .optional()?;
        if let Some(s) = found {
          return Ok((s, false));
        }
      }
      Self::insert_session(tx, new, now_ms())?;
      let s = Self::get_in(tx, &new.id, &new.user_id)?.ok_or_else(|| Error::internal("inserted session vanished"))?;
      Ok((s, true))
    })
  }

  /// Archives the user's active sessions of the project and creates `new`, in one transaction.
  /// Returns the new session and how many were archived.
  pub fn start_fresh(&self, new: &NewSession) -> Result<(Session, u64)> {
    self.write(|tx| {
      let now = now_ms();
      let archived = tx.execute(
        "UPDATE sessions SET status = 'archived', updated_at = ?3
         WHERE user_id = ?1 AND project_id = ?2 AND status = 'active'",
        params![new.user_id, new.project_id, now],
      )?;
      Self::insert_session(tx, new, now)?;
      let s = Self::get_in(tx, &new.id, &new.user_id)?.ok_or_else(|| Error::internal("inserted session vanished"))?;
      Ok((s, archived as u64))
    })
  }

  /// Archives one session.
  pub fn archive_session(&self, id: &str, user_id: &str) -> Result<Session> {
    self.write(|tx| {
      let n = tx.execute(
        "UPDATE sessions SET status = 'archived', updated_at = ?3 WHERE id = ?1 AND user_id = ?2",
        params![id, user_id, now_ms()],
      )?;
      if n == 0 {
        return Err(Error::not_found(id));
      }
      Self::get_in(tx, id, user_id)?.ok_or_else(|| Error::not_found(id))
    })
  }

  /// Deletes one session with its tasks and compactions. A session with a running task is busy.
  pub fn delete_session(&self, id: &str, user_id: &str) -> Result<()> {
    self.write(|tx| {
      if Self::get_in(tx, id, user_id)?.is_none() {
        return Err(Error::not_found(id));
      }
      if Self::task_running(tx, id, now_ms())? {
        return Err(Error::new(
          crate::error::ErrorCode::SessionBusy,
          format!("session {id} is running a task; abort it or wait before deleting"),
        ));
      }
      tx.execute("UPDATE sessions SET parent_id = NULL WHERE parent_id = ?1", [id])?;
      tx.execute("DELETE FROM sessions WHERE id = ?1 AND user_id = ?2", params![id, user_id])?;
      Ok(())
    })
  }

  /// Deletes a user's sessions idle for longer than `max_age_ms` (only archived ones when
  /// `keep_active`) that run no task. Returns how many were deleted.
  pub fn cleanup(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<u64> {
    self.write(|tx| {
      let now = now_ms();
      let cutoff = now.saturating_sub(max_age_ms.min(i64::MAX as u64) as i64);
      let sql = "SELECT id FROM sessions s WHERE user_id = ?1 AND (?2 IS NULL OR project_id = ?2)
         AND last_active_at < ?3 AND (?4 = 0 OR status = 'archived')
         AND NOT EXISTS (SELECT 1 FROM leases l JOIN tasks t ON t.id = l.task_id
           WHERE l.session_id = s.id AND l.expires_at > ?5 AND t.status = 'running')";
      let ids: Vec<String> = tx
        .prepare(sql)?
        .query_map(params![user_id, project_id, cutoff, keep_active as i64, now], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
      for id in &ids {
        tx.execute("UPDATE sessions SET parent_id = NULL WHERE parent_id = ?1", [id])?;
        tx.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
      }
      Ok(ids.len() as u64)
    })
  }

  /// Counts a user's sessions (for cleanup reports).
  pub fn count_sessions(&self, user_id: &str, project_id: Option<&str>) -> Result<u64> {
    self.with(|c| {
      Ok(c.query_row(
        "SELECT COUNT(*) FROM sessions WHERE user_id = ?1 AND (?2 IS NULL OR project_id = ?2)",
        params![user_id, project_id],
        |r| r.get::<_, i64>(0),
      )? as u64)
    })
  }

  /// Replaces the context snapshot of a session (after a compaction, say).
  pub fn set_context(&self, id: &str, ctx: &ContextSnapshot) -> Result<()> {
    self.write(|tx| {
      tx.execute(
        "UPDATE sessions SET context_tokens = ?2, context_window = ?3, context_source = ?4,
           context_measured_at = ?5, updated_at = ?6 WHERE id = ?1",
        params![id, ctx.tokens as i64, ctx.window as i64, ctx.source, ctx.measured_at, now_ms()],
      )?;
      Ok(())
    })
  }

  // ---- leases -----------------------------------------------------------------------------

  fn lease_live(tx: &Connection, session_id: &str, now: i64) -> Result<bool> {
    exists(tx, "SELECT 1 FROM leases WHERE session_id = ?1 AND expires_at > ?2", params![session_id, now])
  }

  /// Whether a task of the session is running: its lease is live and its row not yet ended. A
  /// lease kept past the task's end (its CLI is exiting) does not make the session busy for
  /// deletion; it still keeps the next task waiting (`lease_live`).
  fn task_running(tx: &Connection, session_id: &str, now: i64) -> Result<bool> {
    exists(
      tx,
      "SELECT 1 FROM leases l JOIN tasks t ON t.id = l.task_id
       WHERE l.session_id = ?1 AND l.expires_at > ?2 AND t.status = 'running'",
      params![session_id, now],
    )
  }

  /// Whether the session's lease is held past its task's end (that task's CLI is exiting).
  pub fn lease_kept_after_end(&self, session_id: &str) -> Result<bool> {
    self.with(|c| {
      exists(
        c,
        "SELECT 1 FROM leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.session_id = ?1 AND l.expires_at > ?2 AND t.status != 'running'",
        params![session_id, now_ms()],
      )
    })
  }

  /// Takes the session's lease and inserts the task row as `running`, in one transaction.
  /// Returns false (and writes nothing) when another live task holds the lease.
  pub fn try_begin_task(
    &self,
    session_id: &str,
    task_id: &str,
    kind: &str,
    model: &str,
    owner: &Owner,
    ttl: Duration,
  ) -> Result<bool> {
    self.write(|tx| {
      let now = now_ms();
      if Self::lease_live(tx, session_id, now)? {
        return Ok(false);
      }
      // An expired lease belongs to a dead or stuck holder: its task is interrupted.
      Self::interrupt_expired(tx, session_id, now)?;
      exec(tx,
        "INSERT INTO leases (session_id, owner_id, owner_pid, task_id, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (session_id) DO UPDATE SET owner_id = ?2, owner_pid = ?3, task_id = ?4, expires_at = ?5",
        params![session_id, owner.id, owner.pid, task_id, now + ttl.as_millis() as i64],
      )?;
      exec(tx,
        "INSERT INTO tasks (id, session_id, status, started_at, model, owner_id, owner_pid, kind)
         VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7)",
        params![task_id, session_id, now, model, owner.id, owner.pid, kind],
      )?;
      Ok(true)
    })
  }

  fn interrupt_expired(tx: &Connection, session_id: &str, now: i64) -> Result<()> {
    exec(tx,
      "UPDATE tasks SET status = 'interrupted', ended_at = ?2, error_code = 'INTERRUPTED',
         error_message = 'the process running this task stopped before it ended'
       WHERE session_id = ?1 AND status = 'running'
         AND id IN (SELECT task_id FROM leases WHERE session_id = ?1 AND expires_at <= ?2)",
      params![session_id, now],
    )?;
    Ok(())
  }

  /// Records a task that ended before it could start (aborted while it waited for its session):
  /// one row with its final status, counted in the session's totals like any other.
  pub fn record_unstarted_task(&self, session_id: &str, task_id: &str, kind: &str, owner: &Owner, status: &str, code: &str, message: &str) -> Result<()> {
    self.write(|tx| {
      let now = now_ms();
      tx.execute(
        "INSERT INTO tasks (id, session_id, status, started_at, ended_at, owner_id, owner_pid, kind, error_code, error_message, turns)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9, 0)",
        params![task_id, session_id, status, now, owner.id, owner.pid, kind, code, message],
      )?;
      tx.execute("UPDATE sessions SET task_count = task_count + 1, updated_at = ?2 WHERE id = ?1", params![session_id, now])?;
      Ok(())
    })
  }

  /// Extends a held lease. Returns false when the lease is no longer this task's.
  pub fn renew_lease(&self, session_id: &str, task_id: &str, ttl: Duration) -> Result<bool> {
    self.write(|tx| {
      let n = tx.execute(
        "UPDATE leases SET expires_at = ?3 WHERE session_id = ?1 AND task_id = ?2",
        params![session_id, task_id, now_ms() + ttl.as_millis() as i64],
      )?;
      Ok(n == 1)
    })
  }

  /// Ends a task: writes its row, adds to the session's totals, replaces the context snapshot
  /// and frees the lease (unless `end.keep_lease`) — all in one transaction.
  pub fn finish_task(&self, session_id: &str, task_id: &str, end: &TaskEnd, cli_cost_watermark: Option<f64>) -> Result<()> {
    self.write(|tx| {
      let now = now_ms();
      let u = &end.usage;
      exec(tx,
        "UPDATE tasks SET status = ?2, ended_at = ?3, model = COALESCE(?4, model), turns = ?5,
           input_tokens = ?6, output_tokens = ?7, cache_read_tokens = ?8, cache_creation_tokens = ?9,
           cost_usd = ?10, cli_reported_cost_usd = ?11, duration_api_ms = ?12, error_code = ?13,
           error_message = ?14, cli_version = ?15
         WHERE id = ?1",
        params![
          task_id,
          end.status,
          now,
          end.model,
          end.turns.map(|t| t as i64),
          u.input_tokens as i64,
          u.output_tokens as i64,
          u.cache_read_input_tokens as i64,
          u.cache_creation_input_tokens as i64,
          end.cost_usd,
          end.cli_reported_cost_usd,
          end.duration_api_ms.map(|t| t as i64),
          end.error_code,
          end.error_message,
          end.cli_version,
        ],
      )?;
      exec(tx,
        "UPDATE sessions SET task_count = task_count + 1, total_cost_usd = total_cost_usd + ?2,
           input_tokens = input_tokens + ?3, output_tokens = output_tokens + ?4,
           cache_read_tokens = cache_read_tokens + ?5, cache_creation_tokens = cache_creation_tokens + ?6,
           last_active_at = ?7, updated_at = ?7, materialized = MAX(materialized, ?8),
           cli_cost_watermark = COALESCE(?9, cli_cost_watermark)
         WHERE id = ?1",
        params![
          session_id,
          end.cost_usd,
          u.input_tokens as i64,
          u.output_tokens as i64,
          u.cache_read_input_tokens as i64,
          u.cache_creation_input_tokens as i64,
          now,
          end.materialized as i64,
          cli_cost_watermark,
        ],
      )?;
      if let Some(ctx) = &end.context {
        exec(tx,
          "UPDATE sessions SET context_tokens = ?2, context_window = ?3, context_source = ?4, context_measured_at = ?5
           WHERE id = ?1",
          params![session_id, ctx.tokens as i64, ctx.window as i64, ctx.source, ctx.measured_at],
        )?;
      }
      if let Some((model, window)) = &end.window {
        Self::remember_window(tx, model, *window)?;
      }
      for c in &end.compactions {
        Self::add_compaction(tx, c)?;
      }
      if !end.keep_lease {
        exec(tx, "DELETE FROM leases WHERE session_id = ?1 AND task_id = ?2", params![session_id, task_id])?;
      }
      Ok(())
    })
  }

  /// Frees the lease a task kept past its end (see [`TaskEnd::keep_lease`]).
  pub fn release_lease(&self, session_id: &str, task_id: &str) -> Result<()> {
    self.write(|tx| {
      exec(tx, "DELETE FROM leases WHERE session_id = ?1 AND task_id = ?2", params![session_id, task_id])?;
      Ok(())
    })
  }

  /// Marks `running` tasks whose holder is gone as `interrupted` and frees their leases:
  /// tasks of this host's dead processes at once, any other when its lease expired.
  /// Returns how many tasks were marked.
  pub fn recover_interrupted(&self, is_alive: &dyn Fn(u32) -> bool) -> Result<u64> {
    self.write(|tx| {
      let now = now_ms();
      let running: Vec<(String, String, i64, Option<i64>)> = tx
        .prepare(
          "SELECT t.id, t.session_id, t.owner_pid, l.expires_at FROM tasks t
           LEFT JOIN leases l ON l.task_id = t.id WHERE t.status = 'running'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
      let mut n = 0;
      for (task_id, session_id, pid, expires) in running {
        let dead = !is_alive(pid as u32) || expires.map(|e| e <= now).unwrap_or(true);
        if dead {
          tx.execute(
            "UPDATE tasks SET status = 'interrupted', ended_at = ?2, error_code = 'INTERRUPTED',
               error_message = 'the process running this task stopped before it ended' WHERE id = ?1",
            params![task_id, now],
          )?;
          tx.execute("DELETE FROM leases WHERE task_id = ?1", [&task_id])?;
          tx.execute("UPDATE sessions SET updated_at = ?2 WHERE id = ?1", params![session_id, now])?;
          n += 1;
        }
      }
      // A lease kept past its task's end (the CLI was exiting) by a process that died since.
      let kept: Vec<(String, i64)> = tx
        .prepare("SELECT l.task_id, l.owner_pid FROM leases l JOIN tasks t ON t.id = l.task_id WHERE t.status != 'running'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
      for (task_id, pid) in kept {
        if !is_alive(pid as u32) {
          tx.execute("DELETE FROM leases WHERE task_id = ?1", [&task_id])?;
        }
      }
      Ok(n)
    })
  }

  /// Tasks of a session, oldest first.
  pub fn list_tasks(&self, session_id: &str) -> Result<Vec<TaskRecord>> {
    self.with(|c| {
      let mut stmt = c.prepare_cached(
        "SELECT id, session_id, status, kind, started_at, ended_at, model, turns, input_tokens, output_tokens,
           cache_read_tokens, cache_creation_tokens, cost_usd, error_code, error_message, cli_version
         FROM tasks WHERE session_id = ?1 ORDER BY started_at, rowid",
      )?;
      let rows = stmt.query_map([session_id], |r| {
        Ok(TaskRecord {
          id: r.get(0)?,
          session_id: r.get(1)?,
          status: r.get(2)?,
          kind: r.get(3)?,
          started_at: r.get(4)?,
          ended_at: r.get(5)?,
          model: r.get(6)?,
          turns: r.get::<_, Option<i64>>(7)?.map(|t| t as u64),
          usage: Usage {
            input_tokens: r.get::<_, i64>(8)? as u64,
            output_tokens: r.get::<_, i64>(9)? as u64,
            cache_read_input_tokens: r.get::<_, i64>(10)? as u64,
            cache_creation_input_tokens: r.get::<_, i64>(11)? as u64,
          },
          cost_usd: r.get(12)?,
          error_code: r.get(13)?,
          error_message: r.get(14)?,
          cli_version: r.get(15)?,
        })
      })?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }

  // ---- model windows ----------------------------------------------------------------------

  /// Remembers the context window the CLI reported for a model (as sessions name it); part of
  /// a task's end.
  fn remember_window(tx: &Connection, model: &str, window: u64) -> Result<()> {
    exec(
      tx,
      "INSERT INTO model_windows (model, context_window, updated_at) VALUES (?1, ?2, ?3)
       ON CONFLICT (model) DO UPDATE SET context_window = ?2, updated_at = ?3",
      params![model, window as i64, now_ms()],
    )?;
    Ok(())
  }

  /// The last window reported for a model, if any.
  pub fn window_for(&self, model: &str) -> Result<Option<u64>> {
    self.with(|c| {
      Ok(
        c.prepare_cached("SELECT context_window FROM model_windows WHERE model = ?1")?
          .query_row([model], |r| r.get::<_, i64>(0))
          .optional()?
          .map(|w| w as u64),
      )
    })
  }

  // ---- compactions ------------------------------------------------------------------------

  /// Records a compaction; part of a task's end.
  fn add_compaction(tx: &Connection, c: &Compaction) -> Result<()> {
    exec(tx,
      "INSERT INTO compactions (session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms)
       VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
      params![
        c.session_id,
        c.task_id,
        c.trigger,
        c.pre_tokens.map(|t| t as i64),
        c.post_tokens.map(|t| t as i64),
        c.started_at,
        c.duration_ms.map(|t| t as i64),
      ],
    )?;
    Ok(())
  }


  /// Compactions of a session, oldest first.
  pub fn list_compactions(&self, session_id: &str) -> Result<Vec<Compaction>> {
    self.with(|c| {
      let mut stmt = c.prepare_cached(
        "SELECT session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms
         FROM compactions WHERE session_id = ?1 ORDER BY started_at, id",
      )?;
      let rows = stmt.query_map([session_id], |r| {
        Ok(Compaction {
          session_id: r.get(0)?,
          task_id: r.get(1)?,
          trigger: r.get(2)?,
          pre_tokens: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
          post_tokens: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
          started_at: r.get(5)?,
          duration_ms: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
        })
      })?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }
}
