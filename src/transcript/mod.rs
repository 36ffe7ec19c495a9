//! Where the CLI keeps a session's transcript, and reading it back as a conversation.
//!
//! A transcript is JSONL, one object per line: `user` and `assistant` lines carry an Anthropic
//! message, other types (`system`, `progress`, `summary`, `file-history-snapshot`,
//! `queue-operation`, …) carry CLI bookkeeping. Lines form a tree through `uuid`/`parentUuid`;
//! rewinds and retries leave dead branches, and the CLI writes one line per content block of an
//! assistant message (each repeating `message.id`). [`read_messages`] turns this back into the
//! conversation the CLI would continue.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::Usage;

mod build;
use build::*;
pub mod safe;
pub use safe::{TenantFile, DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_TRANSCRIPT_BYTES};

/// The CLI's folder name for a working directory: every character that is not an ASCII letter or
/// digit becomes `-`.
pub fn project_slug(cwd: &Path) -> String {
  cwd.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// The CLI's configuration folder for a child environment: `CLAUDE_CONFIG_DIR`, else `~/.claude`.
pub fn config_dir(env: &[(String, String)]) -> Option<PathBuf> {
  let get = |k: &str| env.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
  get("CLAUDE_CONFIG_DIR")
    .map(PathBuf::from)
    .or_else(|| get("HOME").or_else(|| get("USERPROFILE")).map(|h| PathBuf::from(h).join(".claude")))
}

/// The transcript file of a session: below the configuration folder, which the agent can write
/// (so it is only ever opened through [`TenantFile`]).
pub fn transcript_path(config_dir: &Path, cwd: &Path, session_id: &str) -> TenantFile {
  TenantFile::new(config_dir, Path::new("projects").join(project_slug(cwd)).join(format!("{session_id}.jsonl")))
}

// ---------------------------------------------------------------------------------------------
// Reading a transcript back as a conversation.
// ---------------------------------------------------------------------------------------------

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
  User,
  Assistant,
}

/// What a message is, for a chat UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum MessageKind {
  /// Something the user typed (text and/or images).
  Prompt,
  /// The results of the preceding assistant message's tool calls (one user message per API
  /// call, however many lines the CLI wrote for it). May also carry text blocks the CLI added.
  ToolResults,
  /// A slash command the user ran or its local output (`<command-name>`, `<local-command-stdout>`,
  /// `<bash-input>`…).
  Command,
  /// A notification the CLI injected as a user message (`<task-notification>`: a background
  /// task finished).
  Notification,
  /// The summary the CLI wrote when it compacted the conversation; everything before it is no
  /// longer in the model's context. `compaction` says how and from what size.
  CompactSummary,
  /// A CLI-internal user message (`isMeta`: slash-command expansions, caveats). Only present
  /// with [`ReadOptions::include_meta`].
  Meta,
  /// One API response of the model.
  Assistant,
}

/// One content block.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Block {
  Text {
    text: String,
  },
  /// The model's (summarised) thinking, as the CLI stored it; may be empty.
  Thinking {
    text: String,
  },
  ToolUse {
    id: String,
    name: String,
    input: Value,
  },
  ToolResult {
    tool_use_id: String,
    /// The name of the tool whose call this answers, when that call is in the history.
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<String>,
    /// The text of the result (text parts joined by newlines), cut to
    /// [`ReadOptions::max_tool_result_chars`].
    content: String,
    is_error: bool,
    /// Whether `content` was cut; `content_chars` is then the full length in characters.
    truncated: bool,
    content_chars: usize,
    /// Images in the result (their data is not returned).
    images: usize,
  },
  /// An image (its data is not returned).
  Image {
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
  },
  /// A block type this reader does not interpret (`redacted_thinking`, server tools, documents…).
  Other {
    block_type: String,
  },
}

/// How and from what a compaction was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Compaction {
  /// `auto` or `manual`, as the CLI wrote it.
  #[serde(skip_serializing_if = "Option::is_none")]
  pub trigger: Option<String>,
  /// The context size before the compaction, in tokens.
  #[serde(skip_serializing_if = "Option::is_none")]
  pub pre_tokens: Option<u64>,
}

