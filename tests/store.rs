//! The SQLite store without Node: migrations from an older schema, ownership, leases, task ends
//! and recovery after a crash.

use std::time::Duration;

use claude_session_manager::error::ErrorCode;
use claude_session_manager::store::{self, ListQuery, NewSession, Owner, Store, TaskEnd, Usage};
use rusqlite::Connection;

#[path = "shared/fixtures.rs"]
mod fixtures;
use fixtures::new_session;

#[path = "shared/budgets.rs"]
mod budgets;
#[path = "shared/inbox.rs"]
mod inbox;
#[path = "shared/total_cap.rs"]
mod total_cap;
#[path = "shared/warm_holds.rs"]
mod warm_holds;

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
  assert_eq!(s.schema_version().unwrap(), store::SCHEMA_VERSION);
  let old = s.get_session(A, "alice").unwrap().expect("row kept");
  assert_eq!(old.title.as_deref(), Some("old one"));
  assert_eq!(old.model, "opus");
  assert_eq!(old.task_count, 0);
  assert_eq!(old.context, None);
  // The new tables work on the migrated file.
  let owner = Owner { id: "o".into(), pid: std::process::id() };
  assert!(s.try_begin_task(A, "t1", "task", "opus", &owner, Duration::from_secs(30)).unwrap());
  // Opening again is a no-op.
  drop(s);
  let s = Store::open(&path).unwrap();
  assert_eq!(s.list_tasks(A).unwrap().len(), 1);
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
fn ownership_and_listing() {
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  s.create_session(&new_session(B, "bob", "p")).unwrap();
  assert!(s.get_session(A, "bob").unwrap().is_none());
  assert_eq!(s.archive_session(A, "bob").unwrap_err().code, ErrorCode::SessionNotFound);
  assert_eq!(s.delete_session(A, "bob").unwrap_err().code, ErrorCode::SessionNotFound);
  let q = ListQuery { user_id: "alice".into(), limit: 10, ..Default::default() };
  assert_eq!(s.list_sessions(&q).unwrap().iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), vec![A]);
}

#[test]
fn one_lease_per_session_and_task_ends_update_totals_atomically() {
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  let me = Owner { id: "me".into(), pid: std::process::id() };
  let ttl = Duration::from_secs(30);
  assert!(s.try_begin_task(A, "t1", "task", "sonnet", &me, ttl).unwrap());
  assert!(!s.try_begin_task(A, "t2", "task", "sonnet", &me, ttl).unwrap(), "the lease is held");
  assert!(s.renew_lease(A, "t1", ttl).unwrap());
  assert!(!s.renew_lease(A, "t2", ttl).unwrap());
  let usage = Usage { input_tokens: 10, output_tokens: 5, cache_read_input_tokens: 100, cache_creation_input_tokens: 1 };
  let end = TaskEnd {
    status: "succeeded".into(),
    usage,
    cost_usd: 0.25,
    materialized: true,
    context: Some(store::ContextSnapshot { tokens: 116, window: 200_000, source: "api".into(), measured_at: 1 }),
    ..Default::default()
  };
  s.finish_task(A, "t1", &end, Some(0.25)).unwrap();
  assert!(s.try_begin_task(A, "t2", "task", "sonnet", &me, ttl).unwrap(), "released at the end");
  s.finish_task(A, "t2", &TaskEnd { status: "failed".into(), cost_usd: 0.5, usage, ..Default::default() }, None).unwrap();
  let row = s.get_session(A, "alice").unwrap().unwrap();
  assert_eq!(row.task_count, 2);
  assert_eq!(row.total_cost_usd, 0.75);
  assert_eq!(row.usage.input_tokens, 20);
  assert_eq!(row.usage.cache_read_input_tokens, 200);
  assert!(row.materialized, "a later failure does not unmark the transcript");
  assert_eq!(row.context.unwrap().tokens, 116, "a task without a measurement keeps the last one");
  let tasks = s.list_tasks(A).unwrap();
  assert_eq!(tasks.iter().map(|t| t.status.as_str()).collect::<Vec<_>>(), vec!["succeeded", "failed"]);
  let sum: f64 = tasks.iter().map(|t| t.cost_usd).sum();
  assert_eq!(sum, row.total_cost_usd);
}

