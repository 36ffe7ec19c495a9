//! The JS shapes of `requests.rs` made the core's typed requests, once, at the door: every
//! `TryFrom` here checks the fields in the order the error names the first one refused (ids, then
//! the free text, then names and rules, then numbers), turns numbers into counts and
//! `Duration`s and strings into enums, and fails with the field's `INVALID_ARGUMENT` (or
//! `CONTEXT_OVERFLOW` for a prompt no model could take). What the core gets is valid; it checks
//! only what depends on its own settings or its store.

use std::time::Duration;

use super::*;
use crate::validate;

/// Smallest accepted `maxBudgetUsd`.
pub(crate) const MIN_BUDGET_USD: f64 = 0.0001;
/// Largest accepted `maxBudgetUsd`.
pub(crate) const MAX_BUDGET_USD: f64 = 10_000.0;

/// A spending cap in US dollars: a finite number from 0.0001 to 10000.
pub(crate) fn budget_usd(field: &str, value: f64) -> CoreResult<f64> {
  if !(MIN_BUDGET_USD..=MAX_BUDGET_USD).contains(&value) {
    return Err(CoreError::invalid(format!(
      "{field} must be a number from {MIN_BUDGET_USD} to {MAX_BUDGET_USD} (US dollars), got {value}"
    )));
  }
  Ok(value)
}

/// A whole, non-negative number given from JavaScript as a double.
pub(crate) fn non_negative_int(field: &str, value: f64) -> CoreResult<u64> {
  if !value.is_finite() || value < 0.0 || value.fract() != 0.0 || value > 9_007_199_254_740_991.0 {
    return Err(CoreError::invalid(format!("{field} must be a whole number >= 0, got {value}")));
  }
  Ok(value as u64)
}

/// A whole number that must be at least 1.
pub(crate) fn positive_int(field: &str, value: f64) -> CoreResult<u64> {
  let v = non_negative_int(field, value)?;
  if v == 0 {
    return Err(CoreError::invalid(format!("{field} must be at least 1")));
  }
  Ok(v)
}

/// A percentage in (0, 100].
pub(crate) fn percent(field: &str, value: f64) -> CoreResult<f64> {
  if !value.is_finite() || value <= 0.0 || value > 100.0 {
    return Err(CoreError::invalid(format!("{field} must be a percentage greater than 0 and at most 100, got {value}")));
  }
  Ok(value)
}

/// An amount of US dollars: finite and not negative.
fn usd(field: &str, v: f64) -> CoreResult<f64> {
  if !v.is_finite() || v < 0.0 {
    return Err(CoreError::invalid(format!("{field} must be a finite number of US dollars, 0 or more, got {v}")));
  }
  Ok(v)
}

/// A cap's period: `day`, `month` or none.
fn budget_period(field: &str, p: Option<&str>) -> CoreResult<Option<manager::BudgetPeriod>> {
  let choices = manager::BudgetPeriod::ALL.map(|v| (v.as_str(), v));
  opt(p, |p| pick(p, &choices, || format!("{field} must be \"day\" or \"month\" (or left out for no period), got {p:?}")))
}

/// A whole number of milliseconds, 0 or more.
fn millis(field: &str, v: f64) -> CoreResult<Duration> {
  Ok(Duration::from_millis(non_negative_int(field, v)?))
}

/// A whole number of milliseconds, at least 1.
fn positive_millis(field: &str, v: f64) -> CoreResult<Duration> {
  Ok(Duration::from_millis(positive_int(field, v)?))
}

/// The choice JavaScript spells `value`, else `INVALID_ARGUMENT` with the message `refused` makes.
fn pick<T: Copy>(value: &str, choices: &[(&str, T)], refused: impl FnOnce() -> String) -> CoreResult<T> {
  choices.iter().find(|(name, _)| *name == value).map(|(_, t)| *t).ok_or_else(|| CoreError::invalid(refused()))
}

/// An optional value checked (or converted) by `check`.
fn opt<T, U>(v: Option<T>, check: impl FnOnce(T) -> CoreResult<U>) -> CoreResult<Option<U>> {
  v.map(check).transpose()
}

/// The user and project ids every project-scoped request carries.
fn user_project(user_id: &str, project_id: Option<&str>) -> CoreResult<()> {
  validate::id("userId", user_id)?;
  opt(project_id, |p| validate::id("projectId", p))?;
  Ok(())
}

impl TryFrom<SessionManagerOptions> for manager::Options {
  type Error = CoreError;

