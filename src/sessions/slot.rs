//! A task's concurrency slot (`maxConcurrentTasks`), given back while the task only waits for a
//! person: a task whose CLI waits for a permission answer holds no slot, so tasks waiting on
//! people who do not answer cannot keep everyone else from running. The slot is taken again
//! (waiting in line like a new task) before the answer reaches the CLI.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

/// The slot of one running task.
pub(crate) struct TaskSlot {
  slots: Arc<Semaphore>,
  state: Mutex<State>,
}

struct State {
  permit: Option<OwnedSemaphorePermit>,
  /// Permission requests of the task now waiting for an answer.
  waiting: usize,
}

impl TaskSlot {
  pub(crate) fn new(slots: Arc<Semaphore>, permit: Option<OwnedSemaphorePermit>) -> TaskSlot {
    TaskSlot { slots, state: Mutex::new(State { permit, waiting: 0 }) }
  }

  /// A permission request starts waiting: the first one gives the slot back.
  pub(crate) async fn pause(&self) {
    let mut s = self.state.lock().await;
    s.waiting += 1;
    if s.waiting == 1 {
      s.permit = None;
    }
  }

  /// A permission request was answered: when none waits any more, the slot is taken again
  /// (waiting for one to be free).
  pub(crate) async fn resume(&self) {
    let mut s = self.state.lock().await;
    s.waiting = s.waiting.saturating_sub(1);
    if s.waiting == 0 && s.permit.is_none() {
      // Closed only with the manager: the task then ends anyway.
      s.permit = self.slots.clone().acquire_owned().await.ok();
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[tokio::test]
  async fn a_paused_slot_is_free_for_others_and_taken_back_on_resume() {
    let sem = Arc::new(Semaphore::new(1));
    let slot = Arc::new(TaskSlot::new(sem.clone(), Some(sem.clone().try_acquire_owned().unwrap())));
    assert!(sem.clone().try_acquire_owned().is_err(), "held while running");
    slot.pause().await;
    slot.pause().await;
    let other = sem.clone().try_acquire_owned().expect("free while the task waits for a person");
    slot.resume().await;
    assert_eq!(sem.available_permits(), 0);
    // The last answer waits for the slot the other task holds.
    let s2 = slot.clone();
    let resumed = tokio::spawn(async move { s2.resume().await });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!resumed.is_finished(), "it waits for a free slot");
    drop(other);
    resumed.await.unwrap();
    assert!(sem.clone().try_acquire_owned().is_err(), "held again");
    drop(slot);
    assert_eq!(sem.available_permits(), 1, "given back when the task ends");
  }
}
