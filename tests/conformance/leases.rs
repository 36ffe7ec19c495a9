//! Tasks and the lease: one task per session, renewal and take-over, the end of a task (its row
//! and the session's totals in one step), a lease kept while the CLI exits, and recovery of the
//! tasks of dead processes.

use std::time::Duration;

use claude_session_manager::error::ErrorCode;
use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{ContextSnapshot, Owner, Start, TaskEnd, TaskStart, TranscriptEntry, Usage};

use super::fixtures::{id, new_session, owner};
use super::Opened;

fn statuses(o: &Opened, sid: &str) -> Vec<String> {
  o.store.list_tasks(sid).wait().unwrap().into_iter().map(|t| t.status).collect()
}

pub fn one_lease_and_totals(o: &Opened) {
  let s = &o.store;
  let a = id();
  s.create_session(&new_session(&a, "alice", "p")).wait().unwrap();
  let me = owner("me");
  let ttl = Duration::from_secs(30);
  assert!(s.try_begin_task(&a, "t1", "task", "sonnet", &me, ttl).wait().unwrap());
  assert!(!s.try_begin_task(&a, "t2", "task", "sonnet", &me, ttl).wait().unwrap(), "the lease is held");
  assert!(!o.other().try_begin_task(&a, "t2", "task", "sonnet", &owner("other"), ttl).wait().unwrap(), "from another connection too");
  assert!(s.renew_lease(&a, "t1", ttl).wait().unwrap());
  assert!(!s.renew_lease(&a, "t2", ttl).wait().unwrap());
  let usage = Usage { input_tokens: 10, output_tokens: 5, cache_read_input_tokens: 100, cache_creation_input_tokens: 1 };
  let end = TaskEnd {
    status: "succeeded".into(),
    usage,
    cost_usd: 0.25,
    materialized: true,
    context: Some(ContextSnapshot { tokens: 116, window: 200_000, source: "api".into(), measured_at: 1 }),
    ..Default::default()
  };
  s.finish_task(&a, "t1", &end, Some(0.25)).wait().unwrap();
  assert!(!s.renew_lease(&a, "t1", ttl).wait().unwrap(), "an ended task holds no lease");
  assert!(s.try_begin_task(&a, "t2", "task", "sonnet", &me, ttl).wait().unwrap(), "released at the end");
  s.finish_task(&a, "t2", &TaskEnd { status: "failed".into(), cost_usd: 0.5, usage, ..Default::default() }, None).wait().unwrap();
  let row = s.get_session(&a, "alice").wait().unwrap().unwrap();
  assert_eq!(row.task_count, 2);
  assert_eq!(row.total_cost_usd, 0.75);
  assert_eq!(row.usage.input_tokens, 20);
  assert_eq!(row.usage.cache_read_input_tokens, 200);
  assert_eq!(row.cli_cost_watermark, 0.25, "the watermark moves only when given");
  assert!(row.materialized, "a later failure does not unmark the transcript");
  assert_eq!(row.context.unwrap().tokens, 116, "a task without a measurement keeps the last one");
  let tasks = s.list_tasks(&a).wait().unwrap();
  assert_eq!(tasks.iter().map(|t| t.status.as_str()).collect::<Vec<_>>(), vec!["succeeded", "failed"]);
  let sum: f64 = tasks.iter().map(|t| t.cost_usd).sum();
  assert_eq!(sum, row.total_cost_usd);
}

