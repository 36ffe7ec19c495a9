//! The conversation follows the session (PostgreSQL): a task mirrors the CLI's transcript into
//! the store while it runs, and a node refreshes its local copy from the store before it resumes
//! or forks a session, so that any node continues the conversation where the last one left it.
//!
//! - **Writing** (the lease holder): the CLI runs with `--session-mirror`; its frames come through
//!   a channel to [`TaskMirror`]'s writer, which numbers the lines from the store's head and
//!   appends them fenced by the task's lease (refused once another task took the lease over),
//!   retrying transient store errors and never dropping a line it still has. At the result the
//!   task's end takes what the writer has not stored yet, a write in flight included, and stores
//!   it with the end (the store then holds the turn before the caller sees it); after
//!   the CLI exits, the local file is compared with the store and any tail the store lacks is
//!   appended (a CLI without the flag is mirrored that way only).
//! - **Reading**: before a task resumes or forks, the local file
//!   `CLAUDE_CONFIG_DIR/projects/<slug of this node's folder>/<id>.jsonl` is rewritten from the
//!   store unless a marker says it is exactly the store's head; `getMessages` and prompt
//!   estimates read the store.
//!
//! SQLite (one machine) does none of this: the file is the conversation.
//!
//! The local file is the agent's to write: it is read and written only through
//! [`transcript::TenantFile`] (no link below the configuration folder is followed, no special
//! file opened), and read in bounded lines: the reconcile reads only the task's part of the file,
//! at most `maxTranscriptBytes` of it.

use std::collections::HashMap;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::run::HeldRun;
use super::{Manager, TaskError, TaskResult, Wait};
use crate::cli::mirror::{subpath_of, MirrorMsg, MirrorTx};
use crate::cli::{CancelToken, SessionMode};
use crate::context;
use crate::error::{Error, ErrorCode, Result};
use crate::store::{Session, Store, TaskEnd, TranscriptEntry};
use crate::transcript::{self, safe, History, ReadOptions, TenantFile};

/// Waits between attempts of a store write that failed (then the last one again, while the task
/// lasts).
const BACKOFF: [Duration; 4] = [Duration::from_millis(200), Duration::from_millis(800), Duration::from_secs(2), Duration::from_secs(5)];

/// How long the writer lets a small frame wait for more frames, or for the task's end to take it,
/// before it writes. The CLI prints a turn's last lines a few milliseconds before its result: they
/// then go with the end's transaction instead of a write of their own that the end would have to
/// wait behind (both lock the lease's row). A flush asked for ends the wait.
const LINGER: Duration = Duration::from_millis(5);

/// Lines of more bytes than this are written at once: a session's first turn starts with tens of
/// kilobytes, better stored while the model answers than with the task's end (measured: the end
/// took 1.6 ms longer with them).
const LINGER_MAX_BYTES: usize = 8 * 1024;

/// Why nothing more is stored for a task that lost its lease.
const LOST: &str = "the task lost the session's lease; nothing more is stored for it";

/// How long the task waits for the mirror at its result, and after the CLI's exit.
const FLUSH_WAIT: Duration = Duration::from_secs(20);

/// Line types the CLI writes to its file but does not mirror (request bookkeeping).
fn not_mirrored(v: &Value) -> bool {
  v.get("type").and_then(Value::as_str).is_some_and(|t| t.starts_with("api-request"))
}

/// When a task's lease stops being its own, by this process's clock: the start of its last
/// successful renewal plus the TTL minus a margin (River's rule). Shared by the renewal loop,
/// the mirror and the task's end.
#[derive(Clone)]
pub(crate) struct LeaseClock {
  valid_until: Arc<Mutex<Instant>>,
  lost: Arc<AtomicBool>,
  ttl: Duration,
  cancel: CancelToken,
}

impl LeaseClock {
  pub(crate) fn new(taken_at: Instant, ttl: Duration, cancel: CancelToken) -> Self {
    let clock = LeaseClock { valid_until: Arc::new(Mutex::new(taken_at)), lost: Arc::new(AtomicBool::new(false)), ttl, cancel };
    clock.renewed(taken_at);
    clock
  }
  fn margin(&self) -> Duration {
    (self.ttl / 10).min(Duration::from_secs(1))
  }
  /// A renewal that started at `at` went through.
  pub(crate) fn renewed(&self, at: Instant) {
    let until = at + self.ttl.saturating_sub(self.margin());
    if let Ok(mut v) = self.valid_until.lock() {
      *v = (*v).max(until);
    }
  }
  pub(crate) fn valid_until(&self) -> Instant {
    self.valid_until.lock().map(|v| *v).unwrap_or_else(|_| Instant::now())
  }
  /// Whether the lease is (or must be taken as) lost: refused by the store, or past its time.
  pub(crate) fn is_lost(&self) -> bool {
    if !self.lost.load(Ordering::SeqCst) && Instant::now() >= self.valid_until() {
      self.lose();
    }
    self.lost.load(Ordering::SeqCst)
  }
  /// The lease is lost: the CLI is stopped (its whole process group).
  pub(crate) fn lose(&self) {
    self.lost.store(true, Ordering::SeqCst);
    self.cancel.cancel();
  }

  /// Renews the lease every third of its TTL until dropped; once a renewal is refused, or none
  /// went through before the lease would expire, the lease is lost.
  pub(crate) async fn renew_loop(self, store: Arc<Store>, session_id: String, task_id: String) {
    let mut pause = self.ttl / 3;
    loop {
      let wake = (Instant::now() + pause).min(self.valid_until());
      tokio::time::sleep_until(wake.into()).await;
      if self.is_lost() {
        return;
      }
      let started = Instant::now();
      let (sid, tid, ttl) = (session_id.clone(), task_id.clone(), self.ttl);
      let left = self.valid_until().saturating_duration_since(started);
      let renew = store.call(Wait::Blocking, async move |st| st.renew_lease(&sid, &tid, ttl).await);
      match tokio::time::timeout(left, renew).await {
        Ok(Ok(true)) => {
          self.renewed(started);
          pause = self.ttl / 3;
        }
        Ok(Ok(false)) => {
          self.lose();
          return;
        }
        // A store error or no answer in time: try again soon, while there is time.
        _ => pause = (self.ttl / 10).max(Duration::from_millis(50)),
      }
    }
  }
}

