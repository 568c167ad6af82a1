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

    /// Whether the map moves voxel centres onto voxel centres (no interpolation needed).
    fn is_exact(&self) -> bool {
        let c = self.centre_out();
        self.scale == 1.0
            && (0..3).all(|a| {
                let off = self.centre_vox[self.perm[a]] - c[a];
                off == off.round()
            })
    }
}

/// The windowed patch of `pre` through `t` (voxels beyond the grid take the padding value):
/// trilinear interpolation of the windowed neighbours when the transform scales or lands
/// between voxels, exact copies otherwise.
pub fn cut_patch(pre: &Preprocessed, t: &PatchTransform) -> Array3<f32> {
    let shape = pre.shape();
    let w = &pre.config.window;
    let pad = w.normalize(pre.config.patch.pad_hu);
    let (hu, mask) = (&pre.volume.hu, &pre.lung.mask);
    let at = |z: i64, y: i64, x: i64| -> f32 {
        if z < 0
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
        }
    };
    let exact = t.is_exact();
    let mut out = Array3::<f32>::zeros(t.size_vox);
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .for_each(|(oz, mut plane)| {
            for ((oy, ox), v) in plane.indexed_iter_mut() {
                let g = t.to_grid([oz as f64, oy as f64, ox as f64]);
                *v = if exact {
                    at(
                        g[0].round() as i64,
                        g[1].round() as i64,
                        g[2].round() as i64,
                    )
                } else {
                    let f = g.map(f64::floor);
                    let r = [0, 1, 2].map(|a| (g[a] - f[a]) as f32);
                    let b = f.map(|v| v as i64);
                    let mut acc = 0.0f32;
                    for dz in 0..2 {
                        let wz = if dz == 0 { 1.0 - r[0] } else { r[0] };
                        for dy in 0..2 {
                            let wy = if dy == 0 { 1.0 - r[1] } else { r[1] };
                            for dx in 0..2 {
                                let wx = if dx == 0 { 1.0 - r[2] } else { r[2] };
                                let wt = wz * wy * wx;
                                if wt != 0.0 {
                                    acc += wt * at(b[0] + dz, b[1] + dy, b[2] + dx);
                                }
                            }
                        }
                    }
                    acc
                };
            }
        });
    out
}
