//! A task is not a connection: every event of a task goes to the store's event log
//! ([`crate::store::Events`]), numbered per session, and any number of followers in any process
//! or node replay it and follow it live ([`Manager::stream_events`]); a task is stopped from
//! anywhere ([`Manager::abort_task`]).
//!
//! - **Recording** ([`Recorder`]): what `onEvent` sees, the permission requests and their
//!   settling, steering messages and the task's end (`task_end`, with the result), in the order
//!   produced, written by one writer per task. Text deltas that arrive within [`COALESCE`] of the
//!   last write are joined into one event (same block, text appended): no row per token in a
//!   burst, no wait for a delta after a pause, nothing a client renders is lost.
//! - **Following** ([`Follower`]): reads the log after a number in pages of [`PAGE`], then waits
//!   for the store's doorbell (`store/doorbell.rs`: at once in this process, PostgreSQL `NOTIFY`
//!   from other nodes, SQLite's `notices` read every few milliseconds from other processes; after
//!   the doorbell was down, one catch-up read) and reads again. With `redisUrl` the events
//!   themselves come through Redis (`fanout.rs`), and the log is read only for what Redis did not
//!   bring. A follower keeps at most a page in memory, however slowly it is read: the log is its
//!   buffer, so a follower that never reads costs nothing and never slows the task.
//! - **Stopping**: `abortTask` marks the running task's row and rings the doorbell; the manager
//!   running it stops the CLI at once when it is this one, else when it hears the ring. The task
//!   ends `aborted`.
//! - **Retention**: a task's events go `eventRetentionMs` after it ended (swept in the
//!   background); a follower asking for numbers swept gets one `events_truncated` event first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::fanout::{Batch, Fanout, Following, GRACE};
use super::{Manager, Wait};
use crate::cli::CancelToken;
use crate::error::{Error, Result};
use crate::store::doorbell::wait_ring;
use crate::store::{EventRow, Notice, RunningTask, Store};

/// Text deltas that come within this of the last write are held until it is over and written
/// as one event (see [`write_loop`]).
const COALESCE: Duration = Duration::from_millis(8);
/// How many events a follower reads at once (and keeps at most).
const PAGE: u32 = 256;
/// How often a follower reads the log while a task it follows has ended without its `task_end`.
const POLL: Duration = Duration::from_millis(50);
/// The store is still read this often, in case a ring went missing.
pub(crate) const SAFETY_POLL: Duration = Duration::from_secs(2);
/// How long a follower waits for a task's `task_end` event after its row has ended (the writer
/// appends it right after the row is written); a task whose process died has none.
const END_GRACE: Duration = Duration::from_secs(2);

/// One event of a session's log, as `streamEvents` yields it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedEvent {
  /// Its number in the session's log (`events_truncated`: the number before the first one kept).
  pub seq: i64,
  /// The task it belongs to (`None` for `events_truncated`).
  pub task_id: Option<String>,
  /// When it was written (ms since the epoch).
  pub at: i64,
  pub event: Value,
}

/// What `streamEvents` asks for.
#[derive(Debug, Clone, Default)]
pub struct StreamRequest {
  pub session_id: String,
  pub user_id: String,
  /// The last number the caller has (default 0: from the start of what is kept).
  pub after: Option<f64>,
  /// `None`: until the running task ends (at once when none runs); `Some(false)`: what is logged
  /// only; `Some(true)`: every task of the session, until the signal aborts.
  pub follow: Option<bool>,
  /// Only from this task's first event (kept or to come), instead of `after`.
  pub task_id: Option<String>,
  /// The events as they were logged, server details included (see [`public_event`]); else as a
  /// browser may see them.
  pub expose_server_details: bool,
}

/// The CLI's `system`/`init` event keeps only these fields in a public event.
const INIT_EVENT_FIELDS: [&str; 6] = ["type", "subtype", "session_id", "model", "permissionMode", "uuid"];

/// Top-level event fields that describe the server (its paths, sockets, installed tools and
/// versions), left out of a public event.
const SERVER_DETAIL_FIELDS: [&str; 14] = [
  "cwd",
  "memory_paths",
  "messaging_socket_path",
  "transcript_path",
  // A background job's output file: under the CLI's temp folder, named after the server's cwd.
  "output_file",
  "plugins",
  "tools",
  "mcp_servers",
  "slash_commands",
  "skills",
  "agents",
  "claude_code_version",
  "apiKeySource",
  "output_style",
];

/// The server's folders a public event does not name, and the ones it may although they lie
/// inside those (the session's working directory may be under the state folder).
#[derive(Debug, Clone, Default)]
pub struct HiddenFolders {
  /// Each with its placeholder, a folder inside another first.
  pub hidden: Vec<(String, &'static str)>,
  /// Left as they are, the longest first.
  pub kept: Vec<String>,
}

/// `event` with every occurrence of each hidden folder in its strings (at any depth, keys
/// untouched) replaced by its placeholder, except where it begins a kept folder: what the CLI
/// writes into its messages on its own (a large tool output saved under the tenant's folder, the
/// transcript a compaction summary points at) names no server folder, and the working directory
/// stays readable.
pub fn hide_folders(event: Value, folders: &HiddenFolders) -> Value {
  match event {
    Value::String(text) if folders.hidden.iter().any(|(f, _)| text.contains(f.as_str())) => {
      let mark = |i: usize| format!("\u{1}{i}\u{1}");
      let kept = folders.kept.iter().enumerate().fold(text, |t, (i, k)| t.replace(k.as_str(), &mark(i)));
      let hidden = folders.hidden.iter().fold(kept, |t, (f, placeholder)| t.replace(f.as_str(), placeholder));
      Value::String(folders.kept.iter().enumerate().rev().fold(hidden, |t, (i, k)| t.replace(&mark(i), k)))
    }
    Value::Array(items) => Value::Array(items.into_iter().map(|v| hide_folders(v, folders)).collect()),
    Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, hide_folders(v, folders))).collect()),
    other => other,
  }
}

