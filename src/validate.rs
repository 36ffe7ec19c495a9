//! Checks on the strings that come from a caller (ids, session ids, titles, model names, prompts,
//! tool rules, CLI flag values, folders), run before the store is touched or anything is spawned:
//! by the binding's conversions into typed requests (`binding/typed.rs`, which also reads the
//! numbers) and by the manager for what it is given by position or resolves itself. Each failure
//! is an `INVALID_ARGUMENT` error naming the field.

use crate::error::{Error, ErrorCode, Result};

/// Longest accepted project or user id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest accepted title, in bytes.
pub const MAX_TITLE_LEN: usize = 1024;
/// Largest prompt accepted, in bytes (the CLI and the model cannot take more anyway).
pub const MAX_PROMPT_BYTES: usize = 4 * 1024 * 1024;

fn describe_control(s: &str) -> Option<String> {
  s.chars().find(|c| c.is_control()).map(|c| format!("U+{:04X}", c as u32))
}

/// Characters that take no room and show nothing: the soft hyphen U+00AD, the zero-width and
/// direction marks U+200B–U+200F, the word joiner and invisible operators U+2060–U+2064, and the
/// byte-order mark U+FEFF.
pub fn is_invisible(c: char) -> bool {
  matches!(c, '\u{AD}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// The bidirectional embeddings and overrides U+202A–U+202E and isolates U+2066–U+2069, which
/// reorder the text shown after them.
pub fn is_bidi_control(c: char) -> bool {
  matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A project or user id.
///
/// - An id is at most 256 bytes of UTF-8.
/// - An id contains no control character (U+0000–U+001F, U+007F–U+009F: no newline, tab or escape).
/// - An id has at least one visible character: white space and the invisible characters (U+00AD,
///   U+200B–U+200F, U+2060–U+2064, U+FEFF) do not count.
/// - An id has no bidirectional control (U+202A–U+202E, U+2066–U+2069), zero-width or direction
///   mark (U+200B–U+200F) or byte-order mark (U+FEFF) anywhere.
/// - An id is well-formed Unicode: a JavaScript string with an unpaired surrogate (U+D800–U+DFFF
///   without its partner) is refused where it is read, never changed into U+FFFD.
/// - An id is compared exactly as given: it is not trimmed or normalised.
pub fn id(field: &str, value: &str) -> Result<()> {
  if value.chars().all(|c| c.is_whitespace() || is_invisible(c)) {
    return Err(Error::invalid(format!("{field} must be a non-empty string with a visible character")));
  }
  if value.len() > MAX_ID_LEN {
    return Err(Error::invalid(format!("{field} is {} bytes long; the limit is {MAX_ID_LEN}", value.len())));
  }
  if let Some(c) = describe_control(value) {
    return Err(Error::invalid(format!("{field} contains the control character {c}; ids must be printable")));
  }
  // Bidirectional controls reorder what is shown after them, and zero-width characters or a BOM
  // make two ids look alike: refused, as in titles.
  if let Some(c) = value.chars().find(|&c| is_bidi_control(c) || matches!(c, '\u{200B}'..='\u{200F}' | '\u{FEFF}')) {
    return Err(Error::invalid(format!(
      "{field} contains the invisible or bidirectional character U+{:04X}; ids must be plainly visible",
      c as u32
    )));
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
///
/// - A title is at most 1024 bytes of UTF-8.
/// - A title contains no control character (U+0000–U+001F, U+007F–U+009F: no newline, tab or
///   ANSI escape), so it stays one line and cannot drive a terminal.
/// - A title contains no bidirectional embedding, override or isolate (U+202A–U+202E,
///   U+2066–U+2069), which could make it read differently from what it is.
/// - A title is well-formed Unicode (no unpaired surrogate), as ids are.
pub fn title(value: &str) -> Result<()> {
  if value.len() > MAX_TITLE_LEN {
    return Err(Error::invalid(format!("title is longer than {MAX_TITLE_LEN} bytes")));
  }
  if let Some(c) = describe_control(value) {
    return Err(Error::invalid(format!("title contains the control character {c}; a title is one line of printable text")));
  }
  if let Some(c) = value.chars().find(|&c| is_bidi_control(c)) {
    return Err(Error::invalid(format!("title contains the bidirectional control U+{:04X}", c as u32)));
  }
  Ok(())
}

/// Longest accepted model name, in bytes.
pub const MAX_MODEL_LEN: usize = 128;

/// A model name (`model`, `fallbackModel`, `defaultModel`): an alias such as `sonnet` or a full id
/// such as `claude-sonnet-4-5-20250929`, `us.anthropic.claude-3-7-sonnet-20250219-v1:0` or
/// `claude-opus-4-1[1m]`.
///
/// - A model name is 1 to 128 characters from `A–Z a–z 0–9 . _ : [ ] / @ -`.
/// - A model name begins with a letter or a digit.
pub fn model(field: &str, value: &str) -> Result<()> {
  let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '[' | ']' | '/' | '@' | '-');
  let ok = value.len() <= MAX_MODEL_LEN && value.starts_with(|c: char| c.is_ascii_alphanumeric()) && value.chars().all(allowed);
  if !ok {
    let shown: String = value.chars().take(64).collect::<String>().escape_debug().to_string();
    return Err(Error::invalid(format!(
      "{field} must be a model name such as sonnet or claude-sonnet-4-5-20250929 (up to {MAX_MODEL_LEN} letters, digits and . _ : [ ] / @ -, \
       beginning with a letter or digit), got \"{shown}\""
    )));
  }
  Ok(())
}

/// A value that will be passed to the CLI as a flag value: non-empty, printable, bounded.
/// Values that begin with `-` are allowed because the executor always passes them as
/// `--flag=value`, which the CLI cannot mistake for another flag. Model names have a stricter
/// rule of their own ([`model`]).
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

/// A task's prompt: not blank, no NUL byte, at most [`MAX_PROMPT_BYTES`] (a longer one is
/// `CONTEXT_OVERFLOW`: no model could take it).
pub fn prompt(value: &str) -> Result<()> {
  if value.trim().is_empty() {
    return Err(Error::invalid("prompt must be a non-empty string"));
  }
  if value.len() > MAX_PROMPT_BYTES {
    return Err(Error::new(
      ErrorCode::ContextOverflow,
      format!("the prompt is {} bytes; the limit is {MAX_PROMPT_BYTES} bytes, far beyond any model's context window", value.len()),
    ));
  }
  if value.contains('\0') {
    return Err(Error::invalid("prompt contains a NUL byte"));
  }
  Ok(())
}

/// A list of tool rules (`allowedTools`, `disallowedTools`): at most `max` entries, each a flag
/// value of at most 512 bytes without control characters, naming one tool ([`one_tool_rule`]).
pub fn tool_rules(field: &str, list: &[String], max: usize) -> Result<()> {
  if list.len() > max {
    return Err(Error::invalid(format!("{field} has more than {max} entries")));
  }
  for t in list {
    cli_value(field, t, 512)?;
    if t.chars().any(|c| c.is_control()) {
      return Err(Error::invalid(format!("{field} entry {:?} contains a control character", t)));
    }
    one_tool_rule(field, t)?;
  }
  Ok(())
}

/// A tool rule names one tool (`Bash`, `Bash(npm test:*)`, `mcp__server__tool`): the CLI splits
/// `--allowedTools` values at spaces and commas outside parentheses, so `"Read Bash"` would grant
/// two tools. Such entries are refused.
pub fn one_tool_rule(field: &str, rule: &str) -> Result<()> {
  let mut depth = 0i32;
  for c in rule.chars() {
    match c {
      '(' => depth += 1,
      ')' if depth == 0 => return Err(Error::invalid(format!("{field} entry {rule:?} is not a tool rule (unbalanced parentheses)"))),
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
  fn prompts_and_tool_lists() {
    assert!(prompt("hi").is_ok());
    assert_eq!(prompt(" \n").unwrap_err().message, "prompt must be a non-empty string");
    assert_eq!(prompt("a\0b").unwrap_err().code, ErrorCode::InvalidArgument);
    assert_eq!(prompt(&"x".repeat(MAX_PROMPT_BYTES + 1)).unwrap_err().code, ErrorCode::ContextOverflow);
    assert!(prompt(&"x".repeat(MAX_PROMPT_BYTES)).is_ok());
    let rules = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(tool_rules("allowedTools", &rules(&["Read", "Bash(git log:*)"]), 2).is_ok());
    assert!(tool_rules("allowedTools", &rules(&["Read", "Write", "Edit"]), 2).unwrap_err().message.contains("more than 2 entries"));
    assert!(tool_rules("disallowedTools", &rules(&["Bash(\u{1b})"]), 2).unwrap_err().message.contains("control character"));
    assert!(tool_rules("allowedTools", &rules(&[""]), 2).unwrap_err().message.contains("must not be empty"));
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
  fn ids_need_a_visible_character() {
    for bad in [
      "\u{200B}",
      "\u{FEFF}",
      "\u{AD}",
      "\u{200B}\u{200C}\u{200D}\u{200E}\u{200F}",
      "\u{2060}\u{2064}",
      " \u{FEFF} ",
      "\u{2028}",
      "\u{3000}",
    ] {
      let e = id("userId", bad).unwrap_err();
      assert!(e.message.contains("userId"), "{bad:?}: {}", e.message);
    }
    for good in ["alice", "é", "用户", "a b", "a\u{2060}b"] {
      assert!(id("userId", good).is_ok(), "{good:?}");
    }
    // Visible, but with a bidi control, a zero-width character or a BOM: refused, as in titles.
    for bad in ["\u{200B}a", "a\u{FEFF}", "bob\u{202E}exe", "\u{202A}x", "x\u{2066}", "\u{2069}a", "a\u{200D}b", "a\u{200F}"] {
      let e = id("projectId", bad).unwrap_err();
      assert!(e.message.contains("projectId") && e.message.contains("U+"), "{bad:?}: {}", e.message);
    }
    assert!(id("userId", "a\u{1b}[31m").is_err());
  }

  #[test]
  fn titles() {
    for good in ["", "Refactor the parser", "Résumé — v2 (draft)", "日本語のタイトル", "emoji 🚀"] {
      assert!(title(good).is_ok(), "{good:?}");
    }
    for bad in
      ["a\nb", "a\rb", "a\tb", "\u{1b}[31mred", "a\u{0}b", "\u{7f}", "\u{85}", "abc\u{202E}fdp.exe", "\u{202A}x", "\u{2066}x", "\u{2069}"]
    {
      assert_eq!(title(bad).unwrap_err().code, ErrorCode::InvalidArgument, "{bad:?}");
    }
    assert!(title(&"x".repeat(1024)).is_ok());
    assert!(title(&"x".repeat(1025)).is_err());
  }

  #[test]
  fn models() {
    for good in [
      "sonnet",
      "claude-sonnet-4-5-20250929",
      "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
      "claude-opus-4-1[1m]",
      "projects/p/locations/l/models/claude@20250101",
      "model_1",
      &"m".repeat(128),
    ] {
      assert!(model("model", good).is_ok(), "{good:?}");
    }
    for bad in
      ["", "sonnet --print", "opus\tX", "-x", "--dangerously-skip-permissions", ".hidden", "sonnet\u{0}", "sönnet", "a b", &"m".repeat(129)]
    {
      assert!(model("model", bad).is_err(), "{bad:?}");
    }
    assert!(model("model", "sonnet --print").unwrap_err().message.contains("model"));
    assert!(cli_value("appendSystemPrompt", "any text --x", 128).is_ok(), "other fields keep the flag-value rule");
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
  fn cli_values_are_non_empty_bounded_and_nul_free() {
    assert!(cli_value("f", "x", 1).is_ok());
    assert!(cli_value("f", "--looks-like-a-flag", 64).is_ok(), "passed as --flag=value, so harmless");
    assert!(cli_value("f", "abcd", 4).is_ok(), "exactly the limit");
    for (bad, max, what) in [("", 4, "must not be empty"), ("abcde", 4, "longer than 4 bytes"), ("a\0b", 4, "NUL")] {
      let e = cli_value("field", bad, max).unwrap_err();
      assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad:?}");
      assert!(e.message.contains("field") && e.message.contains(what), "{bad:?}: {}", e.message);
    }
  }

  #[test]
  fn a_root_admits_whole_path_components_only() {
    // `/x/app` is a root; `/x/app-secrets` and `/x/application` share its spelling, not its folder.
    let base = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(base.path()).unwrap();
    for d in ["app", "app/src", "app-secrets", "application", "ap"] {
      std::fs::create_dir_all(base.join(d)).unwrap();
    }
    let roots = vec![base.join("app")];
    for ok in ["app", "app/src", "app/src/../src", "app-secrets/../app"] {
      let p = base.join(ok);
      assert!(working_directory("wd", p.to_str().unwrap(), &roots).is_ok(), "{ok} is inside");
    }
    for bad in ["app-secrets", "application", "ap", "app/../app-secrets"] {
      let p = base.join(bad);
      let e = working_directory("wd", p.to_str().unwrap(), &roots).unwrap_err();
      assert_eq!(e.code, ErrorCode::InvalidArgument, "{bad}");
      assert!(e.message.contains("outside the allowed roots"), "{bad}: {}", e.message);
    }
    // A root given with a trailing slash means the same folder.
    let slash = vec![std::path::PathBuf::from(format!("{}/", base.join("app").display()))];
    assert!(working_directory("wd", base.join("app-secrets").to_str().unwrap(), &slash).is_err());
    assert!(working_directory("wd", base.join("app/src").to_str().unwrap(), &slash).is_ok());
  }
}
