//! Forwarding through the store (`store::inbox`): answers to a task's permission requests and
//! steering messages reach the manager running the task, whichever process or node the caller
//! reached. No sticky sessions.
//!
//! - A task with a permission callback registers each request in the store while it waits
//!   ([`Manager::answerable`]) and removes it once settled, however (answer, timeout, abort).
//! - While a warm task runs, its manager reads its inbox when the store's doorbell rings for the
//!   session (`store/doorbell.rs`; and every [`SAFETY_POLL`] in case a ring went missing)
//!   ([`Manager::watch_inbox`]): an answer found settles the request as if the callback had
//!   answered (the callback's `signal` aborts: the request is no longer pending); a message found
//!   is steered into the task and its outcome written back for the sender, with a ring.
//! - `respondToPermission` settles a request waiting in this manager directly, else writes the
//!   answer to its row and rings; `sendMessage` leaves a message for a task another manager runs,
//!   rings, and waits for the ring of its outcome (steered, or not: the task was ending).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;

use super::permissions::{user_edit_allowed, PermissionResponse, Rule, Rules};
use super::{ring, Manager, Wait};
use crate::cli::{CanUseTool, CancelToken, Decision, PermissionRequest, WarmHandle};
use crate::error::{Error, ErrorCode, Result};
use crate::store::doorbell::wait_ring;
use crate::store::{Delivery, Notice, Receipt, Store};

/// How often a running task's manager reads its inbox without a ring (in case one went missing).
const SAFETY_POLL: Duration = super::events::SAFETY_POLL;
/// How often a sender looks whether its message was steered without a ring (also how soon it
/// learns that the task's manager died: its lease expired).
const RECEIPT_POLL: Duration = Duration::from_secs(1);
/// How long a sender waits for that at most (the task's manager answers as soon as it hears the
/// ring; a frozen one stops renewing its lease, which ends the wait sooner).
const RECEIPT_LIMIT: Duration = Duration::from_secs(30);
/// A waiting request: where its answer goes, and the tool input the CLI asked about.
type Waiter = (oneshot::Sender<Decision>, Value);

/// The permission state of this manager's tasks: the requests that wait for an answer, by session
/// and request id (where [`Manager::respond_to_permission`] and the inbox reader settle them), and
/// the sessions' always-allow rules.
#[derive(Default)]
pub(crate) struct Waiting {
  requests: Mutex<HashMap<(String, String), Waiter>>,
  pub(crate) rules: Rules,
}

impl Waiting {
  fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Waiter>> {
    self.requests.lock().unwrap_or_else(|p| p.into_inner())
  }

  /// Settles a waiting request with a user's `answer`; false when none waits under that key. An
  /// answer whose `updatedInput` changes what the request was about is refused (see
  /// [`user_edit_allowed`]) and the request keeps waiting.
  fn settle(&self, key: &(String, String), answer: Decision) -> Result<bool> {
    let mut map = self.map();
    let Some((_, input)) = map.get(key) else { return Ok(false) };
    user_edit_allowed(input, &answer)?;
    let tx = map.remove(key).map(|(tx, _)| tx);
    Ok(tx.is_some_and(|tx| tx.send(answer).is_ok()))
  }
}

/// A permission request of this manager while it waits: on drop (settled, withdrawn, timed out)
/// it is no longer pending anywhere, and the callback's signal aborts unless the callback itself
/// decided.
struct Pending {
  waiting: Arc<Waiting>,
  store: Arc<Store>,
  key: (String, String),
  signal: CancelToken,
  decided: bool,
}

impl Pending {
  /// The callback answered: its answer, and its signal stays as it is.
  fn decided<T>(&mut self, answer: T) -> T {
    self.decided = true;
    answer
  }
}

impl Drop for Pending {
  fn drop(&mut self) {
    self.waiting.map().remove(&self.key);
    if !self.decided {
      self.signal.cancel();
    }
    let (store, (session, request)) = (self.store.clone(), self.key.clone());
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
      rt.spawn(async move { store.call(Wait::Briefly, async move |s| s.inbox_forget(&session, &request).await).await });
    }
  }
}

/// Records how a permission request was settled in the task's event log when it is (answered,
/// or dropped: withdrawn, timed out, the task ended).
struct PermissionRecord {
  log: super::events::Recorder,
  session: String,
  request: String,
  behavior: &'static str,
}

impl Drop for PermissionRecord {
  fn drop(&mut self) {
    self.log.record(
      serde_json::json!({ "type": "permission_resolved", "sessionId": self.session, "requestId": self.request, "behavior": self.behavior }),
    );
  }
}

/// Stops the inbox reader of [`Manager::watch_inbox`] when dropped.
pub(crate) struct InboxWatch(CancelToken);

impl Drop for InboxWatch {
  fn drop(&mut self) {
    self.0.cancel();
  }
}