/// An event as a browser may see it (what `streamEvents` yields unless `exposeServerDetails`, and
/// what the Next.js routes send): the CLI's `system`/`init` event reduced to its type, session,
/// model and permission mode; the fields naming server paths, sockets, tools and versions dropped
/// from every other event, and from the lines a `background_activity` event carries. The same
/// rules as `next/public.js`.
pub fn public_event(event: Value) -> Value {
  let Value::Object(mut map) = event else { return event };
  let kind = map.get("type").and_then(Value::as_str);
  if kind == Some("background_activity") {
    if let Some(Value::Array(lines)) = map.remove("events") {
      map.insert("events".into(), Value::Array(lines.into_iter().map(public_event).collect()));
    }
    return Value::Object(map);
  }
  if kind == Some("system") && map.get("subtype").and_then(Value::as_str) == Some("init") {
    map.retain(|k, _| INIT_EVENT_FIELDS.contains(&k.as_str()));
    return Value::Object(map);
  }
  map.retain(|k, _| !SERVER_DETAIL_FIELDS.contains(&k.as_str()));
  Value::Object(map)
}

/// What `getRunningTask` says.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningTaskInfo {
  pub task: RunningTask,
  /// The session's last event number.
  pub last_seq: i64,
}

/// The manager's side of the log: the writer of each task running here (by session: one task
/// per session), and Redis when `redisUrl` is set.
#[derive(Default)]
pub(crate) struct Logs {
  writers: Mutex<HashMap<String, Recorder>>,
  sweeping: std::sync::atomic::AtomicBool,
  pub(crate) fanout: Option<Arc<Fanout>>,
}

impl Logs {
  /// The logs of a manager publishing on Redis through `fanout`, if any.
  pub(crate) fn new(fanout: Option<Arc<Fanout>>) -> Logs {
    Logs { fanout, ..Default::default() }
  }

  /// `recorder` becomes the session's writer, until the returned value drops.
  fn register(self: &Arc<Self>, session_id: &str, recorder: Recorder) -> Recording {
    self.writers.lock().unwrap_or_else(|p| p.into_inner()).insert(session_id.to_owned(), recorder.clone());
    Recording { logs: self.clone(), session_id: session_id.to_owned(), recorder }
  }

  /// The writer of the task running here on the session, if any.
  pub(crate) fn writer(&self, session_id: &str) -> Option<Recorder> {
    self.writers.lock().unwrap_or_else(|p| p.into_inner()).get(session_id).cloned()
  }
}

enum Msg {
  Event(Value),
  Flush(oneshot::Sender<()>),
  /// Hand over what is queued instead of writing it: the task's end stores it with the end, in
  /// one transaction. The writer holds every later event until [`Msg::Resume`].
  Take(oneshot::Sender<Vec<String>>),
  /// After a take: `Some((seq, end))`, the rows taken, then `end` if any, are in the log up to
  /// `seq` (rung here and published on Redis now); `None`, they are not (written now, before
  /// anything later).
  Resume(Option<(i64, Option<String>)>),
}

/// A task's writer to the log: events are queued (never waiting) and written in order by one
/// background task.
#[derive(Clone)]
pub(crate) struct Recorder {
  tx: mpsc::UnboundedSender<Msg>,
}

impl Recorder {
  /// Queues an event.
  pub(crate) fn record(&self, event: Value) {
    let _ = self.tx.send(Msg::Event(event));
  }

  /// Waits until every event queued so far is in the store.
  pub(crate) async fn flush(&self) {
    let (tx, rx) = oneshot::channel();
    if self.tx.send(Msg::Flush(tx)).is_ok() {
      let _ = rx.await;
    }
  }

  /// Every event queued so far and not yet written, as the log's rows, for the caller to store
  /// (the task's end): the writer writes nothing more until the returned [`Taken`] says whether
  /// they were stored (dropped without a word: they were not).
  pub(crate) async fn take(&self) -> Taken {
    let (tx, rx) = oneshot::channel();
    let rows = match self.tx.send(Msg::Take(tx)) {
      Ok(()) => rx.await.unwrap_or_default(),
      Err(_) => vec![],
    };
    Taken { rows, tx: self.tx.clone(), answered: false }
  }
}

/// Events handed over by [`Recorder::take`].
pub(crate) struct Taken {
  pub(crate) rows: Vec<String>,
  tx: mpsc::UnboundedSender<Msg>,
  answered: bool,
}

impl Taken {
  /// The rows are in the log, followed by `end` if any, the last at `seq`.
  pub(crate) fn stored(mut self, seq: i64, end: Option<String>) {
    self.answered = true;
    let _ = self.tx.send(Msg::Resume(Some((seq, end))));
  }
}

impl Taken {
  /// The rows were not stored: the writer writes them now, and this waits until it has.
  pub(crate) async fn write(mut self) {
    self.answered = true;
    let (tx, rx) = oneshot::channel();
    if self.tx.send(Msg::Resume(None)).is_ok() && self.tx.send(Msg::Flush(tx)).is_ok() {
      let _ = rx.await;
    }
  }
}

impl Drop for Taken {
  fn drop(&mut self) {
    if !self.answered {
      let _ = self.tx.send(Msg::Resume(None));
    }
  }
}

/// The `task_end` event of a run: its result, or the error the run ended with.
pub(crate) fn task_end_event(session_id: &str, task_id: &str, res: std::result::Result<&super::TaskResult, &Error>) -> Value {
  match res {
    Ok(r) => json!({ "type": "task_end", "sessionId": session_id, "taskId": task_id, "result": r }),
    Err(e) => {
      json!({ "type": "task_end", "sessionId": session_id, "taskId": task_id, "error": { "code": e.code.as_str(), "message": e.message } })
    }
  }
}

