//! The session API: creating, listing, forking, archiving and deleting sessions, the context
//! meter, prompt estimates and the conversation history. Every call is scoped by `userId`.

use std::path::PathBuf;
use std::sync::Arc;

use super::mirror::{stored_history, stored_lines};
use super::{
  validate_user_project, CleanupRequest, ForkRequest, ListRequest, Manager, MessagesOptions, MessagesPage, PromptEstimate,
  ThresholdOptions, Wait,
};
use crate::context::{self, estimate, ContextInfo};
use crate::error::{Error, Result};
use crate::store::TranscriptEntry;
use crate::store::{self, Compaction, ListQuery, NewSession, Session};
use crate::{transcript, validate};

impl Manager {
  pub async fn list_sessions(&self, r: ListRequest) -> Result<Vec<Session>> {
    let q = ListQuery {
      user_id: r.user_id,
      project_id: r.project_id,
      status: r.status.map(|s| s.as_str().to_owned()),
      parent_id: r.parent_id,
      limit: r.limit,
      offset: r.offset,
    };
    self.store_call(Wait::Blocking, async move |s| s.list_sessions(&q).await).await
  }

  pub async fn get_session(&self, session_id: &str, user_id: &str) -> Result<Session> {
    let id = validate::session_id("sessionId", session_id)?;
    validate::id("userId", user_id)?;
    let user = user_id.to_owned();
    let shown = id.clone();
    self.store_call(Wait::Briefly, async move |s| s.get_session(&id, &user).await).await?.ok_or_else(|| Error::not_found(&shown))
  }

  pub async fn get_or_create(
    &self,
    project_id: &str,
    user_id: &str,
    prefer_active: bool,
    working_directory: Option<&str>,
  ) -> Result<(Session, bool)> {
    validate_user_project(user_id, Some(project_id))?;
    let wd = self.working_dir(working_directory)?;
    let new = self.new_session(project_id, user_id, None, None, wd);
    self.store_call(Wait::Blocking, async move |s| s.get_or_create(&new, prefer_active).await).await
  }

  pub async fn start_fresh(
    &self,
    project_id: &str,
    user_id: &str,
    session_id: Option<&str>,
    working_directory: Option<&str>,
  ) -> Result<(Session, u64)> {
    validate_user_project(user_id, Some(project_id))?;
    // A client never picks a new session's id: `sessionId` names the user's own session of this
    // project to start over from (archived with the project's other active sessions); a missing
    // id, a retired one and another user's all answer `SESSION_NOT_FOUND`, alike.
    if let Some(id) = session_id {
      let id = validate::session_id("sessionId", id)?;
      let from = self.get_session(&id, user_id).await?;
      if from.project_id != project_id {
        return Err(Error::not_found(&id));
      }
    }
    let wd = self.working_dir(working_directory)?;
    let new = self.new_session(project_id, user_id, None, None, wd);
    self.store_call(Wait::Blocking, async move |s| s.start_fresh(&new).await).await
  }

  pub async fn archive_session(&self, session_id: &str, user_id: &str) -> Result<Session> {
    let id = validate::session_id("sessionId", session_id)?;
    validate::id("userId", user_id)?;
    let user = user_id.to_owned();
    self.store_call(Wait::Blocking, async move |s| s.archive_session(&id, &user).await).await
  }

  /// Deletes a session's rows and, unless `keep_transcript`, the CLI's transcript of it.
  pub async fn delete_session(&self, session_id: &str, user_id: &str, keep_transcript: bool) -> Result<()> {
    let session = self.get_session(session_id, user_id).await?;
    let (id, user) = (session.id.clone(), user_id.to_owned());
    self.store_call(Wait::Blocking, async move |s| s.delete_session(&id, &user).await).await?;
    self.deleted(&session, keep_transcript).await
  }

  /// What a session deleted from the store leaves in this process: its CLIs, its transcript.
  async fn deleted(&self, session: &Session, keep_transcript: bool) -> Result<()> {
    self.waiting.rules.forget(&session.id);
    // A prewarm of the session in this process is stopped; once it has ended its CLI is gone
    // (or kept, if it was past stopping: dropped below). One that starts later reads the session
    // after it is registered, and finds it deleted.
    self.warm.stop_prewarm(&session.id).await;
    self.drop_warm(&session.id).await;
    if !keep_transcript {
      self.remove_transcript(session)?;
    }
    Ok(())
  }

