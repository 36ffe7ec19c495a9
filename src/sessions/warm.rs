//! Warm sessions: after a task, the session's CLI stays running (`warmIdleMs`), and the next task
//! on the session is one line on its stdin. The pool of idle processes, the checks that decide
//! whether one may be used, and the per-task budget a warm process cannot enforce itself.
//!
//! A warm process is used only when
//! - it was started with the argv and environment this task asks for (model, permission mode,
//!   tools, system prompt append, working directory, environment, permission prompts),
//! - no `CLAUDE.md` or settings file it read at start-up has changed since, and
//! - no task ran on the session since its last one, in this process or another: the session's
//!   `task_count`, read with the lease, must be the one it left behind. A task that ran
//!   elsewhere appended to the transcript this process does not see; using it would split the
//!   transcript into two branches. Such a process is killed (not closed: on stdin EOF it would
//!   append its stale metadata) and the task resumes cold from the transcript.
//!
//! On PostgreSQL a warm process runs with `--session-mirror`: each turn's frames go to that
//! task's mirror (stored under its lease before the task returns); frames printed between turns
//! wait for the next turn's mirror, and the ones printed as it closes are stored fenced by its
//! last task (`Store::append_transcript_after_end`). This node's copy of the transcript is not
//! rewritten from the store under a warm process that may take the task (`WarmPool::fresh_for`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::mirror::{mirror_supported, TaskMirror};
use super::prewarm::WarmUpCut;
use super::run::Job;
use super::slot::TaskSlot;
use super::{EventSink, Manager, SendMessageRequest, TaskKind, Wait};
use crate::cli::mirror::MirrorTx;
use crate::cli::stream::{Kind, Line};
use crate::cli::{self, CancelToken, CliArgs, RunOutcome, RunSpec, TaskToken, TurnOptions, WarmHandle, WarmProcess};
use crate::context;
use crate::error::{Error, ErrorCode, Result};
use crate::store::doorbell::wait_ring;
use crate::store::{Notice, Store};

/// How long a closing warm process gets between stdin EOF and SIGTERM.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long an interrupted turn gets to end before its process group is stopped.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// A warm process with what decides whether it may run the next task.
pub(crate) struct Warm {
  pub(super) proc: WarmProcess,
  /// The argv (without the session flags) and environment it was started with.
  pub(super) key: String,
  /// The session's `task_count` once its last task is recorded (a prewarmed process: when it
  /// started).
  pub(super) seen_tasks: u64,
  /// The memory and settings files the CLI read when it started (see [`config_stamp`]).
  pub(super) stamp: String,
  /// The key proxy's token the process uses: live only while a task runs on it, revoked when the
  /// process is gone.
  pub(super) token: Option<TaskToken>,
  /// Where its session lives, once it is kept (after a task, or prewarmed).
  pub(super) home: Option<Home>,
  /// A prewarmed process's warm-up, taken out of the transcript again if the process goes
  /// without a task (it writes the warm-up's last record as it exits).
  pub(super) warm_up: Option<WarmUpCut>,
}

/// What a kept process needs to close properly: its session in the store, the last task it ran,
/// and whether its transcript is mirrored into the store (PostgreSQL).
pub(super) struct Home {
  pub(super) store: Arc<Store>,
  pub(super) session_id: String,
  pub(super) user_id: String,
  /// `None` for a prewarmed process that has run no task yet: it is killed when it goes (it has
  /// nothing of the conversation to write).
  pub(super) last_task: Option<String>,
  pub(super) mirrored: bool,
  /// The manager's id, under which the store knows it keeps this CLI (`Store::warm_hold`).
  pub(super) owner_id: String,
}

impl Home {
  /// Whether a task ran on the session since this process's last one (in another process or
  /// node), read from the store; a store that cannot be read counts as yes.
  async fn stale(&self, seen_tasks: u64) -> bool {
    let (sid, uid) = (self.session_id.clone(), self.user_id.clone());
    !matches!(self.store.call(Wait::Briefly, async move |st| st.get_session(&sid, &uid).await).await, Ok(Some(s)) if s.task_count == seen_tasks)
  }

