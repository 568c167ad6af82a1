//! The detection head's output map, and the conversions between it and nodules: decoding
//! (map to candidates) and encoding (nodules to training targets).
//!
//! One box convention throughout: a nodule is a **cube** centred on its centre with side its
//! diameter, in millimetres (grt123, DeepLung). Overlap is the cubes' intersection over
//! union (IoU).
//!
//! ## Output map layout
//!
//! For a patch, the head gives `A * 5` channels on a grid `stride_vox` times coarser than
//! the patch (`(C, Dz, Dy, Dx)`, channels first, as the network computes them). Channel
//! `5 * a + k` belongs to anchor `a` (diameter `anchors_mm[a]`) and holds
//! `k = 0`: objectness logit; `k = 1, 2, 3`: offsets `(dz, dy, dx)`; `k = 4`: log-size `dd`.
//!
//! Output cell `(i, j, k)` is centred on patch voxel `c = stride * (i, j, k) + (stride - 1) / 2`.
//! With anchor size `s_a` (mm) and spacing `sp` (mm per voxel, per axis), the decoded nodule is
//! centred on patch voxel `c + d * s_a / sp` and has diameter `s_a * exp(dd)`, probability
//! `sigmoid(logit)`.

use crate::error::{Error, Result};
use ndarray::{Array4, ArrayView4};
use serde::{Deserialize, Serialize};

/// Stride and anchors of the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadLayout {
    /// Patch voxels per output cell along each axis. Default 4.
    pub stride_vox: usize,
    /// Anchor diameters (mm). Default 5, 10, 20.
    pub anchors_mm: Vec<f64>,
}

impl Default for HeadLayout {
    fn default() -> Self {
        HeadLayout {
            stride_vox: 4,
            anchors_mm: vec![5.0, 10.0, 20.0],
        }
    }
}

/// Channels per anchor: logit, dz, dy, dx, dd.
pub const CHANNELS_PER_ANCHOR: usize = 5;

/// Most anchors a [`HeadLayout`] may have (the default has 3): the head's output grows
/// with them at a small cost in weights.
pub const MAX_ANCHORS: usize = 64;

impl HeadLayout {
    pub fn validate(&self) -> Result<()> {
        if self.stride_vox == 0 || self.stride_vox > 64 {
            return Err(Error::InvalidArgument(format!(
                "head stride {} must be 1 to 64 voxels",
                self.stride_vox
            )));
        }
        if self.anchors_mm.is_empty()
            || self.anchors_mm.len() > MAX_ANCHORS
            || self.anchors_mm.iter().any(|a| !(a.is_finite() && *a > 0.0))
        {
            return Err(Error::InvalidArgument(format!(
                "anchors must be 1 to {MAX_ANCHORS} positive diameters in mm, got {:?}",
                self.anchors_mm
            )));
        }
        Ok(())
    }

    /// Output channels: `5 * anchors`.
    pub fn channels(&self) -> usize {
        CHANNELS_PER_ANCHOR * self.anchors_mm.len()
    }

    /// Output grid of a patch of `patch_vox` (must be a multiple of the stride).
    pub fn output_shape(&self, patch_vox: [usize; 3]) -> Result<[usize; 3]> {
        let s = self.stride_vox;
        if patch_vox.iter().any(|n| n % s != 0 || *n == 0) {
            return Err(Error::InvalidArgument(format!(
                "patch size {patch_vox:?} must be a positive multiple of the head stride {s}"
            )));
        }
        Ok(patch_vox.map(|n| n / s))
    }

    /// Patch voxel (continuous) at the centre of output cell `cell`.
    pub fn cell_centre(&self, cell: [usize; 3]) -> [f64; 3] {
        let s = self.stride_vox as f64;
        cell.map(|c| s * c as f64 + (s - 1.0) / 2.0)
    }
}

/// A nodule in a grid's voxels: centre (continuous voxel index) and diameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VoxelNodule {
    /// Centre `(z, y, x)` in voxels of the grid it belongs to.
    pub centre_vox: [f64; 3],
    pub diameter_mm: f64,
}

