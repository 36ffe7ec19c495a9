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
  // 9 -> 10: a task's start and its end are one statement each (`postgres/leases.rs`), so that
  // each is one round trip on the task's path instead of a transaction of six to eight: the same
  // steps as before, in the same order, inside a function. `begin_task` answers `started`, `held`
  // (with whether the holder's CLI is exiting after its end), `full` or `missing`; run again for
  // a task that already started (its answer lost with the connection), it answers `started` and
  // writes nothing. `finish_task` answers false, writing nothing, when the task no longer holds the
  // lease; run again after it committed (the answer lost), true and nothing more.
  r#"
  CREATE FUNCTION {S}.begin_task(p_session TEXT, p_task TEXT, p_kind TEXT, p_model TEXT, p_owner TEXT,
    p_pid BIGINT, p_node TEXT, p_ttl_ms DOUBLE PRECISION, p_host TEXT, p_max BIGINT, p_running_key TEXT,
    p_interrupted TEXT)
  RETURNS TABLE (outcome TEXT, kept BOOLEAN) LANGUAGE plpgsql AS $fn$
  DECLARE
    f BIGINT;
    n BIGINT;
  BEGIN
    -- The session row's lock orders every start (and delete) of this session, on every node.
    PERFORM 1 FROM {S}.sessions WHERE id = p_session FOR UPDATE;
    IF NOT FOUND THEN
      RETURN QUERY SELECT 'missing'::TEXT, false;
      RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id AND t.fence = l.fence
               WHERE l.session_id = p_session AND l.task_id = p_task AND t.status = 'running') THEN
      RETURN QUERY SELECT 'started'::TEXT, false;
      RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM {S}.leases WHERE session_id = p_session AND task_id IS NOT NULL AND expires_at > now()) THEN
      RETURN QUERY SELECT 'held'::TEXT, EXISTS (
        SELECT 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id
        WHERE l.session_id = p_session AND l.expires_at > now() AND t.status != 'running');
      RETURN;
    END IF;
    IF p_max IS NOT NULL THEN
      -- Held until commit: the next starter counts after this one's lease is in.
      PERFORM pg_advisory_xact_lock(hashtext(p_running_key));
      SELECT COUNT(*) INTO n FROM {S}.leases WHERE task_id IS NOT NULL AND expires_at > clock_timestamp();
      IF n >= p_max THEN
        RETURN QUERY SELECT 'full'::TEXT, false;
        RETURN;
      END IF;
    END IF;
    -- No live lease: a `running` row left is a dead or stuck holder's, interrupted.
    UPDATE {S}.tasks SET status = 'interrupted', ended_at = {NOW}, error_code = 'INTERRUPTED', error_message = p_interrupted
      WHERE session_id = p_session AND status = 'running';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
      UPDATE {S}.sessions SET task_count = task_count + n WHERE id = p_session;
    END IF;
    INSERT INTO {S}.leases (session_id, fence, task_id, owner_id, owner_pid, node_id, expires_at, host_id)
      VALUES (p_session, 1, p_task, p_owner, p_pid, p_node, now() + p_ttl_ms * interval '1 millisecond', p_host)
      ON CONFLICT (session_id) DO UPDATE SET fence = {S}.leases.fence + 1, task_id = EXCLUDED.task_id,
        owner_id = EXCLUDED.owner_id, owner_pid = EXCLUDED.owner_pid, node_id = EXCLUDED.node_id,
        expires_at = EXCLUDED.expires_at, host_id = EXCLUDED.host_id
      RETURNING fence INTO f;
    INSERT INTO {S}.tasks (id, session_id, status, started_at, model, owner_id, owner_pid, node_id, kind, fence, host_id)
      VALUES (p_task, p_session, 'running', {NOW}, p_model, p_owner, p_pid, p_node, p_kind, f, p_host);
    RETURN QUERY SELECT 'started'::TEXT, false;
  END
  $fn$;

  CREATE FUNCTION {S}.finish_task(p_session TEXT, p_task TEXT, p_status TEXT, p_model TEXT, p_turns BIGINT,
    p_input BIGINT, p_output BIGINT, p_cache_read BIGINT, p_cache_creation BIGINT, p_cost DOUBLE PRECISION,
    p_cli_cost DOUBLE PRECISION, p_duration_api BIGINT, p_error_code TEXT, p_error_message TEXT, p_cli_version TEXT,
    p_materialized BOOLEAN, p_watermark DOUBLE PRECISION, p_paused TEXT,
    p_ctx_tokens BIGINT, p_ctx_window BIGINT, p_ctx_source TEXT, p_ctx_measured BIGINT,
    p_window_model TEXT, p_window BIGINT,
    p_c_session TEXT[], p_c_task TEXT[], p_c_trigger TEXT[], p_c_pre BIGINT[], p_c_post BIGINT[], p_c_started BIGINT[],
    p_c_duration BIGINT[], p_release BOOLEAN, p_record_only BOOLEAN)
  RETURNS BOOLEAN LANGUAGE plpgsql AS $fn$
  BEGIN
    -- Fenced: the lease must still carry this task and its fence.
    PERFORM 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id AND t.fence = l.fence
      WHERE l.session_id = p_session AND l.task_id = p_task AND t.status = 'running' FOR UPDATE OF l;
    IF NOT FOUND THEN
      -- Already ended by this very call (run again after its answer was lost), no task since.
      RETURN EXISTS (SELECT 1 FROM {S}.tasks t JOIN {S}.leases l ON l.session_id = t.session_id AND l.fence = t.fence
        WHERE t.id = p_task AND t.session_id = p_session AND t.status = p_status AND t.ended_at IS NOT NULL
          AND t.error_code IS NOT DISTINCT FROM p_error_code AND (l.task_id IS NULL OR l.task_id = p_task));
    END IF;
    UPDATE {S}.tasks SET status = p_status, ended_at = {NOW}, model = COALESCE(p_model, model), turns = p_turns,
      input_tokens = p_input, output_tokens = p_output, cache_read_tokens = p_cache_read,
      cache_creation_tokens = p_cache_creation, cost_usd = p_cost, cli_reported_cost_usd = p_cli_cost,
      duration_api_ms = p_duration_api, error_code = p_error_code, error_message = p_error_message,
      cli_version = p_cli_version
      WHERE id = p_task;
    -- A run that called no model (a rewind with files) leaves the session's totals as they are.
    IF NOT p_record_only THEN
      UPDATE {S}.sessions SET task_count = task_count + 1, total_cost_usd = total_cost_usd + p_cost,
        input_tokens = input_tokens + p_input, output_tokens = output_tokens + p_output,
        cache_read_tokens = cache_read_tokens + p_cache_read, cache_creation_tokens = cache_creation_tokens + p_cache_creation,
        last_active_at = {NOW}, updated_at = {NOW}, materialized = materialized OR p_materialized,
        cli_cost_watermark = COALESCE(p_watermark, cli_cost_watermark), paused = p_paused
        WHERE id = p_session;
    END IF;
    IF p_ctx_tokens IS NOT NULL THEN
      UPDATE {S}.sessions SET context_tokens = p_ctx_tokens, context_window = p_ctx_window, context_source = p_ctx_source,
        context_measured_at = p_ctx_measured WHERE id = p_session;
    END IF;
    IF p_window_model IS NOT NULL THEN
      INSERT INTO {S}.model_windows (model, context_window, updated_at) VALUES (p_window_model, p_window, {NOW})
        ON CONFLICT (model) DO UPDATE SET context_window = EXCLUDED.context_window, updated_at = EXCLUDED.updated_at;
    END IF;
    INSERT INTO {S}.compactions (session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms)
      SELECT * FROM unnest(p_c_session, p_c_task, p_c_trigger, p_c_pre, p_c_post, p_c_started, p_c_duration);
    IF p_release THEN
      -- The row stays (its fence must keep growing); only the holder goes.
      UPDATE {S}.leases SET task_id = NULL, expires_at = now() WHERE session_id = p_session AND task_id = p_task;
    END IF;
    RETURN true;
  END
  $fn$;
  "#,
  // 10 -> 11: the CLI's file-checkpoint backups of a session (`postgres/file_backups.rs`), stored
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
  // 11 -> 12: a session cap covers the session's lineage (`postgres/budgets.rs`): a fork names
  // the root of its `parent_id` chain (kept when the parent is deleted), a ledger row of a fork's
  // call the root it was charged to; '' (the default, so that rows written without it stay valid)
  // for a root and its calls. A session cap is stored under the lineage's root. Existing rows are
  // filled in from the `parent_id` chains as they are now (only forks and their calls are
  // written); where several sessions of one lineage had caps, the strictest stays. `admit_call`
  // (its arguments unchanged, replaced in place) checks the session cap stored under the call's
  // lineage against the lineage's spend: the root's calls and the calls naming the root.
  r#"
  ALTER TABLE {S}.sessions ADD COLUMN lineage_id TEXT NOT NULL DEFAULT '';
  WITH RECURSIVE chain (id, root) AS (
    SELECT s.id, p.id FROM {S}.sessions s JOIN {S}.sessions p ON p.id = s.parent_id
      WHERE NOT EXISTS (SELECT 1 FROM {S}.sessions g WHERE g.id = p.parent_id)
    UNION
    SELECT s.id, c.root FROM {S}.sessions s JOIN chain c ON s.parent_id = c.id
  )
  UPDATE {S}.sessions s SET lineage_id = chain.root FROM chain WHERE chain.id = s.id;

  ALTER TABLE {S}.model_calls ADD COLUMN lineage_id TEXT NOT NULL DEFAULT '';
  UPDATE {S}.model_calls m SET lineage_id = s.lineage_id FROM {S}.sessions s WHERE s.id = m.session_id AND s.lineage_id <> '';
  CREATE INDEX model_calls_by_lineage ON {S}.model_calls (lineage_id, at) INCLUDE (user_id, usd) WHERE lineage_id <> '';

  DELETE FROM {S}.budgets WHERE scope = 'session' AND (user_id, session_id) IN (
    SELECT user_id, session_id FROM (
      SELECT b.user_id, b.session_id,
        ROW_NUMBER() OVER (PARTITION BY b.user_id, COALESCE(NULLIF(s.lineage_id, ''), b.session_id) ORDER BY b.usd, b.session_id) AS n
      FROM {S}.budgets b LEFT JOIN {S}.sessions s ON s.id = b.session_id WHERE b.scope = 'session') ranked
    WHERE n > 1);
  UPDATE {S}.budgets b SET session_id = s.lineage_id FROM {S}.sessions s
    WHERE b.scope = 'session' AND s.id = b.session_id AND s.lineage_id <> '';

  CREATE OR REPLACE FUNCTION {S}.admit_call(p_key text, p_task text, p_session text, p_user text, p_project text, p_model text,
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
    lineage text;
    at_now timestamptz := now() + p_shift * interval '1 millisecond';
  BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_user_lock, 0));
    PERFORM pg_advisory_xact_lock(hashtextextended(p_project_lock, 0));
    RETURN QUERY SELECT m.id, NULL::text, NULL::text, NULL::float8, NULL::float8, NULL::text
      FROM {S}.model_calls m WHERE m.call_key = p_key;
    IF FOUND THEN
      RETURN;
    END IF;
    -- The session's lineage: its root ('' on a root; a session the store does not have is a
    -- lineage of its own).
    SELECT NULLIF(s.lineage_id, '') INTO lineage FROM {S}.sessions s WHERE s.id = p_session;
    lineage := COALESCE(lineage, p_session);
    FOR k IN SELECT * FROM (VALUES (1, 'user', p_user, '', ''), (2, 'project', p_user, p_project, ''),
        (3, 'project', '', p_project, ''), (4, 'session', p_user, '', lineage)) AS v(ord, scope, u, p, s) ORDER BY ord LOOP
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
        -- The root's own calls, and its forks' (which name it).
        SELECT (SELECT COALESCE(SUM(m.usd), 0) FROM {S}.model_calls m WHERE m.session_id = k.s AND m.user_id = k.u AND m.at >= since)
          + (SELECT COALESCE(SUM(m.usd), 0) FROM {S}.model_calls m
             WHERE m.lineage_id = k.s AND m.lineage_id <> '' AND m.user_id = k.u AND m.at >= since) INTO spent;
      END IF;
      IF spent + p_reserve > cap THEN
        RETURN QUERY SELECT NULL::bigint, k.scope::text, k.u::text, cap, spent, cap_period;
        RETURN;
      END IF;
    END LOOP;
    RETURN QUERY INSERT INTO {S}.model_calls (call_key, task_id, session_id, lineage_id, user_id, project_id, model, usd, reserved, at)
      VALUES (p_key, p_task, p_session, CASE WHEN lineage = p_session THEN '' ELSE lineage END, p_user, p_project, p_model, p_reserve, true, (floor(extract(epoch from at_now) * 1000))::bigint)
      RETURNING id, NULL::text, NULL::text, NULL::float8, NULL::float8, NULL::text;
  END
  $fn$;
  "#,
  // 12 -> 13: the large values (a transcript line, an event, a file backup) compressed with lz4
  // instead of pglz: a new session's first turn stores a line of about 80 KB (the CLI's system
  // prompt attachment), which pglz took 2-4 ms to compress on the task's path and lz4 under 1 ms.
  // New rows only; where the server lacks lz4 (PostgreSQL before 14, or built without it), pglz
  // stays.
  r#"
  DO $$
  BEGIN
    EXECUTE 'ALTER TABLE {S}.transcript_entries ALTER COLUMN line SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE {S}.task_events ALTER COLUMN body SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE {S}.file_backups ALTER COLUMN content SET COMPRESSION lz4';
  EXCEPTION WHEN OTHERS THEN
    NULL;
  END
  $$;
  "#,
  // 13 -> 14: `begin_task` with `p_after`: a task of the same owner whose end was recorded and
  // whose lease was kept while its CLI exited. Its CLI is gone and the store holds its lines, so
  // the start takes that lease over (a new fence) instead of waiting for its release: the
  // release is then off the next task's path. A lease kept by anyone else, or by a task still
  // `running`, holds the start as before. The 12-argument function stays for a node still running
  // the build before (it never takes a lease over).
  r#"
  CREATE FUNCTION {S}.begin_task(p_session TEXT, p_task TEXT, p_kind TEXT, p_model TEXT, p_owner TEXT,
    p_pid BIGINT, p_node TEXT, p_ttl_ms DOUBLE PRECISION, p_host TEXT, p_max BIGINT, p_running_key TEXT,
    p_interrupted TEXT, p_after TEXT)
  RETURNS TABLE (outcome TEXT, kept BOOLEAN) LANGUAGE plpgsql AS $fn$
  DECLARE
    f BIGINT;
    n BIGINT;
  BEGIN
    -- The session row's lock orders every start (and delete) of this session, on every node.
    PERFORM 1 FROM {S}.sessions WHERE id = p_session FOR UPDATE;
    IF NOT FOUND THEN
      RETURN QUERY SELECT 'missing'::TEXT, false;
      RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id AND t.fence = l.fence
               WHERE l.session_id = p_session AND l.task_id = p_task AND t.status = 'running') THEN
      RETURN QUERY SELECT 'started'::TEXT, false;
      RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM {S}.leases l LEFT JOIN {S}.tasks t ON t.id = l.task_id AND t.fence = l.fence
               WHERE l.session_id = p_session AND l.task_id IS NOT NULL AND l.expires_at > now()
                 AND (p_after IS NULL OR l.task_id != p_after OR l.owner_id != p_owner
                      OR t.status IS NULL OR t.status = 'running')) THEN
      RETURN QUERY SELECT 'held'::TEXT, EXISTS (
        SELECT 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id
        WHERE l.session_id = p_session AND l.expires_at > now() AND t.status != 'running');
      RETURN;
    END IF;
    IF p_max IS NOT NULL THEN
      -- Held until commit: the next starter counts after this one's lease is in. A lease taken
      -- over is not counted: it becomes this task's.
      PERFORM pg_advisory_xact_lock(hashtext(p_running_key));
      SELECT COUNT(*) INTO n FROM {S}.leases WHERE task_id IS NOT NULL AND expires_at > clock_timestamp()
        AND NOT (session_id = p_session AND task_id = p_after);
      IF n >= p_max THEN
        RETURN QUERY SELECT 'full'::TEXT, false;
        RETURN;
      END IF;
    END IF;
    -- No live lease (or the one handed over): a `running` row left is a dead or stuck holder's,
    -- interrupted.
    UPDATE {S}.tasks SET status = 'interrupted', ended_at = {NOW}, error_code = 'INTERRUPTED', error_message = p_interrupted
      WHERE session_id = p_session AND status = 'running';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
      UPDATE {S}.sessions SET task_count = task_count + n WHERE id = p_session;
    END IF;
    INSERT INTO {S}.leases (session_id, fence, task_id, owner_id, owner_pid, node_id, expires_at, host_id)
      VALUES (p_session, 1, p_task, p_owner, p_pid, p_node, now() + p_ttl_ms * interval '1 millisecond', p_host)
      ON CONFLICT (session_id) DO UPDATE SET fence = {S}.leases.fence + 1, task_id = EXCLUDED.task_id,
        owner_id = EXCLUDED.owner_id, owner_pid = EXCLUDED.owner_pid, node_id = EXCLUDED.node_id,
        expires_at = EXCLUDED.expires_at, host_id = EXCLUDED.host_id
      RETURNING fence INTO f;
    INSERT INTO {S}.tasks (id, session_id, status, started_at, model, owner_id, owner_pid, node_id, kind, fence, host_id)
      VALUES (p_task, p_session, 'running', {NOW}, p_model, p_owner, p_pid, p_node, p_kind, f, p_host);
    RETURN QUERY SELECT 'started'::TEXT, false;
  END
  $fn$;
  "#,
  // 14 -> 15: a task's end writes less. The transcript lines and the events no longer name their
  // session by a foreign key: its check ran once per inserted row (a query and a row lock on the
  // session, about 0.1 ms per statement of a task's end), while each insert already reads the
  // session's lease or row under a lock, so none can add rows to a session being deleted. A
  // trigger deletes them with their session, as the cascade did, whichever build deletes it.
  // `finish_task` (same arguments) updates the session's row once instead of twice, skips the
  // empty insert of compactions, and writes a model's window only when it changed.
  r#"
  -- Dropping a foreign key locks the table it names too: the sessions table is taken first, as a
  -- delete of a session (then its cascade) takes them, so that a node of the build before
  -- deleting a session meanwhile is waited for instead of deadlocked with.
  LOCK TABLE {S}.sessions, {S}.transcript_entries, {S}.task_events IN ACCESS EXCLUSIVE MODE;
  ALTER TABLE {S}.transcript_entries DROP CONSTRAINT IF EXISTS transcript_entries_session_id_fkey;
  ALTER TABLE {S}.task_events DROP CONSTRAINT IF EXISTS task_events_session_id_fkey;
  CREATE FUNCTION {S}.session_rows_gone() RETURNS TRIGGER LANGUAGE plpgsql AS $fn$
  BEGIN
    DELETE FROM {S}.transcript_entries WHERE session_id = OLD.id;
    DELETE FROM {S}.task_events WHERE session_id = OLD.id;
    RETURN NULL;
  END
  $fn$;
  CREATE TRIGGER session_rows_gone AFTER DELETE ON {S}.sessions FOR EACH ROW EXECUTE FUNCTION {S}.session_rows_gone();

  CREATE OR REPLACE FUNCTION {S}.finish_task(p_session TEXT, p_task TEXT, p_status TEXT, p_model TEXT, p_turns BIGINT,
    p_input BIGINT, p_output BIGINT, p_cache_read BIGINT, p_cache_creation BIGINT, p_cost DOUBLE PRECISION,
    p_cli_cost DOUBLE PRECISION, p_duration_api BIGINT, p_error_code TEXT, p_error_message TEXT, p_cli_version TEXT,
    p_materialized BOOLEAN, p_watermark DOUBLE PRECISION, p_paused TEXT,
    p_ctx_tokens BIGINT, p_ctx_window BIGINT, p_ctx_source TEXT, p_ctx_measured BIGINT,
    p_window_model TEXT, p_window BIGINT,
    p_c_session TEXT[], p_c_task TEXT[], p_c_trigger TEXT[], p_c_pre BIGINT[], p_c_post BIGINT[], p_c_started BIGINT[],
    p_c_duration BIGINT[], p_release BOOLEAN, p_record_only BOOLEAN)
  RETURNS BOOLEAN LANGUAGE plpgsql AS $fn$
  DECLARE
    ctx BOOLEAN := p_ctx_tokens IS NOT NULL;
  BEGIN
    -- Fenced: the lease must still carry this task and its fence.
    PERFORM 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id AND t.fence = l.fence
      WHERE l.session_id = p_session AND l.task_id = p_task AND t.status = 'running' FOR UPDATE OF l;
    IF NOT FOUND THEN
      -- Already ended by this very call (run again after its answer was lost), no task since.
      RETURN EXISTS (SELECT 1 FROM {S}.tasks t JOIN {S}.leases l ON l.session_id = t.session_id AND l.fence = t.fence
        WHERE t.id = p_task AND t.session_id = p_session AND t.status = p_status AND t.ended_at IS NOT NULL
          AND t.error_code IS NOT DISTINCT FROM p_error_code AND (l.task_id IS NULL OR l.task_id = p_task));
    END IF;
    UPDATE {S}.tasks SET status = p_status, ended_at = {NOW}, model = COALESCE(p_model, model), turns = p_turns,
      input_tokens = p_input, output_tokens = p_output, cache_read_tokens = p_cache_read,
      cache_creation_tokens = p_cache_creation, cost_usd = p_cost, cli_reported_cost_usd = p_cli_cost,
      duration_api_ms = p_duration_api, error_code = p_error_code, error_message = p_error_message,
      cli_version = p_cli_version
      WHERE id = p_task;
    -- A run that called no model (a rewind with files) leaves the session's totals as they are.
    IF NOT p_record_only THEN
      UPDATE {S}.sessions SET task_count = task_count + 1, total_cost_usd = total_cost_usd + p_cost,
        input_tokens = input_tokens + p_input, output_tokens = output_tokens + p_output,
        cache_read_tokens = cache_read_tokens + p_cache_read, cache_creation_tokens = cache_creation_tokens + p_cache_creation,
        last_active_at = {NOW}, updated_at = {NOW}, materialized = materialized OR p_materialized,
        cli_cost_watermark = COALESCE(p_watermark, cli_cost_watermark), paused = p_paused,
        context_tokens = CASE WHEN ctx THEN p_ctx_tokens ELSE context_tokens END,
        context_window = CASE WHEN ctx THEN p_ctx_window ELSE context_window END,
        context_source = CASE WHEN ctx THEN p_ctx_source ELSE context_source END,
        context_measured_at = CASE WHEN ctx THEN p_ctx_measured ELSE context_measured_at END
        WHERE id = p_session;
    ELSIF ctx THEN
      UPDATE {S}.sessions SET context_tokens = p_ctx_tokens, context_window = p_ctx_window, context_source = p_ctx_source,
        context_measured_at = p_ctx_measured WHERE id = p_session;
    END IF;
    -- The model's window is written when it changed only: the row is every session's, and an
    -- update would hold its lock until this transaction commits. (Two ends reporting different
    -- windows at once may leave the older one; the next end that reports the other writes it.)
    IF p_window_model IS NOT NULL AND NOT EXISTS (
      SELECT 1 FROM {S}.model_windows WHERE model = p_window_model AND context_window = p_window) THEN
      INSERT INTO {S}.model_windows (model, context_window, updated_at) VALUES (p_window_model, p_window, {NOW})
        ON CONFLICT (model) DO UPDATE SET context_window = EXCLUDED.context_window, updated_at = EXCLUDED.updated_at;
    END IF;
    IF cardinality(p_c_session) > 0 THEN
      INSERT INTO {S}.compactions (session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms)
        SELECT * FROM unnest(p_c_session, p_c_task, p_c_trigger, p_c_pre, p_c_post, p_c_started, p_c_duration);
    END IF;
    IF p_release THEN
      -- The row stays (its fence must keep growing); only the holder goes.
      UPDATE {S}.leases SET task_id = NULL, expires_at = now() WHERE session_id = p_session AND task_id = p_task;
    END IF;
    RETURN true;
  END
  $fn$;

  -- A task's end in one statement (one round trip, no BEGIN and COMMIT of their own), the steps
  -- the flight of six statements took before, in the same order: the turn's last lines, fenced
  -- as `append_transcript`; the task's events; `finish_task`, if the lines were held; the end
  -- event, if the end was recorded (`finish_task` answered true: the task's row ended as asked
  -- under the lease's current fence, held or released, which is the end event's guard). Answers
  -- whether the end was recorded and the log's last number when any event was appended.
  CREATE FUNCTION {S}.end_task(p_session TEXT, p_task TEXT, p_status TEXT, p_model TEXT, p_turns BIGINT,
    p_input BIGINT, p_output BIGINT, p_cache_read BIGINT, p_cache_creation BIGINT, p_cost DOUBLE PRECISION,
    p_cli_cost DOUBLE PRECISION, p_duration_api BIGINT, p_error_code TEXT, p_error_message TEXT, p_cli_version TEXT,
    p_materialized BOOLEAN, p_watermark DOUBLE PRECISION, p_paused TEXT,
    p_ctx_tokens BIGINT, p_ctx_window BIGINT, p_ctx_source TEXT, p_ctx_measured BIGINT,
    p_window_model TEXT, p_window BIGINT,
    p_c_session TEXT[], p_c_task TEXT[], p_c_trigger TEXT[], p_c_pre BIGINT[], p_c_post BIGINT[], p_c_started BIGINT[],
    p_c_duration BIGINT[], p_release BOOLEAN, p_record_only BOOLEAN,
    p_l_seq BIGINT[], p_l_subpath TEXT[], p_l_uuid TEXT[], p_l_line TEXT[], p_l_last BIGINT,
    p_events TEXT[], p_end_event TEXT[], p_channel TEXT, p_prefix TEXT)
  RETURNS TABLE (o_ended BOOLEAN, o_last_event BIGINT) LANGUAGE plpgsql AS $fn$
  DECLARE
    v_held BOOLEAN := true;
    v_ended BOOLEAN := false;
    v_fence BIGINT;
    v_seq BIGINT;
    v_last BIGINT;
  BEGIN
    IF cardinality(p_l_seq) > 0 THEN
      SELECT l.fence INTO v_fence FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id AND t.fence = l.fence
        WHERE l.session_id = p_session AND l.task_id = p_task FOR UPDATE OF l;
      v_held := FOUND;
      IF v_held THEN
        INSERT INTO {S}.transcript_entries (session_id, seq, subpath, uuid, fence, task_id, line)
          SELECT p_session, x.seq, x.subpath, x.uuid, v_fence, p_task, x.line
          FROM unnest(p_l_seq, p_l_subpath, p_l_uuid, p_l_line) AS x(seq, subpath, uuid, line)
          ON CONFLICT DO NOTHING;
        UPDATE {S}.sessions SET transcript_seq = GREATEST(transcript_seq, p_l_last) WHERE id = p_session;
      END IF;
    END IF;
    IF cardinality(p_events) > 0 THEN
      UPDATE {S}.sessions SET event_seq = event_seq + cardinality(p_events) WHERE id = p_session RETURNING event_seq INTO v_seq;
      IF FOUND THEN
        INSERT INTO {S}.task_events (session_id, seq, task_id, at, body)
          SELECT p_session, v_seq - cardinality(p_events) + x.o, p_task, {NOW}, x.b
          FROM unnest(p_events) WITH ORDINALITY AS x(b, o);
        PERFORM pg_notify(p_channel, p_prefix || v_seq::text);
        v_last := v_seq;
      END IF;
    END IF;
    IF v_held THEN
      v_ended := {S}.finish_task(p_session, p_task, p_status, p_model, p_turns, p_input, p_output, p_cache_read,
        p_cache_creation, p_cost, p_cli_cost, p_duration_api, p_error_code, p_error_message, p_cli_version,
        p_materialized, p_watermark, p_paused, p_ctx_tokens, p_ctx_window, p_ctx_source, p_ctx_measured,
        p_window_model, p_window, p_c_session, p_c_task, p_c_trigger, p_c_pre, p_c_post, p_c_started, p_c_duration,
        p_release, p_record_only);
    END IF;
    IF v_ended AND cardinality(p_end_event) > 0 THEN
      UPDATE {S}.sessions SET event_seq = event_seq + cardinality(p_end_event) WHERE id = p_session RETURNING event_seq INTO v_seq;
      IF FOUND THEN
        INSERT INTO {S}.task_events (session_id, seq, task_id, at, body)
          SELECT p_session, v_seq - cardinality(p_end_event) + x.o, p_task, {NOW}, x.b
          FROM unnest(p_end_event) WITH ORDINALITY AS x(b, o);
        PERFORM pg_notify(p_channel, p_prefix || v_seq::text);
        v_last := v_seq;
      END IF;
    END IF;
    RETURN QUERY SELECT v_ended, v_last;
  END
  $fn$;
  "#,
];

