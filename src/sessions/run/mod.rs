//! One run of the CLI on a session (a task or a compaction), as a sequence a newcomer can read:
//!
//! 1. [`acquire`]: the in-process queue (arrival order), a concurrency slot, the cross-process
//!    lease; the result is a [`HeldRun`] that owns all three (and the lease's renewal). A cold
//!    run's CLI is started while the lease is asked for ([`early`]), and waits for its prompt.
//! 2. [`HeldRun::prepare`]: how the CLI picks the session up, no other manager's idle CLI of it,
//!    and (PostgreSQL) the transcript mirror.
//! 3. An [`Executor`] runs the CLI: [`cold::Cold`] (a `-p` process per task: the one started early
//!    if it is the one the held session needs) or [`warm::Warm`] (a stream-json process kept
//!    across tasks); tests use a fake one.
//! 4. [`HeldRun::settle`]: the end recorded, and everything the run held given back in one place,
//!    after the CLI has exited.

mod acquire;
mod cold;
mod early;
mod held;
#[cfg(test)]
mod tests;
mod warm;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

pub(crate) use acquire::Ticket;
pub(crate) use cold::remove_per_process_files;
pub(crate) use held::{Finishing, HeldRun};

use super::{CompactTrigger, EventSink, Manager, TaskKind, TaskResult};
use crate::cli::{self, CancelToken, CliArgs, RunOutcome, RunSpec, TaskMeter};
use crate::error::Result;
use crate::store::{NewSession, Session};

/// How `run_locked` runs one CLI process.
pub(crate) struct RunOptions {
  /// `task` or `compact`, as the task row records it.
  pub(crate) kind: TaskKind,
  /// The CLI's flags; how it picks the session up is decided once the session is held.
  pub(crate) cli: CliArgs,
  pub(crate) include_partials: bool,
  pub(crate) threshold: f64,
  /// The compaction trigger to record instead of the CLI's own label.
  pub(crate) trigger: Option<CompactTrigger>,
  /// How long to wait for a busy session; default the manager's `queueTimeoutMs`.
  pub(crate) queue_timeout: Option<Duration>,
  /// The task's permission callback (`canUseTool`).
  pub(crate) can_use_tool: Option<cli::CanUseTool>,
  /// The session is new and not stored yet: its row is stored with the task's start (one step),
  /// or, if the run ends before it starts, then.
  pub(crate) create: Option<NewSession>,
}

/// A task handle aborted when dropped (the lease renewal: it must never outlive its task).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
  fn drop(&mut self) {
    self.0.abort();
  }
}

/// Work left after a task settled: the CLI's exit, then freeing what the task held.
pub(crate) type Tail = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What an executor hands back: the CLI's outcome, and its exit when that comes after the result.
pub(crate) type Executed = Result<(RunOutcome, Option<Tail>)>;

/// The parts of one run an executor needs, once the session is held.
pub(crate) struct Job<'a> {
  /// The session as read with the lease.
  pub(crate) session: &'a Session,
  pub(crate) task_id: &'a str,
  /// The CLI's flags, with how it picks the session up.
  pub(crate) cli: CliArgs,
  pub(crate) spec: RunSpec,
  pub(crate) sink: Option<EventSink>,
  pub(crate) cancel: &'a CancelToken,
  pub(crate) include_partials: bool,
  pub(crate) can_use_tool: Option<cli::CanUseTool>,
  /// What the key proxy meters for the task's model calls.
  pub(crate) meter: Arc<TaskMeter>,
  /// The run's concurrency slot: the executor gives it back when its CLI no longer runs.
  pub(crate) permit: Option<OwnedSemaphorePermit>,
  /// The CLI started while the lease was asked for ([`Executor::starts_early`]).
  pub(crate) early: Option<early::Early>,
}

/// How the CLI runs once the session is held: cold (a process per task) or warm (a process kept
/// across tasks). A boxed future, so that the run picks one at run time (and tests a fake).
pub(crate) trait Executor: Send {
  /// Whether the run's CLI may be started while its session is taken (`early`): only a CLI that
  /// reads nothing of the session before its prompt.
  fn starts_early(&self) -> bool {
    false
  }

