//! The CLI's file checkpoints, as untrusted data: carried between nodes with the transcript
//! (PostgreSQL), and checked before a rewind with files lets a CLI restore from them.
//!
//! With `CLAUDE_CODE_ENABLE_SDK_FILE_CHECKPOINTING` the CLI copies a file before its edit tools
//! change it to `CLAUDE_CONFIG_DIR/file-history/<session>/<name>` (`<hash>@v<version>`), and
//! notes in the transcript which file it tracks and under which backup (`file-history-snapshot`
//! lines: `snapshot.trackedFileBackups`, `file-history-delta` lines: `trackingPath`, `backup`).
//! `rewind_files` writes each tracked file back from its backup, or removes it (`backupFileName:
//! null`: the file did not exist then).
//!
//! - **Across nodes** (a store that keeps transcripts): after each task the node that ran it stores
//!   the session's backup files the store lacks ([`capture`], fenced by the task's lease like the
//!   transcript); before a rewind with files, the node doing it writes the stored ones into its own
//!   configuration folder ([`restore`]), so the CLI finds them there.
//! - **Untrusted**: the configuration folder and the transcript are the agent's to write. Backup
//!   files are read and written only through [`TenantFile`] (no link followed, no special file or
//!   hard-linked file read), only plain names (`<letters and digits>@v<digits>`), and at most
//!   `maxTranscriptBytes` of them per session. Before the CLI restores, [`check_history`] reads the
//!   history it will act on and refuses (`TRANSCRIPT_UNSAFE`) a tracked path outside the session's
//!   working directory, through a link, or onto anything but a regular file with one link, and a
//!   backup name that is not plain or a backup file that is a link or too large: the CLI then
//!   writes, removes and reads nothing but files of the working directory and its own backups.

use std::collections::HashSet;
use std::io::BufReader;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};
use crate::store::{block_on, Store};
use crate::transcript::{safe, TenantFile, DEFAULT_MAX_LINE_BYTES};

/// The CLI's backup folder, below its configuration folder.
const HISTORY_DIR: &str = "file-history";

/// Whether `name` is a backup file name as the CLI makes them (`<hash>@v<version>`): letters and
/// digits, `@v`, digits. Nothing else (no separator, dot, or empty part) is ever used as a name.
pub(crate) fn backup_name_ok(name: &str) -> bool {
  let Some((hash, version)) = name.split_once("@v") else { return false };
  (1..=64).contains(&hash.len())
    && hash.bytes().all(|b| b.is_ascii_alphanumeric())
    && (1..=9).contains(&version.len())
    && version.bytes().all(|b| b.is_ascii_digit())
}

/// The session's backup folder below the configuration folder `config_root`.
fn history_dir(config_root: &Path, session_id: &str) -> TenantFile {
  TenantFile::new(config_root, Path::new(HISTORY_DIR).join(session_id))
}

/// After a task, on a store that keeps transcripts (blocking): the session's backup files in this
/// node's configuration folder that the store lacks, stored for `task_id` (fenced by its lease).
/// A name that is not plain, a link, a special or hard-linked file, or a file past what is left of
/// `max_total` for the session is left out. Returns how many were stored.
pub(crate) fn capture(store: &Store, session_id: &str, task_id: &str, config_root: &Path, max_total: u64) -> Result<usize> {
  let Some(backups) = store.file_backups() else { return Ok(0) };
  let folder = history_dir(config_root, session_id);
  let names: Vec<String> = folder.list()?.into_iter().filter(|n| backup_name_ok(n)).collect();
  if names.is_empty() {
    return Ok(0);
  }
  let stored = block_on(backups.file_backup_sizes(session_id))?;
  let mut total: u64 = stored.iter().map(|(_, n)| u64::try_from(*n).unwrap_or(0)).sum();
  let known: HashSet<String> = stored.into_iter().map(|(n, _)| n).collect();
  let mut n = 0;
  for name in names.into_iter().filter(|n| !known.contains(n)) {
    let content = match folder.join(&name).read_bounded(max_total.saturating_sub(total)) {
      Ok(Some(c)) => c,
      Ok(None) => continue,
      Err(e) if matches!(e.code, ErrorCode::TranscriptUnsafe | ErrorCode::TranscriptTooLarge) => continue,
      Err(e) => return Err(e),
    };
    if !block_on(backups.put_file_backup(session_id, task_id, &name, &content))? {
      break;
    }
    total += content.len() as u64;
    n += 1;
  }
  Ok(n)
}

