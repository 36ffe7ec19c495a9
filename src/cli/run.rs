//! Running one CLI process: spawning it in its own process group (without a shell, prompt on
//! stdin), reading its stream, and stopping the whole group on abort, timeout or stall.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use super::process::{kill_group, lower_priority};
use super::stream::{self, ContextTracker, Kind, Line, ResultLine};
use crate::error::{Error, ErrorCode, Result};
use crate::store::Usage;

/// A cancellation flag that can be awaited. Cloning shares it.
#[derive(Clone, Default)]
pub struct CancelToken(Arc<(AtomicBool, Notify)>);

impl CancelToken {
  pub fn new() -> Self {
    Self::default()
  }
  pub fn cancel(&self) {
    self.0 .0.store(true, Ordering::SeqCst);
    self.0 .1.notify_waiters();
  }
  pub fn is_cancelled(&self) -> bool {
    self.0 .0.load(Ordering::SeqCst)
  }
  pub async fn cancelled(&self) {
    loop {
      let notified = self.0 .1.notified();
      if self.is_cancelled() {
        return;
      }
      notified.await;
    }
  }
}

/// Everything needed to start one CLI process.
#[derive(Debug, Clone)]
pub struct RunSpec {
  pub program: PathBuf,
  pub args: Vec<String>,
  pub cwd: PathBuf,
  pub env: Vec<(String, String)>,
  pub stdin: String,
  /// Whole-run limit.
  pub timeout: Option<Duration>,
  /// Limit on silence: no stdout line for this long stops the run.
  pub stall_timeout: Option<Duration>,
  /// Nice increment of the child relative to this process (0 keeps the priority; Unix only).
  pub niceness: i32,
  /// Where `transcript_mirror` frames go (the run passes `--session-mirror` itself only through
  /// `args`); they are never given to `on_line`. `None`: frames, if any, are ordinary lines.
  pub mirror: Option<super::mirror::MirrorTx>,
  /// Set by [`super::Sandbox::wrap`]: the namespace steps and seccomp programs of a sandboxed run.
  pub confine: Option<std::sync::Arc<super::sandbox::Confinement>>,
}

impl RunSpec {
  /// The CLI binary this run starts (inside the sandbox when it is wrapped in one).
  pub fn cli_program(&self) -> &std::path::Path {
    self.confine.as_ref().map_or(&self.program, |c| &c.cli_program)
  }

  /// A run of `program` with no arguments in `cwd`, an empty environment but `PATH`, no limits.
  pub fn probe(program: PathBuf, cwd: &std::path::Path) -> RunSpec {
    RunSpec {
      program,
      args: vec![],
      cwd: cwd.to_path_buf(),
      env: vec![("PATH".into(), "/usr/bin:/bin".into())],
      stdin: String::new(),
      timeout: None,
      stall_timeout: None,
      niceness: 0,
      mirror: None,
      confine: None,
    }
  }
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
  Exited,
  Aborted,
  TimedOut,
  Stalled,
}

/// A compaction the CLI reported.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactEvent {
  pub trigger: String,
  pub pre_tokens: Option<u64>,
  pub post_tokens: Option<u64>,
  pub duration_ms: Option<u64>,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
  pub reason: EndReason,
  pub exit_code: Option<i32>,
  pub signal: Option<i32>,
  pub stderr_tail: String,
  pub result: Option<ResultLine>,
  pub cli_version: Option<String>,
  /// The session id the CLI reported in its `system/init` line.
  pub session_id: Option<String>,
  pub model: Option<String>,
  /// Usage of the last main-chain API call: the context size after the task.
  pub context: Option<Usage>,
  pub compactions: Vec<CompactEvent>,
  pub compact_errors: Vec<String>,
  /// Lines that were not JSON objects, each cut to 200 characters.
  pub malformed: Vec<String>,
  pub pid: Option<u32>,
  pub elapsed: Duration,
  /// What the key proxy metered for the task's model calls (`None`: not metered).
  pub metered: Option<super::key_proxy::Metered>,
}

impl RunOutcome {
  /// An outcome before the CLI said anything.
  pub(crate) fn empty(pid: Option<u32>) -> RunOutcome {
    RunOutcome {
      reason: EndReason::Exited,
      exit_code: None,
      signal: None,
      stderr_tail: String::new(),
      result: None,
      cli_version: None,
      session_id: None,
      model: None,
      context: None,
      compactions: Vec::new(),
      compact_errors: Vec::new(),
      malformed: Vec::new(),
      pid,
      elapsed: Duration::ZERO,
      metered: None,
    }
  }

  /// Takes in what one line of the CLI's stream says about the run.
  pub(crate) fn observe(&mut self, tracker: &mut ContextTracker, kind: &Kind) {
    tracker.observe(kind);
    match kind {
      Kind::Init { cli_version, model, session_id } => {
        self.session_id = session_id.clone().or(self.session_id.take());
        self.cli_version = cli_version.clone().or(self.cli_version.take());
        self.model = model.clone().or(self.model.take());
      }
      Kind::CompactBoundary { trigger, pre_tokens, post_tokens, duration_ms } => self.compactions.push(CompactEvent {
        trigger: trigger.clone(),
        pre_tokens: *pre_tokens,
        post_tokens: *post_tokens,
        duration_ms: *duration_ms,
      }),
      Kind::Status { compact_error: Some(e), .. } => self.compact_errors.push(e.clone()),
      Kind::Result(r) => self.result = Some((**r).clone()),
      _ => {}
    }
  }
}

