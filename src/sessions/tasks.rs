//! Running a task or a compaction: validation, the session to run in, the in-process queue, the
//! cross-process lease, a concurrency slot, and the CLI itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::mirror::{finish_mirror, LeaseClock, TaskMirror};
use super::{
  validate_user_project, AbortOnDrop, EventSink, Manager, RunOptions, Tail, TaskError, TaskRequest, TaskResult, PERMISSION_MODES,
};
use crate::cli::stream::{Kind, Line};
use crate::cli::{self, CancelToken, CliArgs, RunOutcome, RunSpec, SessionMode};
use crate::context;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{Begin, Session, TaskStart};
use crate::validate;

impl Manager {
  pub(crate) fn validate_task(&self, r: &TaskRequest) -> Result<CliArgs> {
    validate_user_project(&r.user_id, Some(&r.project_id))?;
    if r.prompt.trim().is_empty() {
      return Err(Error::invalid("prompt must be a non-empty string"));
    }
    if r.prompt.len() > validate::MAX_PROMPT_BYTES {
      return Err(Error::new(
        ErrorCode::ContextOverflow,
        format!(
          "the prompt is {} bytes; the limit is {} bytes, far beyond any model's context window",
          r.prompt.len(),
          validate::MAX_PROMPT_BYTES
        ),
      ));
    }
    if r.prompt.contains('\0') {
      return Err(Error::invalid("prompt contains a NUL byte"));
    }
    if let Some(m) = &r.model {
      validate::model("model", m)?;
    }
    if let Some(m) = &r.fallback_model {
      validate::model("fallbackModel", m)?;
    }
    let max_turns = r.max_turns.map(|t| validate::positive_int("maxTurns", t)).transpose()?;
    if let Some(t) = max_turns {
      if t > 10_000 {
        return Err(Error::invalid("maxTurns must be at most 10000"));
      }
    }
    let tools = |field: &str, list: &Option<Vec<String>>| -> Result<Vec<String>> {
      let list = list.clone().unwrap_or_default();
      if list.len() > 256 {
        return Err(Error::invalid(format!("{field} has more than 256 entries")));
      }
      for t in &list {
        validate::cli_value(field, t, 512)?;
        if t.chars().any(|c| c.is_control()) {
          return Err(Error::invalid(format!("{field} entry {:?} contains a control character", t)));
        }
        validate::one_tool_rule(field, t)?;
      }
      Ok(list)
    };
    let allowed_tools = tools("allowedTools", &r.allowed_tools)?;
    let mut disallowed_tools = tools("disallowedTools", &r.disallowed_tools)?;
    if !self.cfg.allow_background_tools {
      for t in super::config::BACKGROUND_TOOLS {
        if !disallowed_tools.iter().any(|d| d == t) {
          disallowed_tools.push(t.to_owned());
        }
      }
    }
    if let Some(m) = &r.permission_mode {
      if !PERMISSION_MODES.contains(&m.as_str()) {
        return Err(Error::invalid(format!("permissionMode must be one of default, acceptEdits, plan; got {:?}", m)));
      }
      if m == "bypassPermissions" && !self.cfg.allow_bypass_permissions {
        return Err(Error::invalid(
          "permissionMode \"bypassPermissions\" is refused: construct the SessionManager with allowBypassPermissions: true to allow it",
        ));
      }
    }
    if let Some(s) = &r.append_system_prompt {
      validate::cli_value("appendSystemPrompt", s, 64 * 1024)?;
    }
    if let Some(b) = r.max_budget_usd {
      validate::budget_usd("maxBudgetUsd", b)?;
    }
    if let Some(t) = r.compact_threshold {
      validate::percent("compactThreshold", t)?;
    }
    if let Some(t) = r.timeout_ms {
      validate::positive_int("timeoutMs", t)?;
    }
    if let Some(t) = r.queue_timeout_ms {
      validate::non_negative_int("queueTimeoutMs", t)?;
    }
    if let Some(t) = &r.title {
      validate::title(t)?;
    }
    if r.fork_session == Some(true) && r.session_id.is_none() {
      return Err(Error::invalid("forkSession needs the sessionId of the session to fork"));
    }
    Ok(CliArgs {
      session: None,
      model: r.model.clone(),
      max_turns,
      allowed_tools,
      disallowed_tools,
      // Always explicit: no settings file can change what the server decided.
      permission_mode: Some(r.permission_mode.clone().unwrap_or_else(|| "default".into())),
      append_system_prompt: r.append_system_prompt.clone(),
      max_budget_usd: r.max_budget_usd,
      fallback_model: r.fallback_model.clone(),
      disable_slash_commands: !self.slash_command_allowed(&r.prompt),
      setting_sources: Some(self.cfg.setting_sources.clone()),
    })
  }

