//! Predicting how many tokens new content adds to a Claude context.
//!
//! Claude's tokenizer is not public, so text is counted with tiktoken (`o200k_base`) and scaled by
//! a factor per model family. The factors are learned from what the API reported: between two
//! consecutive API calls of a session, the context (`input_tokens + cache_creation_input_tokens +
//! cache_read_input_tokens`) grows by exactly what was added in between: the previous reply
//! (its text and tool calls, as the next request carries them) and the new user content (prompt,
//! tool results). The transcript holds both as text, so each such pair of calls is one
//! observation (a [`Pair`]).
//!
//! The model of a pair's growth is
//! `input_factor × user tiktoken + output_factor × reply tiktoken + tool_block_overhead × tool blocks`:
//! the reply is rendered differently from user text when sent back (tool calls become markup), and
//! every `tool_use`/`tool_result` block carries ~40 tokens of framing. A new prompt adds
//! `input_factor × tiktoken(prompt)`; that factor is what [`Estimator`] learns per family, starting
//! from a prior fitted on real transcripts (see [`prior`]).
//!
//! Not predictable from a transcript, hence excluded from fitting and evaluation: replies with
//! thinking (the transcript holds a summary; the context holds more, or for some models nothing
//! once the turn ends), images (not text), and content the CLI injects without writing it to the
//! transcript (`<system-reminder>`s about edited files, todo lists, hook output). The last one is
//! what the error figures in the tests mostly measure.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tokens::{count, Encoding};
use crate::error::Result;
use crate::transcript::{read_messages_with, Block, History, MessageKind, ReadOptions, Role, TenantFile};

/// A model family. Claude models up to Opus 4.6 share a tokenizer, but the families render and
/// frame content a little differently, so each has its own factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Family {
  Opus,
  Sonnet,
  Haiku,
  Other,
}

impl Family {
  pub const ALL: [Family; 4] = [Family::Opus, Family::Sonnet, Family::Haiku, Family::Other];

  /// The family of a model name (`claude-opus-4-6`, `sonnet`, `claude-3-5-haiku-latest`…).
  pub fn of_model(model: &str) -> Family {
    let m = model.to_ascii_lowercase();
    if m.contains("opus") {
      Family::Opus
    } else if m.contains("sonnet") {
      Family::Sonnet
    } else if m.contains("haiku") {
      Family::Haiku
    } else {
      Family::Other
    }
  }

  pub fn as_str(self) -> &'static str {
    match self {
      Family::Opus => "opus",
      Family::Sonnet => "sonnet",
      Family::Haiku => "haiku",
      Family::Other => "other",
    }
  }

  fn index(self) -> usize {
    self as usize
  }
}

/// The growth model of one family.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Prior {
  /// API tokens per tiktoken token of user content (prompts, tool results).
  pub input_factor: f64,
  /// API tokens per tiktoken token of a reply's text and tool calls when sent back.
  pub output_factor: f64,
  /// API tokens of framing per `tool_use` and per `tool_result` block.
  pub tool_block_overhead: f64,
}

/// The fitted priors.
///
/// Fitted on the calibration transcripts (see tests/fixtures/transcripts/README.md): 413 usable pairs of
/// consecutive main-chain calls (376 Opus 4.6, 37 Sonnet 4/4.5) from 9 transcripts, minimising the
/// sum of absolute relative errors of the predicted growth (grid search, see [`fit_prior`]).
/// A family gets its own fit when it has at least 30 usable pairs from at least 2 transcripts;
/// the others (Haiku: its only transcript thinks on every reply; unknown models) get the fit over
/// all pairs. Refit with `cargo run --example fit_estimator <folder of transcripts>` and paste
/// what it prints here.
pub fn prior(family: Family) -> Prior {
  match family {
    Family::Opus => Prior { input_factor: 1.114, output_factor: 1.330, tool_block_overhead: 41.0 },
    Family::Sonnet => Prior { input_factor: 1.156, output_factor: 1.206, tool_block_overhead: 36.0 },
    Family::Haiku | Family::Other => Prior { input_factor: 1.114, output_factor: 1.330, tool_block_overhead: 40.5 },
  }
}

