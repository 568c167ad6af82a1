//! Training patches with augmentation: flips, 90-degree rotations in the axial plane and
//! scaling, applied to the image and its nodules together.
//!
//! A patch is cut straight from the preprocessed grid through a [`PatchTransform`], so an
//! augmented patch costs one pass (trilinear when scaled, exact copies otherwise) and the
//! labels follow the same map.

use crate::detect::VoxelNodule;
use crate::error::{Error, Result};
use crate::preprocess::Preprocessed;
use crate::rng::SplitMix64;
use ndarray::{Array3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Which augmentations training draws. Defaults as grt123 and the Tianchi winners: flips on
/// every axis, rotations by multiples of 90 degrees in the axial plane, scaling by 0.8 to
/// 1.15.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Mirror each axis with probability 1/2.
    pub flip: bool,
    /// Rotate by 0, 90, 180 or 270 degrees about the z axis (needs equal y and x spacing).
    pub rotate90: bool,
    /// Scale factor range `[min, max]` (drawn uniformly); `[1, 1]` disables scaling. A
    /// factor above 1 magnifies: the patch covers a smaller region and nodules grow.
    pub scale: [f64; 2],
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            flip: true,
            rotate90: true,
            scale: [0.8, 1.15],
        }
    }
}

impl AugmentConfig {
    /// No augmentation: patches are plain crops.
    pub fn none() -> Self {
        AugmentConfig {
            flip: false,
            rotate90: false,
            scale: [1.0, 1.0],
        }
    }

    pub fn validate(&self) -> Result<()> {
        let [lo, hi] = self.scale;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.2 && hi < 5.0 && lo <= hi) {
            return Err(Error::InvalidArgument(format!(
                "augmentation scale range {:?} must be finite, within (0.2, 5) and ordered",
                self.scale
            )));
        }
        Ok(())
    }
}

/// The map from a patch's voxels to the preprocessed grid's: output axis `a` runs along
/// grid axis `perm[a]` in direction `sign[a]`, magnified by `scale`, and the patch centre
/// `(size - 1) / 2` lands on `centre_vox`:
///
/// `grid[perm[a]] = centre_vox[perm[a]] + sign[a] * (out[a] - (size[a] - 1) / 2) / scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchTransform {
    /// Centre of the patch in the preprocessed grid's voxels `(z, y, x)`.
    pub centre_vox: [f64; 3],
    pub size_vox: [usize; 3],
    /// A permutation of `[0, 1, 2]` with `perm[0] == 0` (rotations stay in the axial plane).
    pub perm: [usize; 3],
    /// +1 or -1 per output axis.
    pub sign: [f64; 3],
    pub scale: f64,
}

impl PatchTransform {
    /// The plain crop centred on `centre_vox`.
    pub fn identity(centre_vox: [f64; 3], size_vox: [usize; 3]) -> Self {
        PatchTransform {
            centre_vox,
            size_vox,
            perm: [0, 1, 2],
            sign: [1.0; 3],
            scale: 1.0,
        }
    }

    /// A random transform centred on `centre_vox`, drawn as `config` allows. Rotations need
    /// equal y and x spacing and a cubic-in-yx patch; otherwise they are not drawn.
    pub fn draw(
        centre_vox: [f64; 3],
        size_vox: [usize; 3],
        spacing_mm: [f64; 3],
        config: &AugmentConfig,
        rng: &mut SplitMix64,
    ) -> Self {
        let mut t = PatchTransform::identity(centre_vox, size_vox);
        if config.flip {
            for s in &mut t.sign {
                if rng.below(2) == 1 {
                    *s = -1.0;
                }
            }
        }
        let can_rotate = spacing_mm[1] == spacing_mm[2] && size_vox[1] == size_vox[2];
        if config.rotate90 && can_rotate {
            // Quarter turns about z: k turns = k times (y, x) -> (x, -y).
            for _ in 0..rng.below(4) {
                t.perm.swap(1, 2);
                t.sign.swap(1, 2);
                t.sign[1] = -t.sign[1];
            }
        }
        let [lo, hi] = config.scale;
        t.scale = lo + (hi - lo) * rng.uniform();
        t
    }

    fn centre_out(&self) -> [f64; 3] {
        self.size_vox.map(|n| (n as f64 - 1.0) / 2.0)
    }

    /// Grid position of patch voxel `out` (continuous).
    pub fn to_grid(&self, out: [f64; 3]) -> [f64; 3] {
        let c = self.centre_out();
        let mut g = self.centre_vox;
        for a in 0..3 {
            g[self.perm[a]] += self.sign[a] * (out[a] - c[a]) / self.scale;
        }
        g
    }

    /// Patch position of grid point `grid` (continuous): the inverse of [`Self::to_grid`].
    pub fn to_patch(&self, grid: [f64; 3]) -> [f64; 3] {
        let c = self.centre_out();
        [0, 1, 2].map(|a| {
            c[a] + self.sign[a] * self.scale * (grid[self.perm[a]] - self.centre_vox[self.perm[a]])
        })
    }