  /// The store no longer counts this manager as keeping a CLI of the session.
  async fn release(&self) {
    let (sid, owner) = (self.session_id.clone(), self.owner_id.clone());
    // A hold that cannot be deleted expires (it is renewed only while this CLI lives).
    if self.store.call(Wait::Briefly, async move |st| st.warm_release(&sid, &owner).await).await.is_ok() {
      // A task elsewhere may wait for it (`others_gone`).
      super::ring(&self.store, Notice::WarmReleased { session_id: self.session_id.clone() }).await;
    }
  }

  /// A mirror for what the process writes as it closes (PostgreSQL), fenced by its last task.
  async fn closing_mirror(&self) -> Option<TaskMirror> {
    let last_task = self.last_task.as_deref().filter(|_| self.mirrored)?;
    let sid = self.session_id.clone();
    let head = self.store.call(Wait::Briefly, async move |st| st.shared_transcripts()?.transcript_head(&sid).await).await.ok()?;
    Some(TaskMirror::after_end(self.store.clone(), &self.session_id, last_task, head))
  }
}

struct Idle {
  warm: Warm,
  last_used: Instant,
  generation: u64,
}

/// The idle warm processes of one manager, by session.
#[derive(Default)]
pub(crate) struct WarmPool {
  idle: Mutex<HashMap<String, Idle>>,
  /// Processes running a task (not in `idle`).
  in_use: AtomicU64,
  generation: AtomicU64,
  closed: std::sync::atomic::AtomicBool,
  /// Handles of the processes running a task, by session (steering, control requests).
  running: Mutex<HashMap<String, WarmHandle>>,
  /// Closings started in the background (idle timeout, eviction), awaited by `shutdown`.
  /// By session: a new CLI for the session starts only once its old one is gone.
  closing: Mutex<Vec<(String, tokio::task::JoinHandle<()>)>>,
  /// Whether the loop that renews this manager's warm holds and gives up wanted CLIs runs.
  watching: std::sync::atomic::AtomicBool,
  /// The prewarms running, by session.
  prewarms: Mutex<HashMap<String, Prewarm>>,
  /// Told when a prewarm ends (`notify_waiters`: a waiter takes its `notified()` before it
  /// looks).
  warmed: tokio::sync::Notify,
}

/// A prewarm running.
struct Prewarm {
  /// Stops it (`deleteSession` does).
  cancel: CancelToken,
  /// Its CLI runs its warm-up (until the prewarm ends).
  warming_up: bool,
}

/// A session's entry in [`WarmPool::prewarms`], until dropped.
pub(super) struct Prewarming<'a> {
  pool: &'a WarmPool,
  session_id: String,
}

impl Prewarming<'_> {
  /// The CLI runs its warm-up from now on: reads of the conversation wait for the prewarm's end.
  /// (The pool never takes the hold of a prewarm running for one left behind.)
  pub(super) fn warming_up(&self) {
    if let Some(p) = lock(&self.pool.prewarms).get_mut(&self.session_id) {
      p.warming_up = true;
    }
  }
}

impl Drop for Prewarming<'_> {
  fn drop(&mut self) {
    lock(&self.pool.prewarms).remove(&self.session_id);
    self.pool.warmed.notify_waiters();
  }
}