/// What happened between two consecutive API calls of a session's main chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pair {
  /// The family of the model of both calls.
  pub family: Family,
  /// tiktoken (`o200k_base`) count of the user content added: prompts, tool results, commands,
  /// CLI meta messages.
  pub user_tiktoken: u64,
  /// tiktoken count of the first call's reply: text, and tool calls (name and parameters).
  pub reply_tiktoken: u64,
  /// `tool_use` blocks of the reply plus `tool_result` blocks of the user content.
  pub tool_blocks: u64,
  /// The growth the API reported: context of the second call minus context of the first.
  pub added_api: i64,
  /// The reply had thinking blocks (their cost in the context is not in the transcript).
  pub thinking: bool,
  /// The added content had images, or blocks this module cannot count.
  pub uncountable: bool,
  /// The user content included a typed prompt (not only tool results).
  pub prompt: bool,
}

impl Pair {
  /// Everything added, in tiktoken tokens.
  pub fn added_tiktoken(&self) -> u64 {
    self.user_tiktoken + self.reply_tiktoken
  }

  /// Whether the pair is a fair observation of text growth: no thinking, nothing uncountable, and
  /// a positive growth.
  pub fn usable(&self) -> bool {
    !self.thinking && !self.uncountable && self.added_api > 0
  }
}

fn tik(text: &str) -> u64 {
  count(text, Encoding::O200kBase) as u64
}

/// How a tool call's input is counted: parameter names and raw values (strings unquoted and
/// unescaped, as Claude's function-call markup carries them; other values as JSON).
fn tool_input_text(input: &Value) -> String {
  match input {
    Value::Object(o) => o
      .iter()
      .map(|(k, v)| match v {
        Value::String(s) => format!("{k}\n{s}"),
        other => format!("{k}\n{other}"),
      })
      .collect::<Vec<_>>()
      .join("\n"),
    other => other.to_string(),
  }
}

/// The pairs of consecutive API calls of a history, in order. The history must be read with
/// [`ReadOptions::full`] (meta messages included, tool results uncut); cut results make a pair
/// uncountable. API messages are already merged by `message.id`, sidechains and dead branches are
/// not in a history; pairs across a compaction, across a change of model, and calls without usage
/// (synthetic messages) are skipped.
pub fn pairs_from_history(h: &History) -> Vec<Pair> {
  struct UserSide {
    tiktoken: u64,
    results: u64,
    uncountable: bool,
    prompt: bool,
  }
  let fresh = || UserSide { tiktoken: 0, results: 0, uncountable: false, prompt: false };
  let mut out = Vec::new();
  let mut prev: Option<(usize, u64)> = None;
  let mut user = fresh();
  for (i, m) in h.messages.iter().enumerate() {
    if m.role == Role::User {
      if m.kind == MessageKind::CompactSummary {
        prev = None;
        user = fresh();
        continue;
      }
      user.prompt |= m.kind == MessageKind::Prompt;
      for b in &m.blocks {
        match b {
          Block::Text { text } => user.tiktoken += tik(text),
          Block::ToolResult { content, truncated, images, .. } => {
            user.tiktoken += tik(content);
            user.results += 1;
            user.uncountable |= *truncated || *images > 0;
          }
          _ => user.uncountable = true,
        }
      }
      continue;
    }
    let Some(ctx) = m.context_tokens() else { continue };
    let model = m.model.as_deref().unwrap_or("");
    if let Some((p, prev_ctx)) = prev {
      let reply = &h.messages[p];
      if reply.model.as_deref() == Some(model) {
        let (mut reply_tiktoken, mut uses, mut thinking, mut uncountable) = (0, 0, false, user.uncountable);
        for b in &reply.blocks {
          match b {
            Block::Text { text } => reply_tiktoken += tik(text),
            Block::ToolUse { name, input, .. } => {
              reply_tiktoken += tik(name) + tik(&tool_input_text(input));
              uses += 1;
            }
            Block::Thinking { .. } => thinking = true,
            Block::Other { block_type } if block_type == "redacted_thinking" => thinking = true,
            _ => uncountable = true,
          }
        }
        out.push(Pair {
          family: Family::of_model(model),
          user_tiktoken: user.tiktoken,
          reply_tiktoken,
          tool_blocks: uses + user.results,
          added_api: ctx as i64 - prev_ctx as i64,
          thinking,
          uncountable,
          prompt: user.prompt,
        });
      }
    }
    prev = Some((i, ctx));
    user = fresh();
  }
  out
}

