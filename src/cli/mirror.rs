//! The CLI's transcript mirror: with the hidden `--session-mirror` flag (CLI 2.1.331; the Agent
//! SDK's `sessionStore` uses it) the CLI prints a `{"type":"transcript_mirror","filePath",
//! "entries"}` frame on stdout after each write to its local transcript. The run peels these
//! frames off the stream (they never reach `onEvent`) and hands them to a [`MirrorTx`], in order,
//! including the ones printed after the `result` line.

use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The flag that turns the frames on.
pub const FLAG: &str = "--session-mirror";

/// The oldest CLI the flag was checked on.
const MIN_VERSION: (u64, u64, u64) = (2, 1, 331);

/// What the run sends to the mirror's writer.
#[derive(Debug)]
pub enum MirrorMsg {
  /// One frame, as the CLI printed it.
  Frame(Value),
  /// Answered once every frame sent before it is stored (or could not be).
  Flush(tokio::sync::oneshot::Sender<std::result::Result<(), String>>),
}

/// Where a run sends its mirror frames.
pub type MirrorTx = tokio::sync::mpsc::UnboundedSender<MirrorMsg>;

/// Whether a stream line is a mirror frame.
pub fn is_frame(raw: &Value) -> bool {
  raw.get("type").and_then(Value::as_str) == Some("transcript_mirror")
}

/// Reads the rest of a CLI's stdout after its result, sending mirror frames on and dropping the
/// rest, until the output closes.
pub async fn drain<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, tx: &MirrorTx) {
  let mut buf = Vec::with_capacity(8192);
  loop {
    buf.clear();
    match reader.read_until(b'\n', &mut buf).await {
      Ok(0) | Err(_) => return,
      Ok(_) => {
        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
          if is_frame(&v) {
            let _ = tx.send(MirrorMsg::Frame(v));
          }
        }
      }
    }
  }
}

/// Whether the CLI at `program` has the flag, by its `--version` (asked once per program, without
/// a shell). A CLI without it is mirrored from its transcript file when the task ends.
pub fn supported(program: &Path) -> bool {
  super::version::of(program).is_some_and(|v| v >= MIN_VERSION)
}

/// Which file of session `session_id` a frame's `filePath` is: `Some("")` for the main transcript
/// (`…/<id>.jsonl`), `Some("subagents/agent-x")` for a file under the session's folder, `None`
/// for another session's file.
pub fn subpath_of(file_path: &str, session_id: &str) -> Option<String> {
  let p = Path::new(file_path);
  let main = format!("{session_id}.jsonl");
  if p.file_name().is_some_and(|n| n.to_string_lossy() == main) {
    return Some(String::new());
  }
  let parts: Vec<String> = p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
  let at = parts.iter().rposition(|c| c == session_id)?;
  let rest = &parts[at + 1..];
  let last = rest.last()?.strip_suffix(".jsonl")?;
  if rest.iter().any(|c| c == ".." || c == ".") {
    return None;
  }
  let mut sub: Vec<&str> = rest[..rest.len() - 1].iter().map(String::as_str).collect();
  sub.push(last);
  Some(sub.join("/"))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn versions_and_file_paths() {
    assert_eq!(crate::cli::version::parse("2.0.5"), Some((2, 0, 5)));
    assert_eq!(crate::cli::version::parse("nonsense"), None);
    assert!(crate::cli::version::parse("2.1.331 (Claude Code)").unwrap() >= MIN_VERSION);
    assert!(crate::cli::version::parse("2.1.99").unwrap() < MIN_VERSION);
    let id = "11111111-1111-4111-8111-111111111111";
    assert_eq!(subpath_of(&format!("/c/projects/-w/{id}.jsonl"), id), Some(String::new()));
    assert_eq!(subpath_of(&format!("/c/projects/-w/{id}/subagents/agent-1.jsonl"), id), Some("subagents/agent-1".into()));
    assert_eq!(subpath_of("/c/projects/-w/other.jsonl", id), None);
    assert_eq!(subpath_of(&format!("/c/projects/-w/{id}/x.txt"), id), None);
    assert!(is_frame(&serde_json::json!({"type": "transcript_mirror"})));
    assert!(!is_frame(&serde_json::json!({"type": "assistant"})));
  }
}