/// What a task's writer has stored, as the store has it: the lease holder is the one writer of
/// the session, so these are the stored lines after the head the task started from.
#[derive(Default)]
struct Stored {
  /// The store's head: the last `seq` stored (the start's head before any).
  head: i64,
  /// The main transcript's lines stored, as text, with how many times each.
  lines: HashMap<String, usize>,
}

/// One task's mirror: a writer that stores the CLI's frames in order.
pub(crate) struct TaskMirror {
  pub(crate) tx: MirrorTx,
  /// The task's end taking the lines not stored yet ([`TaskMirror::take`]).
  ctl: mpsc::UnboundedSender<Ctl>,
  writer: tokio::task::JoinHandle<()>,
  /// What the writer has stored.
  stored: Arc<Mutex<Stored>>,
  /// The store's head and the local file's length when the task started: the file then held
  /// the stored lines, and what the task adds is appended after both, so the check at the end
  /// compares only the task's part (not the whole conversation on every task).
  from: (i64, u64),
  /// This node's transcript file of the session, as the CLI writes it.
  pub(crate) local: Option<TenantFile>,
  /// The most the reconcile reads of the local file (`maxTranscriptBytes`), and the most the
  /// session's file backups may take in the store.
  pub(crate) max_bytes: u64,
  /// The task the lines and file backups are stored for.
  task_id: String,
}

/// The task's end asking the writer for its pending lines, and its word on them.
enum Ctl {
  Take(Taker),
  /// Whether the lines handed over are stored.
  Resume(bool),
}

/// Where the writer answers a take: the lines not stored yet, or why they cannot be.
type Taker = oneshot::Sender<std::result::Result<Vec<TranscriptEntry>, String>>;

/// Lines handed over by [`TaskMirror::take`], for the task's end to store; dropped without
/// [`TakenLines::stored`], the writer keeps them and writes them itself.
pub(crate) struct TakenLines {
  pub(crate) entries: Vec<TranscriptEntry>,
  ctl: mpsc::UnboundedSender<Ctl>,
  answered: bool,
}

impl TakenLines {
  /// The lines are in the store.
  pub(crate) fn stored(mut self) {
    self.answered = true;
    let _ = self.ctl.send(Ctl::Resume(true));
  }
}

impl Drop for TakenLines {
  fn drop(&mut self) {
    if !self.answered {
      let _ = self.ctl.send(Ctl::Resume(false));
    }
  }
}

struct Writer {
  store: Arc<Store>,
  session_id: String,
  task_id: String,
  next_seq: i64,
  pending: Vec<TranscriptEntry>,
  clock: LeaseClock,
  /// Lines written after the task ended (a warm process closing): fenced by the task's last
  /// lease, held or released, instead of a held one.
  after_end: bool,
  stored: Arc<Mutex<Stored>>,
}

impl Writer {
  fn take(&mut self, frame: &Value) {
    let Some(path) = frame.get("filePath").and_then(Value::as_str) else { return };
    let Some(subpath) = subpath_of(path, &self.session_id) else { return };
    for e in frame.get("entries").and_then(Value::as_array).into_iter().flatten() {
      let Ok(line) = serde_json::to_string(e) else { continue };
      let uuid = e.get("uuid").and_then(Value::as_str).map(str::to_owned);
      self.pending.push(TranscriptEntry { seq: self.next_seq, subpath: subpath.clone(), uuid, line });
      self.next_seq += 1;
    }
  }

  /// What was pending is in the store.
  fn pending_stored(&mut self) {
    self.first_stored(self.pending.len());
  }

  /// The first `n` pending lines (a write's batch) are in the store.
  fn first_stored(&mut self, n: usize) {
    let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
    for e in self.pending.drain(..n.min(self.pending.len())) {
      stored.head = stored.head.max(e.seq);
      if e.subpath.is_empty() {
        *stored.lines.entry(e.line).or_default() += 1;
      }
    }
  }

  /// Hands what is pending to the task's end (or says why it cannot be stored), then waits for
  /// its word: stored, or not (kept pending, written next).
  async fn hand_over(&mut self, taker: Taker, inbox: &mut Inbox<'_>) {
    if self.offer(taker) {
      if self.end_word(inbox).await {
        self.pending_stored();
      }
    } else if self.clock.is_lost() {
      self.pending.clear();
    }
  }

  /// Answers a take with what is pending, or why it cannot be stored (the lease is lost); true
  /// when the taker has the lines.
  fn offer(&self, taker: Taker) -> bool {
    if self.clock.is_lost() {
      let _ = taker.send(Err(LOST.into()));
      return false;
    }
    taker.send(Ok(self.pending.clone())).is_ok()
  }

