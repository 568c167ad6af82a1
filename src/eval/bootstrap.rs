//! Bootstrap confidence intervals over scans, as the official `computeFROC_bootstrap`:
//! each resample draws `len(seriesUIDs)` scans with replacement, pools their scored items,
//! computes the FROC curve with the scan count as divisor and interpolates it.
//!
//! Instead of concatenating the resampled items (what the script does), each resample
//! weights the scans of the one globally sorted item list by their multiplicity, which gives
//! the same integer counts at every threshold (see [`super::froc`]). Resample `b` draws its
//! scans from its own SplitMix64 stream, seeded with the `b`-th output of a SplitMix64
//! seeded with [`super::EvalConfig::seed`], so resamples run in parallel and reproduce.

use super::froc::{interp_sorted, mean7, CurveBuffers, ScoredSet};
use super::{BootstrapBand, EvalConfig, OPERATING_POINTS};
use crate::rng::SplitMix64;
use rayon::prelude::*;

/// What the bootstrap reports.
pub(crate) struct BootstrapOutput {
    pub cpm_ci: (f64, f64),
    pub cpm_mean: f64,
    pub sensitivity_ci: [(f64, f64); 7],
    pub band: Option<BootstrapBand>,
}

/// `n` false-positive rates log-spaced from 1/8 to 8 (both included).
pub(crate) fn log_grid(n: usize) -> Vec<f64> {
    let lo = OPERATING_POINTS[0].log2();
    let hi = OPERATING_POINTS[6].log2();
    (0..n)
        .map(|k| {
            if k == 0 {
                OPERATING_POINTS[0]
            } else if k + 1 == n {
                OPERATING_POINTS[6]
            } else {
                (lo + (hi - lo) * k as f64 / (n - 1) as f64).exp2()
            }
        })
        .collect()
}

/// The scan multiplicities of one resample of `n` scans.
pub(crate) fn resample_weights(stream_seed: u64, n: usize, weights: &mut Vec<u32>) {
    weights.clear();
    weights.resize(n, 0);
    let mut rng = SplitMix64::new(stream_seed);
    for _ in 0..n {
        weights[rng.below(n)] += 1;
    }
}

/// `numpy.add.reduce` of a contiguous float64 array: numpy's pairwise summation (blocks of
/// up to 128 summed with eight accumulators, larger arrays split in halves rounded to a
/// multiple of 8), so that means agree with `numpy.average` to the last bit.
pub(crate) fn numpy_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |acc, &v| acc + v)
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[i..] {
            res += v;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum(&a[..n2]) + numpy_sum(&a[n2..])
    }
}

/// The official `compute_mean_ci` on one column: sorts `values` and returns
/// `(mean, sorted[floor(pz * n)], sorted[floor((1 - pz) * n)])` with `pz = (1 - conf) / 2`.
pub(crate) fn mean_ci(values: &mut [f64], confidence: f64) -> (f64, f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    values.sort_unstable_by(f64::total_cmp);
    let mean = numpy_sum(values) / n as f64;
    let pz = (1.0 - confidence) / 2.0;
    let lo = ((pz * n as f64).floor() as usize).min(n - 1);
    let hi = (((1.0 - pz) * n as f64).floor() as usize).min(n - 1);
    (mean, values[lo], values[hi])
}

