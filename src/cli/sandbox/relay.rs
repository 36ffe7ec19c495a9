//! The server's end of a sandbox's network: the listener made inside the sandbox's network
//! namespace (see `process::confine`), accepted on here and relayed to the key proxy.
//!
//! At most `max_connections` connections are relayed at once per sandbox; further ones are closed
//! as they arrive, so an agent cannot hold more than that many of the server's descriptors (two
//! per connection). The relay ends when its guard is dropped (with the CLI's process).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Connections relayed at once per sandbox, by default.
pub const MAX_CONNECTIONS: usize = 32;

/// Stops the relay (and every connection it carries) when dropped.
pub struct RelayGuard {
  task: tokio::task::JoinHandle<()>,
}

impl RelayGuard {
  pub(crate) fn new(task: tokio::task::JoinHandle<()>) -> RelayGuard {
    RelayGuard { task }
  }
}

impl Drop for RelayGuard {
  fn drop(&mut self) {
    self.task.abort();
  }
}

/// Accepts on `listener` (a listening TCP socket) and relays each connection to `target`.
pub fn start(listener: OwnedFd, target: SocketAddr, max_connections: usize) -> std::io::Result<RelayGuard> {
  let std_listener = std::net::TcpListener::from(listener);
  std_listener.set_nonblocking(true)?;
  let listener = TcpListener::from_std(std_listener)?;
  let task = tokio::spawn(async move {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    loop {
      tokio::select! {
        accepted = listener.accept() => {
          let Ok((inside, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
          };
          let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(inside);
            continue;
          };
          conns.spawn(async move {
            let _permit = permit;
            let Ok(mut outside) = TcpStream::connect(target).await else { return };
            let mut inside = inside;
            let _ = inside.set_nodelay(true);
            let _ = outside.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
          });
        }
        Some(_) = conns.join_next(), if !conns.is_empty() => {}
      }
    }
  });
  Ok(RelayGuard { task })
}