/// Removes a task's writer from the manager's map when the run is over.
pub(crate) struct Recording {
  logs: Arc<Logs>,
  session_id: String,
  pub(crate) recorder: Recorder,
}

impl Drop for Recording {
  fn drop(&mut self) {
    let mut writers = self.logs.writers.lock().unwrap_or_else(|p| p.into_inner());
    // Only this run's: the session's next run may have put its own writer in since (it can start
    // while this one records its end, once the CLI has exited).
    if writers.get(&self.session_id).is_some_and(|w| w.tx.same_channel(&self.recorder.tx)) {
      writers.remove(&self.session_id);
    }
  }
}

/// The delta of a `content_block_delta` stream event that can be joined with the next: its
/// block, its kind and the field holding the text.
fn joinable(v: &Value) -> Option<(u64, &str, &'static str)> {
  if v.get("type")?.as_str()? != "stream_event" {
    return None;
  }
  let e = v.get("event")?;
  if e.get("type")?.as_str()? != "content_block_delta" {
    return None;
  }
  let delta = e.get("delta")?;
  let kind = delta.get("type")?.as_str()?;
  let field = match kind {
    "text_delta" => "text",
    "thinking_delta" => "thinking",
    "input_json_delta" => "partial_json",
    _ => return None,
  };
  delta.get(field)?.as_str()?;
  Some((e.get("index")?.as_u64()?, kind, field))
}

/// Appends `next` to `last` when both are deltas of the same block and kind (and the same
/// message); false when they cannot be joined.
fn join(last: &mut Value, next: &Value) -> bool {
  let (Some(a), Some(b)) = (joinable(last), joinable(next)) else { return false };
  if (a.0, a.1) != (b.0, b.1) || last.get("parent_tool_use_id") != next.get("parent_tool_use_id") {
    return false;
  }
  let field = a.2;
  let more = next["event"]["delta"][field].as_str().unwrap_or("").to_owned();
  if let Some(Value::String(text)) = last.pointer_mut(&format!("/event/delta/{field}")) {
    text.push_str(&more);
    return true;
  }
  false
}

/// Joins consecutive deltas of a batch (see [`join`]).
fn coalesce(events: Vec<Value>) -> Vec<Value> {
  let mut out: Vec<Value> = Vec::with_capacity(events.len());
  for e in events {
    if let Some(last) = out.last_mut() {
      if join(last, &e) {
        continue;
      }
    }
    out.push(e);
  }
  out
}

/// The writer's loop: takes what is queued, joins deltas, appends the batch (the store rings its
/// doorbell elsewhere), rings this process's doorbell and publishes the batch on Redis.
///
/// At most one batch of text deltas alone is written per [`COALESCE`]: a delta that comes later
/// than that after the last write is written at once (a model's tokens, tens of milliseconds
/// apart, each reach followers without waiting), and deltas that come faster are held until the
/// window is over and joined (no row per token in a burst). A batch holding any other event
/// (a block's start, the message) is written at once, and a flush asked for ends the wait.
async fn write_loop(
  store: Arc<Store>,
  fanout: Option<Arc<Fanout>>,
  session_id: String,
  task_id: String,
  mut rx: mpsc::UnboundedReceiver<Msg>,
) {
  let log = TaskLog { store, fanout, session_id, task_id };
  let mut last_write: Option<Instant> = None;
  // What came while a take held the writer: written first, in order.
  let (mut held, mut held_flushes) = (vec![], vec![]);
  loop {
    let mut d = Drained { batch: std::mem::take(&mut held), flushes: std::mem::take(&mut held_flushes), taker: None };
    if d.batch.is_empty() && d.flushes.is_empty() {
      match rx.recv().await {
        Some(m) => d.add(m),
        None => return,
      }
    }
    while let Ok(m) = rx.try_recv() {
      d.add(m);
    }
    let due = last_write.map(|t| t + COALESCE).filter(|due| *due > Instant::now());
    if let (Some(due), true) = (due, !d.batch.is_empty() && d.batch.iter().all(|v| joinable(v).is_some())) {
      let window = tokio::time::sleep_until(due);
      tokio::pin!(window);
      while d.flushes.is_empty() && d.taker.is_none() {
        tokio::select! {
          _ = &mut window => break,
          m = rx.recv() => match m {
            Some(m) => d.add(m),
            None => break,
          },
        }
      }
    }
    let Drained { batch, flushes, taker } = d;
    let rows: Vec<String> = coalesce(batch).iter().map(Value::to_string).collect();
    match taker {
      Some(taker) => {
        let _ = taker.send(rows.clone());
        // Held until the taker answers; what comes meanwhile is written after.
        let stored = loop {
          match rx.recv().await {
            Some(Msg::Resume(r)) => break r,
            Some(Msg::Event(v)) => held.push(v),
            Some(Msg::Flush(f)) => held_flushes.push(f),
            Some(Msg::Take(t)) => drop(t),
            None => break None,
          }
        };
        match stored {
          Some((seq, end)) => log.published(seq, rows.into_iter().chain(end).collect()),
          None => log.write(rows).await,
        }
      }
      None => log.write(rows).await,
    }
    last_write = Some(Instant::now());
    for f in flushes {
      let _ = f.send(());
    }
  }
}

/// What the writer took from its queue for one write.
struct Drained {
  batch: Vec<Value>,
  flushes: Vec<oneshot::Sender<()>>,
  taker: Option<oneshot::Sender<Vec<String>>>,
}

impl Drained {
  fn add(&mut self, m: Msg) {
    match m {
      Msg::Event(v) => self.batch.push(v),
      Msg::Flush(tx) => self.flushes.push(tx),
      Msg::Take(tx) => self.taker = Some(tx),
      // An answer to a take comes only while the writer waits for it (below).
      Msg::Resume(_) => {}
    }
  }
}

/// Where a task's writer writes: the session's log, this process's doorbell, Redis.
struct TaskLog {
  store: Arc<Store>,
  fanout: Option<Arc<Fanout>>,
  session_id: String,
  task_id: String,
}