#[test]
fn tasks_of_dead_processes_and_expired_leases_are_interrupted() {
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  s.create_session(&new_session(B, "alice", "p")).unwrap();
  let dead = Owner { id: "dead".into(), pid: 999_999_999 };
  let alive = Owner { id: "alive".into(), pid: std::process::id() };
  assert!(s.try_begin_task(A, "ta", "task", "m", &dead, Duration::from_secs(300)).unwrap());
  assert!(s.try_begin_task(B, "tb", "task", "m", &alive, Duration::from_secs(300)).unwrap());
  let n = s.recover_interrupted(&|pid| pid == std::process::id()).unwrap();
  assert_eq!(n, 1);
  assert_eq!(s.list_tasks(A).unwrap()[0].status, "interrupted");
  assert_eq!(s.list_tasks(B).unwrap()[0].status, "running", "a live holder keeps its task");
  // An expired lease can be taken over; its task becomes interrupted.
  let c = Connection::open(dir.path().join("s.db")).unwrap();
  c.execute("UPDATE leases SET expires_at = 0 WHERE session_id = ?1", [B]).unwrap();
  assert!(s.try_begin_task(B, "tb2", "task", "m", &alive, Duration::from_secs(30)).unwrap());
  let statuses: Vec<String> = s.list_tasks(B).unwrap().into_iter().map(|t| t.status).collect();
  assert_eq!(statuses, vec!["interrupted", "running"]);
}

#[test]
fn cleanup_skips_running_sessions() {
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  s.create_session(&new_session(B, "alice", "p")).unwrap();
  let me = Owner { id: "me".into(), pid: std::process::id() };
  assert!(s.try_begin_task(A, "t", "task", "m", &me, Duration::from_secs(30)).unwrap());
  std::thread::sleep(Duration::from_millis(5));
  assert_eq!(s.cleanup("alice", None, 1, false).unwrap(), 1);
  assert!(s.get_session(A, "alice").unwrap().is_some());
  assert!(s.get_session(B, "alice").unwrap().is_none());
}

#[test]
fn a_deleted_or_replaced_file_is_a_store_error_not_a_silent_copy() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  std::fs::remove_file(&path).unwrap();
  let e = s.create_session(&new_session(B, "alice", "p")).unwrap_err();
  assert_eq!(e.code, ErrorCode::StoreError);
  assert!(e.message.contains("deleted or replaced"), "{}", e.message);
  assert_eq!(s.get_session(A, "alice").unwrap_err().code, ErrorCode::StoreError);
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
    s.list_sessions(&ListQuery { user_id: "alice".into(), limit: 5, ..Default::default() }).unwrap_err().code,
    ErrorCode::StoreError
  );
}

