//! Tasks and the one-CLI-per-session lease on PostgreSQL, fenced (see `postgres/mod.rs`).

use super::*;

impl PgStore {
  pub(super) async fn interrupt_orphans(&self, tx: &Transaction<'_>, session_id: &str) -> Result<()> {
    let n = self
      .exec(
        tx,
        "UPDATE {S}.tasks SET status = 'interrupted', ended_at = {NOW}, error_code = 'INTERRUPTED', error_message = $2
         WHERE session_id = $1 AND status = 'running'",
        &[&session_id, &INTERRUPTED],
      )
      .await?;
    if n > 0 {
      self.exec(tx, "UPDATE {S}.sessions SET task_count = task_count + $2 WHERE id = $1", &[&session_id, &(n as i64)]).await?;
    }
    Ok(())
  }

  /// The fence a task holds the session's lease under, if it still does (expired or not, as long
  /// as no other task has taken it over). Locks the lease row.
  pub(super) async fn held_fence(&self, tx: &Transaction<'_>, session_id: &str, task_id: &str) -> Result<Option<i64>> {
    Ok(
      self
        .opt(
          tx,
          "SELECT l.fence FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id AND t.fence = l.fence
           WHERE l.session_id = $1 AND l.task_id = $2 FOR UPDATE OF l",
          &[&session_id, &task_id],
        )
        .await?
        .map(|r| r.get(0)),
    )
  }

