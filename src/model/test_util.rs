//! Helpers shared by the model's unit tests.

use crate::rng::SplitMix64;

/// `n` values uniform in [-1, 1).
pub(crate) fn random(n: usize, rng: &mut SplitMix64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()
}

/// The largest absolute difference between `a` and `b`, element by element.
pub(crate) fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// The largest absolute value in `v`, at least 1: what a relative tolerance is relative to.
pub(crate) fn scale(v: &[f32]) -> f32 {
    v.iter().fold(1f32, |m, v| m.max(v.abs()))
}
