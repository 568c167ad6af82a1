//! The FROC curve as the official `computeFROC` computes it with
//! `sklearn.metrics.roc_curve`, and `numpy.interp`, both replicated operation by operation
//! so that results agree with the Python script to the last bit wherever possible.
//!
//! The curve is computed from integer counts: each scored item (a detected nodule's score or
//! a false positive's probability) carries its scan, and a scan weight says how many times
//! the scan appears. Weight 1 everywhere is the plain evaluation; a bootstrap resample is the
//! same sorted list with each scan weighted by its multiplicity in the resample, which gives
//! exactly what `roc_curve` gives on the concatenated resampled list, without building it.

use super::matching::ScanOutcome;
use super::FrocCurve;
use rayon::prelude::*;

/// One scored item of the FROC analysis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Entry {
    pub prob: f64,
    pub scan: u32,
    pub tp: bool,
}

/// All scored items, sorted by decreasing probability, and the nodule count of each scan.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScoredSet {
    entries: Vec<Entry>,
    nodules_per_scan: Vec<u64>,
}

/// Reusable work space of [`ScoredSet::fill`]; after a call, `fps` and `sens` (and
/// `thresholds` when asked for) hold the curve.
#[derive(Debug, Clone, Default)]
pub(crate) struct CurveBuffers {
    fp: Vec<u64>,
    tp: Vec<u64>,
    thr: Vec<f64>,
    pub fps: Vec<f64>,
    pub sens: Vec<f64>,
    pub thresholds: Vec<f64>,
}

impl ScoredSet {
    pub fn new(outcomes: &[ScanOutcome]) -> Self {
        let total: usize = outcomes
            .iter()
            .map(|o| o.tp_scores.len() + o.fp_scores.len())
            .sum();
        let mut entries = Vec::with_capacity(total);
        for (s, o) in outcomes.iter().enumerate() {
            let scan = s as u32;
            entries.extend(o.tp_scores.iter().map(|&prob| Entry {
                prob,
                scan,
                tp: true,
            }));
            entries.extend(o.fp_scores.iter().map(|&prob| Entry {
                prob,
                scan,
                tp: false,
            }));
        }
        // Decreasing probability. The order within equal probabilities does not matter:
        // roc_curve makes one point per distinct score.
        entries.par_sort_unstable_by(|a, b| b.prob.total_cmp(&a.prob));
        ScoredSet {
            entries,
            nodules_per_scan: outcomes.iter().map(|o| o.nodules as u64).collect(),
        }
    }

    /// Computes the FROC curve of the scans weighted by `weights` (one per scan) into `b`,
    /// with `n_images` as the divisor of false positives (the official `len(seriesUIDs)`).
    pub fn fill(
        &self,
        weights: &[u32],
        n_images: usize,
        keep_thresholds: bool,
        b: &mut CurveBuffers,
    ) {
        b.fp.clear();
        b.tp.clear();
        b.thr.clear();
        b.fps.clear();
        b.sens.clear();
        b.thresholds.clear();

        let total_nodules: u64 = self
            .nodules_per_scan
            .iter()
            .zip(weights)
            .map(|(&n, &w)| n * w as u64)
            .sum();

        // sklearn's _binary_clf_curve: cumulative counts at each distinct score, where a
        // score exists only if some item with it is present (weight > 0).
        let (mut cum_tp, mut cum_fp) = (0u64, 0u64);
        let e = &self.entries;
        let mut i = 0;
        while i < e.len() {
            let p = e[i].prob;
            let mut added = 0u64;
            while i < e.len() && e[i].prob == p {
                let w = weights[e[i].scan as usize] as u64;
                if e[i].tp {
                    cum_tp += w;
                } else {
                    cum_fp += w;
                }
                added += w;
                i += 1;
            }
            if added > 0 {
                b.fp.push(cum_fp);
                b.tp.push(cum_tp);
                if keep_thresholds {
                    b.thr.push(p);
                }
            }
        }

        // The (0, 0) point roc_curve prepends.
        b.fps.push(0.0);
        b.sens.push(0.0);
        if keep_thresholds {
            b.thresholds.push(f64::INFINITY);
        }
        let m = b.fp.len();
        if m == 0 {
            // No scored item at all (sklearn would raise): a single point at (0, 0).
            return;
        }
        let fp_total = b.fp[m - 1];
        let detected = b.tp[m - 1];
        let (fp_total_f, detected_f) = (fp_total as f64, detected as f64);
        let (images_f, nodules_f) = (n_images as f64, total_nodules as f64);

        // roc_curve's drop_intermediate: keep the ends and every point where the second
        // difference of the false- or true-positive counts is non-zero.
        for k in 0..m {
            let keep = m <= 2
                || k == 0
                || k == m - 1
                || b.fp[k + 1] + b.fp[k - 1] != 2 * b.fp[k]
                || b.tp[k + 1] + b.tp[k - 1] != 2 * b.tp[k];
            if !keep {
                continue;
            }
            // computeFROC: fps = fpr * (candidates - detected) / images, where fpr =
            // fps / fps[-1]; with no false positive at all, the script's special case: 0.
            let fps = if fp_total == 0 {
                0.0
            } else {
                (b.fp[k] as f64 / fp_total_f) * fp_total_f / images_f
            };
            // sens = tpr * detected / nodules, where tpr = tps / tps[-1] (NaN in sklearn
            // when nothing is detected; 0 here).
            let sens = if detected == 0 {
                0.0
            } else {
                (b.tp[k] as f64 / detected_f) * detected_f / nodules_f
            };
            b.fps.push(fps);
            b.sens.push(sens);
            if keep_thresholds {
                b.thresholds.push(b.thr[k]);
            }
        }
    }