/// Before a rewind with files, on a store that keeps transcripts (blocking): the session's stored
/// backups written into this node's configuration folder, where the CLI reads them (the store's
/// copy replaces a local one). `TRANSCRIPT_TOO_LARGE` when they pass `max_total`; a name that is
/// not plain is skipped; a link on the way is refused (`TRANSCRIPT_UNSAFE`), never followed.
pub(crate) fn restore(store: &Store, session_id: &str, config_root: &Path, max_total: u64) -> Result<usize> {
  let Some(backups) = store.file_backups() else { return Ok(0) };
  let total: u64 = block_on(backups.file_backup_sizes(session_id))?.iter().map(|(_, n)| u64::try_from(*n).unwrap_or(0)).sum();
  if total > max_total {
    return Err(safe::too_large(&format!("the stored file backups of session {session_id}"), max_total));
  }
  let folder = history_dir(config_root, session_id);
  let mut n = 0;
  for (name, content) in block_on(backups.load_file_backups(session_id))? {
    if !backup_name_ok(&name) || content.len() as u64 > max_total {
      continue;
    }
    folder.join(&name).write_atomic(|w| w.write_all(&content))?;
    n += 1;
  }
  Ok(n)
}

/// The folder a tracked file was in on the node that wrote the history (`realParentDir`), moved
/// to the same folder below `real_wd` (this node's working directory, as a real path): the
/// history's folder must end with the file's relative folder, the rest being the writing node's
/// working directory. `None` when nothing moves.
fn rebased(tracking: &str, parent: &str, real_wd: &Path) -> Option<String> {
  let rel = Path::new(tracking);
  if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
    return None;
  }
  let sub = rel.parent().unwrap_or(Path::new(""));
  let old = Path::new(parent);
  if !old.ends_with(sub) || !old.is_absolute() {
    return None;
  }
  let new = real_wd.join(sub);
  let new = new.to_string_lossy().trim_end_matches('/').to_owned();
  (new != parent).then_some(new)
}

/// Before a rewind with files on a node other than the one whose CLI wrote the file history
/// (blocking): the history's folders (`realParentDir`) in this node's copy of the transcript moved
/// from the writing node's working directory to `wd`, where this node's CLI restores (it refuses
/// a file whose folder is not the one recorded). The store's copy is unchanged (the next task
/// here rewrites the local one from it). Returns whether anything moved.
pub(crate) fn rebase_history(transcript: &TenantFile, wd: &Path, max_bytes: u64) -> Result<bool> {
  let Some(text) = transcript.read_bounded(max_bytes)? else { return Ok(false) };
  let real_wd = std::fs::canonicalize(wd).unwrap_or_else(|_| wd.to_path_buf());
  let mut changed = false;
  let mut out: Vec<u8> = Vec::with_capacity(text.len());
  for line in text.split_inclusive(|b| *b == b'\n') {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let mut v = match body.windows(12).any(|w| w == b"file-history").then(|| serde_json::from_slice::<Value>(body)) {
      Some(Ok(v)) => v,
      _ => {
        out.extend_from_slice(line);
        continue;
      }
    };
    let mut moved = false;
    let mut fix = |tracking: &str, backup: &mut Value| {
      let parent = backup.get("realParentDir").and_then(Value::as_str).map(str::to_owned);
      if let Some(new) = parent.and_then(|p| rebased(tracking, &p, &real_wd)) {
        backup["realParentDir"] = Value::String(new);
        moved = true;
      }
    };
    match v.get("type").and_then(Value::as_str) {
      Some("file-history-snapshot") => {
        if let Some(m) = v.pointer_mut("/snapshot/trackedFileBackups").and_then(Value::as_object_mut) {
          for (k, b) in m.iter_mut() {
            fix(k, b);
          }
        }
      }
      Some("file-history-delta") => {
        let tracking = v.get("trackingPath").and_then(Value::as_str).map(str::to_owned);
        if let (Some(t), Some(b)) = (tracking, v.get_mut("backup")) {
          fix(&t, b);
        }
      }
      _ => {}
    }
    if moved {
      changed = true;
      out.extend_from_slice(serde_json::to_string(&v).unwrap_or_default().as_bytes());
      out.push(b'\n');
    } else {
      out.extend_from_slice(line);
    }
  }
  if changed {
    transcript.write_atomic(|w| w.write_all(&out))?;
  }
  Ok(changed)
}

/// One file the history tracks: its path as written, the folder it was relative to, its backup.
struct Tracked {
  path: String,
  parent: Option<String>,
  backup: Option<String>,
}