/// How often a manager keeping idle warm CLIs asks the store whether another one wants one of
/// their sessions without a ring (in case one went missing): it asks when the store's doorbell
/// rings for one of them (`store/doorbell.rs`).
const WANTED_POLL: Duration = super::events::SAFETY_POLL;
/// How often a task waiting for another manager to give up its warm CLI of the session looks
/// without a ring (holds of managers that died meanwhile go then).
const RELEASED_POLL: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
  m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WarmPool {
  /// Marks a prewarm of the session as running, stopped by `cancel` ([`Self::stop_prewarm`]).
  pub(super) fn prewarming(&self, session_id: &str, cancel: &CancelToken) -> Prewarming<'_> {
    lock(&self.prewarms).insert(session_id.to_owned(), Prewarm { cancel: cancel.clone(), warming_up: false });
    Prewarming { pool: self, session_id: session_id.to_owned() }
  }

  /// Stops the session's prewarm, if one runs, and waits for its end (its CLI gone, or kept if
  /// it was past stopping).
  pub(super) async fn stop_prewarm(&self, session_id: &str) {
    self
      .prewarms_until(|running| match running.get(session_id) {
        Some(p) => {
          p.cancel.cancel();
          false
        }
        None => true,
      })
      .await;
  }

  /// Returns once no warm-up runs on the session (its transcript holds the warm-up meanwhile).
  pub(super) async fn warmed_up(&self, session_id: &str) {
    self.prewarms_until(|running| !running.get(session_id).is_some_and(|p| p.warming_up)).await;
  }

  /// Returns once `done` holds of the prewarms running, asked again whenever one ends.
  async fn prewarms_until(&self, done: impl Fn(&HashMap<String, Prewarm>) -> bool) {
    loop {
      let told = self.warmed.notified();
      if done(&lock(&self.prewarms)) {
        return;
      }
      told.await;
    }
  }

  pub(super) fn take(&self, session_id: &str) -> Option<Warm> {
    lock(&self.idle).remove(session_id).map(|i| i.warm)
  }

  /// Ends a warm process: closed (stdin EOF, then signals), or killed when `stale` or when the
  /// store says a task ran on its session elsewhere since its last one (what it would write at
  /// EOF belongs to an older branch of the conversation). On PostgreSQL what it writes as it
  /// closes is stored, unless another task took the session meanwhile. Its token is revoked once
  /// it is gone.
  pub(super) async fn retire(w: Warm, stale: bool) {
    let Warm { proc, token, home, seen_tasks, warm_up, .. } = w;
    // A prewarmed process that never ran a task has nothing to write: killed, and what its
    // warm-up left in the transcript taken out.
    // (Its warm-up's cut is dropped when it runs a task.)
    let unused = home.as_ref().is_some_and(|h| h.last_task.is_none());
    let stale = stale || unused;
    let stale = match &home {
      Some(h) if !stale => h.stale(seen_tasks).await,
      _ => stale,
    };
    let (spec, pid) = (proc.spec().clone(), proc.pid());
    let killed = if stale {
      proc.kill().await;
      true
    } else {
      let mirror = match &home {
        Some(h) => h.closing_mirror().await,
        None => None,
      };
      if let Some(m) = &mirror {
        proc.attach_mirror(m.tx.clone());
      }
      let killed = proc.close(CLOSE_GRACE).await;
      if let Some(m) = mirror {
        // Refused (another task has the session) or unreachable: the next task's node rewrites
        // its copy from the store, which then lacks only what this process wrote at exit.
        let _ = m.flush().await;
      }
      killed
    };
    if killed {
      super::run::remove_per_process_files(&spec, pid);
    }
    if let Some(cut) = warm_up {
      let _ = tokio::task::spawn_blocking(move || cut.undo()).await;
    }
    drop(token);
    if let Some(h) = &home {
      h.release().await;
    }
  }

  fn retire_later(&self, session_id: &str, w: Warm) {
    let h = tokio::spawn(Self::retire(w, false));
    let mut c = lock(&self.closing);
    c.retain(|(_, h)| !h.is_finished());
    c.push((session_id.to_owned(), h));
  }

  /// Waits until the session's CLIs that are closing in the background have exited.
  pub(super) async fn closed_for(&self, session_id: &str) {
    let mine: Vec<_> = {
      let mut c = lock(&self.closing);
      let (mine, rest): (Vec<_>, Vec<_>) = c.drain(..).partition(|(s, _)| s == session_id);
      *c = rest;
      mine
    };
    for (_, h) in mine {
      let _ = h.await;
    }
  }

  /// Puts a process back after its task, starts its idle timer and keeps the pool within its
  /// cap. Gives it back when the pool is closed.
  fn put(self: &Arc<Self>, session_id: &str, warm: Warm, idle_for: Duration, cap: usize) -> Option<Warm> {
    let generation = self.generation.fetch_add(1, Ordering::SeqCst);
    let evicted = {
      let mut idle = lock(&self.idle);
      if self.closed.load(Ordering::SeqCst) {
        return Some(warm);
      }
      if let Some(old) = idle.insert(session_id.to_owned(), Idle { warm, last_used: Instant::now(), generation }) {
        // Cannot happen (one task per session at a time); never leave one running unseen.
        self.retire_later(session_id, old.warm);
      }
      let mut evicted = vec![];
      while idle.len() as u64 + self.in_use.load(Ordering::SeqCst) > cap as u64 {
        let Some(oldest) = idle.iter().min_by_key(|(_, i)| i.last_used).map(|(k, _)| k.clone()) else { break };
        if let Some(i) = idle.remove(&oldest) {
          evicted.push((oldest, i.warm));
        }
      }
      evicted
    };
    for (sid, w) in evicted {
      self.retire_later(&sid, w);
    }
    let (pool, sid) = (Arc::downgrade(self), session_id.to_owned());
    tokio::spawn(async move {
      tokio::time::sleep(idle_for).await;
      let Some(pool) = pool.upgrade() else { return };
      let expired = {
        let mut idle = lock(&pool.idle);
        match idle.get(&sid) {
          Some(i) if i.generation == generation => idle.remove(&sid),
          _ => None,
        }
      };
      if let Some(i) = expired {
        pool.retire_later(&sid, i.warm);
      }
    });
    None
  }

  /// While the pool keeps processes: renews the manager's holds (every third of `ttl`) and kills
  /// the idle CLIs another manager wants (a task there took the session), when the doorbell rings
  /// for one of its sessions. Started by `put`; ends when nothing is kept.
  async fn watch(pool: std::sync::Weak<WarmPool>, store: Arc<Store>, owner_id: String, ttl: Duration) {
    let mut renewed = Instant::now();
    let mut bell = store.subscribe();
    loop {
      let within = WANTED_POLL.min((ttl / 3).saturating_sub(renewed.elapsed())).max(Duration::from_millis(10));
      let kept = |sid: &str| pool.upgrade().is_some_and(|p| lock(&p.idle).contains_key(sid));
      wait_ring(&mut bell, within, None, |n| matches!(n, Notice::WarmWanted { session_id } if kept(session_id))).await;
      let Some(pool) = pool.upgrade() else { return };
      if lock(&pool.idle).is_empty() && lock(&pool.running).is_empty() {
        pool.watching.store(false, Ordering::SeqCst);
        // A process kept after that check restarts the loop, or this one goes on.
        if lock(&pool.idle).is_empty() || pool.watching.swap(true, Ordering::SeqCst) {
          return;
        }
      }
      if renewed.elapsed() >= ttl / 3 {
        let owner = owner_id.clone();
        if store.call(Wait::Briefly, async move |st| st.warm_renew(&owner, ttl).await).await.is_ok() {
          renewed = Instant::now();
        }
      }
      let owner = owner_id.clone();
      let Ok(wanted) = store.call(Wait::Briefly, async move |st| st.warm_wanted(&owner).await).await else { continue };
      for sid in wanted {
        match pool.take(&sid) {
          // Stale: a task elsewhere holds the session's lease now.
          Some(w) => Self::retire(w, true).await,
          None
            if !lock(&pool.running).contains_key(&sid)
              && !lock(&pool.closing).iter().any(|(s, _)| *s == sid)
              && !lock(&pool.prewarms).contains_key(&sid) =>
          {
            // No CLI of the session here any more: the hold was left behind.
            let owner = owner_id.clone();
            let _ = store.call(Wait::Briefly, async move |st| st.warm_release(&sid, &owner).await).await;
          }
          None => {}
        }
      }
    }
  }

  /// Closes every idle process and waits for every closing to end; later returns are refused.
  pub(crate) async fn shutdown(&self) {
    self.closed.store(true, Ordering::SeqCst);
    let all: Vec<Warm> = lock(&self.idle).drain().map(|(_, i)| i.warm).collect();
    let closing: Vec<_> = lock(&self.closing).drain(..).map(|(_, h)| h).collect();
    let mut handles: Vec<_> = all.into_iter().map(|w| tokio::spawn(Self::retire(w, false))).collect();
    handles.extend(closing);
    for h in handles {
      let _ = h.await;
    }
  }

  /// Whether the session has an idle process that may run its next task as far as the store
  /// can tell (no task ran on the session since its last one): this node's copy of the
  /// transcript is then that process's own, and must not be rewritten under it.
  pub(crate) fn fresh_for(&self, session_id: &str, task_count: u64) -> bool {
    lock(&self.idle).get(session_id).is_some_and(|i| i.warm.seen_tasks == task_count)
  }

  /// A handle of the session's warm process, running a task or idle.
  fn handle(&self, session_id: &str) -> Option<WarmHandle> {
    if let Some(h) = lock(&self.running).get(session_id) {
      return Some(h.clone());
    }
    lock(&self.idle).get(session_id).map(|i| i.warm.proc.handle())
  }
}

