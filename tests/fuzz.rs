//! Property tests ("fuzzing") of the two readers that take untrusted text: the stream-json parser
//! (the CLI's stdout) and the transcript reader (files on disk). Whatever the input, they must not
//! panic, must report malformed input instead of failing, and must keep what they can read.
//!
//! The seed corpus: `tests/corpus/stream.jsonl` (real CLI output captured against the stand-in
//! server: init, partial messages, a tool turn, a 529 and a compaction) and the real transcripts
//! in `tests/fixtures/transcripts/*.jsonl` (those under 200 KB). proptest keeps failing cases in `proptest-regressions/`.

use claude_session_manager::cli::stream::{parse_line, ContextTracker, Kind};
use claude_session_manager::transcript::{parse_str, ReadOptions};
use proptest::prelude::*;
use serde_json::Value;

fn corpus() -> Vec<String> {
  let text = include_str!("corpus/stream.jsonl");
  text.lines().map(str::to_owned).collect()
}

fn transcripts() -> Vec<String> {
  let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transcripts");
  let mut v: Vec<String> = std::fs::read_dir(&dir)
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
    .filter_map(|e| e.ok())
    .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
    .filter(|t| t.len() < 200_000)
    .collect();
  assert!(!v.is_empty(), "{} has no transcript under 200 KB", dir.display());
  v.sort();
  v
}

fn json_value() -> impl Strategy<Value = Value> {
  let leaf = prop_oneof![
    Just(Value::Null),
    any::<bool>().prop_map(Value::Bool),
    any::<i64>().prop_map(Value::from),
    any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
    "[a-z_]{0,12}".prop_map(Value::String),
    prop_oneof![
      Just("system"),
      Just("assistant"),
      Just("user"),
      Just("result"),
      Just("stream_event"),
      Just("init"),
      Just("compact_boundary"),
      Just("status"),
      Just("message_start"),
      Just("message_delta")
    ]
    .prop_map(|s| Value::String(s.to_string())),
  ];
  leaf.prop_recursive(4, 64, 8, |inner| {
    prop_oneof![
      prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
      prop::collection::vec(
        (
          prop_oneof![
            Just("type"),
            Just("subtype"),
            Just("message"),
            Just("usage"),
            Just("event"),
            Just("input_tokens"),
            Just("output_tokens"),
            Just("is_error"),
            Just("modelUsage"),
            Just("compact_metadata"),
            Just("parent_tool_use_id"),
            Just("uuid"),
            Just("parentUuid"),
            Just("content"),
            Just("id"),
            Just("isSidechain")
          ]
          .prop_map(str::to_owned),
          inner
        ),
        0..6,
      )
      .prop_map(|kv| Value::Object(kv.into_iter().collect())),
    ]
  })
}

proptest! {
  #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

  #[test]
  fn stream_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
    let text = String::from_utf8_lossy(&bytes);
    let _ = parse_line(&text);
  }

  #[test]
  fn stream_parser_accepts_every_json_object(v in json_value()) {
    let line = v.to_string();
    let parsed = parse_line(&line);
    prop_assert_eq!(parsed.is_ok(), v.is_object());
    if let Ok(l) = parsed {
      // Equal to what serde_json reads from the same text (floats need not round-trip exactly).
      prop_assert_eq!(l.raw, serde_json::from_str::<Value>(&line).unwrap());
      let mut t = ContextTracker::default();
      t.observe(&l.kind);
    }
  }

  #[test]
  fn mutated_corpus_lines_are_reported_or_read(i in 0usize..1000, cut in 0usize..5000, flip in any::<(usize, u8)>()) {
    let lines = corpus();
    let line = &lines[i % lines.len()];
    let mut bytes = line.as_bytes().to_vec();
    bytes.truncate(cut.min(bytes.len()));
    if !bytes.is_empty() {
      let at = flip.0 % bytes.len();
      bytes[at] ^= flip.1;
    }
    let _ = parse_line(&String::from_utf8_lossy(&bytes));
  }

  #[test]
  fn transcript_reader_never_panics(lines in prop::collection::vec(json_value(), 0..30), junk in "[^\n]{0,40}") {
    let mut text: String = lines.iter().map(|v| v.to_string() + "\n").collect();
    text.push_str(&junk);
    let h = parse_str(&text, &ReadOptions::default());
    prop_assert!(h.live_from <= h.messages.len());
  }

  #[test]
  fn truncated_transcripts_keep_a_consistent_prefix(which in 0usize..100, cut in 0.0f64..1.0) {
    let mut all = transcripts();
    if all.is_empty() {
      all.push(corpus().join("\n"));
    }
    let t = &all[which % all.len()];
    let mut at = (t.len() as f64 * cut) as usize;
    while !t.is_char_boundary(at) { at -= 1; }
    let h = parse_str(&t[..at], &ReadOptions::default());
    let mut ids = std::collections::HashSet::new();
    for m in &h.messages {
      if let Some(id) = &m.message_id {
        prop_assert!(ids.insert(id.clone()), "message {} appears twice", id);
      }
    }
  }
}

#[test]
fn the_real_corpus_parses_completely() {
  let mut kinds = std::collections::BTreeSet::new();
  for line in corpus() {
    let l = parse_line(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    kinds.insert(match l.kind {
      Kind::Init { .. } => "init",
      Kind::CompactBoundary { .. } => "compact_boundary",
      Kind::Status { .. } => "status",
      Kind::Assistant { .. } => "assistant",
      Kind::User { .. } => "user",
      Kind::Partial { .. } => "partial",
      Kind::Result(_) => "result",
      _ => "other",
    });
  }
  for k in ["init", "compact_boundary", "status", "assistant", "user", "partial", "result"] {
    assert!(kinds.contains(k), "corpus lacks {k}");
  }
}
