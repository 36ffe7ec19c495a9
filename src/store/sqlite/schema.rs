//! The schema, as forward migrations.

/// Forward migrations; entry `i` takes the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
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
  // 4 -> 5: ids of deleted sessions, never given out again (their transcripts must not be adopted).
  r#"
  CREATE TABLE retired_session_ids (
    id TEXT PRIMARY KEY NOT NULL,
    retired_at INTEGER NOT NULL
  );
  "#,
  // 5 -> 6: what is forwarded to the process running a task (`inbox.rs`): the task's `watch`
  // while it reads its inbox, its pending permission requests with their answer once given, and
  // steering messages with their outcome.
  r#"
  CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('watch', 'permission', 'message')),
    request_id TEXT,
    body TEXT,
    answer TEXT,
    created_at INTEGER NOT NULL
  );
  CREATE UNIQUE INDEX inbox_requests ON inbox (session_id, request_id) WHERE kind = 'permission';
  CREATE INDEX inbox_by_task ON inbox (task_id);
  CREATE INDEX inbox_by_session ON inbox (session_id, kind);
  "#,
  // 6 -> 7: which manager keeps an idle warm CLI of a session (`warm_holds.rs`).
  r#"
  CREATE TABLE warm_holds (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    owner_id TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    host_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    wanted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, owner_id)
  );
  CREATE INDEX warm_holds_by_owner ON warm_holds (owner_id);
  "#,
  // 7 -> 8: the key proxy's ledger of model calls and the spend caps (`budgets.rs`). No foreign
  // keys: a deleted session's spend still counts against its user's and project's caps.
  r#"
  CREATE TABLE model_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    usd REAL NOT NULL,
    reserved INTEGER NOT NULL DEFAULT 1,
    at INTEGER NOT NULL
  );
  CREATE INDEX model_calls_by_user ON model_calls (user_id, at);
  CREATE INDEX model_calls_by_project ON model_calls (user_id, project_id, at);
  CREATE INDEX model_calls_by_session ON model_calls (session_id, at);
  CREATE INDEX model_calls_by_task ON model_calls (task_id);

  CREATE TABLE budgets (
    scope TEXT NOT NULL CHECK (scope IN ('user', 'project', 'session')),
    user_id TEXT NOT NULL,
    project_id TEXT NOT NULL DEFAULT '',
    session_id TEXT NOT NULL DEFAULT '',
    usd REAL NOT NULL,
    period TEXT CHECK (period IN ('day', 'month')),
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (scope, user_id, project_id, session_id)
  );
  "#,
  // 8 -> 9: a project's cap across its users (a project budget with an empty user_id) sums the
  // ledger by project alone; the indexes a cap's spend is summed by cover the sum (`usd` in the
  // index: no row read per call); a session whose last task a spend cap stopped is paused (the
  // cap's scope) until a task on it ends otherwise.
  r#"
  DROP INDEX model_calls_by_user;
  CREATE INDEX model_calls_by_user ON model_calls (user_id, at, usd);
  DROP INDEX model_calls_by_project;
  CREATE INDEX model_calls_by_project ON model_calls (user_id, project_id, at, usd);
  DROP INDEX model_calls_by_session;
  CREATE INDEX model_calls_by_session ON model_calls (session_id, at, user_id, usd);
  CREATE INDEX model_calls_by_project_total ON model_calls (project_id, at, usd);
  ALTER TABLE sessions ADD COLUMN paused TEXT;
  "#,
  // 9 -> 10: the event log of a session's tasks (`events.rs`): its last number on the session
  // row (never reused once swept), one row per event; a stop requested for a running task.
  r#"
  ALTER TABLE sessions ADD COLUMN event_seq INTEGER NOT NULL DEFAULT 0;
  ALTER TABLE tasks ADD COLUMN abort_requested_at INTEGER;
  CREATE TABLE task_events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
  ) WITHOUT ROWID;
  CREATE INDEX task_events_by_task ON task_events (task_id);
  "#,
  // 10 -> 11: where a session branches (`branches.rs`): a fork's message, a pending rewind.
  r#"
  CREATE TABLE branch_points (
    session_id TEXT PRIMARY KEY NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    fork_at TEXT,
    resume_at TEXT,
    resume_drops TEXT
  );
  "#,
  // 11 -> 12: the doorbell (`doorbell.rs`): one row per ring, read by the other processes.
  r#"
  CREATE TABLE notices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL
  );
  "#,
  // 12 -> 13: a session cap covers the session's lineage (`store/budgets.rs`): a fork names the
  // root of its `parent_id` chain (kept when the parent is deleted), a ledger row of a fork's call
  // the root it was charged to; '' (the default, so that rows written without it stay valid) for
  // a root and its calls. A session cap is stored under the lineage's root. Existing rows are
  // filled in from the `parent_id` chains as they are now (only forks and their calls are
  // written); where several sessions of one lineage had caps, the strictest stays.
  r#"
  ALTER TABLE sessions ADD COLUMN lineage_id TEXT NOT NULL DEFAULT '';
  WITH RECURSIVE chain (id, root) AS (
    SELECT s.id, p.id FROM sessions s JOIN sessions p ON p.id = s.parent_id
      WHERE NOT EXISTS (SELECT 1 FROM sessions g WHERE g.id = p.parent_id)
    UNION
    SELECT s.id, c.root FROM sessions s JOIN chain c ON s.parent_id = c.id
  )
  UPDATE sessions SET lineage_id = chain.root FROM chain WHERE chain.id = sessions.id;

  ALTER TABLE model_calls ADD COLUMN lineage_id TEXT NOT NULL DEFAULT '';
  UPDATE model_calls SET lineage_id = (SELECT s.lineage_id FROM sessions s WHERE s.id = model_calls.session_id)
    WHERE session_id IN (SELECT id FROM sessions WHERE lineage_id != '');
  CREATE INDEX model_calls_by_lineage ON model_calls (lineage_id, at, user_id, usd) WHERE lineage_id != '';

  DELETE FROM budgets WHERE scope = 'session' AND (user_id, session_id) IN (
    SELECT user_id, session_id FROM (
      SELECT b.user_id, b.session_id,
        ROW_NUMBER() OVER (PARTITION BY b.user_id, COALESCE(NULLIF(s.lineage_id, ''), b.session_id) ORDER BY b.usd, b.session_id) AS n
      FROM budgets b LEFT JOIN sessions s ON s.id = b.session_id WHERE b.scope = 'session')
    WHERE n > 1);
  UPDATE budgets SET session_id = s.lineage_id FROM sessions s
    WHERE budgets.scope = 'session' AND s.id = budgets.session_id AND s.lineage_id != '';
  "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