  /// The options' shapes; folders, the database and the environment are `Config::resolve`'s.
  fn try_from(o: SessionManagerOptions) -> CoreResult<Self> {
    use manager::{Isolation, SandboxMode};
    let isolate_tenants = opt(o.isolate_tenants, |i| {
      let choices = [("none", Isolation::None), ("user", Isolation::User), ("project", Isolation::Project)];
      pick(&i, &choices, || format!("isolateTenants must be \"none\", \"user\" or \"project\", got {i:?}"))
    })?;
    let count = |field: &str, v: Option<f64>| opt(v, |n| positive_int(field, n));
    let context_window = count("contextWindow", o.context_window)?;
    let compact_threshold = opt(o.compact_threshold, |t| percent("compactThreshold", t))?;
    let max_concurrent_tasks = count("maxConcurrentTasks", o.max_concurrent_tasks)?;
    let max_concurrent_tasks_total = count("maxConcurrentTasksTotal", o.max_concurrent_tasks_total)?;
    let queue_timeout = opt(o.queue_timeout_ms, |t| millis("queueTimeoutMs", t))?;
    // 0 turns these off (a zero Duration).
    let off_or_positive = |field: &str, v: Option<f64>| opt(v, |t| if t == 0.0 { Ok(Duration::ZERO) } else { positive_millis(field, t) });
    let stall_timeout = off_or_positive("stallTimeoutMs", o.stall_timeout_ms)?;
    let warm_idle = off_or_positive("warmIdleMs", o.warm_idle_ms)?;
    let max_warm_sessions = count("maxWarmSessions", o.max_warm_sessions)?;
    let permission_timeout = opt(o.permission_timeout_ms, |t| positive_millis("permissionTimeoutMs", t))?;
    let event_retention = opt(o.event_retention_ms, |t| positive_millis("eventRetentionMs", t))?;
    opt(o.redis_url.as_deref(), manager::check_redis_url)?;
    let max_transcript_bytes = count("maxTranscriptBytes", o.max_transcript_bytes)?;
    let cli_niceness = opt(o.cli_niceness, |n| {
      let n = non_negative_int("cliNiceness", n)?;
      u8::try_from(n)
        .ok()
        .filter(|n| *n <= 19)
        .ok_or_else(|| CoreError::invalid(format!("cliNiceness must be an integer from 0 to 19, got {n}")))
    })?;
    let sandbox = opt(o.sandbox, |s| {
      let choices = [("auto", SandboxMode::Auto), ("bubblewrap", SandboxMode::Bubblewrap), ("none", SandboxMode::None)];
      pick(&s, &choices, || format!("sandbox must be \"auto\", \"bubblewrap\" or \"none\", got {s:?}"))
    })?;
    let sandbox_limits = sandbox_limits(o.sandbox_limits.unwrap_or_default())?;
    let allow_slash_commands = o.allow_slash_commands.unwrap_or_default();
    for c in &allow_slash_commands {
      let ok = c.len() <= 64
        && c.starts_with('/')
        && c.len() > 1
        && c[1..].chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | ':'));
      if !ok {
        return Err(CoreError::invalid(format!("allowSlashCommands entries are commands such as \"/context\", got {:?}", c)));
      }
    }
    let setting_sources = o.setting_sources.unwrap_or_default();
    if let Some(s) = setting_sources.iter().find(|s| !matches!(s.as_str(), "user" | "project" | "local")) {
      return Err(CoreError::invalid(format!("settingSources entries are \"user\", \"project\" or \"local\", got {:?}", s)));
    }
    let lease_ttl = opt(o.lease_ttl_ms, |t| {
      let t = positive_int("leaseTtlMs", t)?;
      if !(manager::MIN_LEASE_TTL_MS..=24 * 3_600_000).contains(&t) {
        return Err(CoreError::invalid(format!("leaseTtlMs must be from {} to 86400000, got {t}", manager::MIN_LEASE_TTL_MS)));
      }
      Ok(Duration::from_millis(t))
    })?;
    if let Some(n) = &o.node_id {
      if n.is_empty() || n.len() > 200 || n.chars().any(|c| c.is_control()) {
        return Err(CoreError::invalid(format!("nodeId must be 1 to 200 characters without control characters, got {n:?}")));
      }
    }
    let budgets = opt(o.budgets, budget_defaults)?;
    let model_prices = o.model_prices.unwrap_or_default().into_iter().map(model_price).collect::<CoreResult<Vec<_>>>()?;
    let paths = o.sandbox_paths.unwrap_or_default();
    Ok(manager::Options {
      database_path: o.database_path,
      database_url: o.database_url,
      database_schema: o.database_schema,
      working_directory: o.working_directory,
      workspace_root: o.workspace_root,
      allow_server_folder_as_workspace: o.allow_server_folder_as_workspace.unwrap_or(false),
      default_model: o.default_model,
      context_window,
      compact_threshold,
      claude_path: o.claude_path,
      env: o.env.unwrap_or_default().into_iter().collect(),
      allow_bypass_permissions: o.allow_bypass_permissions.unwrap_or(false),
      max_concurrent_tasks,
      max_concurrent_tasks_total,
      queue_timeout,
      stall_timeout,
      cli_niceness,
      allowed_roots: o.allowed_roots.unwrap_or_default(),
      isolate_tenants,
      tenant_config_root: o.tenant_config_root,
      state_directory: o.state_directory,
      sandbox,
      sandbox_read_only: paths.read_only.unwrap_or_default(),
      sandbox_read_write: paths.read_write.unwrap_or_default(),
      sandbox_limits,
      sandbox_allow_domains: o.sandbox_network.and_then(|n| n.allow_domains).unwrap_or_default(),
      expose_api_key_to_agent: o.expose_api_key_to_agent.unwrap_or(false),
      allow_slash_commands,
      allow_file_mentions: o.allow_file_mentions.unwrap_or(false),
      allow_background_tools: o.allow_background_tools.unwrap_or(false),
      setting_sources,
      file_checkpoints: o.file_checkpoints,
      node_id: o.node_id,
      lease_ttl,
      warm_idle,
      max_warm_sessions,
      permission_timeout,
      max_transcript_bytes,
      event_retention,
      redis_url: o.redis_url,
      budgets,
      model_prices,
    })
  }
}

/// `budgets` in the manager's options.
fn budget_defaults(b: JsBudgetDefaults) -> CoreResult<manager::BudgetOptions> {
  let per_user = opt(b.per_user, |c| {
    let cap = usd("budgets.perUser.usd", c.usd)?;
    Ok((cap, budget_period("budgets.perUser.period", c.period.as_deref())?))
  })?;
  let per_session = opt(b.per_session, |c| usd("budgets.perSession.usd", c.usd))?;
  Ok(manager::BudgetOptions { per_user, per_session })
}

/// One entry of `modelPrices`.
fn model_price(p: JsModelPrice) -> CoreResult<manager::ModelPrice> {
  if p.model.trim().is_empty() {
    return Err(CoreError::invalid("modelPrices: each entry needs a model (a family such as \"opus\" or a model id)"));
  }
  let f = |name: &str, v: f64| usd(&format!("modelPrices[{:?}].{name}", p.model), v);
  Ok(manager::ModelPrice {
    input: f("input", p.input)?,
    output: f("output", p.output)?,
    cache_write: opt(p.cache_write, |v| f("cacheWrite", v))?,
    cache_read: opt(p.cache_read, |v| f("cacheRead", v))?,
    model: p.model,
  })
}

/// `sandboxLimits` in bytes and processes, with the sandbox's defaults.
fn sandbox_limits(l: JsSandboxLimits) -> CoreResult<crate::cli::SandboxLimits> {
  let d = crate::cli::SandboxLimits::default();
  let mb = |name: &str, v: Option<f64>, default: u64| -> CoreResult<u64> {
    match v {
      None => Ok(default),
      Some(x) if x.is_finite() && x.fract() == 0.0 && (1.0..=65536.0).contains(&x) => Ok((x as u64) << 20),
      Some(x) => Err(CoreError::invalid(format!("sandboxLimits.{name} must be a whole number of MiB from 1 to 65536, got {x}"))),
    }
  };
  Ok(crate::cli::SandboxLimits {
    tmp_bytes: mb("tmpMb", l.tmp_mb, d.tmp_bytes)?,
    home_bytes: mb("homeMb", l.home_mb, d.home_bytes)?,
    processes: match l.processes {
      None => d.processes,
      Some(x) if x.is_finite() && x.fract() == 0.0 && (32.0..=1_000_000.0).contains(&x) => x as u64,
      Some(x) => return Err(CoreError::invalid(format!("sandboxLimits.processes must be a whole number from 32 to 1000000, got {x}"))),
    },
    memory_bytes: match l.memory_mb {
      None => d.memory_bytes,
      Some(x) if x.is_finite() && x.fract() == 0.0 && (1024.0..=1_048_576.0).contains(&x) => (x as u64) << 20,
      Some(x) => {
        return Err(CoreError::invalid(format!("sandboxLimits.memoryMb must be a whole number of MiB from 1024 to 1048576, got {x}")))
      }
    },
  })
}

