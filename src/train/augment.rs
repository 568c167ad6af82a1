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
/// neither scales nor lands between voxels. Fails on a transform [`cut_patch_with`]
/// refuses.
pub fn cut_patch(pre: &Preprocessed, t: &PatchTransform) -> Result<Array3<f32>> {
    let shape = pre.shape();
    let w = &pre.config.window;
    let pad = w.normalize(pre.config.patch.pad_hu);
    let (hu, mask) = (&pre.volume.hu, &pre.lung.mask);
    let plane = |z: i64, start: [i64; 2], len: [usize; 2], out: &mut [f32]| -> Result<()> {
        if z < 0 || z >= shape[0] as i64 {
            out.fill(pad);
            return Ok(());
        }
        let (hu, mask) = (
            hu.index_axis(Axis(0), z as usize),
            mask.index_axis(Axis(0), z as usize),
        );
        for (r, row) in out.chunks_exact_mut(len[1]).enumerate() {
            let y = start[0] + r as i64;
            if y < 0 || y >= shape[1] as i64 {
                row.fill(pad);
                continue;
            }
            let (hu, mask) = (hu.row(y as usize), mask.row(y as usize));
            window_row(row, start[1], shape[2], pad, |out, x0| {
                let hu = hu.iter().skip(x0).copied();
                w.values_into(out, hu, mask.iter().skip(x0).map(|&m| m != 0))
            });
        }
        Ok(())
    };
    cut_patch_with(t, &plane)
}

/// Fills `out`, the row of a region that starts at grid column `start_x`, with `pad` beyond
/// the grid's columns `0..nx`, and has `inside(part, x0)` fill the part on the grid, whose
/// first column is `x0` (`x0 + part.len() <= nx`).
#[inline]
pub(crate) fn window_row(
    out: &mut [f32],
    start_x: i64,
    nx: usize,
    pad: f32,
    inside: impl FnOnce(&mut [f32], usize),
) {
    let n = out.len() as i64;
    let i0 = start_x.saturating_neg().clamp(0, n) as usize;
    let i1 = (nx as i64).saturating_sub(start_x).clamp(0, n) as usize;
    if i0 >= i1 {
        out.fill(pad);
        return;
    }
    out[..i0].fill(pad);
    out[i1..].fill(pad);
    inside(&mut out[i0..i1], (start_x + i0 as i64) as usize);
}

/// Where [`cut_patch_with`] reads windowed voxels from, one axial plane of the grid at a
/// time, from several threads.
pub trait PlaneSource: Sync {
    /// What is kept from one plane to the next (read buffers): one per rayon job, and a
    /// job reads a run of planes.
    type Scratch: Default + Send;

    /// Fills `out` (`len[0] * len[1]`, rows of `len[1]`) with the windowed voxels of grid
    /// plane `z`, rows `start[0]..start[0] + len[0]` and columns `start[1]..start[1] +
    /// len[1]`, padding beyond the grid. Every element must be written: `out` holds the
    /// previous plane's values.
    fn plane(
        &self,
        scratch: &mut Self::Scratch,
        z: i64,
        start: [i64; 2],
        len: [usize; 2],
        out: &mut [f32],
    ) -> Result<()>;
}

/// A function `(z, start, len, out)` is a source that keeps nothing between planes; a
/// closure needs its parameter and return types written out to be one:
/// `|z: i64, start: [i64; 2], len: [usize; 2], out: &mut [f32]| -> Result<()> { ... }`.
impl<F> PlaneSource for F
where
    F: Fn(i64, [i64; 2], [usize; 2], &mut [f32]) -> Result<()> + Sync,
{
    type Scratch = ();

    fn plane(
        &self,
        _: &mut (),
        z: i64,
        start: [i64; 2],
        len: [usize; 2],
        out: &mut [f32],
    ) -> Result<()> {
        self(z, start, len, out)
    }
}

/// A patch is at most this many voxels (512 MiB of `f32`), and so are the plane of the
/// grid region it reads and the stack of those planes interpolated in-plane (what
/// [`cut_patch_with`] holds while it runs). Training patches are 128³, 2^21 voxels.
pub const MAX_PATCH_VOXELS: usize = 1 << 27;

/// A patch side, or a side of the grid region it reads, is at most this many voxels.
pub const MAX_PATCH_SIDE: usize = 1 << 16;

