//! The store's one listening connection (`LISTEN` on [`PgStore`]'s channel), started with the
//! first subscriber and kept for the store's life: its notifications go to the process's channel
//! of the store (`store/doorbell.rs`), so to every subscriber; when
//! it drops, it is made again (backing off up to 2 s) and says [`Notice::Listening`] once it
//! listens again, so that subscribers read the store for what they may have missed. Its
//! `application_name` is `csm-listener`.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use crate::store::Notice;

/// How to open the listening connection.
#[derive(Clone)]
pub(super) struct Connect {
  pub(super) config: tokio_postgres::Config,
  pub(super) tls: Option<rustls::ClientConfig>,
}

/// Starts the listener on the current runtime; its notices go to `tx`'s subscribers.
pub(super) fn start(connect: Connect, channel: String, tx: broadcast::Sender<Notice>) {
  tokio::spawn(async move {
    let mut backoff = Duration::from_millis(50);
    loop {
      let mut config = connect.config.clone();
      config.application_name("csm-listener");
      let listened = match &connect.tls {
        Some(tls) => listen(&config, tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()), &channel, &tx).await,
        None => listen(&config, tokio_postgres::NoTls, &channel, &tx).await,
      };
      if listened {
        backoff = Duration::from_millis(50);
      }
      tokio::time::sleep(backoff).await;
      backoff = (backoff * 2).min(Duration::from_secs(2));
    }
  });
}

/// One listening connection, until it drops; whether it got to listen.
async fn listen<T>(config: &tokio_postgres::Config, tls: T, channel: &str, tx: &broadcast::Sender<Notice>) -> bool
where
  T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
  T::Stream: Send + 'static,
{
  let Ok((client, mut conn)) = config.connect(tls).await else { return false };
  let out = tx.clone();
  let driver = tokio::spawn(async move {
    while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
      if let AsyncMessage::Notification(n) = m {
        if let Some(notice) = Notice::parse(n.payload()) {
          let _ = out.send(notice);
        }
      }
    }
  });
  if client.batch_execute(&format!("LISTEN \"{channel}\"")).await.is_err() {
    driver.abort();
    return false;
  }
  let _ = tx.send(Notice::Listening);
  let _ = driver.await;
  true
}
