//! One scan of the protocol: the per-scan candidate cap, then hits on nodules and excluded
//! findings (the loop over `noduleAnnots` of the official `evaluateCAD`).

use super::{Candidate, Finding};

/// The settings matching needs.
pub(crate) struct MatchParams {
    pub max_candidates_per_scan: usize,
    pub excluded_as_irrelevant: bool,
}

/// What one scan contributes to the FROC analysis.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ScanOutcome {
    /// One score per detected nodule: the highest probability among its hits.
    pub tp_scores: Vec<f64>,
    /// One probability per false-positive candidate.
    pub fp_scores: Vec<f64>,
    /// Nodules on the scan.
    pub nodules: usize,
    /// Nodules no candidate hits.
    pub missed: usize,
    /// Candidates of the scan in the submission.
    pub submitted: usize,
    /// Candidates left after the cap.
    pub kept: usize,
    /// Candidates ignored because they hit only excluded findings.
    pub ignored_on_excluded: usize,
    /// Sum over nodules of (hits - 1) where a nodule has several hits.
    pub double_detections: usize,
}

impl ScanOutcome {
    /// Adds the counts and score lists of `other` to `self`.
    pub fn add_counts(&mut self, other: &ScanOutcome) {
        self.tp_scores.extend_from_slice(&other.tp_scores);
        self.fp_scores.extend_from_slice(&other.fp_scores);
        self.nodules += other.nodules;
        self.missed += other.missed;
        self.submitted += other.submitted;
        self.kept += other.kept;
        self.ignored_on_excluded += other.ignored_on_excluded;
        self.double_detections += other.double_detections;
    }
}

/// The candidates of one scan kept by the cap, in submission order: all of them when there
/// are at most `max` (or `max == 0`); otherwise those whose probability is strictly above
/// the `(max + 1)`-th highest, as the official script keeps them.
pub(crate) fn apply_cap(all: &[Candidate], indices: &[u32], max: usize) -> Vec<u32> {
    if max == 0 || indices.len() <= max {
        return indices.to_vec();
    }
    let mut probs: Vec<f64> = indices
        .iter()
        .map(|&i| all[i as usize].probability)
        .collect();
    // probs sorted from large to small, then probs[max]: the (max+1)-th largest.
    let (_, threshold, _) = probs.select_nth_unstable_by(max, |a, b| b.total_cmp(a));
    let threshold = *threshold;
    let mut kept = Vec::with_capacity(max);
    for &i in indices {
        if kept.len() >= max {
            break;
        }
        if all[i as usize].probability > threshold {
            kept.push(i);
        }
    }
    kept
}

/// The squared distance between a finding and a candidate, summed in the official order
/// `pow(x - x2, 2) + pow(y - y2, 2) + pow(z - z2, 2)`.
#[inline]
pub(crate) fn distance_squared(f: &Finding, c: &Candidate) -> f64 {
    let dx = f.coord_x - c.coord_x;
    let dy = f.coord_y - c.coord_y;
    let dz = f.coord_z - c.coord_z;
    dx * dx + dy * dy + dz * dz
}

/// Evaluates one scan: `candidates`, `nodules` and `excluded` index into the three slices.
pub(crate) fn match_scan(
    all_candidates: &[Candidate],
    candidates: &[u32],
    all_nodules: &[Finding],
    nodules: &[u32],
    all_excluded: &[Finding],
    excluded: &[u32],
    params: &MatchParams,
) -> ScanOutcome {
    let kept = apply_cap(all_candidates, candidates, params.max_candidates_per_scan);
    let mut out = ScanOutcome {
        nodules: nodules.len(),
        submitted: candidates.len(),
        kept: kept.len(),
        ..ScanOutcome::default()
    };
    // `taken[k]`: kept candidate k is no longer a false positive (it hit a nodule, or an
    // excluded finding that makes it irrelevant): the official `del candidates2[key]`.
    let mut taken = vec![false; kept.len()];

    for &n in nodules {
        let nodule = &all_nodules[n as usize];
        let r2 = nodule.radius_squared_mm2();
        let mut hits = 0usize;
        let mut best: Option<f64> = None;
        // Every candidate is tested, taken or not: one candidate can detect two nodules.
        for (k, &c) in kept.iter().enumerate() {
            let cand = &all_candidates[c as usize];
            if distance_squared(nodule, cand) < r2 {
                hits += 1;
                taken[k] = true;
                if best.is_none_or(|b| cand.probability > b) {
                    best = Some(cand.probability);
                }
            }
        }
        if hits > 1 {
            out.double_detections += hits - 1;
        }
        match best {
            Some(p) => out.tp_scores.push(p),
            None => out.missed += 1,
        }
    }

    if params.excluded_as_irrelevant {
        for &e in excluded {
            let finding = &all_excluded[e as usize];
            let r2 = finding.radius_squared_mm2();
            for (k, &c) in kept.iter().enumerate() {
                if !taken[k] && distance_squared(finding, &all_candidates[c as usize]) < r2 {
                    taken[k] = true;
                    out.ignored_on_excluded += 1;
                }
            }
        }
    }

    out.fp_scores = kept
        .iter()
        .zip(&taken)
        .filter(|(_, &t)| !t)
        .map(|(&c, _)| all_candidates[c as usize].probability)
        .collect();
    out
}