  /// The fence of the session's lease when `task_id` was the last task to take it (held or
  /// released since), locked until the transaction ends; `None` when another task took it since.
  pub(super) async fn last_fence(&self, tx: &Transaction<'_>, session_id: &str, task_id: &str) -> Result<Option<i64>> {
    Ok(
      self
        .opt(
          tx,
          "SELECT l.fence FROM {S}.leases l JOIN {S}.tasks t ON t.id = $2 AND t.fence = l.fence
           WHERE l.session_id = $1 AND (l.task_id IS NULL OR l.task_id = $2) FOR UPDATE OF l",
          &[&session_id, &task_id],
        )
        .await?
        .map(|r| r.get(0)),
    )
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
  /// transaction. Writes nothing when another live task holds the lease, or when
  /// `start.max_running` live leases are held in the schema: with a limit, the count and the
  /// insert happen under one transaction-level advisory lock, so nodes starting at once never
  /// exceed it.
  async fn begin_task(&self, session_id: &str, start: &TaskStart<'_>) -> Result<Begin> {
    let TaskStart { task_id, kind, model, owner, ttl, max_running } = *start;
    let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
    let pid = owner.pid as i64;
    tx!(self, |tx| {
      // The session row's lock orders every start (and delete) of this session, on every node.
      if self.opt(tx, "SELECT 1 FROM {S}.sessions WHERE id = $1 FOR UPDATE", &[&session_id]).await?.is_none() {
        return Err(Error::not_found(session_id));
      }
      let live = self
        .opt(tx, "SELECT 1 FROM {S}.leases WHERE session_id = $1 AND task_id IS NOT NULL AND expires_at > now()", &[&session_id])
        .await?;
      if live.is_some() {
        return Ok(Begin::SessionHeld);
      }
      if let Some(max) = max_running {
        // Held until commit: the next starter counts after this one's lease is in. (Each
        // statement under READ COMMITTED sees what was committed before it began.)
        let key = format!("{}\u{1}running", self.schema);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key]).await.map_err(pg)?;
        let live: i64 =
          self.query(tx, "SELECT COUNT(*) FROM {S}.leases WHERE task_id IS NOT NULL AND expires_at > clock_timestamp()", &[]).await?[0]
            .get(0);
        if live as u64 >= max {
          return Ok(Begin::Full);
        }
      }
      // No live lease: a `running` row left is a dead or stuck holder's, interrupted.
      self.interrupt_orphans(tx, session_id).await?;
      let fence: i64 = self
        .query(
          tx,
          "INSERT INTO {S}.leases (session_id, fence, task_id, owner_id, owner_pid, node_id, expires_at, host_id)
           VALUES ($1, 1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond', $7)
           ON CONFLICT (session_id) DO UPDATE SET fence = {S}.leases.fence + 1, task_id = EXCLUDED.task_id,
             owner_id = EXCLUDED.owner_id, owner_pid = EXCLUDED.owner_pid, node_id = EXCLUDED.node_id,
             expires_at = EXCLUDED.expires_at, host_id = EXCLUDED.host_id
           RETURNING fence",
          &[&session_id, &task_id, &owner.id, &pid, &self.node, &(ttl_ms as f64), &self.host],
        )
        .await?[0]
        .get(0);
      self
        .exec(
          tx,
          "INSERT INTO {S}.tasks (id, session_id, status, started_at, model, owner_id, owner_pid, node_id, kind, fence, host_id)
           VALUES ($1, $2, 'running', {NOW}, $3, $4, $5, $6, $7, $8, $9)",
          &[&task_id, &session_id, &model, &owner.id, &pid, &self.node, &kind, &fence, &self.host],
        )
        .await?;
      Ok(Begin::Started)
    })
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
  /// `end.keep_lease`) the lease, in one transaction — fenced: refused with `STORE_ERROR`,
  /// writing nothing, when another task has taken the session's lease over meanwhile.
  async fn finish_task(&self, session_id: &str, task_id: &str, end: &TaskEnd, cli_cost_watermark: Option<f64>) -> Result<()> {
    let n = end.counts();
    tx!(self, |tx| {
      if self.held_fence(tx, session_id, task_id).await?.is_none() {
        return Err(Error::store(format!(
          "task {task_id} no longer holds the lease of session {session_id} (another task took it over); its end was not recorded"
        )));
      }
      for step in end.steps() {
        match step {
          EndStep::TaskRow => {
            let sql = "UPDATE {S}.tasks SET status = $2, ended_at = {NOW}, model = COALESCE($3, model), turns = $4,
               input_tokens = $5, output_tokens = $6, cache_read_tokens = $7, cache_creation_tokens = $8,
               cost_usd = $9, cli_reported_cost_usd = $10, duration_api_ms = $11, error_code = $12,
               error_message = $13, cli_version = $14
             WHERE id = $1";
            let params: Params = &[
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
            ];
            self.exec(tx, sql, params).await?;
          }
          EndStep::Totals => {
            let sql = "UPDATE {S}.sessions SET task_count = task_count + 1, total_cost_usd = total_cost_usd + $2,
               input_tokens = input_tokens + $3, output_tokens = output_tokens + $4,
               cache_read_tokens = cache_read_tokens + $5, cache_creation_tokens = cache_creation_tokens + $6,
               last_active_at = {NOW}, updated_at = {NOW}, materialized = materialized OR $7,
               cli_cost_watermark = COALESCE($8, cli_cost_watermark), paused = $9
             WHERE id = $1";
            let params: Params = &[
              &session_id,
              &end.cost_usd,
              &n.input,
              &n.output,
              &n.cache_read,
              &n.cache_creation,
              &end.materialized,
              &cli_cost_watermark,
              &end.paused,
            ];
            self.exec(tx, sql, params).await?;
          }
          EndStep::Context(ctx) => {
            let sql = "UPDATE {S}.sessions SET context_tokens = $2, context_window = $3, context_source = $4, context_measured_at = $5
             WHERE id = $1";
            self.exec(tx, sql, &[&session_id, &(ctx.tokens as i64), &(ctx.window as i64), &ctx.source, &ctx.measured_at]).await?;
          }
          EndStep::Window(model, window) => {
            let sql = "INSERT INTO {S}.model_windows (model, context_window, updated_at) VALUES ($1, $2, {NOW})
             ON CONFLICT (model) DO UPDATE SET context_window = EXCLUDED.context_window, updated_at = EXCLUDED.updated_at";
            self.exec(tx, sql, &[&model, &(window as i64)]).await?;
          }
          EndStep::Compaction(c) => {
            let sql = "INSERT INTO {S}.compactions (session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)";
            let (pre, post, ms) = (c.pre_tokens.map(|t| t as i64), c.post_tokens.map(|t| t as i64), c.duration_ms.map(|t| t as i64));
            self.exec(tx, sql, &[&c.session_id, &c.task_id, &c.trigger, &pre, &post, &c.started_at, &ms]).await?;
          }
          EndStep::ReleaseLease => self.release_in(tx, session_id, task_id).await?,
        }
      }
      Ok(())
    })
  }

  /// Frees the lease a task kept past its end.
  async fn release_lease(&self, session_id: &str, task_id: &str) -> Result<()> {
    tx!(self, |tx| self.release_in(tx, session_id, task_id).await)
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