/// Reads the CLI's stderr to its end and keeps the last [`STDERR_TAIL`] bytes.
pub(crate) async fn stderr_tail(mut stderr: Output) -> String {
  let mut tail: VecDeque<u8> = VecDeque::with_capacity(STDERR_TAIL);
  let mut buf = [0u8; 4096];
  while let Ok(n) = stderr.read(&mut buf).await {
    if n == 0 {
      break;
    }
    for b in &buf[..n] {
      if tail.len() == STDERR_TAIL {
        tail.pop_front();
      }
      tail.push_back(*b);
    }
  }
  String::from_utf8_lossy(&tail.into_iter().collect::<Vec<u8>>()).into_owned()
}

const STDERR_TAIL: usize = 4096;
const KILL_GRACE: Duration = Duration::from_millis(400);

/// A running CLI: started by [`super::process::linux`] where it can be (Linux with pidfds), else by
/// tokio's `Command`.
pub(crate) enum Proc {
  Tokio(Child),
  #[cfg(target_os = "linux")]
  Raw(super::process::linux::RawChild),
}

impl Proc {
  pub(crate) fn id(&self) -> Option<u32> {
    match self {
      Proc::Tokio(c) => c.id(),
      #[cfg(target_os = "linux")]
      Proc::Raw(c) => Some(c.id()),
    }
  }
  pub(crate) async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
    match self {
      Proc::Tokio(c) => c.wait().await,
      #[cfg(target_os = "linux")]
      Proc::Raw(c) => c.wait().await,
    }
  }
  pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
    match self {
      Proc::Tokio(c) => c.try_wait(),
      #[cfg(target_os = "linux")]
      Proc::Raw(c) => c.try_wait(),
    }
  }
  pub(crate) fn start_kill(&mut self) -> std::io::Result<()> {
    match self {
      Proc::Tokio(c) => c.start_kill(),
      #[cfg(target_os = "linux")]
      Proc::Raw(c) => c.start_kill(),
    }
  }
}

pub(crate) type Stdin = Box<dyn AsyncWrite + Send + Sync + Unpin>;
pub(crate) type Output = Box<dyn AsyncRead + Send + Sync + Unpin>;

/// Stops the child's whole process group: SIGTERM, a short grace, then SIGKILL.
pub(crate) async fn stop_group(child: &mut Proc, pgid: Option<u32>) {
  end_group(child, pgid, true).await
}

/// Ends the child's whole process group and reaps the child: with `term_first`, SIGTERM and
/// [`KILL_GRACE`] before the SIGKILL; else SIGKILL at once.
async fn end_group(child: &mut Proc, pgid: Option<u32>, term_first: bool) {
  #[cfg(unix)]
  let tools = match pgid {
    Some(pg) => {
      // The CLI puts each tool command in a process group of its own: find them all before the
      // CLI dies (its children are then reparented and can no longer be told apart).
      let tools = super::process::descendants(pg);
      if term_first {
        kill_group(pg, libc::SIGTERM);
        let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
      }
      // Whatever the CLI started (tools, shells) goes too.
      kill_group(pg, libc::SIGKILL);
      super::process::kill_tree(&tools);
      tools
    }
    None => vec![],
  };
  #[cfg(not(unix))]
  let tools: Vec<u32> = vec![];
  let _ = child.start_kill();
  let _ = child.wait().await;
  // ... and is waited for (up to 2 s after its SIGKILL).
  super::process::until_gone(&tools, Duration::from_secs(2)).await;
}