/// The files a CLI reads once, at start-up, that change what it does: `CLAUDE.md` (and
/// `CLAUDE.local.md`) in the working directory and every folder above it, the project's
/// `.claude/` memory and settings, and the configuration folder's. Their sizes and modification
/// times: a process started before one of them changed is replaced (it would not see it).
pub(super) fn config_stamp(spec: &RunSpec) -> String {
  let mut files: Vec<std::path::PathBuf> = vec![];
  for dir in spec.cwd.ancestors() {
    files.push(dir.join("CLAUDE.md"));
    files.push(dir.join("CLAUDE.local.md"));
  }
  for f in [".claude/CLAUDE.md", ".claude/settings.json", ".claude/settings.local.json"] {
    files.push(spec.cwd.join(f));
  }
  if let Some(config) = crate::transcript::config_dir(&spec.env) {
    files.push(config.join("CLAUDE.md"));
    files.push(config.join("settings.json"));
  }
  let stamp = |f: &std::path::Path| {
    std::fs::metadata(f).ok().map(|m| (m.len(), m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())))
  };
  files.iter().map(|f| format!("{:?}", stamp(f))).collect::<Vec<_>>().join("|")
}

/// What decides whether a warm process fits a task: its argv without the session flags, its
/// working directory and its environment (before the key proxy's token replaces the key).
pub(super) fn fingerprint(cli: &CliArgs, spec: &RunSpec, permission_prompts: bool) -> String {
  let args = cli::warm_args(&CliArgs { session: None, ..cli.clone() }, permission_prompts);
  let mut env = spec.env.clone();
  env.sort();
  serde_json::to_string(&json!({ "program": spec.program, "args": args, "cwd": spec.cwd, "env": env })).unwrap_or_default()
}

