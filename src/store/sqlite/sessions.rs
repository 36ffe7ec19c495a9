//! Sessions: create, read, list, archive, delete, clean up.

use rusqlite::{params, Connection, OptionalExtension};

use super::*;
use crate::error::{Error, Result};

impl SqliteStore {
  pub(crate) fn insert_session(tx: &rusqlite::Transaction<'_>, s: &NewSession, now: i64) -> Result<()> {
    // One answer whoever holds the id, or held it before it was deleted: no oracle, no reuse.
    if exists(tx, "SELECT 1 FROM sessions WHERE id = ?1 UNION ALL SELECT 1 FROM retired_session_ids WHERE id = ?1", [&s.id])? {
      return Err(Error::invalid(format!("session id {} cannot be used for a new session; choose a new UUID", s.id)));
    }
    let ctx = s.context.as_ref();
    // A fork's lineage is its parent's (the user's own session); any other session is a root ('').
    tx.prepare_cached(
      "INSERT INTO sessions (id, project_id, user_id, status, parent_id, title, model, working_directory,
         created_at, updated_at, last_active_at, context_tokens, context_window, context_source, context_measured_at,
         cli_cost_watermark, config_dir, paused, lineage_id)
       VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6, ?7, ?8, ?8, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
         COALESCE((SELECT CASE p.lineage_id WHEN '' THEN p.id ELSE p.lineage_id END FROM sessions p WHERE p.id = ?4 AND p.user_id = ?3), ''))",
    )?
    .execute(params![
      s.id,
      s.project_id,
      s.user_id,
      s.parent_id,
      s.title,
      s.model,
      s.working_directory,
      now,
      ctx.map(|c| c.tokens as i64),
      ctx.map(|c| c.window as i64),
      ctx.map(|c| c.source.clone()),
      ctx.map(|c| c.measured_at),
      s.cli_cost_watermark,
      s.config_dir,
      s.paused,
    ])?;
    Ok(())
  }

  pub(crate) fn get_in(tx: &Connection, id: &str, user_id: &str) -> Result<Option<Session>> {
    Ok(
      tx.prepare_cached(&format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1 AND user_id = ?2"))?
        .query_row(params![id, user_id], session_from_row)
        .optional()?,
    )
  }

  /// Unlinks a session from its forks and keeps its id from ever being used again.
  fn retire(tx: &Connection, id: &str) -> Result<()> {
    tx.execute("UPDATE sessions SET parent_id = NULL WHERE parent_id = ?1", [id])?;
    tx.execute("INSERT OR IGNORE INTO retired_session_ids (id, retired_at) VALUES (?1, ?2)", params![id, now_ms()])?;
    Ok(())
  }
}

#[async_trait::async_trait]
impl Sessions for SqliteStore {
  /// Creates a session.
  async fn create_session(&self, s: &NewSession) -> Result<Session> {
    self.write(|tx| {
      Self::insert_session(tx, s, now_ms())?;
      Self::get_in(tx, &s.id, &s.user_id)?.ok_or_else(|| Error::internal("inserted session vanished"))
    })
  }

  /// One session of one user; another user's session is `None`, as a missing one is.
  async fn get_session(&self, id: &str, user_id: &str) -> Result<Option<Session>> {
    self.with(|c| Self::get_in(c, id, user_id))
  }

