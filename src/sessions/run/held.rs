//! A session held for one run: what the run took ([`super::acquire`]) and gives back, in one
//! place ([`HeldRun::settle`]): the in-process queue's guard, the concurrency slot, the lease and
//! its renewal, the run's entry among the running tasks (what `close()` waits for), the
//! `finishing` mark while its CLI exits after the result, and the transcript mirror.
//!
//! Each of these is a value that gives itself back when dropped, so a run that ends early (an
//! error, a dropped future) leaves nothing behind; `settle` only decides *when*: the task settles
//! at the CLI's result, and the session stays held until the CLI has exited, so the next task on
//! it starts only after this CLI is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{watch, OwnedMutexGuard, OwnedSemaphorePermit};

use super::{AbortOnDrop, Executed, Manager, TaskResult, Ticket};
use crate::cli::RunOutcome;
use crate::cli::{CancelToken, RunSpec, SessionMode};
use crate::error::{Error, ErrorCode, Result};
use crate::sessions::events::Taken;
use crate::sessions::finish::EndRecorded;
use crate::sessions::mirror::{finish_mirror, release_after_exit, LeaseClock, TakenLines, TaskMirror};
use crate::sessions::{CompactTrigger, Wait};
use crate::store::{Began, Session, TaskEnd};

/// A run that holds its session (see the module's comment).
pub(crate) struct HeldRun {
  /// The session as read with the lease.
  pub(crate) session: Session,
  pub(crate) task_id: String,
  /// When the run was asked for.
  pub(crate) queued: Instant,
  pub(crate) threshold: f64,
  /// The compaction trigger to record instead of the CLI's own label.
  pub(crate) trigger: Option<CompactTrigger>,
  /// When the lease stops being this run's; it stops the CLI then.
  pub(crate) clock: LeaseClock,
  cancel: CancelToken,
  /// The concurrency slot, until an executor takes it.
  permit: Option<OwnedSemaphorePermit>,
  /// PostgreSQL: the CLI's transcript mirrored into the store while it runs.
  mirror: Option<TaskMirror>,
  /// `None` once given to the work that waits for the CLI's exit.
  holds: Option<Holds>,
  /// What the start read in its trip to the store (the transcript head, the warm holds left).
  began: Began,
  /// The CLI started while the lease was asked for, until the executor takes it.
  early: Option<super::early::Early>,
}

/// What keeps the session this run's, given back in field order: the renewal stops, the run
/// leaves the running tasks, then the next run in line may go.
struct Holds {
  renew: AbortOnDrop,
  running: Running,
  guard: OwnedMutexGuard<()>,
}

/// The run's entry among the manager's running tasks (between start and the CLI's exit).
struct Running {
  map: Arc<Mutex<HashMap<String, CancelToken>>>,
  task_id: String,
}

impl Drop for Running {
  fn drop(&mut self) {
    self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.task_id);
  }
}

/// The session's mark while its CLI exits after the task settled, or a prewarmed CLI runs its
/// warm-up: a task queued behind it waits past its queue timeout then (the caller sees no task
/// running).
pub(crate) struct Finishing {
  map: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>,
  session_id: String,
  _exiting: watch::Sender<()>,
}

impl Finishing {
  pub(crate) fn mark(map: Arc<Mutex<HashMap<String, watch::Receiver<()>>>>, session_id: &str) -> Finishing {
    let (tx, rx) = watch::channel(());
    map.lock().unwrap_or_else(|p| p.into_inner()).insert(session_id.to_owned(), rx);
    Finishing { map, session_id: session_id.to_owned(), _exiting: tx }
  }
}

impl Drop for Finishing {
  fn drop(&mut self) {
    self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.session_id);
  }
}

/// A session's entry in `Manager::handed_over` while its last task's kept lease is released:
/// the next task here may take that lease over meanwhile.
struct HandedOver {
  map: Arc<Mutex<HashMap<String, String>>>,
  session_id: String,
  task_id: String,
}

impl HandedOver {
  fn mark(map: Arc<Mutex<HashMap<String, String>>>, session_id: &str, task_id: &str) -> HandedOver {
    map.lock().unwrap_or_else(|p| p.into_inner()).insert(session_id.to_owned(), task_id.to_owned());
    HandedOver { map, session_id: session_id.to_owned(), task_id: task_id.to_owned() }
  }

