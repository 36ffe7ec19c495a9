//! The event log and stop requests on PostgreSQL (what they are: `store/events.rs`). Every append
//! and stop request rings the store's doorbell in its own transaction: `pg_notify` on
//! [`PgStore::channel`] with `e:<session>:<last seq>` or `a:<session>:<task>`, never the event
//! itself (the row holds it; a listener reads the rows after the last one it has).

use std::time::Duration;

use super::*;
use crate::error::Result;
use crate::store::{EventBounds, EventRow, Events, RunningTask, NOTIFY_ABORT, NOTIFY_EVENTS};

/// The running task of a session, as [`Events::running_task`] reads it.
const RUNNING: &str = "SELECT t.id, t.kind, t.started_at, t.owner_id, t.owner_pid, t.node_id, t.abort_requested_at IS NOT NULL
  FROM {S}.tasks t JOIN {S}.leases l ON l.session_id = t.session_id AND l.task_id = t.id
  WHERE t.session_id = $1 AND t.status = 'running' AND l.expires_at > now()";

fn running_from_row(r: &Row) -> RunningTask {
  RunningTask {
    task_id: r.get(0),
    kind: r.get(1),
    started_at: r.get(2),
    owner_id: r.get(3),
    owner_pid: r.get::<_, i64>(4) as u32,
    node_id: Some(r.get(5)),
    abort_requested: r.get(6),
  }
}

impl PgStore {
  /// The arguments of [`APPEND`] (and of `end_task`'s events) for `events`.
  pub(super) fn events_args<'a, E: AsRef<str>>(&'a self, session_id: &'a str, task_id: &'a str, events: &'a [E]) -> EventsArgs<'a> {
    EventsArgs {
      session_id,
      task_id,
      n: events.len() as i64,
      bodies: events.iter().map(AsRef::as_ref).collect(),
      channel: &self.channel,
      prefix: format!("{NOTIFY_EVENTS}:{session_id}:"),
    }
  }
}

/// A batch of events to append, converted once.
pub(super) struct EventsArgs<'a> {
  session_id: &'a str,
  task_id: &'a str,
  n: i64,
  pub(super) bodies: Vec<&'a str>,
  pub(super) channel: &'a str,
  pub(super) prefix: String,
}

impl<'a> EventsArgs<'a> {
  pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
    vec![&self.session_id, &self.n, &self.task_id, &self.bodies, &self.channel, &self.prefix]
  }
}

/// The statement appending events: the session's number moved, the rows inserted, the doorbell
/// rung (`e:<session>:<last seq>`), answering the last seq; no row when the session is gone.
const APPEND: &str = "WITH s AS (UPDATE {S}.sessions SET event_seq = event_seq + $2 WHERE id = $1 RETURNING event_seq),
   ins AS (INSERT INTO {S}.task_events (session_id, seq, task_id, at, body)
     SELECT $1, s.event_seq - $2 + x.o, $3, {NOW}, x.b FROM s, unnest($4::text[]) WITH ORDINALITY AS x(b, o))
   SELECT s.event_seq, pg_notify($5, $6 || s.event_seq::text)::text FROM s";

#[async_trait::async_trait]
impl Events for PgStore {
  /// One statement (one round trip, with the statement cache): the session's number moved, the
  /// rows inserted, the doorbell rung, in one transaction.
  async fn append_events(&self, session_id: &str, task_id: &str, events: &[String]) -> Result<i64> {
    let args = self.events_args(session_id, task_id, events);
    let params = args.params();
    // As before: the writer of a task's events tries a failed append once more.
    let row = idempotent!(self, |c| self.opt(c, APPEND, &params).await)?;
    row.map(|r| r.get(0)).ok_or_else(|| Error::not_found(session_id))
  }

  async fn read_events(&self, session_id: &str, after: i64, limit: u32) -> Result<Vec<EventRow>> {
    let limit = limit as i64;
    read!(self, |c| {
      let rows = self
        .query(
          c,
          "SELECT seq, task_id, at, body FROM {S}.task_events WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
          &[&session_id, &after, &limit],
        )
        .await?;
      Ok(rows.iter().map(|r| EventRow { seq: r.get(0), task_id: r.get(1), at: r.get(2), body: r.get(3) }).collect())
    })
  }

  async fn task_first_seq(&self, session_id: &str, task_id: &str) -> Result<Option<i64>> {
    read!(self, |c| {
      let row =
        self.opt(c, "SELECT min(seq) FROM {S}.task_events WHERE task_id = $1 AND session_id = $2", &[&task_id, &session_id]).await?;
      Ok(row.and_then(|r| r.get(0)))
    })
  }

  async fn event_bounds(&self, session_id: &str) -> Result<EventBounds> {
    read!(self, |c| {
      let row = self
        .opt(
          c,
          "SELECT s.event_seq, (SELECT min(seq) FROM {S}.task_events e WHERE e.session_id = s.id) FROM {S}.sessions s WHERE s.id = $1",
          &[&session_id],
        )
        .await?;
      Ok(match row {
        Some(r) => {
          let last: i64 = r.get(0);
          EventBounds { first: r.get::<_, Option<i64>>(1).unwrap_or(last + 1), last }
        }
        None => EventBounds { first: 1, last: 0 },
      })
    })
  }

  async fn sweep_events(&self, retention: Duration) -> Result<u64> {
    let ms = retention.as_millis() as i64;
    tx!(self, |tx| {
      self
        .exec(
          tx,
          "DELETE FROM {S}.task_events WHERE task_id IN
             (SELECT id FROM {S}.tasks WHERE status != 'running' AND ended_at IS NOT NULL AND ended_at < {NOW} - $1)",
          &[&ms],
        )
        .await
    })
  }

  async fn running_task(&self, session_id: &str) -> Result<Option<RunningTask>> {
    read!(self, |c| Ok(self.opt(c, RUNNING, &[&session_id]).await?.map(|r| running_from_row(&r))))
  }

  async fn request_abort(&self, session_id: &str) -> Result<Option<RunningTask>> {
    tx!(self, |tx| {
      let Some(row) = self.opt(tx, RUNNING, &[&session_id]).await? else { return Ok(None) };
      let mut t = running_from_row(&row);
      self.exec(tx, "UPDATE {S}.tasks SET abort_requested_at = {NOW} WHERE id = $1 AND abort_requested_at IS NULL", &[&t.task_id]).await?;
      let payload = format!("{NOTIFY_ABORT}:{session_id}:{}", t.task_id);
      self.exec(tx, "SELECT pg_notify($1, $2)", &[&self.channel, &payload]).await?;
      t.abort_requested = true;
      Ok(Some(t))
    })
  }

  async fn abort_requested(&self, task_id: &str) -> Result<bool> {
    read!(self, |c| {
      Ok(self.opt(c, "SELECT 1 FROM {S}.tasks WHERE id = $1 AND abort_requested_at IS NOT NULL", &[&task_id]).await?.is_some())
    })
  }
}