impl Manager {
  /// Whether a task of this kind runs in a warm process.
  /// Whether a task runs in a warm process. A task with `maxBudgetUsd` runs in a process of its
  /// own (cold, or, with `canUseTool`, a fresh stream-json CLI that is not kept), started with
  /// the CLI's `--max-budget-usd`: the CLI then stops after the model call that crosses it,
  /// before any tool of that call runs, as a cold task does. (A reused warm process counts cost
  /// over every task it ran, so the flag cannot be per task there.)
  pub(crate) fn runs_warm(&self, kind: TaskKind, can_use_tool: bool, budget: bool) -> bool {
    kind == TaskKind::Task && (can_use_tool || (self.warm_idle().is_some() && !budget))
  }

  /// How long a warm process is kept after its task.
  pub(super) fn warm_idle(&self) -> Option<Duration> {
    self.cfg.warm_idle
  }

  /// Kills the session's idle warm process: before any other CLI runs on the session (a
  /// compaction, a cold task), and when the session is deleted.
  pub(crate) async fn drop_warm(&self, session_id: &str) {
    if let Some(w) = self.warm.take(session_id) {
      WarmPool::retire(w, true).await;
    }
    self.warm.closed_for(session_id).await;
  }

  /// Before a task's CLI starts (the session's lease is this task's): waits until no other
  /// manager sharing the database keeps an idle warm CLI of the session (they are asked to kill
  /// it with a ring, and ring back when it is gone; a hold of a manager that died expires). One CLI per session,
  /// across processes and nodes.
  pub(crate) async fn others_gone(&self, session_id: &str, cancel: &CancelToken) -> Result<()> {
    let deadline = Instant::now() + self.cfg.lease_ttl * 2;
    let (mut bell, mut asked) = (self.store.subscribe(), false);
    loop {
      let (sid, me) = (session_id.to_owned(), self.owner.id.clone());
      let left = self.store.call(Wait::Briefly, async move |st| st.warm_elsewhere(&sid, &me, &|pid| cli::pid_alive(pid)).await).await?;
      if left == 0 {
        return Ok(());
      }
      if !asked {
        // Their managers hear it and kill the CLI; each rings when its hold is gone.
        asked = true;
        super::ring(&self.store, Notice::WarmWanted { session_id: session_id.to_owned() }).await;
      }
      if Instant::now() >= deadline {
        return Err(Error::new(
          ErrorCode::SessionBusy,
          format!(
            "another process keeps a CLI of session {session_id} and did not close it within {} ms",
            (self.cfg.lease_ttl * 2).as_millis()
          ),
        ));
      }
      let released = Notice::WarmReleased { session_id: session_id.to_owned() };
      wait_ring(&mut bell, RELEASED_POLL, Some(cancel), |n| *n == released).await;
      if cancel.is_cancelled() {
        return Err(Error::new(ErrorCode::Aborted, "the task was aborted while another process closed its CLI of the session"));
      }
    }
  }

