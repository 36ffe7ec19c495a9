//! Spend caps and the ledger of model calls: what every backend shares (`sqlite/budgets.rs`,
//! `postgres/budgets.rs` store them).
//!
//! The key proxy records every model call of a task in `model_calls`: first, before the call is
//! forwarded, with its reserve as its price (`reserved = 1`), in the same transaction that checks
//! every cap that applies; then, once the response's usage is in, at its real price (one
//! `UPDATE`). A cap (`budgets`) is per user, per project of a user, per project across its users
//! (a project key with no user), or per session lineage, with an optional period (`day` or
//! `month`, UTC, on the database clock); the spend of a scope is the sum of its calls since the
//! period's start, reserved ones included. Ledger rows have no foreign key: deleting a session
//! does not give its spend back to its user's, project's or lineage's cap.
//!
//! A session's lineage is the root of its `parent_id` chain ([`Session::lineage_id`]): a fork
//! (`fork`, `executeTask` with `atMessageId` or `forkSession`) continues the same conversation,
//! so a session cap covers the root session and every fork of it, and of its forks. A fork's
//! session row and the ledger rows of its calls name the root (`lineage_id`; `''` on a root and
//! its calls, the columns' default, so that only forks' rows were written when the column came),
//! so a lineage's spend is its root's calls plus the calls naming the root, and deleting any of
//! its sessions takes nothing out of it. A session cap is stored under the lineage's root, so
//! setting, reading or deleting the cap of any session of a lineage sets, reads or deletes the
//! lineage's one cap, and its spend is the lineage's. `budgets.perSession` is per lineage too.
//!
//! [`Session::lineage_id`]: super::Session::lineage_id

use crate::error::Result;

/// A cap's scope and owner. `project_id` is set for a project cap only, `session_id` for a
/// session cap only (empty otherwise: any session of the lineage the cap covers); `user_id` is
/// empty for a project cap across its users.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetKey {
  pub scope: String,
  pub user_id: String,
  pub project_id: String,
  pub session_id: String,
}

/// A stored cap and what its scope spent in the current period.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
  pub key: BudgetKey,
  pub usd: f64,
  /// `day`, `month`, or `None` for the scope's whole lifetime.
  pub period: Option<String>,
  /// Spent since the period's start (reserves of calls in flight included).
  pub spent_usd: f64,
  /// When the period started (ms since the epoch, database clock); 0 for a lifetime cap.
  pub period_start: i64,
}

/// Caps that apply where no cap is stored (`budgets` in the manager's options).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetDefaults {
  pub per_user: Option<(f64, Option<String>)>,
  pub per_session: Option<f64>,
}

/// A model call to admit: whom it is charged to and its reserve.
#[derive(Debug, Clone, Default)]
pub struct CallAdmit<'a> {
  pub task_id: &'a str,
  pub session_id: &'a str,
  pub user_id: &'a str,
  pub project_id: &'a str,
  pub model: &'a str,
  pub reserve_usd: f64,
}

/// Tokens of one call by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTokens {
  pub input: u64,
  pub output: u64,
  pub cache_read: u64,
  pub cache_write: u64,
}

/// The answer to [`Budgets::admit_call`](super::Budgets::admit_call).
#[derive(Debug, Clone, PartialEq)]
pub enum Admit {
  /// Recorded under this id, with its reserve as its price until settled.
  Go(i64),
  /// Not recorded: the reserve would take this cap past its limit.
  Over { key: BudgetKey, cap_usd: f64, spent_usd: f64, period: Option<String> },
}

/// What `getUsage` asks for. `group_by`: `day`, `model` or `session`.
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
  pub user_id: Option<String>,
  pub project_id: Option<String>,
  pub session_id: Option<String>,
  /// From (inclusive) and until (exclusive), ms since the epoch.
  pub since: Option<i64>,
  pub until: Option<i64>,
  pub group_by: String,
}

/// One group of a usage report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRow {
  /// The day (`YYYY-MM-DD`, UTC), the model or the session id.
  pub key: String,
  pub calls: u64,
  pub tokens: CallTokens,
  pub usd: f64,
}

pub const SCOPES: [&str; 3] = ["user", "project", "session"];
pub const PERIODS: [&str; 2] = ["day", "month"];

impl BudgetKey {
  /// Whether this is a project's cap across all its users.
  pub fn is_project_total(&self) -> bool {
    self.scope == "project" && self.user_id.is_empty()
  }

  /// How a message names the cap: `user`, `project`, `project (all users)` or `session`.
  pub fn label(&self) -> String {
    if self.is_project_total() {
      "project (all users)".into()
    } else {
      self.scope.clone()
    }
  }
}

/// The caps a call is checked against, in this order: its user's, its user's project's, its
/// project's across users, its session lineage's (keyed by `lineage`, the root of the call's
/// session's lineage, as a session cap is stored).
fn call_keys(call: &CallAdmit<'_>, lineage: &str) -> [BudgetKey; 4] {
  let key = |scope: &str, user: &str, project: &str, session: &str| BudgetKey {
    scope: scope.into(),
    user_id: user.into(),
    project_id: project.into(),
    session_id: session.into(),
  };
  [
    key("user", call.user_id, "", ""),
    key("project", call.user_id, call.project_id, ""),
    key("project", "", call.project_id, ""),
    key("session", call.user_id, "", lineage),
  ]
}

