//! What a finished run means: the task's result and error code, and the bookkeeping the store
//! records for it in one transaction.

use std::path::Path;

use super::events::{task_end_event, Taken};
use super::mirror::TakenLines;
use super::run::HeldRun;
use super::{CompactTrigger, Manager, TaskError, TaskResult, Wait};
use crate::cli::stream::ResultLine;
use crate::cli::{self, EndReason, RunOutcome};
use crate::context;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{self, Compaction, ContextSnapshot, EndWith, Session, TaskEnd};
use crate::transcript;

/// What a task's end depends on, besides the store: everything [`task_end`] reads.
pub(crate) struct EndInput<'a> {
  pub session: &'a Session,
  pub task_id: &'a str,
  pub outcome: Result<RunOutcome>,
  /// From the call to now.
  pub elapsed_ms: u64,
  pub threshold: f64,
  /// The compaction trigger to record instead of the CLI's own label (compaction runs only).
  pub trigger: Option<CompactTrigger>,
  pub keep_lease: bool,
  /// Whether the CLI's transcript of the session exists now.
  pub transcript_exists: bool,
  /// The `contextWindow` option.
  pub default_window: u64,
  pub stall_timeout_ms: u128,
  pub sandboxed: bool,
  pub now_ms: i64,
}

/// What a finished run means, as a pure function: the result the caller gets, the row and totals
/// the store records (one transaction), and the session's new cost watermark.
pub(crate) fn task_end(i: EndInput<'_>) -> (TaskResult, TaskEnd, Option<f64>) {
  let EndInput {
    session,
    task_id,
    outcome,
    elapsed_ms,
    threshold,
    trigger,
    keep_lease,
    transcript_exists,
    default_window,
    stall_timeout_ms,
    sandboxed,
    now_ms,
  } = i;
  let mut end = TaskEnd { materialized: session.materialized || transcript_exists, keep_lease, ..Default::default() };
  let mut res = TaskResult::empty(session, task_id, context::context_info(session.context.as_ref(), default_window, threshold, 0));
  let mut watermark = None;
  let mut compactions: Vec<cli::CompactEvent> = vec![];
  match outcome {
    Err(e) => {
      res.error = Some(TaskError { code: e.code.as_str().into(), message: e.message.clone(), status: None, scope: None });
      end.status = if e.code == ErrorCode::Aborted { "aborted" } else { "failed" }.into();
    }
    Ok(out) => {
      res.sandboxed = sandboxed;
      end.cli_version = out.cli_version.clone();
      res.model = out.model.clone();
      compactions = out.compactions.clone();
      if let Some(r) = &out.result {
        watermark = Some(read_result(r, session.cli_cost_watermark, &mut res, &mut end));
      }
      // The meter is what the API reported for the last main-chain call; only when no call
      // completed after a compaction is the compaction's own figure used, marked an estimate.
      let window = out.result.as_ref().and_then(context::window_from_result).unwrap_or(default_window);
      let measured = out.context.filter(|u| u.context_total() > 0 && out.result.is_some());
      if let Some(u) = measured {
        end.context = Some(ContextSnapshot { tokens: u.context_total(), window, source: "api".into(), measured_at: now_ms });
      } else if let Some(c) = out.compactions.last().and_then(|c| c.post_tokens) {
        end.context = Some(ContextSnapshot { tokens: c, window, source: "estimate".into(), measured_at: now_ms });
      }
      let error = end_error(&out, session, trigger, stall_timeout_ms);
      // The key proxy saw every model call made with the task's token (the agent's own included): the usage is
      // never less than what upstream reported for them.
      if let Some(m) = &out.metered {
        let u = &mut res.usage;
        u.input_tokens = u.input_tokens.max(m.usage.input);
        u.output_tokens = u.output_tokens.max(m.usage.output);
        u.cache_read_input_tokens = u.cache_read_input_tokens.max(m.usage.cache_read);
        u.cache_creation_input_tokens = u.cache_creation_input_tokens.max(m.usage.cache_write);
      }
      // Reported, not fatal.
      res.warnings = out.malformed.iter().map(|m| format!("malformed CLI output line: {m}")).collect();
      if trigger.is_none() {
        res.warnings.extend(out.compact_errors.iter().map(|e| format!("the CLI's own compaction failed: {e}")));
      }
      end.status = match (&error, out.reason) {
        (None, _) => "succeeded",
        (_, EndReason::Aborted) => "aborted",
        (_, EndReason::TimedOut) | (_, EndReason::Stalled) => "timed_out",
        _ => "failed",
      }
      .into();
      res.compacted = !out.compactions.is_empty();
      res.error = error;
    }
  }
  res.success = res.error.is_none();
  res.duration.total_ms = elapsed_ms;
  end.model = res.model.clone();
  end.turns = Some(res.turns);
  end.usage = res.usage;
  end.cost_usd = res.cost;
  end.duration_api_ms = Some(res.duration.api_ms);
  end.error_code = res.error.as_ref().map(|e| e.code.clone());
  end.error_message = res.error.as_ref().map(|e| e.message.clone());
  end.paused = res.error.as_ref().and_then(|e| e.scope.clone());
  if let Some(ctx) = &end.context {
    res.context_info = context::context_info(Some(ctx), default_window, threshold, 0);
  }
  res.compactions = compactions
    .into_iter()
    .map(|c| Compaction {
      session_id: session.id.clone(),
      task_id: Some(task_id.to_owned()),
      // The CLI labels a `/compact` we sent for autoCompact as manual; record what it was.
      trigger: trigger.map_or(c.trigger, |t| t.as_str().to_owned()),
      pre_tokens: c.pre_tokens,
      post_tokens: c.post_tokens,
      started_at: now_ms,
      duration_ms: c.duration_ms,
    })
    .collect();
  end.window = end.context.as_ref().filter(|c| c.source == "api").map(|c| (session.model.clone(), c.window));
  end.compactions = res.compactions.clone();
  (res, end, watermark)
}

