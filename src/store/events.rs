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

/// The doorbell's payload prefix for new events: `e:<session>:<seq>`.
pub const NOTIFY_EVENTS: &str = "e";
/// The doorbell's payload prefix for a stop request: `a:<session>:<task>`.
pub const NOTIFY_ABORT: &str = "a";
/// The doorbell's payload prefix for the inbox: `i:<session>:` (an answer or a message waits).
pub const NOTIFY_INBOX: &str = "i";
/// The doorbell's payload prefix for a message's outcome: `r:<session>:<message id>`.
pub const NOTIFY_RECEIPT: &str = "r";
/// The doorbell's payload prefix for a warm hold wanted: `w:<session>:`.
pub const NOTIFY_WARM_WANTED: &str = "w";
/// The doorbell's payload prefix for a warm hold released: `x:<session>:`.
pub const NOTIFY_WARM_RELEASED: &str = "x";

/// What a store's doorbell says (see [`crate::store::Store::subscribe`]): PostgreSQL `NOTIFY`,
/// SQLite's `notices` rows, and this process's own rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
  /// The session's log has events up to `seq`.
  Events { session_id: String, seq: i64 },
  /// A stop was requested for the task.
  Abort { session_id: String, task_id: String },
  /// An answer to a permission request or a steering message waits in the session's inbox.
  Inbox { session_id: String },
  /// A steering message left for the session's task was steered or refused.
  Receipt { session_id: String, id: i64 },
  /// Another manager wants the idle warm CLIs of the session gone.
  WarmWanted { session_id: String },
  /// A manager gave up its warm CLI of the session.
  WarmReleased { session_id: String },
  /// The doorbell is (again) up: what was rung while it was down is not known, so a
  /// listener reads the store once (its catch-up read).
  Listening,
}

impl Notice {
  /// A doorbell payload (`e:<session>:<seq>`, `a:<session>:<task>`, …) read back.
  pub fn parse(payload: &str) -> Option<Notice> {
    let mut parts = payload.splitn(3, ':');
    let (kind, session_id, rest) = (parts.next()?, parts.next()?.to_owned(), parts.next()?);
    match kind {
      NOTIFY_EVENTS => Some(Notice::Events { session_id, seq: rest.parse().ok()? }),
      NOTIFY_ABORT => Some(Notice::Abort { session_id, task_id: rest.to_owned() }),
      NOTIFY_INBOX => Some(Notice::Inbox { session_id }),
      NOTIFY_RECEIPT => Some(Notice::Receipt { session_id, id: rest.parse().ok()? }),
      NOTIFY_WARM_WANTED => Some(Notice::WarmWanted { session_id }),
      NOTIFY_WARM_RELEASED => Some(Notice::WarmReleased { session_id }),
      _ => None,
    }
  }

  /// The payload [`Notice::parse`] reads back (`Listening` has none).
  pub fn payload(&self) -> Option<String> {
    Some(match self {
      Notice::Events { session_id, seq } => format!("{NOTIFY_EVENTS}:{session_id}:{seq}"),
      Notice::Abort { session_id, task_id } => format!("{NOTIFY_ABORT}:{session_id}:{task_id}"),
      Notice::Inbox { session_id } => format!("{NOTIFY_INBOX}:{session_id}:"),
      Notice::Receipt { session_id, id } => format!("{NOTIFY_RECEIPT}:{session_id}:{id}"),
      Notice::WarmWanted { session_id } => format!("{NOTIFY_WARM_WANTED}:{session_id}:"),
      Notice::WarmReleased { session_id } => format!("{NOTIFY_WARM_RELEASED}:{session_id}:"),
      Notice::Listening => return None,
    })
  }

  /// Whether a subscriber waiting for `wanted` (compared as it is) should read the store now:
  /// `wanted` itself, or a catch-up after the doorbell was down.
  pub fn rings_for(&self, wanted: &Notice) -> bool {
    self == wanted || *self == Notice::Listening
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
    for n in [
      Notice::Events { session_id: "s".into(), seq: 7 },
      Notice::Abort { session_id: "s".into(), task_id: "t".into() },
      Notice::Inbox { session_id: "s".into() },
      Notice::Receipt { session_id: "s".into(), id: 9 },
      Notice::WarmWanted { session_id: "s".into() },
      Notice::WarmReleased { session_id: "s".into() },
    ] {
      assert_eq!(Notice::parse(&n.payload().unwrap()), Some(n.clone()), "{n:?}");
    }
    assert_eq!(Notice::Listening.payload(), None);
    assert_eq!(Notice::parse("r:s:x"), None);
  }
}
