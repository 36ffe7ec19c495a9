//! Loopback API-key proxy for the `claude` CLI.
//!
//! # Why this exists
//!
//! The addon runs the `claude` CLI, and inside it an *untrusted* agent that can read its own environment, files and
//! memory. If the CLI were given the real Anthropic API key, the agent could copy it out and use it forever. So the
//! CLI never sees the real key. Instead it is started with
//!
//! ```text
//! ANTHROPIC_BASE_URL=http://127.0.0.1:<port>   (KeyProxy::base_url)
//! ANTHROPIC_API_KEY=<per-task token>           (KeyProxy::issue -> TaskToken::as_str)
//! ```
//!
//! and talks to this proxy, which:
//!
//! 1. accepts a request only if its `x-api-key` header (or `Authorization: Bearer <token>`) equals a token that is
//!    currently registered, i.e. a task is running. Anything else gets a `401` with an Anthropic-style JSON error and
//!    nothing is forwarded;
//! 2. strips the task token and hop-by-hop headers (and `host`), adds the real credentials (`Authorization: Bearer`
//!    if [`Upstream::auth_token`] is set, else `x-api-key`), and forwards method, path and query to the real upstream,
//!    joined under the upstream's path prefix if it has one. Only the path and query of the incoming request are used:
//!    the upstream scheme and host always come from [`Upstream::base_url`];
//! 3. streams the request body up and the response body down frame by frame (server-sent events are not buffered).
//!    If the upstream cannot be reached the client gets a `502` with a JSON error.
//!
//! A leaked task token is only worth something while its task runs: dropping the [`TaskToken`] revokes it (requests
//! already in flight are not cut). The proxy listens on `127.0.0.1` only, on a port picked by the OS.
//!
//! The upstream client is hyper-util's pooled client with hyper-rustls (ring provider, webpki roots, no OpenSSL): the
//! server side already needs hyper, so the client adds only the TLS layer, and hyper's `Incoming` bodies are passed
//! through as they are, with no stream adapters.

use std::collections::HashSet;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Body of the responses the proxy sends: the upstream's body passed through, or a small JSON error of its own.
type ProxyBody = Either<Incoming, Full<Bytes>>;
type UpstreamClient = Client<HttpsConnector<HttpConnector>, Incoming>;
type TokenSet = Arc<Mutex<HashSet<String>>>;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where requests are forwarded, and the real credentials to send there.
#[derive(Clone, Default)]
pub struct Upstream {
  /// `https://api.anthropic.com`, or `http://host:port/some/prefix`; a path prefix is kept and joined with the
  /// request path.
  pub base_url: String,
  /// Sent as `x-api-key` when `auth_token` is not set.
  pub api_key: Option<String>,
  /// Sent as `Authorization: Bearer <auth_token>`; takes precedence over `api_key`.
  pub auth_token: Option<String>,
}

impl fmt::Debug for Upstream {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
    f.debug_struct("Upstream")
      .field("base_url", &self.base_url)
      .field("api_key", &redact(&self.api_key))
      .field("auth_token", &redact(&self.auth_token))
      .finish()
  }
}

/// The proxy. Cloning is cheap; it stops when [`KeyProxy::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct KeyProxy {
  inner: Arc<Inner>,
}

struct Inner {
  addr: SocketAddr,
  tokens: TokenSet,
  shutdown: watch::Sender<bool>,
}

impl Drop for Inner {
  fn drop(&mut self) {
    self.shutdown.send_replace(true);
  }
}

/// Everything a request handler needs; shared by the accept loop and the connection tasks.
struct State {
  tokens: TokenSet,
  scheme: Scheme,
  authority: Authority,
  /// Path prefix of the upstream base URL without its trailing `/`; empty for none.
  prefix: String,
  credential: Option<(HeaderName, HeaderValue)>,
  client: UpstreamClient,
}

impl KeyProxy {
  /// Validates `upstream`, binds `127.0.0.1:0` and starts serving on the current tokio runtime.
  pub async fn start(upstream: Upstream) -> io::Result<KeyProxy> {
    let tokens = TokenSet::default();
    let state = Arc::new(State::new(upstream, tokens.clone())?);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    tokio::spawn(accept_loop(listener, state, shutdown_rx));
    Ok(KeyProxy { inner: Arc::new(Inner { addr, tokens, shutdown }) })
  }