  /// The release failed: the store still has the lease as the task's, until it expires. The entry
  /// stays for the lease's life (`ttl` at most), so that the next task here takes the lease over
  /// instead of waiting it out (that task's start removes it), and the release is tried again
  /// meanwhile ([`RELEASE_RETRIES`]) for other processes, which cannot take it over.
  fn keep_for(self, ttl: std::time::Duration, store: Arc<crate::store::Store>) {
    let until = tokio::time::Instant::now() + ttl;
    tokio::spawn(async move {
      for wait in RELEASE_RETRIES {
        tokio::time::sleep_until((tokio::time::Instant::now() + wait).min(until)).await;
        // Expired, or taken over by a task here: nothing left to release.
        if tokio::time::Instant::now() >= until || !self.offered() {
          return;
        }
        let (sid, tid) = (self.session_id.clone(), self.task_id.clone());
        if store.call(Wait::Blocking, async move |st| st.release_lease(&sid, &tid).await).await.is_ok() {
          return;
        }
      }
      tokio::time::sleep_until(until).await;
    });
  }

  /// Whether the entry is still this one (no task here took the lease over since).
  fn offered(&self) -> bool {
    self.map.lock().unwrap_or_else(|p| p.into_inner()).get(&self.session_id) == Some(&self.task_id)
  }
}

/// The waits before each new try of a kept lease's release that failed.
const RELEASE_RETRIES: [std::time::Duration; 3] =
  [std::time::Duration::from_secs(1), std::time::Duration::from_secs(5), std::time::Duration::from_secs(20)];

impl Drop for HandedOver {
  fn drop(&mut self) {
    withdraw(&self.map, &self.session_id, &self.task_id);
  }
}

/// Removes the session's entry from `Manager::handed_over` if it still names `task_id` (a later
/// task's entry stays).
pub(super) fn withdraw(map: &Mutex<HashMap<String, String>>, session_id: &str, task_id: &str) {
  let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
  if map.get(session_id).is_some_and(|t| t == task_id) {
    map.remove(session_id);
  }
}

impl HeldRun {
  /// The session is the run's: it joins the running tasks and its lease is renewed from now on.
  /// The lease is the task's until the start of its last renewal plus the TTL (minus a margin);
  /// past that, or once a renewal is refused, the CLI is stopped (see `LeaseClock`).
  pub(super) fn new(
    m: &Manager,
    t: &Ticket<'_>,
    session: Session,
    taken_at: Instant,
    guard: OwnedMutexGuard<()>,
    permit: OwnedSemaphorePermit,
  ) -> HeldRun {
    let cancel = t.cancel.clone();
    m.running.lock().unwrap_or_else(|p| p.into_inner()).insert(t.task_id.clone(), cancel.clone());
    let running = Running { map: m.running.clone(), task_id: t.task_id.clone() };
    let clock = LeaseClock::new(taken_at, m.cfg.lease_ttl, cancel.clone());
    let renew = AbortOnDrop(tokio::spawn(clock.clone().renew_loop(m.store.clone(), session.id.clone(), t.task_id.clone())));
    HeldRun {
      session,
      task_id: t.task_id.clone(),
      queued: t.queued,
      threshold: t.threshold,
      trigger: t.trigger,
      clock,
      cancel,
      permit: Some(permit),
      mirror: None,
      holds: Some(Holds { renew, running, guard }),
      began: Began::default(),
      early: None,
    }
  }

  /// The session's branch point, when the task's start read it.
  pub(super) fn branch_point(&mut self) -> Option<Option<crate::store::BranchPoint>> {
    self.began.branch_point.take()
  }

  /// With what the task's start read in the same trip ([`Began`]; its session is the run's), and
  /// the CLI started meanwhile.
  pub(super) fn with(mut self, began: Began, early: Option<super::early::Early>) -> HeldRun {
    self.began = began;
    self.early = early;
    self
  }

  /// The CLI started while the lease was asked for, for the executor.
  pub(super) fn take_early(&mut self) -> Option<super::early::Early> {
    self.early.take()
  }