pub fn kept_after_end(o: &Opened) {
  let s = &o.store;
  let (a, b) = (id(), id());
  for sid in [&a, &b] {
    s.create_session(&new_session(sid, "alice", "p")).wait().unwrap();
  }
  let me = owner("me");
  let ttl = Duration::from_secs(30);
  let kept = TaskEnd { status: "succeeded".into(), keep_lease: true, ..Default::default() };
  assert!(s.try_begin_task(&a, "t1", "task", "m", &me, ttl).wait().unwrap());
  s.finish_task(&a, "t1", &kept, None).wait().unwrap();
  assert_eq!(statuses(o, &a), ["succeeded"], "the task has ended");
  assert!(!s.try_begin_task(&a, "t2", "task", "m", &me, ttl).wait().unwrap(), "the next task waits for the exit");
  assert!(s.lease_kept_after_end(&a).wait().unwrap(), "and knows it waits for an exit, not a task");
  s.release_lease(&a, "t1").wait().unwrap();
  assert!(!s.lease_kept_after_end(&a).wait().unwrap());
  assert!(s.try_begin_task(&a, "t2", "task", "m", &me, ttl).wait().unwrap(), "and runs once it is released");
  assert!(!s.lease_kept_after_end(&a).wait().unwrap(), "a running task's lease is not an exiting one");
  // Deleting does not wait for an exiting CLI: its task is over.
  assert!(s.try_begin_task(&b, "t3", "task", "m", &me, ttl).wait().unwrap());
  s.finish_task(&b, "t3", &kept, None).wait().unwrap();
  s.delete_session(&b, "alice").wait().unwrap();
  s.release_lease(&b, "t3").wait().unwrap();
  // But a running task still makes its session busy.
  assert_eq!(s.delete_session(&a, "alice").wait().unwrap_err().code, ErrorCode::SessionBusy);
}

/// A lease kept while a task's CLI exited, handed to the same owner's next task (`after`): taken
/// over at once (a new fence: the old task's late lines are refused), and only by that owner,
/// only from that task, only once it ended.
pub fn hand_over(o: &Opened) {
  let s = &o.store;
  let sid = id();
  s.create_session(&new_session(&sid, "alice", "p")).wait().unwrap();
  let (me, other, ttl) = (owner("me"), owner("other"), Duration::from_secs(30));
  let start = |task_id, owner, after, max_running| TaskStart { task_id, kind: "task", model: "m", owner, ttl, max_running, after };
  let started = |r: Start| matches!(r, Start::Started(_));
  assert!(started(s.start_task(&sid, "alice", &start("t1", &me, None, None)).wait().unwrap()));
  assert_eq!(
    s.start_task(&sid, "alice", &start("t2", &me, Some("t1"), None)).wait().unwrap(),
    Start::SessionHeld { exiting: false },
    "a running task's lease is not handed over"
  );
  let kept = TaskEnd { status: "succeeded".into(), keep_lease: true, ..Default::default() };
  s.finish_task(&sid, "t1", &kept, None).wait().unwrap();
  for (who, after, why) in [(&other, Some("t1"), "another owner"), (&me, Some("t0"), "another task"), (&me, None, "no hand-over")] {
    assert_eq!(s.start_task(&sid, "alice", &start("t2", who, after, None)).wait().unwrap(), Start::SessionHeld { exiting: true }, "{why}");
  }
  // Taken over, even with every place of the total cap taken by that very lease.
  assert!(started(o.other().start_task(&sid, "alice", &start("t2", &me, Some("t1"), Some(1))).wait().unwrap()));
  assert_eq!(statuses(o, &sid), ["succeeded", "running"]);
  // The old task's release, sent after, frees nothing; its late lines are refused.
  s.release_lease(&sid, "t1").wait().unwrap();
  assert!(s.renew_lease(&sid, "t2", ttl).wait().unwrap(), "the lease is t2's");
  assert_eq!(s.start_task(&sid, "alice", &start("t3", &me, Some("t1"), None)).wait().unwrap(), Start::SessionHeld { exiting: false });
  if let Ok(t) = s.shared_transcripts() {
    let line = TranscriptEntry { seq: 1, subpath: String::new(), uuid: None, line: "{}".into() };
    assert!(!t.append_transcript_after_end(&sid, "t1", std::slice::from_ref(&line)).wait().unwrap(), "fenced out");
    assert!(t.append_transcript(&sid, "t2", &[line]).wait().unwrap());
  }
}