/// One message of the conversation: a user message or one API response of the model (whose
/// content blocks the CLI writes as several lines; they are merged here).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
  /// The `uuid` of the message's first transcript line.
  pub uuid: String,
  /// The `parentUuid` of that line (may name a line that is not a message: hook progress, a
  /// system line, a meta message; `null` at the root and after a compaction boundary).
  #[serde(skip_serializing_if = "Option::is_none")]
  pub parent_uuid: Option<String>,
  pub role: Role,
  pub kind: MessageKind,
  /// The text blocks joined by blank lines (the summary for `compactSummary`).
  pub text: String,
  pub blocks: Vec<Block>,
  /// The API message id (`msg_…`) of an assistant message.
  #[serde(skip_serializing_if = "Option::is_none")]
  pub message_id: Option<String>,
  #[serde(skip_serializing_if = "Option::is_none")]
  pub model: Option<String>,
  /// ISO-8601 time of the first line.
  #[serde(skip_serializing_if = "Option::is_none")]
  pub timestamp: Option<String>,
  /// The API usage of an assistant message (of its last line). The input side
  /// (`inputTokens + cacheReadInputTokens + cacheCreationInputTokens`: the context the call saw)
  /// is exact; the CLI writes lines while the response streams, so `outputTokens` is often a
  /// partial count.
  #[serde(skip_serializing_if = "Option::is_none")]
  pub usage: Option<Usage>,
  /// Set on `compactSummary` messages.
  #[serde(skip_serializing_if = "Option::is_none")]
  pub compaction: Option<Compaction>,
  /// The uuids of every transcript line merged into this message, in file order.
  #[serde(skip)]
  pub line_uuids: Vec<String>,
}

impl Message {
  /// The tool calls of an assistant message.
  pub fn tool_uses(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
    self.blocks.iter().filter_map(|b| match b {
      Block::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
      _ => None,
    })
  }

  /// The tool results of a user message: `(tool_use_id, content, is_error)`.
  pub fn tool_results(&self) -> impl Iterator<Item = (&str, &str, bool)> {
    self.blocks.iter().filter_map(|b| match b {
      Block::ToolResult { tool_use_id, content, is_error, .. } => Some((tool_use_id.as_str(), content.as_str(), *is_error)),
      _ => None,
    })
  }

  /// The context the API call of an assistant message saw, in tokens (input + cache reads +
  /// cache writes), or `None` for user messages and calls without usage.
  pub fn context_tokens(&self) -> Option<u64> {
    let u = self.usage.as_ref()?;
    let t = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens;
    (t > 0).then_some(t)
  }
}

/// A session's conversation as the CLI will continue it: the chain from the newest main-chain
/// message back to the first one, across compactions, without dead branches (rewinds, retries),
/// subagent (sidechain) lines, hook progress, file-history snapshots, titles and meta messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
  /// Oldest first.
  pub messages: Vec<Message>,
  /// Index in `messages` of the first message still in the model's context: the latest
  /// compaction summary, or 0.
  pub live_from: usize,
  /// How many compactions the history went through.
  pub compactions: usize,
  /// Lines that were not JSON objects (or not UTF-8), or longer than
  /// [`ReadOptions::max_line_bytes`], and were skipped.
  pub malformed_lines: usize,
}

/// A slice of a [`History`], oldest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
  pub messages: Vec<Message>,
  /// Index of the first returned message in the whole history (counted from the oldest).
  pub offset: usize,
  /// Messages in the whole history.
  pub total: usize,
}

impl History {
  /// `limit` messages starting at `offset`, counted from the oldest message (offset 0 = the
  /// first message). Out-of-range offsets give an empty page.
  pub fn page(&self, offset: usize, limit: usize) -> Page {
    let start = offset.min(self.messages.len());
    let end = start.saturating_add(limit).min(self.messages.len());
    Page { messages: self.messages[start..end].to_vec(), offset: start, total: self.messages.len() }
  }

  /// `limit` messages ending `skip_newest` messages before the newest one, still oldest first:
  /// `page_from_end(0, 20)` is the latest 20 messages, `page_from_end(20, 20)` the 20 before them.
  /// This is what a chat view that scrolls upwards wants.
  pub fn page_from_end(&self, skip_newest: usize, limit: usize) -> Page {
    let end = self.messages.len().saturating_sub(skip_newest);
    let start = end.saturating_sub(limit);
    self.page(start, end - start)
  }
}

