//! The CLI binary the sandbox runs: an execute-only copy (mode `0111`) of the real one.
//!
//! The kernel marks a process whose executable its user may not read as not dumpable: its
//! `/proc/<pid>/{fd,mem,environ,...}` belong to root and `ptrace` is refused. So the agent,
//! which runs as the same user as the CLI inside the sandbox, can neither write into the CLI's
//! output pipe (`/proc/<cli>/fd/1`: forging the task's result, cost and usage), nor inject lines
//! into its input, nor read its memory or environment. The copy (the size of the CLI, ~400 MB) is
//! made once per CLI version (size and modification time) in one folder per user of the machine
//! ([`cache_dir`]), shared by every manager of that user, and shown to the agent at the
//! original path, read-only. Older versions' copies are removed when a new one is made.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::error::{Error, ErrorCode, Result};

/// Where the copies are kept: `$XDG_CACHE_HOME/claude-session-manager/cli` (else
/// `~/.cache/...`), or the state folder's `bin/` when there is no home.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
  let base = std::env::var_os("XDG_CACHE_HOME")
    .filter(|v| Path::new(v).is_absolute())
    .map(PathBuf::from)
    .or_else(|| std::env::var_os("HOME").filter(|v| Path::new(v).is_absolute()).map(|h| PathBuf::from(h).join(".cache")));
  match base {
    Some(b) => b.join("claude-session-manager").join("cli"),
    None => state_dir.join("bin"),
  }
}

/// The execute-only copy of `program` under `dir`, made if missing; `None` for a script (`#!`),
/// which its interpreter must be able to read (a stand-in CLI of a test).
pub fn execute_only_copy(program: &Path, dir: &Path) -> Result<Option<PathBuf>> {
  let mut head = [0u8; 2];
  if std::fs::File::open(program).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head)).is_ok() && &head == b"#!" {
    return Ok(None);
  }
  native_copy(program, dir).map(Some)
}

fn native_copy(program: &Path, dir: &Path) -> Result<PathBuf> {
  let fail = |what: &str, e: std::io::Error| {
    Error::new(ErrorCode::SandboxUnavailable, format!("cannot {what} the sandbox's copy of the CLI in {}: {e}", dir.display()))
  };
  let meta = std::fs::metadata(program).map_err(|e| fail("find", e))?;
  let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
  let name = program.file_name().map_or_else(|| "claude".into(), |n| n.to_string_lossy().into_owned());
  let copy = dir.join(format!("{name}-{}-{mtime}", meta.len()));
  if let Ok(m) = std::fs::symlink_metadata(&copy) {
    if m.is_file() && m.len() == meta.len() && m.permissions().mode() & 0o7777 == 0o111 {
      return Ok(copy);
    }
  }
  std::fs::create_dir_all(dir).map_err(|e| fail("create the folder of", e))?;
  let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
  let tmp = dir.join(format!(".{name}-{}.tmp", uuid::Uuid::new_v4().simple()));
  let made = std::fs::copy(program, &tmp)
    .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o111)))
    .and_then(|_| std::fs::rename(&tmp, &copy));
  if let Err(e) = made {
    let _ = std::fs::remove_file(&tmp);
    return Err(fail("make", e));
  }
  // Copies of other versions not made or used for a day: gone (a running CLI keeps its inode).
  let prefix = format!("{name}-");
  let day = std::time::Duration::from_secs(86_400);
  for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
    let n = e.file_name().to_string_lossy().into_owned();
    let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok()).is_some_and(|age| age > day);
    if n.starts_with(&prefix) && e.path() != copy && old {
      let _ = std::fs::remove_file(e.path());
    }
  }
  Ok(copy)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn the_copy_is_execute_only_and_made_once_per_version() {
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("claude");
    std::fs::write(&prog, b"\x7fELF binary one").unwrap();
    let a = execute_only_copy(&prog, &dir.path().join("bin")).unwrap().unwrap();
    assert_eq!(std::fs::metadata(&a).unwrap().permissions().mode() & 0o7777, 0o111);
    assert_eq!(execute_only_copy(&prog, &dir.path().join("bin")).unwrap().unwrap(), a);
    std::fs::write(&prog, b"\x7fELF binary two, longer").unwrap();
    let b = execute_only_copy(&prog, &dir.path().join("bin")).unwrap().unwrap();
    assert_ne!(a, b, "a new version gets a new copy");
    assert!(a.exists(), "a copy another manager may use stays");
    std::fs::write(&prog, b"#!/bin/sh\necho hi\n").unwrap();
    assert_eq!(execute_only_copy(&prog, &dir.path().join("bin")).unwrap(), None, "a script is run as it is");
  }
}