  /// The concurrency slot, for the executor.
  pub(super) fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
    self.permit.take()
  }

  /// Before the CLI starts: how it picks the session up; one CLI per session (an idle warm one
  /// kept by another manager goes first); on PostgreSQL this node's copy of the conversation made
  /// the store's, and the CLI's transcript mirrored into the store while it runs (`spec.mirror`).
  pub(super) async fn prepare(&mut self, m: &Manager, spec: &mut RunSpec) -> Result<SessionMode> {
    let mode = m.session_mode(&self.session).await?;
    if self.began.warm_left != Some(0) {
      m.others_gone(&self.session.id, &self.cancel).await?;
    }
    if m.store.shares_transcripts() {
      let tm = m.start_mirror(&self.session, &self.task_id, &mode, &self.clock, self.began.transcript_head).await?;
      spec.mirror = Some(tm.tx.clone());
      self.mirror = Some(tm);
    }
    Ok(mode)
  }

  /// Records the run's end and gives back what it held: now when the CLI is gone, else (the CLI
  /// exits after its result) once it has exited, while the caller already has the result.
  /// `events` are the run's events its log's writer had not written yet: stored with the end
  /// when they can be, else given back to the writer. Answers whether the `task_end` event is
  /// logged too.
  pub(super) async fn settle(mut self, m: &Manager, executed: Executed, events: Taken) -> (Result<TaskResult>, bool) {
    let (mut outcome, tail) = match executed {
      Ok((out, tail)) => (Ok(out), tail),
      Err(e) => (Err(e), None),
    };
    // The turn is in the store before the caller sees the result (or the task says why not):
    // stored with the end when the CLI is still exiting, else flushed first (the reconcile of
    // the CLI's file follows).
    let mut lines = None;
    if let (Some(mirror), Ok(_)) = (&self.mirror, &outcome) {
      let taken = match tail {
        Some(_) => mirror.take().await.map(Some),
        None => mirror.flush().await.map(|()| None),
      };
      match taken {
        Ok(taken) => lines = taken,
        Err(why) if !self.clock.is_lost() => outcome = Err(Error::store(why)),
        Err(_) => {}
      }
    }
    let local = self.mirror.as_ref().and_then(|mirror| mirror.local.clone());
    let marker = m.marker_path(&self.session.id);
    if self.clock.is_lost() {
      // The CLI is being stopped (the clock cancelled the run); nothing more is written for it.
      drop(lines);
      events.write().await;
      if let Some(tail) = tail {
        tail.await;
      }
      return (Ok(self.lease_lost(m).await), false);
    }
    let Some(tail) = tail else {
      if let (Some(mirror), Some(local)) = (self.mirror.take(), local) {
        finish_mirror(mirror, m.store.clone(), self.session.id.clone(), local, marker).await;
      }
      if self.clock.is_lost() {
        events.write().await;
        return (Ok(self.lease_lost(m).await), false);
      }
      let guard = self.holds.take().map(Holds::stop);
      let ended = self.record_end_with(m, outcome, false, None, events).await;
      drop(guard);
      return ended;
    };
    let (res, logged) = self.record_end_with(m, outcome, true, lines, events).await;
    // If the end could not be recorded, the row is still `running`: leave the lease to expire,
    // and the next task marks it `interrupted` (as after a crash).
    let recorded = res.is_ok();
    let finishing = Finishing::mark(m.finishing.clone(), &self.session.id);
    let (store, sid, tid, ttl) = (m.store.clone(), self.session.id.clone(), self.task_id.clone(), m.cfg.lease_ttl);
    let (mirror, holds, permit, handed_over) = (self.mirror.take(), self.holds.take(), self.permit.take(), m.handed_over.clone());
    tokio::spawn(async move {
      tail.await;
      let release = recorded && holds.is_some();
      let (mut holds, mut finishing, mut permit) = (holds, Some(finishing), permit);
      let (mut still_running, mut handed) = (None, None);
      // Once the store holds everything the CLI wrote: the next run in line goes, and may take
      // the kept lease over instead of waiting for its release (`TaskStart::after`); this run
      // stays among the running tasks (what `close()` waits for) until the release is sent.
      let hand_over = || {
        handed = Some(HandedOver::mark(handed_over, &sid, &tid));
        drop(finishing.take());
        drop(permit.take());
        still_running = holds.take().map(Holds::hand_over);
      };
      let released = release_after_exit(mirror.zip(local), store.clone(), sid.clone(), tid.clone(), marker, release, hand_over).await;
      if let (false, Some(h)) = (released, handed.take()) {
        h.keep_for(ttl, store);
      }
      if let Some(Holds { renew, running, guard }) = holds {
        drop(renew);
        drop(running);
        drop(finishing);
        drop(guard);
      }
      drop(permit);
      drop(handed);
      drop(still_running);
    });
    (res, logged)
  }

  /// The run's end with its last transcript lines (when its CLI is still exiting, the lease
  /// kept) and events, in one step; when that step fails, one after another: the lines flushed
  /// (the turn in the store before the result), the events written by their writer, then the end.
  async fn record_end_with(
    &self,
    m: &Manager,
    outcome: Result<RunOutcome>,
    keep_lease: bool,
    lines: Option<TakenLines>,
    events: Taken,
  ) -> (Result<TaskResult>, bool) {
    let ending = m.ending(self, outcome, keep_lease);
    let had_lines = lines.is_some();
    match m.record_end_with(self, &ending, lines, events).await {
      EndRecorded::All => (Ok(ending.res), true),
      EndRecorded::Refused(e) => (Err(e), false),
      EndRecorded::Failed => {
        let flushed = match (&self.mirror, had_lines) {
          (Some(mirror), true) => mirror.flush().await,
          _ => Ok(()),
        };
        let ending = match flushed {
          Ok(()) => ending,
          Err(why) => m.ending(self, Err(Error::store(why)), keep_lease),
        };
        (m.record_end(self, ending).await, false)
      }
    }
  }

  /// The run's cancel token: cancelled when the lease stops being the run's.
  pub(crate) fn cancel(&self) -> &CancelToken {
    &self.cancel
  }

  /// Ends a run that called no model (a `rewind` with files): its row is ended (`succeeded`, or
  /// `failed` with `failed`'s code), the session's totals untouched, fenced like a task's end, and
  /// what it held is given back. `LEASE_LOST` when the lease stopped being the run's meanwhile.
  pub(crate) async fn release(mut self, m: &Manager, failed: Option<&Error>) -> Result<()> {
    let guard = self.holds.take().map(Holds::stop);
    let lost = self.clock.is_lost();
    let end = match (lost, failed) {
      (true, _) => TaskEnd {
        status: "interrupted".into(),
        error_code: Some(ErrorCode::LeaseLost.as_str().into()),
        error_message: Some("the session's lease was lost while the working directory was restored".into()),
        ..Default::default()
      },
      (false, Some(e)) => TaskEnd {
        status: "failed".into(),
        error_code: Some(e.code.as_str().into()),
        error_message: Some(e.message.clone()),
        ..Default::default()
      },
      (false, None) => TaskEnd { status: "succeeded".into(), ..Default::default() },
    };
    let end = TaskEnd { record_only: true, ..end };
    let (sid, tid) = (self.session.id.clone(), self.task_id.clone());
    let recorded = m.store.call(Wait::Blocking, async move |s| s.finish_task(&sid, &tid, &end, None).await).await;
    drop(guard);
    if lost {
      return Err(Error::new(
        ErrorCode::LeaseLost,
        "this node lost the session's lease while it restored the working directory (another node took the session over)",
      ));
    }
    recorded
  }

  /// The run lost the session's lease: the mirror and the renewal stop, and the end is recorded
  /// as lost (see `Manager::finish_lease_lost`).
  async fn lease_lost(mut self, m: &Manager) -> TaskResult {
    drop(self.mirror.take());
    let guard = self.holds.take().map(Holds::stop);
    let res = m.finish_lease_lost(&self).await;
    drop(guard);
    res
  }
}

