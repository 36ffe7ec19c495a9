//! Which `claude` CLI versions the manager supports, and the version of a binary.
//!
//! The manager relies on flags and stream-json messages of the CLI that are not all public
//! (`--session-mirror`, the control protocol of warm processes, the `result` line's fields). They
//! were verified on [`OLDEST`]; a CLI older than that is refused with `CLI_UNSUPPORTED` before
//! anything is stored or spawned. Versions up to [`NEWEST_TESTED`] ran the test suite; a newer one
//! runs, with a warning on stderr once per binary (the same range is the package's
//! `peerDependencies` entry for `@anthropic-ai/claude-code`). A binary whose `--version` cannot be
//! read (a wrapper script, say) is run as it is.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};

/// A CLI version: major, minor, patch.
pub type Version = (u64, u64, u64);

/// The oldest CLI the manager was verified on.
pub const OLDEST: Version = (2, 1, 331);
/// The oldest CLI that continues a session from an earlier message (`--resume-session-at`,
/// `--resume-drops-turn`): `fork` at a message and `rewind` need it.
pub const BRANCHING: Version = (2, 1, 331);
/// The newest CLI the test suite ran on.
pub const NEWEST_TESTED: Version = (2, 1, 332);
/// The first version outside the supported range (the package's peer range is `<2.2.0`).
pub const FIRST_UNTESTED_MINOR: Version = (2, 2, 0);

/// How long `claude --version` may take.
pub const PROBE_LIMIT: Duration = Duration::from_secs(10);

/// Where a version stands against the supported range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
  /// Within `OLDEST..FIRST_UNTESTED_MINOR`.
  Supported,
  /// At or past [`FIRST_UNTESTED_MINOR`]: it runs, with a warning.
  Newer,
  /// Before [`OLDEST`]: refused.
  TooOld,
}

/// Where `v` stands.
pub fn support(v: Version) -> Support {
  if v < OLDEST {
    Support::TooOld
  } else if v >= FIRST_UNTESTED_MINOR {
    Support::Newer
  } else {
    Support::Supported
  }
}

/// The version in `claude --version`'s output (`2.1.331 (Claude Code)`).
pub fn parse(text: &str) -> Option<Version> {
  let word = text.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
  let mut parts = word.split('.').map(|p| p.chars().take_while(char::is_ascii_digit).collect::<String>().parse::<u64>().ok());
  Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// The version of the CLI at `program`, by its `--version` (run once per path, without a shell,
/// with an empty environment but `PATH`, for at most [`PROBE_LIMIT`]); `None` when it cannot be
/// read.
pub fn of(program: &Path) -> Option<Version> {
  static SEEN: Mutex<Option<HashMap<PathBuf, Option<Version>>>> = Mutex::new(None);
  if let Some(v) = SEEN.lock().ok().and_then(|m| m.as_ref().and_then(|m| m.get(program).copied())) {
    return v;
  }
  let v = probe(program);
  if let Ok(mut m) = SEEN.lock() {
    m.get_or_insert_with(HashMap::new).insert(program.to_path_buf(), v);
  }
  v
}

fn probe(program: &Path) -> Option<Version> {
  let mut cmd = Command::new(program);
  cmd.arg("--version").env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
  if let Some(path) = std::env::var_os("PATH") {
    cmd.env("PATH", path);
  }
  let mut child = cmd.spawn().ok()?;
  let deadline = Instant::now() + PROBE_LIMIT;
  loop {
    match child.try_wait() {
      Ok(Some(_)) => break,
      Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
      _ => {
        let _ = child.kill();
        let _ = child.wait();
        return None;
      }
    }
  }
  let mut out = String::new();
  child.stdout.take()?.take(4096).read_to_string(&mut out).ok()?;
  parse(&out)
}

/// Refuses a CLI older than [`OLDEST`] (`CLI_UNSUPPORTED`), warns once about one newer than the
/// tested range; returns the version when it could be read.
pub fn check(program: &Path) -> Result<Option<Version>> {
  let Some(v) = of(program) else { return Ok(None) };
  match support(v) {
    Support::TooOld => Err(Error::new(
      ErrorCode::CliUnsupported,
      format!(
        "the claude CLI at {} is version {}, older than {} which this package needs; install a supported one with `npm install @anthropic-ai/claude-code@{}`",
        program.display(),
        show(v),
        show(OLDEST),
        show(NEWEST_TESTED)
      ),
    )),
    Support::Newer => {
      static WARNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
      if let Ok(mut w) = WARNED.lock() {
        if !w.iter().any(|p| p == program) {
          w.push(program.to_path_buf());
          eprintln!(
            "claude-session-manager: warning: the claude CLI at {} is version {}, newer than the versions this package was tested with ({} to {}); it may not behave as documented",
            program.display(),
            show(v),
            show(OLDEST),
            show(NEWEST_TESTED)
          );
        }
      }
      Ok(Some(v))
    }
    Support::Supported => Ok(Some(v)),
  }
}

/// `major.minor.patch`.
pub fn show(v: Version) -> String {
  format!("{}.{}.{}", v.0, v.1, v.2)
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn versions_are_read_and_placed_in_the_range() {
    assert_eq!(parse("2.1.331 (Claude Code)"), Some((2, 1, 331)));
    assert_eq!(parse("claude 2.2\n"), Some((2, 2, 0)));
    assert_eq!(parse("garbage here"), None);
    assert_eq!(support((2, 1, 330)), Support::TooOld);
    assert_eq!(support((1, 9, 999)), Support::TooOld);
    assert_eq!(support(OLDEST), Support::Supported);
    assert_eq!(support(NEWEST_TESTED), Support::Supported);
    assert_eq!(support((2, 1, 999)), Support::Supported);
    assert_eq!(support((2, 2, 0)), Support::Newer);
    assert_eq!(support((3, 0, 0)), Support::Newer);
  }
}
