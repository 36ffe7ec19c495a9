//! A warm CLI: one `claude` process kept running across the tasks of a session, prompts written
//! to its stdin as stream-json lines (`--input-format=stream-json`), its control protocol
//! answered. The cold executor is [`super::run()`]; the manager picks one per task.
//!
//! What this file guarantees (protocol facts as measured on CLI 2.1.331):
//! - one writer per stdin: every line goes through one task, serialised by `serde_json` (a
//!   malformed line would kill the CLI);
//! - a turn is the task's only between the CLI's `command_lifecycle` `started` and the `result`
//!   for the prompt's own uuid: turns the CLI starts by itself (background task notifications)
//!   never reach a task as its own; their lines are kept for the manager (`take_outside`);
//! - every `control_request` the CLI sends is answered (`can_use_tool` by the task's handler, or
//!   deny after its timeout; anything else with an error);
//! - abort is the CLI's `interrupt`; a turn that does not settle within the grace is stopped
//!   with its process group, as a cold run is.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::args::{build_args, CliArgs};
use super::mirror::{MirrorMsg, MirrorTx};
use super::permission::Decision;
use super::run::{spawn, stderr_tail, stop_group, CancelToken, EndReason, Output, Proc, RunOutcome, RunSpec};
use super::stream::{self, ContextTracker, Kind, Line};
use crate::error::{Error, ErrorCode, Result};

/// A `can_use_tool` request of the CLI, as the host's callback sees it.
#[derive(Debug, Clone)]
pub struct PermissionRequest {
  pub request_id: String,
  pub tool_name: String,
  pub input: Value,
  /// The CLI's `permission_suggestions` (`[]` when none).
  pub suggestions: Value,
  pub tool_use_id: Option<String>,
}

/// What a permission callback resolves to: its [`Decision`]; `Err` is reported to the CLI as a
/// failed request (which it counts as a denial).
pub type PermissionFuture = Pin<Box<dyn Future<Output = std::result::Result<Decision, String>> + Send>>;

/// Decides a permission request. The token is cancelled when the CLI withdraws the request (after
/// an interrupt), when the time is up, or when the turn ends.
pub type CanUseTool = Arc<dyn Fn(PermissionRequest, CancelToken) -> PermissionFuture + Send + Sync>;

/// The prompt of prewarm's warm-up turn ([`WarmProcess::warm_up`]); no model reads it.
pub const WARM_UP_PROMPT: &str = "(A warm-up turn of the process, taken back before any model reads it.)";

/// The argv of a warm CLI: the cold one without `-p` and without `--max-budget-usd` (it counts
/// the whole process; the manager enforces budgets per task), with stream-json input, and the
/// permission prompts on the control protocol when `permission_prompts`.
pub fn warm_args(a: &CliArgs, permission_prompts: bool) -> Vec<String> {
  let a = CliArgs { max_budget_usd: None, ..a.clone() };
  let mut v: Vec<String> = build_args(&a).into_iter().filter(|x| x != "-p").collect();
  v.insert(0, "--input-format=stream-json".into());
  if permission_prompts {
    v.push("--permission-prompt-tool=stdio".into());
  }
  v
}

/// Per-turn limits and handlers.
#[derive(Clone)]
pub struct TurnOptions {
  /// Whole-turn limit; reaching it stops the process.
  pub timeout: Option<Duration>,
  /// No stdout line for this long stops the process.
  pub stall_timeout: Option<Duration>,
  /// The task's permission callback and how long it may take before the answer is deny.
  pub can_use_tool: Option<(CanUseTool, Duration)>,
  /// How long an interrupted turn may take to end before the process group is stopped.
  pub interrupt_grace: Duration,
  /// Where the turn's `transcript_mirror` frames go (a process started with `--session-mirror`),
  /// after the ones printed while no turn ran.
  pub mirror: Option<MirrorTx>,
}

/// Control requests and steering for a warm process, usable while a task runs in it. Writes go
/// through the process's one stdin writer.
#[derive(Clone)]
pub struct WarmHandle {
  out: Writer,
  shared: Arc<Shared>,
}

impl WarmHandle {
  /// Sends a control request; the receiver gets the CLI's `response` (or its error).
  pub fn control(&self, request: Value) -> oneshot::Receiver<std::result::Result<Value, String>> {
    let id = uuid::Uuid::new_v4().to_string();
    let (tx, rx) = oneshot::channel();
    lock(&self.shared.pending).insert(id.clone(), tx);
    if !send(&self.out, &json!({ "type": "control_request", "request_id": id, "request": request })) {
      lock(&self.shared.pending).remove(&id);
    }
    rx
  }

