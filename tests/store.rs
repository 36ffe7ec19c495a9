//! What only the SQLite store does, without Node: migrations from an older schema, a file deleted
//! or replaced under it, reads that step aside instead of waiting, lease expiry by the file's
//! rows. What every backend does is in `tests/conformance/`.

use std::time::Duration;

use claude_session_manager::error::ErrorCode;
use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{self, ListQuery, NewSession, Owner, Store, TaskEnd};
use rusqlite::Connection;

/// A session of `user` in `project` (what the backend-neutral checks use: `tests/conformance/`).
fn new_session(id: &str, user: &str, project: &str) -> NewSession {
  let (id, user_id, project_id) = (id.into(), user.into(), project.into());
  NewSession { id, user_id, project_id, model: "sonnet".into(), working_directory: "/tmp".into(), ..Default::default() }
}

const A: &str = "11111111-1111-4111-8111-111111111111";
const B: &str = "22222222-2222-4222-8222-222222222222";

#[test]
fn migrates_a_version_1_database_and_keeps_its_rows() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("old.db");
  {
    // The first release's schema, written by hand as that release did.
    let c = Connection::open(&path).unwrap();
    c.execute_batch(
      "CREATE TABLE sessions (id TEXT PRIMARY KEY NOT NULL, project_id TEXT NOT NULL, user_id TEXT NOT NULL,
         status TEXT NOT NULL CHECK (status IN ('active', 'archived')), parent_id TEXT, title TEXT, model TEXT NOT NULL,
         working_directory TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, last_active_at INTEGER NOT NULL);
       CREATE INDEX sessions_by_user ON sessions (user_id, last_active_at DESC);
       INSERT INTO sessions VALUES ('11111111-1111-4111-8111-111111111111', 'p', 'alice', 'active', NULL, 'old one', 'opus', '/w', 1, 2, 3);
       PRAGMA user_version = 1;",
    )
    .unwrap();
  }
  let s = Store::open(&path).unwrap();
  assert_eq!(s.schema_version().wait().unwrap(), store::SCHEMA_VERSION);
  let old = s.get_session(A, "alice").wait().unwrap().expect("row kept");
  assert_eq!(old.title.as_deref(), Some("old one"));
  assert_eq!(old.model, "opus");
  assert_eq!(old.task_count, 0);
  assert_eq!(old.context, None);
  assert_eq!(old.lineage_id, A, "a session not forked is a lineage of its own");
  // The new tables work on the migrated file.
  let owner = Owner { id: "o".into(), pid: std::process::id() };
  assert!(s.try_begin_task(A, "t1", "task", "opus", &owner, Duration::from_secs(30)).wait().unwrap());
  // Opening again is a no-op.
  drop(s);
  let s = Store::open(&path).unwrap();
  assert_eq!(s.list_tasks(A).wait().unwrap().len(), 1);
}

#[test]
fn refuses_a_database_from_a_newer_build() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("new.db");
  Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 999;").unwrap();
  let e = Store::open(&path).err().unwrap();
  assert_eq!(e.code, ErrorCode::StoreError);
  assert!(e.message.contains("newer"), "{}", e.message);
}

#[test]
fn tasks_of_dead_processes_and_expired_leases_are_interrupted() {
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  s.create_session(&new_session(A, "alice", "p")).wait().unwrap();
  s.create_session(&new_session(B, "alice", "p")).wait().unwrap();
  let dead = Owner { id: "dead".into(), pid: 999_999_999 };
  let alive = Owner { id: "alive".into(), pid: std::process::id() };
  assert!(s.try_begin_task(A, "ta", "task", "m", &dead, Duration::from_secs(300)).wait().unwrap());
  assert!(s.try_begin_task(B, "tb", "task", "m", &alive, Duration::from_secs(300)).wait().unwrap());
  let n = s.recover_interrupted(&|pid| pid == std::process::id()).wait().unwrap();
  assert_eq!(n, 1);
  assert_eq!(s.list_tasks(A).wait().unwrap()[0].status, "interrupted");
  assert_eq!(s.list_tasks(B).wait().unwrap()[0].status, "running", "a live holder keeps its task");
  // An expired lease can be taken over; its task becomes interrupted.
  let c = Connection::open(dir.path().join("s.db")).unwrap();
  c.execute("UPDATE leases SET expires_at = 0 WHERE session_id = ?1", [B]).unwrap();
  assert!(s.try_begin_task(B, "tb2", "task", "m", &alive, Duration::from_secs(30)).wait().unwrap());
  let statuses: Vec<String> = s.list_tasks(B).wait().unwrap().into_iter().map(|t| t.status).collect();
  assert_eq!(statuses, vec!["interrupted", "running"]);
}

#[test]
fn a_deleted_or_replaced_file_is_a_store_error_not_a_silent_copy() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  s.create_session(&new_session(A, "alice", "p")).wait().unwrap();
  std::fs::remove_file(&path).unwrap();
  let e = s.create_session(&new_session(B, "alice", "p")).wait().unwrap_err();
  assert_eq!(e.code, ErrorCode::StoreError);
  assert!(e.message.contains("deleted or replaced"), "{}", e.message);
  assert_eq!(s.get_session(A, "alice").wait().unwrap_err().code, ErrorCode::StoreError);
  assert_eq!(
    s.get_session_now(A, "alice").expect("nothing to wait for").unwrap_err().code,
    ErrorCode::StoreError,
    "the fast read reports it too"
  );
  // Replaced by another database: refused too.
  let other = Store::open(&dir.path().join("other.db")).unwrap();
  drop(other);
  std::fs::rename(dir.path().join("other.db"), &path).unwrap();
  assert_eq!(
    s.list_sessions(&ListQuery { user_id: "alice".into(), limit: 5, ..Default::default() }).wait().unwrap_err().code,
    ErrorCode::StoreError
  );
}

