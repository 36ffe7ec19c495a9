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
//!
//! A CLI runs its first turn several times slower than its next ones (its code runs for the first
//! time), so a prewarmed CLI runs one turn before it is kept: the warm-up
//! ([`WarmProcess::warm_up`](crate::cli::WarmProcess::warm_up)). Its one model call is answered
//! `401` by the key proxy (the token is suspended), the CLI takes the turn back
//! (`rewind_conversation`), and the transcript file is cut back to what it was. Without a key
//! proxy (`exposeApiKeyToAgent`) there is no warm-up: its call would reach the API.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::mirror::mirror_supported;
use super::run::Finishing;
use super::warm::{config_stamp, fingerprint, Home, Warm, WarmPool};
use super::{Manager, TaskRequest, Wait};
use crate::cli::{self, CancelToken, SessionMode};
use crate::error::{Error, ErrorCode, Result};
use crate::store::Session;
use crate::transcript::TenantFile;

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
  /// Every `maxConcurrentTasks` place of this process is taken: a CLI starts only in a free one.
  AtCapacity,
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
      Prewarmed::AtCapacity => "at_capacity",
    }
  }
}

impl Manager {
  /// Starts the session's CLI for its next task, if it has none that fits (see the module's
  /// comment). The session is the user's (else `SESSION_NOT_FOUND`, as everywhere); the options
  /// are checked as a task's are.
  pub async fn prewarm(self: &Arc<Self>, r: PrewarmRequest) -> Result<Prewarmed> {
    self.check_open()?;
    // `close()` stops the warm-up and waits for the prewarm to end; `deleteSession` stops it too.
    let cancel = CancelToken::new();
    let _registered = self.register(&cancel);
    let session_id = r.task.session_id.clone().unwrap_or_default();
    let out = self.prewarm_stoppable(r, &cancel).await;
    match out {
      // Whatever failed once the session was deleted (a store write refused, the warm-up
      // stopped): the session is gone.
      Err(_) if cancel.is_cancelled() && !self.closed.load(Ordering::SeqCst) => Err(Error::not_found(&session_id)),
      out => out,
    }
  }

