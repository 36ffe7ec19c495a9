//! Checks on every value that comes from a caller, run before the store is touched or anything is
//! spawned. Each failure is an `INVALID_ARGUMENT` error naming the field.

use crate::error::{Error, Result};

/// Longest accepted project or user id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted title, in bytes.
pub const MAX_TITLE_LEN: usize = 1024;
/// Largest prompt accepted, in bytes (the CLI and the model cannot take more anyway).
pub const MAX_PROMPT_BYTES: usize = 4 * 1024 * 1024;

fn describe_control(s: &str) -> Option<String> {
  s.chars().find(|c| c.is_control()).map(|c| format!("U+{:04X}", c as u32))
}

/// A project or user id: 1..=256 bytes, no control characters, not only white space.
pub fn id(field: &str, value: &str) -> Result<()> {
  if value.trim().is_empty() {
    return Err(Error::invalid(format!("{field} must be a non-empty string")));
  }
  if value.len() > MAX_ID_LEN {
    return Err(Error::invalid(format!("{field} is {} bytes long; the limit is {MAX_ID_LEN}", value.len())));
  }
  if let Some(c) = describe_control(value) {
    return Err(Error::invalid(format!("{field} contains the control character {c}; ids must be printable")));
  }
  Ok(())
}

/// A session id: a UUID in its canonical hyphenated form (the form the `claude` CLI uses).
/// Returns it lower-cased.
pub fn session_id(field: &str, value: &str) -> Result<String> {
  let ok = value.len() == 36
    && value.char_indices().all(|(i, c)| match i {
      8 | 13 | 18 | 23 => c == '-',
      _ => c.is_ascii_hexdigit(),
    });
  if !ok {
    let shown: String = value.chars().take(64).collect::<String>().escape_debug().to_string();
    return Err(Error::invalid(format!("{field} must be a UUID such as 123e4567-e89b-42d3-a456-426614174000, got \"{shown}\"")));
  }
  Ok(value.to_ascii_lowercase())
}

/// An optional free-text title.
pub fn title(value: &str) -> Result<()> {
  if value.len() > MAX_TITLE_LEN {
    return Err(Error::invalid(format!("title is longer than {MAX_TITLE_LEN} bytes")));
  }
  if value.contains('\0') {
    return Err(Error::invalid("title contains a NUL byte"));
  }
  Ok(())
}

/// A whole, non-negative number given from JavaScript as a double.
pub fn non_negative_int(field: &str, value: f64) -> Result<u64> {
  if !value.is_finite() || value < 0.0 || value.fract() != 0.0 || value > 9_007_199_254_740_991.0 {
    return Err(Error::invalid(format!("{field} must be a whole number >= 0, got {value}")));
  }
  Ok(value as u64)
}

/// A whole number that must be at least 1.
pub fn positive_int(field: &str, value: f64) -> Result<u64> {
  let v = non_negative_int(field, value)?;
  if v == 0 {
    return Err(Error::invalid(format!("{field} must be at least 1")));
  }
  Ok(v)
}

/// A percentage in (0, 100].
pub fn percent(field: &str, value: f64) -> Result<f64> {
  if !value.is_finite() || value <= 0.0 || value > 100.0 {
    return Err(Error::invalid(format!("{field} must be a percentage greater than 0 and at most 100, got {value}")));
  }
  Ok(value)
}

/// A value that will be passed to the CLI as a flag value: non-empty, printable, bounded.
/// Values that begin with `-` are allowed because the executor always passes them as
/// `--flag=value`, which the CLI cannot mistake for another flag.
pub fn cli_value(field: &str, value: &str, max_len: usize) -> Result<()> {
  if value.is_empty() {
    return Err(Error::invalid(format!("{field} must not be empty")));
  }
  if value.len() > max_len {
    return Err(Error::invalid(format!("{field} is longer than {max_len} bytes")));
  }
  if value.contains('\0') {
    return Err(Error::invalid(format!("{field} contains a NUL byte")));
  }
  Ok(())
}

/// A working directory: an absolute path to an existing folder, resolved through `..` and
/// symlinks; with `allowed_roots`, it must lie inside one of them (after resolving, so neither
/// `..` nor a symlink can leave a root). Returns the resolved path.
pub fn working_directory(field: &str, value: &str, allowed_roots: &[std::path::PathBuf]) -> Result<std::path::PathBuf> {
  cli_value(field, value, 4096)?;
  let p = std::path::Path::new(value);
  if !p.is_absolute() {
    return Err(Error::invalid(format!("{field} must be an absolute path, got {:?}", value)));
  }
  let resolved = std::fs::canonicalize(p).map_err(|e| Error::invalid(format!("{field} {:?} cannot be used: {e}", value)))?;
  if !resolved.is_dir() {
    return Err(Error::invalid(format!("{field} {:?} is not a folder", value)));
  }
  if !allowed_roots.is_empty() && !allowed_roots.iter().any(|r| resolved.starts_with(r)) {
    return Err(Error::invalid(format!("{field} {:?} resolves to {} which is outside the allowed roots", value, resolved.display())));
  }
  Ok(resolved)
}

