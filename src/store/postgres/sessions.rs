//! Sessions on PostgreSQL: create, read, list, archive, delete, clean up, the context snapshot.

use super::*;

/// A session id that is in use or was used.
pub(super) fn taken(id: &str) -> Error {
  Error::invalid(format!("session id {id} cannot be used for a new session; choose a new UUID"))
}

/// The statement that inserts a new session and its values: an id in use or retired inserts
/// nothing (no row returned).
pub(super) struct SessionInsert<'a> {
  pub(super) sql: String,
  s: &'a NewSession,
  working_directory: String,
  config_dir: Option<String>,
  tokens: Option<i64>,
  window: Option<i64>,
  source: Option<String>,
  measured: Option<i64>,
}

impl<'a> SessionInsert<'a> {
  /// With `strict`, an id in use is an error (unique violation) instead of nothing inserted: in a
  /// transaction it then stops everything after it.
  pub(super) fn of(store: &PgStore, s: &'a NewSession, strict: bool) -> SessionInsert<'a> {
    let (working_directory, config_dir) = store.stored_folders(s);
    let ctx = s.context.as_ref();
    // A fork's lineage is its parent's (the user's own session); any other session is a root ('').
    let sql = format!(
      "INSERT INTO {{S}}.sessions (id, project_id, user_id, status, parent_id, title, model, working_directory,
         created_at, updated_at, last_active_at, context_tokens, context_window, context_source, context_measured_at,
         cli_cost_watermark, config_dir, paused, lineage_id)
       SELECT $1::text, $2::text, $3::text, 'active', $4::text, $5::text, $6::text, $7::text, {{NOW}}, {{NOW}}, {{NOW}},
         $8::bigint, $9::bigint, $10::text, $11::bigint, $12::float8, $13::text, $14::text,
         COALESCE((SELECT CASE p.lineage_id WHEN '' THEN p.id ELSE p.lineage_id END FROM {{S}}.sessions p
           WHERE p.id = $4 AND p.user_id = $3), '')
       WHERE NOT EXISTS (SELECT 1 FROM {{S}}.retired_session_ids WHERE id = $1)
       {}
       RETURNING {SESSION_COLUMNS}",
      if strict { "" } else { "ON CONFLICT (id) DO NOTHING" }
    );
    SessionInsert {
      sql,
      s,
      working_directory,
      config_dir,
      tokens: ctx.map(|c| c.tokens as i64),
      window: ctx.map(|c| c.window as i64),
      source: ctx.map(|c| c.source.clone()),
      measured: ctx.map(|c| c.measured_at),
    }
  }

  pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
    let s = self.s;
    vec![
      &s.id,
      &s.project_id,
      &s.user_id,
      &s.parent_id,
      &s.title,
      &s.model,
      &self.working_directory,
      &self.tokens,
      &self.window,
      &self.source,
      &self.measured,
      &s.cli_cost_watermark,
      &self.config_dir,
      &s.paused,
    ]
  }
}

impl PgStore {
  /// A new session's folders as stored: relative to this node's roots when inside them.
  fn stored_folders(&self, s: &NewSession) -> (String, Option<String>) {
    match &self.roots {
      Some(roots) => (relative_to(&roots.working, &s.working_directory), s.config_dir.as_deref().map(|d| relative_to(&roots.config, d))),
      None => (s.working_directory.clone(), s.config_dir.clone()),
    }
  }

  pub(super) async fn get_in(&self, tx: &impl GenericClient, id: &str, user_id: &str) -> Result<Option<Session>> {
    let row =
      self.opt(tx, &format!("SELECT {SESSION_COLUMNS} FROM {{S}}.sessions WHERE id = $1 AND user_id = $2"), &[&id, &user_id]).await?;
    Ok(row.as_ref().map(|r| self.session_row(r)))
  }

