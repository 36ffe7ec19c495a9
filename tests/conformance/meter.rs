//! The context meter: the window a model reported and the compactions of a session, written
//! with a task's end.

use std::time::Duration;

use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{Compaction, TaskEnd};

use super::fixtures::{id, new_session, owner};
use super::Opened;

pub fn window_and_compactions(o: &Opened) {
  let s = &o.store;
  let (a, b) = (id(), id());
  s.create_session(&new_session(&a, "alice", "p")).wait().unwrap();
  let me = owner("me");
  assert_eq!(s.window_for("sonnet").wait().unwrap(), None);
  assert!(s.list_compactions(&a).wait().unwrap().is_empty());
  assert!(s.try_begin_task(&a, "t1", "task", "sonnet", &me, Duration::from_secs(30)).wait().unwrap());
  let compaction = |pre: u64, post: u64| Compaction {
    session_id: a.clone(),
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
  s.finish_task(&a, "t1", &end, None).wait().unwrap();
  assert_eq!(s.window_for("sonnet").wait().unwrap(), Some(1_000_000));
  assert_eq!(s.window_for("opus").wait().unwrap(), None, "per model");
  assert_eq!(s.list_compactions(&a).wait().unwrap(), vec![compaction(990_047, 1018), compaction(50_000, 900)]);
  assert!(s.list_compactions(&b).wait().unwrap().is_empty(), "per session");
  // A later report replaces the window.
  assert!(s.try_begin_task(&a, "t2", "task", "sonnet", &me, Duration::from_secs(30)).wait().unwrap());
  let end = TaskEnd { status: "succeeded".into(), window: Some(("sonnet".into(), 200_000)), ..Default::default() };
  s.finish_task(&a, "t2", &end, None).wait().unwrap();
  assert_eq!(s.window_for("sonnet").wait().unwrap(), Some(200_000));
}
