//! The queue and lease policy of a run, with a fake executor in place of the CLI: a real manager
//! over a SQLite store in a temporary folder.

use crate::store::Blocking as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Executed, Executor, Job, Manager, RunOptions, Tail};
use crate::cli::stream::ResultLine;
use crate::cli::{CancelToken, CliArgs, RunOutcome, RunSpec};
use crate::sessions::{Options, TaskResult, Wait};
use crate::store::{Begin, Owner, Session, TaskStart};

/// Stands in for the CLI: tells when it starts, waits for `answer` before its result (the task is
/// running), and for `exit` after it (the CLI is exiting; `None`: it is gone at its result).
#[derive(Default)]
struct Fake {
  started: Option<oneshot::Sender<String>>,
  answer: Option<oneshot::Receiver<()>>,
  exit: Option<oneshot::Receiver<()>>,
  /// Takes the lease from the task while it runs, as another node would.
  steal_lease: bool,
}

impl Executor for Fake {
  fn execute<'a>(self: Box<Self>, m: &'a Manager, job: Job<'a>) -> Pin<Box<dyn Future<Output = Executed> + Send + 'a>> {
    Box::pin(async move {
      let Fake { started, answer, exit, steal_lease } = *self;
      if let Some(s) = started {
        let _ = s.send(job.task_id.to_owned());
      }
      if steal_lease {
        m.store.release_lease(&job.session.id, job.task_id).wait().unwrap();
        // The lease clock stops the run (its cancel token) once a renewal is refused.
        job.cancel.cancelled().await;
        let mut out = RunOutcome::empty(None);
        out.reason = crate::cli::EndReason::Aborted;
        return Ok((out, None));
      }
      if let Some(a) = answer {
        let _ = a.await;
      }
      let mut out = RunOutcome::empty(Some(1));
      out.session_id = Some(job.session.id.clone());
      out.result = Some(ResultLine { subtype: "success".into(), result: Some("done".into()), num_turns: Some(1), ..Default::default() });
      let permit = job.permit;
      let tail: Option<Tail> = exit.map(|exit| -> Tail {
        Box::pin(async move {
          let _ = exit.await;
          drop(permit);
        })
      });
      Ok((out, tail))
    })
  }
}

struct Fixture {
  m: Arc<Manager>,
  _dir: tempfile::TempDir,
}

fn manager(tweak: impl FnOnce(&mut Options)) -> Fixture {
  let dir = tempfile::tempdir().unwrap();
  let mut o = Options {
    state_directory: Some(dir.path().join("state").to_string_lossy().into_owned()),
    workspace_root: Some(dir.path().join("ws").to_string_lossy().into_owned()),
    isolate_tenants: Some(super::super::Isolation::None),
    sandbox: Some(super::super::SandboxMode::None),
    ..Default::default()
  };
  tweak(&mut o);
  Fixture { m: Arc::new(Manager::open(o).unwrap()), _dir: dir }
}

async fn session(m: &Manager) -> Session {
  let new = m.new_session("p", "u", None, None, None);
  m.store_call(Wait::Briefly, async move |s| s.create_session(&new).await).await.unwrap()
}

/// The fake never starts it.
fn spec() -> RunSpec {
  RunSpec::probe("/nonexistent/claude".into(), &std::env::temp_dir())
}

fn opts(queue_timeout_ms: Option<u64>) -> RunOptions {
  RunOptions {
    kind: super::super::TaskKind::Task,
    cli: CliArgs::default(),
    include_partials: false,
    threshold: 80.0,
    trigger: None,
    queue_timeout: queue_timeout_ms.map(Duration::from_millis),
    can_use_tool: None,
    create: None,
  }
}

/// Runs `fake` on `session` in the background.
fn spawn_run(
  m: &Arc<Manager>,
  session: &Session,
  fake: Fake,
  queue_timeout_ms: Option<u64>,
  cancel: CancelToken,
) -> tokio::task::JoinHandle<crate::error::Result<TaskResult>> {
  let (m, session) = (m.clone(), session.clone());
  tokio::spawn(async move { m.run_with(Box::new(fake), &session, spec(), None, cancel, opts(queue_timeout_ms)).await })
}

