//! The PostgreSQL session store: one database shared by several nodes (servers).
//!
//! **Driver.** `tokio-postgres` with a `deadpool-postgres` pool, async all the way: every method
//! is a future the manager awaits on its own runtime (`Store::call`), with its borrowed arguments
//! (no `'static` copies). The connections are opened and driven on a small runtime of the store's
//! own (one worker thread, `OnRuntime` below), so a pooled connection serves a caller on any
//! runtime; a thread that may block (a test, the addon's constructor) waits for a call with
//! [`crate::store::block_on`].
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
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{
  Backend, Begin, BranchPoint, Branches, Budgets, Compaction, ContextSnapshot, Inbox, ListQuery, Meter, NewSession, Session, Sessions,
  TaskEnd, TaskRecord, TaskStart, Tasks, Transcripts, Usage, WarmHolds,
};
use crate::error::{Error, ErrorCode, Result};

/// Runs `$body` (an expression of type `Result<Result<T>>`, with `$client` the pooled
/// connection) on a pooled connection, and again on another one (up to [`TX_ATTEMPTS`] times in
/// all, or the pool's size plus one) when it failed because that connection turned out dropped.
/// `$body` answers `Err` for a failure before anything could have been committed (retried if the
/// connection was lost), `Ok` with the outcome to return as it is. Every pooled connection may
/// have been dropped at once (a restart): each is tried at most once, and a dropped one leaves
/// the pool for good.
///
/// A macro, not a function taking an async closure: the body stays inline in the calling
/// `async fn`, whose future the compiler can then prove `Send` (a generic helper holding a
/// closure's future across its awaits cannot be, for every lifetime, on stable Rust).
macro_rules! on_connection {
  ($store:expr, |$client:ident| $body:expr) => {{
    let store: &PgStore = $store;
    let mut attempt = 1;
    loop {
      #[allow(unused_mut)]
      let mut $client = match store.client().await {
        Ok(c) => c,
        Err(e) => break Err(store.scrub(e)),
      };
      let run: Result<Result<_>> = async { $body }.await;
      match run {
        Ok(outcome) => break outcome.map_err(|e| store.scrub(e)),
        Err(e) if store.retry(&$client, &e, attempt) => {
          drop(deadpool_postgres::Object::take($client));
          attempt += 1
        }
        Err(e) => break Err(store.scrub(e)),
      }
    }
  }};
}

/// Runs `$body` (a `Result<T>`, with `$tx` the transaction) in one transaction on a pooled
/// connection; commits when it is `Ok`.
///
/// A pooled connection the server has dropped (a restart, a failover, an idle timeout of a
/// proxy) is found out only when used. When the connection turns out closed before the COMMIT
/// was sent, nothing of the transaction happened, so it runs again on a fresh connection (see
/// [`on_connection!`]). A connection lost during the COMMIT itself is not retried: the outcome is
/// unknown, and the caller gets the error.
macro_rules! tx {
  ($store:expr, |$tx:ident| $body:expr) => {
    on_connection!($store, |client| {
      let transaction = client.transaction().await.map_err(pg)?;
      let out = {
        let $tx = &transaction;
        let out: Result<_> = async { $body }.await;
        out?
      };
      // Final either way: a COMMIT whose connection was lost may or may not have happened.
      Ok(transaction.commit().await.map(|()| out).map_err(pg))
    })
  };
}

/// Runs `$body` (a `Result<T>`, with `$c` the connection), one statement, on a pooled connection
/// without a transaction around it, after `$begin` when statements are not cached (see
/// [`read!`]). Every failure may run again on a fresh connection.
macro_rules! one_statement {
  ($store:expr, $begin:expr, |$c:ident| $body:expr) => {{
    let wrap = !$store.cache_statements;
    on_connection!($store, |client| {
      if wrap {
        client.batch_execute($begin).await.map_err(pg)?;
      }
      let out = {
        let $c: &deadpool_postgres::Client = &client;
        let out: Result<_> = async { $body }.await;
        out
      };
      if wrap {
        match &out {
          Ok(_) => client.batch_execute("COMMIT").await.map_err(pg)?,
          Err(_) => {
            let _ = client.batch_execute("ROLLBACK").await;
          }
        }
      }
      // A read changes nothing, an idempotent write nothing more: every failure may run again on
      // a fresh connection.
      out.map(Ok)
    })
  }};
}