/// Starts the CLI with piped stdio in its own process group, set to die with this process.
pub(crate) fn spawn(spec: &RunSpec) -> Result<(Proc, Stdin, Output, Output)> {
  #[cfg(target_os = "linux")]
  if spec.program.is_absolute() && super::process::linux::available() {
    use super::process::linux::{spawn as clone_spawn, Step};
    use tokio::net::unix::pipe;
    let setup = match &spec.confine {
      Some(c) => Some(sandbox_setup(c).map_err(|e| Error::new(ErrorCode::SandboxUnavailable, format!("cannot prepare the sandbox: {e}")))?),
      None => None,
    };
    let spawned = clone_spawn(&spec.program, &spec.args, &spec.env, &spec.cwd, spec.niceness, setup.as_ref().map(|(s, _)| s));
    drop(setup);
    return match spawned {
      Ok(mut s) => {
        let io = |e: std::io::Error| Error::new(ErrorCode::CliError, format!("cannot start {}: {e}", spec.program.display()));
        // The sandbox's uid is another's only once this process is gone.
        if let Some(lease) = spec.confine.as_ref().and_then(|c| c.id_lease.clone()) {
          s.child.attach(Box::new(lease));
        }
        let mut listeners = std::mem::take(&mut s.listeners).into_iter();
        if let (Some(listener), Some(to)) = (listeners.next(), spec.confine.as_ref().and_then(|c| c.relay_to)) {
          let relay = super::sandbox::relay::start(listener, to, super::sandbox::relay::MAX_CONNECTIONS).map_err(io)?;
          s.child.attach(Box::new(relay));
        }
        if let (Some(listener), Some(allowed)) = (listeners.next(), spec.confine.as_ref().and_then(|c| c.egress.clone())) {
          s.child.attach(Box::new(super::sandbox::egress::start(listener, allowed).map_err(io)?));
        }
        let stdin = pipe::Sender::from_owned_fd(s.stdin).map_err(io)?;
        let stdout = pipe::Receiver::from_owned_fd(s.stdout).map_err(io)?;
        let stderr = pipe::Receiver::from_owned_fd(s.stderr).map_err(io)?;
        Ok((Proc::Raw(s.child), Box::new(stdin), Box::new(stdout), Box::new(stderr)))
      }
      Err(e) => Err(match (e.step, e.error.kind()) {
        (Step::Chdir, _) => Error::invalid(format!("the working directory {} cannot be used: {}", spec.cwd.display(), e.error)),
        (Step::Sandbox(step), _) => {
          Error::new(ErrorCode::SandboxUnavailable, format!("cannot start the sandbox: could not {}: {}", step.describe(), e.error))
        }
        (Step::Exec, std::io::ErrorKind::NotFound) => {
          Error::new(ErrorCode::CliNotFound, format!("cannot start {}: {}", spec.program.display(), e.error))
        }
        _ => Error::new(ErrorCode::CliError, format!("cannot start {}: {}", spec.program.display(), e.error)),
      }),
    };
  }
  let mut child = spawn_command(spec)?;
  let stdin = child.stdin.take().ok_or_else(|| Error::internal("child stdin missing"))?;
  let stdout = child.stdout.take().ok_or_else(|| Error::internal("child stdout missing"))?;
  let stderr = child.stderr.take().ok_or_else(|| Error::internal("child stderr missing"))?;
  Ok((Proc::Tokio(child), Box::new(stdin), Box::new(stdout), Box::new(stderr)))
}

