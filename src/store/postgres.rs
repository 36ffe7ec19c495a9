//! The PostgreSQL session store: one database shared by several nodes (servers).
//!
//! **Driver.** `tokio-postgres` with a `deadpool-postgres` pool, driven by a small runtime of
//! the store's own (one worker thread, which runs the connections and the pool's timers). The
//! store's callers are synchronous (the manager runs store calls on tokio's blocking pool, the
//! renewal loop and the tests call it from plain threads), so each method enters that runtime's
//! context and blocks its calling thread on one future (`block_on` below: park and unpark, no
//! nested runtime, so it works from any thread, including a tokio worker, without the
//! "runtime within a runtime" panic the sync `postgres` crate would give there). The methods keep
//! their borrowed arguments (no `'static` copies), and one pool serves every thread. The sync
//! `postgres` crate would have needed a pool of our own and a runtime per connection.
//!
//! **TLS.** `sslmode=require` (and `verify-ca`/`verify-full`, which mean the same here) connects
//! with rustls (ring provider) and verifies the server's certificate against the Mozilla roots
//! (`webpki-roots`): stricter than libpq's `require`, which does not verify. A private CA
//! (`sslrootcert`) is not supported yet. Without `sslmode`, or with `prefer`/`disable`, the
//! connection is plain (tokio-postgres skips the TLS request with no connector).
//!
//! **URL.** `postgres://` or `postgresql://`, libpq's parameters as tokio-postgres knows them.
//! Prisma's parameters are accepted: `connection_limit` sets the pool size (default 8),
//! `pool_timeout` (seconds) how long a call waits for a connection (default 30 s), statements are
//! prepared once per pooled connection and cached, except with `pgbouncer=true` or
//! `statement_cache_size=0` (a PgBouncer in transaction mode hands each transaction any server
//! connection, where a named statement may not exist: then each statement is prepared unnamed
//! inside its transaction, one more round trip), and `schema` is ignored: it names the app's own
//! schema, and the addon's tables live in `databaseSchema` (default `claude_sessions`) so that
//! Prisma Migrate never sees them. Other unknown parameters are ignored. No message shows the
//! password.
//!
//! **Leases.** A row per session in `leases` that outlives its holders: `fence` grows by one on
//! every take-over and is copied onto the task row; expiry is by the database clock (`now()`),
//! never a node's clock. Renewal and the task's end are fenced: they only apply while the lease
//! still carries this task and its fence. A partial unique index allows one `running` task per
//! session. Rows carry the configured `node_id` (`nodeId`) and the machine (`host_id`: host name
//! and boot id); a store judges by pid only the rows of its own machine, other machines' rows by
//! lease expiry alone.
//!
//! **Transcripts.** `transcript_entries` holds the CLI's transcript lines, appended fenced by the
//! lease (`transcripts.rs`); a session's folders are stored relative to the node's roots when
//! inside them ([`PgStore::set_roots`]), so each node resolves them under its own.
//!
//! **Times.** Session and task times are milliseconds since the epoch by the database clock.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{Begin, Compaction, ContextSnapshot, ListQuery, NewSession, Session, TaskEnd, TaskRecord, TaskStart, Usage};
use crate::error::{Error, ErrorCode, Result};

#[path = "budgets_pg.rs"]
mod budgets_pg;
#[path = "inbox_pg.rs"]
mod inbox_pg;
#[path = "transcripts.rs"]
mod transcripts;
#[path = "warm_holds_pg.rs"]
mod warm_holds_pg;

/// The folders a node resolves stored relative paths under.
struct Roots {
  /// The manager's `workingDirectory`.
  working: PathBuf,
  /// The manager's `tenantConfigRoot`.
  config: PathBuf,
}

/// `path` relative to `root` when inside it (`.` for the root itself), else unchanged.
fn relative_to(root: &Path, path: &str) -> String {
  match Path::new(path).strip_prefix(root) {
    Ok(rel) if rel.as_os_str().is_empty() => ".".into(),
    Ok(rel) => rel.to_string_lossy().into_owned(),
    Err(_) => path.to_owned(),
  }
}

/// A stored path resolved on this node: relative ones under `root`, absolute ones as they are.
fn resolve_under(root: &Path, stored: &str) -> String {
  if Path::new(stored).is_absolute() {
    return stored.to_owned();
  }
  if stored == "." {
    return root.to_string_lossy().into_owned();
  }
  root.join(stored).to_string_lossy().into_owned()
}

/// Forward migrations; entry `i` takes the schema from version `i` to `i + 1`. `{S}` is the
/// quoted schema name.
const MIGRATIONS: &[&str] = &[
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
  // 2 -> 3: what is forwarded to the node running a task (`inbox_pg.rs`): the task's `watch`
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
  // 3 -> 4: which manager keeps an idle warm CLI of a session (`warm_holds_pg.rs`).
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
  // 4 -> 5: the key proxy's ledger of model calls and the spend caps (`budgets_pg.rs`); no
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
];

/// The schema version this build writes.
pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The database clock in milliseconds since the epoch (the transaction's start).
const NOW_MS: &str = "(floor(extract(epoch from now()) * 1000))::bigint";

const SESSION_COLUMNS: &str = "id, project_id, user_id, status, parent_id, title, model, working_directory, \
  created_at, updated_at, last_active_at, task_count, total_cost_usd, input_tokens, output_tokens, \
  cache_read_tokens, cache_creation_tokens, context_tokens, context_window, context_source, \
  context_measured_at, materialized, cli_cost_watermark, config_dir";

const INTERRUPTED: &str = "the process running this task stopped before it ended";

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Wakes the thread blocked in [`block_on`].
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
  fn wake(self: Arc<Self>) {
    self.0.unpark();
  }
  fn wake_by_ref(self: &Arc<Self>) {
    self.0.unpark();
  }
}

/// Polls `f` on this thread until it is ready, parking in between. The I/O and timers it waits
/// on are driven by the store's runtime (entered by the caller).
fn block_on<F: Future>(f: F) -> F::Output {
  let mut f = std::pin::pin!(f);
  let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
  let mut cx = Context::from_waker(&waker);
  loop {
    if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
      return v;
    }
    std::thread::park();
  }
}

/// How many times a transaction runs when its connection turns out closed before it commits (at
/// least; more when the pool holds more connections, each of which may have been dropped).
const TX_ATTEMPTS: u32 = 3;