  async fn prewarm_stoppable(self: &Arc<Self>, r: PrewarmRequest, cancel: &CancelToken) -> Result<Prewarmed> {
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
    // `deleteSession` stops the prewarm, then waits for its end (this mark's drop).
    let prewarming = self.warm.prewarming(&session.id, cancel);
    // A task queued behind the prewarm (its CLI's start and warm-up, or its retiring) waits past
    // its queue timeout: the caller sees no task running.
    let _excused = Finishing::mark(self.finishing.clone(), &session.id);
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
    // A CLI starts and warms up in a free place of `maxConcurrentTasks`, as a task's does, so
    // that prewarms (which cost their caller nothing) cannot start more CLIs at once than tasks
    // can; never waiting for one: the next task starts its CLI then.
    let Ok(_slot) = self.slots.clone().try_acquire_owned() else { return Ok(Prewarmed::AtCapacity) };
    if cancel.is_cancelled() {
      return Err(Error::new(ErrorCode::Aborted, "the prewarm was stopped"));
    }
    self.warm.closed_for(&session.id).await;
    // PostgreSQL: the CLI reads this node's copy of the transcript at start-up, made the store's
    // first (as a task does once it holds the lease); its turns are mirrored as a task's are.
    let mirrored = self.store.shares_transcripts() && mirror_supported(spec.cli_program()).await;
    if self.store.shares_transcripts() && !matches!(mode, SessionMode::New(_)) {
      self.refresh_for(&session, &mode, None).await?;
    }
    // Where a warm-up would begin in the transcript, before the CLI can write to it. None for a
    // fork (its first turn copies the parent's conversation into its file) or without a key
    // proxy to answer the warm-up's call (`exposeApiKeyToAgent`: it would reach the API).
    let warms_up = !self.cfg.expose_api_key && matches!(mode, SessionMode::New(_) | SessionMode::Resume(_));
    let cut = match self.transcript_of(&session)?.filter(|_| warms_up) {
      Some(file) => {
        let f = file.clone();
        let before = self.blocking("transcript reader", move || f.regular_len()).await?;
        Some(WarmUpCut { file, before, first: uuid::Uuid::new_v4().to_string(), session_id: session.id.clone() })
      }
      None => None,
    };
    let mut warm = self.start_warm(&cli, &mut spec, r.permission_prompts, mirrored, None, fits).await?;
    let (sid, owner, ttl) = (session.id.clone(), self.owner.clone(), self.cfg.lease_ttl);
    if let Err(e) = self.store_call(Wait::Briefly, async move |st| st.warm_hold(&sid, &owner, ttl).await).await {
      WarmPool::retire(warm, true).await;
      return Err(e);
    }
    // From here on, retiring the CLI releases the hold (and rings for a task waiting for it).
    warm.seen_tasks = session.task_count;
    warm.home = Some(Home {
      store: self.store.clone(),
      session_id: session.id.clone(),
      user_id: session.user_id.clone(),
      last_task: None,
      mirrored,
      owner_id: self.owner.id.clone(),
    });
    if let (Some(cut), true) = (cut, warm.token.is_some()) {
      // Until the CLI is kept, or retired and its warm-up taken out of the file.
      prewarming.warming_up();
      match self.warm_up(&session, &mut warm, cut, cancel).await {
        Ok(true) => {}
        Ok(false) => {
          WarmPool::retire(warm, true).await;
          return Ok(Prewarmed::Busy);
        }
        Err(e) => {
          WarmPool::retire(warm, true).await;
          return Err(e);
        }
      }
    }
    if self.closed.load(Ordering::SeqCst) {
      WarmPool::retire(warm, true).await;
      return Err(Error::new(crate::error::ErrorCode::Closed, "the manager was closed"));
    }
    if cancel.is_cancelled() {
      WarmPool::retire(warm, true).await;
      return Err(Error::new(ErrorCode::Aborted, "the prewarm was stopped"));
    }
    self.keep(&session.id, warm, idle_for).await;
    Ok(Prewarmed::Started)
  }

  /// The prewarmed CLI's warm-up turn ([`WarmProcess::warm_up`]), once the store knows this
  /// manager keeps a CLI of the session, and the transcript file cut back to what it was before
  /// it (`cut`, kept with the CLI: if the warm-up fails, or the CLI goes without a task, the file
  /// is cut again once it is dead). `Ok(false)`, the CLI to be dropped, when a task elsewhere
  /// started on the session before the hold was seen, or wants the session now.
  ///
  /// Tasks of other managers wait for this CLI once they hold the lease (`others_gone`), and this
  /// one looks for their tasks after its hold is stored: one of the two sees the other, so no
  /// other CLI writes the transcript meanwhile. The hold is renewed while the warm-up runs, and
  /// the pool does not take it for one left behind. A task of this manager waits for the
  /// session's place in line, which the caller holds.
  async fn warm_up(&self, session: &Session, warm: &mut Warm, cut: WarmUpCut, cancel: &CancelToken) -> Result<bool> {
    let (sid, uid, me) = (session.id.clone(), session.user_id.clone(), self.owner.id.clone());
    let (running, now) =
      self.store_call(Wait::Briefly, async move |s| Ok((s.running_task(&sid).await?, s.get_session(&sid, &uid).await?))).await?;
    // A task ran or runs on the session since it was read: its transcript is not the one measured.
    let same = now.is_some_and(|n| n.task_count == session.task_count && n.materialized == session.materialized);
    if running.is_some() || !same {
      return Ok(false);
    }
    warm.warm_up = Some(cut.clone());
    let (store, owner, ttl) = (self.store.clone(), self.owner.id.clone(), self.cfg.lease_ttl);
    let renew = async move {
      loop {
        tokio::time::sleep(ttl / 3).await;
        let owner = owner.clone();
        let _ = store.call(Wait::Briefly, async move |st| st.warm_renew(&owner, ttl).await).await;
      }
    };
    tokio::select! {
      done = warm.proc.warm_up(&cut.first, WARM_UP_LIMIT, cancel) => done?,
      () = renew => unreachable!("the renewal never ends"),
    }
    self.blocking("transcript writer", move || cut.undo()).await?;
    let wanted = self.store_call(Wait::Briefly, async move |s| s.warm_wanted(&me).await).await?;
    Ok(!wanted.contains(&session.id))
  }
}