/// `start_task`: the start with what the run reads next; held while another task runs (and
/// whether its CLI is exiting).
pub fn start_task(o: &Opened) {
  let s = &o.store;
  let sid = id();
  s.create_session(&new_session(&sid, "alice", "p")).wait().unwrap();
  let (me, ttl) = (owner("me"), Duration::from_secs(30));
  let start = |task_id| TaskStart { task_id, kind: "task", model: "m", owner: &me, ttl, max_running: None, after: None };
  let Start::Started(began) = s.start_task(&sid, "alice", &start("t1")).wait().unwrap() else { panic!("not started") };
  let session = began.session.expect("the session, read once the lease is the task's");
  assert_eq!(session, s.get_session(&sid, "alice").wait().unwrap().unwrap());
  assert_eq!(began.transcript_head.unwrap_or(0), 0);
  assert!(matches!(began.warm_left, None | Some(0)), "no other manager keeps a warm CLI");
  assert!(matches!(began.branch_point, None | Some(None)), "no branch point");
  assert_eq!(s.start_task(&sid, "alice", &start("t2")).wait().unwrap(), Start::SessionHeld { exiting: false });
  assert_eq!(statuses(o, &sid), ["running"]);
  let kept = TaskEnd { status: "succeeded".into(), keep_lease: true, ..Default::default() };
  s.finish_task(&sid, "t1", &kept, None).wait().unwrap();
  assert_eq!(s.start_task(&sid, "alice", &start("t2")).wait().unwrap(), Start::SessionHeld { exiting: true });
  s.release_lease(&sid, "t1").wait().unwrap();
  assert!(matches!(s.start_task(&sid, "alice", &start("t2")).wait().unwrap(), Start::Started(_)), "once released");
  assert_eq!(statuses(o, &sid), ["succeeded", "running"]);

  // Another manager keeps an idle warm CLI of the session: the start says so, also on a node's
  // first start (a fresh connection, nothing prepared yet), where the reads once went out before
  // the start and found the lease still free.
  let (kept_by, ttl) = (owner("keeps"), Duration::from_secs(30));
  for round in 0..8 {
    let (sid, task) = (id(), id());
    s.create_session(&new_session(&sid, "alice", "p")).wait().unwrap();
    s.warm_hold(&sid, &kept_by, ttl).wait().unwrap();
    let node = o.other();
    let start = TaskStart { task_id: &task, kind: "task", model: "m", owner: &me, ttl, max_running: None, after: None };
    let Start::Started(began) = node.start_task(&sid, "alice", &start).wait().unwrap() else { panic!("not started") };
    assert_ne!(began.warm_left, Some(0), "round {round}: another manager's warm CLI is counted (or left to the run to ask)");
    assert_eq!(began.session.map(|s| s.id), Some(sid.clone()), "round {round}: the session read with the start");
  }
}

pub fn renewal(o: &Opened) {
  // A short TTL, renewed well within it: a second owner must stay out for several TTLs, and get
  // in once renewal stops. (Each check follows a renewal at once, so a slow machine cannot make a
  // renewed lease look lapsed; only a renewal that does not extend the lease can.)
  let s = &o.store;
  let a = id();
  s.create_session(&new_session(&a, "alice", "p")).wait().unwrap();
  let (first, second) = (owner("first"), owner("second"));
  let ttl = Duration::from_millis(400);
  let began = std::time::Instant::now();
  assert!(s.try_begin_task(&a, "t1", "task", "m", &first, ttl).wait().unwrap());
  let mut checks = 0;
  while began.elapsed() < ttl * 3 {
    std::thread::sleep(Duration::from_millis(50));
    assert!(s.renew_lease(&a, "t1", ttl).wait().unwrap(), "the lease is still the first owner's");
    assert!(
      !s.try_begin_task(&a, "t2", "task", "m", &second, ttl).wait().unwrap(),
      "renewed at {:?}: the second owner stays out",
      began.elapsed()
    );
    checks += 1;
  }
  assert!(checks >= 3, "checked past the TTL several times ({checks})");
  assert_eq!(statuses(o, &a), ["running"]);
  // Renewal stops: once the TTL has passed, the second owner gets in and the first task is
  // interrupted; the first owner's renewal now fails.
  std::thread::sleep(ttl + Duration::from_millis(100));
  assert!(s.try_begin_task(&a, "t2", "task", "m", &second, ttl).wait().unwrap(), "a lapsed lease is taken over");
  assert!(!s.renew_lease(&a, "t1", ttl).wait().unwrap(), "the first owner has lost it");
  assert_eq!(statuses(o, &a), ["interrupted", "running"]);
}

