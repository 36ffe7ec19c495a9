//! Native token counting for tiktoken's `o200k_base` and `cl100k_base`, exact to OpenAI's tiktoken
//! (except inside pieces longer than [`LONG_PIECE_BYTES`]).
//!
//! tiktoken-rs supplies the vocabularies (read once per process through its public
//! `decode_bytes`); the counting is done here, because tiktoken-rs's `encode_ordinary` spends most
//! of its time in fancy-regex's backtracking VM and allocates a token vector we do not need:
//!
//! - **Pre-tokenizer**: a hand-written scanner that returns exactly the pieces the encoding's
//!   regex (`O200K_BASE_PAT_STR`, and tiktoken's possessive `cl100k_base` pattern) returns with
//!   leftmost-first semantics. Each alternative is resolved in one forward pass; where the regex
//!   would backtrack (`[UP]*[LO]+`, `\s*[\r\n]+`, `\s+(?!\S)`) the scanner computes the position
//!   the backtracking settles on. The character classes (`\p{L}`, `\p{N}`, `\s`, ...) are taken
//!   from `regex-syntax`, the tables fancy-regex itself matches with, so even rare code points
//!   classify the same. Tests compare every piece with fancy-regex's on prose, code, transcripts
//!   and random Unicode.
//! - **BPE**: tiktoken's own merge loops (the small O(n·m) one and the heap one for pieces of
//!   100 bytes or more), counting instead of collecting, over an FxHashMap of the ordinary tokens.
//!   A piece over [`LONG_PIECE_BYTES`] (a pathological "word" of kilobytes) is merged in chunks,
//!   which bounds the time and memory; only there does the count differ from tiktoken's.
//! - **Large texts** are cut at boundaries no piece can cross (see [`is_safe_boundary`]) and the
//!   parts counted on all cores with `std::thread::scope`; the sum equals the unsplit count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use rustc_hash::FxHashMap;
use tiktoken_rs::{CoreBPE, Rank};

use crate::error::{Error, Result};

mod classes;
use classes::*;

/// Encodings `countTokens` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
  O200kBase,
  Cl100kBase,
}

impl Encoding {
  pub fn parse(name: Option<&str>) -> Result<Encoding> {
    match name.unwrap_or("o200k_base") {
      "o200k_base" => Ok(Encoding::O200kBase),
      "cl100k_base" => Ok(Encoding::Cl100kBase),
      other => {
        Err(Error::invalid(format!("unknown encoding \"{}\"; use \"o200k_base\" (default) or \"cl100k_base\"", other.escape_debug())))
      }
    }
  }

  /// The vocabulary, built once per process on first use.
  fn vocab(self) -> &'static Vocab {
    static O200K: OnceLock<Vocab> = OnceLock::new();
    static CL100K: OnceLock<Vocab> = OnceLock::new();
    match self {
      Encoding::O200kBase => O200K.get_or_init(|| Vocab::from_bpe(&tiktoken_rs::o200k_base().expect("o200k_base tables are built in"), 0)),
      Encoding::Cl100kBase => {
        CL100K.get_or_init(|| Vocab::from_bpe(&tiktoken_rs::cl100k_base().expect("cl100k_base tables are built in"), 1 << 127))
      }
    }
  }
}

/// Counts tokens of `text`; special-token text is counted as ordinary text (tiktoken's
/// `encode_ordinary`). Texts of [`PARALLEL_MIN_BYTES`] or more are counted on all cores.
pub fn count(text: &str, enc: Encoding) -> usize {
  if text.is_empty() {
    return 0;
  }
  let s = text.as_bytes();
  let vocab = enc.vocab();
  let cls = classes();
  let threads = if s.len() >= PARALLEL_MIN_BYTES { parallelism() } else { 1 };
  if threads < 2 {
    return count_bytes(s, enc, vocab, cls);
  }
  // A few more parts than threads, so a thread that lands on a busy core does less of the work.
  let parts = split(s, enc, (s.len() / (threads * 4)).max(PART_MIN_BYTES));
  if parts.len() < 2 {
    return count_bytes(s, enc, vocab, cls);
  }
  let next = AtomicUsize::new(0);
  let worker = || {
    let mut n = 0;
    loop {
      let i = next.fetch_add(1, Ordering::Relaxed);
      match parts.get(i) {
        Some(p) => n += count_bytes(p, enc, vocab, cls),
        None => return n,
      }
    }
  };
  std::thread::scope(|scope| {
    let helpers: Vec<_> =
      (1..threads.min(parts.len())).filter_map(|_| std::thread::Builder::new().spawn_scoped(scope, worker).ok()).collect();
    let mine = worker();
    mine + helpers.into_iter().map(|h| h.join().expect("token counting thread panicked")).sum::<usize>()
  })
}