#[test]
fn reads_without_waiting_answer_like_get_session_or_step_aside() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  let now = s.get_session_now(A, "alice").expect("a free store answers at once").unwrap().unwrap();
  assert_eq!(now.id, s.get_session(A, "alice").unwrap().unwrap().id);
  assert!(s.get_session_now(A, "bob").unwrap().unwrap().is_none(), "another user's session is a miss, as in get_session");

  // The busy timeout is restored afterwards: a write that meets another process's write lock
  // still waits for it instead of failing.
  let other = Connection::open(&path).unwrap();
  other.execute_batch("BEGIN IMMEDIATE; UPDATE sessions SET title = 'x';").unwrap();
  let release = std::thread::spawn(move || {
    std::thread::sleep(Duration::from_millis(300));
    other.execute_batch("COMMIT;").unwrap();
  });
  s.create_session(&new_session(B, "alice", "p")).unwrap();
  release.join().unwrap();
  assert_eq!(s.get_session_now(A, "alice").unwrap().unwrap().unwrap().title.as_deref(), Some("x"));

  // While this process's own writes hold the connection, it steps aside rather than wait: a
  // writer stuck behind another process's lock holds it for as long as that lock lasts.
  let s = std::sync::Arc::new(s);
  let other = Connection::open(&path).unwrap();
  other.execute_batch("BEGIN IMMEDIATE;").unwrap();
  let writer = {
    let s = s.clone();
    std::thread::spawn(move || s.set_context(A, &store::ContextSnapshot { tokens: 1, window: 2, source: "api".into(), measured_at: 3 }))
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
fn a_lease_kept_while_the_cli_exits_holds_the_next_task_but_not_deletion() {
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  for id in [A, B] {
    s.create_session(&new_session(id, "alice", "p")).unwrap();
  }
  let me = Owner { id: "me".into(), pid: std::process::id() };
  let ttl = Duration::from_secs(30);
  assert!(s.try_begin_task(A, "t1", "task", "m", &me, ttl).unwrap());
  s.finish_task(A, "t1", &TaskEnd { status: "succeeded".into(), keep_lease: true, ..Default::default() }, None).unwrap();
  assert_eq!(s.list_tasks(A).unwrap()[0].status, "succeeded", "the task has ended");
  assert!(!s.try_begin_task(A, "t2", "task", "m", &me, ttl).unwrap(), "the next task waits for the exit");
  assert!(s.lease_kept_after_end(A).unwrap(), "and knows it waits for an exit, not a task");
  s.release_lease(A, "t1").unwrap();
  assert!(!s.lease_kept_after_end(A).unwrap());
  assert!(s.try_begin_task(A, "t2", "task", "m", &me, ttl).unwrap(), "and runs once it is released");
  assert!(!s.lease_kept_after_end(A).unwrap(), "a running task's lease is not an exiting one");

  // Deleting does not wait for an exiting CLI: its task is over.
  assert!(s.try_begin_task(B, "t3", "task", "m", &me, ttl).unwrap());
  s.finish_task(B, "t3", &TaskEnd { status: "succeeded".into(), keep_lease: true, ..Default::default() }, None).unwrap();
  s.delete_session(B, "alice").unwrap();
  s.release_lease(B, "t3").unwrap();
  // But a running task still makes its session busy.
  assert_eq!(s.delete_session(A, "alice").unwrap_err().code, ErrorCode::SessionBusy);

  // A kept lease whose process died is dropped at the next open.
  s.finish_task(A, "t2", &TaskEnd { status: "succeeded".into(), keep_lease: true, ..Default::default() }, None).unwrap();
  assert_eq!(s.recover_interrupted(&|pid| pid != std::process::id()).unwrap(), 0, "no running task to interrupt");
  assert!(s.try_begin_task(A, "t4", "task", "m", &me, ttl).unwrap(), "the dead holder's lease is gone");
}

#[test]
fn now_gives_up_before_waiting_and_never_half_way() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  // Another process holds the write lock: a write gives up at once and writes nothing.
  let other = Connection::open(&path).unwrap();
  other.execute_batch("BEGIN IMMEDIATE;").unwrap();
  assert!(s.now(|s| s.create_session(&new_session(B, "alice", "p"))).is_none());
  // Reads need no lock under WAL: they go through.
  assert_eq!(s.now(|s| s.get_session(A, "alice")).unwrap().unwrap().unwrap().id, A);
  other.execute_batch("COMMIT;").unwrap();
  assert!(s.get_session(B, "alice").unwrap().is_none(), "nothing was written");
  assert_eq!(s.now(|s| s.create_session(&new_session(B, "alice", "p"))).unwrap().unwrap().id, B);

  // Once a first call went through, the ones after it wait as usual instead of giving up, so the
  // caller never has to run a half-done sequence again.
  let other = Connection::open(&path).unwrap();
  let me = Owner { id: "me".into(), pid: std::process::id() };
  let r = s.now(|s| {
    let began = s.try_begin_task(A, "t1", "task", "m", &me, Duration::from_secs(30))?;
    other.execute_batch("BEGIN IMMEDIATE;").unwrap();
    // The lock is released from another thread after a while (its connection moves there).
    let holder = std::thread::spawn(move || {
      std::thread::sleep(Duration::from_millis(200));
      other.execute_batch("COMMIT;").unwrap();
    });
    let finished = s.finish_task(A, "t1", &TaskEnd { status: "succeeded".into(), ..Default::default() }, None);
    holder.join().unwrap();
    finished.map(|_| began)
  });
  assert!(r.expect("not given up").unwrap());
  assert_eq!(s.list_tasks(A).unwrap()[0].status, "succeeded");
}