    /// The curve of the scans weighted by `weights`, as an owned [`FrocCurve`].
    pub fn curve(
        &self,
        weights: &[u32],
        n_images: usize,
        thresholds: bool,
        b: &mut CurveBuffers,
    ) -> FrocCurve {
        self.fill(weights, n_images, thresholds, b);
        FrocCurve {
            fps_per_scan: b.fps.clone(),
            sensitivity: b.sens.clone(),
            thresholds: b.thresholds.clone(),
        }
    }
}

/// `numpy.interp(x, xp, fp)` for one `x`, with numpy's exact rules: `xp` non-decreasing;
/// below the first point `fp[0]`, above the last `fp[last]`; otherwise `j` is the largest
/// index with `xp[j] <= x`, the value is `fp[j]` when `j` is last or `xp[j] == x`, else
/// `slope * (x - xp[j]) + fp[j]`. An empty `xp` gives NaN.
pub(crate) fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let n = xp.len().min(fp.len());
    if n == 0 || x.is_nan() {
        return f64::NAN;
    }
    if x < xp[0] {
        return fp[0];
    }
    if x > xp[n - 1] {
        return fp[n - 1];
    }
    // First index with xp > x, minus one (xp[0] <= x, so j >= 0).
    let j = xp[..n].partition_point(|&v| v <= x) - 1;
    interp_at(x, xp, fp, j, n)
}

/// The value of `numpy.interp` at `x` given numpy's segment index `j`.
#[inline]
fn interp_at(x: f64, xp: &[f64], fp: &[f64], j: usize, n: usize) -> f64 {
    if j == n - 1 || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    let mut y = slope * (x - xp[j]) + fp[j];
    if y.is_nan() {
        y = slope * (x - xp[j + 1]) + fp[j + 1];
        if y.is_nan() && fp[j] == fp[j + 1] {
            y = fp[j];
        }
    }
    y
}

/// `numpy.interp` at several increasing `xs` at once (one merge pass).
pub(crate) fn interp_sorted(xs: &[f64], xp: &[f64], fp: &[f64], out: &mut Vec<f64>) {
    out.clear();
    let n = xp.len().min(fp.len());
    let mut j = 0usize;
    for &x in xs {
        if n == 0 || x.is_nan() {
            out.push(f64::NAN);
        } else if x < xp[0] {
            out.push(fp[0]);
        } else if x > xp[n - 1] {
            out.push(fp[n - 1]);
        } else {
            while j + 1 < n && xp[j + 1] <= x {
                j += 1;
            }
            // xs increase, so j only moves forward; it is the largest index with xp[j] <= x.
            out.push(interp_at(x, xp, fp, j, n));
        }
    }
}