  /// Adds a message to the task running on the session (in this manager, in a warm process):
  /// the CLI queues it after the current prompt, and the task ends at its result (its `result`
  /// text is then the answer to the last message).
  pub async fn send_message(&self, r: SendMessageRequest) -> Result<()> {
    self.check_open()?;
    let (prompt, s) = (r.prompt.as_str(), self.get_session(&r.session_id, &r.user_id).await?);
    let running = lock(&self.warm.running).get(&s.id).cloned();
    match running {
      Some(h) if h.steer(prompt)? => {
        if let Some(l) = self.logs.writer(&s.id) {
          l.record(json!({ "type": "user_message", "sessionId": s.id, "text": prompt }));
        }
        Ok(())
      }
      // Another manager's task, maybe: through the store.
      _ => self.forward_message(&s.id, prompt).await,
    }
  }

  /// The CLI's own context breakdown (`get_context_usage`, summary: no API call) when the
  /// session has a warm process here, else the stored meter. `{ source: 'cli', usage }` or
  /// `{ source: 'store', contextInfo }`.
  pub async fn get_context_usage(&self, session_id: &str, user_id: &str) -> Result<Value> {
    let s = self.get_session(session_id, user_id).await?;
    if let Some(h) = self.warm.handle(&s.id) {
      if let Ok(usage) = h.ask(json!({ "subtype": "get_context_usage", "detail": "summary" }), Duration::from_secs(10)).await {
        return Ok(json!({ "source": "cli", "usage": usage }));
      }
    }
    let info = self.get_context(session_id, user_id, Default::default()).await?;
    Ok(json!({ "source": "store", "contextInfo": info }))
  }

  /// Runs a task's prompt in the session's warm process, or in a new one started for it (which
  /// is then kept, within `warmIdleMs` and `maxWarmSessions`). `job.session` is the row read with
  /// the lease; `slot` is the task's concurrency slot, given back when the turn is over.
  pub(crate) async fn run_warm(&self, slot: Arc<TaskSlot>, mut job: Job<'_>) -> Result<RunOutcome> {
    // PostgreSQL: the turn's transcript is mirrored into the store as the CLI writes it; a CLI
    // without `--session-mirror` is not kept (its file is stored when it exits).
    // The turn's mirror: given to the turn only (a process kept with it would keep the task's
    // writer open past the task).
    let mirror = job.spec.mirror.take();
    let mirrored = mirror.is_some() && mirror_supported(job.spec.cli_program()).await;
    let mut warm = self.warm_for(&mut job, mirrored).await?;
    let mut out = self.warm_turn(&mut warm, &mut job, mirror.clone()).await;
    enforce_budget(&mut out, job.cli.max_budget_usd, job.session.cli_cost_watermark);
    // A budget is enforced by the CLI itself, counted from the process's start: not kept.
    let keep = (mirror.is_none() || mirrored) && job.cli.max_budget_usd.is_none();
    self.keep_or_retire(warm, &job, mirrored, keep).await;
    drop(slot);
    Ok(out)
  }