/// Pieces longer than this (a run of megabytes without whitespace or a change of character class,
/// which no real text has) are counted in chunks of this size: one merge over the whole piece
/// costs O(n log n) time and 48 bytes of memory per byte of the piece (a 4 MB word took 1.8 s and
/// ~200 MB), chunks keep it linear and small. The count then differs from tiktoken's by at most a
/// few tokens per chunk; every piece up to this length is counted exactly.
pub const LONG_PIECE_BYTES: usize = 8 * 1024;

/// The chunks [`LONG_PIECE_BYTES`] long (the last one shorter) a long piece is counted in, cut
/// at the next UTF-8 character boundary.
pub fn long_piece_chunks(piece: &[u8]) -> impl Iterator<Item = &[u8]> {
  let mut rest = piece;
  std::iter::from_fn(move || {
    if rest.is_empty() {
      return None;
    }
    let mut cut = LONG_PIECE_BYTES.min(rest.len());
    while cut < rest.len() && rest[cut] & 0xC0 == 0x80 {
      cut += 1;
    }
    let (chunk, tail) = rest.split_at(cut);
    rest = tail;
    Some(chunk)
  })
}

/// Texts this long (bytes of UTF-8) or longer are split and counted in parallel.
pub const PARALLEL_MIN_BYTES: usize = 64 * 1024;
/// The smallest part a parallel count cuts.
const PART_MIN_BYTES: usize = 16 * 1024;

fn parallelism() -> usize {
  static N: OnceLock<usize> = OnceLock::new();
  *N.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(16))
}

/// Counts tokens of the whole of `s` on this thread.
fn count_bytes(s: &[u8], enc: Encoding, vocab: &Vocab, cls: &Classes) -> usize {
  let mut n = 0;
  let mut p = 0;
  while p < s.len() {
    let e = match enc {
      Encoding::O200kBase => cls.next_o200k(s, p),
      Encoding::Cl100kBase => cls.next_cl100k(s, p),
    };
    n += vocab.piece_tokens(s, p, e);
    p = e;
  }
  n
}

/// The pre-tokenizer's pieces of `text`, as byte ranges (for tests and diagnostics).
pub fn pieces(text: &str, enc: Encoding) -> Vec<std::ops::Range<usize>> {
  let s = text.as_bytes();
  let cls = classes();
  let mut out = Vec::new();
  let mut p = 0;
  while p < s.len() {
    let e = match enc {
      Encoding::O200kBase => cls.next_o200k(s, p),
      Encoding::Cl100kBase => cls.next_cl100k(s, p),
    };
    out.push(p..e);
    p = e;
  }
  out
}

// ---- splitting ----------------------------------------------------------------------------------

