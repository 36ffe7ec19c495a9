//! The event log and stop requests on SQLite (what they are: `store/events.rs`). Every append and
//! stop request rings the doorbell (`doorbell.rs`) in its own transaction, as PostgreSQL does.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::*;
use crate::error::Result;

/// The running task of a session, as [`Events::running_task`] reads it.
const RUNNING: &str = "SELECT t.id, t.kind, t.started_at, t.owner_id, t.owner_pid, t.abort_requested_at IS NOT NULL
  FROM tasks t JOIN leases l ON l.session_id = t.session_id AND l.task_id = t.id
  WHERE t.session_id = ?1 AND t.status = 'running' AND l.expires_at > ?2";

fn running_from_row(r: &Row<'_>) -> rusqlite::Result<RunningTask> {
  Ok(RunningTask {
    task_id: r.get(0)?,
    kind: r.get(1)?,
    started_at: r.get(2)?,
    owner_id: r.get(3)?,
    owner_pid: r.get::<_, i64>(4)? as u32,
    node_id: None,
    abort_requested: r.get(5)?,
  })
}

impl SqliteStore {
  /// [`Events::append_events`] in the caller's transaction: the rows, and the doorbell rung when
  /// it commits.
  pub(super) fn append_events_in(tx: &rusqlite::Transaction<'_>, session_id: &str, task_id: &str, events: &[String]) -> Result<i64> {
    let n = events.len() as i64;
    let last: Option<i64> = tx
      .prepare_cached("UPDATE sessions SET event_seq = event_seq + ?2 WHERE id = ?1 RETURNING event_seq")?
      .query_row(params![session_id, n], |r| r.get(0))
      .optional()?;
    let Some(last) = last else { return Err(crate::error::Error::not_found(session_id)) };
    let now = now_ms();
    let mut insert = tx.prepare_cached("INSERT INTO task_events (session_id, seq, task_id, at, body) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    for (i, body) in events.iter().enumerate() {
      insert.execute(params![session_id, last - n + 1 + i as i64, task_id, now, body])?;
    }
    super::doorbell::ring_in(tx, &Notice::Events { session_id: session_id.to_owned(), seq: last })?;
    Ok(last)
  }
}

#[async_trait::async_trait]
impl Events for SqliteStore {
  async fn append_events(&self, session_id: &str, task_id: &str, events: &[String]) -> Result<i64> {
    self.write(|tx| Self::append_events_in(tx, session_id, task_id, events))
  }

  async fn read_events(&self, session_id: &str, after: i64, limit: u32) -> Result<Vec<EventRow>> {
    self.with(|c| {
      let mut st =
        c.prepare_cached("SELECT seq, task_id, at, body FROM task_events WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
      let rows = st.query_map(params![session_id, after, limit], |r| {
        Ok(EventRow { seq: r.get(0)?, task_id: r.get(1)?, at: r.get(2)?, body: r.get(3)? })
      })?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }

  async fn task_first_seq(&self, session_id: &str, task_id: &str) -> Result<Option<i64>> {
    self.with(|c| {
      Ok(
        c.prepare_cached("SELECT min(seq) FROM task_events WHERE task_id = ?1 AND session_id = ?2")?
          .query_row(params![task_id, session_id], |r| r.get(0))?,
      )
    })
  }

  async fn event_bounds(&self, session_id: &str) -> Result<EventBounds> {
    self.with(|c| {
      let last: i64 =
        c.prepare_cached("SELECT event_seq FROM sessions WHERE id = ?1")?.query_row([session_id], |r| r.get(0)).optional()?.unwrap_or(0);
      let first: Option<i64> =
        c.prepare_cached("SELECT min(seq) FROM task_events WHERE session_id = ?1")?.query_row([session_id], |r| r.get(0))?;
      Ok(EventBounds { first: first.unwrap_or(last + 1), last })
    })
  }

  async fn sweep_events(&self, retention: Duration) -> Result<u64> {
    self.write(|tx| {
      let before = now_ms() - retention.as_millis() as i64;
      let n = exec(
        tx,
        "DELETE FROM task_events WHERE task_id IN
           (SELECT id FROM tasks WHERE status != 'running' AND ended_at IS NOT NULL AND ended_at < ?1)",
        [before],
      )?;
      Ok(n as u64)
    })
  }

  async fn running_task(&self, session_id: &str) -> Result<Option<RunningTask>> {
    self.with(|c| Ok(c.prepare_cached(RUNNING)?.query_row(params![session_id, now_ms()], running_from_row).optional()?))
  }

  async fn request_abort(&self, session_id: &str) -> Result<Option<RunningTask>> {
    self.write(|tx| {
      let now = now_ms();
      let Some(mut t) = tx.prepare_cached(RUNNING)?.query_row(params![session_id, now], running_from_row).optional()? else {
        return Ok(None);
      };
      exec(tx, "UPDATE tasks SET abort_requested_at = ?2 WHERE id = ?1 AND abort_requested_at IS NULL", params![t.task_id, now])?;
      super::doorbell::ring_in(tx, &Notice::Abort { session_id: session_id.to_owned(), task_id: t.task_id.clone() })?;
      t.abort_requested = true;
      Ok(Some(t))
    })
  }

  async fn abort_requested(&self, task_id: &str) -> Result<bool> {
    self.with(|c| exists(c, "SELECT 1 FROM tasks WHERE id = ?1 AND abort_requested_at IS NOT NULL", [task_id]))
  }
}
