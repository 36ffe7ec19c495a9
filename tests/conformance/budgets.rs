//! Spend caps and the ledger of model calls, the same on every backend: a call is admitted only
//! when its reserve fits under every cap that applies, the check and the reserve are one step for
//! admitters on several connections, and settled calls are summed by day, model and session.

use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{Admit, BudgetDefaults, BudgetKey, CallAdmit, CallTokens, NewSession, Store, UsageQuery};

use crate::fixtures::{id, new_session};

fn key(scope: &str, user: &str, project: &str, session: &str) -> BudgetKey {
  BudgetKey { scope: scope.into(), user_id: user.into(), project_id: project.into(), session_id: session.into() }
}

fn call<'a>(task: &'a str, session: &'a str, user: &'a str, project: &'a str, reserve: f64) -> CallAdmit<'a> {
  CallAdmit { task_id: task, session_id: session, user_id: user, project_id: project, model: "claude-sonnet-4-5", reserve_usd: reserve }
}

fn go(a: Admit) -> i64 {
  match a {
    Admit::Go(id) => id,
    other => panic!("refused: {other:?}"),
  }
}

fn over_scope(a: Admit) -> String {
  match a {
    Admit::Over { key, .. } => key.label(),
    other => panic!("admitted: {other:?}"),
  }
}

/// Eight calls of 0.3 admitted at once, each on a connection of its own, released together;
/// `who(i)` is the i-th call's (user, session, project).
fn at_once(other: &(impl Fn() -> Store + Sync), who: impl Fn(usize) -> (String, String, String) + Sync) -> Vec<Admit> {
  let stores: Vec<Store> = (0..8).map(|_| other()).collect();
  let barrier = std::sync::Barrier::new(stores.len());
  std::thread::scope(|sc| {
    let hs: Vec<_> = stores
      .iter()
      .enumerate()
      .map(|(i, own)| {
        let (barrier, who) = (&barrier, &who);
        sc.spawn(move || {
          let (user, session, project) = who(i);
          barrier.wait();
          own.admit_call(&call("race", &session, &user, &project, 0.3), &BudgetDefaults::default()).wait().unwrap()
        })
      })
      .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
  })
}