/// The child's steps for a sandboxed run, with the seccomp programs in memory files at fds 3 and
/// 4 of the exec'd bubblewrap (`--add-seccomp-fd`); the files are returned to be kept open until
/// the spawn is done.
#[cfg(target_os = "linux")]
fn sandbox_setup(c: &super::sandbox::Confinement) -> std::io::Result<(super::process::linux::ChildSetup, Vec<std::os::fd::OwnedFd>)> {
  use std::io::{Seek, Write};
  use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
  let mut setup = c.setup.clone();
  let mut files = vec![];
  for (i, program) in c.seccomp.iter().enumerate() {
    // SAFETY: the name is a NUL-terminated literal; the flags are plain integers.
    let fd = unsafe { libc::memfd_create(c"csm-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
      return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `memfd_create` succeeded: a new descriptor that nothing else owns.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(program)?;
    f.rewind()?;
    setup.pass_fds.push((f.as_raw_fd(), 3 + i as i32));
    files.push(OwnedFd::from(f));
  }
  Ok((setup, files))
}

/// The portable way: tokio's `Command` (a `fork()` on Linux, because of the `pre_exec` hook).
fn spawn_command(spec: &RunSpec) -> Result<Child> {
  let mut cmd = Command::new(&spec.program);
  cmd
    .args(&spec.args)
    .current_dir(&spec.cwd)
    .env_clear()
    .envs(spec.env.iter().map(|(k, v)| (k, v)))
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
  #[cfg(unix)]
  {
    cmd.process_group(0);
    let niceness = spec.niceness;
    // SAFETY: `getpid` has no preconditions. The `pre_exec` hook runs in the forked child between
    // fork and exec, where only async-signal-safe code may run: it calls only `prctl`, `getppid`,
    // `_exit` and `lower_priority` (itself only `getpriority`/`setpriority` and errno), all
    // async-signal-safe system calls, and builds its error with `last_os_error`, which reads errno
    // without allocating; it captures only two integers (`parent`, `niceness`), takes no locks
    // and does not allocate.
    #[cfg(target_os = "linux")]
    unsafe {
      let parent = libc::getpid();
      cmd.pre_exec(move || {
        // Die with the Node process, even when it is killed with SIGKILL.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
          return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() != parent {
          libc::_exit(1);
        }
        lower_priority(niceness);
        Ok(())
      });
    }
    // SAFETY: the `pre_exec` hook runs in the forked child between fork and exec, where only
    // async-signal-safe code may run: `lower_priority` makes only the async-signal-safe
    // `getpriority`/`setpriority` calls and touches errno; the hook captures one integer, takes
    // no locks and does not allocate.
    #[cfg(not(target_os = "linux"))]
    unsafe {
      cmd.pre_exec(move || {
        lower_priority(niceness);
        Ok(())
      });
    }
  }
  cmd.spawn().map_err(|e| {
    if e.kind() == std::io::ErrorKind::NotFound && !spec.cwd.is_dir() {
      Error::invalid(format!("the working directory {} does not exist", spec.cwd.display()))
    } else if e.kind() == std::io::ErrorKind::NotFound {
      Error::new(ErrorCode::CliNotFound, format!("cannot start {}: {e}", spec.program.display()))
    } else {
      Error::new(ErrorCode::CliError, format!("cannot start {}: {e}", spec.program.display()))
    }
  })
}

/// The rest of a run that returned at the CLI's `result` line: draining its output, its exit,
/// and the end of its process group. Await it; dropping it kills the CLI.
pub struct Tail(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl Tail {
  /// Resolves once the CLI has exited (on its own within [`EXIT_WAIT_AFTER_RESULT`], else stopped) and its
  /// process group is gone. Cancelling the run's token stops it at once.
  pub async fn finish(self) {
    self.0.await
  }
}

/// How long a CLI that closed its output may take to exit on its own.
pub const EXIT_WAIT: Duration = Duration::from_secs(5);
/// How long a CLI that printed its result may take to exit on its own (hooks and MCP servers
/// shut down then; nobody waits on it but the session's next task).
pub const EXIT_WAIT_AFTER_RESULT: Duration = Duration::from_secs(30);

/// Runs the CLI to its end (or until cancelled, timed out or stalled), calling `on_line` for every
/// parsed line as it arrives. The child's process group is gone when this returns.
pub async fn run(spec: &RunSpec, cancel: &CancelToken, on_line: impl FnMut(&Line)) -> Result<RunOutcome> {
  let (out, tail) = run_until_result(spec, cancel, on_line, false).await?;
  if let Some(t) = tail {
    t.finish().await;
  }
  Ok(out)
}

/// As [`run`], but with `settle_at_result` it returns as soon as the `result` line is read, with
/// the CLI's exit left to the returned [`Tail`]. In `-p` mode the CLI prints nothing after its
/// result; it only appends session metadata to its transcript and exits (tens of milliseconds).
/// The outcome then has no exit status and no stderr: a result makes them moot.
pub async fn run_until_result(
  spec: &RunSpec,
  cancel: &CancelToken,
  on_line: impl FnMut(&Line),
  settle_at_result: bool,
) -> Result<(RunOutcome, Option<Tail>)> {
  run_launched(Launched::start(spec)?, spec, cancel, on_line, settle_at_result).await
}

/// A CLI started and not yet given the whole of its prompt. In `-p` mode the CLI reads its stdin
/// to the end before it reads anything of the session (its transcript, its settings for the
/// session), and it makes no model call before; but it waits for the *first* byte only 3 s, then
/// goes on without a prompt. [`Launched::hold`] writes the first byte, after which it waits for
/// the end of its stdin for as long as it takes (`__test__/early-start.test.mjs` checks all of this
/// on the CLI in use). Dropped, it is killed with its process group.
pub(crate) struct Launched {
  child: Proc,
  stdin: Stdin,
  stdout: Output,
  stderr: Output,
  /// How much of the prompt is written already.
  written: usize,
  group: GroupGuard,
}

/// Kills a process group when dropped, unless disarmed (its process is in other hands then).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
  fn drop(&mut self) {
    #[cfg(unix)]
    if let Some(pg) = self.0 {
      kill_group(pg, libc::SIGKILL);
    }
  }
}

impl Launched {
  /// Spawns the CLI of `spec` (its prompt, `spec.stdin`, is written by [`run_launched`]).
  pub(crate) fn start(spec: &RunSpec) -> Result<Launched> {
    if !spec.cwd.is_dir() {
      return Err(Error::invalid(format!("the working directory {} does not exist", spec.cwd.display())));
    }
    let (child, stdin, stdout, stderr) = spawn(spec)?;
    let group = GroupGuard(child.id());
    Ok(Launched { child, stdin, stdout, stderr, written: 0, group })
  }

  /// Writes the first byte of `prompt`, so that the CLI waits for the rest however long that takes
  /// (see the type's comment). A pipe takes one byte at once.
  pub(crate) async fn hold(&mut self, prompt: &str) -> Result<()> {
    let Some(first) = prompt.as_bytes().first() else { return Err(Error::internal("an empty prompt cannot hold a CLI")) };
    self.stdin.write_all(&[*first]).await.map_err(|e| Error::new(ErrorCode::CliError, format!("cannot write to the CLI: {e}")))?;
    self.written = 1;
    Ok(())
  }

  #[cfg(test)]
  pub(crate) fn pid(&self) -> Option<u32> {
    self.child.id()
  }

  /// Kills the CLI and whatever it started, at once (it had no prompt: there is nothing to let
  /// it finish), and reaps it.
  pub(crate) async fn kill(mut self) {
    let pgid = self.group.0.take();
    end_group(&mut self.child, pgid, false).await;
  }
}

/// [`run_until_result`] for a CLI already started from `spec`.
pub(crate) async fn run_launched(
  launched: Launched,
  spec: &RunSpec,
  cancel: &CancelToken,
  mut on_line: impl FnMut(&Line),
  settle_at_result: bool,
) -> Result<(RunOutcome, Option<Tail>)> {
  let started = Instant::now();
  let Launched { child, mut stdin, stdout, stderr, written, mut group } = launched;
  // From here on the group is stopped by the run's end (`ending`).
  group.0 = None;
  let pid = child.id();
  let pgid = pid; // process_group(0): the group id is the child's pid.

  let prompt = spec.stdin.clone();
  let writer = tokio::spawn(async move {
    let _ = stdin.write_all(&prompt.as_bytes()[written.min(prompt.len())..]).await;
    let _ = stdin.shutdown().await;
  });
  let err_reader = tokio::spawn(stderr_tail(stderr));
  let mut reader = BufReader::new(stdout);

  let mut out = RunOutcome::empty(pid);
  let mut tracker = ContextTracker::default();
  let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
  let far = Duration::from_secs(60 * 60 * 24 * 365);
  let mut buf = Vec::with_capacity(8192);
  let mut stopped = false;
  let mut early = false;

  loop {
    if early {
      break;
    }
    buf.clear();
    let until_deadline = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now())).unwrap_or(far);
    let stall = spec.stall_timeout.unwrap_or(far);
    tokio::select! {
      read = reader.read_until(b'\n', &mut buf) => {
        match read {
          Ok(0) | Err(_) => break,
          Ok(_) => {
            take_line(&buf, spec, &mut out, &mut tracker, &mut on_line);
            early = settle_at_result && out.result.is_some();
          }
        }
      }
      _ = cancel.cancelled() => { out.reason = EndReason::Aborted; stopped = true; break; }
      _ = tokio::time::sleep(until_deadline) => { out.reason = EndReason::TimedOut; stopped = true; break; }
      _ = tokio::time::sleep(stall) => { out.reason = EndReason::Stalled; stopped = true; break; }
    }
  }

  let ending = ending(Exiting { child, pgid, reader, writer, err_reader }, spec.mirror.clone(), cancel.clone(), early, stopped);
  out.context = tracker.last();
  out.elapsed = started.elapsed();
  if early {
    return Ok((
      out,
      Some(Tail(Box::pin(async move {
        ending.await;
      }))),
    ));
  }
  let ((exit_code, signal), stderr_tail) = ending.await;
  out.exit_code = exit_code;
  out.signal = signal;
  out.stderr_tail = stderr_tail;
  out.elapsed = started.elapsed();
  Ok((out, None))
}

