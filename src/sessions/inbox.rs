//! Forwarding through the store (`store::inbox`): answers to a task's permission requests and
//! steering messages reach the manager running the task, whichever process or node the caller
//! reached. No sticky sessions.
//!
//! - A task with a permission callback registers each request in the store while it waits
//!   ([`Manager::answerable`]) and removes it once settled, however (answer, timeout, abort).
//! - While a warm task runs, its manager reads its inbox every [`POLL`] ([`Manager::watch_inbox`]):
//!   an answer found settles the request as if the callback had answered (the callback's `signal`
//!   aborts: the request is no longer pending); a message found is steered into the task and its
//!   outcome written back for the sender.
//! - `respondToPermission` settles a request waiting in this manager directly, else writes the
//!   answer to its row; `sendMessage` leaves a message for a task another manager runs and waits
//!   until that manager has steered it (or could not).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::{on_store, Manager};
use crate::cli::{CanUseTool, CancelToken, PermissionRequest, WarmHandle};
use crate::error::{Error, ErrorCode, Result};
use crate::store::{Delivery, Receipt, Store};
use crate::validate;

/// How often a running task's manager reads its inbox.
const POLL: Duration = Duration::from_millis(100);
/// How often a sender looks whether its message was steered.
const RECEIPT_POLL: Duration = Duration::from_millis(50);
/// How long a sender waits for that at most (the task's manager answers within a [`POLL`] or
/// two; a frozen one stops renewing its lease, which ends the wait sooner).
const RECEIPT_LIMIT: Duration = Duration::from_secs(30);
/// Longest `message` of a permission answer, in bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A waiting request: where its answer goes, and the tool input the CLI asked about.
type Waiter = (oneshot::Sender<Value>, Value);

/// The permission requests of this manager's tasks that wait for an answer, by session and
/// request id: where [`Manager::respond_to_permission`] and the inbox reader settle them.
#[derive(Default)]
pub(crate) struct Waiting(Mutex<HashMap<(String, String), Waiter>>);

impl Waiting {
  fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Waiter>> {
    self.0.lock().unwrap_or_else(|p| p.into_inner())
  }

  /// Settles a waiting request with a user's `answer`; false when none waits under that key. An
  /// answer whose `updatedInput` changes what the request was about is refused (see
  /// [`user_edit_allowed`]) and the request keeps waiting.
  fn settle(&self, key: &(String, String), answer: Value) -> Result<bool> {
    let mut map = self.map();
    let Some((_, input)) = map.get(key) else { return Ok(false) };
    user_edit_allowed(input, &answer)?;
    let tx = map.remove(key).map(|(tx, _)| tx);
    Ok(tx.is_some_and(|tx| tx.send(answer).is_ok()))
  }
}

/// Fields of a tool's input that the CLI's permission rules (`allowedTools`/`disallowedTools`,
/// e.g. `Bash(rm:*)`) and the user's decision are about: where a file tool reads or writes, what
/// a shell runs, which URL is fetched. The CLI checks its rules against the input it asked
/// about, not against an `updatedInput` it is answered with.
const GUARDED_INPUT_FIELDS: &[&str] = &["command", "file_path", "notebook_path", "path", "url", "dangerouslyDisableSandbox"];

/// A user's answer (`respondToPermission`, the Next.js route) may edit a tool's input (a Write's
/// content, an Edit's new text) but not the fields in [`GUARDED_INPUT_FIELDS`]: changed there it
/// would run something the server's rules were never checked against.
pub(crate) fn user_edit_allowed(input: &Value, answer: &Value) -> Result<()> {
  let Some(updated) = answer.get("updatedInput") else { return Ok(()) };
  for f in GUARDED_INPUT_FIELDS {
    if updated.get(f) != input.get(f) {
      return Err(Error::invalid(format!(
        "updatedInput may change the tool's other fields, not {f:?}: the permission was asked for the {f} it has; deny and let the agent ask again instead"
      )));
    }
  }
  Ok(())
}

