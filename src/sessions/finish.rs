//! What a finished run means: the task's result and error code, and the bookkeeping the store
//! records for it in one transaction.

use std::path::Path;
use std::time::Instant;

use super::{Manager, TaskError, TaskResult};
use crate::cli::{self, EndReason, RunOutcome};
use crate::context;
use crate::error::{ErrorCode, Result};
use crate::store::{self, Compaction, ContextSnapshot, Session, TaskEnd};
use crate::transcript;

impl Manager {
  #[allow(clippy::too_many_arguments, reason = "the parts of one task end; split out as a pure function when finish gets its own tests")]
  pub(crate) async fn finish(
    &self,
    session: &Session,
    task_id: &str,
    outcome: Result<RunOutcome>,
    queued: Instant,
    threshold: f64,
    trigger: Option<&'static str>,
    keep_lease: bool,
  ) -> Result<TaskResult> {
    let env = self.child_env(session).unwrap_or_default();
    let transcript_exists = transcript::config_dir(&env)
      .map(|d| transcript::transcript_path(&d, Path::new(&session.working_directory), &session.id).is_file())
      .unwrap_or(false);
    let mut end = TaskEnd { materialized: session.materialized || transcript_exists, keep_lease, ..Default::default() };
    let mut res =
      TaskResult::empty(session, task_id, context::context_info(session.context.as_ref(), self.cfg.context_window, threshold, 0));
    let mut watermark = None;
    let mut compactions: Vec<cli::CompactEvent> = vec![];
    let fail = |code: ErrorCode, message: String, status: Option<u64>| TaskError { code: code.as_str().into(), message, status };
    match outcome {
      Err(e) => {
        res.error = Some(fail(e.code, e.message.clone(), None));
        end.status = if e.code == ErrorCode::Aborted { "aborted" } else { "failed" }.into();
      }
      Ok(out) => {
        res.sandboxed = self.sandboxed();
        end.cli_version = out.cli_version.clone();
        res.model = out.model.clone();
        compactions = out.compactions.clone();
        let tail = out.stderr_tail.trim();
        let tail = if tail.is_empty() {
          String::new()
        } else {
          let mut cut = tail.len().saturating_sub(1000);
          while !tail.is_char_boundary(cut) {
            cut += 1;
          }
          format!("; stderr: {}", &tail[cut..])
        };
        if let Some(r) = &out.result {
          res.result = r.result.clone().unwrap_or_default();
          res.turns = r.num_turns.unwrap_or(0);
          res.usage = r.usage;
          res.duration_api_ms = r.duration_api_ms.unwrap_or(0);
          res.permission_denials = r.permission_denials.clone();
          res.stop_reason = r.stop_reason.clone();
          let (cost, w) = context::task_cost(r, session.cli_cost_watermark);
          res.cost = cost;
          watermark = Some(w);
          end.cli_reported_cost_usd = r.total_cost_usd;
          let window = context::window_from_result(r).unwrap_or(self.cfg.context_window);
          if let Some(u) = out.context.filter(|u| u.context_total() > 0) {
            end.context = Some(ContextSnapshot { tokens: u.context_total(), window, source: "api".into(), measured_at: store::now_ms() });
          } else if let Some(c) = out.compactions.last().and_then(|c| c.post_tokens) {
            end.context = Some(ContextSnapshot { tokens: c, window, source: "estimate".into(), measured_at: store::now_ms() });
          }
        } else if let Some(c) = out.compactions.last().and_then(|c| c.post_tokens) {
          end.context =
            Some(ContextSnapshot { tokens: c, window: self.cfg.context_window, source: "estimate".into(), measured_at: store::now_ms() });
        }
        let error = match (out.reason, &out.result) {
          (EndReason::Aborted, _) => Some(fail(ErrorCode::Aborted, "the task was aborted".into(), None)),
          (EndReason::TimedOut, _) => {
            Some(fail(ErrorCode::Timeout, format!("the task ran past its timeout after {} ms", out.elapsed.as_millis()), None))
          }
          (EndReason::Stalled, _) => Some(fail(
            ErrorCode::Timeout,
            format!("the CLI printed nothing for {} ms and was stopped{tail}", self.cfg.stall_timeout.map(|d| d.as_millis()).unwrap_or(0)),
            None,
          )),
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
    res.duration_total_ms = queued.elapsed().as_millis() as u64;
    end.model = res.model.clone();
    end.turns = Some(res.turns);
    end.usage = res.usage;
    end.cost_usd = res.cost;
    end.duration_api_ms = Some(res.duration_api_ms);
    end.error_code = res.error.as_ref().map(|e| e.code.clone());
    end.error_message = res.error.as_ref().map(|e| e.message.clone());
    if let Some(ctx) = &end.context {
      res.context_info = context::context_info(Some(ctx), self.cfg.context_window, threshold, 0);
    }
    let started = store::now_ms();
    res.compactions = compactions
      .into_iter()
      .map(|c| Compaction {
        session_id: session.id.clone(),
        task_id: Some(task_id.to_owned()),
        // The CLI labels a `/compact` we sent for autoCompact as manual; record what it was.
        trigger: trigger.map(str::to_owned).unwrap_or(c.trigger),
        pre_tokens: c.pre_tokens,
        post_tokens: c.post_tokens,
        started_at: started,
        duration_ms: c.duration_ms,
      })
      .collect();
    let (sid, tid) = (session.id.clone(), task_id.to_owned());
    end.window = end.context.as_ref().filter(|c| c.source == "api").map(|c| (session.model.clone(), c.window));
    end.compactions = res.compactions.clone();
    // One transaction: the row, the totals, the window, the compactions and the lease.
    self.record(move |s| s.finish_task(&sid, &tid, &end, watermark)).await?;
    Ok(res)
  }
}

/// Maps a `result` line to a task error, or `None` for success. A `success` subtype with
/// `is_error: true` is a failure (an API error after the CLI's retries).
pub fn classify_result(r: &crate::cli::stream::ResultLine) -> Option<TaskError> {
  let msg = r.result.clone().filter(|s| !s.is_empty()).or_else(|| r.errors.first().cloned()).unwrap_or_else(|| r.subtype.clone());
  let e = |code: ErrorCode, status: Option<u64>| Some(TaskError { code: code.as_str().into(), message: msg.clone(), status });
  match r.subtype.as_str() {
    "success" if !r.is_error => None,
    "error_max_turns" => e(ErrorCode::MaxTurns, None),
    "error_max_budget_usd" => e(ErrorCode::BudgetExceeded, None),
    _ if r.api_error_status.is_some() => e(ErrorCode::ApiError, r.api_error_status),
    _ if msg.starts_with("API Error") => e(ErrorCode::ApiError, parse_status(&msg)),
    _ => e(ErrorCode::CliError, None),
  }
}

fn parse_status(msg: &str) -> Option<u64> {
  msg.split(|c: char| !c.is_ascii_digit()).find(|w| w.len() == 3).and_then(|w| w.parse().ok())
}