/// Runs the bootstrap of `config`.
pub(crate) fn run(scored: &ScoredSet, n_scans: usize, config: &EvalConfig) -> BootstrapOutput {
    let resamples = config.bootstrap_resamples;
    if resamples == 0 || n_scans == 0 {
        return BootstrapOutput {
            cpm_ci: (f64::NAN, f64::NAN),
            cpm_mean: f64::NAN,
            sensitivity_ci: [(f64::NAN, f64::NAN); 7],
            band: None,
        };
    }
    let mut master = SplitMix64::new(config.seed);
    let stream_seeds: Vec<u64> = (0..resamples).map(|_| master.next_u64()).collect();
    let grid = log_grid(config.band_points);

    struct Work {
        buffers: CurveBuffers,
        weights: Vec<u32>,
        at_points: Vec<f64>,
    }
    // Per resample: the seven sensitivities and the band row.
    let rows: Vec<([f64; 7], Vec<f64>)> = stream_seeds
        .par_iter()
        .map_init(
            || Work {
                buffers: CurveBuffers::default(),
                weights: Vec::new(),
                at_points: Vec::with_capacity(7),
            },
            |w, &seed| {
                resample_weights(seed, n_scans, &mut w.weights);
                scored.fill(&w.weights, n_scans, false, &mut w.buffers);
                interp_sorted(
                    &OPERATING_POINTS,
                    &w.buffers.fps,
                    &w.buffers.sens,
                    &mut w.at_points,
                );
                let mut sens = [0.0; 7];
                sens.copy_from_slice(&w.at_points);
                let mut band = Vec::with_capacity(grid.len());
                interp_sorted(&grid, &w.buffers.fps, &w.buffers.sens, &mut band);
                (sens, band)
            },
        )
        .collect();

    let confidence = config.confidence;
    let mut column = Vec::with_capacity(resamples);

    let mut sensitivity_ci = [(0.0, 0.0); 7];
    for (i, ci) in sensitivity_ci.iter_mut().enumerate() {
        column.clear();
        column.extend(rows.iter().map(|r| r.0[i]));
        let (_, lo, hi) = mean_ci(&mut column, confidence);
        *ci = (lo, hi);
    }
    column.clear();
    column.extend(rows.iter().map(|r| mean7(&r.0)));
    let (cpm_mean, cpm_lo, cpm_hi) = mean_ci(&mut column, confidence);

    let band_stats: Vec<(f64, f64, f64)> = (0..grid.len())
        .into_par_iter()
        .map_init(
            || Vec::with_capacity(resamples),
            |col, g| {
                col.clear();
                col.extend(rows.iter().map(|r| r.1[g]));
                mean_ci(col, confidence)
            },
        )
        .collect();
    let band = BootstrapBand {
        fps_per_scan: grid,
        mean: band_stats.iter().map(|s| s.0).collect(),
        lower: band_stats.iter().map(|s| s.1).collect(),
        upper: band_stats.iter().map(|s| s.2).collect(),
    };

    BootstrapOutput {
        cpm_ci: (cpm_lo, cpm_hi),
        cpm_mean,
        sensitivity_ci,
        band: Some(band),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_ends_exactly_at_the_operating_range() {
        let g = log_grid(7);
        assert_eq!(g[0], 0.125);
        assert_eq!(g[6], 8.0);
        for (a, b) in g.iter().zip(OPERATING_POINTS.iter()) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!(g.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn percentile_indices_follow_compute_mean_ci() {
        let mut v: Vec<f64> = (0..1000).rev().map(|i| i as f64).collect();
        let (mean, lo, hi) = mean_ci(&mut v, 0.95);
        assert_eq!(mean, 499.5);
        assert_eq!(lo, 25.0);
        // pz = 0.025000000000000022; (1 - pz) * 1000 rounds to 975.0 exactly.
        assert_eq!(hi, 975.0);
        let mut one = [3.0];
        assert_eq!(mean_ci(&mut one, 0.95), (3.0, 3.0, 3.0));
    }

    #[test]
    fn numpy_sum_is_pairwise() {
        assert_eq!(numpy_sum(&[]), 0.0);
        assert_eq!(numpy_sum(&[1.0, 2.0, 3.0]), 6.0);
        // 0.1 summed 1000 times: pairwise and sequential summation round differently.
        let v = vec![0.1; 1000];
        let sequential = v.iter().fold(0.0, |a, &x| a + x);
        assert_eq!(numpy_sum(&v), 100.00000000000001); // numpy.add.reduce(numpy.full(1000, 0.1))
        assert_eq!(sequential, 99.9999999999986);
    }

    #[test]
    fn resample_weights_sum_to_the_scan_count() {
        let mut w = Vec::new();
        resample_weights(99, 888, &mut w);
        assert_eq!(w.len(), 888);
        assert_eq!(w.iter().map(|&x| x as usize).sum::<usize>(), 888);
    }
}