  /// Stores what is pending, retrying transient errors up to [`BACKOFF`]'s length; what could not
  /// be stored stays pending. Err says why.
  ///
  /// A take asked for while a write is in flight is answered at once, with the lines of that write
  /// and every frame queued since (a flush queued meanwhile joins `acks`, answered with the
  /// outcome): the task's end does not wait for the write. Both statements append under the
  /// task's lease, whose row they lock, and skip lines already stored (same `seq`), so the end's
  /// transaction runs after the write's commit, or before it and the write then adds nothing. Once
  /// the write is over, the end's word decides: stored (nothing more to write), or not (the lines
  /// are written again).
  async fn write(&mut self, inbox: &mut Inbox<'_>) -> std::result::Result<(), String> {
    if self.pending.is_empty() {
      return Ok(());
    }
    if self.clock.is_lost() {
      self.pending.clear();
      return Err(LOST.into());
    }
    let mut last = String::new();
    for wait in std::iter::once(Duration::ZERO).chain(BACKOFF) {
      // Not `sleep(ZERO)` for the first try: the timer's resolution is a millisecond, and every
      // write would wait up to one for nothing.
      if !wait.is_zero() {
        tokio::time::sleep(wait).await;
      }
      let (sid, tid, batch) = (self.session_id.clone(), self.task_id.clone(), self.pending.clone());
      let n = batch.len();
      let after_end = self.after_end;
      let append = async move |st: &Store| match after_end {
        false => st.shared_transcripts()?.append_transcript(&sid, &tid, &batch).await,
        true => st.shared_transcripts()?.append_transcript_after_end(&sid, &tid, &batch).await,
      };
      let store = self.store.clone();
      let call = store.call(Wait::Blocking, append);
      tokio::pin!(call);
      let mut handed = false;
      let written = loop {
        tokio::select! {
          biased;
          r = &mut call => break r,
          c = inbox.ctl.recv(), if !handed && inbox.ctl_open => match c {
            Some(Ctl::Take(taker)) => {
              self.gather(inbox);
              handed = self.offer(taker);
            }
            Some(Ctl::Resume(_)) => {}
            None => inbox.ctl_open = false,
          },
        }
      };
      match written {
        Ok(true) => {
          self.first_stored(n);
          if !handed {
            return Ok(());
          }
        }
        Ok(false) => {
          self.pending.clear();
          self.clock.lose();
          return Err("the task lost the session's lease; its transcript lines were refused".into());
        }
        Err(e) => last = e.message,
      }
      if handed {
        match self.end_word(inbox).await {
          true => {
            self.pending_stored();
            return Ok(());
          }
          false if self.pending.is_empty() => return Ok(()),
          false => {}
        }
      }
      if self.clock.is_lost() {
        self.pending.clear();
        return Err("the task lost the session's lease while the store was unreachable".into());
      }
    }
    Err(format!("the conversation could not be saved to the session store: {last}"))
  }

  /// A message taken in: a frame's lines become pending, a flush joins the acks.
  fn receive(&mut self, m: MirrorMsg, inbox: &mut Inbox<'_>) {
    match m {
      MirrorMsg::Frame(f) => self.take(&f),
      MirrorMsg::Flush(ack) => inbox.acks.push(ack),
    }
  }

  /// Every message queued in `inbox` taken in.
  fn gather(&mut self, inbox: &mut Inbox<'_>) {
    while let Ok(m) = inbox.rx.try_recv() {
      self.receive(m, inbox);
    }
  }

  /// Waits up to [`LINGER`] with what is pending, taking in the frames that come meanwhile; ends
  /// early on a take (returned, with every frame sent before it taken in), a flush, or the end
  /// of the frames. Nothing pending, more than [`LINGER_MAX_BYTES`], or a flush waiting: no wait.
  async fn linger(&mut self, inbox: &mut Inbox<'_>) -> Option<Taker> {
    let until = tokio::time::Instant::now() + LINGER;
    let small = |pending: &[TranscriptEntry]| pending.iter().map(|e| e.line.len()).sum::<usize>() <= LINGER_MAX_BYTES;
    while !self.pending.is_empty() && inbox.acks.is_empty() && small(&self.pending) {
      tokio::select! {
        biased;
        c = inbox.ctl.recv(), if inbox.ctl_open => match c {
          Some(Ctl::Take(t)) => {
            self.gather(inbox);
            return Some(t);
          }
          Some(Ctl::Resume(_)) => {}
          None => inbox.ctl_open = false,
        },
        m = inbox.rx.recv() => match m {
          Some(m) => self.receive(m, inbox),
          None => return None,
        },
        _ = tokio::time::sleep_until(until) => return None,
      }
    }
    None
  }

  /// The task's end's word on the lines handed over: whether they are stored.
  async fn end_word(&mut self, inbox: &mut Inbox<'_>) -> bool {
    loop {
      match inbox.ctl.recv().await {
        Some(Ctl::Resume(stored)) => return stored,
        None => {
          inbox.ctl_open = false;
          return false;
        }
        Some(Ctl::Take(other)) => drop(other),
      }
    }
  }
}

/// What the writer reads besides the write it is doing: the frames, the task's end, the flushes
/// waiting for the write's outcome.
struct Inbox<'a> {
  rx: &'a mut mpsc::UnboundedReceiver<MirrorMsg>,
  ctl: &'a mut mpsc::UnboundedReceiver<Ctl>,
  ctl_open: bool,
  acks: Vec<oneshot::Sender<std::result::Result<(), String>>>,
}

