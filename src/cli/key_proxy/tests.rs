//! Tests of the parent module.
use super::*;
use crate::store::Blocking as _;

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use tokio::sync::{mpsc, Notify};

const REAL_KEY: &str = "sk-real-key-never-shown";
const REAL_AUTH: &str = "real-oauth-token";
const SSE_CHUNKS: [&str; 3] =
  ["event: message_start\ndata: {\"n\":1}\n\n", "event: delta\ndata: {\"n\":2}\n\n", "event: message_stop\ndata: {}\n\n"];

type TestBody = BoxBody<Bytes, Infallible>;
type TestClient = Client<HttpConnector, TestBody>;

/// Fails the test instead of hanging when something that must happen does not.
async fn within<T>(f: impl Future<Output = T>) -> T {
  tokio::time::timeout(Duration::from_secs(10), f).await.expect("timed out waiting")
}

struct Seen {
  method: Method,
  target: String,
  headers: HeaderMap,
}

/// A plain-HTTP upstream that records what it got. `?mode=sse` streams `SSE_CHUNKS`: the first right away, the rest
/// only after `release_sse` is notified. `?mode=echo` reports each request-body chunk on `req_chunks` and echoes the
/// body. Anything else answers a small JSON body.
struct FakeUpstream {
  addr: SocketAddr,
  seen: Mutex<Vec<Seen>>,
  hits: AtomicUsize,
  release_sse: Notify,
  last_sse_sent: AtomicBool,
  req_chunks: mpsc::UnboundedSender<Bytes>,
}

impl FakeUpstream {
  async fn start() -> (Arc<FakeUpstream>, mpsc::UnboundedReceiver<Bytes>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let fake = Arc::new(FakeUpstream {
      addr: listener.local_addr().unwrap(),
      seen: Mutex::default(),
      hits: AtomicUsize::new(0),
      release_sse: Notify::new(),
      last_sse_sent: AtomicBool::new(false),
      req_chunks: tx,
    });
    let server = fake.clone();
    tokio::spawn(async move {
      loop {
        let (stream, _) = listener.accept().await.unwrap();
        let fake = server.clone();
        tokio::spawn(async move {
          let svc = service_fn(move |req| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(req).await) }
          });
          let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
      }
    });
    (fake, rx)
  }

  fn url(&self) -> String {
    format!("http://{}", self.addr)
  }

  async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<TestBody> {
    self.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, mut body) = req.into_parts();
    let target = parts.uri.path_and_query().unwrap().to_string();
    self.seen.lock().unwrap().push(Seen { method: parts.method, target: target.clone(), headers: parts.headers });
    let mode = parts.uri.query().unwrap_or("");
    if mode.contains("mode=sse") {
      let (mut tx, rx) = Channel::<Bytes, Infallible>::new(1);
      let fake = self.clone();
      tokio::spawn(async move {
        tx.send_data(Bytes::from_static(SSE_CHUNKS[0].as_bytes())).await.unwrap();
        fake.release_sse.notified().await;
        for (i, chunk) in SSE_CHUNKS.iter().enumerate().skip(1) {
          tokio::time::sleep(Duration::from_millis(10)).await;
          if i == SSE_CHUNKS.len() - 1 {
            fake.last_sse_sent.store(true, Ordering::SeqCst);
          }
          if tx.send_data(Bytes::from_static(chunk.as_bytes())).await.is_err() {
            return;
          }
        }
      });
      let mut resp = Response::new(rx.boxed());
      resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
      resp
    } else if mode.contains("mode=echo") {
      let mut all = Vec::new();
      while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
          all.extend_from_slice(&data);
          let _ = self.req_chunks.send(data);
        }
      }
      Response::new(Full::new(Bytes::from(all)).boxed())
    } else {
      let mut resp = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")).boxed());
      resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
      resp
    }
  }

  fn last_seen(&self) -> Seen {
    self.seen.lock().unwrap().pop().expect("upstream got no request")
  }
}

fn client() -> TestClient {
  Client::builder(TokioExecutor::new()).build_http()
}

/// A `POST` to the proxy (the only method it forwards).
fn post(proxy: &KeyProxy, path_and_query: &str) -> hyper::http::request::Builder {
  Request::post(format!("{}{path_and_query}", proxy.base_url()))
}

fn empty() -> TestBody {
  Empty::new().boxed()
}