/// The schema version this build writes.
pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Against PostgreSQL (`CSM_TEST_DATABASE_URL`; `#[ignore]`d, run with `cargo test --lib pg_tests --
/// --include-ignored`).
#[cfg(test)]
mod pg_tests {
  use super::MIGRATIONS;
  use crate::store::budgets::lineage_migration;
  use crate::store::Blocking as _;
  use crate::store::Store;

  /// A schema of its own as the build of schema `version` left it, with `rows` (SQL, `{S}` the
  /// schema) written in it; dropped with the value.
  struct Old {
    url: String,
    schema: String,
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
  }

  impl Old {
    fn new(prefix: &str, version: usize, rows: &str) -> Old {
      let url = std::env::var("CSM_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("this test needs PostgreSQL and CSM_TEST_DATABASE_URL is not set");
      let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
      let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
      let client = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
      });
      let mut setup = format!(
        "CREATE SCHEMA {{S}}; CREATE TABLE {{S}}.schema_version (version BIGINT NOT NULL); INSERT INTO {{S}}.schema_version VALUES ({version});"
      );
      for m in &MIGRATIONS[..version] {
        setup += &m.replace("{NOW}", "(floor(extract(epoch from now()) * 1000))::bigint");
      }
      setup += rows;
      let old = Old { url, schema, rt, client };
      old.run(&setup);
      old
    }

