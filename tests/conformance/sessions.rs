//! Sessions: ownership (another user's session is missing), the round trip of a row, listing,
//! counting, archiving, deleting, get-or-create, start-fresh and cleanup.

use std::time::Duration;

use claude_session_manager::error::ErrorCode;
use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{ContextSnapshot, ListQuery, NewSession};

use super::fixtures::{id, new_session, owner};
use super::Opened;

pub fn round_trip(o: &Opened) {
  let s = &o.store;
  assert!(s.schema_version().wait().unwrap() >= 1, "migrated on open");
  assert_eq!(o.other().schema_version().wait().unwrap(), s.schema_version().wait().unwrap(), "opening again is a no-op");
  let (a, b) = (id(), id());
  let created = s.create_session(&new_session(&a, "alice", "p")).wait().unwrap();
  assert_eq!(created.status, "active");
  assert!(created.created_at > 1_600_000_000_000, "milliseconds since the epoch");
  s.create_session(&new_session(&b, "bob", "p")).wait().unwrap();
  assert_eq!(s.get_session(&a, "alice").wait().unwrap().unwrap(), created);
  // Another user's session is missing, whatever is asked of it.
  assert!(s.get_session(&a, "bob").wait().unwrap().is_none());
  assert_eq!(s.archive_session(&a, "bob").wait().unwrap_err().code, ErrorCode::SessionNotFound);
  assert_eq!(s.delete_session(&a, "bob").wait().unwrap_err().code, ErrorCode::SessionNotFound);
  let q = ListQuery { user_id: "alice".into(), limit: 10, ..Default::default() };
  assert_eq!(s.list_sessions(&q).wait().unwrap().iter().map(|x| x.id.clone()).collect::<Vec<_>>(), vec![a.clone()]);
  assert_eq!(s.count_sessions("alice", None).wait().unwrap(), 1);
  assert_eq!(s.count_sessions("alice", Some("other")).wait().unwrap(), 0);
  // The same id again is refused.
  assert_eq!(s.create_session(&new_session(&a, "bob", "p")).wait().unwrap_err().code, ErrorCode::InvalidArgument);
  // The context snapshot is replaced as given.
  let ctx = ContextSnapshot { tokens: 1234, window: 200_000, source: "api".into(), measured_at: 7 };
  s.set_context(&a, &ctx).wait().unwrap();
  assert_eq!(s.get_session(&a, "alice").wait().unwrap().unwrap().context, Some(ctx));
  let archived = s.archive_session(&a, "alice").wait().unwrap();
  assert_eq!(archived.status, "archived");
  s.delete_session(&a, "alice").wait().unwrap();
  assert_eq!(s.delete_session(&a, "alice").wait().unwrap_err().code, ErrorCode::SessionNotFound);
  assert!(s.get_session(&a, "alice").wait().unwrap().is_none());
  // A deleted id is never given out again.
  assert_eq!(s.create_session(&new_session(&a, "alice", "p")).wait().unwrap_err().code, ErrorCode::InvalidArgument);
}

pub fn get_or_create_and_start_fresh(o: &Opened) {
  let s = &o.store;
  let (first, made) = s.get_or_create(&new_session(&id(), "alice", "p"), true).wait().unwrap();
  assert!(made, "nothing to reuse yet");
  let (same, made) = s.get_or_create(&new_session(&id(), "alice", "p"), true).wait().unwrap();
  assert!(!made);
  assert_eq!(same.id, first.id, "the newest active session is reused");
  let (fresh, archived) = s.start_fresh(&new_session(&id(), "alice", "p")).wait().unwrap();
  assert_eq!(archived, 1);
  assert_eq!(s.get_session(&first.id, "alice").wait().unwrap().unwrap().status, "archived");
  let q =
    ListQuery { user_id: "alice".into(), project_id: Some("p".into()), status: Some("active".into()), limit: 10, ..Default::default() };
  assert_eq!(s.list_sessions(&q).wait().unwrap().iter().map(|x| x.id.clone()).collect::<Vec<_>>(), vec![fresh.id.clone()]);
  assert_eq!(s.count_sessions("alice", None).wait().unwrap(), 2);
  // Bob's start-fresh archives nothing of alice's.
  let (_, archived) = s.start_fresh(&new_session(&id(), "bob", "p")).wait().unwrap();
  assert_eq!(archived, 0);
  assert_eq!(s.get_session(&fresh.id, "alice").wait().unwrap().unwrap().status, "active");
}

pub fn cleanup(o: &Opened) {
  let s = &o.store;
  let (a, b, c, running) = (id(), id(), id(), id());
  // Alice: an idle archived session and a fork of it, and one running a task. Bob: one idle
  // archived session.
  s.create_session(&new_session(&a, "alice", "p")).wait().unwrap();
  s.create_session(&NewSession { parent_id: Some(a.clone()), ..new_session(&c, "alice", "p") }).wait().unwrap();
  s.archive_session(&a, "alice").wait().unwrap();
  s.create_session(&new_session(&running, "alice", "p")).wait().unwrap();
  assert!(s.try_begin_task(&running, "t", "task", "m", &owner("me"), Duration::from_secs(30)).wait().unwrap());
  s.create_session(&new_session(&b, "bob", "p")).wait().unwrap();
  s.archive_session(&b, "bob").wait().unwrap();
  std::thread::sleep(Duration::from_millis(5));
  // Bob's cleanup of everything idle, active or not, in any project or in alice's project.
  for project in [None, Some("p")] {
    let deleted = s.cleanup_sessions("bob", project, 0, false).wait().unwrap();
    assert!(deleted.iter().all(|d| d.user_id == "bob"), "{deleted:?}");
  }
  assert!(s.get_session(&b, "bob").wait().unwrap().is_none(), "bob's own session went");
  assert_eq!(s.get_session(&a, "alice").wait().unwrap().expect("alice's session is kept").status, "archived");
  assert_eq!(s.get_session(&c, "alice").wait().unwrap().expect("and her fork").parent_id.as_deref(), Some(a.as_str()));
  assert_eq!(s.count_sessions("alice", None).wait().unwrap(), 3);
  assert_eq!(s.cleanup("mallory", None, 0, false).wait().unwrap(), 0, "a user with no sessions deletes nothing");
  // Nothing was idle for a day.
  assert_eq!(s.cleanup("alice", None, 24 * 3_600_000, false).wait().unwrap(), 0);
  // Alice's own cleanup of archived sessions deletes hers, not the running or the active one.
  assert_eq!(s.cleanup("alice", None, 0, true).wait().unwrap(), 1);
  assert!(s.get_session(&a, "alice").wait().unwrap().is_none());
  assert_eq!(s.get_session(&c, "alice").wait().unwrap().unwrap().parent_id, None, "her fork is unlinked from the deleted parent");
  // Everything idle, active included: the running session stays.
  assert_eq!(s.cleanup("alice", None, 0, false).wait().unwrap(), 1);
  assert!(s.get_session(&running, "alice").wait().unwrap().is_some(), "a session running a task is not cleaned up");
}