#[cfg(test)]
mod tests {
  use super::MIGRATIONS;
  use crate::store::budgets::lineage_migration;
  use crate::store::{Blocking as _, Store};

  /// 12 -> 13 fills the lineage in from the `parent_id` chains as they were
  /// (`store/budgets.rs::lineage_migration`).
  #[test]
  fn the_lineage_migration_fills_in_sessions_ledger_and_caps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v12.db");
    {
      let c = rusqlite::Connection::open(&path).unwrap();
      for m in &MIGRATIONS[..12] {
        c.execute_batch(m).unwrap();
      }
      c.execute_batch(&format!("PRAGMA user_version = 12; {}", lineage_migration::rows_sql(""))).unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().wait().unwrap(), super::SCHEMA_VERSION);
    let c = rusqlite::Connection::open(&path).unwrap();
    let read = || {
      let mut calls = c.prepare("SELECT session_id, lineage_id FROM model_calls ORDER BY id").unwrap();
      let mut caps = c.prepare("SELECT scope, session_id, usd FROM budgets ORDER BY usd").unwrap();
      (
        calls.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect(),
        caps.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(|r| r.unwrap()).collect(),
      )
    };
    let lineage_of_call = |id: i64| c.query_row("SELECT lineage_id FROM model_calls WHERE id = ?1", [id], |r| r.get(0)).unwrap();
    lineage_migration::check(&s, read, lineage_of_call);
  }
}
