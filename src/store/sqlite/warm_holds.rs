//! Warm holds: which manager keeps an idle warm CLI of a session (SQLite here; PostgreSQL in
//! `postgres/warm_holds.rs`), so that there is never more than one CLI per session across the
//! processes and nodes sharing the database.
//!
//! An idle warm CLI holds no lease (the session is free for any task), but it is a CLI on the
//! session. Its manager writes a hold `(session_id, owner_id)` when it keeps the CLI, renews it
//! (`expires_at`) while it lives, and deletes it once the CLI is gone. A task that took the
//! session's lease in another manager first marks the holds of the others `wanted` and waits,
//! before it starts its CLI, until they are gone: their managers poll for `wanted`, kill the
//! idle CLI (it is stale now) and delete the hold. A hold whose manager died expires (its CLIs
//! died with it); on the same machine a dead owner pid ends it at once.

use rusqlite::params;

use super::*;
use crate::error::Result;

#[async_trait::async_trait]
impl WarmHolds for SqliteStore {
  /// This manager keeps an idle warm CLI of the session, until `ttl` from now unless renewed.
  async fn warm_hold(&self, session_id: &str, owner: &Owner, ttl: Duration) -> Result<()> {
    self.write(|tx| {
      exec(
        tx,
        "INSERT INTO warm_holds (session_id, owner_id, owner_pid, host_id, expires_at, wanted) VALUES (?1, ?2, ?3, '', ?4, 0)
         ON CONFLICT (session_id, owner_id) DO UPDATE SET expires_at = excluded.expires_at",
        params![session_id, owner.id, owner.pid, now_ms() + ttl.as_millis() as i64],
      )?;
      Ok(())
    })
  }

  /// The manager's CLI of the session is gone.
  async fn warm_release(&self, session_id: &str, owner_id: &str) -> Result<()> {
    self.write(|tx| {
      exec(tx, "DELETE FROM warm_holds WHERE session_id = ?1 AND owner_id = ?2", params![session_id, owner_id])?;
      Ok(())
    })
  }

  /// Extends every hold of the manager by `ttl` from now.
  async fn warm_renew(&self, owner_id: &str, ttl: Duration) -> Result<()> {
    self.write(|tx| {
      exec(tx, "UPDATE warm_holds SET expires_at = ?2 WHERE owner_id = ?1", params![owner_id, now_ms() + ttl.as_millis() as i64])?;
      Ok(())
    })
  }

  /// The sessions whose CLI another manager wants this one to give up.
  async fn warm_wanted(&self, owner_id: &str) -> Result<Vec<String>> {
    self.with(|c| {
      let mut st = c.prepare_cached("SELECT session_id FROM warm_holds WHERE owner_id = ?1 AND wanted = 1")?;
      let rows = st.query_map([owner_id], |r| r.get(0))?;
      Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    })
  }

  /// Asks every other manager keeping a CLI of the session to give it up; how many live holds of
  /// others are left (holds of dead owners go).
  async fn warm_elsewhere(&self, session_id: &str, owner_id: &str, is_alive: &(dyn Fn(u32) -> bool + Sync)) -> Result<u64> {
    // Before every task, and nearly always nobody else keeps one: a read, without the write lock.
    let any = self.with(|c| {
      let mut st = c.prepare_cached("SELECT EXISTS (SELECT 1 FROM warm_holds WHERE session_id = ?1 AND owner_id != ?2)")?;
      Ok(st.query_row(params![session_id, owner_id], |r| r.get::<_, bool>(0))?)
    })?;
    if !any {
      return Ok(0);
    }
    self.write(|tx| {
      let now = now_ms();
      let mut st =
        tx.prepare_cached("SELECT owner_id, owner_pid FROM warm_holds WHERE session_id = ?1 AND owner_id != ?2 AND expires_at > ?3")?;
      let others = st
        .query_map(params![session_id, owner_id, now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
      exec(tx, "DELETE FROM warm_holds WHERE session_id = ?1 AND expires_at <= ?2", params![session_id, now])?;
      let mut live = 0;
      for (owner, pid) in others {
        if is_alive(pid as u32) {
          exec(tx, "UPDATE warm_holds SET wanted = 1 WHERE session_id = ?1 AND owner_id = ?2", params![session_id, owner])?;
          live += 1;
        } else {
          exec(tx, "DELETE FROM warm_holds WHERE session_id = ?1 AND owner_id = ?2", params![session_id, owner])?;
        }
      }
      Ok(live)
    })
  }
}