  /// Sends a control request and waits up to `limit` for its answer.
  pub async fn ask(&self, request: Value, limit: Duration) -> Result<Value> {
    match tokio::time::timeout(limit, self.control(request)).await {
      Ok(Ok(Ok(v))) => Ok(v),
      Ok(Ok(Err(e))) => Err(Error::new(ErrorCode::CliError, format!("the CLI refused the request: {e}"))),
      Ok(Err(_)) => Err(Error::new(ErrorCode::CliError, "the CLI exited before it answered")),
      Err(_) => Err(Error::new(ErrorCode::Timeout, format!("the CLI did not answer within {} ms", limit.as_millis()))),
    }
  }

  /// Adds a user message to the running task: the CLI queues it and runs it after the current
  /// prompt, and the task ends at its result. `Ok(false)` when no task is running (or it is
  /// ending); `CONTEXT_OVERFLOW` past [`MAX_STEERED`] messages or [`MAX_STEERED_BYTES`] in all
  /// for the task (each is stored in the session's event log, and all of them go to the model).
  pub fn steer(&self, text: &str) -> Result<bool> {
    let mut turn = lock(&self.shared.turn);
    let Some(t) = turn.as_mut() else { return Ok(false) };
    if self.shared.closed.load(Ordering::SeqCst) {
      return Ok(false);
    }
    if t.uuids.len() > MAX_STEERED || t.steered_bytes + text.len() > MAX_STEERED_BYTES {
      return Err(too_many_steered());
    }
    t.steered_bytes += text.len();
    let uuid = uuid::Uuid::new_v4().to_string();
    // Registered before it is written, so that its lifecycle lines find it.
    t.uuids.push(uuid.clone());
    t.outstanding.push(uuid.clone());
    Ok(send(&self.out, &user_line(text, &uuid)))
  }
}

/// The most messages one task takes besides its prompt ([`WarmHandle::steer`]).
pub const MAX_STEERED: usize = 100;
/// The most bytes the messages one task takes may add up to: as much as one prompt may have.
pub const MAX_STEERED_BYTES: usize = crate::validate::MAX_PROMPT_BYTES;

enum Event {
  Line(Line),
  /// The `result` line after which none of the task's prompts is left: the task ends at it.
  Last(Line),
  Malformed(String),
  /// The CLI ended the prompt (`completed` or `cancelled`) without a result line first.
  Done,
  /// stdout closed: the process is gone or going.
  Closed,
}

/// The running task's prompts: its own and the ones steered into it (`steer`). The CLI runs them
/// one after the other, each to its own `result`; the task ends at the result after which none
/// of them is left.
struct Turn {
  uuids: Vec<String>,
  /// Written and not yet `completed`/`cancelled`.
  outstanding: Vec<String>,
  /// The one the CLI said it started last.
  current: Option<String>,
  /// What the messages steered into it add up to, in bytes.
  steered_bytes: usize,
  tx: mpsc::UnboundedSender<Event>,
}

impl Turn {
  /// Whether a `result` now ends the task: no prompt of it but the running one is left.
  fn last_result(&self) -> bool {
    self.outstanding.iter().all(|u| Some(u) == self.current.as_ref())
  }
}

type Pending = oneshot::Sender<std::result::Result<Value, String>>;

#[derive(Default)]
struct Shared {
  turn: Mutex<Option<Turn>>,
  pending: Mutex<HashMap<String, Pending>>,
  permissions: Mutex<Option<(CanUseTool, Duration)>>,
  in_flight: Mutex<HashMap<String, CancelToken>>,
  closed: AtomicBool,
  /// Where mirror frames go now; `None` between turns, when they wait in `unmirrored`.
  mirror: Mutex<Option<MirrorTx>>,
  unmirrored: Mutex<Vec<Value>>,
  /// Lines of turns no task asked for (the CLI's own, about background jobs), kept until the
  /// manager takes them.
  outside: Mutex<Vec<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
  m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The queue of the one task that writes stdin; `None` closes stdin.
type Writer = mpsc::UnboundedSender<Option<String>>;

fn send(out: &Writer, v: &Value) -> bool {
  // `to_string` of a `Value` cannot fail and never contains a raw newline.
  let line = format!("{v}\n");
  out.send(Some(line)).is_ok()
}

/// How many mirror frames printed between turns are kept for the next one (a CLI printing more
/// while idle is not one this manager started: the oldest are dropped, and the end-of-task check
/// of the local file stores what they held).
const MAX_UNMIRRORED: usize = 10_000;

/// How many lines of turns the CLI starts by itself are kept for the manager (the newest).
const MAX_OUTSIDE: usize = 1_000;

impl Shared {
  /// A mirror frame: to the attached mirror, else kept, in order, for the next one.
  fn mirror_frame(&self, frame: Value) {
    let mirror = lock(&self.mirror);
    match mirror.as_ref() {
      Some(tx) => {
        let _ = tx.send(MirrorMsg::Frame(frame));
      }
      None => {
        let mut kept = lock(&self.unmirrored);
        if kept.len() >= MAX_UNMIRRORED {
          kept.remove(0);
        }
        kept.push(frame);
      }
    }
  }