/// A CLI after its output loop: the process, its group, and the pipes still open.
struct Exiting {
  child: Proc,
  pgid: Option<u32>,
  reader: BufReader<Output>,
  writer: tokio::task::JoinHandle<()>,
  err_reader: tokio::task::JoinHandle<String>,
}

/// One line of the CLI's output: a mirror frame goes to the mirror, a stream-json line is
/// observed and handed to `on_line`, anything else is kept as malformed.
fn take_line(buf: &[u8], spec: &RunSpec, out: &mut RunOutcome, tracker: &mut ContextTracker, on_line: &mut impl FnMut(&Line)) {
  let text = String::from_utf8_lossy(buf);
  if text.trim().is_empty() {
    return;
  }
  match stream::parse_line(&text) {
    Ok(line) if spec.mirror.is_some() && super::mirror::is_frame(&line.raw) => {
      if let Some(tx) = &spec.mirror {
        let _ = tx.send(super::mirror::MirrorMsg::Frame(line.raw));
      }
    }
    Ok(line) => {
      out.observe(tracker, &line.kind);
      on_line(&line);
    }
    Err(why) => {
      let shown: String = text.trim().chars().take(200).collect();
      out.malformed.push(format!("{why}: {shown}"));
    }
  }
}

/// The exit code and signal of a CLI that has exited.
fn exit_status(child: &mut Proc) -> (Option<i32>, Option<i32>) {
  let Ok(Some(s)) = child.try_wait() else { return (None, None) };
  #[cfg(unix)]
  {
    use std::os::unix::process::ExitStatusExt;
    (s.code(), s.signal())
  }
  #[cfg(not(unix))]
  {
    (s.code(), None)
  }
}