  /// Inserts `s`, one statement: an id in use or retired inserts nothing and is refused. The
  /// session as stored.
  pub(super) async fn insert_session(&self, c: &impl GenericClient, s: &NewSession) -> Result<Session> {
    let insert = SessionInsert::of(self, s, false);
    let row = self.opt(c, &insert.sql, &insert.params()).await?;
    row.map(|r| self.session_row(&r)).ok_or_else(|| taken(&s.id))
  }
  /// Serialises the writers of one user's project (get-or-create, start fresh) across nodes.
  pub(super) async fn lock_project(&self, tx: &Transaction<'_>, user_id: &str, project_id: &str) -> Result<()> {
    let key = format!("{}\u{1}{user_id}\u{1}{project_id}", self.schema);
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key]).await.map_err(pg)?;
    Ok(())
  }

  pub(super) async fn task_running(&self, tx: &Transaction<'_>, session_id: &str) -> Result<bool> {
    Ok(
      self
        .opt(
          tx,
          "SELECT 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id
           WHERE l.session_id = $1 AND l.expires_at > now() AND t.status = 'running'",
          &[&session_id],
        )
        .await?
        .is_some(),
    )
  }

  pub(super) async fn retire(&self, tx: &Transaction<'_>, id: &str) -> Result<()> {
    self.exec(tx, "UPDATE {S}.sessions SET parent_id = NULL WHERE parent_id = $1", &[&id]).await?;
    self.exec(tx, "INSERT INTO {S}.retired_session_ids (id, retired_at) VALUES ($1, {NOW}) ON CONFLICT (id) DO NOTHING", &[&id]).await?;
    Ok(())
  }
}

#[async_trait::async_trait]
impl Sessions for PgStore {
  /// Creates a session.
  ///
  /// One statement (one round trip, with the statement cache): an id in use or retired inserts
  /// nothing and is refused.
  async fn create_session(&self, s: &NewSession) -> Result<Session> {
    // Run again after a lost answer, the id is in use: refused as any taken id is.
    idempotent!(self, |c| self.insert_session(c, s).await)
  }

  /// One session of one user.
  async fn get_session(&self, id: &str, user_id: &str) -> Result<Option<Session>> {
    read!(self, |c| self.get_in(c, id, user_id).await)
  }

  /// Sessions of a user, newest activity first.
  async fn list_sessions(&self, q: &ListQuery) -> Result<Vec<Session>> {
    let (limit, offset) = (q.limit.min(i64::MAX as u64) as i64, q.offset.min(i64::MAX as u64) as i64);
    read!(self, |c| {
      let rows = self
        .query(
          c,
          &format!(
            "SELECT {SESSION_COLUMNS} FROM {{S}}.sessions WHERE user_id = $1
               AND ($2::text IS NULL OR project_id = $2) AND ($3::text IS NULL OR status = $3)
               AND ($4::text IS NULL OR parent_id = $4)
             ORDER BY last_active_at DESC, created_at DESC, id LIMIT $5 OFFSET $6"
          ),
          &[&q.user_id, &q.project_id, &q.status, &q.parent_id, &limit, &offset],
        )
        .await?;
      Ok(rows.iter().map(|r| self.session_row(r)).collect())
    })
  }

  /// The newest active session of a user's project, or a new one made from `new`, atomically.
  async fn get_or_create(&self, new: &NewSession, prefer_active: bool) -> Result<(Session, bool)> {
    tx!(self, |tx| {
      self.lock_project(tx, &new.user_id, &new.project_id).await?;
      if prefer_active {
        let found = self
          .opt(
            tx,
            &format!(
              "SELECT {SESSION_COLUMNS} FROM {{S}}.sessions WHERE user_id = $1 AND project_id = $2 AND status = 'active'
               ORDER BY last_active_at DESC, created_at DESC LIMIT 1"
            ),
            &[&new.user_id, &new.project_id],
          )
          .await?;
        if let Some(r) = found {
          return Ok((self.session_row(&r), false));
        }
      }
      Ok((self.insert_session(tx, new).await?, true))
    })
  }

  /// Archives the user's active sessions of the project and creates `new`, atomically.
  async fn start_fresh(&self, new: &NewSession) -> Result<(Session, u64)> {
    tx!(self, |tx| {
      self.lock_project(tx, &new.user_id, &new.project_id).await?;
      let archived = self
        .exec(
          tx,
          "UPDATE {S}.sessions SET status = 'archived', updated_at = {NOW}
           WHERE user_id = $1 AND project_id = $2 AND status = 'active'",
          &[&new.user_id, &new.project_id],
        )
        .await?;
      Ok((self.insert_session(tx, new).await?, archived))
    })
  }

