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
//! 1. forwards only model calls: `POST /v1/messages` and `POST /v1/messages/count_tokens`, the path matched byte for
//!    byte (so no dot segment, percent-encoded byte or doubled slash passes), any query kept. Any other method or path
//!    gets a `404`/`403` Anthropic-style JSON error and nothing is forwarded (counted in [`KeyProxy::refused`]);
//! 2. accepts a request only if its `x-api-key` header (or `Authorization: Bearer <token>`) equals a token that is
//!    currently registered, i.e. a task is running. Anything else gets a `401` with an Anthropic-style JSON error and
//!    nothing is forwarded. It then strips the task token and hop-by-hop headers (and `host`), adds the real
//!    credentials (`Authorization: Bearer` if [`Upstream::auth_token`] is set, else `x-api-key`), and forwards the
//!    request to the real upstream, joined under the upstream's path prefix if it has one. Only the path and query
//!    of the incoming request are used: the upstream scheme and host always come from [`Upstream::base_url`];
//! 3. streams the request body up and the response body down frame by frame (server-sent events are not buffered).
//!    If the upstream cannot be reached the client gets a `502` with a JSON error.
//!
//! A leaked task token is only worth something while its task runs: dropping the [`TaskToken`] revokes it, and
//! [`TaskToken::set_live`]`(false)` suspends it (a warm CLI between two tasks); requests already in flight are not
//! cut. The proxy listens on `127.0.0.1` only, on a port picked by the OS.
//!
//! The upstream client is hyper-util's pooled client with hyper-rustls (ring provider, webpki roots, no OpenSSL): the
//! server side already needs hyper, so the client adds only the TLS layer, and hyper's `Incoming` bodies are passed
//! through as they are, with no stream adapters.

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt::{self, Write as _};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
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

/// Body of the responses the proxy sends: the upstream's body passed through (metered or not), or a small JSON error
/// of its own.
type ProxyBody = Either<MeteredBody, Full<Bytes>>;
/// Body of the requests forwarded: the client's streamed through, or (a metered call) read whole first.
type UpBody = Either<Incoming, Full<Bytes>>;
type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpBody>;
type TokenSet = Arc<Mutex<HashMap<String, Entry>>>;

/// What the proxy knows of a registered token.
struct Entry {
  /// Whether requests with it are forwarded now ([`TaskToken::set_live`]).
  live: bool,
  /// The listener it is accepted on: 0 for the loopback one, else a [`SandboxListener`]'s.
  scope: u64,
  /// Open connections that carried a request with this token (at most
  /// [`ProxyLimits::max_connections_per_token`]).
  conns: Arc<AtomicUsize>,
  /// The task its model calls are charged to ([`TaskToken::attach`]).
  meter: Option<Arc<TaskMeter>>,
}

/// The proxy's resource bounds. Each field has a default ([`ProxyLimits::default`]); tests lower them.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
  /// Open connections over every listener of the proxy; beyond it a new connection is closed as soon as it is
  /// accepted, before anything is read or spawned for it. Default 1024.
  pub max_connections: usize,
  /// Connections that carried a request with one token, open at once; a request on one more connection gets a `429`
  /// and that connection is closed. Default 32.
  pub max_connections_per_token: usize,
  /// Open connections on one [`SandboxListener`] (each has its own count, within `max_connections`). Default 32.
  pub max_connections_per_listener: usize,
  /// How long a client has to send a request's whole header block (slow loris). Default 10 s.
  pub header_read_timeout: Duration,
  /// How long a connection may stay open with no request in flight (between keep-alive requests, or before the
  /// first byte). Default 30 s.
  pub idle_timeout: Duration,
}

impl Default for ProxyLimits {
  fn default() -> Self {
    ProxyLimits {
      max_connections: 1024,
      max_connections_per_token: 32,
      max_connections_per_listener: 32,
      header_read_timeout: Duration::from_secs(10),
      idle_timeout: Duration::from_secs(30),
    }
  }
}