  /// Whether a prompt is a slash command the server allowed (`allowSlashCommands`); every other
  /// prompt runs with the CLI's commands off, so it is only text.
  fn slash_command_allowed(&self, prompt: &str) -> bool {
    let command = prompt.split_whitespace().next().unwrap_or("");
    command.starts_with('/') && self.cfg.allow_slash_commands.iter().any(|c| c == command)
  }

  /// How the CLI picks the session up: resume it, fork it from its parent on its first run, or
  /// start it under its id.
  pub(crate) async fn session_mode(&self, session: &Session) -> Result<SessionMode> {
    if session.materialized {
      return Ok(SessionMode::Resume(session.id.clone()));
    }
    if let Some(parent) = &session.parent_id {
      let (pid, user) = (parent.clone(), session.user_id.clone());
      if let Some(p) = self.point(move |s| s.get_session(&pid, &user)).await? {
        if p.materialized {
          return Ok(SessionMode::Fork { parent: p.id, child: session.id.clone() });
        }
      }
    }
    Ok(SessionMode::New(session.id.clone()))
  }

  /// Rejects a prompt whose own tokens exceed the window, before anything is stored or spawned.
  /// A token is at least one byte, so only prompts longer than the window in bytes are counted.
  pub(crate) async fn check_prompt_fits(&self, prompt: &str, window: u64) -> Result<()> {
    if (prompt.len() as u64) <= window {
      return Ok(());
    }
    let text = prompt.to_owned();
    let n = tokio::task::spawn_blocking(move || crate::context::tokens::count(&text, crate::context::tokens::Encoding::O200kBase) as u64)
      .await
      .map_err(|e| Error::internal(format!("token counting failed: {e}")))?;
    if n >= window {
      return Err(Error::new(
        ErrorCode::ContextOverflow,
        format!("the prompt alone is about {n} tokens; the context window is {window}: split it or send it as a file the agent can read"),
      ));
    }
    Ok(())
  }

  /// Runs a task. Invalid requests are rejected before anything is spawned; failures of the model
  /// or the CLI resolve with `success: false` and a code.
  pub async fn execute_task(self: &Arc<Self>, r: TaskRequest, sink: Option<EventSink>, cancel: CancelToken) -> Result<TaskResult> {
    self.execute_task_with(r, sink, cancel, None).await
  }