pub fn recovery(o: &Opened) {
  let s = &o.store;
  let (a, b) = (id(), id());
  s.create_session(&new_session(&a, "alice", "p")).wait().unwrap();
  s.create_session(&new_session(&b, "alice", "p")).wait().unwrap();
  let dead = Owner { id: "dead".into(), pid: 999_999_999 };
  let ttl = Duration::from_secs(300);
  assert!(s.try_begin_task(&a, "ta", "task", "m", &dead, ttl).wait().unwrap());
  assert!(s.try_begin_task(&b, "tb", "task", "m", &owner("alive"), ttl).wait().unwrap());
  assert_eq!(s.recover_interrupted(&|pid| pid == std::process::id()).wait().unwrap(), 1);
  assert_eq!(statuses(o, &a), ["interrupted"]);
  assert_eq!(statuses(o, &b), ["running"], "a live holder keeps its task");
  // The dead holder's lease went with its task: the session runs again.
  assert!(s.try_begin_task(&a, "ta2", "task", "m", &owner("alive"), ttl).wait().unwrap());
  s.finish_task(&a, "ta2", &TaskEnd { status: "succeeded".into(), ..Default::default() }, None).wait().unwrap();
  // A lease kept while a dead process's CLI exited is dropped too, with no task to interrupt.
  let kept = TaskEnd { status: "succeeded".into(), keep_lease: true, ..Default::default() };
  s.finish_task(&b, "tb", &kept, None).wait().unwrap();
  assert_eq!(s.recover_interrupted(&|pid| pid != std::process::id()).wait().unwrap(), 0, "no running task to interrupt");
  assert!(s.try_begin_task(&b, "tb2", "task", "m", &owner("alive"), ttl).wait().unwrap(), "the dead holder's lease is gone");
}

