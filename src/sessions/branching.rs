//! Branching a conversation at a message: `fork` at a message (a new session), `rewind` (the
//! session continues from an earlier message), and what a run needs to continue from there.
//!
//! The CLI continues a resumed (or forked) session from any entry of its live chain
//! (`--resume-session-at`), and refuses, with `--resume-drops-turn`, a truncation that would drop
//! more than the one turn named. Nothing here calls the model: a fork or a rewind is a branch point
//! in the store (`store::Branches`), taken by the session's next run. Until then `getMessages`
//! shows the conversation cut at the pending point; afterwards the CLI has written the new branch
//! (its parent is the point), the old turns stay in the transcript as a dead branch, and the live
//! chain is the new one.
//!
//! Which messages are branch points: a `prompt` (the next prompt follows it; the model sees both
//! as one user turn) and an `assistant` message without tool calls (the end of a turn), at or after
//! the latest compaction. A message inside a tool call (an assistant message with tool calls, their
//! results, a command or notification) is refused with `INVALID_ARGUMENT`, naming the nearest
//! earlier point: a branch never starts in the middle of a tool call.
//!
//! Files: with `fileCheckpoints` (the default) the CLI backs up each file before its edit tools
//! (Write, Edit, NotebookEdit) change it (`CLAUDE_CODE_ENABLE_SDK_FILE_CHECKPOINTING`); a rewind with
//! `files` asks a CLI of the session, started for it in the session's sandbox, to restore the
//! working directory as it was before the first dropped prompt (the control request
//! `rewind_files`): files those tools changed get their content back, files they created go. What
//! other tools did (a `Bash` `rm`, a build) is not in the backups and is not undone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::checkpoints;
use super::mirror::{stored_history, stored_lines};
use super::run::{HeldRun, Ticket};
use super::{ForkRequest, Manager, TaskKind, Wait};
use crate::cli::{self, CancelToken, CliArgs, SessionMode};
use crate::context::{self, ContextInfo};
use crate::error::{Error, ErrorCode, Result};
use crate::store::{self, BranchPoint, ContextSnapshot, NewSession, Session};
use crate::transcript::{self, History, Message, MessageKind};
use crate::validate;

/// A session forked from this one, as `getMessages` lists them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Branch {
  /// The fork.
  pub session_id: String,
  /// The message of this session it continues from; `None`: from the end, as it was then.
  pub at_message_id: Option<String>,
}

/// How long a rewind with files waits for a session that runs a task before it answers
/// `SESSION_BUSY` (at most the manager's `queueTimeoutMs`).
const BUSY_WAIT: Duration = Duration::from_secs(1);

/// The CLI's variable that turns its file backups on (`fileCheckpoints`).
pub(crate) const CHECKPOINTS_ENV: &str = "CLAUDE_CODE_ENABLE_SDK_FILE_CHECKPOINTING";

/// `rewind`'s `files`: restore the working directory too, or only say what that would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilesMode {
  Restore,
  DryRun,
}

/// The working directory's changes of a rewind with `files`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileChanges {
  /// Whether the files were restored (false for a dry run, and when nothing changed).
  pub restored: bool,
  /// The files that changed (a dry run: would change), relative to the working directory.
  pub changed: Vec<String>,
  /// Lines the restore adds back.
  pub insertions: u64,
  /// Lines the restore removes.
  pub deletions: u64,
}

/// What `rewind` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RewindResult {
  pub session: Session,
  /// The message the session now continues from.
  pub to_message_id: String,
  /// Messages no longer on the live conversation (they stay in the transcript as a dead branch).
  pub dropped_messages: usize,
  /// The context meter re-derived at the branch point.
  pub context_info: ContextInfo,
  /// With `files`: the working directory's changes. A dry run changes nothing, the conversation
  /// included.
  pub files: Option<FileChanges>,
}