  /// [`Self::execute_task`] with a permission callback: the CLI asks it before a tool that needs
  /// permission runs (`--permission-prompt-tool=stdio`, so the task runs in a warm process).
  pub async fn execute_task_with(
    self: &Arc<Self>,
    r: TaskRequest,
    sink: Option<EventSink>,
    cancel: CancelToken,
    can_use_tool: Option<cli::CanUseTool>,
  ) -> Result<TaskResult> {
    self.check_open()?;
    let _registered = self.register(&cancel);
    let mut args = self.validate_task(&r)?;
    let session_id = r.session_id.as_deref().map(|s| validate::session_id("sessionId", s)).transpose()?;
    if session_id.is_some() && r.working_directory.is_some() {
      return Err(Error::invalid(
        "workingDirectory applies to new sessions only: a session always runs in its own folder, where the CLI keeps its transcript",
      ));
    }
    let wd = self.working_dir(r.working_directory.as_deref())?;
    self.check_prompt_fits(&r.prompt, self.cfg.context_window).await?;
    let program = cli::resolve_cli(self.cfg.claude_path.as_deref(), &self.search_dirs())?;

    // The session to run in.
    let (session, forked_from) = match (&session_id, r.fork_session.unwrap_or(false)) {
      (None, _) => {
        let mut new = self.new_session(&r.project_id, &r.user_id, None, r.model.clone(), wd);
        new.title = r.title.clone();
        (self.point(move |s| s.create_session(&new)).await?, None)
      }
      (Some(id), fork) => {
        let s = self.get_session(id, &r.user_id).await?;
        if s.project_id != r.project_id {
          return Err(Error::not_found(id));
        }
        if fork {
          let child = self.fork(id, &r.user_id, r.title.clone()).await?;
          (child, Some(s.id))
        } else {
          (s, None)
        }
      }
    };
    if args.model.is_none() {
      args.model = Some(session.model.clone());
    }
    let threshold = r.compact_threshold.unwrap_or(self.cfg.compact_threshold);
    let mut compacted = None;
    if r.auto_compact == Some(true) && session.materialized {
      let next = {
        let (me, s2, p) = (self.clone(), session.clone(), r.prompt.clone());
        tokio::task::spawn_blocking(move || me.estimate_prompt(&s2, &p)).await.unwrap_or(0)
      };
      let info = context::context_info(session.context.as_ref(), self.cfg.context_window, threshold, next);
      if info.should_compact {
        let done = self.compact_inner(&session, None, "auto", sink.clone(), cancel.clone()).await?;
        compacted = done.compactions.into_iter().next();
      }
    }
    let spec = self.run_spec(&session, program, r.prompt.clone(), r.timeout_ms.map(|t| Duration::from_millis(t as u64)))?;
    let include_partials = r.include_partial_messages.unwrap_or(false);
    let queue_timeout = r.queue_timeout_ms.map(|t| Duration::from_millis(t as u64));
    let opts = RunOptions { kind: "task", cli: args, include_partials, threshold, trigger: None, queue_timeout, can_use_tool };
    let mut res = self.run_locked(&session, spec, sink, cancel, opts).await?;
    res.parent_session_id = forked_from.or(res.parent_session_id);
    res.compacted = compacted.is_some() || res.compacted;
    if let Some(c) = compacted {
      res.compactions.insert(0, c);
    }
    Ok(res)
  }

  /// How a CLI process for the session is started: its folder, environment, priority and limits.
  /// The argv is built once the session is held (see `run_locked`).
  pub(crate) fn run_spec(&self, session: &Session, program: PathBuf, stdin: String, timeout: Option<Duration>) -> Result<RunSpec> {
    self.ensure_workspace(session)?;
    Ok(RunSpec {
      program,
      args: vec![],
      cwd: PathBuf::from(&session.working_directory),
      env: self.child_env(session)?,
      stdin,
      timeout,
      stall_timeout: self.cfg.stall_timeout,
      niceness: self.cfg.cli_niceness,
      mirror: None,
      confine: None,
    })
  }

