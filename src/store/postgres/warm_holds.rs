//! Warm holds on PostgreSQL: the rows and rules of `warm_holds.rs`, on the database clock. A
//! pid is judged only for holds written on this machine (`host_id`).

use std::time::Duration;

use super::*;
use crate::error::Result;
use crate::store::Owner;

#[async_trait::async_trait]
impl WarmHolds for PgStore {
  /// This manager keeps an idle warm CLI of the session, until `ttl` from now unless renewed.
  async fn warm_hold(&self, session_id: &str, owner: &Owner, ttl: Duration) -> Result<()> {
    let (pid, ttl_ms) = (owner.pid as i64, ttl.as_millis() as f64);
    tx!(self, |tx| {
      self
        .exec(
          tx,
          "INSERT INTO {S}.warm_holds (session_id, owner_id, owner_pid, host_id, expires_at, wanted)
           VALUES ($1, $2, $3, $4, now() + $5 * interval '1 millisecond', false)
           ON CONFLICT (session_id, owner_id) DO UPDATE SET expires_at = EXCLUDED.expires_at",
          &[&session_id, &owner.id, &pid, &self.host, &ttl_ms],
        )
        .await?;
      Ok(())
    })
  }

  /// The manager's CLI of the session is gone.
  async fn warm_release(&self, session_id: &str, owner_id: &str) -> Result<()> {
    read!(self, |c| {
      self.exec(c, "DELETE FROM {S}.warm_holds WHERE session_id = $1 AND owner_id = $2", &[&session_id, &owner_id]).await?;
      Ok(())
    })
  }

  /// Extends every hold of the manager by `ttl` from now.
  async fn warm_renew(&self, owner_id: &str, ttl: Duration) -> Result<()> {
    let ttl_ms = ttl.as_millis() as f64;
    read!(self, |c| {
      self
        .exec(c, "UPDATE {S}.warm_holds SET expires_at = now() + $2 * interval '1 millisecond' WHERE owner_id = $1", &[&owner_id, &ttl_ms])
        .await?;
      Ok(())
    })
  }

  /// The sessions whose CLI another manager wants this one to give up.
  async fn warm_wanted(&self, owner_id: &str) -> Result<Vec<String>> {
    read!(self, |c| {
      let rows = self.query(c, "SELECT session_id FROM {S}.warm_holds WHERE owner_id = $1 AND wanted", &[&owner_id]).await?;
      Ok(rows.iter().map(|r| r.get(0)).collect())
    })
  }

  /// Asks every other manager keeping a CLI of the session to give it up; how many live holds of
  /// others are left (expired holds, and holds of dead owners on this machine, go).
  async fn warm_elsewhere(&self, session_id: &str, owner_id: &str, is_alive: &(dyn Fn(u32) -> bool + Sync)) -> Result<u64> {
    // One statement (one round trip): this runs before every task.
    let rows = read!(self, |c| {
      self
        .query(
          c,
          "WITH gone AS (DELETE FROM {S}.warm_holds WHERE session_id = $1 AND expires_at <= now())
           UPDATE {S}.warm_holds SET wanted = true WHERE session_id = $1 AND owner_id != $2 AND expires_at > now()
           RETURNING owner_id, owner_pid, host_id",
          &[&session_id, &owner_id],
        )
        .await
    })?;
    let mut live = 0;
    for r in rows {
      let (owner, pid, host): (String, i64, String) = (r.get(0), r.get(1), r.get(2));
      if host == self.host && !is_alive(pid as u32) {
        self.warm_release(session_id, &owner).await?;
      } else {
        live += 1;
      }
    }
    Ok(live)
  }
}
