//! From transcript lines to a conversation: the live branch of the tree, assistant messages
//! joined from their per-block lines, tool results matched, compaction summaries marked.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::*;
use crate::cli::stream::usage_of;

/// `None` for a blank line, `Some(None)` for a malformed one.
pub(super) fn parse_raw_line(bytes: &[u8]) -> Option<Option<Value>> {
  let Ok(s) = std::str::from_utf8(bytes) else { return Some(None) };
  let s = s.trim();
  if s.is_empty() {
    return None;
  }
  match serde_json::from_str::<Value>(s) {
    Ok(v) if v.is_object() => Some(Some(v)),
    _ => Some(None),
  }
}

pub(super) fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
  v.get(k).and_then(Value::as_str)
}

pub(super) fn flag(v: &Value, k: &str) -> bool {
  v.get(k).and_then(Value::as_bool).unwrap_or(false)
}

/// A user or assistant line with a message object.
pub(super) fn is_message_line(v: &Value) -> bool {
  matches!(s(v, "type"), Some("user" | "assistant")) && v.get("message").is_some_and(Value::is_object)
}

/// What the tree and the history need of a line that is not a message: its place in the tree and,
/// for a compaction boundary, its metadata.
pub(super) fn skeleton(v: Value) -> Value {
  let Value::Object(mut m) = v else { return v };
  m.retain(|k, _| {
    matches!(k.as_str(), "type" | "subtype" | "uuid" | "parentUuid" | "logicalParentUuid" | "isSidechain" | "compactMetadata")
  });
  Value::Object(m)
}

pub(super) fn is_compact_boundary(v: &Value) -> bool {
  s(v, "type") == Some("system") && s(v, "subtype") == Some("compact_boundary")
}

pub(super) fn content_blocks(v: &Value) -> &[Value] {
  v.pointer("/message/content").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

pub(super) fn block_ids<'a>(v: &'a Value, block_type: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
  content_blocks(v).iter().filter(move |b| s(b, "type") == Some(block_type)).filter_map(move |b| s(b, key))
}

/// The indices (file order) of the lines that make up the live conversation.
pub(super) fn select_lines(lines: &[Value]) -> Vec<usize> {
  let main_msg = |v: &Value| is_message_line(v) && !flag(v, "isSidechain") && s(v, "uuid").is_some();
  let Some(leaf) = lines.iter().rposition(main_msg) else { return Vec::new() };
  let mut by_uuid: HashMap<&str, usize> = HashMap::new();
  for (i, v) in lines.iter().enumerate() {
    if let Some(u) = s(v, "uuid") {
      by_uuid.entry(u).or_insert(i);
    }
  }

  // Walk from the leaf to the root. A compaction boundary has no parent; its `logicalParentUuid`
  // names the pre-compaction leaf. When that line is not in the file (the CLI does not always
  // write it), the last main-chain message written before the boundary stands in for it.
  let mut on_chain = vec![false; lines.len()];
  let mut cur = Some(leaf);
  while let Some(i) = cur {
    if on_chain[i] {
      break; // a cycle: the file is corrupt; keep what we have
    }
    on_chain[i] = true;
    let v = &lines[i];
    cur = match s(v, "parentUuid") {
      Some(p) => by_uuid.get(p).copied(),
      None if is_compact_boundary(v) => {
        s(v, "logicalParentUuid").and_then(|p| by_uuid.get(p).copied()).or_else(|| (0..i).rev().find(|&j| main_msg(&lines[j])))
      }
      None => None,
    };
  }

  // Lines off the path that still belong to the live conversation. The CLI writes the results of
  // parallel tool calls each as a child of its own tool_use line, so the path from the leaf only
  // passes the last one; and the content-block lines of one API message may branch the same way.
  // Recover user lines whose every tool_result answers an unanswered tool_use on the chain, and
  // assistant lines of an API message on the chain. (Dead branches of rewinds start at a user
  // prompt and answer their own tool calls, so they are not picked up.)
  let mut message_ids: HashSet<&str> = HashSet::new();
  let mut tool_uses: HashSet<&str> = HashSet::new();
  let mut answered: HashSet<&str> = HashSet::new();
  for (i, v) in lines.iter().enumerate() {
    if on_chain[i] && is_message_line(v) {
      if let Some(id) = v.pointer("/message/id").and_then(Value::as_str) {
        message_ids.insert(id);
      }
      tool_uses.extend(block_ids(v, "tool_use", "id"));
      answered.extend(block_ids(v, "tool_result", "tool_use_id"));
    }
  }
  for (i, v) in lines.iter().enumerate() {
    if on_chain[i] || !main_msg(v) {
      continue;
    }
    let recover = match s(v, "type") {
      Some("assistant") => v.pointer("/message/id").and_then(Value::as_str).is_some_and(|id| message_ids.contains(id)),
      _ => {
        let mut ids = block_ids(v, "tool_result", "tool_use_id").peekable();
        ids.peek().is_some() && ids.all(|id| tool_uses.contains(id) && !answered.contains(id))
      }
    };
    if recover {
      on_chain[i] = true;
      tool_uses.extend(block_ids(v, "tool_use", "id"));
      answered.extend(block_ids(v, "tool_result", "tool_use_id"));
    }
  }
  (0..lines.len()).filter(|&i| on_chain[i]).collect()
}

