//! What the store tests of every backend build their rows from.

use claude_session_manager::store::NewSession;

/// A session of `user` in `project`, model `sonnet`, working in `/tmp`.
pub fn new_session(id: &str, user: &str, project: &str) -> NewSession {
  NewSession {
    id: id.into(),
    project_id: project.into(),
    user_id: user.into(),
    parent_id: None,
    title: None,
    model: "sonnet".into(),
    working_directory: "/tmp".into(),
    context: None,
    cli_cost_watermark: 0.0,
    config_dir: None,
    paused: None,
  }
}

/// A new session id.
pub fn id() -> String {
  uuid::Uuid::new_v4().to_string()
}

/// An owner in this (live) process.
pub fn owner(name: &str) -> claude_session_manager::store::Owner {
  claude_session_manager::store::Owner { id: name.into(), pid: std::process::id() }
}