  /// Attaches a mirror (first sending it the frames kept since the last one), or detaches it.
  fn attach_mirror(&self, tx: Option<MirrorTx>) {
    let mut mirror = lock(&self.mirror);
    if let Some(tx) = &tx {
      for f in lock(&self.unmirrored).drain(..) {
        let _ = tx.send(MirrorMsg::Frame(f));
      }
    }
    *mirror = tx;
  }

  /// Hands an event to the running turn, if it is the task's (started and not over); a line of
  /// any other turn is kept as the CLI's own activity (streaming deltas aside).
  fn to_turn(&self, ev: Event) {
    let mut turn = lock(&self.turn);
    if let Some(t) = turn.as_ref().filter(|t| t.current.is_some()) {
      // Whether a result ends the task is decided here, in the order the CLI printed its lines
      // (the prompts' `command_lifecycle` lines move the turn on as they are read), and the turn
      // is closed in the same step, so that nothing is steered into a task that ended.
      let last = matches!(&ev, Event::Line(line) if matches!(line.kind, Kind::Result(_))) && t.last_result();
      match ev {
        Event::Line(line) if last => {
          let _ = t.tx.send(Event::Last(line));
          *turn = None;
        }
        ev => {
          let _ = t.tx.send(ev);
        }
      }
      return;
    }
    drop(turn);
    if let Event::Line(line) = ev {
      if !matches!(line.kind, Kind::Partial { .. }) {
        let mut kept = lock(&self.outside);
        if kept.len() >= MAX_OUTSIDE {
          kept.remove(0);
        }
        kept.push(line.raw);
      }
    }
  }
}

/// A running warm CLI.
pub struct WarmProcess {
  child: Proc,
  pid: Option<u32>,
  out: Writer,
  shared: Arc<Shared>,
  reader: JoinHandle<()>,
  writer: JoinHandle<()>,
  stderr: Option<JoinHandle<String>>,
  spec: RunSpec,
  /// Set when a turn found the process gone or had to stop it.
  dead: bool,
}

impl WarmProcess {
  /// Spawns the CLI (without a shell, in its own process group, set to die with this process).
  /// `spec.args` must be [`warm_args`]; `spec.stdin` is not used.
  pub fn start(spec: RunSpec) -> Result<WarmProcess> {
    if !spec.cwd.is_dir() {
      return Err(Error::invalid(format!("the working directory {} does not exist", spec.cwd.display())));
    }
    let (child, mut stdin, stdout, stderr) = spawn(&spec)?;
    let pid = child.id();
    let (out, mut rx) = mpsc::unbounded_channel::<Option<String>>();
    let writer = tokio::spawn(async move {
      while let Some(Some(line)) = rx.recv().await {
        if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
          break;
        }
      }
      let _ = stdin.shutdown().await;
    });
    let shared = Arc::new(Shared::default());
    let reader = tokio::spawn(read_loop(stdout, shared.clone(), out.clone()));
    let stderr = Some(tokio::spawn(stderr_tail(stderr)));
    Ok(WarmProcess { child, pid, out, shared, reader, writer, stderr, spec, dead: false })
  }

  pub fn pid(&self) -> Option<u32> {
    self.pid
  }

  pub fn spec(&self) -> &RunSpec {
    &self.spec
  }

  /// Whether the process can take another prompt.
  pub fn alive(&mut self) -> bool {
    !self.dead && !self.shared.closed.load(Ordering::SeqCst) && matches!(self.child.try_wait(), Ok(None))
  }

  /// Sends a control request; the receiver gets the CLI's `response` (or its error).
  pub fn control(&self, request: Value) -> oneshot::Receiver<std::result::Result<Value, String>> {
    self.handle().control(request)
  }

  /// A handle for control requests and steering from elsewhere while the process is kept.
  pub fn handle(&self) -> WarmHandle {
    WarmHandle { out: self.out.clone(), shared: self.shared.clone() }
  }

