//! Tasks and the per-session lease that keeps one CLI per session across processes.

use std::time::Duration;

use rusqlite::{params, Connection};

use super::*;
use crate::error::{Error, Result};
use crate::store::{EndWith, EndWritten};

impl SqliteStore {
  /// [`Tasks::finish_task`]'s writes, in the caller's transaction.
  fn finish_in(tx: &Connection, session_id: &str, task_id: &str, end: &TaskEnd, cli_cost_watermark: Option<f64>) -> Result<()> {
    let n = end.counts();
    let now = now_ms();
    for step in end.steps() {
      // Each step writes rows; how many does not matter here.
      let _rows: usize = match step {
        EndStep::TaskRow => exec(
          tx,
          "UPDATE tasks SET status = ?2, ended_at = ?3, model = COALESCE(?4, model), turns = ?5,
             input_tokens = ?6, output_tokens = ?7, cache_read_tokens = ?8, cache_creation_tokens = ?9,
             cost_usd = ?10, cli_reported_cost_usd = ?11, duration_api_ms = ?12, error_code = ?13,
             error_message = ?14, cli_version = ?15
           WHERE id = ?1",
          params![
            task_id,
            end.status,
            now,
            end.model,
            n.turns,
            n.input,
            n.output,
            n.cache_read,
            n.cache_creation,
            end.cost_usd,
            end.cli_reported_cost_usd,
            n.duration_api_ms,
            end.error_code,
            end.error_message,
            end.cli_version,
          ],
        )?,
        EndStep::Totals => exec(
          tx,
          "UPDATE sessions SET task_count = task_count + 1, total_cost_usd = total_cost_usd + ?2,
             input_tokens = input_tokens + ?3, output_tokens = output_tokens + ?4,
             cache_read_tokens = cache_read_tokens + ?5, cache_creation_tokens = cache_creation_tokens + ?6,
             last_active_at = ?7, updated_at = ?7, materialized = MAX(materialized, ?8),
             cli_cost_watermark = COALESCE(?9, cli_cost_watermark), paused = ?10
           WHERE id = ?1",
          params![
            session_id,
            end.cost_usd,
            n.input,
            n.output,
            n.cache_read,
            n.cache_creation,
            now,
            end.materialized as i64,
            cli_cost_watermark,
            end.paused
          ],
        )?,
        EndStep::Context(ctx) => exec(
          tx,
          "UPDATE sessions SET context_tokens = ?2, context_window = ?3, context_source = ?4, context_measured_at = ?5
           WHERE id = ?1",
          params![session_id, ctx.tokens as i64, ctx.window as i64, ctx.source, ctx.measured_at],
        )?,
        EndStep::Window(model, window) => Self::remember_window(tx, model, window).map(|()| 1)?,
        EndStep::Compaction(c) => Self::add_compaction(tx, c).map(|()| 1)?,
        EndStep::ReleaseLease => exec(tx, "DELETE FROM leases WHERE session_id = ?1 AND task_id = ?2", params![session_id, task_id])?,
      };
    }
    Ok(())
  }

  pub(crate) fn lease_live(tx: &Connection, session_id: &str, now: i64) -> Result<bool> {
    exists(tx, "SELECT 1 FROM leases WHERE session_id = ?1 AND expires_at > ?2", params![session_id, now])
  }

  /// Whether a task of the session is running: its lease is live and its row not yet ended. A
  /// lease kept past the task's end (its CLI is exiting) does not make the session busy for
  /// deletion; it still keeps the next task waiting (`lease_live`).
  pub(crate) fn task_running(tx: &Connection, session_id: &str, now: i64) -> Result<bool> {
    exists(
      tx,
      "SELECT 1 FROM leases l JOIN tasks t ON t.id = l.task_id
       WHERE l.session_id = ?1 AND l.expires_at > ?2 AND t.status = 'running'",
      params![session_id, now],
    )
  }

  pub(crate) fn interrupt_expired(tx: &Connection, session_id: &str, now: i64) -> Result<()> {
    let n = exec(
      tx,
      "UPDATE tasks SET status = 'interrupted', ended_at = ?2, error_code = 'INTERRUPTED',
         error_message = 'the process running this task stopped before it ended'
       WHERE session_id = ?1 AND status = 'running'
         AND id IN (SELECT task_id FROM leases WHERE session_id = ?1 AND expires_at <= ?2)",
      params![session_id, now],
    )?;
    // An interrupted task counts like every other task row.
    exec(tx, "UPDATE sessions SET task_count = task_count + ?2 WHERE id = ?1", params![session_id, n as i64])?;
    Ok(())
  }
}