  /// The session's idle warm process when it fits the task and no task ran on the session since
  /// its last one, else a new one (the old one retired first: one CLI per session).
  async fn warm_for(&self, job: &mut Job<'_>, mirrored: bool) -> Result<Warm> {
    let session = job.session;
    let key = fingerprint(&job.cli, &job.spec, job.can_use_tool.is_some());
    let stamp = config_stamp(&job.spec);
    // A budget is enforced by the CLI itself (`--max-budget-usd`), counted from the process's
    // start: such a task gets a fresh process, not kept after it.
    let budget = job.cli.max_budget_usd;
    // A branch point (a rewind): never the process that holds the old branch.
    if budget.is_some() || job.cli.resume_at.is_some() {
      self.drop_warm(&session.id).await;
    }
    if let Some(mut w) = self.warm.take(&session.id) {
      let fits = w.key == key && w.stamp == stamp && w.proc.alive();
      let fresh = w.seen_tasks == session.task_count;
      if fits && fresh {
        return Ok(w);
      }
      WarmPool::retire(w, !fresh).await;
    }
    // One CLI per session: one closed after its idle time or evicted is gone first.
    self.warm.closed_for(&session.id).await;
    let warm = self.start_warm(&job.cli, &mut job.spec, job.can_use_tool.is_some(), mirrored, budget, (key, stamp)).await?;
    if let Some(t) = &warm.token {
      t.attach(Some(job.meter.clone()));
    }
    Ok(warm)
  }

  /// Starts a stream-json CLI for the session (`cli` says how it picks the session up) under a key
  /// proxy token of its own that answers no model call until a task runs on it. `fits` is its
  /// [`fingerprint`] and [`config_stamp`].
  pub(super) async fn start_warm(
    &self,
    cli: &CliArgs,
    spec: &mut RunSpec,
    permission_prompts: bool,
    mirrored: bool,
    budget: Option<f64>,
    (key, stamp): (String, String),
  ) -> Result<Warm> {
    spec.args = cli::warm_args(cli, permission_prompts);
    if let Some(b) = budget {
      spec.args.push(format!("--max-budget-usd={b}"));
    }
    if mirrored {
      spec.args.push(cli::mirror::FLAG.into());
    }
    let token = self.secure(spec).await?;
    // Suspended until a task runs on it: a CLI that is only waiting cannot call the model.
    if let Some(t) = &token {
      t.set_live(false);
    }
    let proc = WarmProcess::start(spec.clone())?;
    Ok(Warm { proc, key, seen_tasks: 0, stamp, token, home: None, warm_up: None })
  }

  /// One turn of the task on the process: its inbox read, its events forwarded, the key proxy's
  /// token live only while it runs.
  async fn warm_turn(&self, warm: &mut Warm, job: &mut Job<'_>, mirror: Option<MirrorTx>) -> RunOutcome {
    // A task's lines follow the warm-up's in the transcript from here on: never cut again.
    warm.warm_up = None;
    let (session, sink, include_partials) = (job.session, job.sink.clone(), job.include_partials);
    self.warm.in_use.fetch_add(1, Ordering::SeqCst);
    lock(&self.warm.running).insert(session.id.clone(), warm.proc.handle());
    // Answers and messages given through other managers reach the task while it runs.
    let inbox = self.watch_inbox(&session.id, job.task_id, warm.proc.handle());
    // Said once the prompt is written, so that a message sent on `task_started` is steered into
    // the task; then what the CLI did by itself since the last task (a background job's
    // notification turn).
    let started = |outside: Vec<Value>| {
      if let Some(s) = &sink {
        s(json!({ "type": "task_started", "sessionId": session.id, "taskId": job.task_id }));
      }
      background_activity(outside, &session.id, &sink);
    };
    let forward = |line: &Line| {
      if let Some(s) = &sink {
        if include_partials || !matches!(line.kind, Kind::Partial { .. }) {
          s(line.raw.clone());
        }
      }
    };
    let opts = TurnOptions {
      timeout: job.spec.timeout,
      stall_timeout: job.spec.stall_timeout,
      can_use_tool: job.can_use_tool.take().map(|h| (h, self.cfg.permission_timeout)),
      interrupt_grace: INTERRUPT_GRACE,
      mirror,
    };
    // The key proxy's token answers only while a task runs on the process: live again just
    // before the prompt is written, suspended as soon as the turn settles (what the agent left
    // running in the background cannot call the model between tasks).
    if let Some(t) = &warm.token {
      t.attach(Some(job.meter.clone()));
      t.set_live(true);
    }
    let mut out = warm.proc.turn(&job.spec.stdin, opts, job.cancel, started, forward).await;
    if let Some(t) = &warm.token {
      t.set_live(false);
      t.attach(None);
    }
    out.metered = warm.token.as_ref().map(|_| job.meter.snapshot());
    background_activity(warm.proc.take_outside(), &session.id, &sink);
    self.warm.in_use.fetch_sub(1, Ordering::SeqCst);
    lock(&self.warm.running).remove(&session.id);
    drop(inbox);
    out
  }

