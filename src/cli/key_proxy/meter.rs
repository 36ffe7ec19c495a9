//! Metering model calls at the key proxy: what each `POST /v1/messages` cost, read from the
//! response as it passes (never buffered), priced per model family, charged to the task that owns
//! the token; and the check, before a call is forwarded, that it cannot cross a spend cap.
//!
//! The proxy knows nothing of the store: the manager gives it a [`Ledger`] (admit a call against
//! the caps with a reserve, then settle it at what upstream reported) and attaches a [`TaskMeter`]
//! to each task's token ([`super::TaskToken::attach`]).

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
  pub input: f64,
  pub output: f64,
  /// Writing the prompt cache (5-minute entries). One-hour entries are priced at twice `input`,
  /// as the API prices them.
  pub cache_write: f64,
  pub cache_read: f64,
}

/// Anthropic's public list prices per model family (USD per million tokens, from
/// <https://www.anthropic.com/pricing>): Opus 4 / 4.1 $15 in, $75 out, $18.75 cache write,
/// $1.50 cache read; Sonnet 4 / 4.5 $3, $15, $3.75, $0.30; Haiku 4.5 $1, $5, $1.25, $0.10. A
/// model is matched by the family name in its id (`claude-sonnet-4-5` → sonnet). A model of no
/// known family is priced as the most expensive family (opus), so an unknown name can never be
/// cheaper than a real one. Newer, cheaper models of a family (Opus 4.5 is $5/$25) are
/// over-charged until `modelPrices` says otherwise.
pub const LIST_PRICES: [(&str, Prices); 3] = [
  ("opus", Prices { input: 15.0, output: 75.0, cache_write: 18.75, cache_read: 1.5 }),
  ("sonnet", Prices { input: 3.0, output: 15.0, cache_write: 3.75, cache_read: 0.3 }),
  ("haiku", Prices { input: 1.0, output: 5.0, cache_write: 1.25, cache_read: 0.1 }),
];

/// Bytes of a request body counted as one input token in a call's reserve (the API's tokens
/// are three to four bytes of text; fewer bytes per token only for unusual text).
pub const RESERVE_BYTES_PER_TOKEN: u64 = 4;

/// The price table: `modelPrices` overrides first (matched as a substring of the model id, the
/// longest first), then [`LIST_PRICES`]; anything else at the most expensive entry.
#[derive(Debug, Clone)]
pub struct PriceTable {
  /// Shared: the table is cloned with each call's metering.
  entries: Arc<[(String, Prices)]>,
}

impl Default for PriceTable {
  fn default() -> Self {
    PriceTable::with_overrides(Vec::new())
  }
}

impl PriceTable {
  /// The list prices with `overrides` (pattern, prices) taking precedence.
  pub fn with_overrides(overrides: Vec<(String, Prices)>) -> PriceTable {
    let mut own: Vec<(String, Prices)> = overrides.into_iter().map(|(k, p)| (k.to_ascii_lowercase(), p)).collect();
    own.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    own.extend(LIST_PRICES.iter().map(|(k, p)| ((*k).to_owned(), *p)));
    PriceTable { entries: own.into() }
  }

  /// The prices of `model`; an unknown model (or none) at the most expensive entry's.
  pub fn for_model(&self, model: &str) -> Prices {
    let m = model.to_ascii_lowercase();
    if !m.is_empty() {
      if let Some((_, p)) = self.entries.iter().find(|(k, _)| m.contains(k.as_str())) {
        return *p;
      }
    }
    self.most_expensive()
  }

  fn most_expensive(&self) -> Prices {
    self.entries.iter().map(|(_, p)| *p).fold(LIST_PRICES[0].1, |a, b| if b.output > a.output { b } else { a })
  }
}

/// Tokens of one call by kind, as upstream reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallUsage {
  pub input: u64,
  pub output: u64,
  pub cache_read: u64,
  /// Every cache write (`cache_creation_input_tokens`), one-hour ones included.
  pub cache_write: u64,
  /// The one-hour part of `cache_write`.
  pub cache_write_1h: u64,
}

impl CallUsage {
  /// The call's price in USD.
  pub fn usd(&self, p: &Prices) -> f64 {
    let five_min = self.cache_write.saturating_sub(self.cache_write_1h);
    (self.input as f64 * p.input
      + self.output as f64 * p.output
      + self.cache_read as f64 * p.cache_read
      + five_min as f64 * p.cache_write
      + self.cache_write_1h as f64 * p.input * 2.0)
      / 1_000_000.0
  }

