//! Transcripts kept in the store, fenced by the lease, on a backend that keeps them; on one that
//! does not (one machine, where the CLI's file is the conversation) the absence is in the type.

use std::time::Duration;

use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::{TaskEnd, TranscriptEntry};

use super::fixtures::{id, new_session, owner};
use super::Opened;

fn entry(seq: i64, uuid: Option<&str>, line: &str) -> TranscriptEntry {
  TranscriptEntry { seq, subpath: String::new(), uuid: uuid.map(str::to_owned), line: line.into() }
}

pub fn check(o: &Opened) {
  let s = &o.store;
  let Some(t) = s.transcripts() else {
    assert!(!s.shares_transcripts());
    assert!(s.shared_transcripts().is_err(), "a store without transcripts says so");
    return;
  };
  assert!(s.shares_transcripts());
  let sid = id();
  s.create_session(&new_session(&sid, "u", "p")).wait().unwrap();
  let ttl = Duration::from_secs(30);
  let end = TaskEnd { status: "succeeded".into(), ..Default::default() };
  assert_eq!(t.transcript_head(&sid).wait().unwrap(), 0);
  assert_eq!(t.transcript_bytes(&sid).wait().unwrap(), 0);
  assert!(s.try_begin_task(&sid, "t1", "task", "sonnet", &owner("a"), ttl).wait().unwrap());
  let batch = vec![entry(1, None, r#"{"type":"queue-operation"}"#), entry(2, Some("u1"), r#"{"type":"user","uuid":"u1"}"#)];
  assert!(t.append_transcript(&sid, "t1", &batch).wait().unwrap());
  // The same batch again (an answer lost on the way back): nothing doubles.
  assert!(t.append_transcript(&sid, "t1", &batch).wait().unwrap());
  // A line with a uuid already stored under another seq is skipped too.
  assert!(t.append_transcript(&sid, "t1", &[entry(3, Some("u1"), r#"{"type":"user","uuid":"u1"}"#)]).wait().unwrap());
  assert!(t.append_transcript(&sid, "t1", &[entry(4, Some("a1"), r#"{"type":"assistant","uuid":"a1"}"#)]).wait().unwrap());
  let lines: Vec<String> = t.load_transcript(&sid, 0).wait().unwrap().into_iter().map(|e| e.line).collect();
  assert_eq!(lines, [r#"{"type":"queue-operation"}"#, r#"{"type":"user","uuid":"u1"}"#, r#"{"type":"assistant","uuid":"a1"}"#]);
  assert_eq!(t.load_transcript(&sid, 2).wait().unwrap().len(), 1, "after a seq");
  assert_eq!(t.transcript_len(&sid, "").wait().unwrap(), 3);
  assert_eq!(t.transcript_head(&sid).wait().unwrap(), 4);
  assert_eq!(t.transcript_bytes(&sid).wait().unwrap() as usize, lines.iter().map(String::len).sum::<usize>());
  s.finish_task(&sid, "t1", &end, None).wait().unwrap();
  // Right after its task, t1's closing lines are stored (the lease is released, not taken).
  assert!(t.append_transcript_after_end(&sid, "t1", &[entry(5, Some("c1"), r#"{"type":"system","uuid":"c1"}"#)]).wait().unwrap());
  // t2 takes the session: t1 can write nothing more, during its task or after it.
  assert!(s.try_begin_task(&sid, "t2", "task", "sonnet", &owner("b"), ttl).wait().unwrap());
  assert!(!t.append_transcript(&sid, "t1", &[entry(6, Some("z"), r#"{"type":"user","uuid":"z"}"#)]).wait().unwrap(), "refused");
  assert!(t.append_transcript(&sid, "t2", &[entry(6, Some("u2"), r#"{"type":"user","uuid":"u2"}"#)]).wait().unwrap());
  s.finish_task(&sid, "t2", &end, None).wait().unwrap();
  let late = [entry(7, Some("c2"), r#"{"type":"system","uuid":"c2","late":"t1"}"#)];
  assert!(!t.append_transcript_after_end(&sid, "t1", &late).wait().unwrap(), "t1's closing lines after t2 took the session");
  assert_eq!(t.transcript_len(&sid, "").wait().unwrap(), 5, "nothing of the stale holder's");
  // A task that kept the lease while its CLI exits: its last lines and the release in one step.
  assert!(s.try_begin_task(&sid, "t3", "task", "sonnet", &owner("b"), ttl).wait().unwrap());
  let kept = TaskEnd { status: "succeeded".into(), keep_lease: true, ..Default::default() };
  s.finish_task(&sid, "t3", &kept, None).wait().unwrap();
  assert!(s.lease_kept_after_end(&sid).wait().unwrap());
  assert!(t.append_and_release(&sid, "t3", &[entry(7, Some("c3"), r#"{"type":"system","uuid":"c3"}"#)]).wait().unwrap());
  assert!(!s.lease_kept_after_end(&sid).wait().unwrap(), "released");
  assert!(s.try_begin_task(&sid, "t4", "task", "sonnet", &owner("b"), ttl).wait().unwrap());
  assert!(!t.append_and_release(&sid, "t3", &[entry(8, Some("c4"), r#"{"type":"system","uuid":"c4"}"#)]).wait().unwrap(), "t4 holds it");
  s.finish_task(&sid, "t4", &end, None).wait().unwrap();
  assert_eq!(t.transcript_len(&sid, "").wait().unwrap(), 6);
  // Another connection (another node) reads the same lines.
  assert_eq!(o.other().shared_transcripts().unwrap().transcript_head(&sid).wait().unwrap(), 7);
  // Deleting the session deletes its transcript.
  s.delete_session(&sid, "u").wait().unwrap();
  assert!(t.load_transcript(&sid, 0).wait().unwrap().is_empty());
}
