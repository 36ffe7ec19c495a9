//! `redisUrl`: a task's live events are also published on Redis (pub/sub), so followers on other
//! nodes get them without reading the database. The store's log stays the source of truth: an
//! event is published only once it is in the log, with its number, and a follower takes from
//! Redis only the events right after the last one it has; anything else (a gap, a lag, Redis
//! down, a doorbell ringing for events Redis did not bring within [`GRACE`]) sends it to the log,
//! so an outage of Redis costs latency, never an event.
//!
//! - **Publishing** (the task's writer, `events.rs`): one message per appended batch on the
//!   session's channel, through a bounded queue and Redis's reconnecting connection manager; a
//!   message that cannot be queued or sent is dropped (followers read it from the log).
//! - **Subscribing**: one pub/sub connection per manager, subscribed to the channels of the
//!   sessions it follows, re-made after a drop (backing off up to 2 s). While it is down the
//!   followers use the database's doorbell alone; when it is up again they read the log once.
//! - The first failure of an outage prints one warning; recovering prints nothing.
//!
//! Channels are `csm:<store>:<session id>`, `<store>` naming the database (PostgreSQL: its name
//! and schema; SQLite: the file), so managers sharing a Redis but not a store never mix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::{Error, Result};
use crate::store::EventRow;

/// How long a follower waits for Redis to bring events the database's doorbell rang for, before
/// it reads them from the log.
pub(crate) const GRACE: Duration = Duration::from_millis(50);
/// How many messages may wait to be published; more are dropped (the log has them).
const QUEUE: usize = 4096;
/// How many batches a follower may lag behind on its channel before it reads the log instead.
const FOLLOWER_LAG: usize = 256;

/// A batch of a session's events, as published.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
  pub session_id: String,
  pub rows: Vec<EventRow>,
}

impl Batch {
  fn encode(&self) -> String {
    let rows: Vec<Value> = self.rows.iter().map(|r| json!([r.seq, r.task_id, r.at, r.body])).collect();
    json!({ "s": self.session_id, "r": rows }).to_string()
  }

  fn decode(payload: &[u8]) -> Option<Batch> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let session_id = v.get("s")?.as_str()?.to_owned();
    let rows = v
      .get("r")?
      .as_array()?
      .iter()
      .map(|r| {
        Some(EventRow {
          seq: r.get(0)?.as_i64()?,
          task_id: r.get(1)?.as_str()?.to_owned(),
          at: r.get(2)?.as_i64()?,
          body: r.get(3)?.as_str()?.to_owned(),
        })
      })
      .collect::<Option<Vec<_>>>()?;
    Some(Batch { session_id, rows })
  }
}

/// The followed channels: the batches heard on each, and how many followers it has.
type Channels = Arc<Mutex<HashMap<String, (broadcast::Sender<Arc<Batch>>, usize)>>>;

enum Cmd {
  Subscribe(String),
  Unsubscribe(String),
}

/// The manager's Redis side (see the module's comment). Its connections start with the first use.
pub(crate) struct Fanout {
  client: redis::Client,
  prefix: String,
  started: OnceLock<Started>,
  /// The followed sessions' channels here: the batches heard, and how many followers.
  channels: Channels,
  /// Whether the subscribing connection is up (subscribed to every followed channel).
  up: watch::Sender<bool>,
  /// An outage was reported (reset once Redis answers again).
  warned: Arc<AtomicBool>,
}

struct Started {
  publish: mpsc::Sender<(String, String)>,
  commands: mpsc::UnboundedSender<Cmd>,
}

/// A `redisUrl` checked: a `redis://`, `rediss://` (TLS) or `redis+unix://` URL the client
/// accepts. The message never repeats the URL (it may hold a password).
pub fn check_url(url: &str) -> Result<()> {
  let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"].iter().any(|s| url.starts_with(s));
  if !scheme_ok {
    return Err(Error::invalid("redisUrl must be a redis://, rediss:// or redis+unix:// URL"));
  }
  redis::Client::open(url)
    .map(|_| ())
    .map_err(|e| Error::invalid(format!("redisUrl is not a Redis URL the client accepts ({:?})", e.kind())))
}

