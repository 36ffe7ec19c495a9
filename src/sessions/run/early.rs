//! A cold CLI started while its task's start asks the store for the lease, so that the start's
//! trip (and, on PostgreSQL, the rest of the preparation) is not on the task's path: the CLI spends
//! its first hundred milliseconds or so starting up, and in `-p` mode it reads nothing of the
//! session before the end of its prompt (see [`cli::Launched`]; it is given the prompt's first byte
//! at once, so that it waits for the rest). The rest is written only once the session is held and
//! the CLI is known to be the one the held session asks for (the same argv, environment, folder
//! and prompt); the proxy token stays suspended until then, so a CLI started this way can reach
//! nothing.
//!
//! The argv is a guess from the session as read before its start (resumed if it has a transcript,
//! new if it has none and no parent; a fork's first run is not guessed): when the start reads the
//! session otherwise (another process ran it meanwhile), or the session has a branch point, the
//! CLI is killed and the run starts another, as it would have without this. So it is when the
//! start finds the session held or every place taken: a CLI never waits for a lease. After such a
//! refusal no CLI of the manager starts early until a start takes its lease, so that requests
//! refused one after another (a flood against a held session or a full `maxConcurrentTasksTotal`)
//! cost no CLI start each.

use std::path::Path;

use super::Manager;
use crate::cli::{self, CancelToken, CliArgs, Launched, RunSpec, SessionMode, TaskToken};
use crate::store::Session;

/// A CLI started before its session was held, with what it was started with.
pub(crate) struct Early {
  /// The spec it was guessed to need, as the run builds it (before the sandbox's wrapping and the
  /// proxy token).
  guess: RunSpec,
  /// The spec it was started from: the sandbox's wrapping and the proxy token in.
  spec: RunSpec,
  /// Suspended until the CLI is given its prompt.
  token: Option<TaskToken>,
  launched: Launched,
}

/// A CLI of [`Early`] taken for its run: the spec to read it with, its token, the process.
pub(crate) struct Adopted {
  pub(crate) spec: RunSpec,
  pub(crate) token: Option<TaskToken>,
  pub(crate) launched: Launched,
}

impl Early {
  /// The CLI, if it was started from `spec` (the run's, prepared for the held session, whose
  /// transcript mirror the CLI's frames go to) and the run goes on; otherwise it is killed, and
  /// `None`.
  pub(crate) async fn adopt(self, spec: &RunSpec, cancel: &CancelToken) -> Option<Adopted> {
    if cancel.is_cancelled() || !same_process(&self.guess, spec) {
      self.discard().await;
      return None;
    }
    let Early { spec: mut started, token, launched, .. } = self;
    started.mirror = spec.mirror.clone();
    Some(Adopted { spec: started, token, launched })
  }

  /// Kills the CLI (it had no more than the first byte of its prompt).
  pub(crate) async fn discard(self) {
    let Early { token, launched, .. } = self;
    launched.kill().await;
    drop(token);
  }
}

/// Whether two specs start the same process with the same prompt (what the run only reads, its
/// limits and its mirror, may differ).
fn same_process(a: &RunSpec, b: &RunSpec) -> bool {
  (&a.program, &a.args, &a.cwd, &a.env, &a.stdin, a.niceness) == (&b.program, &b.args, &b.cwd, &b.env, &b.stdin, b.niceness)
}

impl Manager {
  /// Starts the run's CLI before its session is held (see the module's comment), or `None` when the
  /// argv cannot be guessed or the start fails (the run then starts its CLI as usual, and reports
  /// what failed).
  pub(crate) async fn start_early(&self, session: &Session, cli: &CliArgs, spec: &RunSpec) -> Option<Early> {
    let mode = match (session.materialized, &session.parent_id) {
      (true, _) => SessionMode::Resume(session.id.clone()),
      (false, None) => SessionMode::New(session.id.clone()),
      (false, Some(_)) => return None,
    };
    // One CLI per session: this manager's idle warm one goes first (as it would before the run's
    // own start).
    self.drop_warm(&session.id).await;
    let mut guess = spec.clone();
    let cli = CliArgs { session: Some(mode), resume_at: None, resume_drops_turn: None, ..cli.clone() };
    guess.args = cli_argv(&cli, self.store.shares_transcripts(), guess.cli_program()).await;
    let mut spec = guess.clone();
    let token = self.secure(&mut spec).await.ok()?;
    if let Some(t) = &token {
      t.set_live(false);
    }
    let mut launched = Launched::start(&spec).ok()?;
    if launched.hold(&spec.stdin).await.is_err() {
      launched.kill().await;
      return None;
    }
    Some(Early { guess, spec, token, launched })
  }
}

/// The CLI's argv for `cli`, with the transcript mirror's flag when the store shares transcripts
/// and the CLI has it.
pub(crate) async fn cli_argv(cli: &CliArgs, mirrored: bool, program: &Path) -> Vec<String> {
  let mut args = cli::build_args(cli);
  if mirrored && crate::sessions::mirror::mirror_supported(program).await {
    args.push(cli::mirror::FLAG.into());
  }
  args
}