/// The mean of seven values, summed left to right as `numpy.mean` does for fewer than
/// eight elements.
pub(crate) fn mean7(v: &[f64; 7]) -> f64 {
    v.iter().fold(0.0, |acc, &x| acc + x) / 7.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interp_matches_numpy_rules() {
        let xp = [0.0, 0.0, 1.0, 1.0, 3.0];
        let fp = [0.0, 0.2, 0.4, 0.6, 1.0];
        // Duplicated xp: numpy takes the last of the equal points.
        assert_eq!(interp(0.0, &xp, &fp), 0.2);
        assert_eq!(interp(1.0, &xp, &fp), 0.6);
        assert!((interp(0.5, &xp, &fp) - 0.3).abs() < 1e-15);
        assert!((interp(2.0, &xp, &fp) - 0.8).abs() < 1e-15);
        assert_eq!(interp(5.0, &xp, &fp), 1.0);
        assert_eq!(interp(-1.0, &xp, &fp), 0.0);
        assert!(interp(0.5, &[], &[]).is_nan());
        let xs = [-1.0, 0.0, 0.5, 1.0, 2.0, 5.0];
        let mut out = Vec::new();
        interp_sorted(&xs, &xp, &fp, &mut out);
        let single: Vec<f64> = xs.iter().map(|&x| interp(x, &xp, &fp)).collect();
        assert_eq!(out, single);
    }

    fn outcome(tp: &[f64], fp: &[f64], nodules: usize) -> ScanOutcome {
        ScanOutcome {
            tp_scores: tp.to_vec(),
            fp_scores: fp.to_vec(),
            nodules,
            missed: nodules - tp.len(),
            ..ScanOutcome::default()
        }
    }

    #[test]
    fn curve_matches_hand_computed_roc() {
        // Scores 0.9(TP) 0.8(FP) 0.7(TP) 0.6(FP) 0.5(FP), 3 nodules, 2 scans.
        let set = ScoredSet::new(&[
            outcome(&[0.9, 0.7], &[0.8], 2),
            outcome(&[], &[0.6, 0.5], 1),
        ]);
        let mut b = CurveBuffers::default();
        let c = set.curve(&[1, 1], 2, true, &mut b);
        // Raw points (fp, tp): (0,1) (1,1) (1,2) (2,2) (3,2); second differences drop
        // (2,2) only: fp 1,2,3 is linear and tp 2,2,2 is linear.
        assert_eq!(c.thresholds, vec![f64::INFINITY, 0.9, 0.8, 0.7, 0.5]);
        assert_eq!(c.fps_per_scan, vec![0.0, 0.0, 0.5, 0.5, 1.5]);
        let s = 1.0 / 3.0;
        assert_eq!(
            c.sensitivity,
            vec![
                0.0,
                (0.5 * 2.0) / 3.0,
                (0.5 * 2.0) / 3.0,
                2.0 / 3.0,
                2.0 / 3.0
            ]
        );
        assert!((c.sensitivity[1] - s).abs() < 1e-15);
    }

    #[test]
    fn weights_equal_concatenation() {
        let outcomes = [
            outcome(&[0.9], &[0.3, 0.8], 2),
            outcome(&[0.5], &[0.5, 0.1], 1),
        ];
        let set = ScoredSet::new(&outcomes);
        let mut b = CurveBuffers::default();
        let weighted = set.curve(&[2, 1], 3, true, &mut b);
        let duplicated = ScoredSet::new(&[
            outcomes[0].clone(),
            outcomes[0].clone(),
            outcomes[1].clone(),
        ]);
        let plain = duplicated.curve(&[1, 1, 1], 3, true, &mut b);
        assert_eq!(weighted, plain);
    }

    #[test]
    fn no_false_positives_and_no_detections() {
        let set = ScoredSet::new(&[outcome(&[0.4, 0.9], &[], 3)]);
        let mut b = CurveBuffers::default();
        let c = set.curve(&[1], 1, false, &mut b);
        assert!(c.fps_per_scan.iter().all(|&f| f == 0.0));
        assert_eq!(interp(1.0, &c.fps_per_scan, &c.sensitivity), 2.0 / 3.0);

        let set = ScoredSet::new(&[outcome(&[], &[0.4, 0.9], 3)]);
        let c = set.curve(&[1], 1, false, &mut b);
        assert!(c.sensitivity.iter().all(|&s| s == 0.0));

        let set = ScoredSet::new(&[outcome(&[], &[], 0)]);
        let c = set.curve(&[1], 1, false, &mut b);
        assert_eq!(c.fps_per_scan, vec![0.0]);
        assert_eq!(c.sensitivity, vec![0.0]);
    }
}
