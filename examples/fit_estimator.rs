//! Fits the estimator's priors on a folder of Claude Code transcripts and reports its error.
//!
//!     cargo run --example fit_estimator [folder]      # default: tests/fixtures/transcripts
//!
//! Paste the printed priors into `estimate::prior`.

use std::path::PathBuf;

use claude_session_manager::context::estimate::{
  fit_priors, leave_one_out_errors, online_errors, pairs_from_transcript, ErrorStats, Estimator, Family,
};

fn main() {
  let dir = std::env::args()
    .nth(1)
    .map(PathBuf::from)
    .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/transcripts")));
  let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
    .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
    .filter_map(|e| e.ok().map(|e| e.path()))
    .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
    .collect();
  files.sort();
  let mut transcripts = Vec::new();
  for f in &files {
    let file = claude_session_manager::transcript::TenantFile::in_folder(f);
    let pairs = pairs_from_transcript(&file, &claude_session_manager::transcript::ReadOptions::full()).unwrap_or_else(|e| panic!("{e}"));
    let usable = pairs.iter().filter(|p| p.usable()).count();
    println!("{:>4} pairs, {:>4} usable  {}", pairs.len(), usable, f.file_name().unwrap().to_string_lossy());
    transcripts.push(pairs);
  }
  let all: Vec<_> = transcripts.iter().flatten().filter(|p| p.usable()).collect();
  println!("\nfitted priors ({} usable pairs):", all.len());
  let fitted = fit_priors(&transcripts);
  for (i, f) in Family::ALL.iter().enumerate() {
    let n = all.iter().filter(|p| p.family == *f).count();
    let p = fitted[i];
    println!(
      "  Family::{:?} => Prior {{ input_factor: {:.3}, output_factor: {:.3}, tool_block_overhead: {:.1} }},  // {n} pairs",
      f, p.input_factor, p.output_factor, p.tool_block_overhead
    );
  }
  let fair = ErrorStats::of(&leave_one_out_errors(&transcripts));
  let builtin: Vec<f64> = transcripts.iter().flat_map(|t| online_errors(Estimator::new(), t)).collect();
  let refit: Vec<f64> = transcripts.iter().flat_map(|t| online_errors(Estimator::with_priors(|f| fitted[f as usize]), t)).collect();
  println!("\nabsolute relative error of the predicted growth between consecutive calls:");
  println!("  leave-one-transcript-out priors + online learning: {fair:?}");
  println!("  built-in priors + online learning (in-sample):     {:?}", ErrorStats::of(&builtin));
  println!("  refitted priors + online learning (in-sample):     {:?}", ErrorStats::of(&refit));
  // The same leave-one-out priors without learning, to see what learning adds.
  let mut static_errors = Vec::new();
  for (i, held_out) in transcripts.iter().enumerate() {
    let rest: Vec<_> = transcripts.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, t)| t.clone()).collect();
    let priors = fit_priors(&rest);
    let e = Estimator::with_priors(|f| priors[f as usize]);
    for p in held_out.iter().filter(|p| p.usable()) {
      static_errors.push((e.estimate_pair(p) as f64 - p.added_api as f64).abs() / p.added_api as f64);
    }
  }
  println!("  leave-one-transcript-out priors, no learning:      {:?}", ErrorStats::of(&static_errors));
}
