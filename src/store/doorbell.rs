//! The store's doorbell: how a write made by one manager reaches the managers that wait for it
//! (a follower of a session's log, a task waiting for a permission answer, a steering message's
//! sender waiting for its outcome, a manager asked to give up a warm CLI, a task asked to stop),
//! without each of them reading the store on a short timer.
//!
//! - **In this process**: one channel per store (the same SQLite file, or the same PostgreSQL
//!   database and schema), shared by every manager of the process that opened it (`bus`). A
//!   ring reaches the others at once.
//! - **Across processes and nodes**: PostgreSQL `NOTIFY` on the schema's channel, heard by the
//!   store's one listening connection (`postgres/listen.rs`), re-made after a drop; SQLite has no
//!   such thing, so a ring is a row of the `notices` table and one thread per store reads the
//!   rows after the last one it saw every [`SQLITE_POLL`] (`sqlite/doorbell.rs`).
//!
//! A ring carries a [`Notice`] (what changed, never the data: the subscriber reads the store).
//! Whatever hears the doorbell puts its notices on the process's channel, so a subscriber has one
//! receiver. When the doorbell was down (the listening connection re-made, SQLite's rows pruned
//! before they were read) it says [`Notice::Listening`] and every subscriber reads the store once:
//! nothing rung meanwhile is missed. Subscribers still read the store every few seconds in case a
//! ring went missing (a ring is sent after its write committed; a failed ring is not retried).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::broadcast;

use super::Notice;

/// How long a SQLite ring takes at most to reach another process (plus the read): the reader's
/// period.
pub const SQLITE_POLL: Duration = Duration::from_millis(5);

/// How many notices a slow subscriber may lag behind before it is told it lagged (it then reads
/// the store, as after [`Notice::Listening`]).
pub(crate) const CAPACITY: usize = 1024;

/// This process's channel for the store named `scope` (see [`crate::store::Store::scope`]).
pub(crate) fn bus(scope: &str) -> broadcast::Sender<Notice> {
  static BUSES: OnceLock<Mutex<HashMap<String, broadcast::Sender<Notice>>>> = OnceLock::new();
  let mut map = BUSES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
  map.entry(scope.to_owned()).or_insert_with(|| broadcast::channel(CAPACITY).0).clone()
}

/// Waits until a notice that `wanted` accepts arrives (or the doorbell says to read the store:
/// [`Notice::Listening`], or this subscriber lagged behind), or `within` passed, or `stop`. The
/// caller reads the store afterwards, whichever it was.
pub async fn wait_ring(
  rx: &mut broadcast::Receiver<Notice>,
  within: Duration,
  stop: Option<&crate::cli::CancelToken>,
  wanted: impl Fn(&Notice) -> bool,
) {
  let deadline = tokio::time::sleep(within);
  tokio::pin!(deadline);
  let stopped = async {
    match stop {
      Some(s) => s.cancelled().await,
      None => std::future::pending().await,
    }
  };
  tokio::pin!(stopped);
  loop {
    tokio::select! {
      r = rx.recv() => match r {
        Ok(n) if n == Notice::Listening || wanted(&n) => return,
        Ok(_) => {}
        Err(broadcast::error::RecvError::Lagged(_)) => return,
        // No sender any more: only the timer is left.
        Err(broadcast::error::RecvError::Closed) => {
          tokio::select! {
            _ = &mut deadline => return,
            _ = &mut stopped => return,
          }
        }
      },
      _ = &mut deadline => return,
      _ = &mut stopped => return,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  async fn woken(f: impl std::future::Future<Output = ()>) -> bool {
    tokio::time::timeout(Duration::from_secs(30), f).await.is_ok()
  }

  #[tokio::test]
  async fn a_ring_wakes_only_its_subscriber_and_a_catch_up_wakes_everyone() {
    let tx = bus("test:doorbell");
    assert!(bus("test:doorbell").same_channel(&tx), "one channel per store in a process");
    assert!(!bus("test:other").same_channel(&tx));
    let mut rx = tx.subscribe();
    let mine = Notice::Inbox { session_id: "s1".into() };
    tx.send(Notice::Inbox { session_id: "s2".into() }).unwrap();
    tx.send(mine.clone()).unwrap();
    // An hour's timer: only a ring ends these waits (the test's own limit says when none came).
    let hour = Duration::from_secs(3600);
    assert!(woken(wait_ring(&mut rx, hour, None, |n| *n == mine)).await, "woken by its ring");
    assert!(rx.try_recv().is_err(), "the other session's ring was passed over");
    tx.send(Notice::Listening).unwrap();
    assert!(woken(wait_ring(&mut rx, hour, None, |_| false)).await, "a catch-up wakes every subscriber");
    // Nothing rings: the timer, or the stop token.
    wait_ring(&mut rx, Duration::from_millis(1), None, |_| true).await;
    let stop = crate::cli::CancelToken::new();
    stop.cancel();
    assert!(woken(wait_ring(&mut rx, hour, Some(&stop), |_| true)).await, "the stop token ends it");
  }
}