#[test]
fn a_renewed_lease_keeps_a_second_owner_out_and_a_lapsed_one_lets_it_in() {
  // A short TTL, renewed well within it: a second owner must stay out for several TTLs, and get
  // in once renewal stops. (Each check follows a renewal at once, so a slow machine cannot make a
  // renewed lease look lapsed; only a renewal that does not extend the lease can.)
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  let first = Owner { id: "first".into(), pid: std::process::id() };
  let second = Owner { id: "second".into(), pid: std::process::id() };
  let ttl = Duration::from_millis(400);
  let began = std::time::Instant::now();
  assert!(s.try_begin_task(A, "t1", "task", "m", &first, ttl).unwrap());
  let mut checks = 0;
  while began.elapsed() < ttl * 3 {
    std::thread::sleep(Duration::from_millis(50));
    assert!(s.renew_lease(A, "t1", ttl).unwrap(), "the lease is still the first owner's");
    assert!(!s.try_begin_task(A, "t2", "task", "m", &second, ttl).unwrap(), "renewed at {:?}: the second owner stays out", began.elapsed());
    checks += 1;
  }
  assert!(checks >= 3, "checked past the TTL several times ({checks})");
  assert_eq!(s.list_tasks(A).unwrap().iter().map(|t| t.status.as_str()).collect::<Vec<_>>(), vec!["running"]);
  // Renewal stops: once the TTL has passed, the second owner gets in and the first task is
  // interrupted; the first owner's renewal now fails.
  std::thread::sleep(ttl + Duration::from_millis(100));
  assert!(s.try_begin_task(A, "t2", "task", "m", &second, ttl).unwrap(), "a lapsed lease is taken over");
  assert!(!s.renew_lease(A, "t1", ttl).unwrap(), "the first owner has lost it");
  let statuses: Vec<String> = s.list_tasks(A).unwrap().into_iter().map(|t| t.status).collect();
  assert_eq!(statuses, vec!["interrupted", "running"]);
}

#[test]
fn cleanup_touches_only_the_callers_sessions() {
  const C: &str = "33333333-3333-4333-8333-333333333333";
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  // Alice: an idle archived session and a fork of it. Bob: one idle archived session.
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  s.create_session(&NewSession { parent_id: Some(A.into()), ..new_session(C, "alice", "p") }).unwrap();
  s.archive_session(A, "alice").unwrap();
  s.create_session(&new_session(B, "bob", "p")).unwrap();
  s.archive_session(B, "bob").unwrap();
  std::thread::sleep(Duration::from_millis(5));
  // Bob's cleanup of everything idle, active or not, in any project or in alice's project.
  for project in [None, Some("p")] {
    let deleted = s.cleanup_sessions("bob", project, 0, false).unwrap();
    assert!(deleted.iter().all(|d| d.user_id == "bob"), "{deleted:?}");
  }
  assert!(s.get_session(B, "bob").unwrap().is_none(), "bob's own session went");
  let a = s.get_session(A, "alice").unwrap().expect("alice's session is kept");
  assert_eq!(a.status, "archived");
  let c = s.get_session(C, "alice").unwrap().expect("and her fork");
  assert_eq!(c.parent_id.as_deref(), Some(A), "the fork still names its parent");
  assert_eq!(s.count_sessions("alice", None).unwrap(), 2);
  assert_eq!(s.cleanup("mallory", None, 0, false).unwrap(), 0, "a user with no sessions deletes nothing");
  // Alice's own cleanup does delete hers (the test above is not passing for want of idle rows).
  assert_eq!(s.cleanup("alice", None, 0, true).unwrap(), 1);
  assert!(s.get_session(A, "alice").unwrap().is_none());
  assert_eq!(s.get_session(C, "alice").unwrap().unwrap().parent_id, None, "her fork is unlinked from the deleted parent");
}

