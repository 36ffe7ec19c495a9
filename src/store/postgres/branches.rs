//! Branch points on PostgreSQL: the rows of `sqlite/branches.rs`.

use super::*;
use crate::error::Result;

#[async_trait::async_trait]
impl Branches for PgStore {
  async fn branch_point(&self, session_id: &str) -> Result<Option<BranchPoint>> {
    let rows = read!(self, |c| {
      self.query(c, "SELECT fork_at, resume_at, resume_drops FROM {S}.branch_points WHERE session_id = $1", &[&session_id]).await
    })?;
    Ok(rows.first().map(|r| BranchPoint { fork_at: r.get(0), resume_at: r.get(1), resume_drops: r.get(2) }))
  }

  async fn set_branch_point(&self, session_id: &str, b: &BranchPoint) -> Result<()> {
    read!(self, |c| {
      self
        .exec(
          c,
          "INSERT INTO {S}.branch_points (session_id, fork_at, resume_at, resume_drops) VALUES ($1, $2, $3, $4)
           ON CONFLICT (session_id) DO UPDATE SET fork_at = EXCLUDED.fork_at, resume_at = EXCLUDED.resume_at,
             resume_drops = EXCLUDED.resume_drops",
          &[&session_id, &b.fork_at, &b.resume_at, &b.resume_drops],
        )
        .await?;
      Ok(())
    })
  }

  async fn clear_resume(&self, session_id: &str, resume_at: &str) -> Result<()> {
    read!(self, |c| {
      self
        .exec(
          c,
          "UPDATE {S}.branch_points SET resume_at = NULL, resume_drops = NULL WHERE session_id = $1 AND resume_at = $2",
          &[&session_id, &resume_at],
        )
        .await?;
      Ok(())
    })
  }

  async fn forks_of(&self, parent_id: &str, user_id: &str) -> Result<Vec<(String, Option<String>)>> {
    let rows = read!(self, |c| {
      self
        .query(
          c,
          "SELECT s.id, b.fork_at FROM {S}.sessions s LEFT JOIN {S}.branch_points b ON b.session_id = s.id
           WHERE s.parent_id = $1 AND s.user_id = $2 ORDER BY s.created_at, s.id",
          &[&parent_id, &user_id],
        )
        .await
    })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
  }
}