impl TaskMirror {
  /// Starts the writer for `task_id`, numbering lines after `head`; `local` is this node's
  /// transcript file, which now holds the stored lines up to `head` (or does not exist);
  /// `after_end`: the lines come after the task ended (see [`Self::after_end`]).
  pub(crate) fn start(
    store: Arc<Store>,
    session_id: &str,
    task_id: &str,
    head: i64,
    local: Option<TenantFile>,
    clock: LeaseClock,
    after_end: bool,
  ) -> TaskMirror {
    let local_len = local.as_ref().and_then(|p| p.regular_len().ok().flatten()).unwrap_or(0);
    let (tx, mut rx) = mpsc::unbounded_channel::<MirrorMsg>();
    let stored = Arc::new(Mutex::new(Stored { head, lines: HashMap::new() }));
    let mut w = Writer {
      stored: stored.clone(),
      store,
      session_id: session_id.to_owned(),
      task_id: task_id.to_owned(),
      next_seq: head + 1,
      pending: vec![],
      clock,
      after_end,
    };
    let (ctl_tx, mut ctl) = mpsc::unbounded_channel::<Ctl>();
    let writer = tokio::spawn(async move {
      let mut inbox = Inbox { rx: &mut rx, ctl: &mut ctl, ctl_open: true, acks: vec![] };
      loop {
        let mut taker = None;
        let first = tokio::select! {
          biased;
          m = inbox.rx.recv() => match m {
            Some(m) => Some(m),
            None => break,
          },
          c = inbox.ctl.recv(), if inbox.ctl_open => match c {
            Some(Ctl::Take(t)) => {
              taker = Some(t);
              None
            }
            Some(Ctl::Resume(_)) => continue,
            None => {
              inbox.ctl_open = false;
              continue;
            }
          },
        };
        if let Some(m) = first {
          w.receive(m, &mut inbox);
        }
        loop {
          w.gather(&mut inbox);
          // A take asked for meanwhile takes these lines instead of a write of their own; the
          // frames sent before it are queued by now: read them too.
          if taker.is_some() {
            break;
          }
          match inbox.ctl.try_recv() {
            Ok(Ctl::Take(t)) => taker = Some(t),
            // No take (an answer comes only after a hand-over).
            _ => break,
          }
        }
        if taker.is_none() {
          taker = w.linger(&mut inbox).await;
        }
        if let Some(t) = taker {
          w.hand_over(t, &mut inbox).await;
        }
        let r = w.write(&mut inbox).await;
        for a in inbox.acks.drain(..) {
          let _ = a.send(r.clone());
        }
      }
      // The run is over and nobody flushes: a last try for what is left.
      let _ = w.write(&mut inbox).await;
    });
    TaskMirror {
      tx,
      ctl: ctl_tx,
      writer,
      stored,
      from: (head, local_len),
      local,
      max_bytes: transcript::DEFAULT_MAX_TRANSCRIPT_BYTES,
      task_id: task_id.to_owned(),
    }
  }

  /// The mirror of what a warm process writes as it closes, after its last task `task_id` ended:
  /// stored only while no other task has taken the session since.
  pub(crate) fn after_end(store: Arc<Store>, session_id: &str, task_id: &str, head: i64) -> TaskMirror {
    // Nothing renews or loses this lease: the store's fence decides each write.
    let clock = LeaseClock::new(Instant::now(), Duration::from_secs(24 * 60 * 60), CancelToken::new());
    TaskMirror::start(store, session_id, task_id, head, None, clock, true)
  }

  /// Every line of the frames sent so far that is not stored yet, for the task's end to store
  /// with it (once a write in flight is over); the writer writes nothing more until told whether
  /// they were stored. Err says why they cannot be (the lease is lost).
  pub(crate) async fn take(&self) -> std::result::Result<TakenLines, String> {
    let (taker, taken) = tokio::sync::oneshot::channel();
    if self.ctl.send(Ctl::Take(taker)).is_err() {
      return Err("the transcript mirror stopped".into());
    }
    match tokio::time::timeout(FLUSH_WAIT, taken).await {
      Ok(Ok(Ok(entries))) => Ok(TakenLines { entries, ctl: self.ctl.clone(), answered: false }),
      Ok(Ok(Err(why))) => Err(why),
      Ok(Err(_)) => Err("the transcript mirror stopped".into()),
      Err(_) => Err("the session store did not take the conversation in time".into()),
    }
  }

  /// Waits until every frame sent so far is stored; Err says why it could not be.
  pub(crate) async fn flush(&self) -> std::result::Result<(), String> {
    let (ack, done) = tokio::sync::oneshot::channel();
    if self.tx.send(MirrorMsg::Flush(ack)).is_err() {
      return Err("the transcript mirror stopped".into());
    }
    match tokio::time::timeout(FLUSH_WAIT, done).await {
      Ok(Ok(r)) => r,
      Ok(Err(_)) => Err("the transcript mirror stopped".into()),
      Err(_) => Err("the session store did not take the conversation in time".into()),
    }
  }

