//! The inbox at the store (what is forwarded to the process running a task), the same on every
//! backend: a message is accepted only for the session's watched running task, an answer is
//! written once to a pending request, and each side sees what the other wrote through its own
//! connection (as another process or node would).

use std::time::Duration;

use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{Delivery, Owner, Receipt, Store, TaskEnd};

/// Runs the checks on `s`, whose session `sid` exists and runs nothing; `other` opens another
/// connection to the same store.
pub fn check(s: &Store, sid: &str, other: impl Fn() -> Store) {
  let elsewhere = other();
  let me = Owner { id: uuid::Uuid::new_v4().to_string(), pid: std::process::id() };
  assert_eq!(elsewhere.inbox_send(sid, "hi").wait().unwrap(), None, "no task runs");
  assert!(s.try_begin_task(sid, "t1", "task", "sonnet", &me, Duration::from_secs(30)).wait().unwrap());
  assert_eq!(elsewhere.inbox_send(sid, "hi").wait().unwrap(), None, "a task runs, but does not read its inbox (a cold run)");
  s.inbox_open(sid, "t1").wait().unwrap();

  // A message: left elsewhere, steered here, the outcome read (and the row gone) elsewhere.
  let m = elsewhere.inbox_send(sid, "also this").wait().unwrap().expect("accepted for the watched task");
  assert_eq!(elsewhere.inbox_receipt(m).wait().unwrap(), Receipt::Waiting);
  assert_eq!(s.inbox_poll(sid, "t1").wait().unwrap(), vec![Delivery::Message { id: m, text: "also this".into() }]);
  s.inbox_mark(m, Receipt::Steered).wait().unwrap();
  s.inbox_mark(m, Receipt::Refused).wait().unwrap();
  assert!(s.inbox_poll(sid, "t1").wait().unwrap().is_empty(), "handled");
  assert_eq!(elsewhere.inbox_receipt(m).wait().unwrap(), Receipt::Steered, "the first outcome stays");
  assert_eq!(elsewhere.inbox_receipt(m).wait().unwrap(), Receipt::Refused, "read once; the row is gone");
  // One past the task's limit: its sender reads why.
  let over = elsewhere.inbox_send(sid, "one too many").wait().unwrap().expect("accepted");
  s.inbox_mark(over, Receipt::TooMuch).wait().unwrap();
  assert_eq!(elsewhere.inbox_receipt(over).wait().unwrap(), Receipt::TooMuch);

  // A permission request: answered once, elsewhere; read here; gone once settled.
  s.inbox_ask(sid, "t1", "r1").wait().unwrap();
  assert!(s.inbox_poll(sid, "t1").wait().unwrap().is_empty(), "pending, unanswered");
  assert!(!elsewhere.inbox_answer(sid, "r2", "{}").wait().unwrap(), "no such request");
  assert!(!elsewhere.inbox_answer("00000000-0000-4000-8000-000000000000", "r1", "{}").wait().unwrap(), "not in that session");
  assert!(elsewhere.inbox_answer(sid, "r1", r#"{"behavior":"allow"}"#).wait().unwrap());
  assert!(!elsewhere.inbox_answer(sid, "r1", r#"{"behavior":"deny"}"#).wait().unwrap(), "answered already");
  assert_eq!(
    s.inbox_poll(sid, "t1").wait().unwrap(),
    vec![Delivery::Answer { request_id: "r1".into(), answer: r#"{"behavior":"allow"}"#.into() }]
  );
  s.inbox_forget(sid, "r1").wait().unwrap();
  assert!(s.inbox_poll(sid, "t1").wait().unwrap().is_empty());
  assert!(!elsewhere.inbox_answer(sid, "r1", "{}").wait().unwrap(), "settled");

  // The task stops reading: its pending requests go, a message not yet handled is refused, and
  // no new one is accepted.
  s.inbox_ask(sid, "t1", "r3").wait().unwrap();
  let late = elsewhere.inbox_send(sid, "late").wait().unwrap().expect("accepted");
  s.inbox_close(sid, "t1").wait().unwrap();
  assert!(!elsewhere.inbox_answer(sid, "r3", "{}").wait().unwrap());
  assert_eq!(elsewhere.inbox_receipt(late).wait().unwrap(), Receipt::Refused);
  assert_eq!(elsewhere.inbox_send(sid, "hi").wait().unwrap(), None);

  // A task that ended takes no message, even with its watch row left behind (its manager died).
  s.inbox_open(sid, "t1").wait().unwrap();
  assert!(elsewhere.inbox_send(sid, "x").wait().unwrap().is_some());
  s.finish_task(sid, "t1", &TaskEnd { status: "succeeded".into(), ..Default::default() }, None).wait().unwrap();
  assert_eq!(elsewhere.inbox_send(sid, "hi").wait().unwrap(), None);
}
