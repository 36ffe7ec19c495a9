//! Character classes and the pre-tokenizer: the pieces the encodings' regexes would return.

use std::sync::OnceLock;

// ---- character classes and the pre-tokenizer -----------------------------------------------------

/// `\p{L}`
pub(super) const L: u8 = 1;
/// `\p{N}`
pub(super) const N: u8 = 2;
/// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]` (o200k's "upper" letters)
pub(super) const UP: u8 = 4;
/// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]` (o200k's "lower" letters)
pub(super) const LO: u8 = 8;
/// `\s` (Unicode White_Space, as the regex crate has it)
pub(super) const WS: u8 = 16;
/// `\r` or `\n`
pub(super) const NL: u8 = 32;

/// The classes of ASCII characters (checked against the Unicode tables by a test).
pub(super) const ASCII: [u8; 128] = {
  let mut t = [0u8; 128];
  let mut c = 0;
  while c < 128 {
    let b = c as u8;
    t[c] = if b.is_ascii_lowercase() {
      L | LO
    } else if b.is_ascii_uppercase() {
      L | UP
    } else if b.is_ascii_digit() {
      N
    } else if b == b'\r' || b == b'\n' {
      WS | NL
    } else if b == b' ' || (b >= 0x09 && b <= 0x0D) {
      WS
    } else {
      0
    };
    c += 1;
  }
  t
};

pub(super) struct Classes {
  /// Class bits of every code point.
  pub(super) table: Box<[u8]>,
}

pub(super) fn classes() -> &'static Classes {
  static C: OnceLock<Classes> = OnceLock::new();
  C.get_or_init(Classes::build)
}

