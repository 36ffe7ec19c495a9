//! Spend caps: the options (`budgets`, `modelPrices`), `setBudget` / `getBudget` /
//! `deleteBudget` / `getUsage`, and the [`Ledger`] the key proxy admits and charges model calls
//! with (the store's `budgets.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Manager, Wait};
use crate::cli::key_proxy::{Admission, CallOwner, CallRequest, CallUsage, Ledger, PriceTable, Prices, Refusal, TaskMeter};
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
///
/// A call some cap applies to is admitted (checked and recorded at its reserve in one store
/// step) before it is forwarded. A call no cap applies to (a read says so: no default cap, no
/// stored one on its user, project or session) cannot be refused: it is forwarded at once, and
/// its request read (its model and reserve) and recorded beside it, under a provisional id
/// (negative) that its settling exchanges for the stored one. A cap set while such a call is on
/// its way counts from the next call, as it does for a call admitted just before the cap was set.
pub(crate) struct StoreLedger {
  store: Arc<Store>,
  defaults: BudgetDefaults,
  /// The records on their way, by provisional id, with what they record.
  recording: std::sync::Mutex<HashMap<i64, Recording>>,
  next_provisional: std::sync::atomic::AtomicI64,
}

impl StoreLedger {
  pub(crate) fn new(store: Arc<Store>, defaults: BudgetDefaults) -> StoreLedger {
    StoreLedger { store, defaults, recording: Default::default(), next_provisional: std::sync::atomic::AtomicI64::new(-1) }
  }

  /// Records a call beside its forwarding (its request is read there, off the call's way).
  fn record(&self, owner: CallOwner, call: Arc<CallRequest>) -> Recording {
    let store = self.store.clone();
    let (o, c) = (owner.clone(), call.clone());
    let handle = tokio::spawn(async move {
      store.call(Wait::Blocking, async move |s| s.record_call(&call_admit(&o, c.model(), c.reserve_usd())).await).await
    });
    Recording { handle, owner, call }
  }

  /// The stored id of an admitted call: a provisional one waits for its record, made once more
  /// if that failed; `None` when it could not be made.
  async fn stored_id(&self, call: i64) -> Option<i64> {
    if call >= 0 {
      return Some(call);
    }
    let Recording { handle, owner, call } = self.recording.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&call)?;
    if let Ok(Ok(id)) = handle.await {
      return Some(id);
    }
    self.store.call(Wait::Blocking, async move |s| s.record_call(&call_admit(&owner, call.model(), call.reserve_usd())).await).await.ok()
  }
}

/// A call's record on its way to the ledger.
struct Recording {
  handle: tokio::task::JoinHandle<Result<i64>>,
  owner: CallOwner,
  call: Arc<CallRequest>,
}

fn call_admit<'a>(owner: &'a CallOwner, model: &'a str, reserve_usd: f64) -> CallAdmit<'a> {
  CallAdmit {
    task_id: &owner.task_id,
    session_id: &owner.session_id,
    user_id: &owner.user_id,
    project_id: &owner.project_id,
    model,
    reserve_usd,
  }
}

#[async_trait::async_trait]
impl Ledger for StoreLedger {
  async fn admit(&self, owner: &CallOwner, call: &Arc<CallRequest>) -> Admission {
    let (owner, defaults) = (owner.clone(), self.defaults.clone());
    let capped = {
      let (owner, defaults) = (owner.clone(), defaults.clone());
      // Whether a cap applies depends on whom the call is charged to, not on its request.
      self.store.call(Wait::Briefly, async move |s| s.call_capped(&call_admit(&owner, "", 0.0), &defaults).await).await
    };
    match capped {
      Ok(false) => {
        let recording = self.record(owner, call.clone());
        let id = self.next_provisional.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.recording.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, recording);
        return Admission::Go(id);
      }
      Ok(true) => {}
      Err(e) => return Admission::Unavailable(format!("the spend caps could not be checked: {}", e.message)),
    }
    let (model, reserve_usd) = (call.model().to_owned(), call.reserve_usd());
    let admitted =
      self.store.call(Wait::Briefly, async move |s| s.admit_call(&call_admit(&owner, &model, reserve_usd), &defaults).await).await;
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
    let Some(id) = self.stored_id(call).await else {
      eprintln!("claude-session-manager: a model call could not be recorded in the spend ledger (the store refused it)");
      return;
    };
    // A failed write leaves the row at its reserve (never less than the call was let through at).
    let _ = self.store.call(Wait::Blocking, async move |s| s.settle_call(id, &model, &t, usd).await).await;
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

#[cfg(test)]
mod tests {
  use super::*;
  use crate::store::Blocking as _;

  fn owner(user: &str) -> CallOwner {
    CallOwner { task_id: "t".into(), session_id: "s".into(), user_id: user.into(), project_id: "p".into() }
  }

  fn usage() -> CallUsage {
    CallUsage { input: 10, output: 2, ..Default::default() }
  }

  /// A call no cap applies to goes at once under a provisional id, recorded beside it and settled
  /// under the stored one; once a cap applies, calls are admitted first and refused when over it.
  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  async fn an_uncapped_call_is_recorded_beside_its_forwarding_and_a_capped_one_admitted_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
    let ledger = StoreLedger::new(store.clone(), BudgetDefaults::default());
    let report = |user: &str| {
      let q = UsageQuery { user_id: Some(user.into()), group_by: "model".into(), ..Default::default() };
      store.usage_report(&q).wait().unwrap()
    };

    let Admission::Go(call) = ledger.admit(&owner("u"), &CallRequest::known("m", 0.5)).await else { panic!("refused") };
    assert!(call < 0, "provisional: {call}");
    ledger.settle(call, "m2", &usage(), 0.01).await;
    let rows = report("u");
    assert_eq!((rows.len(), rows[0].key.as_str(), rows[0].calls, rows[0].tokens.input), (1, "m2", 1, 10), "{rows:?}");
    assert!((rows[0].usd - 0.01).abs() < 1e-9);
    assert!(ledger.recording.lock().unwrap().is_empty(), "nothing left on its way");

    // A cap on the user: admitted first (a stored id), then refused once its reserve does not fit.
    store.set_budget(&BudgetKey { scope: "user".into(), user_id: "u".into(), ..Default::default() }, 1.0, None).wait().unwrap();
    let Admission::Go(call) = ledger.admit(&owner("u"), &CallRequest::known("m", 0.6)).await else { panic!("refused") };
    assert!(call > 0, "admitted: {call}");
    let Admission::Refused(why) = ledger.admit(&owner("u"), &CallRequest::known("m", 0.6)).await else { panic!("over the cap, admitted") };
    assert_eq!(why.scope, "user");
    // A default cap: every call admitted first.
    let capped = StoreLedger::new(store.clone(), BudgetDefaults { per_session: Some(1e9), ..Default::default() });
    let Admission::Go(call) = capped.admit(&owner("v"), &CallRequest::known("m", 0.1)).await else { panic!("refused") };
    assert!(call > 0, "admitted: {call}");
  }
}
