//! Tests of the parent module.
use super::*;

#[test]
fn counts_match_known_values() {
  // Reference counts from OpenAI's tiktoken for these strings.
  assert_eq!(count("hello world", Encoding::Cl100kBase), 2);
  assert_eq!(count("hello world", Encoding::O200kBase), 2);
  assert_eq!(count("", Encoding::O200kBase), 0);
  assert_eq!(count("<|endoftext|>", Encoding::Cl100kBase), 7);
  assert!(Encoding::parse(Some("gpt2")).is_err());
}

#[test]
fn ascii_classes_match_the_unicode_tables() {
  for (c, &class) in ASCII.iter().enumerate() {
    assert_eq!(class, classes().table[c], "class of {:?}", c as u8 as char);
  }
}

const ENCODINGS: [Encoding; 2] = [Encoding::O200kBase, Encoding::Cl100kBase];

/// tiktoken's cl100k_base pattern, as tiktoken-rs compiles it.
const CL100K_PAT: &str =
  r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

struct Oracle {
  regex: fancy_regex::Regex,
  bpe: CoreBPE,
}

fn oracle(enc: Encoding) -> &'static Oracle {
  static O: OnceLock<Oracle> = OnceLock::new();
  static C: OnceLock<Oracle> = OnceLock::new();
  match enc {
    Encoding::O200kBase => O.get_or_init(|| Oracle {
      regex: fancy_regex::Regex::new(tiktoken_rs::O200K_BASE_PAT_STR).unwrap(),
      bpe: tiktoken_rs::o200k_base().unwrap(),
    }),
    Encoding::Cl100kBase => {
      C.get_or_init(|| Oracle { regex: fancy_regex::Regex::new(CL100K_PAT).unwrap(), bpe: tiktoken_rs::cl100k_base().unwrap() })
    }
  }
}

/// Pieces and count agree with fancy-regex and tiktoken-rs.
fn check(text: &str, what: &str) {
  for enc in ENCODINGS {
    let o = oracle(enc);
    let want: Vec<_> = o.regex.find_iter(text).map(|m| m.unwrap().range()).collect();
    let got = pieces(text, enc);
    if got != want {
      let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
      let at = want.get(i).or(got.get(i)).unwrap().start;
      panic!(
        "{what} ({enc:?}): piece {i} differs near byte {at}: got {:?}, regex {:?}; context {:?}",
        got.get(i).map(|r| &text[r.clone()]),
        want.get(i).map(|r| &text[r.clone()]),
        &text[text.floor_char_boundary(at.saturating_sub(20))..text.ceil_char_boundary((at + 20).min(text.len()))]
      );
    }
    let expected = o.bpe.encode_ordinary(text).len();
    assert_eq!(count_bytes(text.as_bytes(), enc, enc.vocab(), classes()), expected, "{what} ({enc:?}): count");
    assert_eq!(count(text, enc), expected, "{what} ({enc:?}): count (parallel path)");
  }
}

/// The sum over `split` parts equals the unsplit count, for several part sizes.
fn check_split(text: &str, what: &str) {
  for enc in ENCODINGS {
    let whole = count_bytes(text.as_bytes(), enc, enc.vocab(), classes());
    for target in [1, 7, 64, 1000, 16 * 1024] {
      let parts = split(text.as_bytes(), enc, target);
      assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), text.len());
      let sum: usize = parts.iter().map(|p| count_bytes(p, enc, enc.vocab(), classes())).sum();
      assert_eq!(sum, whole, "{what} ({enc:?}): split into {} parts of ~{target} bytes", parts.len());
    }
  }
}

/// Every safe boundary of a short text splits it without changing the count.
fn check_every_boundary(text: &str, what: &str) {
  let s = text.as_bytes();
  for enc in ENCODINGS {
    let whole = count_bytes(s, enc, enc.vocab(), classes());
    for b in 1..s.len() {
      if is_safe_boundary(s, b) {
        let sum = count_bytes(&s[..b], enc, enc.vocab(), classes()) + count_bytes(&s[b..], enc, enc.vocab(), classes());
        assert_eq!(sum, whole, "{what} ({enc:?}): boundary at {b} of {text:?}");
      }
    }
  }
}

