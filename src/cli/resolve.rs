//! Finding the `claude` binary: the `claudePath` option, `CLAUDE_PATH`, the npm package, `PATH`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorCode, Result};

fn platform_package() -> Option<&'static str> {
  match (std::env::consts::OS, std::env::consts::ARCH) {
    ("linux", "x86_64") => Some("claude-code-linux-x64"),
    ("linux", "aarch64") => Some("claude-code-linux-arm64"),
    ("macos", "x86_64") => Some("claude-code-darwin-x64"),
    ("macos", "aarch64") => Some("claude-code-darwin-arm64"),
    ("windows", "x86_64") => Some("claude-code-win32-x64"),
    ("windows", "aarch64") => Some("claude-code-win32-arm64"),
    _ => None,
  }
}

fn is_executable(p: &Path) -> bool {
  #[cfg(unix)]
  {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0 && m.len() > 0).unwrap_or(false)
  }
  #[cfg(not(unix))]
  {
    p.is_file()
  }
}

/// The `claude` binary of the `@anthropic-ai/claude-code` npm package installed in a
/// `node_modules` at or above `dir`.
fn from_node_modules(dir: &Path) -> Option<PathBuf> {
  let exe = if cfg!(windows) { "claude.exe" } else { "claude" };
  for base in dir.ancestors() {
    let nm = base.join("node_modules").join("@anthropic-ai");
    if !nm.is_dir() {
      continue;
    }
    let mut candidates = vec![nm.join("claude-code").join("bin").join("claude.exe")];
    if let Some(pkg) = platform_package() {
      candidates.push(nm.join(pkg).join(exe));
      candidates.push(nm.join(format!("{pkg}-musl")).join(exe));
    }
    if let Some(found) = candidates.into_iter().find(|c| is_executable(c)) {
      return Some(found);
    }
  }
  None
}

fn from_path(path_var: Option<OsString>) -> Option<PathBuf> {
  let names: &[&str] = if cfg!(windows) { &["claude.exe", "claude.cmd"] } else { &["claude"] };
  std::env::split_paths(&path_var?).flat_map(|d| names.iter().map(move |n| d.join(n))).find(|p| is_executable(p))
}

/// Resolves the CLI: the `claudePath` option, then `CLAUDE_PATH`, then the npm package
/// `@anthropic-ai/claude-code` under `search_dirs`, then `PATH`; one older than the supported
/// range is `CLI_UNSUPPORTED` (its `--version` is asked once per path: see [`super::version`]).
pub fn resolve_cli(explicit: Option<&str>, search_dirs: &[PathBuf]) -> Result<PathBuf> {
  let program = find_cli(explicit, search_dirs)?;
  super::version::check(&program)?;
  Ok(program)
}

fn find_cli(explicit: Option<&str>, search_dirs: &[PathBuf]) -> Result<PathBuf> {
  let hint = "install it with `npm install @anthropic-ai/claude-code`, or pass the `claudePath` option / set CLAUDE_PATH";
  if let Some(p) = explicit.map(str::to_owned).or_else(|| std::env::var("CLAUDE_PATH").ok().filter(|s| !s.is_empty())) {
    let pb = PathBuf::from(&p);
    return if is_executable(&pb) {
      Ok(pb)
    } else {
      Err(Error::new(ErrorCode::CliNotFound, format!("the claude CLI at {p} is missing or not executable; {hint}")))
    };
  }
  search_dirs
    .iter()
    .find_map(|d| from_node_modules(d))
    .or_else(|| from_path(std::env::var_os("PATH")))
    .ok_or_else(|| Error::new(ErrorCode::CliNotFound, format!("the claude CLI was not found; {hint}")))
}