impl TryFrom<JsTaskRequest> for manager::TaskRequest {
  type Error = CoreError;

  fn try_from(r: JsTaskRequest) -> CoreResult<Self> {
    user_project(&r.user_id, Some(&r.project_id))?;
    validate::prompt(&r.prompt)?;
    opt(r.model.as_deref(), |m| validate::model("model", m))?;
    opt(r.fallback_model.as_deref(), |m| validate::model("fallbackModel", m))?;
    let max_turns = opt(r.max_turns, |t| {
      let t = positive_int("maxTurns", t)?;
      u32::try_from(t)
        .ok()
        .filter(|t| *t <= manager::MAX_TURNS)
        .ok_or_else(|| CoreError::invalid(format!("maxTurns must be at most {}", manager::MAX_TURNS)))
    })?;
    let allowed_tools = r.allowed_tools.unwrap_or_default();
    validate::tool_rules("allowedTools", &allowed_tools, manager::MAX_TOOL_RULES)?;
    let disallowed_tools = r.disallowed_tools.unwrap_or_default();
    validate::tool_rules("disallowedTools", &disallowed_tools, manager::MAX_TOOL_RULES)?;
    let permission_mode = opt(r.permission_mode, |m| {
      let choices = manager::PermissionMode::ALL.map(|p| (p.as_str(), p));
      pick(&m, &choices, || format!("permissionMode must be one of default, acceptEdits, plan; got {m:?}"))
    })?;
    opt(r.append_system_prompt.as_deref(), |s| validate::cli_value("appendSystemPrompt", s, 64 * 1024))?;
    let max_budget_usd = opt(r.max_budget_usd, |b| budget_usd("maxBudgetUsd", b))?;
    let compact_threshold = opt(r.compact_threshold, |t| percent("compactThreshold", t))?;
    let timeout = opt(r.timeout_ms, |t| positive_millis("timeoutMs", t))?;
    let queue_timeout = opt(r.queue_timeout_ms, |t| millis("queueTimeoutMs", t))?;
    opt(r.title.as_deref(), validate::title)?;
    let fork_session = r.fork_session.unwrap_or(false);
    if fork_session && r.session_id.is_none() {
      return Err(CoreError::invalid("forkSession needs the sessionId of the session to fork"));
    }
    if r.at_message_id.is_some() && r.session_id.is_none() {
      return Err(CoreError::invalid("atMessageId needs the sessionId of the session to fork"));
    }
    let session_id = opt(r.session_id.as_deref(), |s| validate::session_id("sessionId", s))?;
    if session_id.is_some() && r.working_directory.is_some() {
      return Err(CoreError::invalid(
        "workingDirectory applies to new sessions only: a session always runs in its own folder, where the CLI keeps its transcript",
      ));
    }
    Ok(manager::TaskRequest {
      prompt: r.prompt,
      project_id: r.project_id,
      user_id: r.user_id,
      session_id,
      model: r.model,
      max_turns,
      allowed_tools,
      disallowed_tools,
      permission_mode,
      append_system_prompt: r.append_system_prompt,
      max_budget_usd,
      fallback_model: r.fallback_model,
      auto_compact: r.auto_compact.unwrap_or(false),
      compact_threshold,
      fork_session,
      at_message_id: r.at_message_id,
      timeout,
      include_partial_messages: r.include_partial_messages.unwrap_or(false),
      title: r.title,
      working_directory: r.working_directory,
      queue_timeout,
    })
  }
}

impl TryFrom<JsPrewarmRequest> for manager::PrewarmRequest {
  type Error = CoreError;

  /// Checked as the next task's options are (the same conversion, with a placeholder prompt that
  /// is dropped: a prewarmed CLI gets no prompt until a task runs on it).
  fn try_from(r: JsPrewarmRequest) -> CoreResult<Self> {
    let project_given = r.project_id.is_some();
    let task = JsTaskRequest {
      prompt: "-".into(),
      project_id: r.project_id.unwrap_or_else(|| "-".into()),
      user_id: r.user_id,
      session_id: Some(r.session_id),
      model: r.model,
      max_turns: r.max_turns,
      allowed_tools: r.allowed_tools,
      disallowed_tools: r.disallowed_tools,
      permission_mode: r.permission_mode,
      append_system_prompt: r.append_system_prompt,
      fallback_model: r.fallback_model,
      ..Default::default()
    };
    let mut task = manager::TaskRequest::try_from(task)?;
    task.prompt.clear();
    if !project_given {
      task.project_id.clear();
    }
    Ok(manager::PrewarmRequest { task, permission_prompts: r.permission_prompts.unwrap_or(false) })
  }
}

impl TryFrom<JsCompactRequest> for manager::CompactRequest {
  type Error = CoreError;

  fn try_from(r: JsCompactRequest) -> CoreResult<Self> {
    opt(r.summary_instructions.as_deref(), |i| validate::cli_value("summaryInstructions", i, 64 * 1024))?;
    Ok(manager::CompactRequest { session_id: r.session_id, user_id: r.user_id, summary_instructions: r.summary_instructions })
  }
}

impl TryFrom<JsSendMessageRequest> for manager::SendMessageRequest {
  type Error = CoreError;

  fn try_from(r: JsSendMessageRequest) -> CoreResult<Self> {
    let p = &r.prompt;
    if p.trim().is_empty() || p.contains('\0') || p.len() > validate::MAX_PROMPT_BYTES {
      return Err(CoreError::invalid("prompt must be a non-empty string without NUL bytes, within the prompt size limit"));
    }
    if p.split_whitespace().next().is_some_and(|first| first.starts_with('/')) {
      return Err(CoreError::invalid("a message sent to a running task is text; slash commands cannot be sent this way"));
    }
    Ok(manager::SendMessageRequest { session_id: r.session_id, user_id: r.user_id, prompt: r.prompt })
  }
}