/// Runs the checks on `s` (fresh ids: `u` is unique to this run); `other` opens another
/// connection to the same store.
pub fn check(s: &Store, u: &str, other: impl Fn() -> Store + Sync) {
  let none = BudgetDefaults::default();
  let t = CallTokens { input: 100, output: 10, cache_read: 5, cache_write: 1 };
  // No cap: every call goes, and is in the ledger at its reserve until settled.
  let id = go(s.admit_call(&call("t0", "s0", u, "p", 5.0), &none).wait().unwrap());
  s.settle_call(id, "claude-sonnet-4-5-20250929", &t, 0.25).wait().unwrap();

  // A session cap: reserves count until settled, then the real price does.
  s.set_budget(&key("session", u, "", "s1"), 1.0, None).wait().unwrap();
  let a = go(s.admit_call(&call("t1", "s1", u, "p", 0.6), &none).wait().unwrap());
  assert_eq!(over_scope(s.admit_call(&call("t1", "s1", u, "p", 0.6), &none).wait().unwrap()), "session", "0.6 reserved + 0.6 > 1");
  s.settle_call(a, "", &t, 0.3).wait().unwrap();
  let b = go(s.admit_call(&call("t1", "s1", u, "p", 0.6), &none).wait().unwrap());
  s.settle_call(b, "", &t, 0.6).wait().unwrap();
  assert_eq!(over_scope(s.admit_call(&call("t1", "s1", u, "p", 0.2), &none).wait().unwrap()), "session");
  let got = s.get_budget(&key("session", u, "", "s1")).wait().unwrap().expect("stored");
  assert!((got.spent_usd - 0.9).abs() < 1e-9, "{got:?}");
  assert_eq!((got.usd, got.period.as_deref(), got.period_start), (1.0, None, 0));
  // Raised: the session goes on.
  s.set_budget(&key("session", u, "", "s1"), 2.0, None).wait().unwrap();
  go(s.admit_call(&call("t2", "s1", u, "p", 0.6), &none).wait().unwrap());
  // Another session of the user has no cap.
  go(s.admit_call(&call("t3", "s2", u, "p", 0.6), &none).wait().unwrap());

  // A user cap counts every session of the user (s0's 0.25, s1's 0.9 + 0.6, s2's 0.6 so far).
  s.set_budget(&key("user", u, "", ""), 3.0, Some("day")).wait().unwrap();
  let user = s.get_budget(&key("user", u, "", "")).wait().unwrap().unwrap();
  assert!((user.spent_usd - 2.35).abs() < 1e-9, "{user:?}");
  assert!(user.period_start > 0 && user.period_start % 86_400_000 == 0, "a UTC day: {}", user.period_start);
  // What the scope spent, read alone, is what its cap reports, for the period asked.
  let (spent, start) = s.spent_in(&key("user", u, "", ""), Some("day")).wait().unwrap();
  assert_eq!((spent, start), (user.spent_usd, user.period_start));
  assert_eq!(s.spent_in(&key("user", u, "", ""), None).wait().unwrap().1, 0, "a lifetime starts at 0");
  assert_eq!(over_scope(s.admit_call(&call("t4", "s3", u, "p", 0.7), &none).wait().unwrap()), "user");
  go(s.admit_call(&call("t4", "s3", u, "p", 0.6), &none).wait().unwrap());
  assert!(s.delete_budget(&key("user", u, "", "")).wait().unwrap());
  assert!(!s.delete_budget(&key("user", u, "", "")).wait().unwrap(), "already gone");
  assert!(s.get_budget(&key("user", u, "", "")).wait().unwrap().is_none());

  // A project cap of a user: other projects and other users are not counted.
  s.set_budget(&key("project", u, "q", ""), 1.0, Some("month")).wait().unwrap();
  go(s.admit_call(&call("t5", "s4", u, "q", 0.9), &none).wait().unwrap());
  assert_eq!(over_scope(s.admit_call(&call("t5", "s5", u, "q", 0.2), &none).wait().unwrap()), "project");
  go(s.admit_call(&call("t5", "s6", u, "other", 0.2), &none).wait().unwrap());
  let v = format!("{u}-v");
  go(s.admit_call(&call("t6", "s7", &v, "q", 0.9), &none).wait().unwrap());

  // Defaults apply where nothing is stored; a stored cap wins over them.
  let w = format!("{u}-w");
  let defaults = BudgetDefaults { per_user: Some((1.0, Some("day".into()))), per_session: Some(0.5) };
  assert_eq!(over_scope(s.admit_call(&call("t7", "w1", &w, "p", 0.6), &defaults).wait().unwrap()), "session");
  go(s.admit_call(&call("t7", "w1", &w, "p", 0.4), &defaults).wait().unwrap());
  go(s.admit_call(&call("t7", "w2", &w, "p", 0.4), &defaults).wait().unwrap());
  assert_eq!(over_scope(s.admit_call(&call("t7", "w3", &w, "p", 0.4), &defaults).wait().unwrap()), "user");
  s.set_budget(&key("user", &w, "", ""), 10.0, None).wait().unwrap();
  go(s.admit_call(&call("t7", "w3", &w, "p", 0.4), &defaults).wait().unwrap());

  // Reports: by session, model and day, filtered.
  let q = |group: &str| UsageQuery { user_id: Some(u.into()), group_by: group.into(), ..Default::default() };
  let by_session = s.usage_report(&UsageQuery { project_id: Some("p".into()), ..q("session") }).wait().unwrap();
  let keys: Vec<&str> = by_session.iter().map(|r| r.key.as_str()).collect();
  assert_eq!(keys, ["s0", "s1", "s2", "s3"]);
  let s1 = &by_session[1];
  assert_eq!(s1.calls, 3);
  assert_eq!(s1.tokens, CallTokens { input: 200, output: 20, cache_read: 10, cache_write: 2 });
  assert!((s1.usd - 1.5).abs() < 1e-9, "{s1:?}");
  let by_model = s.usage_report(&UsageQuery { session_id: Some("s0".into()), ..q("model") }).wait().unwrap();
  assert_eq!(by_model.len(), 1);
  assert_eq!(by_model[0].key, "claude-sonnet-4-5-20250929", "the model upstream reported");
  let by_day = s.usage_report(&q("day")).wait().unwrap();
  assert_eq!(by_day.len(), 1);
  assert_eq!(by_day[0].key.len(), 10, "{:?}", by_day[0].key);
  assert_eq!(by_day[0].calls, 8);
  let future = s.usage_report(&UsageQuery { since: Some(i64::MAX - 1), ..q("day") }).wait().unwrap();
  assert!(future.is_empty());

  // Eight admitters on connections of their own, released together: a cap of 1.0 with reserves
  // of 0.3 admits exactly three.
  let r = format!("{u}-race");
  s.set_budget(&key("user", &r, "", ""), 1.0, None).wait().unwrap();
  let admitted = at_once(&other, |i| (r.clone(), format!("race{i}"), "p".into()));
  assert_eq!(admitted.iter().filter(|a| matches!(a, Admit::Go(_))).count(), 3, "{admitted:?}");

  project_total(s, u, &other);
  lineage(s, u, &other);
  rollover(s, u);
  uncapped(s, u);
}