/// A task's end with what it had not stored yet, in one step: its events, then the end, then the
/// end event, in the log in that order; its transcript's last lines (a backend that keeps
/// transcripts). On a backend that fences the end (PostgreSQL), a task whose lease was taken
/// over gets `ended: false`: its events are written, its lines, end and end event are not.
pub fn end_with(o: &Opened) {
  use claude_session_manager::store::{EndWith, EndWritten, TranscriptEntry};
  let s = &o.store;
  let a = id();
  s.create_session(&new_session(&a, "alice", "p")).wait().unwrap();
  let ttl = Duration::from_millis(400);
  let line = |seq: i64, uuid: &str| TranscriptEntry {
    seq,
    subpath: String::new(),
    uuid: Some(uuid.into()),
    line: format!(r#"{{"type":"user","uuid":"{uuid}"}}"#),
  };
  let ev = |n: usize| format!(r#"{{"type":"e","n":{n}}}"#);
  let shares = s.transcripts().is_some();
  let lines = if shares { vec![line(1, "u1"), line(2, "a1")] } else { vec![] };
  assert!(s.try_begin_task(&a, "t1", "task", "m", &owner("first"), ttl).wait().unwrap());
  assert_eq!(s.append_events(&a, "t1", &[ev(1)]).wait().unwrap(), 1);
  let end =
    TaskEnd { status: "succeeded".into(), usage: Usage { input_tokens: 7, ..Default::default() }, keep_lease: true, ..Default::default() };
  let end_event = r#"{"type":"task_end","taskId":"t1"}"#;
  let with = EndWith { lines: &lines, events: &[ev(2), ev(3)], end_event: Some(end_event) };
  let written = s.finish_task_with(&a, "t1", &end, None, &with).wait().unwrap();
  assert_eq!(written, EndWritten { ended: true, last_event: Some(4) });
  let bodies: Vec<String> = o.other().read_events(&a, 0, 10).wait().unwrap().into_iter().map(|e| e.body).collect();
  assert_eq!(bodies, [ev(1), ev(2), ev(3), end_event.to_owned()], "the events, then the end event");
  assert_eq!(statuses(o, &a), ["succeeded"]);
  assert_eq!(s.get_session(&a, "alice").wait().unwrap().unwrap().usage.input_tokens, 7, "the totals");
  assert!(s.lease_kept_after_end(&a).wait().unwrap(), "kept as asked");
  if let Some(t) = s.transcripts() {
    assert_eq!(t.transcript_head(&a).wait().unwrap(), 2);
    assert_eq!(t.load_transcript(&a, 0).wait().unwrap(), lines);
  }
  s.release_lease(&a, "t1").wait().unwrap();
  // Nothing but the end: no events, no end event.
  assert!(s.try_begin_task(&a, "t2", "task", "m", &owner("first"), ttl).wait().unwrap());
  let plain = TaskEnd { status: "failed".into(), error_code: Some("CLI_ERROR".into()), ..Default::default() };
  let written = s.finish_task_with(&a, "t2", &plain, None, &EndWith::default()).wait().unwrap();
  assert_eq!(written, EndWritten { ended: true, last_event: None });
  assert_eq!(statuses(o, &a), ["succeeded", "failed"]);
  if !shares {
    return;
  }
  // Fenced: t3's lease lapses and another owner's t4 takes the session over.
  assert!(s.try_begin_task(&a, "t3", "task", "m", &owner("first"), ttl).wait().unwrap());
  std::thread::sleep(ttl + Duration::from_millis(100));
  assert!(o.other().try_begin_task(&a, "t4", "task", "m", &owner("second"), ttl).wait().unwrap());
  let late = [line(3, "late")];
  let with = EndWith { lines: &late, events: &[ev(5)], end_event: Some(r#"{"type":"task_end","taskId":"t3"}"#) };
  let written = s.finish_task_with(&a, "t3", &end, None, &with).wait().unwrap();
  assert_eq!(written, EndWritten { ended: false, last_event: Some(5) }, "the events only");
  assert_eq!(statuses(o, &a), ["succeeded", "failed", "interrupted", "running"]);
  assert_eq!(s.read_events(&a, 4, 10).wait().unwrap().into_iter().map(|e| e.body).collect::<Vec<_>>(), [ev(5)], "no end event");
  assert_eq!(s.transcripts().unwrap().transcript_head(&a).wait().unwrap(), 2, "no line of the stale holder's");
  // With no lines to fence it, the end itself is refused, and its end event goes with it.
  let with = EndWith { lines: &[], events: &[], end_event: Some(r#"{"type":"task_end","taskId":"t3"}"#) };
  let written = s.finish_task_with(&a, "t3", &end, None, &with).wait().unwrap();
  assert_eq!(written, EndWritten { ended: false, last_event: None }, "nothing written");
  assert_eq!(statuses(o, &a), ["succeeded", "failed", "interrupted", "running"]);
  assert!(s.read_events(&a, 5, 10).wait().unwrap().is_empty(), "no end event");
}

/// `create_and_start`: a new session stored with its first task's start, as `create_session`
/// then `start_task` would; an id in use, or a deleted session's, is refused and nothing starts.
pub fn create_and_start(o: &Opened) {
  let s = &o.store;
  let (me, ttl) = (owner("me"), Duration::from_secs(30));
  let mut new = new_session(&id(), "alice", "p");
  new.title = Some("first".into());
  let task = id();
  let start = TaskStart { task_id: &task, kind: "task", model: "m", owner: &me, ttl, max_running: None, after: None };
  let Start::Started(began) = s.create_and_start(&new, &start).wait().unwrap() else { panic!("not started") };
  let stored = s.get_session(&new.id, "alice").wait().unwrap().expect("the session is stored");
  assert_eq!(began.session.as_ref(), Some(&stored), "the session read with the start");
  assert_eq!(statuses(o, &new.id), ["running"]);
  // What the run used before it was stored is what was stored, but for the times.
  let mut unstored = new.unstored();
  (unstored.created_at, unstored.updated_at, unstored.last_active_at) = (stored.created_at, stored.updated_at, stored.last_active_at);
  assert_eq!(unstored, stored);

  // An id in use: refused (as create_session refuses it), the running task alone.
  let (second, third) = (id(), id());
  let again = TaskStart { task_id: &second, ..start };
  let err = s.create_and_start(&new, &again).wait().unwrap_err();
  assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
  assert_eq!(statuses(o, &new.id), ["running"]);
  // Also once that task is over (the lease free): nothing starts on the session.
  s.finish_task(&new.id, &task, &TaskEnd { status: "succeeded".into(), ..Default::default() }, None).wait().unwrap();
  let err = s.create_and_start(&new, &again).wait().unwrap_err();
  assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
  assert_eq!(statuses(o, &new.id), ["succeeded"]);
  // A deleted session's id is not used again.
  s.delete_session(&new.id, "alice").wait().unwrap();
  let gone = TaskStart { task_id: &third, ..start };
  let err = s.create_and_start(&new, &gone).wait().unwrap_err();
  assert_eq!(err.code, ErrorCode::InvalidArgument, "{err:?}");
  assert_eq!(s.get_session(&new.id, "alice").wait().unwrap(), None);
}
