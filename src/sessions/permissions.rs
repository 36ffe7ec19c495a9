//! What a user's permission answer may say, and the always-allow rules it can leave behind.
//!
//! - [`PermissionResponse`]: `respondToPermission` (and so the Next.js route, which always goes
//!   through it), checked once where it came in (the binding's `TryFrom`) and carrying the one
//!   [`Decision`] type.
//! - [`user_edit_allowed`]: the guarded-input rule. A user may edit a tool's content, never what
//!   the permission was asked about (the CLI does not check its rules again on an edited input).
//! - [`Rules`]: `remember: 'session'` on an allow. The manager records a rule for that session,
//!   bounded by the server: a file tool (Read, Write, Edit, MultiEdit, NotebookEdit) in exactly the
//!   folder of the path asked about, when that folder is inside the session's working directory;
//!   Bash with exactly the command asked about. Later requests of the same session that match are
//!   allowed without asking. Nothing else is remembered (other tools, paths outside the working
//!   directory, `dangerouslyDisableSandbox`), and nothing is ever passed to the CLI's own
//!   permission settings (`updatedPermissions`). Rules live in the memory of the manager that runs
//!   the session's tasks, until the session is deleted or the manager closes.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;

use crate::cli::Decision;
use crate::error::{Error, Result};

/// Fields of a tool's input that the CLI's permission rules (`allowedTools`/`disallowedTools`,
/// e.g. `Bash(rm:*)`) and the user's decision are about: where a file tool reads or writes, what
/// a shell runs, which URL is fetched. The CLI checks its rules against the input it asked
/// about, not against an `updatedInput` it is answered with.
const GUARDED_INPUT_FIELDS: &[&str] = &["command", "file_path", "notebook_path", "path", "url", "dangerouslyDisableSandbox"];

/// A user's answer (`respondToPermission`, the Next.js route) may edit a tool's input (a Write's
/// content, an Edit's new text) but not the fields in [`GUARDED_INPUT_FIELDS`]: changed there it
/// would run something the server's rules were never checked against.
pub(crate) fn user_edit_allowed(input: &Value, answer: &Decision) -> Result<()> {
  let Decision::Allow { updated_input: Some(updated), .. } = answer else { return Ok(()) };
  for f in GUARDED_INPUT_FIELDS {
    if updated.get(f) != input.get(f) {
      return Err(Error::invalid(format!(
        "updatedInput may change the tool's other fields, not {f:?}: the permission was asked for the {f} it has; deny and let the agent ask again instead"
      )));
    }
  }
  Ok(())
}

/// `respondToPermission`: the user's answer to a permission request of a task on their session,
/// checked where it came in.
#[derive(Debug, Clone)]
pub struct PermissionResponse {
  pub session_id: String,
  pub user_id: String,
  /// A valid id.
  pub request_id: String,
  /// The answer; never with `updated_permissions` (a user's answer cannot change the CLI's own
  /// settings), an `updated_input` only as an object of at most `validate::MAX_PROMPT_BYTES`.
  pub decision: Decision,
}

/// Tools whose request names one file (`file_path`, or `notebook_path`): a rule for them is the
/// folder of that file.
const FILE_TOOLS: &[&str] = &["Read", "Write", "Edit", "MultiEdit", "NotebookEdit"];

/// How many rules one session keeps (the oldest goes first).
const MAX_RULES_PER_SESSION: usize = 64;

/// One always-allow rule: a tool, and what it may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
  tool: String,
  scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
  /// A file tool on a file directly in this folder.
  Folder(PathBuf),
  /// Bash running exactly this command.
  Command(String),
}

/// An absolute path with no `.` or `..` in it (compared as written: a rule never matches a path
/// that could be read two ways).
fn plain_absolute(p: &Path) -> bool {
  p.is_absolute() && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_) | Component::Prefix(_)))
}

impl Rule {
  /// The rule a request (`tool`, `input`) of a session working in `working_dir` stands for, if
  /// one can be made (see the module's doc).
  pub(crate) fn of(tool: &str, input: &Value, working_dir: &str) -> Option<Rule> {
    if input.get("dangerouslyDisableSandbox").is_some_and(|v| v != &Value::Bool(false)) {
      return None;
    }
    let scope = if FILE_TOOLS.contains(&tool) {
      let file = input.get("file_path").or_else(|| input.get("notebook_path")).and_then(Value::as_str)?;
      let (file, wd) = (Path::new(file), Path::new(working_dir));
      if !plain_absolute(file) || !plain_absolute(wd) {
        return None;
      }
      let folder = file.parent()?;
      if !folder.starts_with(wd) {
        return None;
      }
      // The folder as it is on disk, with no link on the way (the agent can make a folder of the
      // working directory a link to anywhere): else nothing is remembered or matched.
      if std::fs::canonicalize(folder).ok()? != folder || std::fs::canonicalize(wd).ok()? != wd {
        return None;
      }
      Scope::Folder(folder.to_path_buf())
    } else if tool == "Bash" {
      let command = input.get("command").and_then(Value::as_str).filter(|c| !c.trim().is_empty())?;
      Scope::Command(command.to_owned())
    } else {
      return None;
    };
    Some(Rule { tool: tool.to_owned(), scope })
  }
}