/// How to read a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
  /// Tool result text beyond this many characters is cut (`truncated: true`). `usize::MAX` keeps
  /// everything.
  pub max_tool_result_chars: usize,
  /// Keep CLI-internal `isMeta` user messages (as kind `meta`). They are sent to the model but a
  /// chat UI hides them.
  pub include_meta: bool,
  /// A line longer than this is skipped (counted in `malformed_lines`) without being held.
  pub max_line_bytes: usize,
  /// A transcript longer than this is not read: `TRANSCRIPT_TOO_LARGE`.
  pub max_transcript_bytes: u64,
}

/// The default cut for tool results, in characters.
pub const DEFAULT_MAX_TOOL_RESULT_CHARS: usize = 8_000;

impl Default for ReadOptions {
  fn default() -> Self {
    ReadOptions {
      max_tool_result_chars: DEFAULT_MAX_TOOL_RESULT_CHARS,
      include_meta: false,
      max_line_bytes: DEFAULT_MAX_LINE_BYTES,
      max_transcript_bytes: DEFAULT_MAX_TRANSCRIPT_BYTES,
    }
  }
}

impl ReadOptions {
  /// Everything the model saw: meta messages included, tool results uncut (for token accounting).
  pub fn full() -> Self {
    ReadOptions { max_tool_result_chars: usize::MAX, include_meta: true, ..ReadOptions::default() }
  }

  /// These options with a transcript bound (`maxTranscriptBytes`).
  pub fn bounded(self, max_transcript_bytes: u64) -> Self {
    ReadOptions { max_transcript_bytes, ..self }
  }
}

/// Reads a session's conversation from its transcript file with the default options.
/// A missing file is an empty history (the session has not run yet). A link, a special file or a
/// link on the way is `TRANSCRIPT_UNSAFE` (never followed); a file longer than the bound is
/// `TRANSCRIPT_TOO_LARGE` (not read); one that cannot be read is a `STORE_ERROR` naming the path.
/// Malformed lines, and lines over the line cap, are skipped and counted.
pub fn read_messages(file: &TenantFile) -> Result<History> {
  read_messages_with(file, &ReadOptions::default())
}

/// [`read_messages`] with options.
pub fn read_messages_with(file: &TenantFile, opts: &ReadOptions) -> Result<History> {
  let Some((f, len)) = file.open_read()? else { return Ok(History::default()) };
  let what = || format!("the transcript {}", file.path().display());
  if len > opts.max_transcript_bytes {
    return Err(safe::too_large(&what(), opts.max_transcript_bytes));
  }
  parse_reader(BufReader::with_capacity(64 * 1024, f), opts).map_err(|e| match e {
    safe::LineError::TooLarge => safe::too_large(&what(), opts.max_transcript_bytes),
    safe::LineError::Io(e) => Error::store(format!("cannot read transcript {}: {e}", file.path().display())),
  })
}

/// Reads a conversation from transcript JSONL, line by line within `opts`' bounds.
pub fn parse_reader<R: BufRead>(reader: R, opts: &ReadOptions) -> std::result::Result<History, safe::LineError> {
  let mut lines = safe::BoundedLines::new(reader, opts.max_line_bytes, opts.max_transcript_bytes);
  let mut p = LineParser::default();
  let mut buf = Vec::new();
  while lines.next_into(&mut buf)? {
    p.push(&buf);
  }
  p.malformed += lines.skipped;
  Ok(p.finish(opts))
}

/// Reads a conversation from transcript JSONL text.
pub fn parse_str(text: &str, opts: &ReadOptions) -> History {
  parse_lines(text.split('\n'), opts)
}

/// Reads a conversation from transcript lines (lines over `opts.max_line_bytes` are skipped).
pub fn parse_lines<'a>(lines: impl IntoIterator<Item = &'a str>, opts: &ReadOptions) -> History {
  let mut p = LineParser::default();
  for l in lines {
    if l.len() > opts.max_line_bytes {
      p.malformed += 1;
    } else {
      p.push(l.as_bytes());
    }
  }
  p.finish(opts)
}

/// Lines parsed so far. Lines that are not messages keep only what the tree needs (a progress
/// line or a file snapshot can be large and is never shown).
#[derive(Default)]
struct LineParser {
  lines: Vec<Value>,
  malformed: usize,
}

impl LineParser {
  fn push(&mut self, bytes: &[u8]) {
    match parse_raw_line(bytes) {
      Some(Some(v)) => self.lines.push(if is_message_line(&v) { v } else { skeleton(v) }),
      Some(None) => self.malformed += 1,
      None => {}
    }
  }
  fn finish(self, opts: &ReadOptions) -> History {
    build_history(&self.lines, self.malformed, opts)
  }
}