/// The files a transcript line of the file history names (none for other lines).
fn tracked_in(v: &Value) -> Vec<Tracked> {
  let entry = |path: &str, b: &Value| Tracked {
    path: path.to_owned(),
    parent: b.get("realParentDir").and_then(Value::as_str).map(str::to_owned),
    backup: b.get("backupFileName").and_then(Value::as_str).map(str::to_owned),
  };
  match v.get("type").and_then(Value::as_str) {
    Some("file-history-snapshot") => v
      .pointer("/snapshot/trackedFileBackups")
      .and_then(Value::as_object)
      .map(|m| m.iter().map(|(p, b)| entry(p, b)).collect())
      .unwrap_or_default(),
    Some("file-history-delta") => {
      let b = v.get("backup").cloned().unwrap_or(Value::Null);
      v.get("trackingPath").and_then(Value::as_str).map(|p| vec![entry(p, &b)]).unwrap_or_default()
    }
    _ => vec![],
  }
}

/// `path` below `root`, as plain names, when it is inside it lexically (no `..`, `.` skipped).
fn below(root: &Path, path: &Path) -> Option<PathBuf> {
  let rest = path.strip_prefix(root).ok()?;
  let mut out = PathBuf::new();
  for c in rest.components() {
    match c {
      Component::Normal(n) => out.push(n),
      Component::CurDir => {}
      _ => return None,
    }
  }
  Some(out)
}

/// Refuses `rel` below the working directory `wd` unless each folder on its way is a folder (not a
/// link) and the file, if it exists, is a regular file with one link.
fn check_on_disk(wd: &Path, rel: &Path, unsafe_: &dyn Fn(&str) -> Error) -> Result<()> {
  let mut at = wd.to_path_buf();
  let names: Vec<_> = rel.components().collect();
  for (i, c) in names.iter().enumerate() {
    at.push(c.as_os_str());
    let m = match std::fs::symlink_metadata(&at) {
      Ok(m) => m,
      Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
      Err(e) => return Err(Error::store(format!("cannot check {}: {e}", at.display()))),
    };
    if m.file_type().is_symlink() {
      return Err(unsafe_(&format!("{} is a symbolic link", at.display())));
    }
    let last = i + 1 == names.len();
    if !last && !m.is_dir() {
      return Err(unsafe_(&format!("{} is not a folder", at.display())));
    }
    if last {
      if !m.is_file() {
        return Err(unsafe_(&format!("{} is not a regular file", at.display())));
      }
      #[cfg(unix)]
      if std::os::unix::fs::MetadataExt::nlink(&m) > 1 {
        return Err(unsafe_(&format!("{} has several hard links", at.display())));
      }
    }
  }
  Ok(())
}

/// Before a CLI restores the working directory `wd` from the session's file history (blocking):
/// reads the transcript it will act on (`transcript`, at most `max_bytes`) and refuses with
/// `TRANSCRIPT_UNSAFE` a history that names a file outside `wd` (an absolute path elsewhere, a
/// `..`, a `realParentDir` outside it), a file reached through a link or that is not a regular
/// file with one link, a backup name that is not plain, or a backup file in the configuration
/// folder that is a link, a special file or larger than `max_bytes`.
pub(crate) fn check_history(transcript: &TenantFile, wd: &Path, session_id: &str, max_bytes: u64) -> Result<()> {
  let unsafe_ = |why: &str| {
    Error::new(
      ErrorCode::TranscriptUnsafe,
      format!(
        "refusing to restore files: the session's file history (its transcript, which the agent can write) names {why}; \
         a rewind with files restores only regular files inside the session's working directory"
      ),
    )
  };
  let Some((file, _)) = transcript.open_read()? else { return Ok(()) };
  // The working directory as written and as the CLI resolves it (its real path).
  let real = std::fs::canonicalize(wd).unwrap_or_else(|_| wd.to_path_buf());
  let inside = |p: &Path| below(wd, p).or_else(|| below(&real, p));
  let folder = history_dir(transcript.root(), session_id);
  let mut lines = safe::BoundedLines::new(BufReader::with_capacity(64 * 1024, file), DEFAULT_MAX_LINE_BYTES, max_bytes);
  let mut buf = Vec::new();
  let mut seen = HashSet::new();
  loop {
    match lines.next_into(&mut buf) {
      Ok(true) => {}
      Ok(false) => break,
      Err(safe::LineError::TooLarge) => return Err(safe::too_large(&transcript.path().display().to_string(), max_bytes)),
      Err(safe::LineError::Io(e)) => return Err(Error::store(format!("cannot read transcript {}: {e}", transcript.path().display()))),
    }
    if !buf.windows(12).any(|w| w == b"file-history") {
      continue;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&buf) else { continue };
    for t in tracked_in(&v) {
      if !seen.insert((t.path.clone(), t.parent.clone(), t.backup.clone())) {
        continue;
      }
      let parent = match &t.parent {
        Some(p) => {
          let p = Path::new(p);
          inside(p).ok_or_else(|| unsafe_(&format!("the folder {}", p.display())))?;
          p.to_path_buf()
        }
        None => wd.to_path_buf(),
      };
      // Relative paths are checked against both folders the CLI might resolve them from.
      let p = Path::new(&t.path);
      for base in [&parent, &wd.to_path_buf()] {
        let full = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let rel = inside(&full).ok_or_else(|| unsafe_(&format!("the file {}", full.display())))?;
        check_on_disk(wd, &rel, &unsafe_)?;
      }
      if let Some(name) = &t.backup {
        if !backup_name_ok(name) {
          return Err(unsafe_(&format!("the backup {name:?}")));
        }
        match folder.join(name).regular_len() {
          Ok(Some(n)) if n > max_bytes => return Err(unsafe_(&format!("the backup {name}, larger than {max_bytes} bytes"))),
          Ok(_) => {}
          Err(e) if e.code == ErrorCode::TranscriptUnsafe => return Err(unsafe_(&format!("the backup {name}, which is not a plain file"))),
          Err(e) => return Err(e),
        }
      }
    }
  }
  Ok(())
}