impl Holds {
  /// The session given to the next run in line (which may take the kept lease over): the
  /// renewal stops and the place in line is given up; the run's entry among the running tasks
  /// is returned, for the caller to keep until the release is sent.
  fn hand_over(self) -> Running {
    let Holds { renew, running, guard } = self;
    drop(renew);
    drop(guard);
    running
  }

  /// The renewal stops and the run leaves the running tasks; the session's place in line is
  /// returned (kept until the end is recorded).
  fn stop(self) -> OwnedMutexGuard<()> {
    let Holds { renew, running, guard } = self;
    drop(renew);
    drop(running);
    guard
  }
}

impl Manager {
  /// PostgreSQL, once the lease is the task's: this node's copy of the transcript the CLI will
  /// read refreshed from the store, and the writer that mirrors the CLI's lines into it.
  /// `head`: the session's transcript head, when the task's start read it (the lease is this
  /// task's since: no one moves it).
  async fn start_mirror(
    &self,
    session: &Session,
    task_id: &str,
    mode: &SessionMode,
    clock: &LeaseClock,
    head: Option<i64>,
  ) -> Result<TaskMirror> {
    // A warm process that may take the task wrote this node's copy itself, and reads only its own.
    let refreshed = match self.warm.fresh_for(&session.id, session.task_count) {
      false => self.refresh_for(session, mode, head).await?.or(head),
      true => head,
    };
    // The head the start or the refresh read, else read now.
    let head = match refreshed {
      Some(head) => head,
      None => {
        let sid = session.id.clone();
        self.store_call(Wait::Blocking, async move |s| s.shared_transcripts()?.transcript_head(&sid).await).await?
      }
    };
    // The local copy as the CLI will find it (just refreshed from the store when it was behind).
    let local = self.transcript_of(session).ok().flatten();
    let mut tm = TaskMirror::start(self.store.clone(), &session.id, task_id, head, local, clock.clone(), false);
    tm.max_bytes = self.cfg.max_transcript_bytes;
    Ok(tm)
  }
}