/// A run's end, worked out ([`task_end`]) and not yet recorded.
pub(crate) struct Ending {
  pub(crate) res: TaskResult,
  end: TaskEnd,
  watermark: Option<f64>,
}

/// How [`Manager::record_end_with`] went.
pub(crate) enum EndRecorded {
  /// The end, the lines, the events and the `task_end` event are stored.
  All,
  /// The store refused the end: the task no longer held the session's lease (the events were
  /// written, nothing else).
  Refused(Error),
  /// Nothing was recorded (or it is not known): the lines and events went back to their writers.
  Failed,
}

impl Manager {
  /// What a run's end means ([`task_end`]), for the store to record.
  pub(crate) fn ending(&self, run: &HeldRun, outcome: Result<RunOutcome>, keep_lease: bool) -> Ending {
    let HeldRun { session, task_id, queued, threshold, trigger, .. } = run;
    let env = self.child_env(session).unwrap_or_default();
    let transcript_exists = transcript::config_dir(&env)
      .map(|d| matches!(transcript::transcript_path(&d, Path::new(&session.working_directory), &session.id).regular_len(), Ok(Some(_))))
      .unwrap_or(false);
    let (res, end, watermark) = task_end(EndInput {
      session,
      task_id,
      outcome,
      elapsed_ms: queued.elapsed().as_millis() as u64,
      threshold: *threshold,
      trigger: *trigger,
      keep_lease,
      transcript_exists,
      default_window: self.cfg.context_window,
      stall_timeout_ms: self.cfg.stall_timeout.map(|d| d.as_millis()).unwrap_or(0),
      sandboxed: self.sandboxed(),
      now_ms: store::now_ms(),
    });
    Ending { res, end, watermark }
  }

  /// Records a run's end in the store, in one transaction: the row, the totals, the window, the
  /// compactions and the lease.
  pub(crate) async fn record_end(&self, run: &HeldRun, e: Ending) -> Result<TaskResult> {
    let Ending { res, end, watermark } = e;
    let (sid, tid) = (run.session.id.clone(), run.task_id.clone());
    self.store.call(Wait::Briefly, async move |s| s.finish_task(&sid, &tid, &end, watermark).await).await?;
    Ok(res)
  }

