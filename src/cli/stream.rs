//! Typed reading of the CLI's `--output-format stream-json` lines. Unknown types and fields are
//! kept as raw JSON and passed through; a line that is not JSON is reported, never fatal.

use serde_json::Value;

use crate::store::Usage;

/// One parsed line: its kind plus the raw JSON it came from.
#[derive(Debug, Clone)]
pub struct Line {
  pub kind: Kind,
  pub raw: Value,
}

/// What a line says, typed where the manager needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
  /// `system/init`: the CLI started; says which model, tools and version.
  Init { session_id: Option<String>, model: Option<String>, cli_version: Option<String> },
  /// `system/compact_boundary`: a compaction happened.
  CompactBoundary { trigger: String, pre_tokens: Option<u64>, post_tokens: Option<u64>, duration_ms: Option<u64> },
  /// `system/status`; carries `compact_error` when a compaction failed.
  Status { status: Option<String>, compact_error: Option<String> },
  /// `system/api_retry`.
  ApiRetry,
  /// Any other `system` subtype.
  System { subtype: String },
  /// A complete assistant message (one line per content block; usage may be provisional).
  Assistant { message_id: Option<String>, sidechain: bool, usage: Option<Usage> },
  /// A user message (prompts and tool results).
  User { sidechain: bool },
  /// A partial message event (`--include-partial-messages`).
  Partial { event_type: String, sidechain: bool, usage: Option<Usage> },
  /// The final line of a task.
  Result(Box<ResultLine>),
  /// A type this build does not know; passed through.
  Unknown { type_name: String },
}

/// The `result` line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResultLine {
  pub subtype: String,
  pub is_error: bool,
  pub result: Option<String>,
  pub num_turns: Option<u64>,
  pub duration_ms: Option<u64>,
  pub duration_api_ms: Option<u64>,
  pub total_cost_usd: Option<f64>,
  pub usage: Usage,
  /// `(model, contextWindow, costUSD, tokens counted in modelUsage)`.
  pub model_usage: Vec<ModelUsage>,
  pub permission_denials: Vec<Value>,
  pub stop_reason: Option<String>,
  pub api_error_status: Option<u64>,
  pub errors: Vec<String>,
  pub session_id: Option<String>,
}

/// One entry of `result.modelUsage`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelUsage {
  pub model: String,
  pub context_window: Option<u64>,
  pub cost_usd: Option<f64>,
  pub tokens: u64,
}

fn u64_at(v: &Value, key: &str) -> Option<u64> {
  v.get(key).and_then(|x| x.as_u64().or_else(|| x.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)))
}