#[test]
fn a_task_end_remembers_the_window_and_the_compactions() {
  let dir = tempfile::tempdir().unwrap();
  let s = Store::open(&dir.path().join("s.db")).unwrap();
  s.create_session(&new_session(A, "alice", "p")).unwrap();
  let me = Owner { id: "me".into(), pid: std::process::id() };
  assert_eq!(s.window_for("sonnet").unwrap(), None);
  assert_eq!(s.window_for_now("sonnet").expect("a free store answers at once").unwrap(), None);
  assert!(s.list_compactions(A).unwrap().is_empty());
  assert!(s.try_begin_task(A, "t1", "task", "sonnet", &me, Duration::from_secs(30)).unwrap());
  let compaction = |pre: u64, post: u64| store::Compaction {
    session_id: A.into(),
    task_id: Some("t1".into()),
    trigger: "auto".into(),
    pre_tokens: Some(pre),
    post_tokens: Some(post),
    started_at: 5,
    duration_ms: Some(40),
  };
  let end = TaskEnd {
    status: "succeeded".into(),
    window: Some(("sonnet".into(), 1_000_000)),
    compactions: vec![compaction(990_047, 1018), compaction(50_000, 900)],
    ..Default::default()
  };
  s.finish_task(A, "t1", &end, None).unwrap();
  assert_eq!(s.window_for("sonnet").unwrap(), Some(1_000_000));
  assert_eq!(s.window_for_now("sonnet").unwrap().unwrap(), Some(1_000_000));
  assert_eq!(s.window_for("opus").unwrap(), None, "per model");
  assert_eq!(s.list_compactions(A).unwrap(), vec![compaction(990_047, 1018), compaction(50_000, 900)]);
  assert!(s.list_compactions(B).unwrap().is_empty(), "per session");
  // A later report replaces the window.
  assert!(s.try_begin_task(A, "t2", "task", "sonnet", &me, Duration::from_secs(30)).unwrap());
  s.finish_task(A, "t2", &TaskEnd { status: "succeeded".into(), window: Some(("sonnet".into(), 200_000)), ..Default::default() }, None)
    .unwrap();
  assert_eq!(s.window_for("sonnet").unwrap(), Some(200_000));
}

#[test]
fn the_total_cap_counts_live_leases_of_every_process_and_is_taken_atomically() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  let ids: Vec<String> = (0..8).map(|i| format!("{i:08}-0000-4000-8000-000000000000")).collect();
  for id in &ids {
    s.create_session(&new_session(id, "u", "p")).unwrap();
  }
  total_cap::check(&s, &ids, || Store::open(&path).unwrap());
}

#[test]
fn the_inbox_forwards_answers_and_messages_to_the_watched_running_task_only() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  s.create_session(&new_session(A, "u", "p")).unwrap();
  inbox::check(&s, A, || Store::open(&path).unwrap());
}

#[test]
fn warm_holds_count_other_managers_cli_until_released_or_expired() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  s.create_session(&new_session(A, "u", "p")).unwrap();
  warm_holds::check(&s, A, || Store::open(&path).unwrap());
}

#[test]
fn spend_caps_admit_a_call_only_when_its_reserve_fits_and_the_ledger_sums_what_was_settled() {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let s = Store::open(&path).unwrap();
  budgets::check(&s, "alice", || Store::open(&path).unwrap());
}