pub(super) fn build_history(lines: &[Value], malformed: usize, opts: &ReadOptions) -> History {
  let selected = select_lines(lines);
  let mut messages: Vec<Message> = Vec::new();
  let mut by_message_id: HashMap<String, usize> = HashMap::new();
  let mut pending_compaction: Option<Compaction> = None;
  let mut compactions = 0;
  for &i in &selected {
    let v = &lines[i];
    if is_compact_boundary(v) {
      compactions += 1;
      let m = v.get("compactMetadata");
      pending_compaction = Some(Compaction {
        trigger: m.and_then(|m| s(m, "trigger")).map(str::to_string),
        pre_tokens: m.and_then(|m| m.get("preTokens")).and_then(Value::as_u64),
      });
      continue;
    }
    if !is_message_line(v) {
      continue;
    }
    let uuid = s(v, "uuid").unwrap_or_default().to_string();
    let msg = &v["message"];
    if s(v, "type") == Some("assistant") {
      // Every line of one API message joins the first: with streaming tool execution the CLI
      // interleaves them with results of the message's earlier tool calls (A1 R1 A2 R2), which
      // then gather into the one tool-results message below.
      let blocks = convert_blocks(msg.get("content"), opts);
      let message_id = s(msg, "id").map(str::to_string);
      let usage = msg.get("usage").and_then(usage_of);
      if let Some(&at) = message_id.as_ref().and_then(|id| by_message_id.get(id)) {
        let m: &mut Message = &mut messages[at];
        for b in blocks {
          let dup = matches!(&b, Block::ToolUse { id, .. } if m.tool_uses().any(|(have, _, _)| have == id));
          if !dup {
            m.blocks.push(b);
          }
        }
        if usage.is_some() {
          m.usage = usage;
        }
        m.line_uuids.push(uuid);
        continue;
      }
      if let Some(id) = &message_id {
        by_message_id.insert(id.clone(), messages.len());
      }
      messages.push(Message {
        uuid: uuid.clone(),
        parent_uuid: s(v, "parentUuid").map(str::to_string),
        role: Role::Assistant,
        kind: MessageKind::Assistant,
        text: String::new(),
        blocks,
        message_id,
        model: s(msg, "model").map(str::to_string),
        timestamp: s(v, "timestamp").map(str::to_string),
        usage,
        compaction: None,
        line_uuids: vec![uuid],
      });
      continue;
    }

    // A user line.
    let meta = flag(v, "isMeta");
    if meta && !opts.include_meta {
      continue;
    }
    let blocks = convert_blocks(msg.get("content"), opts);
    if blocks.is_empty() {
      continue;
    }
    let kind = user_kind(v, meta, &blocks);
    // The results of one API call's tool uses form one user message.
    if kind == MessageKind::ToolResults {
      if let Some(last) = messages.last_mut().filter(|m| m.kind == MessageKind::ToolResults) {
        last.blocks.extend(blocks);
        last.line_uuids.push(uuid);
        continue;
      }
    }
    let mut blocks = blocks;
    let compaction = if kind == MessageKind::CompactSummary {
      // The CLI's summary tells the model where the full transcript is: a path of the server
      // (its home, state folder and the tenant's folder), never for the reader of the history.
      for b in &mut blocks {
        if let Block::Text { text } = b {
          *text = hide_transcript_paths(text);
        }
      }
      Some(pending_compaction.take().unwrap_or(Compaction { trigger: None, pre_tokens: None }))
    } else {
      None
    };
    messages.push(Message {
      uuid: uuid.clone(),
      parent_uuid: s(v, "parentUuid").map(str::to_string),
      role: Role::User,
      kind,
      text: String::new(),
      blocks,
      message_id: None,
      model: None,
      timestamp: s(v, "timestamp").map(str::to_string),
      usage: None,
      compaction,
      line_uuids: vec![uuid],
    });
  }

  texts_and_tool_names(&mut messages);
  let live_from = messages.iter().rposition(|m| m.kind == MessageKind::CompactSummary).unwrap_or(0);
  History { messages, live_from, compactions, malformed_lines: malformed }
}