/// The key proxy's way for a call no cap applies to: `call_capped` says whether any does (each
/// kind of cap, a session's through its lineage, and the defaults), and `record_call` records
/// such a call at its reserve, which caps set later count until it is settled.
fn uncapped(s: &Store, u: &str) {
  let none = BudgetDefaults::default();
  let x = format!("{u}-uncapped");
  let capped = |c: &CallAdmit<'_>, d: &BudgetDefaults| s.call_capped(c, d).wait().unwrap();
  let (root, fork) = (id(), id());
  s.create_session(&new_session(&root, &x, "p")).wait().unwrap();
  s.create_session(&NewSession { parent_id: Some(root.clone()), ..new_session(&fork, &x, "p") }).wait().unwrap();
  assert!(!capped(&call("c0", &fork, &x, "p", 0.5), &none), "no cap anywhere");
  assert!(!capped(&call("c0", "not-stored", &x, "p", 0.5), &none), "nor on a session the store does not have");
  for d in
    [BudgetDefaults { per_user: Some((1e9, None)), ..Default::default() }, BudgetDefaults { per_session: Some(1e9), ..Default::default() }]
  {
    assert!(capped(&call("c0", &fork, &x, "p", 0.5), &d), "a default cap: {d:?}");
  }
  // Another user's caps, another project's, another lineage's: not this call's.
  s.set_budget(&key("user", &format!("{x}-other"), "", ""), 1.0, None).wait().unwrap();
  s.set_budget(&key("project", &x, "q", ""), 1.0, None).wait().unwrap();
  s.set_budget(&key("session", &x, "", "not-stored"), 1.0, None).wait().unwrap();
  assert!(!capped(&call("c0", &fork, &x, "p", 0.5), &none));
  assert!(capped(&call("c0", "not-stored", &x, "p", 0.5), &none), "a session cap on a session the store does not have");
  assert!(capped(&call("c0", &fork, &x, "q", 0.5), &none), "the user's cap on the project");
  // Each kind of cap on this call, set and then deleted.
  for k in [key("user", &x, "", ""), key("project", &x, "p", ""), key("project", "", "p", ""), key("session", &x, "", &root)] {
    s.set_budget(&k, 1.0, None).wait().unwrap();
    assert!(capped(&call("c0", &fork, &x, "p", 0.5), &none), "{k:?} (a session cap on the root covers its fork)");
    assert!(s.delete_budget(&k).wait().unwrap());
  }
  assert!(!capped(&call("c0", &fork, &x, "p", 0.5), &none));

  // Recorded at its reserve: a cap set meanwhile counts it until it is settled.
  let id = s.record_call(&call("c1", &fork, &x, "p", 0.6)).wait().unwrap();
  s.set_budget(&key("user", &x, "", ""), 1.0, None).wait().unwrap();
  assert_eq!(over_scope(s.admit_call(&call("c2", &fork, &x, "p", 0.5), &none).wait().unwrap()), "user", "0.6 reserved + 0.5 > 1");
  let t = CallTokens { input: 7, output: 3, cache_read: 0, cache_write: 0 };
  s.settle_call(id, "claude-haiku-4-5", &t, 0.1).wait().unwrap();
  go(s.admit_call(&call("c2", &fork, &x, "p", 0.5), &none).wait().unwrap());
  // In the ledger as an admitted call is: under its session, in its lineage.
  let rows = s.usage_report(&UsageQuery { user_id: Some(x.clone()), group_by: "model".into(), ..Default::default() }).wait().unwrap();
  let haiku = rows.iter().find(|r| r.key == "claude-haiku-4-5").expect("the recorded call, settled");
  assert_eq!((haiku.calls, haiku.tokens), (1, t));
  assert!((haiku.usd - 0.1).abs() < 1e-9, "{haiku:?}");
  s.set_budget(&key("session", &x, "", &root), 0.5, None).wait().unwrap();
  assert_eq!(over_scope(s.admit_call(&call("c3", &root, &x, "p", 0.0), &none).wait().unwrap()), "session", "0.6 spent in the lineage");
}

