//! The SQLite session store: one file shared by every process of a server. WAL mode, a busy
//! timeout and `BEGIN IMMEDIATE` for every write, so concurrent writers queue instead of failing;
//! the schema is versioned with `PRAGMA user_version` and migrated forward on open
//! (`schema.rs`). One file per concern: `sessions.rs`, `leases.rs` (tasks and the lease),
//! `meter.rs`, `inbox.rs`, `warm_holds.rs`, `budgets.rs`, `events.rs`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use super::*;
use crate::error::{Error, Result};

mod branches;
mod budgets;
mod doorbell;
mod events;
mod inbox;
mod leases;
mod meter;
mod schema;
mod sessions;
mod warm_holds;

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

/// `execute` through the connection's statement cache: the statements every task runs are
/// parsed and planned once per connection.
pub(crate) fn exec<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
  c.prepare_cached(sql)?.execute(params)
}

/// Whether a query returns a row, through the statement cache.
pub(crate) fn exists<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> Result<bool> {
  Ok(c.prepare_cached(sql)?.query_row(params, |_| Ok(())).optional()?.is_some())
}

pub(crate) const SESSION_COLUMNS: &str = "id, project_id, user_id, status, parent_id, title, model, working_directory, \
  created_at, updated_at, last_active_at, task_count, total_cost_usd, input_tokens, output_tokens, \
  cache_read_tokens, cache_creation_tokens, context_tokens, context_window, context_source, \
  context_measured_at, materialized, cli_cost_watermark, config_dir, paused, lineage_id";

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
    paused: r.get(24)?,
    lineage_id: crate::store::lineage_or_self(r.get(25)?, r.get(0)?),
  })
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
  /// Added to the clock by the spend caps (`Budgets::shift_budget_clock`, for tests).
  budget_clock_ms: std::sync::atomic::AtomicI64,
  /// The reader of other processes' rings, while this store lives (`doorbell.rs`).
  listening: std::sync::OnceLock<std::sync::Arc<()>>,
  /// What names the file in the process's doorbell channels (`store/doorbell.rs`).
  pub(crate) scope: String,
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
    let mut store = SqliteStore {
      conn: Mutex::new(conn),
      path: path.to_path_buf(),
      identity,
      _pin: pin,
      budget_clock_ms: Default::default(),
      listening: Default::default(),
      scope: format!("sqlite:{}", std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).display()),
    };
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
}

/// SQLite serves one machine, where the CLI's transcript file is the conversation: it keeps no
/// transcripts (the manager does not mirror on this backend).
#[async_trait::async_trait]
impl Backend for SqliteStore {
  /// The schema version of the open file.
  async fn schema_version(&self) -> Result<i64> {
    self.with(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
  }
  fn transcripts(&self) -> Option<&dyn Transcripts> {
    None
  }
  fn file_backups(&self) -> Option<&dyn super::FileBackups> {
    None
  }
  fn name(&self) -> &'static str {
    "sqlite"
  }
}