  /// [`Self::record_end`] with what the run has not stored yet, in the same transaction (one
  /// round trip on PostgreSQL): the transcript's last `lines`, the `events` its writer had not
  /// written, and after the end the `task_end` event with the result. Whatever was not recorded
  /// goes back to its writer.
  pub(crate) async fn record_end_with(&self, run: &HeldRun, e: &Ending, lines: Option<TakenLines>, events: Taken) -> EndRecorded {
    let end_event = task_end_event(&run.session.id, &run.task_id, Ok(&e.res)).to_string();
    let (sid, tid, end, watermark) = (run.session.id.clone(), run.task_id.clone(), e.end.clone(), e.watermark);
    let (rows, entries, ev) = (events.rows.clone(), lines.as_ref().map(|l| l.entries.clone()).unwrap_or_default(), end_event.clone());
    let written = self
      .store
      .call(Wait::Briefly, async move |s| {
        let with = EndWith { lines: &entries, events: &rows, end_event: Some(&ev) };
        s.finish_task_with(&sid, &tid, &end, watermark, &with).await
      })
      .await;
    match written {
      Ok(w) => {
        if let Some(seq) = w.last_event {
          events.stored(seq, w.ended.then_some(end_event));
        }
        if !w.ended {
          return EndRecorded::Refused(store::end_refused(&run.session.id, &run.task_id));
        }
        if let Some(l) = lines {
          l.stored();
        }
        EndRecorded::All
      }
      Err(_) => {
        drop(lines);
        events.write().await;
        EndRecorded::Failed
      }
    }
  }
}

/// What a run's result line says: the answer, turns, usage, cost (returned: the session's new
/// cost watermark) and what the CLI reported.
fn read_result(r: &ResultLine, watermark: f64, res: &mut TaskResult, end: &mut TaskEnd) -> f64 {
  res.result = r.result.clone().unwrap_or_default();
  res.turns = r.num_turns.unwrap_or(0);
  res.usage = r.usage;
  res.duration.api_ms = r.duration_api_ms.unwrap_or(0);
  res.permission_denials = r.permission_denials.clone();
  res.stop_reason = r.stop_reason.clone();
  let (cost, w) = context::task_cost(r, watermark);
  res.cost = cost;
  end.cli_reported_cost_usd = r.total_cost_usd;
  w
}

/// The last 1000 bytes of the CLI's stderr, as a suffix of an error message.
fn stderr_suffix(stderr: &str) -> String {
  let tail = stderr.trim();
  if tail.is_empty() {
    return String::new();
  }
  let mut cut = tail.len().saturating_sub(1000);
  while !tail.is_char_boundary(cut) {
    cut += 1;
  }
  format!("; stderr: {}", &tail[cut..])
}

/// Why a run that ended (stopped, exited, refused by the key proxy) failed, if it did.
fn end_error(out: &RunOutcome, session: &Session, trigger: Option<CompactTrigger>, stall_timeout_ms: u128) -> Option<TaskError> {
  let fail = |code: ErrorCode, message: String, status: Option<u64>| TaskError { code: code.as_str().into(), message, status, scope: None };
  let tail = stderr_suffix(&out.stderr_tail);
  let error = match (out.reason, &out.result) {
    (EndReason::Aborted, _) => Some(fail(ErrorCode::Aborted, "the task was aborted".into(), None)),
    (EndReason::TimedOut, _) => {
      Some(fail(ErrorCode::Timeout, format!("the task ran past its timeout after {} ms", out.elapsed.as_millis()), None))
    }
    (EndReason::Stalled, _) => {
      Some(fail(ErrorCode::Timeout, format!("the CLI printed nothing for {stall_timeout_ms} ms and was stopped{tail}"), None))
    }
    (EndReason::Exited, None) => Some(fail(
      ErrorCode::CliError,
      format!("the CLI ended without a result (exit code {:?}, signal {:?}){tail}", out.exit_code, out.signal),
      None,
    )),
    // The CLI switched to another session behind the store's back (a command such as
    // `/clear`): what it did is not this session's history.
    (EndReason::Exited, Some(_)) if out.session_id.as_deref().is_some_and(|id| id != session.id) => Some(fail(
      ErrorCode::CliError,
      format!(
        "the CLI ran in session {} instead of {}; the task is not recorded as this session's",
        out.session_id.as_deref().unwrap_or(""),
        session.id
      ),
      None,
    )),
    (EndReason::Exited, Some(r)) => classify_result(r).or_else(|| {
      // A `/compact` that failed reports it through system/status, not the result. Only a
      // compaction run fails for it; a task that answered keeps its answer (warnings).
      (trigger.is_some() && out.compactions.is_empty() && !out.compact_errors.is_empty())
        .then(|| fail(ErrorCode::CompactFailed, out.compact_errors.join("; "), None))
    }),
  };
  // A model call the key proxy refused for a spend cap ends the task so, whatever the CLI made of the
  // refusal (it may have answered with the error as text, or the agent's own call was the one refused).
  let refused = out.metered.as_ref().and_then(|m| m.refused.clone());
  match (refused, out.reason) {
    (Some(why), EndReason::Exited) => Some(TaskError { scope: Some(why.scope), ..fail(ErrorCode::BudgetExceeded, why.message, Some(402)) }),
    (_, _) => error,
  }
}