/// What a user line is: a compaction summary, meta, tool results, a command, a notification,
/// or a prompt.
fn user_kind(v: &Value, meta: bool, blocks: &[Block]) -> MessageKind {
  if flag(v, "isCompactSummary") {
    return MessageKind::CompactSummary;
  }
  if meta {
    return MessageKind::Meta;
  }
  if blocks.iter().any(|b| matches!(b, Block::ToolResult { .. })) {
    return MessageKind::ToolResults;
  }
  let first = blocks.iter().find_map(|b| match b {
    Block::Text { text } => Some(text.trim_start()),
    _ => None,
  });
  match first {
    Some(t) if COMMAND_PREFIXES.iter().any(|p| t.starts_with(p)) => MessageKind::Command,
    Some(t) if t.starts_with("<task-notification>") => MessageKind::Notification,
    _ => MessageKind::Prompt,
  }
}

/// Each message's text, and the tool names on results.
fn texts_and_tool_names(messages: &mut [Message]) {
  let mut names: HashMap<String, String> = HashMap::new();
  for m in messages.iter_mut() {
    m.text = m
      .blocks
      .iter()
      .filter_map(|b| match b {
        Block::Text { text } => Some(text.as_str()),
        _ => None,
      })
      .collect::<Vec<_>>()
      .join("\n\n");
    for b in &mut m.blocks {
      match b {
        Block::ToolUse { id, name, .. } => {
          names.insert(id.clone(), name.clone());
        }
        Block::ToolResult { tool_use_id, tool_name, .. } => *tool_name = names.get(tool_use_id.as_str()).cloned(),
        _ => {}
      }
    }
  }
}

pub(super) const COMMAND_PREFIXES: [&str; 6] =
  ["<command-name>", "<command-message>", "<local-command-stdout>", "<local-command-stderr>", "<bash-input>", "<bash-stdout>"];

pub(super) fn convert_blocks(content: Option<&Value>, opts: &ReadOptions) -> Vec<Block> {
  match content {
    Some(Value::String(t)) if !t.is_empty() => vec![Block::Text { text: t.clone() }],
    Some(Value::Array(items)) => items.iter().filter_map(|b| convert_block(b, opts)).collect(),
    _ => Vec::new(),
  }
}

