//! The doorbell on SQLite (what it is: `store/doorbell.rs`). A ring is a row of `notices`
//! (`seq` never reused, the payload of a [`Notice`]), written in the transaction of what it is
//! about when there is one. Other processes hear it through one reader thread per open store,
//! started with the first subscriber: while something in the process waits, on a connection of its
//! own, it reads the rows after the last one it saw every [`SQLITE_POLL`] (one indexed range read,
//! empty nearly always) and puts them on the process's channel. The table keeps the last [`KEEP`] rings; a reader that fell further
//! behind says [`Notice::Listening`] (its subscribers read the store).

use std::sync::{Arc, Weak};

use rusqlite::{params, OpenFlags};
use tokio::sync::broadcast;

use super::*;
use crate::error::Result;
use crate::store::doorbell::SQLITE_POLL;
use crate::store::{Doorbell, Notice};

/// How often the reader looks whether something waits, while nothing does.
const IDLE: Duration = Duration::from_millis(50);
/// How many rings the table keeps.
const KEEP: i64 = 4096;

/// Writes a ring in the transaction `tx`; every [`KEEP`]th ring prunes the old ones.
pub(super) fn ring_in(tx: &rusqlite::Transaction<'_>, notice: &Notice) -> Result<()> {
  let Some(payload) = notice.payload() else { return Ok(()) };
  exec(tx, "INSERT INTO notices (payload) VALUES (?1)", [payload])?;
  let seq = tx.last_insert_rowid();
  if seq % KEEP == 0 {
    exec(tx, "DELETE FROM notices WHERE seq <= ?1", [seq - KEEP])?;
  }
  Ok(())
}

#[async_trait::async_trait]
impl Doorbell for SqliteStore {
  async fn ring(&self, notice: &Notice) -> Result<()> {
    self.write(|tx| ring_in(tx, notice))
  }
}

impl SqliteStore {
  /// Starts this store's reader of other processes' rings (once), feeding `bus`.
  pub(crate) fn listen(&self, bus: &broadcast::Sender<Notice>) {
    self.listening.get_or_init(|| {
      let alive = Arc::new(());
      let (path, weak, bus) = (self.path.clone(), Arc::downgrade(&alive), bus.clone());
      let _ = std::thread::Builder::new().name("csm-sqlite-doorbell".into()).spawn(move || read_rings(&path, weak, &bus));
      alive
    });
  }
}

/// The reader's loop, until the store is dropped (`alive`).
fn read_rings(path: &Path, alive: Weak<()>, bus: &broadcast::Sender<Notice>) {
  let open = || -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    c.busy_timeout(Duration::from_secs(1))?;
    Ok(c)
  };
  let mut conn: Option<Connection> = None;
  let mut last: Option<i64> = None;
  while alive.strong_count() > 0 {
    if bus.receiver_count() == 0 {
      // Nothing waits: no reads (a waiter reads the store once it subscribed, and a long pause
      // shows as a gap: a catch-up).
      std::thread::sleep(IDLE);
      continue;
    }
    if conn.is_none() {
      conn = open().ok();
    }
    if let Some(c) = &conn {
      match read_after(c, last) {
        Ok((rows, gap)) => {
          if last.is_none() || gap {
            // Listening (again): subscribers read the store for what came before.
            let _ = bus.send(Notice::Listening);
          }
          for (seq, payload) in rows {
            last = Some(seq);
            if let Some(n) = Notice::parse(&payload) {
              let _ = bus.send(n);
            }
          }
          if last.is_none() {
            last = Some(0);
          }
        }
        Err(_) => conn = None,
      }
    }
    std::thread::sleep(SQLITE_POLL);
  }
}

/// The rings after `last` (`None`: none yet; only the newest number is taken), and whether some
/// were pruned before they were read.
fn read_after(c: &Connection, last: Option<i64>) -> rusqlite::Result<(Vec<(i64, String)>, bool)> {
  let Some(last) = last else {
    let newest: i64 = c.prepare_cached("SELECT coalesce(max(seq), 0) FROM notices")?.query_row([], |r| r.get(0))?;
    return Ok((vec![(newest, String::new())], false));
  };
  let rows = c
    .prepare_cached("SELECT seq, payload FROM notices WHERE seq > ?1 ORDER BY seq LIMIT 1000")?
    .query_map(params![last], |r| Ok((r.get(0)?, r.get(1)?)))?
    .collect::<rusqlite::Result<Vec<(i64, String)>>>()?;
  let gap = rows.first().is_some_and(|(seq, _)| *seq > last + 1);
  Ok((rows, gap))
}

#[cfg(test)]
mod tests {
  use super::*;

  /// Two stores on one file stand for two processes: the rings of one reach the other's reader
  /// (its own channel here, not the process's), in order, with a catch-up first.
  #[test]
  fn another_process_s_rings_are_read_in_order() {
    let dir = std::env::temp_dir().join(format!("csm-doorbell-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.db");
    let (writer, reader) = (SqliteStore::open(&path).unwrap(), SqliteStore::open(&path).unwrap());
    writer.ring(&Notice::Inbox { session_id: "before".into() }).wait().unwrap();
    let (tx, mut rx) = broadcast::channel(64);
    reader.listen(&tx);
    let next = |rx: &mut broadcast::Receiver<Notice>| {
      let deadline = std::time::Instant::now() + Duration::from_secs(30);
      loop {
        match rx.try_recv() {
          Ok(n) => return n,
          Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
          Err(e) => panic!("no ring: {e}"),
        }
      }
    };
    assert_eq!(next(&mut rx), Notice::Listening, "a catch-up first; what was rung before is not replayed");
    let rings: Vec<Notice> =
      (0..5).map(|i| Notice::Receipt { session_id: "s".into(), id: i }).chain([Notice::WarmWanted { session_id: "w".into() }]).collect();
    for n in &rings {
      writer.ring(n).wait().unwrap();
    }
    for n in &rings {
      assert_eq!(&next(&mut rx), n);
    }
    // Pruned before it was read: the reader says so.
    let c = writer.conn.lock().unwrap();
    assert!(!read_after(&c, Some(0)).unwrap().1, "every ring after 0 is there");
    c.execute("DELETE FROM notices WHERE seq <= 2", []).unwrap();
    assert!(read_after(&c, Some(0)).unwrap().1, "rings 1 and 2 are gone");
    drop(c);
    drop(reader);
    let _ = std::fs::remove_dir_all(&dir);
  }
}