#[cfg(all(test, unix))]
mod tests {
  use super::*;
  use serde_json::json;
  use std::os::unix::fs::symlink;

  const SID: &str = "11111111-1111-4111-8111-111111111111";

  fn setup() -> (tempfile::TempDir, PathBuf, TenantFile) {
    let d = tempfile::tempdir().unwrap();
    let wd = d.path().join("work");
    std::fs::create_dir_all(&wd).unwrap();
    let cfg = d.path().join("cfg");
    std::fs::create_dir_all(cfg.join("file-history").join(SID)).unwrap();
    (d, wd, TenantFile::new(&cfg, format!("projects/-w/{SID}.jsonl")))
  }

  /// `check_history` over `lines` (`WD` stands for the working directory), after `prepare(working
  /// directory, backup folder)`.
  fn probe(lines: Vec<Value>, prepare: &dyn Fn(&Path, &Path)) -> Result<()> {
    let (d, wd, t) = setup();
    let text: String = lines.iter().map(|l| format!("{}\n", l.to_string().replace("WD", &wd.to_string_lossy()))).collect();
    t.write_atomic(|w| w.write_all(text.as_bytes())).unwrap();
    prepare(&wd, &t.root().join("file-history").join(SID));
    let r = check_history(&t, &wd, SID, 1000);
    drop(d);
    r
  }

  fn delta(path: &str, parent: &Path, backup: Option<&str>) -> Value {
    json!({"type": "file-history-delta", "trackingPath": path,
      "backup": {"backupFileName": backup, "version": 1, "realParentDir": parent.to_string_lossy()}})
  }

