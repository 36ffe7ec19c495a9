//! The sandbox's way out to the web, when the host allows it (`sandboxNetwork.allowDomains`): an
//! HTTP `CONNECT` proxy on a second listener in the sandbox's network namespace (the CLI and
//! its tools get `HTTPS_PROXY` pointing at it), which opens a tunnel only to an allowed host
//! name and port. The decision is made here, by name, on what the client asks for: nothing the
//! agent sends decides where the server connects but that name, and an IP literal or another
//! host is refused (`403`); a name that resolves to the host itself or a private network is
//! refused too (`502`), unless the entry is `localhost`. At most [`super::relay::MAX_CONNECTIONS`] tunnels at once.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::relay::RelayGuard;
use crate::error::{Error, Result};

/// The port of the egress listener inside the sandbox.
pub const PORT: u16 = 3128;

/// One allowed destination: a host name (or `*.` and a domain: any name below it) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
  host: String,
  wildcard: bool,
  port: u16,
}

impl Allowed {
  /// `example.com`, `*.example.com`, `example.com:8443` (port 443 unless given).
  pub fn parse(entry: &str) -> Result<Allowed> {
    let bad = || {
      Error::invalid(format!("sandboxNetwork.allowDomains entry {entry:?} must be a host name, '*.' and a domain, with an optional :port"))
    };
    let (name, port) = match entry.rsplit_once(':') {
      Some((n, p)) => (n, p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
      None => (entry, 443),
    };
    let (wildcard, host) = match name.strip_prefix("*.") {
      Some(h) => (true, h),
      None => (false, name),
    };
    let host = host.to_ascii_lowercase();
    let label_ok =
      |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-');
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
      return Err(bad());
    }
    Ok(Allowed { host, wildcard, port })
  }

  fn admits(&self, host: &str, port: u16) -> bool {
    port == self.port
      && match self.wildcard {
        false => host == self.host,
        true => host.strip_suffix(&self.host).is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
      }
  }
}

/// Reads a `CONNECT host:port HTTP/1.x` request head (at most 8 KiB, within 10 s).
async fn read_head(s: &mut TcpStream) -> Option<(String, u16)> {
  let mut buf = Vec::with_capacity(512);
  let read = async {
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
      let n = s.read(&mut chunk).await.ok()?;
      if n == 0 || buf.len() + n > 8192 {
        return None;
      }
      buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
  };
  tokio::time::timeout(Duration::from_secs(10), read).await.ok()??;
  let head = std::str::from_utf8(&buf).ok()?;
  let line = head.split("\r\n").next()?;
  let mut parts = line.split(' ');
  let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
  if method != "CONNECT" || !version.starts_with("HTTP/1.") || parts.next().is_some() {
    return None;
  }
  let (host, port) = target.rsplit_once(':')?;
  Some((host.to_ascii_lowercase(), port.parse().ok()?))
}

/// Serves `CONNECT` to the `allowed` destinations on `listener` until the guard drops.
pub fn start(listener: OwnedFd, allowed: Arc<Vec<Allowed>>) -> std::io::Result<RelayGuard> {
  let std_listener = std::net::TcpListener::from(listener);
  std_listener.set_nonblocking(true)?;
  let listener = TcpListener::from_std(std_listener)?;
  let task = tokio::spawn(async move {
    let slots = Arc::new(Semaphore::new(super::relay::MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
      tokio::select! {
        accepted = listener.accept() => {
          let Ok((mut inside, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
          };
          let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
          let allowed = allowed.clone();
          conns.spawn(async move {
            let _permit = permit;
            let Some((host, port)) = read_head(&mut inside).await else {
              let _ = inside.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
              return;
            };
            if !allowed.iter().any(|a| a.admits(&host, port)) {
              let _ = inside.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
              return;
            }
            // A name that resolves to the host itself or a private network is not the web (a
            // DNS answer the agent controls, for a wildcard entry): refused, unless the host
            // listed `localhost` itself.
            let local_ok = host == "localhost";
            let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
              Ok(a) => a.filter(|a| local_ok || public(a.ip())).collect(),
              Err(_) => vec![],
            };
            let Ok(Ok(mut outside)) = tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(&addrs[..])).await else {
              let _ = inside.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
              return;
            };
            if inside.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_ok() {
              let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
            }
          });
        }
        Some(_) = conns.join_next(), if !conns.is_empty() => {}
      }
    }
  });
  Ok(RelayGuard::new(task))
}