  /// Overwrites the kinds `u` (an API `usage` object) reports; the others are kept (a
  /// `message_delta` reports the cumulative output, and sometimes the input again).
  fn merge(&mut self, u: &Value) {
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    if let Some(v) = get("input_tokens") {
      self.input = v;
    }
    if let Some(v) = get("output_tokens") {
      self.output = v;
    }
    if let Some(v) = get("cache_read_input_tokens") {
      self.cache_read = v;
    }
    if let Some(v) = get("cache_creation_input_tokens") {
      self.cache_write = v;
    }
    if let Some(v) = u.get("cache_creation").and_then(|c| c.get("ephemeral_1h_input_tokens")).and_then(Value::as_u64) {
      self.cache_write_1h = v.min(self.cache_write);
    }
  }

  fn add(&mut self, o: &CallUsage) {
    self.input += o.input;
    self.output += o.output;
    self.cache_read += o.cache_read;
    self.cache_write += o.cache_write;
    self.cache_write_1h += o.cache_write_1h;
  }
}

/// Whom a call is charged to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOwner {
  pub task_id: String,
  pub session_id: String,
  pub user_id: String,
  pub project_id: String,
}

/// What the proxy metered for one task: its calls' tokens and price, and the cap that stopped
/// one of its calls, if any. Shared by the task (which reads it at its end) and the proxy.
#[derive(Debug, Default)]
pub struct TaskMeter {
  pub owner: CallOwner,
  state: Mutex<MeterState>,
}

#[derive(Debug, Default, Clone)]
struct MeterState {
  usage: CallUsage,
  usd: f64,
  calls: u64,
  refused: Option<Refusal>,
}

/// A model call the proxy did not forward because of a spend cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
  /// The cap's scope: `user`, `project` or `session`.
  pub scope: String,
  /// What the CLI is told, naming the cap.
  pub message: String,
}

/// A snapshot of a [`TaskMeter`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metered {
  pub usage: CallUsage,
  pub usd: f64,
  /// Model calls charged (settled) so far.
  pub calls: u64,
  /// Why a call of the task was not forwarded (a spend cap), once one was refused.
  pub refused: Option<Refusal>,
}

impl TaskMeter {
  pub fn new(owner: CallOwner) -> Arc<TaskMeter> {
    Arc::new(TaskMeter { owner, state: Mutex::default() })
  }

  pub fn snapshot(&self) -> Metered {
    let s = self.state.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Metered { usage: s.usage, usd: s.usd, calls: s.calls, refused: s.refused }
  }

  fn charge(&self, usage: &CallUsage, usd: f64) {
    let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
    s.usage.add(usage);
    s.usd += usd;
    s.calls += 1;
  }

  pub(super) fn refuse(&self, why: &Refusal) {
    let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
    s.refused.get_or_insert_with(|| why.clone());
  }

  pub(super) fn refused(&self) -> Option<Refusal> {
    self.state.lock().unwrap_or_else(PoisonError::into_inner).refused.clone()
  }
}

/// The answer of [`Ledger::admit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
  /// Forward the call; the reserve is held under this ledger id until it is settled.
  Go(i64),
  /// Not forwarded: a cap would be crossed.
  Refused(Refusal),
  /// The caps could not be checked (the store failed): not forwarded.
  Unavailable(String),
}

/// Where calls are checked against the caps and charged: the manager's store.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync + 'static {
  /// Checks every cap that applies to `owner` against the call's reserve and, atomically with
  /// the check, records the call with the reserve as its price until it is settled. A call no
  /// cap applies to may be let go before its request is read, and recorded beside its forwarding.
  async fn admit(&self, owner: &CallOwner, call: &Arc<CallRequest>) -> Admission;
  /// Records what the call admitted as `call` really cost.
  async fn settle(&self, call: i64, model: &str, usage: &CallUsage, usd: f64);
}

/// What the proxy meters with: the ledger and the prices.
#[derive(Clone)]
pub struct Metering {
  pub ledger: Arc<dyn Ledger>,
  pub prices: PriceTable,
}

