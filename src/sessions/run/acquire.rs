//! Taking a session for one run, in three steps, each within what is left of the run's queue
//! timeout and given up on cancel: the in-process queue (arrival order), a concurrency slot
//! (`maxConcurrentTasks`), then the cross-process lease (one task per session across processes,
//! `maxConcurrentTasksTotal` across the database). Time spent behind a CLI that is exiting after
//! its task settled does not count against the timeout (the caller saw no task running then).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit};

use super::{EventSink, HeldRun, Manager, TaskResult};
use crate::cli::{CancelToken, CliArgs, RunSpec};
use crate::context;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{Began, NewSession, Session, Start, TaskStart};

use super::super::{CompactTrigger, TaskError, TaskKind, Wait};

/// A run waiting for its session: what each step of [`Manager::acquire`] reads.
pub(crate) struct Ticket<'a> {
  pub(crate) session: &'a Session,
  pub(crate) task_id: String,
  pub(crate) kind: TaskKind,
  pub(crate) model: String,
  pub(crate) queue_timeout: Duration,
  /// When the run was asked for.
  pub(crate) queued: Instant,
  pub(crate) threshold: f64,
  pub(crate) trigger: Option<CompactTrigger>,
  pub(crate) cancel: &'a CancelToken,
  pub(crate) sink: &'a Option<EventSink>,
  /// A new session not stored yet: stored with the first attempt at the lease.
  pub(crate) create: Option<&'a NewSession>,
  /// Whether `create` is stored.
  pub(crate) created: AtomicBool,
  /// What to start the run's CLI with while the lease is asked for (`run::early`), if it may be.
  pub(crate) early: Option<(&'a CliArgs, &'a RunSpec)>,
}

/// A step's end: what it took, or `None` when the run was aborted while it waited.
type Step<T> = Result<Option<T>>;

impl Ticket<'_> {
  fn busy(&self) -> Error {
    let ms = self.queue_timeout.as_millis();
    Error::new(ErrorCode::SessionBusy, format!("session {} is running another task; waited {ms} ms", self.session.id))
  }

  fn no_slot(&self, what: String) -> Error {
    Error::new(ErrorCode::SessionBusy, format!("no free task slot ({what}) within {} ms", self.queue_timeout.as_millis()))
  }
}

impl Manager {
  /// Takes the session for a run: `Ok(Err(result))` when the run was aborted while it waited (no
  /// task row: it never started).
  pub(crate) async fn acquire(&self, t: &Ticket<'_>) -> Result<std::result::Result<HeldRun, TaskResult>> {
    let taken = self.take_session(t).await;
    // A new session whose run ended before its first attempt at the lease (aborted, or no slot
    // in time) is stored now, as it would have been before its task. Best effort: a closed
    // manager's store refuses the call, and the run's own outcome is what the caller gets.
    if let (Some(new), false) = (t.create, t.created.load(Ordering::SeqCst)) {
      let new = new.clone();
      let _ = self.store_call(Wait::Briefly, async move |s| s.create_session(&new).await).await;
    }
    taken
  }

  /// [`Self::acquire`]'s three steps.
  async fn take_session(&self, t: &Ticket<'_>) -> Result<std::result::Result<HeldRun, TaskResult>> {
    let Some(guard) = self.queue(t).await? else { return Ok(Err(self.aborted_in_queue(t))) };
    // The run before here may have left its kept lease to take over.
    let after = self.handed_over.lock().unwrap_or_else(|p| p.into_inner()).get(&t.session.id).cloned();
    let Some(permit) = self.slot(t).await? else { return Ok(Err(self.aborted_in_queue(t))) };
    // With the session's place in line and a slot, the CLI can start while the store is asked for
    // the lease; it is given its prompt only once the session is held.
    let mut early = match t.early {
      Some((cli, spec)) if !t.cancel.is_cancelled() && !self.early_paused.load(Ordering::SeqCst) => {
        self.start_early(t.session, cli, spec).await
      }
      _ => None,
    };
    let (mut began, taken_at) = match self.lease(t, after.as_deref(), &mut early).await {
      Ok(Some(taken)) => taken,
      not_taken => {
        if let Some(e) = early {
          e.discard().await;
        }
        not_taken?;
        return Ok(Err(self.aborted_in_queue(t)));
      }
    };
    // The kept lease is taken over or gone: its entry is done with (one kept past a failed release
    // goes here, or when the lease has expired).
    if let Some(after) = after {
      super::held::withdraw(&self.handed_over, &t.session.id, &after);
    }
    // Once the lease is ours, the session is read again (in the same trip to the store): a task
    // that ran while this one waited (in this process or another) may have created its
    // transcript or moved its cost watermark.
    let session = began.session.take().unwrap_or_else(|| t.session.clone());
    Ok(Ok(HeldRun::new(self, t, session, taken_at, guard, permit).with(began, early)))
  }