  /// After the CLI exited: stores the lines of the local transcript the store lacks (frames lost,
  /// lines the CLI writes without a frame, or a CLI without `--session-mirror`), after the
  /// others; waits for the writer, and stops it. The file is the session's own regular file or
  /// nothing is taken from it (a link or a special file is refused: Err, nothing stored, and the
  /// next task here rewrites the file from the store); at most `max_bytes` of it are read, line
  /// by line (a longer line is skipped). The task's part of the file is compared with what its
  /// writer stored, without a trip to the store: only lines the store lacks cost one (the
  /// transcript is behind). Returns the store's head, and with `give_back` the lines the store
  /// lacks, numbered after it, instead of storing them (the caller stores them with the lease's
  /// release, in one trip).
  pub(crate) async fn reconcile(
    self,
    store: Arc<Store>,
    session_id: String,
    local: TenantFile,
    give_back: bool,
  ) -> std::result::Result<(i64, Vec<TranscriptEntry>), String> {
    self.flush().await?;
    let (file, (head, offset), max) = (local.clone(), self.from, self.max_bytes);
    let read = tokio::task::spawn_blocking(move || -> Result<Option<(Vec<Value>, i64)>> {
      let Some((mut f, len)) = file.open_read()? else { return Ok(None) };
      let io_err = |e: std::io::Error| Error::store(format!("cannot read transcript {}: {e}", file.path().display()));
      // The task's part: the file past its length at the start, against the lines stored since.
      // A file shorter than it was (rewritten by something else) is compared whole.
      let after = if offset > 0 && offset <= len {
        f.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        head
      } else {
        0
      };
      let mut lines = safe::BoundedLines::new(BufReader::with_capacity(64 * 1024, f), transcript::DEFAULT_MAX_LINE_BYTES, max);
      let mut read = vec![];
      let mut buf = Vec::new();
      loop {
        match lines.next_into(&mut buf) {
          Ok(true) => {
            if let Some(v) = std::str::from_utf8(&buf).ok().and_then(|l| serde_json::from_str::<Value>(l).ok()) {
              if v.is_object() && !not_mirrored(&v) {
                read.push(v);
              }
            }
          }
          Ok(false) => break,
          Err(safe::LineError::TooLarge) => return Err(safe::too_large(&format!("the transcript {}", file.path().display()), max)),
          Err(safe::LineError::Io(e)) => return Err(io_err(e)),
        }
      }
      Ok(Some((read, after)))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.message)?;
    let tail = match read {
      None => vec![],
      Some((read, after)) => {
        // Lines are compared as the store keeps them (serde_json's canonical text), as a multiset:
        // the CLI also writes lines it does not mirror in the middle of the file (state it
        // restores on resume: `mode`, `tools-used`, …), and lines without a uuid repeat. The
        // task's part is compared with what its writer stored; the whole file with the store.
        let mut stored: HashMap<String, usize> = match after == head {
          true => self.stored.lock().unwrap_or_else(|p| p.into_inner()).lines.clone(),
          false => {
            let sid = session_id.clone();
            let rows = store
              .call(Wait::Blocking, async move |st| st.shared_transcripts()?.load_transcript(&sid, after).await)
              .await
              .map_err(|e| e.message)?;
            let mut all = HashMap::new();
            for e in rows.into_iter().filter(|e| e.subpath.is_empty()) {
              *all.entry(e.line).or_default() += 1;
            }
            all
          }
        };
        let mut missing = vec![];
        for v in read {
          let key = serde_json::to_string(&v).unwrap_or_default();
          match stored.get_mut(&key) {
            Some(n) if *n > 0 => *n -= 1,
            _ => missing.push(v),
          }
        }
        missing
      }
    };
    if give_back {
      drop(self.tx);
      let _ = self.writer.await;
      let head = self.stored.lock().unwrap_or_else(|p| p.into_inner()).head;
      let lines = tail.iter().zip(head + 1..).map(|(v, seq)| TranscriptEntry {
        seq,
        subpath: String::new(),
        uuid: v.get("uuid").and_then(Value::as_str).map(str::to_owned),
        line: serde_json::to_string(v).unwrap_or_default(),
      });
      return Ok((head, lines.collect()));
    }
    if !tail.is_empty() {
      let frame = json!({ "type": "transcript_mirror", "filePath": local.path().to_string_lossy(), "entries": tail });
      let _ = self.tx.send(MirrorMsg::Frame(frame));
      self.flush().await?;
    }
    drop(self.tx);
    let _ = self.writer.await;
    let head = self.stored.lock().unwrap_or_else(|p| p.into_inner()).head;
    Ok((head, vec![]))
  }
}

/// Whether the CLI at `program` prints `--session-mirror` frames: asked once per binary
/// (`--version`), off the async workers.
pub(crate) async fn mirror_supported(program: &Path) -> bool {
  let program = program.to_path_buf();
  tokio::task::spawn_blocking(move || crate::cli::mirror::supported(&program)).await.unwrap_or(false)
}

/// The marker that says a local transcript is the store's copy at `head`: `<head> <file size>`
/// (none for a file that is not a regular file).
fn marker_of(head: i64, file: &TenantFile) -> Option<String> {
  file.regular_len().ok().flatten().map(|len| format!("{head} {len}"))
}

/// Records that the local transcript `file` is the store's copy at `head`, in `marker`.
pub(crate) fn mark_fresh(marker: &Path, head: i64, file: &TenantFile) {
  if let Some(m) = marker_of(head, file) {
    if let Some(d) = marker.parent() {
      let _ = super::config::private_dir(d);
    }
    let _ = std::fs::write(marker, m);
  }
}

/// Makes this node's copy `path` of a session's transcript the store's, unless `marker` says it
/// already is (blocking). Returns the store's head (0: the store has nothing; the local file is
/// left as it is).
/// The file and every folder on its way are checked as they are written (see [`TenantFile`]): a
/// link planted below the configuration folder (the session's `projects/<slug>` folder linked to
/// a host folder) fails the refresh with `TRANSCRIPT_UNSAFE` and nothing is written through it.
/// `head`: the store's head, when the caller read it already.
pub(crate) async fn refresh_local(
  store: &Arc<Store>,
  session_id: &str,
  path: &TenantFile,
  marker: &Path,
  head: Option<i64>,
) -> Result<i64> {
  let head = match head {
    Some(head) => head,
    None => {
      let sid = session_id.to_owned();
      store.call(Wait::Briefly, async move |st| st.shared_transcripts()?.transcript_head(&sid).await).await?
    }
  };
  if head == 0 {
    return Ok(0);
  }
  let seen = std::fs::read_to_string(marker).ok();
  if seen.is_some() && seen == marker_of(head, path) {
    return Ok(head);
  }
  let sid = session_id.to_owned();
  let entries = store.call(Wait::Blocking, async move |st| st.shared_transcripts()?.load_transcript(&sid, 0).await).await?;
  let (path, marker) = (path.clone(), marker.to_path_buf());
  // Writing the files can take milliseconds: off the async workers.
  tokio::task::spawn_blocking(move || write_local(&entries, head, &path, &marker))
    .await
    .map_err(|e| Error::internal(format!("transcript refresh failed: {e}")))??;
  Ok(head)
}

/// Writes the store's transcript lines (at `head`) as this node's copy `path`, and the marker.
fn write_local(entries: &[TranscriptEntry], head: i64, path: &TenantFile, marker: &Path) -> Result<()> {
  let files: std::collections::BTreeSet<&str> = entries.iter().map(|e| e.subpath.as_str()).collect();
  // Each file written straight from the rows (no second copy of the conversation in memory).
  let write = |file: &TenantFile, sub: &str| {
    file.write_atomic(|w| {
      for e in entries.iter().filter(|e| e.subpath == sub) {
        w.write_all(e.line.as_bytes())?;
        w.write_all(b"\n")?;
      }
      Ok(())
    })
  };
  let folder = path.with_extension("");
  for sub in files {
    // Only plain relative names under the session's folder.
    if sub.is_empty() || sub.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
      continue;
    }
    write(&folder.join(format!("{sub}.jsonl")), sub)?;
  }
  write(path, "")?;
  mark_fresh(marker, head, path);
  Ok(())
}