  /// Runs one prompt to its `result`: the outcome as a cold run reports it. The process stays
  /// usable unless [`Self::alive`] says otherwise afterwards.
  /// `on_start` is called once the prompt is written (or could not be: the process is gone) and
  /// the turn takes steered messages, before any of its lines, with what the process printed
  /// while no turn ran ([`WarmProcess::take_outside`]).
  pub async fn turn(
    &mut self,
    prompt: &str,
    o: TurnOptions,
    cancel: &CancelToken,
    on_start: impl FnOnce(Vec<Value>),
    on_line: impl FnMut(&Line),
  ) -> RunOutcome {
    self.turn_as(&uuid::Uuid::new_v4().to_string(), prompt, o, cancel, on_start, on_line).await
  }

  /// Prewarm's warm-up: one turn that no model sees, taken back at once. A CLI's first turn runs
  /// its code for the first time (reading the prompt, its attachments, the request, the stream,
  /// the transcript writes) and takes several times a later turn; this one is that first turn,
  /// so the session's first real prompt runs as a follow-up would.
  ///
  /// The process's key-proxy token must be suspended (the caller's duty): the turn's one model
  /// call is then answered `401` by the proxy and reaches no API. The turn is then taken back
  /// with the CLI's `rewind_conversation` control request (the conversation is as before the
  /// warm-up, the next prompt's parent is the last message before it), the mirror frames and
  /// the lines it printed are dropped. What it wrote to the transcript file stays there: the
  /// caller restores the file. `uuid` is the warm-up prompt's. An error (or `cancel`) means the
  /// conversation may hold the warm-up: the process must not be kept. `limit` bounds the turn,
  /// and then the rewind.
  pub async fn warm_up(&mut self, uuid: &str, limit: Duration, cancel: &CancelToken) -> Result<()> {
    let o =
      TurnOptions { timeout: Some(limit), stall_timeout: None, can_use_tool: None, interrupt_grace: Duration::from_secs(3), mirror: None };
    let out = self.turn_as(uuid, WARM_UP_PROMPT, o, cancel, |_| {}, |_| {}).await;
    if self.dead || out.reason != super::run::EndReason::Exited {
      return Err(Error::new(ErrorCode::CliError, format!("the CLI's warm-up turn did not end ({:?})", out.reason)));
    }
    let handle = self.handle();
    let ask = handle.ask(json!({ "subtype": "rewind_conversation", "target_message_uuid": uuid }), limit);
    let rewound = tokio::select! {
      r = ask => r?,
      _ = cancel.cancelled() => return Err(Error::new(ErrorCode::Aborted, "the warm-up was stopped")),
    };
    if rewound.get("rewound") != Some(&Value::Bool(true)) {
      return Err(Error::new(ErrorCode::CliError, format!("the CLI did not take its warm-up turn back: {rewound}")));
    }
    lock(&self.shared.unmirrored).clear();
    drop(self.take_outside());
    Ok(())
  }