/// The message `id` of `h` as a branch point: its index and the transcript entry the CLI continues
/// from (the message's last line).
pub(crate) fn branch_point(h: &History, id: &str) -> Result<(usize, String)> {
  let Some(i) = h.messages.iter().position(|m| m.uuid == id) else {
    return Err(Error::new(
      ErrorCode::MessageNotFound,
      format!("no message {id} is on this session's conversation (see getMessages for the ids)"),
    ));
  };
  let ok = |m: &Message| match m.kind {
    MessageKind::Prompt => true,
    MessageKind::Assistant => m.tool_uses().next().is_none(),
    _ => false,
  };
  if i < h.live_from {
    return Err(Error::invalid(format!("message {id} is before the latest compaction; branch from a later message")));
  }
  if !ok(&h.messages[i]) {
    let nearest = h.messages[h.live_from..i].iter().rev().find(|m| ok(m)).map(|m| m.uuid.as_str());
    return Err(Error::invalid(format!(
      "message {id} is inside a tool call, not a turn boundary; branch from a prompt or an answer without tool calls{}",
      nearest.map(|n| format!(" (the nearest before it is {n})")).unwrap_or_default()
    )));
  }
  let line = h.messages[i].line_uuids.last().cloned().unwrap_or_else(|| id.to_owned());
  Ok((i, line))
}

/// The one prompt dropped when `h` is cut after index `i`, if the dropped messages are exactly one
/// turn (a prompt, then answers and tool results): what `--resume-drops-turn` may guard.
pub(crate) fn dropped_turn(h: &History, i: usize) -> Option<String> {
  let rest = &h.messages[i + 1..];
  let first = rest.first().filter(|m| m.kind == MessageKind::Prompt)?;
  rest[1..].iter().all(|m| matches!(m.kind, MessageKind::Assistant | MessageKind::ToolResults)).then(|| first.uuid.clone())
}

/// The context after message `i`: the last model call at or before it, as the API reported it.
fn context_at(h: &History, i: usize, window: u64) -> ContextSnapshot {
  let u = h.messages[..=i].iter().rev().find_map(|m| m.usage.filter(|u| u.context_total() > 0));
  ContextSnapshot {
    tokens: u.map(|u| u.context_total()).unwrap_or(0),
    window,
    source: if u.is_some() { "api" } else { "estimate" }.into(),
    measured_at: store::now_ms(),
  }
}

/// The CLI's answer to `rewind_files`: `{ canRewind, filesChanged, insertions, deletions }`, or
/// `canRewind: false` with why; paths made relative to the working directory.
fn file_changes(v: &Value, cwd: &str) -> Result<FileChanges> {
  if v.get("canRewind").and_then(Value::as_bool) != Some(true) {
    let why = v.get("error").and_then(Value::as_str).unwrap_or("no file backups for that message");
    return Err(Error::invalid(format!("the working directory cannot be restored to that message: {why}")));
  }
  let prefix = format!("{}/", cwd.trim_end_matches('/'));
  let changed = v
    .get("filesChanged")
    .and_then(Value::as_array)
    .map(|a| a.iter().filter_map(Value::as_str).map(|p| p.strip_prefix(&prefix).unwrap_or(p).to_owned()).collect())
    .unwrap_or_default();
  let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
  Ok(FileChanges { restored: false, changed, insertions: n("insertions"), deletions: n("deletions") })
}

/// `h` cut after the message holding transcript entry `line` (a pending rewind).
fn cut_at(h: &mut History, line: &str) {
  if let Some(i) = h.messages.iter().position(|m| m.line_uuids.iter().any(|l| l == line)) {
    h.messages.truncate(i + 1);
  }
}

impl Manager {
  /// The CLI supports branching (`--resume-session-at`, `--resume-drops-turn`), else
  /// `CLI_UNSUPPORTED`, before anything is recorded or spawned.
  fn check_branching_cli(&self) -> Result<()> {
    let program = cli::resolve_cli(self.cfg.claude_path.as_deref(), &self.search_dirs())?;
    match cli::version::of(&program) {
      Some(v) if v < cli::version::BRANCHING => Err(Error::new(ErrorCode::CliUnsupported, {
        let b = cli::version::BRANCHING;
        format!("branching at a message needs claude {}.{}.{} or newer; this one is {}.{}.{}", b.0, b.1, b.2, v.0, v.1, v.2)
      })),
      _ => Ok(()),
    }
  }