async fn body_string(resp: Response<Incoming>) -> String {
  String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

async fn proxy_for(upstream: &FakeUpstream) -> KeyProxy {
  KeyProxy::start(Upstream { base_url: upstream.url(), api_key: Some(REAL_KEY.into()), auth_token: None, ..Default::default() })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_is_swapped_for_real_key_and_headers_are_cleaned() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_for(&upstream).await;
  let token = proxy.issue();
  assert_eq!(token.as_str().len(), 64);
  let req = Request::post(format!("{}/v1/messages?beta=true", proxy.base_url()))
    .header("x-api-key", token.as_str())
    .header("anthropic-version", "2023-06-01")
    .header("content-type", "application/json")
    .header("connection", "x-drop-me")
    .header("x-drop-me", "1")
    .header("proxy-authorization", "Basic Zm9vOmJhcg==")
    .body(Full::new(Bytes::from_static(b"{\"model\":\"m\"}")).boxed())
    .unwrap();
  let resp = within(client().request(req)).await.unwrap();
  assert_eq!(resp.status(), StatusCode::OK);
  assert_eq!(body_string(resp).await, "{\"ok\":true}");

  let seen = upstream.last_seen();
  assert_eq!(seen.method, Method::POST);
  assert_eq!(seen.target, "/v1/messages?beta=true");
  assert_eq!(seen.headers["x-api-key"], REAL_KEY);
  assert!(seen.headers.get("authorization").is_none());
  assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
  assert_eq!(seen.headers["content-type"], "application/json");
  assert_eq!(seen.headers["host"], upstream.addr.to_string().as_str());
  assert!(seen.headers.get("x-drop-me").is_none());
  assert!(seen.headers.get("proxy-authorization").is_none());
  for (name, value) in &seen.headers {
    assert!(!value.as_bytes().windows(64).any(|w| w == token.as_str().as_bytes()), "task token leaked upstream in {name}");
  }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_task_token_is_accepted_and_auth_token_forwarded() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = KeyProxy::start(Upstream {
    base_url: upstream.url(),
    api_key: Some(REAL_KEY.into()),
    auth_token: Some(REAL_AUTH.into()),
    ..Default::default()
  })
  .await
  .unwrap();
  let token = proxy.issue();
  let req = post(&proxy, "/v1/messages").header("authorization", format!("Bearer {}", token.as_str())).body(empty()).unwrap();
  let resp = within(client().request(req)).await.unwrap();
  assert_eq!(resp.status(), StatusCode::OK);
  let seen = upstream.last_seen();
  assert_eq!(seen.headers["authorization"], format!("Bearer {REAL_AUTH}").as_str());
  assert!(seen.headers.get("x-api-key").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_response_streams_chunk_by_chunk() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_for(&upstream).await;
  let token = proxy.issue();
  let req = post(&proxy, "/v1/messages?mode=sse").header("x-api-key", token.as_str()).body(empty()).unwrap();
  let resp = within(client().request(req)).await.unwrap();
  assert_eq!(resp.status(), StatusCode::OK);
  assert_eq!(resp.headers()["content-type"], "text/event-stream");
  let mut body = resp.into_body();

  // The first event must come through while the upstream is still holding back the rest.
  let mut got = Vec::new();
  while got.len() < SSE_CHUNKS[0].len() {
    let frame = within(body.frame()).await.expect("body ended early").unwrap();
    got.extend_from_slice(&frame.into_data().unwrap());
  }
  assert_eq!(got, SSE_CHUNKS[0].as_bytes());
  assert!(!upstream.last_sse_sent.load(Ordering::SeqCst), "the last chunk must not have been sent yet");

  upstream.release_sse.notify_one();
  let rest = within(body.collect()).await.unwrap().to_bytes();
  assert!(upstream.last_sse_sent.load(Ordering::SeqCst));
  assert_eq!(rest, SSE_CHUNKS[1..].concat().as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_upward() {
  let (upstream, mut req_chunks) = FakeUpstream::start().await;
  let proxy = proxy_for(&upstream).await;
  let token = proxy.issue();
  let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
  let req =
    Request::post(format!("{}/v1/messages?mode=echo", proxy.base_url())).header("x-api-key", token.as_str()).body(body.boxed()).unwrap();
  let pending = tokio::spawn(client().request(req));

  tx.send_data(Bytes::from_static(b"part-one;")).await.unwrap();
  // The upstream must see the first part before the second one even exists.
  let mut got = Vec::new();
  while got.len() < b"part-one;".len() {
    got.extend_from_slice(&within(req_chunks.recv()).await.unwrap());
  }
  assert_eq!(got, b"part-one;");
  tx.send_data(Bytes::from_static(b"part-two")).await.unwrap();
  drop(tx);

  let resp = within(pending).await.unwrap().unwrap();
  assert_eq!(resp.status(), StatusCode::OK);
  assert_eq!(body_string(resp).await, "part-one;part-two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_token_is_rejected_without_calling_upstream() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_for(&upstream).await;
  let _live = proxy.issue();
  let attempts = [
    post(&proxy, "/v1/messages").header("x-api-key", "0".repeat(64)),
    post(&proxy, "/v1/messages").header("authorization", "Bearer nope"),
    post(&proxy, "/v1/messages").header("x-api-key", REAL_KEY),
    post(&proxy, "/v1/messages"),
  ];
  for req in attempts {
    let resp = within(client().request(req.body(empty()).unwrap())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = body_string(resp).await;
    assert!(body.starts_with(r#"{"type":"error","error":{"type":"authentication_error","message":""#), "{body}");
  }
  assert_eq!(upstream.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_token_is_revoked() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_for(&upstream).await;
  let token = proxy.issue();
  let other = proxy.issue();
  let value = token.as_str().to_owned();
  let send = |v: &str| client().request(post(&proxy, "/v1/messages").header("x-api-key", v).body(empty()).unwrap());

  assert_eq!(within(send(&value)).await.unwrap().status(), StatusCode::OK);
  drop(token);
  assert_eq!(within(send(&value)).await.unwrap().status(), StatusCode::UNAUTHORIZED);
  assert_eq!(within(send(other.as_str())).await.unwrap().status(), StatusCode::OK);
  assert_eq!(upstream.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_token_is_refused_until_resumed_and_streams_in_flight_finish() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_for(&upstream).await;
  let token = proxy.issue();
  assert!(token.is_live());
  let send = |v: &str| client().request(post(&proxy, "/v1/messages").header("x-api-key", v).body(empty()).unwrap());
  // A stream in flight when the token is suspended runs to its end.
  let req = post(&proxy, "/v1/messages?mode=sse").header("x-api-key", token.as_str()).body(empty()).unwrap();
  let mut body = within(client().request(req)).await.unwrap().into_body();
  within(body.frame()).await.unwrap().unwrap();
  token.set_live(false);
  assert!(!token.is_live());
  upstream.release_sse.notify_one();
  assert_eq!(within(body.collect()).await.unwrap().to_bytes(), SSE_CHUNKS[1..].concat().as_bytes());

  let resp = within(send(token.as_str())).await.unwrap();
  assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
  assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);
  let refused = proxy.refused();
  token.set_live(true);
  assert_eq!(within(send(token.as_str())).await.unwrap().status(), StatusCode::OK);
  assert_eq!((upstream.hits.load(Ordering::SeqCst), proxy.refused()), (2, refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_prefix_and_query_are_preserved() {
  let (upstream, _) = FakeUpstream::start().await;
  for base in [format!("{}/prefix", upstream.url()), format!("{}/prefix/", upstream.url())] {
    let proxy =
      KeyProxy::start(Upstream { base_url: base, api_key: Some(REAL_KEY.into()), auth_token: None, ..Default::default() }).await.unwrap();
    let token = proxy.issue();
    let req = post(&proxy, "/v1/messages/count_tokens?beta=true&x=a%20b").header("x-api-key", token.as_str()).body(empty()).unwrap();
    assert_eq!(within(client().request(req)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(upstream.last_seen().target, "/prefix/v1/messages/count_tokens?beta=true&x=a%20b");
  }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_cannot_redirect_to_another_host() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_for(&upstream).await;
  let token = proxy.issue();
  // Written by hand: an absolute-form request line naming some other host.
  let mut stream = TcpStream::connect(proxy.inner.addr).await.unwrap();
  let raw = format!(
    "POST http://evil.example/v1/messages?k=1 HTTP/1.1\r\nhost: evil.example\r\nx-api-key: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    token.as_str()
  );
  tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes()).await.unwrap();
  let mut out = String::new();
  within(tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut out)).await.unwrap();
  assert!(out.starts_with("HTTP/1.1 200"), "{out}");
  let seen = upstream.last_seen();
  assert_eq!(seen.target, "/v1/messages?k=1");
  assert_eq!(seen.headers["host"], upstream.addr.to_string().as_str());
}

/// Sends `raw` (a request written by hand, so that nothing normalises its target) and returns the whole answer.
async fn raw_exchange(addr: SocketAddr, raw: &str) -> String {
  let mut stream = TcpStream::connect(addr).await.unwrap();
  tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes()).await.unwrap();
  let mut out = Vec::new();
  within(tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut out)).await.unwrap();
  String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_model_calls_are_forwarded() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy =
    KeyProxy::start(Upstream { base_url: format!("{}/prefix", upstream.url()), api_key: Some(REAL_KEY.into()), ..Default::default() })
      .await
      .unwrap();
  let token = proxy.issue();
  let refused = [
    ("GET", "/v1/models"),
    ("GET", "/v1/files"),
    ("DELETE", "/v1/files/file_123"),
    ("POST", "/v1/messages/batches"),
    ("GET", "/v1/organizations/api_keys"),
    ("GET", "/v1/messages"),
    ("PUT", "/v1/messages"),
    ("DELETE", "/v1/messages"),
    ("OPTIONS", "/v1/messages"),
    ("POST", "/v1/messages/"),
    ("POST", "/v1/messages/."),
    ("POST", "/v1/messages/count_tokens/.."),
    ("POST", "/v1/messages/../../admin/keys"),
    ("POST", "/../admin/v1/messages"),
    ("POST", "/v1/./messages"),
    ("POST", "/v1/messages/%2e%2e/%2e%2e/admin"),
    ("POST", "/v1/messages%2fcount_tokens"),
    ("POST", "/v1/messages%2Fcount_tokens"),
    ("POST", "/v1/messages%5c..%5cadmin"),
    ("POST", "/v1/%6dessages"),
    ("POST", "//v1/messages"),
    ("POST", "/v1//messages"),
    ("POST", "/V1/MESSAGES"),
    ("POST", "*"),
  ];
  for (i, (method, target)) in refused.iter().enumerate() {
    let raw =
      format!("{method} {target} HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", token.as_str());
    let out = raw_exchange(proxy.inner.addr, &raw).await;
    let status = out.get(9..12).unwrap_or("");
    assert!(matches!(status, "403" | "404" | "400"), "{method} {target}: {out}");
    if status != "400" {
      assert!(out.contains(r#"{"type":"error","error":{"type":""#), "{method} {target}: {out}");
      assert_eq!(proxy.refused(), i as u64 + 1, "{method} {target}");
    }
  }
  // CONNECT is refused too (hyper answers it or the route does), and nothing of any of them went upstream.
  let out = raw_exchange(
    proxy.inner.addr,
    &format!("CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\nx-api-key: {}\r\nconnection: close\r\n\r\n", token.as_str()),
  )
  .await;
  assert!(!out.starts_with("HTTP/1.1 200"), "{out}");
  assert_eq!(upstream.hits.load(Ordering::SeqCst), 0);

  // The two model calls go through, with their query.
  for target in ["/v1/messages?beta=true", "/v1/messages/count_tokens?beta=true"] {
    let req = post(&proxy, target).header("x-api-key", token.as_str()).body(empty()).unwrap();
    assert_eq!(within(client().request(req)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(upstream.last_seen().target, format!("/prefix{target}"));
  }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502() {
  let dead = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap().local_addr().unwrap();
  let proxy = KeyProxy::start(Upstream {
    base_url: format!("http://{dead}"),
    api_key: Some(REAL_KEY.into()),
    auth_token: None,
    ..Default::default()
  })
  .await
  .unwrap();
  let token = proxy.issue();
  let req = post(&proxy, "/v1/messages").header("x-api-key", token.as_str()).body(empty()).unwrap();
  let resp = within(client().request(req)).await.unwrap();
  assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
  let body = body_string(resp).await;
  assert!(body.starts_with(r#"{"type":"error","error":{"type":"api_error","message":"local key proxy could not reach"#), "{body}");
  assert!(!body.contains(REAL_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_for(&upstream).await;
  let client = client();
  let tasks: Vec<_> = (0..64)
    .map(|i| {
      let (proxy, client) = (proxy.clone(), client.clone());
      tokio::spawn(async move {
        let token = proxy.issue();
        let req = post(&proxy, &format!("/v1/messages?i={i}")).header("x-api-key", token.as_str()).body(empty()).unwrap();
        let resp = client.request(req).await.unwrap();
        (resp.status(), body_string(resp).await)
      })
    })
    .collect();
  for task in tasks {
    let (status, body) = within(task).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "{\"ok\":true}");
  }
  assert_eq!(upstream.hits.load(Ordering::SeqCst), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_streams_and_stops_listening() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_for(&upstream).await;
  let token = proxy.issue();
  let req = post(&proxy, "/v1/messages?mode=sse").header("x-api-key", token.as_str()).body(empty()).unwrap();
  let mut body = within(client().request(req)).await.unwrap().into_body();
  within(body.frame()).await.unwrap().unwrap();

  proxy.shutdown();
  let rest = within(body.collect()).await;
  assert!(rest.is_err(), "a stream in flight must be cut by shutdown");
  let req = post(&proxy, "/v1/messages").header("x-api-key", token.as_str()).body(empty()).unwrap();
  assert!(within(client().request(req)).await.is_err());
}

#[tokio::test]
async fn bad_upstream_config_is_rejected() {
  for base_url in ["", "api.anthropic.com", "ftp://host", "http://host/p?q=1"] {
    let err =
      KeyProxy::start(Upstream { base_url: base_url.into(), api_key: None, auth_token: None, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{base_url}");
  }
  let err = KeyProxy::start(Upstream {
    base_url: "https://api.anthropic.com".into(),
    api_key: Some("bad\nkey".into()),
    auth_token: None,
    ..Default::default()
  })
  .await
  .unwrap_err();
  assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
  let ok = KeyProxy::start(Upstream {
    base_url: "https://api.anthropic.com/".into(),
    api_key: Some(REAL_KEY.into()),
    auth_token: None,
    ..Default::default()
  })
  .await
  .unwrap();
  assert!(ok.base_url().starts_with("http://127.0.0.1:"));
  ok.shutdown();
  let dbg = format!("{:?}", Upstream { base_url: "x".into(), api_key: Some(REAL_KEY.into()), auth_token: None, ..Default::default() });
  assert!(!dbg.contains(REAL_KEY));
}

#[test]
fn json_errors_are_escaped() {
  assert_eq!(json_escape("a\"b\\c\nd\u{1}"), "a\\\"b\\\\c\\nd\\u0001");
}

async fn proxy_with(upstream: &FakeUpstream, limits: ProxyLimits) -> KeyProxy {
  KeyProxy::start_with(Upstream { base_url: upstream.url(), api_key: Some(REAL_KEY.into()), ..Default::default() }, limits).await.unwrap()
}

/// Sockets of this process whose local port is `port`: the listener and the connections it accepted (not the
/// clients' ends, which have ephemeral local ports).
#[cfg(target_os = "linux")]
fn server_side_sockets(port: u16) -> usize {
  let mut inodes = HashSet::new();
  for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
    for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
      let cols: Vec<&str> = line.split_whitespace().collect();
      let local_port = cols.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
      if local_port == Some(port) {
        inodes.insert(cols[9].to_owned());
      }
    }
  }
  std::fs::read_dir("/proc/self/fd")
    .unwrap()
    .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
    .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
    .filter(|inode| inodes.contains(inode))
    .count()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_are_closed_at_once() {
  let (upstream, _) = FakeUpstream::start().await;
  let cap = 64;
  let proxy = proxy_with(&upstream, ProxyLimits { max_connections: cap, ..Default::default() }).await;
  let port = proxy.inner.addr.port();
  let token = proxy.issue();
  let mut held = Vec::new();
  for _ in 0..3000 {
    held.push(within(TcpStream::connect(proxy.inner.addr)).await.unwrap());
  }
  // Every connection was accepted (the last one is the proof) and all but `cap` closed by the proxy.
  assert!(
    within(async {
      while proxy.refused() < (3000 - cap) as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
      }
      true
    })
    .await
  );
  assert_eq!(proxy.connections(), cap);
  let server_side = server_side_sockets(port);
  assert!(server_side <= cap + 1 + 4, "{server_side} sockets open on the proxy's side for a cap of {cap}");
  // Over the cap a model call is refused too (its connection is closed unread) ...
  let req = post(&proxy, "/v1/messages").header("x-api-key", token.as_str()).body(empty()).unwrap();
  assert!(within(client().request(req)).await.is_err());
  // ... and served again once the idle connections are gone.
  drop(held);
  within(async {
    while proxy.connections() > 0 {
      tokio::time::sleep(Duration::from_millis(20)).await;
    }
  })
  .await;
  let req = post(&proxy, "/v1/messages").header("x-api-key", token.as_str()).body(empty()).unwrap();
  assert_eq!(within(client().request(req)).await.unwrap().status(), StatusCode::OK);
}

/// Reads until the peer closes (EOF or reset); what was read.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
  let mut out = Vec::new();
  let mut buf = [0u8; 1024];
  loop {
    match tokio::io::AsyncReadExt::read(stream, &mut buf).await {
      Ok(0) | Err(_) => return out,
      Ok(n) => out.extend_from_slice(&buf[..n]),
    }
  }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_but_long_responses_are_not() {
  let (upstream, _) = FakeUpstream::start().await;
  let limits =
    ProxyLimits { header_read_timeout: Duration::from_millis(200), idle_timeout: Duration::from_millis(300), ..Default::default() };
  let proxy = proxy_with(&upstream, limits).await;
  let token = proxy.issue();

  // Half a request line and header block, then nothing: closed (hyper may answer 408 first).
  let mut slow = TcpStream::connect(proxy.inner.addr).await.unwrap();
  tokio::io::AsyncWriteExt::write_all(&mut slow, b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-").await.unwrap();
  let out = within(read_until_closed(&mut slow)).await;
  assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&out));

  // Connected, nothing sent: closed.
  let mut silent = TcpStream::connect(proxy.inner.addr).await.unwrap();
  assert!(within(read_until_closed(&mut silent)).await.is_empty());

  // Kept alive after a request, then idle: closed.
  let mut kept = TcpStream::connect(proxy.inner.addr).await.unwrap();
  let raw = format!("POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-length: 0\r\n\r\n", token.as_str());
  tokio::io::AsyncWriteExt::write_all(&mut kept, raw.as_bytes()).await.unwrap();
  let out = within(read_until_closed(&mut kept)).await;
  assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));

  // A response that takes longer than the idle timeout to come is not cut.
  let req = post(&proxy, "/v1/messages?mode=sse").header("x-api-key", token.as_str()).body(empty()).unwrap();
  let mut body = within(client().request(req)).await.unwrap().into_body();
  within(body.frame()).await.unwrap().unwrap();
  tokio::time::sleep(Duration::from_millis(900)).await;
  upstream.release_sse.notify_one();
  assert_eq!(within(body.collect()).await.unwrap().to_bytes(), SSE_CHUNKS[1..].concat().as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_token_are_capped() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_with(&upstream, ProxyLimits { max_connections_per_token: 2, ..Default::default() }).await;
  let (token, other) = (proxy.issue(), proxy.issue());
  let raw = |t: &TaskToken| format!("POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-length: 0\r\n\r\n", t.as_str());
  // One request per connection, each connection kept open.
  async fn first_response(stream: &mut TcpStream, raw: &str) -> String {
    tokio::io::AsyncWriteExt::write_all(stream, raw.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(tokio::io::AsyncReadExt::read(stream, &mut buf)).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
  }
  let mut conns = Vec::new();
  for _ in 0..2 {
    let mut c = TcpStream::connect(proxy.inner.addr).await.unwrap();
    assert!(first_response(&mut c, &raw(&token)).await.starts_with("HTTP/1.1 200"));
    conns.push(c);
  }
  let mut third = TcpStream::connect(proxy.inner.addr).await.unwrap();
  let out = first_response(&mut third, &raw(&token)).await;
  assert!(out.starts_with("HTTP/1.1 429") && out.contains("rate_limit_error"), "{out}");
  assert!(within(read_until_closed(&mut third)).await.is_empty(), "the refused connection is closed");
  // Another token is not affected; a closed connection frees its place.
  let mut c = TcpStream::connect(proxy.inner.addr).await.unwrap();
  assert!(first_response(&mut c, &raw(&other)).await.starts_with("HTTP/1.1 200"));
  drop(conns.pop());
  let mut again = TcpStream::connect(proxy.inner.addr).await.unwrap();
  let ok = within(async {
    loop {
      let out = first_response(&mut again, &raw(&token)).await;
      if out.starts_with("HTTP/1.1 200") {
        return true;
      }
      again = TcpStream::connect(proxy.inner.addr).await.unwrap();
      tokio::time::sleep(Duration::from_millis(20)).await;
    }
  })
  .await;
  assert!(ok);
  assert_eq!(upstream.hits.load(Ordering::SeqCst), 4);
}

/// A `POST /v1/messages` with `token` on a fresh connection to `addr`; the status, or `None` if the connection was
/// refused or closed without an answer.
async fn status_at(addr: SocketAddr, token: &TaskToken) -> Option<u16> {
  let mut stream = TcpStream::connect(addr).await.ok()?;
  let raw =
    format!("POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", token.as_str());
  tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes()).await.ok()?;
  let out = within(read_until_closed(&mut stream)).await;
  String::from_utf8_lossy(&out).get(9..12)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_listener_accepts_only_its_own_tokens_and_has_its_own_cap() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = proxy_with(&upstream, ProxyLimits { max_connections_per_listener: 4, ..Default::default() }).await;
  let bind = || std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
  // Called from a thread outside the runtime, as a sandbox set-up may.
  let (a, b) = {
    let proxy = proxy.clone();
    tokio::task::spawn_blocking(move || (proxy.serve_listener(bind()).unwrap(), proxy.serve_listener(bind()).unwrap())).await.unwrap()
  };
  let (loopback, in_a, in_b) = (proxy.inner.addr, a.local_addr(), b.local_addr());
  let (t_loop, t_a, t_b) = (proxy.issue(), a.issue(), b.issue());

  assert_eq!(status_at(in_a, &t_a).await, Some(200));
  assert_eq!(status_at(in_b, &t_b).await, Some(200));
  assert_eq!(status_at(loopback, &t_loop).await, Some(200));
  for (addr, token) in [(in_a, &t_loop), (in_a, &t_b), (in_b, &t_a), (loopback, &t_a), (loopback, &t_b)] {
    assert_eq!(status_at(addr, token).await, Some(401), "a token used on another listener");
  }
  assert_eq!(upstream.hits.load(Ordering::SeqCst), 3);
  // The same rules: suspended tokens and other paths are refused there too.
  t_a.set_live(false);
  assert_eq!(status_at(in_a, &t_a).await, Some(401));
  t_a.set_live(true);

  // Idle connections fill a's own cap; b and the loopback listener still serve.
  let mut held = Vec::new();
  for _ in 0..10 {
    held.push(TcpStream::connect(in_a).await.unwrap());
  }
  // Until a's cap is full and the six connections over it were turned away (the refusals of
  // the requests above counted before: 6).
  let deadline = std::time::Instant::now() + Duration::from_secs(30);
  while (a.connections() < 4 || proxy.refused() < 12) && std::time::Instant::now() < deadline {
    tokio::time::sleep(Duration::from_millis(20)).await;
  }
  assert_eq!((a.connections(), proxy.refused() >= 12), (4, true), "refused {}", proxy.refused());
  assert_eq!(status_at(in_a, &t_a).await, None, "over a's cap");
  assert_eq!(status_at(in_b, &t_b).await, Some(200));
  assert_eq!(status_at(loopback, &t_loop).await, Some(200));
  drop(held);
  // The held connections are gone on the proxy's side too before the next one comes (else it
  // could land over the cap and be turned away).
  within(async {
    while a.connections() > 0 {
      tokio::time::sleep(Duration::from_millis(10)).await;
    }
  })
  .await;

  // Dropped: a stops serving (its connections closed), its tokens are worth nothing anywhere; b goes on.
  let mut open = TcpStream::connect(in_a).await.unwrap();
  within(async {
    while a.connections() == 0 {
      tokio::time::sleep(Duration::from_millis(10)).await;
    }
  })
  .await;
  drop(a);
  assert!(within(read_until_closed(&mut open)).await.is_empty(), "an open connection of a dropped listener is closed");
  assert_eq!(status_at(in_a, &t_a).await, None);
  assert_eq!(status_at(loopback, &t_a).await, Some(401));
  assert_eq!(status_at(in_b, &t_b).await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_headers_and_the_oauth_beta_are_added_upstream() {
  let (upstream, _) = FakeUpstream::start().await;
  let proxy = KeyProxy::start(Upstream {
    base_url: upstream.url(),
    auth_token: Some(REAL_AUTH.into()),
    oauth: true,
    headers: "X-Gateway-Secret: gw-123\n\n  x-team:  blue  \n".into(),
    ..Default::default()
  })
  .await
  .unwrap();
  let token = proxy.issue();
  let req = post(&proxy, "/v1/messages")
    .header("x-api-key", token.as_str())
    .header("x-gateway-secret", "forged-by-the-agent")
    .header("anthropic-beta", "interleaved-thinking-2025-05-14")
    .body(empty())
    .unwrap();
  assert_eq!(within(client().request(req)).await.unwrap().status(), StatusCode::OK);
  let seen = upstream.last_seen();
  assert_eq!(seen.headers.get_all("x-gateway-secret").iter().collect::<Vec<_>>(), ["gw-123"]);
  assert_eq!(seen.headers["x-team"], "blue");
  assert_eq!(seen.headers["authorization"], format!("Bearer {REAL_AUTH}").as_str());
  assert_eq!(seen.headers["anthropic-beta"], "interleaved-thinking-2025-05-14,oauth-2025-04-20");

  // Not OAuth: no beta added.
  let proxy = KeyProxy::start(Upstream { base_url: upstream.url(), api_key: Some(REAL_KEY.into()), ..Default::default() }).await.unwrap();
  let token = proxy.issue();
  let req = post(&proxy, "/v1/messages").header("x-api-key", token.as_str()).body(empty()).unwrap();
  within(client().request(req)).await.unwrap();
  assert!(upstream.last_seen().headers.get("anthropic-beta").is_none());

  for bad in ["no colon here", "bad name: x", "x-ok: bad\u{7f}value"] {
    let err = KeyProxy::start(Upstream { base_url: upstream.url(), headers: bad.into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
    assert!(!err.to_string().contains("bad\u{7f}value"));
  }
}

/// What metering adds to a model call at the proxy: the same `POST /v1/messages` through a proxy
/// without metering and through one charging a SQLite store (and a PostgreSQL one when
/// `CSM_TEST_DATABASE_URL` is set), one call of each in turn, round after round, after a warm-up.
/// Each store is charged twice: with a cap on the user (every call admitted before it is sent) and
/// with none (the call recorded beside its forwarding); `CSM_BENCH_ONLY=capped` or `uncapped` runs
/// one kind alone, since the kinds share a ledger and one's background writes slow the other's.
/// Prints the median and p99 per contender and what metering adds. A benchmark, run on purpose:
/// `cargo test --release --lib metering_cost -- --ignored --nocapture` (`benchmark/RESULTS-budgets.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo test --release --lib metering_cost -- --ignored --nocapture"]
async fn metering_cost() {
  use crate::sessions::budgets::StoreLedger;
  use crate::store::{Admit, BudgetDefaults, CallAdmit, CallTokens, Store};
  let rounds: usize = std::env::var("CSM_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
  let (upstream, _) = FakeUpstream::start().await;
  let dir = tempfile::tempdir().unwrap();
  let db = dir.path().join("bench.db");
  let pg_url = std::env::var("CSM_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty());
  let schema = format!("csm_bench_{}", std::process::id());
  let stores = tokio::task::spawn_blocking({
    let (pg_url, schema) = (pg_url.clone(), schema.clone());
    move || {
      let mut s = vec![("sqlite", Arc::new(Store::open(&db).unwrap()))];
      if let Some(url) = pg_url {
        s.push(("postgres", Arc::new(Store::connect(&url, &schema).unwrap())));
      }
      s
    }
  })
  .await
  .unwrap();
  let upstream_cfg = || Upstream { base_url: upstream.url(), api_key: Some(REAL_KEY.into()), auth_token: None, ..Default::default() };
  // A cap on the user, so every call is checked against one (and never reached).
  let defaults = BudgetDefaults { per_user: Some((1e9, Some("day".into()))), per_session: Some(1e9) };
  let mut contenders = vec![("off".to_owned(), KeyProxy::start(upstream_cfg()).await.unwrap())];
  for (name, store) in &stores {
    // Capped (the defaults above), and with no cap at all (the call cannot be refused).
    let only = std::env::var("CSM_BENCH_ONLY").unwrap_or_default();
    for (kind, defaults) in [("capped", defaults.clone()), ("uncapped", BudgetDefaults::default())] {
      if !only.is_empty() && only != kind {
        continue;
      }
      let metering = Metering { ledger: Arc::new(StoreLedger::new(store.clone(), defaults)), prices: PriceTable::default() };
      let proxy = KeyProxy::start_metered(upstream_cfg(), ProxyLimits::default(), Some(metering)).await.unwrap();
      contenders.push((format!("{name}, {kind}"), proxy));
    }
  }
  let tokens: Vec<TaskToken> = contenders
    .iter()
    .map(|(_, p)| {
      let t = p.issue();
      let owner = CallOwner { task_id: "t".into(), session_id: "s".into(), user_id: "u".into(), project_id: "p".into() };
      t.attach(Some(TaskMeter::new(owner)));
      t
    })
    .collect();
  let c = client();
  let body = b"{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":1024,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
  let call = |proxy: &KeyProxy, token: &TaskToken| {
    let req = Request::post(format!("{}/v1/messages", proxy.base_url()))
      .header("x-api-key", token.as_str())
      .header("content-type", "application/json")
      .body(Full::new(Bytes::from_static(body)).boxed())
      .unwrap();
    let c = c.clone();
    async move {
      let start = std::time::Instant::now();
      let resp = c.request(req).await.unwrap();
      assert_eq!(resp.status(), StatusCode::OK);
      resp.into_body().collect().await.unwrap();
      start.elapsed().as_secs_f64() * 1000.0
    }
  };
  let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); contenders.len()];
  for round in 0..rounds + 100 {
    for (i, ((_, proxy), token)) in contenders.iter().zip(&tokens).enumerate() {
      let ms = call(proxy, token).await;
      if round >= 100 {
        times[i].push(ms);
      }
    }
  }
  let stat = |v: &mut Vec<f64>, q: f64| {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
  };
  let (off_p50, off_p99) = (stat(&mut times[0], 0.5), stat(&mut times[0], 0.99));
  println!("metering_cost: {rounds} calls per contender, interleaved, after 100 warm-up rounds");
  println!("| contender | median (ms) | p99 (ms) | added, median (ms) | added, p99 (ms) |");
  println!("| --- | --- | --- | --- | --- |");
  for (i, (name, _)) in contenders.iter().enumerate() {
    let (p50, p99) = (stat(&mut times[i], 0.5), stat(&mut times[i], 0.99));
    println!("| {name} | {p50:.3} | {p99:.3} | {:.3} | {:.3} |", p50 - off_p50, p99 - off_p99);
  }
  // The store's share: the same admit and settle called directly, one after the other.
  for (name, store) in &stores {
    let (store, defaults) = (store.clone(), defaults.clone());
    let mut direct = tokio::task::spawn_blocking(move || {
      let call = CallAdmit { task_id: "t", session_id: "s", user_id: "u", project_id: "p", model: "m", reserve_usd: 0.01 };
      (0..rounds.min(1000))
        .map(|_| {
          let start = std::time::Instant::now();
          let Ok(Admit::Go(id)) = store.admit_call(&call, &defaults).wait() else { panic!("refused") };
          let admitted = start.elapsed().as_secs_f64() * 1000.0;
          store.settle_call(id, "m", &CallTokens::default(), 0.001).wait().unwrap();
          admitted
        })
        .collect::<Vec<f64>>()
    })
    .await
    .unwrap();
    println!("| {name}: admit_call alone | {:.3} | {:.3} | | |", stat(&mut direct, 0.5), stat(&mut direct, 0.99));
  }
  drop(tokens);
  if let (Some(url), true) = (pg_url, stores.len() > 1) {
    let _ = tokio::process::Command::new("psql")
      .args([url.as_str(), "-qc", &format!("SET client_min_messages = warning; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")])
      .status()
      .await;
  }
}
