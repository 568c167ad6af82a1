//! The detection loss (grt123's): binary cross-entropy on every positive anchor cell and on
//! the hardest negatives of each patch (online hard-negative mining), half and half, plus
//! smooth L1 on the positives' offsets and log-size.

use crate::detect::head::{CHANNELS_PER_ANCHOR, IGNORED, NEGATIVE, POSITIVE};
use crate::error::{Error, Result};
use burn::prelude::{Bool, Tensor, TensorData};
use ndarray::Array4;
use serde::{Deserialize, Serialize};

/// Weights and hard-negative mining of [`detection_loss`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Negative anchor cells per patch that enter the classification loss: the ones the
    /// network scores highest (hard-negative mining). Default 64.
    pub hard_negatives_per_patch: usize,
    /// Weight of the regression (smooth L1) term against classification. Default 1.
    pub regression_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            hard_negatives_per_patch: 64,
            regression_weight: 1.0,
        }
    }
}

/// A loss and its parts (the parts as numbers, for the log).
pub struct Loss {
    /// The differentiable total.
    pub total: Tensor<1>,
    pub parts: LossParts,
}

/// The loss's terms of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossParts {
    /// Mean binary cross-entropy over positive anchor cells (0 when there is none).
    pub positive: f64,
    /// Mean binary cross-entropy over the mined hard negatives.
    pub negative: f64,
    /// Smooth L1 over positives, summed over the four regression channels.
    pub regression: f64,
    /// `0.5 * positive + 0.5 * negative + regression_weight * regression` (when the batch
    /// has no positive: `negative + regression_weight * regression`, the latter 0).
    pub total: f64,
    pub positives: usize,
}

impl std::ops::AddAssign for LossParts {
    /// Adds a micro-batch's share (see [`micro_batch_loss`]).
    fn add_assign(&mut self, o: LossParts) {
        self.positive += o.positive;
        self.negative += o.negative;
        self.regression += o.regression;
        self.total += o.total;
        self.positives += o.positives;
    }
}

/// Stable binary cross-entropy on logits: `max(z, 0) - z y + ln(1 + e^-|z|)`.
fn bce_with_logits(z: Tensor<4>, y: Tensor<4>) -> Tensor<4> {
    z.clone().clamp_min(0.0) - z.clone() * y + z.abs().neg().exp().log1p()
}

/// What the terms of a batch's loss are normalised by: counted over the whole batch, so
/// the losses of its micro-batches (gradient accumulation) add up to the batch's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    pub patches: usize,
    /// Positive anchor cells over the batch.
    pub positives: usize,
    /// Hard negatives mined per patch: `hard_negatives_per_patch`, or fewer when a patch of
    /// the batch has fewer negative cells.
    pub hard_negatives: usize,
}

impl BatchCounts {
    /// Counts `targets` (one [`crate::detect::encode_targets`] map per patch).
    pub fn of<'a>(
        targets: impl IntoIterator<Item = &'a Array4<f32>>,
        config: &LossConfig,
    ) -> BatchCounts {
        let mut counts = BatchCounts {
            patches: 0,
            positives: 0,
            hard_negatives: config.hard_negatives_per_patch,
        };
        for t in targets {
            let anchors = t.dim().0 / CHANNELS_PER_ANCHOR;
            let (mut pos, mut neg) = (0, 0);
            for a in 0..anchors {
                for &l in t
                    .index_axis(ndarray::Axis(0), a * CHANNELS_PER_ANCHOR)
                    .iter()
                {
                    pos += (l == POSITIVE) as usize;
                    neg += (l == NEGATIVE) as usize;
                }
            }
            counts.patches += 1;
            counts.positives += pos;
            counts.hard_negatives = counts.hard_negatives.min(neg);
        }
        counts
    }
}

/// The loss of `output` (the head's `(B, 5A, D, H, W)`) against `targets` (one
/// [`crate::detect::encode_targets`] map per patch, same layout), borrowed.
pub fn detection_loss<'a>(
    output: Tensor<5>,
    targets: impl IntoIterator<Item = &'a Array4<f32>>,
    config: &LossConfig,
) -> Result<Loss> {
    let targets: Vec<&Array4<f32>> = targets.into_iter().collect();
    let counts = BatchCounts::of(targets.iter().copied(), config);
    micro_batch_loss(output, targets, config, &counts)
}