impl TaskLog {
  /// Appends `rows`, then says so (see [`Self::published`]).
  async fn write(&self, rows: Vec<String>) {
    if rows.is_empty() {
      return;
    }
    // One retry: a write that fails twice is lost to followers (the task goes on). A few rows:
    // on SQLite written right here when nothing else writes (no hop to the blocking pool).
    for _ in 0..2 {
      let (sid, tid, batch) = (self.session_id.clone(), self.task_id.clone(), rows.clone());
      if let Ok(seq) = self.store.call(Wait::Briefly, async move |s| s.append_events(&sid, &tid, &batch).await).await {
        self.published(seq, rows);
        return;
      }
    }
  }

  /// `rows` are in the log, the last at `seq`: rings this process's doorbell (the store rang it
  /// for others) and publishes them on Redis.
  fn published(&self, seq: i64, rows: Vec<String>) {
    if rows.is_empty() {
      return;
    }
    self.store.ring_here(Notice::Events { session_id: self.session_id.clone(), seq });
    if let Some(f) = &self.fanout {
      // Redis's copies say when they were written by this clock (the log's, by the store's).
      let at = crate::store::now_ms();
      let first = seq - rows.len() as i64 + 1;
      let rows = rows.into_iter().enumerate().map(|(i, body)| EventRow { seq: first + i as i64, task_id: self.task_id.clone(), at, body });
      f.publish(&Batch { session_id: self.session_id.clone(), rows: rows.collect() });
    }
  }
}

/// How long a follower goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
  /// What is logged now.
  Logged,
  /// The running task's end.
  TaskEnd,
  /// The signal.
  Aborted,
}

/// A follower of a session's log (see the module's comment).
pub struct Follower {
  store: Arc<Store>,
  session_id: String,
  after: i64,
  until: Until,
  cancel: CancelToken,
  buf: VecDeque<EventRow>,
  truncated: Option<i64>,
  /// The store's doorbell (`None`: reading what is logged only).
  bell: Option<broadcast::Receiver<Notice>>,
  /// The session's channel on Redis, with `redisUrl`.
  redis: Option<Following>,
  /// The last wait brought the events from Redis: no need to read the log before the next.
  fresh: bool,
  /// A task was seen running while following, and its `task_end` not yet read.
  saw_running: bool,
  /// The last event read was a task's end.
  at_end: bool,
  /// Since when no task runs and no `task_end` came.
  ended_at: Option<tokio::time::Instant>,
  /// The one task followed (`taskId`): the stream ends with its `task_end`.
  only_task: Option<String>,
  /// Events as a browser may see them ([`public_event`]), the server's folders in their text
  /// replaced ([`hide_folders`]); `None`: as logged.
  public: Option<HiddenFolders>,
  done: bool,
}

impl Follower {
  /// The next event, or `None` once the stream is over.
  pub async fn next(&mut self) -> Result<Option<StreamedEvent>> {
    loop {
      if let Some(first) = self.truncated.take() {
        return Ok(Some(StreamedEvent {
          seq: first - 1,
          task_id: None,
          at: crate::store::now_ms(),
          event: json!({ "type": "events_truncated", "sessionId": self.session_id, "firstSeq": first }),
        }));
      }
      if let Some(row) = self.buf.pop_front() {
        self.after = row.seq;
        let mut event: Value = serde_json::from_str(&row.body).unwrap_or(Value::Null);
        if let Some(folders) = &self.public {
          event = hide_folders(public_event(event), folders);
        }
        self.at_end = event.get("type").and_then(Value::as_str) == Some("task_end");
        if self.at_end {
          self.saw_running = false;
          self.ended_at = None;
          self.done |= self.only_task.as_deref() == Some(row.task_id.as_str());
        }
        return Ok(Some(StreamedEvent { seq: row.seq, task_id: Some(row.task_id), at: row.at, event }));
      }
      if self.done || self.cancel.is_cancelled() {
        self.done = true;
        return Ok(None);
      }
      if std::mem::take(&mut self.fresh) && !self.at_end {
        self.wait().await;
        continue;
      }
      let (sid, after) = (self.session_id.clone(), self.after);
      let rows = self.store.call(Wait::Briefly, async move |s| s.read_events(&sid, after, PAGE).await).await?;
      if !rows.is_empty() {
        self.buf.extend(rows);
        continue;
      }
      match self.until {
        Until::Logged => {
          self.done = true;
          continue;
        }
        Until::TaskEnd => {
          let sid = self.session_id.clone();
          let running = self.store.call(Wait::Briefly, async move |s| s.running_task(&sid).await).await?;
          if running.is_some() {
            self.saw_running = true;
            self.ended_at = None;
          } else if !self.saw_running || self.at_end {
            self.done = true;
            continue;
          } else {
            let since = *self.ended_at.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= END_GRACE {
              self.done = true;
              continue;
            }
          }
        }
        Until::Aborted => {}
      }
      self.wait().await;
    }
  }