/// How long a prewarmed CLI may take to start and run its warm-up turn.
const WARM_UP_LIMIT: Duration = Duration::from_secs(30);
/// The most a warm-up may have written to the transcript (a new session's first turn writes
/// about 85 KB: the prompt, the CLI's attachments, its request records).
const WARM_UP_MAX_BYTES: u64 = 4 << 20;

/// Where a warm-up began in the session's transcript file.
#[derive(Debug, Clone)]
pub(super) struct WarmUpCut {
  file: TenantFile,
  /// Its length then; `None` when it did not exist.
  before: Option<u64>,
  /// The uuid of the warm-up's prompt.
  first: String,
  session_id: String,
}

impl WarmUpCut {
  /// The file as it was: cut back to its length, or removed when it did not exist; once every
  /// message of the session written since is the warm-up's: its prompt, and lines whose parent
  /// is one of the warm-up's, none of them another prompt. Anything else in the file since (a
  /// line that is not JSON, a line of another session, a line without a uuid: the CLI's
  /// bookkeeping, or what another process of the tenant wrote) goes with it. A message of the
  /// session that is not the warm-up's (one a task wrote) leaves the file as it is and fails.
  pub(super) fn undo(&self) -> Result<()> {
    let refused = |why: &str| Error::new(ErrorCode::CliError, format!("the prewarmed CLI's warm-up could not be taken back: {why}"));
    let check = |written: &[u8]| -> Result<()> {
      let mut own: HashSet<String> = HashSet::from([self.first.clone()]);
      for line in written.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
        if v.get("sessionId").and_then(Value::as_str).is_some_and(|s| s != self.session_id) {
          continue;
        }
        let Some(uuid) = v.get("uuid").and_then(Value::as_str) else { continue };
        let parent = v.get("parentUuid").and_then(Value::as_str);
        let prompt = v.get("type").and_then(Value::as_str) == Some("user");
        if uuid != self.first && (prompt || !parent.is_some_and(|p| own.contains(p))) {
          return Err(refused("a message of the session that is not the warm-up's"));
        }
        own.insert(uuid.to_owned());
      }
      Ok(())
    };
    let cut = self.file.cut_checked(self.before.unwrap_or(0), WARM_UP_MAX_BYTES, check)?;
    match (cut, self.before) {
      (false, Some(_)) => Err(refused("the transcript changed under it")),
      (true, None) => self.file.remove(),
      _ => Ok(()),
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const BEFORE: &str =
    "{\"type\":\"user\",\"uuid\":\"u1\",\"parentUuid\":null}\n{\"type\":\"assistant\",\"uuid\":\"a1\",\"parentUuid\":\"u1\"}\n";

  fn file(content: &str) -> (tempfile::TempDir, WarmUpCut) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("projects/-w")).unwrap();
    std::fs::write(d.path().join("projects/-w/s.jsonl"), content).unwrap();
    let cut = WarmUpCut {
      file: TenantFile::new(d.path(), "projects/-w/s.jsonl"),
      before: Some(BEFORE.len() as u64),
      first: "w1".into(),
      session_id: "s".into(),
    };
    (d, cut)
  }

  /// The warm-up's lines as the CLI writes them: its prompt, bookkeeping without a uuid, lines
  /// whose parents are the warm-up's.
  fn warm_up(parent: &str) -> String {
    format!(
      "{{\"type\":\"user\",\"uuid\":\"w1\",\"parentUuid\":\"{parent}\"}}\n{{\"type\":\"queue-operation\"}}\n{{\"type\":\"attachment\",\"uuid\":\"w2\",\"parentUuid\":\"w1\"}}\n{{\"type\":\"assistant\",\"uuid\":\"w3\",\"parentUuid\":\"w2\"}}\n"
    )
  }

  #[test]
  fn the_warm_up_is_cut_and_a_new_sessions_file_removed() {
    let (d, cut) = file(&format!("{BEFORE}{}", warm_up("a1")));
    cut.undo().unwrap();
    assert_eq!(std::fs::read_to_string(d.path().join("projects/-w/s.jsonl")).unwrap(), BEFORE);
    let (d, mut cut) = file(&warm_up("null"));
    cut.before = None;
    cut.undo().unwrap();
    assert!(!d.path().join("projects/-w/s.jsonl").exists());
  }

  #[test]
  fn what_another_process_wrote_that_is_no_message_of_the_session_goes_with_the_warm_up() {
    // A line of another session, one that is not JSON, one without a uuid (all a process of the
    // tenant could write during the warm-up), between and after the warm-up's.
    let junk = "{\"type\":\"user\",\"uuid\":\"x1\",\"parentUuid\":null,\"sessionId\":\"t\"}\nnot json\n{\"type\":\"summary\"}\n";
    let (d, cut) = file(&format!("{BEFORE}{junk}{}{junk}", warm_up("a1")));
    cut.undo().unwrap();
    assert_eq!(std::fs::read_to_string(d.path().join("projects/-w/s.jsonl")).unwrap(), BEFORE);
    let (d, mut cut) = file(&format!("{}{junk}", warm_up("null")));
    cut.before = None;
    cut.undo().unwrap();
    assert!(!d.path().join("projects/-w/s.jsonl").exists());
    // A link in a new session's file's place: refused, and what it points to untouched.
    let (d, mut cut) = file("");
    cut.before = None;
    let target = d.path().join("victim.jsonl");
    std::fs::write(&target, BEFORE).unwrap();
    std::fs::remove_file(d.path().join("projects/-w/s.jsonl")).unwrap();
    std::os::unix::fs::symlink(&target, d.path().join("projects/-w/s.jsonl")).unwrap();
    assert!(cut.undo().is_err());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), BEFORE);
  }

  #[test]
  fn a_line_another_cli_wrote_leaves_the_file_alone() {
    let foreign = "{\"type\":\"user\",\"uuid\":\"x1\",\"parentUuid\":\"a1\"}\n";
    // Another CLI's prompt continuing the warm-up's branch; a message of the session (its id
    // given) that does not follow the warm-up.
    let chained = "{\"type\":\"user\",\"uuid\":\"x2\",\"parentUuid\":\"w3\"}\n";
    let unchained = "{\"type\":\"assistant\",\"uuid\":\"x3\",\"parentUuid\":\"a1\",\"sessionId\":\"s\"}\n";
    for content in [
      format!("{BEFORE}{foreign}{}", warm_up("a1")),
      format!("{BEFORE}{}{foreign}", warm_up("a1")),
      format!("{BEFORE}{}{chained}", warm_up("a1")),
      format!("{BEFORE}{}{unchained}", warm_up("a1")),
      // The file rewritten shorter, or not at a line's end where the warm-up began.
      BEFORE[..10].to_string(),
      format!("{}X{}", &BEFORE[..BEFORE.len() - 1], warm_up("a1")),
    ] {
      let (d, cut) = file(&content);
      let err = cut.undo().unwrap_err();
      assert_eq!(err.code, ErrorCode::CliError, "{}", err.message);
      assert_eq!(std::fs::read_to_string(d.path().join("projects/-w/s.jsonl")).unwrap(), content);
    }
    // A new session's file with a task's prompt in it (a task ran elsewhere meanwhile) stays.
    let content = format!("{}{foreign}", warm_up("null"));
    let (d, mut cut) = file(&content);
    cut.before = None;
    assert!(cut.undo().is_err());
    assert_eq!(std::fs::read_to_string(d.path().join("projects/-w/s.jsonl")).unwrap(), content);
  }
}
