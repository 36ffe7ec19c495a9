//! Spend caps and the ledger of model calls: what every backend shares (`sqlite/budgets.rs`,
//! `postgres/budgets.rs` store them).
//!
//! The key proxy records every model call of a task in `model_calls`: first, before the call is
//! forwarded, with its reserve as its price (`reserved = 1`), in the same transaction that checks
//! every cap that applies; then, once the response's usage is in, at its real price (one
//! `UPDATE`). A cap (`budgets`) is per user, per project of a user, per project across its users
//! (a project key with no user), or per session, with an optional period (`day` or `month`, UTC,
//! on the database clock); the spend of a scope is the sum of its calls since the period's start,
//! reserved ones included. Ledger rows have no foreign key:
//! deleting a session does not give its spend back to its user's or project's cap.

use crate::error::Result;

/// A cap's scope and owner. `project_id` is set for a project cap only, `session_id` for a
/// session cap only (empty otherwise); `user_id` is empty for a project cap across its users.
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
/// project's across users, its session's.
fn call_keys(call: &CallAdmit<'_>) -> [BudgetKey; 4] {
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
    key("session", call.user_id, "", call.session_id),
  ]
}

/// The caps that apply to a call, in the order they are checked: (key, cap, period). `stored`
/// reads a stored cap; a default applies to the user and session scopes where none is stored.
pub(crate) fn applicable(
  call: &CallAdmit<'_>,
  mut stored: impl FnMut(&BudgetKey) -> Result<Option<(f64, Option<String>)>>,
  defaults: &BudgetDefaults,
) -> Result<Vec<(BudgetKey, f64, Option<String>)>> {
  let mut out = Vec::new();
  for k in call_keys(call) {
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
