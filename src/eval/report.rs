//! Text and JSON reports of an evaluation, for the `lungcad eval` command.

use super::FrocResult;
use serde_json::{json, Value};
use std::fmt::Write;

/// Formats a number, or `n/a` for NaN (no bootstrap).
fn num(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "n/a".to_string()
    } else {
        format!("{v:.decimals$}")
    }
}

/// A human-readable report: counts in the terms of the official `CADAnalysis.txt`, the
/// sensitivity at the seven operating points with their bootstrap intervals, and the CPM.
pub fn report_text(r: &FrocResult) -> String {
    let mut s = String::new();
    let c = &r.config;
    let pct = c.confidence * 100.0;
    let cap = if c.max_candidates_per_scan == 0 {
        "no per-scan cap".to_string()
    } else {
        format!("at most {} per scan", c.max_candidates_per_scan)
    };
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "LUNA16 FROC evaluation: {} scans, {} nodules",
        r.scans, r.nodules
    );
    let _ = writeln!(
        s,
        "Candidates: {} evaluated ({cap}; {} over the cap), {} on unlisted series ignored",
        r.candidates, r.candidates_over_cap, r.candidates_unknown_series
    );
    let _ = writeln!(
        s,
        "True positives: {}  False positives: {}  False negatives: {}",
        r.tp, r.fp, r.fn_
    );
    let _ = writeln!(
        s,
        "Ignored: {} candidates on excluded findings, {} double detections",
        r.ignored_on_excluded, r.ignored_double_detections
    );
    let sensitivity = if r.nodules == 0 {
        0.0
    } else {
        r.tp as f64 / r.nodules as f64
    };
    let _ = writeln!(
        s,
        "Sensitivity (all candidates): {}  Average candidates per scan: {}",
        num(sensitivity, 4),
        num(r.candidates as f64 / r.scans.max(1) as f64, 2)
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "  FP/scan  Sensitivity  {pct:.0}% CI");
    for i in 0..7 {
        let (lo, hi) = r.sensitivity_ci[i];
        let _ = writeln!(
            s,
            "  {:>7}  {:>11}  [{}, {}]",
            format_fps(r.fps_per_scan[i]),
            num(r.sensitivities[i], 4),
            num(lo, 4),
            num(hi, 4)
        );
    }
    let _ = writeln!(s);
    let _ = write!(
        s,
        "CPM: {}  {pct:.0}% CI [{}, {}]",
        num(r.cpm, 4),
        num(r.cpm_ci.0, 4),
        num(r.cpm_ci.1, 4)
    );
    if c.bootstrap_resamples > 0 {
        let _ = writeln!(
            s,
            " ({} bootstrap resamples of the scans, seed {})",
            c.bootstrap_resamples, c.seed
        );
    } else {
        let _ = writeln!(s, " (no bootstrap)");
    }
    s
}

/// `0.125`, `0.25`, `0.5`, `1`, `2`, ... as the official plot labels them.
fn format_fps(v: f64) -> String {
    let mut t = format!("{v:.3}");
    while t.ends_with('0') {
        t.pop();
    }
    if t.ends_with('.') {
        t.pop();
    }
    t
}

/// A compact JSON report: `sensitivities` (7 numbers), `fps_per_scan`, `cpm`, `cpm_ci`
/// (`[lo, hi]`), `sensitivity_ci`, `tp`, `fp`, `fn`, the other counts and the
/// configuration. NaN (no bootstrap) is written as `null`. The curve and band are left out
/// (serialize [`FrocResult`] for everything).
pub fn report_json(r: &FrocResult) -> Value {
    json!({
        "fps_per_scan": r.fps_per_scan,
        "sensitivities": r.sensitivities,
        "cpm": r.cpm,
        "cpm_ci": [r.cpm_ci.0, r.cpm_ci.1],
        "sensitivity_ci": r.sensitivity_ci.iter().map(|&(lo, hi)| [lo, hi]).collect::<Vec<_>>(),
        "cpm_bootstrap_mean": r.cpm_bootstrap_mean,
        "tp": r.tp,
        "fp": r.fp,
        "fn": r.fn_,
        "nodules": r.nodules,
        "scans": r.scans,
        "candidates": r.candidates,
        "candidates_submitted": r.candidates_submitted,
        "candidates_over_cap": r.candidates_over_cap,
        "candidates_unknown_series": r.candidates_unknown_series,
        "ignored_on_excluded": r.ignored_on_excluded,
        "ignored_double_detections": r.ignored_double_detections,
        "findings_unknown_series": r.findings_unknown_series,
        "config": r.config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fps_labels() {
        let labels: Vec<String> = super::super::OPERATING_POINTS
            .iter()
            .map(|&v| format_fps(v))
            .collect();
        assert_eq!(labels, ["0.125", "0.25", "0.5", "1", "2", "4", "8"]);
    }
}
