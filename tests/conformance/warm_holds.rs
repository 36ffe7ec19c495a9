//! Warm holds at the store (which manager keeps an idle warm CLI of a session), the same on every
//! backend, each side on its own connection as another process or node would be: a task
//! elsewhere marks the holds of others wanted and counts them until they are released; an
//! expired hold, or one of a dead owner on this machine, does not count.

use std::time::Duration;

use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{Owner, Store};

pub fn check(s: &Store, sid: &str, other: impl Fn() -> Store) {
  let elsewhere = other();
  let a = Owner { id: uuid::Uuid::new_v4().to_string(), pid: std::process::id() };
  let b = Owner { id: uuid::Uuid::new_v4().to_string(), pid: std::process::id() };
  let alive = |_: u32| true;
  assert_eq!(elsewhere.warm_elsewhere(sid, &b.id, &alive).wait().unwrap(), 0, "nobody keeps a CLI");
  s.warm_hold(sid, &a, Duration::from_secs(30)).wait().unwrap();
  assert_eq!(s.warm_elsewhere(sid, &a.id, &alive).wait().unwrap(), 0, "its own hold does not count");
  assert!(s.warm_wanted(&a.id).wait().unwrap().is_empty());
  assert_eq!(elsewhere.warm_elsewhere(sid, &b.id, &alive).wait().unwrap(), 1, "A keeps one");
  assert_eq!(s.warm_wanted(&a.id).wait().unwrap(), vec![sid.to_owned()], "and is asked to give it up");
  s.warm_release(sid, &a.id).wait().unwrap();
  assert_eq!(elsewhere.warm_elsewhere(sid, &b.id, &alive).wait().unwrap(), 0, "released");

  // A hold of a dead owner goes at once; an expired one does not count; a renewed one does.
  s.warm_hold(sid, &a, Duration::from_secs(30)).wait().unwrap();
  assert_eq!(elsewhere.warm_elsewhere(sid, &b.id, &|_| false).wait().unwrap(), 0, "its owner is dead");
  assert_eq!(elsewhere.warm_elsewhere(sid, &b.id, &alive).wait().unwrap(), 0, "and the hold is gone");
  s.warm_hold(sid, &a, Duration::from_millis(1)).wait().unwrap();
  std::thread::sleep(Duration::from_millis(20));
  assert_eq!(elsewhere.warm_elsewhere(sid, &b.id, &alive).wait().unwrap(), 0, "expired");
  s.warm_hold(sid, &a, Duration::from_millis(1)).wait().unwrap();
  s.warm_renew(&a.id, Duration::from_secs(30)).wait().unwrap();
  std::thread::sleep(Duration::from_millis(20));
  assert_eq!(elsewhere.warm_elsewhere(sid, &b.id, &alive).wait().unwrap(), 1, "renewed");
  s.warm_release(sid, &a.id).wait().unwrap();
}