/// Whether byte offset `b` of `s` is a boundary that no piece of either encoding crosses and at
/// which the pieces before `b` do not depend on what follows, so that
/// `count(s) == count(&s[..b]) + count(&s[b..])`.
///
/// Rule 1: `s[b-1]` is `\n` and `s[b]` is neither whitespace (`\s`) nor `/`. Every alternative
/// that can hold a `\n` (`\s*[\r\n]+` / `\s*[\r\n]`, `\s+(?!\S)`, `\s+`, `\s++$`, and the
/// `[\r\n/]*` / `[\r\n]*` tail of the punctuation alternative) ends at the first character that is
/// not whitespace (or, in o200k's tail, `/`), so the piece holding `s[b-1]` ends at `b`; letter,
/// number and contraction alternatives cannot hold a `\n`. Before `b`, the only decisions that
/// look past `b-1` are those ends, and end-of-text stops them the same way: the whitespace run
/// ending in `\n` is taken up to its last line break by `\s*[\r\n]+` (o200k, tried before
/// `\s+(?!\S)`), and by `\s*[\r\n]` or `\s++$` (cl100k), which give the same piece when the run
/// ends with the break. After `b`, matching starts afresh at `b`, as it does on `s[b..]`.
///
/// Rule 2 (for text without line breaks): `s[b-1]` and `s[b+1]` are ASCII letters and `s[b]` is a
/// space. The letter piece holding `s[b-1]` ends at `b` (a space is no letter, and a contraction
/// needs an apostrophe), and a letter run stops at a space as it does at end-of-text; the piece at
/// `b` starts with the space (` word`).
pub fn is_safe_boundary(s: &[u8], b: usize) -> bool {
  if b == 0 || b >= s.len() {
    return false;
  }
  if s[b - 1] == b'\n' {
    return s[b] != b'/' && classes().at(s, b).0 & WS == 0;
  }
  s[b] == b' ' && b + 1 < s.len() && s[b - 1].is_ascii_alphabetic() && s[b + 1].is_ascii_alphabetic()
}

/// Cuts `s` into parts of about `target` bytes at safe boundaries (rule 1 preferred, then rule 2
/// within the same window); a window with neither joins the next part.
pub fn split(s: &[u8], _enc: Encoding, target: usize) -> Vec<&[u8]> {
  let target = target.max(1);
  let mut parts = Vec::new();
  let mut start = 0;
  while s.len() - start > target + target / 2 {
    let want = start + target;
    let window_end = (want + target).min(s.len());
    let cut = find_boundary(s, want, window_end, true).or_else(|| find_boundary(s, want, window_end, false));
    match cut {
      Some(b) => {
        parts.push(&s[start..b]);
        start = b;
      }
      None if window_end >= s.len() => break,
      None => {
        // No boundary in this window: keep looking further on for the same part.
        match find_boundary(s, window_end, s.len(), true).or_else(|| find_boundary(s, window_end, s.len(), false)) {
          Some(b) => {
            parts.push(&s[start..b]);
            start = b;
          }
          None => break,
        }
      }
    }
  }
  parts.push(&s[start..]);
  parts
}

fn find_boundary(s: &[u8], from: usize, to: usize, newline: bool) -> Option<usize> {
  let to = to.min(s.len());
  if from >= to {
    return None;
  }
  if newline {
    let mut i = from.max(1);
    while i < to {
      let nl = i - 1 + s[i - 1..to].iter().position(|&c| c == b'\n')?;
      let b = nl + 1;
      if b < s.len() && is_safe_boundary(s, b) {
        return Some(b);
      }
      i = b + 1;
    }
    None
  } else {
    (from.max(1)..to).find(|&b| s[b] == b' ' && is_safe_boundary(s, b))
  }
}

// ---- vocabulary and BPE ------------------------------------------------------------------------

struct Vocab {
  /// Ordinary tokens (no special tokens) of up to 7 bytes, keyed by their bytes packed in a
  /// `u64` with the length in the top byte: one probe, no pointer to follow, no byte compare.
  k8: FxHashMap<u64, Rank>,
  /// Ordinary tokens of 8 to 15 bytes, packed the same way in a `u128`.
  k16: FxHashMap<u128, Rank>,
  /// Longer ordinary tokens: bytes → rank.
  long: FxHashMap<Box<[u8]>, Rank>,
  /// Marks this encoding's entries in the per-thread merge cache.
  tag: u128,
}

/// Bytes `buf[start..start + len]` (len <= 7) packed as a `k8` key; reads 8 bytes from `start`.
#[inline(always)]
fn key8(buf: &[u8], start: usize, len: usize) -> u64 {
  let w = u64::from_le_bytes(buf[start..start + 8].try_into().unwrap());
  (w & ((1u64 << (8 * len)) - 1)) | ((len as u64) << 56)
}

/// Bytes `buf[start..start + len]` (8 <= len <= 15) packed as a `k16` key; reads 16 bytes.
#[inline(always)]
fn key16(buf: &[u8], start: usize, len: usize) -> u128 {
  let w = u128::from_le_bytes(buf[start..start + 16].try_into().unwrap());
  (w & ((1u128 << (8 * len)) - 1)) | ((len as u128) << 120)
}