impl TryFrom<ListSessionsRequest> for manager::ListRequest {
  type Error = CoreError;

  fn try_from(r: ListSessionsRequest) -> CoreResult<Self> {
    user_project(&r.user_id, r.project_id.as_deref())?;
    let status = opt(r.status, |s| {
      let choices = manager::SessionStatus::ALL.map(|v| (v.as_str(), v));
      pick(&s, &choices, || format!("status must be \"active\" or \"archived\", got {s:?}"))
    })?;
    let parent_id = opt(r.parent_id.as_deref(), |p| validate::session_id("parentId", p))?;
    let limit = opt(r.limit, |l| Ok(positive_int("limit", l)?.min(manager::MAX_LIST)))?;
    let offset = opt(r.offset, |o| non_negative_int("offset", o))?;
    Ok(manager::ListRequest {
      user_id: r.user_id,
      project_id: r.project_id,
      status,
      parent_id,
      limit: limit.unwrap_or(manager::DEFAULT_LIST),
      offset: offset.unwrap_or(0),
    })
  }
}

impl TryFrom<JsCleanupRequest> for manager::CleanupRequest {
  type Error = CoreError;

  fn try_from(r: JsCleanupRequest) -> CoreResult<Self> {
    user_project(&r.user_id, r.project_id.as_deref())?;
    let max_age = millis("maxAgeMs", r.max_age_ms)?;
    Ok(manager::CleanupRequest { user_id: r.user_id, project_id: r.project_id, max_age, keep_active: r.keep_active.unwrap_or(true) })
  }
}

impl TryFrom<JsForkRequest> for manager::ForkRequest {
  type Error = CoreError;

  fn try_from(r: JsForkRequest) -> CoreResult<Self> {
    opt(r.title.as_deref(), validate::title)?;
    Ok(manager::ForkRequest { session_id: r.session_id, user_id: r.user_id, title: r.title, at_message_id: r.at_message_id })
  }
}

impl TryFrom<JsThresholdOptions> for manager::ThresholdOptions {
  type Error = CoreError;

  fn try_from(o: JsThresholdOptions) -> CoreResult<Self> {
    Ok(manager::ThresholdOptions { threshold: opt(o.threshold, |t| percent("threshold", t))? })
  }
}

impl TryFrom<JsMessagesOptions> for manager::MessagesOptions {
  type Error = CoreError;

  fn try_from(o: JsMessagesOptions) -> CoreResult<Self> {
    let limit = opt(o.limit, |l| Ok(positive_int("limit", l)?.min(manager::MAX_MESSAGES as u64) as usize))?;
    let offset = opt(o.offset, |o| Ok(usize::try_from(non_negative_int("offset", o)?).unwrap_or(usize::MAX)))?;
    Ok(manager::MessagesOptions { limit: limit.unwrap_or(manager::MessagesOptions::default().limit), offset })
  }
}

impl TryFrom<JsBudgetRequest> for manager::BudgetRequest {
  type Error = CoreError;

  /// The cap's key (`usd` and `period` are `setBudget`'s, read by [`manager::SetBudgetRequest`]).
  fn try_from(r: JsBudgetRequest) -> CoreResult<Self> {
    // Only a project cap may leave out the user: the project's cap across its users.
    let user_id = match (r.user_id, r.scope.as_str()) {
      (Some(u), _) => {
        validate::id("userId", &u)?;
        u
      }
      (None, "project") => String::new(),
      (None, _) => {
        return Err(CoreError::invalid("userId is required (only a project budget may leave it out: the project's cap across its users)"))
      }
    };
    let scope = match r.scope.as_str() {
      "user" => {
        if r.project_id.is_some() || r.session_id.is_some() {
          return Err(CoreError::invalid("a user budget takes no projectId or sessionId"));
        }
        manager::BudgetScope::User
      }
      "project" => {
        let p = r.project_id.ok_or_else(|| CoreError::invalid("a project budget needs projectId"))?;
        validate::id("projectId", &p)?;
        if r.session_id.is_some() {
          return Err(CoreError::invalid("a project budget takes no sessionId"));
        }
        if user_id.is_empty() {
          manager::BudgetScope::ProjectTotal(p)
        } else {
          manager::BudgetScope::Project(p)
        }
      }
      "session" => {
        let s = r.session_id.ok_or_else(|| CoreError::invalid("a session budget needs sessionId"))?;
        manager::BudgetScope::Session(validate::session_id("sessionId", &s)?)
      }
      other => {
        return Err(CoreError::invalid(format!("scope must be one of {:?}, got {other:?}", store::BUDGET_SCOPES)));
      }
    };
    Ok(manager::BudgetRequest { user_id, scope })
  }
}

impl TryFrom<JsBudgetRequest> for manager::SetBudgetRequest {
  type Error = CoreError;

  fn try_from(r: JsBudgetRequest) -> CoreResult<Self> {
    let usd = usd("usd", r.usd.ok_or_else(|| CoreError::invalid("usd is required"))?)?;
    let period = budget_period("period", r.period.as_deref())?;
    if r.scope == "session" && period.is_some() {
      return Err(CoreError::invalid("a session budget has no period"));
    }
    Ok(manager::SetBudgetRequest { key: r.try_into()?, usd, period })
  }
}

impl TryFrom<JsUsageRequest> for manager::UsageRequest {
  type Error = CoreError;

  fn try_from(r: JsUsageRequest) -> CoreResult<Self> {
    opt(r.user_id.as_deref(), |u| validate::id("userId", u))?;
    opt(r.project_id.as_deref(), |p| validate::id("projectId", p))?;
    let session_id = opt(r.session_id.as_deref(), |s| validate::session_id("sessionId", s))?;
    let choices = manager::UsageGroupBy::ALL.map(|g| (g.as_str(), g));
    let group_by = pick(&r.group_by, &choices, || format!("groupBy must be \"day\", \"model\" or \"session\", got {:?}", r.group_by))?;
    // Whole milliseconds up to 2^53, so they fit an i64.
    let ms = |field: &str, v: Option<f64>| opt(v, |v| Ok(non_negative_int(field, v)? as i64));
    Ok(manager::UsageRequest {
      since: ms("since", r.since)?,
      until: ms("until", r.until)?,
      user_id: r.user_id,
      project_id: r.project_id,
      session_id,
      group_by,
    })
  }
}

/// Longest `message` of a permission answer, in bytes.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

impl TryFrom<JsPermissionResponse> for manager::PermissionResponse {
  type Error = CoreError;