/// Counts a listener's open connections against its cap.
struct Gate {
  open: AtomicUsize,
  cap: usize,
}

impl Gate {
  fn new(cap: usize) -> Arc<Gate> {
    Arc::new(Gate { open: AtomicUsize::new(0), cap })
  }

  /// One more open connection, or `None` (nothing counted) when that would pass the cap.
  fn enter(self: &Arc<Self>) -> Option<GatePass> {
    let mut n = self.open.load(Ordering::Relaxed);
    loop {
      if n >= self.cap {
        return None;
      }
      match self.open.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
        Ok(_) => return Some(GatePass(self.clone())),
        Err(now) => n = now,
      }
    }
  }
}

/// One open connection counted by a [`Gate`], until dropped.
struct GatePass(Arc<Gate>);

impl Drop for GatePass {
  fn drop(&mut self) {
    self.0.open.fetch_sub(1, Ordering::AcqRel);
  }
}

/// The paths the proxy forwards (with `POST`): the Messages API and its token counter.
pub const FORWARDED_PATHS: [&str; 2] = ["/v1/messages", "/v1/messages/count_tokens"];

/// The `anthropic-beta` value the API wants with an OAuth bearer token.
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

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
  /// `auth_token` is a Claude OAuth token (`CLAUDE_CODE_OAUTH_TOKEN`): the OAuth beta
  /// ([`OAUTH_BETA`]) is added to `anthropic-beta` upstream, as the CLI would have.
  pub oauth: bool,
  /// Extra headers for every forwarded request, `Name: value` lines (`ANTHROPIC_CUSTOM_HEADERS`); they replace
  /// headers of the same name the client sent.
  pub headers: String,
}

impl fmt::Debug for Upstream {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
    f.debug_struct("Upstream")
      .field("base_url", &self.base_url)
      .field("api_key", &redact(&self.api_key))
      .field("auth_token", &redact(&self.auth_token))
      .field("oauth", &self.oauth)
      .field("headers", &(!self.headers.is_empty()).then_some("<redacted>"))
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
  state: Arc<State>,
  shutdown: watch::Sender<bool>,
  /// Where [`KeyProxy::serve_listener`] spawns, whatever thread calls it.
  runtime: tokio::runtime::Handle,
  /// The last scope given to a [`SandboxListener`].
  scopes: AtomicU64,
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
  oauth: bool,
  /// [`Upstream::headers`], parsed.
  extra_headers: Vec<(HeaderName, HeaderValue)>,
  client: UpstreamClient,
  /// Requests answered by the proxy itself without forwarding (bad route, no live token, over a limit), and
  /// connections closed at once for being over a cap.
  refused: AtomicU64,
  limits: ProxyLimits,
  /// Open connections over every listener.
  all: Arc<Gate>,
  /// The ledger and prices model calls are metered with ([`KeyProxy::start_metered`]).
  metering: Option<Metering>,
}

/// One connection's bookkeeping: its requests in flight (the idle timer runs only when there are none) and the token
/// it is counted under.
struct Conn {
  in_flight: AtomicUsize,
  idle_since: Mutex<std::time::Instant>,
  bound: Mutex<Option<Arc<AtomicUsize>>>,
}

impl Drop for Conn {
  fn drop(&mut self) {
    if let Some(c) = self.bound.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
      c.fetch_sub(1, Ordering::AcqRel);
    }
  }
}

/// A request in flight on a connection, until its response body is done or dropped.
struct InFlight(Arc<Conn>);

impl InFlight {
  fn new(conn: &Arc<Conn>) -> InFlight {
    conn.in_flight.fetch_add(1, Ordering::AcqRel);
    InFlight(conn.clone())
  }
}

impl Drop for InFlight {
  fn drop(&mut self) {
    *self.0.idle_since.lock().unwrap_or_else(PoisonError::into_inner) = std::time::Instant::now();
    self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
  }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
struct Tracked {
  body: ProxyBody,
  _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
  type Data = Bytes;
  type Error = hyper::Error;