  /// [`Self::turn`] with the prompt's uuid given.
  async fn turn_as(
    &mut self,
    uuid: &str,
    prompt: &str,
    o: TurnOptions,
    cancel: &CancelToken,
    on_start: impl FnOnce(Vec<Value>),
    mut on_line: impl FnMut(&Line),
  ) -> RunOutcome {
    let started = Instant::now();
    let mut out = RunOutcome::empty(self.pid);
    let mut tracker = ContextTracker::default();
    let uuid = uuid.to_owned();
    let (tx, mut rx) = mpsc::unbounded_channel();
    *lock(&self.shared.permissions) = o.can_use_tool.clone();
    self.shared.attach_mirror(o.mirror.clone());
    let far = Duration::from_secs(60 * 60 * 24 * 365);
    let deadline = o.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut interrupted: Option<tokio::time::Instant> = None;
    let mut stop = false;
    // The turn is registered and its prompt written in one step: a message steered meanwhile
    // (`WarmHandle::steer`, which takes the same lock) goes after the prompt.
    let alive = self.alive();
    let written = {
      let mut turn = lock(&self.shared.turn);
      *turn = Some(Turn { uuids: vec![uuid.clone()], outstanding: vec![uuid.clone()], current: None, steered_bytes: 0, tx });
      alive && send(&self.out, &user_line(prompt, &uuid))
    };
    on_start(self.take_outside());
    if !written {
      self.dead = true;
    } else {
      loop {
        let now = tokio::time::Instant::now();
        let until_deadline = deadline.map(|d| d.saturating_duration_since(now)).unwrap_or(far);
        let stall = o.stall_timeout.unwrap_or(far);
        let settle = interrupted.map(|d| d.saturating_duration_since(now)).unwrap_or(far);
        tokio::select! {
          ev = rx.recv() => match ev {
            Some(Event::Line(line)) => {
              out.observe(&mut tracker, &line.kind);
              on_line(&line);
            }
            Some(Event::Last(line)) => {
              out.observe(&mut tracker, &line.kind);
              on_line(&line);
              break;
            }
            Some(Event::Malformed(m)) => out.malformed.push(m),
            Some(Event::Done) => break,
            Some(Event::Closed) | None => { self.dead = true; break; }
          },
          _ = cancel.cancelled(), if interrupted.is_none() => {
            out.reason = EndReason::Aborted;
            // Messages steered into this task and still queued go too.
            drop(self.control(json!({ "subtype": "interrupt", "cancel_queued": true })));
            interrupted = Some(now + o.interrupt_grace);
          }
          _ = tokio::time::sleep(settle), if interrupted.is_some() => { stop = true; break; }
          _ = tokio::time::sleep(until_deadline), if interrupted.is_none() => { out.reason = EndReason::TimedOut; stop = true; break; }
          _ = tokio::time::sleep(stall), if interrupted.is_none() => { out.reason = EndReason::Stalled; stop = true; break; }
        }
      }
    }
    *lock(&self.shared.turn) = None;
    *lock(&self.shared.permissions) = None;
    // Frames printed from now on wait for the next turn (or the closing mirror).
    self.shared.attach_mirror(None);
    // A permission callback still waiting belongs to this turn: its signal aborts.
    for (_, t) in lock(&self.shared.in_flight).drain() {
      t.cancel();
    }
    out.context = tracker.last();
    if stop {
      self.dead = true;
      let tree = self.pid.map(super::process::descendants).unwrap_or_default();
      stop_group(&mut self.child, self.pid).await;
      gone(tree).await;
    }
    if self.dead {
      // Gone or going: its exit status and stderr say why.
      let _ = self.out.send(None);
      if tokio::time::timeout(super::run::EXIT_WAIT, self.child.wait()).await.is_err() {
        stop_group(&mut self.child, self.pid).await;
      }
      if let Ok(Some(s)) = self.child.try_wait() {
        out.exit_code = s.code();
        #[cfg(unix)]
        {
          use std::os::unix::process::ExitStatusExt;
          out.signal = s.signal();
        }
      }
      if let Some(h) = self.stderr.take() {
        out.stderr_tail = tokio::time::timeout(Duration::from_secs(2), h).await.ok().and_then(|r| r.ok()).unwrap_or_default();
      }
    }
    out.elapsed = started.elapsed();
    out
  }

  /// The lines of turns the CLI ran by itself (a background job's notification) since the last
  /// call, oldest first: no task's, so never part of a task's answer.
  pub fn take_outside(&self) -> Vec<Value> {
    std::mem::take(&mut *lock(&self.shared.outside))
  }

  /// Where the mirror frames the process prints from now on go (with the ones kept since its
  /// last turn): for what a closing CLI writes at stdin EOF.
  pub fn attach_mirror(&self, tx: MirrorTx) {
    self.shared.attach_mirror(Some(tx));
  }

  /// Ends the process: stdin EOF (the CLI finishes what it has and exits), SIGTERM to its group
  /// after `grace`, SIGKILL shortly after. Returns whether it had to be stopped by a signal.
  pub async fn close(mut self, grace: Duration) -> bool {
    // What runs under it (the CLI inside a sandbox, tools), found while it is alive.
    let tree = self.pid.map(super::process::descendants).unwrap_or_default();
    let _ = self.out.send(None);
    let killed = match tokio::time::timeout(grace, self.child.wait()).await {
      Ok(_) => false,
      Err(_) => {
        stop_group(&mut self.child, self.pid).await;
        true
      }
    };
    // What it printed before it exited (the mirror frames of its last writes) is read to the end.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.reader).await;
    self.end_group();
    gone(tree).await;
    killed
  }

  /// Stops the process group at once (SIGTERM, then SIGKILL): for a process that must not write
  /// anything more to the session's transcript.
  pub async fn kill(mut self) {
    let tree = self.pid.map(super::process::descendants).unwrap_or_default();
    stop_group(&mut self.child, self.pid).await;
    self.end_group();
    gone(tree).await;
  }

  /// Whatever the CLI left in its group (tools, shells) goes too.
  fn end_group(&mut self) {
    #[cfg(unix)]
    if let Some(pg) = self.pid {
      super::process::kill_group(pg, libc::SIGKILL);
    }
    self.dead = true;
  }
}