  /// The in-process queue, in arrival order (the lock future is kept, so its place in line too).
  async fn queue(&self, t: &Ticket<'_>) -> Step<OwnedMutexGuard<()>> {
    let lock = self.session_lock(&t.session.id);
    let mut acquire = std::pin::pin!(lock.lock_owned());
    // The first poll takes the task's place in line; only then is the caller told it is queued,
    // so that a request sent on seeing `task_queued` always queues behind this one (the event
    // reaches JavaScript on its own thread, while this worker may not have polled yet).
    let mut first = Some(std::future::poll_fn(|cx| Poll::Ready(acquire.as_mut().poll(cx))).await);
    if let Some(s) = t.sink {
      s(json!({ "type": "task_queued", "sessionId": t.session.id }));
    }
    let mut deadline = tokio::time::Instant::now() + t.queue_timeout;
    loop {
      if let Some(Poll::Ready(g)) = first.take() {
        return Ok(Some(g));
      }
      tokio::select! {
        g = &mut acquire => return Ok(Some(g)),
        _ = tokio::time::sleep_until(deadline) => {
          if self.finishing.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&t.session.id) {
            deadline = tokio::time::Instant::now() + Duration::from_millis(20);
          } else {
            return Err(t.busy());
          }
        }
        _ = t.cancel.cancelled() => return Ok(None),
      }
    }
  }

  /// A concurrency slot, within what is left of the queue timeout; no task row exists yet, so a
  /// task waiting here is not `running` and does not hold the session against deletion.
  async fn slot(&self, t: &Ticket<'_>) -> Step<OwnedSemaphorePermit> {
    if let Ok(p) = self.slots.clone().try_acquire_owned() {
      return Ok(Some(p));
    }
    let left = t.queue_timeout.saturating_sub(t.queued.elapsed());
    tokio::select! {
      p = tokio::time::timeout(left, self.slots.clone().acquire_owned()) => match p {
        Ok(Ok(p)) => Ok(Some(p)),
        Ok(Err(_)) => Err(Error::new(ErrorCode::Closed, "the manager was closed")),
        Err(_) => Err(t.no_slot(format!("maxConcurrentTasks {} in this process", self.cfg.max_concurrent_tasks))),
      },
      _ = t.cancel.cancelled() => Ok(None),
    }
  }

  /// The cross-process lease, with the session as read in the same trip to the store, and when
  /// the attempt that took it started (the lease's clock starts there). Time spent behind another
  /// process's exiting CLI does not count against the queue timeout.
  async fn lease(&self, t: &Ticket<'_>, after: Option<&str>, early: &mut Option<super::early::Early>) -> Step<(Began, Instant)> {
    let mut excused = Duration::ZERO;
    let mut last = Instant::now();
    loop {
      if t.cancel.is_cancelled() {
        return Ok(None);
      }
      let taken_at = Instant::now();
      let exiting_elsewhere = match self.begin(t, after).await? {
        Ok(began) => {
          self.early_paused.store(false, Ordering::SeqCst);
          return Ok(Some((began, taken_at)));
        }
        Err(exiting) => exiting,
      };
      // A CLI does not wait for a lease; nor does the next one start before a start succeeds.
      self.early_paused.store(true, Ordering::SeqCst);
      if let Some(e) = early.take() {
        e.discard().await;
      }
      let now = Instant::now();
      if exiting_elsewhere == Some(true) {
        excused += now - last;
      }
      last = now;
      if t.queued.elapsed().saturating_sub(excused) >= t.queue_timeout {
        return Err(match exiting_elsewhere {
          Some(_) => t.busy(),
          None => t.no_slot(format!(
            "maxConcurrentTasksTotal {} across the processes sharing the database",
            self.cfg.max_concurrent_tasks_total.unwrap_or_default()
          )),
        });
      }
      tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        _ = t.cancel.cancelled() => return Ok(None),
      }
    }
  }

  /// One attempt at the lease: `Ok(the session read again, with what the run reads next)`, or
  /// `Err(Some(whether the holder's CLI is exiting after its task))` when another task holds the
  /// session, `Err(None)` when every place of `maxConcurrentTasksTotal` is taken, in this process
  /// or another. `after`: the task of this process whose kept lease the start may take over.
  async fn begin(&self, t: &Ticket<'_>, after: Option<&str>) -> Result<std::result::Result<Began, Option<bool>>> {
    let (sid, uid, tid, m, owner, ttl, max_running, kind) = (
      t.session.id.clone(),
      t.session.user_id.clone(),
      t.task_id.clone(),
      t.model.clone(),
      self.owner.clone(),
      self.cfg.lease_ttl,
      self.cfg.max_concurrent_tasks_total,
      t.kind.as_str().to_owned(),
    );
    let after = after.map(str::to_owned);
    // A new session's row goes with its first attempt (one step where the store can).
    let create = t.create.filter(|_| !t.created.load(Ordering::SeqCst)).cloned();
    let creating = create.is_some();
    let started = self
      .store_call(Wait::Briefly, async move |s| {
        let start = TaskStart { task_id: &tid, kind: &kind, model: &m, owner: &owner, ttl, max_running, after: after.as_deref() };
        let started = match &create {
          Some(new) => s.create_and_start(new, &start).await?,
          None => s.start_task(&sid, &uid, &start).await?,
        };
        Ok(match started {
          Start::Started(began) => Ok(*began),
          Start::SessionHeld { exiting } => Err(Some(exiting)),
          Start::Full => Err(None),
        })
      })
      .await;
    if creating && started.is_ok() {
      t.created.store(true, Ordering::SeqCst);
    }
    started
  }

  /// A task aborted before it got its session or a slot: no task row (it never started), and a
  /// result saying so.
  pub(crate) fn aborted_in_queue(&self, t: &Ticket<'_>) -> TaskResult {
    let msg = "the task was aborted while it waited for its session";
    let info = context::context_info(t.session.context.as_ref(), self.cfg.context_window, t.threshold, 0);
    let mut res = TaskResult::empty(t.session, &t.task_id, info);
    res.duration.total_ms = t.queued.elapsed().as_millis() as u64;
    res.error = Some(TaskError { code: ErrorCode::Aborted.as_str().into(), message: msg.into(), status: None, scope: None });
    res
  }
}