/// Maps a `result` line to a task error, or `None` for success. A `success` subtype with
/// `is_error: true` is a failure (an API error after the CLI's retries).
pub fn classify_result(r: &crate::cli::stream::ResultLine) -> Option<TaskError> {
  let msg = r.result.clone().filter(|s| !s.is_empty()).or_else(|| r.errors.first().cloned()).unwrap_or_else(|| r.subtype.clone());
  let e = |code: ErrorCode, status: Option<u64>| Some(TaskError { code: code.as_str().into(), message: msg.clone(), status, scope: None });
  let status = r.api_error_status.or_else(|| if msg.contains("API Error") { parse_status(&msg) } else { None });
  match r.subtype.as_str() {
    "success" if !r.is_error => None,
    "error_max_turns" => e(ErrorCode::MaxTurns, None),
    "error_max_budget_usd" => e(ErrorCode::BudgetExceeded, None),
    _ if msg.starts_with("Resume rejected by --resume-drops-turn:") => e(ErrorCode::RewindRejected, None),
    _ if msg.starts_with("No message found with message.uuid of:") => e(ErrorCode::MessageNotFound, None),
    _ if status == Some(401) || is_not_logged_in(&msg) => Some(auth_error(&msg, status)),
    _ if r.api_error_status.is_some() => e(ErrorCode::ApiError, r.api_error_status),
    _ if msg.starts_with("API Error") => e(ErrorCode::ApiError, parse_status(&msg)),
    _ => e(ErrorCode::CliError, None),
  }
}

/// The CLI's words when no credentials reached it (CLI 2.1.331: "Not logged in · Please run
/// /login"; it says "Invalid API key" when the API refused the one it had).
fn is_not_logged_in(msg: &str) -> bool {
  msg.starts_with("Not logged in") || msg.contains("Please run /login")
}

/// `AUTH_ERROR`: what the server's developer has to do, then what the CLI said.
fn auth_error(msg: &str, status: Option<u64>) -> TaskError {
  let what = match status {
    Some(s) => format!("the Anthropic API refused the server's credentials (HTTP {s})"),
    None => "no API key reached the claude CLI".to_owned(),
  };
  TaskError {
    code: ErrorCode::AuthError.as_str().into(),
    message: format!(
      "{what}: set a valid ANTHROPIC_API_KEY in the server's environment (or pass it in the manager's `env` option) and restart the server; the CLI said: {msg}"
    ),
    status,
    scope: None,
  }
}

fn parse_status(msg: &str) -> Option<u64> {
  msg.split(|c: char| !c.is_ascii_digit()).find(|w| w.len() == 3).and_then(|w| w.parse().ok())
}

#[cfg(test)]
mod tests {
  use std::time::Duration;

  use super::*;
  use crate::cli::stream::ResultLine;
  use crate::error::Error;
  use crate::store::Usage;

