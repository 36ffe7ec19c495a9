//! Spend caps and the ledger of model calls on SQLite (what they are: `store/budgets.rs`).

use rusqlite::{params, Connection, OptionalExtension};

use super::*;
use crate::error::Result;
use crate::store::budgets::applicable;

const SELECT_BUDGET: &str = "SELECT usd, period FROM budgets WHERE scope = ?1 AND user_id = ?2 AND project_id = ?3 AND session_id = ?4";

/// What a cap's scope spent since `?3`: the ledger's rows of `?1` the user and `?2` the project
/// or the session lineage (each filter the prefix of an index); `k` is a stored key
/// ([`SqliteStore::stored_key`]).
fn spent_sql(k: &BudgetKey) -> (&'static str, &str) {
  match k.scope.as_str() {
    "user" => ("SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE user_id = ?1 AND ?2 = '' AND at >= ?3", ""),
    "project" if k.is_project_total() => {
      ("SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE project_id = ?2 AND ?1 = '' AND at >= ?3", &k.project_id)
    }
    "project" => ("SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE user_id = ?1 AND project_id = ?2 AND at >= ?3", &k.project_id),
    // The lineage's root's own calls, and its forks' (which name it).
    _ => (
      "SELECT (SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE session_id = ?2 AND user_id = ?1 AND at >= ?3)
         + (SELECT COALESCE(SUM(usd), 0) FROM model_calls WHERE lineage_id = ?2 AND lineage_id != '' AND user_id = ?1 AND at >= ?3)",
      &k.session_id,
    ),
  }
}

impl SqliteStore {
  /// When the current `period` started, by `now` (UTC); 0 for none.
  fn period_start(c: &Connection, period: Option<&str>, now: i64) -> Result<i64> {
    let modifier = match period {
      Some("day") => "start of day",
      Some("month") => "start of month",
      _ => return Ok(0),
    };
    Ok(c.query_row("SELECT CAST(strftime('%s', ?1 / 1000, 'unixepoch', ?2) AS INTEGER) * 1000", params![now, modifier], |r| r.get(0))?)
  }

  fn spent(c: &Connection, k: &BudgetKey, since: i64) -> Result<f64> {
    let (sql, other) = spent_sql(k);
    Ok(c.prepare_cached(sql)?.query_row(params![k.user_id, other, since], |r| r.get(0))?)
  }

  /// The clock the caps read: now, moved by `shift_budget_clock`.
  fn budget_now(&self) -> i64 {
    now_ms() + self.budget_clock_ms.load(std::sync::atomic::Ordering::Relaxed)
  }

  /// The lineage of a session, its root (`store/budgets.rs`); a session the store does not have
  /// is a lineage of its own.
  fn lineage(c: &Connection, session_id: &str) -> Result<String> {
    let found = c
      .prepare_cached("SELECT CASE lineage_id WHEN '' THEN id ELSE lineage_id END FROM sessions WHERE id = ?1")?
      .query_row([session_id], |r| r.get(0))
      .optional()?;
    Ok(found.unwrap_or_else(|| session_id.to_owned()))
  }

  /// The key a cap is stored and its spend summed under: a session cap's session is its lineage.
  fn stored_key(c: &Connection, k: &BudgetKey) -> Result<BudgetKey> {
    if k.scope != "session" {
      return Ok(k.clone());
    }
    Ok(BudgetKey { session_id: Self::lineage(c, &k.session_id)?, ..k.clone() })
  }

  /// Records a call at its reserve, with its session's lineage when that is not the session
  /// itself; its id.
  fn insert_call(c: &Connection, call: &CallAdmit<'_>, lineage: &str, now: i64) -> Result<i64> {
    exec(
      c,
      "INSERT INTO model_calls (task_id, session_id, lineage_id, user_id, project_id, model, usd, reserved, at)
       VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8)",
      params![
        call.task_id,
        call.session_id,
        if lineage == call.session_id { "" } else { lineage },
        call.user_id,
        call.project_id,
        call.model,
        call.reserve_usd,
        now
      ],
    )?;
    Ok(c.last_insert_rowid())
  }

  /// A stored cap (`k` a stored key).
  fn stored_cap(c: &Connection, k: &BudgetKey) -> Result<Option<(f64, Option<String>)>> {
    Ok(
      c.prepare_cached(SELECT_BUDGET)?
        .query_row(params![k.scope, k.user_id, k.project_id, k.session_id], |r| Ok((r.get::<_, f64>(0)?, r.get::<_, Option<String>>(1)?)))
        .optional()?,
    )
  }
}

#[async_trait::async_trait]
impl Budgets for SqliteStore {
  /// Checks every cap that applies to the call against its reserve and, in the same
  /// transaction, records the call at its reserve, with its session's lineage when that is not
  /// the session itself.
  async fn admit_call(&self, call: &CallAdmit<'_>, defaults: &BudgetDefaults) -> Result<Admit> {
    let now = self.budget_now();
    self.write(|tx| {
      let lineage = Self::lineage(tx, call.session_id)?;
      for (mut key, cap, period) in applicable(call, &lineage, |k| Self::stored_cap(tx, k), defaults)? {
        let spent = Self::spent(tx, &key, Self::period_start(tx, period.as_deref(), now)?)?;
        if spent + call.reserve_usd > cap {
          if key.scope == "session" {
            key.session_id = call.session_id.to_owned();
          }
          return Ok(Admit::Over { key, cap_usd: cap, spent_usd: spent, period });
        }
      }
      Ok(Admit::Go(Self::insert_call(tx, call, &lineage, now)?))
    })
  }

