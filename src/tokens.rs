//! Native token counting with tiktoken-rs. Each encoding is built once per process and shared.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::error::{Error, Result};

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
      other => Err(Error::invalid(format!(
        "unknown encoding \"{}\"; use \"o200k_base\" (default) or \"cl100k_base\"",
        other.escape_debug()
      ))),
    }
  }

  fn bpe(self) -> &'static CoreBPE {
    static O200K: OnceLock<CoreBPE> = OnceLock::new();
    static CL100K: OnceLock<CoreBPE> = OnceLock::new();
    match self {
      Encoding::O200kBase => O200K.get_or_init(|| tiktoken_rs::o200k_base().expect("o200k_base tables are built in")),
      Encoding::Cl100kBase => CL100K.get_or_init(|| tiktoken_rs::cl100k_base().expect("cl100k_base tables are built in")),
    }
  }
}

/// Counts tokens of `text`; special-token text is counted as ordinary text.
pub fn count(text: &str, enc: Encoding) -> usize {
  if text.is_empty() {
    return 0;
  }
  enc.bpe().encode_ordinary(text).len()
}

#[cfg(test)]
mod tests {
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
}
