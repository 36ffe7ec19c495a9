//! Tasks and the one-CLI-per-session lease on PostgreSQL, fenced (see `postgres/mod.rs`).

use super::*;
use crate::store::{Began, Start};

impl PgStore {
  /// The function `begin_task` (see `schema.rs`); with `user_id`, also what the run reads next
  /// ([`Began`]): the session with its transcript head, the other managers' warm holds of it
  /// asked to give way ([`WarmHolds::warm_elsewhere`], only once the lease is this task's), its
  /// branch point. All
  /// sent before any answers: one round trip; one connection runs them in order, so the reads
  /// see the start committed.
  async fn start_in(&self, session_id: &str, user_id: Option<&str>, start: &TaskStart<'_>) -> Result<Start> {
    let TaskStart { task_id, kind, model, owner, ttl, max_running } = *start;
    let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as f64;
    let (pid, max) = (owner.pid as i64, max_running.map(|m| m.min(i64::MAX as u64) as i64));
    let key = format!("{}\u{1}running", self.schema);
    let begin = "SELECT outcome, kept FROM {S}.begin_task($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
    let read = format!("SELECT {SESSION_COLUMNS}, transcript_seq FROM {{S}}.sessions WHERE id = $1 AND user_id = $2");
    let warm = "WITH gone AS (DELETE FROM {S}.warm_holds WHERE session_id = $1 AND expires_at <= now())
       UPDATE {S}.warm_holds SET wanted = true WHERE session_id = $1 AND owner_id != $2 AND expires_at > now()
         AND EXISTS (SELECT 1 FROM {S}.leases WHERE session_id = $1 AND task_id = $3)
       RETURNING owner_id";
    let point = "SELECT fork_at, resume_at, resume_drops FROM {S}.branch_points WHERE session_id = $1";
    let params: Params =
      &[&session_id, &task_id, &kind, &model, &owner.id, &pid, &self.node, &ttl_ms, &self.host, &max, &key, &INTERRUPTED];
    let (outcome, kept, next) = idempotent!(self, |c| {
      let (began, next) = match user_id {
        Some(user) => {
          let (by_user, by_owner, by_id): (Params, Params, Params) =
            (&[&session_id, &user], &[&session_id, &owner.id, &task_id], &[&session_id]);
          let (began, fresh, holds, point) = tokio::join!(
            self.query(c, begin, params),
            self.opt(c, &read, by_user),
            self.query(c, warm, by_owner),
            self.opt(c, point, by_id)
          );
          (began?, Some((fresh?, holds?, point?)))
        }
        None => (self.query(c, begin, params).await?, None),
      };
      let (outcome, kept): (String, bool) = (began[0].get(0), began[0].get(1));
      Ok((outcome, kept, next))
    })?;
    match outcome.as_str() {
      "started" => Ok(Start::Started(Box::new(match next {
        Some((fresh, holds, point)) => Began {
          session: fresh.as_ref().map(|r| self.session_row(r)),
          transcript_head: fresh.as_ref().map(|r| r.get(26)),
          // Other managers' holds asked to give way: the run waits for them as before.
          warm_left: Some(holds.len() as u64),
          branch_point: Some(point.map(|r| BranchPoint { fork_at: r.get(0), resume_at: r.get(1), resume_drops: r.get(2) })),
        },
        None => Began::default(),
      }))),
      "held" => Ok(Start::SessionHeld { exiting: kept }),
      "full" => Ok(Start::Full),
      _ => Err(Error::not_found(session_id)),
    }
  }

  pub(super) async fn release_in(&self, tx: &Transaction<'_>, session_id: &str, task_id: &str) -> Result<()> {
    // The row stays (its fence must keep growing); only the holder goes.
    self
      .exec(tx, "UPDATE {S}.leases SET task_id = NULL, expires_at = now() WHERE session_id = $1 AND task_id = $2", &[&session_id, &task_id])
      .await?;
    Ok(())
  }

  /// The fence of a task (the lease generation it ran under), for tests and diagnostics.
  pub async fn task_fence(&self, task_id: &str) -> Result<Option<i64>> {
    read!(self, |c| Ok(self.opt(c, "SELECT fence FROM {S}.tasks WHERE id = $1", &[&task_id]).await?.and_then(|r| r.get(0))))
  }
}

