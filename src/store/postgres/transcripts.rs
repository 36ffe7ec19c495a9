//! The conversation in PostgreSQL: the CLI's transcript lines, mirrored while a task runs, so
//! that any node can resume, fork or read a session whose transcript another node wrote.
//!
//! One row per line, keyed by `(session_id, seq)`: `seq` is given by the lease holder (the one
//! writer of a session), so a batch sent again after a lost answer lands on the same keys and
//! is ignored; lines with a `uuid` are also unique per `(session_id, subpath, uuid)`. Every
//! append is fenced: it is written only while the task still holds the session's lease (no
//! other task has taken it over), in the same transaction that checks it. `sessions.transcript_seq`
//! is the head a node compares its local copy with.

use super::*;
use crate::error::Result;
use crate::store::TranscriptEntry;

impl PgStore {
  /// One statement (one round trip, with the statement cache): the fence read and locked, the
  /// lines inserted under it, the head moved; nothing when the fence is not the task's.
  /// `release`: the lease the task kept is freed in the same statement (see
  /// [`Transcripts::append_and_release`]; `ended` then).
  async fn append_fenced(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry], ended: bool, release: bool) -> Result<bool> {
    if entries.is_empty() && !release {
      return Ok(true);
    }
    let args = self.lines_args(session_id, task_id, entries);
    let sql = append_sql(ended, release);
    let params = args.params();
    // Keyed by `seq` (and `uuid`): a batch sent again after a lost answer changes nothing.
    let held: i64 = idempotent!(self, |c| Ok(self.query(c, &sql, &params).await?[0].get(0)))?;
    Ok(held > 0)
  }

  /// The arguments of [`append_sql`]'s statement for `entries`.
  pub(super) fn lines_args<'a>(&self, session_id: &'a str, task_id: &'a str, entries: &'a [TranscriptEntry]) -> LinesArgs<'a> {
    LinesArgs {
      session_id,
      task_id,
      seqs: entries.iter().map(|e| e.seq).collect(),
      subpaths: entries.iter().map(|e| e.subpath.as_str()).collect(),
      uuids: entries.iter().map(|e| e.uuid.as_deref()).collect(),
      lines: entries.iter().map(|e| e.line.as_str()).collect(),
      last: entries.iter().map(|e| e.seq).max().unwrap_or(0),
    }
  }
}

/// A batch of lines to append, converted once.
pub(super) struct LinesArgs<'a> {
  session_id: &'a str,
  task_id: &'a str,
  seqs: Vec<i64>,
  subpaths: Vec<&'a str>,
  uuids: Vec<Option<&'a str>>,
  lines: Vec<&'a str>,
  last: i64,
}

impl LinesArgs<'_> {
  pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
    let mut p: Vec<&(dyn ToSql + Sync)> = vec![&self.session_id, &self.task_id];
    p.extend(self.arrays());
    p
  }

  /// The lines' own arguments (without the session and the task): seqs, subpaths, uuids, lines
  /// and the last seq.
  pub(super) fn arrays(&self) -> [&(dyn ToSql + Sync); 5] {
    [&self.seqs, &self.subpaths, &self.uuids, &self.lines, &self.last]
  }
}