/// The CLI's end once its output loop is over: stopped (`stopped`), or given a moment to exit on
/// its own; its whole group gone; its exit status and (unless it settled `early`, at its result)
/// the tail of its stderr.
async fn ending(
  p: Exiting,
  mirror: Option<super::mirror::MirrorTx>,
  cancel: CancelToken,
  early: bool,
  stopped: bool,
) -> ((Option<i32>, Option<i32>), String) {
  let Exiting { mut child, pgid, mut reader, writer, err_reader } = p;
  // After an early return, read (and drop) whatever the CLI still prints, so that it never
  // blocks on a full pipe; its exit, not the end of its output (which a tool's background
  // process can hold open), ends the wait below. Mirror frames printed after the result still
  // go to the mirror.
  let mirrored = mirror.is_some();
  let mut drain = early.then(|| {
    tokio::spawn(async move {
      match mirror {
        Some(tx) => super::mirror::drain(&mut reader, &tx).await,
        None => {
          let _ = tokio::io::copy(&mut reader, &mut tokio::io::sink()).await;
        }
      }
    })
  });
  if stopped {
    stop_group(&mut child, pgid).await;
  } else {
    // stdout closed or the result is in: the CLI is done. Give it a moment to exit, then make
    // sure its whole group is gone.
    tokio::select! {
      r = tokio::time::timeout(if early { EXIT_WAIT_AFTER_RESULT } else { EXIT_WAIT }, child.wait()) => match r {
        Ok(_) => {
          if let Some(pg) = pgid {
            #[cfg(unix)]
            kill_group(pg, libc::SIGKILL);
          }
        }
        Err(_) => stop_group(&mut child, pgid).await,
      },
      _ = cancel.cancelled() => stop_group(&mut child, pgid).await,
    }
  }
  writer.abort();
  if let Some(d) = drain.as_mut() {
    // The CLI has exited: its last frames are in the pipe; read them unless a process that
    // outlived it holds the output open.
    if mirrored {
      let _ = tokio::time::timeout(Duration::from_secs(2), &mut *d).await;
    }
    d.abort();
  }
  let status = exit_status(&mut child);
  if early {
    // Nobody reads it: a process that left the group may hold stderr open, so do not wait.
    err_reader.abort();
    return (status, String::new());
  }
  let stderr_tail = tokio::time::timeout(Duration::from_secs(2), err_reader).await.ok().and_then(|r| r.ok()).unwrap_or_default();
  (status, stderr_tail)
}

#[cfg(test)]
pub(crate) mod tests {
  use super::*;
  use crate::cli::args::*;
  use crate::cli::process::*;
  use crate::cli::resolve::*;
  use std::path::Path;

