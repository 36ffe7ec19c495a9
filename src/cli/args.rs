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
  /// `--resume-session-at`: with a resumed or forked session, the transcript entry to continue from.
  pub resume_at: Option<String>,
  /// `--resume-drops-turn`: the one prompt a `resume_at` may drop (the CLI refuses otherwise).
  pub resume_drops_turn: Option<String>,
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
  if let (Some(at), Some(SessionMode::Resume(_) | SessionMode::Fork { .. })) = (&a.resume_at, &a.session) {
    v.push(format!("--resume-session-at={at}"));
    if let Some(t) = &a.resume_drops_turn {
      v.push(format!("--resume-drops-turn={t}"));
    }
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
/// The CLI's own variables that change how it behaves (models, limits, features), passed when the
/// server has them. Not one of them is a credential.
const CLI_BEHAVIOUR: &[&str] = &[
  "ANTHROPIC_MODEL",
  "ANTHROPIC_SMALL_FAST_MODEL",
  "ANTHROPIC_BETAS",
  "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
  "CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK",
  "CLAUDE_CODE_DISABLE_FILE_MENTIONS",
  "CLAUDE_CODE_DISABLE_EXPERIMENTAL_BETAS",
  "CLAUDE_CODE_DISABLE_THINKING",
  "CLAUDE_CODE_DISABLE_ADAPTIVE_THINKING",
  "CLAUDE_CODE_DISABLE_1M_CONTEXT",
  "CLAUDE_CODE_DISABLE_AUTO_MEMORY",
  "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS",
  "CLAUDE_CODE_DISABLE_CLAUDE_MDS",
  "CLAUDE_CODE_DISABLE_CRON",
  "CLAUDE_CODE_DISABLE_WEB_FETCH",
  "CLAUDE_CODE_DISABLE_TERMINAL_TITLE",
  "CLAUDE_CODE_MAX_RETRIES",
  "CLAUDE_CODE_MAX_OUTPUT_TOKENS",
  "CLAUDE_CODE_MAX_TOOL_USE_CONCURRENCY",
  "CLAUDE_CODE_MAX_CONTEXT_TOKENS",
  "CLAUDE_CODE_AUTO_COMPACT_WINDOW",
  "CLAUDE_CODE_FILE_READ_MAX_OUTPUT_TOKENS",
  "CLAUDE_CODE_EFFORT_LEVEL",
  "CLAUDE_CODE_SUBAGENT_MODEL",
  "CLAUDE_CODE_TMPDIR",
  "CLAUDE_CODE_SHELL",
  "CLAUDE_CODE_USE_BEDROCK",
  "CLAUDE_CODE_USE_VERTEX",
  "CLAUDE_CODE_USE_FOUNDRY",
  "CLAUDE_CODE_SKIP_BEDROCK_AUTH",
  "CLAUDE_CODE_SKIP_VERTEX_AUTH",
  "CLAUDE_CODE_SKIP_FOUNDRY_AUTH",
];
/// Model choices by tier (`ANTHROPIC_DEFAULT_OPUS_MODEL`, its `_NAME`, ...).
const CLI_BEHAVIOUR_PREFIXES: &[&str] = &["ANTHROPIC_DEFAULT_", "ANTHROPIC_CUSTOM_MODEL_OPTION"];
/// How the CLI reaches the Anthropic API: passed here so that the manager sees them; with the key
/// proxy on, `Manager::secure` takes every one of them out and gives the CLI the proxy's base URL
/// and a task token instead (the proxy sends the credentials and custom headers upstream).
pub const API_ACCESS: &[&str] =
  &["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_CUSTOM_HEADERS", "ANTHROPIC_BASE_URL"];

/// The child's environment: only what the CLI needs from `parent` (the API access of
/// [`API_ACCESS`], proxy, `HOME`, `PATH`, `CLAUDE_CONFIG_DIR`, the CLI's behaviour variables,
/// cloud-provider settings and credentials only when that provider is switched on), then `extra`
/// on top. Every other server variable stays out, credentials such as `ANTHROPIC_ADMIN_KEY`
/// included.
pub fn child_env(parent: impl IntoIterator<Item = (String, String)>, extra: &[(String, String)]) -> Vec<(String, String)> {
  let parent: Vec<(String, String)> = parent.into_iter().collect();
  let on = |name: &str| parent.iter().chain(extra.iter()).any(|(k, v)| k == name && !v.is_empty() && v != "0" && v != "false");
  let bedrock = on("CLAUDE_CODE_USE_BEDROCK");
  let vertex = on("CLAUDE_CODE_USE_VERTEX");
  let foundry = on("CLAUDE_CODE_USE_FOUNDRY");
  let mut out: Vec<(String, String)> = parent
    .into_iter()
    .filter(|(k, _)| {
      ENV_NAMES.contains(&k.as_str())
        || k.starts_with("LC_")
        || CLI_BEHAVIOUR.contains(&k.as_str())
        || CLI_BEHAVIOUR_PREFIXES.iter().any(|p| k.starts_with(p))
        || API_ACCESS.contains(&k.as_str())
        || (bedrock && (k.starts_with("AWS_") || k.starts_with("ANTHROPIC_BEDROCK_") || k == "ANTHROPIC_SMALL_FAST_MODEL_AWS_REGION"))
        || (vertex
          && (k.starts_with("VERTEX_")
            || k.starts_with("ANTHROPIC_VERTEX_")
            || k == "CLOUD_ML_REGION"
            || k == "GOOGLE_APPLICATION_CREDENTIALS"))
        || (foundry && k.starts_with("ANTHROPIC_FOUNDRY_"))
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

  #[test]
  fn only_the_cli_s_variables_pass() {
    let parent = [
      ("PATH", "/usr/bin"),
      ("ANTHROPIC_API_KEY", "k"),
      ("ANTHROPIC_MODEL", "m"),
      ("ANTHROPIC_DEFAULT_OPUS_MODEL", "o"),
      ("CLAUDE_CODE_MAX_RETRIES", "0"),
      ("ANTHROPIC_ADMIN_KEY", "admin"),
      ("ANTHROPIC_FOUNDRY_API_KEY", "foundry"),
      ("ANTHROPIC_WEBHOOK_SIGNING_KEY", "hook"),
      ("CLAUDE_CODE_SESSION_ACCESS_TOKEN", "s"),
      ("CLAUDE_CODE_CLIENT_KEY", "c"),
      ("AWS_SECRET_ACCESS_KEY", "aws"),
      ("DATABASE_URL", "postgres://"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let names = |env: Vec<(String, String)>| env.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let env = names(child_env(parent.clone(), &[]));
    for k in ["PATH", "ANTHROPIC_API_KEY", "ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "CLAUDE_CODE_MAX_RETRIES"] {
      assert!(env.iter().any(|n| n == k), "{k} is missing");
    }
    for k in [
      "ANTHROPIC_ADMIN_KEY",
      "ANTHROPIC_FOUNDRY_API_KEY",
      "ANTHROPIC_WEBHOOK_SIGNING_KEY",
      "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
      "CLAUDE_CODE_CLIENT_KEY",
      "AWS_SECRET_ACCESS_KEY",
      "DATABASE_URL",
    ] {
      assert!(!env.iter().any(|n| n == k), "{k} passed");
    }
    // A provider's own settings pass only when it is on.
    let env = names(child_env(parent.clone(), &[("CLAUDE_CODE_USE_FOUNDRY".into(), "1".into())]));
    assert!(env.iter().any(|n| n == "ANTHROPIC_FOUNDRY_API_KEY") && !env.iter().any(|n| n == "ANTHROPIC_ADMIN_KEY"));
    let env = names(child_env(parent, &[("CLAUDE_CODE_USE_BEDROCK".into(), "1".into())]));
    assert!(env.iter().any(|n| n == "AWS_SECRET_ACCESS_KEY") && !env.iter().any(|n| n == "ANTHROPIC_FOUNDRY_API_KEY"));
  }
}
