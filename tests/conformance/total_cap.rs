//! `maxConcurrentTasksTotal` at the store, the same on every backend: live leases of the whole
//! database are counted, and the count and the take are one step for starters on several
//! connections (as several processes or nodes have).

use std::time::Duration;

use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{Begin, Owner, Store, TaskEnd, TaskStart};

/// Runs the checks on `s`, whose eight sessions `ids` exist and run nothing; `other` opens
/// another connection to the same store.
pub fn check(s: &Store, ids: &[String], other: impl Fn() -> Store + Sync) {
  let me = Owner { id: uuid::Uuid::new_v4().to_string(), pid: std::process::id() };
  let start = |task_id, ttl, max_running| TaskStart { task_id, kind: "task", model: "sonnet", owner: &me, ttl, max_running, after: None };
  let (ttl, cap) = (Duration::from_secs(30), Some(2));
  let done = TaskEnd { status: "succeeded".into(), ..Default::default() };
  assert_eq!(s.begin_task(&ids[0], &start("t0", ttl, cap)).wait().unwrap(), Begin::Started);
  assert_eq!(s.begin_task(&ids[0], &start("t0b", ttl, cap)).wait().unwrap(), Begin::SessionHeld);
  assert_eq!(s.begin_task(&ids[1], &start("t1", ttl, cap)).wait().unwrap(), Begin::Started);
  assert_eq!(s.begin_task(&ids[2], &start("t2", ttl, cap)).wait().unwrap(), Begin::Full, "two live leases");
  assert!(s.list_tasks(&ids[2]).wait().unwrap().is_empty(), "a refused start writes nothing");
  assert_eq!(s.begin_task(&ids[2], &start("t2", ttl, Some(3))).wait().unwrap(), Begin::Started, "the limit is the caller's");
  s.finish_task(&ids[2], "t2", &done, None).wait().unwrap();
  // A lease kept while the CLI exits still counts (the CLI is there); released, it does not.
  s.finish_task(&ids[0], "t0", &TaskEnd { keep_lease: true, ..done.clone() }, None).wait().unwrap();
  assert_eq!(s.begin_task(&ids[2], &start("t2b", ttl, cap)).wait().unwrap(), Begin::Full);
  s.release_lease(&ids[0], "t0").wait().unwrap();
  assert_eq!(s.begin_task(&ids[2], &start("t2b", ttl, cap)).wait().unwrap(), Begin::Started);
  // An expired lease (its process died) does not count.
  s.finish_task(&ids[1], "t1", &done, None).wait().unwrap();
  s.finish_task(&ids[2], "t2b", &done, None).wait().unwrap();
  assert_eq!(s.begin_task(&ids[3], &start("dead", Duration::from_millis(1), None)).wait().unwrap(), Begin::Started);
  std::thread::sleep(Duration::from_millis(50));
  assert_eq!(s.begin_task(&ids[4], &start("t4", ttl, cap)).wait().unwrap(), Begin::Started);
  assert_eq!(s.begin_task(&ids[5], &start("t5", ttl, cap)).wait().unwrap(), Begin::Started);
  assert_eq!(s.begin_task(&ids[6], &start("t6", ttl, cap)).wait().unwrap(), Begin::Full);
  s.finish_task(&ids[4], "t4", &done, None).wait().unwrap();
  s.finish_task(&ids[5], "t5", &done, None).wait().unwrap();
  // Six starters on six connections of their own, released together on six sessions: exactly
  // three start under a limit of three.
  let stores: Vec<Store> = (0..6).map(|_| other()).collect();
  let barrier = std::sync::Barrier::new(stores.len());
  let started = std::thread::scope(|sc| {
    let hs: Vec<_> = stores
      .iter()
      .zip(&ids[2..8])
      .enumerate()
      .map(|(i, (own, sid))| {
        let barrier = &barrier;
        sc.spawn(move || {
          let owner = Owner { id: format!("racer{i}"), pid: std::process::id() };
          let task = format!("race{i}");
          barrier.wait();
          let start = TaskStart {
            task_id: &task,
            kind: "task",
            model: "sonnet",
            owner: &owner,
            ttl: Duration::from_secs(30),
            max_running: Some(3),
            after: None,
          };
          own.begin_task(sid, &start).wait().unwrap()
        })
      })
      .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
  });
  assert_eq!(started.iter().filter(|b| **b == Begin::Started).count(), 3, "{started:?}");
  assert_eq!(started.iter().filter(|b| **b == Begin::Full).count(), 3, "{started:?}");
}