  /// Until a doorbell for this session rings (or a poll's time has passed, or the signal), or
  /// Redis brings the events right after the last one read (then [`Self::fresh`]).
  async fn wait(&mut self) {
    let poll = if self.ended_at.is_some() { POLL } else { SAFETY_POLL };
    let deadline = tokio::time::sleep(poll);
    tokio::pin!(deadline);
    // The doorbell rang for events Redis has not brought yet: read the log once this passes.
    let mut grace: Option<tokio::time::Instant> = None;
    let (sid, after) = (self.session_id.clone(), self.after);
    let redis_up = |r: &Option<Following>| r.as_ref().is_some_and(|f| *f.up.borrow());
    loop {
      let (bell, redis) = (&mut self.bell, &mut self.redis);
      let (heard, up) = match redis.as_mut() {
        Some(f) => (Some(&mut f.rx), Some(&mut f.up)),
        None => (None, None),
      };
      let woke = tokio::select! {
        r = async { match bell.as_mut() { Some(b) => b.recv().await, None => std::future::pending().await } } => Woke::Bell(r),
        r = async { match heard { Some(h) => h.recv().await, None => std::future::pending().await } } => Woke::Redis(r),
        ok = async { match up { Some(u) => u.changed().await.is_ok(), None => std::future::pending().await } } => Woke::Up(ok),
        _ = async { match grace { Some(g) => tokio::time::sleep_until(g).await, None => std::future::pending().await } } => return,
        _ = &mut deadline => return,
        _ = self.cancel.cancelled() => return,
      };
      match woke {
        Woke::Bell(r) => match r {
          Ok(Notice::Events { session_id, seq }) if session_id == sid && seq > after => {
            if !redis_up(&self.redis) {
              return;
            }
            grace.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
          }
          Ok(Notice::Listening) | Err(broadcast::error::RecvError::Lagged(_)) => return,
          Ok(_) => {}
          Err(broadcast::error::RecvError::Closed) => self.bell = None,
        },
        Woke::Redis(Ok(batch)) => {
          let rows: Vec<EventRow> = batch.rows.iter().filter(|r| r.seq > after).cloned().collect();
          match rows.first() {
            // The events right after the last one read: no need to read the log for them.
            Some(first) if first.seq == after + 1 && rows.windows(2).all(|w| w[1].seq == w[0].seq + 1) => {
              self.buf.extend(rows);
              self.fresh = true;
              return;
            }
            // A gap (Redis dropped a message, or this follower lagged): the log has them.
            Some(_) => return,
            None => {}
          }
        }
        Woke::Redis(Err(_)) => return,
        Woke::Up(ok) => {
          if !ok {
            self.redis = None;
          }
          // Up again: what it missed is in the log; down: so is what the follower waited for.
          return;
        }
      }
    }
  }
}

/// What woke a waiting follower.
enum Woke {
  Bell(std::result::Result<Notice, broadcast::error::RecvError>),
  Redis(std::result::Result<Arc<Batch>, broadcast::error::RecvError>),
  Up(bool),
}

impl Manager {
  /// Starts recording a task's events: its writer, known to the manager (for the permission
  /// and steering records) until the returned value drops.
  pub(crate) fn start_recording(&self, session_id: &str, task_id: &str) -> Recording {
    let (tx, rx) = mpsc::unbounded_channel();
    let recorder = Recorder { tx };
    tokio::spawn(write_loop(self.store.clone(), self.logs.fanout.clone(), session_id.to_owned(), task_id.to_owned(), rx));
    let recording = self.logs.register(session_id, recorder);
    self.start_sweeping();
    recording
  }