fn str_at(v: &Value, key: &str) -> Option<String> {
  v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Reads API usage (`input_tokens`, `output_tokens`, `cache_*_input_tokens`) from an object.
pub fn usage_of(v: &Value) -> Option<Usage> {
  let o = v.as_object()?;
  if !o.contains_key("input_tokens") && !o.contains_key("output_tokens") {
    return None;
  }
  Some(Usage {
    input_tokens: u64_at(v, "input_tokens").unwrap_or(0),
    output_tokens: u64_at(v, "output_tokens").unwrap_or(0),
    cache_read_input_tokens: u64_at(v, "cache_read_input_tokens").unwrap_or(0),
    cache_creation_input_tokens: u64_at(v, "cache_creation_input_tokens").unwrap_or(0),
  })
}

fn is_sidechain(v: &Value) -> bool {
  v.get("parent_tool_use_id").map(|p| !p.is_null()).unwrap_or(false) || v.get("isSidechain").and_then(Value::as_bool).unwrap_or(false)
}

/// Parses one line. `Err` carries a short description for lines that are not a JSON object.
pub fn parse_line(line: &str) -> Result<Line, String> {
  let trimmed = line.trim();
  let raw: Value = serde_json::from_str(trimmed).map_err(|e| format!("not JSON ({e})"))?;
  if !raw.is_object() {
    return Err("not a JSON object".into());
  }
  let kind = classify(&raw);
  Ok(Line { kind, raw })
}

fn classify(v: &Value) -> Kind {
  let t = v.get("type").and_then(Value::as_str).unwrap_or("");
  match t {
    "system" => {
      let subtype = v.get("subtype").and_then(Value::as_str).unwrap_or("");
      match subtype {
        "init" => {
          Kind::Init { session_id: str_at(v, "session_id"), model: str_at(v, "model"), cli_version: str_at(v, "claude_code_version") }
        }
        "compact_boundary" => {
          let meta = v.get("compact_metadata").cloned().unwrap_or(Value::Null);
          Kind::CompactBoundary {
            trigger: str_at(&meta, "trigger").unwrap_or_else(|| "manual".into()),
            pre_tokens: u64_at(&meta, "pre_tokens"),
            post_tokens: u64_at(&meta, "post_tokens"),
            duration_ms: u64_at(&meta, "duration_ms"),
          }
        }
        "status" => Kind::Status {
          status: str_at(v, "status"),
          compact_error: v.get("compact_error").map(|e| match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
          }),
        },
        "api_retry" => Kind::ApiRetry,
        other => Kind::System { subtype: other.to_owned() },
      }
    }
    "assistant" => {
      let msg = v.get("message").cloned().unwrap_or(Value::Null);
      // The CLI reports an API failure as a synthetic assistant message with zero usage: it
      // says nothing about the context.
      let synthetic = v.get("is_api_error_message").and_then(Value::as_bool).unwrap_or(false)
        || msg.get("model").and_then(Value::as_str) == Some("<synthetic>");
      Kind::Assistant {
        message_id: str_at(&msg, "id"),
        sidechain: is_sidechain(v),
        usage: if synthetic { None } else { msg.get("usage").and_then(usage_of) },
      }
    }
    "user" => Kind::User { sidechain: is_sidechain(v) },
    "stream_event" => {
      let ev = v.get("event").cloned().unwrap_or(Value::Null);
      let event_type = str_at(&ev, "type").unwrap_or_default();
      let usage = match event_type.as_str() {
        "message_start" => ev.get("message").and_then(|m| m.get("usage")).and_then(usage_of),
        "message_delta" => ev.get("usage").and_then(usage_of),
        _ => None,
      };
      Kind::Partial { event_type, sidechain: is_sidechain(v), usage }
    }
    "result" => Kind::Result(Box::new(parse_result(v))),
    other => Kind::Unknown { type_name: other.to_owned() },
  }
}

fn parse_result(v: &Value) -> ResultLine {
  let mut model_usage = Vec::new();
  if let Some(mu) = v.get("modelUsage").and_then(Value::as_object) {
    for (model, m) in mu {
      let tokens =
        ["inputTokens", "outputTokens", "cacheReadInputTokens", "cacheCreationInputTokens"].iter().filter_map(|k| u64_at(m, k)).sum();
      model_usage.push(ModelUsage {
        model: model.clone(),
        context_window: u64_at(m, "contextWindow"),
        cost_usd: m.get("costUSD").and_then(Value::as_f64),
        tokens,
      });
    }
  }
  let errors = match v.get("errors") {
    Some(Value::Array(a)) => a.iter().map(|e| e.as_str().map(str::to_owned).unwrap_or_else(|| e.to_string())).collect(),
    _ => Vec::new(),
  };
  ResultLine {
    subtype: str_at(v, "subtype").unwrap_or_default(),
    is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(false),
    result: str_at(v, "result"),
    num_turns: u64_at(v, "num_turns"),
    duration_ms: u64_at(v, "duration_ms"),
    duration_api_ms: u64_at(v, "duration_api_ms"),
    total_cost_usd: v.get("total_cost_usd").and_then(Value::as_f64),
    usage: v.get("usage").and_then(usage_of).unwrap_or_default(),
    model_usage,
    permission_denials: v.get("permission_denials").and_then(Value::as_array).cloned().unwrap_or_default(),
    stop_reason: str_at(v, "stop_reason"),
    api_error_status: u64_at(v, "api_error_status"),
    errors,
    session_id: str_at(v, "session_id"),
  }
}

