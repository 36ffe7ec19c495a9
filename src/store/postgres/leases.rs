//! Tasks and the one-CLI-per-session lease on PostgreSQL, fenced (see `postgres/mod.rs`).

use super::*;
use crate::store::{Began, EndWith, EndWritten, Start};

/// The function `finish_task` (see `schema.rs`), called with [`FinishArgs::params`].
const FINISH: &str = "SELECT {S}.finish_task($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
   $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33)";

/// The function `end_task` (see `schema.rs`): `finish_task`'s arguments, then the lines'
/// ([`super::transcripts::LinesArgs::arrays`]), the events', the end event's and the doorbell's.
const END: &str = "SELECT * FROM {S}.end_task($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
   $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42)";

/// `finish_task`'s arguments, converted once.
struct FinishArgs<'a> {
  session_id: &'a str,
  task_id: &'a str,
  end: &'a TaskEnd,
  n: crate::store::EndCounts,
  watermark: Option<f64>,
  ctx: (Option<i64>, Option<i64>, Option<&'a str>, Option<i64>),
  window: (Option<&'a str>, Option<i64>),
  c_session: Vec<&'a str>,
  c_task: Vec<Option<&'a str>>,
  c_trigger: Vec<&'a str>,
  c_pre: Vec<Option<i64>>,
  c_post: Vec<Option<i64>>,
  c_started: Vec<i64>,
  c_duration: Vec<Option<i64>>,
  release: bool,
}

impl<'a> FinishArgs<'a> {
  fn new(session_id: &'a str, task_id: &'a str, end: &'a TaskEnd, watermark: Option<f64>) -> Self {
    let ctx = end.context.as_ref();
    let c = &end.compactions;
    FinishArgs {
      session_id,
      task_id,
      end,
      n: end.counts(),
      watermark,
      ctx: (ctx.map(|c| c.tokens as i64), ctx.map(|c| c.window as i64), ctx.map(|c| c.source.as_str()), ctx.map(|c| c.measured_at)),
      window: (end.window.as_ref().map(|w| w.0.as_str()), end.window.as_ref().map(|w| w.1 as i64)),
      c_session: c.iter().map(|c| c.session_id.as_str()).collect(),
      c_task: c.iter().map(|c| c.task_id.as_deref()).collect(),
      c_trigger: c.iter().map(|c| c.trigger.as_str()).collect(),
      c_pre: c.iter().map(|c| c.pre_tokens.map(|t| t as i64)).collect(),
      c_post: c.iter().map(|c| c.post_tokens.map(|t| t as i64)).collect(),
      c_started: c.iter().map(|c| c.started_at).collect(),
      c_duration: c.iter().map(|c| c.duration_ms.map(|t| t as i64)).collect(),
      release: !end.keep_lease,
    }
  }

  fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
    let (end, n) = (self.end, &self.n);
    vec![
      &self.session_id,
      &self.task_id,
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
      &self.watermark,
      &end.paused,
      &self.ctx.0,
      &self.ctx.1,
      &self.ctx.2,
      &self.ctx.3,
      &self.window.0,
      &self.window.1,
      &self.c_session,
      &self.c_task,
      &self.c_trigger,
      &self.c_pre,
      &self.c_post,
      &self.c_started,
      &self.c_duration,
      &self.release,
      &end.record_only,
    ]
  }
}