/// The always-allow rules of the sessions whose tasks this manager runs.
#[derive(Default)]
pub(crate) struct Rules(Mutex<HashMap<String, Vec<Rule>>>);

impl Rules {
  fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Rule>>> {
    self.0.lock().unwrap_or_else(|p| p.into_inner())
  }

  /// Records `rule` for `session`.
  pub(crate) fn add(&self, session: &str, rule: Rule) {
    let mut map = self.map();
    let rules = map.entry(session.to_owned()).or_default();
    if rules.contains(&rule) {
      return;
    }
    if rules.len() >= MAX_RULES_PER_SESSION {
      rules.remove(0);
    }
    rules.push(rule);
  }

  /// Whether a rule of `session` allows `rule`'s request.
  pub(crate) fn allows(&self, session: &str, rule: &Rule) -> bool {
    self.map().get(session).is_some_and(|rules| rules.contains(rule))
  }

  /// Forgets a session's rules (it was deleted).
  pub(crate) fn forget(&self, session: &str) {
    self.map().remove(session);
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use serde_json::json;

  fn allow_with(updated: Value) -> Decision {
    Decision::Allow { updated_input: Some(updated), updated_permissions: None, remember: false }
  }

  #[test]
  fn a_users_answer_may_edit_content_but_not_what_was_asked_about() {
    let bash = json!({ "command": "mkdir d", "description": "make it" });
    assert!(user_edit_allowed(&bash, &Decision::allow()).is_ok());
    assert!(user_edit_allowed(&bash, &allow_with(json!({ "command": "mkdir d", "description": "other" }))).is_ok());
    let e = user_edit_allowed(&bash, &allow_with(json!({ "command": "touch x", "description": "make it" })));
    assert!(e.unwrap_err().message.contains("\"command\""));
    // Dropping or adding a guarded field is a change too.
    assert!(user_edit_allowed(&bash, &allow_with(json!({ "description": "make it" }))).is_err());
    assert!(user_edit_allowed(&bash, &allow_with(json!({ "command": "mkdir d", "dangerouslyDisableSandbox": true }))).is_err());
    let write = json!({ "file_path": "/w/a.txt", "content": "x" });
    assert!(user_edit_allowed(&write, &allow_with(json!({ "file_path": "/w/a.txt", "content": "y" }))).is_ok());
    assert!(user_edit_allowed(&write, &allow_with(json!({ "file_path": "/etc/a.txt", "content": "x" }))).is_err());
  }

  #[test]
  fn rules_are_a_tool_and_a_folder_inside_the_working_directory_or_an_exact_command() {
    // Real folders: a rule's folder must be on disk as named (no link on the way).
    let root = std::env::temp_dir().join(format!("csm-rules-{}", std::process::id()));
    for d in ["t1/a/b", "t1/b", "t2", "outside"] {
      std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let root = std::fs::canonicalize(&root).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.join("outside"), root.join("t1/link")).unwrap();
    let at = |p: &str| root.join(p).to_string_lossy().into_owned();
    let wd_owned = at("t1");
    let wd = wd_owned.as_str();
    let write = |p: &str| Rule::of("Write", &json!({ "file_path": p, "content": "x" }), wd);
    let a = write(&at("t1/a/one.txt")).unwrap();
    assert_eq!(write(&at("t1/a/two.txt")), Some(a.clone()), "same folder, same rule");
    assert_ne!(write(&at("t1/a/b/three.txt")), Some(a.clone()), "a subfolder is another folder");
    assert_ne!(write(&at("t1/b/one.txt")), Some(a.clone()));
    assert_ne!(Rule::of("Edit", &json!({ "file_path": at("t1/a/one.txt") }), wd), Some(a.clone()), "another tool");
    assert!(write(&at("t1/one.txt")).is_some(), "the working directory itself");
    for outside in
      ["/etc/passwd".to_owned(), at("t10/x"), at("t1/../t2/x"), "relative/x".to_owned(), at("x"), at("t1/link/x"), at("t1/new/x")]
    {
      assert_eq!(write(&outside), None, "{outside}");
    }
    assert_eq!(Rule::of("Write", &json!({ "content": "x" }), wd), None);
    let bash = |c: &str| Rule::of("Bash", &json!({ "command": c, "description": "d" }), wd);
    assert_eq!(bash("npm test"), bash("npm test"));
    assert_ne!(bash("npm test"), bash("npm test; rm -rf /"));
    assert_eq!(bash("  "), None);
    assert_eq!(Rule::of("Bash", &json!({ "command": "ls", "dangerouslyDisableSandbox": true }), wd), None);
    assert_eq!(Rule::of("WebFetch", &json!({ "url": "https://example.com" }), wd), None);

    let rules = Rules::default();
    rules.add("s1", a.clone());
    assert!(rules.allows("s1", &a));
    assert!(!rules.allows("s2", &a), "another session");
    rules.forget("s1");
    assert!(!rules.allows("s1", &a));
    std::fs::remove_dir_all(&root).unwrap();
    for i in 0..=MAX_RULES_PER_SESSION {
      rules.add("s1", bash(&format!("echo {i}")).unwrap());
    }
    assert!(!rules.allows("s1", &bash("echo 0").unwrap()), "the oldest went");
    assert!(rules.allows("s1", &bash(&format!("echo {MAX_RULES_PER_SESSION}")).unwrap()));
  }
}