#[cfg(test)]
pub(crate) mod tests {
  use super::*;
  use std::collections::{HashMap, HashSet};

  #[test]
  fn slug_replaces_every_non_alphanumeric() {
    assert_eq!(project_slug(Path::new("/home/u/my_app.v2")), "-home-u-my-app-v2");
    let env = vec![("HOME".to_string(), "/h".to_string())];
    assert_eq!(config_dir(&env), Some(PathBuf::from("/h/.claude")));
    let env = vec![("HOME".to_string(), "/h".to_string()), ("CLAUDE_CONFIG_DIR".to_string(), "/c".to_string())];
    assert_eq!(transcript_path(&config_dir(&env).unwrap(), Path::new("/w"), "id").path(), PathBuf::from("/c/projects/-w/id.jsonl"));
  }

  // --- conversation replay -------------------------------------------------------------------

  use serde_json::json;

  fn line(v: Value) -> String {
    v.to_string()
  }

  fn user(uuid: &str, parent: Option<&str>, content: Value) -> String {
    line(json!({"type": "user", "uuid": uuid, "parentUuid": parent, "isSidechain": false,
      "timestamp": "2026-01-01T00:00:00Z", "message": {"role": "user", "content": content}}))
  }

  fn assistant(uuid: &str, parent: &str, msg_id: &str, block: Value, ctx: u64) -> String {
    line(json!({"type": "assistant", "uuid": uuid, "parentUuid": parent, "isSidechain": false,
      "message": {"id": msg_id, "role": "assistant", "model": "claude-sonnet-4-5", "content": [block],
        "usage": {"input_tokens": 3, "cache_read_input_tokens": ctx - 3, "output_tokens": 7}}}))
  }

  fn text(t: &str) -> Value {
    json!({"type": "text", "text": t})
  }
  fn tool_use(id: &str) -> Value {
    json!({"type": "tool_use", "id": id, "name": "Bash", "input": {"command": "ls"}})
  }
  fn tool_result(id: &str, content: &str) -> Value {
    json!([{"type": "tool_result", "tool_use_id": id, "content": content}])
  }

  fn summary(h: &History) -> Vec<String> {
    h.messages
      .iter()
      .map(|m| {
        let blocks: Vec<String> = m
          .blocks
          .iter()
          .map(|b| match b {
            Block::Text { text } => text.clone(),
            Block::ToolUse { id, .. } => format!("use:{id}"),
            Block::ToolResult { tool_use_id, .. } => format!("result:{tool_use_id}"),
            other => format!("{other:?}"),
          })
          .collect();
        format!("{:?}:{:?} {}", m.role, m.kind, blocks.join(","))
      })
      .collect()
  }

  /// A tree with a rewind (dead branch), parallel tool calls whose results hang off their own
  /// tool_use lines, a sidechain, hook progress and junk lines.
  fn rewind_tree() -> String {
    [
      line(json!({"type": "file-history-snapshot", "messageId": "u1", "snapshot": {}})),
      user("u1", None, json!("hello")),
      assistant("a1", "u1", "msg_1", text("let me look"), 100),
      assistant("a1b", "a1", "msg_1", tool_use("t1"), 100),
      line(json!({"type": "progress", "uuid": "p1", "parentUuid": "a1b", "data": {"type": "hook_progress"}})),
      user("r1", Some("a1b"), tool_result("t1", "file.txt")),
      assistant("a2", "r1", "msg_2", text("done"), 150),
      "this is not json".to_string(),
      user("u2", Some("a2"), json!("first try")),
      assistant("a3", "u2", "msg_3", text("answer A"), 160),
      line(json!({"type": "user", "uuid": "s1", "parentUuid": null, "isSidechain": true,
        "message": {"role": "user", "content": "subagent prompt"}})),
      user("u2b", Some("a2"), json!("second try")),
      assistant("a4", "u2b", "msg_4", tool_use("t2"), 170),
      assistant("a4b", "a4", "msg_4", tool_use("t3"), 170),
      line(json!({"type": "some-future-type", "uuid": "x1", "parentUuid": "a4b", "whatever": [1, 2]})),
      user("r2", Some("a4"), tool_result("t2", "two")),
      user("r3", Some("a4b"), tool_result("t3", "three")),
      assistant("a5", "r3", "msg_5", text("all done"), 200),
      line(json!({"type": "summary", "summary": "A title", "leafUuid": "a5"})),
      "[1,2,3]".to_string(),
    ]
    .join("\n")
  }