#[async_trait::async_trait]
impl Tasks for SqliteStore {
  /// Whether the session's lease is held past its task's end (that task's CLI is exiting).
  async fn lease_kept_after_end(&self, session_id: &str) -> Result<bool> {
    self.with(|c| {
      exists(
        c,
        "SELECT 1 FROM leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.session_id = ?1 AND l.expires_at > ?2 AND t.status != 'running'",
        params![session_id, now_ms()],
      )
    })
  }

  /// Takes the session's lease and inserts the task row as `running`, in one transaction.
  /// Writes nothing when another live task holds the lease, or when `start.max_running` live
  /// leases are held in the file: `BEGIN IMMEDIATE` holds the file's write lock from the count
  /// to the insert, so processes starting at once never exceed it.
  async fn start_task(&self, session_id: &str, user_id: &str, start: &TaskStart<'_>) -> Result<Start> {
    Ok(match self.begin_task(session_id, start).await? {
      Begin::Started => {
        Start::Started(Box::new(Began { session: self.get_session(session_id, user_id).await.ok().flatten(), ..Default::default() }))
      }
      Begin::SessionHeld => Start::SessionHeld { exiting: self.lease_kept_after_end(session_id).await? },
      Begin::Full => Start::Full,
    })
  }

  async fn begin_task(&self, session_id: &str, start: &TaskStart<'_>) -> Result<Begin> {
    let TaskStart { task_id, kind, model, owner, ttl, max_running, after } = *start;
    self.write(|tx| {
      let now = now_ms();
      // Deleted while this task waited for it.
      if !exists(tx, "SELECT 1 FROM sessions WHERE id = ?1", [session_id])? {
        return Err(Error::not_found(session_id));
      }
      // A lease kept by `after` (same owner, ended) is handed over, not waited for.
      let handed = match after {
        Some(prev) => exists(
          tx,
          "SELECT 1 FROM leases l JOIN tasks t ON t.id = l.task_id
           WHERE l.session_id = ?1 AND l.task_id = ?2 AND l.owner_id = ?3 AND t.status != 'running'",
          params![session_id, prev, owner.id],
        )?,
        None => false,
      };
      if !handed && Self::lease_live(tx, session_id, now)? {
        return Ok(Begin::SessionHeld);
      }
      if let Some(max) = max_running {
        // A lease handed over becomes this task's: not counted.
        let live: i64 = tx
          .prepare_cached("SELECT COUNT(*) FROM leases WHERE expires_at > ?1 AND NOT (session_id = ?2 AND task_id IS ?3)")?
          .query_row(params![now, session_id, after], |r| r.get(0))?;
        if live as u64 >= max {
          return Ok(Begin::Full);
        }
      }
      // An expired lease belongs to a dead or stuck holder: its task is interrupted.
      Self::interrupt_expired(tx, session_id, now)?;
      exec(
        tx,
        "INSERT INTO leases (session_id, owner_id, owner_pid, task_id, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (session_id) DO UPDATE SET owner_id = ?2, owner_pid = ?3, task_id = ?4, expires_at = ?5",
        params![session_id, owner.id, owner.pid, task_id, now + ttl.as_millis() as i64],
      )?;
      exec(
        tx,
        "INSERT INTO tasks (id, session_id, status, started_at, model, owner_id, owner_pid, kind)
         VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6, ?7)",
        params![task_id, session_id, now, model, owner.id, owner.pid, kind],
      )?;
      Ok(Begin::Started)
    })
  }

  /// Extends a held lease. Returns false when the lease is no longer this task's.
  async fn renew_lease(&self, session_id: &str, task_id: &str, ttl: Duration) -> Result<bool> {
    self.write(|tx| {
      let n = tx.execute(
        "UPDATE leases SET expires_at = ?3 WHERE session_id = ?1 AND task_id = ?2",
        params![session_id, task_id, now_ms() + ttl.as_millis() as i64],
      )?;
      Ok(n == 1)
    })
  }

  /// Ends a task: writes its row, adds to the session's totals, replaces the context snapshot
  /// and frees the lease (unless `end.keep_lease`) — all in one transaction.
  async fn finish_task(&self, session_id: &str, task_id: &str, end: &TaskEnd, cli_cost_watermark: Option<f64>) -> Result<()> {
    self.write(|tx| Self::finish_in(tx, session_id, task_id, end, cli_cost_watermark))
  }

  /// The events, the end and the end event in one transaction (SQLite keeps no transcript
  /// lines; the end is never refused here: one machine, no fence).
  async fn finish_task_with(
    &self,
    session_id: &str,
    task_id: &str,
    end: &TaskEnd,
    cli_cost_watermark: Option<f64>,
    with: &EndWith<'_>,
  ) -> Result<EndWritten> {
    if !with.lines.is_empty() {
      return Err(Error::internal("the sqlite store keeps no transcripts"));
    }
    // The end is never refused here, so its event follows the task's last ones in one append.
    let rows: Vec<String> = with.events.iter().cloned().chain(with.end_event.map(str::to_owned)).collect();
    self.write(|tx| {
      Self::finish_in(tx, session_id, task_id, end, cli_cost_watermark)?;
      let last_event = match rows.is_empty() {
        true => None,
        false => Some(Self::append_events_in(tx, session_id, task_id, &rows)?),
      };
      Ok(EndWritten { ended: true, last_event })
    })
  }

  /// Frees the lease a task kept past its end (see [`TaskEnd::keep_lease`]).
  async fn release_lease(&self, session_id: &str, task_id: &str) -> Result<()> {
    self.write(|tx| {
      exec(tx, "DELETE FROM leases WHERE session_id = ?1 AND task_id = ?2", params![session_id, task_id])?;
      Ok(())
    })
  }

  /// Marks `running` tasks whose holder is gone as `interrupted` and frees their leases:
  /// tasks of this host's dead processes at once, any other when its lease expired.
  /// Returns how many tasks were marked.
  async fn recover_interrupted(&self, is_alive: &(dyn Fn(u32) -> bool + Sync)) -> Result<u64> {
    self.write(|tx| {
      let now = now_ms();
      let running: Vec<(String, String, i64, Option<i64>)> = tx
        .prepare(
          "SELECT t.id, t.session_id, t.owner_pid, l.expires_at FROM tasks t
           LEFT JOIN leases l ON l.task_id = t.id WHERE t.status = 'running'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
      let mut n = 0;
      for (task_id, session_id, pid, expires) in running {
        let dead = !is_alive(pid as u32) || expires.map(|e| e <= now).unwrap_or(true);
        if dead {
          tx.execute(
            "UPDATE tasks SET status = 'interrupted', ended_at = ?2, error_code = 'INTERRUPTED',
               error_message = 'the process running this task stopped before it ended' WHERE id = ?1",
            params![task_id, now],
          )?;
          tx.execute("DELETE FROM leases WHERE task_id = ?1", [&task_id])?;
          tx.execute("UPDATE sessions SET updated_at = ?2, task_count = task_count + 1 WHERE id = ?1", params![session_id, now])?;
          n += 1;
        }
      }
      // A lease kept past its task's end (the CLI was exiting) by a process that died since.
      let kept: Vec<(String, i64)> = tx
        .prepare("SELECT l.task_id, l.owner_pid FROM leases l JOIN tasks t ON t.id = l.task_id WHERE t.status != 'running'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
      for (task_id, pid) in kept {
        if !is_alive(pid as u32) {
          tx.execute("DELETE FROM leases WHERE task_id = ?1", [&task_id])?;
        }
      }
      Ok(n)
    })
  }

  /// Tasks of a session, oldest first.
  async fn list_tasks(&self, session_id: &str) -> Result<Vec<TaskRecord>> {
    self.with(|c| {
      let mut stmt = c.prepare_cached(
        "SELECT id, session_id, status, kind, started_at, ended_at, model, turns, input_tokens, output_tokens,
           cache_read_tokens, cache_creation_tokens, cost_usd, error_code, error_message, cli_version
         FROM tasks WHERE session_id = ?1 ORDER BY started_at, rowid",
      )?;
      let rows = stmt.query_map([session_id], |r| {
        Ok(TaskRecord {
          id: r.get(0)?,
          session_id: r.get(1)?,
          status: r.get(2)?,
          kind: r.get(3)?,
          started_at: r.get(4)?,
          ended_at: r.get(5)?,
          model: r.get(6)?,
          turns: r.get::<_, Option<i64>>(7)?.map(|t| t as u64),
          usage: Usage {
            input_tokens: r.get::<_, i64>(8)? as u64,
            output_tokens: r.get::<_, i64>(9)? as u64,
            cache_read_input_tokens: r.get::<_, i64>(10)? as u64,
            cache_creation_input_tokens: r.get::<_, i64>(11)? as u64,
          },
          cost_usd: r.get(12)?,
          error_code: r.get(13)?,
          error_message: r.get(14)?,
          cli_version: r.get(15)?,
        })
      })?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }
}
