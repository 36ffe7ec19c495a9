//! Branch points (SQLite; PostgreSQL in `postgres/branches.rs`): the message a fork continues
//! from, and a rewind not yet run (`sessions/branching.rs`).

use rusqlite::{params, OptionalExtension};

use super::*;
use crate::error::Result;

#[async_trait::async_trait]
impl Branches for SqliteStore {
  async fn branch_point(&self, session_id: &str) -> Result<Option<BranchPoint>> {
    self.with(|c| {
      let row = c
        .prepare_cached("SELECT fork_at, resume_at, resume_drops FROM branch_points WHERE session_id = ?1")?
        .query_row([session_id], |r| Ok(BranchPoint { fork_at: r.get(0)?, resume_at: r.get(1)?, resume_drops: r.get(2)? }))
        .optional()?;
      Ok(row)
    })
  }

  async fn set_branch_point(&self, session_id: &str, b: &BranchPoint) -> Result<()> {
    self.write(|tx| {
      exec(
        tx,
        "INSERT INTO branch_points (session_id, fork_at, resume_at, resume_drops) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (session_id) DO UPDATE SET fork_at = excluded.fork_at, resume_at = excluded.resume_at,
           resume_drops = excluded.resume_drops",
        params![session_id, b.fork_at, b.resume_at, b.resume_drops],
      )?;
      Ok(())
    })
  }

  async fn clear_resume(&self, session_id: &str, resume_at: &str) -> Result<()> {
    self.write(|tx| {
      exec(
        tx,
        "UPDATE branch_points SET resume_at = NULL, resume_drops = NULL WHERE session_id = ?1 AND resume_at = ?2",
        params![session_id, resume_at],
      )?;
      Ok(())
    })
  }

  async fn forks_of(&self, parent_id: &str, user_id: &str) -> Result<Vec<(String, Option<String>)>> {
    self.with(|c| {
      let mut st = c.prepare_cached(
        "SELECT s.id, b.fork_at FROM sessions s LEFT JOIN branch_points b ON b.session_id = s.id
         WHERE s.parent_id = ?1 AND s.user_id = ?2 ORDER BY s.created_at, s.id",
      )?;
      let rows = st.query_map(params![parent_id, user_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
      Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    })
  }
}