  /// The session's conversation as the CLI will continue it: its transcript (PostgreSQL: the
  /// store's copy), cut at a pending rewind.
  pub(crate) async fn live_history(&self, session: &Session, opts: transcript::ReadOptions) -> Result<History> {
    // A prewarmed CLI's warm-up is in the transcript until it is taken back: read after it.
    self.warm.warmed_up(&session.id).await;
    let path = self.transcript_of(session)?;
    let id = session.id.clone();
    let point = self.store_call(Wait::Briefly, async move |s| s.branch_point(&id).await).await?;
    let stored = stored_lines(&self.store, &session.id, opts.max_transcript_bytes).await?;
    // Reading a transcript can take milliseconds: off the async workers.
    self
      .blocking("transcript reader", move || {
        let mut h = match (stored.map(|e| stored_history(&e, &opts)), path) {
          (Some(h), _) => h,
          (None, Some(p)) => transcript::read_messages_with(&p, &opts)?,
          (None, None) => History::default(),
        };
        if let Some(at) = point.and_then(|p| p.resume_at).filter(|_| !h.messages.is_empty()) {
          cut_at(&mut h, &at);
        }
        Ok(h)
      })
      .await
  }

  /// The sessions forked from this one, with the message each forked at.
  pub(crate) async fn branches_of(&self, session: &Session) -> Result<(Vec<Branch>, Option<String>)> {
    let (id, user) = (session.id.clone(), session.user_id.clone());
    self
      .store_call(Wait::Blocking, async move |s| {
        let forks = s.forks_of(&id, &user).await?;
        let own = s.branch_point(&id).await?.and_then(|b| b.fork_at);
        Ok((forks.into_iter().map(|(session_id, at_message_id)| Branch { session_id, at_message_id }).collect(), own))
      })
      .await
  }

  /// `fork` at a message: a new session whose conversation ends at `at_message_id` of the parent's
  /// live conversation; nothing is spawned (the fork's first task continues from there). Without
  /// a message, the fork continues from the end (from a pending rewind's point, if any).
  pub async fn fork_at(&self, session_id: &str, user_id: &str, at_message_id: Option<&str>, title: Option<String>) -> Result<Session> {
    let Some(at) = at_message_id else {
      let child =
        self.fork(ForkRequest { session_id: session_id.to_owned(), user_id: user_id.to_owned(), title, at_message_id: None }).await?;
      let parent = child.parent_id.clone().unwrap_or_default();
      let pending = self.store_call(Wait::Briefly, async move |s| s.branch_point(&parent).await).await?.and_then(|b| b.resume_at);
      if pending.is_some() {
        let (id, b) = (child.id.clone(), BranchPoint { resume_at: pending, ..Default::default() });
        self.store_call(Wait::Blocking, async move |s| s.set_branch_point(&id, &b).await).await?;
      }
      return Ok(child);
    };
    let at = validate::session_id("atMessageId", at)?;
    if let Some(t) = &title {
      validate::title(t)?;
    }
    let parent = self.get_session(session_id, user_id).await?;
    self.check_branching_cli()?;
    let h = self.live_history(&parent, transcript::ReadOptions::default().bounded(self.cfg.max_transcript_bytes)).await?;
    let (i, line) = branch_point(&h, &at)?;
    let window = parent.context.as_ref().map(|c| c.window).unwrap_or(self.cfg.context_window);
    let new = NewSession {
      parent_id: Some(parent.id.clone()),
      title: title.or_else(|| parent.title.clone()),
      model: parent.model.clone(),
      working_directory: parent.working_directory.clone(),
      context: Some(context_at(&h, i, window)),
      cli_cost_watermark: parent.cli_cost_watermark,
      config_dir: parent.config_dir.clone(),
      paused: parent.paused.clone(),
      ..self.new_session(&parent.project_id, &parent.user_id, None, None, Some(parent.working_directory.clone().into()))
    };
    let b = BranchPoint { fork_at: Some(at), resume_at: Some(line), resume_drops: None };
    self
      .store_call(Wait::Blocking, async move |s| {
        let child = s.create_session(&new).await?;
        s.set_branch_point(&child.id, &b).await?;
        Ok(child)
      })
      .await
  }