  /// Reads the caps as [`Budgets::admit_call`] checks them, without the write lock.
  async fn call_capped(&self, call: &CallAdmit<'_>, defaults: &BudgetDefaults) -> Result<bool> {
    if defaults.per_user.is_some() || defaults.per_session.is_some() {
      return Ok(true);
    }
    self.with(|c| {
      let lineage = Self::lineage(c, call.session_id)?;
      Ok(!applicable(call, &lineage, |k| Self::stored_cap(c, k), defaults)?.is_empty())
    })
  }

  /// The insert of [`Budgets::admit_call`] alone.
  async fn record_call(&self, call: &CallAdmit<'_>) -> Result<i64> {
    let now = self.budget_now();
    self.write(|tx| Self::insert_call(tx, call, &Self::lineage(tx, call.session_id)?, now))
  }

  /// Records what an admitted call really cost (one statement).
  async fn settle_call(&self, id: i64, model: &str, t: &CallTokens, usd: f64) -> Result<()> {
    self.with(|c| {
      exec(
        c,
        "UPDATE model_calls SET model = CASE WHEN ?2 = '' THEN model ELSE ?2 END, input_tokens = ?3, output_tokens = ?4,
           cache_read_tokens = ?5, cache_write_tokens = ?6, usd = ?7, reserved = 0 WHERE id = ?1",
        params![id, model, t.input as i64, t.output as i64, t.cache_read as i64, t.cache_write as i64, usd],
      )?;
      Ok(())
    })
  }

  /// Sets (or replaces) a cap (a session's: its lineage's).
  async fn set_budget(&self, k: &BudgetKey, usd: f64, period: Option<&str>) -> Result<()> {
    self.write(|tx| {
      let k = &Self::stored_key(tx, k)?;
      exec(
        tx,
        "INSERT INTO budgets (scope, user_id, project_id, session_id, usd, period, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (scope, user_id, project_id, session_id) DO UPDATE SET usd = ?5, period = ?6, updated_at = ?7",
        params![k.scope, k.user_id, k.project_id, k.session_id, usd, period, now_ms()],
      )?;
      Ok(())
    })
  }

  /// A stored cap with its scope's spend in the current period (a session's: its lineage's).
  async fn get_budget(&self, k: &BudgetKey) -> Result<Option<Budget>> {
    let now = self.budget_now();
    self.with(|c| {
      let stored = Self::stored_key(c, k)?;
      let Some((usd, period)) = Self::stored_cap(c, &stored)? else { return Ok(None) };
      let start = Self::period_start(c, period.as_deref(), now)?;
      Ok(Some(Budget { key: k.clone(), usd, period, spent_usd: Self::spent(c, &stored, start)?, period_start: start }))
    })
  }

  /// What a scope spent in the current `period` (for a default cap, which has no row).
  async fn spent_in(&self, k: &BudgetKey, period: Option<&str>) -> Result<(f64, i64)> {
    let now = self.budget_now();
    self.with(|c| {
      let start = Self::period_start(c, period, now)?;
      Ok((Self::spent(c, &Self::stored_key(c, k)?, start)?, start))
    })
  }

  /// Deletes a cap (a session's: its lineage's); whether there was one.
  async fn delete_budget(&self, k: &BudgetKey) -> Result<bool> {
    self.write(|tx| {
      let k = &Self::stored_key(tx, k)?;
      Ok(
        exec(
          tx,
          "DELETE FROM budgets WHERE scope = ?1 AND user_id = ?2 AND project_id = ?3 AND session_id = ?4",
          params![k.scope, k.user_id, k.project_id, k.session_id],
        )? > 0,
      )
    })
  }

  /// The ledger summed by day, model or session.
  async fn usage_report(&self, q: &UsageQuery) -> Result<Vec<UsageRow>> {
    let key = match q.group_by.as_str() {
      "day" => "strftime('%Y-%m-%d', at / 1000, 'unixepoch')",
      "model" => "model",
      _ => "session_id",
    };
    // Only the filters given, so that SQLite can use the index of the narrowest one (a
    // `?1 IS NULL OR user_id = ?1` condition would scan the whole ledger).
    let mut filters = vec!["at >= ?", "at < ?"];
    let mut args: Vec<rusqlite::types::Value> = vec![q.since.unwrap_or(0).into(), q.until.unwrap_or(i64::MAX).into()];
    for (column, value) in [("user_id = ?", &q.user_id), ("project_id = ?", &q.project_id), ("session_id = ?", &q.session_id)] {
      if let Some(v) = value {
        filters.push(column);
        args.push(v.clone().into());
      }
    }
    let sql = format!(
      "SELECT {key} AS k, COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
         COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), COALESCE(SUM(usd), 0)
       FROM model_calls WHERE {} GROUP BY k ORDER BY k",
      filters.join(" AND ")
    );
    self.with(|c| {
      let mut st = c.prepare_cached(&sql)?;
      let rows = st.query_map(rusqlite::params_from_iter(args.iter()), |r| {
        Ok(UsageRow {
          key: r.get(0)?,
          calls: r.get::<_, i64>(1)? as u64,
          tokens: CallTokens {
            input: r.get::<_, i64>(2)? as u64,
            output: r.get::<_, i64>(3)? as u64,
            cache_read: r.get::<_, i64>(4)? as u64,
            cache_write: r.get::<_, i64>(5)? as u64,
          },
          usd: r.get(6)?,
        })
      })?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }

  fn shift_budget_clock(&self, ms: i64) {
    self.budget_clock_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
  }
}