struct Rng(u64);
impl Rng {
  fn next(&mut self) -> u64 {
    self.0 ^= self.0 << 13;
    self.0 ^= self.0 >> 7;
    self.0 ^= self.0 << 17;
    self.0
  }
  fn below(&mut self, n: usize) -> usize {
    (self.next() % n as u64) as usize
  }
}

/// Characters that exercise every class and every alternative.
const POOL: &[&str] = &[
  "a",
  "b",
  "z",
  "A",
  "B",
  "Z",
  "é",
  "É",
  "ß",
  "ſ",
  "ǅ",
  "ʰ",
  "ª",
  "中",
  "文",
  "ア",
  "ー",
  "ا",
  "ب",
  "ה",
  "अ",
  "ि",
  "\u{301}",
  "\u{300}",
  "\u{20dd}",
  "\u{e0100}",
  "0",
  "1",
  "9",
  "٣",
  "Ⅻ",
  "½",
  "²",
  "𝟘",
  " ",
  " ",
  " ",
  "  ",
  "\t",
  "\n",
  "\n",
  "\r",
  "\r\n",
  "\u{b}",
  "\u{c}",
  "\u{85}",
  "\u{a0}",
  "\u{1680}",
  "\u{2028}",
  "\u{2029}",
  "\u{3000}",
  "\u{200b}",
  "\u{feff}",
  "'",
  "'s",
  "'S",
  "'t",
  "'re",
  "'RE",
  "'ve",
  "'m",
  "'ll",
  "'Ll",
  "'d",
  "'ſ",
  "'x",
  ".",
  ",",
  "!",
  "?",
  "/",
  "//",
  "\\",
  "-",
  "_",
  "(",
  ")",
  "{",
  "}",
  "\"",
  "#",
  "$",
  "€",
  "©",
  "😀",
  "👍🏽",
  "\u{0}",
  "\u{7}",
  "\u{7f}",
  "\u{9f}",
  "<|endoftext|>",
];

fn random_text(rng: &mut Rng, len: usize, pool: &[&str]) -> String {
  (0..len).map(|_| pool[rng.below(pool.len())]).collect()
}

const PROSE: &str = "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of \
foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season \
of Darkness, it was the spring of hope, it was the winter of despair.\n\nWe had everything before us, we had nothing \
before us; we were all going direct to Heaven, we were all going direct the other way. \"Don't,\" she said -- \"you'll \
see; I'm sure they'd LIKE it.\"  Mr. O'Brien paid $1,234.56 on 2024-05-17 at 10:45 PM (about 3.5% more).\r\n\
\tIndented line\n    four spaces\n\n\n   \nTHE END   ";

#[test]
fn pieces_and_counts_match_tiktoken_on_prose_and_code() {
  check(PROSE, "prose");
  check(include_str!("../../../README.md"), "README.md");
  check(include_str!("../../../index.d.ts"), "index.d.ts");
  for (name, code) in [
    ("binding/mod.rs", include_str!("../../binding/mod.rs")),
    ("sessions/tasks.rs", include_str!("../../sessions/tasks.rs")),
    ("store/mod.rs", include_str!("../../store/mod.rs")),
    ("transcript/build.rs", include_str!("../../transcript/build.rs")),
    ("tokens/classes.rs", include_str!("classes.rs")),
    ("testing/index.js", include_str!("../../../testing/index.js")),
  ] {
    check(code, name);
    check_split(code, name);
  }
}