/// The largest request body read to find its model and `max_tokens` (a larger one is refused).
pub const MAX_METERED_REQUEST: usize = 64 << 20;
/// The largest JSON response kept to read its usage (a larger one is charged its reserve).
const MAX_JSON_RESPONSE: usize = 16 << 20;
/// Characters per output token assumed for a stream cut off before its final usage (English
/// prose runs about 4; code and other languages fewer, so this errs low).
const CUT_OFF_CHARS_PER_TOKEN: u64 = 4;
/// The longest SSE line kept to read (`message_start` and `message_delta` are short).
const MAX_SSE_LINE: usize = 1 << 20;

/// A model call's request as the ledger records it: the model it names and the reserve held for
/// it until it is settled. Both are read from the body when first asked for: a call no cap
/// applies to is forwarded first and read beside its forwarding, so a request of tens of
/// kilobytes is not parsed on the way to the model.
pub struct CallRequest {
  /// The body until it is read (then let go: the call's response may stream for minutes).
  body: Mutex<Option<Bytes>>,
  len: usize,
  prices: PriceTable,
  read: OnceLock<(String, f64)>,
}

impl CallRequest {
  pub fn new(body: Bytes, prices: &PriceTable) -> Arc<CallRequest> {
    Arc::new(CallRequest { len: body.len(), body: Mutex::new(Some(body)), prices: prices.clone(), read: OnceLock::new() })
  }

  /// A call whose model and reserve are already known.
  pub fn known(model: &str, reserve_usd: f64) -> Arc<CallRequest> {
    let read = OnceLock::from((model.to_owned(), reserve_usd));
    Arc::new(CallRequest { body: Mutex::new(None), len: 0, prices: PriceTable::default(), read })
  }

  /// The model the request names (`""` when it names none).
  pub fn model(&self) -> &str {
    &self.read().0
  }

  /// What the call may cost at most: its `max_tokens` at the output price plus its body at the
  /// input price.
  pub fn reserve_usd(&self) -> f64 {
    self.read().1
  }

  fn read(&self) -> &(String, f64) {
    self.read.get_or_init(|| {
      let body = self.body.lock().unwrap_or_else(PoisonError::into_inner).take().unwrap_or_default();
      reserve_of(&body, &self.prices)
    })
  }
}

impl fmt::Debug for CallRequest {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.debug_struct("CallRequest").field("bytes", &self.len).field("read", &self.read.get()).finish()
  }
}

/// The model and the reserve of a request body.
pub(super) fn reserve_of(body: &[u8], prices: &PriceTable) -> (String, f64) {
  // The reader skips the strings it does not keep without checking them as a whole parse would:
  // their bytes are checked as UTF-8 here, and a body with an escaped surrogate (which a whole
  // parse refuses when it is not half of a pair) is parsed whole.
  let surrogate = memchr::memmem::find_iter(body, b"\\u").any(|i| body.get(i + 2).is_some_and(|c| c.eq_ignore_ascii_case(&b'd')));
  let head = match std::str::from_utf8(body) {
    Ok(text) if !surrogate => serde_json::from_str::<RequestHead>(text).unwrap_or_default(),
    Ok(text) => serde_json::from_str::<Value>(text)
      .map(|v| RequestHead { model: v.get("model").cloned(), max_tokens: v.get("max_tokens").cloned() })
      .unwrap_or_default(),
    Err(_) => RequestHead::default(),
  };
  let model = head.model.as_ref().and_then(Value::as_str).unwrap_or("").to_owned();
  // A request without a valid max_tokens is refused upstream; it is reserved as a large one.
  let max_tokens = head.max_tokens.as_ref().and_then(Value::as_u64).unwrap_or(128_000);
  let p = prices.for_model(&model);
  let input = body.len() as u64 / RESERVE_BYTES_PER_TOKEN;
  (model, (max_tokens as f64 * p.output + input as f64 * p.input) / 1_000_000.0)
}

/// The two members of a request body the reserve needs, read without building the rest (the
/// messages, the system prompt, the tools): as a `serde_json::Value` would give them, the last of
/// duplicate keys winning, and nothing from a body that is not one JSON object. Two bodies a whole
/// parse refuses are read all the same: one with a number out of range, or nesting deeper than
/// 128 levels, in a member the reader skips. Such a body is reserved at its model and `max_tokens`
/// like any other (the whole parse's refusal gave it the largest reserve, by accident).
#[derive(Default)]
struct RequestHead {
  model: Option<Value>,
  max_tokens: Option<Value>,
}