/// A session's stored transcript lines, when the store keeps transcripts and has some; `None`
/// otherwise (read the local file). A stored transcript larger than `max_bytes` is
/// `TRANSCRIPT_TOO_LARGE`, refused before it is loaded.
pub(crate) async fn stored_lines(store: &Arc<Store>, session_id: &str, max_bytes: u64) -> Result<Option<Vec<TranscriptEntry>>> {
  if !store.shares_transcripts() {
    return Ok(None);
  }
  let sid = session_id.to_owned();
  let entries = store
    .call(Wait::Blocking, async move |st| {
      let t = st.shared_transcripts()?;
      let bytes = t.transcript_bytes(&sid).await?;
      if u64::try_from(bytes).unwrap_or(0) > max_bytes {
        return Err(safe::too_large(&format!("the stored transcript of session {sid}"), max_bytes));
      }
      t.load_transcript(&sid, 0).await
    })
    .await?;
  Ok((!entries.is_empty()).then_some(entries))
}

/// The conversation in stored transcript lines (see [`stored_lines`]).
pub(crate) fn stored_history(entries: &[TranscriptEntry], opts: &ReadOptions) -> History {
  transcript::parse_lines(entries.iter().filter(|e| e.subpath.is_empty()).map(|e| e.line.as_str()), opts)
}

impl Manager {
  /// Where this node notes which store head its local copy of a session's transcript is.
  pub(crate) fn marker_path(&self, session_id: &str) -> PathBuf {
    self.cfg.state_directory.join("transcript-heads").join(session_id)
  }

  /// Before a task: this node's copy of the transcript the CLI will read (the session's own, or a
  /// fork's parent's) made the store's. Only on a store that keeps transcripts. The session's
  /// own head in the store when it read it (a resumed session), for the task's mirror.
  /// `head`: the session's own head, when already read.
  pub(crate) async fn refresh_for(&self, session: &Session, mode: &SessionMode, head: Option<i64>) -> Result<Option<i64>> {
    let source = match mode {
      SessionMode::New(_) => return Ok(None),
      SessionMode::Resume(_) => session.clone(),
      SessionMode::Fork { parent, .. } => self.get_session(parent, &session.user_id).await?,
    };
    let Some(path) = self.transcript_of(&source)? else { return Ok(None) };
    let own = source.id == session.id;
    let head = refresh_local(&self.store, &source.id, &path, &self.marker_path(&source.id), head.filter(|_| own)).await?;
    Ok(own.then_some(head))
  }
}

/// After the CLI exited: the mirror reconciled with the local file, and the marker set when the
/// store took everything (else the next task here rewrites the file from the store); the file
/// backups the CLI made for the session stored with the transcript (see `checkpoints.rs`).
pub(crate) async fn finish_mirror(m: TaskMirror, store: Arc<Store>, session_id: String, local: TenantFile, marker: PathBuf) {
  let (task_id, max_bytes) = (m.task_id.clone(), m.max_bytes);
  let reconciled = m.reconcile(store.clone(), session_id.clone(), local.clone(), false).await;
  let _ = tokio::task::spawn_blocking(move || {
    if let Ok((head, _)) = reconciled {
      mark_fresh(&marker, head, &local);
    }
    // Fenced by the task's lease: nothing is stored once another task took the session.
    let _ = super::checkpoints::capture(&store, &session_id, &task_id, local.root(), max_bytes);
  })
  .await;
}

/// After the CLI of a task that kept the session's lease exited: the lease released (`release`:
/// the task's end was recorded) and, with a mirror, the lines the store lacks stored in the same
/// trip ([`Transcripts::append_and_release`]); the marker set when the store took everything;
/// the file backups the CLI made stored with the transcript. Unless the store lacks lines (they go
/// with the release), `hand_over` is called once the marker and the backups are done, before the
/// release is sent: the next task of this process may then take the kept lease over, and the
/// release (harmless once it did) is off its path. A failed reconcile counts as nothing lacking,
/// as it did before the hand-over: no marker is set, so the next task here rewrites its copy from
/// the store. Returns false when the lease was handed over and its release then failed: the
/// store still has the lease as this task's (until it expires, or a take-over).
pub(crate) async fn release_after_exit(
  mirror: Option<(TaskMirror, TenantFile)>,
  store: Arc<Store>,
  session_id: String,
  task_id: String,
  marker: PathBuf,
  release: bool,
  hand_over: impl FnOnce(),
) -> bool {
  if !release {
    // The end was not recorded: the lease is left to expire; the lines the store lacks are
    // stored under it while it lasts, as after any task.
    if let Some((m, local)) = mirror {
      finish_mirror(m, store, session_id, local, marker).await;
    }
    return true;
  }
  let max_bytes = mirror.as_ref().map(|(m, _)| m.max_bytes);
  let reconciled = match mirror {
    Some((m, local)) => m.reconcile(store.clone(), session_id.clone(), local.clone(), true).await.ok().map(|r| (r, local)),
    None => None,
  };
  let lines = reconciled.as_ref().map(|((_, lines), _)| lines.clone()).unwrap_or_default();
  let (sid, tid) = (session_id.clone(), task_id.clone());
  let fresh = |head: i64, local: TenantFile, store: Arc<Store>| {
    tokio::task::spawn_blocking(move || {
      mark_fresh(&marker, head, &local);
      // Fenced by the task's last lease (kept or released, not taken since).
      let _ = super::checkpoints::capture(&store, &session_id, &task_id, local.root(), max_bytes.unwrap_or(u64::MAX));
    })
  };
  if lines.is_empty() {
    if let Some(((head, _), local)) = reconciled {
      let _ = fresh(head, local, store.clone()).await;
    }
    hand_over();
    return store.call(Wait::Blocking, async move |st| st.release_lease(&sid, &tid).await).await.is_ok();
  }
  let released = store.call(Wait::Blocking, async move |st| st.shared_transcripts()?.append_and_release(&sid, &tid, &lines).await).await;
  if let (Ok(true), Some(((head, lines), local))) = (released, reconciled) {
    let head = lines.last().map_or(head, |e| e.seq);
    let _ = fresh(head, local, store).await;
  }
  true
}

