//! The store's interface, one trait per concern; a backend implements every one it can, and
//! [`Backend`] names them all. A third backend is a folder beside `sqlite/` and `postgres/`
//! implementing these, and a line in `tests/conformance.rs`.

use std::time::Duration;

use super::*;
use crate::error::Result;

/// Session rows: create, read, list, archive, delete, clean up, the context snapshot.
#[async_trait::async_trait]
pub trait Sessions {
  /// Creates a session.
  async fn create_session(&self, s: &NewSession) -> Result<Session>;
  /// One session of one user; another user's session is `None`, as a missing one is.
  async fn get_session(&self, id: &str, user_id: &str) -> Result<Option<Session>>;
  /// Sessions of a user, newest activity first.
  async fn list_sessions(&self, q: &ListQuery) -> Result<Vec<Session>>;
  /// The newest active session of a user's project, or a new one made from `new`, atomically.
  async fn get_or_create(&self, new: &NewSession, prefer_active: bool) -> Result<(Session, bool)>;
  /// Archives the user's active sessions of the project and creates `new`, atomically.
  async fn start_fresh(&self, new: &NewSession) -> Result<(Session, u64)>;
  /// Archives one session.
  async fn archive_session(&self, id: &str, user_id: &str) -> Result<Session>;
  /// Deletes one session with its tasks and compactions; a session running a task is busy.
  async fn delete_session(&self, id: &str, user_id: &str) -> Result<()>;
  /// Deletes idle sessions; returns how many.
  async fn cleanup(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<u64>;
  /// Deletes idle sessions; returns them.
  async fn cleanup_sessions(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<Vec<Session>>;
  /// Counts a user's sessions.
  async fn count_sessions(&self, user_id: &str, project_id: Option<&str>) -> Result<u64>;
  /// Replaces the context snapshot of a session.
  async fn set_context(&self, id: &str, ctx: &ContextSnapshot) -> Result<()>;
}

/// Task rows and the one-CLI-per-session lease (fenced on PostgreSQL).
#[async_trait::async_trait]
pub trait Tasks {
  /// Whether the session's lease is held past its task's end (that task's CLI is exiting).
  async fn lease_kept_after_end(&self, session_id: &str) -> Result<bool>;
  /// Takes the session's lease and inserts the task row as `running`, atomically, unless
  /// another live task holds the lease or `start.max_running` live leases are held across the
  /// database (counted and taken in one step, so concurrent starters never exceed it).
  async fn begin_task(&self, session_id: &str, start: &TaskStart<'_>) -> Result<Begin>;
  /// [`Tasks::begin_task`] and what a starting run reads next, in one round trip where the
  /// backend can: the session once the lease is taken (as `user_id` sees it), or whether the
  /// holder's CLI is exiting ([`Tasks::lease_kept_after_end`]).
  async fn start_task(&self, session_id: &str, user_id: &str, start: &TaskStart<'_>) -> Result<Start>;
  /// Extends a held lease; false when it is no longer this task's.
  async fn renew_lease(&self, session_id: &str, task_id: &str, ttl: Duration) -> Result<bool>;
  /// Ends a task: its row, the session's totals, the context snapshot, the lease.
  async fn finish_task(&self, session_id: &str, task_id: &str, end: &TaskEnd, cli_cost_watermark: Option<f64>) -> Result<()>;
  /// [`Tasks::finish_task`] with what the task has not stored yet, in one transaction (on
  /// PostgreSQL one round trip): `with.lines`, the transcript's last lines, appended fenced by
  /// the task's lease as [`Transcripts::append_transcript`] does (a backend without transcripts
  /// takes none); `with.events`, appended to the session's log; the end; then `with.end_event`,
  /// appended only if the end was recorded. The end refused because the lease is no longer the
  /// task's: `Ok` with `ended: false` (the events written, the lines and the end event not).
  /// `Err`: the transaction did not commit, or its outcome is unknown (the connection was lost
  /// during it).
  async fn finish_task_with(
    &self,
    session_id: &str,
    task_id: &str,
    end: &TaskEnd,
    cli_cost_watermark: Option<f64>,
    with: &EndWith<'_>,
  ) -> Result<EndWritten>;
  /// Frees the lease a task kept past its end.
  async fn release_lease(&self, session_id: &str, task_id: &str) -> Result<()>;
  /// Marks `running` tasks whose holder is gone as `interrupted`; returns how many.
  async fn recover_interrupted(&self, is_alive: &(dyn Fn(u32) -> bool + Sync)) -> Result<u64>;
  /// Tasks of a session, oldest first.
  async fn list_tasks(&self, session_id: &str) -> Result<Vec<TaskRecord>>;
}

/// The context meter: model windows and compactions.
#[async_trait::async_trait]
pub trait Meter {
  /// The last context window reported for a model, if any.
  async fn window_for(&self, model: &str) -> Result<Option<u64>>;
  /// Compactions of a session, oldest first.
  async fn list_compactions(&self, session_id: &str) -> Result<Vec<Compaction>>;
}

/// The CLI's transcript kept in the store, for a store shared by several nodes (PostgreSQL); a
/// backend on one machine has none (the file is the conversation): [`Backend::transcripts`] is `None`.
#[async_trait::async_trait]
pub trait Transcripts: Send + Sync {
  /// The newest transcript `seq` stored for a session (0: none; always 0 on SQLite).
  async fn transcript_head(&self, session_id: &str) -> Result<i64>;
  /// Appends transcript lines for a task, fenced by its lease; false when it lost the lease.
  async fn append_transcript(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool>;
  /// Appends lines a task's CLI wrote after the task ended, unless another task took the
  /// session's lease since; false then.
  async fn append_transcript_after_end(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool>;
  /// [`Transcripts::append_transcript_after_end`] and [`Tasks::release_lease`] in one round trip:
  /// the lines a task's CLI wrote as it exited, and the lease the task kept freed; false, writing
  /// nothing, when another task took the session since.
  async fn append_and_release(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool>;
  /// A session's stored transcript lines after `after` (0: all), in order (none on SQLite).
  async fn load_transcript(&self, session_id: &str, after: i64) -> Result<Vec<TranscriptEntry>>;
  /// How many lines of one transcript file of a session are stored.
  async fn transcript_len(&self, session_id: &str, subpath: &str) -> Result<i64>;
  /// The bytes of every stored transcript line of a session (what `load_transcript(id, 0)`
  /// returns), to refuse a load that would not fit before it is made.
  async fn transcript_bytes(&self, session_id: &str) -> Result<i64>;
}

/// The CLI's file-checkpoint backups of a session kept in the store with its transcript (a store
/// shared by several nodes), so that a rewind with files works on any node
/// (`sessions/checkpoints.rs`). The names and contents are the agent's: untrusted.
#[async_trait::async_trait]
pub trait FileBackups: Send + Sync {
  /// The stored backups of a session: name and size in bytes.
  async fn file_backup_sizes(&self, session_id: &str) -> Result<Vec<(String, i64)>>;
  /// Stores one backup for `task_id`, fenced like the transcript: false, writing nothing, when
  /// another task took the session's lease since. A name already stored is kept.
  async fn put_file_backup(&self, session_id: &str, task_id: &str, name: &str, content: &[u8]) -> Result<bool>;
  /// Every stored backup of a session: name and content.
  async fn load_file_backups(&self, session_id: &str) -> Result<Vec<(String, Vec<u8>)>>;
}

/// Permission answers and messages forwarded to the process running a task (`store/inbox.rs`).
#[async_trait::async_trait]
pub trait Inbox {
  /// The task's manager starts reading its inbox (`inbox.rs`): it takes steering messages and
  /// answers to its permission requests from other processes and nodes.
  async fn inbox_open(&self, session_id: &str, task_id: &str) -> Result<()>;
  /// The task's manager stops reading its inbox: its pending requests go, messages not yet
  /// handled are refused.
  async fn inbox_close(&self, session_id: &str, task_id: &str) -> Result<()>;
  /// Records a permission request of the task as pending.
  async fn inbox_ask(&self, session_id: &str, task_id: &str, request_id: &str) -> Result<()>;
  /// A permission request is settled: no longer pending.
  async fn inbox_forget(&self, session_id: &str, request_id: &str) -> Result<()>;
  /// Writes the answer (JSON) to a pending request not yet answered; false when there is none.
  async fn inbox_answer(&self, session_id: &str, request_id: &str, answer: &str) -> Result<bool>;
  /// Leaves a message for the session's watched running task: its id, or `None` when none runs.
  async fn inbox_send(&self, session_id: &str, text: &str) -> Result<Option<i64>>;
  /// Where a message left by `inbox_send` is; its row goes once it is handled.
  async fn inbox_receipt(&self, id: i64) -> Result<Receipt>;
  /// What waits for a task: answers to its permission requests, messages not yet handled.
  async fn inbox_poll(&self, session_id: &str, task_id: &str) -> Result<Vec<Delivery>>;
  /// Records what became of a message not handled yet: steered into its task, refused, or past
  /// the task's limit (`Waiting` is recorded as refused).
  async fn inbox_mark(&self, id: i64, outcome: Receipt) -> Result<()>;
}

/// Which manager keeps an idle warm CLI of a session, so that another asks it to give it up.
#[async_trait::async_trait]
pub trait WarmHolds {
  /// This manager keeps an idle warm CLI of the session (`warm_holds.rs`), until `ttl` from now.
  async fn warm_hold(&self, session_id: &str, owner: &Owner, ttl: Duration) -> Result<()>;
  /// The manager's warm CLI of the session is gone.
  async fn warm_release(&self, session_id: &str, owner_id: &str) -> Result<()>;
  /// Extends every warm hold of the manager by `ttl` from now.
  async fn warm_renew(&self, owner_id: &str, ttl: Duration) -> Result<()>;
  /// The sessions whose warm CLI another manager wants this one to give up.
  async fn warm_wanted(&self, owner_id: &str) -> Result<Vec<String>>;
  /// Asks the other managers keeping a warm CLI of the session to give it up; how many are left.
  async fn warm_elsewhere(&self, session_id: &str, owner_id: &str, is_alive: &(dyn Fn(u32) -> bool + Sync)) -> Result<u64>;
}

/// Spend caps and the ledger of model calls (`store/budgets.rs`).
#[async_trait::async_trait]
pub trait Budgets {
  /// Checks every spend cap that applies to a model call against its reserve and records the
  /// call at its reserve, atomically (`budgets.rs`).
  async fn admit_call(&self, call: &CallAdmit<'_>, defaults: &BudgetDefaults) -> Result<Admit>;
  /// Whether any spend cap applies to a model call (a stored one on its user, its user's project,
  /// its project or its session's lineage, or a default): a read that takes no lock. Only whom the
  /// call is charged to is read, not its model or reserve: it is asked before the request is read.
  /// A call no cap applies to cannot be refused, so it is recorded with [`Budgets::record_call`]
  /// while it is forwarded instead of admitted before.
  async fn call_capped(&self, call: &CallAdmit<'_>, defaults: &BudgetDefaults) -> Result<bool>;
  /// Records a call at its reserve without checking any cap (one no cap applied to); its id.
  async fn record_call(&self, call: &CallAdmit<'_>) -> Result<i64>;
  /// Records what an admitted call really cost.
  async fn settle_call(&self, id: i64, model: &str, t: &CallTokens, usd: f64) -> Result<()>;
  /// Sets (or replaces) a spend cap.
  async fn set_budget(&self, k: &BudgetKey, usd: f64, period: Option<&str>) -> Result<()>;
  /// A stored spend cap with its scope's spend in the current period.
  async fn get_budget(&self, k: &BudgetKey) -> Result<Option<Budget>>;
  /// What a scope spent in the current `period`, and when that period started.
  async fn spent_in(&self, k: &BudgetKey, period: Option<&str>) -> Result<(f64, i64)>;
  /// Deletes a spend cap; whether there was one.
  async fn delete_budget(&self, k: &BudgetKey) -> Result<bool>;
  /// The ledger of model calls summed by day, model or session.
  async fn usage_report(&self, q: &UsageQuery) -> Result<Vec<UsageRow>>;
  /// Moves the clock the spend caps read (period starts and the ledger's call times) by `ms`
  /// from the database clock: how tests roll a period over without waiting for it.
  fn shift_budget_clock(&self, ms: i64);
}

/// The durable log of a session's task events (`store/events.rs`), and the task's stop requests.
#[async_trait::async_trait]
pub trait Events {
  /// Appends a task's events (JSON text, in order) to its session's log, numbered right after
  /// the session's last number; returns the last. PostgreSQL rings its doorbell (`pg_notify`,
  /// session and number only) in the same transaction, SQLite writes its ring there.
  async fn append_events(&self, session_id: &str, task_id: &str, events: &[String]) -> Result<i64>;
  /// Up to `limit` events of the session after `after`, in order.
  async fn read_events(&self, session_id: &str, after: i64, limit: u32) -> Result<Vec<EventRow>>;
  /// The number of the first event of a task still in its session's log, if any.
  async fn task_first_seq(&self, session_id: &str, task_id: &str) -> Result<Option<i64>>;
  /// The first number still in the log (the last plus one when none is) and the last one given.
  async fn event_bounds(&self, session_id: &str) -> Result<EventBounds>;
  /// Deletes the events of tasks that ended more than `retention` ago; returns how many.
  async fn sweep_events(&self, retention: Duration) -> Result<u64>;
  /// The task running on the session (its row `running`, its lease live), if any.
  async fn running_task(&self, session_id: &str) -> Result<Option<RunningTask>>;
  /// Records a request to stop the session's running task and rings the doorbell;
  /// the task, or `None` when none runs.
  async fn request_abort(&self, session_id: &str) -> Result<Option<RunningTask>>;
  /// Whether a stop was requested for the task.
  async fn abort_requested(&self, task_id: &str) -> Result<bool>;
}

/// The store's doorbell across processes and nodes (`store/doorbell.rs`).
#[async_trait::async_trait]
pub trait Doorbell {
  /// Rings for `notice` in every other process and node sharing the store (PostgreSQL
  /// `NOTIFY`; SQLite: a row of `notices`).
  async fn ring(&self, notice: &Notice) -> Result<()>;
}

/// Where a session branches (`fork` at a message, `rewind`): one row per session with a branch point.
#[async_trait::async_trait]
pub trait Branches {
  /// The session's branch point, if any.
  async fn branch_point(&self, session_id: &str) -> Result<Option<BranchPoint>>;
  /// Records (replaces) the session's branch point.
  async fn set_branch_point(&self, session_id: &str, b: &BranchPoint) -> Result<()>;
  /// A run continued from `resume_at`: the pending point is cleared, unless a newer one replaced it.
  async fn clear_resume(&self, session_id: &str, resume_at: &str) -> Result<()>;
  /// The user's sessions forked from `parent_id`, with the message each forked at, oldest first.
  async fn forks_of(&self, parent_id: &str, user_id: &str) -> Result<Vec<(String, Option<String>)>>;
}

/// A whole backend: every concern, and the transcripts when it keeps them.
#[async_trait::async_trait]
pub trait Backend: Sessions + Tasks + Meter + Inbox + WarmHolds + Budgets + Events + Branches + Doorbell + Send + Sync {
  /// The schema version of the open store.
  async fn schema_version(&self) -> Result<i64>;
  /// The transcripts the store keeps for other nodes; `None` on a backend for one machine, where
  /// the CLI's transcript file is the conversation (the manager does not mirror then).
  fn transcripts(&self) -> Option<&dyn Transcripts>;
  /// The file-checkpoint backups the store keeps with the transcripts (`None` where it keeps no
  /// transcripts).
  fn file_backups(&self) -> Option<&dyn FileBackups>;
  /// Which backend this is: `sqlite`, `postgres`.
  fn name(&self) -> &'static str;
  /// A new session and its first task's start ([`Tasks::start_task`]) in one step where the
  /// backend can (PostgreSQL: the session's row goes out with the start, one round trip less). An
  /// id in use or retired is refused as [`Sessions::create_session`] refuses it, and nothing starts.
  async fn create_and_start(&self, new: &NewSession, start: &TaskStart<'_>) -> Result<Start> {
    self.create_session(new).await?;
    self.start_task(&new.id, &new.user_id, start).await
  }
}
