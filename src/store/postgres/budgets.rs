//! Spend caps and the ledger of model calls on PostgreSQL: the rows and rules of `budgets.rs`,
//! periods on the database clock (UTC). Admitting a call is one statement, the migrations'
//! `admit_call` function, under transaction-scoped advisory locks on the call's user and on its
//! project (a project's cap spans its users), so that the check of the caps and the insert of the
//! reserve are one step for every node; settling is one `UPDATE`. A session cap is stored under
//! the session's lineage and bounds the lineage's spend (`store/budgets.rs`); a lineage is one
//! user's, so the user's lock covers it.

use super::*;
use crate::error::Result;
use crate::store::{Admit, Budget, BudgetDefaults, BudgetKey, CallAdmit, CallTokens, UsageQuery, UsageRow};

const SELECT_BUDGET: &str = "SELECT usd, period FROM {S}.budgets WHERE scope = $1 AND user_id = $2 AND project_id = $3 AND session_id = $4";

/// The start of the current period on the database clock moved by `$2` ms, in ms; 0 for none.
const PERIOD_START: &str = "SELECT CASE $1::text
    WHEN 'day' THEN (extract(epoch from date_trunc('day', (now() + $2::bigint * interval '1 millisecond') AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') * 1000)::bigint
    WHEN 'month' THEN (extract(epoch from date_trunc('month', (now() + $2::bigint * interval '1 millisecond') AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') * 1000)::bigint
    ELSE 0::bigint END";

impl PgStore {
  /// How far `shift_budget_clock` moved the caps' clock, in ms.
  fn budget_shift(&self) -> i64 {
    self.budget_clock_ms.load(std::sync::atomic::Ordering::Relaxed)
  }

  async fn period_start(&self, c: &impl deadpool_postgres::GenericClient, period: Option<&str>) -> Result<i64> {
    Ok(self.query(c, PERIOD_START, &[&period, &self.budget_shift()]).await?[0].get(0))
  }

  async fn spent(&self, c: &impl deadpool_postgres::GenericClient, k: &BudgetKey, since: i64) -> Result<f64> {
    let (sql, other) = spent_sql_pg(k);
    Ok(self.query(c, sql, &[&k.user_id, &other, &since]).await?[0].get(0))
  }

  /// The key a cap is stored and its spend summed under: a session cap's session is its lineage
  /// (a session the store does not have is a lineage of its own).
  async fn stored_key(&self, c: &impl deadpool_postgres::GenericClient, k: &BudgetKey) -> Result<BudgetKey> {
    if k.scope != "session" {
      return Ok(k.clone());
    }
    let sql = "SELECT CASE lineage_id WHEN '' THEN id ELSE lineage_id END FROM {S}.sessions WHERE id = $1";
    let row = self.opt(c, sql, &[&k.session_id]).await?;
    Ok(BudgetKey { session_id: row.map(|r| r.get(0)).unwrap_or_else(|| k.session_id.clone()), ..k.clone() })
  }

  /// A stored cap (`k` a stored key).
  async fn stored_cap(&self, c: &impl deadpool_postgres::GenericClient, k: &BudgetKey) -> Result<Option<(f64, Option<String>)>> {
    let row = self.opt(c, SELECT_BUDGET, &[&k.scope, &k.user_id, &k.project_id, &k.session_id]).await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
  }
}

#[async_trait::async_trait]
impl Budgets for PgStore {
  /// Checks every cap that applies to the call against its reserve and records the call at its
  /// reserve: one statement, the migrations' `admit_call` function (the rules of
  /// `store/budgets.rs::applicable`, the session cap the lineage's, under the user's and the
  /// project's advisory locks), keyed by a fresh UUID so that running it again after a lost
  /// connection charges nothing twice.
  async fn admit_call(&self, call: &CallAdmit<'_>, defaults: &BudgetDefaults) -> Result<Admit> {
    let user_lock = format!("claude-session-manager:budget:{}:{}", self.schema, call.user_id);
    let project_lock = format!("claude-session-manager:budget-project:{}:{}", self.schema, call.project_id);
    let (default_user, default_user_period) = defaults.per_user.clone().unzip();
    let default_user_period = default_user_period.flatten();
    let key = uuid::Uuid::new_v4().to_string();
    idempotent!(self, |c| {
      let row = &self
        .query(
          c,
          "SELECT call_id, over_scope, over_user, over_cap, over_spent, over_period
           FROM {S}.admit_call($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
          &[
            &key,
            &call.task_id,
            &call.session_id,
            &call.user_id,
            &call.project_id,
            &call.model,
            &call.reserve_usd,
            &user_lock,
            &project_lock,
            &default_user,
            &default_user_period,
            &defaults.per_session,
            &self.budget_shift(),
          ],
        )
        .await?[0];
      if let Some(id) = row.get::<_, Option<i64>>(0) {
        return Ok(Admit::Go(id));
      }
      let scope: String = row.get(1);
      let key = BudgetKey {
        project_id: if scope == "project" { call.project_id.into() } else { String::new() },
        session_id: if scope == "session" { call.session_id.into() } else { String::new() },
        user_id: row.get(2),
        scope,
      };
      Ok(Admit::Over { key, cap_usd: row.get(3), spent_usd: row.get(4), period: row.get(5) })
    })
  }

  /// One read of the caps `admit_call` checks (the session cap under the session's lineage),
  /// without its locks.
  async fn call_capped(&self, call: &CallAdmit<'_>, defaults: &BudgetDefaults) -> Result<bool> {
    if defaults.per_user.is_some() || defaults.per_session.is_some() {
      return Ok(true);
    }
    read!(self, |c| {
      let row = self
        .query(
          c,
          "SELECT EXISTS (SELECT 1 FROM {S}.budgets b WHERE (b.scope, b.user_id, b.project_id, b.session_id) IN (
             ('user', $1, '', ''), ('project', $1, $2, ''), ('project', '', $2, ''),
             ('session', $1, '', COALESCE((SELECT NULLIF(s.lineage_id, '') FROM {S}.sessions s WHERE s.id = $3), $3))))",
          &[&call.user_id, &call.project_id, &call.session_id],
        )
        .await?;
      Ok(row[0].get::<_, bool>(0))
    })
  }

  /// The insert of `admit_call` alone, keyed by a fresh UUID as it is (run again after a lost
  /// connection, it records nothing twice).
  async fn record_call(&self, call: &CallAdmit<'_>) -> Result<i64> {
    let key = uuid::Uuid::new_v4().to_string();
    let shift = self.budget_shift();
    idempotent!(self, |c| {
      let rows = self
        .query(
          c,
          "WITH lineage AS (SELECT COALESCE((SELECT NULLIF(s.lineage_id, '') FROM {S}.sessions s WHERE s.id = $3), $3) AS id),
           ins AS (INSERT INTO {S}.model_calls (call_key, task_id, session_id, lineage_id, user_id, project_id, model, usd, reserved, at)
             SELECT $1, $2, $3, CASE WHEN lineage.id = $3 THEN '' ELSE lineage.id END, $4, $5, $6, $7, true,
               (floor(extract(epoch from now() + $8::bigint * interval '1 millisecond') * 1000))::bigint FROM lineage
             ON CONFLICT (call_key) DO NOTHING RETURNING id)
           SELECT id FROM ins UNION ALL SELECT id FROM {S}.model_calls WHERE call_key = $1",
          &[&key, &call.task_id, &call.session_id, &call.user_id, &call.project_id, &call.model, &call.reserve_usd, &shift],
        )
        .await?;
      Ok(rows[0].get::<_, i64>(0))
    })
  }

  /// Records what an admitted call really cost (one statement).
  async fn settle_call(&self, id: i64, model: &str, t: &CallTokens, usd: f64) -> Result<()> {
    let (i, o, r, w) = (t.input as i64, t.output as i64, t.cache_read as i64, t.cache_write as i64);
    read!(self, |c| {
      self
        .exec(
          c,
          "UPDATE {S}.model_calls SET model = CASE WHEN $2 = '' THEN model ELSE $2 END, input_tokens = $3, output_tokens = $4,
             cache_read_tokens = $5, cache_write_tokens = $6, usd = $7, reserved = false WHERE id = $1",
          &[&id, &model, &i, &o, &r, &w, &usd],
        )
        .await?;
      Ok(())
    })
  }

  /// Sets (or replaces) a cap (a session's: its lineage's).
  async fn set_budget(&self, k: &BudgetKey, usd: f64, period: Option<&str>) -> Result<()> {
    tx!(self, |tx| {
      let k = &self.stored_key(tx, k).await?;
      self
        .exec(
          tx,
          "INSERT INTO {S}.budgets (scope, user_id, project_id, session_id, usd, period, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, {NOW})
           ON CONFLICT (scope, user_id, project_id, session_id) DO UPDATE SET usd = $5, period = $6, updated_at = {NOW}",
          &[&k.scope, &k.user_id, &k.project_id, &k.session_id, &usd, &period],
        )
        .await?;
      Ok(())
    })
  }

  /// A stored cap with its scope's spend in the current period (a session's: its lineage's).
  async fn get_budget(&self, k: &BudgetKey) -> Result<Option<Budget>> {
    tx!(self, |tx| {
      let stored = self.stored_key(tx, k).await?;
      let Some((usd, period)) = self.stored_cap(tx, &stored).await? else { return Ok(None) };
      let start = self.period_start(tx, period.as_deref()).await?;
      let spent = self.spent(tx, &stored, start).await?;
      Ok(Some(Budget { key: k.clone(), usd, period, spent_usd: spent, period_start: start }))
    })
  }

  /// What a scope spent in the current `period`, and when that period started.
  async fn spent_in(&self, k: &BudgetKey, period: Option<&str>) -> Result<(f64, i64)> {
    tx!(self, |tx| {
      let start = self.period_start(tx, period).await?;
      let stored = self.stored_key(tx, k).await?;
      Ok((self.spent(tx, &stored, start).await?, start))
    })
  }

  /// Deletes a cap (a session's: its lineage's); whether there was one.
  async fn delete_budget(&self, k: &BudgetKey) -> Result<bool> {
    tx!(self, |tx| {
      let k = &self.stored_key(tx, k).await?;
      let n = self
        .exec(
          tx,
          "DELETE FROM {S}.budgets WHERE scope = $1 AND user_id = $2 AND project_id = $3 AND session_id = $4",
          &[&k.scope, &k.user_id, &k.project_id, &k.session_id],
        )
        .await?;
      Ok(n > 0)
    })
  }

  fn shift_budget_clock(&self, ms: i64) {
    self.budget_clock_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
  }

  /// The ledger summed by day, model or session.
  async fn usage_report(&self, q: &UsageQuery) -> Result<Vec<UsageRow>> {
    let key = match q.group_by.as_str() {
      "day" => "to_char(to_timestamp(at / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
      "model" => "model",
      _ => "session_id",
    };
    let sql = format!(
      "SELECT {key} AS k, COUNT(*)::bigint, COALESCE(SUM(input_tokens), 0)::bigint, COALESCE(SUM(output_tokens), 0)::bigint,
         COALESCE(SUM(cache_read_tokens), 0)::bigint, COALESCE(SUM(cache_write_tokens), 0)::bigint, COALESCE(SUM(usd), 0)::float8
       FROM {{S}}.model_calls
       WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR project_id = $2) AND ($3::text IS NULL OR session_id = $3)
         AND at >= $4 AND at < $5
       GROUP BY k ORDER BY k"
    );
    let (since, until) = (q.since.unwrap_or(0), q.until.unwrap_or(i64::MAX));
    read!(self, |c| {
      let rows = self.query(c, &sql, &[&q.user_id, &q.project_id, &q.session_id, &since, &until]).await?;
      Ok(
        rows
          .iter()
          .map(|r| UsageRow {
            key: r.get(0),
            calls: r.get::<_, i64>(1) as u64,
            tokens: CallTokens {
              input: r.get::<_, i64>(2) as u64,
              output: r.get::<_, i64>(3) as u64,
              cache_read: r.get::<_, i64>(4) as u64,
              cache_write: r.get::<_, i64>(5) as u64,
            },
            usd: r.get(6),
          })
          .collect(),
      )
    })
  }
}

/// What a cap's scope spent since `$3` on PostgreSQL: the ledger's rows of `$1` the user and `$2`
/// the project or the session lineage (each filter the prefix of an index); `k` is a stored key.
fn spent_sql_pg(k: &BudgetKey) -> (&'static str, &str) {
  match k.scope.as_str() {
    "user" => ("SELECT COALESCE(SUM(usd), 0)::float8 FROM {S}.model_calls WHERE user_id = $1 AND $2 = '' AND at >= $3", ""),
    "project" if k.is_project_total() => {
      ("SELECT COALESCE(SUM(usd), 0)::float8 FROM {S}.model_calls WHERE project_id = $2 AND $1 = '' AND at >= $3", &k.project_id)
    }
    "project" => {
      ("SELECT COALESCE(SUM(usd), 0)::float8 FROM {S}.model_calls WHERE user_id = $1 AND project_id = $2 AND at >= $3", &k.project_id)
    }
    // The lineage's root's own calls, and its forks' (which name it).
    _ => (
      "SELECT ((SELECT COALESCE(SUM(usd), 0) FROM {S}.model_calls WHERE session_id = $2 AND user_id = $1 AND at >= $3)
         + (SELECT COALESCE(SUM(usd), 0) FROM {S}.model_calls WHERE lineage_id = $2 AND lineage_id <> '' AND user_id = $1 AND at >= $3))::float8",
      &k.session_id,
    ),
  }
}
