//! Spend caps: the options (`budgets`, `modelPrices`), `setBudget` / `getBudget` /
//! `deleteBudget` / `getUsage`, and the [`Ledger`] the key proxy admits and charges model calls
//! with (the store's `budgets.rs`).

use std::sync::Arc;

use super::{Manager, Wait};
use crate::cli::key_proxy::{Admission, CallOwner, CallUsage, Ledger, PriceTable, Prices, Refusal, TaskMeter};
use crate::error::{Error, Result};
use crate::store::{Admit, Budget, BudgetDefaults, BudgetKey, CallAdmit, CallTokens, Session, Store, UsageQuery, UsageRow};

/// `budgets` in the manager's options: caps where none is stored (US dollars, finite, 0 or more).
#[derive(Debug, Clone, Default)]
pub struct BudgetOptions {
  /// `perUser: { usd, period? }`.
  pub per_user: Option<(f64, Option<BudgetPeriod>)>,
  /// `perSession: { usd }`, per session lineage (a session with its forks and theirs).
  pub per_session: Option<f64>,
}

/// A model family's (or model's) prices in `modelPrices`, USD per million tokens (finite, 0 or
/// more; `model` not blank).
#[derive(Debug, Clone)]
pub struct ModelPrice {
  pub model: String,
  pub input: f64,
  pub output: f64,
  pub cache_write: Option<f64>,
  pub cache_read: Option<f64>,
}

/// The defaults (`budgets` option), refused with `exposeApiKeyToAgent`.
pub(crate) fn resolve_defaults(o: Option<BudgetOptions>, expose_api_key: bool) -> Result<BudgetDefaults> {
  let Some(o) = o else { return Ok(BudgetDefaults::default()) };
  if expose_api_key && (o.per_user.is_some() || o.per_session.is_some()) {
    return Err(budgets_need_proxy());
  }
  Ok(BudgetDefaults { per_user: o.per_user.map(|(usd, p)| (usd, p.map(|p| p.as_str().to_owned()))), per_session: o.per_session })
}

fn budgets_need_proxy() -> Error {
  Error::invalid(
    "budgets cannot be enforced with exposeApiKeyToAgent: true (the agent holds the real API key and its calls bypass the key proxy that meters them)",
  )
}

/// The price table (`modelPrices` over the list prices).
pub(crate) fn resolve_prices(prices: Vec<ModelPrice>) -> PriceTable {
  let own = prices.into_iter().map(|p| {
    let prices = Prices {
      input: p.input,
      output: p.output,
      cache_write: p.cache_write.unwrap_or(p.input * 1.25),
      cache_read: p.cache_read.unwrap_or(p.input * 0.1),
    };
    (p.model, prices)
  });
  PriceTable::with_overrides(own.collect())
}

/// Whose spend a cap bounds: `getBudget` and `deleteBudget`'s request, and `setBudget`'s key;
/// checked where it came in.
#[derive(Debug, Clone)]
pub struct BudgetRequest {
  /// The user (a valid id); empty for [`BudgetScope::ProjectTotal`] only.
  pub user_id: String,
  pub scope: BudgetScope,
}

/// The scope of a cap, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetScope {
  /// Every session of the user.
  User,
  /// Every session of the user's project (a valid project id).
  Project(String),
  /// Every session of the project, whoever's (a valid project id; the request's user is empty).
  ProjectTotal(String),
  /// One session of the user (a session id in its canonical form; its owner is checked by the
  /// manager): the cap of its lineage, which the session it was forked from and every fork share.
  Session(String),
}

impl BudgetScope {
  /// The scope as JavaScript and the store spell it.
  pub fn as_str(&self) -> &'static str {
    match self {
      BudgetScope::User => "user",
      BudgetScope::Project(_) | BudgetScope::ProjectTotal(_) => "project",
      BudgetScope::Session(_) => "session",
    }
  }
}

/// The period a cap counts spend over (UTC, on the database clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
  Day,
  Month,
}

impl BudgetPeriod {
  pub const ALL: [BudgetPeriod; 2] = [BudgetPeriod::Day, BudgetPeriod::Month];

  /// The period as JavaScript and the store spell it.
  pub fn as_str(self) -> &'static str {
    match self {
      BudgetPeriod::Day => "day",
      BudgetPeriod::Month => "month",
    }
  }
}

/// `setBudget`'s request, checked where it came in.
#[derive(Debug, Clone)]
pub struct SetBudgetRequest {
  pub key: BudgetRequest,
  /// US dollars: finite, 0 or more.
  pub usd: f64,
  /// None for a lifetime cap; never for a session cap.
  pub period: Option<BudgetPeriod>,
}

/// `getUsage`'s request, checked where it came in.
#[derive(Debug, Clone)]
pub struct UsageRequest {
  pub user_id: Option<String>,
  pub project_id: Option<String>,
  /// A session id in its canonical form.
  pub session_id: Option<String>,
  /// From (inclusive) and until (exclusive), ms since the epoch.
  pub since: Option<i64>,
  pub until: Option<i64>,
  pub group_by: UsageGroupBy,
}

/// What `getUsage` sums by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroupBy {
  Day,
  Model,
  Session,
}

impl UsageGroupBy {
  pub const ALL: [UsageGroupBy; 3] = [UsageGroupBy::Day, UsageGroupBy::Model, UsageGroupBy::Session];

  /// As JavaScript and the store spell it.
  pub fn as_str(self) -> &'static str {
    match self {
      UsageGroupBy::Day => "day",
      UsageGroupBy::Model => "model",
      UsageGroupBy::Session => "session",
    }
  }
}

