//! Context-window math and the cost ledger: pure functions over stored numbers.

pub mod estimate;
pub mod tokens;

use serde::Serialize;

use crate::cli::stream::ResultLine;
use crate::store::{ContextSnapshot, Usage};

/// What `getSessionContext` and `TaskResult.contextInfo` say.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextInfo {
  pub estimated_tokens: u64,
  pub max_tokens: u64,
  pub usage_percentage: f64,
  pub should_compact: bool,
  pub can_continue: bool,
  pub source: String,
  pub measured_at: Option<i64>,
}

/// Builds the context report from a snapshot (or none: an empty session), the window to use
/// when the snapshot has none, the compaction threshold in percent, and the tokens the next
/// prompt is expected to add.
pub fn context_info(snapshot: Option<&ContextSnapshot>, default_window: u64, threshold: f64, next_prompt: u64) -> ContextInfo {
  let (tokens, window, source, at) = match snapshot {
    Some(s) => (s.tokens, if s.window > 0 { s.window } else { default_window }, s.source.clone(), Some(s.measured_at)),
    None => (0, default_window, "estimate".to_string(), None),
  };
  let pct = if window == 0 { 100.0 } else { tokens as f64 * 100.0 / window as f64 };
  let pct = (pct * 100.0).round() / 100.0;
  let after_next = tokens.saturating_add(next_prompt);
  ContextInfo {
    estimated_tokens: tokens,
    max_tokens: window,
    usage_percentage: pct,
    should_compact: pct >= threshold || (window > 0 && (after_next as f64) * 100.0 / window as f64 >= threshold),
    can_continue: after_next < window,
    source,
    measured_at: at,
  }
}

/// The window of the model that ran, from `result.modelUsage` (the largest reported), if any.
pub fn window_from_result(r: &ResultLine) -> Option<u64> {
  r.model_usage.iter().filter_map(|m| m.context_window).max()
}

/// A task's own cost from the CLI's `total_cost_usd`, whichever meaning it has:
/// older CLIs report the cost of this process, others the cost accumulated over every resume of
/// the session. `modelUsage` tells them apart: when its token counts exceed what this process
/// used (`result.usage`), the figures are cumulative and the task's cost is the growth since the
/// last watermark. Returns `(task cost, new watermark)`.
pub fn task_cost(r: &ResultLine, watermark: f64) -> (f64, f64) {
  let reported = match r.total_cost_usd {
    Some(c) if c.is_finite() && c >= 0.0 => c,
    _ => return (0.0, watermark),
  };
  let process_tokens = r.usage.context_total();
  let counted: u64 = r.model_usage.iter().map(|m| m.tokens).sum();
  let cumulative = counted > process_tokens && reported >= watermark;
  if cumulative {
    (reported - watermark, reported)
  } else {
    // Per process: the watermark follows the session's running total.
    (reported, watermark + reported)
  }
}

/// Adds two usages.
pub fn add_usage(a: Usage, b: Usage) -> Usage {
  Usage {
    input_tokens: a.input_tokens + b.input_tokens,
    output_tokens: a.output_tokens + b.output_tokens,
    cache_read_input_tokens: a.cache_read_input_tokens + b.cache_read_input_tokens,
    cache_creation_input_tokens: a.cache_creation_input_tokens + b.cache_creation_input_tokens,
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::cli::stream::ModelUsage;

  fn result(cost: f64, process_tokens: u64, counted: u64) -> ResultLine {
    ResultLine {
      total_cost_usd: Some(cost),
      usage: Usage { input_tokens: process_tokens, ..Default::default() },
      model_usage: vec![ModelUsage { model: "m".into(), tokens: counted, cost_usd: Some(cost), context_window: Some(200_000) }],
      ..Default::default()
    }
  }

  #[test]
  fn ledger_per_process_semantics() {
    // Three tasks costing 1, 2, 3, each reported on its own.
    let mut w = 0.0;
    let mut total = 0.0;
    for (c, tok) in [(1.0, 100), (2.0, 200), (3.0, 300)] {
      let (cost, nw) = task_cost(&result(c, tok, tok), w);
      total += cost;
      w = nw;
    }
    assert_eq!(total, 6.0);
  }

  #[test]
  fn ledger_cumulative_semantics() {
    // Same three tasks, reported as running totals 1, 3, 6 with cumulative token counts.
    let mut w = 0.0;
    let mut costs = vec![];
    for (c, tok, counted) in [(1.0, 100, 100), (3.0, 200, 300), (6.0, 300, 600)] {
      let (cost, nw) = task_cost(&result(c, tok, counted), w);
      costs.push(cost);
      w = nw;
    }
    assert_eq!(costs, vec![1.0, 2.0, 3.0]);
  }

  #[test]
  fn context_report() {
    let snap = ContextSnapshot { tokens: 160_000, window: 200_000, source: "api".into(), measured_at: 5 };
    let i = context_info(Some(&snap), 100, 80.0, 0);
    assert_eq!(i.usage_percentage, 80.0);
    assert!(i.should_compact && i.can_continue);
    assert_eq!(i.max_tokens, 200_000);
    let i = context_info(Some(&snap), 100, 90.0, 50_000);
    assert!(i.should_compact && !i.can_continue);
    let i = context_info(None, 200_000, 80.0, 0);
    assert_eq!((i.estimated_tokens, i.source.as_str(), i.should_compact), (0, "estimate", false));
  }

  #[test]
  fn context_report_boundaries() {
    let snap = |tokens: u64, window: u64| ContextSnapshot { tokens, window, source: "api".into(), measured_at: 7 };
    // A snapshot without a window takes the default one.
    let c = context_info(Some(&snap(500, 0)), 1000, 80.0, 0);
    assert_eq!((c.max_tokens, c.usage_percentage), (1000, 50.0));
    assert_eq!(context_info(Some(&snap(500, 2000)), 1000, 80.0, 0).max_tokens, 2000);
    // The next prompt alone decides shouldCompact: 10 % now, 20 % or 55 % after it, threshold 50.
    let low = context_info(Some(&snap(100, 1000)), 1000, 50.0, 100);
    assert_eq!((low.usage_percentage, low.should_compact, low.can_continue), (10.0, false, true));
    let high = context_info(Some(&snap(100, 1000)), 1000, 50.0, 450);
    assert_eq!((high.usage_percentage, high.should_compact), (10.0, true));
    // A prompt that exactly fills the window cannot continue; one token less can.
    assert!(!context_info(Some(&snap(100, 1000)), 1000, 99.0, 900).can_continue);
    assert!(context_info(Some(&snap(100, 1000)), 1000, 99.0, 899).can_continue);
  }

  #[test]
  fn window_from_result_is_the_largest_reported() {
    let mut r = result(1.0, 10, 10);
    assert_eq!(window_from_result(&r), Some(200_000));
    r.model_usage.push(ModelUsage { model: "big".into(), tokens: 1, cost_usd: None, context_window: Some(1_000_000) });
    r.model_usage.push(ModelUsage { model: "none".into(), tokens: 1, cost_usd: None, context_window: None });
    assert_eq!(window_from_result(&r), Some(1_000_000));
    assert_eq!(window_from_result(&ResultLine::default()), None);
  }
}