/// Runs `$body`, a read of one statement, on a pooled connection without a transaction around it
/// (a statement is atomic on its own): one round trip with the statement cache, where [`tx!`]
/// takes three (BEGIN, the statement, COMMIT). Behind PgBouncer (`pgbouncer=true`) a statement's
/// preparation and execution must share a server connection, so it runs in a read-only
/// transaction there. Retried on a dropped connection, as `tx!`.
macro_rules! read {
  ($store:expr, |$c:ident| $body:expr) => {
    one_statement!($store, "BEGIN READ ONLY", |$c| $body)
  };
}

/// Runs `$body`, one statement that writes but may run twice with the same outcome (the ledger's
/// `admit_call`, keyed by the call), as [`read!`] does: one round trip, run again on a fresh
/// connection when the connection was lost, whether or not the first run committed.
macro_rules! idempotent {
  ($store:expr, |$c:ident| $body:expr) => {
    one_statement!($store, "BEGIN", |$c| $body)
  };
}

mod branches;
mod budgets;
mod doorbell;
mod events;
mod file_backups;
mod inbox;
mod leases;
mod listen;
mod meter;
mod schema;
mod sessions;
mod transcripts;
mod url;
mod warm_holds;

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

use schema::MIGRATIONS;
pub use schema::PG_SCHEMA_VERSION;

/// The database clock in milliseconds since the epoch (the transaction's start).
const NOW_MS: &str = "(floor(extract(epoch from now()) * 1000))::bigint";

const SESSION_COLUMNS: &str = "id, project_id, user_id, status, parent_id, title, model, working_directory, \
  created_at, updated_at, last_active_at, task_count, total_cost_usd, input_tokens, output_tokens, \
  cache_read_tokens, cache_creation_tokens, context_tokens, context_window, context_source, \
  context_measured_at, materialized, cli_cost_watermark, config_dir, paused, lineage_id";

const INTERRUPTED: &str = "the process running this task stopped before it ended";

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

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

/// Opens the pool's connections on the store's own runtime, whichever runtime asked for one: the
/// socket and the task that drives it live there, so a connection serves callers on any runtime
/// (the addon's, a test's) and outlives none of them.
struct OnRuntime<T> {
  tls: T,
  rt: tokio::runtime::Handle,
}

impl<T> deadpool_postgres::Connect for OnRuntime<T>
where
  T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Sync + Send + 'static,
  T::Stream: Sync + Send,
  T::TlsConnect: Sync + Send,
  <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
  fn connect(
    &self,
    config: &tokio_postgres::Config,
  ) -> std::pin::Pin<
    Box<dyn Future<Output = std::result::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>> + Send + '_>,
  > {
    let (tls, config) = (self.tls.clone(), config.clone());
    let opened = self.rt.spawn(async move {
      let (client, connection) = config.connect(tls).await?;
      // Ends with an error when the server goes; the pool finds the client closed then.
      let driver = tokio::spawn(async move {
        let _ = connection.await;
      });
      Ok((client, driver))
    });
    Box::pin(async move {
      match opened.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime shuts down only when the store is dropped, which no call in
        // flight (holding the store) lets happen.
        Err(_) => unreachable!("the PostgreSQL store's runtime stopped during a call"),
      }
    })
  }
}

