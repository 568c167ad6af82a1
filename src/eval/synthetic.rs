//! Deterministic synthetic submissions for tests, benchmarks and the Python cross-check.
//!
//! A submission is derived from the reference standard: candidates near the nodules
//! (jittered, sometimes two per nodule), candidates on excluded findings, and false
//! positives spread over the scans. Every random number comes from SplitMix64 and every
//! value is computed with the same IEEE operations in the same order as
//! `tests/scripts/luna16_cpm_reference.py`, so both produce bit-identical submissions.
//!
//! The algorithm, with `hits = SplitMix64(seed)`, `fps = SplitMix64(seed ^ FP_STREAM)`,
//! `u()` a uniform draw in `[0, 1)` and `q(p)` equal to `floor(p * levels) / levels` (or `p`
//! when `levels` is 0), scan `i` of `N` in `seriesuids` order:
//!
//! 1. for each nodule of the scan, in file order: if `hits.u() < detect_fraction`, emit one
//!    candidate, or two if `hits.u() < duplicate_fraction`; each at
//!    `x + (2 u() - 1) * r * jitter` (then y, then z; `r` the hit radius) with probability
//!    `q(1 - 0.5 u()²)`;
//! 2. for each excluded finding of the scan, in file order: if
//!    `hits.u() < excluded_hit_fraction`, emit a candidate at its centre with probability
//!    `q(0.9 u())`;
//! 3. emit `floor(F (i + 1) / N) - floor(F i / N)` false positives (`F` the total), each at
//!    `x = -180 + 360 fps.u()`, `y = -180 + 360 fps.u()`, `z = -350 + 300 fps.u()` with
//!    probability `q(u⁴)` (`u = fps.u()`, computed `((u u) u) u`).
//!
//! Random false positives may of course land on a nodule or an excluded finding; the
//! evaluation treats them like any other candidate.

use super::{Annotations, Candidate, Finding};
use crate::rng::SplitMix64;
use std::collections::HashMap;

/// XORed into the seed to give the false positives their own stream, so the candidates
/// near findings do not depend on the number of false positives.
pub const FP_STREAM: u64 = 0x5EED_F00D_5EED_F00D;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// Seed of both random streams.
    pub seed: u64,
    /// Probability that a nodule gets a candidate near it.
    pub detect_fraction: f64,
    /// Probability that a detected nodule gets a second candidate.
    pub duplicate_fraction: f64,
    /// Offsets are uniform in `±jitter * radius` per axis: below `1/sqrt(3)` every candidate
    /// hits its nodule, above some miss.
    pub jitter: f64,
    /// Probability that an excluded finding gets a candidate at its centre.
    pub excluded_hit_fraction: f64,
    /// Total number of false positives, spread evenly over the scans.
    pub false_positives: usize,
    /// Probabilities are rounded down to multiples of `1 / probability_levels`, which makes
    /// ties; 0 keeps them continuous.
    pub probability_levels: u32,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            seed: 1,
            detect_fraction: 0.9,
            duplicate_fraction: 0.2,
            jitter: 0.7,
            excluded_hit_fraction: 0.1,
            false_positives: 100_000,
            probability_levels: 1000,
        }
    }
}

fn quantize(p: f64, levels: u32) -> f64 {
    if levels == 0 {
        p
    } else {
        (p * levels as f64).floor() / levels as f64
    }
}

fn by_series(findings: &Annotations) -> HashMap<&str, Vec<&Finding>> {
    let mut map: HashMap<&str, Vec<&Finding>> = HashMap::new();
    for f in &findings.findings {
        map.entry(f.seriesuid.as_str()).or_default().push(f);
    }
    map
}

/// Generates a submission (see the module documentation for the exact algorithm).
pub fn generate(
    annotations: &Annotations,
    excluded: &Annotations,
    seriesuids: &[String],
    spec: &SyntheticSpec,
) -> Vec<Candidate> {
    let nodules = by_series(annotations);
    let irrelevant = by_series(excluded);
    let mut hits = SplitMix64::new(spec.seed);
    let mut fps = SplitMix64::new(spec.seed ^ FP_STREAM);
    let levels = spec.probability_levels;
    let n = seriesuids.len();
    let total_fp = spec.false_positives as u128;
    let mut out = Vec::with_capacity(spec.false_positives + annotations.len() * 2);
    for (i, uid) in seriesuids.iter().enumerate() {
        let push = |out: &mut Vec<Candidate>, x: f64, y: f64, z: f64, p: f64| {
            out.push(Candidate {
                seriesuid: uid.clone(),
                coord_x: x,
                coord_y: y,
                coord_z: z,
                probability: p,
            })
        };
        for f in nodules.get(uid.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
            if hits.uniform() < spec.detect_fraction {
                let copies = if hits.uniform() < spec.duplicate_fraction {
                    2
                } else {
                    1
                };
                let r = f.effective_diameter_mm() / 2.0;
                for _ in 0..copies {
                    let dx = (2.0 * hits.uniform() - 1.0) * r * spec.jitter;
                    let dy = (2.0 * hits.uniform() - 1.0) * r * spec.jitter;
                    let dz = (2.0 * hits.uniform() - 1.0) * r * spec.jitter;
                    let u = hits.uniform();
                    let p = quantize(1.0 - 0.5 * u * u, levels);
                    push(&mut out, f.coord_x + dx, f.coord_y + dy, f.coord_z + dz, p);
                }
            }
        }
        for f in irrelevant
            .get(uid.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if hits.uniform() < spec.excluded_hit_fraction {
                let p = quantize(0.9 * hits.uniform(), levels);
                push(&mut out, f.coord_x, f.coord_y, f.coord_z, p);
            }
        }
        let count =
            (total_fp * (i as u128 + 1) / n as u128 - total_fp * i as u128 / n as u128) as usize;
        for _ in 0..count {
            let x = -180.0 + 360.0 * fps.uniform();
            let y = -180.0 + 360.0 * fps.uniform();
            let z = -350.0 + 300.0 * fps.uniform();
            let u = fps.uniform();
            push(&mut out, x, y, z, quantize(u * u * u * u, levels));
        }
    }
    out
}

/// Generates a submission of exactly `total` candidates (when the candidates near findings
/// number at most `total`): `spec.false_positives` is replaced by `total` minus their count.
pub fn generate_with_total(
    annotations: &Annotations,
    excluded: &Annotations,
    seriesuids: &[String],
    spec: &SyntheticSpec,
    total: usize,
) -> Vec<Candidate> {
    let near = generate(
        annotations,
        excluded,
        seriesuids,
        &SyntheticSpec {
            false_positives: 0,
            ..spec.clone()
        },
    );
    let spec = SyntheticSpec {
        false_positives: total.saturating_sub(near.len()),
        ..spec.clone()
    };
    generate(annotations, excluded, seriesuids, &spec)
}