/// Not loopback, private, link-local (the metadata address), shared, unspecified or multicast.
fn public(ip: std::net::IpAddr) -> bool {
  match ip {
    std::net::IpAddr::V4(v) => {
      let o = v.octets();
      !(v.is_loopback()
        || v.is_private()
        || v.is_link_local()
        || v.is_unspecified()
        || v.is_multicast()
        || v.is_broadcast()
        || (o[0] == 100 && (64..128).contains(&o[1])))
    }
    std::net::IpAddr::V6(v) => {
      let seg = v.segments();
      !(v.is_loopback() || v.is_unspecified() || v.is_multicast() || (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfe80)
        && v.to_ipv4_mapped().is_none_or(|m| public(std::net::IpAddr::V4(m)))
    }
  }
}

#[cfg(test)]
mod tests {
  use super::Allowed;

  #[test]
  fn entries_admit_their_name_and_port_only() {
    let a = Allowed::parse("Example.com").unwrap();
    assert!(a.admits("example.com", 443) && !a.admits("example.com", 80) && !a.admits("evil-example.com", 443));
    assert!(!a.admits("sub.example.com", 443));
    let w = Allowed::parse("*.example.com:8443").unwrap();
    assert!(w.admits("a.b.example.com", 8443) && !w.admits("example.com", 8443) && !w.admits("aexample.com", 8443));
    assert!(!super::public("127.0.0.1".parse().unwrap()) && !super::public("169.254.169.254".parse().unwrap()));
    assert!(!super::public("::ffff:10.0.0.1".parse().unwrap()) && super::public("93.184.216.34".parse().unwrap()));
    for bad in ["", "1.2.3.4", "exa mple.com", "example.com:0", "example.com:99999", "-x.com", "*.", "a..b", "host:port"] {
      assert!(Allowed::parse(bad).is_err(), "{bad:?}");
    }
    // Label and name lengths at their bounds; a wildcard needs a whole label before the domain.
    let label = "a".repeat(63);
    assert!(Allowed::parse(&format!("{label}.com")).is_ok() && Allowed::parse(&format!("a{label}.com")).is_err());
    let long = std::iter::repeat_n("a".repeat(49), 5).collect::<Vec<_>>().join(".");
    assert!(
      Allowed::parse(&long).is_ok() && Allowed::parse(&format!("a{long}")).is_ok() && Allowed::parse(&format!("{long}.abcd")).is_err()
    );
    assert!(!w.admits(".example.com", 8443));
  }

  #[test]
  fn only_the_public_internet_is_public() {
    let public = |a: &str| super::public(a.parse().unwrap());
    for a in ["93.184.216.34", "8.8.8.8", "100.63.255.255", "100.128.0.0", "2606:4700::1111", "::ffff:93.184.216.34"] {
      assert!(public(a), "{a} is public");
    }
    for a in [
      "127.0.0.1",
      "10.1.2.3",
      "172.16.0.1",
      "192.168.1.1",
      "169.254.169.254",
      "0.0.0.0",
      "224.0.0.1",
      "255.255.255.255",
      "100.64.0.1",
      "100.127.255.255",
      "::1",
      "::",
      "ff02::1",
      "fc00::1",
      "fd12:3456::1",
      "fe80::1",
      "febf::1",
      "::ffff:127.0.0.1",
      "::ffff:192.168.0.1",
    ] {
      assert!(!public(a), "{a} is not public");
    }
  }

  #[tokio::test]
  async fn a_connect_head_is_read_within_its_bounds() {
    use tokio::io::AsyncWriteExt;
    async fn head(bytes: Vec<u8>) -> Option<(String, u16)> {
      let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
      let addr = l.local_addr().unwrap();
      let client = tokio::spawn(async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = c.write_all(&bytes).await;
        let _ = c.shutdown().await;
        c
      });
      let (mut s, _) = l.accept().await.unwrap();
      let got = super::read_head(&mut s).await;
      drop(client.await);
      got
    }
    assert_eq!(head(b"CONNECT Example.com:8443 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await, Some(("example.com".into(), 8443)));
    assert_eq!(head(b"CONNECT a.io:443 HTTP/1.0\r\n\r\n".to_vec()).await, Some(("a.io".into(), 443)));
    for bad in [
      &b"GET http://a.io/ HTTP/1.1\r\n\r\n"[..],
      b"CONNECT a.io:443 HTTP/2\r\n\r\n",
      b"CONNECT a.io:443 HTTP/1.1 extra\r\n\r\n",
      b"CONNECT a.io HTTP/1.1\r\n\r\n",
      b"CONNECT a.io:99999 HTTP/1.1\r\n\r\n",
      b"CONNECT a.io:443 HTTP/1.1\r\n",
    ] {
      assert_eq!(head(bad.to_vec()).await, None, "{:?}", String::from_utf8_lossy(bad));
    }
    // A head over 8 KiB is refused; one just under it is read.
    let padded = |n: usize| [&b"CONNECT a.io:443 HTTP/1.1\r\nX: "[..], &vec![b'x'; n], b"\r\n\r\n"].concat();
    let fits = 8192 - padded(0).len();
    assert_eq!(head(padded(fits)).await, Some(("a.io".into(), 443)));
    assert_eq!(head(padded(fits + 1)).await, None);
  }
}