use url::parse_url;
#[cfg(test)]
use url::percent_decode;
pub use url::{is_postgres_url, validate_schema};
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
  /// Added to the database clock by the spend caps (`Budgets::shift_budget_clock`, for tests).
  budget_clock_ms: std::sync::atomic::AtomicI64,
  /// The `LISTEN`/`NOTIFY` channel of this schema (`events.rs`): its name.
  channel: String,
  /// The connection settings, for the listening connection (`listen.rs`).
  connect: Box<listen::Connect>,
  /// Set once a subscriber started the listening connection.
  notices: std::sync::OnceLock<()>,
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
    let mut connect = listen::Connect { config: parsed.config.clone(), tls: None };
    let manager = if parsed.tls {
      let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
      let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
      connect.tls = Some(tls.clone());
      let on = OnRuntime { tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls), rt: rt.handle().clone() };
      Manager::from_connect(parsed.config, on, mcfg)
    } else {
      Manager::from_connect(parsed.config, OnRuntime { tls: tokio_postgres::NoTls, rt: rt.handle().clone() }, mcfg)
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
      budget_clock_ms: Default::default(),
      // The schema's name is a valid channel name of its own (an identifier of at most 63 bytes).
      channel: schema.to_owned(),
      connect: Box::new(connect),
      notices: std::sync::OnceLock::new(),
    };
    super::block_on(store.migrate(schema))?;
    Ok(store)
  }

  /// Starts the listening connection (`listen.rs`) once; its notices go to `bus`.
  pub(crate) fn listen(&self, bus: &tokio::sync::broadcast::Sender<crate::store::Notice>) {
    let Some(rt) = self.rt.as_ref() else { return };
    let _entered = rt.enter();
    self.notices.get_or_init(|| listen::start((*self.connect).clone(), self.channel.clone(), bus.clone()));
  }

  /// What names this store to every node (the channels of `redisUrl`): the database's name and
  /// the schema.
  pub(crate) fn shared_name(&self) -> String {
    format!("postgres:{}:{}", self.connect.config.get_dbname().unwrap_or(""), self.channel)
  }

  /// What names this store in the process's doorbell channels: the database and schema.
  pub(crate) fn scope(&self) -> String {
    format!("postgres:{}:{}", self.shown, self.channel)
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

  fn sql(&self, sql: &str) -> String {
    sql.replace("{S}", &self.schema).replace("{NOW}", NOW_MS)
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

  /// Whether a failed attempt on `client` may run again on another connection (see [`on_connection!`]).
  fn retry(&self, client: &deadpool_postgres::Object, e: &Error, attempt: u32) -> bool {
    (client.is_closed() || connection_lost(e)) && attempt < TX_ATTEMPTS.max(self.pool.status().max_size as u32 + 1)
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

  async fn migrate(&self, schema: &str) -> Result<()> {
    let lock_key = format!("claude-session-manager:{schema}");
    tx!(self, |tx| {
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
}

/// PostgreSQL is shared by several nodes: it keeps the transcripts (`transcripts.rs`).
#[async_trait::async_trait]
impl Backend for PgStore {
  /// The schema version of the database.
  async fn schema_version(&self) -> Result<i64> {
    read!(self, |c| Ok(self.opt(c, "SELECT version FROM {S}.schema_version", &[]).await?.map(|r| r.get(0)).unwrap_or(0)))
  }
  fn transcripts(&self) -> Option<&dyn Transcripts> {
    Some(self)
  }
  fn file_backups(&self) -> Option<&dyn super::FileBackups> {
    Some(self)
  }
  fn name(&self) -> &'static str {
    "postgres"
  }
  /// The session's `INSERT` goes out first in the start's flight (`PgStore::start_in`).
  async fn create_and_start(&self, new: &NewSession, start: &TaskStart<'_>) -> Result<crate::store::Start> {
    self.start_in(&new.id, Some(&new.user_id), start, Some(new)).await
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
    paused: r.get(24),
    lineage_id: crate::store::lineage_or_self(r.get(25), r.get(0)),
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