  /// Removes a deleted session's transcript (and the folder of its subagents' transcripts):
  /// the entries themselves, never through a link (a link on the way leaves them in place).
  fn remove_transcript(&self, session: &Session) -> Result<()> {
    if let Some(file) = self.transcript_of(session)? {
      let _ = file.remove();
      let _ = file.with_extension("").remove_tree();
    }
    Ok(())
  }

  /// Returns `(deleted, remaining)`.
  pub async fn cleanup(&self, r: CleanupRequest) -> Result<(u64, u64)> {
    let (user, project, keep_active) = (r.user_id, r.project_id, r.keep_active);
    let age = u64::try_from(r.max_age.as_millis()).unwrap_or(u64::MAX);
    let (deleted, remaining) = self
      .store_call(Wait::Blocking, async move |s| {
        let deleted = s.cleanup_sessions(&user, project.as_deref(), age, keep_active).await?;
        Ok((deleted, s.count_sessions(&user, project.as_deref()).await?))
      })
      .await?;
    let mut failed = Ok(());
    for s in &deleted {
      failed = failed.and(self.deleted(s, false).await);
    }
    failed?;
    Ok((deleted.len() as u64, remaining))
  }

  /// A new session that continues from `session_id` without calling the model; its first task
  /// makes the CLI fork the transcript.
  pub async fn fork(&self, r: ForkRequest) -> Result<Session> {
    let parent = self.get_session(&r.session_id, &r.user_id).await?;
    let new = NewSession {
      parent_id: Some(parent.id.clone()),
      title: r.title.or_else(|| parent.title.clone()),
      model: parent.model.clone(),
      working_directory: parent.working_directory.clone(),
      context: parent.context.clone(),
      cli_cost_watermark: parent.cli_cost_watermark,
      config_dir: parent.config_dir.clone(),
      paused: parent.paused.clone(),
      ..self.new_session(&parent.project_id, &parent.user_id, None, None, Some(PathBuf::from(&parent.working_directory)))
    };
    self.store_call(Wait::Briefly, async move |s| s.create_session(&new).await).await
  }

  pub async fn get_context(&self, session_id: &str, user_id: &str, o: ThresholdOptions) -> Result<ContextInfo> {
    let threshold = o.threshold.unwrap_or(self.cfg.compact_threshold);
    let s = self.get_session(session_id, user_id).await?;
    let window = self.window_of(&s).await?;
    Ok(context::context_info(s.context.as_ref(), window, threshold, 0))
  }

  /// The window of a session not measured yet: what the CLI last reported for its model, else
  /// the `contextWindow` option.
  pub(crate) async fn window_of(&self, s: &Session) -> Result<u64> {
    if s.context.is_some() {
      return Ok(self.cfg.context_window);
    }
    let model = s.model.clone();
    Ok(self.store_call(Wait::Briefly, async move |st| st.window_for(&model).await).await?.unwrap_or(self.cfg.context_window))
  }

  /// A session answered at once, on the calling thread, when the store can be read without
  /// waiting (see `Store::get_session_now`); `None` for anything else (a miss, an invalid
  /// argument, a busy store), which the async `get_session` then answers.
  pub fn get_session_now(&self, session_id: &str, user_id: &str) -> Option<Session> {
    self.check_open().ok()?;
    let id = validate::session_id("sessionId", session_id).ok()?;
    validate::id("userId", user_id).ok()?;
    self.store.get_session_now(&id, user_id)?.ok()?
  }

  /// `get_context` answered at once, as `get_session_now` is.
  pub fn get_context_now(&self, session_id: &str, user_id: &str, o: ThresholdOptions) -> Option<ContextInfo> {
    let threshold = o.threshold.unwrap_or(self.cfg.compact_threshold);
    let s = self.get_session_now(session_id, user_id)?;
    // As `window_of`: a session not measured yet takes the window last reported for its model.
    let window = match s.context {
      Some(_) => self.cfg.context_window,
      None => self.store.window_for_now(&s.model)?.ok()?.unwrap_or(self.cfg.context_window),
    };
    Some(context::context_info(s.context.as_ref(), window, threshold, 0))
  }

  pub async fn list_tasks(&self, session_id: &str, user_id: &str) -> Result<Vec<store::TaskRecord>> {
    let s = self.get_session(session_id, user_id).await?;
    self.store_call(Wait::Blocking, async move |st| st.list_tasks(&s.id).await).await
  }

  pub async fn list_compactions(&self, session_id: &str, user_id: &str) -> Result<Vec<Compaction>> {
    let s = self.get_session(session_id, user_id).await?;
    self.store_call(Wait::Blocking, async move |st| st.list_compactions(&s.id).await).await
  }

