//! What the context meter remembers: each model's window and the compactions.

use rusqlite::{params, Connection, OptionalExtension};

use super::*;
use crate::error::Result;

impl SqliteStore {
  /// Remembers the context window the CLI reported for a model (as sessions name it); part of
  /// a task's end.
  pub(crate) fn remember_window(tx: &Connection, model: &str, window: u64) -> Result<()> {
    exec(
      tx,
      "INSERT INTO model_windows (model, context_window, updated_at) VALUES (?1, ?2, ?3)
       ON CONFLICT (model) DO UPDATE SET context_window = ?2, updated_at = ?3",
      params![model, window as i64, now_ms()],
    )?;
    Ok(())
  }

  // ---- compactions ------------------------------------------------------------------------

  /// Records a compaction; part of a task's end.
  pub(crate) fn add_compaction(tx: &Connection, c: &Compaction) -> Result<()> {
    exec(
      tx,
      "INSERT INTO compactions (session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms)
       VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
      params![
        c.session_id,
        c.task_id,
        c.trigger,
        c.pre_tokens.map(|t| t as i64),
        c.post_tokens.map(|t| t as i64),
        c.started_at,
        c.duration_ms.map(|t| t as i64),
      ],
    )?;
    Ok(())
  }
}

#[async_trait::async_trait]
impl Meter for SqliteStore {
  /// The last window reported for a model, if any.
  async fn window_for(&self, model: &str) -> Result<Option<u64>> {
    self.with(|c| {
      Ok(
        c.prepare_cached("SELECT context_window FROM model_windows WHERE model = ?1")?
          .query_row([model], |r| r.get::<_, i64>(0))
          .optional()?
          .map(|w| w as u64),
      )
    })
  }

  /// Compactions of a session, oldest first.
  async fn list_compactions(&self, session_id: &str) -> Result<Vec<Compaction>> {
    self.with(|c| {
      let mut stmt = c.prepare_cached(
        "SELECT session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms
         FROM compactions WHERE session_id = ?1 ORDER BY started_at, id",
      )?;
      let rows = stmt.query_map([session_id], |r| {
        Ok(Compaction {
          session_id: r.get(0)?,
          task_id: r.get(1)?,
          trigger: r.get(2)?,
          pre_tokens: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
          post_tokens: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
          started_at: r.get(5)?,
          duration_ms: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
        })
      })?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }
}