impl PgStore {
  /// The function `begin_task` (see `schema.rs`); with `user_id`, also what the run reads next
  /// ([`Began`]): the session with its transcript head, the other managers' warm holds of it
  /// asked to give way ([`WarmHolds::warm_elsewhere`], only once the lease is this task's), its
  /// branch point. All
  /// sent before any answers: one round trip; one connection runs them in order, so the reads
  /// see the start committed. With `create`, the new session's `INSERT` goes first, all of it in
  /// one transaction (still one flight): an id in use or retired is refused as
  /// [`Sessions::create_session`] refuses it, and nothing is written.
  pub(super) async fn start_in(
    &self,
    session_id: &str,
    user_id: Option<&str>,
    start: &TaskStart<'_>,
    create: Option<&NewSession>,
  ) -> Result<Start> {
    let TaskStart { task_id, kind, model, owner, ttl, max_running, after } = *start;
    let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as f64;
    let (pid, max) = (owner.pid as i64, max_running.map(|m| m.min(i64::MAX as u64) as i64));
    let key = format!("{}\u{1}running", self.schema);
    // The start commits without waiting for the disk: nothing the caller sees depends on it
    // alone. Every later write of the task (its transcript lines, its end) is fenced by this
    // lease and commits waiting, which flushes the log up to it, start included; a start the
    // database lost in a crash leaves those writes refused (the task fails), never stored
    // without their lease.
    let begin = "SELECT outcome, kept, set_config('synchronous_commit', 'off', true) FROM {S}.begin_task($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
    let read = format!("SELECT {SESSION_COLUMNS}, transcript_seq FROM {{S}}.sessions WHERE id = $1 AND user_id = $2");
    let warm = "WITH gone AS (DELETE FROM {S}.warm_holds WHERE session_id = $1 AND expires_at <= now())
       UPDATE {S}.warm_holds SET wanted = true WHERE session_id = $1 AND owner_id != $2 AND expires_at > now()
         AND EXISTS (SELECT 1 FROM {S}.leases WHERE session_id = $1 AND task_id = $3)
       RETURNING owner_id";
    let point = "SELECT fork_at, resume_at, resume_drops FROM {S}.branch_points WHERE session_id = $1";
    let params: Params =
      &[&session_id, &task_id, &kind, &model, &owner.id, &pid, &self.node, &ttl_ms, &self.host, &max, &key, &INTERRUPTED, &after];
    let insert = create.map(|new| super::sessions::SessionInsert::of(self, new, true));
    let (outcome, kept, next) = idempotent!(self, |c| {
      let (began, next) = match user_id {
        Some(user) => {
          let (by_user, by_owner, by_id): (Params, Params, Params) =
            (&[&session_id, &user], &[&session_id, &owner.id, &task_id], &[&session_id]);
          // Prepared first: the statements are then sent in this order in one poll, and the
          // server runs them in it (the reads see the start). A statement still being prepared
          // when the others go out would be sent after them (`join!` polls its branches in turn,
          // not in order), and the warm holds' update would run before the lease is the task's
          // and find nothing. A new session's row goes first, all of it in one transaction: an
          // id in use fails the insert, and nothing after it happens (behind PgBouncer
          // `idempotent!` opened the transaction).
          let st_insert = async {
            match &insert {
              Some(i) => self.prepared(c, &i.sql).await.map(Some),
              None => Ok(None),
            }
          };
          let (st_insert, st_begin, st_read, st_warm, st_point) =
            tokio::try_join!(st_insert, self.prepared(c, begin), self.prepared(c, &read), self.prepared(c, warm), self.prepared(c, point))?;
          let insert_params = insert.as_ref().map(|i| i.params()).unwrap_or_default();
          let own_tx = insert.is_some() && self.cache_statements;
          let (opened, inserted, began, fresh, holds, point, committed) = tokio::join!(
            async {
              if own_tx {
                c.batch_execute("BEGIN").await
              } else {
                Ok(())
              }
            },
            async {
              match &st_insert {
                Some(st) => c.query_opt(st, &insert_params).await.map(|row| row.is_some()),
                None => Ok(true),
              }
            },
            c.query(&st_begin, params),
            c.query_opt(&st_read, by_user),
            c.query(&st_warm, by_owner),
            c.query_opt(&st_point, by_id),
            async {
              if own_tx {
                c.batch_execute("COMMIT").await
              } else {
                Ok(())
              }
            }
          );
          opened.map_err(pg)?;
          match inserted {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
              return Err(super::sessions::taken(session_id));
            }
            // A retired id (its session deleted): the start found no session either.
            Ok(false) => return Err(super::sessions::taken(session_id)),
            other => other.map_err(pg)?,
          };
          let (began, fresh, holds, point) = (began.map_err(pg)?, fresh.map_err(pg)?, holds.map_err(pg)?, point.map_err(pg)?);
          committed.map_err(pg)?;
          (began, Some((fresh, holds, point)))
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
    Ok(match self.start_in(session_id, None, start, None).await? {
      Start::Started(_) => Begin::Started,
      Start::SessionHeld { .. } => Begin::SessionHeld,
      Start::Full => Begin::Full,
    })
  }

  /// [`Tasks::begin_task`] with the session read after it, pipelined on one connection: one
  /// round trip.
  async fn start_task(&self, session_id: &str, user_id: &str, start: &TaskStart<'_>) -> Result<Start> {
    self.start_in(session_id, Some(user_id), start, None).await
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
    let args = FinishArgs::new(session_id, task_id, end, cli_cost_watermark);
    let params = args.params();
    let held: bool = idempotent!(self, |c| Ok(self.query(c, FINISH, &params).await?[0].get(0)))?;
    if !held {
      return Err(crate::store::end_refused(session_id, task_id));
    }
    Ok(())
  }

  /// One statement, the function `end_task` (see `schema.rs`): the lines (fenced, as
  /// `append_transcript`), the events, `finish_task`, the end event (only if the end was
  /// recorded), in that order, in the statement's own transaction. Never run again on another
  /// connection: a lost answer leaves the outcome unknown (`Err`).
  async fn finish_task_with(
    &self,
    session_id: &str,
    task_id: &str,
    end: &TaskEnd,
    cli_cost_watermark: Option<f64>,
    with: &EndWith<'_>,
  ) -> Result<EndWritten> {
    let args = FinishArgs::new(session_id, task_id, end, cli_cost_watermark);
    let lines = self.lines_args(session_id, task_id, with.lines);
    let events = self.events_args(session_id, task_id, with.events);
    let end_event: Vec<&str> = with.end_event.into_iter().collect();
    let mut params = args.params();
    params.extend(lines.arrays());
    params.extend([&events.bodies as &(dyn ToSql + Sync), &end_event, &events.channel, &events.prefix]);
    on_connection!(self, |client| {
      // Not `idempotent!`: its retry on a fresh connection would run the end twice.
      let out: Result<EndWritten> = async {
        let row = match self.cache_statements {
          true => {
            let c: &deadpool_postgres::Client = &client;
            c.query_one(&self.prepared(c, END).await?, &params).await.map_err(pg)?
          }
          // Behind PgBouncer the statement's preparation and execution share a transaction.
          false => {
            let tx = client.transaction().await.map_err(pg)?;
            let row = tx.query_one(&self.prepared(&tx, END).await?, &params).await.map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            row
          }
        };
        Ok(EndWritten { ended: row.get(0), last_event: row.get(1) })
      }
      .await;
      Ok(out)
    })
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