  /// `rewind`: the session continues from `to_message_id` of its live conversation. Nothing is
  /// spawned; the session's idle warm CLI is stopped (it holds the old branch), the meter is
  /// re-derived at the point, costs already spent stay spent. With `files`, the whole rewind
  /// happens under the session's lease (as a task holds it; `SESSION_BUSY` while one runs).
  pub async fn rewind(&self, session_id: &str, user_id: &str, to_message_id: &str, files: Option<FilesMode>) -> Result<RewindResult> {
    let to = validate::session_id("toMessageId", to_message_id)?;
    let session = self.get_session(session_id, user_id).await?;
    self.check_branching_cli()?;
    let Some(mode) = files else { return self.rewind_to(session, &to, None).await };
    let held = self.hold_for_files(&session).await?;
    let cancel = held.cancel().clone();
    let result = self.rewind_to(held.session.clone(), &to, Some((mode, &cancel))).await;
    let released = held.release(self, result.as_ref().err()).await;
    let result = result?;
    released?;
    Ok(result)
  }

  /// [`Self::rewind`] once the session is held when files are restored.
  async fn rewind_to(&self, session: Session, to: &str, files: Option<(FilesMode, &CancelToken)>) -> Result<RewindResult> {
    if files.is_some() {
      self.files_ready(&session).await?;
    }
    let h = self.live_history(&session, transcript::ReadOptions::default().bounded(self.cfg.max_transcript_bytes)).await?;
    let (i, line) = branch_point(&h, to)?;
    let window = session.context.as_ref().map(|c| c.window).unwrap_or(self.cfg.context_window);
    let ctx = context_at(&h, i, window);
    let drops = dropped_turn(&h, i);
    let dry_run = matches!(files, Some((FilesMode::DryRun, _)));
    let files = match files {
      Some((mode, cancel)) => Some(self.rewind_files(&session, &h, i, mode, cancel).await?),
      None => None,
    };
    let context_info = context::context_info(Some(&ctx), window, self.cfg.compact_threshold, 0);
    let dropped_messages = h.messages.len() - i - 1;
    let to_message_id = to.to_owned();
    if dry_run {
      return Ok(RewindResult { to_message_id, dropped_messages, context_info, session, files });
    }
    self.drop_warm(&session.id).await;
    let (id, c2) = (session.id.clone(), ctx.clone());
    self
      .store_call(Wait::Blocking, async move |s| {
        let old = s.branch_point(&id).await?.unwrap_or_default();
        s.set_branch_point(&id, &BranchPoint { fork_at: old.fork_at, resume_at: Some(line.clone()), resume_drops: drops.clone() }).await?;
        s.set_context(&id, &c2).await
      })
      .await?;
    let session = self.get_session(&session.id, &session.user_id).await?;
    Ok(RewindResult { to_message_id, dropped_messages, context_info, session, files })
  }

  /// Takes the session for a rewind with files as a task takes it (the in-process queue, a
  /// concurrency slot, the lease: fenced and renewed on PostgreSQL), recorded as a task of kind
  /// `rewind`, waiting at most [`BUSY_WAIT`]: `SESSION_BUSY` when a task runs on it (here or on
  /// another node). A CLI still exiting after its task is waited for.
  async fn hold_for_files(&self, session: &Session) -> Result<HeldRun> {
    let (cancel, sink) = (CancelToken::new(), None);
    let ticket = Ticket {
      session,
      task_id: uuid::Uuid::new_v4().to_string(),
      kind: TaskKind::Rewind,
      model: session.model.clone(),
      queue_timeout: BUSY_WAIT.min(self.cfg.queue_timeout),
      queued: Instant::now(),
      threshold: self.cfg.compact_threshold,
      trigger: None,
      cancel: &cancel,
      sink: &sink,
      create: None,
      created: Default::default(),
      early: None,
    };
    match self.acquire(&ticket).await? {
      Ok(held) => Ok(held),
      Err(_) => Err(Error::new(ErrorCode::Aborted, "the rewind was aborted while it waited for its session")),
    }
  }