/// [`cut_patch`] on any source of windowed voxels, read once for each grid plane the patch
/// touches ([`PlaneSource::plane`]). The on-disk cache ([`super::cache`]) reads the planes
/// from its file.
///
/// Fails, before reading or allocating anything, on a transform that is not one
/// [`PatchTransform::draw`] could make: `perm` other than `[0, 1, 2]` or `[0, 2, 1]`
/// (turns about z only), signs other than ±1, a scale that is not finite or under 2^-20,
/// a centre that is not finite or beyond 2^40 voxels, or a patch or grid region over
/// [`MAX_PATCH_SIDE`] or [`MAX_PATCH_VOXELS`].
///
/// The transform is axis-aligned, so trilinear interpolation is separable: each plane is
/// interpolated along the grid axis of output axis 2, then along that of output axis 1,
/// and the patch's planes are lerps of two of those. The lerps are the ones a per-voxel
/// trilinear loop makes, in the same order (along output axis 2, then 1, then 0, each
/// `a + w * (b - a)`), so the values are the same, bit for bit; each is made once instead
/// of once per output voxel that needs it.
pub fn cut_patch_with<S: PlaneSource + ?Sized>(
    t: &PatchTransform,
    source: &S,
) -> Result<Array3<f32>> {
    let n = t.size_vox;
    let refuse = |why: &str| Error::InvalidArgument(format!("patch transform {t:?}: {why}"));
    if t.perm != [0, 1, 2] && t.perm != [0, 2, 1] {
        return Err(refuse("perm must be [0, 1, 2] or [0, 2, 1]"));
    }
    if t.sign.iter().any(|s| s.abs() != 1.0) {
        return Err(refuse("signs must be 1 or -1"));
    }
    // Centres beyond 2^40 voxels, or scales below 2^-20, would put grid indices past i64.
    let scale_ok = t.scale.is_finite() && t.scale >= 1.0 / (1 << 20) as f64;
    let far = |c: &f64| !c.is_finite() || c.abs() > (1u64 << 40) as f64;
    if !scale_ok || t.centre_vox.iter().any(far) {
        return Err(refuse(
            "the scale must be finite and at least 2^-20, the centre finite and within 2^40",
        ));
    }
    // Sides and voxel counts (empty axes count as 1, as ndarray counts them).
    let too_big = |dims: &[usize]| {
        dims.iter().any(|&d| d > MAX_PATCH_SIDE)
            || dims
                .iter()
                .try_fold(1usize, |v, &d| v.checked_mul(d.max(1)))
                .is_none_or(|v| v > MAX_PATCH_VOXELS)
    };
    if too_big(&n) {
        return Err(refuse(
            "the patch is larger than MAX_PATCH_SIDE or MAX_PATCH_VOXELS",
        ));
    }
    if n.contains(&0) {
        return Ok(Array3::zeros(n));
    }
    let c_out = t.centre_out();
    // Grid position of output voxel `o` along output axis `a`, and its lower grid index and
    // the weight of the upper one. The position is monotonic in `o` (so is its rounding).
    let grid = |a: usize, o: usize| {
        let g = t.centre_vox[t.perm[a]] + t.sign[a] * (o as f64 - c_out[a]) / t.scale;
        let lo = g.floor();
        (lo as i64, (g - lo) as f32)
    };
    // The grid region touched, per grid axis: [start, start + len), from the end points.
    let mut start = [0i64; 3];
    let mut len = [0usize; 3];
    for a in 0..3 {
        let ga = t.perm[a];
        let (first, last) = (grid(a, 0).0, grid(a, n[a] - 1).0);
        let (lo, hi) = (first.min(last), first.max(last) + 1);
        start[ga] = lo;
        len[ga] = usize::try_from(hi - lo + 1).unwrap_or(usize::MAX);
    }
    if too_big(&len[1..]) || too_big(&[len[0], n[1], n[2]]) {
        return Err(refuse(
            "the grid region it reads is larger than MAX_PATCH_SIDE or MAX_PATCH_VOXELS",
        ));
    }
    let tables: [Vec<(i64, f32)>; 3] = [0, 1, 2].map(|a| (0..n[a]).map(|o| grid(a, o)).collect());
    // Output axis 0 runs along grid z; axes 1 and 2 along grid y and x, in either order.
    let (p1, p2) = (t.perm[1], t.perm[2]);
    // Strides of grid y and x in a plane of the region.
    let in_plane = |ga: usize| if ga == 1 { len[2] } else { 1 };
    // Output axis 1's lower grid row (region coordinates) and weight.
    let rows1: Vec<(usize, f32)> = tables[1]
        .iter()
        .map(|&(lo, wt)| ((lo - start[p1]) as usize, wt))
        .collect();
    // Output axis 2's lower offset into a plane of the region, and weight.
    let offs2: Vec<(usize, f32)> = tables[2]
        .iter()
        .map(|&(lo, wt)| ((lo - start[p2]) as usize * in_plane(p2), wt))
        .collect();
    let (step1, step2) = (in_plane(p1), in_plane(p2));
    let lerp = |a: f32, b: f32, wt: f32| a + wt * (b - a);
    // Every plane of the region, interpolated in-plane (n1, n2).
    let plane_len = n[1] * n[2];
    let planes: Vec<Vec<f32>> = (0..len[0])
        .into_par_iter()
        .map_init(
            || {
                (
                    S::Scratch::default(),
                    vec![0f32; len[1] * len[2]],
                    vec![0f32; len[p1] * n[2]],
                )
            },
            |(scratch, src, along2), gz| -> Result<Vec<f32>> {
                let z = start[0] + gz as i64;
                source.plane(scratch, z, [start[1], start[2]], [len[1], len[2]], src)?;
                // Along output axis 2: one row per grid line of output axis 1.
                for (g1, row) in along2.chunks_exact_mut(n[2]).enumerate() {
                    let base = g1 * step1;
                    for (v, &(o, wt)) in row.iter_mut().zip(&offs2) {
                        let i = base + o;
                        *v = lerp(src[i], src[i + step2], wt);
                    }
                }
                // Along output axis 1.
                let mut dst = Vec::with_capacity(plane_len);
                for &(g1, wt) in &rows1 {
                    let lo = &along2[g1 * n[2]..(g1 + 1) * n[2]];
                    let hi = &along2[(g1 + 1) * n[2]..(g1 + 2) * n[2]];
                    dst.extend(lo.iter().zip(hi).map(|(&a, &b)| lerp(a, b, wt)));
                }
                Ok(dst)
            },
        )
        .collect::<Result<_>>()?;
    // Along output axis 0 (grid z).
    let mut out = vec![0f32; n[0] * plane_len];
    out.par_chunks_mut(plane_len)
        .zip(tables[0].par_iter())
        .for_each(|(dst, &(lo, wt))| {
            let z0 = (lo - start[0]) as usize;
            let (a, b) = (&planes[z0], &planes[z0 + 1]);
            for ((v, &a), &b) in dst.iter_mut().zip(a).zip(b) {
                *v = lerp(a, b, wt);
            }
        });
    Array3::from_shape_vec(n, out)
        .map_err(|e| Error::InvalidArgument(format!("a patch of {n:?} voxels: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A windowed test grid of `shape` with varied values, `pad` beyond it.
    fn grid_value(shape: [usize; 3], pad: f32, z: i64, y: i64, x: i64) -> f32 {
        let inside = [z, y, x]
            .iter()
            .zip(shape)
            .all(|(&v, n)| v >= 0 && v < n as i64);
        if !inside {
            return pad;
        }
        let h = (z * 7919 + y * 104_729 + x * 15_485_863) as u64;
        (crate::rng::SplitMix64::new(h).next_u64() % 1000) as f32 / 999.0
    }

    /// The per-voxel trilinear loop `cut_patch_with` replaced: eight reads and seven lerps
    /// per output voxel (x, then y, then z).
    fn per_voxel(t: &PatchTransform, shape: [usize; 3], pad: f32) -> Array3<f32> {
        let lerp = |a: f32, b: f32, wt: f32| a + wt * (b - a);
        let c = t.centre_out();
        let pos = |a: usize, o: usize| {
            let g = t.centre_vox[t.perm[a]] + t.sign[a] * (o as f64 - c[a]) / t.scale;
            let lo = g.floor();
            (lo as i64, (g - lo) as f32)
        };
        Array3::from_shape_fn(t.size_vox, |(oz, oy, ox)| {
            let (z, wz) = pos(0, oz);
            let (l1, wy) = pos(1, oy);
            let (l2, wx) = pos(2, ox);
            // Grid (z, y, x) of corner (dz, d1, d2) in output axes.
            let at = |dz: i64, d1: i64, d2: i64| {
                let mut g = [z + dz, 0, 0];
                g[t.perm[1]] = l1 + d1;
                g[t.perm[2]] = l2 + d2;
                grid_value(shape, pad, g[0], g[1], g[2])
            };
            let c00 = lerp(at(0, 0, 0), at(0, 0, 1), wx);
            let c01 = lerp(at(0, 1, 0), at(0, 1, 1), wx);
            let c10 = lerp(at(1, 0, 0), at(1, 0, 1), wx);
            let c11 = lerp(at(1, 1, 0), at(1, 1, 1), wx);
            lerp(lerp(c00, c01, wy), lerp(c10, c11, wy), wz)
        })
    }

    #[test]
    fn separable_cut_equals_the_per_voxel_loop_bit_for_bit() {
        let shape = [30, 26, 34];
        let pad = 0.25;
        let mut rng = SplitMix64::new(11);
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..72 {
            let centre = [0, 1, 2].map(|a| rng.uniform() * (shape[a] as f64 + 8.0) - 4.0);
            let t = if k < 40 {
                // As training draws them (turns need a square y-x patch).
                let size = if k % 3 == 0 {
                    [9, 12, 12]
                } else {
                    [16, 10, 10]
                };
                let config = AugmentConfig {
                    scale: [0.6, 1.6],
                    ..AugmentConfig::default()
                };
                PatchTransform::draw(centre, size, [1.5, 0.8, 0.8], &config, &mut rng)
            } else {
                // Both orders of y and x and every sign, on a patch of three different sides.
                let m = k - 40;
                PatchTransform {
                    centre_vox: centre,
                    size_vox: [7, 9, 13],
                    perm: if m & 1 == 0 { [0, 1, 2] } else { [0, 2, 1] },
                    sign: [2, 4, 8].map(|b| if m & b == 0 { 1.0 } else { -1.0 }),
                    scale: 0.7 + 0.6 * rng.uniform(),
                }
            };
            seen.insert((t.perm, t.sign.map(|s| s > 0.0)));
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let source =
                |z: i64, start: [i64; 2], len: [usize; 2], out: &mut [f32]| -> Result<()> {
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    for (i, v) in out.iter_mut().enumerate() {
                        let (y, x) = (
                            start[0] + (i / len[1]) as i64,
                            start[1] + (i % len[1]) as i64,
                        );
                        *v = grid_value(shape, pad, z, y, x);
                    }
                    Ok(())
                };
            let fast = cut_patch_with(&t, &source).unwrap();
            let slow = per_voxel(&t, shape, pad);
            let same = fast
                .iter()
                .zip(slow.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "draw {k}: {t:?}");
            // Each plane the patch touches is asked for once.
            let planes = calls.into_inner();
            let most = (t.size_vox[0] as f64 / t.scale).ceil() as usize + 2;
            assert!(
                planes <= most,
                "{planes} planes read, at most {most} touched"
            );
        }
        assert_eq!(seen.len(), 16, "both orders of y and x, every sign");
    }

    #[test]
    fn transforms_draw_cannot_make_are_refused_before_reading() {
        let plane = |_: i64, _: [i64; 2], _: [usize; 2], _: &mut [f32]| -> Result<()> {
            panic!("nothing may be read for a refused transform")
        };
        let ok = PatchTransform::identity([5.0; 3], [4; 3]);
        let bad = [
            PatchTransform {
                perm: [1, 0, 2],
                ..ok
            },
            PatchTransform {
                perm: [0, 1, 1],
                ..ok
            },
            PatchTransform {
                sign: [1.0, 0.5, 1.0],
                ..ok
            },
            PatchTransform {
                sign: [1.0, f64::NAN, 1.0],
                ..ok
            },
            PatchTransform { scale: 0.0, ..ok },
            PatchTransform {
                scale: f64::INFINITY,
                ..ok
            },
            PatchTransform {
                centre_vox: [5.0, 5.0, f64::NEG_INFINITY],
                ..ok
            },
            PatchTransform {
                centre_vox: [5.0, -1e19, 5.0],
                ..ok
            },
            PatchTransform {
                size_vox: [1 << 20, 1 << 20, 4],
                ..ok
            },
            PatchTransform {
                size_vox: [0, 1 << 40, 1 << 40],
                ..ok
            },
            PatchTransform {
                size_vox: [1 << 31, 1, 1],
                ..ok
            },
            // A small patch magnified down onto a huge region.
            PatchTransform {
                size_vox: [64; 3],
                scale: 1.0 / (1 << 14) as f64,
                ..ok
            },
        ];
        for t in bad {
            assert!(cut_patch_with(&t, &plane).is_err(), "{t:?}");
        }
    }

    #[test]
    fn window_rows_pad_beyond_the_grid_at_any_start() {
        let mut row = [0f32; 5];
        for (start, expect) in [
            (-2, [9.0, 9.0, 0.0, 1.0, 2.0]),
            (1, [1.0, 2.0, 9.0, 9.0, 9.0]),
            (i64::MIN, [9.0; 5]),
            (i64::MAX, [9.0; 5]),
        ] {
            window_row(&mut row, start, 3, 9.0, |out, x0| {
                for (i, v) in out.iter_mut().enumerate() {
                    *v = (x0 + i) as f32;
                }
            });
            assert_eq!(row, expect, "start {start}");
        }
    }

    #[test]
    fn a_failing_plane_source_fails_the_cut() {
        let t = PatchTransform::identity([5.0; 3], [4; 3]);
        let fail = |_: i64, _: [i64; 2], _: [usize; 2], _: &mut [f32]| -> Result<()> {
            Err(Error::InvalidArgument("no".into()))
        };
        let err = cut_patch_with(&t, &fail);
        assert!(err.is_err());
        let empty = PatchTransform::identity([5.0; 3], [0, 4, 4]);
        let none = |_: i64, _: [i64; 2], _: [usize; 2], _: &mut [f32]| -> Result<()> { Ok(()) };
        assert_eq!(cut_patch_with(&empty, &none).unwrap().dim(), (0, 4, 4));
    }
}