/// What to tell about a Redis failure: its kind and the server's or the socket's words, never the
/// URL.
fn describe(e: &redis::RedisError) -> String {
  format!("{:?}: {}", e.kind(), e.detail().unwrap_or(""))
}

impl Fanout {
  /// The fanout of the store named `store` (see [`crate::store::Store::shared_name`]) through the
  /// Redis at `url` (checked by [`check_url`]). Nothing connects yet.
  pub(crate) fn new(url: &str, store: &str) -> Result<Fanout> {
    check_url(url)?;
    let client = redis::Client::open(url).map_err(|e| Error::invalid(format!("redisUrl: {:?}", e.kind())))?;
    Ok(Fanout {
      client,
      prefix: format!("csm:{store}:"),
      started: OnceLock::new(),
      channels: Default::default(),
      up: watch::channel(false).0,
      warned: Default::default(),
    })
  }

  fn channel(&self, session_id: &str) -> String {
    format!("{}{session_id}", self.prefix)
  }

  /// Prints the outage warning once.
  fn warn(warned: &AtomicBool, what: &str) {
    if !warned.swap(true, Ordering::SeqCst) {
      eprintln!("claude-session-manager: Redis (redisUrl) is unavailable ({what}); live events go through the database until it is back");
    }
  }

  fn started(&self) -> &Started {
    self.started.get_or_init(|| {
      let (ptx, prx) = mpsc::channel(QUEUE);
      let (ctx, crx) = mpsc::unbounded_channel();
      tokio::spawn(publish_loop(self.client.clone(), prx, self.warned.clone()));
      tokio::spawn(subscribe_loop(self.client.clone(), crx, self.channels.clone(), self.up.clone(), self.warned.clone()));
      Started { publish: ptx, commands: ctx }
    })
  }

  /// Publishes a batch of a session's events just appended to the log (never waits).
  pub(crate) fn publish(&self, batch: &Batch) {
    if self.started().publish.try_send((self.channel(&batch.session_id), batch.encode())).is_err() {
      Self::warn(&self.warned, "the publishing queue is full");
    }
  }

  /// Follows a session's channel until the returned value drops.
  pub(crate) fn follow(self: &Arc<Self>, session_id: &str) -> Following {
    let channel = self.channel(session_id);
    let started = self.started();
    let rx = {
      let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
      let entry = map.entry(channel.clone()).or_insert_with(|| (broadcast::channel(FOLLOWER_LAG).0, 0));
      entry.1 += 1;
      if entry.1 == 1 {
        let _ = started.commands.send(Cmd::Subscribe(channel.clone()));
      }
      entry.0.subscribe()
    };
    Following { fanout: self.clone(), channel, rx, up: self.up.subscribe() }
  }
}

/// A follower's subscription to a session's channel (see [`Fanout::follow`]).
pub(crate) struct Following {
  fanout: Arc<Fanout>,
  channel: String,
  /// The batches heard on the channel.
  pub rx: broadcast::Receiver<Arc<Batch>>,
  /// Whether the subscribing connection is up.
  pub up: watch::Receiver<bool>,
}

impl Drop for Following {
  fn drop(&mut self) {
    let mut map = self.fanout.channels.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(entry) = map.get_mut(&self.channel) {
      entry.1 -= 1;
      if entry.1 == 0 {
        map.remove(&self.channel);
        if let Some(s) = self.fanout.started.get() {
          let _ = s.commands.send(Cmd::Unsubscribe(self.channel.clone()));
        }
      }
    }
  }
}

