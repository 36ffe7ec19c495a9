//! The CLI's file-checkpoint backups on PostgreSQL (`file_backups`): one row per backup file of a
//! session (`CLAUDE_CONFIG_DIR/file-history/<session>/<name>`), written by the node that ran the
//! task, fenced like the transcript (only while no other task has taken the session's lease
//! since the task that made them), so that a rewind with files on another node finds them.
//! A backup file never changes once the CLI wrote it (a new version is a new name): a name
//! already stored is kept.

use super::*;
use crate::error::Result;
use crate::store::FileBackups;

impl FileBackups for PgStore {
  fn file_backup_sizes(&self, session_id: &str) -> Result<Vec<(String, i64)>> {
    let rows = self.read(async |c| {
      self
        .query(c, "SELECT name, octet_length(content)::bigint FROM {S}.file_backups WHERE session_id = $1 ORDER BY name", &[&session_id])
        .await
    })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
  }

  fn put_file_backup(&self, session_id: &str, task_id: &str, name: &str, content: &[u8]) -> Result<bool> {
    self.tx(async |tx| {
      let Some(fence) = self.last_fence(tx, session_id, task_id).await? else { return Ok(false) };
      self
        .exec(
          tx,
          "INSERT INTO {S}.file_backups (session_id, name, content, fence, task_id) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (session_id, name) DO NOTHING",
          &[&session_id, &name, &content, &fence, &task_id],
        )
        .await?;
      Ok(true)
    })
  }

  fn load_file_backups(&self, session_id: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let rows = self.read(async |c| {
      self.query(c, "SELECT name, content FROM {S}.file_backups WHERE session_id = $1 ORDER BY name", &[&session_id]).await
    })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
  }
}