  /// The answer checked and made the one [`Decision`](crate::cli::Decision). Never
  /// `updatedPermissions`: a user's answer cannot change the CLI's own settings.
  fn try_from(r: JsPermissionResponse) -> CoreResult<Self> {
    use crate::cli::Decision;
    validate::id("requestId", &r.request_id)?;
    if let Some(m) = &r.message {
      if m.len() > MAX_MESSAGE_BYTES || m.contains('\0') {
        return Err(CoreError::invalid(format!("message must be at most {MAX_MESSAGE_BYTES} bytes, without NUL bytes")));
      }
    }
    if r.updated_input.as_ref().is_some_and(|u| !u.is_object()) {
      return Err(CoreError::invalid("updatedInput must be an object (the tool's input)"));
    }
    if r.updated_input.as_ref().is_some_and(|u| u.to_string().len() > validate::MAX_PROMPT_BYTES) {
      return Err(CoreError::invalid(format!("updatedInput must be at most {} bytes as JSON", validate::MAX_PROMPT_BYTES)));
    }
    let remember = match r.remember.as_deref() {
      None => false,
      Some("session") if r.behavior == "allow" => true,
      Some("session") => return Err(CoreError::invalid("remember goes with behavior \"allow\" only")),
      Some(other) => return Err(CoreError::invalid(format!("remember must be \"session\", got {other:?}"))),
    };
    let decision = match r.behavior.as_str() {
      "allow" => Decision::Allow { updated_input: r.updated_input, updated_permissions: None, remember },
      "deny" => Decision::Deny {
        message: r.message.filter(|m| !m.is_empty()).unwrap_or_else(|| "the user denied this".into()),
        interrupt: r.interrupt == Some(true),
      },
      other => return Err(CoreError::invalid(format!("behavior must be \"allow\" or \"deny\", got {other:?}"))),
    };
    Ok(manager::PermissionResponse { session_id: r.session_id, user_id: r.user_id, request_id: r.request_id, decision })
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::error::ErrorCode;

  /// The error a conversion fails with: its code and message.
  fn refused<T: std::fmt::Debug>(r: CoreResult<T>) -> (ErrorCode, String) {
    let e = r.expect_err("refused");
    (e.code, e.message)
  }

  /// Each conversion fails with `INVALID_ARGUMENT` and a message that starts as given.
  fn all_invalid<T: std::fmt::Debug, const N: usize>(cases: [(CoreResult<T>, &str); N]) {
    for (r, message) in cases {
      let (code, m) = refused(r);
      assert_eq!(code, ErrorCode::InvalidArgument, "{m}");
      assert!(m.starts_with(message), "{m:?} should start with {message:?}");
    }
  }

  /// `base` changed by `f`.
  fn with<J>(mut base: J, f: fn(&mut J)) -> J {
    f(&mut base);
    base
  }

  fn task() -> JsTaskRequest {
    JsTaskRequest { prompt: "hi".into(), project_id: "p".into(), user_id: "u".into(), ..Default::default() }
  }

  #[test]
  fn a_task_request_becomes_typed() {
    let r = manager::TaskRequest::try_from(JsTaskRequest {
      session_id: Some("123E4567-E89B-42D3-A456-426614174000".into()),
      max_turns: Some(3.0),
      permission_mode: Some("acceptEdits".into()),
      timeout_ms: Some(1500.0),
      queue_timeout_ms: Some(0.0),
      fork_session: Some(true),
      allowed_tools: Some(vec!["Bash(git log:*)".into()]),
      ..task()
    })
    .unwrap();
    assert_eq!(r.session_id.as_deref(), Some("123e4567-e89b-42d3-a456-426614174000"));
    assert_eq!(r.max_turns, Some(3));
    assert_eq!(r.permission_mode, Some(manager::PermissionMode::AcceptEdits));
    assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(r.queue_timeout, Some(Duration::ZERO));
    assert!(r.fork_session && !r.auto_compact && !r.include_partial_messages);
    assert_eq!(r.allowed_tools, ["Bash(git log:*)"]);
    assert!(r.disallowed_tools.is_empty());
    for mode in manager::PermissionMode::ALL {
      let r = manager::TaskRequest::try_from(JsTaskRequest { permission_mode: Some(mode.as_str().into()), ..task() }).unwrap();
      assert_eq!(r.permission_mode, Some(mode));
    }
  }

  #[test]
  fn a_bad_task_field_is_named() {
    use ErrorCode::{ContextOverflow, InvalidArgument};
    let cases: Vec<(JsTaskRequest, ErrorCode, &str)> = vec![
      (JsTaskRequest { user_id: " ".into(), ..task() }, InvalidArgument, "userId must be a non-empty string"),
      (JsTaskRequest { project_id: "a\nb".into(), ..task() }, InvalidArgument, "projectId contains the control character"),
      (JsTaskRequest { prompt: "  ".into(), ..task() }, InvalidArgument, "prompt must be a non-empty string"),
      (JsTaskRequest { prompt: "x".repeat(validate::MAX_PROMPT_BYTES + 1), ..task() }, ContextOverflow, "the prompt is"),
      (JsTaskRequest { model: Some("-x".into()), max_turns: Some(0.0), ..task() }, InvalidArgument, "model must be a model name"),
      (JsTaskRequest { fallback_model: Some("a b".into()), ..task() }, InvalidArgument, "fallbackModel must be a model name"),
      (JsTaskRequest { max_turns: Some(0.0), ..task() }, InvalidArgument, "maxTurns must be at least 1"),
      (JsTaskRequest { max_turns: Some(1.5), ..task() }, InvalidArgument, "maxTurns must be a whole number >= 0, got 1.5"),
      (JsTaskRequest { max_turns: Some(10_001.0), ..task() }, InvalidArgument, "maxTurns must be at most 10000"),
      (JsTaskRequest { max_turns: Some(1e15), ..task() }, InvalidArgument, "maxTurns must be at most 10000"),
      (JsTaskRequest { allowed_tools: Some(vec!["Read Bash".into()]), ..task() }, InvalidArgument, "allowedTools entry"),
      (JsTaskRequest { disallowed_tools: Some(vec!["x".into(); 257]), ..task() }, InvalidArgument, "disallowedTools has more than 256"),
      (
        JsTaskRequest { permission_mode: Some("yolo".into()), ..task() },
        InvalidArgument,
        "permissionMode must be one of default, acceptEdits, plan; got \"yolo\"",
      ),
      (JsTaskRequest { append_system_prompt: Some("a\0".into()), ..task() }, InvalidArgument, "appendSystemPrompt contains a NUL"),
      (JsTaskRequest { max_budget_usd: Some(-1.0), ..task() }, InvalidArgument, "maxBudgetUsd must be a number from"),
      (JsTaskRequest { compact_threshold: Some(0.0), ..task() }, InvalidArgument, "compactThreshold must be a percentage"),
      (JsTaskRequest { timeout_ms: Some(0.0), ..task() }, InvalidArgument, "timeoutMs must be at least 1"),
      (JsTaskRequest { queue_timeout_ms: Some(-1.0), ..task() }, InvalidArgument, "queueTimeoutMs must be a whole number >= 0"),
      (JsTaskRequest { title: Some("a\nb".into()), ..task() }, InvalidArgument, "title contains the control character"),
      (JsTaskRequest { fork_session: Some(true), ..task() }, InvalidArgument, "forkSession needs the sessionId"),
      (JsTaskRequest { session_id: Some("nope".into()), ..task() }, InvalidArgument, "sessionId must be a UUID"),
      (
        JsTaskRequest { session_id: Some("123e4567-e89b-42d3-a456-426614174000".into()), working_directory: Some("/tmp".into()), ..task() },
        InvalidArgument,
        "workingDirectory applies to new sessions only",
      ),
    ];
    for (r, code, message) in cases {
      let (c, m) = refused(manager::TaskRequest::try_from(r));
      assert_eq!(c, code, "{m}");
      assert!(m.starts_with(message), "{m:?} should start with {message:?}");
    }
  }

  #[test]
  fn session_requests_become_typed() {
    let list = |f: fn(&mut ListSessionsRequest)| {
      manager::ListRequest::try_from(with(ListSessionsRequest { user_id: "u".into(), ..Default::default() }, f))
    };
    let r = list(|_| {}).unwrap();
    assert_eq!((r.status, r.limit, r.offset), (None, manager::DEFAULT_LIST, 0));
    let r = list(|r| {
      r.status = Some("archived".into());
      r.limit = Some(5000.0);
      r.offset = Some(7.0);
      r.parent_id = Some("123E4567-E89B-42D3-A456-426614174000".into());
    })
    .unwrap();
    assert_eq!((r.status, r.limit, r.offset), (Some(manager::SessionStatus::Archived), manager::MAX_LIST, 7));
    assert_eq!(r.parent_id.as_deref(), Some("123e4567-e89b-42d3-a456-426614174000"));
    all_invalid([
      (list(|r| r.user_id = "".into()), "userId must be a non-empty string"),
      (list(|r| r.project_id = Some("\u{202E}p".into())), "projectId contains the invisible or bidirectional character"),
      (list(|r| r.status = Some("deleted".into())), "status must be \"active\" or \"archived\", got \"deleted\""),
      (list(|r| r.parent_id = Some("x".into())), "parentId must be a UUID"),
      (list(|r| r.limit = Some(0.0)), "limit must be at least 1"),
      (list(|r| r.offset = Some(-1.0)), "offset must be a whole number >= 0, got -1"),
    ]);

    let cleanup =
      |age: f64| manager::CleanupRequest::try_from(JsCleanupRequest { user_id: "u".into(), max_age_ms: age, ..Default::default() });
    let r = cleanup(60_000.0).unwrap();
    assert_eq!((r.max_age, r.keep_active), (Duration::from_secs(60), true));
    assert_eq!(refused(cleanup(0.5)), (ErrorCode::InvalidArgument, "maxAgeMs must be a whole number >= 0, got 0.5".into()));

    let fork = |t: &str| {
      manager::ForkRequest::try_from(JsForkRequest {
        session_id: "s".into(),
        user_id: "u".into(),
        title: Some(t.into()),
        at_message_id: None,
      })
    };
    assert_eq!(fork("Résumé").unwrap().title.as_deref(), Some("Résumé"));
    assert!(refused(fork("a\tb")).1.starts_with("title contains the control character U+0009"));
  }

  #[test]
  fn option_bags_become_typed() {
    let threshold = |t: Option<f64>| manager::ThresholdOptions::try_from(JsThresholdOptions { threshold: t });
    assert_eq!(threshold(None).unwrap().threshold, None);
    assert_eq!(threshold(Some(100.0)).unwrap().threshold, Some(100.0));
    for bad in [0.0, 100.5, -1.0] {
      assert_eq!(refused(threshold(Some(bad))).0, ErrorCode::InvalidArgument);
      assert!(refused(threshold(Some(bad))).1.starts_with("threshold must be a percentage"));
    }
    let page = |limit: Option<f64>, offset: Option<f64>| manager::MessagesOptions::try_from(JsMessagesOptions { limit, offset });
    let p = page(None, None).unwrap();
    assert_eq!((p.limit, p.offset), (100, None));
    let p = page(Some(1e6), Some(3.0)).unwrap();
    assert_eq!((p.limit, p.offset), (manager::MAX_MESSAGES, Some(3)));
    assert_eq!(refused(page(Some(0.0), None)).1, "limit must be at least 1");
    assert_eq!(refused(page(None, Some(1.5))).1, "offset must be a whole number >= 0, got 1.5");
  }

  #[test]
  fn budget_requests_become_typed() {
    let sid = "123E4567-E89B-42D3-A456-426614174000";
    let req = |scope: &str| JsBudgetRequest { scope: scope.into(), user_id: Some("u".into()), ..Default::default() };
    let key = |r: JsBudgetRequest| manager::BudgetRequest::try_from(r);
    assert_eq!(key(req("user")).unwrap().scope, manager::BudgetScope::User);
    assert_eq!(
      key(JsBudgetRequest { project_id: Some("p".into()), ..req("project") }).unwrap().scope,
      manager::BudgetScope::Project("p".into())
    );
    // A project cap without a user is the project's across its users; no other cap leaves it out.
    let total = key(JsBudgetRequest { project_id: Some("p".into()), user_id: None, ..req("project") }).unwrap();
    assert_eq!((total.scope, total.user_id.as_str()), (manager::BudgetScope::ProjectTotal("p".into()), ""));
    assert_eq!(
      key(JsBudgetRequest { session_id: Some(sid.into()), ..req("session") }).unwrap().scope,
      manager::BudgetScope::Session(sid.to_lowercase())
    );
    // getBudget and deleteBudget ignore usd and period, as before.
    assert!(key(JsBudgetRequest { usd: Some(-1.0), period: Some("week".into()), ..req("user") }).is_ok());
    all_invalid([
      (key(req("team")), "scope must be one of [\"user\", \"project\", \"session\"], got \"team\""),
      (key(JsBudgetRequest { user_id: Some("".into()), ..req("user") }), "userId must be a non-empty string"),
      (key(JsBudgetRequest { user_id: None, ..req("user") }), "userId is required"),
      (key(JsBudgetRequest { user_id: None, session_id: Some(sid.into()), ..req("session") }), "userId is required"),
      (key(JsBudgetRequest { project_id: Some("p".into()), ..req("user") }), "a user budget takes no projectId or sessionId"),
      (key(req("project")), "a project budget needs projectId"),
      (
        key(JsBudgetRequest { project_id: Some("p".into()), session_id: Some(sid.into()), ..req("project") }),
        "a project budget takes no sessionId",
      ),
      (key(req("session")), "a session budget needs sessionId"),
      (key(JsBudgetRequest { session_id: Some("s".into()), ..req("session") }), "sessionId must be a UUID"),
    ]);

    let set = |r: JsBudgetRequest| manager::SetBudgetRequest::try_from(r);
    let s = set(JsBudgetRequest { usd: Some(2.5), period: Some("month".into()), ..req("user") }).unwrap();
    assert_eq!((s.usd, s.period, s.key.scope), (2.5, Some(manager::BudgetPeriod::Month), manager::BudgetScope::User));
    all_invalid([
      (set(req("user")), "usd is required"),
      (set(JsBudgetRequest { usd: Some(f64::NAN), ..req("user") }), "usd must be a finite number of US dollars, 0 or more"),
      (set(JsBudgetRequest { usd: Some(1.0), period: Some("week".into()), ..req("user") }), "period must be \"day\" or \"month\""),
      (set(JsBudgetRequest { usd: Some(1.0), period: Some("day".into()), ..req("session") }), "a session budget has no period"),
      (set(JsBudgetRequest { usd: Some(1.0), ..req("team") }), "scope must be one of"),
    ]);
  }

  #[test]
  fn usage_requests_become_typed() {
    let usage = |f: fn(&mut JsUsageRequest)| {
      manager::UsageRequest::try_from(with(JsUsageRequest { group_by: "model".into(), ..Default::default() }, f))
    };
    let r = usage(|r| r.since = Some(1_700_000_000_000.0)).unwrap();
    assert_eq!((r.group_by, r.since, r.until), (manager::UsageGroupBy::Model, Some(1_700_000_000_000), None));
    for g in manager::UsageGroupBy::ALL {
      let r = manager::UsageRequest::try_from(JsUsageRequest { group_by: g.as_str().into(), ..Default::default() }).unwrap();
      assert_eq!(r.group_by, g);
    }
    all_invalid([
      (usage(|r| r.group_by = "week".into()), "groupBy must be \"day\", \"model\" or \"session\", got \"week\""),
      (usage(|r| r.user_id = Some("\n".into())), "userId must be a non-empty string"),
      (usage(|r| r.project_id = Some("a\u{0}".into())), "projectId contains the control character"),
      (usage(|r| r.session_id = Some("x".into())), "sessionId must be a UUID"),
      (usage(|r| r.since = Some(-5.0)), "since must be a whole number >= 0"),
      (usage(|r| r.until = Some(0.25)), "until must be a whole number >= 0"),
    ]);
  }

  fn response(behavior: &str) -> JsPermissionResponse {
    JsPermissionResponse {
      session_id: "s".into(),
      user_id: "u".into(),
      request_id: "r1".into(),
      behavior: behavior.into(),
      ..Default::default()
    }
  }

  #[test]
  fn a_response_becomes_one_decision_or_is_refused() {
    use crate::cli::Decision;
    use serde_json::json;
    let decision = |r: JsPermissionResponse| manager::PermissionResponse::try_from(r).map(|r| r.decision);
    assert_eq!(decision(response("allow")).unwrap(), Decision::allow());
    assert_eq!(decision(response("deny")).unwrap(), Decision::deny("the user denied this"));
    let deny = JsPermissionResponse { message: Some("no".into()), interrupt: Some(true), ..response("deny") };
    assert_eq!(decision(deny).unwrap(), Decision::Deny { message: "no".into(), interrupt: true });
    let remember = JsPermissionResponse { remember: Some("session".into()), ..response("allow") };
    assert!(decision(remember).unwrap().remember());
    let edited = JsPermissionResponse { updated_input: Some(json!({ "content": "x" })), ..response("allow") };
    assert_eq!(
      decision(edited).unwrap(),
      Decision::Allow { updated_input: Some(json!({ "content": "x" })), updated_permissions: None, remember: false }
    );
    all_invalid(
      [
        (response("yes"), "behavior must be \"allow\" or \"deny\", got \"yes\""),
        (JsPermissionResponse { remember: Some("session".into()), ..response("deny") }, "remember goes with behavior \"allow\" only"),
        (JsPermissionResponse { remember: Some("forever".into()), ..response("allow") }, "remember must be \"session\", got \"forever\""),
        (JsPermissionResponse { updated_input: Some(json!([])), ..response("allow") }, "updatedInput must be an object"),
        (
          JsPermissionResponse { updated_input: Some(json!({ "content": "x".repeat(validate::MAX_PROMPT_BYTES) })), ..response("allow") },
          "updatedInput must be at most",
        ),
        (JsPermissionResponse { message: Some("a\0b".into()), ..response("deny") }, "message must be at most 65536 bytes"),
        (JsPermissionResponse { request_id: String::new(), ..response("allow") }, "requestId must be a non-empty string"),
      ]
      .map(|(r, message)| (manager::PermissionResponse::try_from(r), message)),
    );
  }

  #[test]
  fn budgets() {
    for good in [0.0001, 0.25, 1.0, 10_000.0] {
      assert_eq!(budget_usd("maxBudgetUsd", good).unwrap(), good);
    }
    for bad in [0.0, -1.0, 0.00009, 1e-300, 5e-324, 10_000.01, 1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
      assert!(budget_usd("maxBudgetUsd", bad).is_err(), "{bad}");
    }
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

  #[test]
  fn manager_options_become_typed() {
    let options = |f: fn(&mut SessionManagerOptions)| manager::Options::try_from(with(SessionManagerOptions::default(), f));
    let o = options(|_| {}).unwrap();
    assert!(o.isolate_tenants.is_none() && o.sandbox.is_none() && o.lease_ttl.is_none() && o.stall_timeout.is_none());
    assert_eq!(o.sandbox_limits, crate::cli::SandboxLimits::default());
    let o = options(|o| {
      o.isolate_tenants = Some("project".into());
      o.sandbox = Some("none".into());
      o.stall_timeout_ms = Some(0.0);
      o.warm_idle_ms = Some(250.0);
      o.lease_ttl_ms = Some(300.0);
      o.cli_niceness = Some(19.0);
      o.max_concurrent_tasks = Some(4.0);
      o.sandbox_limits = Some(JsSandboxLimits { tmp_mb: Some(2.0), ..Default::default() });
      o.sandbox_paths = Some(SandboxPaths { read_only: Some(vec!["/usr/share".into()]), read_write: None });
    })
    .unwrap();
    assert_eq!((o.isolate_tenants, o.sandbox), (Some(manager::Isolation::Project), Some(manager::SandboxMode::None)));
    assert_eq!(
      (o.stall_timeout, o.warm_idle, o.lease_ttl),
      (Some(Duration::ZERO), Some(Duration::from_millis(250)), Some(Duration::from_millis(300)))
    );
    assert_eq!((o.cli_niceness, o.max_concurrent_tasks, o.sandbox_limits.tmp_bytes), (Some(19), Some(4), 2 << 20));
    assert_eq!(o.sandbox_read_only, ["/usr/share"]);
    let o = options(|o| o.redis_url = Some("rediss://:pw@cache:6380/1".into())).unwrap();
    assert_eq!(o.redis_url.as_deref(), Some("rediss://:pw@cache:6380/1"));
    all_invalid([
      (options(|o| o.isolate_tenants = Some("team".into())), "isolateTenants must be \"none\", \"user\" or \"project\", got \"team\""),
      (options(|o| o.context_window = Some(0.0)), "contextWindow must be at least 1"),
      (options(|o| o.compact_threshold = Some(120.0)), "compactThreshold must be a percentage"),
      (options(|o| o.max_concurrent_tasks = Some(2.5)), "maxConcurrentTasks must be a whole number >= 0, got 2.5"),
      (options(|o| o.queue_timeout_ms = Some(-1.0)), "queueTimeoutMs must be a whole number >= 0"),
      (options(|o| o.stall_timeout_ms = Some(-3.0)), "stallTimeoutMs must be a whole number >= 0"),
      (options(|o| o.permission_timeout_ms = Some(0.0)), "permissionTimeoutMs must be at least 1"),
      (options(|o| o.cli_niceness = Some(20.0)), "cliNiceness must be an integer from 0 to 19, got 20"),
      (options(|o| o.sandbox = Some("docker".into())), "sandbox must be \"auto\", \"bubblewrap\" or \"none\", got \"docker\""),
      (
        options(|o| o.sandbox_limits = Some(JsSandboxLimits { memory_mb: Some(10.0), ..Default::default() })),
        "sandboxLimits.memoryMb must be a whole number of MiB from 1024 to 1048576, got 10",
      ),
      (
        options(|o| o.sandbox_limits = Some(JsSandboxLimits { processes: Some(8.0), ..Default::default() })),
        "sandboxLimits.processes must be a whole number from 32 to 1000000, got 8",
      ),
      (options(|o| o.allow_slash_commands = Some(vec!["context".into()])), "allowSlashCommands entries are commands such as"),
      (options(|o| o.setting_sources = Some(vec!["global".into()])), "settingSources entries are \"user\", \"project\" or \"local\""),
      (options(|o| o.lease_ttl_ms = Some(299.0)), "leaseTtlMs must be from 300 to 86400000, got 299"),
      (options(|o| o.node_id = Some("a\nb".into())), "nodeId must be 1 to 200 characters"),
      (options(|o| o.redis_url = Some("http://cache:6379".into())), "redisUrl must be a redis://, rediss:// or redis+unix:// URL"),
      (options(|o| o.redis_url = Some("redis://:pw@cache:port".into())), "redisUrl is not a Redis URL the client accepts"),
      (
        options(|o| o.budgets = Some(JsBudgetDefaults { per_user: Some(DefaultCap { usd: -1.0, period: None }), per_session: None })),
        "budgets.perUser.usd must be a finite number of US dollars, 0 or more, got -1",
      ),
      (
        options(|o| {
          o.budgets = Some(JsBudgetDefaults { per_user: Some(DefaultCap { usd: 1.0, period: Some("week".into()) }), per_session: None })
        }),
        "budgets.perUser.period must be \"day\" or \"month\"",
      ),
      (
        options(|o| {
          o.budgets = Some(JsBudgetDefaults { per_session: Some(DefaultCap { usd: f64::INFINITY, period: None }), per_user: None })
        }),
        "budgets.perSession.usd must be a finite number",
      ),
      (
        options(|o| o.model_prices = Some(vec![JsModelPrice { model: " ".into(), ..Default::default() }])),
        "modelPrices: each entry needs a model",
      ),
      (
        options(|o| o.model_prices = Some(vec![JsModelPrice { model: "opus".into(), input: 1.0, output: -2.0, ..Default::default() }])),
        "modelPrices[\"opus\"].output must be a finite number of US dollars",
      ),
    ]);
  }

  #[test]
  fn a_message_is_text() {
    let send = |p: &str| {
      manager::SendMessageRequest::try_from(JsSendMessageRequest { session_id: "s".into(), user_id: "u".into(), prompt: p.into() })
    };
    assert_eq!(send("and also the tests").unwrap().prompt, "and also the tests");
    all_invalid([
      (send(" "), "prompt must be a non-empty string without NUL bytes"),
      (send("a\0"), "prompt must be a non-empty string without NUL bytes"),
      (send(&"x".repeat(validate::MAX_PROMPT_BYTES + 1)), "prompt must be a non-empty string without NUL bytes"),
      (send("  /compact now"), "a message sent to a running task is text"),
    ]);
  }

  #[test]
  fn compaction_instructions_are_a_flag_value() {
    let r = |i: &str| JsCompactRequest { session_id: "s".into(), user_id: "u".into(), summary_instructions: Some(i.into()) };
    assert_eq!(manager::CompactRequest::try_from(r("keep the plan")).unwrap().summary_instructions.as_deref(), Some("keep the plan"));
    let (code, message) = refused(manager::CompactRequest::try_from(r("")));
    assert_eq!((code, message.as_str()), (ErrorCode::InvalidArgument, "summaryInstructions must not be empty"));
  }
}