impl<'de> Deserialize<'de> for RequestHead {
  fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
      type Value = RequestHead;
      fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
      }
      fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestHead, A::Error> {
        let mut head = RequestHead::default();
        while let Some(key) = map.next_key::<String>()? {
          match key.as_str() {
            "model" => head.model = Some(map.next_value()?),
            "max_tokens" => head.max_tokens = Some(map.next_value()?),
            _ => {
              map.next_value::<IgnoredAny>()?;
            }
          }
        }
        Ok(head)
      }
    }
    d.deserialize_map(Members)
  }
}

/// One forwarded call being metered: reads its response's usage as the frames pass, and charges
/// it once when the body ends or is dropped (a response cut off is charged what it reported).
pub(super) struct CallCharge {
  pub metering: Metering,
  pub meter: Arc<TaskMeter>,
  pub call: i64,
  pub request: Arc<CallRequest>,
  observer: Observer,
  done: bool,
}

impl CallCharge {
  pub fn new(metering: Metering, meter: Arc<TaskMeter>, call: i64, request: Arc<CallRequest>) -> CallCharge {
    CallCharge { metering, meter, call, request, observer: Observer::new(false), done: false }
  }

  /// Whether the response is a stream of server-sent events (else JSON); said before any frame.
  pub fn set_sse(&mut self, sse: bool) {
    self.observer = Observer::new(sse);
  }

  pub fn feed(&mut self, chunk: &[u8]) {
    self.observer.feed(chunk);
  }

  /// Charges the call (once).
  pub fn settle(&mut self) {
    if std::mem::replace(&mut self.done, true) {
      return;
    }
    let seen = self.observer.finish();
    let model = seen.model.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| self.request.model().to_owned());
    let prices = self.metering.prices.for_model(&model);
    let usd = if seen.unreadable { self.request.reserve_usd() } else { seen.usage.usd(&prices) };
    self.meter.charge(&seen.usage, usd);
    let (ledger, call, usage) = (self.metering.ledger.clone(), self.call, seen.usage);
    match tokio::runtime::Handle::try_current() {
      Ok(rt) => {
        rt.spawn(async move { ledger.settle(call, &model, &usage, usd).await });
      }
      Err(_) => crate::store::block_on(ledger.settle(call, &model, &usage, usd)),
    }
  }
}

impl Drop for CallCharge {
  fn drop(&mut self) {
    self.settle();
  }
}

/// What a response said about itself.
#[derive(Debug, Default, Clone)]
pub(super) struct Seen {
  pub usage: CallUsage,
  pub model: Option<String>,
  /// A JSON response too large to read: charged its reserve.
  pub unreadable: bool,
  /// Characters of content the stream delivered (text, thinking, tool input deltas).
  pub streamed_chars: u64,
  /// Whether a `message_delta` reported the final usage (a stream cut off before it has not).
  pub final_usage: bool,
}

/// Reads usage from a response body as it passes: server-sent events line by line
/// (`message_start`'s `message.usage`, then each `message_delta`'s `usage`), or a JSON body
/// kept up to [`MAX_JSON_RESPONSE`] and read at its end.
pub(super) struct Observer {
  sse: bool,
  buf: Vec<u8>,
  /// Skipping the rest of an SSE line longer than [`MAX_SSE_LINE`].
  skipping: bool,
  seen: Seen,
}

impl Observer {
  pub fn new(sse: bool) -> Observer {
    Observer { sse, buf: Vec::new(), skipping: false, seen: Seen::default() }
  }

