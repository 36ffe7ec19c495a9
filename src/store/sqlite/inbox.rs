//! The inbox on SQLite (what it holds: `store/inbox.rs`).

use rusqlite::{params, OptionalExtension};

use super::*;
use crate::error::Result;
use crate::store::inbox::ORPHAN_MS;

/// The watched running task of a session, as the message insert and the receipt check it.
const WATCHED_TASK: &str = "SELECT w.task_id FROM inbox w
  JOIN leases l ON l.session_id = w.session_id AND l.task_id = w.task_id
  JOIN tasks t ON t.id = w.task_id
  WHERE w.session_id = ?1 AND w.kind = 'watch' AND l.expires_at > ?2 AND t.status = 'running'";

#[async_trait::async_trait]
impl Inbox for SqliteStore {
  /// The task's manager starts reading its inbox.
  async fn inbox_open(&self, session_id: &str, task_id: &str) -> Result<()> {
    self.write(|tx| {
      exec(
        tx,
        "INSERT INTO inbox (session_id, task_id, kind, created_at) VALUES (?1, ?2, 'watch', ?3)",
        params![session_id, task_id, now_ms()],
      )?;
      Ok(())
    })
  }

  /// The task's manager stops reading its inbox: its watch and permission rows go, its messages
  /// not yet handled are refused (their senders learn it).
  async fn inbox_close(&self, session_id: &str, task_id: &str) -> Result<()> {
    self.write(|tx| {
      exec(
        tx,
        "DELETE FROM inbox WHERE session_id = ?1 AND task_id = ?2 AND kind IN ('watch', 'permission')",
        params![session_id, task_id],
      )?;
      exec(
        tx,
        "UPDATE inbox SET answer = 'refused' WHERE session_id = ?1 AND task_id = ?2 AND kind = 'message' AND answer IS NULL",
        params![session_id, task_id],
      )?;
      Ok(())
    })
  }

  /// Records a permission request of the task as pending.
  async fn inbox_ask(&self, session_id: &str, task_id: &str, request_id: &str) -> Result<()> {
    self.write(|tx| {
      exec(
        tx,
        "INSERT OR IGNORE INTO inbox (session_id, task_id, kind, request_id, created_at) VALUES (?1, ?2, 'permission', ?3, ?4)",
        params![session_id, task_id, request_id, now_ms()],
      )?;
      Ok(())
    })
  }

  /// The request is settled (answered, timed out, withdrawn): it is no longer pending.
  async fn inbox_forget(&self, session_id: &str, request_id: &str) -> Result<()> {
    self.write(|tx| {
      exec(tx, "DELETE FROM inbox WHERE session_id = ?1 AND request_id = ?2 AND kind = 'permission'", params![session_id, request_id])?;
      Ok(())
    })
  }

  /// Writes the answer to a pending request not yet answered; false when there is none.
  async fn inbox_answer(&self, session_id: &str, request_id: &str, answer: &str) -> Result<bool> {
    self.write(|tx| {
      let n = exec(
        tx,
        "UPDATE inbox SET answer = ?3 WHERE session_id = ?1 AND request_id = ?2 AND kind = 'permission' AND answer IS NULL",
        params![session_id, request_id, answer],
      )?;
      Ok(n == 1)
    })
  }

  /// Leaves a message for the session's watched running task; its id, or `None` when no such
  /// task runs.
  async fn inbox_send(&self, session_id: &str, text: &str) -> Result<Option<i64>> {
    self.write(|tx| {
      let now = now_ms();
      exec(tx, "DELETE FROM inbox WHERE kind = 'message' AND answer IS NOT NULL AND created_at < ?1", [now - ORPHAN_MS])?;
      let task: Option<String> = tx.prepare_cached(WATCHED_TASK)?.query_row(params![session_id, now], |r| r.get(0)).optional()?;
      let Some(task) = task else { return Ok(None) };
      exec(
        tx,
        "INSERT INTO inbox (session_id, task_id, kind, body, created_at) VALUES (?1, ?2, 'message', ?3, ?4)",
        params![session_id, task, text, now],
      )?;
      Ok(Some(tx.last_insert_rowid()))
    })
  }

  /// Where a message left by [`Self::inbox_send`] is. Once it is steered or refused (also when
  /// its task stopped reading, or the row is gone with its session) the row is deleted.
  async fn inbox_receipt(&self, id: i64) -> Result<Receipt> {
    self.write(|tx| {
      let row: Option<(String, Option<String>)> = tx
        .prepare_cached("SELECT session_id, answer FROM inbox WHERE id = ?1 AND kind = 'message'")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
      let Some((session_id, answer)) = row else { return Ok(Receipt::Refused) };
      let mut receipt = Receipt::of(answer.as_deref());
      if receipt == Receipt::Waiting && !exists(tx, WATCHED_TASK, params![session_id, now_ms()])? {
        receipt = Receipt::Refused;
      }
      if receipt != Receipt::Waiting {
        exec(tx, "DELETE FROM inbox WHERE id = ?1", [id])?;
      }
      Ok(receipt)
    })
  }

  /// What waits for the task: answers to its permission requests, messages not yet handled.
  async fn inbox_poll(&self, session_id: &str, task_id: &str) -> Result<Vec<Delivery>> {
    self.with(|c| {
      let mut stmt = c.prepare_cached(
        "SELECT id, kind, request_id, body, answer FROM inbox WHERE session_id = ?1 AND task_id = ?2
           AND ((kind = 'permission' AND answer IS NOT NULL) OR (kind = 'message' AND answer IS NULL))
         ORDER BY id",
      )?;
      let rows = stmt.query_map(params![session_id, task_id], |r| {
        let kind: String = r.get(1)?;
        Ok(if kind == "permission" {
          Delivery::Answer {
            request_id: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            answer: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
          }
        } else {
          Delivery::Message { id: r.get(0)?, text: r.get::<_, Option<String>>(3)?.unwrap_or_default() }
        })
      })?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }

  /// Records what became of a message not handled yet.
  async fn inbox_mark(&self, id: i64, outcome: Receipt) -> Result<()> {
    self.write(|tx| {
      exec(tx, "UPDATE inbox SET answer = ?2 WHERE id = ?1 AND answer IS NULL", params![id, outcome.answer()])?;
      Ok(())
    })
  }
}