  fn session() -> Session {
    Session {
      id: "11111111-1111-4111-8111-111111111111".into(),
      project_id: "p".into(),
      user_id: "u".into(),
      status: "active".into(),
      parent_id: None,
      title: None,
      model: "sonnet".into(),
      working_directory: "/w".into(),
      created_at: 0,
      updated_at: 0,
      last_active_at: 0,
      task_count: 0,
      total_cost_usd: 0.0,
      usage: Usage::default(),
      context: None,
      materialized: true,
      cli_cost_watermark: 0.0,
      config_dir: None,
      paused: None,
      lineage_id: "11111111-1111-4111-8111-111111111111".into(),
    }
  }

  fn outcome(result: Option<ResultLine>) -> RunOutcome {
    RunOutcome {
      reason: EndReason::Exited,
      exit_code: Some(0),
      signal: None,
      stderr_tail: String::new(),
      result,
      cli_version: Some("2.1.331".into()),
      session_id: Some(session().id),
      model: Some("claude-sonnet".into()),
      context: None,
      compactions: vec![],
      compact_errors: vec![],
      malformed: vec![],
      pid: Some(42),
      elapsed: Duration::from_millis(5),
      metered: None,
    }
  }

  fn success(cost: f64) -> ResultLine {
    ResultLine {
      subtype: "success".into(),
      result: Some("done".into()),
      num_turns: Some(1),
      total_cost_usd: Some(cost),
      ..Default::default()
    }
  }

  fn finish_of(outcome: Result<RunOutcome>, trigger: Option<CompactTrigger>) -> (TaskResult, TaskEnd, Option<f64>) {
    let s = session();
    task_end(EndInput {
      session: &s,
      task_id: "t",
      outcome,
      elapsed_ms: 7,
      threshold: 80.0,
      trigger,
      keep_lease: false,
      transcript_exists: true,
      default_window: 200_000,
      stall_timeout_ms: 1000,
      sandboxed: true,
      now_ms: 123,
    })
  }

  #[test]
  fn a_task_that_answered_succeeds_with_the_api_meter() {
    let mut out = outcome(Some(success(0.25)));
    out.context = Some(Usage { input_tokens: 1000, output_tokens: 200, cache_read_input_tokens: 50, cache_creation_input_tokens: 0 });
    let (res, end, watermark) = finish_of(Ok(out), None);
    assert!(res.success && res.error.is_none());
    assert_eq!(end.status, "succeeded");
    assert_eq!(res.result, "done");
    assert!(res.sandboxed);
    let ctx = end.context.expect("measured");
    assert_eq!((ctx.tokens, ctx.source.as_str()), (1250, "api"));
    assert_eq!(end.window, Some(("sonnet".into(), 200_000)));
    assert_eq!(watermark, Some(0.25));
    assert_eq!(res.duration.total_ms, 7);
  }

  #[test]
  fn the_measured_call_wins_over_a_compactions_estimate() {
    let mut out = outcome(Some(success(0.1)));
    out.compactions =
      vec![cli::CompactEvent { trigger: "auto".into(), pre_tokens: Some(150_000), post_tokens: Some(3_000), duration_ms: None }];
    out.context = Some(Usage { input_tokens: 12_000, ..Default::default() });
    let (res, end, _) = finish_of(Ok(out.clone()), None);
    assert_eq!(end.context.as_ref().map(|c| (c.tokens, c.source.as_str())), Some((12_000, "api")));
    assert!(res.compacted);
    assert_eq!(res.compactions[0].trigger, "auto");
    // No call after the compaction: its own figure, marked an estimate, and no window learned.
    out.context = None;
    let (_, end, _) = finish_of(Ok(out), None);
    assert_eq!(end.context.as_ref().map(|c| (c.tokens, c.source.as_str())), Some((3_000, "estimate")));
    assert_eq!(end.window, None);
  }

  #[test]
  fn a_failed_cli_compaction_is_a_warning_in_a_task_and_the_failure_of_a_compaction() {
    let mut out = outcome(Some(success(0.0)));
    out.compact_errors = vec!["too_few_groups".into()];
    let (res, end, _) = finish_of(Ok(out.clone()), None);
    assert!(res.success, "{:?}", res.error);
    assert_eq!(end.status, "succeeded");
    assert!(res.warnings.iter().any(|w| w.contains("too_few_groups")));
    let (res, end, _) = finish_of(Ok(out), Some(CompactTrigger::Manual));
    assert_eq!(res.error.map(|e| e.code), Some("COMPACT_FAILED".into()));
    assert_eq!(end.status, "failed");
  }