/// Waits (up to a second) for processes that die with the CLI without being in its group (a
/// sandbox's inner processes), then kills what is left of them and waits (up to five seconds
/// more, on a loaded machine) until they no longer run: the CLI's session is free only then.
async fn gone(tree: Vec<u32>) {
  use super::process::{kill_tree, pid_running, until_gone};
  if !until_gone(&tree, Duration::from_secs(1)).await {
    kill_tree(&tree.iter().copied().filter(|p| pid_running(*p)).collect::<Vec<_>>());
    until_gone(&tree, Duration::from_secs(5)).await;
  }
}

impl Drop for WarmProcess {
  fn drop(&mut self) {
    // Never left running: a process still alive here (its pid not yet reaped, so still its own)
    // is killed with its group.
    if let Ok(None) = self.child.try_wait() {
      #[cfg(unix)]
      if let Some(pg) = self.pid {
        super::process::kill_group(pg, libc::SIGKILL);
      }
      let _ = self.child.start_kill();
    }
    self.reader.abort();
    self.writer.abort();
    if let Some(h) = self.stderr.take() {
      h.abort();
    }
  }
}

/// `CONTEXT_OVERFLOW`: a task took [`MAX_STEERED`] messages or [`MAX_STEERED_BYTES`] of them
/// already (also the answer to a message forwarded from another manager).
pub fn too_many_steered() -> Error {
  Error::new(
    ErrorCode::ContextOverflow,
    format!("a task takes at most {MAX_STEERED} messages and {MAX_STEERED_BYTES} bytes of them in all; send the rest as the next task"),
  )
}

/// The user line the Agent SDK writes, with a uuid so that the CLI reports the prompt's
/// lifecycle.
fn user_line(text: &str, uuid: &str) -> Value {
  json!({
    "type": "user",
    "session_id": "",
    "message": { "role": "user", "content": [{ "type": "text", "text": text }] },
    "parent_tool_use_id": null,
    "uuid": uuid,
  })
}

async fn read_loop(stdout: Output, shared: Arc<Shared>, out: Writer) {
  let mut reader = BufReader::new(stdout);
  let mut buf = Vec::with_capacity(8192);
  loop {
    buf.clear();
    match reader.read_until(b'\n', &mut buf).await {
      Ok(0) | Err(_) => break,
      Ok(_) => {}
    }
    let text = String::from_utf8_lossy(&buf);
    if text.trim().is_empty() {
      continue;
    }
    let line = match stream::parse_line(&text) {
      Ok(l) => l,
      Err(why) => {
        let shown: String = text.trim().chars().take(200).collect();
        shared.to_turn(Event::Malformed(format!("{why}: {shown}")));
        continue;
      }
    };
    if super::mirror::is_frame(&line.raw) {
      shared.mirror_frame(line.raw);
      continue;
    }
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    match str_of(&line.raw, "type").as_str() {
      "control_response" => {
        let r = line.raw.get("response").cloned().unwrap_or(Value::Null);
        if let Some(tx) = lock(&shared.pending).remove(&str_of(&r, "request_id")) {
          let answer = if str_of(&r, "subtype") == "success" {
            Ok(r.get("response").cloned().unwrap_or(Value::Null))
          } else {
            Err(str_of(&r, "error"))
          };
          let _ = tx.send(answer);
        }
      }
      "control_request" => answer_request(&shared, &out, &line.raw),
      "control_cancel_request" => {
        if let Some(t) = lock(&shared.in_flight).remove(&str_of(&line.raw, "request_id")) {
          t.cancel();
        }
      }
      "keep_alive" => {}
      "command_lifecycle" => {
        let (id, state) = (str_of(&line.raw, "command_uuid"), str_of(&line.raw, "state"));
        let mut turn = lock(&shared.turn);
        if let Some(t) = turn.as_mut().filter(|t| t.uuids.contains(&id)) {
          match state.as_str() {
            "started" => t.current = Some(id),
            "completed" | "cancelled" => {
              t.outstanding.retain(|u| *u != id);
              if t.outstanding.is_empty() {
                let _ = t.tx.send(Event::Done);
              }
            }
            _ => {}
          }
        }
      }
      _ => shared.to_turn(Event::Line(line)),
    }
  }
  shared.closed.store(true, Ordering::SeqCst);
  if let Some(t) = lock(&shared.turn).as_ref() {
    let _ = t.tx.send(Event::Closed);
  }
  // Requests nobody will answer now: their receivers see the sender dropped.
  lock(&shared.pending).clear();
}

