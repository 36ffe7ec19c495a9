//! The context meter on PostgreSQL: model windows and compactions.

use super::*;

#[async_trait::async_trait]
impl Meter for PgStore {
  /// The last context window reported for a model, if any.
  async fn window_for(&self, model: &str) -> Result<Option<u64>> {
    read!(self, |c| {
      Ok(self.opt(c, "SELECT context_window FROM {S}.model_windows WHERE model = $1", &[&model]).await?.map(|r| r.get::<_, i64>(0) as u64))
    })
  }

  /// Compactions of a session, oldest first.
  async fn list_compactions(&self, session_id: &str) -> Result<Vec<Compaction>> {
    read!(self, |c| {
      let rows = self
        .query(
          c,
          "SELECT session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms
           FROM {S}.compactions WHERE session_id = $1 ORDER BY started_at, id",
          &[&session_id],
        )
        .await?;
      Ok(
        rows
          .iter()
          .map(|r| Compaction {
            session_id: r.get(0),
            task_id: r.get(1),
            trigger: r.get(2),
            pre_tokens: r.get::<_, Option<i64>>(3).map(|t| t as u64),
            post_tokens: r.get::<_, Option<i64>>(4).map(|t| t as u64),
            started_at: r.get(5),
            duration_ms: r.get::<_, Option<i64>>(6).map(|t| t as u64),
          })
          .collect(),
      )
    })
  }
}