#[async_trait::async_trait]
impl Tasks for PgStore {
  /// Whether the session's lease is held past its task's end (that task's CLI is exiting).
  async fn lease_kept_after_end(&self, session_id: &str) -> Result<bool> {
    read!(self, |c| {
      Ok(
        self
          .opt(
            c,
            "SELECT 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id
             WHERE l.session_id = $1 AND l.expires_at > now() AND t.status != 'running'",
            &[&session_id],
          )
          .await?
          .is_some(),
      )
    })
  }

  /// Takes the session's lease (a new fence) and inserts the task row as `running`, in one
  /// statement (the function `begin_task`, see `schema.rs`). Writes nothing when another live
  /// task holds the lease, or when `start.max_running` live leases are held in the schema: with a
  /// limit, the count and the insert happen under one transaction-level advisory lock, so nodes
  /// starting at once never exceed it. Run again for a task that started (a lost answer), it
  /// answers `Started` and writes nothing.
  async fn begin_task(&self, session_id: &str, start: &TaskStart<'_>) -> Result<Begin> {
    Ok(match self.start_in(session_id, None, start).await? {
      Start::Started(_) => Begin::Started,
      Start::SessionHeld { .. } => Begin::SessionHeld,
      Start::Full => Begin::Full,
    })
  }

  /// [`Tasks::begin_task`] with the session read after it, pipelined on one connection: one
  /// round trip.
  async fn start_task(&self, session_id: &str, user_id: &str, start: &TaskStart<'_>) -> Result<Start> {
    self.start_in(session_id, Some(user_id), start).await
  }

  /// Extends a held lease by `ttl` from the database's now. Returns false when the lease is no
  /// longer this task's (another task took it over under a newer fence, or it was released).
  async fn renew_lease(&self, session_id: &str, task_id: &str, ttl: Duration) -> Result<bool> {
    let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as f64;
    tx!(self, |tx| {
      let n = self
        .exec(
          tx,
          "UPDATE {S}.leases l SET expires_at = now() + $3 * interval '1 millisecond'
           FROM {S}.tasks t WHERE l.session_id = $1 AND l.task_id = $2 AND t.id = l.task_id AND t.fence = l.fence",
          &[&session_id, &task_id, &ttl_ms],
        )
        .await?;
      Ok(n == 1)
    })
  }