  /// Whether the process is gone (or a zombie waiting to be reaped), from /proc.
  fn gone(pid: u32) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    state.is_empty() || state.contains(") Z")
  }

  #[cfg(unix)]
  #[tokio::test]
  async fn settling_at_the_result_leaves_the_exit_to_the_tail_which_ends_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("exited");
    // A CLI that prints its result, keeps a grandchild, and exits only after 300 ms.
    let p = script(
      dir.path(),
      &format!(
        "read line\nsleep 300 &\necho '{{\"type\":\"result\",\"subtype\":\"success\",\"result\":\"ok\"}}'\nsleep 0.3\ntouch {}",
        marker.display()
      ),
    );
    let alive = |pid: u32| !gone(pid);
    let (out, tail) = run_until_result(&spec(p.clone(), dir.path()), &CancelToken::new(), |_| {}, true).await.unwrap();
    assert_eq!(out.result.unwrap().result.as_deref(), Some("ok"));
    let pid = out.pid.unwrap();
    assert!(alive(pid) && !marker.exists(), "returned at the result line, before the CLI exited");
    tail.expect("a tail").finish().await;
    assert!(marker.exists(), "the tail let the CLI finish on its own");
    assert!(!alive(pid));
    let group_left = || {
      std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()).any(|e| {
        std::fs::read_to_string(e.path().join("stat"))
          .map(|st| st[st.rfind(')').unwrap_or(0)..].split(' ').nth(3) == Some(&pid.to_string()))
          .unwrap_or(false)
          && e.file_name().to_string_lossy().parse::<u32>().map(alive).unwrap_or(false)
      })
    };
    // SIGKILL is sent to the group when the tail ends; a loaded machine may take a moment to
    // deliver it.
    let group_gone = (0..250).any(|_| {
      std::thread::sleep(Duration::from_millis(20));
      !group_left()
    });
    assert!(group_gone, "the grandchild went with the group");

    // Cancelling stops a CLI that lingers after its result.
    let token = CancelToken::new();
    let (out, tail) = run_until_result(&spec(p.clone(), dir.path()), &token, |_| {}, true).await.unwrap();
    let _ = std::fs::remove_file(&marker);
    token.cancel();
    tail.unwrap().finish().await;
    assert!(!alive(out.pid.unwrap()) && !marker.exists(), "stopped before it could finish");

    // Without settling, `run` returns after the exit, with its status.
    let p = script(
      dir.path(),
      &format!(
        "read line\necho '{{\"type\":\"result\",\"subtype\":\"success\",\"result\":\"ok\"}}'\nsleep 0.3\ntouch {}",
        marker.display()
      ),
    );
    let out = run(&spec(p, dir.path()), &CancelToken::new(), |_| {}).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(marker.exists());
  }

  #[cfg(target_os = "linux")]
  #[tokio::test]
  async fn the_cli_runs_below_this_process_priority_on_either_spawn_path() {
    let dir = tempfile::tempdir().unwrap();
    let p =
      script(dir.path(), r#"read line; printf '{"type":"result","subtype":"success","result":"%s"}\n' "$(cut -d' ' -f19 /proc/$$/stat)""#);
    let mut s = spec(p, dir.path());
    for by in [0, 7, 40] {
      s.niceness = by;
      let out = run(&s, &CancelToken::new(), |_| {}).await.unwrap();
      assert_eq!(out.result.unwrap().result.unwrap(), (own_nice() + by).min(19).to_string(), "clone path, +{by}");
      // The portable path (tokio's Command and its pre_exec hook) does the same.
      let child = spawn_command(&s).unwrap();
      let stdout = child.wait_with_output().await.unwrap().stdout;
      let line = String::from_utf8(stdout).unwrap();
      assert!(line.contains(&format!("\"result\":\"{}\"", (own_nice() + by).min(19))), "Command path, +{by}: {line}");
    }
  }

  #[test]
  fn argv_keeps_values_attached_to_their_flags() {
    let a = CliArgs {
      session: Some(SessionMode::Fork { parent: "p".into(), child: "c".into() }),
      model: Some("--dangerously-skip-permissions".into()),
      allowed_tools: vec!["Bash(git log:*)".into(), "-x".into()],
      append_system_prompt: Some("--help me".into()),
      ..Default::default()
    };
    let v = build_args(&a);
    assert!(v.contains(&"--model=--dangerously-skip-permissions".to_string()));
    assert!(v.contains(&"--allowedTools=Bash(git log:*)".to_string()));
    assert!(v.contains(&"--allowedTools=-x".to_string()));
    assert!(v.contains(&"--append-system-prompt=--help me".to_string()));
    assert_eq!(v.iter().filter(|s| s.as_str() == "--dangerously-skip-permissions").count(), 0);
    let i = v.iter().position(|s| s == "--resume=p").unwrap();
    assert_eq!(v[i + 1], "--fork-session");
    assert_eq!(v[i + 2], "--session-id=c");
  }

  #[test]
  fn a_branch_point_goes_with_a_resumed_or_forked_session_only() {
    let at = |session| CliArgs { session, resume_at: Some("u".into()), resume_drops_turn: Some("p".into()), ..Default::default() };
    let v = build_args(&at(Some(SessionMode::Resume("s".into()))));
    let i = v.iter().position(|s| s == "--resume=s").unwrap();
    assert_eq!(v[i + 1..i + 3], ["--resume-session-at=u".to_string(), "--resume-drops-turn=p".to_string()]);
    assert!(build_args(&at(Some(SessionMode::Fork { parent: "p".into(), child: "c".into() }))).contains(&"--resume-session-at=u".into()));
    let v = build_args(&at(Some(SessionMode::New("s".into()))));
    assert!(!v.iter().any(|s| s.starts_with("--resume")), "{v:?}");
  }

  #[test]
  fn env_passes_what_the_cli_needs_and_nothing_else() {
    let parent = [
      ("PATH", "/bin"),
      ("HOME", "/root"),
      ("ANTHROPIC_API_KEY", "k"),
      ("DATABASE_URL", "postgres://secret"),
      ("AWS_SECRET_ACCESS_KEY", "aws"),
      ("CLAUDE_CODE_MAX_RETRIES", "0"),
      ("LC_ALL", "C"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let env = child_env(parent.clone(), &[("ANTHROPIC_API_KEY".into(), "override".into())]);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("PATH"), Some("/bin"));
    assert_eq!(get("ANTHROPIC_API_KEY"), Some("override"));
    assert_eq!(get("CLAUDE_CODE_MAX_RETRIES"), Some("0"));
    assert_eq!(get("LC_ALL"), Some("C"));
    assert_eq!(get("DATABASE_URL"), None);
    assert_eq!(get("AWS_SECRET_ACCESS_KEY"), None);
    let env = child_env(parent, &[("CLAUDE_CODE_USE_BEDROCK".into(), "1".into())]);
    assert!(env.iter().any(|(k, _)| k == "AWS_SECRET_ACCESS_KEY"));
  }

  #[test]
  fn explicit_cli_path_must_exist() {
    let e = resolve_cli(Some("/nonexistent/claude"), &[]).unwrap_err();
    assert_eq!(e.code, ErrorCode::CliNotFound);
    assert!(e.message.contains("npm install @anthropic-ai/claude-code"));
  }

  /// A stand-in CLI (a shell script) reaches what the real one cannot show on demand: garbage
  /// output, a hang, a grandchild that would outlive it.
  pub(crate) fn script(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("fake-claude");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
  }

  pub(crate) fn spec(program: PathBuf, cwd: &Path) -> RunSpec {
    RunSpec {
      program,
      args: vec![],
      cwd: cwd.to_path_buf(),
      env: child_env(std::env::vars(), &[]),
      stdin: "hello".into(),
      timeout: None,
      stall_timeout: None,
      niceness: 0,
      mirror: None,
      confine: None,
    }
  }

  #[tokio::test]
  async fn garbage_lines_are_reported_and_the_result_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = script(
      dir.path(),
      r#"cat >/dev/null
echo 'not json at all'
echo '{"type":"system","subtype":"init","claude_code_version":"9.9.9","model":"m"}'
printf '{"type":"result","subtype":"success","is_error":false,"result":"ok","num_turns":1}\n{"trunc'
echo "some stderr" >&2
exit 3"#,
    );
    let mut seen = 0;
    let out = run(&spec(p, dir.path()), &CancelToken::new(), |_| seen += 1).await.unwrap();
    assert_eq!(out.reason, EndReason::Exited);
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(seen, 2);
    assert_eq!(out.malformed.len(), 2, "{:?}", out.malformed);
    assert_eq!(out.cli_version.as_deref(), Some("9.9.9"));
    assert_eq!(out.result.unwrap().result.as_deref(), Some("ok"));
    assert!(out.stderr_tail.contains("some stderr"));
  }

  // The prompt arrives on stdin. That it is in no argv is checked on a real CLI's /proc cmdline in
  // __test__/tasks.test.mjs (here the spec's args are the test's own, so it could not fail).
  #[tokio::test]
  async fn the_prompt_arrives_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let p = script(dir.path(), r#"read line; printf '{"type":"result","subtype":"success","result":"%s"}\n' "$line""#);
    let out = run(&spec(p, dir.path()), &CancelToken::new(), |_| {}).await.unwrap();
    assert_eq!(out.result.unwrap().result.as_deref(), Some("hello"));
  }

  #[tokio::test]
  async fn stall_and_cancel_kill_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    // The script starts a grandchild, says so on stdout (which also resets the stall timer),
    // then goes silent.
    let p = script(
      dir.path(),
      &format!("sleep 300 & echo $! > {}\necho '{{\"type\":\"system\",\"subtype\":\"init\"}}'\nsleep 300", pidfile.display()),
    );
    let mut s = spec(p.clone(), dir.path());
    s.stall_timeout = Some(Duration::from_millis(500));
    let out = run(&s, &CancelToken::new(), |_| {}).await.unwrap();
    assert_eq!(out.reason, EndReason::Stalled);
    let gc: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(gone(gc), "the grandchild outlived the stall");
    assert!(gone(out.pid.unwrap()), "the CLI outlived the stall");

    let token = CancelToken::new();
    let t2 = token.clone();
    tokio::spawn(async move {
      tokio::time::sleep(Duration::from_millis(200)).await;
      t2.cancel();
    });
    let out = run(&spec(p, dir.path()), &token, |_| {}).await.unwrap();
    assert_eq!(out.reason, EndReason::Aborted);
    assert!(gone(out.pid.unwrap()), "the CLI outlived the abort");
  }

  /// A CLI started early and not taken (`sessions::run::early`) is killed with what it started,
  /// at once (no grace: it ignores SIGTERM here), and never gets more than its prompt's first byte.
  #[tokio::test]
  async fn a_held_cli_killed_before_its_prompt_leaves_nothing_and_got_one_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (pidfile, got) = (dir.path().join("child.pid"), dir.path().join("prompt"));
    let p = script(dir.path(), &format!("trap '' TERM\nsleep 300 & echo $! > {}\ncat > {}\nsleep 300", pidfile.display(), got.display()));
    let mut launched = Launched::start(&spec(p, dir.path())).unwrap();
    launched.hold("the prompt").await.unwrap();
    let pid = launched.pid().unwrap();
    let t0 = Instant::now();
    let read = |f: &Path| std::fs::read_to_string(f).unwrap_or_default();
    while read(&pidfile).trim().is_empty() || read(&got).is_empty() {
      assert!(t0.elapsed() < Duration::from_secs(10), "the script did not start or did not read the first byte");
      tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let child: u32 = read(&pidfile).trim().parse().unwrap();
    let t1 = Instant::now();
    launched.kill().await;
    assert!(t1.elapsed() < KILL_GRACE, "killed without the grace a running CLI gets");
    assert!(gone(pid), "the CLI outlived its kill");
    assert!(gone(child), "what it started outlived its kill");
    assert_eq!(read(&got), "t", "it got the prompt's first byte, and never the rest");
  }

  /// A CLI that ignores SIGTERM and whose tool left the CLI's process group and session
  /// (`setsid`): the cold path's cancel must still end that tool (second test audit, M21).
  #[tokio::test]
  async fn cancel_kills_tools_in_sessions_of_their_own_even_when_the_cli_ignores_term() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("tool.pid");
    let p = script(
      dir.path(),
      &format!(
        "trap '' TERM\nsetsid sleep 307 & echo $! > {}\necho '{{\"type\":\"system\",\"subtype\":\"init\"}}'\nwhile true; do sleep 1; done",
        pidfile.display()
      ),
    );
    let token = CancelToken::new();
    let t2 = token.clone();
    let pf = pidfile.clone();
    tokio::spawn(async move {
      for _ in 0..200 {
        if std::fs::read_to_string(&pf).is_ok_and(|s| s.ends_with('\n')) {
          break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
      }
      t2.cancel();
    });
    let out = run(&spec(p, dir.path()), &token, |_| {}).await.unwrap();
    assert_eq!(out.reason, EndReason::Aborted);
    let tool: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    // (Polled: SIGKILL is delivered at once, the process leaves /proc a moment later.)
    let mut alive = !gone(tool);
    for _ in 0..40 {
      if !alive {
        break;
      }
      tokio::time::sleep(Duration::from_millis(50)).await;
      alive = !gone(tool);
    }
    if alive {
      // SAFETY: kill takes plain integers; the test's own leftover is cleaned up.
      unsafe { libc::kill(tool as libc::pid_t, libc::SIGKILL) };
    }
    assert!(!alive, "the setsid tool outlived the cancelled CLI");
    assert!(gone(out.pid.unwrap()), "the CLI outlived the abort");
  }
}