#[test]
fn pieces_and_counts_match_tiktoken_on_random_unicode_and_whitespace() {
  let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
  for i in 0..3000 {
    let len = 1 + rng.below(60);
    let text = random_text(&mut rng, len, POOL);
    check(&text, &format!("random #{i}"));
    check_every_boundary(&text, &format!("random #{i}"));
  }
  let ws: Vec<&str> =
    vec![" ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u{a0}", "\u{85}", "\u{3000}", "\u{2028}", "a", "B", "1", ".", "/", "'", "x/"];
  for i in 0..3000 {
    let len = 1 + rng.below(40);
    let text = random_text(&mut rng, len, &ws);
    check(&text, &format!("whitespace #{i}"));
    check_every_boundary(&text, &format!("whitespace #{i}"));
  }
  // Mostly ASCII words, to exercise the ASCII fast path and its hand-over to the general one.
  let ascii: Vec<&str> = vec![
    "the", "a", "Word", "HTTPS", "x", "I", " ", " ", "  ", "'", "'s", "'LL", ".", ",", "\n", "\r\n", "\t", "(", "-", "_", "/", "é", "É",
    "ß", "1", "\u{301}", "\u{a0}", "中",
  ];
  for i in 0..3000 {
    let len = 1 + rng.below(30);
    let text = random_text(&mut rng, len, &ascii);
    check(&text, &format!("ascii #{i}"));
    check_every_boundary(&text, &format!("ascii #{i}"));
  }
  // Long runs: whitespace, letters (the heap merge), digits, punctuation, a base64-like blob.
  for text in [
    " ".repeat(5000),
    "\n".repeat(300) + "x",
    format!("{}\n{}", " \t".repeat(200), "  \r\n".repeat(100)),
    "a".repeat(3000),
    "ab".repeat(700) + "C",
    "ǅ".repeat(200) + &"Ǆ".repeat(200),
    "1234567890".repeat(50),
    "!?.".repeat(400) + "\n\n/",
    (0..2000).map(|i| (b'A' + (i * 7 % 26) as u8) as char).collect::<String>() + "==",
  ] {
    check(&text, "long run");
    check_split(&text, "long run");
  }
}

#[test]
fn large_random_texts_split_and_count_in_parallel_like_one_thread() {
  let mut rng = Rng(42);
  let words: Vec<&str> = POOL.iter().copied().chain(["the ", "word ", "\n", "\n\n", "  ", "fn main() {\n", "}\n", "\n/", "\n "]).collect();
  for i in 0..4 {
    let text = random_text(&mut rng, 60_000 + i * 10_000, &words);
    assert!(text.len() >= PARALLEL_MIN_BYTES);
    check(&text, &format!("large random #{i}"));
    check_split(&text, &format!("large random #{i}"));
  }
  // Prose without line breaks splits on rule 2 only.
  let one_line = PROSE.replace(['\n', '\r'], " ").repeat(200);
  assert!(split(one_line.as_bytes(), Encoding::O200kBase, 4096).len() > 10);
  check(&one_line, "one long line");
  check_split(&one_line, "one long line");
}

/// The real transcripts in `tests/fixtures/transcripts`.
#[test]
fn pieces_and_counts_match_tiktoken_on_transcripts() {
  for f in crate::transcript::tests::fixture_transcripts() {
    let text = std::fs::read_to_string(&f).unwrap();
    // Debug builds of fancy-regex are slow: the first 256 KiB of each is plenty of lines.
    let cut = text.floor_char_boundary(256 * 1024);
    let name = f.file_name().unwrap().to_string_lossy().into_owned();
    check(&text[..cut], &name);
    check_split(&text[..cut], &name);
    check_split(&text, &name);
  }
}

#[test]
fn a_piece_longer_than_the_limit_is_counted_in_chunks_and_shorter_ones_exactly() {
  // One "word" of 25000 letters: a single piece for both encodings, cut inside a "hello".
  let word = "hello".repeat(5000);
  for enc in ENCODINGS {
    assert_eq!(pieces(&word, enc).len(), 1, "{enc:?}");
    let vocab = enc.vocab();
    let chunks: Vec<&[u8]> = long_piece_chunks(word.as_bytes()).collect();
    assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), [LONG_PIECE_BYTES, LONG_PIECE_BYTES, LONG_PIECE_BYTES, 424]);
    let chunked: usize = chunks.iter().map(|c| vocab.merge_large(c)).sum();
    let whole = vocab.merge_large(word.as_bytes());
    // The two differ on this word, so the count says which path was taken.
    assert_ne!(whole, chunked, "{enc:?}: pick a word whose chunks merge differently");
    assert_eq!(count(&word, enc), chunked, "{enc:?}: counted in chunks");
    // Up to the limit, one merge: exactly tiktoken's.
    let at = &word[..LONG_PIECE_BYTES];
    assert_eq!(count(at, enc), oracle(enc).bpe.encode_ordinary(at).len(), "{enc:?}: exact at the limit");
  }
  // Chunks end on character boundaries.
  let wide = "é".repeat(LONG_PIECE_BYTES);
  assert!(long_piece_chunks(wide.as_bytes()).all(|c| std::str::from_utf8(c).is_ok()));
}