#[test]
fn reads_without_waiting_answer_like_get_session_or_step_aside() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  s.create_session(&new_session(A, "alice", "p")).wait().unwrap();
  let now = s.get_session_now(A, "alice").expect("a free store answers at once").unwrap().unwrap();
  assert_eq!(now.id, s.get_session(A, "alice").wait().unwrap().unwrap().id);
  assert!(s.get_session_now(A, "bob").unwrap().unwrap().is_none(), "another user's session is a miss, as in get_session");

  // The busy timeout is restored afterwards: a write that meets another process's write lock
  // still waits for it instead of failing.
  let other = Connection::open(&path).unwrap();
  other.execute_batch("BEGIN IMMEDIATE; UPDATE sessions SET title = 'x';").unwrap();
  let release = std::thread::spawn(move || {
    std::thread::sleep(Duration::from_millis(300));
    other.execute_batch("COMMIT;").unwrap();
  });
  s.create_session(&new_session(B, "alice", "p")).wait().unwrap();
  release.join().unwrap();
  assert_eq!(s.get_session_now(A, "alice").unwrap().unwrap().unwrap().title.as_deref(), Some("x"));

  // While this process's own writes hold the connection, it steps aside rather than wait: a
  // writer stuck behind another process's lock holds it for as long as that lock lasts.
  let s = std::sync::Arc::new(s);
  let other = Connection::open(&path).unwrap();
  other.execute_batch("BEGIN IMMEDIATE;").unwrap();
  let writer = {
    let s = s.clone();
    std::thread::spawn(move || {
      s.set_context(A, &store::ContextSnapshot { tokens: 1, window: 2, source: "api".into(), measured_at: 3 }).wait()
    })
  };
  let deadline = std::time::Instant::now() + Duration::from_secs(10);
  let mut stepped_aside = false;
  while !stepped_aside && std::time::Instant::now() < deadline {
    match s.get_session_now(A, "alice") {
      None => stepped_aside = true,
      // Before the writer takes the connection, it answers; and only with the right row.
      Some(r) => assert_eq!(r.unwrap().unwrap().id, A),
    }
  }
  assert!(stepped_aside, "a fast read never stepped aside while the connection was held");
  assert!(!writer.is_finished(), "the writer was still waiting");
  other.execute_batch("COMMIT;").unwrap();
  writer.join().unwrap().unwrap();
  assert_eq!(s.get_session_now(A, "alice").expect("free again").unwrap().unwrap().context.unwrap().tokens, 1);
}

#[test]
fn now_gives_up_before_waiting_and_never_half_way() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  s.create_session(&new_session(A, "alice", "p")).wait().unwrap();
  // Another process holds the write lock: a write gives up at once and writes nothing.
  let other = Connection::open(&path).unwrap();
  other.execute_batch("BEGIN IMMEDIATE;").unwrap();
  assert!(s.now(async |s| s.create_session(&new_session(B, "alice", "p")).await).is_none());
  // Reads need no lock under WAL: they go through.
  assert_eq!(s.now(async |s| s.get_session(A, "alice").await).unwrap().unwrap().unwrap().id, A);
  other.execute_batch("COMMIT;").unwrap();
  assert!(s.get_session(B, "alice").wait().unwrap().is_none(), "nothing was written");
  assert_eq!(s.now(async |s| s.create_session(&new_session(B, "alice", "p")).await).unwrap().unwrap().id, B);

  // Once a first call went through, the ones after it wait as usual instead of giving up, so the
  // caller never has to run a half-done sequence again.
  let other = Connection::open(&path).unwrap();
  let me = Owner { id: "me".into(), pid: std::process::id() };
  let r = s.now(async |s| {
    let began = s.try_begin_task(A, "t1", "task", "m", &me, Duration::from_secs(30)).await?;
    other.execute_batch("BEGIN IMMEDIATE;").unwrap();
    // The lock is released from another thread after a while (its connection moves there).
    let holder = std::thread::spawn(move || {
      std::thread::sleep(Duration::from_millis(200));
      other.execute_batch("COMMIT;").unwrap();
    });
    let finished = s.finish_task(A, "t1", &TaskEnd { status: "succeeded".into(), ..Default::default() }, None).await;
    holder.join().unwrap();
    finished.map(|_| began)
  });
  assert!(r.expect("not given up").unwrap());
  assert_eq!(s.list_tasks(A).wait().unwrap()[0].status, "succeeded");
}

#[test]
fn a_models_window_is_read_without_waiting() {
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  s.create_session(&new_session(A, "alice", "p")).wait().unwrap();
  assert_eq!(s.window_for_now("sonnet").expect("a free store answers at once").unwrap(), None);
  let me = Owner { id: "me".into(), pid: std::process::id() };
  assert!(s.try_begin_task(A, "t1", "task", "sonnet", &me, Duration::from_secs(30)).wait().unwrap());
  let end = TaskEnd { status: "succeeded".into(), window: Some(("sonnet".into(), 1_000_000)), ..Default::default() };
  s.finish_task(A, "t1", &end, None).wait().unwrap();
  assert_eq!(s.window_for_now("sonnet").unwrap().unwrap(), Some(1_000_000));
}
