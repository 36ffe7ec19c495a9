//! Branch points at the store, the same on every backend: a fork's message and a pending rewind
//! round-trip, a run clears only the point it used, forks are listed per user with their message,
//! and the row goes with its session.

use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{BranchPoint, NewSession, Store};

use super::fixtures;

pub fn check(s: &Store, other: impl Fn() -> Store) {
  let parent = fixtures::id();
  s.create_session(&fixtures::new_session(&parent, "u", "p")).wait().unwrap();
  assert_eq!(s.branch_point(&parent).wait().unwrap(), None);
  let fork = |at: Option<&str>| {
    let id = fixtures::id();
    s.create_session(&NewSession { parent_id: Some(parent.clone()), ..fixtures::new_session(&id, "u", "p") }).wait().unwrap();
    if let Some(at) = at {
      let b = BranchPoint { fork_at: Some(at.into()), resume_at: Some(format!("{at}-line")), resume_drops: None };
      s.set_branch_point(&id, &b).wait().unwrap();
    }
    id
  };
  let (f1, f2) = (fork(Some("m1")), fork(None));
  let elsewhere = other();
  let got = elsewhere.branch_point(&f1).wait().unwrap().unwrap();
  assert_eq!((got.fork_at.as_deref(), got.resume_at.as_deref()), (Some("m1"), Some("m1-line")));
  // In creation order; two forks made in the same millisecond in either order.
  let mut forks = elsewhere.forks_of(&parent, "u").wait().unwrap();
  forks.sort();
  let mut want = vec![(f1.clone(), Some("m1".to_string())), (f2.clone(), None)];
  want.sort();
  assert_eq!(forks, want);
  assert!(elsewhere.forks_of(&parent, "mallory").wait().unwrap().is_empty(), "another user's forks are not listed");

  // A rewind replaces the pending point; a run clears only the point it used.
  let b = BranchPoint { fork_at: Some("m1".into()), resume_at: Some("r2".into()), resume_drops: Some("p3".into()) };
  s.set_branch_point(&f1, &b).wait().unwrap();
  elsewhere.clear_resume(&f1, "m1-line").wait().unwrap();
  assert_eq!(s.branch_point(&f1).wait().unwrap().unwrap(), b, "an older point's run does not clear a newer rewind");
  elsewhere.clear_resume(&f1, "r2").wait().unwrap();
  assert_eq!(s.branch_point(&f1).wait().unwrap().unwrap(), BranchPoint { fork_at: Some("m1".into()), ..Default::default() });

  s.delete_session(&f1, "u").wait().unwrap();
  assert_eq!(s.branch_point(&f1).wait().unwrap(), None, "the row goes with its session");
}