/// `respondToPermission`: the user's answer to a permission request of a task on their session.
#[derive(Debug, Clone, Default)]
pub struct PermissionResponse {
  pub session_id: String,
  pub user_id: String,
  pub request_id: String,
  /// `allow` or `deny`.
  pub behavior: String,
  /// Why (deny).
  pub message: Option<String>,
  /// The tool's input to use instead (allow); must be an object.
  pub updated_input: Option<Value>,
  /// Also end the turn (deny).
  pub interrupt: Option<bool>,
}

impl PermissionResponse {
  /// The answer as a permission callback returns it, after checking every field. Never
  /// `updatedPermissions`: a user's answer cannot change what the session may do next.
  fn answer(&self) -> Result<Value> {
    validate::id("requestId", &self.request_id)?;
    if let Some(m) = &self.message {
      if m.len() > MAX_MESSAGE_BYTES || m.contains('\0') {
        return Err(Error::invalid(format!("message must be at most {MAX_MESSAGE_BYTES} bytes, without NUL bytes")));
      }
    }
    if self.updated_input.as_ref().is_some_and(|u| !u.is_object()) {
      return Err(Error::invalid("updatedInput must be an object (the tool's input)"));
    }
    if self.updated_input.as_ref().is_some_and(|u| u.to_string().len() > validate::MAX_PROMPT_BYTES) {
      return Err(Error::invalid(format!("updatedInput must be at most {} bytes as JSON", validate::MAX_PROMPT_BYTES)));
    }
    match self.behavior.as_str() {
      "allow" => {
        let mut a = json!({ "behavior": "allow" });
        if let Some(u) = &self.updated_input {
          a["updatedInput"] = u.clone();
        }
        Ok(a)
      }
      "deny" => {
        let message = self.message.as_deref().filter(|m| !m.is_empty()).unwrap_or("the user denied this");
        let mut d = json!({ "behavior": "deny", "message": message });
        if self.interrupt == Some(true) {
          d["interrupt"] = json!(true);
        }
        Ok(d)
      }
      other => Err(Error::invalid(format!("behavior must be \"allow\" or \"deny\", got {other:?}"))),
    }
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
      rt.spawn_blocking(move || store.inbox_forget(&session, &request));
    }
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
  /// While a request waits, the task's concurrency `slot` is given back ([`super::slot`]).
  pub(crate) fn answerable(
    &self,
    handler: CanUseTool,
    session_id: &str,
    task_id: &str,
    slot: std::sync::Weak<super::slot::TaskSlot>,
  ) -> CanUseTool {
    let (store, waiting, session, task) = (self.store.clone(), self.waiting.clone(), session_id.to_owned(), task_id.to_owned());
    Arc::new(move |req: PermissionRequest, _withdrawn: CancelToken| {
      // The caller drops this future when the request is withdrawn or times out: `Pending`'s
      // drop then aborts the callback's own signal.
      let key = (session.clone(), req.request_id.clone());
      let (tx, answered) = oneshot::channel();
      waiting.map().insert(key.clone(), (tx, req.input.clone()));
      let signal = CancelToken::new();
      let mut pending = Pending { waiting: waiting.clone(), store: store.clone(), key, signal: signal.clone(), decided: false };
      let (handler, store, task, slot) = (handler.clone(), store.clone(), task.clone(), slot.clone());
      Box::pin(async move {
        let (s, r) = pending.key.clone();
        // Failing to record it only means it cannot be answered from elsewhere.
        let _ = on_store(store, move |st| st.inbox_ask(&s, &task, &r)).await;
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
    tokio::spawn(async move {
      let (s, t) = (session.clone(), task.clone());
      if on_store(store.clone(), move |st| st.inbox_open(&s, &t)).await.is_ok() {
        loop {
          tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stopped.cancelled() => break,
          }
          let (s, t) = (session.clone(), task.clone());
          let Ok(found) = on_store(store.clone(), move |st| st.inbox_poll(&s, &t)).await else { continue };
          for delivery in found {
            match delivery {
              Delivery::Answer { request_id, answer } => {
                let answer = serde_json::from_str(&answer).unwrap_or(Value::Null);
                let key = (session.clone(), request_id);
                // Checked where the request is (the sender could not see its input): an answer
                // that changes what was asked about denies.
                if let Err(e) = waiting.settle(&key, answer) {
                  let _ = waiting.settle(&key, json!({ "behavior": "deny", "message": e.message }));
                }
              }
              Delivery::Message { id, text } => {
                let steered = handle.steer(&text);
                let _ = on_store(store.clone(), move |st| st.inbox_mark(id, steered)).await;
              }
            }
          }
        }
      }
      let _ = on_store(store, move |st| st.inbox_close(&session, &task)).await;
    });
    InboxWatch(stop)
  }

  /// `sendMessage` for a session on which this manager runs no warm task: left in the store for
  /// the manager that does, and answered once it has steered it (or could not: the task was
  /// ending). No such task anywhere: `INVALID_ARGUMENT`, as before.
  pub(crate) async fn forward_message(&self, session_id: &str, prompt: &str) -> Result<()> {
    let (sid, text) = (session_id.to_owned(), prompt.to_owned());
    let Some(id) = self.point(move |s| s.inbox_send(&sid, &text)).await? else {
      return Err(no_task_running(session_id));
    };
    let deadline = Instant::now() + RECEIPT_LIMIT;
    loop {
      tokio::time::sleep(RECEIPT_POLL).await;
      if Instant::now() >= deadline {
        // Too late now: refused unless it was steered meanwhile.
        self.record(move |s| s.inbox_mark(id, false)).await?;
      }
      match self.record(move |s| s.inbox_receipt(id)).await? {
        Receipt::Steered => return Ok(()),
        Receipt::Refused => return Err(no_task_running(session_id)),
        Receipt::Waiting => {}
      }
    }
  }

  /// Answers a permission request of a task on the user's session, wherever the task runs: one
  /// waiting in this manager directly, else through its row in the store (written once, while
  /// unanswered; the manager running the task reads it within [`POLL`]).
  /// `PERMISSION_REQUEST_NOT_FOUND` when no such request is pending; another user's session is
  /// `SESSION_NOT_FOUND`, as everywhere.
  pub async fn respond_to_permission(&self, r: PermissionResponse) -> Result<()> {
    self.check_open()?;
    let answer = r.answer()?;
    let session = self.get_session(&r.session_id, &r.user_id).await?;
    let key = (session.id, r.request_id.clone());
    if self.waiting.settle(&key, answer.clone())? {
      return Ok(());
    }
    let (text, (sid, rid)) = (answer.to_string(), key);
    if self.point(move |s| s.inbox_answer(&sid, &rid, &text)).await? {
      return Ok(());
    }
    Err(Error::new(
      ErrorCode::PermissionRequestNotFound,
      format!("no permission request {} is pending in session {}", r.request_id, r.session_id),
    ))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_users_answer_may_edit_content_but_not_what_was_asked_about() {
    let bash = json!({ "command": "mkdir d", "description": "make it" });
    assert!(user_edit_allowed(&bash, &json!({ "behavior": "allow" })).is_ok());
    assert!(
      user_edit_allowed(&bash, &json!({ "behavior": "allow", "updatedInput": { "command": "mkdir d", "description": "other" } })).is_ok()
    );
    let e = user_edit_allowed(&bash, &json!({ "behavior": "allow", "updatedInput": { "command": "touch x", "description": "make it" } }));
    assert!(e.unwrap_err().message.contains("\"command\""));
    // Dropping or adding a guarded field is a change too.
    assert!(user_edit_allowed(&bash, &json!({ "behavior": "allow", "updatedInput": { "description": "make it" } })).is_err());
    let sneaky = json!({ "behavior": "allow", "updatedInput": { "command": "mkdir d", "dangerouslyDisableSandbox": true } });
    assert!(user_edit_allowed(&bash, &sneaky).is_err());
    let write = json!({ "file_path": "/w/a.txt", "content": "x" });
    assert!(user_edit_allowed(&write, &json!({ "behavior": "allow", "updatedInput": { "file_path": "/w/a.txt", "content": "y" } })).is_ok());
    assert!(
      user_edit_allowed(&write, &json!({ "behavior": "allow", "updatedInput": { "file_path": "/etc/a.txt", "content": "x" } })).is_err()
    );
  }
}