/// The statement appending lines fenced by the task's lease (answers how many leases matched: 0
/// when refused). The fence the task holds the lease under (`held_fence`), or with `ended`, after
/// its end, the fence of the lease it was the last to take; with `release`, the lease's holder
/// freed in the same statement.
fn append_sql(ended: bool, release: bool) -> String {
  let fence = match ended {
    false => {
      "SELECT l.fence FROM {S}.leases l JOIN {S}.tasks t ON t.id = l.task_id AND t.fence = l.fence
         WHERE l.session_id = $1 AND l.task_id = $2 FOR UPDATE OF l"
    }
    true => {
      "SELECT l.fence FROM {S}.leases l JOIN {S}.tasks t ON t.id = $2 AND t.fence = l.fence
         WHERE l.session_id = $1 AND (l.task_id IS NULL OR l.task_id = $2) FOR UPDATE OF l"
    }
  };
  format!(
    "WITH f AS ({fence}),
     ins AS (INSERT INTO {{S}}.transcript_entries (session_id, seq, subpath, uuid, fence, task_id, line)
       SELECT $1, x.seq, x.subpath, x.uuid, f.fence, $2, x.line
       FROM f, unnest($3::bigint[], $4::text[], $5::text[], $6::text[]) AS x(seq, subpath, uuid, line)
       ON CONFLICT DO NOTHING),
     head AS (UPDATE {{S}}.sessions SET transcript_seq = GREATEST(transcript_seq, $7) WHERE id = $1 AND EXISTS (SELECT 1 FROM f)){release}
     SELECT COUNT(*) FROM f",
    release = match release {
      // The row stays (its fence must keep growing); only the holder goes.
      true => ",
     freed AS (UPDATE {S}.leases SET task_id = NULL, expires_at = now() WHERE session_id = $1 AND task_id = $2 AND EXISTS (SELECT 1 FROM f))",
      false => "",
    }
  )
}

#[async_trait::async_trait]
impl Transcripts for PgStore {
  /// The newest `seq` stored for the session (0: nothing stored).
  async fn transcript_head(&self, session_id: &str) -> Result<i64> {
    read!(self, |c| {
      Ok(self.opt(c, "SELECT transcript_seq FROM {S}.sessions WHERE id = $1", &[&session_id]).await?.map(|r| r.get(0)).unwrap_or(0))
    })
  }

  /// Appends lines of the session's transcript for `task_id`, fenced by its lease: returns false,
  /// writing nothing, when the task no longer holds the lease. Lines already stored (same `seq`,
  /// or same `uuid` in the same file) are skipped, so sending a batch again is harmless.
  async fn append_transcript(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool> {
    self.append_fenced(session_id, task_id, entries, false, false).await
  }

  /// Appends lines a task's CLI wrote after the task ended (a warm process closing: what it
  /// writes at stdin EOF), fenced by that task's lease: stored only while the lease is still the
  /// task's, held or released, and no other task has taken it since. False, writing nothing,
  /// otherwise.
  async fn append_transcript_after_end(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool> {
    self.append_fenced(session_id, task_id, entries, true, false).await
  }

  /// One statement: the lines appended under the task's last fence, and its kept lease freed.
  async fn append_and_release(&self, session_id: &str, task_id: &str, entries: &[TranscriptEntry]) -> Result<bool> {
    self.append_fenced(session_id, task_id, entries, true, true).await
  }

  /// Every stored line of the session, in order (the main transcript and its subagents' files).
  async fn load_transcript(&self, session_id: &str, after: i64) -> Result<Vec<TranscriptEntry>> {
    read!(self, |c| {
      let rows = self
        .query(
          c,
          "SELECT seq, subpath, uuid, line FROM {S}.transcript_entries WHERE session_id = $1 AND seq > $2 ORDER BY seq",
          &[&session_id, &after],
        )
        .await?;
      Ok(rows.iter().map(|r| TranscriptEntry { seq: r.get(0), subpath: r.get(1), uuid: r.get(2), line: r.get(3) }).collect())
    })
  }

  /// The bytes of every stored line of the session (what `load_transcript(id, 0)` returns).
  async fn transcript_bytes(&self, session_id: &str) -> Result<i64> {
    read!(self, |c| {
      Ok(
        self
          .query(c, "SELECT COALESCE(SUM(octet_length(line)), 0)::bigint FROM {S}.transcript_entries WHERE session_id = $1", &[&session_id])
          .await?[0]
          .get(0),
      )
    })
  }

  /// How many lines of one file of the session (`""`: the main transcript) are stored.
  async fn transcript_len(&self, session_id: &str, subpath: &str) -> Result<i64> {
    read!(self, |c| {
      Ok(
        self
          .query(c, "SELECT COUNT(*) FROM {S}.transcript_entries WHERE session_id = $1 AND subpath = $2", &[&session_id, &subpath])
          .await?[0]
          .get(0),
      )
    })
  }
}