    fn quoted(&self, sql: &str) -> String {
      sql.replace("{S}", &format!("\"{}\"", self.schema))
    }

    fn run(&self, sql: &str) {
      self.rt.block_on(self.client.batch_execute(&self.quoted(sql))).unwrap();
    }

    fn rows(&self, sql: &str) -> Vec<tokio_postgres::Row> {
      self.rt.block_on(self.client.query(&self.quoted(sql), &[])).unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
      self.rows(sql)[0].get(0)
    }

    /// The store opened on it, which migrates it to this build's schema.
    fn open(&self) -> Store {
      Store::connect(&self.url, &self.schema).unwrap()
    }
  }

  impl Drop for Old {
    fn drop(&mut self) {
      let _ = self.rt.block_on(self.client.batch_execute(&self.quoted("DROP SCHEMA {S} CASCADE")));
    }
  }

  /// 11 -> 12 fills the lineage in from the `parent_id` chains as they were
  /// (`store/budgets.rs::lineage_migration`), and the replaced `admit_call` sums the lineage.
  #[test]
  #[ignore = "needs PostgreSQL: CSM_TEST_DATABASE_URL=postgresql://… cargo test --lib pg_tests -- --include-ignored"]
  fn the_lineage_migration_fills_in_sessions_ledger_and_caps() {
    let old = Old::new("csm_lineage", 11, &lineage_migration::rows_sql("{S}."));
    let s = old.open();
    let read = || {
      let calls = old.rows("SELECT session_id, lineage_id FROM {S}.model_calls ORDER BY id");
      let caps = old.rows("SELECT scope, session_id, usd FROM {S}.budgets ORDER BY usd");
      (calls.iter().map(|r| (r.get(0), r.get(1))).collect(), caps.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    };
    let lineage_of_call = |id: i64| old.rows(&format!("SELECT lineage_id FROM {{S}}.model_calls WHERE id = {id}"))[0].get(0);
    lineage_migration::check(&s, read, lineage_of_call);
  }

  /// 14 -> 15 on a schema with rows: the lines and events stay; the foreign keys are gone; deleting
  /// a session (as the store does, or as a build before does, by the cascade it knew) deletes its
  /// lines and events, and only its own.
  #[test]
  #[ignore = "needs PostgreSQL: CSM_TEST_DATABASE_URL=postgresql://… cargo test --lib pg_tests -- --include-ignored"]
  fn the_end_migration_keeps_the_rows_and_deletes_them_with_their_session() {
    let rows: String = ["a", "b"]
      .iter()
      .map(|id| {
        format!(
          "INSERT INTO {{S}}.sessions (id, project_id, user_id, status, model, working_directory, created_at, updated_at, last_active_at)
             VALUES ('{id}', 'p', 'u', 'active', 'm', '/tmp', 0, 0, 0);
           INSERT INTO {{S}}.transcript_entries (session_id, seq, fence, line) VALUES ('{id}', 1, 1, '{{}}'), ('{id}', 2, 1, '{{}}');
           INSERT INTO {{S}}.task_events (session_id, seq, task_id, at, body) VALUES ('{id}', 1, 't', 0, '{{}}');"
        )
      })
      .collect();
    let old = Old::new("csm_end", 14, &rows);
    let fks = "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid IN ('{S}.transcript_entries'::regclass, '{S}.task_events'::regclass)";
    assert_eq!(old.count(fks), 2, "the build before's keys");
    let s = old.open();
    assert_eq!(s.schema_version().wait().unwrap(), super::PG_SCHEMA_VERSION);
    assert_eq!(old.count(fks), 0, "the keys are gone");
    assert_eq!(old.count("SELECT count(*) FROM {S}.transcript_entries"), 4, "the lines stay");
    assert_eq!(old.count("SELECT count(*) FROM {S}.task_events"), 2, "the events stay");
    s.delete_session("a", "u").wait().unwrap();
    assert_eq!(old.count("SELECT count(*) FROM {S}.transcript_entries WHERE session_id = 'b'"), 2, "another session's lines stay");
    assert_eq!(old.count("SELECT count(*) FROM {S}.transcript_entries"), 2, "a's lines went with it");
    assert_eq!(old.count("SELECT count(*) FROM {S}.task_events"), 1, "a's events went with it");
    // A build before deletes the row alone, counting on the cascade.
    old.run("DELETE FROM {S}.sessions WHERE id = 'b'");
    assert_eq!(old.count("SELECT count(*) FROM {S}.transcript_entries"), 0, "deleted with their sessions");
    assert_eq!(old.count("SELECT count(*) FROM {S}.task_events"), 0, "deleted with their sessions");
    drop(s);
  }
}