impl Manager {
  /// A task whose node lost the session's lease: `interrupted` with `LEASE_LOST`, written only if
  /// the lease is still this task's (else the node that took it over already marked the row).
  pub(crate) async fn finish_lease_lost(&self, run: &HeldRun) -> TaskResult {
    let (session, task_id, queued, threshold) = (&run.session, run.task_id.as_str(), run.queued, run.threshold);
    let msg = "this node lost the session's lease (it could not renew it in time, or another node took the session over): \
      its CLI was stopped and nothing it did afterwards was stored";
    let mut res =
      TaskResult::empty(session, task_id, context::context_info(session.context.as_ref(), self.cfg.context_window, threshold, 0));
    res.duration.total_ms = queued.elapsed().as_millis() as u64;
    res.error = Some(TaskError { code: ErrorCode::LeaseLost.as_str().into(), message: msg.into(), status: None, scope: None });
    let end = TaskEnd {
      status: "interrupted".into(),
      error_code: Some(ErrorCode::LeaseLost.as_str().into()),
      error_message: Some(msg.into()),
      materialized: session.materialized,
      ..Default::default()
    };
    let (sid, tid) = (session.id.clone(), task_id.to_owned());
    let _ = self.store.call(Wait::Briefly, async move |s| s.finish_task(&sid, &tid, &end, None).await).await;
    res
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::store::Blocking as _;
  use crate::store::{NewSession, Owner};

  #[tokio::test]
  async fn a_lease_never_renewed_is_lost_at_its_deadline_and_stops_the_run() {
    let cancel = CancelToken::new();
    let clock = LeaseClock::new(Instant::now(), Duration::from_millis(300), cancel.clone());
    assert!(!clock.is_lost() && !cancel.is_cancelled());
    tokio::time::sleep_until(clock.valid_until().into()).await;
    assert!(clock.is_lost(), "past start + ttl - margin");
    assert!(cancel.is_cancelled(), "the CLI is stopped");
  }

  #[tokio::test]
  async fn renewals_keep_the_lease_and_a_refused_one_loses_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
    let sid = uuid::Uuid::new_v4().to_string();
    store
      .create_session(&NewSession { id: sid.clone(), project_id: "p".into(), user_id: "u".into(), ..Default::default() })
      .wait()
      .unwrap();
    let ttl = Duration::from_millis(600);
    let taken = Instant::now();
    assert!(store.try_begin_task(&sid, "t", "task", "sonnet", &Owner { id: "o".into(), pid: std::process::id() }, ttl).wait().unwrap());
    let cancel = CancelToken::new();
    let clock = LeaseClock::new(taken, ttl, cancel.clone());
    let renewing = tokio::spawn(clock.clone().renew_loop(store.clone(), sid.clone(), "t".into()));
    // Three TTLs later the lease is still held: the renewals went through.
    tokio::time::sleep(ttl * 3).await;
    assert!(!clock.is_lost() && !cancel.is_cancelled());
    assert!(clock.valid_until() > taken + ttl, "the deadline moved with the renewals");
    // The lease stops being the task's: the next renewal is refused and the run is stopped.
    store.release_lease(&sid, "t").wait().unwrap();
    tokio::time::timeout(ttl * 3, renewing).await.expect("the loop ended").unwrap();
    assert!(clock.is_lost() && cancel.is_cancelled());
  }
}

/// Against PostgreSQL (`CSM_TEST_DATABASE_URL`; `#[ignore]`d, run with `cargo test --lib pg_tests --
/// --include-ignored`): the writer retries a store
/// that fails for a while and loses nothing, stores a batch once, and numbers lines after the head.
#[cfg(test)]
mod pg_tests {
  use super::*;
  use crate::store::{Blocking as _, NewSession, Owner};

  async fn admin(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
  }

  fn frame(session_id: &str, lines: &[Value]) -> MirrorMsg {
    MirrorMsg::Frame(json!({ "type": "transcript_mirror", "filePath": format!("/c/projects/-w/{session_id}.jsonl"), "entries": lines }))
  }

  /// The database's URL, a new schema's name, and a store on it.
  async fn connect() -> (String, String, Arc<Store>) {
    let url = std::env::var("CSM_TEST_DATABASE_URL")
      .ok()
      .filter(|u| !u.is_empty())
      .expect("this test needs PostgreSQL and CSM_TEST_DATABASE_URL is not set");
    let schema = format!("csm_mirror_{}", uuid::Uuid::new_v4().simple());
    let (u, s) = (url.clone(), schema.clone());
    let store = Arc::new(tokio::task::spawn_blocking(move || Store::connect(&u, &s)).await.unwrap().unwrap());
    (url, schema, store)
  }

  /// A new session `sid` with its task `tid` started.
  async fn started(store: &Arc<Store>, sid: &str, tid: &str) {
    let (st, s2, t2) = (store.clone(), sid.to_owned(), tid.to_owned());
    let began = tokio::task::spawn_blocking(move || {
      st.create_session(&NewSession { id: s2.clone(), project_id: "p".into(), user_id: "u".into(), ..Default::default() }).wait()?;
      st.try_begin_task(&s2, &t2, "task", "sonnet", &Owner { id: "o".into(), pid: 1 }, Duration::from_secs(60)).wait()
    });
    assert!(began.await.unwrap().unwrap());
  }