/// The pairs of a transcript file (empty when it does not exist), read within `opts`' bounds
/// (never through a link: see [`TenantFile`]).
pub fn pairs_from_transcript(file: &TenantFile, opts: &ReadOptions) -> Result<Vec<Pair>> {
  Ok(pairs_from_history(&read_messages_with(file, opts)?))
}

/// What an [`Estimator`] learned for one family: the user-content growth it observed beyond the
/// modelled reply and framing, and the tiktoken count of that content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Learned {
  pub api_tokens: f64,
  pub tiktoken: f64,
  pub observations: u64,
}

/// Predicts context growth per model family: priors plus what it observes.
///
/// The learned input factor is a ratio of sums shrunk towards the prior:
/// `(PRIOR_WEIGHT × prior + Σ api) / (PRIOR_WEIGHT + Σ tiktoken)`, where each observation's API
/// growth is clamped to `[0.5, 2.0] ×` its tiktoken count, so one large injection the transcript
/// does not show (a file-change reminder, hook output) cannot drag the factor far. It serialises
/// (serde) so a caller can persist it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Estimator {
  priors: [Prior; 4],
  learned: [Learned; 4],
}

impl Default for Estimator {
  fn default() -> Self {
    Estimator::new()
  }
}

impl Estimator {
  /// How many tiktoken tokens of evidence the prior is worth.
  pub const PRIOR_WEIGHT: f64 = 5_000.0;
  /// Observations with less user content than this (tiktoken tokens) are too noisy to learn from.
  pub const MIN_OBSERVED_TIKTOKEN: u64 = 100;

  /// An estimator starting from the fitted [`prior`]s.
  pub fn new() -> Self {
    Estimator::with_priors(prior)
  }

  /// An estimator starting from other priors.
  pub fn with_priors(priors: impl Fn(Family) -> Prior) -> Self {
    Estimator { priors: Family::ALL.map(priors), learned: [Learned::default(); 4] }
  }

  /// The prior of a family.
  pub fn prior(&self, family: Family) -> Prior {
    self.priors[family.index()]
  }

  /// What was learned for a family.
  pub fn learned(&self, family: Family) -> Learned {
    self.learned[family.index()]
  }

  /// The current input factor of a family: API tokens per tiktoken token of new user content.
  pub fn factor(&self, family: Family) -> f64 {
    let l = self.learned[family.index()];
    let p = self.priors[family.index()].input_factor;
    (Self::PRIOR_WEIGHT * p + l.api_tokens) / (Self::PRIOR_WEIGHT + l.tiktoken)
  }

  /// Records that user content of `added_tiktoken` tiktoken tokens (one message, no tool blocks)
  /// made the context grow by `added_api` tokens. Tiny or non-positive observations are ignored.
  pub fn observe(&mut self, family: Family, added_tiktoken: u64, added_api: i64) {
    self.observe_user_growth(family, added_tiktoken, added_api as f64);
  }

  fn observe_user_growth(&mut self, family: Family, tiktoken: u64, api: f64) {
    if tiktoken < Self::MIN_OBSERVED_TIKTOKEN || api <= 0.0 {
      return;
    }
    let t = tiktoken as f64;
    let l = &mut self.learned[family.index()];
    l.api_tokens += api.clamp(0.5 * t, 2.0 * t);
    l.tiktoken += t;
    l.observations += 1;
  }