  /// Before the CLI restores files: no CLI of the session runs anywhere (this manager's warm one
  /// is stopped, other managers' idle ones given up), and on a store that keeps transcripts this
  /// node's copy of the transcript and the session's file backups are the store's.
  async fn files_ready(&self, session: &Session) -> Result<()> {
    self.drop_warm(&session.id).await;
    self.others_gone(&session.id, &CancelToken::new()).await?;
    if !self.store.shares_transcripts() {
      return Ok(());
    }
    self.refresh_for(session, &SessionMode::Resume(session.id.clone()), None).await?;
    let Some(local) = self.transcript_of(session)? else { return Ok(()) };
    let (store, id, max) = (self.store.clone(), session.id.clone(), self.cfg.max_transcript_bytes);
    let wd = PathBuf::from(&session.working_directory);
    self
      .blocking("file backup restore", move || {
        checkpoints::restore(&store, &id, local.root(), max)?;
        checkpoints::rebase_history(&local, &wd, max).map(|_| ())
      })
      .await
  }

  /// Restores the working directory as it was before the first prompt after message `i` (or
  /// says what that would change): once the file history the CLI will act on is checked (see
  /// [`checkpoints::check_history`]), a CLI of the session, started for it in the session's
  /// sandbox while the session is held, answers `rewind_files` (a dry run first, for the list of
  /// files). `cancel`: the session's lease was lost; the CLI is stopped.
  async fn rewind_files(&self, session: &Session, h: &History, i: usize, mode: FilesMode, cancel: &CancelToken) -> Result<FileChanges> {
    let first_dropped = match h.messages[i].kind {
      MessageKind::Prompt => Some(&h.messages[i]),
      _ => h.messages[i + 1..].iter().find(|m| m.kind == MessageKind::Prompt),
    };
    let Some(target) = first_dropped.map(|m| m.uuid.clone()) else { return Ok(FileChanges::default()) };
    if let Some(local) = self.transcript_of(session)? {
      let (wd, id, max) = (PathBuf::from(&session.working_directory), session.id.clone(), self.cfg.max_transcript_bytes);
      self.blocking("file history check", move || checkpoints::check_history(&local, &wd, &id, max)).await?;
    }
    let program = cli::resolve_cli(self.cfg.claude_path.as_deref(), &self.search_dirs())?;
    let mut spec = self.run_spec(session, program, String::new(), None)?;
    let args = CliArgs {
      session: Some(SessionMode::Resume(session.id.clone())),
      permission_mode: Some("default".into()),
      setting_sources: Some(self.cfg.setting_sources.clone()),
      disable_slash_commands: true,
      ..Default::default()
    };
    spec.args = cli::warm_args(&args, false);
    let _token = self.secure(&mut spec).await?;
    let proc = cli::WarmProcess::start(spec)?;
    let handle = proc.handle();
    let ask = |dry_run: bool| {
      let request = json!({ "subtype": "rewind_files", "user_message_id": target, "dry_run": dry_run });
      handle.ask(request, Duration::from_secs(60))
    };
    let outcome = async {
      let preview = ask(true).await?;
      let mut changes = file_changes(&preview, &session.working_directory)?;
      if mode == FilesMode::Restore && !changes.changed.is_empty() {
        file_changes(&ask(false).await?, &session.working_directory)?;
        changes.restored = true;
      }
      Ok(changes)
    };
    let outcome = tokio::select! {
      r = outcome => r,
      _ = cancel.cancelled() => Err(Error::new(ErrorCode::LeaseLost, "the session's lease was lost while the working directory was restored")),
    };
    proc.close(Duration::from_secs(5)).await;
    outcome
  }