/// Whether a statement failed because its connection went away (what [`pg`] wrote: the server's
/// SQLSTATE class 08 "connection exception", 57P01-57P03 "shut down / cannot connect now", or the
/// driver's closed connection), so that nothing of the transaction can have happened.
fn connection_lost(e: &Error) -> bool {
  let Some(rest) = e.message.strip_prefix(PG_PREFIX) else { return false };
  if rest.starts_with("connection closed") || rest.starts_with("error communicating with the server") {
    return true;
  }
  let code = rest.split_whitespace().nth(1).unwrap_or("").trim_end_matches(':');
  code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

const PG_PREFIX: &str = "session store (PostgreSQL): ";

/// The error of a failed statement, with the server's message (never the connection string).
fn pg(e: tokio_postgres::Error) -> Error {
  if let Some(db) = e.as_db_error() {
    return Error::store(format!("{PG_PREFIX}{} {}: {}", db.severity(), db.code().code(), db.message()));
  }
  let mut msg = e.to_string();
  let mut source = std::error::Error::source(&e);
  while let Some(s) = source {
    msg = format!("{msg}: {s}");
    source = s.source();
  }
  Error::store(format!("{PG_PREFIX}{msg}"))
}

/// This machine, for telling which `running` rows a pid check may judge: the host name and the
/// boot id (a pid is only meaningful on the host, and boot, that gave it out).
fn host_id() -> String {
  let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
  let host = read("/proc/sys/kernel/hostname")
    .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
    .or_else(|| std::env::var("COMPUTERNAME").ok().filter(|h| !h.is_empty()))
    .unwrap_or_else(|| "unknown-host".into());
  match read("/proc/sys/kernel/random/boot_id") {
    Some(boot) => format!("{host}/{boot}"),
    None => host,
  }
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
  let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
  lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// A connection string made ready for tokio-postgres, and what it said for the pool.
struct Parsed {
  config: tokio_postgres::Config,
  tls: bool,
  pool_size: usize,
  pool_timeout: Duration,
  /// Whether statements may be prepared once per connection (not behind PgBouncer).
  cache_statements: bool,
  /// The target without credentials, for messages.
  shown: String,
}

fn percent_decode(s: &str) -> String {
  let b = s.as_bytes();
  let mut out = Vec::with_capacity(b.len());
  let mut i = 0;
  while i < b.len() {
    if b[i] == b'%' {
      if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
        out.push(v);
        i += 3;
        continue;
      }
    }
    out.push(b[i]);
    i += 1;
  }
  String::from_utf8_lossy(&out).into_owned()
}

/// Splits `url` into what tokio-postgres understands and the pool settings, dropping Prisma's
/// and unknown parameters. Errors never repeat the URL (it may hold a password).
fn parse_url(url: &str) -> Result<Parsed> {
  const KNOWN: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
  ];
  let (base, query) = match url.split_once('?') {
    Some((b, q)) => (b, q),
    None => (url, ""),
  };
  let mut kept = Vec::new();
  let mut tls = false;
  let mut pool_size = 8usize;
  let mut pool_timeout = Duration::from_secs(30);
  let mut cache_statements = true;
  let mut connect_timeout = false;
  for pair in query.split('&').filter(|p| !p.is_empty()) {
    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
    let (key, value) = (percent_decode(k), percent_decode(v));
    match key.as_str() {
      "sslmode" => match value.as_str() {
        "require" | "verify-ca" | "verify-full" => {
          tls = true;
          kept.push("sslmode=require".to_owned());
        }
        "disable" | "prefer" | "allow" => kept.push("sslmode=disable".to_owned()),
        _ => {
          return Err(Error::invalid(format!(
            "databaseUrl: sslmode must be disable, prefer, require, verify-ca or verify-full, got {value:?}"
          )))
        }
      },
      "connection_limit" => {
        pool_size = value
          .parse::<usize>()
          .ok()
          .filter(|n| (1..=1000).contains(n))
          .ok_or_else(|| Error::invalid(format!("databaseUrl: connection_limit must be an integer from 1 to 1000, got {value:?}")))?;
      }
      "pool_timeout" => {
        let secs = value
          .parse::<f64>()
          .ok()
          .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
          .ok_or_else(|| Error::invalid(format!("databaseUrl: pool_timeout must be a number of seconds, got {value:?}")))?;
        pool_timeout = Duration::from_secs_f64(secs);
      }
      "pgbouncer" if value == "true" => cache_statements = false,
      "statement_cache_size" if value == "0" => cache_statements = false,
      "connect_timeout" => {
        connect_timeout = true;
        kept.push(pair.to_owned());
      }
      k if KNOWN.contains(&k) => kept.push(pair.to_owned()),
      // Prisma's `schema`, `socket_timeout`, `sslaccept`,
      // `sslcert`, … and anything else: not for tokio-postgres.
      _ => {}
    }
  }
  if !connect_timeout {
    kept.push("connect_timeout=10".to_owned());
  }
  let clean = format!("{base}?{}", kept.join("&"));
  let config: tokio_postgres::Config = clean
    .parse()
    .map_err(|e: tokio_postgres::Error| Error::invalid(format!("databaseUrl is not a valid PostgreSQL URL: {}", pg(e).message)))?;
  let hosts: Vec<String> = config
    .get_hosts()
    .iter()
    .map(|h| match h {
      tokio_postgres::config::Host::Tcp(h) => h.clone(),
      #[cfg(unix)]
      tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    })
    .collect();
  let ports: Vec<String> = config.get_ports().iter().map(|p| p.to_string()).collect();
  let shown = format!(
    "postgresql://{}{}{}{}/{}",
    config.get_user().map(|u| format!("{u}@")).unwrap_or_default(),
    if hosts.is_empty() { "localhost".into() } else { hosts.join(",") },
    if ports.is_empty() { "" } else { ":" },
    ports.join(","),
    config.get_dbname().unwrap_or(""),
  );
  Ok(Parsed { config, tls, pool_size, pool_timeout, cache_statements, shown })
}

/// Checks a PostgreSQL schema name: a plain identifier, so it can be quoted safely.
pub fn validate_schema(schema: &str) -> Result<()> {
  let ok = !schema.is_empty()
    && schema.len() <= 63
    && schema.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
    && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    && !schema.starts_with("pg_");
  if !ok {
    return Err(Error::invalid(format!(
      "databaseSchema must be 1 to 63 lowercase letters, digits or underscores, starting with a letter or underscore (not pg_), got {schema:?}"
    )));
  }
  Ok(())
}

/// The PostgreSQL store.
pub struct PgStore {
  /// Runs the connections and the pool's timers; `None` only while dropping.
  rt: Option<tokio::runtime::Runtime>,
  pool: Pool,
  /// The schema, quoted, as it goes into SQL.
  schema: String,
  /// This machine (host name and boot id): the rows whose pids this store may judge.
  host: String,
  /// The node id recorded on task and lease rows (`nodeId`; default this machine).
  node: String,
  /// The roots a session's folders are stored relative to (see [`PgStore::set_roots`]).
  roots: Option<Roots>,
  shown: String,
  cache_statements: bool,
  /// The password, to scrub from any message that might carry it.
  secret: Option<String>,
}

impl Drop for PgStore {
  fn drop(&mut self) {
    // Dropping a runtime blocks, which tokio forbids on its own threads (the last reference to a
    // store may go away on one): let it wind down in the background instead.
    if let Some(rt) = self.rt.take() {
      rt.shutdown_background();
    }
  }
}