/// The key proxy's ledger: the manager's store and default caps.
pub(crate) struct StoreLedger {
  pub store: Arc<Store>,
  pub defaults: BudgetDefaults,
}

#[async_trait::async_trait]
impl Ledger for StoreLedger {
  async fn admit(&self, owner: &CallOwner, model: &str, reserve_usd: f64) -> Admission {
    let (owner, model, defaults) = (owner.clone(), model.to_owned(), self.defaults.clone());
    let admitted = self
      .store
      .call(Wait::Briefly, async move |s| {
        let call = CallAdmit {
          task_id: &owner.task_id,
          session_id: &owner.session_id,
          user_id: &owner.user_id,
          project_id: &owner.project_id,
          model: &model,
          reserve_usd,
        };
        s.admit_call(&call, &defaults).await
      })
      .await;
    match admitted {
      Ok(Admit::Go(id)) => Admission::Go(id),
      Ok(Admit::Over { key, cap_usd, spent_usd, period }) => Admission::Refused(Refusal {
        message: format!(
          "spend cap reached: the {} budget of ${cap_usd}{} has ${:.4} left and this call may cost up to ${reserve_usd:.4} (BUDGET_EXCEEDED, scope {})",
          key.label(),
          period.map(|p| format!(" a {p}")).unwrap_or_default(),
          (cap_usd - spent_usd).max(0.0),
          key.scope,
        ),
        scope: key.scope,
      }),
      Err(e) => Admission::Unavailable(format!("the spend caps could not be checked: {}", e.message)),
    }
  }

  async fn settle(&self, call: i64, model: &str, u: &CallUsage, usd: f64) {
    let t = CallTokens { input: u.input, output: u.output, cache_read: u.cache_read, cache_write: u.cache_write };
    let model = model.to_owned();
    // A failed write leaves the row at its reserve (never less than the call was let through at).
    let _ = self.store.call(Wait::Blocking, async move |s| s.settle_call(call, &model, &t, usd).await).await;
  }
}

impl Manager {
  /// A meter for one task's model calls, charged to its session, user and project.
  pub(crate) fn task_meter(&self, session: &Session, task_id: &str) -> Arc<TaskMeter> {
    TaskMeter::new(CallOwner {
      task_id: task_id.to_owned(),
      session_id: session.id.clone(),
      user_id: session.user_id.clone(),
      project_id: session.project_id.clone(),
    })
  }

  /// The store's key of a cap (a project's cap across its users has no user); a session cap's
  /// session must be the user's.
  async fn budget_key(&self, r: &BudgetRequest) -> Result<BudgetKey> {
    let mut k = BudgetKey { scope: r.scope.as_str().to_owned(), user_id: r.user_id.clone(), ..Default::default() };
    match &r.scope {
      BudgetScope::User => {}
      BudgetScope::Project(p) | BudgetScope::ProjectTotal(p) => k.project_id = p.clone(),
      BudgetScope::Session(id) => {
        // Another user's session answers as a missing one.
        self.get_session(id, &r.user_id).await?;
        k.session_id = id.clone();
      }
    }
    Ok(k)
  }

  /// Sets (or replaces) a spend cap.
  pub async fn set_budget(&self, r: SetBudgetRequest) -> Result<Budget> {
    self.check_open()?;
    let (cap, period) = (r.usd, r.period.map(|p| p.as_str().to_owned()));
    let k = self.budget_key(&r.key).await?;
    if self.cfg.expose_api_key {
      return Err(budgets_need_proxy());
    }
    let k2 = k.clone();
    self
      .store_call(Wait::Blocking, async move |s| {
        s.set_budget(&k2, cap, period.as_deref()).await?;
        s.get_budget(&k2).await
      })
      .await?
      .ok_or_else(|| Error::internal("the budget just stored is missing"))
  }

  /// A spend cap with its scope's spend this period: the stored one, else the default that
  /// applies (`budgets`), else `None`. A session's is its lineage's cap and spend.
  pub async fn get_budget(&self, r: BudgetRequest) -> Result<Option<Budget>> {
    self.check_open()?;
    let k = self.budget_key(&r).await?;
    let default = match k.scope.as_str() {
      "user" => self.cfg.budget_defaults.per_user.clone(),
      "session" => self.cfg.budget_defaults.per_session.map(|u| (u, None)),
      _ => None,
    };
    self
      .store_call(Wait::Blocking, async move |s| {
        if let Some(b) = s.get_budget(&k).await? {
          return Ok(Some(b));
        }
        let Some((usd, period)) = default.clone() else { return Ok(None) };
        let (spent, start) = s.spent_in(&k, period.as_deref()).await?;
        Ok(Some(Budget { key: k.clone(), usd, period, spent_usd: spent, period_start: start }))
      })
      .await
  }

  /// Deletes a stored spend cap (a default one applies again); whether there was one.
  pub async fn delete_budget(&self, r: BudgetRequest) -> Result<bool> {
    self.check_open()?;
    let k = self.budget_key(&r).await?;
    self.store_call(Wait::Blocking, async move |s| s.delete_budget(&k).await).await
  }

  /// The ledger of model calls, summed by day, model or session.
  pub async fn get_usage(&self, r: UsageRequest) -> Result<Vec<UsageRow>> {
    self.check_open()?;
    let q = UsageQuery {
      user_id: r.user_id,
      project_id: r.project_id,
      session_id: r.session_id,
      since: r.since,
      until: r.until,
      group_by: r.group_by.as_str().to_owned(),
    };
    self.store_call(Wait::Blocking, async move |s| s.usage_report(&q).await).await
  }
}
