//! The inbox on PostgreSQL: the rows and rules of `inbox.rs`, on the database clock. A message
//! is accepted only for a task that holds the session's live lease (by `now()`), is `running`
//! and is watched, checked in the transaction that inserts it.

use super::*;
use crate::error::Result;
use crate::store::inbox::{Delivery, Receipt, ORPHAN_MS};

/// The watched running task of a session.
const WATCHED_TASK: &str = "SELECT w.task_id FROM {S}.inbox w
  JOIN {S}.leases l ON l.session_id = w.session_id AND l.task_id = w.task_id
  JOIN {S}.tasks t ON t.id = w.task_id
  WHERE w.session_id = $1 AND w.kind = 'watch' AND l.expires_at > now() AND t.status = 'running'";

#[async_trait::async_trait]
impl Inbox for PgStore {
  /// The task's manager starts reading its inbox.
  async fn inbox_open(&self, session_id: &str, task_id: &str) -> Result<()> {
    tx!(self, |tx| {
      self
        .exec(tx, "INSERT INTO {S}.inbox (session_id, task_id, kind, created_at) VALUES ($1, $2, 'watch', {NOW})", &[&session_id, &task_id])
        .await?;
      Ok(())
    })
  }

  /// The task's manager stops reading its inbox (see the SQLite store).
  async fn inbox_close(&self, session_id: &str, task_id: &str) -> Result<()> {
    tx!(self, |tx| {
      self
        .exec(
          tx,
          "DELETE FROM {S}.inbox WHERE session_id = $1 AND task_id = $2 AND kind IN ('watch', 'permission')",
          &[&session_id, &task_id],
        )
        .await?;
      self
        .exec(
          tx,
          "UPDATE {S}.inbox SET answer = 'refused' WHERE session_id = $1 AND task_id = $2 AND kind = 'message' AND answer IS NULL",
          &[&session_id, &task_id],
        )
        .await?;
      Ok(())
    })
  }

  /// Records a permission request of the task as pending.
  async fn inbox_ask(&self, session_id: &str, task_id: &str, request_id: &str) -> Result<()> {
    tx!(self, |tx| {
      self
        .exec(
          tx,
          "INSERT INTO {S}.inbox (session_id, task_id, kind, request_id, created_at) VALUES ($1, $2, 'permission', $3, {NOW})
           ON CONFLICT DO NOTHING",
          &[&session_id, &task_id, &request_id],
        )
        .await?;
      Ok(())
    })
  }

  /// The request is settled: it is no longer pending.
  async fn inbox_forget(&self, session_id: &str, request_id: &str) -> Result<()> {
    tx!(self, |tx| {
      self
        .exec(tx, "DELETE FROM {S}.inbox WHERE session_id = $1 AND request_id = $2 AND kind = 'permission'", &[&session_id, &request_id])
        .await?;
      Ok(())
    })
  }

  /// Writes the answer to a pending request not yet answered; false when there is none.
  async fn inbox_answer(&self, session_id: &str, request_id: &str, answer: &str) -> Result<bool> {
    tx!(self, |tx| {
      let n = self
        .exec(
          tx,
          "UPDATE {S}.inbox SET answer = $3 WHERE session_id = $1 AND request_id = $2 AND kind = 'permission' AND answer IS NULL",
          &[&session_id, &request_id, &answer],
        )
        .await?;
      Ok(n == 1)
    })
  }

  /// Leaves a message for the session's watched running task; its id, or `None` when no such
  /// task runs.
  async fn inbox_send(&self, session_id: &str, text: &str) -> Result<Option<i64>> {
    tx!(self, |tx| {
      self
        .exec(tx, "DELETE FROM {S}.inbox WHERE kind = 'message' AND answer IS NOT NULL AND created_at < {NOW} - $1", &[&ORPHAN_MS])
        .await?;
      let Some(task) = self.opt(tx, WATCHED_TASK, &[&session_id]).await? else { return Ok(None) };
      let task: String = task.get(0);
      let row = self
        .query(
          tx,
          "INSERT INTO {S}.inbox (session_id, task_id, kind, body, created_at) VALUES ($1, $2, 'message', $3, {NOW}) RETURNING id",
          &[&session_id, &task, &text],
        )
        .await?;
      Ok(Some(row[0].get(0)))
    })
  }

  /// Where a message left by [`Self::inbox_send`] is; the row goes once it is final.
  async fn inbox_receipt(&self, id: i64) -> Result<Receipt> {
    tx!(self, |tx| {
      let Some(row) =
        self.opt(tx, "SELECT session_id, answer FROM {S}.inbox WHERE id = $1 AND kind = 'message' FOR UPDATE", &[&id]).await?
      else {
        return Ok(Receipt::Refused);
      };
      let (session_id, answer): (String, Option<String>) = (row.get(0), row.get(1));
      let mut receipt = Receipt::of(answer.as_deref());
      if receipt == Receipt::Waiting && self.opt(tx, WATCHED_TASK, &[&session_id]).await?.is_none() {
        receipt = Receipt::Refused;
      }
      if receipt != Receipt::Waiting {
        self.exec(tx, "DELETE FROM {S}.inbox WHERE id = $1", &[&id]).await?;
      }
      Ok(receipt)
    })
  }

  /// What waits for the task: answers to its permission requests, messages not yet handled.
  async fn inbox_poll(&self, session_id: &str, task_id: &str) -> Result<Vec<Delivery>> {
    read!(self, |c| {
      let rows = self
        .query(
          c,
          "SELECT id, kind, request_id, body, answer FROM {S}.inbox WHERE session_id = $1 AND task_id = $2
             AND ((kind = 'permission' AND answer IS NOT NULL) OR (kind = 'message' AND answer IS NULL))
           ORDER BY id",
          &[&session_id, &task_id],
        )
        .await?;
      Ok(
        rows
          .iter()
          .map(|r| {
            let kind: String = r.get(1);
            if kind == "permission" {
              Delivery::Answer {
                request_id: r.get::<_, Option<String>>(2).unwrap_or_default(),
                answer: r.get::<_, Option<String>>(4).unwrap_or_default(),
              }
            } else {
              Delivery::Message { id: r.get(0), text: r.get::<_, Option<String>>(3).unwrap_or_default() }
            }
          })
          .collect(),
      )
    })
  }

  /// Records what became of a message not handled yet.
  async fn inbox_mark(&self, id: i64, outcome: Receipt) -> Result<()> {
    let answer = outcome.answer();
    tx!(self, |tx| {
      self.exec(tx, "UPDATE {S}.inbox SET answer = $2 WHERE id = $1 AND answer IS NULL", &[&id, &answer]).await?;
      Ok(())
    })
  }
}