impl Vocab {
  fn from_bpe(bpe: &CoreBPE, tag: u128) -> Vocab {
    let specials: Vec<Vec<u8>> = bpe.special_tokens().iter().map(|s| s.as_bytes().to_vec()).collect();
    let mut v = Vocab { k8: FxHashMap::default(), k16: FxHashMap::default(), long: FxHashMap::default(), tag };
    let mut misses = 0;
    let mut r: Rank = 0;
    // Ranks are dense up to the special tokens; stop after a long run of unused ranks.
    while misses < 4096 {
      match bpe.decode_bytes(&[r]) {
        Ok(bytes) if !specials.contains(&bytes) => {
          let mut padded = bytes.clone();
          padded.resize(bytes.len() + 16, 0);
          match bytes.len() {
            0..=7 => v.k8.insert(key8(&padded, 0, bytes.len()), r),
            8..=15 => v.k16.insert(key16(&padded, 0, bytes.len()), r),
            _ => v.long.insert(bytes.into_boxed_slice(), r),
          };
          misses = 0;
        }
        _ => misses += 1,
      }
      r += 1;
    }
    v
  }

  /// The rank of `buf[start..start + len]`; `buf` must hold 16 bytes from `start` when `len < 16`.
  #[inline(always)]
  fn rank_at(&self, buf: &[u8], start: usize, len: usize) -> Option<Rank> {
    match len {
      0..=7 => self.k8.get(&key8(buf, start, len)).copied(),
      8..=15 => self.k16.get(&key16(buf, start, len)).copied(),
      _ => self.long.get(&buf[start..start + len]).copied(),
    }
  }

  /// The rank of any byte string.
  fn rank(&self, bytes: &[u8]) -> Option<Rank> {
    if bytes.len() >= 16 {
      return self.long.get(bytes).copied();
    }
    let mut padded = [0u8; 32];
    padded[..bytes.len()].copy_from_slice(bytes);
    self.rank_at(&padded, 0, bytes.len())
  }

  /// Tokens of the piece `s[p..e]`: tiktoken's `encode_ordinary` for one regex match, counted.
  #[inline(always)]
  fn piece_tokens(&self, s: &[u8], p: usize, e: usize) -> usize {
    let len = e - p;
    if len == 1 {
      return 1;
    }
    let known = if p + 16 <= s.len() || len >= 16 { self.rank_at(s, p, len) } else { self.rank(&s[p..e]) };
    if known.is_some() {
      1
    } else if len <= 15 {
      self.merge_cached(&s[p..e])
    } else if len < 100 {
      self.merge_small(&s[p..e])
    } else if len <= LONG_PIECE_BYTES {
      self.merge_large(&s[p..e])
    } else {
      long_piece_chunks(&s[p..e]).map(|c| self.merge_large(c)).sum()
    }
  }