/// A session cap covers the session's lineage: the root, its forks and theirs, even once the root
/// is deleted; setting, reading or deleting it on any of them is the lineage's one cap; another
/// session of the user is not in it; admitters on several connections get exactly what fits.
fn lineage(s: &Store, u: &str, other: &(impl Fn() -> Store + Sync)) {
  let none = BudgetDefaults::default();
  let l = format!("{u}-lineage");
  let (root, fork, fork2, apart) = (id(), id(), id(), id());
  let fork_of = |child: &str, parent: &str| NewSession { parent_id: Some(parent.into()), ..new_session(child, &l, "p") };
  s.create_session(&new_session(&root, &l, "p")).wait().unwrap();
  s.create_session(&fork_of(&fork, &root)).wait().unwrap();
  s.create_session(&fork_of(&fork2, &fork)).wait().unwrap();
  s.create_session(&new_session(&apart, &l, "p")).wait().unwrap();
  let lineage_of = |sid: &str| s.get_session(sid, &l).wait().unwrap().unwrap().lineage_id;
  assert_eq!([lineage_of(&root), lineage_of(&fork), lineage_of(&fork2)], [root.clone(), root.clone(), root.clone()]);
  assert_eq!(lineage_of(&apart), apart, "a session not forked is a lineage of its own");

  // A cap set on the root: the fork's fork is refused once the lineage's spend leaves no room.
  s.set_budget(&key("session", &l, "", &root), 1.0, None).wait().unwrap();
  go(s.admit_call(&call("l1", &root, &l, "p", 0.4), &none).wait().unwrap());
  go(s.admit_call(&call("l2", &fork, &l, "p", 0.4), &none).wait().unwrap());
  assert_eq!(over_scope(s.admit_call(&call("l3", &fork2, &l, "p", 0.4), &none).wait().unwrap()), "session", "0.8 spent in the lineage");
  go(s.admit_call(&call("l4", &apart, &l, "p", 0.9), &none).wait().unwrap());
  // Read on the fork's fork: the lineage's cap and spend, named by the session asked about.
  let got = s.get_budget(&key("session", &l, "", &fork2)).wait().unwrap().expect("the lineage's cap");
  assert_eq!((got.usd, got.key.session_id.as_str()), (1.0, fork2.as_str()));
  assert!((got.spent_usd - 0.8).abs() < 1e-9, "{got:?}");
  assert!(s.get_budget(&key("session", &l, "", &apart)).wait().unwrap().is_none(), "no cap on the other session");
  assert!((s.spent_in(&key("session", &l, "", &fork), None).wait().unwrap().0 - 0.8).abs() < 1e-9);
  assert!((s.spent_in(&key("session", &l, "", &apart), None).wait().unwrap().0 - 0.9).abs() < 1e-9);
  // Set on a fork, it replaces the lineage's cap (one cap per lineage).
  s.set_budget(&key("session", &l, "", &fork), 1.5, None).wait().unwrap();
  assert_eq!(s.get_budget(&key("session", &l, "", &root)).wait().unwrap().unwrap().usd, 1.5);
  go(s.admit_call(&call("l5", &fork2, &l, "p", 0.4), &none).wait().unwrap());

  // The root deleted: its forks and a new fork of them stay in the lineage, its spend counted.
  s.delete_session(&root, &l).wait().unwrap();
  let fork3 = id();
  s.create_session(&fork_of(&fork3, &fork2)).wait().unwrap();
  assert_eq!(lineage_of(&fork3), root);
  assert_eq!(over_scope(s.admit_call(&call("l6", &fork3, &l, "p", 0.4), &none).wait().unwrap()), "session", "1.2 spent");
  go(s.admit_call(&call("l6", &fork3, &l, "p", 0.2), &none).wait().unwrap());

  // Deleted on any session of it: the default per session applies to the lineage as a whole.
  assert!(s.delete_budget(&key("session", &l, "", &fork3)).wait().unwrap());
  assert!(!s.delete_budget(&key("session", &l, "", &fork)).wait().unwrap(), "the lineage's one cap is gone");
  let per_session = BudgetDefaults { per_session: Some(2.0), ..Default::default() };
  assert_eq!(over_scope(s.admit_call(&call("l7", &fork, &l, "p", 0.7), &per_session).wait().unwrap()), "session", "1.4 spent");
  go(s.admit_call(&call("l7", &apart, &l, "p", 0.6), &per_session).wait().unwrap());

  // Eight admitters on connections of their own, on four sessions of the lineage: room for three.
  s.set_budget(&key("session", &l, "", &fork), 1.4 + 1.0, None).wait().unwrap();
  let sessions = [fork.clone(), fork2.clone(), fork3.clone(), fork.clone()];
  let admitted = at_once(other, |i| (l.clone(), sessions[i % 4].clone(), "p".into()));
  assert_eq!(admitted.iter().filter(|a| matches!(a, Admit::Go(_))).count(), 3, "{admitted:?}");
  // The ledger still reports by session.
  let by_session =
    s.usage_report(&UsageQuery { user_id: Some(l.clone()), group_by: "session".into(), ..Default::default() }).wait().unwrap();
  assert_eq!(by_session.len(), 5, "{by_session:?}");
}