  #[test]
  fn the_lease_is_kept_while_the_cli_exits_and_a_transcript_materializes_the_session() {
    let mut s = session();
    s.materialized = false;
    let run = |keep_lease: bool, transcript_exists: bool| {
      task_end(EndInput {
        session: &s,
        task_id: "t",
        outcome: Ok(outcome(Some(success(0.0)))),
        elapsed_ms: 1,
        threshold: 80.0,
        trigger: None,
        keep_lease,
        transcript_exists,
        default_window: 200_000,
        stall_timeout_ms: 0,
        sandboxed: false,
        now_ms: 0,
      })
      .1
    };
    // The next task on the session must wait for this CLI's exit, also in another process.
    assert!(run(true, true).keep_lease);
    assert!(!run(false, true).keep_lease);
    // A first run that wrote a transcript makes the next one resume it.
    assert!(run(false, true).materialized);
    assert!(!run(false, false).materialized);
  }

  #[test]
  fn a_cli_that_switched_sessions_fails() {
    let mut out = outcome(Some(success(0.0)));
    out.session_id = Some("22222222-2222-4222-8222-222222222222".into());
    let (res, end, _) = finish_of(Ok(out), None);
    assert_eq!(res.error.map(|e| e.code), Some("CLI_ERROR".into()));
    assert_eq!(end.status, "failed");
  }

  #[test]
  fn ends_map_to_statuses_and_codes() {
    let (res, end, w) = finish_of(Err(Error::new(ErrorCode::Aborted, "gone")), None);
    assert_eq!((res.error.map(|e| e.code), end.status.as_str(), w), (Some("ABORTED".into()), "aborted", None));
    assert!(!res.sandboxed, "nothing ran");
    for (reason, code, status) in [
      (EndReason::TimedOut, "TIMEOUT", "timed_out"),
      (EndReason::Stalled, "TIMEOUT", "timed_out"),
      (EndReason::Aborted, "ABORTED", "aborted"),
    ] {
      let mut out = outcome(None);
      out.reason = reason;
      let (res, end, _) = finish_of(Ok(out), None);
      assert_eq!((res.error.map(|e| e.code), end.status.as_str()), (Some(code.into()), status), "{reason:?}");
    }
    let mut out = outcome(None);
    out.stderr_tail = "boom".into();
    let (res, end, _) = finish_of(Ok(out), None);
    let e = res.error.unwrap();
    assert_eq!((e.code.as_str(), end.status.as_str()), ("CLI_ERROR", "failed"));
    assert!(e.message.contains("stderr: boom"), "{}", e.message);
    let mut turns = success(0.0);
    turns.subtype = "error_max_turns".into();
    assert_eq!(end_code(turns), "MAX_TURNS");
    let mut budget = success(0.0);
    budget.subtype = "error_max_budget_usd".into();
    assert_eq!(end_code(budget), "BUDGET_EXCEEDED");
  }

  fn end_code(r: ResultLine) -> String {
    finish_of(Ok(outcome(Some(r))), None).0.error.map(|e| e.code).unwrap_or_default()
  }
}

#[cfg(test)]
mod classify_tests {
  use super::*;
  use crate::cli::stream::ResultLine;

  fn line(subtype: &str, is_error: bool, result: Option<&str>, status: Option<u64>) -> ResultLine {
    ResultLine { subtype: subtype.into(), is_error, result: result.map(str::to_owned), api_error_status: status, ..Default::default() }
  }
  fn code(r: &ResultLine) -> Option<(String, String, Option<u64>)> {
    classify_result(r).map(|e| (e.code, e.message, e.status))
  }
  fn some(code: &str, message: &str, status: Option<u64>) -> Option<(String, String, Option<u64>)> {
    Some((code.into(), message.into(), status))
  }

