//! Where the CLI keeps a session's transcript, and reading it back.

use std::path::{Path, PathBuf};

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

/// The transcript file of a session.
pub fn transcript_path(config_dir: &Path, cwd: &Path, session_id: &str) -> PathBuf {
  config_dir.join("projects").join(project_slug(cwd)).join(format!("{session_id}.jsonl"))
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn slug_replaces_every_non_alphanumeric() {
    assert_eq!(project_slug(Path::new("/home/u/my_app.v2")), "-home-u-my-app-v2");
    let env = vec![("HOME".to_string(), "/h".to_string())];
    assert_eq!(config_dir(&env), Some(PathBuf::from("/h/.claude")));
    let env = vec![("HOME".to_string(), "/h".to_string()), ("CLAUDE_CONFIG_DIR".to_string(), "/c".to_string())];
    assert_eq!(
      transcript_path(&config_dir(&env).unwrap(), Path::new("/w"), "id"),
      PathBuf::from("/c/projects/-w/id.jsonl")
    );
  }
}
