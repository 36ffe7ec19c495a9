//! Prewarm: a session's CLI started before its first prompt, so that the prompt is one line on
//! a running process's stdin instead of a CLI start-up (`manager.prewarm`).
//!
//! The process is started exactly as the session's next task would start it (the argv its
//! options make, the working directory, the tenant's configuration folder, the sandbox, a key
//! proxy token of its own, `--session-id` or `--resume`) and kept in the warm pool as if a task
//! had just ended on it, with the session's current `task_count`: the pool's own rules then
//! decide whether a task may use it (same options and settings files, no task ran on the session
//! since) and when it goes (`warmIdleMs`, `maxWarmSessions`, a task elsewhere, `close()`). Its
//! token answers no model call until a task runs on it, so a prewarmed CLI costs nothing. One
//! that never ran a task is killed when it goes: it has nothing of the conversation to write.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::mirror::mirror_supported;
use super::warm::{config_stamp, fingerprint, Home, WarmPool};
use super::{Manager, TaskRequest, Wait};
use crate::cli::{self, SessionMode};
use crate::error::{Error, Result};

/// A `prewarm` request: the options of the session's next task (what decides which CLI it can
/// run in), without its prompt.
#[derive(Debug, Clone, Default)]
pub struct PrewarmRequest {
  /// The next task's options; its `session_id` is the session to prewarm, its `prompt` empty.
  pub task: TaskRequest,
  /// Whether the next task has a `canUseTool` callback (the CLI's permission prompts).
  pub permission_prompts: bool,
}

/// What `prewarm` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prewarmed {
  /// A CLI was started for the session and waits for its next task.
  Started,
  /// A CLI that fits the next task is already kept for the session.
  AlreadyWarm,
  /// Warm CLIs are off (`warmIdleMs: 0`): the next task starts its CLI.
  WarmDisabled,
  /// A task runs on the session (here or elsewhere), or is about to.
  Busy,
  /// Another process or node keeps an idle CLI of the session (one CLI per session).
  HeldElsewhere,
  /// The next task continues from a branch point (after a rewind), which a kept CLI cannot do.
  BranchPoint,
}

impl Prewarmed {
  /// The name the JS API reports (`started`, `already_warm`, …).
  pub fn as_str(self) -> &'static str {
    match self {
      Prewarmed::Started => "started",
      Prewarmed::AlreadyWarm => "already_warm",
      Prewarmed::WarmDisabled => "warm_disabled",
      Prewarmed::Busy => "busy",
      Prewarmed::HeldElsewhere => "held_elsewhere",
      Prewarmed::BranchPoint => "branch_point",
    }
  }
}

impl Manager {
  /// Starts the session's CLI for its next task, if it has none that fits (see the module's
  /// comment). The session is the user's (else `SESSION_NOT_FOUND`, as everywhere); the options
  /// are checked as a task's are.
  pub async fn prewarm(self: &Arc<Self>, r: PrewarmRequest) -> Result<Prewarmed> {
    self.check_open()?;
    let t = &r.task;
    let Some(session_id) = t.session_id.as_deref() else {
      return Err(Error::invalid("prewarm needs the sessionId of the session to prewarm"));
    };
    let mut cli = self.task_args(t)?;
    let session = self.get_session(session_id, &t.user_id).await?;
    if !t.project_id.is_empty() && session.project_id != t.project_id {
      return Err(Error::not_found(session_id));
    }
    let program = cli::resolve_cli(self.cfg.claude_path.as_deref(), &self.search_dirs())?;
    let Some(idle_for) = self.warm_idle() else { return Ok(Prewarmed::WarmDisabled) };
    // The session's place in line in this process, for as long as the CLI starts: a task that
    // arrives meanwhile waits for it and then finds it.
    let lock = self.session_lock(&session.id);
    let Ok(_guard) = lock.try_lock_owned() else { return Ok(Prewarmed::Busy) };
    let (sid, uid, me) = (session.id.clone(), session.user_id.clone(), self.owner.id.clone());
    let (session, running, elsewhere) = self
      .store_call(Wait::Briefly, async move |s| {
        let session = s.get_session(&sid, &uid).await?.ok_or_else(|| Error::not_found(&sid))?;
        let running = s.running_task(&sid).await?.is_some();
        Ok((session, running, s.warm_elsewhere(&sid, &me, &|pid| cli::pid_alive(pid)).await?))
      })
      .await?;
    if running {
      return Ok(Prewarmed::Busy);
    }
    if elsewhere > 0 {
      return Ok(Prewarmed::HeldElsewhere);
    }
    if cli.model.is_none() {
      cli.model = Some(session.model.clone());
    }
    let mut spec = self.run_spec(&session, program, String::new(), None)?;
    let mode = self.session_mode(&session).await?;
    if self.continue_from(&session, mode.clone(), &mut cli, None).await?.is_some() {
      return Ok(Prewarmed::BranchPoint);
    }
    let fits = (fingerprint(&cli, &spec, r.permission_prompts), config_stamp(&spec));
    // A kept CLI that fits stays (its idle time starts again); one that does not goes first, as
    // the task path retires it.
    if let Some(mut w) = self.warm.take(&session.id) {
      let fresh = w.seen_tasks == session.task_count;
      if fresh && w.key == fits.0 && w.stamp == fits.1 && w.proc.alive() {
        self.keep(&session.id, w, idle_for).await;
        return Ok(Prewarmed::AlreadyWarm);
      }
      WarmPool::retire(w, !fresh).await;
    }
    self.warm.closed_for(&session.id).await;
    // PostgreSQL: the CLI reads this node's copy of the transcript at start-up, made the store's
    // first (as a task does once it holds the lease); its turns are mirrored as a task's are.
    let mirrored = self.store.shares_transcripts() && mirror_supported(spec.cli_program()).await;
    if self.store.shares_transcripts() && !matches!(mode, SessionMode::New(_)) {
      self.refresh_for(&session, &mode, None).await?;
    }
    let mut warm = self.start_warm(&cli, &mut spec, r.permission_prompts, mirrored, None, fits).await?;
    let (sid, owner, ttl) = (session.id.clone(), self.owner.clone(), self.cfg.lease_ttl);
    if let Err(e) = self.store_call(Wait::Briefly, async move |st| st.warm_hold(&sid, &owner, ttl).await).await {
      WarmPool::retire(warm, true).await;
      return Err(e);
    }
    warm.seen_tasks = session.task_count;
    warm.home = Some(Home {
      store: self.store.clone(),
      session_id: session.id.clone(),
      user_id: session.user_id.clone(),
      last_task: None,
      mirrored,
      owner_id: self.owner.id.clone(),
    });
    if self.closed.load(Ordering::SeqCst) {
      WarmPool::retire(warm, true).await;
      return Err(Error::new(crate::error::ErrorCode::Closed, "the manager was closed"));
    }
    self.keep(&session.id, warm, idle_for).await;
    Ok(Prewarmed::Started)
  }
}