  pub fn feed(&mut self, chunk: &[u8]) {
    if !self.sse {
      if self.buf.len() + chunk.len() > MAX_JSON_RESPONSE {
        self.seen.unreadable = true;
        self.buf = Vec::new();
      } else if !self.seen.unreadable {
        self.buf.extend_from_slice(chunk);
      }
      return;
    }
    let mut rest = chunk;
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
      let (head, tail) = rest.split_at(nl);
      if self.skipping {
        self.skipping = false;
      } else {
        self.buf.extend_from_slice(head);
        let line = std::mem::take(&mut self.buf);
        self.line(&line);
      }
      rest = &tail[1..];
    }
    if !self.skipping {
      if self.buf.len() + rest.len() > MAX_SSE_LINE {
        self.buf.clear();
        self.skipping = true;
      } else {
        self.buf.extend_from_slice(rest);
      }
    }
  }

  fn line(&mut self, line: &[u8]) {
    let Some(data) = line.strip_prefix(b"data:") else { return };
    // Only the two events that carry usage, and the content deltas (counted), are parsed.
    let has = |needle: &[u8]| data.windows(needle.len()).any(|w| w == needle);
    if !has(b"message_start") && !has(b"message_delta") && !has(b"content_block_delta") {
      return;
    }
    let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) else { return };
    match v.get("type").and_then(Value::as_str) {
      Some("content_block_delta") => {
        let d = v.get("delta");
        let text = ["text", "thinking", "partial_json"].iter().find_map(|k| d.and_then(|d| d.get(*k)).and_then(Value::as_str));
        self.seen.streamed_chars += text.map_or(0, |t| t.chars().count() as u64);
      }
      Some("message_start") => {
        if let Some(m) = v.get("message") {
          if let Some(u) = m.get("usage") {
            self.seen.usage.merge(u);
          }
          if let Some(model) = m.get("model").and_then(Value::as_str) {
            self.seen.model = Some(model.to_owned());
          }
        }
      }
      Some("message_delta") => {
        if let Some(u) = v.get("usage") {
          self.seen.usage.merge(u);
          self.seen.final_usage = true;
        }
      }
      _ => {}
    }
  }

  pub fn finish(&mut self) -> Seen {
    if self.sse {
      if !self.buf.is_empty() && !self.skipping {
        let line = std::mem::take(&mut self.buf);
        self.line(&line);
      }
      // Cut off before its final usage (an aborted task, a dropped connection): what it already
      // streamed counts, at one token per CUT_OFF_CHARS_PER_TOKEN characters, so that stopping a
      // reply before its end does not make its output free.
      if !self.seen.final_usage {
        let streamed = self.seen.streamed_chars.div_ceil(CUT_OFF_CHARS_PER_TOKEN);
        self.seen.usage.output = self.seen.usage.output.max(streamed);
      }
    } else if !self.seen.unreadable && !self.buf.is_empty() {
      if let Ok(v) = serde_json::from_slice::<Value>(&self.buf) {
        if let Some(u) = v.get("usage") {
          self.seen.usage.merge(u);
        }
        if let Some(model) = v.get("model").and_then(Value::as_str) {
          self.seen.model = Some(model.to_owned());
        }
      }
      self.buf = Vec::new();
    }
    self.seen.clone()
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  /// A ledger that records what it was told.
  #[derive(Default)]
  struct Recorded(Mutex<Vec<(i64, String, CallUsage, f64)>>);

  #[async_trait::async_trait]
  impl Ledger for Recorded {
    async fn admit(&self, _: &CallOwner, _: &Arc<CallRequest>) -> Admission {
      Admission::Go(1)
    }
    async fn settle(&self, call: i64, model: &str, usage: &CallUsage, usd: f64) {
      self.0.lock().unwrap().push((call, model.to_owned(), *usage, usd));
    }
  }

  #[test]
  fn each_call_is_charged_once_to_the_task_and_the_ledger_and_a_task_keeps_its_first_refusal() {
    let ledger = Arc::new(Recorded::default());
    let metering = Metering { ledger: ledger.clone(), prices: PriceTable::default() };
    let meter = TaskMeter::new(CallOwner::default());
    // A streamed call, settled twice (the body's end, then the drop): charged once.
    let mut a = CallCharge::new(metering.clone(), meter.clone(), 1, CallRequest::known("claude-sonnet-4-5", 9.0));
    a.set_sse(true);
    a.feed(b"data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1000000,\"cache_read_input_tokens\":2,\"cache_creation_input_tokens\":3}}}\n");
    a.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":1000000}}\n");
    a.settle();
    drop(a);
    // A JSON call, charged when dropped (a response cut off is charged what it reported).
    let mut b = CallCharge::new(metering.clone(), meter.clone(), 2, CallRequest::known("claude-haiku-4-5", 9.0));
    b.feed(br#"{"model":"claude-haiku-4-5","usage":{"input_tokens":5,"output_tokens":7}}"#);
    drop(b);
    let m = meter.snapshot();
    assert_eq!(m.calls, 2);
    assert_eq!(m.usage, CallUsage { input: 1_000_005, output: 1_000_007, cache_read: 2, cache_write: 3, cache_write_1h: 0 });
    let sonnet = 3.0 + 15.0 + (2.0 * 0.3 + 3.0 * 3.75) / 1e6;
    let haiku = (5.0 * 1.0 + 7.0 * 5.0) / 1e6;
    assert!((m.usd - (sonnet + haiku)).abs() < 1e-9, "{}", m.usd);
    let settled = ledger.0.lock().unwrap().clone();
    assert_eq!(
      settled.iter().map(|(c, model, _, _)| (*c, model.as_str())).collect::<Vec<_>>(),
      [(1, "claude-sonnet-4-5"), (2, "claude-haiku-4-5")]
    );
    assert!((settled[0].3 - sonnet).abs() < 1e-9 && (settled[1].3 - haiku).abs() < 1e-9);
    // A JSON body over the bound is charged its reserve; an SSE line over it is skipped, and the
    // lines after it are still read.
    let mut big = CallCharge::new(metering.clone(), meter.clone(), 3, CallRequest::known("claude-haiku-4-5", 4.5));
    big.feed(&vec![b' '; MAX_JSON_RESPONSE]);
    big.feed(br#"{"usage":{"input_tokens":1}}"#);
    big.settle();
    assert!((meter.snapshot().usd - (sonnet + haiku + 4.5)).abs() < 1e-9);
    let mut o = Observer::new(true);
    o.feed(&vec![b'x'; MAX_SSE_LINE]);
    o.feed(b"x\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":4}}\n");
    assert_eq!(o.finish().usage.output, 4);
    let mut exact = Observer::new(true);
    exact.feed(&[b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":6}}".as_slice(), &[b' '; 100]].concat());
    exact.feed(b"\n");
    assert_eq!(exact.finish().usage.output, 6, "a line under the bound split over two chunks is read");
    // The first refusal is the one the task reports.
    assert_eq!(meter.refused(), None);
    let cap = |scope: &str| Refusal { scope: scope.into(), message: format!("the {scope} cap") };
    meter.refuse(&cap("user"));
    meter.refuse(&cap("session"));
    assert_eq!(meter.refused(), Some(cap("user")));
    assert_eq!(meter.snapshot().refused, Some(cap("user")));
  }

  #[test]
  fn families_unknown_models_and_overrides_are_priced() {
    let t = PriceTable::default();
    assert_eq!(t.for_model("claude-sonnet-4-5-20250929").output, 15.0);
    assert_eq!(t.for_model("claude-3-5-haiku-latest").input, 1.0);
    assert_eq!(t.for_model("claude-opus-4-1").output, 75.0);
    assert_eq!(t.for_model("mystery-model").output, 75.0, "unknown: the most expensive family");
    assert_eq!(t.for_model("").output, 75.0);
    let p = Prices { input: 5.0, output: 25.0, cache_write: 6.25, cache_read: 0.5 };
    let t = PriceTable::with_overrides(vec![("opus-4-5".into(), p)]);
    assert_eq!(t.for_model("claude-opus-4-5").output, 25.0);
    assert_eq!(t.for_model("claude-opus-4-1").output, 75.0);
    let u = CallUsage { input: 1_000_000, output: 1_000_000, cache_read: 1_000_000, cache_write: 2_000_000, cache_write_1h: 1_000_000 };
    let s = PriceTable::default().for_model("sonnet");
    assert!((u.usd(&s) - (3.0 + 15.0 + 0.3 + 3.75 + 6.0)).abs() < 1e-9);
  }

  #[test]
  fn streamed_usage_is_read_across_frame_boundaries() {
    let sse = concat!(
      "event: message_start\n",
      "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku-4-5\",\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":7,\"cache_creation_input_tokens\":3,\"output_tokens\":1}}}\n\n",
      "event: content_block_delta\n",
      "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
      "event: message_delta\n",
      "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":42}}\n\n",
    );
    for step in [1, 3, 7, 64, sse.len()] {
      let mut o = Observer::new(true);
      for c in sse.as_bytes().chunks(step) {
        o.feed(c);
      }
      let s = o.finish();
      assert_eq!(s.usage, CallUsage { input: 10, output: 42, cache_read: 7, cache_write: 3, cache_write_1h: 0 }, "step {step}");
      assert_eq!(s.model.as_deref(), Some("claude-haiku-4-5"));
    }
    // Cut off after message_start: what was reported.
    let mut o = Observer::new(true);
    o.feed(&sse.as_bytes()[..sse.find("event: content").unwrap()]);
    assert_eq!(o.finish().usage.output, 1);
    // Cut off after content but before the final usage: the content streamed counts, at a token
    // per 4 characters (what was reported, when more, still wins).
    let delta = |text: &str| {
      format!("data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n")
    };
    let mut o = Observer::new(true);
    o.feed(&sse.as_bytes()[..sse.find("event: content").unwrap()]);
    for _ in 0..10 {
      o.feed(delta("0123456789").as_bytes());
    }
    o.feed(b"data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n");
    let seen = o.finish();
    assert_eq!((seen.streamed_chars, seen.final_usage, seen.usage.output), (107, false, 27));
    // With the final usage, the usage is what upstream reported.
    let mut o = Observer::new(true);
    o.feed(delta("0123456789").as_bytes());
    o.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":1}}\n");
    assert_eq!(o.finish().usage.output, 1);
  }

  #[test]
  fn json_usage_is_read_at_the_end() {
    let mut o = Observer::new(false);
    let body = br#"{"model":"claude-sonnet-4-5","usage":{"input_tokens":5,"output_tokens":6,"cache_creation_input_tokens":4,"cache_creation":{"ephemeral_1h_input_tokens":4}}}"#;
    for c in body.chunks(5) {
      o.feed(c);
    }
    let s = o.finish();
    assert_eq!(s.usage, CallUsage { input: 5, output: 6, cache_read: 0, cache_write: 4, cache_write_1h: 4 });
  }

  #[test]
  fn the_reserve_is_max_tokens_at_the_output_price_plus_the_body_at_the_input_price() {
    let body = br#"{"model":"claude-sonnet-4-5","max_tokens":1000,"messages":[]}"#;
    let (model, r) = reserve_of(body, &PriceTable::default());
    assert_eq!(model, "claude-sonnet-4-5");
    let want = (1000.0 * 15.0 + (body.len() as u64 / 4) as f64 * 3.0) / 1e6;
    assert!((r - want).abs() < 1e-12, "{r} {want}");
  }

  /// The reserve as read before its reader skipped what it does not need: the whole body parsed.
  fn reserve_of_whole_body(body: &[u8], prices: &PriceTable) -> (String, f64) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = v.get("model").and_then(Value::as_str).unwrap_or("").to_owned();
    let max_tokens = v.get("max_tokens").and_then(Value::as_u64).unwrap_or(128_000);
    let p = prices.for_model(&model);
    let input = body.len() as u64 / RESERVE_BYTES_PER_TOKEN;
    (model, (max_tokens as f64 * p.output + input as f64 * p.input) / 1_000_000.0)
  }

  #[test]
  fn the_reserve_reads_a_body_as_a_whole_parse_would() {
    let bodies: Vec<&[u8]> = vec![
      br#"{"model":"claude-haiku-4-5","max_tokens":1000,"messages":[{"role":"user","content":"max_tokens model"}]}"#,
      // The last of duplicate keys wins, as upstream's parser and a Value have it.
      br#"{"max_tokens":1,"model":"claude-haiku-4-5","max_tokens":64000,"model":"claude-opus-4-1"}"#,
      // An escaped key is the key it spells.
      br#"{"mo\u0064el":"claude-haiku-4-5","max_\u0074okens":5}"#,
      // Members of the wrong type, nested look-alikes, a negative or fractional max_tokens.
      br#"{"model":7,"max_tokens":"9","metadata":{"model":"claude-haiku-4-5","max_tokens":1}}"#,
      br#"{"model":"claude-haiku-4-5","max_tokens":-1}"#,
      br#"{"model":"claude-haiku-4-5","max_tokens":1.5}"#,
      br#"{"model":"claude-haiku-4-5","max_tokens":18446744073709551616}"#,
      // Not one JSON object: nothing is read.
      br#"{"model":"claude-haiku-4-5","max_tokens":10} trailing"#,
      br#"{"model":"claude-haiku-4-5","max_tokens":10,"messages":[1,2,}"#,
      br#"{"model":"claude-haiku-4-5","max_tokens":10,"x":"\q"}"#,
      b"{\"model\":\"claude-haiku-4-5\",\"max_tokens\":10,\"x\":\"\xff\xfe\"}",
      br#"{"model":"claude-haiku-4-5","max_tokens":10,"x":"\ud800"}"#,
      br#"{"model":"claude-haiku-4-5","max_tokens":10,"x":"\ud83d\ude00 \\ud800"}"#,
      br#"{"model":"claude-haiku-4-5","max_tokens":10,"x":"\udc00 \ud83d\ude00"}"#,
      b"{\"model\":\"claude-haiku-4-5\",\"max_tokens\":10,\"x\":\"a\nb\"}",
      b"{\"model\":\"claude-haiku-4-5\",\"max_tokens\":10,\"x\":\"a\x00b\"}",
      br#"[{"model":"claude-haiku-4-5","max_tokens":10}]"#,
      br#""claude-haiku-4-5""#,
      b"",
      br#"{"model":"claude-haiku-4-5","max_tokens":10,"model":"claude-haiku-4-5","x":{"deep":[[[[{"a":null}]]]]}}"#,
    ];
    let prices = PriceTable::default();
    for body in bodies {
      assert_eq!(reserve_of(body, &prices), reserve_of_whole_body(body, &prices), "{}", String::from_utf8_lossy(body));
    }
    // What the whole parse refuses in a skipped member and the reader does not: a number out of
    // range, nesting deeper than 128. Read for the two members, as the same body without it.
    let deep = format!(r#"{{"model":"claude-haiku-4-5","max_tokens":10,"x":{}{}}}"#, "[".repeat(200), "]".repeat(200));
    for body in [br#"{"model":"claude-haiku-4-5","max_tokens":10,"x":1e400}"#.to_vec(), deep.into_bytes()] {
      assert_eq!(reserve_of_whole_body(&body, &prices).0, "", "the whole parse refuses it");
      let (model, r) = reserve_of(&body, &prices);
      let want = (10.0 * 5.0 + (body.len() as u64 / 4) as f64 * 1.0) / 1e6;
      assert_eq!(model, "claude-haiku-4-5");
      assert!((r - want).abs() < 1e-12, "{r} {want}");
    }
  }

  #[test]
  fn a_call_request_is_read_only_when_asked() {
    let body = Bytes::from_static(br#"{"model":"claude-haiku-4-5","max_tokens":100}"#);
    let call = CallRequest::new(body.clone(), &PriceTable::default());
    assert!(call.read.get().is_none(), "read before it was asked for");
    assert_eq!((call.model().to_owned(), call.reserve_usd()), reserve_of(&body, &PriceTable::default()));
    assert!(call.body.lock().unwrap().is_none(), "the body is let go once read");
  }

  /// What reading a call's model and reserve costs, against parsing the whole body, on a body of
  /// the CLI's shape (about 50 KB: system prompt, tools, messages). A measurement, not a check:
  /// `cargo test --release --lib reserve_reading_cost -- --ignored --nocapture`.
  #[test]
  #[ignore]
  fn reserve_reading_cost() {
    let tool = |i: usize| {
      serde_json::json!({ "name": format!("Tool{i}"), "description": "Does one thing with care.\n".repeat(30),
        "input_schema": { "type": "object", "properties": { "path": { "type": "string", "description": "where" } } } })
    };
    let body = serde_json::to_vec(&serde_json::json!({
      "model": "claude-sonnet-4-5", "max_tokens": 32000,
      "system": [{ "type": "text", "text": "You are an agent. \"Quoted\" and\ttabbed.\n".repeat(400) }],
      "tools": (0..20).map(tool).collect::<Vec<_>>(),
      "messages": [{ "role": "user", "content": [{ "type": "text", "text": "Reply with one sentence, café ✓." }] }],
    }))
    .unwrap();
    let prices = PriceTable::default();
    let rounds = 2000;
    for _ in 0..2 {
      let t = std::time::Instant::now();
      for _ in 0..rounds {
        std::hint::black_box(reserve_of_whole_body(std::hint::black_box(&body), &prices));
      }
      let whole = t.elapsed() / rounds;
      let t = std::time::Instant::now();
      for _ in 0..rounds {
        std::hint::black_box(reserve_of(std::hint::black_box(&body), &prices));
      }
      let head = t.elapsed() / rounds;
      println!("body {} bytes: whole parse {whole:?}, model and max_tokens only {head:?} per call", body.len());
    }
    assert_eq!(reserve_of(&body, &prices), reserve_of_whole_body(&body, &prices));
  }
}