/// A decoded candidate: a nodule in the preprocessed grid with its probability.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// Centre `(z, y, x)` in preprocessed voxels.
    pub centre_vox: [f64; 3],
    pub diameter_mm: f64,
    pub probability: f32,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn logit(p: f32) -> f32 {
    (p / (1.0 - p)).ln()
}

/// Decodes one patch's output map `(C, Dz, Dy, Dx)` into candidates with probability at
/// least `min_probability`, appended to `out`. `offset_vox` is the patch's offset in the
/// preprocessed grid and `spacing_mm` that grid's spacing.
pub fn decode_patch(
    output: ArrayView4<f32>,
    layout: &HeadLayout,
    spacing_mm: [f64; 3],
    offset_vox: [i64; 3],
    min_probability: f32,
    out: &mut Vec<Candidate>,
) -> Result<()> {
    let (c, dz, dy, dx) = output.dim();
    if c != layout.channels() {
        return Err(Error::InvalidArgument(format!(
            "head output has {c} channels, the layout needs {} ({} anchors x 5)",
            layout.channels(),
            layout.anchors_mm.len()
        )));
    }
    let min_logit = if min_probability <= 0.0 {
        f32::NEG_INFINITY
    } else if min_probability >= 1.0 {
        f32::INFINITY
    } else {
        logit(min_probability)
    };
    for (a, &anchor) in layout.anchors_mm.iter().enumerate() {
        let ch = |k: usize| output.index_axis(ndarray::Axis(0), a * CHANNELS_PER_ANCHOR + k);
        let logits = ch(0);
        for ((i, j, k), &l) in logits.indexed_iter() {
            if !(l >= min_logit) || !l.is_finite() {
                continue;
            }
            debug_assert!(i < dz && j < dy && k < dx);
            let centre = layout.cell_centre([i, j, k]);
            let mut pos = [0.0; 3];
            for ax in 0..3 {
                let d = ch(1 + ax)[(i, j, k)] as f64;
                pos[ax] = offset_vox[ax] as f64 + centre[ax] + d * anchor / spacing_mm[ax];
            }
            let dd = (ch(4)[(i, j, k)] as f64).clamp(-8.0, 8.0);
            if pos.iter().any(|v| !v.is_finite()) {
                continue;
            }
            out.push(Candidate {
                centre_vox: pos,
                diameter_mm: anchor * dd.exp(),
                probability: sigmoid(l),
            });
        }
    }
    Ok(())
}

/// Overlap (IoU) of two cubes given by centres (mm) and sides (mm).
pub fn cube_iou(a_mm: [f64; 3], a_side: f64, b_mm: [f64; 3], b_side: f64) -> f64 {
    let mut inter = 1.0;
    for ax in 0..3 {
        let lo = (a_mm[ax] - a_side / 2.0).max(b_mm[ax] - b_side / 2.0);
        let hi = (a_mm[ax] + a_side / 2.0).min(b_mm[ax] + b_side / 2.0);
        if hi <= lo {
            return 0.0;
        }
        inter *= hi - lo;
    }
    let union = a_side.powi(3) + b_side.powi(3) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Thresholds of [`encode_targets`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetConfig {
    /// Anchor cells whose IoU with a nodule is at least this are positive. Default 0.5.
    pub positive_iou: f64,
    /// Cells whose IoU with every nodule is below this are negative; between the two they
    /// are ignored. Default 0.02.
    pub negative_iou: f64,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            positive_iou: 0.5,
            negative_iou: 0.02,
        }
    }
}

/// Label of an anchor cell in a training target.
pub const POSITIVE: f32 = 1.0;
pub const NEGATIVE: f32 = 0.0;
pub const IGNORED: f32 = -1.0;

