//! A task or a compaction asked for: the request checked, the session to run in (new, resumed or
//! forked), an automatic compaction first when the context is nearly full; then the run itself
//! (`run/`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::run::RunOptions;
use super::{CompactRequest, CompactTrigger, EventSink, Manager, PermissionMode, TaskKind, TaskRequest, TaskResult, Wait};
use crate::cli::{self, CancelToken, CliArgs, RunSpec, SessionMode};
use crate::context;
use crate::error::{Error, ErrorCode, Result};
use crate::store::Session;

impl Manager {
  /// The CLI's arguments for a task: what the request asks for (its fields were checked where it
  /// came in), with what the manager's settings add or refuse.
  pub(crate) fn task_args(&self, r: &TaskRequest) -> Result<CliArgs> {
    let mut disallowed_tools = r.disallowed_tools.clone();
    if !self.cfg.allow_background_tools {
      for t in super::config::BACKGROUND_TOOLS {
        if !disallowed_tools.iter().any(|d| d == t) {
          disallowed_tools.push(t.to_owned());
        }
      }
    }
    let permission_mode = r.permission_mode.unwrap_or_default();
    if permission_mode == PermissionMode::BypassPermissions && !self.cfg.allow_bypass_permissions {
      return Err(Error::invalid(
        "permissionMode \"bypassPermissions\" is refused: construct the SessionManager with allowBypassPermissions: true to allow it",
      ));
    }
    Ok(CliArgs {
      session: None,
      resume_at: None,
      resume_drops_turn: None,
      model: r.model.clone(),
      max_turns: r.max_turns.map(u64::from),
      allowed_tools: r.allowed_tools.clone(),
      disallowed_tools,
      // Always explicit: no settings file can change what the server decided.
      permission_mode: Some(permission_mode.as_str().to_owned()),
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
      if let Some(p) = self.store_call(Wait::Briefly, async move |s| s.get_session(&pid, &user).await).await? {
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
    let mut args = self.task_args(&r)?;
    let wd = self.working_dir(r.working_directory.as_deref())?;
    self.check_prompt_fits(&r.prompt, self.cfg.context_window).await?;
    let program = cli::resolve_cli(self.cfg.claude_path.as_deref(), &self.search_dirs())?;

    // The session to run in.
    // A new session is stored with the task's start, in one step (`Backend::create_and_start`).
    let mut create = None;
    let (session, forked_from) = match (&r.session_id, r.fork_session) {
      (None, _) => {
        let mut new = self.new_session(&r.project_id, &r.user_id, None, r.model.clone(), wd);
        new.title = r.title.clone();
        let session = new.unstored();
        create = Some(new);
        (session, None)
      }
      (Some(id), fork) => {
        let s = self.get_session(id, &r.user_id).await?;
        if s.project_id != r.project_id {
          return Err(Error::not_found(id));
        }
        if fork || r.at_message_id.is_some() {
          let child = self.fork_at(id, &r.user_id, r.at_message_id.as_deref(), r.title.clone()).await?;
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
    if r.auto_compact && session.materialized {
      let next = self.estimate_prompt(&session, &r.prompt).await;
      let info = context::context_info(session.context.as_ref(), self.cfg.context_window, threshold, next);
      if info.should_compact {
        let done = self.compact_inner(&session, None, CompactTrigger::Auto, sink.clone(), cancel.clone()).await?;
        compacted = done.compactions.into_iter().next();
      }
    }
    let spec = self.run_spec(&session, program, r.prompt.clone(), r.timeout)?;
    let include_partials = r.include_partial_messages;
    let opts = RunOptions {
      kind: TaskKind::Task,
      cli: args,
      include_partials,
      threshold,
      trigger: None,
      queue_timeout: r.queue_timeout,
      can_use_tool,
      create,
    };
    let mut res = self.run_locked(&session, spec, sink, cancel, opts).await?;
    res.parent_session_id = forked_from.or(res.parent_session_id);
    res.compacted = compacted.is_some() || res.compacted;
    if let Some(c) = compacted {
      res.compactions.insert(0, c);
    }
    Ok(res)
  }

  /// How a CLI process for the session is started: its folder, environment, priority and limits.
  /// The argv is built once the session is in line for the run (see `run_locked`).
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

  /// Compacts a session through the CLI's `/compact`.
  pub async fn compact(&self, r: CompactRequest, sink: Option<EventSink>, cancel: CancelToken) -> Result<TaskResult> {
    self.check_open()?;
    let _registered = self.register(&cancel);
    let session = self.get_session(&r.session_id, &r.user_id).await?;
    self.compact_inner(&session, r.summary_instructions, CompactTrigger::Manual, sink, cancel).await
  }

  pub(crate) async fn compact_inner(
    &self,
    session: &Session,
    instructions: Option<String>,
    trigger: CompactTrigger,
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
      kind: TaskKind::Compact,
      cli: args,
      include_partials: false,
      threshold: self.cfg.compact_threshold,
      trigger: Some(trigger),
      queue_timeout: None,
      can_use_tool: None,
      create: None,
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