/// The share of a batch's loss that the micro-batch `output`/`targets` carries, normalised
/// by the whole batch's `counts`: the micro-batches' losses (and gradients) sum to the
/// batch's.
pub fn micro_batch_loss<'a>(
    output: Tensor<5>,
    targets: impl IntoIterator<Item = &'a Array4<f32>>,
    config: &LossConfig,
    counts: &BatchCounts,
) -> Result<Loss> {
    let targets: Vec<&Array4<f32>> = targets.into_iter().collect();
    let [b, c, d, h, w] = output.dims();
    if targets.len() != b || targets.iter().any(|t| t.dim() != (c, d, h, w)) {
        return Err(Error::InvalidArgument(format!(
            "{} target maps for an output of {:?}",
            targets.len(),
            [b, c, d, h, w]
        )));
    }
    if c % CHANNELS_PER_ANCHOR != 0 {
        return Err(Error::InvalidArgument(format!(
            "output has {c} channels, not a multiple of {CHANNELS_PER_ANCHOR}"
        )));
    }
    let device = output.device();
    let anchors = c / CHANNELS_PER_ANCHOR;
    // Labels and regression targets, split on the CPU: (B, A, cells/A) and (B, A, 4, ...).
    let mut labels = Vec::with_capacity(b * anchors * d * h * w);
    let mut regress = Vec::with_capacity(b * anchors * d * h * w * 4);
    for t in targets {
        let t = t.as_standard_layout();
        let flat = t.as_slice().unwrap_or(&[]);
        let per = d * h * w;
        for a in 0..anchors {
            let base = a * CHANNELS_PER_ANCHOR * per;
            labels.extend_from_slice(&flat[base..base + per]);
        }
        for a in 0..anchors {
            let base = (a * CHANNELS_PER_ANCHOR + 1) * per;
            regress.extend_from_slice(&flat[base..base + 4 * per]);
        }
    }
    let cells = anchors * d * h * w;
    let positives = labels.iter().filter(|&&l| l == POSITIVE).count();
    debug_assert!(labels
        .iter()
        .all(|&l| l == POSITIVE || l == NEGATIVE || l == IGNORED));
    let k = counts.hard_negatives;
    if positives > counts.positives || b > counts.patches {
        return Err(Error::InvalidArgument(format!(
            "a micro-batch of {b} patches with {positives} positives is larger than its batch \
             ({counts:?})"
        )));
    }

    let out = output.reshape([b, anchors, CHANNELS_PER_ANCHOR, d * h * w]);
    let logits = out
        .clone()
        .narrow(2, 0, 1)
        .reshape([b, anchors, 1, d * h * w]);
    let reg = out.narrow(2, 1, 4);
    let y = Tensor::<4>::from_data(TensorData::new(labels, [b, anchors, 1, d * h * w]), &device);
    let pos: Tensor<4, Bool> = y.clone().equal_elem(POSITIVE);
    let neg: Tensor<4, Bool> = y.clone().equal_elem(NEGATIVE);
    let bce = bce_with_logits(logits, y.clamp_min(0.0));

    let pos_f = pos.clone().float();
    let positive = if positives > 0 {
        (bce.clone() * pos_f.clone()).sum() / counts.positives as f64
    } else {
        Tensor::<1>::zeros([1], &device)
    };
    let negative = if k > 0 {
        bce.mask_fill(neg.bool_not(), -1.0)
            .reshape([b, cells])
            .topk(k, 1)
            .sum()
            / (counts.patches * k) as f64
    } else {
        Tensor::<1>::zeros([1], &device)
    };
    let regression = if positives > 0 {
        let t = Tensor::<4>::from_data(
            TensorData::new(regress, [b, anchors, 4, d * h * w]),
            &device,
        );
        let diff = reg - t;
        let a = diff.clone().abs();
        let sl1 = (diff.square() * 0.5).mask_where(a.clone().greater_equal_elem(1.0), a - 0.5);
        (sl1 * pos_f).sum() / counts.positives as f64
    } else {
        Tensor::<1>::zeros([1], &device)
    };
    let (wp, wn) = if counts.positives > 0 {
        (0.5, 0.5)
    } else {
        (0.0, 1.0)
    };
    let total = positive.clone() * wp
        + negative.clone() * wn
        + regression.clone() * config.regression_weight;
    let scalar = |t: &Tensor<1>| -> f64 { t.clone().into_scalar::<f32>() as f64 };
    let parts = LossParts {
        positive: scalar(&positive),
        negative: scalar(&negative),
        regression: scalar(&regression),
        total: scalar(&total),
        positives,
    };
    Ok(Loss { total, parts })
}