fn no_task_running(session_id: &str) -> Error {
  Error::new(
    ErrorCode::InvalidArgument,
    format!(
      "no task is running on session {session_id} in a warm process (of any manager sharing the store); send the message as a new task"
    ),
  )
}

impl Manager {
  /// The task's permission callback, answerable from anywhere: each request is recorded as
  /// pending in the store before the callback hears of it, and settles with whichever answer
  /// comes first: the callback's, or one given through `respondToPermission` (in this manager,
  /// or in the store, read by [`Self::watch_inbox`]). The callback's signal aborts when the
  /// request settles without it.
  /// A request that one of the session's always-allow rules matches is allowed without asking;
  /// an allow with `remember` adds the rule it stands for ([`super::permissions`]; the session
  /// works in `working_dir`).
  /// While a request waits, the task's concurrency `slot` is given back ([`super::slot`]).
  pub(crate) fn answerable(
    &self,
    handler: CanUseTool,
    session_id: &str,
    working_dir: &str,
    task_id: &str,
    slot: std::sync::Weak<super::slot::TaskSlot>,
  ) -> CanUseTool {
    let (store, waiting, session, task) = (self.store.clone(), self.waiting.clone(), session_id.to_owned(), task_id.to_owned());
    let working_dir = working_dir.to_owned();
    // Each request, and how it was settled, goes to the task's event log (a follower that
    // attaches later still sees a request waiting for an answer).
    let log = self.logs.writer(session_id);
    Arc::new(move |req: PermissionRequest, _withdrawn: CancelToken| {
      let rule = Rule::of(&req.tool_name, &req.input, &working_dir);
      if rule.as_ref().is_some_and(|r| waiting.rules.allows(&session, r)) {
        return Box::pin(async { Ok(Decision::allow()) });
      }
      // The caller drops this future when the request is withdrawn or times out: `Pending`'s
      // drop then aborts the callback's own signal.
      let key = (session.clone(), req.request_id.clone());
      let (tx, answered) = oneshot::channel();
      waiting.map().insert(key.clone(), (tx, req.input.clone()));
      let signal = CancelToken::new();
      let mut pending = Pending { waiting: waiting.clone(), store: store.clone(), key, signal: signal.clone(), decided: false };
      let (handler, store, task, slot, waiting, log) =
        (handler.clone(), store.clone(), task.clone(), slot.clone(), waiting.clone(), log.clone());
      let logged = serde_json::json!({ "type": "permission_request", "sessionId": pending.key.0, "taskId": task, "requestId": req.request_id,
          "toolName": req.tool_name, "input": req.input, "suggestions": req.suggestions, "toolUseID": req.tool_use_id });
      let settled =
        log.map(|l| PermissionRecord { log: l, session: pending.key.0.clone(), request: req.request_id.clone(), behavior: "withdrawn" });
      Box::pin(async move {
        let mut settled = settled;
        let (s, r) = pending.key.clone();
        // Failing to record it only means it cannot be answered from elsewhere.
        let _ = store.call(Wait::Briefly, async move |st| st.inbox_ask(&s, &task, &r).await).await;
        // Logged once the store has it: a follower that reads the request can answer it at once.
        if let Some(r) = &settled {
          r.log.record(logged);
        }
        let asked = handler(req, signal);
        let paused = slot.upgrade();
        if let Some(p) = &paused {
          p.pause().await;
        }
        let answer = tokio::select! {
          a = asked => pending.decided(a),
          Ok(a) = answered => Ok(a),
        };
        if let Some(p) = paused {
          p.resume().await;
        }
        if let (Some(r), Ok(d)) = (settled.as_mut(), &answer) {
          r.behavior = if matches!(d, Decision::Allow { .. }) { "allow" } else { "deny" };
        }
        if let (Ok(d), Some(rule)) = (&answer, rule) {
          if d.remember() {
            waiting.rules.add(&pending.key.0, rule);
          }
        }
        answer
      })
    })
  }