  /// After the turn: the process kept for the session's next task (`warmIdleMs`), or retired.
  async fn keep_or_retire(&self, mut warm: Warm, job: &Job<'_>, mirrored: bool, may_keep: bool) {
    let session = job.session;
    let keep = self.warm_idle().filter(|_| warm.proc.alive() && !self.closed.load(Ordering::SeqCst) && may_keep);
    // Other managers sharing the database must learn that this one keeps a CLI of the session
    // (it is written once, while this task still holds the lease); a CLI that cannot be recorded
    // so is not kept.
    let keep = match keep {
      Some(idle_for) if warm.home.is_none() => {
        let (sid, owner, ttl) = (session.id.clone(), self.owner.clone(), self.cfg.lease_ttl);
        let held = self.store.call(Wait::Briefly, async move |st| st.warm_hold(&sid, &owner, ttl).await).await.is_ok();
        held.then_some(idle_for)
      }
      other => other,
    };
    let Some(idle_for) = keep else {
      let dead = !warm.proc.alive();
      WarmPool::retire(warm, dead).await;
      return;
    };
    warm.seen_tasks = session.task_count + 1;
    warm.home = Some(Home {
      store: self.store.clone(),
      session_id: session.id.clone(),
      user_id: session.user_id.clone(),
      last_task: Some(job.task_id.to_owned()),
      mirrored,
      owner_id: self.owner.id.clone(),
    });
    self.keep(&session.id, warm, idle_for).await;
  }

  /// Puts a process in the pool for `idle_for` (within `maxWarmSessions`) and makes sure the
  /// loop that renews this manager's holds runs.
  pub(super) async fn keep(&self, session_id: &str, warm: Warm, idle_for: Duration) {
    if let Some(w) = self.warm.put(session_id, warm, idle_for, self.cfg.max_warm_sessions) {
      WarmPool::retire(w, false).await;
    }
    if !self.warm.watching.swap(true, Ordering::SeqCst) {
      let owner = self.owner.id.clone();
      tokio::spawn(WarmPool::watch(Arc::downgrade(&self.warm), self.store.clone(), owner, self.cfg.lease_ttl));
    }
  }
}

/// Streams the turns the CLI ran by itself (a background job finishing) as one
/// `background_activity` event of the task that runs next on the process: `{ sessionId, events }`,
/// the CLI's lines of those turns (their cost is in the next task's, the difference of the CLI's
/// cumulative figures).
fn background_activity(events: Vec<Value>, session_id: &str, sink: &Option<EventSink>) {
  if let (Some(s), false) = (sink, events.is_empty()) {
    s(json!({ "type": "background_activity", "sessionId": session_id, "events": events }));
  }
}

/// `maxBudgetUsd` for a warm process, per task: the task's cost is the difference of the CLI's
/// cumulative figure and the session's watermark, as for every task; a task that went over it
/// ends as the CLI's own budget stop does (`error_max_budget_usd`, so `BUDGET_EXCEEDED`).
fn enforce_budget(out: &mut RunOutcome, budget: Option<f64>, watermark: f64) {
  let (Some(budget), Some(r)) = (budget, out.result.as_mut()) else { return };
  let (cost, _) = context::task_cost(r, watermark);
  if cost > budget && !r.is_error {
    r.subtype = "error_max_budget_usd".into();
    r.is_error = true;
    r.result = Some(format!("Reached maximum budget (${budget})"));
  }
}
