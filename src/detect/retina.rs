//! MONAI's RetinaNet post-processing (`RetinaNetDetector` in eval mode, without the sliding
//! window), as its lung-nodule bundle configures it: anchors of fixed shapes on every
//! pyramid level, box decoding, per-level score selection, clipping to the image and 3-D
//! NMS. Boxes are `xyzxyz` in the network's voxel index space (MONAI's axis order), with
//! MONAI's conventions kept exactly (see `docs/notes/monai-retinanet.md`): anchor centres at
//! `index * stride + stride / 2` (integer division; MONAI 1.6, see
//! [`RetinaDecodeConfig::anchor_centre_half_stride`]), anchor corners rounded half to even, the size
//! terms of the decode clamped at `ln(1000 / 16)`, scores strictly above the threshold,
//! boxes thinner than one voxel dropped, IoU with `f32::EPSILON` in the denominator.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The detector's settings; the defaults are the bundle's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetinaDecodeConfig {
    /// Anchor shapes `[w, h, d]` in voxels at scale 1. Default `[[6,8,4],[8,6,5],[10,10,6]]`.
    pub base_anchor_shapes: Vec<[f64; 3]>,
    /// Scale of the anchors on each pyramid level, finest first. Default `[1, 2, 4]`.
    pub feature_map_scales: Vec<f64>,
    /// Scores (sigmoid of the logits) must be above this. Default 0.02.
    pub score_thresh: f32,
    /// Best candidates kept per level before NMS. Default 1000.
    pub topk_candidates_per_level: usize,
    /// NMS drops a box overlapping a kept one by more than this IoU. Default 0.22.
    pub nms_thresh: f32,
    /// Most boxes returned. Default 300.
    pub detections_per_img: usize,
    /// The network's input is zero-padded at the end of each axis to a multiple of this.
    /// Default `[16, 16, 8]`.
    pub size_divisible: [usize; 3],
    /// Anchor centres at `index * stride + stride / 2` (integer division), as MONAI 1.6's
    /// `AnchorGenerator`; `false`: at `index * stride`, as MONAI 1.3.2's. Default true.
    pub anchor_centre_half_stride: bool,
}

impl Default for RetinaDecodeConfig {
    fn default() -> Self {
        RetinaDecodeConfig {
            base_anchor_shapes: vec![[6.0, 8.0, 4.0], [8.0, 6.0, 5.0], [10.0, 10.0, 6.0]],
            feature_map_scales: vec![1.0, 2.0, 4.0],
            score_thresh: 0.02,
            topk_candidates_per_level: 1000,
            nms_thresh: 0.22,
            detections_per_img: 300,
            size_divisible: [16, 16, 8],
            anchor_centre_half_stride: true,
        }
    }
}

/// Most candidates per pyramid level [`RetinaDecodeConfig`] may keep for NMS, which compares
/// every pair (the bundle keeps 1000).
pub const MAX_TOPK: usize = 10_000;

impl RetinaDecodeConfig {
    /// Checks the settings for a network of `num_anchors` anchors and `levels` pyramid
    /// levels: one anchor shape per anchor, one scale per level, shapes and scales finite
    /// and positive, thresholds from 0 to 1, at most [`MAX_TOPK`] candidates per level,
    /// `size_divisible` at least 1.
    pub fn validate(&self, num_anchors: usize, levels: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("RetinaNet decoding: {m}")));
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.base_anchor_shapes.len() != num_anchors
            || !self
                .base_anchor_shapes
                .iter()
                .flatten()
                .all(|&v| positive(v))
        {
            return bad(format!(
                "base_anchor_shapes must be {num_anchors} positive shapes (the network's \
                 anchors), got {:?}",
                self.base_anchor_shapes
            ));
        }
        if self.feature_map_scales.len() != levels
            || !self.feature_map_scales.iter().all(|&v| positive(v))
        {
            return bad(format!(
                "feature_map_scales must be {levels} positive scales (one per pyramid \
                 level), got {:?}",
                self.feature_map_scales
            ));
        }
        if !((0.0..=1.0).contains(&self.score_thresh) && (0.0..=1.0).contains(&self.nms_thresh)) {
            return bad(format!(
                "score_thresh {} and nms_thresh {} must be from 0 to 1",
                self.score_thresh, self.nms_thresh
            ));
        }
        // NMS compares every pair of the levels' candidates.
        if self.topk_candidates_per_level > MAX_TOPK {
            return bad(format!(
                "topk_candidates_per_level {} is more than {MAX_TOPK}",
                self.topk_candidates_per_level
            ));
        }
        if self.size_divisible.contains(&0) {
            return bad(format!(
                "size_divisible must be at least 1, got {:?}",
                self.size_divisible
            ));
        }
        Ok(())
    }
}