    /// A nodule of the grid as the patch sees it (centre moved, diameter scaled).
    pub fn nodule_to_patch(&self, n: &VoxelNodule) -> VoxelNodule {
        VoxelNodule {
            centre_vox: self.to_patch(n.centre_vox),
            diameter_mm: n.diameter_mm * self.scale,
        }
    }
}

/// The windowed patch of `pre` through `t` (voxels beyond the grid take the padding value):
/// trilinear interpolation of the windowed voxels, which is exact copying when the transform
/// neither scales nor lands between voxels.
///
/// The transform is axis-aligned, so each output axis reads along one grid axis: the grid
/// positions are tabulated per axis, the grid region they touch is windowed once, and each
/// output voxel is seven lerps of eight reads from that region.
pub fn cut_patch(pre: &Preprocessed, t: &PatchTransform) -> Array3<f32> {
    let shape = pre.shape();
    let w = &pre.config.window;
    let pad = w.normalize(pre.config.patch.pad_hu);
    let (hu, mask) = (&pre.volume.hu, &pre.lung.mask);
    let region = |start: [i64; 3], len: [usize; 3]| -> Result<Array3<f32>> {
        let mut region = Array3::<f32>::zeros(len);
        region
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(rz, mut plane)| {
                let z = start[0] + rz as i64;
                for ((ry, rx), v) in plane.indexed_iter_mut() {
                    let (y, x) = (start[1] + ry as i64, start[2] + rx as i64);
                    *v = if z < 0
                        || y < 0
                        || x < 0
                        || z >= shape[0] as i64
                        || y >= shape[1] as i64
                        || x >= shape[2] as i64
                    {
                        pad
                    } else {
                        let i = [z as usize, y as usize, x as usize];
                        w.value(hu[i], mask[i] != 0)
                    };
                }
            });
        Ok(region)
    };
    // The closure above cannot fail.
    cut_patch_with(t, region).unwrap_or_else(|_| Array3::from_elem(t.size_vox, pad))
}

/// [`cut_patch`] on any source of windowed voxels: `region(start, len)` returns the windowed
/// grid region `[start, start + len)` (padding beyond the grid), read once per patch. The
/// on-disk cache ([`super::cache`]) reads it from its file.
pub fn cut_patch_with(
    t: &PatchTransform,
    region: impl FnOnce([i64; 3], [usize; 3]) -> Result<Array3<f32>>,
) -> Result<Array3<f32>> {
    let c_out = t.centre_out();
    // Per output axis: the lower grid index and the weight of the upper one.
    let tables: [Vec<(i64, f32)>; 3] = [0, 1, 2].map(|a| {
        (0..t.size_vox[a])
            .map(|o| {
                let g = t.centre_vox[t.perm[a]] + t.sign[a] * (o as f64 - c_out[a]) / t.scale;
                let lo = g.floor();
                (lo as i64, (g - lo) as f32)
            })
            .collect()
    });
    // The grid region touched, per grid axis: [start, start + len).
    let mut start = [0i64; 3];
    let mut len = [0usize; 3];
    for a in 0..3 {
        let ga = t.perm[a];
        let lo = tables[a].iter().map(|v| v.0).min().unwrap_or(0);
        let hi = tables[a].iter().map(|v| v.0).max().unwrap_or(0) + 1;
        start[ga] = lo;
        len[ga] = (hi - lo + 1) as usize;
    }
    let region = region(start, len)?;
    if region.dim() != (len[0], len[1], len[2]) {
        return Err(Error::InvalidArgument(format!(
            "a patch region of {:?} voxels was asked for, {:?} given",
            len,
            region.dim()
        )));
    }
    let region = region.as_standard_layout();
    let src = region.as_slice().unwrap_or(&[]);
    let stride = [len[1] * len[2], len[2], 1];
    // Per output axis: offsets into the region, the step to the upper neighbour, weights.
    let offs: [Vec<(usize, f32)>; 3] = [0, 1, 2].map(|a| {
        let ga = t.perm[a];
        tables[a]
            .iter()
            .map(|&(lo, wt)| ((lo - start[ga]) as usize * stride[ga], wt))
            .collect()
    });
    let step = [0, 1, 2].map(|a| stride[t.perm[a]]);
    let lerp = |a: f32, b: f32, wt: f32| a + wt * (b - a);
    let mut out = Array3::<f32>::zeros(t.size_vox);
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(oz, mut plane)| {
            let (z0, wz) = offs[0][oz];
            for (oy, mut row) in plane.rows_mut().into_iter().enumerate() {
                let (y0, wy) = offs[1][oy];
                let base = z0 + y0;
                for (v, &(x0, wx)) in row.iter_mut().zip(&offs[2]) {
                    let i = base + x0;
                    let at = |d: usize| src[i + d];
                    let c00 = lerp(at(0), at(step[2]), wx);
                    let c01 = lerp(at(step[1]), at(step[1] + step[2]), wx);
                    let c10 = lerp(at(step[0]), at(step[0] + step[2]), wx);
                    let c11 = lerp(at(step[0] + step[1]), at(step[0] + step[1] + step[2]), wx);
                    *v = lerp(lerp(c00, c01, wy), lerp(c10, c11, wy), wz);
                }
            }
        });
    Ok(out)
}
