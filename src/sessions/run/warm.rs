//! Warm execution: the task's prompt is one line on the stdin of a stream-json CLI kept across
//! the session's tasks (the pool and its rules: `sessions/warm.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Executed, Executor, Job, Manager};
use crate::sessions::slot::TaskSlot;

/// A process kept across tasks (or, with `canUseTool`, started for the task).
pub(crate) struct Warm;

impl Executor for Warm {
  fn execute<'a>(self: Box<Self>, m: &'a Manager, mut job: Job<'a>) -> Pin<Box<dyn Future<Output = Executed> + Send + 'a>> {
    Box::pin(async move {
      // The slot is given back while the task waits for a person's permission answer.
      let slot = Arc::new(TaskSlot::new(m.slots.clone(), job.permit.take()));
      if let Some(h) = job.can_use_tool.take() {
        job.can_use_tool = Some(m.answerable(h, &job.session.id, &job.session.working_directory, job.task_id, Arc::downgrade(&slot)));
      }
      m.run_warm(slot, job).await.map(|o| (o, None))
    })
  }
}