/// A tool rule names one tool (`Bash`, `Bash(npm test:*)`, `mcp__server__tool`): the CLI splits
/// `--allowedTools` values at spaces and commas outside parentheses, so `"Read Bash"` would grant
/// two tools. Such entries are refused.
pub fn one_tool_rule(field: &str, rule: &str) -> Result<()> {
  let mut depth = 0i32;
  for c in rule.chars() {
    match c {
      '(' => depth += 1,
      ')' => depth -= 1,
      ' ' | ',' | '\t' if depth <= 0 => {
        return Err(Error::invalid(format!(
          "{field} entry {rule:?} names more than one tool (the CLI splits entries at spaces and commas): pass one rule per entry"
        )))
      }
      _ => {}
    }
  }
  if rule.trim().is_empty() || depth != 0 {
    return Err(Error::invalid(format!("{field} entry {rule:?} is not a tool rule")));
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::error::ErrorCode;

  #[test]
  fn one_tool_rule_per_entry() {
    for ok in ["Bash", "Bash(npm test:*)", "Bash(touch a && echo b, c)", "mcp__server__tool", "Read(/src/**)"] {
      assert!(one_tool_rule("allowedTools", ok).is_ok(), "{ok}");
    }
    for bad in ["Read Bash", "Read,Bash", "Bash(x) Read", "Read,  Write", "Read\tBash", "Bash(x", "Bash)x(", " "] {
      let e = one_tool_rule("allowedTools", bad).unwrap_err();
      assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}");
      assert!(e.message.contains("allowedTools"), "{bad}: {}", e.message);
    }
  }

  #[test]
  fn ids() {
    assert!(id("userId", "u-1").is_ok());
    for bad in ["", "   ", "a\nb", "a\u{0}b", "\u{7f}"] {
      assert_eq!(id("userId", bad).unwrap_err().code, ErrorCode::InvalidArgument, "{bad:?}");
    }
    assert!(id("userId", &"x".repeat(256)).is_ok());
    let e = id("projectId", &"x".repeat(257)).unwrap_err();
    assert!(e.message.contains("projectId") && e.message.contains("256"), "{}", e.message);
  }

  #[test]
  fn session_ids() {
    let u = "123E4567-E89B-42D3-A456-426614174000";
    assert_eq!(session_id("sessionId", u).unwrap(), u.to_lowercase());
    for bad in [
      "",
      "not-a-uuid",
      "--dangerously-skip-permissions",
      "123e4567e89b42d3a456426614174000",
      "123e4567-e89b-42d3-a456-42661417400g",
      "../../../../etc/passwd-aaaaaaaaaaaaaa",
    ] {
      assert_eq!(session_id("sessionId", bad).unwrap_err().code, ErrorCode::InvalidArgument);
    }
  }

  #[test]
  fn working_directories_stay_inside_their_roots() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root_path = std::fs::canonicalize(root.path()).unwrap();
    let inside = root_path.join("project");
    std::fs::create_dir(&inside).unwrap();
    std::os::unix::fs::symlink(outside.path(), root_path.join("escape")).unwrap();
    let roots = vec![root_path.clone()];
    assert_eq!(working_directory("wd", inside.to_str().unwrap(), &roots).unwrap(), inside);
    for bad in [
      format!("{}/project/../..", root_path.display()),
      format!("{}/escape", root_path.display()),
      "relative/path".to_string(),
      format!("{}/missing", root_path.display()),
      "/".to_string(),
    ] {
      assert_eq!(working_directory("wd", &bad, &roots).unwrap_err().code, ErrorCode::InvalidArgument, "{bad}");
    }
    assert!(working_directory("wd", "/", &[]).is_ok(), "no roots: any folder");
  }

  #[test]
  fn numbers() {
    assert_eq!(non_negative_int("limit", 0.0).unwrap(), 0);
    assert_eq!(non_negative_int("limit", 50.0).unwrap(), 50);
    for bad in [-1.0, 1.5, f64::NAN, f64::INFINITY, 1e300] {
      assert!(non_negative_int("limit", bad).is_err(), "{bad}");
    }
    assert!(positive_int("maxTurns", 0.0).is_err());
    assert!(percent("threshold", 0.0).is_err());
    assert!(percent("threshold", 101.0).is_err());
    assert!(percent("threshold", -5.0).is_err());
    assert_eq!(percent("threshold", 80.0).unwrap(), 80.0);
  }
}