  /// Sessions of a user, newest activity first.
  async fn list_sessions(&self, q: &ListQuery) -> Result<Vec<Session>> {
    self.with(|c| {
      let mut sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1");
      let mut args: Vec<rusqlite::types::Value> = vec![q.user_id.clone().into()];
      if let Some(p) = &q.project_id {
        args.push(p.clone().into());
        sql += &format!(" AND project_id = ?{}", args.len());
      }
      if let Some(s) = &q.status {
        args.push(s.clone().into());
        sql += &format!(" AND status = ?{}", args.len());
      }
      if let Some(p) = &q.parent_id {
        args.push(p.clone().into());
        sql += &format!(" AND parent_id = ?{}", args.len());
      }
      args.push((q.limit as i64).into());
      args.push((q.offset as i64).into());
      sql += &format!(" ORDER BY last_active_at DESC, created_at DESC, id LIMIT ?{} OFFSET ?{}", args.len() - 1, args.len());
      let mut stmt = c.prepare_cached(&sql)?;
      let rows = stmt.query_map(rusqlite::params_from_iter(args), session_from_row)?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }

  /// The newest active session of a user's project, or a new one made from `new` — atomically,
  /// so two processes asking at once get the same session.
  async fn get_or_create(&self, new: &NewSession, prefer_active: bool) -> Result<(Session, bool)> {
    self.write(|tx| {
      if prefer_active {
        let found = tx
          .query_row(
            &format!(
              "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1 AND project_id = ?2 AND status = 'active'
               ORDER BY last_active_at DESC, created_at DESC LIMIT 1"
            ),
            params![new.user_id, new.project_id],
            session_from_row,
          )
          .optional()?;
        if let Some(s) = found {
          return Ok((s, false));
        }
      }
      Self::insert_session(tx, new, now_ms())?;
      let s = Self::get_in(tx, &new.id, &new.user_id)?.ok_or_else(|| Error::internal("inserted session vanished"))?;
      Ok((s, true))
    })
  }

  /// Archives the user's active sessions of the project and creates `new`, in one transaction.
  /// Returns the new session and how many were archived.
  async fn start_fresh(&self, new: &NewSession) -> Result<(Session, u64)> {
    self.write(|tx| {
      let now = now_ms();
      let archived = tx.execute(
        "UPDATE sessions SET status = 'archived', updated_at = ?3
         WHERE user_id = ?1 AND project_id = ?2 AND status = 'active'",
        params![new.user_id, new.project_id, now],
      )?;
      Self::insert_session(tx, new, now)?;
      let s = Self::get_in(tx, &new.id, &new.user_id)?.ok_or_else(|| Error::internal("inserted session vanished"))?;
      Ok((s, archived as u64))
    })
  }

  /// Archives one session.
  async fn archive_session(&self, id: &str, user_id: &str) -> Result<Session> {
    self.write(|tx| {
      let n = tx.execute(
        "UPDATE sessions SET status = 'archived', updated_at = ?3 WHERE id = ?1 AND user_id = ?2",
        params![id, user_id, now_ms()],
      )?;
      if n == 0 {
        return Err(Error::not_found(id));
      }
      Self::get_in(tx, id, user_id)?.ok_or_else(|| Error::not_found(id))
    })
  }

  /// Deletes one session with its tasks and compactions. A session with a running task is busy.
  async fn delete_session(&self, id: &str, user_id: &str) -> Result<()> {
    self.write(|tx| {
      if Self::get_in(tx, id, user_id)?.is_none() {
        return Err(Error::not_found(id));
      }
      if Self::task_running(tx, id, now_ms())? {
        return Err(Error::new(
          crate::error::ErrorCode::SessionBusy,
          format!("session {id} is running a task; abort it or wait before deleting"),
        ));
      }
      Self::retire(tx, id)?;
      tx.execute("DELETE FROM sessions WHERE id = ?1 AND user_id = ?2", params![id, user_id])?;
      Ok(())
    })
  }

  /// Deletes a user's sessions idle for longer than `max_age_ms` (only archived ones when
  /// `keep_active`) that run no task. Returns how many were deleted.
  async fn cleanup(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<u64> {
    Ok(self.cleanup_sessions(user_id, project_id, max_age_ms, keep_active).await?.len() as u64)
  }

  /// As [`Sessions::cleanup`](crate::store::Sessions::cleanup), returning the deleted sessions.
  async fn cleanup_sessions(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<Vec<Session>> {
    self.write(|tx| {
      let now = now_ms();
      let cutoff = now.saturating_sub(max_age_ms.min(i64::MAX as u64) as i64);
      let sql = "SELECT id FROM sessions s WHERE user_id = ?1 AND (?2 IS NULL OR project_id = ?2)
         AND last_active_at < ?3 AND (?4 = 0 OR status = 'archived')
         AND NOT EXISTS (SELECT 1 FROM leases l JOIN tasks t ON t.id = l.task_id
           WHERE l.session_id = s.id AND l.expires_at > ?5 AND t.status = 'running')";
      let ids: Vec<String> = tx
        .prepare(sql)?
        .query_map(params![user_id, project_id, cutoff, keep_active as i64, now], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
      let mut deleted = Vec::with_capacity(ids.len());
      for id in &ids {
        if let Some(s) = Self::get_in(tx, id, user_id)? {
          deleted.push(s);
        }
        Self::retire(tx, id)?;
        tx.execute("DELETE FROM sessions WHERE id = ?1 AND user_id = ?2", params![id, user_id])?;
      }
      Ok(deleted)
    })
  }

  /// Counts a user's sessions (for cleanup reports).
  async fn count_sessions(&self, user_id: &str, project_id: Option<&str>) -> Result<u64> {
    self.with(|c| {
      Ok(c.query_row(
        "SELECT COUNT(*) FROM sessions WHERE user_id = ?1 AND (?2 IS NULL OR project_id = ?2)",
        params![user_id, project_id],
        |r| r.get::<_, i64>(0),
      )? as u64)
    })
  }

  /// Replaces the context snapshot of a session (after a compaction, say).
  async fn set_context(&self, id: &str, ctx: &ContextSnapshot) -> Result<()> {
    self.write(|tx| {
      tx.execute(
        "UPDATE sessions SET context_tokens = ?2, context_window = ?3, context_source = ?4,
           context_measured_at = ?5, updated_at = ?6 WHERE id = ?1",
        params![id, ctx.tokens as i64, ctx.window as i64, ctx.source, ctx.measured_at, now_ms()],
      )?;
      Ok(())
    })
  }
}