impl Classes {
  pub(super) fn build() -> Classes {
    let mut table = vec![0u8; 0x11_0000].into_boxed_slice();
    for (pattern, bit) in [
      (r"\p{L}", L),
      (r"\p{N}", N),
      (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", UP),
      (r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]", LO),
      (r"\s", WS),
      (r"[\r\n]", NL),
    ] {
      let hir = regex_syntax::Parser::new().parse(pattern).expect("class pattern");
      let regex_syntax::hir::HirKind::Class(regex_syntax::hir::Class::Unicode(class)) = hir.kind() else {
        panic!("{pattern} is not a Unicode class");
      };
      for r in class.ranges() {
        for c in &mut table[r.start() as usize..=r.end() as usize] {
          *c |= bit;
        }
      }
    }
    Classes { table }
  }

  /// Class bits and UTF-8 length of the character at byte `i` (a char boundary of valid UTF-8).
  #[inline(always)]
  pub(super) fn at(&self, s: &[u8], i: usize) -> (u8, usize) {
    let b = s[i];
    if b < 0x80 {
      return (ASCII[b as usize], 1);
    }
    self.at_multibyte(s, i)
  }

  #[inline(never)]
  pub(super) fn at_multibyte(&self, s: &[u8], i: usize) -> (u8, usize) {
    let b = s[i];
    let (cp, len) = if b < 0xE0 {
      (((b as u32 & 0x1F) << 6) | (s[i + 1] as u32 & 0x3F), 2)
    } else if b < 0xF0 {
      (((b as u32 & 0x0F) << 12) | ((s[i + 1] as u32 & 0x3F) << 6) | (s[i + 2] as u32 & 0x3F), 3)
    } else {
      (((b as u32 & 0x07) << 18) | ((s[i + 1] as u32 & 0x3F) << 12) | ((s[i + 2] as u32 & 0x3F) << 6) | (s[i + 3] as u32 & 0x3F), 4)
    };
    (self.table[cp as usize], len)
  }

  /// End of the run of characters having any of `bits`, from `i`.
  #[inline(always)]
  pub(super) fn run(&self, s: &[u8], mut i: usize, bits: u8) -> usize {
    while i < s.len() {
      let (c, l) = self.at(s, i);
      if c & bits == 0 {
        break;
      }
      i += l;
    }
    i
  }

  /// `[UP]*[LO]+` at `i`, with the regex's backtracking: the greedy `[UP]*` gives back characters
  /// until one in `LO` can start `[LO]+`.
  #[inline(always)]
  pub(super) fn upper_lower(&self, s: &[u8], mut i: usize) -> Option<usize> {
    let mut last_lo_end = None;
    while i < s.len() {
      let (c, l) = self.at(s, i);
      if c & UP == 0 {
        if c & LO != 0 {
          return Some(self.run(s, i + l, LO));
        }
        break;
      }
      i += l;
      if c & LO != 0 {
        last_lo_end = Some(i);
      }
    }
    // `[LO]+` starts at the last LO character of the UP run; the characters after it in the
    // run are UP only, and the one after the run is not LO, so it is one character long.
    last_lo_end
  }

  /// `[UP]+[LO]*` at `i`.
  #[inline(always)]
  pub(super) fn upper_then_lower(&self, s: &[u8], i: usize) -> Option<usize> {
    let e = self.run(s, i, UP);
    (e > i).then(|| self.run(s, e, LO))
  }

  /// The piece of `o200k_base` starting at `p`:
  /// `[^\r\n\p{L}\p{N}]?[UP]*[LO]+C?|[^\r\n\p{L}\p{N}]?[UP]+[LO]*C?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`
  pub(super) fn next_o200k(&self, s: &[u8], p: usize) -> usize {
    if let Some(e) = ascii_word(s, p, false) {
      return e;
    }
    let (c0, l0) = self.at(s, p);
    let prefix = c0 & (NL | L | N) == 0 && p + l0 < s.len();
    if prefix {
      if let Some(e) = self.upper_lower(s, p + l0) {
        return contraction(s, e);
      }
    }
    if c0 & (UP | LO) != 0 {
      if let Some(e) = self.upper_lower(s, p) {
        return contraction(s, e);
      }
    }
    if prefix {
      if let Some(e) = self.upper_then_lower(s, p + l0) {
        return contraction(s, e);
      }
    }
    if c0 & UP != 0 {
      if let Some(e) = self.upper_then_lower(s, p) {
        return contraction(s, e);
      }
    }
    if c0 & N != 0 {
      return self.digits(s, p);
    }
    if let Some(q) = self.punct_start(s, p, c0) {
      let mut e = self.run_other(s, q);
      while e < s.len() && matches!(s[e], b'\r' | b'\n' | b'/') {
        e += 1;
      }
      return e;
    }
    if c0 & WS != 0 {
      let w = self.whitespace(s, p);
      if let Some(j) = w.last_nl {
        return j + 1; // \s*[\r\n]+
      }
      if w.end == s.len() || w.count == 1 {
        return w.end; // \s+(?!\S) to the end, or \s+
      }
      return w.last_start; // \s+(?!\S): all but the last
    }
    p + l0
  }

  /// The piece of `cl100k_base` starting at `p` (tiktoken's possessive form of the pattern):
  /// `'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s`
  pub(super) fn next_cl100k(&self, s: &[u8], p: usize) -> usize {
    if let Some(e) = ascii_word(s, p, true) {
      return e;
    }
    if s[p] == b'\'' {
      let e = contraction(s, p);
      if e != p {
        return e;
      }
    }
    let (c0, l0) = self.at(s, p);
    if c0 & L != 0 {
      return self.run(s, p + l0, L);
    }
    if c0 & (NL | N) == 0 && p + l0 < s.len() && self.at(s, p + l0).0 & L != 0 {
      return self.run(s, p + l0, L);
    }
    if c0 & N != 0 {
      return self.digits(s, p);
    }
    if let Some(q) = self.punct_start(s, p, c0) {
      let mut e = self.run_other(s, q);
      while e < s.len() && matches!(s[e], b'\r' | b'\n') {
        e += 1;
      }
      return e;
    }
    if c0 & WS != 0 {
      let w = self.whitespace(s, p);
      if w.end == s.len() {
        return w.end; // \s++$
      }
      if let Some(j) = w.last_nl {
        return j + 1; // \s*[\r\n]
      }
      if w.count == 1 {
        return w.end; // \s
      }
      return w.last_start; // \s+(?!\S)
    }
    p + l0
  }

  /// `\p{N}{1,3}`
  #[inline(always)]
  pub(super) fn digits(&self, s: &[u8], mut i: usize) -> usize {
    for _ in 0..3 {
      if i >= s.len() {
        break;
      }
      let (c, l) = self.at(s, i);
      if c & N == 0 {
        break;
      }
      i += l;
    }
    i
  }

  /// Where `[^\s\p{L}\p{N}]+` starts for ` ?[^\s\p{L}\p{N}]+`, if that alternative matches at `p`.
  #[inline(always)]
  pub(super) fn punct_start(&self, s: &[u8], p: usize, c0: u8) -> Option<usize> {
    if s[p] == b' ' && p + 1 < s.len() && self.at(s, p + 1).0 & (WS | L | N) == 0 {
      return Some(p + 1);
    }
    (c0 & (WS | L | N) == 0).then_some(p)
  }

  /// End of `[^\s\p{L}\p{N}]+` from `i`.
  #[inline(always)]
  pub(super) fn run_other(&self, s: &[u8], mut i: usize) -> usize {
    while i < s.len() {
      let (c, l) = self.at(s, i);
      if c & (WS | L | N) != 0 {
        break;
      }
      i += l;
    }
    i
  }

  /// The maximal whitespace run from `p`.
  #[inline(always)]
  pub(super) fn whitespace(&self, s: &[u8], p: usize) -> Whitespace {
    let mut w = Whitespace { end: p, last_start: p, last_nl: None, count: 0 };
    while w.end < s.len() {
      let (c, l) = self.at(s, w.end);
      if c & WS == 0 {
        break;
      }
      if c & NL != 0 {
        w.last_nl = Some(w.end);
      }
      w.last_start = w.end;
      w.end += l;
      w.count += 1;
    }
    w
  }
}

/// The common piece, decided on ASCII alone: an optional prefix (an ASCII character that is no
/// letter, digit, `\r` or `\n`), then a word, then an ASCII character that is no letter and no
/// apostrophe (or the end). For o200k (`any_case` false) the word is `[A-Z]?[a-z]+`, which both
/// `[UP]*[LO]+` and the prefix take whole; for cl100k (`any_case` true) it is `[A-Za-z]+`, the
/// possessive `\p{L}++`, and the prefix may not be an apostrophe (that starts a contraction).
/// Anything else (non-ASCII next to the word, an apostrophe after it, capitals runs in o200k)
/// returns `None` and takes the general path.
#[inline(always)]
pub(super) fn ascii_word(s: &[u8], p: usize, any_case: bool) -> Option<usize> {
  let n = s.len();
  let mut i = p;
  let b = s[i];
  if b < 0x80 && ASCII[b as usize] & (L | N | NL) == 0 && !(any_case && b == b'\'') {
    i += 1;
    if i == n {
      return None;
    }
  }
  if !any_case && s[i].is_ascii_uppercase() {
    i += 1;
  }
  let start = i;
  let e = if any_case { run_between(s, i, 0x20, 0x60, 0x7B) } else { run_between(s, i, 0, 0x60, 0x7B) };
  if e == start || (e < n && (s[e] >= 0x80 || s[e].is_ascii_alphabetic() || s[e] == b'\'')) {
    return None;
  }
  Some(e)
}

/// End of the run of bytes `b` from `i` with `lo < (b | or) < hi` (`hi <= 0x80`), eight at a
/// time (the "has between" bit trick; bytes >= 0x80 never qualify).
#[inline(always)]
pub(super) fn run_between(s: &[u8], mut i: usize, or: u8, lo: u8, hi: u8) -> usize {
  const ONES: u64 = 0x0101_0101_0101_0101;
  let or = ONES * or as u64;
  while i + 8 <= s.len() {
    let x = u64::from_le_bytes(s[i..i + 8].try_into().unwrap()) | or;
    let low7 = x & (ONES * 127);
    let inside = (ONES * (127 + hi as u64)).wrapping_sub(low7) & !x & (low7 + ONES * (127 - lo as u64)) & (ONES * 128);
    let outside = !inside & (ONES * 128);
    if outside != 0 {
      return i + (outside.trailing_zeros() / 8) as usize;
    }
    i += 8;
  }
  while i < s.len() && (s[i] | (or as u8)) > lo && (s[i] | (or as u8)) < hi {
    i += 1;
  }
  i
}

pub(super) struct Whitespace {
  pub(super) end: usize,
  /// Start of the run's last character.
  pub(super) last_start: usize,
  /// Position of the run's last `\r` or `\n`.
  pub(super) last_nl: Option<usize>,
  /// Characters in the run.
  pub(super) count: usize,
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at `e`: its end, or `e`. Case-insensitive as the regex crate
/// folds case, so `'ſ` (U+017F, which folds to `s`) counts as `'s`.
#[inline(always)]
pub(super) fn contraction(s: &[u8], e: usize) -> usize {
  if e + 1 >= s.len() || s[e] != b'\'' {
    return e;
  }
  match s[e + 1].to_ascii_lowercase() {
    b's' | b't' | b'm' | b'd' => e + 2,
    0xC5 if s.get(e + 2) == Some(&0xBF) => e + 3,
    a @ (b'r' | b'v' | b'l') if e + 2 < s.len() => {
      let b = s[e + 2].to_ascii_lowercase();
      if ((a == b'r' || a == b'v') && b == b'e') || (a == b'l' && b == b'l') {
        e + 3
      } else {
        e
      }
    }
    _ => e,
  }
}