  /// Takes the session (in-process queue, then the cross-process lease, then a concurrency slot),
  /// runs the CLI and records the end.
  pub(crate) async fn run_locked(
    &self,
    session: &Session,
    mut spec: RunSpec,
    sink: Option<EventSink>,
    cancel: CancelToken,
    o: RunOptions,
  ) -> Result<TaskResult> {
    let RunOptions { kind, mut cli, include_partials, threshold, trigger, queue_timeout, can_use_tool } = o;
    let queue_timeout = queue_timeout.unwrap_or(self.cfg.queue_timeout);
    let queued = Instant::now();
    let busy = || {
      Error::new(ErrorCode::SessionBusy, format!("session {} is running another task; waited {} ms", session.id, queue_timeout.as_millis()))
    };
    let task_id = uuid::Uuid::new_v4().to_string();
    // The in-process queue, in arrival order (the lock future is kept, so its place in line too).
    // Time behind a CLI that is exiting after its task settled does not count against
    // `queueTimeoutMs` (the caller sees no task running then).
    let queued_for_lock = Instant::now();
    let lock = self.session_lock(&session.id);
    let mut acquire = std::pin::pin!(lock.lock_owned());
    // The first poll takes the task's place in line; only then is the caller told it is queued,
    // so that a request sent on seeing `task_queued` always queues behind this one (the event
    // reaches JavaScript on its own thread, while this worker may not have polled yet).
    let mut first = Some(std::future::poll_fn(|cx| std::task::Poll::Ready(std::future::Future::poll(acquire.as_mut(), cx))).await);
    if let Some(s) = &sink {
      s(json!({ "type": "task_queued", "sessionId": session.id }));
    }
    let mut deadline = tokio::time::Instant::now() + queue_timeout;
    let guard = loop {
      if let Some(std::task::Poll::Ready(g)) = first.take() {
        break g;
      }
      tokio::select! {
        g = &mut acquire => break g,
        _ = tokio::time::sleep_until(deadline) => {
          if self.finishing.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&session.id) {
            deadline = tokio::time::Instant::now() + Duration::from_millis(20);
          } else {
            return Err(busy());
          }
        }
        _ = cancel.cancelled() => return self.aborted_in_queue(session, &task_id, queued, threshold),
      }
    };
    // A concurrency slot, within what is left of the queue timeout; no task row exists yet, so a
    // task waiting here is not `running` and does not hold the session against deletion.
    let permit = match self.slots.clone().try_acquire_owned() {
      Ok(p) => p,
      Err(_) => {
        let left = queue_timeout.saturating_sub(queued.elapsed());
        tokio::select! {
          p = tokio::time::timeout(left, self.slots.clone().acquire_owned()) => match p {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(Error::new(ErrorCode::Closed, "the manager was closed")),
            Err(_) => return Err(Error::new(
              ErrorCode::SessionBusy,
              format!(
                "no free task slot (maxConcurrentTasks {} in this process) within {} ms",
                self.cfg.max_concurrent_tasks,
                queue_timeout.as_millis()
              ),
            )),
          },
          _ = cancel.cancelled() => return self.aborted_in_queue(session, &task_id, queued, threshold),
        }
      }
    };
    let model = cli.model.clone().unwrap_or_else(|| session.model.clone());
    // Once the lease is ours, the session is read again (in the same trip to the store): a task
    // that ran while this one waited (in this process or another) may have created its
    // transcript or moved its cost watermark.
    // Time spent behind another process's exiting CLI does not count, as above.
    let mut excused = Duration::ZERO;
    let mut last = Instant::now();
    let mut taken_at;
    let fresh = loop {
      if cancel.is_cancelled() {
        return self.aborted_in_queue(session, &task_id, queued, threshold);
      }
      taken_at = Instant::now();
      let (sid, uid, tid, m, owner, ttl, max_running) = (
        session.id.clone(),
        session.user_id.clone(),
        task_id.clone(),
        model.clone(),
        self.owner.clone(),
        self.cfg.lease_ttl,
        self.cfg.max_concurrent_tasks_total,
      );
      let began = self
        .point(move |s| {
          let start = TaskStart { task_id: &tid, kind, model: &m, owner: &owner, ttl, max_running };
          Ok(match s.begin_task(&sid, &start)? {
            Begin::Started => Ok(s.get_session(&sid, &uid).ok().flatten()),
            Begin::SessionHeld => Err(Some(s.lease_kept_after_end(&sid)?)),
            // Every place of `maxConcurrentTasksTotal` is taken, in this process or another.
            Begin::Full => Err(None),
          })
        })
        .await?;
      let exiting_elsewhere = match began {
        Ok(fresh) => break fresh,
        Err(exiting) => exiting,
      };
      let now = Instant::now();
      if exiting_elsewhere == Some(true) {
        excused += now - last;
      }
      last = now;
      if queued_for_lock.elapsed().saturating_sub(excused) >= queue_timeout {
        return Err(match exiting_elsewhere {
          Some(_) => busy(),
          None => Error::new(
            ErrorCode::SessionBusy,
            format!(
              "no free task slot (maxConcurrentTasksTotal {} across the processes sharing the database) within {} ms",
              max_running.unwrap_or_default(),
              queue_timeout.as_millis()
            ),
          ),
        });
      }
      tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        _ = cancel.cancelled() => return self.aborted_in_queue(session, &task_id, queued, threshold),
      }
    };
    let session = &fresh.unwrap_or_else(|| session.clone());
    let mode = self.session_mode(session).await;
    self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(task_id.clone(), cancel.clone());
    // The lease is the task's until the start of its last renewal plus the TTL (minus a margin);
    // past that, or once a renewal is refused, the CLI is stopped (see `LeaseClock`).
    let clock = LeaseClock::new(taken_at, self.cfg.lease_ttl, cancel.clone());
    let renew = AbortOnDrop(tokio::spawn(clock.clone().renew_loop(self.store.clone(), session.id.clone(), task_id.clone())));
    // One CLI per session: an idle warm one kept by another manager goes first.
    let mode = match mode {
      Ok(m) => self.others_gone(&session.id, &cancel).await.map(|()| m),
      Err(e) => Err(e),
    };
    // PostgreSQL: this node's copy of the conversation made the store's, and the CLI's transcript
    // mirrored into the store while it runs.
    let mut task_mirror = None;
    let mode = match mode {
      Ok(m) if self.store.shares_transcripts() => match self.start_mirror(session, &task_id, &m, &clock).await {
        Ok(tm) => {
          spec.mirror = Some(tm.tx.clone());
          task_mirror = Some(tm);
          Ok(m)
        }
        Err(e) => Err(e),
      },
      other => other,
    };
    // What the key proxy meters for the task's model calls.
    let meter = self.task_meter(session, &task_id);
    let outcome = match mode {
      Ok(mode) if self.runs_warm(kind, can_use_tool.is_some(), cli.max_budget_usd.is_some()) => {
        cli.session = Some(mode);
        let slot = Arc::new(super::slot::TaskSlot::new(self.slots.clone(), permit));
        let can_use_tool =
          can_use_tool.map(|h| self.answerable(h, &session.id, &session.working_directory, &task_id, Arc::downgrade(&slot)));
        self
          .run_warm(slot, session, &task_id, &cli, spec, sink, &cancel, include_partials, can_use_tool, meter.clone())
          .await
          .map(|o| (o, None))
      }
      Ok(mode) => {
        // One CLI per session: a warm one left from an earlier task goes first.
        self.drop_warm(&session.id).await;
        cli.session = Some(mode);
        spec.args = cli::build_args(&cli);
        if spec.mirror.is_some() && super::mirror::mirror_supported(spec.cli_program()).await {
          spec.args.push(cli::mirror::FLAG.into());
        }
        match self.secure(&mut spec).await {
          // The key proxy's token for this CLI lives until its result is in; its model calls are metered and
          // charged to the task.
          Ok(token) => {
            if let Some(t) = &token {
              t.attach(Some(meter.clone()));
            }
            let out = self.run_cli(permit, &session.id, &task_id, spec, sink, &cancel, include_partials).await;
            drop(token);
            out.map(|(mut o, tail)| {
              o.metered = Some(meter.snapshot());
              (o, tail)
            })
          }
          Err(e) => Err(e),
        }
      }
      Err(e) => Err(e),
    };
    let (mut outcome, tail) = match outcome {
      Ok((out, tail)) => (Ok(out), tail),
      Err(e) => (Err(e), None),
    };
    // The turn is in the store before the caller sees the result (or the task says why not).
    if let (Some(m), Ok(_)) = (&task_mirror, &outcome) {
      if let Err(why) = m.flush().await {
        if !clock.is_lost() {
          outcome = Err(Error::store(why));
        }
      }
    }
    let local = task_mirror.as_ref().and_then(|m| m.local.clone());
    let marker = self.marker_path(&session.id);
    if clock.is_lost() {
      // The CLI is being stopped (the clock cancelled the run); nothing more is written for it.
      if let Some(tail) = tail {
        tail.await;
      }
      drop(task_mirror);
      drop(renew);
      self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&task_id);
      return Ok(self.finish_lease_lost(session, &task_id, queued, threshold).await);
    }
    let Some(tail) = tail else {
      if let (Some(m), Some(local)) = (task_mirror, local) {
        finish_mirror(m, self.store.clone(), session.id.clone(), local, marker).await;
      }
      if clock.is_lost() {
        drop(renew);
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&task_id);
        return Ok(self.finish_lease_lost(session, &task_id, queued, threshold).await);
      }
      drop(renew);
      self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&task_id);
      return self.finish(session, &task_id, outcome, queued, threshold, trigger, false).await;
    };
    // The task settles at the CLI's result line. The session stays held (the in-process queue,
    // the lease and its renewal, the concurrency slot) until the CLI has exited, so the next task
    // on it starts only after this CLI is gone; `close()` waits for that too.
    let res = self.finish(session, &task_id, outcome, queued, threshold, trigger, true).await;
    // If the end could not be recorded, the row is still `running`: leave the lease to expire,
    // and the next task marks it `interrupted` (as after a crash).
    let recorded = res.is_ok();
    let (exiting_tx, exiting_rx) = tokio::sync::watch::channel(());
    self.finishing.lock().unwrap_or_else(|p| p.into_inner()).insert(session.id.clone(), exiting_rx);
    let (store, running, finishing, sid, tid) =
      (self.store.clone(), self.running.clone(), self.finishing.clone(), session.id.clone(), task_id.clone());
    let mirror_store = self.store.clone();
    tokio::spawn(async move {
      tail.await;
      if let (Some(m), Some(local)) = (task_mirror, local) {
        finish_mirror(m, mirror_store, sid.clone(), local, marker).await;
      }
      drop(renew);
      if recorded {
        let (sid2, tid2) = (sid.clone(), tid.clone());
        let _ = tokio::task::spawn_blocking(move || store.release_lease(&sid2, &tid2)).await;
      }
      running.lock().unwrap_or_else(|p| p.into_inner()).remove(&tid);
      finishing.lock().unwrap_or_else(|p| p.into_inner()).remove(&sid);
      drop(guard);
      drop(exiting_tx);
    });
    res
  }

  /// PostgreSQL, once the lease is the task's: this node's copy of the transcript the CLI will
  /// read refreshed from the store, and the writer that mirrors the CLI's lines into it.
  async fn start_mirror(&self, session: &Session, task_id: &str, mode: &SessionMode, clock: &LeaseClock) -> Result<TaskMirror> {
    // A warm process that may take the task wrote this node's copy itself, and reads only its own.
    if !self.warm.fresh_for(&session.id, session.task_count) {
      self.refresh_for(session, mode).await?;
    }
    let sid = session.id.clone();
    let head = self.db(move |s| s.transcript_head(&sid)).await?;
    // The local copy as the CLI will find it (just refreshed from the store when it was behind).
    let local = self.transcript_of(session).ok().flatten();
    let mut m = TaskMirror::start(self.store.clone(), &session.id, task_id, head, local, clock.clone(), false);
    m.max_bytes = self.cfg.max_transcript_bytes;
    Ok(m)
  }

  /// A task aborted before it got its session: one `aborted` row, and a result saying so.
  /// A task aborted before it got its session or a slot: no task row (it never started), and a
  /// result saying so.
  pub(crate) fn aborted_in_queue(&self, session: &Session, task_id: &str, queued: Instant, threshold: f64) -> Result<TaskResult> {
    let msg = "the task was aborted while it waited for its session";
    let mut res =
      TaskResult::empty(session, task_id, context::context_info(session.context.as_ref(), self.cfg.context_window, threshold, 0));
    res.duration_total_ms = queued.elapsed().as_millis() as u64;
    res.error = Some(TaskError { code: ErrorCode::Aborted.as_str().into(), message: msg.into(), status: None });
    Ok(res)
  }

  #[allow(clippy::too_many_arguments, reason = "the parts of one run, passed once; no other caller")]
  pub(crate) async fn run_cli(
    &self,
    permit: tokio::sync::OwnedSemaphorePermit,
    session_id: &str,
    task_id: &str,
    spec: RunSpec,
    sink: Option<EventSink>,
    cancel: &CancelToken,
    include_partials: bool,
  ) -> Result<(RunOutcome, Option<Tail>)> {
    if let Some(s) = &sink {
      s(json!({ "type": "task_started", "sessionId": session_id, "taskId": task_id }));
    }
    let forward = |line: &Line| {
      if let Some(s) = &sink {
        if include_partials || !matches!(line.kind, Kind::Partial { .. }) {
          s(line.raw.clone());
        }
      }
    };
    let (out, tail) = cli::run_until_result(&spec, cancel, forward, true).await?;
    // A CLI that was killed leaves its per-process files; one that exited removed them.
    let leftovers = per_process_files(&spec, out.pid);
    let remove = move || {
      for f in leftovers {
        let _ = std::fs::remove_file(f);
      }
    };
    let Some(tail) = tail else {
      // Already gone: stopped (abort, timeout, stall) or ended without a result.
      remove();
      return Ok((out, None));
    };
    // The slot is the CLI's: it is freed when the CLI has exited.
    let tail: Tail = Box::pin(async move {
      tail.finish().await;
      remove();
      drop(permit);
    });
    Ok((out, Some(tail)))
  }

  /// Compacts a session through the CLI's `/compact`.
  pub async fn compact(
    &self,
    session_id: &str,
    user_id: &str,
    instructions: Option<String>,
    sink: Option<EventSink>,
    cancel: CancelToken,
  ) -> Result<TaskResult> {
    self.check_open()?;
    let _registered = self.register(&cancel);
    if let Some(i) = &instructions {
      validate::cli_value("summaryInstructions", i, 64 * 1024)?;
    }
    let session = self.get_session(session_id, user_id).await?;
    self.compact_inner(&session, instructions, "manual", sink, cancel).await
  }

  pub(crate) async fn compact_inner(
    &self,
    session: &Session,
    instructions: Option<String>,
    trigger: &'static str,
    sink: Option<EventSink>,
    cancel: CancelToken,
  ) -> Result<TaskResult> {
    // A fork that has not run yet compacts its parent's conversation into its own transcript.
    if matches!(self.session_mode(session).await?, SessionMode::New(_)) {
      return Err(Error::new(
        ErrorCode::CompactFailed,
        format!("session {} has no conversation yet; there is nothing to compact", session.id),
      ));
    }
    let program = cli::resolve_cli(self.cfg.claude_path.as_deref(), &self.search_dirs())?;
    // The one process that keeps the CLI's commands on: its prompt is ours, `/compact`.
    let args = CliArgs {
      model: Some(session.model.clone()),
      permission_mode: Some("default".into()),
      setting_sources: Some(self.cfg.setting_sources.clone()),
      ..Default::default()
    };
    let prompt = match instructions {
      Some(i) => format!("/compact {i}"),
      None => "/compact".to_string(),
    };
    let spec = self.run_spec(session, program, prompt, None)?;
    let opts = RunOptions {
      kind: "compact",
      cli: args,
      include_partials: false,
      threshold: self.cfg.compact_threshold,
      trigger: Some(trigger),
      queue_timeout: None,
      can_use_tool: None,
    };
    let res = self.run_locked(session, spec, sink, cancel, opts).await?;
    if res.compactions.is_empty() {
      let why =
        res.error.as_ref().map(|e| format!("{}: {}", e.code, e.message)).unwrap_or_else(|| "the CLI did not confirm a compaction".into());
      return Err(Error::new(
        ErrorCode::CompactFailed,
        format!("compaction of session {} failed ({why}); the session is unchanged", session.id),
      ));
    }
    Ok(res)
  }
}

