//! The PostgreSQL schema, as forward migrations.

/// Forward migrations; entry `i` takes the schema from version `i` to `i + 1`. `{S}` is the
/// quoted schema name.
pub(super) const MIGRATIONS: &[&str] = &[
  // 0 -> 1: sessions, tasks, compactions, leases with fencing tokens, model windows, retired ids.
  r#"
  CREATE TABLE {S}.sessions (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'archived')),
    parent_id TEXT,
    title TEXT,
    model TEXT NOT NULL,
    working_directory TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    last_active_at BIGINT NOT NULL,
    task_count BIGINT NOT NULL DEFAULT 0,
    total_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_creation_tokens BIGINT NOT NULL DEFAULT 0,
    context_tokens BIGINT,
    context_window BIGINT,
    context_source TEXT,
    context_measured_at BIGINT,
    materialized BOOLEAN NOT NULL DEFAULT false,
    cli_cost_watermark DOUBLE PRECISION NOT NULL DEFAULT 0,
    config_dir TEXT
  );
  CREATE INDEX sessions_by_user ON {S}.sessions (user_id, last_active_at DESC);
  CREATE INDEX sessions_by_project ON {S}.sessions (user_id, project_id, status, last_active_at DESC);
  CREATE INDEX sessions_by_parent ON {S}.sessions (parent_id);

  CREATE TABLE {S}.tasks (
    seq BIGSERIAL NOT NULL,
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES {S}.sessions (id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN
      ('running', 'succeeded', 'failed', 'aborted', 'timed_out', 'interrupted')),
    kind TEXT NOT NULL DEFAULT 'task',
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    model TEXT,
    turns BIGINT,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_creation_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    cli_reported_cost_usd DOUBLE PRECISION,
    duration_api_ms BIGINT,
    error_code TEXT,
    error_message TEXT,
    cli_version TEXT,
    owner_id TEXT NOT NULL,
    owner_pid BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    fence BIGINT
  );
  CREATE INDEX tasks_by_session ON {S}.tasks (session_id, started_at, seq);
  CREATE UNIQUE INDEX tasks_one_running ON {S}.tasks (session_id) WHERE status = 'running';

  CREATE TABLE {S}.compactions (
    id BIGSERIAL PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES {S}.sessions (id) ON DELETE CASCADE,
    task_id TEXT,
    trigger TEXT NOT NULL CHECK (trigger IN ('manual', 'auto')),
    pre_tokens BIGINT,
    post_tokens BIGINT,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT
  );
  CREATE INDEX compactions_by_session ON {S}.compactions (session_id, started_at);

  CREATE TABLE {S}.leases (
    session_id TEXT PRIMARY KEY REFERENCES {S}.sessions (id) ON DELETE CASCADE,
    fence BIGINT NOT NULL,
    task_id TEXT,
    owner_id TEXT NOT NULL,
    owner_pid BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
  );

  CREATE TABLE {S}.model_windows (
    model TEXT PRIMARY KEY,
    context_window BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
  );

  CREATE TABLE {S}.retired_session_ids (
    id TEXT PRIMARY KEY,
    retired_at BIGINT NOT NULL
  );
  "#,
  // 1 -> 2: the conversation follows the session (transcript entries mirrored from the CLI,
  // fenced by the lease), the configured node id apart from the machine that judges pids.
  r#"
  CREATE TABLE {S}.transcript_entries (
    session_id TEXT NOT NULL REFERENCES {S}.sessions (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    subpath TEXT NOT NULL DEFAULT '',
    uuid TEXT,
    fence BIGINT NOT NULL,
    task_id TEXT,
    line TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
  );
  CREATE UNIQUE INDEX transcript_entries_uuid ON {S}.transcript_entries (session_id, subpath, uuid) WHERE uuid IS NOT NULL;
  ALTER TABLE {S}.sessions ADD COLUMN transcript_seq BIGINT NOT NULL DEFAULT 0;
  ALTER TABLE {S}.tasks ADD COLUMN host_id TEXT NOT NULL DEFAULT '';
  UPDATE {S}.tasks SET host_id = node_id;
  ALTER TABLE {S}.leases ADD COLUMN host_id TEXT NOT NULL DEFAULT '';
  UPDATE {S}.leases SET host_id = node_id;
  -- maxConcurrentTasksTotal counts the held leases at every start: those alone, not one row
  -- per session ever run.
  CREATE INDEX leases_held ON {S}.leases (expires_at) WHERE task_id IS NOT NULL;
  "#,
  // 2 -> 3: what is forwarded to the node running a task (`postgres/inbox.rs`): the task's `watch`
  // while it reads its inbox, its pending permission requests with their answer once given, and
  // steering messages with their outcome.
  r#"
  CREATE TABLE {S}.inbox (
    id BIGSERIAL PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES {S}.sessions (id) ON DELETE CASCADE,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('watch', 'permission', 'message')),
    request_id TEXT,
    body TEXT,
    answer TEXT,
    created_at BIGINT NOT NULL
  );
  CREATE UNIQUE INDEX inbox_requests ON {S}.inbox (session_id, request_id) WHERE kind = 'permission';
  CREATE INDEX inbox_by_task ON {S}.inbox (task_id);
  CREATE INDEX inbox_by_session ON {S}.inbox (session_id, kind);
  "#,
  // 3 -> 4: which manager keeps an idle warm CLI of a session (`postgres/warm_holds.rs`).
  r#"
  CREATE TABLE {S}.warm_holds (
    session_id TEXT NOT NULL REFERENCES {S}.sessions (id) ON DELETE CASCADE,
    owner_id TEXT NOT NULL,
    owner_pid BIGINT NOT NULL,
    host_id TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    wanted BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (session_id, owner_id)
  );
  CREATE INDEX warm_holds_by_owner ON {S}.warm_holds (owner_id);
  "#,
  // 4 -> 5: the key proxy's ledger of model calls and the spend caps (`postgres/budgets.rs`); no
  // foreign keys (a deleted session's spend still counts for its user and project).
  r#"
  CREATE TABLE {S}.model_calls (
    id BIGSERIAL PRIMARY KEY,
    task_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    model TEXT NOT NULL,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    usd DOUBLE PRECISION NOT NULL,
    reserved BOOLEAN NOT NULL DEFAULT true,
    at BIGINT NOT NULL
  );
  CREATE INDEX model_calls_by_user ON {S}.model_calls (user_id, at);
  CREATE INDEX model_calls_by_project ON {S}.model_calls (user_id, project_id, at);
  CREATE INDEX model_calls_by_session ON {S}.model_calls (session_id, at);
  CREATE INDEX model_calls_by_task ON {S}.model_calls (task_id);

  CREATE TABLE {S}.budgets (
    scope TEXT NOT NULL CHECK (scope IN ('user', 'project', 'session')),
    user_id TEXT NOT NULL,
    project_id TEXT NOT NULL DEFAULT '',
    session_id TEXT NOT NULL DEFAULT '',
    usd DOUBLE PRECISION NOT NULL,
    period TEXT CHECK (period IN ('day', 'month')),
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope, user_id, project_id, session_id)
  );
  "#,
  // 5 -> 6: a project's cap across its users (a project budget with an empty user_id) sums the
  // ledger by project alone; the indexes a cap's spend is summed by include `usd` (index-only
  // scans where the rows are visible); a session whose last task a spend cap stopped is paused
  // (the cap's scope) until a task on it ends otherwise.
  r#"
  DROP INDEX {S}.model_calls_by_user;
  CREATE INDEX model_calls_by_user ON {S}.model_calls (user_id, at) INCLUDE (usd);
  DROP INDEX {S}.model_calls_by_project;
  CREATE INDEX model_calls_by_project ON {S}.model_calls (user_id, project_id, at) INCLUDE (usd);
  DROP INDEX {S}.model_calls_by_session;
  CREATE INDEX model_calls_by_session ON {S}.model_calls (session_id, at) INCLUDE (user_id, usd);
  CREATE INDEX model_calls_by_project_total ON {S}.model_calls (project_id, at) INCLUDE (usd);
  ALTER TABLE {S}.sessions ADD COLUMN paused TEXT;
  "#,
  // 6 -> 7: admitting a model call is one statement (`postgres/budgets.rs`): under the user's and
  // the project's advisory locks, every cap that applies (the user's, the user's project's, the
  // project's across users, the session's; stored, else the defaults passed in) is checked
  // against the reserve, in that order, and the call recorded at its reserve when all fit. The
  // same rules as `store/budgets.rs::applicable`; the conformance suite holds both to them. The
  // call's key (a UUID the proxy makes) makes it idempotent: run again after a lost connection,
  // it answers the row the first run made instead of charging the call twice.
  r#"
  ALTER TABLE {S}.model_calls ADD COLUMN call_key TEXT UNIQUE;
  CREATE FUNCTION {S}.admit_call(p_key text, p_task text, p_session text, p_user text, p_project text, p_model text,
      p_reserve float8, p_user_lock text, p_project_lock text, p_default_user float8,
      p_default_user_period text, p_default_session float8, p_shift bigint)
    RETURNS TABLE (call_id bigint, over_scope text, over_user text, over_cap float8, over_spent float8, over_period text)
    LANGUAGE plpgsql AS $fn$
  DECLARE
    k record;
    cap float8;
    cap_period text;
    since bigint;
    spent float8;
    at_now timestamptz := now() + p_shift * interval '1 millisecond';
  BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_user_lock, 0));
    PERFORM pg_advisory_xact_lock(hashtextextended(p_project_lock, 0));
    RETURN QUERY SELECT m.id, NULL::text, NULL::text, NULL::float8, NULL::float8, NULL::text
      FROM {S}.model_calls m WHERE m.call_key = p_key;
    IF FOUND THEN
      RETURN;
    END IF;
    FOR k IN SELECT * FROM (VALUES (1, 'user', p_user, '', ''), (2, 'project', p_user, p_project, ''),
        (3, 'project', '', p_project, ''), (4, 'session', p_user, '', p_session)) AS v(ord, scope, u, p, s) ORDER BY ord LOOP
      SELECT b.usd, b.period INTO cap, cap_period FROM {S}.budgets b
        WHERE b.scope = k.scope AND b.user_id = k.u AND b.project_id = k.p AND b.session_id = k.s;
      IF NOT FOUND THEN
        cap := CASE k.scope WHEN 'user' THEN p_default_user WHEN 'session' THEN p_default_session END;
        cap_period := CASE k.scope WHEN 'user' THEN p_default_user_period END;
      END IF;
      CONTINUE WHEN cap IS NULL;
      since := CASE cap_period
        WHEN 'day' THEN (extract(epoch from date_trunc('day', at_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') * 1000)::bigint
        WHEN 'month' THEN (extract(epoch from date_trunc('month', at_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') * 1000)::bigint
        ELSE 0 END;
      -- One query per scope, so that each is planned on its own index.
      IF k.ord = 1 THEN
        SELECT COALESCE(SUM(m.usd), 0) INTO spent FROM {S}.model_calls m WHERE m.user_id = k.u AND m.at >= since;
      ELSIF k.ord = 2 THEN
        SELECT COALESCE(SUM(m.usd), 0) INTO spent FROM {S}.model_calls m WHERE m.user_id = k.u AND m.project_id = k.p AND m.at >= since;
      ELSIF k.ord = 3 THEN
        SELECT COALESCE(SUM(m.usd), 0) INTO spent FROM {S}.model_calls m WHERE m.project_id = k.p AND m.at >= since;
      ELSE
        SELECT COALESCE(SUM(m.usd), 0) INTO spent FROM {S}.model_calls m WHERE m.session_id = k.s AND m.user_id = k.u AND m.at >= since;
      END IF;
      IF spent + p_reserve > cap THEN
        RETURN QUERY SELECT NULL::bigint, k.scope::text, k.u::text, cap, spent, cap_period;
        RETURN;
      END IF;
    END LOOP;
    RETURN QUERY INSERT INTO {S}.model_calls (call_key, task_id, session_id, user_id, project_id, model, usd, reserved, at)
      VALUES (p_key, p_task, p_session, p_user, p_project, p_model, p_reserve, true, (floor(extract(epoch from at_now) * 1000))::bigint)
      RETURNING id, NULL::text, NULL::text, NULL::float8, NULL::float8, NULL::text;
  END
  $fn$;
  "#,
  // 7 -> 8: the event log of a session's tasks (`postgres/events.rs`): its last number on the
  // session row (never reused once swept), one row per event; a stop requested for a running task.
  r#"
  ALTER TABLE {S}.sessions ADD COLUMN event_seq BIGINT NOT NULL DEFAULT 0;
  ALTER TABLE {S}.tasks ADD COLUMN abort_requested_at BIGINT;
  CREATE TABLE {S}.task_events (
    session_id TEXT NOT NULL REFERENCES {S}.sessions (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    task_id TEXT NOT NULL,
    at BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
  );
  CREATE INDEX task_events_by_task ON {S}.task_events (task_id);
  "#,
  // 8 -> 9: where a session branches (`postgres/branches.rs`): a fork's message, a pending rewind.
  r#"
  CREATE TABLE {S}.branch_points (
    session_id TEXT PRIMARY KEY REFERENCES {S}.sessions (id) ON DELETE CASCADE,
    fork_at TEXT,
    resume_at TEXT,
    resume_drops TEXT
  );
  "#,
  // 9 -> 10: the CLI's file-checkpoint backups of a session (`postgres/file_backups.rs`), stored
  // with the transcript so that a rewind with files works on another node.
  r#"
  CREATE TABLE {S}.file_backups (
    session_id TEXT NOT NULL REFERENCES {S}.sessions (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    content BYTEA NOT NULL,
    fence BIGINT NOT NULL,
    task_id TEXT NOT NULL,
    PRIMARY KEY (session_id, name)
  );
  "#,
];

/// The schema version this build writes.
pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