  /// Learns from a pair of calls: the part of the growth the reply and the framing do not
  /// explain (per the prior) is attributed to the user content. Only usable pairs whose user
  /// content is at least as large as the reply teach anything.
  pub fn observe_pair(&mut self, pair: &Pair) {
    if !pair.usable() || pair.user_tiktoken < pair.reply_tiktoken {
      return;
    }
    let p = self.prior(pair.family);
    let explained = p.output_factor * pair.reply_tiktoken as f64 + p.tool_block_overhead * pair.tool_blocks as f64;
    self.observe_user_growth(pair.family, pair.user_tiktoken, pair.added_api as f64 - explained);
  }

  /// Learns from every pair of a transcript; returns how many were usable.
  pub fn train_on_transcript(&mut self, file: &TenantFile, opts: &ReadOptions) -> Result<usize> {
    let pairs = pairs_from_transcript(file, opts)?;
    pairs.iter().for_each(|p| self.observe_pair(p));
    Ok(pairs.iter().filter(|p| p.usable()).count())
  }

  /// [`Self::train_on_transcript`] on a conversation already read (e.g. from the store).
  pub fn train_on_history(&mut self, h: &History) -> usize {
    let pairs = pairs_from_history(h);
    pairs.iter().for_each(|p| self.observe_pair(p));
    pairs.iter().filter(|p| p.usable()).count()
  }

  /// The tokens a new user message of `tiktoken_count` tiktoken (`o200k_base`) tokens will add
  /// to a context of this family.
  pub fn estimate(&self, family: Family, tiktoken_count: u64) -> u64 {
    (self.factor(family) * tiktoken_count as f64).round() as u64
  }

  /// [`estimate`](Self::estimate) for a text.
  pub fn estimate_text(&self, family: Family, text: &str) -> u64 {
    self.estimate(family, tik(text))
  }

  /// The predicted growth between the two calls of a pair.
  pub fn estimate_pair(&self, pair: &Pair) -> u64 {
    let p = self.prior(pair.family);
    let g = self.factor(pair.family) * pair.user_tiktoken as f64
      + p.output_factor * pair.reply_tiktoken as f64
      + p.tool_block_overhead * pair.tool_blocks as f64;
    g.round() as u64
  }
}

/// Fits a prior to usable pairs by minimising the sum of absolute relative errors of the
/// predicted growth (a convex problem; solved by a coarse-to-fine grid search). `None` without
/// usable pairs.
pub fn fit_prior(pairs: &[Pair]) -> Option<Prior> {
  let data: Vec<[f64; 4]> = pairs
    .iter()
    .filter(|p| p.usable())
    .map(|p| [p.user_tiktoken as f64, p.reply_tiktoken as f64, p.tool_blocks as f64, p.added_api as f64])
    .collect();
  if data.is_empty() {
    return None;
  }
  let cost = |fi: f64, fo: f64, ov: f64| -> f64 { data.iter().map(|[u, r, b, api]| ((fi * u + fo * r + ov * b) - api).abs() / api).sum() };
  // (centre, half-width, step) per parameter; each stage searches around the previous best.
  let mut best = (1.2, 1.2, 40.0);
  let stages = [((1.4, 0.8, 0.05), (50.0, 50.0, 10.0)), ((0.0, 0.05, 0.01), (0.0, 10.0, 2.0)), ((0.0, 0.01, 0.002), (0.0, 2.0, 0.5))];
  for (k, ((fc, fw, fs), (oc, ow, os))) in stages.into_iter().enumerate() {
    let (ci, co, cv) = if k == 0 { (fc, fc, oc) } else { best };
    let grid = |c: f64, w: f64, s: f64| {
      let n = (2.0 * w / s).round() as i64;
      (0..=n).map(move |i| c - w + i as f64 * s)
    };
    let mut top = (f64::INFINITY, best);
    for fi in grid(ci, fw, fs).filter(|x| *x > 0.0) {
      for fo in grid(co, fw, fs).filter(|x| *x > 0.0) {
        for ov in grid(cv, ow, os).filter(|x| *x >= 0.0) {
          let c = cost(fi, fo, ov);
          if c < top.0 {
            top = (c, (fi, fo, ov));
          }
        }
      }
    }
    best = top.1;
  }
  let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
  Some(Prior { input_factor: r3(best.0), output_factor: r3(best.1), tool_block_overhead: (best.2 * 2.0).round() / 2.0 })
}

