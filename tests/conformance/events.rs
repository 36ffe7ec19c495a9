//! The event log and stop requests at the store, the same on every backend: numbers are per
//! session, contiguous and never reused (also once swept), a read after a number pages in order,
//! another connection (process or node) sees the rows, a stop request marks only the running task.

use std::time::Duration;

use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{EventBounds, Notice, Store, TaskEnd};

use crate::fixtures;

/// Runs the checks on `s`, whose sessions `sid` and `other_sid` exist and run nothing; `other`
/// opens another connection to the same store.
pub fn check(s: &Store, sid: &str, other_sid: &str, other: impl Fn() -> Store) {
  let elsewhere = other();
  assert_eq!(s.event_bounds(sid).wait().unwrap(), EventBounds { first: 1, last: 0 }, "an empty log");
  assert!(s.running_task(sid).wait().unwrap().is_none());
  assert!(s.request_abort(sid).wait().unwrap().is_none(), "nothing runs: nothing to stop");
  let me = fixtures::owner("me");
  assert!(s.try_begin_task(sid, "t1", "task", "sonnet", &me, Duration::from_secs(30)).wait().unwrap());
  let running = elsewhere.running_task(sid).wait().unwrap().expect("seen from another connection");
  assert_eq!((running.task_id.as_str(), running.kind.as_str(), running.owner_id.as_str()), ("t1", "task", "me"));
  assert!(!running.abort_requested);

  let ev = |n: usize| format!(r#"{{"type":"e","n":{n}}}"#);
  // The store rings its doorbell for every append, with the session and the last number only,
  // to every connection that listens (PostgreSQL `NOTIFY`, SQLite's `notices`).
  let mut bell = elsewhere.subscribe();
  let rx = &mut bell;
  assert_eq!(next_notice(rx), Notice::Listening);
  assert_eq!(s.append_events(sid, "t1", &[ev(1), ev(2), ev(3)]).wait().unwrap(), 3);
  assert_eq!(next_notice(rx), Notice::Events { session_id: sid.into(), seq: 3 });
  assert_eq!(elsewhere.append_events(other_sid, "tx", &[ev(1)]).wait().unwrap(), 1, "numbers are per session");
  assert_eq!(elsewhere.append_events(sid, "t1", &[ev(4)]).wait().unwrap(), 4, "any connection continues the numbers");
  let all = elsewhere.read_events(sid, 0, 100).wait().unwrap();
  assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
  assert_eq!(all.iter().map(|e| e.body.clone()).collect::<Vec<_>>(), vec![ev(1), ev(2), ev(3), ev(4)], "in order, as written");
  assert!(all.iter().all(|e| e.task_id == "t1" && e.at > 0));
  let page = s.read_events(sid, 1, 2).wait().unwrap();
  assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3], "after a number, up to the limit");
  assert!(s.read_events(sid, 4, 10).wait().unwrap().is_empty());
  assert_eq!(s.event_bounds(sid).wait().unwrap(), EventBounds { first: 1, last: 4 });
  assert_eq!(elsewhere.task_first_seq(sid, "t1").wait().unwrap(), Some(1));
  assert_eq!(elsewhere.task_first_seq(sid, "t2").wait().unwrap(), None);
  assert_eq!(elsewhere.task_first_seq(other_sid, "t1").wait().unwrap(), None, "another session's");
  assert!(s.append_events("00000000-0000-4000-8000-000000000000", "t1", &[ev(1)]).wait().is_err(), "no such session");

  // A stop request marks the running task, seen from anywhere.
  assert!(!s.abort_requested("t1").wait().unwrap());
  let asked = s.request_abort(sid).wait().unwrap().expect("a task runs");
  assert_eq!(asked.task_id, "t1");
  let mut n = next_notice(&mut bell);
  while matches!(n, Notice::Events { .. }) {
    n = next_notice(&mut bell);
  }
  assert_eq!(n, Notice::Abort { session_id: sid.into(), task_id: "t1".into() });
  assert!(s.abort_requested("t1").wait().unwrap());
  assert!(s.running_task(sid).wait().unwrap().unwrap().abort_requested);

  // A running task's events are never swept; an ended one's go after the retention.
  assert_eq!(s.sweep_events(Duration::ZERO).wait().unwrap(), 0);
  s.finish_task(sid, "t1", &TaskEnd { status: "aborted".into(), ..Default::default() }, None).wait().unwrap();
  assert!(s.running_task(sid).wait().unwrap().is_none());
  assert_eq!(s.sweep_events(Duration::from_secs(3600)).wait().unwrap(), 0, "ended within the retention");
  std::thread::sleep(Duration::from_millis(5));
  assert_eq!(elsewhere.sweep_events(Duration::from_millis(1)).wait().unwrap(), 4);
  assert_eq!(s.event_bounds(sid).wait().unwrap(), EventBounds { first: 5, last: 4 }, "nothing kept; the numbers go on");
  assert!(s.try_begin_task(sid, "t2", "task", "sonnet", &me, Duration::from_secs(30)).wait().unwrap());
  assert_eq!(s.append_events(sid, "t2", &[ev(5)]).wait().unwrap(), 5, "never reused");
  assert_eq!(s.task_first_seq(sid, "t2").wait().unwrap(), Some(5));
  assert_eq!(s.task_first_seq(sid, "t1").wait().unwrap(), None, "swept");
  assert_eq!(s.event_bounds(sid).wait().unwrap(), EventBounds { first: 5, last: 5 });
  assert_eq!(elsewhere.read_events(other_sid, 0, 10).wait().unwrap().len(), 1, "another session's log is untouched");

  // Deleting a session deletes its events, and only its own.
  s.finish_task(sid, "t2", &TaskEnd { status: "succeeded".into(), ..Default::default() }, None).wait().unwrap();
  s.delete_session(sid, "u").wait().unwrap();
  assert!(elsewhere.read_events(sid, 0, 10).wait().unwrap().is_empty(), "deleted with the session");
  assert_eq!(elsewhere.read_events(other_sid, 0, 10).wait().unwrap().len(), 1, "another session's log is untouched");
}

/// The next notice of a doorbell, waiting up to 10 s.
fn next_notice(rx: &mut tokio::sync::broadcast::Receiver<Notice>) -> Notice {
  let deadline = std::time::Instant::now() + Duration::from_secs(10);
  loop {
    match rx.try_recv() {
      Ok(n) => return n,
      Err(tokio::sync::broadcast::error::TryRecvError::Empty) if std::time::Instant::now() < deadline => {
        std::thread::sleep(Duration::from_millis(5))
      }
      Err(e) => panic!("no notice: {e}"),
    }
  }
}