  #[tokio::test(flavor = "multi_thread")]
  #[ignore = "needs PostgreSQL: CSM_TEST_DATABASE_URL=postgresql://… cargo test --lib pg_tests -- --include-ignored"]
  async fn the_writer_retries_a_failing_store_and_stores_every_line_once() {
    let (url, schema, store) = connect().await;
    let sid = uuid::Uuid::new_v4().to_string();
    started(&store, &sid, "t").await;
    let clock = LeaseClock::new(Instant::now(), Duration::from_secs(60), CancelToken::new());
    let m = TaskMirror::start(store.clone(), &sid, "t", 0, None, clock, false);
    m.tx.send(frame(&sid, &[json!({"type": "user", "uuid": "u1"}), json!({"type": "queue-operation"})])).unwrap();
    m.flush().await.unwrap();
    // The table goes away for a moment: the next batch fails, is retried, and lands once.
    let s = format!("\"{schema}\"");
    admin(&url, &format!("ALTER TABLE {s}.transcript_entries RENAME TO gone")).await;
    m.tx.send(frame(&sid, &[json!({"type": "assistant", "uuid": "a1"}), json!({"type": "last-prompt"})])).unwrap();
    let flushed = tokio::spawn(async move { (m.flush().await, m) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    admin(&url, &format!("ALTER TABLE {s}.gone RENAME TO transcript_entries")).await;
    let (r, m) = flushed.await.unwrap();
    r.unwrap();
    drop(m);
    let (st, s2) = (store.clone(), sid.clone());
    let stored = tokio::task::spawn_blocking(move || st.shared_transcripts()?.load_transcript(&s2, 0).wait()).await.unwrap().unwrap();
    let types: Vec<String> =
      stored.iter().map(|e| serde_json::from_str::<Value>(&e.line).unwrap()["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(types, ["user", "queue-operation", "assistant", "last-prompt"]);
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    drop(store);
    admin(&url, &format!("DROP SCHEMA {s} CASCADE")).await;
  }

  /// The task's end takes a write in flight with it: the take is answered while the write waits
  /// (here for the lease's row, locked by another connection), and holds the write's lines and
  /// the frames sent after it; each line is stored once, whether the end stores them (its word:
  /// stored) or gives them back (they are written again).
  #[tokio::test(flavor = "multi_thread")]
  #[ignore = "needs PostgreSQL: CSM_TEST_DATABASE_URL=postgresql://… cargo test --lib pg_tests -- --include-ignored"]
  async fn a_take_does_not_wait_for_a_write_in_flight_and_every_line_is_stored_once() {
    let (url, schema, store) = connect().await;
    let s = format!("\"{schema}\"");
    let stored_types = async |sid: &str| -> Vec<(i64, String)> {
      let (st, s2) = (store.clone(), sid.to_owned());
      let rows = tokio::task::spawn_blocking(move || st.shared_transcripts()?.load_transcript(&s2, 0).wait()).await.unwrap().unwrap();
      rows.iter().map(|e| (e.seq, serde_json::from_str::<Value>(&e.line).unwrap()["type"].as_str().unwrap().to_owned())).collect()
    };
    for end_stores in [true, false] {
      let (sid, tid) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string());
      started(&store, &sid, &tid).await;
      let clock = LeaseClock::new(Instant::now(), Duration::from_secs(60), CancelToken::new());
      let m = TaskMirror::start(store.clone(), &sid, &tid, 0, None, clock, false);
      // Another connection holds the lease's row: the writer's first write waits for it.
      let (locker, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
      tokio::spawn(conn);
      locker.batch_execute(&format!("BEGIN; SELECT 1 FROM {s}.leases WHERE session_id = '{sid}' FOR UPDATE")).await.unwrap();
      m.tx.send(frame(&sid, &[json!({"type": "user", "uuid": "u1"}), json!({"type": "queue-operation"})])).unwrap();
      // Asked on a connection of its own: inside a transaction the activity view is read once.
      let (watcher, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
      tokio::spawn(conn);
      let waiting = async || {
        let q = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%transcript_entries%'";
        for _ in 0..500 {
          if watcher.query_one(q, &[]).await.unwrap().get::<_, i64>(0) > 0 {
            return;
          }
          tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the writer's write never reached the server");
      };
      waiting().await;
      m.tx.send(frame(&sid, &[json!({"type": "assistant", "uuid": "a1"})])).unwrap();
      let taken = tokio::time::timeout(Duration::from_secs(5), m.take()).await.expect("the take waited for the write in flight").unwrap();
      let seqs: Vec<i64> = taken.entries.iter().map(|e| e.seq).collect();
      assert_eq!(seqs, [1, 2, 3], "the write's lines and the frame sent after it");
      assert!(stored_types(&sid).await.is_empty(), "the write is still waiting");
      locker.batch_execute("COMMIT").await.unwrap();
      if end_stores {
        // What the end does: the lines under the lease (those of the write skipped), then its word.
        let (st, s2, t2, entries) = (store.clone(), sid.clone(), tid.clone(), taken.entries.clone());
        assert!(tokio::task::spawn_blocking(move || st.shared_transcripts()?.append_transcript(&s2, &t2, &entries).wait())
          .await
          .unwrap()
          .unwrap());
        taken.stored();
      } else {
        drop(taken);
      }
      m.tx.send(frame(&sid, &[json!({"type": "last-prompt"})])).unwrap();
      m.flush().await.unwrap();
      let want: Vec<(i64, String)> =
        [(1, "user"), (2, "queue-operation"), (3, "assistant"), (4, "last-prompt")].iter().map(|(n, t)| (*n, (*t).to_owned())).collect();
      assert_eq!(stored_types(&sid).await, want, "each line once, in order (the end stored them: {end_stores})");
      drop(m);
    }
    drop(store);
    admin(&url, &format!("DROP SCHEMA {s} CASCADE")).await;
  }
}