/// A family gets its own prior with at least this many usable pairs…
pub const MIN_FAMILY_PAIRS: usize = 30;
/// …from at least this many transcripts; otherwise the fit over all pairs.
pub const MIN_FAMILY_TRANSCRIPTS: usize = 2;

/// Fits the priors of every family from the pairs of several transcripts (one `Vec` each), with
/// the rule documented at [`prior`]. Families without enough data get the pooled fit; with no
/// usable pairs at all, the built-in priors.
pub fn fit_priors(transcripts: &[Vec<Pair>]) -> [Prior; 4] {
  let all: Vec<Pair> = transcripts.iter().flatten().cloned().collect();
  let pooled = fit_prior(&all);
  Family::ALL.map(|f| {
    let mine: Vec<Pair> = all.iter().filter(|p| p.family == f && p.usable()).cloned().collect();
    let sources = transcripts.iter().filter(|t| t.iter().any(|p| p.family == f && p.usable())).count();
    let own = if mine.len() >= MIN_FAMILY_PAIRS && sources >= MIN_FAMILY_TRANSCRIPTS { fit_prior(&mine) } else { None };
    own.or(pooled).unwrap_or_else(|| prior(f))
  })
}

/// Absolute relative errors of an estimator predicting each usable pair of one transcript from
/// the pairs before it (it observes each pair after predicting it).
pub fn online_errors(mut estimator: Estimator, pairs: &[Pair]) -> Vec<f64> {
  let mut errors = Vec::new();
  for p in pairs {
    if p.usable() {
      let predicted = estimator.estimate_pair(p) as f64;
      errors.push((predicted - p.added_api as f64).abs() / p.added_api as f64);
    }
    estimator.observe_pair(p);
  }
  errors
}

/// Summary of relative errors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorStats {
  pub pairs: usize,
  pub median: f64,
  pub p90: f64,
}

impl ErrorStats {
  /// Median and 90th percentile (linear interpolation between order statistics).
  pub fn of(errors: &[f64]) -> ErrorStats {
    let mut v = errors.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| -> f64 {
      if v.is_empty() {
        return f64::NAN;
      }
      let k = (v.len() - 1) as f64 * p;
      let (i, frac) = (k.floor() as usize, k - k.floor());
      if i + 1 >= v.len() {
        v[i]
      } else {
        v[i] + (v[i + 1] - v[i]) * frac
      }
    };
    ErrorStats { pairs: v.len(), median: q(0.5), p90: q(0.9) }
  }
}