  #[test]
  fn history_folders_move_to_this_nodes_working_directory() {
    let here = Path::new("/b/wd");
    assert_eq!(rebased("a.txt", "/a/wd", here).as_deref(), Some("/b/wd"));
    assert_eq!(rebased("sub/x.txt", "/a/wd/sub", here).as_deref(), Some("/b/wd/sub"));
    assert_eq!(rebased("a.txt", "/b/wd", here), None, "already here");
    assert_eq!(rebased("sub/x.txt", "/a/wd/other", here), None, "not the file's folder");
    assert_eq!(rebased("../x.txt", "/a", here), None);
    assert_eq!(rebased("/etc/x", "/etc", here), None);
    assert_eq!(rebased("a.txt", "relative", here), None);
    // A whole transcript: only the history's folders change, other lines stay byte for byte.
    let (_d, wd, t) = setup();
    let other = r#"{"type":"user","z":1,"a":2}"#;
    let text = format!(
      "{other}\n{}\n{}\n",
      json!({"type": "file-history-delta", "trackingPath": "a.txt", "backup": {"backupFileName": null, "realParentDir": "/a/wd"}}),
      json!({"type": "file-history-snapshot", "snapshot": {"trackedFileBackups": {"s/b.txt": {"backupFileName": "x@v1", "realParentDir": "/a/wd/s"}}}}),
    );
    t.write_atomic(|w| w.write_all(text.as_bytes())).unwrap();
    assert!(rebase_history(&t, &wd, 1 << 20).unwrap());
    let real = std::fs::canonicalize(&wd).unwrap();
    let out = std::fs::read_to_string(t.path()).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], other);
    let d: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(d["backup"]["realParentDir"], real.to_string_lossy().as_ref());
    let s: Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(s["snapshot"]["trackedFileBackups"]["s/b.txt"]["realParentDir"], real.join("s").to_string_lossy().as_ref());
    assert!(!rebase_history(&t, &wd, 1 << 20).unwrap(), "nothing left to move");
  }

  #[test]
  fn backup_names_are_plain() {
    for ok in ["6b9981fe93418b7c@v1", "a@v123456789"] {
      assert!(backup_name_ok(ok), "{ok}");
    }
    for bad in ["", "@v1", "abc@v", "../x@v1", "a/b@v1", "a.b@v1", "abc@v1/..", "abc@v1x", "abc", &format!("{}@v1", "a".repeat(65))] {
      assert!(!backup_name_ok(bad), "{bad}");
    }
  }

  #[test]
  fn a_history_inside_the_working_directory_passes() {
    let lines = vec![
      json!({"type": "file-history-snapshot", "snapshot": {"trackedFileBackups": {"a.txt": {"backupFileName": "ab@v1", "realParentDir": "WD"}}}}),
      delta("sub/new.txt", Path::new("WD"), None),
      delta("WD/sub/abs.txt", Path::new("WD"), None),
      json!({"type": "user", "message": "file-history mentioned in text: ../../etc/passwd"}),
    ];
    probe(lines, &|wd, fh| {
      std::fs::create_dir_all(wd.join("sub")).unwrap();
      std::fs::write(wd.join("a.txt"), "x").unwrap();
      std::fs::write(fh.join("ab@v1"), "old").unwrap();
    })
    .unwrap();
  }

  #[test]
  fn paths_outside_links_and_bad_backups_are_refused() {
    let wdp = Path::new("WD");
    let outside = std::env::temp_dir();
    type Prepare = Box<dyn Fn(&Path, &Path)>;
    let cases: Vec<(&str, Vec<Value>, Prepare)> = vec![
      ("relative escape", vec![delta("../x.txt", wdp, None)], Box::new(|_, _| {})),
      ("absolute elsewhere", vec![delta(&outside.join("x.txt").to_string_lossy(), wdp, None)], Box::new(|_, _| {})),
      ("parent elsewhere", vec![delta("x.txt", &outside, None)], Box::new(|_, _| {})),
      ("through a link", vec![delta("lnk/x.txt", wdp, None)], Box::new(|wd, _| symlink(std::env::temp_dir(), wd.join("lnk")).unwrap())),
      ("onto a link", vec![delta("x.txt", wdp, None)], Box::new(|wd, _| symlink("/etc/hostname", wd.join("x.txt")).unwrap())),
      (
        "hard link",
        vec![delta("x.txt", wdp, None)],
        Box::new(|wd, _| {
          std::fs::write(wd.join("y"), "y").unwrap();
          std::fs::hard_link(wd.join("y"), wd.join("x.txt")).unwrap();
        }),
      ),
      ("backup name", vec![delta("x.txt", wdp, Some("../../../etc/passwd"))], Box::new(|_, _| {})),
      ("backup a link", vec![delta("x.txt", wdp, Some("ab@v1"))], Box::new(|_, fh| symlink("/etc/passwd", fh.join("ab@v1")).unwrap())),
      (
        "backup too large",
        vec![delta("x.txt", wdp, Some("ab@v1"))],
        Box::new(|_, fh| std::fs::write(fh.join("ab@v1"), "x".repeat(2000)).unwrap()),
      ),
      (
        "snapshot key",
        vec![json!({"type": "file-history-snapshot", "snapshot": {"trackedFileBackups": {"/etc/passwd": {"backupFileName": null}}}})],
        Box::new(|_, _| {}),
      ),
    ];
    for (what, lines, prepare) in cases {
      let e = probe(lines, &*prepare).expect_err(what);
      assert_eq!(e.code, ErrorCode::TranscriptUnsafe, "{what}: {}", e.message);
    }
    // Control: the same shapes inside, as plain files, pass.
    probe(vec![delta("x.txt", wdp, Some("ab@v1"))], &|wd, fh| {
      std::fs::write(wd.join("x.txt"), "x").unwrap();
      std::fs::write(fh.join("ab@v1"), "old").unwrap();
    })
    .unwrap();
  }
}