  fn poll_frame(
    mut self: std::pin::Pin<&mut Self>,
    cx: &mut std::task::Context<'_>,
  ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
    match &mut self.body {
      Either::Left(b) => std::pin::Pin::new(b).poll_frame(cx),
      Either::Right(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
    }
  }

  fn is_end_stream(&self) -> bool {
    self.body.is_end_stream()
  }

  fn size_hint(&self) -> hyper::body::SizeHint {
    self.body.size_hint()
  }
}

impl KeyProxy {
  /// Validates `upstream`, binds `127.0.0.1:0` and starts serving on the current tokio runtime, with the default
  /// [`ProxyLimits`].
  pub async fn start(upstream: Upstream) -> io::Result<KeyProxy> {
    Self::start_with(upstream, ProxyLimits::default()).await
  }

  /// As [`KeyProxy::start`], with the given limits.
  pub async fn start_with(upstream: Upstream, limits: ProxyLimits) -> io::Result<KeyProxy> {
    Self::start_metered(upstream, limits, None).await
  }

  /// As [`KeyProxy::start_with`], metering every model call of a token with a [`TaskMeter`] attached
  /// ([`TaskToken::attach`]) with `metering`: checked against the caps before it is forwarded, charged at what the
  /// response reports.
  pub async fn start_metered(upstream: Upstream, limits: ProxyLimits, metering: Option<Metering>) -> io::Result<KeyProxy> {
    let tokens = TokenSet::default();
    let mut state = State::new(upstream, tokens.clone(), limits)?;
    state.metering = metering;
    let state = Arc::new(state);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    // The loopback listener has no cap of its own: the proxy's overall one.
    tokio::spawn(accept_loop(listener, state.clone(), Gate::new(usize::MAX), LOOPBACK, (shutdown_rx, None)));
    let runtime = tokio::runtime::Handle::current();
    Ok(KeyProxy { inner: Arc::new(Inner { addr, state, shutdown, runtime, scopes: AtomicU64::new(LOOPBACK) }) })
  }

  /// The loopback address it listens on.
  pub fn addr(&self) -> SocketAddr {
    self.inner.addr
  }

