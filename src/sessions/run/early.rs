//! A cold CLI started while its task's start is in the store, so that the start's trip (and, on
//! PostgreSQL, the rest of the preparation) is not on the task's path: the CLI spends its first
//! hundred milliseconds or so starting up, and in `-p` mode it reads nothing of the session before
//! its prompt (see [`cli::Launched`]). The prompt is written only once the session is held and the
//! CLI's argv is known to be the one the held session asks for; the proxy token stays suspended
//! until then, so a CLI started this way can reach nothing.
//!
//! The argv is a guess from the session as read before its start (resumed if it has a transcript,
//! new if it has none and no parent; a fork's first run is not guessed): when the start reads the
//! session otherwise (another process ran it meanwhile), or the session has a branch point, the
//! CLI is killed and the run starts another, as it would have without this. So it is when the
//! start finds the session held or every place taken: a CLI never waits for a lease.

use std::path::Path;

use super::Manager;
use crate::cli::{self, CliArgs, Launched, RunSpec, SessionMode, TaskToken};
use crate::store::Session;

/// A CLI started before its session was held, with what it was started with.
pub(crate) struct Early {
  /// The argv the run was guessed to need (the CLI's, before the sandbox wraps it).
  args: Vec<String>,
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
  /// The CLI, if it was started with `args` (what the held session asks for); `spec` is the run's,
  /// prepared for the held session, whose transcript mirror the CLI's frames go to. Otherwise it
  /// is killed, and `None`.
  pub(crate) async fn adopt(self, args: &[String], spec: &RunSpec) -> Option<Adopted> {
    if self.args != args {
      self.discard().await;
      return None;
    }
    let Early { spec: mut started, token, launched, .. } = self;
    started.mirror = spec.mirror.clone();
    Some(Adopted { spec: started, token, launched })
  }

  /// Kills the CLI (it had no prompt) and removes the files it keeps while it runs.
  pub(crate) async fn discard(self) {
    let Early { spec, token, launched, .. } = self;
    let pid = launched.pid();
    launched.kill().await;
    drop(token);
    super::remove_per_process_files(&spec, pid);
  }
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
    let mut spec = spec.clone();
    let cli = CliArgs { session: Some(mode), resume_at: None, resume_drops_turn: None, ..cli.clone() };
    spec.args = cli_argv(&cli, self.store.shares_transcripts(), spec.cli_program()).await;
    let args = spec.args.clone();
    let token = self.secure(&mut spec).await.ok()?;
    if let Some(t) = &token {
      t.set_live(false);
    }
    let launched = Launched::start(&spec).ok()?;
    Some(Early { args, spec, token, launched })
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
