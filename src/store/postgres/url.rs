//! PostgreSQL connection URLs: libpq's and Prisma's parameters (see the module comment of
//! `postgres/mod.rs`), and the schema name.

use super::*;

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
  let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
  lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// A connection string made ready for tokio-postgres, and what it said for the pool.
pub(super) struct Parsed {
  pub(super) config: tokio_postgres::Config,
  pub(super) tls: bool,
  pub(super) pool_size: usize,
  pub(super) pool_timeout: Duration,
  /// Whether statements may be prepared once per connection (not behind PgBouncer).
  pub(super) cache_statements: bool,
  /// The target without credentials, for messages.
  pub(super) shown: String,
}

pub(super) fn percent_decode(s: &str) -> String {
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
pub(super) fn parse_url(url: &str) -> Result<Parsed> {
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