impl PgStore {
  /// Connects to the database at `url`, creates the schema if needed and migrates it. A schema
  /// newer than this build is refused.
  pub fn connect(url: &str, schema: &str) -> Result<PgStore> {
    validate_schema(schema)?;
    let parsed = parse_url(url)?;
    let secret = parsed.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).filter(|p| !p.is_empty());
    let rt = tokio::runtime::Builder::new_multi_thread()
      .worker_threads(1)
      .thread_name("csm-postgres")
      .enable_all()
      .build()
      .map_err(|e| Error::internal(format!("cannot start the PostgreSQL runtime: {e}")))?;
    let mcfg = ManagerConfig { recycling_method: RecyclingMethod::Fast };
    let manager = if parsed.tls {
      let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
      let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
      Manager::from_config(parsed.config, tokio_postgres_rustls::MakeRustlsConnect::new(tls), mcfg)
    } else {
      Manager::from_config(parsed.config, tokio_postgres::NoTls, mcfg)
    };
    let pool = {
      let _entered = rt.enter();
      Pool::builder(manager)
        .max_size(parsed.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(parsed.pool_timeout))
        .create_timeout(Some(Duration::from_secs(30)))
        .recycle_timeout(Some(Duration::from_secs(10)))
        .build()
        .map_err(|e| Error::internal(format!("cannot set up the PostgreSQL pool: {e}")))?
    };
    let store = PgStore {
      rt: Some(rt),
      pool,
      schema: format!("\"{schema}\""),
      host: host_id(),
      node: host_id(),
      roots: None,
      shown: parsed.shown,
      cache_statements: parsed.cache_statements,
      secret,
    };
    store.migrate(schema)?;
    Ok(store)
  }

  /// The database, without credentials.
  pub fn describe(&self) -> &str {
    &self.shown
  }

  /// The node id recorded on the task and lease rows this store writes.
  pub fn node(&self) -> &str {
    &self.node
  }

  /// Names this node (`nodeId`): recorded on every task and lease row it writes. Pids are still
  /// judged by machine (host name and boot id), whatever the name.
  pub fn set_node(&mut self, node: &str) {
    self.node = node.to_owned();
  }

  /// Stores a session's working directory relative to `working` and its configuration folder
  /// relative to `config` when they are inside them, and resolves relative ones under this
  /// node's roots when reading: each node runs a session under its own roots.
  pub fn set_roots(&mut self, working: PathBuf, config: PathBuf) {
    self.roots = Some(Roots { working, config });
  }

  fn session_row(&self, r: &Row) -> Session {
    let mut s = session_from_row(r);
    if let Some(roots) = &self.roots {
      s.working_directory = resolve_under(&roots.working, &s.working_directory);
      s.config_dir = s.config_dir.map(|d| resolve_under(&roots.config, &d));
    }
    s
  }

  fn scrub(&self, mut e: Error) -> Error {
    if let Some(p) = &self.secret {
      e.message = e.message.replace(p.as_str(), "***");
    }
    e
  }

  fn block<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
    let rt = self.rt.as_ref().ok_or_else(|| Error::internal("the PostgreSQL store is closed"))?;
    let _entered = rt.enter();
    block_on(f).map_err(|e| self.scrub(e))
  }

  fn sql(&self, sql: &str) -> String {
    sql.replace("{S}", &self.schema).replace("{NOW}", NOW_MS)
  }

  /// Runs `f` in one transaction on a pooled connection; commits when it returns `Ok`.
  ///
  /// A pooled connection the server has dropped (a restart, a failover, an idle timeout of a
  /// proxy) is found out only when used. When the connection turns out closed before the COMMIT
  /// was sent, nothing of the transaction happened, so it runs again on a fresh connection (up
  /// to [`TX_ATTEMPTS`] times; the pool discards closed connections). A connection lost during
  /// the COMMIT itself is not retried: the outcome is unknown, and the caller gets the error.
  fn tx<T>(&self, mut f: impl AsyncFnMut(&Transaction<'_>) -> Result<T>) -> Result<T> {
    self.block(self.on_connection(async |client| {
      let tx = client.transaction().await.map_err(pg)?;
      let out = f(&tx).await?;
      // Final either way: a COMMIT whose connection was lost may or may not have happened.
      Ok(tx.commit().await.map(|()| out).map_err(pg))
    }))
  }

  /// Runs `run` on a pooled connection, and again on another one (up to [`TX_ATTEMPTS`] times in
  /// all, or the pool's size plus one) when it failed because that connection turned out dropped. `run` answers `Err` for a
  /// failure before anything could have been committed (retried if the connection was lost),
  /// `Ok` with the outcome to return as it is.
  async fn on_connection<T>(&self, mut run: impl AsyncFnMut(&mut deadpool_postgres::Object) -> Result<Result<T>>) -> Result<T> {
    let mut attempt = 1;
    loop {
      let mut client = self.client().await?;
      match run(&mut client).await {
        Ok(outcome) => return outcome,
        // Every pooled connection may have been dropped at once (a restart): each is tried at
        // most once, and a dropped one leaves the pool for good.
        Err(e) if (client.is_closed() || connection_lost(&e)) && attempt < TX_ATTEMPTS.max(self.pool.status().max_size as u32 + 1) => {
          drop(deadpool_postgres::Object::take(client));
          attempt += 1
        }
        Err(e) => return Err(e),
      }
    }
  }

  /// A pooled connection.
  async fn client(&self) -> Result<deadpool_postgres::Object> {
    self.pool.get().await.map_err(|e| {
      let detail = match &e {
        deadpool_postgres::PoolError::Backend(b) => pg_detail(b),
        other => other.to_string(),
      };
      Error::store(format!("cannot reach the session store {}: {detail}", self.shown))
    })
  }

  /// Runs `f`, a read of one statement, on a pooled connection without a transaction around it
  /// (a statement is atomic on its own): one round trip with the statement cache, where
  /// [`Self::tx`] takes three (BEGIN, the statement, COMMIT). Behind PgBouncer
  /// (`pgbouncer=true`) a statement's preparation and execution must share a server connection,
  /// so it runs in a read-only transaction there. Retried on a dropped connection, as `tx`.
  fn read<T>(&self, mut f: impl AsyncFnMut(&deadpool_postgres::Client) -> Result<T>) -> Result<T> {
    let wrap = !self.cache_statements;
    self.block(self.on_connection(async |client| {
      if wrap {
        client.batch_execute("BEGIN READ ONLY").await.map_err(pg)?;
      }
      let out = f(client).await;
      if wrap {
        match &out {
          Ok(_) => client.batch_execute("COMMIT").await.map_err(pg)?,
          Err(_) => {
            let _ = client.batch_execute("ROLLBACK").await;
          }
        }
      }
      // A read changes nothing: every failure may run again on a fresh connection.
      out.map(Ok)
    }))
  }

  /// The statement for `sql`, prepared once per pooled connection (deadpool's statement cache):
  /// a plain `query(&str)` would parse and plan it again on every call, one more round trip.
  /// Behind PgBouncer (`pgbouncer=true`) it is prepared unnamed in this transaction instead.
  async fn prepared(&self, tx: &impl GenericClient, sql: &str) -> Result<tokio_postgres::Statement> {
    if self.cache_statements {
      tx.prepare_cached(&self.sql(sql)).await.map_err(pg)
    } else {
      tx.prepare(&self.sql(sql)).await.map_err(pg)
    }
  }

  async fn query(&self, tx: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
    let st = self.prepared(tx, sql).await?;
    tx.query(&st, params).await.map_err(pg)
  }

  async fn opt(&self, tx: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
    let st = self.prepared(tx, sql).await?;
    tx.query_opt(&st, params).await.map_err(pg)
  }

  async fn exec(&self, tx: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64> {
    let st = self.prepared(tx, sql).await?;
    tx.execute(&st, params).await.map_err(pg)
  }

  fn migrate(&self, schema: &str) -> Result<()> {
    let lock_key = format!("claude-session-manager:{schema}");
    self
      .tx(async |tx| {
        // Nodes starting together migrate one after another.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key]).await.map_err(pg)?;
        tx.batch_execute(&self.sql(
          "CREATE SCHEMA IF NOT EXISTS {S};
           CREATE TABLE IF NOT EXISTS {S}.schema_version (version BIGINT NOT NULL);",
        ))
        .await
        .map_err(|e| {
          let mut e = pg(e);
          e.message = format!("cannot create the schema {schema} in {} (the role needs CREATE on the database, or create the schema for it): {}", self.shown, e.message);
          e
        })?;
        let version: i64 = match self.opt(tx, "SELECT version FROM {S}.schema_version", &[]).await? {
          Some(r) => r.get(0),
          None => {
            self.exec(tx, "INSERT INTO {S}.schema_version (version) VALUES (0)", &[]).await?;
            0
          }
        };
        if version > PG_SCHEMA_VERSION {
          return Err(Error::store(format!(
            "the session store {} (schema {schema}) has schema version {version}, newer than this build's {PG_SCHEMA_VERSION}: upgrade claude-session-manager",
            self.shown
          )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
          tx.batch_execute(&self.sql(m))
            .await
            .map_err(|e| Error::store(format!("migration {} -> {} failed on {}: {}", i, i + 1, self.shown, pg(e).message)))?;
        }
        if version < PG_SCHEMA_VERSION {
          self.exec(tx, "UPDATE {S}.schema_version SET version = $1", &[&PG_SCHEMA_VERSION]).await?;
        }
        Ok(())
      })
      .map_err(|e| if e.code == ErrorCode::StoreError { e } else { Error::store(e.message) })
  }

  /// The schema version of the database.
  pub fn schema_version(&self) -> Result<i64> {
    self.read(async |c| Ok(self.opt(c, "SELECT version FROM {S}.schema_version", &[]).await?.map(|r| r.get(0)).unwrap_or(0)))
  }

  // ---- sessions ---------------------------------------------------------------------------

  async fn get_in(&self, tx: &impl GenericClient, id: &str, user_id: &str) -> Result<Option<Session>> {
    let row =
      self.opt(tx, &format!("SELECT {SESSION_COLUMNS} FROM {{S}}.sessions WHERE id = $1 AND user_id = $2"), &[&id, &user_id]).await?;
    Ok(row.as_ref().map(|r| self.session_row(r)))
  }

  async fn insert_session(&self, tx: &Transaction<'_>, s: &NewSession) -> Result<()> {
    let taken = self
      .opt(tx, "SELECT 1 FROM {S}.sessions WHERE id = $1 UNION ALL SELECT 1 FROM {S}.retired_session_ids WHERE id = $1", &[&s.id])
      .await?;
    if taken.is_some() {
      return Err(Error::invalid(format!("session id {} cannot be used for a new session; choose a new UUID", s.id)));
    }
    let (working_directory, config_dir) = match &self.roots {
      Some(roots) => (relative_to(&roots.working, &s.working_directory), s.config_dir.as_deref().map(|d| relative_to(&roots.config, d))),
      None => (s.working_directory.clone(), s.config_dir.clone()),
    };
    let ctx = s.context.as_ref();
    let (tokens, window, source, measured) =
      (ctx.map(|c| c.tokens as i64), ctx.map(|c| c.window as i64), ctx.map(|c| c.source.clone()), ctx.map(|c| c.measured_at));
    self
      .exec(
        tx,
        "INSERT INTO {S}.sessions (id, project_id, user_id, status, parent_id, title, model, working_directory,
           created_at, updated_at, last_active_at, context_tokens, context_window, context_source, context_measured_at,
           cli_cost_watermark, config_dir)
         VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, {NOW}, {NOW}, {NOW}, $8, $9, $10, $11, $12, $13)",
        &[
          &s.id,
          &s.project_id,
          &s.user_id,
          &s.parent_id,
          &s.title,
          &s.model,
          &working_directory,
          &tokens,
          &window,
          &source,
          &measured,
          &s.cli_cost_watermark,
          &config_dir,
        ],
      )
      .await?;
    Ok(())
  }

  /// Creates a session.
  pub fn create_session(&self, s: &NewSession) -> Result<Session> {
    self.tx(async |tx| {
      self.insert_session(tx, s).await?;
      self.get_in(tx, &s.id, &s.user_id).await?.ok_or_else(|| Error::internal("inserted session vanished"))
    })
  }

  /// One session of one user.
  pub fn get_session(&self, id: &str, user_id: &str) -> Result<Option<Session>> {
    self.read(async |c| self.get_in(c, id, user_id).await)
  }

  /// Sessions of a user, newest activity first.
  pub fn list_sessions(&self, q: &ListQuery) -> Result<Vec<Session>> {
    let (limit, offset) = (q.limit.min(i64::MAX as u64) as i64, q.offset.min(i64::MAX as u64) as i64);
    self.read(async |c| {
      let rows = self
        .query(
          c,
          &format!(
            "SELECT {SESSION_COLUMNS} FROM {{S}}.sessions WHERE user_id = $1
               AND ($2::text IS NULL OR project_id = $2) AND ($3::text IS NULL OR status = $3)
               AND ($4::text IS NULL OR parent_id = $4)
             ORDER BY last_active_at DESC, created_at DESC, id LIMIT $5 OFFSET $6"
          ),
          &[&q.user_id, &q.project_id, &q.status, &q.parent_id, &limit, &offset],
        )
        .await?;
      Ok(rows.iter().map(|r| self.session_row(r)).collect())
    })
  }

  /// Serialises the writers of one user's project (get-or-create, start fresh) across nodes.
  async fn lock_project(&self, tx: &Transaction<'_>, user_id: &str, project_id: &str) -> Result<()> {
    let key = format!("{}\u{1}{user_id}\u{1}{project_id}", self.schema);
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key]).await.map_err(pg)?;
    Ok(())
  }

  /// The newest active session of a user's project, or a new one made from `new`, atomically.
  pub fn get_or_create(&self, new: &NewSession, prefer_active: bool) -> Result<(Session, bool)> {
    self.tx(async |tx| {
      self.lock_project(tx, &new.user_id, &new.project_id).await?;
      if prefer_active {
        let found = self
          .opt(
            tx,
            &format!(
              "SELECT {SESSION_COLUMNS} FROM {{S}}.sessions WHERE user_id = $1 AND project_id = $2 AND status = 'active'
               ORDER BY last_active_at DESC, created_at DESC LIMIT 1"
            ),
            &[&new.user_id, &new.project_id],
          )
          .await?;
        if let Some(r) = found {
          return Ok((self.session_row(&r), false));
        }
      }
      self.insert_session(tx, new).await?;
      let s = self.get_in(tx, &new.id, &new.user_id).await?.ok_or_else(|| Error::internal("inserted session vanished"))?;
      Ok((s, true))
    })
  }

  /// Archives the user's active sessions of the project and creates `new`, atomically.
  pub fn start_fresh(&self, new: &NewSession) -> Result<(Session, u64)> {
    self.tx(async |tx| {
      self.lock_project(tx, &new.user_id, &new.project_id).await?;
      let archived = self
        .exec(
          tx,
          "UPDATE {S}.sessions SET status = 'archived', updated_at = {NOW}
           WHERE user_id = $1 AND project_id = $2 AND status = 'active'",
          &[&new.user_id, &new.project_id],
        )
        .await?;
      self.insert_session(tx, new).await?;
      let s = self.get_in(tx, &new.id, &new.user_id).await?.ok_or_else(|| Error::internal("inserted session vanished"))?;
      Ok((s, archived))
    })
  }

  /// Archives one session.
  pub fn archive_session(&self, id: &str, user_id: &str) -> Result<Session> {
    self.tx(async |tx| {
      let n = self
        .exec(tx, "UPDATE {S}.sessions SET status = 'archived', updated_at = {NOW} WHERE id = $1 AND user_id = $2", &[&id, &user_id])
        .await?;
      if n == 0 {
        return Err(Error::not_found(id));
      }
      self.get_in(tx, id, user_id).await?.ok_or_else(|| Error::not_found(id))
    })
  }

  async fn task_running(&self, tx: &Transaction<'_>, session_id: &str) -> Result<bool> {
    Ok(
      self
        .opt(
          tx,
          "SELECT 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id
           WHERE l.session_id = $1 AND l.expires_at > now() AND t.status = 'running'",
          &[&session_id],
        )
        .await?
        .is_some(),
    )
  }

  async fn retire(&self, tx: &Transaction<'_>, id: &str) -> Result<()> {
    self.exec(tx, "UPDATE {S}.sessions SET parent_id = NULL WHERE parent_id = $1", &[&id]).await?;
    self.exec(tx, "INSERT INTO {S}.retired_session_ids (id, retired_at) VALUES ($1, {NOW}) ON CONFLICT (id) DO NOTHING", &[&id]).await?;
    Ok(())
  }

  /// Deletes one session with its tasks and compactions; a session running a task is busy.
  pub fn delete_session(&self, id: &str, user_id: &str) -> Result<()> {
    self.tx(async |tx| {
      // The row lock orders this against a task starting on the session.
      if self.opt(tx, "SELECT 1 FROM {S}.sessions WHERE id = $1 AND user_id = $2 FOR UPDATE", &[&id, &user_id]).await?.is_none() {
        return Err(Error::not_found(id));
      }
      if self.task_running(tx, id).await? {
        return Err(Error::new(ErrorCode::SessionBusy, format!("session {id} is running a task; abort it or wait before deleting")));
      }
      self.retire(tx, id).await?;
      self.exec(tx, "DELETE FROM {S}.sessions WHERE id = $1 AND user_id = $2", &[&id, &user_id]).await?;
      Ok(())
    })
  }

  /// Deletes idle sessions; returns how many.
  pub fn cleanup(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<u64> {
    Ok(self.cleanup_sessions(user_id, project_id, max_age_ms, keep_active)?.len() as u64)
  }

  /// Deletes a user's sessions idle for longer than `max_age_ms` (only archived ones when
  /// `keep_active`) that run no task; returns them.
  pub fn cleanup_sessions(&self, user_id: &str, project_id: Option<&str>, max_age_ms: u64, keep_active: bool) -> Result<Vec<Session>> {
    self.tx(async |tx| {
      let now: i64 = self.query(tx, "SELECT {NOW}", &[]).await?[0].get(0);
      let cutoff = now.saturating_sub(max_age_ms.min(i64::MAX as u64) as i64);
      let rows = self
        .query(
          tx,
          &format!(
            "SELECT {SESSION_COLUMNS} FROM {{S}}.sessions s WHERE user_id = $1 AND ($2::text IS NULL OR project_id = $2)
               AND last_active_at < $3 AND (NOT $4 OR status = 'archived')
               AND NOT EXISTS (SELECT 1 FROM {{S}}.leases l JOIN {{S}}.tasks t ON t.id = l.task_id
                 WHERE l.session_id = s.id AND l.expires_at > now() AND t.status = 'running')
             FOR UPDATE"
          ),
          &[&user_id, &project_id, &cutoff, &keep_active],
        )
        .await?;
      let mut deleted = Vec::with_capacity(rows.len());
      for r in &rows {
        let s = self.session_row(r);
        self.retire(tx, &s.id).await?;
        self.exec(tx, "DELETE FROM {S}.sessions WHERE id = $1 AND user_id = $2", &[&s.id, &user_id]).await?;
        deleted.push(s);
      }
      Ok(deleted)
    })
  }

  /// Counts a user's sessions.
  pub fn count_sessions(&self, user_id: &str, project_id: Option<&str>) -> Result<u64> {
    self.read(async |c| {
      let r = self
        .query(
          c,
          "SELECT COUNT(*) FROM {S}.sessions WHERE user_id = $1 AND ($2::text IS NULL OR project_id = $2)",
          &[&user_id, &project_id],
        )
        .await?;
      Ok(r[0].get::<_, i64>(0) as u64)
    })
  }

  /// Replaces the context snapshot of a session.
  pub fn set_context(&self, id: &str, ctx: &ContextSnapshot) -> Result<()> {
    self.tx(async |tx| {
      self
        .exec(
          tx,
          "UPDATE {S}.sessions SET context_tokens = $2, context_window = $3, context_source = $4,
             context_measured_at = $5, updated_at = {NOW} WHERE id = $1",
          &[&id, &(ctx.tokens as i64), &(ctx.window as i64), &ctx.source, &ctx.measured_at],
        )
        .await?;
      Ok(())
    })
  }

  // ---- tasks and leases -------------------------------------------------------------------

  /// Whether the session's lease is held past its task's end (that task's CLI is exiting).
  pub fn lease_kept_after_end(&self, session_id: &str) -> Result<bool> {
    self.read(async |c| {
      Ok(
        self
          .opt(
            c,
            "SELECT 1 FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id
             WHERE l.session_id = $1 AND l.expires_at > now() AND t.status != 'running'",
            &[&session_id],
          )
          .await?
          .is_some(),
      )
    })
  }

  /// Takes the session's lease (a new fence) and inserts the task row as `running`, in one
  /// transaction. Writes nothing when another live task holds the lease, or when
  /// `start.max_running` live leases are held in the schema: with a limit, the count and the
  /// insert happen under one transaction-level advisory lock, so nodes starting at once never
  /// exceed it.
  pub fn begin_task(&self, session_id: &str, start: &TaskStart<'_>) -> Result<Begin> {
    let TaskStart { task_id, kind, model, owner, ttl, max_running } = *start;
    let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
    let pid = owner.pid as i64;
    self.tx(async |tx| {
      // The session row's lock orders every start (and delete) of this session, on every node.
      if self.opt(tx, "SELECT 1 FROM {S}.sessions WHERE id = $1 FOR UPDATE", &[&session_id]).await?.is_none() {
        return Err(Error::not_found(session_id));
      }
      let live = self
        .opt(tx, "SELECT 1 FROM {S}.leases WHERE session_id = $1 AND task_id IS NOT NULL AND expires_at > now()", &[&session_id])
        .await?;
      if live.is_some() {
        return Ok(Begin::SessionHeld);
      }
      if let Some(max) = max_running {
        // Held until commit: the next starter counts after this one's lease is in. (Each
        // statement under READ COMMITTED sees what was committed before it began.)
        let key = format!("{}\u{1}running", self.schema);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key]).await.map_err(pg)?;
        let live: i64 =
          self.query(tx, "SELECT COUNT(*) FROM {S}.leases WHERE task_id IS NOT NULL AND expires_at > clock_timestamp()", &[]).await?[0]
            .get(0);
        if live as u64 >= max {
          return Ok(Begin::Full);
        }
      }
      // No live lease: a `running` row left is a dead or stuck holder's, interrupted.
      self.interrupt_orphans(tx, session_id).await?;
      let fence: i64 = self
        .query(
          tx,
          "INSERT INTO {S}.leases (session_id, fence, task_id, owner_id, owner_pid, node_id, expires_at, host_id)
           VALUES ($1, 1, $2, $3, $4, $5, now() + $6 * interval '1 millisecond', $7)
           ON CONFLICT (session_id) DO UPDATE SET fence = {S}.leases.fence + 1, task_id = EXCLUDED.task_id,
             owner_id = EXCLUDED.owner_id, owner_pid = EXCLUDED.owner_pid, node_id = EXCLUDED.node_id,
             expires_at = EXCLUDED.expires_at, host_id = EXCLUDED.host_id
           RETURNING fence",
          &[&session_id, &task_id, &owner.id, &pid, &self.node, &(ttl_ms as f64), &self.host],
        )
        .await?[0]
        .get(0);
      self
        .exec(
          tx,
          "INSERT INTO {S}.tasks (id, session_id, status, started_at, model, owner_id, owner_pid, node_id, kind, fence, host_id)
           VALUES ($1, $2, 'running', {NOW}, $3, $4, $5, $6, $7, $8, $9)",
          &[&task_id, &session_id, &model, &owner.id, &pid, &self.node, &kind, &fence, &self.host],
        )
        .await?;
      Ok(Begin::Started)
    })
  }

  async fn interrupt_orphans(&self, tx: &Transaction<'_>, session_id: &str) -> Result<()> {
    let n = self
      .exec(
        tx,
        "UPDATE {S}.tasks SET status = 'interrupted', ended_at = {NOW}, error_code = 'INTERRUPTED', error_message = $2
         WHERE session_id = $1 AND status = 'running'",
        &[&session_id, &INTERRUPTED],
      )
      .await?;
    if n > 0 {
      self.exec(tx, "UPDATE {S}.sessions SET task_count = task_count + $2 WHERE id = $1", &[&session_id, &(n as i64)]).await?;
    }
    Ok(())
  }

  /// The fence a task holds the session's lease under, if it still does (expired or not, as long
  /// as no other task has taken it over). Locks the lease row.
  async fn held_fence(&self, tx: &Transaction<'_>, session_id: &str, task_id: &str) -> Result<Option<i64>> {
    Ok(
      self
        .opt(
          tx,
          "SELECT l.fence FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id AND t.fence = l.fence
           WHERE l.session_id = $1 AND l.task_id = $2 FOR UPDATE OF l",
          &[&session_id, &task_id],
        )
        .await?
        .map(|r| r.get(0)),
    )
  }

  /// The fence of the session's lease when `task_id` was the last task to take it (held or
  /// released since), locked until the transaction ends; `None` when another task took it since.
  async fn last_fence(&self, tx: &Transaction<'_>, session_id: &str, task_id: &str) -> Result<Option<i64>> {
    Ok(
      self
        .opt(
          tx,
          "SELECT l.fence FROM {S}.leases l JOIN {S}.tasks t ON t.id = $2 AND t.fence = l.fence
           WHERE l.session_id = $1 AND (l.task_id IS NULL OR l.task_id = $2) FOR UPDATE OF l",
          &[&session_id, &task_id],
        )
        .await?
        .map(|r| r.get(0)),
    )
  }

  /// Extends a held lease by `ttl` from the database's now. Returns false when the lease is no
  /// longer this task's (another task took it over under a newer fence, or it was released).
  pub fn renew_lease(&self, session_id: &str, task_id: &str, ttl: Duration) -> Result<bool> {
    let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as f64;
    self.tx(async |tx| {
      let n = self
        .exec(
          tx,
          "UPDATE {S}.leases l SET expires_at = now() + $3 * interval '1 millisecond'
           FROM {S}.tasks t WHERE l.session_id = $1 AND l.task_id = $2 AND t.id = l.task_id AND t.fence = l.fence",
          &[&session_id, &task_id, &ttl_ms],
        )
        .await?;
      Ok(n == 1)
    })
  }

  /// Ends a task: its row, the session's totals, the context snapshot and (unless
  /// `end.keep_lease`) the lease, in one transaction — fenced: refused with `STORE_ERROR`,
  /// writing nothing, when another task has taken the session's lease over meanwhile.
  pub fn finish_task(&self, session_id: &str, task_id: &str, end: &TaskEnd, cli_cost_watermark: Option<f64>) -> Result<()> {
    let u = &end.usage;
    let (input, output, cache_read, cache_creation) =
      (u.input_tokens as i64, u.output_tokens as i64, u.cache_read_input_tokens as i64, u.cache_creation_input_tokens as i64);
    let turns = end.turns.map(|t| t as i64);
    let api_ms = end.duration_api_ms.map(|t| t as i64);
    self.tx(async |tx| {
      if self.held_fence(tx, session_id, task_id).await?.is_none() {
        return Err(Error::store(format!(
          "task {task_id} no longer holds the lease of session {session_id} (another task took it over); its end was not recorded"
        )));
      }
      self
        .exec(
          tx,
          "UPDATE {S}.tasks SET status = $2, ended_at = {NOW}, model = COALESCE($3, model), turns = $4,
             input_tokens = $5, output_tokens = $6, cache_read_tokens = $7, cache_creation_tokens = $8,
             cost_usd = $9, cli_reported_cost_usd = $10, duration_api_ms = $11, error_code = $12,
             error_message = $13, cli_version = $14
           WHERE id = $1",
          &[
            &task_id,
            &end.status,
            &end.model,
            &turns,
            &input,
            &output,
            &cache_read,
            &cache_creation,
            &end.cost_usd,
            &end.cli_reported_cost_usd,
            &api_ms,
            &end.error_code,
            &end.error_message,
            &end.cli_version,
          ],
        )
        .await?;
      self
        .exec(
          tx,
          "UPDATE {S}.sessions SET task_count = task_count + 1, total_cost_usd = total_cost_usd + $2,
             input_tokens = input_tokens + $3, output_tokens = output_tokens + $4,
             cache_read_tokens = cache_read_tokens + $5, cache_creation_tokens = cache_creation_tokens + $6,
             last_active_at = {NOW}, updated_at = {NOW}, materialized = materialized OR $7,
             cli_cost_watermark = COALESCE($8, cli_cost_watermark)
           WHERE id = $1",
          &[&session_id, &end.cost_usd, &input, &output, &cache_read, &cache_creation, &end.materialized, &cli_cost_watermark],
        )
        .await?;
      if let Some(ctx) = &end.context {
        self
          .exec(
            tx,
            "UPDATE {S}.sessions SET context_tokens = $2, context_window = $3, context_source = $4, context_measured_at = $5
             WHERE id = $1",
            &[&session_id, &(ctx.tokens as i64), &(ctx.window as i64), &ctx.source, &ctx.measured_at],
          )
          .await?;
      }
      if let Some((model, window)) = &end.window {
        self
          .exec(
            tx,
            "INSERT INTO {S}.model_windows (model, context_window, updated_at) VALUES ($1, $2, {NOW})
             ON CONFLICT (model) DO UPDATE SET context_window = EXCLUDED.context_window, updated_at = EXCLUDED.updated_at",
            &[model, &(*window as i64)],
          )
          .await?;
      }
      for c in &end.compactions {
        self
          .exec(
            tx,
            "INSERT INTO {S}.compactions (session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
              &c.session_id,
              &c.task_id,
              &c.trigger,
              &c.pre_tokens.map(|t| t as i64),
              &c.post_tokens.map(|t| t as i64),
              &c.started_at,
              &c.duration_ms.map(|t| t as i64),
            ],
          )
          .await?;
      }
      if !end.keep_lease {
        self.release_in(tx, session_id, task_id).await?;
      }
      Ok(())
    })
  }

  async fn release_in(&self, tx: &Transaction<'_>, session_id: &str, task_id: &str) -> Result<()> {
    // The row stays (its fence must keep growing); only the holder goes.
    self
      .exec(tx, "UPDATE {S}.leases SET task_id = NULL, expires_at = now() WHERE session_id = $1 AND task_id = $2", &[&session_id, &task_id])
      .await?;
    Ok(())
  }

  /// Frees the lease a task kept past its end.
  pub fn release_lease(&self, session_id: &str, task_id: &str) -> Result<()> {
    self.tx(async |tx| self.release_in(tx, session_id, task_id).await)
  }

  /// Marks `running` tasks whose holder is gone as `interrupted` and frees their leases: tasks
  /// of this node's dead processes at once, any task (of any node) whose lease expired. Returns
  /// how many tasks were marked.
  pub fn recover_interrupted(&self, is_alive: &dyn Fn(u32) -> bool) -> Result<u64> {
    self.tx(async |tx| {
      let running = self
        .query(
          tx,
          "SELECT t.id, t.session_id, t.owner_pid, t.host_id,
             COALESCE(l.task_id = t.id AND l.expires_at > now(), false)
           FROM {S}.tasks t LEFT JOIN {S}.leases l ON l.session_id = t.session_id
           WHERE t.status = 'running' FOR UPDATE OF t",
          &[],
        )
        .await?;
      let mut n = 0;
      for r in &running {
        let (task_id, session_id, pid, node, live): (String, String, i64, String, bool) =
          (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let dead = !live || (node == self.host && !is_alive(pid as u32));
        if dead {
          self
            .exec(
              tx,
              "UPDATE {S}.tasks SET status = 'interrupted', ended_at = {NOW}, error_code = 'INTERRUPTED', error_message = $2
               WHERE id = $1",
              &[&task_id, &INTERRUPTED],
            )
            .await?;
          self.release_in(tx, &session_id, &task_id).await?;
          self.exec(tx, "UPDATE {S}.sessions SET updated_at = {NOW}, task_count = task_count + 1 WHERE id = $1", &[&session_id]).await?;
          n += 1;
        }
      }
      // A lease kept past its task's end (the CLI was exiting) by a process of this node that
      // died since.
      let kept = self
        .query(
          tx,
          "SELECT l.session_id, l.task_id, l.owner_pid FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id
           WHERE t.status != 'running' AND l.host_id = $1",
          &[&self.host],
        )
        .await?;
      for r in &kept {
        let (session_id, task_id, pid): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        if !is_alive(pid as u32) {
          self.release_in(tx, &session_id, &task_id).await?;
        }
      }
      Ok(n)
    })
  }

  /// Tasks of a session, oldest first.
  pub fn list_tasks(&self, session_id: &str) -> Result<Vec<TaskRecord>> {
    self.read(async |c| {
      let rows = self
        .query(
          c,
          "SELECT id, session_id, status, kind, started_at, ended_at, model, turns, input_tokens, output_tokens,
             cache_read_tokens, cache_creation_tokens, cost_usd, error_code, error_message, cli_version
           FROM {S}.tasks WHERE session_id = $1 ORDER BY started_at, seq",
          &[&session_id],
        )
        .await?;
      Ok(
        rows
          .iter()
          .map(|r| TaskRecord {
            id: r.get(0),
            session_id: r.get(1),
            status: r.get(2),
            kind: r.get(3),
            started_at: r.get(4),
            ended_at: r.get(5),
            model: r.get(6),
            turns: r.get::<_, Option<i64>>(7).map(|t| t as u64),
            usage: Usage {
              input_tokens: r.get::<_, i64>(8) as u64,
              output_tokens: r.get::<_, i64>(9) as u64,
              cache_read_input_tokens: r.get::<_, i64>(10) as u64,
              cache_creation_input_tokens: r.get::<_, i64>(11) as u64,
            },
            cost_usd: r.get(12),
            error_code: r.get(13),
            error_message: r.get(14),
            cli_version: r.get(15),
          })
          .collect(),
      )
    })
  }

  /// The fence of a task (the lease generation it ran under), for tests and diagnostics.
  pub fn task_fence(&self, task_id: &str) -> Result<Option<i64>> {
    self.read(async |c| Ok(self.opt(c, "SELECT fence FROM {S}.tasks WHERE id = $1", &[&task_id]).await?.and_then(|r| r.get(0))))
  }

  // ---- the context meter ------------------------------------------------------------------

  /// The last context window reported for a model, if any.
  pub fn window_for(&self, model: &str) -> Result<Option<u64>> {
    self.read(async |c| {
      Ok(self.opt(c, "SELECT context_window FROM {S}.model_windows WHERE model = $1", &[&model]).await?.map(|r| r.get::<_, i64>(0) as u64))
    })
  }

  /// Compactions of a session, oldest first.
  pub fn list_compactions(&self, session_id: &str) -> Result<Vec<Compaction>> {
    self.read(async |c| {
      let rows = self
        .query(
          c,
          "SELECT session_id, task_id, trigger, pre_tokens, post_tokens, started_at, duration_ms
           FROM {S}.compactions WHERE session_id = $1 ORDER BY started_at, id",
          &[&session_id],
        )
        .await?;
      Ok(
        rows
          .iter()
          .map(|r| Compaction {
            session_id: r.get(0),
            task_id: r.get(1),
            trigger: r.get(2),
            pre_tokens: r.get::<_, Option<i64>>(3).map(|t| t as u64),
            post_tokens: r.get::<_, Option<i64>>(4).map(|t| t as u64),
            started_at: r.get(5),
            duration_ms: r.get::<_, Option<i64>>(6).map(|t| t as u64),
          })
          .collect(),
      )
    })
  }
}