  /// Archives one session.
  async fn archive_session(&self, id: &str, user_id: &str) -> Result<Session> {
    tx!(self, |tx| {
      let n = self
        .exec(tx, "UPDATE {S}.sessions SET status = 'archived', updated_at = {NOW} WHERE id = $1 AND user_id = $2", &[&id, &user_id])
        .await?;
      if n == 0 {
        return Err(Error::not_found(id));
      }
      self.get_in(tx, id, user_id).await?.ok_or_else(|| Error::not_found(id))
    })
  }

  /// Deletes one session with its tasks and compactions; a session running a task is busy.
  async fn delete_session(&self, id: &str, user_id: &str) -> Result<()> {
    tx!(self, |tx| {
      // The row lock orders this against a task starting on the session.
      if self.opt(tx, "SELECT 1 FROM {S}.sessions WHERE id = $1 AND user_id = $2 FOR UPDATE", &[&id, &user_id]).await?.is_none() {
        return Err(Error::not_found(id));
      }
      if self.task_running(tx, id).await? {
        return Err(Error::new(ErrorCode::SessionBusy, format!("session {id} is running a task; abort it or wait before deleting")));
      }
      self.retire(tx, id).await?;
      self.exec(tx, "DELETE FROM {S}.sessions WHERE id = $1 AND user_id = $2", &[&id, &user_id]).await?;
      Ok(())
    })
  }

  /// Deletes idle sessions; returns how many.
  async fn cleanup(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<u64> {
    Ok(self.cleanup_sessions(user_id, project_id, max_age_ms, keep_active).await?.len() as u64)
  }

  /// Deletes a user's sessions idle for longer than `max_age_ms` (only archived ones when
  /// `keep_active`) that run no task; returns them.
  async fn cleanup_sessions(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<Vec<Session>> {
    tx!(self, |tx| {
      let now: i64 = self.query(tx, "SELECT {NOW}", &[]).await?[0].get(0);
      let cutoff = now.saturating_sub(max_age_ms.min(i64::MAX as u64) as i64);
      let rows = self
        .query(
          tx,
          &format!(
            "SELECT {SESSION_COLUMNS} FROM {{S}}.sessions s WHERE user_id = $1 AND ($2::text IS NULL OR project_id = $2)
               AND last_active_at < $3 AND (NOT $4 OR status = 'archived')
               AND NOT EXISTS (SELECT 1 FROM {{S}}.leases l JOIN {{S}}.tasks t ON t.id = l.task_id
                 WHERE l.session_id = s.id AND l.expires_at > now() AND t.status = 'running')
             FOR UPDATE"
          ),
          &[&user_id, &project_id, &cutoff, &keep_active],
        )
        .await?;
      let mut deleted = Vec::with_capacity(rows.len());
      for r in &rows {
        let s = self.session_row(r);
        self.retire(tx, &s.id).await?;
        self.exec(tx, "DELETE FROM {S}.sessions WHERE id = $1 AND user_id = $2", &[&s.id, &user_id]).await?;
        deleted.push(s);
      }
      Ok(deleted)
    })
  }

  /// Counts a user's sessions.
  async fn count_sessions(&self, user_id: &str, project_id: Option<&str>) -> Result<u64> {
    read!(self, |c| {
      let r = self
        .query(
          c,
          "SELECT COUNT(*) FROM {S}.sessions WHERE user_id = $1 AND ($2::text IS NULL OR project_id = $2)",
          &[&user_id, &project_id],
        )
        .await?;
      Ok(r[0].get::<_, i64>(0) as u64)
    })
  }

  /// Replaces the context snapshot of a session.
  async fn set_context(&self, id: &str, ctx: &ContextSnapshot) -> Result<()> {
    tx!(self, |tx| {
      self
        .exec(
          tx,
          "UPDATE {S}.sessions SET context_tokens = $2, context_window = $3, context_source = $4,
             context_measured_at = $5, updated_at = {NOW} WHERE id = $1",
          &[&id, &(ctx.tokens as i64), &(ctx.window as i64), &ctx.source, &ctx.measured_at],
        )
        .await?;
      Ok(())
    })
  }
}