/// Follows the main chain's API calls through a task's lines and keeps the usage of the last
/// one: `message_start` opens a call with its input figures, `message_delta` brings the final
/// output count. Sidechain (subagent) calls are ignored: they have their own window.
#[derive(Debug, Default, Clone)]
pub struct ContextTracker {
  current: Option<Usage>,
  last: Option<Usage>,
}

impl ContextTracker {
  pub fn observe(&mut self, kind: &Kind) {
    match kind {
      Kind::Partial { event_type, sidechain: false, usage } => match event_type.as_str() {
        "message_start" => self.current = *usage,
        "message_delta" => {
          if let (Some(cur), Some(delta)) = (self.current.as_mut(), usage) {
            cur.output_tokens = delta.output_tokens;
            // Newer APIs repeat the input figures in message_delta; take them when given.
            if delta.input_tokens > 0 || delta.cache_read_input_tokens > 0 || delta.cache_creation_input_tokens > 0 {
              cur.input_tokens = delta.input_tokens;
              cur.cache_read_input_tokens = delta.cache_read_input_tokens;
              cur.cache_creation_input_tokens = delta.cache_creation_input_tokens;
            }
            self.last = Some(*cur);
          }
        }
        "message_stop" => {
          if let Some(cur) = self.current.take() {
            self.last = Some(cur);
          }
        }
        _ => {}
      },
      // Without partial events, an assistant line's usage is the best figure there is.
      Kind::Assistant { sidechain: false, usage: Some(u), .. } if self.current.is_none() => {
        let better = self.last.map(|l| l.context_total() <= u.context_total() || l.input_tokens != u.input_tokens);
        if better.unwrap_or(true) {
          self.last = Some(*u);
        }
      }
      // A compaction resets the context; the next call measures it again.
      Kind::CompactBoundary { .. } => {
        self.current = None;
        self.last = None;
      }
      _ => {}
    }
  }

  /// The usage of the last complete main-chain call, if any.
  pub fn last(&self) -> Option<Usage> {
    self.last
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn result_with_success_subtype_but_error() {
    let l = parse_line(
      r#"{"type":"result","subtype":"success","is_error":true,"api_error_status":529,"result":"API Error: 529","num_turns":1,
          "usage":{"input_tokens":0,"output_tokens":0},"modelUsage":{"claude-sonnet-4-5":{"inputTokens":3,"outputTokens":4,"contextWindow":200000,"costUSD":0.5}}}"#,
    )
    .unwrap();
    let Kind::Result(r) = l.kind else { panic!("not a result") };
    assert!(r.is_error);
    assert_eq!(r.subtype, "success");
    assert_eq!(r.api_error_status, Some(529));
    assert_eq!(r.model_usage[0].context_window, Some(200000));
    assert_eq!(r.model_usage[0].tokens, 7);
  }