/// A project's cap across its users (a project key with no user): every user's calls in the
/// project count, other projects do not; eight users admitting at once on connections of their
/// own get exactly what fits.
fn project_total(s: &Store, u: &str, other: &(impl Fn() -> Store + Sync)) {
  let none = BudgetDefaults::default();
  let (a, b, project) = (format!("{u}-pa"), format!("{u}-pb"), format!("{u}-shared"));
  s.set_budget(&key("project", "", &project, ""), 1.0, Some("month")).wait().unwrap();
  go(s.admit_call(&call("pt1", "pa1", &a, &project, 0.4), &none).wait().unwrap());
  go(s.admit_call(&call("pt2", "pb1", &b, &project, 0.4), &none).wait().unwrap());
  assert_eq!(over_scope(s.admit_call(&call("pt2", "pb2", &b, &project, 0.4), &none).wait().unwrap()), "project (all users)");
  go(s.admit_call(&call("pt2", "pb3", &b, "elsewhere", 0.4), &none).wait().unwrap());
  let total = s.get_budget(&key("project", "", &project, "")).wait().unwrap().expect("stored");
  assert!((total.spent_usd - 0.8).abs() < 1e-9, "{total:?}");
  // A user's own cap on the project is another cap: it sees that user's calls only.
  s.set_budget(&key("project", &a, &project, ""), 5.0, None).wait().unwrap();
  let own = s.get_budget(&key("project", &a, &project, "")).wait().unwrap().unwrap();
  assert!((own.spent_usd - 0.4).abs() < 1e-9, "{own:?}");

  let race = format!("{u}-race-project");
  s.set_budget(&key("project", "", &race, ""), 1.0, None).wait().unwrap();
  let admitted = at_once(other, |i| (format!("{u}-racer{i}"), format!("rp{i}"), race.clone()));
  assert_eq!(admitted.iter().filter(|a| matches!(a, Admit::Go(_))).count(), 3, "{admitted:?}");
}

/// Periods roll over on the store's clock, moved forward instead of waited for: a day's cap spent
/// today is whole again tomorrow, a lifetime cap is not, and the period's start moves with it.
fn rollover(s: &Store, u: &str) {
  let none = BudgetDefaults::default();
  let (daily, lifetime) = (format!("{u}-daily"), format!("{u}-lifetime"));
  s.set_budget(&key("user", &daily, "", ""), 1.0, Some("day")).wait().unwrap();
  s.set_budget(&key("user", &lifetime, "", ""), 1.0, None).wait().unwrap();
  for who in [&daily, &lifetime] {
    go(s.admit_call(&call("r1", "r1", who, "p", 0.9), &none).wait().unwrap());
    assert_eq!(over_scope(s.admit_call(&call("r1", "r1", who, "p", 0.2), &none).wait().unwrap()), "user");
  }
  let today = s.get_budget(&key("user", &daily, "", "")).wait().unwrap().unwrap();
  s.shift_budget_clock(86_400_000);
  let tomorrow = s.get_budget(&key("user", &daily, "", "")).wait().unwrap().unwrap();
  assert_eq!(tomorrow.period_start, today.period_start + 86_400_000, "{today:?} {tomorrow:?}");
  assert_eq!(tomorrow.spent_usd, 0.0, "{tomorrow:?}");
  go(s.admit_call(&call("r2", "r2", &daily, "p", 0.9), &none).wait().unwrap());
  assert_eq!(
    over_scope(s.admit_call(&call("r2", "r2", &daily, "p", 0.2), &none).wait().unwrap()),
    "user",
    "the new day's own spend counts"
  );
  assert_eq!(
    over_scope(s.admit_call(&call("r2", "r2", &lifetime, "p", 0.2), &none).wait().unwrap()),
    "user",
    "a lifetime cap never rolls over"
  );
  // The ledger records the call at the moved clock: the report by day has two days.
  let days = s.usage_report(&UsageQuery { user_id: Some(daily.clone()), group_by: "day".into(), ..Default::default() }).wait().unwrap();
  assert_eq!(days.len(), 2, "{days:?}");
  s.shift_budget_clock(0);
}
