//! The store's interface, one trait per concern; a backend implements every one it can, and
//! [`Backend`] names them all. A third backend is a folder beside `sqlite/` and `postgres/`
//! implementing these, and a line in `tests/conformance.rs`.

use std::time::Duration;

use super::*;
use crate::error::Result;

/// Session rows: create, read, list, archive, delete, clean up, the context snapshot.
pub trait Sessions {
  /// Creates a session.
  fn create_session(&self, s: &NewSession) -> Result<Session>;
  /// One session of one user; another user's session is `None`, as a missing one is.
  fn get_session(&self, id: &str, user_id: &str) -> Result<Option<Session>>;
  /// Sessions of a user, newest activity first.
  fn list_sessions(&self, q: &ListQuery) -> Result<Vec<Session>>;
  /// The newest active session of a user's project, or a new one made from `new`, atomically.
  fn get_or_create(&self, new: &NewSession, prefer_active: bool) -> Result<(Session, bool)>;
  /// Archives the user's active sessions of the project and creates `new`, atomically.
  fn start_fresh(&self, new: &NewSession) -> Result<(Session, u64)>;
  /// Archives one session.
  fn archive_session(&self, id: &str, user_id: &str) -> Result<Session>;
  /// Deletes one session with its tasks and compactions; a session running a task is busy.
  fn delete_session(&self, id: &str, user_id: &str) -> Result<()>;
  /// Deletes idle sessions; returns how many.
  fn cleanup(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<u64>;
  /// Deletes idle sessions; returns them.
  fn cleanup_sessions(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<Vec<Session>>;
  /// Counts a user's sessions.
  fn count_sessions(&self, user_id: &str, project_id: Option<&str>) -> Result<u64>;
  /// Replaces the context snapshot of a session.
  fn set_context(&self, id: &str, ctx: &ContextSnapshot) -> Result<()>;
}

/// Task rows and the one-CLI-per-session lease (fenced on PostgreSQL).
pub trait Tasks {
  /// Whether the session's lease is held past its task's end (that task's CLI is exiting).
  fn lease_kept_after_end(&self, session_id: &str) -> Result<bool>;
  /// Takes the session's lease and inserts the task row as `running`, atomically, unless
  /// another live task holds the lease or `start.max_running` live leases are held across the
  /// database (counted and taken in one step, so concurrent starters never exceed it).
  fn begin_task(&self, session_id: &str, start: &TaskStart<'_>) -> Result<Begin>;
  /// Extends a held lease; false when it is no longer this task's.
  fn renew_lease(&self, session_id: &str, task_id: &str, ttl: Duration) -> Result<bool>;
  /// Ends a task: its row, the session's totals, the context snapshot, the lease.
  fn finish_task(&self, session_id: &str, task_id: &str, end: &TaskEnd, cli_cost_watermark: Option<f64>) -> Result<()>;
  /// Frees the lease a task kept past its end.
  fn release_lease(&self, session_id: &str, task_id: &str) -> Result<()>;
  /// Marks `running` tasks whose holder is gone as `interrupted`; returns how many.
  fn recover_interrupted(&self, is_alive: &dyn Fn(u32) -> bool) -> Result<u64>;
  /// Tasks of a session, oldest first.
  fn list_tasks(&self, session_id: &str) -> Result<Vec<TaskRecord>>;
}

/// The context meter: model windows and compactions.
pub trait Meter {
  /// The last context window reported for a model, if any.
  fn window_for(&self, model: &str) -> Result<Option<u64>>;
  /// Compactions of a session, oldest first.
  fn list_compactions(&self, session_id: &str) -> Result<Vec<Compaction>>;
}

/// The CLI's transcript kept in the store, for a store shared by several nodes (PostgreSQL); a
/// backend on one machine has none (the file is the conversation): [`Backend::transcripts`] is `None`.
pub trait Transcripts {
  /// The newest transcript `seq` stored for a session (0: none; always 0 on SQLite).
  fn transcript_head(&self, session_id: &str) -> Result<i64>;
  /// Appends transcript lines for a task, fenced by its lease; false when it lost the lease.
  fn append_transcript(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool>;
  /// Appends lines a task's CLI wrote after the task ended, unless another task took the
  /// session's lease since; false then.
  fn append_transcript_after_end(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool>;
  /// A session's stored transcript lines after `after` (0: all), in order (none on SQLite).
  fn load_transcript(&self, session_id: &str, after: i64) -> Result<Vec<TranscriptEntry>>;
  /// How many lines of one transcript file of a session are stored.
  fn transcript_len(&self, session_id: &str, subpath: &str) -> Result<i64>;
  /// The bytes of every stored transcript line of a session (what `load_transcript(id, 0)`
  /// returns), to refuse a load that would not fit before it is made.
  fn transcript_bytes(&self, session_id: &str) -> Result<i64>;
}

/// Permission answers and messages forwarded to the process running a task (`store/inbox.rs`).
pub trait Inbox {
  /// The task's manager starts reading its inbox (`inbox.rs`): it takes steering messages and
  /// answers to its permission requests from other processes and nodes.
  fn inbox_open(&self, session_id: &str, task_id: &str) -> Result<()>;
  /// The task's manager stops reading its inbox: its pending requests go, messages not yet
  /// handled are refused.
  fn inbox_close(&self, session_id: &str, task_id: &str) -> Result<()>;
  /// Records a permission request of the task as pending.
  fn inbox_ask(&self, session_id: &str, task_id: &str, request_id: &str) -> Result<()>;
  /// A permission request is settled: no longer pending.
  fn inbox_forget(&self, session_id: &str, request_id: &str) -> Result<()>;
  /// Writes the answer (JSON) to a pending request not yet answered; false when there is none.
  fn inbox_answer(&self, session_id: &str, request_id: &str, answer: &str) -> Result<bool>;
  /// Leaves a message for the session's watched running task: its id, or `None` when none runs.
  fn inbox_send(&self, session_id: &str, text: &str) -> Result<Option<i64>>;
  /// Where a message left by `inbox_send` is; its row goes once it is steered or refused.
  fn inbox_receipt(&self, id: i64) -> Result<Receipt>;
  /// What waits for a task: answers to its permission requests, messages not yet handled.
  fn inbox_poll(&self, session_id: &str, task_id: &str) -> Result<Vec<Delivery>>;
  /// Records whether a message was steered into its task.
  fn inbox_mark(&self, id: i64, steered: bool) -> Result<()>;
}

/// Which manager keeps an idle warm CLI of a session, so that another asks it to give it up.
pub trait WarmHolds {
  /// This manager keeps an idle warm CLI of the session (`warm_holds.rs`), until `ttl` from now.
  fn warm_hold(&self, session_id: &str, owner: &Owner, ttl: Duration) -> Result<()>;
  /// The manager's warm CLI of the session is gone.
  fn warm_release(&self, session_id: &str, owner_id: &str) -> Result<()>;
  /// Extends every warm hold of the manager by `ttl` from now.
  fn warm_renew(&self, owner_id: &str, ttl: Duration) -> Result<()>;
  /// The sessions whose warm CLI another manager wants this one to give up.
  fn warm_wanted(&self, owner_id: &str) -> Result<Vec<String>>;
  /// Asks the other managers keeping a warm CLI of the session to give it up; how many are left.
  fn warm_elsewhere(&self, session_id: &str, owner_id: &str, is_alive: &dyn Fn(u32) -> bool) -> Result<u64>;
}

/// Spend caps and the ledger of model calls (`store/budgets.rs`).
pub trait Budgets {
  /// Checks every spend cap that applies to a model call against its reserve and records the
  /// call at its reserve, atomically (`budgets.rs`).
  fn admit_call(&self, call: &CallAdmit<'_>, defaults: &BudgetDefaults) -> Result<Admit>;
  /// Records what an admitted call really cost.
  fn settle_call(&self, id: i64, model: &str, t: &CallTokens, usd: f64) -> Result<()>;
  /// Sets (or replaces) a spend cap.
  fn set_budget(&self, k: &BudgetKey, usd: f64, period: Option<&str>) -> Result<()>;
  /// A stored spend cap with its scope's spend in the current period.
  fn get_budget(&self, k: &BudgetKey) -> Result<Option<Budget>>;
  /// What a scope spent in the current `period`, and when that period started.
  fn spent_in(&self, k: &BudgetKey, period: Option<&str>) -> Result<(f64, i64)>;
  /// Deletes a spend cap; whether there was one.
  fn delete_budget(&self, k: &BudgetKey) -> Result<bool>;
  /// The ledger of model calls summed by day, model or session.
  fn usage_report(&self, q: &UsageQuery) -> Result<Vec<UsageRow>>;
  /// Moves the clock the spend caps read (period starts and the ledger's call times) by `ms`
  /// from the database clock: how tests roll a period over without waiting for it.
  fn shift_budget_clock(&self, ms: i64);
}

/// The durable log of a session's task events (`store/events.rs`), and the task's stop requests.
pub trait Events {
  /// Appends a task's events (JSON text, in order) to its session's log, numbered right after
  /// the session's last number; returns the last. PostgreSQL rings its doorbell (`pg_notify`,
  /// session and number only) in the same transaction, SQLite writes its ring there.
  fn append_events(&self, session_id: &str, task_id: &str, events: &[String]) -> Result<i64>;
  /// Up to `limit` events of the session after `after`, in order.
  fn read_events(&self, session_id: &str, after: i64, limit: u32) -> Result<Vec<EventRow>>;
  /// The first number still in the log (the last plus one when none is) and the last one given.
  fn event_bounds(&self, session_id: &str) -> Result<EventBounds>;
  /// Deletes the events of tasks that ended more than `retention` ago; returns how many.
  fn sweep_events(&self, retention: Duration) -> Result<u64>;
  /// The task running on the session (its row `running`, its lease live), if any.
  fn running_task(&self, session_id: &str) -> Result<Option<RunningTask>>;
  /// Records a request to stop the session's running task and rings the doorbell;
  /// the task, or `None` when none runs.
  fn request_abort(&self, session_id: &str) -> Result<Option<RunningTask>>;
  /// Whether a stop was requested for the task.
  fn abort_requested(&self, task_id: &str) -> Result<bool>;
}

/// The store's doorbell across processes and nodes (`store/doorbell.rs`).
pub trait Doorbell {
  /// Rings for `notice` in every other process and node sharing the store (PostgreSQL
  /// `NOTIFY`; SQLite: a row of `notices`).
  fn ring(&self, notice: &Notice) -> Result<()>;
}

/// Where a session branches (`fork` at a message, `rewind`): one row per session with a branch point.
pub trait Branches {
  /// The session's branch point, if any.
  fn branch_point(&self, session_id: &str) -> Result<Option<BranchPoint>>;
  /// Records (replaces) the session's branch point.
  fn set_branch_point(&self, session_id: &str, b: &BranchPoint) -> Result<()>;
  /// A run continued from `resume_at`: the pending point is cleared, unless a newer one replaced it.
  fn clear_resume(&self, session_id: &str, resume_at: &str) -> Result<()>;
  /// The user's sessions forked from `parent_id`, with the message each forked at, oldest first.
  fn forks_of(&self, parent_id: &str, user_id: &str) -> Result<Vec<(String, Option<String>)>>;
}

/// A whole backend: every concern, and the transcripts when it keeps them.
pub trait Backend: Sessions + Tasks + Meter + Inbox + WarmHolds + Budgets + Events + Branches + Doorbell + Send + Sync {
  /// The schema version of the open store.
  fn schema_version(&self) -> Result<i64>;
  /// The transcripts the store keeps for other nodes; `None` on a backend for one machine, where
  /// the CLI's transcript file is the conversation (the manager does not mirror then).
  fn transcripts(&self) -> Option<&dyn Transcripts>;
  /// Which backend this is: `sqlite`, `postgres`.
  fn name(&self) -> &'static str;
}