/// A connection failure's detail: the server's message for a database error, else the error
/// and its causes (tokio-postgres' own text names no password).
fn pg_detail(e: &tokio_postgres::Error) -> String {
  if let Some(db) = e.as_db_error() {
    return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
  }
  let mut msg = e.to_string();
  let mut source = std::error::Error::source(e);
  while let Some(s) = source {
    msg = format!("{msg}: {s}");
    source = s.source();
  }
  msg
}

fn session_from_row(r: &Row) -> Session {
  let context_tokens: Option<i64> = r.get(17);
  let context = context_tokens.map(|tokens| ContextSnapshot {
    tokens: tokens as u64,
    window: r.get::<_, Option<i64>>(18).unwrap_or(0) as u64,
    source: r.get::<_, Option<String>>(19).unwrap_or_else(|| "estimate".into()),
    measured_at: r.get::<_, Option<i64>>(20).unwrap_or(0),
  });
  Session {
    id: r.get(0),
    project_id: r.get(1),
    user_id: r.get(2),
    status: r.get(3),
    parent_id: r.get(4),
    title: r.get(5),
    model: r.get(6),
    working_directory: r.get(7),
    created_at: r.get(8),
    updated_at: r.get(9),
    last_active_at: r.get(10),
    task_count: r.get::<_, i64>(11) as u64,
    total_cost_usd: r.get(12),
    usage: Usage {
      input_tokens: r.get::<_, i64>(13) as u64,
      output_tokens: r.get::<_, i64>(14) as u64,
      cache_read_input_tokens: r.get::<_, i64>(15) as u64,
      cache_creation_input_tokens: r.get::<_, i64>(16) as u64,
    },
    context,
    materialized: r.get(21),
    cli_cost_watermark: r.get(22),
    config_dir: r.get(23),
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn urls_drop_prisma_parameters_and_keep_the_password_out_of_sight() {
    let p = parse_url("postgresql://app:s3cret@db.example:6543/main?schema=public&connection_limit=3&pgbouncer=true&pool_timeout=2&sslmode=require&application_name=x").unwrap();
    assert!(p.tls);
    assert_eq!(p.pool_size, 3);
    assert_eq!(p.pool_timeout, Duration::from_secs(2));
    assert_eq!(p.shown, "postgresql://app@db.example:6543/main");
    assert!(!p.shown.contains("s3cret"));
    assert_eq!(p.config.get_application_name(), Some("x"));
    assert!(!p.cache_statements, "pgbouncer=true: no statements kept across transactions");
    assert!(!parse_url("postgres://u@h/db?statement_cache_size=0").unwrap().cache_statements);
    let p = parse_url("postgres://u@localhost/db").unwrap();
    assert!(p.cache_statements);
    assert!(!p.tls);
    assert_eq!(p.pool_size, 8);
    assert_eq!(p.config.get_connect_timeout(), Some(&Duration::from_secs(10)));
    for bad in ["postgresql://u:pw@h/db?connection_limit=0", "postgresql://u:pw@h/db?sslmode=bogus", "postgresql://u:pw@h:notaport/db"] {
      let e = parse_url(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
      assert!(!e.message.contains("pw@"), "{}", e.message);
    }
    assert_eq!(percent_decode("a%20b%2Fc+d%zz%4"), "a b/c+d%zz%4");
  }

  #[test]
  fn lost_connections_are_told_apart_from_failed_statements() {
    let e = |m: &str| Error::store(format!("{PG_PREFIX}{m}"));
    assert!(connection_lost(&e("FATAL 57P01: terminating connection due to administrator command")));
    assert!(connection_lost(&e("FATAL 08006: connection failure")));
    assert!(connection_lost(&e("connection closed")));
    assert!(!connection_lost(&e("ERROR 23505: duplicate key value violates unique constraint")));
    assert!(!connection_lost(&e("ERROR 40001: could not serialize access")));
    assert!(!connection_lost(&Error::store("FATAL 57P01 elsewhere")));
  }

  #[test]
  fn schema_names_are_plain_identifiers() {
    for ok in ["claude_sessions", "_x", "a1"] {
      assert!(validate_schema(ok).is_ok(), "{ok}");
    }
    for bad in ["", "A", "1a", "a-b", "a\"b", "pg_catalog", &"a".repeat(64)] {
      assert!(validate_schema(bad).is_err(), "{bad}");
    }
  }

  #[test]
  fn postgres_urls_are_recognised() {
    assert!(is_postgres_url("postgres://x"));
    assert!(is_postgres_url("PostgreSQL://x"));
    assert!(!is_postgres_url("/var/db/sessions.db"));
    assert!(!is_postgres_url("sqlite:x"));
    assert!(!is_postgres_url("postgres"));
  }
}
