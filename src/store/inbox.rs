//! The inbox: what is forwarded to the process running a task, whichever process or node the
//! caller reached (the rows: `sqlite/inbox.rs`, `postgres/inbox.rs`).
//!
//! One table, `inbox`, three kinds of row, all of one session and one task:
//! - `watch`: the task's manager reads its inbox (a warm task: it can take steering messages and
//!   answers to its permission requests). Written when it starts reading, deleted when it stops.
//! - `permission`: a permission request of the task waiting for an answer (`request_id`, the
//!   CLI's). Another process writes the answer (`answer`, JSON) once, while it is still empty;
//!   the task's manager reads it, settles the request, and deletes the row (as it does when the
//!   request is settled any other way).
//! - `message`: a steering message (`body`) for the task. The task's manager steers it into the
//!   task and writes the outcome (`answer`: `steered`, `refused`, or `too_much` past the task's
//!   limit of steered messages); the sender reads the outcome and deletes the row.
//!
//! A message is accepted only for a task that holds the session's live lease, is `running` and
//! is watched, checked in the same transaction as the insert.

/// What the inbox holds for a running task (see [`Inbox::inbox_poll`](super::Inbox::inbox_poll)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
  /// The answer (JSON) to one of the task's permission requests.
  Answer { request_id: String, answer: String },
  /// A steering message not yet handled.
  Message { id: i64, text: String },
}

/// Where a forwarded message is (see [`Inbox::inbox_receipt`](super::Inbox::inbox_receipt)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
  /// Not handled yet, and its task still reads its inbox.
  Waiting,
  /// Steered into the task.
  Steered,
  /// The task could not take it (it was ending), or stopped reading its inbox first.
  Refused,
  /// The task already took as many steered messages (or bytes of them) as one task takes.
  TooMuch,
}

/// How long a handled message whose sender never came back for it is kept.
pub(crate) const ORPHAN_MS: i64 = 10 * 60 * 1000;

impl Receipt {
  /// The outcome an `answer` stores (an answer this build does not know is a refusal).
  pub(crate) fn of(answer: Option<&str>) -> Receipt {
    match answer {
      Some("steered") => Receipt::Steered,
      Some("too_much") => Receipt::TooMuch,
      Some(_) => Receipt::Refused,
      None => Receipt::Waiting,
    }
  }

  /// The `answer` that stores this outcome (`Waiting` stores none: it is stored as a refusal).
  pub(crate) fn answer(self) -> &'static str {
    match self {
      Receipt::Steered => "steered",
      Receipt::TooMuch => "too_much",
      Receipt::Refused | Receipt::Waiting => "refused",
    }
  }
}