pub(super) fn convert_block(b: &Value, opts: &ReadOptions) -> Option<Block> {
  let t = s(b, "type").unwrap_or("");
  Some(match t {
    "text" => Block::Text { text: s(b, "text").unwrap_or_default().to_string() },
    "thinking" => Block::Thinking { text: s(b, "thinking").unwrap_or_default().to_string() },
    "tool_use" => Block::ToolUse {
      id: s(b, "id").unwrap_or_default().to_string(),
      name: s(b, "name").unwrap_or_default().to_string(),
      input: b.get("input").cloned().unwrap_or(Value::Null),
    },
    "tool_result" => {
      let (text, images) = result_text(b.get("content"));
      let content_chars = text.chars().count();
      let (content, truncated) = cut(&text, content_chars, opts.max_tool_result_chars);
      Block::ToolResult {
        tool_use_id: s(b, "tool_use_id").unwrap_or_default().to_string(),
        tool_name: None,
        content,
        is_error: flag(b, "is_error"),
        truncated,
        content_chars,
        images,
      }
    }
    "image" => Block::Image { media_type: b.pointer("/source/media_type").and_then(Value::as_str).map(str::to_string) },
    "" => return None,
    other => Block::Other { block_type: other.to_string() },
  })
}

/// The text of a tool result's content (a string, or blocks whose text parts are joined by
/// newlines), and how many images it holds.
pub(super) fn result_text(content: Option<&Value>) -> (String, usize) {
  match content {
    Some(Value::String(t)) => (t.clone(), 0),
    Some(Value::Array(parts)) => {
      let mut texts = Vec::new();
      let mut images = 0;
      for p in parts {
        match s(p, "type") {
          Some("text") => texts.push(s(p, "text").unwrap_or_default()),
          Some("image") => images += 1,
          _ => {}
        }
      }
      (texts.join("\n"), images)
    }
    _ => (String::new(), 0),
  }
}

/// Cuts `text` (of `chars` characters) to at most `max` characters, at the last line break in the
/// final fifth of the allowance when there is one.
pub(super) fn cut(text: &str, chars: usize, max: usize) -> (String, bool) {
  if chars <= max {
    return (text.to_string(), false);
  }
  let end = text.char_indices().nth(max).map(|(b, _)| b).unwrap_or(text.len());
  let head = &text[..end];
  let head = match head.rfind('\n') {
    Some(nl) if head[..nl].chars().count() >= max - max / 5 => &head[..nl],
    _ => head,
  };
  (head.to_string(), true)
}

/// `text` with every absolute path to a `.jsonl` file replaced by `<transcript>`.
pub(crate) fn hide_transcript_paths(text: &str) -> String {
  let mut out = String::with_capacity(text.len());
  let mut rest = text;
  while let Some(at) = rest.find(".jsonl") {
    let end = at + ".jsonl".len();
    let head = &rest[..at];
    let start = head.rfind(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '(' | '<' | '[')).map_or(0, |i| i + 1);
    let token = &head[start..];
    let absolute = token.starts_with('/') || token.starts_with('~') || token.get(1..3).is_some_and(|d| d == ":\\" || d == ":/");
    let boundary = rest[end..].chars().next().is_none_or(|c| !c.is_alphanumeric() && c != '_');
    out.push_str(&rest[..start]);
    if absolute && boundary {
      out.push_str("<transcript>");
    } else {
      out.push_str(&rest[start..end]);
    }
    rest = &rest[end..];
  }
  out.push_str(rest);
  out
}

#[cfg(test)]
mod path_tests {
  use super::hide_transcript_paths as hide;

  #[test]
  fn transcript_paths_in_a_summary_are_hidden() {
    let t = "read the full transcript at: /srv/state/claude-config/user-a-1/projects/-w/3f.jsonl\nmore";
    assert_eq!(hide(t), "read the full transcript at: <transcript>\nmore");
    assert_eq!(hide("at `/h/a.jsonl` and (/h/b.jsonl)"), "at `<transcript>` and (<transcript>)");
    assert_eq!(hide("see ~/.claude/p/a.jsonl."), "see <transcript>.");
    assert_eq!(hide("C:\\Users\\a\\t.jsonl"), "<transcript>");
    assert_eq!(hide("a file named notes.jsonl or x.jsonlines"), "a file named notes.jsonl or x.jsonlines");
    assert_eq!(hide("no paths"), "no paths");
  }
}