  #[test]
  fn rewinds_are_dropped_and_parallel_results_recovered() {
    let h = parse_str(&rewind_tree(), &ReadOptions::default());
    assert_eq!(
      summary(&h),
      vec![
        "User:Prompt hello",
        "Assistant:Assistant let me look,use:t1",
        "User:ToolResults result:t1",
        "Assistant:Assistant done",
        "User:Prompt second try",
        "Assistant:Assistant use:t2,use:t3",
        "User:ToolResults result:t2,result:t3",
        "Assistant:Assistant all done",
      ]
    );
    assert_eq!(h.malformed_lines, 2);
    assert_eq!((h.live_from, h.compactions), (0, 0));
    let a4 = &h.messages[5];
    assert_eq!(a4.message_id.as_deref(), Some("msg_4"));
    assert_eq!(a4.line_uuids, vec!["a4", "a4b"]);
    assert_eq!(a4.context_tokens(), Some(170));
    match &h.messages[6].blocks[1] {
      Block::ToolResult { tool_name, content, is_error, truncated, .. } => {
        assert_eq!((tool_name.as_deref(), content.as_str(), *is_error, *truncated), (Some("Bash"), "three", false, false))
      }
      other => panic!("{other:?}"),
    }
    // The newest leaf decides: a line written after the rewind on the old branch revives it.
    let revived = format!("{}\n{}", rewind_tree(), assistant("a6", "a3", "msg_6", text("back on A"), 170));
    let h = parse_str(&revived, &ReadOptions::default());
    let texts: Vec<&str> = h.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, vec!["hello", "let me look", "", "done", "first try", "answer A", "back on A"]);
  }

  fn compacted(logical_parent: &str) -> String {
    [
      user("u1", None, json!("hello")),
      assistant("a1", "u1", "msg_1", text("hi"), 100),
      line(json!({"type": "system", "subtype": "compact_boundary", "uuid": "b1", "parentUuid": null,
        "logicalParentUuid": logical_parent, "isSidechain": false, "content": "Conversation compacted",
        "compactMetadata": {"trigger": "manual", "preTokens": 1234}})),
      line(json!({"type": "user", "uuid": "cs", "parentUuid": "b1", "isSidechain": false, "isCompactSummary": true,
        "isVisibleInTranscriptOnly": true, "message": {"role": "user", "content": "This session is being continued… Summary."}})),
      line(json!({"type": "user", "uuid": "m1", "parentUuid": "cs", "isSidechain": false, "isMeta": true,
        "message": {"role": "user", "content": "Caveat: local commands below"}})),
      user("c1", Some("m1"), json!("<command-name>/compact</command-name>")),
      user("u2", Some("c1"), json!([{"type": "text", "text": "go on"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}])),
      assistant("a2", "u2", "msg_2", text("ok"), 40),
    ]
    .join("\n")
  }

  #[test]
  fn compaction_summaries_are_marked_and_history_spans_them() {
    for logical_parent in ["a1", "missing-from-file"] {
      let h = parse_str(&compacted(logical_parent), &ReadOptions::default());
      assert_eq!(
        summary(&h),
        vec![
          "User:Prompt hello",
          "Assistant:Assistant hi",
          "User:CompactSummary This session is being continued… Summary.",
          "User:Command <command-name>/compact</command-name>",
          "User:Prompt go on,Image { media_type: Some(\"image/png\") }",
          "Assistant:Assistant ok",
        ],
        "logical parent {logical_parent}"
      );
      assert_eq!((h.live_from, h.compactions), (2, 1));
      assert_eq!(h.messages[2].compaction, Some(Compaction { trigger: Some("manual".into()), pre_tokens: Some(1234) }));
    }
    let with_meta = ReadOptions { include_meta: true, ..ReadOptions::default() };
    let h = parse_str(&compacted("a1"), &with_meta);
    assert_eq!(h.messages[3].kind, MessageKind::Meta);
  }

  #[test]
  fn serialises_camel_case_for_javascript() {
    let h = parse_str(&rewind_tree(), &ReadOptions::default());
    let v = serde_json::to_value(h.page(5, 2)).unwrap();
    assert_eq!(v["offset"], 5);
    assert_eq!(v["total"], 8);
    let a = &v["messages"][0];
    assert_eq!(a["role"], "assistant");
    assert_eq!(a["kind"], "assistant");
    assert_eq!(a["messageId"], "msg_4");
    assert_eq!(a["usage"]["cacheReadInputTokens"], 167);
    assert_eq!(a["blocks"][0], json!({"type": "toolUse", "id": "t2", "name": "Bash", "input": {"command": "ls"}}));
    assert!(a.get("lineUuids").is_none() && a.get("compaction").is_none());
    let r = &v["messages"][1];
    assert_eq!(r["kind"], "toolResults");
    assert_eq!(
      r["blocks"][0],
      json!({"type": "toolResult", "toolUseId": "t2", "toolName": "Bash", "content": "two", "isError": false,
        "truncated": false, "contentChars": 3, "images": 0})
    );
    let h = parse_str(&compacted("a1"), &ReadOptions::default());
    let v = serde_json::to_value(&h).unwrap();
    assert_eq!(v["liveFrom"], 2);
    assert_eq!(v["messages"][2]["kind"], "compactSummary");
    assert_eq!(v["messages"][2]["compaction"], json!({"trigger": "manual", "preTokens": 1234}));
  }

  #[test]
  fn pages_from_either_end() {
    let h = parse_str(&rewind_tree(), &ReadOptions::default());
    let ids = |p: Page| (p.offset, p.messages.iter().map(|m| m.uuid.clone()).collect::<Vec<_>>().join(" "));
    assert_eq!(ids(h.page(0, 3)), (0, "u1 a1 r1".into()));
    assert_eq!(ids(h.page(6, 10)), (6, "r2 a5".into()));
    assert_eq!(ids(h.page(50, 10)), (8, "".into()));
    assert_eq!(ids(h.page_from_end(0, 2)), (6, "r2 a5".into()));
    assert_eq!(ids(h.page_from_end(2, 3)), (3, "a2 u2b a4".into()));
    assert_eq!(ids(h.page_from_end(7, 3)), (0, "u1".into()));
    assert_eq!(ids(h.page_from_end(9, 3)), (0, "".into()));
  }

  #[test]
  fn long_tool_results_are_cut_at_a_line_break() {
    let body: String = (0..200).map(|i| format!("line {i:03}\n")).collect(); // 9 chars a line
    let doc =
      [user("u1", None, json!("x")), assistant("a1", "u1", "m1", tool_use("t1"), 10), user("r1", Some("a1"), tool_result("t1", &body))]
        .join("\n");
    let h = parse_str(&doc, &ReadOptions { max_tool_result_chars: 100, ..ReadOptions::default() });
    match &h.messages[2].blocks[0] {
      Block::ToolResult { content, truncated, content_chars, .. } => {
        assert!(*truncated);
        assert_eq!(*content_chars, 1800);
        assert_eq!(content.len(), 98, "{content:?}"); // 11 whole lines minus the final newline
        assert!(content.ends_with("line 010"));
      }
      other => panic!("{other:?}"),
    }
    assert_eq!(cut("héllo wörld", 11, 4), ("héll".to_string(), true));
  }

  #[test]
  fn missing_file_is_empty_and_a_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let h = read_messages(&TenantFile::new(dir.path(), "nope.jsonl")).unwrap();
    assert_eq!(h, History::default());
    std::fs::create_dir(dir.path().join("d.jsonl")).unwrap();
    let err = read_messages(&TenantFile::new(dir.path(), "d.jsonl")).unwrap_err(); // a directory: refused
    assert_eq!(err.code, crate::error::ErrorCode::TranscriptUnsafe);
    assert!(err.message.contains(&dir.path().display().to_string()), "{}", err.message);
    let f = TenantFile::new(dir.path(), "t.jsonl");
    std::fs::write(f.path(), rewind_tree().as_bytes().iter().chain(b"\n\xff\xfe\n").copied().collect::<Vec<u8>>()).unwrap();
    let h = read_messages(&f).unwrap();
    assert_eq!((h.messages.len(), h.malformed_lines), (8, 3));
  }

  #[test]
  fn long_lines_are_skipped_and_a_transcript_over_the_bound_is_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let f = TenantFile::new(dir.path(), "t.jsonl");
    let huge = user("big", Some("a5"), json!("x".repeat(5000)));
    std::fs::write(f.path(), format!("{}\n{huge}\n", rewind_tree())).unwrap();
    let opts = ReadOptions { max_line_bytes: 4000, ..ReadOptions::default() };
    let h = read_messages_with(&f, &opts).unwrap();
    assert_eq!((h.messages.len(), h.malformed_lines), (8, 3), "the long line is skipped, not read");
    let len = std::fs::metadata(f.path()).unwrap().len();
    let err = read_messages_with(&f, &ReadOptions::default().bounded(len - 1)).unwrap_err();
    assert_eq!(err.code, crate::error::ErrorCode::TranscriptTooLarge);
    assert!(err.message.contains(&f.path().display().to_string()), "{}", err.message);
    assert_eq!(read_messages_with(&f, &ReadOptions::default().bounded(len)).unwrap().messages.len(), 9);
    // The bound holds for what is read, not only for the size seen before (a file that grows).
    let r = parse_reader(std::io::BufReader::new(std::fs::File::open(f.path()).unwrap()), &ReadOptions::default().bounded(100));
    assert!(matches!(r, Err(safe::LineError::TooLarge)));
    // Lines that are not messages keep only their place in the tree.
    assert_eq!(
      skeleton(json!({"type": "progress", "uuid": "p", "parentUuid": "u", "data": "x".repeat(100)})),
      json!({"type": "progress", "uuid": "p", "parentUuid": "u"})
    );
  }

  // --- real transcripts ----------------------------------------------------------------------

  /// The real transcripts in `tests/fixtures/transcripts` (in the repository; its README names
  /// each file's source, commit and license). An empty folder fails the tests that read them.
  pub(crate) fn fixture_transcripts() -> Vec<PathBuf> {
    transcripts_in(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/transcripts")))
  }

  /// The `*.jsonl` files of `dir`, sorted; none is a failure (a test must not pass on nothing).
  pub(crate) fn transcripts_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
      .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect())
      .unwrap_or_default();
    assert!(!files.is_empty(), "{} has no transcripts (*.jsonl)", dir.display());
    files.sort();
    files
  }

  #[test]
  fn real_transcripts_replay_as_connected_conversations() {
    for path in fixture_transcripts() {
      let name = path.file_name().unwrap().to_string_lossy().to_string();
      let text = std::fs::read_to_string(&path).unwrap();
      let raw: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
      let raw_by_uuid: HashMap<&str, &Value> = raw.iter().filter_map(|v| Some((s(v, "uuid")?, v))).collect();
      let all_sidechain = raw.iter().filter(|v| is_message_line(v)).all(|v| flag(v, "isSidechain"));
      let opts = ReadOptions::full();
      let h = read_messages_with(&TenantFile::in_folder(&path), &opts).unwrap();
      let plain = read_messages(&TenantFile::in_folder(&path)).unwrap();
      assert_eq!(h.malformed_lines, 0, "{name}");
      if all_sidechain {
        // A subagent's own file: no main chain.
        assert!(h.messages.is_empty(), "{name}");
        continue;
      }
      assert!(h.messages.len() >= 4, "{name}");
      assert!(plain.messages.iter().all(|m| m.kind != MessageKind::Meta), "{name}");

      // Every line is main-chain and belongs to one message; API messages are merged.
      let mut owner: HashMap<&str, usize> = HashMap::new();
      for (i, m) in h.messages.iter().enumerate() {
        assert_eq!(m.uuid, m.line_uuids[0], "{name}");
        for u in &m.line_uuids {
          assert!(!flag(raw_by_uuid[u.as_str()], "isSidechain"), "{name}: sidechain line {u}");
          assert!(owner.insert(u.as_str(), i).is_none(), "{name}: line {u} twice");
        }
      }
      let mut ids = HashSet::new();
      for m in h.messages.iter().filter(|m| m.role == Role::Assistant) {
        let id = m.message_id.as_deref().expect("assistant messages carry an id");
        assert!(ids.insert(id), "{name}: message id {id} twice");
      }
      // No main-chain API message of the file is lost (these files have no rewinds), and every
      // tool result of the main chain is kept.
      let file_ids: HashSet<&str> = raw
        .iter()
        .filter(|v| s(v, "type") == Some("assistant") && !flag(v, "isSidechain"))
        .filter_map(|v| v.pointer("/message/id").and_then(Value::as_str))
        .collect();
      assert_eq!(ids, file_ids, "{name}");
      let file_results = raw.iter().filter(|v| !flag(v, "isSidechain")).flat_map(|v| block_ids(v, "tool_result", "tool_use_id")).count();
      let results = h.messages.iter().map(|m| m.tool_results().count()).sum::<usize>();
      assert_eq!(results, file_results, "{name}");

      // Connected: walking up from any line of message i, skipping lines that are no message
      // (hook progress, system lines), the first message reached is i itself (an earlier block of
      // the same API message), i - 1, or the message holding the tool call a result answers.
      let uses_at: HashMap<&str, usize> =
        h.messages.iter().enumerate().flat_map(|(i, m)| m.tool_uses().map(move |(id, _, _)| (id, i))).collect();
      for (i, m) in h.messages.iter().enumerate() {
        let answered: Vec<usize> = m.tool_results().map(|(id, _, _)| uses_at[id]).collect();
        for u in &m.line_uuids {
          let mut cur = s(raw_by_uuid[u.as_str()], "parentUuid");
          let mut reached = None;
          while let Some(p) = cur {
            let v = raw_by_uuid[p];
            if let Some(&j) = owner.get(p) {
              reached = Some(j);
              break;
            }
            cur = s(v, "parentUuid").or_else(|| if is_compact_boundary(v) { s(v, "logicalParentUuid") } else { None });
            if cur.is_some_and(|c| !raw_by_uuid.contains_key(c)) {
              assert!(is_compact_boundary(v), "{name}: dangling parent");
              reached = Some(i - 1); // the boundary's logical parent was not written
              break;
            }
          }
          match reached {
            None => assert_eq!(i, 0, "{name}: message {i} ({u}) is not connected"),
            // With streaming tool execution the CLI interleaves the block lines of one API
            // message with the results of its earlier tool calls (A1 R1 A2 R2 …), so a later
            // block line hangs off the result message that follows the merged message.
            Some(j) => assert!(
              j == i
                || j + 1 == i
                || answered.contains(&j)
                || (j == i + 1 && m.role == Role::Assistant && h.messages[j].kind == MessageKind::ToolResults),
              "{name}: message {i} ({u}) hangs off {j}"
            ),
          }
        }
      }

      // Roles alternate: results follow the call that asked for them, every call is answered.
      for (i, m) in h.messages.iter().enumerate() {
        match m.kind {
          MessageKind::ToolResults => {
            let prev = &h.messages[i - 1];
            assert_eq!(prev.role, Role::Assistant, "{name}: results at {i} after a user message");
            for (id, _, _) in m.tool_results() {
              assert!(prev.tool_uses().any(|(u, _, _)| u == id), "{name}: result {id} at {i} answers no call of {}", i - 1);
            }
          }
          MessageKind::Assistant => {
            let uses: Vec<&str> = m.tool_uses().map(|(id, _, _)| id).collect();
            if let (false, Some(next)) = (uses.is_empty(), h.messages.get(i + 1)) {
              assert_eq!(next.kind, MessageKind::ToolResults, "{name}: call {i} unanswered");
              let got: HashSet<&str> = next.tool_results().map(|(id, _, _)| id).collect();
              assert_eq!(got, uses.into_iter().collect(), "{name}: results of {i}");
            }
            assert!(m.usage.is_some() && m.model.is_some(), "{name}");
          }
          _ => {}
        }
        if i > 0 && m.role == Role::Assistant {
          assert!(h.messages[i - 1].role == Role::User || h.messages[i - 1].message_id != m.message_id, "{name}");
        }
      }

      // Compactions: one marked summary per boundary in the file, with its metadata.
      let boundaries = raw.iter().filter(|v| is_compact_boundary(v) && !flag(v, "isSidechain")).count();
      let summaries: Vec<usize> = (0..h.messages.len()).filter(|&i| h.messages[i].kind == MessageKind::CompactSummary).collect();
      assert_eq!(summaries.len(), boundaries, "{name}");
      assert_eq!(h.compactions, boundaries, "{name}");
      if let Some(&last) = summaries.last() {
        assert_eq!(h.live_from, last, "{name}");
        let c = h.messages[last].compaction.as_ref().unwrap();
        assert!(c.pre_tokens.unwrap() > 10_000 && c.trigger.is_some(), "{name}");
        assert!(h.messages[last].text.starts_with("This session is being continued"), "{name}");
      }
      eprintln!(
        "{name}: {} messages ({} shown by default), {} API calls, {} compactions",
        h.messages.len(),
        plain.messages.len(),
        ids.len(),
        h.compactions
      );
    }
  }
}