/// The fair evaluation: for each transcript, fit the priors on all the others, then predict its
/// pairs online (each from the prior and the pairs before it). Returns the pooled errors.
pub fn leave_one_out_errors(transcripts: &[Vec<Pair>]) -> Vec<f64> {
  let mut errors = Vec::new();
  for (i, held_out) in transcripts.iter().enumerate() {
    if !held_out.iter().any(Pair::usable) {
      continue;
    }
    let rest: Vec<Vec<Pair>> = transcripts.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, t)| t.clone()).collect();
    let priors = fit_priors(&rest);
    errors.extend(online_errors(Estimator::with_priors(|f| priors[f.index()]), held_out));
  }
  errors
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::transcript::{parse_str, tests::fixture_transcripts, tests::transcripts_in};
  use serde_json::json;

  #[test]
  fn families_from_model_names() {
    assert_eq!(Family::of_model("claude-opus-4-6"), Family::Opus);
    assert_eq!(Family::of_model("claude-sonnet-4-5-20250929"), Family::Sonnet);
    assert_eq!(Family::of_model("Claude-3-5-HAIKU-latest"), Family::Haiku);
    assert_eq!(Family::of_model("<synthetic>"), Family::Other);
    assert_eq!(Family::of_model(""), Family::Other);
  }

  fn pair(family: Family, user: u64, reply: u64, blocks: u64, api: i64) -> Pair {
    Pair {
      family,
      user_tiktoken: user,
      reply_tiktoken: reply,
      tool_blocks: blocks,
      added_api: api,
      thinking: false,
      uncountable: false,
      prompt: false,
    }
  }

  #[test]
  fn estimates_scale_with_the_factor_and_learning_moves_it() {
    let mut e = Estimator::new();
    let p = prior(Family::Opus);
    assert_eq!(e.prior(Family::Opus), p);
    assert_eq!(e.factor(Family::Opus), p.input_factor);
    assert_eq!(e.estimate(Family::Opus, 1000), (p.input_factor * 1000.0).round() as u64);
    assert_eq!(e.estimate(Family::Opus, 0), 0);
    assert!(e.estimate_text(Family::Sonnet, "hello world") >= 2);
    // Noise is ignored: tiny and non-positive observations.
    e.observe(Family::Opus, 10, 5000);
    e.observe(Family::Opus, 500, -3);
    assert_eq!(e.learned(Family::Opus), Learned::default());
    // A model whose tokenizer yields 1.5 tokens per tiktoken token: the factor converges.
    for _ in 0..200 {
      e.observe(Family::Opus, 1000, 1500);
    }
    assert!((e.factor(Family::Opus) - 1.5).abs() < 0.02, "{}", e.factor(Family::Opus));
    assert_eq!(e.factor(Family::Sonnet), prior(Family::Sonnet).input_factor, "families learn apart");
    // A hidden 20k-token injection on a 200-token result moves the factor only a little.
    let mut f = Estimator::new();
    f.observe(Family::Haiku, 200, 20_000);
    assert!(f.factor(Family::Haiku) < prior(Family::Haiku).input_factor + 0.05);
    // Pairs: the reply and the framing are explained by the prior, the rest is user content.
    let mut g = Estimator::new();
    let s = prior(Family::Sonnet);
    let api = (1.4 * 2000.0 + s.output_factor * 300.0 + s.tool_block_overhead * 2.0) as i64;
    for _ in 0..100 {
      g.observe_pair(&pair(Family::Sonnet, 2000, 300, 2, api));
    }
    assert!((g.factor(Family::Sonnet) - 1.4).abs() < 0.02, "{}", g.factor(Family::Sonnet));
    let predicted = g.estimate_pair(&pair(Family::Sonnet, 2000, 300, 2, 0)) as i64;
    assert!((predicted - api).abs() < api / 50, "{predicted} vs {api}");
    // Thinking pairs and reply-dominated pairs teach nothing.
    let mut h = Estimator::new();
    h.observe_pair(&Pair { thinking: true, ..pair(Family::Opus, 2000, 0, 0, 9000) });
    h.observe_pair(&pair(Family::Opus, 200, 900, 0, 9000));
    assert_eq!(h.learned(Family::Opus).observations, 0);
    // The state round-trips through JSON.
    let back: Estimator = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
    assert_eq!(back, g);
  }

  #[test]
  fn pairs_follow_the_main_chain_and_skip_compactions() {
    let line = |v: Value| v.to_string();
    let usage =
      |ctx: u64| json!({"input_tokens": 2, "cache_creation_input_tokens": 10, "cache_read_input_tokens": ctx - 12, "output_tokens": 1});
    let asst = |uuid: &str, parent: &str, id: &str, model: &str, block: Value, ctx: u64| {
      line(json!({"type": "assistant", "uuid": uuid, "parentUuid": parent,
        "message": {"id": id, "role": "assistant", "model": model, "content": [block], "usage": usage(ctx)}}))
    };
    let user = |uuid: &str, parent: Option<&str>, content: Value| {
      line(json!({"type": "user", "uuid": uuid, "parentUuid": parent, "message": {"role": "user", "content": content}}))
    };
    let doc = [
      user("u1", None, json!("hello there")),
      asst("a1", "u1", "m1", "claude-opus-4-6", json!({"type": "text", "text": "Let me check."}), 20_000),
      asst("a1b", "a1", "m1", "claude-opus-4-6", json!({"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls -la"}}), 20_000),
      user("r1", Some("a1b"), json!([{"type": "tool_result", "tool_use_id": "t1", "content": "a.txt\nb.txt"}])),
      line(json!({"type": "assistant", "uuid": "s1", "parentUuid": "r1", "isSidechain": true,
        "message": {"id": "side", "role": "assistant", "model": "claude-haiku-4-5", "content": [], "usage": usage(900)}})),
      asst("a2", "r1", "m2", "claude-opus-4-6", json!({"type": "thinking", "thinking": "hmm", "signature": "x"}), 20_150),
      asst("a2b", "a2", "m2", "claude-opus-4-6", json!({"type": "text", "text": "Two files."}), 20_150),
      user("u2", Some("a2b"), json!("thanks")),
      asst("a3", "u2", "m3", "claude-opus-4-6", json!({"type": "text", "text": "Welcome."}), 20_190),
      line(json!({"type": "system", "subtype": "compact_boundary", "uuid": "b", "parentUuid": null, "logicalParentUuid": "a3",
        "compactMetadata": {"trigger": "auto", "preTokens": 20_200}})),
      line(json!({"type": "user", "uuid": "cs", "parentUuid": "b", "isCompactSummary": true, "message": {"role": "user", "content": "Summary"}})),
      asst("a4", "cs", "m4", "claude-opus-4-6", json!({"type": "text", "text": "Continuing."}), 3_000),
      user("u3", Some("a4"), json!("switch")),
      asst("a5", "u3", "m5", "claude-sonnet-4-5", json!({"type": "text", "text": "ok"}), 3_050),
    ]
    .join("\n");
    let pairs = pairs_from_history(&parse_str(&doc, &ReadOptions::full()));
    assert_eq!(pairs.len(), 2, "{pairs:?}"); // m1→m2, m2→m3; none across the compaction or the model change
    let (a, b) = (&pairs[0], &pairs[1]);
    assert_eq!((a.family, a.added_api, a.tool_blocks, a.thinking, a.prompt), (Family::Opus, 150, 2, false, false));
    assert_eq!(a.user_tiktoken, tik("a.txt\nb.txt"));
    assert_eq!(a.reply_tiktoken, tik("Let me check.") + tik("Bash") + tik("command\nls -la"));
    assert!(a.usable());
    assert_eq!((b.added_api, b.tool_blocks, b.thinking, b.prompt, b.usable()), (40, 0, true, true, false));
    assert_eq!(b.user_tiktoken, tik("thanks"));
    assert_eq!(b.reply_tiktoken, tik("Two files."));
  }

  #[test]
  fn fit_recovers_known_parameters() {
    let truth = Prior { input_factor: 1.13, output_factor: 1.31, tool_block_overhead: 42.0 };
    let pairs: Vec<Pair> = (0..60u64)
      .map(|i| {
        let (u, r, b) = (50 + (i * 37) % 900, 20 + (i * 53) % 400, i % 4);
        let api = truth.input_factor * u as f64 + truth.output_factor * r as f64 + truth.tool_block_overhead * b as f64;
        pair(Family::Opus, u, r, b, api.round() as i64)
      })
      .collect();
    let fit = fit_prior(&pairs).unwrap();
    assert!((fit.input_factor - 1.13).abs() < 0.01 && (fit.output_factor - 1.31).abs() < 0.01, "{fit:?}");
    assert!((fit.tool_block_overhead - 42.0).abs() <= 1.0, "{fit:?}");
    assert_eq!(fit_prior(&[]), None);
    let stats = ErrorStats::of(&[0.4, 0.1, 0.3, 0.2]);
    assert!((stats.median - 0.25).abs() < 1e-12 && (stats.p90 - 0.37).abs() < 1e-12 && stats.pairs == 4);
  }

  fn pairs_of(files: &[std::path::PathBuf]) -> Vec<Vec<Pair>> {
    files.iter().map(|p| pairs_from_transcript(&TenantFile::in_folder(p), &ReadOptions::full()).unwrap()).collect()
  }

  /// Why the calibration tests are ignored by default.
  const CALIBRATION: &str = "CSM_CALIBRATION_TRANSCRIPTS=<folder> cargo test --lib estimate -- --ignored";

  /// The calibration set: the transcripts the priors were fitted on (413 usable pairs, most of
  /// them from sessions published without a license, so not in the repository; see
  /// tests/fixtures/transcripts/README.md), in the folder `CSM_CALIBRATION_TRANSCRIPTS` names.
  fn calibration_pairs() -> Vec<Vec<Pair>> {
    let dir = std::env::var_os("CSM_CALIBRATION_TRANSCRIPTS")
      .unwrap_or_else(|| panic!("this test needs the calibration transcripts: {CALIBRATION}"));
    pairs_of(&transcripts_in(std::path::Path::new(&dir)))
  }

  /// On the transcripts in the repository (37 usable pairs of Sonnet 4 / 4.5 sessions), the
  /// built-in priors with online learning stay within the error measured on them.
  #[test]
  fn estimator_error_on_the_repository_transcripts_stays_within_measured_bounds() {
    let transcripts = pairs_of(&fixture_transcripts());
    let fitted: Vec<f64> = transcripts.iter().flat_map(|t| online_errors(Estimator::new(), t)).collect();
    let fitted = ErrorStats::of(&fitted);
    eprintln!("built-in priors + online, repository transcripts: {fitted:?}");
    assert!(fitted.pairs >= 37, "{fitted:?}");
    assert!(fitted.median <= 0.13 && fitted.p90 <= 0.45, "{fitted:?}");
  }

  /// The estimator's error on predicting the growth between consecutive calls of the real
  /// transcripts, evaluated fairly: priors fitted without the transcript under test, then learned
  /// online within it (each pair predicted from the pairs before it).
  ///
  /// Measured on 413 usable pairs (`cargo run --example fit_estimator` prints the same figures):
  /// median 0.070, p90 0.308; with the built-in priors (in-sample) median 0.060, p90 0.314. During
  /// the design, one `tiktoken × factor` for everything (no reply/framing terms) measured median
  /// 0.25, p90 0.55 under the same leave-one-out protocol.
  #[test]
  #[ignore = "needs the calibration transcripts: CSM_CALIBRATION_TRANSCRIPTS=<folder> cargo test --lib estimate -- --ignored"]
  fn estimator_error_on_real_transcripts_stays_within_measured_bounds() {
    let transcripts = calibration_pairs();
    let fair = ErrorStats::of(&leave_one_out_errors(&transcripts));
    let fitted: Vec<f64> = transcripts.iter().flat_map(|t| online_errors(Estimator::new(), t)).collect();
    let fitted = ErrorStats::of(&fitted);
    let prompts: Vec<f64> = transcripts
      .iter()
      .flat_map(|t| t.iter().filter(|p| p.usable() && p.prompt))
      .map(|p| (Estimator::new().estimate_pair(p) as f64 - p.added_api as f64).abs() / p.added_api as f64)
      .collect();
    let prompts = ErrorStats::of(&prompts);
    eprintln!("leave-one-transcript-out + online: {fair:?}\nbuilt-in priors + online: {fitted:?}\npairs with a typed prompt: {prompts:?}");
    assert!(fair.pairs >= 400, "{fair:?}");
    assert!(fair.median <= 0.09 && fair.p90 <= 0.36, "{fair:?}");
    assert!(fitted.median <= 0.085 && fitted.p90 <= 0.35, "{fitted:?}");
    assert!(prompts.median <= 0.15, "{prompts:?}");
  }

  /// The built-in priors are what `fit_priors` finds on the calibration transcripts (refit and
  /// paste when the transcripts change).
  #[test]
  #[ignore = "needs the calibration transcripts: CSM_CALIBRATION_TRANSCRIPTS=<folder> cargo test --lib estimate -- --ignored"]
  fn built_in_priors_match_a_refit() {
    let transcripts = calibration_pairs();
    let fitted = fit_priors(&transcripts);
    for f in Family::ALL {
      let (a, b) = (fitted[f.index()], prior(f));
      assert!(
        (a.input_factor - b.input_factor).abs() < 0.011
          && (a.output_factor - b.output_factor).abs() < 0.011
          && (a.tool_block_overhead - b.tool_block_overhead).abs() <= 1.0,
        "{f:?}: refit {a:?}, built in {b:?}"
      );
    }
  }
}