  #[test]
  fn malformed_and_unknown_lines() {
    assert!(parse_line("garbage {").is_err());
    assert!(parse_line("[1,2]").is_err());
    assert!(parse_line("").is_err());
    let l = parse_line(r#"{"type":"future_thing","x":1}"#).unwrap();
    assert_eq!(l.kind, Kind::Unknown { type_name: "future_thing".into() });
    assert_eq!(l.raw["x"], 1);
  }

  #[test]
  fn compact_boundary_and_status() {
    let l = parse_line(
      r#"{"type":"system","subtype":"compact_boundary","compact_metadata":{"trigger":"auto","pre_tokens":150000,"post_tokens":9000}}"#,
    )
    .unwrap();
    assert_eq!(
      l.kind,
      Kind::CompactBoundary { trigger: "auto".into(), pre_tokens: Some(150000), post_tokens: Some(9000), duration_ms: None }
    );
    let l = parse_line(r#"{"type":"system","subtype":"status","status":null,"compact_error":"boom"}"#).unwrap();
    assert_eq!(l.kind, Kind::Status { status: None, compact_error: Some("boom".into()) });
  }

  #[test]
  fn synthetic_api_error_messages_carry_no_usage() {
    let l = parse_line(r#"{"type":"assistant","is_api_error_message":true,"message":{"id":"x","model":"<synthetic>","usage":{"input_tokens":0,"output_tokens":0}}}"#).unwrap();
    assert_eq!(l.kind, Kind::Assistant { message_id: Some("x".into()), sidechain: false, usage: None });
  }

  #[test]
  fn tracker_takes_final_output_from_message_delta_and_skips_sidechains() {
    let mut t = ContextTracker::default();
    let lines = [
      r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":1000,"cache_creation_input_tokens":50,"output_tokens":1}}}}"#,
      r#"{"type":"assistant","parent_tool_use_id":null,"message":{"id":"m1","usage":{"input_tokens":10,"cache_read_input_tokens":1000,"cache_creation_input_tokens":50,"output_tokens":0}}}"#,
      r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_delta","usage":{"output_tokens":77}}}"#,
      r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_stop"}}"#,
      r#"{"type":"stream_event","parent_tool_use_id":"toolu_1","event":{"type":"message_start","message":{"usage":{"input_tokens":99999,"output_tokens":1}}}}"#,
      r#"{"type":"stream_event","parent_tool_use_id":"toolu_1","event":{"type":"message_delta","usage":{"output_tokens":5}}}"#,
    ];
    for l in lines {
      t.observe(&parse_line(l).unwrap().kind);
    }
    let u = t.last().unwrap();
    assert_eq!(u.output_tokens, 77);
    assert_eq!(u.context_total(), 10 + 1000 + 50 + 77);
  }

  #[test]
  fn tracker_forgets_calls_made_before_a_compaction() {
    // A call reports a nearly full window, the CLI compacts, and no call completes after it (the
    // next one fails): nothing measured the compacted context, so the tracker has no figure.
    let mut t = ContextTracker::default();
    for l in [
      r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_start","message":{"usage":{"input_tokens":990000,"output_tokens":1}}}}"#,
      r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_delta","usage":{"output_tokens":17}}}"#,
      r#"{"type":"system","subtype":"compact_boundary","compact_metadata":{"trigger":"auto","pre_tokens":990017,"post_tokens":2700}}"#,
    ] {
      t.observe(&parse_line(l).unwrap().kind);
    }
    assert_eq!(t.last(), None);
    // A call after the boundary is the new measurement.
    let mut t = ContextTracker::default();
    for l in [
      r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_start","message":{"usage":{"input_tokens":990000,"output_tokens":1}}}}"#,
      r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_delta","usage":{"output_tokens":17}}}"#,
      r#"{"type":"system","subtype":"compact_boundary","compact_metadata":{"trigger":"auto","pre_tokens":990017,"post_tokens":2700}}"#,
      r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_start","message":{"usage":{"input_tokens":2900,"output_tokens":1}}}}"#,
      r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_delta","usage":{"output_tokens":40}}}"#,
    ] {
      t.observe(&parse_line(l).unwrap().kind);
    }
    assert_eq!(t.last().map(|u| u.context_total()), Some(2940));
  }

  /// Feeds lines to a fresh tracker and returns its figure.
  fn track(lines: &[String]) -> Option<Usage> {
    let mut t = ContextTracker::default();
    for l in lines {
      t.observe(&parse_line(l).unwrap().kind);
    }
    t.last()
  }
  fn start(input: u64, cache_read: u64, cache_creation: u64) -> String {
    format!(
      r#"{{"type":"stream_event","parent_tool_use_id":null,"event":{{"type":"message_start","message":{{"usage":{{"input_tokens":{input},"cache_read_input_tokens":{cache_read},"cache_creation_input_tokens":{cache_creation},"output_tokens":1}}}}}}}}"#
    )
  }
  fn delta(usage: &str) -> String {
    format!(r#"{{"type":"stream_event","parent_tool_use_id":null,"event":{{"type":"message_delta","usage":{{{usage}}}}}}}"#)
  }
  fn assistant(input: u64, output: u64) -> String {
    format!(
      r#"{{"type":"assistant","parent_tool_use_id":null,"message":{{"id":"m","usage":{{"input_tokens":{input},"output_tokens":{output}}}}}}}"#
    )
  }
  const STOP: &str = r#"{"type":"stream_event","parent_tool_use_id":null,"event":{"type":"message_stop"}}"#;
  fn u(input: u64, output: u64, cache_read: u64, cache_creation: u64) -> Usage {
    Usage { input_tokens: input, output_tokens: output, cache_read_input_tokens: cache_read, cache_creation_input_tokens: cache_creation }
  }

  #[test]
  fn tracker_takes_input_figures_repeated_in_message_delta_each_on_its_own() {
    // Newer APIs repeat the input figures in message_delta: any one of them present replaces all three.
    assert_eq!(track(&[start(10, 20, 30), delta(r#""output_tokens":5"#)]), Some(u(10, 5, 20, 30)), "output only: input figures kept");
    assert_eq!(track(&[start(10, 20, 30), delta(r#""output_tokens":5,"input_tokens":11"#)]), Some(u(11, 5, 0, 0)));
    assert_eq!(track(&[start(10, 20, 30), delta(r#""output_tokens":5,"cache_read_input_tokens":21"#)]), Some(u(0, 5, 21, 0)));
    assert_eq!(track(&[start(10, 20, 30), delta(r#""output_tokens":5,"cache_creation_input_tokens":31"#)]), Some(u(0, 5, 0, 31)));
  }

  #[test]
  fn tracker_closes_a_call_at_message_stop_without_a_delta() {
    assert_eq!(track(&[start(10, 20, 30), STOP.to_string()]), Some(u(10, 1, 20, 30)));
    assert_eq!(track(&[start(10, 20, 30)]), None, "a call still open is no measurement");
  }

  #[test]
  fn tracker_uses_assistant_lines_only_without_partial_events() {
    // No partial events: the assistant line is the figure.
    assert_eq!(track(&[assistant(100, 50)]), Some(u(100, 50, 0, 0)));
    // A later line of the same message (same input) with more output replaces it; with less, not.
    assert_eq!(track(&[assistant(100, 50), assistant(100, 80)]), Some(u(100, 80, 0, 0)));
    assert_eq!(track(&[assistant(100, 50), assistant(100, 1)]), Some(u(100, 50, 0, 0)));
    // A new call (other input figures) replaces it even when smaller.
    assert_eq!(track(&[assistant(100, 50), assistant(120, 0)]), Some(u(120, 0, 0, 0)));
    // While a partial call is open its assistant line does not count: the finished call before it stays.
    assert_eq!(track(&[start(10, 0, 0), delta(r#""output_tokens":5"#), start(20, 0, 0), assistant(99_999, 1)]), Some(u(10, 5, 0, 0)));
  }

  #[test]
  fn usage_needs_input_or_output_tokens() {
    let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    assert_eq!(usage_of(&v(r#"{"input_tokens":5}"#)), Some(u(5, 0, 0, 0)));
    assert_eq!(usage_of(&v(r#"{"output_tokens":3}"#)), Some(u(0, 3, 0, 0)));
    assert_eq!(usage_of(&v(r#"{"input_tokens":5,"output_tokens":3,"cache_read_input_tokens":7}"#)), Some(u(5, 3, 7, 0)));
    assert_eq!(usage_of(&v(r#"{"cache_read_input_tokens":7}"#)), None);
    assert_eq!(usage_of(&v(r#"{}"#)), None);
    assert_eq!(usage_of(&v(r#"[1]"#)), None);
  }
}