  #[test]
  fn result_lines_map_to_their_codes() {
    assert_eq!(code(&line("success", false, Some("hi"), None)), None);
    // A success subtype flagged as an error is a failure: an API error with its status, from the
    // field or from the message.
    assert_eq!(
      code(&line("success", true, Some("API Error: 529 overloaded"), Some(529))),
      some("API_ERROR", "API Error: 529 overloaded", Some(529))
    );
    assert_eq!(
      code(&line("success", true, Some("API Error: 500 stand-in api_error"), None)),
      some("API_ERROR", "API Error: 500 stand-in api_error", Some(500))
    );
    assert_eq!(
      code(&line("success", true, Some("API Error: Connection dropped"), None)),
      some("API_ERROR", "API Error: Connection dropped", None)
    );
    assert_eq!(code(&line("success", true, Some("something else broke"), None)), some("CLI_ERROR", "something else broke", None));
    assert_eq!(
      code(&line("error_max_turns", true, Some("Reached maximum number of turns (1)"), None)),
      some("MAX_TURNS", "Reached maximum number of turns (1)", None)
    );
    assert_eq!(
      code(&line("error_max_budget_usd", true, Some("Reached maximum budget ($0.01)"), None)),
      some("BUDGET_EXCEEDED", "Reached maximum budget ($0.01)", None)
    );
    // The CLI's own error: the message comes from `errors` when `result` is empty, else the subtype.
    let own =
      ResultLine { errors: vec!["No conversation found with session ID: x".into()], ..line("error_during_execution", true, None, None) };
    assert_eq!(code(&own), some("CLI_ERROR", "No conversation found with session ID: x", None));
    assert_eq!(code(&line("error_during_execution", true, Some(""), None)), some("CLI_ERROR", "error_during_execution", None));
    // A branch point the CLI refuses (CLI 2.1.331's words): deterministic codes of their own.
    let refused = "Resume rejected by --resume-drops-turn: resuming at a would discard entries not attributable to turn b";
    let r = ResultLine { errors: vec![refused.into()], ..line("error_during_execution", true, None, None) };
    assert_eq!(code(&r), some("REWIND_REJECTED", refused, None));
    let gone = "No message found with message.uuid of: a";
    let r = ResultLine { errors: vec![gone.into()], ..line("error_during_execution", true, None, None) };
    assert_eq!(code(&r), some("MESSAGE_NOT_FOUND", gone, None));
    // A status field wins over the message, whatever the subtype.
    assert_eq!(code(&line("error_during_execution", true, Some("x"), Some(429))), some("API_ERROR", "x", Some(429)));
  }

  /// A missing or refused key is AUTH_ERROR, with what to do first and the CLI's words after
  /// (the real CLI 2.1.331 says these; see errors.test.mjs "AUTH_ERROR").
  #[test]
  fn missing_or_refused_credentials_are_auth_errors() {
    let check = |r: ResultLine, status: Option<u64>, cli: &str| {
      let e = classify_result(&r).expect("a failure");
      assert_eq!((e.code.as_str(), e.status), ("AUTH_ERROR", status), "{}", e.message);
      assert!(e.message.contains("set a valid ANTHROPIC_API_KEY in the server's environment"), "{}", e.message);
      assert!(e.message.ends_with(&format!("the CLI said: {cli}")), "{}", e.message);
    };
    let no_key = "Not logged in · Please run /login";
    check(line("success", true, Some(no_key), None), None, no_key);
    let refused = "Invalid API key · Fix external API key";
    check(line("success", true, Some(refused), Some(401)), Some(401), refused);
    let stand_in = "Failed to authenticate. API Error: 401 stand-in authentication_error";
    check(line("success", true, Some(stand_in), None), Some(401), stand_in);
    // Other statuses stay API errors; a 401 elsewhere in a message is not an API status.
    assert_eq!(code(&line("success", true, Some("API Error: 403 forbidden"), Some(403))).unwrap().0, "API_ERROR");
    assert_eq!(code(&line("success", true, Some("tool failed: 401 lines"), None)).unwrap().0, "CLI_ERROR");
  }

  #[test]
  fn the_status_is_the_first_three_digit_number() {
    assert_eq!(parse_status("API Error: 529 {\"type\":\"error\"}"), Some(529));
    assert_eq!(parse_status("API Error: 12 then 4040 then 503"), Some(503));
    assert_eq!(parse_status("no number"), None);
  }
}