  /// Reads the inbox of a task running in a warm process (`handle`) until the returned guard
  /// drops: answers to its permission requests settle them, messages are steered into it. Then
  /// its pending requests go from the store and messages not yet handled are refused.
  pub(crate) fn watch_inbox(&self, session_id: &str, task_id: &str, handle: WarmHandle) -> InboxWatch {
    let stop = CancelToken::new();
    let (store, waiting, session, task, stopped) =
      (self.store.clone(), self.waiting.clone(), session_id.to_owned(), task_id.to_owned(), stop.clone());
    let logs = self.logs.clone();
    // Subscribed before the inbox opens: no ring for it is missed.
    let mut bell = self.store.subscribe();
    tokio::spawn(async move {
      let (s, t) = (session.clone(), task.clone());
      if store.call(Wait::Briefly, async move |st| st.inbox_open(&s, &t).await).await.is_ok() {
        let mine = Notice::Inbox { session_id: session.clone() };
        loop {
          wait_ring(&mut bell, SAFETY_POLL, Some(&stopped), |n| *n == mine).await;
          if stopped.is_cancelled() {
            break;
          }
          let (s, t) = (session.clone(), task.clone());
          let Ok(found) = store.call(Wait::Briefly, async move |st| st.inbox_poll(&s, &t).await).await else { continue };
          for delivery in found {
            match delivery {
              Delivery::Answer { request_id, answer } => {
                let key = (session.clone(), request_id);
                // Checked where the request is (the sender could not see its input): an answer
                // that changes what was asked about denies.
                if let Err(e) = waiting.settle(&key, Decision::from_stored(&answer)) {
                  let _ = waiting.settle(&key, Decision::deny(e.message));
                }
              }
              Delivery::Message { id, text } => {
                let outcome = match handle.steer(&text) {
                  Ok(true) => Receipt::Steered,
                  Err(e) if e.code == ErrorCode::ContextOverflow => Receipt::TooMuch,
                  Ok(false) | Err(_) => Receipt::Refused,
                };
                let steered = outcome == Receipt::Steered;
                if steered {
                  if let Some(l) = logs.writer(&session) {
                    l.record(serde_json::json!({ "type": "user_message", "sessionId": session, "text": text }));
                  }
                }
                if store.call(Wait::Briefly, async move |st| st.inbox_mark(id, outcome).await).await.is_ok() {
                  ring(&store, Notice::Receipt { session_id: session.clone(), id }).await;
                }
              }
            }
          }
        }
      }
      let sid = session.clone();
      if store.call(Wait::Briefly, async move |st| st.inbox_close(&sid, &task).await).await.is_ok() {
        // Messages not handled were refused: their senders learn it now.
        ring(&store, Notice::Receipt { session_id: session, id: 0 }).await;
      }
    });
    InboxWatch(stop)
  }

  /// `sendMessage` for a session on which this manager runs no warm task: left in the store for
  /// the manager that does, and answered once it has steered it (or could not: the task was
  /// ending). No such task anywhere: `INVALID_ARGUMENT`, as before.
  pub(crate) async fn forward_message(&self, session_id: &str, prompt: &str) -> Result<()> {
    let (sid, text) = (session_id.to_owned(), prompt.to_owned());
    // Subscribed before the message is left: the ring of its outcome is not missed.
    let mut bell = self.store.subscribe();
    let Some(id) = self.store_call(Wait::Briefly, async move |s| s.inbox_send(&sid, &text).await).await? else {
      return Err(no_task_running(session_id));
    };
    ring(&self.store, Notice::Inbox { session_id: session_id.to_owned() }).await;
    let deadline = Instant::now() + RECEIPT_LIMIT;
    loop {
      let outcome = |n: &Notice| matches!(n, Notice::Receipt { session_id: s, id: i } if s == session_id && (*i == id || *i == 0));
      wait_ring(&mut bell, RECEIPT_POLL, None, outcome).await;
      if Instant::now() >= deadline {
        // Too late now: refused unless it was steered meanwhile.
        self.store.call(Wait::Briefly, async move |s| s.inbox_mark(id, Receipt::Refused).await).await?;
      }
      match self.store.call(Wait::Briefly, async move |s| s.inbox_receipt(id).await).await? {
        Receipt::Steered => return Ok(()),
        Receipt::Refused => return Err(no_task_running(session_id)),
        Receipt::TooMuch => return Err(crate::cli::warm::too_many_steered()),
        Receipt::Waiting => {}
      }
    }
  }

  /// Answers a permission request of a task on the user's session, wherever the task runs: one
  /// waiting in this manager directly, else through its row in the store (written once, while
  /// unanswered, then a ring: the manager running the task reads it when it hears it).
  /// `PERMISSION_REQUEST_NOT_FOUND` when no such request is pending; another user's session is
  /// `SESSION_NOT_FOUND`, as everywhere.
  pub async fn respond_to_permission(&self, r: PermissionResponse) -> Result<()> {
    self.check_open()?;
    let answer = r.decision;
    let session = self.get_session(&r.session_id, &r.user_id).await?;
    let key = (session.id, r.request_id.clone());
    if self.waiting.settle(&key, answer.clone())? {
      return Ok(());
    }
    let (text, (sid, rid)) = (answer.to_stored(), key);
    let session_id = sid.clone();
    if self.store_call(Wait::Briefly, async move |s| s.inbox_answer(&sid, &rid, &text).await).await? {
      ring(&self.store, Notice::Inbox { session_id }).await;
      return Ok(());
    }
    Err(Error::new(
      ErrorCode::PermissionRequestNotFound,
      format!("no permission request {} is pending in session {}", r.request_id, r.session_id),
    ))
  }
}