  /// Before a run: how the CLI picks the session up, with its pending branch point (a fork's
  /// message, a rewind); returns the point, which the run clears once the CLI ran. `known`: the
  /// point, when the task's start read it.
  pub(crate) async fn continue_from(
    &self,
    session: &Session,
    mode: SessionMode,
    cli: &mut CliArgs,
    known: Option<Option<BranchPoint>>,
  ) -> Result<Option<String>> {
    let branches = !matches!(mode, SessionMode::New(_));
    cli.session = Some(mode);
    if !branches {
      return Ok(None);
    }
    let point = match known {
      Some(point) => point,
      None => {
        let id = session.id.clone();
        self.store_call(Wait::Briefly, async move |s| s.branch_point(&id).await).await?
      }
    };
    let Some(b) = point else { return Ok(None) };
    if b.resume_at.is_some() {
      self.check_branching_cli()?;
    }
    cli.resume_at = b.resume_at.clone();
    cli.resume_drops_turn = b.resume_drops;
    Ok(b.resume_at)
  }

  /// After a run that continued from `at`: the point is taken (or, refused, withdrawn).
  pub(crate) async fn branch_taken(&self, session_id: &str, at: String) {
    let id = session_id.to_owned();
    let _ = self.store_call(Wait::Blocking, async move |s| s.clear_resume(&id, &at).await).await;
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::transcript::{parse_str, ReadOptions};
  use serde_json::json;

  fn history() -> History {
    let line = |v: serde_json::Value| v.to_string();
    let user = |u: &str, p: Option<&str>, c: serde_json::Value| {
      line(json!({"type":"user","uuid":u,"parentUuid":p,"isSidechain":false,"message":{"role":"user","content":c}}))
    };
    let asst = |u: &str, p: &str, id: &str, b: serde_json::Value| {
      line(json!({"type":"assistant","uuid":u,"parentUuid":p,"isSidechain":false,
        "message":{"id":id,"role":"assistant","content":[b],"usage":{"input_tokens":10,"output_tokens":5}}}))
    };
    let text = [
      user("u1", None, json!("one")),
      asst("a1", "u1", "m1", json!({"type":"text","text":"A1"})),
      user("u2", Some("a1"), json!("two")),
      asst("a2", "u2", "m2", json!({"type":"tool_use","id":"t1","name":"Bash","input":{}})),
      user("r2", Some("a2"), json!([{"type":"tool_result","tool_use_id":"t1","content":"ok"}])),
      asst("a3", "r2", "m3", json!({"type":"text","text":"A3"})),
      asst("a3b", "a3", "m3", json!({"type":"text","text":"more"})),
      user("u3", Some("a3b"), json!("three")),
      asst("a4", "u3", "m4", json!({"type":"text","text":"A4"})),
    ]
    .join("\n");
    parse_str(&text, &ReadOptions::default())
  }

  #[test]
  fn points_are_prompts_and_answers_without_tool_calls() {
    let h = history();
    assert_eq!(branch_point(&h, "u1").unwrap(), (0, "u1".into()));
    assert_eq!(branch_point(&h, "a1").unwrap(), (1, "a1".into()));
    // An answer written as several lines continues from its last line.
    assert_eq!(branch_point(&h, "a3").unwrap(), (5, "a3b".into()));
    for inside in ["a2", "r2"] {
      let e = branch_point(&h, inside).unwrap_err();
      assert_eq!(e.code, ErrorCode::InvalidArgument);
      assert!(e.message.contains("nearest before it is u2"), "{}", e.message);
    }
    assert_eq!(branch_point(&h, "nope").unwrap_err().code, ErrorCode::MessageNotFound);
  }

  #[test]
  fn one_dropped_turn_is_guarded_and_several_are_not() {
    let h = history();
    assert_eq!(dropped_turn(&h, 5).as_deref(), Some("u3"));
    assert_eq!(dropped_turn(&h, 1), None, "two turns");
    assert_eq!(dropped_turn(&h, 6), None, "nothing dropped");
    let mut cut = h.clone();
    cut_at(&mut cut, "a3b");
    assert_eq!(cut.messages.len(), 6);
    assert_eq!(context_at(&h, 0, 100).source, "estimate");
    assert_eq!(context_at(&h, 1, 100).tokens, 15);
  }
}