/// Answers one `control_request` of the CLI: `can_use_tool` through the turn's handler (deny when
/// there is none or it takes too long), anything else with an error.
fn answer_request(shared: &Arc<Shared>, out: &Writer, raw: &Value) {
  let id = raw.get("request_id").and_then(Value::as_str).unwrap_or("").to_owned();
  let req = raw.get("request").cloned().unwrap_or(Value::Null);
  let subtype = req.get("subtype").and_then(Value::as_str).unwrap_or("").to_owned();
  let reply = move |out: &Writer, answer: std::result::Result<Value, String>| {
    let response = match answer {
      Ok(v) => json!({ "subtype": "success", "request_id": id, "response": v }),
      Err(e) => json!({ "subtype": "error", "request_id": id, "error": e }),
    };
    send(out, &json!({ "type": "control_response", "response": response }));
  };
  if subtype != "can_use_tool" {
    reply(out, Err(format!("Unsupported control request subtype: {subtype}")));
    return;
  }
  let input = req.get("input").cloned().unwrap_or_else(|| json!({}));
  let Some((handler, limit)) = lock(&shared.permissions).clone() else {
    reply(out, Ok(Decision::deny("no permission handler is attached to this task").to_cli(&input)));
    return;
  };
  let request_id = raw.get("request_id").and_then(Value::as_str).unwrap_or("").to_owned();
  let token = CancelToken::new();
  lock(&shared.in_flight).insert(request_id.clone(), token.clone());
  let request = PermissionRequest {
    request_id: request_id.clone(),
    tool_name: req.get("tool_name").and_then(Value::as_str).unwrap_or("").to_owned(),
    input: input.clone(),
    suggestions: req.get("permission_suggestions").cloned().unwrap_or_else(|| json!([])),
    tool_use_id: req.get("tool_use_id").and_then(Value::as_str).map(str::to_owned),
  };
  let decision = handler(request, token.clone());
  let (shared, out) = (shared.clone(), out.clone());
  tokio::spawn(async move {
    let answer = tokio::select! {
      a = decision => a.map(|d| d.to_cli(&input)),
      _ = tokio::time::sleep(limit) => {
        token.cancel();
        Ok(Decision::deny(format!("nobody decided within {} ms", limit.as_millis())).to_cli(&input))
      }
      // Withdrawn by the CLI (an interrupt) or the turn ended: a late answer would be ignored.
      _ = token.cancelled() => return,
    };
    if lock(&shared.in_flight).remove(&request_id).is_some() {
      reply(&out, answer);
    }
  });
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn warm_argv_has_stream_input_and_no_print_mode_or_budget() {
    let a = CliArgs { max_budget_usd: Some(0.5), model: Some("m".into()), ..Default::default() };
    let v = warm_args(&a, true);
    assert!(v.contains(&"--input-format=stream-json".to_string()));
    assert!(v.contains(&"--output-format=stream-json".to_string()));
    assert!(v.contains(&"--permission-prompt-tool=stdio".to_string()));
    assert!(v.contains(&"--model=m".to_string()));
    assert!(!v.iter().any(|x| x == "-p" || x.starts_with("--max-budget-usd")));
    assert!(!warm_args(&a, false).iter().any(|x| x.starts_with("--permission-prompt-tool")));
  }
}

#[cfg(all(test, unix))]
mod fake_cli_tests {
  //! A stand-in CLI (a shell script) shows what the real one does not on demand: an unknown
  //! control request, a line that is not JSON, a result that is not the task's.
  use super::*;
  use crate::cli::run::tests::{script, spec};

  fn opts() -> TurnOptions {
    TurnOptions {
      timeout: None,
      stall_timeout: Some(Duration::from_secs(20)),
      can_use_tool: None,
      interrupt_grace: Duration::from_secs(3),
      mirror: None,
    }
  }

  /// Prints lifecycle lines for the prompt it read (its uuid cut out with sed), then `$1`.
  const READ_PROMPT: &str = r#"read line; u=$(printf '%s' "$line" | sed 's/.*"uuid":"\([^"]*\)".*/\1/')
started() { echo "{\"type\":\"command_lifecycle\",\"command_uuid\":\"$u\",\"state\":\"started\"}"; }
done_() { echo "{\"type\":\"command_lifecycle\",\"command_uuid\":\"$u\",\"state\":\"completed\"}"; }"#;