fn code(r: &TaskResult) -> Option<&str> {
  r.error.as_ref().map(|e| e.code.as_str())
}

async fn statuses(m: &Manager, session_id: &str) -> Vec<String> {
  let sid = session_id.to_owned();
  m.store_call(Wait::Briefly, async move |s| s.list_tasks(&sid).await).await.unwrap().into_iter().map(|t| t.status).collect()
}

/// Whether another owner could take the session's lease now.
async fn lease_free(m: &Manager, session_id: &str) -> bool {
  let sid = session_id.to_owned();
  m.store_call(Wait::Briefly, async move |s| {
    let owner = Owner { id: "probe".into(), pid: std::process::id() };
    let start =
      TaskStart { task_id: "probe", kind: "task", model: "m", owner: &owner, ttl: Duration::from_secs(30), max_running: None, after: None };
    let began = s.begin_task(&sid, &start).await?;
    if matches!(began, Begin::Started) {
      s.release_lease(&sid, "probe").await?;
    }
    Ok(matches!(began, Begin::Started))
  })
  .await
  .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_settles_at_its_result_and_holds_the_session_until_its_cli_exits() {
  let f = manager(|_| {});
  let s = session(&f.m).await;
  let (exit_tx, exit) = oneshot::channel();
  let res = f.m.run_with(Box::new(Fake { exit: Some(exit), ..Default::default() }), &s, spec(), None, CancelToken::new(), opts(None));
  let res = res.await.unwrap();
  assert!(res.success, "{:?}", res.error);
  assert_eq!(statuses(&f.m, &s.id).await, ["succeeded"]);
  assert_eq!(f.m.running.lock().unwrap().len(), 1, "running until the CLI has exited");
  assert!(f.m.finishing.lock().unwrap().contains_key(&s.id), "marked as finishing");
  assert_eq!(f.m.slots.available_permits(), f.m.cfg.max_concurrent_tasks - 1, "the slot is the exiting CLI's");

  // A run queued behind the exiting CLI waits past its queue timeout (the caller saw no task
  // running), and starts once the CLI is gone.
  let (started_tx, started) = oneshot::channel();
  let next = spawn_run(&f.m, &s, Fake { started: Some(started_tx), ..Default::default() }, Some(1), CancelToken::new());
  tokio::time::sleep(Duration::from_millis(100)).await;
  assert!(!next.is_finished(), "it waits for the exiting CLI");
  exit_tx.send(()).unwrap();
  started.await.expect("started once the CLI exited");
  let second = next.await.unwrap().unwrap();
  assert!(second.success, "{:?}", second.error);
  assert_eq!(statuses(&f.m, &s.id).await, ["succeeded", "succeeded"]);
  // The first run stays among the running tasks until its lease's release is sent, beside the
  // second run, which took that lease over.
  for _ in 0..100 {
    if f.m.running.lock().unwrap().is_empty() {
      break;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
  }
  assert!(f.m.running.lock().unwrap().is_empty());
  assert!(f.m.finishing.lock().unwrap().is_empty());
  assert_eq!(f.m.slots.available_permits(), f.m.cfg.max_concurrent_tasks, "every slot given back");
  assert!(lease_free(&f.m, &s.id).await, "the lease is released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_behind_a_running_task_times_out_busy_and_one_cancelled_in_line_is_aborted() {
  let f = manager(|_| {});
  let s = session(&f.m).await;
  let (started_tx, started) = oneshot::channel();
  let (answer_tx, answer) = oneshot::channel();
  let first = spawn_run(&f.m, &s, Fake { started: Some(started_tx), answer: Some(answer), ..Default::default() }, None, CancelToken::new());
  started.await.unwrap();

  let busy = f.m.run_with(Box::new(Fake::default()), &s, spec(), None, CancelToken::new(), opts(Some(50))).await;
  let err = busy.expect_err("busy");
  assert_eq!(err.code.as_str(), "SESSION_BUSY", "{}", err.message);
  assert!(err.message.contains("running another task"), "{}", err.message);

  let cancel = CancelToken::new();
  let queued = spawn_run(&f.m, &s, Fake::default(), Some(60_000), cancel.clone());
  tokio::time::sleep(Duration::from_millis(50)).await;
  cancel.cancel();
  let aborted = queued.await.unwrap().unwrap();
  assert_eq!(code(&aborted), Some("ABORTED"));
  assert!(!aborted.success);

  answer_tx.send(()).unwrap();
  assert!(first.await.unwrap().unwrap().success);
  // The busy and the aborted run never started: no task row of theirs.
  assert_eq!(statuses(&f.m, &s.id).await, ["succeeded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_free_slot_a_run_on_another_session_times_out() {
  let f = manager(|o| o.max_concurrent_tasks = Some(1));
  let (a, b) = (session(&f.m).await, session(&f.m).await);
  let (started_tx, started) = oneshot::channel();
  let (answer_tx, answer) = oneshot::channel();
  let first = spawn_run(&f.m, &a, Fake { started: Some(started_tx), answer: Some(answer), ..Default::default() }, None, CancelToken::new());
  started.await.unwrap();
  let err = f.m.run_with(Box::new(Fake::default()), &b, spec(), None, CancelToken::new(), opts(Some(50))).await.expect_err("no slot");
  assert_eq!(err.code.as_str(), "SESSION_BUSY");
  assert!(err.message.contains("maxConcurrentTasks 1"), "{}", err.message);
  answer_tx.send(()).unwrap();
  assert!(first.await.unwrap().unwrap().success);
  // The slot is free again: the other session runs.
  let res = f.m.run_with(Box::new(Fake::default()), &b, spec(), None, CancelToken::new(), opts(Some(50))).await.unwrap();
  assert!(res.success);
  assert_eq!(statuses(&f.m, &b.id).await, ["succeeded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_by_another_process_keeps_the_run_out() {
  let f = manager(|_| {});
  let s = session(&f.m).await;
  let sid = s.id.clone();
  f.m
    .store_call(Wait::Briefly, async move |st| {
      let owner = Owner { id: "another".into(), pid: std::process::id() };
      let start = TaskStart {
        task_id: "theirs",
        kind: "task",
        model: "m",
        owner: &owner,
        ttl: Duration::from_secs(60),
        max_running: None,
        after: None,
      };
      st.begin_task(&sid, &start).await
    })
    .await
    .unwrap();
  let err = f.m.run_with(Box::new(Fake::default()), &s, spec(), None, CancelToken::new(), opts(Some(150))).await.expect_err("held");
  assert_eq!(err.code.as_str(), "SESSION_BUSY");
  assert!(err.message.contains("running another task"), "{}", err.message);
  assert!(f.m.running.lock().unwrap().is_empty());
  assert_eq!(f.m.slots.available_permits(), f.m.cfg.max_concurrent_tasks, "the slot it took is given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_lease_is_taken_ends_lease_lost() {
  let f = manager(|o| o.lease_ttl = Some(Duration::from_millis(super::super::MIN_LEASE_TTL_MS)));
  let s = session(&f.m).await;
  let fake = Fake { steal_lease: true, ..Default::default() };
  let res = f.m.run_with(Box::new(fake), &s, spec(), None, CancelToken::new(), opts(None)).await.unwrap();
  assert_eq!(code(&res), Some("LEASE_LOST"));
  assert!(f.m.running.lock().unwrap().is_empty());
  assert_eq!(f.m.slots.available_permits(), f.m.cfg.max_concurrent_tasks);
  // No other task took the session meanwhile: the row records the loss.
  assert_eq!(statuses(&f.m, &s.id).await, ["interrupted"]);
}
