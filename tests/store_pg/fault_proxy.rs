//! A fault-injecting TCP proxy in front of PostgreSQL, for the store tests: it forwards every
//! connection to the server and, when armed, cuts one:
//!
//! - **at COMMIT**: the client's `COMMIT` is forwarded, the server runs it and answers, and the
//!   connection is closed before that answer reaches the client (the transaction happened; the
//!   client cannot know);
//! - **in the middle of a result**: half of a `DataRow` is forwarded, then the connection closes;
//! - **on connect**: the connection is accepted and closed at once;
//! - **all at once**: every open connection is closed (a restart, a failover).
//!
//! It reads the protocol's framing only (a type byte and a length); an encrypted connection
//! (the server accepted `SSLRequest`) is forwarded untouched, without faults.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// What to do to the next connections, and what was done (for the tests' controls).
#[derive(Default)]
pub struct Faults {
  /// Cut the connection of each of the next N `COMMIT`s, after the server answered it.
  pub cut_commits: AtomicU32,
  /// Cut each of the next N results in the middle of a data row.
  pub cut_mid_results: AtomicU32,
  /// Close each of the next N connections as soon as they are accepted.
  pub refuse_connects: AtomicU32,
  /// How many faults of each kind happened.
  pub commits_cut: AtomicU32,
  pub results_cut: AtomicU32,
  pub connects_refused: AtomicU32,
  /// Connections accepted (refused ones included).
  pub connections: AtomicU32,
}

fn take(n: &AtomicU32) -> bool {
  n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1)).is_ok()
}

pub struct FaultProxy {
  pub addr: SocketAddr,
  pub faults: Arc<Faults>,
  kill: tokio::sync::watch::Sender<u64>,
  _rt: tokio::runtime::Runtime,
}

impl FaultProxy {
  /// A proxy on `127.0.0.1:<free port>` forwarding to `upstream`.
  pub fn start(upstream: SocketAddr) -> FaultProxy {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let faults = Arc::new(Faults::default());
    let (kill, killed) = tokio::sync::watch::channel(0u64);
    let f = faults.clone();
    rt.spawn(async move {
      while let Ok((client, _)) = listener.accept().await {
        let (f, killed) = (f.clone(), killed.clone());
        tokio::spawn(async move {
          let _ = serve(client, upstream, f, killed).await;
        });
      }
    });
    FaultProxy { addr, faults, kill, _rt: rt }
  }

  /// `url` (a `postgresql://` URL of the upstream server) pointed at this proxy instead.
  pub fn url(&self, url: &str, upstream: SocketAddr) -> String {
    url.replacen(&upstream.to_string(), &self.addr.to_string(), 1)
  }

  /// Closes every open connection.
  pub fn drop_all(&self) {
    self.kill.send_modify(|g| *g += 1);
  }
}

/// The host and port of a `postgresql://user@host:port/db` URL (127.0.0.1:5432 by default).
pub fn upstream_of(url: &str) -> SocketAddr {
  let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
  let host_port = rest.split(['/', '?']).next().unwrap_or("");
  let host_port = host_port.rsplit_once('@').map(|(_, h)| h).unwrap_or(host_port);
  let with_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
  let with_port = with_port.replacen("localhost", "127.0.0.1", 1);
  with_port.parse().unwrap_or_else(|_| "127.0.0.1:5432".parse().unwrap())
}

async fn serve(
  client: TcpStream,
  upstream: SocketAddr,
  f: Arc<Faults>,
  mut killed: tokio::sync::watch::Receiver<u64>,
) -> std::io::Result<()> {
  f.connections.fetch_add(1, Ordering::SeqCst);
  if take(&f.refuse_connects) {
    f.connects_refused.fetch_add(1, Ordering::SeqCst);
    return Ok(());
  }
  let server = TcpStream::connect(upstream).await?;
  let (mut cr, mut cw) = client.into_split();
  let (mut sr, mut sw) = server.into_split();
  killed.borrow_and_update();
  // Untyped start-up messages: SSL/GSS requests (answered with one byte), then the StartupMessage.
  loop {
    let len = cr.read_u32().await?;
    let mut body = vec![0; (len as usize).saturating_sub(4)];
    cr.read_exact(&mut body).await?;
    sw.write_u32(len).await?;
    sw.write_all(&body).await?;
    let code = body.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(0);
    if code == 80877103 || code == 80877104 {
      let answer = sr.read_u8().await?;
      cw.write_u8(answer).await?;
      if answer != b'N' {
        // Encrypted from here: forwarded as it is.
        tokio::select! {
          _ = tokio::io::copy(&mut cr, &mut sw) => {}
          _ = tokio::io::copy(&mut sr, &mut cw) => {}
          _ = killed.changed() => {}
        }
        return Ok(());
      }
      continue;
    }
    break;
  }
  let commit_sent = Arc::new(AtomicU32::new(0));
  tokio::select! {
    _ = client_to_server(cr, sw, f.clone(), commit_sent.clone()) => {}
    _ = server_to_client(sr, cw, f, commit_sent) => {}
    _ = killed.changed() => {}
  }
  Ok(())
}

async fn read_message(r: &mut OwnedReadHalf) -> std::io::Result<(u8, Vec<u8>)> {
  let kind = r.read_u8().await?;
  let len = r.read_u32().await?;
  let mut body = vec![0; (len as usize).saturating_sub(4)];
  r.read_exact(&mut body).await?;
  Ok((kind, body))
}

async fn write_message(w: &mut OwnedWriteHalf, kind: u8, body: &[u8]) -> std::io::Result<()> {
  let mut out = Vec::with_capacity(body.len() + 5);
  out.push(kind);
  out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
  out.extend_from_slice(body);
  w.write_all(&out).await
}

async fn client_to_server(
  mut cr: OwnedReadHalf,
  mut sw: OwnedWriteHalf,
  f: Arc<Faults>,
  commit_sent: Arc<AtomicU32>,
) -> std::io::Result<()> {
  loop {
    let (kind, body) = read_message(&mut cr).await?;
    if kind == b'Q' {
      let sql = String::from_utf8_lossy(&body);
      if sql.trim_end_matches('\0').trim().trim_end_matches(';').eq_ignore_ascii_case("COMMIT") && take(&f.cut_commits) {
        commit_sent.store(1, Ordering::SeqCst);
      }
    }
    write_message(&mut sw, kind, &body).await?;
  }
}

async fn server_to_client(
  mut sr: OwnedReadHalf,
  mut cw: OwnedWriteHalf,
  f: Arc<Faults>,
  commit_sent: Arc<AtomicU32>,
) -> std::io::Result<()> {
  loop {
    let (kind, body) = read_message(&mut sr).await?;
    // The server's answer to a COMMIT marked for cutting: it committed; the client never hears it.
    if kind == b'C' && commit_sent.load(Ordering::SeqCst) == 1 && body.starts_with(b"COMMIT") {
      f.commits_cut.fetch_add(1, Ordering::SeqCst);
      return Ok(());
    }
    if kind == b'D' && take(&f.cut_mid_results) {
      let mut out = vec![kind];
      out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
      out.extend_from_slice(&body[..body.len() / 2]);
      cw.write_all(&out).await?;
      cw.flush().await?;
      f.results_cut.fetch_add(1, Ordering::SeqCst);
      return Ok(());
    }
    write_message(&mut cw, kind, &body).await?;
  }
}
