//! Cold execution: a `claude -p` process per task, started for it and gone after it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde_json::json;

use super::early::cli_argv;
use super::{Executed, Executor, Job, Manager, Tail};
use crate::cli::stream::{Kind, Line};
use crate::cli::{self, RunSpec};

/// A `-p` process per task.
pub(crate) struct Cold;

impl Executor for Cold {
  fn starts_early(&self) -> bool {
    true
  }

  fn execute<'a>(self: Box<Self>, m: &'a Manager, job: Job<'a>) -> Pin<Box<dyn Future<Output = Executed> + Send + 'a>> {
    Box::pin(m.run_cold(job))
  }
}

impl Manager {
  /// Starts the CLI for one task (after a warm one left from an earlier task is gone: one CLI
  /// per session) behind the key proxy and the sandbox, and reads it up to its result.
  async fn run_cold(&self, mut job: Job<'_>) -> Executed {
    self.drop_warm(&job.session.id).await;
    job.spec.args = cli_argv(&job.cli, job.spec.mirror.is_some(), job.spec.cli_program()).await;
    // The CLI started while the lease was asked for, if it is the one this run needs.
    let adopted = match job.early.take() {
      Some(early) => early.adopt(&job.spec, job.cancel).await,
      None => None,
    };
    // The key proxy's token for this CLI lives until its result is in; its model calls are
    // metered and charged to the task.
    let (token, launched) = match adopted {
      Some(a) => {
        job.spec = a.spec;
        (a.token, Some(a.launched))
      }
      None => (self.secure(&mut job.spec).await?, None),
    };
    if let Some(t) = &token {
      t.attach(Some(job.meter.clone()));
      t.set_live(true);
    }
    let meter = job.meter.clone();
    let out = self.run_cli(job, launched).await;
    drop(token);
    out.map(|(mut o, tail)| {
      o.metered = Some(meter.snapshot());
      (o, tail)
    })
  }

  /// Runs the CLI up to its result, forwarding its lines; its exit (and the slot's return) is
  /// left to the returned tail when it comes after the result.
  async fn run_cli(&self, job: Job<'_>, launched: Option<cli::Launched>) -> Executed {
    let Job { session, task_id, spec, sink, cancel, include_partials, permit, .. } = job;
    if let Some(s) = &sink {
      s(json!({ "type": "task_started", "sessionId": session.id, "taskId": task_id }));
    }
    let forward = |line: &Line| {
      if let Some(s) = &sink {
        if include_partials || !matches!(line.kind, Kind::Partial { .. }) {
          s(line.raw.clone());
        }
      }
    };
    let launched = match launched {
      Some(l) => l,
      None => cli::Launched::start(&spec)?,
    };
    let (out, tail) = cli::run_launched(launched, &spec, cancel, forward, true).await?;
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