  /// The background sweep of events past `eventRetentionMs` (once per manager, with its first
  /// task; it stops with the store).
  fn start_sweeping(&self) {
    if self.logs.sweeping.swap(true, std::sync::atomic::Ordering::SeqCst) {
      return;
    }
    let store: Weak<Store> = Arc::downgrade(&self.store);
    let retention = self.cfg.event_retention;
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(600));
    tokio::spawn(async move {
      loop {
        let Some(s) = store.upgrade() else { return };
        let _ = s.call(Wait::Blocking, async move |s| s.sweep_events(retention).await).await;
        tokio::time::sleep(every).await;
      }
    });
  }

  /// Watches for a stop request of a task running here, made through another manager: it
  /// cancels the task when one is read (PostgreSQL: heard of) until the returned guard drops.
  pub(crate) fn watch_abort(&self, task_id: &str, cancel: CancelToken) -> super::run::AbortOnDrop {
    let (store, task) = (self.store.clone(), task_id.to_owned());
    let mut bell = self.store.subscribe();
    super::run::AbortOnDrop(tokio::spawn(async move {
      loop {
        // A stop request for this task, or a reason to read the store (the doorbell was down,
        // or this watch lagged behind its notices), or the periodic read.
        wait_ring(&mut bell, SAFETY_POLL, None, |n| matches!(n, Notice::Abort { task_id, .. } if *task_id == task)).await;
        let t = task.clone();
        if store.call(Wait::Briefly, async move |s| s.abort_requested(&t).await).await.unwrap_or(false) {
          cancel.cancel();
          return;
        }
      }
    }))
  }

  /// What a public event of a session working in `session_dir` does not name: the tenants'
  /// configuration folders and the manager's state folder (as configured and as the kernel
  /// resolves them: the CLI may print either), but the working directories under them; and the
  /// key proxy's address.
  fn server_folders(&self, session_dir: &str) -> HiddenFolders {
    let forms = |dir: &std::path::Path| {
      [Some(dir.to_path_buf()), std::fs::canonicalize(dir).ok()]
        .into_iter()
        .flatten()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| d.len() > 1)
        .collect::<Vec<_>>()
    };
    let mut folders = HiddenFolders::default();
    for (dir, placeholder) in [(&self.cfg.tenant_config_root, "<tenant config>"), (&self.cfg.state_directory, "<state>")] {
      for d in forms(dir) {
        if !folders.hidden.iter().any(|(f, _)| *f == d) {
          folders.hidden.push((d, placeholder));
        }
      }
    }
    let mut work = vec![std::path::PathBuf::from(session_dir), self.cfg.workspace_root.clone()];
    work.extend(self.cfg.working_directory.clone());
    for dir in work {
      for d in forms(&dir) {
        if !folders.kept.contains(&d) {
          folders.kept.push(d);
        }
      }
    }
    folders.kept.sort_by_key(|d| std::cmp::Reverse(d.len()));
    // The key proxy's address, which the CLI names in its API errors ("check your inference
    // gateway (127.0.0.1:<port>)"): this manager's (another node's stays as it is).
    if let Some(Some(proxy)) = self.key_proxy.get() {
      folders.hidden.push((proxy.addr().to_string(), "<key proxy>"));
    }
    folders.hidden.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
    folders
  }

  /// A follower of the user's session's event log (see the module's comment). Another user's
  /// session is `SESSION_NOT_FOUND`, as a missing one; an `after` that is not a whole number from
  /// 0 to the session's last event number is `INVALID_ARGUMENT`.
  pub async fn stream_events(&self, r: StreamRequest, cancel: CancelToken) -> Result<Follower> {
    self.check_open()?;
    let session = self.get_session(&r.session_id, &r.user_id).await?;
    let session_dir = session.working_directory.clone();
    let after = match r.after {
      None => 0,
      Some(a) if a.is_finite() && a >= 0.0 && a.fract() == 0.0 && a <= 9.0e15 => a as i64,
      Some(a) => return Err(Error::invalid(format!("after must be a whole number of 0 or more (an event's seq), got {a}"))),
    };
    let (sid, task) = (session.id.clone(), r.task_id.clone());
    let only_task = r.task_id.clone().filter(|_| r.follow.is_none());
    // The bounds first, then the task's first event: a first batch of the task written in between
    // is then found (read the other way round, it could land after the lookup and before the
    // bounds, and the stream would start past it).
    let (bounds, task_first) = self
      .store_call(Wait::Briefly, async move |s| {
        let bounds = s.event_bounds(&sid).await?;
        let first = match task.as_deref() {
          Some(t) => s.task_first_seq(&sid, t).await?,
          None => None,
        };
        Ok((bounds, first))
      })
      .await?;
    if r.task_id.is_some() && r.after.is_some() {
      return Err(Error::invalid("give after or taskId, not both"));
    }
    // A task's stream starts at its first event; one not logged yet starts with what comes next.
    let after = match (&r.task_id, task_first) {
      (Some(_), Some(first)) => first - 1,
      (Some(_), None) => bounds.last,
      (None, _) => after,
    };
    if r.task_id.is_none() && after > bounds.last {
      return Err(Error::invalid(format!(
        "after {after} is beyond the last event of session {} ({}): it is not an event id of this session",
        session.id, bounds.last
      )));
    }
    let until = match r.follow {
      None => Until::TaskEnd,
      Some(false) => Until::Logged,
      Some(true) => Until::Aborted,
    };
    let redis = if until == Until::Logged { None } else { self.logs.fanout.as_ref().map(|f| f.follow(&session.id)) };
    Ok(Follower {
      store: self.store.clone(),
      session_id: session.id,
      after: after.max(bounds.first - 1),
      until,
      cancel,
      buf: VecDeque::new(),
      truncated: (after < bounds.first - 1).then_some(bounds.first),
      bell: (until != Until::Logged).then(|| self.store.subscribe()),
      redis,
      fresh: false,
      // A task's stream waits for that task's end, even when its row ended a moment before
      // its `task_end` event is written.
      saw_running: r.task_id.is_some(),
      at_end: false,
      ended_at: None,
      only_task,
      public: (!r.expose_server_details).then(|| self.server_folders(&session_dir)),
      done: false,
    })
  }

  /// The task running on the user's session (in any process or node), with the session's last
  /// event number; `None` when none runs.
  pub async fn get_running_task(&self, session_id: &str, user_id: &str) -> Result<Option<RunningTaskInfo>> {
    self.check_open()?;
    let session = self.get_session(session_id, user_id).await?;
    let sid = session.id;
    self
      .store_call(Wait::Briefly, async move |s| {
        let Some(task) = s.running_task(&sid).await? else { return Ok(None) };
        Ok(Some(RunningTaskInfo { task, last_seq: s.event_bounds(&sid).await?.last }))
      })
      .await
  }

  /// Stops the task running on the user's session, wherever it runs: recorded in the store,
  /// then stopped at once when it runs in this manager, else by the manager running it when it
  /// hears of it or reads it. Whether a task was running.
  pub async fn abort_task(&self, session_id: &str, user_id: &str) -> Result<bool> {
    self.check_open()?;
    let session = self.get_session(session_id, user_id).await?;
    let sid = session.id.clone();
    let Some(task) = self.store_call(Wait::Briefly, async move |s| s.request_abort(&sid).await).await? else { return Ok(false) };
    // The store rang for other processes and nodes; the other managers of this process now.
    self.store.ring_here(Notice::Abort { session_id: session.id.clone(), task_id: task.task_id.clone() });
    if task.owner_id == self.owner.id {
      if let Some(c) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(&task.task_id) {
        c.cancel();
      }
    }
    Ok(true)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// Each folder is replaced wherever it is in a string, at any depth; the inner one first, so
  /// that a path under both names the inner one; a kept folder inside one stays; keys and other
  /// values stay.
  #[test]
  fn hidden_folders_are_replaced_in_every_string() {
    let folders = HiddenFolders {
      hidden: vec![("/srv/state/config".to_owned(), "<tenant config>"), ("/srv/state".to_owned(), "<state>")],
      kept: vec!["/srv/state/sessions".to_owned()],
    };
    let event = json!({ "type": "user", "/srv/state": 1, "message": { "content": [{ "content": "saved to: /srv/state/config/u/x.txt and /srv/state/db" }] },
      "tool_use_result": { "persistedOutputPath": "/srv/state/config/u/x.txt", "n": 2, "file": "/srv/state/sessions/a.txt" } });
    assert_eq!(
      hide_folders(event, &folders),
      json!({ "type": "user", "/srv/state": 1, "message": { "content": [{ "content": "saved to: <tenant config>/u/x.txt and <state>/db" }] },
        "tool_use_result": { "persistedOutputPath": "<tenant config>/u/x.txt", "n": 2, "file": "/srv/state/sessions/a.txt" } })
    );
  }

  /// The `init` event keeps its type, session, model and permission mode; every other event loses
  /// the fields naming server paths, tools and versions, also inside a `background_activity`;
  /// what is not an object passes as it is.
  #[test]
  fn a_public_event_names_no_server_detail() {
    let init = json!({ "type": "system", "subtype": "init", "session_id": "s", "model": "m", "permissionMode": "default", "uuid": "u",
      "cwd": "/srv/work", "tools": ["Bash"], "memory_paths": { "user": "/srv/config/memory" }, "apiKeySource": "none" });
    assert_eq!(
      public_event(init),
      json!({ "type": "system", "subtype": "init", "session_id": "s", "model": "m", "permissionMode": "default", "uuid": "u" })
    );
    let status = json!({ "type": "system", "subtype": "status", "cwd": "/srv/work", "output_file": "/srv/cli-tmp/x", "status": "ok" });
    assert_eq!(public_event(status.clone()), json!({ "type": "system", "subtype": "status", "status": "ok" }));
    let bg = json!({ "type": "background_activity", "events": [status, "text"] });
    assert_eq!(
      public_event(bg),
      json!({ "type": "background_activity", "events": [{ "type": "system", "subtype": "status", "status": "ok" }, "text"] })
    );
    let result = json!({ "type": "task_end", "result": { "cwd": "kept: not top level" } });
    assert_eq!(public_event(result.clone()), result);
    assert_eq!(public_event(json!([1, 2])), json!([1, 2]));
  }

  fn delta(i: u64, kind: &str, field: &str, text: &str) -> Value {
    json!({ "type": "stream_event", "event": { "type": "content_block_delta", "index": i, "delta": { "type": kind, field: text } }, "parent_tool_use_id": null })
  }

  /// The texts of the log's events, in order.
  async fn logged(store: &Store, sid: &str) -> Vec<String> {
    let rows = store.read_events(sid, 0, 100).await.unwrap();
    rows
      .iter()
      .map(|r| serde_json::from_str::<Value>(&r.body).unwrap()["event"]["delta"]["text"].as_str().unwrap_or("").to_owned())
      .collect()
  }

  /// A run's writer leaves the manager's map when the run is over, but not the writer the
  /// session's next run put in meanwhile.
  #[test]
  fn a_finished_runs_writer_leaves_the_next_runs_in_place() {
    let logs = Arc::new(Logs::default());
    let (tx1, _rx1) = mpsc::unbounded_channel();
    let (tx2, _rx2) = mpsc::unbounded_channel();
    let first = logs.register("s", Recorder { tx: tx1 });
    let second = logs.register("s", Recorder { tx: tx2.clone() });
    drop(first);
    assert!(logs.writer("s").is_some_and(|w| w.tx.same_channel(&tx2)), "the next run's writer stays");
    drop(second);
    assert!(logs.writer("s").is_none());
  }

  /// A session in a fresh SQLite store, and a writer of task `t`'s events to its log.
  async fn task_log() -> (tempfile::TempDir, Arc<Store>, String, Recorder, tokio::task::JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
    let sid = uuid::Uuid::new_v4().to_string();
    let new = crate::store::NewSession { id: sid.clone(), project_id: "p".into(), user_id: "u".into(), ..Default::default() };
    store.create_session(&new).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_loop(store.clone(), None, sid.clone(), "t".into(), rx));
    (dir, store, sid, Recorder { tx }, writer)
  }

  /// The write window, on the store's real SQLite and tokio's paused clock (sends are placed in
  /// time exactly; what is compared is which deltas share a row).
  #[tokio::test(start_paused = true)]
  async fn a_delta_after_a_pause_is_written_alone_and_a_burst_is_joined() {
    let (_dir, store, sid, rec, writer) = task_log().await;
    let text = |t: &str| delta(0, "text_delta", "text", t);
    let ms = |n| tokio::time::sleep(Duration::from_millis(n));
    // The first delta: written at once. Two more within the window after it: joined.
    rec.record(text("A"));
    ms(1).await;
    rec.record(text("B"));
    ms(1).await;
    rec.record(text("C"));
    // A pause, then a delta (at once, alone), and one within its window (held, alone).
    ms(100).await;
    rec.record(text("D"));
    ms(1).await;
    rec.record(text("E"));
    ms(100).await;
    // Another event is written at once, with the deltas that came with it.
    ms(100).await;
    rec.record(text("H"));
    ms(1).await;
    rec.record(json!({ "type": "assistant" }));
    rec.record(text("I"));
    ms(1).await;
    rec.record(text("J"));
    ms(100).await;
    // A flush ends a window: F goes in without waiting for G.
    rec.record(text("F"));
    ms(1).await;
    rec.record(text("G"));
    rec.flush().await;
    assert_eq!(logged(&store, &sid).await, ["A", "BC", "D", "E", "H", "", "I", "J", "F", "G"]);
    drop(rec);
    writer.await.unwrap();
  }

  /// A take hands the queued events over and holds the writer: what comes meanwhile is written
  /// after them. Not stored by the taker (dropped): the writer writes them first; stored: never
  /// written again.
  #[tokio::test]
  async fn a_take_holds_the_writer_until_the_taker_says_whether_it_stored_the_events() {
    let (_dir, store, sid, rec, writer) = task_log().await;
    let ev = |t: &str| json!({ "type": "e", "event": { "delta": { "text": t } } });
    rec.record(ev("A"));
    rec.record(ev("B"));
    let taken = rec.take().await;
    assert_eq!(taken.rows.len(), 2, "A and B handed over");
    rec.record(ev("C"));
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(logged(&store, &sid).await.is_empty(), "nothing written while the taker decides");
    drop(taken);
    rec.flush().await;
    assert_eq!(logged(&store, &sid).await, ["A", "B", "C"], "not stored by the taker: written first, in order");
    rec.record(ev("D"));
    let taken = rec.take().await;
    let end = ev("END").to_string();
    let (s2, rows) = (sid.clone(), [taken.rows.clone(), vec![end.clone()]].concat());
    let seq = store.append_events(&s2, "t", &rows).await.unwrap();
    rec.record(ev("E"));
    taken.stored(seq, Some(end));
    rec.flush().await;
    assert_eq!(logged(&store, &sid).await, ["A", "B", "C", "D", "END", "E"], "stored by the taker: not written twice");
    drop(rec);
    writer.await.unwrap();
  }

  /// This process's CPU time so far (user + system), in milliseconds.
  fn cpu_ms() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the buffer it is given, which is that size.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } == 0;
    assert!(ok);
    // SAFETY: getrusage succeeded, so it wrote the whole struct (and it was zeroed before).
    let u = unsafe { u.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(u.ru_utime) + ms(u.ru_stime)
  }

  /// What the event log costs a task on SQLite (a file, WAL): tasks whose events (an init event
  /// of 3 kB, 40 text deltas `CSM_BENCH_GAP_MS` apart (default 25), the assistant message, the
  /// result) are recorded as a run records them, against the same tasks unrecorded, one of each in
  /// turn. Per task: the wait at its end (the two flushes a run waits for: its events, then its
  /// `task_end`) and the process's CPU time. A benchmark, run on purpose:
  /// `cargo test --release --lib event_log_cost -- --ignored --nocapture` (`benchmark/RESULTS-streams.md`).
  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  #[ignore = "a benchmark: cargo test --release --lib event_log_cost -- --ignored --nocapture"]
  async fn event_log_cost() {
    let tasks: usize = std::env::var("CSM_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let gap: u64 = std::env::var("CSM_BENCH_GAP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(25);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("bench.db")).unwrap());
    let init = json!({ "type": "system", "subtype": "init", "tools": vec!["x".repeat(60); 48], "cwd": "/srv/work" });
    let words: Vec<String> = (0..40).map(|i| format!("word{i} ")).collect();
    let events = |sid: &str| {
      let mut v = vec![init.clone(), json!({ "type": "stream_event", "event": { "type": "message_start" }, "session_id": sid })];
      v.extend(words.iter().map(|w| {
        json!({ "type": "stream_event", "event": { "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": w } }, "parent_tool_use_id": null, "session_id": sid })
      }));
      let text: String = words.concat();
      v.push(json!({ "type": "assistant", "message": { "role": "assistant", "content": [{ "type": "text", "text": text }] }, "session_id": sid }));
      v.push(json!({ "type": "result", "subtype": "success", "result": text, "session_id": sid, "usage": { "input_tokens": 10, "output_tokens": 40 } }));
      v
    };
    let mut end_wait = vec![];
    let (mut cpu_on, mut cpu_off, mut rows) = (vec![], vec![], 0usize);
    for round in 0..tasks + 3 {
      for on in [true, false] {
        let sid = uuid::Uuid::new_v4().to_string();
        let new = crate::store::NewSession { id: sid.clone(), project_id: "p".into(), user_id: "u".into(), ..Default::default() };
        store.create_session(&new).await.unwrap();
        let rec = on.then(|| {
          let (tx, rx) = mpsc::unbounded_channel();
          tokio::spawn(write_loop(store.clone(), None, sid.clone(), "t".into(), rx));
          Recorder { tx }
        });
        let cpu = cpu_ms();
        for (i, e) in events(&sid).into_iter().enumerate() {
          if i > 0 {
            tokio::time::sleep(Duration::from_millis(if i < 43 { gap } else { 1 })).await;
          }
          if let Some(r) = &rec {
            r.record(e);
          }
        }
        let ended = std::time::Instant::now();
        if let Some(r) = &rec {
          r.flush().await;
          r.record(json!({ "type": "task_end", "sessionId": sid, "taskId": "t", "result": { "success": true } }));
          r.flush().await;
        }
        let waited = ended.elapsed().as_secs_f64() * 1000.0;
        let cpu = cpu_ms() - cpu;
        if round >= 3 {
          if on {
            end_wait.push(waited);
            cpu_on.push(cpu);
            rows += store.read_events(&sid, 0, 1000).await.unwrap().len();
          } else {
            cpu_off.push(cpu);
          }
        }
      }
    }
    let median = |v: &mut Vec<f64>| {
      v.sort_by(f64::total_cmp);
      v[v.len() / 2]
    };
    let p99 = |v: &mut Vec<f64>| {
      v.sort_by(f64::total_cmp);
      v[((v.len() as f64 - 1.0) * 0.99).round() as usize]
    };
    println!("event_log_cost: {tasks} tasks each way, interleaved, after 3 warm-up rounds; deltas {gap} ms apart");
    println!("rows per task: {:.1}", rows as f64 / tasks as f64);
    println!("wait at the task's end (ms): median {:.3}, p99 {:.3}", median(&mut end_wait), p99(&mut end_wait));
    let (on, off) = (median(&mut cpu_on), median(&mut cpu_off));
    println!("process CPU per task (ms): recorded median {on:.3}, unrecorded median {off:.3}, added {:.3}", on - off);
  }

  #[test]
  fn consecutive_deltas_of_one_block_are_joined_and_nothing_else_is() {
    let other = json!({ "type": "assistant", "message": {} });
    let out = coalesce(vec![
      delta(0, "text_delta", "text", "Hel"),
      delta(0, "text_delta", "text", "lo"),
      delta(1, "text_delta", "text", "x"),
      delta(1, "input_json_delta", "partial_json", "{\"a\""),
      delta(1, "input_json_delta", "partial_json", ":1}"),
      other.clone(),
      delta(1, "input_json_delta", "partial_json", "y"),
    ]);
    assert_eq!(
      out,
      vec![
        delta(0, "text_delta", "text", "Hello"),
        delta(1, "text_delta", "text", "x"),
        delta(1, "input_json_delta", "partial_json", "{\"a\":1}"),
        other,
        delta(1, "input_json_delta", "partial_json", "y"),
      ]
    );
  }
}