/// The caps that apply to a call, in the order they are checked: (key, cap, period); a session
/// cap's key names the call's `lineage`. `stored` reads a stored cap; a default applies to the
/// user and session scopes where none is stored.
pub(crate) fn applicable(
  call: &CallAdmit<'_>,
  lineage: &str,
  mut stored: impl FnMut(&BudgetKey) -> Result<Option<(f64, Option<String>)>>,
  defaults: &BudgetDefaults,
) -> Result<Vec<(BudgetKey, f64, Option<String>)>> {
  let mut out = Vec::new();
  for k in call_keys(call, lineage) {
    let found = stored(&k)?.or_else(|| match k.scope.as_str() {
      "user" => defaults.per_user.clone(),
      "session" => defaults.per_session.map(|u| (u, None)),
      _ => None,
    });
    if let Some((usd, period)) = found {
      out.push((k, usd, period));
    }
  }
  Ok(out)
}

/// What the lineage migrations (SQLite 12 -> 13, PostgreSQL 11 -> 12) are tested with on each
/// backend: rows as a schema without lineages had them, and what they must become.
#[cfg(test)]
pub(crate) mod lineage_migration {
  use super::*;
  use crate::store::{Blocking as _, Store};

  const R: &str = "00000000-0000-4000-8000-00000000000a";
  const F: &str = "00000000-0000-4000-8000-00000000000b";
  const G: &str = "00000000-0000-4000-8000-00000000000c";
  const X: &str = "00000000-0000-4000-8000-00000000000d";
  const O: &str = "00000000-0000-4000-8000-00000000000e";
  /// A session deleted before the migration: its ledger rows and cap stay.
  const D: &str = "00000000-0000-4000-8000-00000000000f";

  /// The rows, for tables named `{prefix}sessions` and so on: a root R, its fork F and F's fork G;
  /// X alone; O whose parent D is gone; calls on R, G, X and D; session caps on F, G (the
  /// strictest of the lineage), X and D, and a user cap.
  pub fn rows_sql(prefix: &str) -> String {
    let mut sql = String::new();
    for (id, parent) in [(R, None), (F, Some(R)), (G, Some(F)), (X, None), (O, Some(D))] {
      let parent = parent.map(|p| format!("'{p}'")).unwrap_or_else(|| "NULL".into());
      sql += &format!(
        "INSERT INTO {prefix}sessions (id, project_id, user_id, status, parent_id, model, working_directory, created_at, updated_at,
           last_active_at) VALUES ('{id}', 'p', 'u', 'active', {parent}, 'sonnet', '/w', 1, 1, 1);"
      );
    }
    for (session, usd) in [(R, 0.3), (G, 0.3), (X, 0.5), (D, 0.2)] {
      sql += &format!(
        "INSERT INTO {prefix}model_calls (task_id, session_id, user_id, project_id, model, usd, at) VALUES ('t', '{session}', 'u', 'p', 'm', {usd}, 1);"
      );
    }
    for (scope, session, usd) in [("session", F, 2.0), ("session", G, 1.0), ("session", X, 5.0), ("session", D, 3.0), ("user", "", 9.0)] {
      sql += &format!(
        "INSERT INTO {prefix}budgets (scope, user_id, session_id, usd, updated_at) VALUES ('{scope}', 'u', '{session}', {usd}, 1);"
      );
    }
    sql
  }

  /// The ledger's `(session_id, lineage_id)` in insertion order, and the caps' `(scope,
  /// session_id, usd)` by `usd`, as read from the migrated tables.
  pub type Read = (Vec<(String, String)>, Vec<(String, String, f64)>);

  /// Checks the migrated store (blocking): the lineages, the ledger's and the caps' rows as `read`,
  /// the lineage's cap and spend read on a fork, a call on it checked against them and recorded
  /// with its lineage (whose id `lineage_of_call` reads back).
  pub fn check(s: &Store, read: impl Fn() -> Read, lineage_of_call: impl Fn(i64) -> String) {
    let lineage = |id: &str| s.get_session(id, "u").wait().unwrap().unwrap().lineage_id;
    assert_eq!([R, F, G, X, O].map(lineage), [R, R, R, X, O]);
    let (calls, caps) = read();
    assert_eq!(calls, [(R, ""), (G, R), (X, ""), (D, "")].map(|(a, b)| (a.to_owned(), b.to_owned())), "only a fork's calls name a root");
    let expected = [("session", R, 1.0), ("session", D, 3.0), ("session", X, 5.0), ("user", "", 9.0)];
    assert_eq!(caps, expected.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c)));
    let key = BudgetKey { scope: "session".into(), user_id: "u".into(), session_id: F.into(), ..Default::default() };
    let b = s.get_budget(&key).wait().unwrap().unwrap();
    assert_eq!(b.usd, 1.0);
    assert!((b.spent_usd - 0.6).abs() < 1e-9, "{b:?}");
    let call = CallAdmit { task_id: "t2", session_id: F, user_id: "u", project_id: "p", model: "m", reserve_usd: 0.5 };
    let none = BudgetDefaults::default();
    assert!(matches!(s.admit_call(&call, &none).wait().unwrap(), Admit::Over { .. }), "0.6 + 0.5 > 1");
    let Admit::Go(id) = s.admit_call(&CallAdmit { reserve_usd: 0.4, ..call }, &none).wait().unwrap() else { panic!("0.6 + 0.4 fits") };
    assert_eq!(lineage_of_call(id), R, "a new call is recorded with its lineage");
  }
}