  /// Ends a task: its row, the session's totals, the context snapshot and (unless
  /// `end.keep_lease`) the lease, in one statement (the function `finish_task`, see `schema.rs`:
  /// the steps of `TaskEnd::steps` in that order) — fenced: refused with `STORE_ERROR`, writing
  /// nothing, when another task has taken the session's lease over meanwhile. Run again after it
  /// committed (a lost answer), it writes nothing more.
  async fn finish_task(&self, session_id: &str, task_id: &str, end: &TaskEnd, cli_cost_watermark: Option<f64>) -> Result<()> {
    let n = end.counts();
    let ctx = end.context.as_ref();
    let (ctx_tokens, ctx_window, ctx_source, ctx_measured) =
      (ctx.map(|c| c.tokens as i64), ctx.map(|c| c.window as i64), ctx.map(|c| c.source.as_str()), ctx.map(|c| c.measured_at));
    let (window_model, window) = (end.window.as_ref().map(|w| w.0.as_str()), end.window.as_ref().map(|w| w.1 as i64));
    let c = &end.compactions;
    let c_session: Vec<&str> = c.iter().map(|c| c.session_id.as_str()).collect();
    let c_task: Vec<Option<&str>> = c.iter().map(|c| c.task_id.as_deref()).collect();
    let c_trigger: Vec<&str> = c.iter().map(|c| c.trigger.as_str()).collect();
    let c_pre: Vec<Option<i64>> = c.iter().map(|c| c.pre_tokens.map(|t| t as i64)).collect();
    let c_post: Vec<Option<i64>> = c.iter().map(|c| c.post_tokens.map(|t| t as i64)).collect();
    let c_started: Vec<i64> = c.iter().map(|c| c.started_at).collect();
    let c_duration: Vec<Option<i64>> = c.iter().map(|c| c.duration_ms.map(|t| t as i64)).collect();
    let release = !end.keep_lease;
    let params: Params = &[
      &session_id,
      &task_id,
      &end.status,
      &end.model,
      &n.turns,
      &n.input,
      &n.output,
      &n.cache_read,
      &n.cache_creation,
      &end.cost_usd,
      &end.cli_reported_cost_usd,
      &n.duration_api_ms,
      &end.error_code,
      &end.error_message,
      &end.cli_version,
      &end.materialized,
      &cli_cost_watermark,
      &end.paused,
      &ctx_tokens,
      &ctx_window,
      &ctx_source,
      &ctx_measured,
      &window_model,
      &window,
      &c_session,
      &c_task,
      &c_trigger,
      &c_pre,
      &c_post,
      &c_started,
      &c_duration,
      &release,
      &end.record_only,
    ];
    let sql = "SELECT {S}.finish_task($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
       $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33)";
    let held: bool = idempotent!(self, |c| Ok(self.query(c, sql, params).await?[0].get(0)))?;
    if !held {
      return Err(Error::store(format!(
        "task {task_id} no longer holds the lease of session {session_id} (another task took it over); its end was not recorded"
      )));
    }
    Ok(())
  }

  /// Frees the lease a task kept past its end: one statement, which may run again.
  async fn release_lease(&self, session_id: &str, task_id: &str) -> Result<()> {
    idempotent!(self, |c| {
      self
        .exec(
          c,
          "UPDATE {S}.leases SET task_id = NULL, expires_at = now() WHERE session_id = $1 AND task_id = $2",
          &[&session_id, &task_id],
        )
        .await
    })?;
    Ok(())
  }

  /// Marks `running` tasks whose holder is gone as `interrupted` and frees their leases: tasks
  /// of this node's dead processes at once, any task (of any node) whose lease expired. Returns
  /// how many tasks were marked.
  async fn recover_interrupted(&self, is_alive: &(dyn Fn(u32) -> bool + Sync)) -> Result<u64> {
    tx!(self, |tx| {
      let running = self
        .query(
          tx,
          "SELECT t.id, t.session_id, t.owner_pid, t.host_id,
             COALESCE(l.task_id = t.id AND l.expires_at > now(), false)
           FROM {S}.tasks t LEFT JOIN {S}.leases l ON l.session_id = t.session_id
           WHERE t.status = 'running' FOR UPDATE OF t",
          &[],
        )
        .await?;
      let mut n = 0;
      for r in &running {
        let (task_id, session_id, pid, node, live): (String, String, i64, String, bool) =
          (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let dead = !live || (node == self.host && !is_alive(pid as u32));
        if dead {
          self
            .exec(
              tx,
              "UPDATE {S}.tasks SET status = 'interrupted', ended_at = {NOW}, error_code = 'INTERRUPTED', error_message = $2
               WHERE id = $1",
              &[&task_id, &INTERRUPTED],
            )
            .await?;
          self.release_in(tx, &session_id, &task_id).await?;
          self.exec(tx, "UPDATE {S}.sessions SET updated_at = {NOW}, task_count = task_count + 1 WHERE id = $1", &[&session_id]).await?;
          n += 1;
        }
      }
      // A lease kept past its task's end (the CLI was exiting) by a process of this node that
      // died since.
      let kept = self
        .query(
          tx,
          "SELECT l.session_id, l.task_id, l.owner_pid FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id
           WHERE t.status != 'running' AND l.host_id = $1",
          &[&self.host],
        )
        .await?;
      for r in &kept {
        let (session_id, task_id, pid): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        if !is_alive(pid as u32) {
          self.release_in(tx, &session_id, &task_id).await?;
        }
      }
      Ok(n)
    })
  }

  /// Tasks of a session, oldest first.
  async fn list_tasks(&self, session_id: &str) -> Result<Vec<TaskRecord>> {
    read!(self, |c| {
      let rows = self
        .query(
          c,
          "SELECT id, session_id, status, kind, started_at, ended_at, model, turns, input_tokens, output_tokens,
             cache_read_tokens, cache_creation_tokens, cost_usd, error_code, error_message, cli_version
           FROM {S}.tasks WHERE session_id = $1 ORDER BY started_at, seq",
          &[&session_id],
        )
        .await?;
      Ok(
        rows
          .iter()
          .map(|r| TaskRecord {
            id: r.get(0),
            session_id: r.get(1),
            status: r.get(2),
            kind: r.get(3),
            started_at: r.get(4),
            ended_at: r.get(5),
            model: r.get(6),
            turns: r.get::<_, Option<i64>>(7).map(|t| t as u64),
            usage: Usage {
              input_tokens: r.get::<_, i64>(8) as u64,
              output_tokens: r.get::<_, i64>(9) as u64,
              cache_read_input_tokens: r.get::<_, i64>(10) as u64,
              cache_creation_input_tokens: r.get::<_, i64>(11) as u64,
            },
            cost_usd: r.get(12),
            error_code: r.get(13),
            error_message: r.get(14),
            cli_version: r.get(15),
          })
          .collect(),
      )
    })
  }
}