  /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL`.
  pub fn base_url(&self) -> String {
    format!("http://{}", self.inner.addr)
  }

  /// Registers a fresh random token (32 bytes from the OS, hex) for one task; it is revoked when the returned
  /// [`TaskToken`] is dropped.
  pub fn issue(&self) -> TaskToken {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the OS random number generator failed");
    let token = raw.iter().fold(String::with_capacity(64), |mut s, b| {
      let _ = write!(s, "{b:02x}");
      s
    });
    lock(&self.inner.tokens).insert(token.clone());
    TaskToken { token, tokens: self.inner.tokens.clone() }
  }

  /// Stops accepting connections and drops open ones, including responses that are still streaming. Idempotent.
  pub fn shutdown(&self) {
    self.inner.shutdown.send_replace(true);
  }
}

impl fmt::Debug for KeyProxy {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.debug_struct("KeyProxy").field("addr", &self.inner.addr).finish_non_exhaustive()
  }
}

/// A registered per-task token; dropping it revokes the token.
pub struct TaskToken {
  token: String,
  tokens: TokenSet,
}

impl TaskToken {
  /// The token, for `ANTHROPIC_API_KEY`.
  pub fn as_str(&self) -> &str {
    &self.token
  }
}

impl Drop for TaskToken {
  fn drop(&mut self) {
    lock(&self.tokens).remove(&self.token);
  }
}

impl fmt::Debug for TaskToken {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("TaskToken(<redacted>)")
  }
}

fn lock(tokens: &TokenSet) -> MutexGuard<'_, HashSet<String>> {
  tokens.lock().unwrap_or_else(PoisonError::into_inner)
}

fn invalid_input(msg: String) -> io::Error {
  io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl State {
  fn new(upstream: Upstream, tokens: TokenSet) -> io::Result<State> {
    let base: Uri = upstream.base_url.parse().map_err(|e| invalid_input(format!("bad upstream base_url {:?}: {e}", upstream.base_url)))?;
    let scheme = match base.scheme() {
      Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
      _ => return Err(invalid_input(format!("upstream base_url {:?} must start with http:// or https://", upstream.base_url))),
    };
    let authority =
      base.authority().cloned().ok_or_else(|| invalid_input(format!("upstream base_url {:?} has no host", upstream.base_url)))?;
    if base.query().is_some() {
      return Err(invalid_input(format!("upstream base_url {:?} must not have a query", upstream.base_url)));
    }
    let prefix = base.path().trim_end_matches('/').to_owned();

    let credential = match (upstream.auth_token, upstream.api_key) {
      (Some(token), _) => Some((header::AUTHORIZATION, format!("Bearer {token}"))),
      (None, Some(key)) => Some((X_API_KEY, key)),
      (None, None) => None,
    };
    let credential = credential
      .map(|(name, value)| {
        let mut value =
          HeaderValue::try_from(value).map_err(|_| invalid_input("upstream credential is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok::<_, io::Error>((name, value))
      })
      .transpose()?;

    let tls = HttpsConnectorBuilder::new()
      .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
      .map_err(|e| io::Error::other(format!("TLS setup failed: {e}")))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    let client = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).pool_idle_timeout(POOL_IDLE_TIMEOUT).build(connector);

    Ok(State { tokens, scheme, authority, prefix, credential, client })
  }

  /// True if any `x-api-key` or `Authorization: Bearer` value is a registered token.
  fn authorized(&self, headers: &HeaderMap) -> bool {
    let tokens = lock(&self.tokens);
    let api_keys = headers.get_all(X_API_KEY).into_iter().filter_map(|v| v.to_str().ok());
    let bearers = headers.get_all(header::AUTHORIZATION).into_iter().filter_map(|v| {
      let v = v.to_str().ok()?;
      v.get(..7).filter(|scheme| scheme.eq_ignore_ascii_case("bearer ")).map(|_| &v[7..])
    });
    api_keys.chain(bearers).any(|t| tokens.contains(t.trim()))
  }

  /// Upstream scheme and host, upstream prefix + the request's path and query. The request's own scheme and host
  /// (absolute-form targets) are ignored.
  fn upstream_uri(&self, uri: &Uri) -> Result<Uri, hyper::http::Error> {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let sep = if pq.starts_with('/') { "" } else { "/" };
    Uri::builder().scheme(self.scheme.clone()).authority(self.authority.clone()).path_and_query(format!("{}{sep}{pq}", self.prefix)).build()
  }

  async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
    if !self.authorized(req.headers()) {
      return json_error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid or expired API key for the local key proxy");
    }
    if req.method() == Method::CONNECT {
      return json_error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "CONNECT is not supported");
    }
    let (parts, body) = req.into_parts();
    let Ok(uri) = self.upstream_uri(&parts.uri) else {
      return json_error(StatusCode::BAD_REQUEST, "invalid_request_error", "bad request target");
    };
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(X_API_KEY);
    headers.remove(header::AUTHORIZATION);
    if let Some((name, value)) = &self.credential {
      headers.insert(name.clone(), value.clone());
    }
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;

    match self.client.request(out).await {
      Ok(resp) => {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, Either::Left(body))
      }
      Err(e) => {
        json_error(StatusCode::BAD_GATEWAY, "api_error", &format!("local key proxy could not reach the upstream API: {}", error_chain(&e)))
      }
    }
  }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
  loop {
    let stream = tokio::select! {
      biased;
      _ = stopped(&mut shutdown) => return,
      accepted = listener.accept() => match accepted {
        Ok((stream, _)) => stream,
        // e.g. out of file descriptors: back off instead of spinning.
        Err(_) => {
          tokio::time::sleep(Duration::from_millis(50)).await;
          continue;
        }
      },
    };
    tokio::spawn(serve_connection(stream, state.clone(), shutdown.clone()));
  }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
  let _ = stream.set_nodelay(true);
  let service = service_fn(move |req| {
    let state = state.clone();
    async move { Ok::<_, Infallible>(state.handle(req).await) }
  });
  let conn = http1::Builder::new().timer(TokioTimer::new()).serve_connection(TokioIo::new(stream), service);
  tokio::select! {
    _ = conn => {}
    _ = stopped(&mut shutdown) => {}
  }
}

/// Resolves once shutdown was requested (or every `KeyProxy` clone is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
  let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Removes the hop-by-hop headers of RFC 9110 section 7.6.1, including those named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
  let named: Vec<HeaderName> = headers
    .get_all(header::CONNECTION)
    .into_iter()
    .filter_map(|v| v.to_str().ok())
    .flat_map(|v| v.split(','))
    .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
    .collect();
  for name in named {
    headers.remove(name);
  }
  for name in [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
  ] {
    headers.remove(name);
  }
}

fn error_chain(e: &(dyn StdError + 'static)) -> String {
  let mut msg = e.to_string();
  let mut source = e.source();
  while let Some(s) = source {
    let _ = write!(msg, ": {s}");
    source = s.source();
  }
  msg
}

/// An error in the shape the Anthropic API uses: `{"type":"error","error":{"type":..,"message":..}}`.
fn json_error(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
  let body = format!(r#"{{"type":"error","error":{{"type":"{}","message":"{}"}}}}"#, json_escape(kind), json_escape(message));
  let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
  *resp.status_mut() = status;
  resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
  resp
}

fn json_escape(s: &str) -> String {
  let mut out = String::with_capacity(s.len());
  for c in s.chars() {
    match c {
      '"' => out.push_str("\\\""),
      '\\' => out.push_str("\\\\"),
      '\n' => out.push_str("\\n"),
      '\r' => out.push_str("\\r"),
      '\t' => out.push_str("\\t"),
      c if (c as u32) < 0x20 => {
        let _ = write!(out, "\\u{:04x}", c as u32);
      }
      c => out.push(c),
    }
  }
  out
}

#[cfg(test)]
mod tests {
  use super::*;

  use std::future::Future;
  use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

  /// A plain-HTTP upstream that records what it got. `/.../sse` streams `SSE_CHUNKS`: the first right away, the rest
  /// only after `release_sse` is notified. `/.../echo` reports each request-body chunk on `req_chunks` and echoes the
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
      let path = parts.uri.path();
      if path.ends_with("/sse") {
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
      } else if path.ends_with("/echo") {
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

  fn get(proxy: &KeyProxy, path_and_query: &str) -> hyper::http::request::Builder {
    Request::get(format!("{}{path_and_query}", proxy.base_url()))
  }

  fn empty() -> TestBody {
    Empty::new().boxed()
  }

  async fn body_string(resp: Response<Incoming>) -> String {
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
  }

  async fn proxy_for(upstream: &FakeUpstream) -> KeyProxy {
    KeyProxy::start(Upstream { base_url: upstream.url(), api_key: Some(REAL_KEY.into()), auth_token: None }).await.unwrap()
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
    let proxy = KeyProxy::start(Upstream { base_url: upstream.url(), api_key: Some(REAL_KEY.into()), auth_token: Some(REAL_AUTH.into()) })
      .await
      .unwrap();
    let token = proxy.issue();
    let req = get(&proxy, "/v1/models").header("authorization", format!("Bearer {}", token.as_str())).body(empty()).unwrap();
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
    let req = get(&proxy, "/v1/sse").header("x-api-key", token.as_str()).body(empty()).unwrap();
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
    let req = Request::post(format!("{}/v1/echo", proxy.base_url())).header("x-api-key", token.as_str()).body(body.boxed()).unwrap();
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
      get(&proxy, "/v1/messages").header("x-api-key", "0".repeat(64)),
      get(&proxy, "/v1/messages").header("authorization", "Bearer nope"),
      get(&proxy, "/v1/messages").header("x-api-key", REAL_KEY),
      get(&proxy, "/v1/messages"),
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
    let send = |v: &str| client().request(get(&proxy, "/v1/models").header("x-api-key", v).body(empty()).unwrap());

    assert_eq!(within(send(&value)).await.unwrap().status(), StatusCode::OK);
    drop(token);
    assert_eq!(within(send(&value)).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(within(send(other.as_str())).await.unwrap().status(), StatusCode::OK);
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 2);
  }

  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  async fn path_prefix_and_query_are_preserved() {
    let (upstream, _) = FakeUpstream::start().await;
    for base in [format!("{}/prefix", upstream.url()), format!("{}/prefix/", upstream.url())] {
      let proxy = KeyProxy::start(Upstream { base_url: base, api_key: Some(REAL_KEY.into()), auth_token: None }).await.unwrap();
      let token = proxy.issue();
      let req = get(&proxy, "/v1/messages/count_tokens?beta=true&x=a%20b").header("x-api-key", token.as_str()).body(empty()).unwrap();
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
      "GET http://evil.example/steal?k=1 HTTP/1.1\r\nhost: evil.example\r\nx-api-key: {}\r\nconnection: close\r\n\r\n",
      token.as_str()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes()).await.unwrap();
    let mut out = String::new();
    within(tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut out)).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = upstream.last_seen();
    assert_eq!(seen.target, "/steal?k=1");
    assert_eq!(seen.headers["host"], upstream.addr.to_string().as_str());
  }

  #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
  async fn upstream_down_gives_502() {
    let dead = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap().local_addr().unwrap();
    let proxy =
      KeyProxy::start(Upstream { base_url: format!("http://{dead}"), api_key: Some(REAL_KEY.into()), auth_token: None }).await.unwrap();
    let token = proxy.issue();
    let req = get(&proxy, "/v1/messages").header("x-api-key", token.as_str()).body(empty()).unwrap();
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
          let req = get(&proxy, &format!("/v1/messages?i={i}")).header("x-api-key", token.as_str()).body(empty()).unwrap();
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
    let req = get(&proxy, "/v1/sse").header("x-api-key", token.as_str()).body(empty()).unwrap();
    let mut body = within(client().request(req)).await.unwrap().into_body();
    within(body.frame()).await.unwrap().unwrap();

    proxy.shutdown();
    let rest = within(body.collect()).await;
    assert!(rest.is_err(), "a stream in flight must be cut by shutdown");
    let req = get(&proxy, "/v1/models").header("x-api-key", token.as_str()).body(empty()).unwrap();
    assert!(within(client().request(req)).await.is_err());
  }

  #[tokio::test]
  async fn bad_upstream_config_is_rejected() {
    for base_url in ["", "api.anthropic.com", "ftp://host", "http://host/p?q=1"] {
      let err = KeyProxy::start(Upstream { base_url: base_url.into(), api_key: None, auth_token: None }).await.unwrap_err();
      assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{base_url}");
    }
    let err =
      KeyProxy::start(Upstream { base_url: "https://api.anthropic.com".into(), api_key: Some("bad\nkey".into()), auth_token: None })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let ok = KeyProxy::start(Upstream { base_url: "https://api.anthropic.com/".into(), api_key: Some(REAL_KEY.into()), auth_token: None })
      .await
      .unwrap();
    assert!(ok.base_url().starts_with("http://127.0.0.1:"));
    ok.shutdown();
    let dbg = format!("{:?}", Upstream { base_url: "x".into(), api_key: Some(REAL_KEY.into()), auth_token: None });
    assert!(!dbg.contains(REAL_KEY));
  }

  #[test]
  fn json_errors_are_escaped() {
    assert_eq!(json_escape("a\"b\\c\nd\u{1}"), "a\\\"b\\\\c\\nd\\u0001");
  }
}