/// A box in voxel index coordinates `[min_x, min_y, min_z]` to `[max_x, max_y, max_z]`, and
/// its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetinaBox {
    pub min: [f32; 3],
    pub max: [f32; 3],
    pub score: f32,
}

/// One pyramid level's head outputs for one image: classification logits `(A, X, Y, Z)`
/// (one class) and box regression `(A * 6, X, Y, Z)`, row-major.
pub struct LevelMaps<'a> {
    pub grid: [usize; 3],
    pub classification: &'a [f32],
    pub box_regression: &'a [f32],
}

/// `ln(1000 / 16)`: MONAI's clamp of the decoded size terms.
const SIZE_CLAMP: f32 = 4.135_166_6;

/// `padded`: the padded input's size; `image`: the unpadded size (boxes are clipped to it).
pub fn detect_boxes(
    levels: &[LevelMaps<'_>],
    padded: [usize; 3],
    image: [usize; 3],
    cfg: &RetinaDecodeConfig,
) -> Result<Vec<RetinaBox>> {
    let a_n = cfg.base_anchor_shapes.len();
    if levels.len() != cfg.feature_map_scales.len() {
        return Err(Error::InvalidArgument(format!(
            "{} pyramid levels but {} anchor scales",
            levels.len(),
            cfg.feature_map_scales.len()
        )));
    }
    let mut all = Vec::new();
    for (level, &scale) in levels.iter().zip(&cfg.feature_map_scales) {
        let [gx, gy, gz] = level.grid;
        let cells = gx * gy * gz;
        if level.classification.len() != a_n * cells
            || level.box_regression.len() != 6 * a_n * cells
        {
            return Err(Error::InvalidArgument(format!(
                "head maps of {} and {} values do not fit {a_n} anchors on a {gx}x{gy}x{gz} grid",
                level.classification.len(),
                level.box_regression.len()
            )));
        }
        let stride: [usize; 3] = std::array::from_fn(|d| padded[d] / level.grid[d].max(1));
        let offset: [usize; 3] = if cfg.anchor_centre_half_stride {
            stride.map(|s| s / 2)
        } else {
            [0; 3]
        };
        // Cell anchors: round half to even, as torch.round.
        let cell: Vec<[f32; 6]> = cfg
            .base_anchor_shapes
            .iter()
            .map(|s| {
                let h: [f64; 3] = std::array::from_fn(|d| scale * s[d] / 2.0);
                [
                    (-h[0]).round_ties_even() as f32,
                    (-h[1]).round_ties_even() as f32,
                    (-h[2]).round_ties_even() as f32,
                    h[0].round_ties_even() as f32,
                    h[1].round_ties_even() as f32,
                    h[2].round_ties_even() as f32,
                ]
            })
            .collect();
        // Flattened index n = ((i * gy + j) * gz + k) * A + a; channel a at voxel (i, j, k).
        let mut picked: Vec<(usize, f32)> = Vec::new();
        for a in 0..a_n {
            for v in 0..cells {
                let logit = level.classification[a * cells + v];
                let score = 1.0 / (1.0 + (-logit).exp());
                if score > cfg.score_thresh {
                    picked.push((v * a_n + a, score));
                }
            }
        }
        // Descending scores; equal scores by index (torch.topk leaves their order open).
        picked.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        picked.truncate(cfg.topk_candidates_per_level);
        for (n, score) in picked {
            let (v, a) = (n / a_n, n % a_n);
            let (i, j, k) = (v / (gy * gz), (v / gz) % gy, v % gz);
            let centre = [
                (i * stride[0] + offset[0]) as f32,
                (j * stride[1] + offset[1]) as f32,
                (k * stride[2] + offset[2]) as f32,
            ];
            let c = &cell[a];
            let mut min = [0f32; 3];
            let mut max = [0f32; 3];
            let mut ok = true;
            for d in 0..3 {
                let (lo, hi) = (centre[d] + c[d], centre[d] + c[3 + d]);
                let w = hi - lo;
                let ctr_a = (lo + hi) / 2.0;
                let t = level.box_regression[(6 * a + d) * cells + v];
                let s = level.box_regression[(6 * a + 3 + d) * cells + v];
                let ctr = t * w + ctr_a;
                let size = s.min(SIZE_CLAMP).exp() * w;
                let limit = image[d] as f32;
                min[d] = (ctr - 0.5 * size).clamp(0.0, limit);
                max[d] = (ctr + 0.5 * size).clamp(0.0, limit);
                ok &= max[d] >= min[d] + 1.0;
            }
            if ok {
                all.push(RetinaBox { min, max, score });
            }
        }
    }
    Ok(nms(all, cfg.nms_thresh, cfg.detections_per_img))
}

/// MONAI's `box_iou` for one pair, in `f32`.
pub fn box_iou(a: &RetinaBox, b: &RetinaBox) -> f32 {
    let vol = |r: &RetinaBox| (0..3).map(|d| r.max[d] - r.min[d]).product::<f32>();
    let inter: f32 = (0..3)
        .map(|d| (a.max[d].min(b.max[d]) - a.min[d].max(b.min[d])).max(0.0))
        .product();
    inter / (vol(a) + vol(b) - inter + f32::EPSILON)
}

/// Greedy NMS by descending score (ties by input order): a box is dropped when its IoU with
/// a kept one is above `max_iou`; at most `max_keep` are kept.
pub fn nms(mut boxes: Vec<RetinaBox>, max_iou: f32, max_keep: usize) -> Vec<RetinaBox> {
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&x, &y| boxes[y].score.total_cmp(&boxes[x].score).then(x.cmp(&y)));
    let mut keep: Vec<RetinaBox> = Vec::new();
    let mut alive = vec![true; order.len()];
    for p in 0..order.len() {
        if !alive[p] {
            continue;
        }
        let b = boxes[order[p]];
        keep.push(b);
        if keep.len() >= max_keep {
            break;
        }
        for q in p + 1..order.len() {
            if alive[q] && box_iou(&boxes[order[q]], &b) > max_iou {
                alive[q] = false;
            }
        }
    }
    boxes.clear();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(min: [f32; 3], max: [f32; 3], score: f32) -> RetinaBox {
        RetinaBox { min, max, score }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = b([0.0; 3], [2.0; 3], 1.0);
        assert!((box_iou(&a, &a) - 1.0).abs() < 1e-6);
        let half = b([1.0, 0.0, 0.0], [3.0, 2.0, 2.0], 1.0);
        assert!((box_iou(&a, &half) - 4.0 / 12.0).abs() < 1e-6);
        assert_eq!(box_iou(&a, &b([5.0; 3], [6.0; 3], 1.0)), 0.0);
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes_and_caps_the_count() {
        let boxes = vec![
            b([0.0; 3], [2.0; 3], 0.5),
            b([0.1, 0.0, 0.0], [2.1, 2.0, 2.0], 0.9),
            b([5.0; 3], [7.0; 3], 0.7),
            b([1.0, 0.0, 0.0], [3.0, 2.0, 2.0], 0.6), // IoU 1/3 with the first only
        ];
        let kept = nms(boxes.clone(), 0.22, 10);
        let scores: Vec<f32> = kept.iter().map(|k| k.score).collect();
        assert_eq!(scores, vec![0.9, 0.7]);
        assert_eq!(nms(boxes.clone(), 0.5, 10).len(), 3);
        assert_eq!(nms(boxes, 0.22, 1).len(), 1);
    }

    #[test]
    fn one_confident_anchor_decodes_to_its_box() {
        // One level, grid 2x2x2 on a padded 8x8x4 image (stride 4, 4, 2), one anchor of
        // shape [4, 4, 2]; only the anchor at voxel (1, 0, 1) scores, with offsets
        // (dx = 0.25, dw = ln 2).
        let cfg = RetinaDecodeConfig {
            base_anchor_shapes: vec![[4.0, 4.0, 2.0]],
            feature_map_scales: vec![1.0],
            anchor_centre_half_stride: false,
            ..RetinaDecodeConfig::default()
        };
        let cells = 8;
        let mut cls = vec![-20.0f32; cells];
        let mut reg = vec![0f32; 6 * cells];
        let (z, y, x) = (1, 0, 1);
        let v = (z * 2 + y) * 2 + x;
        cls[v] = 3.0;
        reg[v] = 0.25;
        reg[3 * cells + v] = 2f32.ln();
        let level = LevelMaps {
            grid: [2, 2, 2],
            classification: &cls,
            box_regression: &reg,
        };
        let out = detect_boxes(&[level], [8, 8, 4], [8, 8, 4], &cfg).unwrap();
        assert_eq!(out.len(), 1);
        // Anchor centre (4, 0, 2), corners +-(2, 2, 1): x centre 4 + 0.25 * 4 = 5, width 8;
        // y from -2 clipped to 0; z 1 to 3.
        let r = out[0];
        assert!(
            (r.min[0] - 1.0).abs() < 1e-5 && (r.max[0] - 8.0).abs() < 1e-5,
            "{r:?}"
        );
        assert_eq!((r.min[1], r.max[1]), (0.0, 2.0));
        assert_eq!((r.min[2], r.max[2]), (1.0, 3.0));
        assert!((r.score - 1.0 / (1.0 + (-3.0f32).exp())).abs() < 1e-6);
    }
}