/// Sends the queued messages in order through the reconnecting connection manager.
async fn publish_loop(client: redis::Client, mut rx: mpsc::Receiver<(String, String)>, warned: Arc<AtomicBool>) {
  let config = redis::aio::ConnectionManagerConfig::new()
    .set_connection_timeout(Some(Duration::from_secs(2)))
    .set_response_timeout(Some(Duration::from_secs(2)))
    .set_number_of_retries(1)
    .set_max_delay(Duration::from_secs(2));
  let mut conn: Option<redis::aio::ConnectionManager> = None;
  while let Some((channel, payload)) = rx.recv().await {
    if conn.is_none() {
      match redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone()).await {
        Ok(c) => conn = Some(c),
        Err(e) => {
          // Redis is down: what is queued now is dropped (followers read the log).
          Fanout::warn(&warned, &describe(&e));
          while rx.try_recv().is_ok() {}
          continue;
        }
      }
    }
    let Some(c) = conn.as_mut() else { continue };
    let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH").arg(&channel).arg(&payload).query_async(c).await;
    if let Err(e) = sent {
      // Made anew for the next message (a manager whose reconnection gave up stays failed).
      Fanout::warn(&warned, &describe(&e));
      conn = None;
    }
  }
}

/// The subscribing connection: made, subscribed to every followed channel, read until it drops,
/// made again.
async fn subscribe_loop(
  client: redis::Client,
  mut commands: mpsc::UnboundedReceiver<Cmd>,
  channels: Channels,
  up: watch::Sender<bool>,
  warned: Arc<AtomicBool>,
) {
  use futures_util::StreamExt;
  let mut backoff = Duration::from_millis(50);
  let limit = Duration::from_secs(2);
  loop {
    let made = tokio::time::timeout(limit, client.get_async_pubsub()).await;
    let (mut sink, mut stream) = match made {
      Ok(Ok(p)) => p.split(),
      failed => {
        let why = match failed {
          Ok(Err(e)) => describe(&e),
          _ => "no answer within 2 s".into(),
        };
        Fanout::warn(&warned, &why);
        if !drain(&mut commands) {
          return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        continue;
      }
    };
    // Commands queued while down are replaced by the whole list of followed channels.
    if !drain(&mut commands) {
      return;
    }
    let followed: Vec<String> = channels.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
    let mut ok = true;
    for ch in followed {
      if !answered(&warned, tokio::time::timeout(limit, sink.subscribe(&ch)).await) {
        ok = false;
        break;
      }
    }
    if ok {
      backoff = Duration::from_millis(50);
      warned.store(false, Ordering::SeqCst);
      up.send_replace(true);
      // A connection that went silent (a server stopped without closing it) is found by a ping.
      let mut keepalive = tokio::time::interval(limit);
      loop {
        tokio::select! {
          _ = keepalive.tick() => {
            if !answered(&warned, tokio::time::timeout(limit, sink.ping::<redis::Value>()).await) {
              break;
            }
          }
          m = stream.next() => {
            let Some(m) = m else {
              Fanout::warn(&warned, "the subscribing connection closed");
              break;
            };
            let Some(batch) = Batch::decode(m.get_payload_bytes()) else { continue };
            let tx = channels.lock().unwrap_or_else(|p| p.into_inner()).get(m.get_channel_name()).map(|(tx, _)| tx.clone());
            if let Some(tx) = tx {
              let _ = tx.send(Arc::new(batch));
            }
          }
          c = commands.recv() => {
            let sent = match c {
              Some(Cmd::Subscribe(ch)) => tokio::time::timeout(limit, sink.subscribe(&ch)).await,
              Some(Cmd::Unsubscribe(ch)) => tokio::time::timeout(limit, sink.unsubscribe(&ch)).await,
              None => return,
            };
            if !answered(&warned, sent) {
              break;
            }
          }
        }
      }
    }
    up.send_replace(false);
    tokio::time::sleep(backoff).await;
    backoff = (backoff * 2).min(Duration::from_secs(2));
  }
}

/// Whether a command on the subscribing connection was answered in time (else the outage
/// warning).
fn answered<T>(warned: &AtomicBool, r: std::result::Result<redis::RedisResult<T>, tokio::time::error::Elapsed>) -> bool {
  match r {
    Ok(Ok(_)) => true,
    Ok(Err(e)) => {
      Fanout::warn(warned, &describe(&e));
      false
    }
    Err(_) => {
      Fanout::warn(warned, "no answer within 2 s");
      false
    }
  }
}

/// Takes every queued command; false when the fanout is gone.
fn drain(commands: &mut mpsc::UnboundedReceiver<Cmd>) -> bool {
  loop {
    match commands.try_recv() {
      Ok(_) => {}
      Err(mpsc::error::TryRecvError::Empty) => return true,
      Err(mpsc::error::TryRecvError::Disconnected) => return false,
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_batch_reads_back_and_junk_does_not() {
    let b = Batch {
      session_id: "s1".into(),
      rows: vec![
        EventRow { seq: 7, task_id: "t".into(), at: 12, body: r#"{"type":"x"}"#.into() },
        EventRow { seq: 8, task_id: "t".into(), at: 13, body: "{}".into() },
      ],
    };
    assert_eq!(Batch::decode(b.encode().as_bytes()), Some(b));
    assert_eq!(Batch::decode(b"not json"), None);
    assert_eq!(Batch::decode(br#"{"s":"s1","r":[[1,"t",2]]}"#), None, "a row without a body");
    assert_eq!(Batch::decode(br#"{"r":[]}"#), None, "no session");
  }

  #[test]
  fn only_redis_urls_are_taken_and_the_message_never_repeats_one() {
    for ok in ["redis://127.0.0.1:6379", "rediss://:secret@cache.example:6380/2", "redis://user:pw@h/0", "redis+unix:///tmp/r.sock"] {
      assert!(check_url(ok).is_ok(), "{ok}");
    }
    for bad in ["", "http://h", "postgres://u:secret@h/db", "redis//h", "redis://:secret@h:notaport"] {
      let e = check_url(bad).expect_err(bad);
      assert_eq!(e.code, crate::error::ErrorCode::InvalidArgument);
      assert!(!e.message.contains("secret"), "{}", e.message);
    }
  }

  /// The plumbing against a real Redis (`CSM_TEST_REDIS_URL`): a follower gets what is published
  /// on its session's channel, in order, and nothing of another session's.
  #[tokio::test]
  async fn a_follower_gets_its_session_s_batches_through_redis() {
    let Ok(url) = std::env::var("CSM_TEST_REDIS_URL") else {
      eprintln!("skipped: CSM_TEST_REDIS_URL is not set (no Redis to test against)");
      return;
    };
    let store = format!("test-{}", uuid::Uuid::new_v4());
    let (a, b) = (Arc::new(Fanout::new(&url, &store).unwrap()), Arc::new(Fanout::new(&url, &store).unwrap()));
    let mut f = b.follow("s1");
    let _other = b.follow("s2");
    // Subscribed once the connection says it is up.
    tokio::time::timeout(Duration::from_secs(30), f.up.wait_for(|u| *u)).await.expect("Redis reachable").unwrap();
    // The subscription itself may lag the flag by a round trip: publish until the first arrives.
    let row = |seq| EventRow { seq, task_id: "t".into(), at: seq, body: format!("{{\"n\":{seq}}}") };
    let first = tokio::time::timeout(Duration::from_secs(30), async {
      loop {
        a.publish(&Batch { session_id: "s2".into(), rows: vec![row(100)] });
        a.publish(&Batch { session_id: "s1".into(), rows: vec![row(1)] });
        if let Ok(Ok(b)) = tokio::time::timeout(Duration::from_millis(200), f.rx.recv()).await {
          return b;
        }
      }
    })
    .await
    .expect("a batch through Redis");
    assert_eq!(first.session_id, "s1");
    while f.rx.try_recv().is_ok() {}
    for seq in 2..=20 {
      a.publish(&Batch { session_id: "s1".into(), rows: vec![row(seq)] });
    }
    let mut seen = vec![];
    while seen.len() < 19 {
      let b = tokio::time::timeout(Duration::from_secs(30), f.rx.recv()).await.expect("every batch").unwrap();
      assert_eq!(b.session_id, "s1", "only its session's channel");
      seen.extend(b.rows.iter().map(|r| r.seq).filter(|s| *s >= 2));
    }
    assert_eq!(seen, (2..=20).collect::<Vec<_>>(), "in order");
  }
}
