//! What the event log is, for every backend: a session's task events numbered 1, 2, 3, … with
//! no gap (the session row keeps the last number, so a swept log never reuses one), each row the
//! event's JSON. Rows of a task go `retention` after it ended. A stop request is a mark on the
//! running task's row, which its holder reads (or, on PostgreSQL, hears of).

use serde::Serialize;

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRow {
  /// Its number in the session's log.
  pub seq: i64,
  pub task_id: String,
  /// When it was written (milliseconds since the epoch).
  pub at: i64,
  /// The event, as JSON text.
  pub body: String,
}

/// What a session's log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBounds {
  /// The first number still kept (`last + 1` when none is).
  pub first: i64,
  /// The last number given (0: none yet).
  pub last: i64,
}

/// The task running on a session.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunningTask {
  pub task_id: String,
  /// `task` or `compact`.
  pub kind: String,
  pub started_at: i64,
  /// The manager running it.
  pub owner_id: String,
  /// Its process.
  pub owner_pid: u32,
  /// Its node (`nodeId`) on PostgreSQL; `None` on SQLite (one machine).
  pub node_id: Option<String>,
  /// Whether a stop was requested.
  pub abort_requested: bool,
}

/// The doorbell's payload prefix for new events: `e:<session>:<seq>` (PostgreSQL).
pub const NOTIFY_EVENTS: &str = "e";
/// The doorbell's payload prefix for a stop request: `a:<session>:<task>` (PostgreSQL).
pub const NOTIFY_ABORT: &str = "a";

/// What a store's doorbell says (PostgreSQL `LISTEN`, see [`crate::store::Store::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
  /// The session's log has events up to `seq`.
  Events { session_id: String, seq: i64 },
  /// A stop was requested for the task.
  Abort { session_id: String, task_id: String },
  /// The listening connection is (again) up: what was rung while it was down is not known, so a
  /// listener reads the store once (its catch-up read).
  Listening,
}

impl Notice {
  /// A doorbell payload (`e:<session>:<seq>`, `a:<session>:<task>`) read back.
  pub fn parse(payload: &str) -> Option<Notice> {
    let mut parts = payload.splitn(3, ':');
    let (kind, session_id, rest) = (parts.next()?, parts.next()?.to_owned(), parts.next()?);
    match kind {
      NOTIFY_EVENTS => Some(Notice::Events { session_id, seq: rest.parse().ok()? }),
      NOTIFY_ABORT => Some(Notice::Abort { session_id, task_id: rest.to_owned() }),
      _ => None,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn doorbell_payloads_read_back() {
    assert_eq!(Notice::parse("e:s1:42"), Some(Notice::Events { session_id: "s1".into(), seq: 42 }));
    assert_eq!(Notice::parse("a:s1:t-1"), Some(Notice::Abort { session_id: "s1".into(), task_id: "t-1".into() }));
    assert_eq!(Notice::parse("e:s1:x"), None);
    assert_eq!(Notice::parse("z:s1:1"), None);
    assert_eq!(Notice::parse("e:s1"), None);
  }
}