/// Removes what [`per_process_files`] names (after the CLI was killed).
pub(crate) fn remove_per_process_files(spec: &RunSpec, pid: Option<u32>) {
  for f in per_process_files(spec, pid) {
    let _ = std::fs::remove_file(f);
  }
}

/// The files a CLI keeps while it runs, named by its pid: its session file and key under the
/// configuration folder, and its messaging socket. Inside the sandbox they are on tmpfs mounts
/// that vanish with it, so there is nothing to remove.
fn per_process_files(spec: &RunSpec, pid: Option<u32>) -> Vec<PathBuf> {
  let (Some(pid), false) = (pid, spec.args.iter().any(|a| a == "--die-with-parent")) else {
    return vec![];
  };
  let var = |k: &str| spec.env.iter().rev().find(|(n, _)| n == k).map(|(_, v)| PathBuf::from(v));
  let mut files = vec![];
  if let Some(config) = var("CLAUDE_CONFIG_DIR") {
    files.push(config.join("sessions").join(format!("{pid}.json")));
    files.push(config.join("sessions").join(format!("{pid}.key")));
  }
  let tmp = var("TMPDIR").unwrap_or_else(|| PathBuf::from("/tmp"));
  files.push(tmp.join("cc-socks").join(format!("{pid}.sock")));
  files
}