/// Training targets of one patch: for each output cell and anchor, a label (1, 0 or -1)
/// and, for positives, the regression targets that decode exactly to the nodule.
///
/// `nodules` are in the **patch's** voxels. Shape of the result: `(A * 5, Dz, Dy, Dx)`, the
/// same layout as the head's output, with channel `5a` the label instead of a logit. A
/// nodule with no anchor cell over `positive_iou` gets its best cell as positive, so every
/// nodule inside the patch is learnt.
pub fn encode_targets(
    layout: &HeadLayout,
    patch_vox: [usize; 3],
    spacing_mm: [f64; 3],
    nodules: &[VoxelNodule],
    config: &TargetConfig,
) -> Result<Array4<f32>> {
    layout.validate()?;
    let [dz, dy, dx] = layout.output_shape(patch_vox)?;
    let n_anchors = layout.anchors_mm.len();
    let mut t = Array4::<f32>::zeros((layout.channels(), dz, dy, dx));
    // Best (iou, anchor, cell, nodule) seen so far, with the current overlap per cell.
    let mut best_iou = vec![0.0f64; n_anchors * dz * dy * dx];
    let mut best_nodule = vec![usize::MAX; best_iou.len()];
    for (n, nod) in nodules.iter().enumerate() {
        let c_mm = [0, 1, 2].map(|ax| nod.centre_vox[ax] * spacing_mm[ax]);
        let mut nodule_best = (0.0f64, usize::MAX);
        for (a, &anchor) in layout.anchors_mm.iter().enumerate() {
            // Cells whose anchor cube can touch the nodule cube.
            let reach = (anchor + nod.diameter_mm) / 2.0;
            let mut range = [(0usize, 0usize); 3];
            for ax in 0..3 {
                let (lo_v, hi_v) = (
                    (c_mm[ax] - reach) / spacing_mm[ax],
                    (c_mm[ax] + reach) / spacing_mm[ax],
                );
                let s = layout.stride_vox as f64;
                let lo = ((lo_v - (s - 1.0) / 2.0) / s).floor().max(0.0);
                let hi = ((hi_v - (s - 1.0) / 2.0) / s).ceil();
                let n_cells = [dz, dy, dx][ax] as f64;
                if hi < 0.0 || lo >= n_cells {
                    range[ax] = (1, 0);
                } else {
                    range[ax] = (lo as usize, (hi.min(n_cells - 1.0)) as usize);
                }
            }
            if (0..3).any(|ax| range[ax].0 > range[ax].1) {
                continue;
            }
            for i in range[0].0..=range[0].1 {
                for j in range[1].0..=range[1].1 {
                    for k in range[2].0..=range[2].1 {
                        let cv = layout.cell_centre([i, j, k]);
                        let cm = [0, 1, 2].map(|ax| cv[ax] * spacing_mm[ax]);
                        let iou = cube_iou(cm, anchor, c_mm, nod.diameter_mm);
                        let idx = ((a * dz + i) * dy + j) * dx + k;
                        if iou > best_iou[idx] {
                            best_iou[idx] = iou;
                            best_nodule[idx] = n;
                        }
                        if iou > nodule_best.0 {
                            nodule_best = (iou, idx);
                        }
                    }
                }
            }
        }
        // Guarantee one positive per nodule.
        if nodule_best.1 != usize::MAX && nodule_best.0 < config.positive_iou {
            best_iou[nodule_best.1] = config.positive_iou.max(best_iou[nodule_best.1]);
            best_nodule[nodule_best.1] = n;
        }
    }
    for a in 0..n_anchors {
        let anchor = layout.anchors_mm[a];
        for i in 0..dz {
            for j in 0..dy {
                for k in 0..dx {
                    let idx = ((a * dz + i) * dy + j) * dx + k;
                    let iou = best_iou[idx];
                    let ch = a * CHANNELS_PER_ANCHOR;
                    let label = if iou >= config.positive_iou {
                        POSITIVE
                    } else if iou < config.negative_iou {
                        NEGATIVE
                    } else {
                        IGNORED
                    };
                    t[(ch, i, j, k)] = label;
                    if label == POSITIVE {
                        let nod = &nodules[best_nodule[idx]];
                        let cv = layout.cell_centre([i, j, k]);
                        for ax in 0..3 {
                            t[(ch + 1 + ax, i, j, k)] =
                                ((nod.centre_vox[ax] - cv[ax]) * spacing_mm[ax] / anchor) as f32;
                        }
                        t[(ch + 4, i, j, k)] = (nod.diameter_mm / anchor).ln() as f32;
                    }
                }
            }
        }
    }
    Ok(t)
}