  /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL`.
  pub fn base_url(&self) -> String {
    format!("http://{}", self.inner.addr)
  }

  /// Registers a fresh random token (32 bytes from the OS, hex) for one task, accepted on the loopback listener
  /// only; it is revoked when the returned [`TaskToken`] is dropped.
  pub fn issue(&self) -> TaskToken {
    issue_token(&self.inner.state.tokens, LOOPBACK)
  }

  /// Serves the same proxy (same upstream, same rules and limits) on `listener`, an already bound and listening
  /// socket (e.g. one inside a sandbox's network namespace), until the returned [`SandboxListener`] is dropped or the
  /// proxy shuts down; dropping it closes its open connections too. Tokens for it come from
  /// [`SandboxListener::issue`] and are accepted on it alone; its connections count against its own cap
  /// ([`ProxyLimits::max_connections_per_listener`]) and the proxy's overall one. May be called from any thread.
  pub fn serve_listener(&self, listener: std::net::TcpListener) -> io::Result<SandboxListener> {
    listener.set_nonblocking(true)?;
    let _entered = self.inner.runtime.enter();
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let scope = self.inner.scopes.fetch_add(1, Ordering::Relaxed) + 1;
    let (shutdown, own_rx) = watch::channel(false);
    let gate = Gate::new(self.inner.state.limits.max_connections_per_listener);
    let stops = (self.inner.shutdown.subscribe(), Some(own_rx));
    self.inner.runtime.spawn(accept_loop(listener, self.inner.state.clone(), gate.clone(), scope, stops));
    Ok(SandboxListener { addr, scope, tokens: self.inner.state.tokens.clone(), gate, shutdown })
  }

  /// How many requests the proxy refused so far (not forwarded: a path or method other than a model call, no live
  /// token, over a limit).
  pub fn refused(&self) -> u64 {
    self.inner.state.refused.load(Ordering::Relaxed)
  }

  /// Connections open now, over every listener.
  pub fn connections(&self) -> usize {
    self.inner.state.all.open.load(Ordering::Acquire)
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

/// The scope of the tokens accepted on the loopback listener.
const LOOPBACK: u64 = 0;

fn issue_token(tokens: &TokenSet, scope: u64) -> TaskToken {
  let mut raw = [0u8; 32];
  getrandom::fill(&mut raw).expect("the OS random number generator failed");
  let token = raw.iter().fold(String::with_capacity(64), |mut s, b| {
    let _ = write!(s, "{b:02x}");
    s
  });
  lock(tokens).insert(token.clone(), Entry { live: true, scope, conns: Arc::default(), meter: None });
  TaskToken { token, tokens: tokens.clone() }
}

/// The proxy served on a listener of its own ([`KeyProxy::serve_listener`]): stops (and closes its connections) when
/// dropped.
pub struct SandboxListener {
  addr: SocketAddr,
  scope: u64,
  tokens: TokenSet,
  gate: Arc<Gate>,
  shutdown: watch::Sender<bool>,
}

impl SandboxListener {
  /// Registers a fresh token accepted only on this listener (not on the loopback one, not on another
  /// `SandboxListener`); revoked when dropped, and worthless once the listener is dropped.
  pub fn issue(&self) -> TaskToken {
    issue_token(&self.tokens, self.scope)
  }

  /// The listener's address, as bound.
  pub fn local_addr(&self) -> SocketAddr {
    self.addr
  }

  /// Connections open on this listener now.
  pub fn connections(&self) -> usize {
    self.gate.open.load(Ordering::Acquire)
  }
}

impl Drop for SandboxListener {
  fn drop(&mut self) {
    self.shutdown.send_replace(true);
  }
}

impl fmt::Debug for SandboxListener {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.debug_struct("SandboxListener").field("addr", &self.addr).finish_non_exhaustive()
  }
}

/// A registered per-task token; dropping it revokes the token. It is issued live.
pub struct TaskToken {
  token: String,
  tokens: TokenSet,
}

impl TaskToken {
  /// The token, for `ANTHROPIC_API_KEY`.
  pub fn as_str(&self) -> &str {
    &self.token
  }

  /// Suspends (`false`) or resumes (`true`) the token: while suspended, requests with it get a `401` as if it were
  /// unknown; requests already forwarded finish. A warm CLI's token is live only while a task runs on it.
  pub fn set_live(&self, live: bool) {
    if let Some(e) = lock(&self.tokens).get_mut(&self.token) {
      e.live = live;
    }
  }

  /// Charges the token's model calls to `meter` from now on (`None`: not metered). A warm CLI's token is attached
  /// to each task in turn.
  pub fn attach(&self, meter: Option<Arc<TaskMeter>>) {
    if let Some(e) = lock(&self.tokens).get_mut(&self.token) {
      e.meter = meter;
    }
  }

  /// Whether requests with the token are forwarded now.
  pub fn is_live(&self) -> bool {
    lock(&self.tokens).get(&self.token).is_some_and(|e| e.live)
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

fn lock(tokens: &TokenSet) -> MutexGuard<'_, HashMap<String, Entry>> {
  tokens.lock().unwrap_or_else(PoisonError::into_inner)
}

fn invalid_input(msg: String) -> io::Error {
  io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl State {
  fn new(upstream: Upstream, tokens: TokenSet, limits: ProxyLimits) -> io::Result<State> {
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

    let extra_headers = parse_headers(&upstream.headers)?;

    let tls = HttpsConnectorBuilder::new()
      .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
      .map_err(|e| io::Error::other(format!("TLS setup failed: {e}")))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    let client = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).pool_idle_timeout(POOL_IDLE_TIMEOUT).build(connector);

    let all = Gate::new(limits.max_connections);
    Ok(State {
      tokens,
      scheme,
      authority,
      prefix,
      credential,
      oauth: upstream.oauth,
      extra_headers,
      client,
      refused: AtomicU64::new(0),
      limits,
      all,
      metering: None,
    })
  }

  /// The connection counter and the meter of the first `x-api-key` or `Authorization: Bearer` value that is a
  /// registered, live token.
  fn authorized(&self, headers: &HeaderMap, scope: u64) -> Option<(Arc<AtomicUsize>, Option<Arc<TaskMeter>>)> {
    let tokens = lock(&self.tokens);
    let api_keys = headers.get_all(X_API_KEY).into_iter().filter_map(|v| v.to_str().ok());
    let bearers = headers.get_all(header::AUTHORIZATION).into_iter().filter_map(|v| {
      let v = v.to_str().ok()?;
      v.get(..7).filter(|scheme| scheme.eq_ignore_ascii_case("bearer ")).map(|_| &v[7..])
    });
    api_keys
      .chain(bearers)
      .find_map(|t| tokens.get(t.trim()).filter(|e| e.live && e.scope == scope).map(|e| (e.conns.clone(), e.meter.clone())))
  }

  /// Counts the connection under the token of its first authorized request; false when the token already has
  /// [`ProxyLimits::max_connections_per_token`] connections.
  fn bind(&self, conn: &Conn, token_conns: Arc<AtomicUsize>) -> bool {
    let mut bound = conn.bound.lock().unwrap_or_else(PoisonError::into_inner);
    if bound.is_some() {
      return true;
    }
    if token_conns.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections_per_token {
      token_conns.fetch_sub(1, Ordering::AcqRel);
      return false;
    }
    *bound = Some(token_conns);
    true
  }

  /// Upstream scheme and host, upstream prefix + the request's path and query. The request's own scheme and host
  /// (absolute-form targets) are ignored.
  fn upstream_uri(&self, uri: &Uri) -> Result<Uri, hyper::http::Error> {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let sep = if pq.starts_with('/') { "" } else { "/" };
    Uri::builder().scheme(self.scheme.clone()).authority(self.authority.clone()).path_and_query(format!("{}{sep}{pq}", self.prefix)).build()
  }

  async fn handle(&self, req: Request<Incoming>, conn: &Conn, scope: u64) -> Response<ProxyBody> {
    if let Some(refusal) = route(req.method(), req.uri()) {
      self.refused.fetch_add(1, Ordering::Relaxed);
      return refusal;
    }
    let Some((token_conns, meter)) = self.authorized(req.headers(), scope) else {
      self.refused.fetch_add(1, Ordering::Relaxed);
      return json_error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid or expired API key for the local key proxy");
    };
    if !self.bind(conn, token_conns) {
      self.refused.fetch_add(1, Ordering::Relaxed);
      let mut resp =
        json_error(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "too many connections with this API key to the local key proxy");
      resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
      return resp;
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
    for (name, value) in &self.extra_headers {
      headers.insert(name.clone(), value.clone());
    }
    if self.oauth {
      let betas: Vec<String> = headers.get_all(ANTHROPIC_BETA).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
      if !betas.iter().flat_map(|v| v.split(',')).any(|b| b.trim() == OAUTH_BETA) {
        let joined = betas.into_iter().chain([OAUTH_BETA.to_owned()]).collect::<Vec<_>>().join(",");
        if let Ok(v) = HeaderValue::try_from(joined) {
          headers.insert(ANTHROPIC_BETA, v);
        }
      }
    }
    // A model call of a metered task: its body is taken whole, the call is admitted against the caps with its
    // reserve (read from the body: its model and max_tokens; where no cap applies, read beside the forwarding), and
    // its response is metered as it passes.
    let metered = match (&self.metering, meter) {
      (Some(m), Some(meter)) if parts.uri.path() == FORWARDED_PATHS[0] => Some((m.clone(), meter)),
      _ => None,
    };
    let (body, mut charge) = match metered {
      None => (Either::Left(body), None),
      Some((metering, meter)) => {
        if let Some(why) = meter.refused() {
          self.refused.fetch_add(1, Ordering::Relaxed);
          return budget_error(&why.message);
        }
        let bytes = match Limited::new(body, meter::MAX_METERED_REQUEST).collect().await {
          Ok(b) => b.to_bytes(),
          Err(_) => {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return json_error(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", "the request body could not be read or is too large");
          }
        };
        let request = CallRequest::new(bytes.clone(), &metering.prices);
        let admitted = metering.ledger.admit(&meter.owner, &request).await;
        match admitted {
          Admission::Go(call) => (Either::Right(Full::new(bytes)), Some(CallCharge::new(metering, meter, call, request))),
          Admission::Refused(why) => {
            self.refused.fetch_add(1, Ordering::Relaxed);
            meter.refuse(&why);
            return budget_error(&why.message);
          }
          Admission::Unavailable(why) => {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", &format!("local key proxy: {why}"));
          }
        }
      }
    };
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.headers_mut() = headers;

    match self.client.request(out).await {
      Ok(resp) => {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(c) = charge.as_mut() {
          let sse = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
          c.set_sse(sse);
        }
        Response::from_parts(parts, Either::Left(MeteredBody { inner: body, charge }))
      }
      Err(e) => {
        json_error(StatusCode::BAD_GATEWAY, "api_error", &format!("local key proxy could not reach the upstream API: {}", error_chain(&e)))
      }
    }
  }
}

/// The only requests forwarded: model calls. The path must be one of [`FORWARDED_PATHS`] exactly (byte for byte, so
/// no dot segment, percent-encoded character, double slash or trailing slash gets through); any query is kept. Anything
/// else is refused here with an Anthropic-style error (returned), and nothing is forwarded.
fn route(method: &Method, uri: &Uri) -> Option<Response<ProxyBody>> {
  let path = uri.path();
  if !FORWARDED_PATHS.contains(&path) {
    return Some(json_error(
      StatusCode::NOT_FOUND,
      "not_found_error",
      "the local key proxy forwards only POST /v1/messages and POST /v1/messages/count_tokens",
    ));
  }
  if method != Method::POST {
    return Some(json_error(StatusCode::FORBIDDEN, "permission_error", "the local key proxy forwards only POST requests"));
  }
  None
}

/// What stops a listener: the proxy's shutdown, and a [`SandboxListener`]'s own.
type Stops = (watch::Receiver<bool>, Option<watch::Receiver<bool>>);

async fn accept_loop(listener: TcpListener, state: Arc<State>, gate: Arc<Gate>, scope: u64, mut stops: Stops) {
  loop {
    let stream = tokio::select! {
      biased;
      _ = any_stopped(&mut stops) => return,
      accepted = listener.accept() => match accepted {
        Ok((stream, _)) => stream,
        // e.g. out of file descriptors: back off instead of spinning.
        Err(_) => {
          tokio::time::sleep(Duration::from_millis(50)).await;
          continue;
        }
      },
    };
    // Over a cap: closed right here (dropped), nothing spawned for it.
    let Some(passes) = state.all.enter().and_then(|all| gate.enter().map(|own| (all, own))) else {
      state.refused.fetch_add(1, Ordering::Relaxed);
      drop(stream);
      continue;
    };
    tokio::spawn(serve_connection(stream, state.clone(), passes, scope, stops.clone()));
  }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, passes: (GatePass, GatePass), scope: u64, mut stops: Stops) {
  let _ = stream.set_nodelay(true);
  let conn = Arc::new(Conn { in_flight: AtomicUsize::new(0), idle_since: Mutex::new(std::time::Instant::now()), bound: Mutex::new(None) });
  let idle_timeout = state.limits.idle_timeout;
  let header_read_timeout = state.limits.header_read_timeout;
  let service = {
    let conn = conn.clone();
    service_fn(move |req| {
      let (state, conn) = (state.clone(), conn.clone());
      async move {
        let in_flight = InFlight::new(&conn);
        let resp = state.handle(req, &conn, scope).await;
        Ok::<_, Infallible>(resp.map(|body| Tracked { body, _in_flight: in_flight }))
      }
    })
  };
  let http =
    http1::Builder::new().timer(TokioTimer::new()).header_read_timeout(header_read_timeout).serve_connection(TokioIo::new(stream), service);
  tokio::select! {
    _ = http => {}
    _ = idle(&conn, idle_timeout) => {}
    _ = any_stopped(&mut stops) => {}
  }
  drop(passes);
}

/// Resolves once the connection has had no request in flight for `timeout`.
async fn idle(conn: &Conn, timeout: Duration) {
  let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
  loop {
    tokio::time::sleep(tick).await;
    let since = *conn.idle_since.lock().unwrap_or_else(PoisonError::into_inner);
    if conn.in_flight.load(Ordering::Acquire) == 0 && since.elapsed() >= timeout {
      return;
    }
  }
}

async fn any_stopped(stops: &mut Stops) {
  match &mut stops.1 {
    Some(own) => tokio::select! {
      _ = stopped(&mut stops.0) => {}
      _ = stopped(own) => {}
    },
    None => stopped(&mut stops.0).await,
  }
}

/// Resolves once shutdown was requested (or every `KeyProxy` clone is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
  let _ = shutdown.wait_for(|stop| *stop).await;
}

/// `Name: value` lines (blank lines skipped), as the CLI reads `ANTHROPIC_CUSTOM_HEADERS`.
fn parse_headers(lines: &str) -> io::Result<Vec<(HeaderName, HeaderValue)>> {
  let mut out = Vec::new();
  for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
    let (name, value) = line.split_once(':').ok_or_else(|| invalid_input("a custom header line has no ':'".into()))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| invalid_input("a custom header has a bad name".into()))?;
    let mut value = HeaderValue::try_from(value.trim()).map_err(|_| invalid_input(format!("custom header {name} has a bad value")))?;
    value.set_sensitive(true);
    out.push((name, value));
  }
  Ok(out)
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

/// The HTTP status of a call refused for a spend cap: a client error the CLI does not retry, and shows.
pub const BUDGET_STATUS: StatusCode = StatusCode::PAYMENT_REQUIRED;

/// A call refused for a spend cap.
fn budget_error(why: &str) -> Response<ProxyBody> {
  json_error(BUDGET_STATUS, "budget_exceeded", why)
}

/// A response body from upstream, passed through frame by frame; a metered call's frames are shown to its
/// `CallCharge` as they pass, and the call is charged when the body ends or is dropped.
pub struct MeteredBody {
  inner: Incoming,
  charge: Option<CallCharge>,
}

impl hyper::body::Body for MeteredBody {
  type Data = Bytes;
  type Error = hyper::Error;

  fn poll_frame(
    mut self: std::pin::Pin<&mut Self>,
    cx: &mut std::task::Context<'_>,
  ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
    let this = &mut *self;
    let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
    if let Some(c) = this.charge.as_mut() {
      match &polled {
        std::task::Poll::Ready(Some(Ok(frame))) => {
          if let Some(data) = frame.data_ref() {
            c.feed(data);
          }
        }
        std::task::Poll::Ready(_) => c.settle(),
        std::task::Poll::Pending => {}
      }
    }
    polled
  }

  fn is_end_stream(&self) -> bool {
    self.inner.is_end_stream()
  }

  fn size_hint(&self) -> hyper::body::SizeHint {
    self.inner.size_hint()
  }
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

pub mod meter;
use meter::CallCharge;
pub use meter::{
  Admission, CallOwner, CallRequest, CallUsage, Ledger, Metered, Metering, PriceTable, Prices, Refusal, TaskMeter, LIST_PRICES,
};

#[cfg(test)]
mod tests;
