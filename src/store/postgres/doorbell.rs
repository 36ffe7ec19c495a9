//! The doorbell on PostgreSQL (what it is: `store/doorbell.rs`): a ring is `pg_notify` on the
//! schema's channel, heard by every node's listening connection (`listen.rs`). Appends to the
//! event log and stop requests ring in their own transaction (`events.rs`); other rings come
//! right after the write they are about.

use super::*;
use crate::error::Result;
use crate::store::{Doorbell, Notice};

#[async_trait::async_trait]
impl Doorbell for PgStore {
  async fn ring(&self, notice: &Notice) -> Result<()> {
    let Some(payload) = notice.payload() else { return Ok(()) };
    // A ring sent twice (run again after a lost connection) is only heard twice.
    idempotent!(self, |c| {
      self.exec(c, "SELECT pg_notify($1, $2)", &[&self.channel, &payload]).await?;
      Ok(())
    })
  }
}