/// The output map a perfect head would give for `targets` (from [`encode_targets`]):
/// logits of +`confidence` on positives and -`confidence` elsewhere, offsets copied.
/// Used to test decoding and, in training, as the reference the loss compares against.
pub fn ideal_output(targets: &Array4<f32>, confidence: f32) -> Array4<f32> {
    let mut out = targets.clone();
    let c = targets.dim().0;
    for a in 0..c / CHANNELS_PER_ANCHOR {
        out.index_axis_mut(ndarray::Axis(0), a * CHANNELS_PER_ANCHOR)
            .mapv_inplace(|l| {
                if l == POSITIVE {
                    confidence
                } else {
                    -confidence
                }
            });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cube_iou_cases() {
        assert!((cube_iou([0.0; 3], 10.0, [0.0; 3], 10.0) - 1.0).abs() < 1e-12);
        assert_eq!(cube_iou([0.0; 3], 10.0, [20.0, 0.0, 0.0], 10.0), 0.0);
        // Half overlap along one axis: 500 / (1000 + 1000 - 500).
        let v = cube_iou([0.0; 3], 10.0, [5.0, 0.0, 0.0], 10.0);
        assert!((v - 1.0 / 3.0).abs() < 1e-12);
        // A cube inside a larger one: (5^3) / (10^3).
        assert!((cube_iou([0.0; 3], 10.0, [0.0; 3], 5.0) - 0.125).abs() < 1e-12);
    }

    #[test]
    fn encoding_then_decoding_gives_back_each_nodule() {
        let layout = HeadLayout::default();
        let spacing = [1.0, 0.8, 1.2];
        let nodules = [
            VoxelNodule {
                centre_vox: [10.3, 20.7, 5.5],
                diameter_mm: 6.0,
            },
            VoxelNodule {
                centre_vox: [40.0, 9.9, 33.1],
                diameter_mm: 23.0,
            },
            VoxelNodule {
                centre_vox: [30.5, 40.2, 14.0],
                diameter_mm: 3.2,
            },
        ];
        let t = encode_targets(
            &layout,
            [48, 48, 48],
            spacing,
            &nodules,
            &TargetConfig::default(),
        )
        .unwrap();
        assert_eq!(t.dim(), (15, 12, 12, 12));
        let labels: Vec<f32> = (0..3)
            .flat_map(|a| {
                t.index_axis(ndarray::Axis(0), 5 * a)
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(labels.contains(&IGNORED));
        let out = ideal_output(&t, 12.0);
        let mut cands = Vec::new();
        decode_patch(out.view(), &layout, spacing, [100, -4, 7], 0.5, &mut cands).unwrap();
        for n in &nodules {
            let want = [
                n.centre_vox[0] + 100.0,
                n.centre_vox[1] - 4.0,
                n.centre_vox[2] + 7.0,
            ];
            let hit = cands.iter().any(|c| {
                (0..3).all(|ax| (c.centre_vox[ax] - want[ax]).abs() < 1e-4)
                    && (c.diameter_mm - n.diameter_mm).abs() < 1e-4
            });
            assert!(hit, "{n:?} not decoded; {} candidates", cands.len());
        }
        // Every candidate is one of the nodules.
        for c in &cands {
            assert!(nodules
                .iter()
                .any(|n| (c.diameter_mm - n.diameter_mm).abs() < 1e-4));
            assert!(c.probability > 0.99);
        }
        // A wrong channel count is refused.
        let mut v = Vec::new();
        assert!(decode_patch(
            out.slice(ndarray::s![..10, .., .., ..]),
            &layout,
            spacing,
            [0; 3],
            0.5,
            &mut v
        )
        .is_err());
    }
}