  /// Tokens a prompt is expected to add to a session's context: its tiktoken count times a
  /// factor per model family, learned from the session's own transcript (`stored`: the store's
  /// copy on PostgreSQL, see [`stored_lines`]) on top of a prior fitted on real transcripts (see
  /// `estimate`). Reads the transcript: call it off the async threads.
  pub(crate) fn estimate_blocking(
    &self,
    session: &Session,
    prompt: &str,
    stored: Option<&[TranscriptEntry]>,
  ) -> Result<(u64, u64, f64, estimate::Family, u64)> {
    let family = estimate::Family::of_model(&session.model);
    let mut est = estimate::Estimator::new();
    // PostgreSQL: the conversation as the store has it (this node may have no copy, or an old one).
    let opts = transcript::ReadOptions::full().bounded(self.cfg.max_transcript_bytes);
    if let Some(entries) = stored {
      est.train_on_history(&stored_history(entries, &opts));
    } else if let Some(file) = self.transcript_of(session)? {
      est.train_on_transcript(&file, &opts)?;
    }
    let tiktoken = crate::context::tokens::count(prompt, crate::context::tokens::Encoding::O200kBase) as u64;
    Ok((est.estimate(family, tiktoken), tiktoken, est.factor(family), family, est.learned(family).observations))
  }

  /// Tokens a prompt is expected to add (see `estimate_blocking`); a failure to read the
  /// transcript falls back to the prior.
  pub async fn estimate_prompt(self: &Arc<Self>, session: &Session, prompt: &str) -> u64 {
    let stored = stored_lines(&self.store, &session.id, self.cfg.max_transcript_bytes).await;
    let (me, s2, p) = (self.clone(), session.clone(), prompt.to_owned());
    let estimated = tokio::task::spawn_blocking(move || me.estimate_blocking(&s2, &p, stored?.as_deref())).await;
    estimated.ok().and_then(|e| e.ok()).map(|e| e.0).unwrap_or_else(|| {
      let f = estimate::Family::of_model(&session.model);
      estimate::Estimator::new().estimate(f, crate::context::tokens::count(prompt, crate::context::tokens::Encoding::O200kBase) as u64)
    })
  }

  /// `estimatePromptTokens`: how much a prompt would add and whether it still fits.
  pub async fn estimate_prompt_tokens(
    self: &Arc<Self>,
    session_id: &str,
    user_id: &str,
    prompt: String,
    o: ThresholdOptions,
  ) -> Result<PromptEstimate> {
    let threshold = o.threshold.unwrap_or(self.cfg.compact_threshold);
    if prompt.len() > validate::MAX_PROMPT_BYTES * 4 {
      return Err(Error::invalid(format!("prompt is longer than {} bytes", validate::MAX_PROMPT_BYTES * 4)));
    }
    let session = self.get_session(session_id, user_id).await?;
    let stored = stored_lines(&self.store, &session.id, self.cfg.max_transcript_bytes).await?;
    let (me, s2) = (self.clone(), session.clone());
    // It reads the transcript: off the async workers.
    let (tokens, tiktoken, factor, family, observations) =
      self.blocking("estimator", move || me.estimate_blocking(&s2, &prompt, stored.as_deref())).await?;
    let window = self.window_of(&session).await?;
    let context_info = context::context_info(session.context.as_ref(), window, threshold, tokens);
    Ok(PromptEstimate { tokens, tiktoken_tokens: tiktoken, factor, family: family.as_str().to_string(), observations, context_info })
  }

  /// `getMessages`: the conversation the model has, from the CLI's transcript. Without `offset`
  /// it returns the newest `limit` (default 100) messages, oldest first.
  pub async fn get_messages(&self, session_id: &str, user_id: &str, o: MessagesOptions) -> Result<MessagesPage> {
    let MessagesOptions { limit, offset } = o;
    let session = self.get_session(session_id, user_id).await?;
    let history = self.live_history(&session, transcript::ReadOptions::default().bounded(self.cfg.max_transcript_bytes)).await?;
    let (branches, forked_at) = self.branches_of(&session).await?;
    let page = match offset {
      Some(o) => history.page(o, limit),
      None => history.page_from_end(0, limit),
    };
    Ok(MessagesPage {
      messages: page.messages,
      offset: page.offset,
      total: page.total,
      live_from: history.live_from,
      compactions: history.compactions,
      branches,
      forked_at,
    })
  }
}
