//! The CLI's argv, built from validated values (every value as `--flag=value`), and its
//! environment (only what the CLI needs).

/// How the CLI is to pick up the session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionMode {
  /// A session the CLI has not seen: `--session-id`.
  New(String),
  /// `--resume`.
  Resume(String),
  /// `--resume <parent> --fork-session --session-id <child>`.
  Fork { parent: String, child: String },
}

/// Validated flag values of one CLI run.
#[derive(Debug, Clone, Default)]
pub struct CliArgs {
  pub session: Option<SessionMode>,
  pub model: Option<String>,
  pub max_turns: Option<u64>,
  pub allowed_tools: Vec<String>,
  pub disallowed_tools: Vec<String>,
  pub permission_mode: Option<String>,
  pub append_system_prompt: Option<String>,
  pub max_budget_usd: Option<f64>,
  pub fallback_model: Option<String>,
  /// `--disable-slash-commands`: the prompt is text, never a CLI command.
  pub disable_slash_commands: bool,
  /// `--setting-sources`; `None` leaves the CLI's default (every source).
  pub setting_sources: Option<Vec<String>>,
}

/// Builds argv. Every value travels as `--flag=value`, so no value can become a flag of its own.
pub fn build_args(a: &CliArgs) -> Vec<String> {
  let mut v: Vec<String> =
    ["-p", "--output-format=stream-json", "--verbose", "--include-partial-messages"].iter().map(|s| s.to_string()).collect();
  match &a.session {
    Some(SessionMode::New(id)) => v.push(format!("--session-id={id}")),
    Some(SessionMode::Resume(id)) => v.push(format!("--resume={id}")),
    Some(SessionMode::Fork { parent, child }) => {
      v.push(format!("--resume={parent}"));
      v.push("--fork-session".into());
      v.push(format!("--session-id={child}"));
    }
    None => {}
  }
  if a.disable_slash_commands {
    v.push("--disable-slash-commands".into());
  }
  if let Some(s) = &a.setting_sources {
    v.push(format!("--setting-sources={}", s.join(",")));
  }
  if let Some(m) = &a.model {
    v.push(format!("--model={m}"));
  }
  if let Some(n) = a.max_turns {
    v.push(format!("--max-turns={n}"));
  }
  for t in &a.allowed_tools {
    v.push(format!("--allowedTools={t}"));
  }
  for t in &a.disallowed_tools {
    v.push(format!("--disallowedTools={t}"));
  }
  if let Some(m) = &a.permission_mode {
    v.push(format!("--permission-mode={m}"));
  }
  if let Some(s) = &a.append_system_prompt {
    v.push(format!("--append-system-prompt={s}"));
  }
  if let Some(b) = a.max_budget_usd {
    v.push(format!("--max-budget-usd={b}"));
  }
  if let Some(m) = &a.fallback_model {
    v.push(format!("--fallback-model={m}"));
  }
  v
}

const ENV_NAMES: &[&str] = &[
  "HOME",
  "PATH",
  "USER",
  "LOGNAME",
  "SHELL",
  "TMPDIR",
  "TMP",
  "TEMP",
  "LANG",
  "LANGUAGE",
  "TZ",
  "TERM",
  "NODE_EXTRA_CA_CERTS",
  "SSL_CERT_FILE",
  "SSL_CERT_DIR",
  "HTTP_PROXY",
  "HTTPS_PROXY",
  "NO_PROXY",
  "ALL_PROXY",
  "http_proxy",
  "https_proxy",
  "no_proxy",
  "all_proxy",
  "XDG_CONFIG_HOME",
  "XDG_CACHE_HOME",
  "XDG_DATA_HOME",
  "XDG_STATE_HOME",
  "XDG_RUNTIME_DIR",
  "SystemRoot",
  "SYSTEMROOT",
  "ComSpec",
  "APPDATA",
  "LOCALAPPDATA",
  "USERPROFILE",
  "PATHEXT",
  "CLAUDE_CONFIG_DIR",
  "API_TIMEOUT_MS",
  "BASH_DEFAULT_TIMEOUT_MS",
  "BASH_MAX_TIMEOUT_MS",
  "MAX_THINKING_TOKENS",
  "MCP_TIMEOUT",
  "MCP_TOOL_TIMEOUT",
  "DISABLE_AUTOUPDATER",
  "DISABLE_TELEMETRY",
  "DISABLE_ERROR_REPORTING",
  "DISABLE_COST_WARNINGS",
];
const ENV_PREFIXES: &[&str] = &["LC_", "ANTHROPIC_", "CLAUDE_CODE_"];

/// The child's environment: only what the CLI needs from `parent` (API key and base URL, proxy,
/// `HOME`, `PATH`, `CLAUDE_CONFIG_DIR`, `CLAUDE_CODE_*`, cloud-provider credentials only when that
/// provider is switched on), then `extra` on top. Other server secrets do not pass.
pub fn child_env(parent: impl IntoIterator<Item = (String, String)>, extra: &[(String, String)]) -> Vec<(String, String)> {
  let parent: Vec<(String, String)> = parent.into_iter().collect();
  let on = |name: &str| parent.iter().chain(extra.iter()).any(|(k, v)| k == name && !v.is_empty() && v != "0" && v != "false");
  let bedrock = on("CLAUDE_CODE_USE_BEDROCK");
  let vertex = on("CLAUDE_CODE_USE_VERTEX");
  let mut out: Vec<(String, String)> = parent
    .into_iter()
    .filter(|(k, _)| {
      ENV_NAMES.contains(&k.as_str())
        || ENV_PREFIXES.iter().any(|p| k.starts_with(p))
        || (bedrock && k.starts_with("AWS_"))
        || (vertex && (k.starts_with("VERTEX_") || k == "CLOUD_ML_REGION" || k == "GOOGLE_APPLICATION_CREDENTIALS"))
    })
    .collect();
  for (k, v) in extra {
    out.retain(|(ok, _)| ok != k);
    out.push((k.clone(), v.clone()));
  }
  out
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn safety_flags_are_passed_as_asked() {
    let a = CliArgs {
      permission_mode: Some("default".into()),
      disable_slash_commands: true,
      setting_sources: Some(vec![]),
      ..Default::default()
    };
    let v = build_args(&a);
    assert!(v.contains(&"--disable-slash-commands".to_string()));
    assert!(v.contains(&"--setting-sources=".to_string()));
    assert!(v.contains(&"--permission-mode=default".to_string()));
    let b = build_args(&CliArgs { setting_sources: Some(vec!["user".into(), "project".into()]), ..Default::default() });
    assert!(b.contains(&"--setting-sources=user,project".to_string()));
    assert!(!b.iter().any(|x| x == "--disable-slash-commands"));
    assert!(!b.iter().any(|x| x.starts_with("--permission-mode")));
  }
}
