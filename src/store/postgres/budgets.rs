//! Spend caps and the ledger of model calls on PostgreSQL: the rows and rules of `budgets.rs`,
//! periods on the database clock (UTC). Admitting a call takes a transaction-scoped advisory lock
//! on its user (every scope of a call belongs to one user), so that the check of the caps and the
//! insert of the reserve are one step for every node; settling is one `UPDATE`.

use super::*;
use crate::error::Result;
use crate::store::budgets::applicable;
use crate::store::{Admit, Budget, BudgetDefaults, BudgetKey, CallAdmit, CallTokens, UsageQuery, UsageRow};

const SELECT_BUDGET: &str = "SELECT usd, period FROM {S}.budgets WHERE scope = $1 AND user_id = $2 AND project_id = $3 AND session_id = $4";

/// The start of the current period on the database clock, in ms; 0 for none.
const PERIOD_START: &str = "SELECT CASE $1::text
    WHEN 'day' THEN (extract(epoch from date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') * 1000)::bigint
    WHEN 'month' THEN (extract(epoch from date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') * 1000)::bigint
    ELSE 0::bigint END";

impl PgStore {
  async fn period_start(&self, c: &impl deadpool_postgres::GenericClient, period: Option<&str>) -> Result<i64> {
    Ok(self.query(c, PERIOD_START, &[&period]).await?[0].get(0))
  }

  async fn spent(&self, c: &impl deadpool_postgres::GenericClient, scope: &str, user: &str, other: &str, since: i64) -> Result<f64> {
    Ok(self.query(c, spent_sql_pg(scope), &[&user, &other, &since]).await?[0].get(0))
  }
}

impl Budgets for PgStore {
  /// Checks every cap that applies to the call against its reserve and records the call at its
  /// reserve, under the user's advisory lock.
  fn admit_call(&self, call: &CallAdmit<'_>, defaults: &BudgetDefaults) -> Result<Admit> {
    let lock_key = format!("claude-session-manager:budget:{}:{}", self.schema, call.user_id);
    self.tx(async |tx| {
      tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&lock_key]).await.map_err(super::pg)?;
      let mut stored = Vec::new();
      for scope in crate::store::budgets::SCOPES {
        let (p, s) = match scope {
          "project" => (call.project_id, ""),
          "session" => ("", call.session_id),
          _ => ("", ""),
        };
        let row = self.opt(tx, SELECT_BUDGET, &[&scope, &call.user_id, &p, &s]).await?;
        stored.push((scope, row.map(|r| (r.get::<_, f64>(0), r.get::<_, Option<String>>(1)))));
      }
      let caps = applicable(|scope| Ok(stored.iter().find(|(s, _)| *s == scope).and_then(|(_, r)| r.clone())), defaults)?;
      for (scope, cap, period) in caps {
        let since = self.period_start(tx, period.as_deref()).await?;
        let other = match scope {
          "project" => call.project_id,
          "session" => call.session_id,
          _ => "",
        };
        let spent = self.spent(tx, scope, call.user_id, other, since).await?;
        if spent + call.reserve_usd > cap {
          return Ok(Admit::Over { scope: scope.into(), cap_usd: cap, spent_usd: spent, period });
        }
      }
      let row = self
        .query(
          tx,
          "INSERT INTO {S}.model_calls (task_id, session_id, user_id, project_id, model, usd, reserved, at)
           VALUES ($1, $2, $3, $4, $5, $6, true, {NOW}) RETURNING id",
          &[&call.task_id, &call.session_id, &call.user_id, &call.project_id, &call.model, &call.reserve_usd],
        )
        .await?;
      Ok(Admit::Go(row[0].get(0)))
    })
  }

  /// Records what an admitted call really cost (one statement).
  fn settle_call(&self, id: i64, model: &str, t: &CallTokens, usd: f64) -> Result<()> {
    let (i, o, r, w) = (t.input as i64, t.output as i64, t.cache_read as i64, t.cache_write as i64);
    self.read(async |c| {
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

  /// Sets (or replaces) a cap.
  fn set_budget(&self, k: &BudgetKey, usd: f64, period: Option<&str>) -> Result<()> {
    self.tx(async |tx| {
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

  /// A stored cap with its scope's spend in the current period.
  fn get_budget(&self, k: &BudgetKey) -> Result<Option<Budget>> {
    self.tx(async |tx| {
      let Some(row) = self.opt(tx, SELECT_BUDGET, &[&k.scope, &k.user_id, &k.project_id, &k.session_id]).await? else {
        return Ok(None);
      };
      let (usd, period): (f64, Option<String>) = (row.get(0), row.get(1));
      let start = self.period_start(tx, period.as_deref()).await?;
      let other = if k.scope == "project" { &k.project_id } else { &k.session_id };
      let spent = self.spent(tx, &k.scope, &k.user_id, other, start).await?;
      Ok(Some(Budget { key: k.clone(), usd, period, spent_usd: spent, period_start: start }))
    })
  }

  /// What a scope spent in the current `period`, and when that period started.
  fn spent_in(&self, k: &BudgetKey, period: Option<&str>) -> Result<(f64, i64)> {
    self.tx(async |tx| {
      let start = self.period_start(tx, period).await?;
      let other = if k.scope == "project" { &k.project_id } else { &k.session_id };
      Ok((self.spent(tx, &k.scope, &k.user_id, other, start).await?, start))
    })
  }

  /// Deletes a cap; whether there was one.
  fn delete_budget(&self, k: &BudgetKey) -> Result<bool> {
    self.tx(async |tx| {
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

  /// The ledger summed by day, model or session.
  fn usage_report(&self, q: &UsageQuery) -> Result<Vec<UsageRow>> {
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
    self.read(async |c| {
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

/// The ledger's filter of a scope on PostgreSQL: `$1` the user, `$2` the project or session, `$3` the start.
fn spent_sql_pg(scope: &str) -> &'static str {
  match scope {
    "user" => "SELECT COALESCE(SUM(usd), 0)::float8 FROM {S}.model_calls WHERE user_id = $1 AND $2 = '' AND at >= $3",
    "project" => "SELECT COALESCE(SUM(usd), 0)::float8 FROM {S}.model_calls WHERE user_id = $1 AND project_id = $2 AND at >= $3",
    _ => "SELECT COALESCE(SUM(usd), 0)::float8 FROM {S}.model_calls WHERE session_id = $2 AND user_id = $1 AND at >= $3",
  }
}