  /// `merge_small` through a small per-thread cache of recent results (pieces of 2 to 15 bytes
  /// that are not tokens themselves: rarer words, names, numbers with units). Direct-mapped,
  /// keyed by the piece's bytes, its length and the encoding, so a hit is exact.
  fn merge_cached(&self, piece: &[u8]) -> usize {
    const SLOTS: usize = 2048;
    thread_local! {
      static CACHE: std::cell::RefCell<Vec<(u128, u32)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut padded = [0u8; 16];
    padded[..piece.len()].copy_from_slice(piece);
    let key = u128::from_le_bytes(padded) | ((piece.len() as u128) << 120) | self.tag;
    let slot = (((key as u64) ^ ((key >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 53) as usize % SLOTS;
    let hit = CACHE.with(|c| c.borrow().get(slot).filter(|e| e.0 == key).map(|e| e.1 as usize));
    if let Some(n) = hit {
      return n;
    }
    let n = self.merge_small(piece);
    CACHE.with(|c| {
      let mut c = c.borrow_mut();
      if c.is_empty() {
        c.resize(SLOTS, (0, 0));
      }
      c[slot] = (key, n as u32);
    });
    n
  }

  /// tiktoken's `_byte_pair_merge` (2 <= len < 100), on the stack, returning the token count.
  fn merge_small(&self, piece: &[u8]) -> usize {
    let mut buf = [0u8; 128];
    buf[..piece.len()].copy_from_slice(piece);
    let mut parts = [(0u32, Rank::MAX); 101];
    let mut len = 0;
    let mut min_rank: (Rank, usize) = (Rank::MAX, usize::MAX);
    for i in 0..piece.len() - 1 {
      let rank = self.rank_at(&buf, i, 2).unwrap_or(Rank::MAX);
      if rank < min_rank.0 {
        min_rank = (rank, i);
      }
      parts[len] = (i as u32, rank);
      len += 1;
    }
    parts[len] = ((piece.len() - 1) as u32, Rank::MAX);
    parts[len + 1] = (piece.len() as u32, Rank::MAX);
    len += 2;
    let get_rank = |parts: &[(u32, Rank)], len: usize, i: usize| {
      if i + 3 < len {
        let (a, b) = (parts[i].0 as usize, parts[i + 3].0 as usize);
        self.rank_at(&buf, a, b - a).unwrap_or(Rank::MAX)
      } else {
        Rank::MAX
      }
    };
    while min_rank.0 != Rank::MAX {
      let i = min_rank.1;
      if i > 0 {
        parts[i - 1].1 = get_rank(&parts, len, i - 1);
      }
      parts[i].1 = get_rank(&parts, len, i);
      parts.copy_within(i + 2..len, i + 1);
      len -= 1;
      min_rank = (Rank::MAX, usize::MAX);
      for (i, &(_, rank)) in parts[..len - 1].iter().enumerate() {
        if rank < min_rank.0 {
          min_rank = (rank, i);
        }
      }
    }
    len - 1
  }

  /// tiktoken's `_byte_pair_merge_large` (len >= 100: a heap of candidate merges), counted.
  fn merge_large(&self, piece: &[u8]) -> usize {
    use std::collections::BinaryHeap;
    #[derive(Eq, PartialEq, Clone, Copy)]
    struct Merge {
      start: usize,
      rank: Rank,
    }
    impl Ord for Merge {
      fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.rank.cmp(&self.rank).then_with(|| other.start.cmp(&self.start))
      }
    }
    impl PartialOrd for Merge {
      fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
      }
    }
    struct State {
      prev: usize,
      end: usize,
      next_end: usize,
      next_rank: Rank,
    }
    let mut state = Vec::with_capacity(piece.len());
    state.push(State { prev: usize::MAX, end: 1, next_end: 2, next_rank: Rank::MAX });
    let mut heap = BinaryHeap::with_capacity(piece.len());
    for i in 0..piece.len() - 1 {
      if let Some(rank) = self.rank(&piece[i..i + 2]) {
        heap.push(Merge { start: i, rank });
        state[i].next_rank = rank;
      }
      state.push(State { prev: i, end: i + 2, next_end: i + 3, next_rank: Rank::MAX });
    }
    let potential_merge = |state: &mut Vec<State>, heap: &mut BinaryHeap<Merge>, start: usize, next_end_item: usize| {
      state[start].next_end = next_end_item;
      state[start].next_rank = Rank::MAX;
      if next_end_item <= piece.len() {
        if let Some(rank) = self.rank(&piece[start..next_end_item]) {
          heap.push(Merge { start, rank });
          state[start].next_rank = rank;
        }
      }
    };
    while let Some(left) = heap.pop() {
      if left.rank == Rank::MAX {
        break;
      }
      if left.rank != state[left.start].next_rank {
        continue;
      }
      let left_start = left.start;
      let right_start = state[left_start].end;
      let right_end = state[left_start].next_end;
      let right_next_end = state[right_start].next_end;
      state[left_start].end = right_end;
      potential_merge(&mut state, &mut heap, left_start, right_next_end);
      if right_end < state.len() {
        state[right_end].prev = left_start;
      }
      if left_start > 0 {
        let prev_start = state[left_start].prev;
        potential_merge(&mut state, &mut heap, prev_start, right_end);
      }
      state[right_start].next_rank = Rank::MAX;
    }
    let mut n = 0;
    let mut i = 0;
    while i < state.len() {
      n += 1;
      i = state[i].end;
    }
    n
  }
}

#[cfg(test)]
mod tests;