  #[tokio::test]
  async fn an_unknown_control_request_gets_an_error_answer_and_the_turn_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let answer = dir.path().join("answer");
    let p = script(
      dir.path(),
      &format!(
        r#"{READ_PROMPT}
started
echo '{{"type":"control_request","request_id":"r1","request":{{"subtype":"banana"}}}}'
read reply; printf '%s' "$reply" > {}
echo '{{"type":"result","subtype":"success","result":"ok"}}'
done_
read rest"#,
        answer.display()
      ),
    );
    let mut w = WarmProcess::start(spec(p, dir.path())).unwrap();
    let out = w.turn("hi", opts(), &CancelToken::new(), |_| {}, |_| {}).await;
    assert_eq!(out.result.unwrap().result.as_deref(), Some("ok"));
    let reply: Value = serde_json::from_str(&std::fs::read_to_string(&answer).unwrap()).unwrap();
    assert_eq!(reply["type"], "control_response");
    assert_eq!(reply["response"]["subtype"], "error");
    assert_eq!(reply["response"]["request_id"], "r1");
    assert!(reply["response"]["error"].as_str().unwrap().contains("Unsupported control request subtype: banana"));
    assert!(w.alive());
    w.close(Duration::from_secs(2)).await;
  }

  #[tokio::test]
  async fn lines_before_the_prompt_starts_are_not_the_task_s_and_garbage_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // A turn nobody sent (a background notification) ends with its own result before the
    // CLI starts the prompt; then a line that is not JSON, then the prompt's own result.
    let p = script(
      dir.path(),
      &format!(
        r#"{READ_PROMPT}
echo '{{"type":"result","subtype":"success","result":"not yours"}}'
started
echo 'this is not json'
echo '{{"type":"result","subtype":"success","result":"yours"}}'
done_
read rest"#
      ),
    );
    let mut w = WarmProcess::start(spec(p, dir.path())).unwrap();
    let mut seen = vec![];
    let out = w.turn("hi", opts(), &CancelToken::new(), |_| {}, |l| seen.push(l.raw.clone())).await;
    assert_eq!(out.result.unwrap().result.as_deref(), Some("yours"));
    assert_eq!(seen.len(), 1, "only the task's lines were forwarded: {seen:?}");
    assert_eq!(out.malformed.len(), 1, "{:?}", out.malformed);
    w.close(Duration::from_secs(2)).await;
  }

  /// A message steered the moment the turn says it started (a client's `sendMessage` on
  /// `task_started`) is taken, and reaches the CLI after the prompt. A fake CLI: the order of the
  /// lines on its stdin is what is checked.
  #[tokio::test]
  async fn a_message_steered_when_the_turn_starts_is_taken_and_comes_after_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let got = dir.path().join("stdin");
    let p = script(
      dir.path(),
      &format!(
        r#"{READ_PROMPT}
started
read steered; printf '%s\n%s\n' "$line" "$steered" > {}
s=$(printf '%s' "$steered" | sed 's/.*"uuid":"\([^"]*\)".*/\1/')
echo '{{"type":"result","subtype":"success","result":"first"}}'
done_
echo "{{\"type\":\"command_lifecycle\",\"command_uuid\":\"$s\",\"state\":\"started\"}}"
echo '{{"type":"result","subtype":"success","result":"steered"}}'
echo "{{\"type\":\"command_lifecycle\",\"command_uuid\":\"$s\",\"state\":\"completed\"}}"
read rest"#,
        got.display()
      ),
    );
    let mut w = WarmProcess::start(spec(p, dir.path())).unwrap();
    let h = w.handle();
    let taken = std::sync::atomic::AtomicBool::new(false);
    let out =
      w.turn("the prompt", opts(), &CancelToken::new(), |_| taken.store(h.steer("steered now").unwrap(), Ordering::SeqCst), |_| {}).await;
    assert!(taken.load(Ordering::SeqCst), "refused when the turn said it started");
    assert_eq!(out.result.unwrap().result.as_deref(), Some("steered"), "the task ends at the steered message's result");
    let lines = std::fs::read_to_string(&got).unwrap();
    let lines: Vec<&str> = lines.lines().collect();
    assert!(lines[0].contains("the prompt") && lines[1].contains("steered now"), "{lines:?}");
    w.close(Duration::from_secs(2)).await;
  }

  #[tokio::test]
  async fn a_cli_that_dies_mid_turn_ends_it_without_a_result_and_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let p = script(dir.path(), &format!("{READ_PROMPT}\nstarted\necho 'dying' >&2\nexit 3"));
    let mut w = WarmProcess::start(spec(p, dir.path())).unwrap();
    let out = w.turn("hi", opts(), &CancelToken::new(), |_| {}, |_| {}).await;
    assert!(out.result.is_none());
    assert_eq!(out.reason, EndReason::Exited);
    assert_eq!(out.exit_code, Some(3));
    assert!(out.stderr_tail.contains("dying"));
    assert!(!w.alive());
  }
}