  fn execute<'a>(self: Box<Self>, m: &'a Manager, job: Job<'a>) -> Pin<Box<dyn Future<Output = Executed> + Send + 'a>>;
}

impl Manager {
  /// Takes the session (in-process queue, then the cross-process lease, then a concurrency slot),
  /// runs the CLI and records the end.
  pub(crate) async fn run_locked(
    &self,
    session: &Session,
    spec: RunSpec,
    sink: Option<EventSink>,
    cancel: CancelToken,
    o: RunOptions,
  ) -> Result<TaskResult> {
    let warm = self.runs_warm(o.kind, o.can_use_tool.is_some(), o.cli.max_budget_usd.is_some());
    let executor: Box<dyn Executor> = if warm { Box::new(warm::Warm) } else { Box::new(cold::Cold) };
    self.run_with(executor, session, spec, sink, cancel, o).await
  }

  /// [`Self::run_locked`] with the executor given.
  pub(crate) async fn run_with(
    &self,
    executor: Box<dyn Executor>,
    session: &Session,
    mut spec: RunSpec,
    sink: Option<EventSink>,
    cancel: CancelToken,
    o: RunOptions,
  ) -> Result<TaskResult> {
    let RunOptions { kind, mut cli, include_partials, threshold, trigger, queue_timeout, can_use_tool, create } = o;
    let ticket = Ticket {
      session,
      task_id: uuid::Uuid::new_v4().to_string(),
      kind,
      model: cli.model.clone().unwrap_or_else(|| session.model.clone()),
      queue_timeout: queue_timeout.unwrap_or(self.cfg.queue_timeout),
      queued: Instant::now(),
      threshold,
      trigger,
      cancel: &cancel,
      sink: &sink,
      create: create.as_ref(),
      created: Default::default(),
      early: executor.starts_early().then_some((&cli, &spec)),
    };
    let mut run = match self.acquire(&ticket).await? {
      Ok(run) => run,
      Err(aborted_in_queue) => return Ok(aborted_in_queue),
    };
    // Every event from here on goes to the session's event log too; a stop request made
    // through another manager reaches this run.
    let recording = self.start_recording(&run.session.id, &run.task_id);
    let _stop_watch = self.watch_abort(&run.task_id, cancel.clone());
    let sink = Some(recorded(sink, recording.recorder.clone()));
    let mut branch = None;
    let prepared = match run.prepare(self, &mut spec).await {
      Ok(mode) => {
        let known = run.branch_point();
        self.continue_from(&run.session, mode, &mut cli, known).await.map(|at| branch = at)
      }
      Err(e) => Err(e),
    };
    let outcome = match prepared {
      Ok(()) => {
        let permit = run.take_permit();
        let early = run.take_early();
        let job = Job {
          session: &run.session,
          task_id: &run.task_id,
          cli,
          spec,
          sink,
          cancel: &cancel,
          include_partials,
          can_use_tool,
          meter: self.task_meter(&run.session, &run.task_id),
          permit,
          early,
        };
        executor.execute(self, job).await
      }
      Err(e) => {
        if let Some(early) = run.take_early() {
          early.discard().await;
        }
        Err(e)
      }
    };
    // The CLI ran from the branch point (or refused it for good): it is taken.
    if let (Some(at), true) = (branch, outcome.is_ok()) {
      self.branch_taken(&run.session.id, at).await;
    }
    // The CLI's events are in the log before the task's row ends; its end right after (all in
    // one step when they can be: see `HeldRun::settle`).
    let events = recording.recorder.take().await;
    let (sid, tid) = (run.session.id.clone(), run.task_id.clone());
    let (res, end_logged) = run.settle(self, outcome, events).await;
    if end_logged {
      return res;
    }
    recording.recorder.record(super::events::task_end_event(&sid, &tid, res.as_ref()));
    recording.recorder.flush().await;
    res
  }
}

/// The task's sink, recording every event it is given (and still giving it to `sink`).
fn recorded(sink: Option<EventSink>, log: super::events::Recorder) -> EventSink {
  Arc::new(move |ev: serde_json::Value| {
    if let Some(s) = &sink {
      s(ev.clone());
    }
    log.record(ev);
  })
}
