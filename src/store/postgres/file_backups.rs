//! The CLI's file-checkpoint backups on PostgreSQL (`file_backups`): one row per backup file of a
//! session (`CLAUDE_CONFIG_DIR/file-history/<session>/<name>`), written by the node that ran the
//! task, fenced like the transcript (only while no other task has taken the session's lease
//! since the task that made them), so that a rewind with files on another node finds them.
//! A backup file never changes once the CLI wrote it (a new version is a new name): a name
//! already stored is kept.

use super::*;
use crate::error::Result;
use crate::store::FileBackups;

#[async_trait::async_trait]
impl FileBackups for PgStore {
  async fn file_backup_sizes(&self, session_id: &str) -> Result<Vec<(String, i64)>> {
    let rows = read!(self, |c| {
      self
        .query(c, "SELECT name, octet_length(content)::bigint FROM {S}.file_backups WHERE session_id = $1 ORDER BY name", &[&session_id])
        .await
    })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
  }

  async fn put_file_backup(&self, session_id: &str, task_id: &str, name: &str, content: &[u8]) -> Result<bool> {
    // One statement: the fence of the lease the task was the last to take (held or released,
    // not taken since), and the backup stored under it.
    let sql = "WITH f AS (
         SELECT l.fence FROM {S}.leases l JOIN {S}.tasks t ON t.id = $4 AND t.fence = l.fence
         WHERE l.session_id = $1 AND (l.task_id IS NULL OR l.task_id = $4) FOR UPDATE OF l),
       ins AS (INSERT INTO {S}.file_backups (session_id, name, content, fence, task_id)
         SELECT $1, $2, $3, f.fence, $4 FROM f ON CONFLICT (session_id, name) DO NOTHING)
       SELECT count(*) FROM f";
    let n: i64 = tx!(self, |tx| Ok(self.query(tx, sql, &[&session_id, &name, &content, &task_id]).await?[0].get(0)))?;
    Ok(n > 0)
  }

  async fn load_file_backups(&self, session_id: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let rows = read!(self, |c| self
      .query(c, "SELECT name, content FROM {S}.file_backups WHERE session_id = $1 ORDER BY name", &[&session_id])
      .await)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
  }
}
