//! Patches: the tiler that covers a region of the preprocessed grid with fixed-size
//! patches, the stitcher that merges per-patch outputs back, and the sampler that cuts
//! training patches centred on world points.
//!
//! A patch is named by its **offset**: the preprocessed-grid voxel index `(z, y, x)` of its
//! voxel `(0, 0, 0)`. Offsets may be negative or run past the grid; such voxels are padding.
//! Patch voxel `p` is preprocessed voxel `offset + p`, so its world point is
//! `Preprocessed::geometry().voxel_to_world(offset + p)`, and [`Patch::geometry`] is that
//! mapping as a [`Geometry`] of its own.

use super::VoxelBox;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::rng::SplitMix64;
use crate::volume::Geometry;
use ndarray::{s, Array3, ArrayView3};
use serde::{Deserialize, Serialize};

/// Patch size, overlap and padding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatchConfig {
    /// Patch size `(z, y, x)` in voxels. Default 128 x 128 x 128.
    pub size_vox: [usize; 3],
    /// Overlap of neighbouring tiles, voxels per axis (less than the size). Default 32, so
    /// any nodule up to 32 voxels across lies whole in at least one tile.
    pub overlap_vox: [usize; 3],
    /// HU given to patch voxels beyond the preprocessed grid (before windowing). Default 0,
    /// the same soft-tissue value as outside the lungs.
    pub pad_hu: f32,
}

impl Default for PatchConfig {
    fn default() -> Self {
        PatchConfig {
            size_vox: [128; 3],
            overlap_vox: [32; 3],
            pad_hu: 0.0,
        }
    }
}

/// Largest patch side accepted (voxels).
pub const MAX_PATCH_SIDE: usize = 1024;

/// Checks a patch size is 1 to [`MAX_PATCH_SIDE`] voxels per axis.
pub(crate) fn check_patch_size(size_vox: [usize; 3]) -> Result<()> {
    if size_vox.iter().any(|&n| n == 0 || n > MAX_PATCH_SIDE) {
        return Err(Error::InvalidArgument(format!(
            "patch size {size_vox:?} must be 1 to {MAX_PATCH_SIDE} voxels per axis"
        )));
    }
    Ok(())
}

impl PatchConfig {
    /// Checks sizes are positive, at most [`MAX_PATCH_SIDE`], and overlaps below the sizes.
    pub fn validate(&self) -> Result<()> {
        check_patch_size(self.size_vox)?;
        for a in 0..3 {
            if self.overlap_vox[a] >= self.size_vox[a] {
                return Err(Error::InvalidArgument(format!(
                    "patch overlap {:?} must be smaller than the patch size {:?}",
                    self.overlap_vox, self.size_vox
                )));
            }
        }
        if !self.pad_hu.is_finite() {
            return Err(Error::InvalidArgument("pad_hu must be finite".into()));
        }
        Ok(())
    }
}

/// The tiles covering a region: per axis, starts `region.start + k * (size - overlap)`, the
/// last one moved back so it ends at the region's end (so tiles stay inside the region
/// whenever it is at least one patch long). A region shorter than the patch gets one
/// tile centred on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchGrid {
    /// The region covered, in preprocessed voxels.
    pub region: VoxelBox,
    /// Patch size `(z, y, x)`.
    pub size_vox: [usize; 3],
    starts: [Vec<i64>; 3],
}

impl PatchGrid {
    /// Tiles `region` with patches of `size_vox`, neighbours overlapping by `overlap_vox`.
    pub fn new(region: VoxelBox, size_vox: [usize; 3], overlap_vox: [usize; 3]) -> Result<Self> {
        PatchConfig {
            size_vox,
            overlap_vox,
            pad_hu: 0.0,
        }
        .validate()?;
        let starts = [0, 1, 2].map(|a| {
            let (start, len) = (region.start[a] as i64, region.len()[a] as i64);
            let (size, stride) = (size_vox[a] as i64, (size_vox[a] - overlap_vox[a]) as i64);
            if len <= size {
                vec![start - (size - len) / 2]
            } else {
                let n = (len - size + stride - 1) / stride + 1;
                (0..n)
                    .map(|k| (start + k * stride).min(start + len - size))
                    .collect()
            }
        });
        Ok(PatchGrid {
            region,
            size_vox,
            starts,
        })
    }

    /// Holds the tiles to `limits`' tile count and coverage ([`Limits::check_tiles`]).
    pub fn check_limits(&self, limits: &Limits) -> Result<()> {
        let tiles = self
            .starts
            .iter()
            .fold(1u64, |p, s| p.saturating_mul(s.len() as u64));
        limits.check_tiles(
            tiles,
            self.size_vox.map(|n| n as u64),
            self.region.len().map(|n| n as u64),
        )
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.starts.iter().map(Vec::len).product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tiles per axis `(z, y, x)`.
    pub fn counts(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.starts[a].len())
    }

    /// Offset of tile `index` (z slowest, x fastest), or `None` past the end.
    pub fn offset(&self, index: usize) -> Option<[i64; 3]> {
        let [_, cy, cx] = self.counts();
        if index >= self.len() {
            return None;
        }
        let (k, j, i) = (index / (cy * cx), (index / cx) % cy, index % cx);
        Some([self.starts[0][k], self.starts[1][j], self.starts[2][i]])
    }

    /// Every tile's offset, z slowest, x fastest.
    pub fn offsets(&self) -> impl Iterator<Item = [i64; 3]> + '_ {
        (0..self.len()).filter_map(|i| self.offset(i))
    }
}

/// How overlapping patch outputs are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StitchMode {
    /// The mean of the patches covering a voxel.
    Mean,
    /// The largest value of the patches covering a voxel.
    Max,
}

/// Merges per-patch outputs (on the patch's own voxels) back into a region.
#[derive(Debug, Clone)]
pub struct Stitcher {
    region: VoxelBox,
    mode: StitchMode,
    values: Array3<f32>,
    weights: Array3<u16>,
}

impl Stitcher {
    pub fn new(region: VoxelBox, mode: StitchMode) -> Self {
        let [nz, ny, nx] = region.len();
        Stitcher {
            region,
            mode,
            values: Array3::from_elem(
                (nz, ny, nx),
                match mode {
                    StitchMode::Mean => 0.0,
                    StitchMode::Max => f32::NEG_INFINITY,
                },
            ),
            weights: Array3::zeros((nz, ny, nx)),
        }
    }

    /// Adds a patch output whose voxel `(0, 0, 0)` is preprocessed voxel `offset`; the
    /// parts outside the region are ignored.
    pub fn add(&mut self, offset: [i64; 3], patch: ArrayView3<f32>) {
        let shape = patch.shape();
        // The overlap in region voxels (`lo..hi`) and in patch voxels (`src_lo..src_hi`).
        let mut lo = [0usize; 3];
        let mut hi = [0usize; 3];
        let mut src_lo = [0usize; 3];
        let mut src_hi = [0usize; 3];
        for a in 0..3 {
            let r0 = self.region.start[a] as i64;
            let r1 = self.region.end[a] as i64;
            let p0 = offset[a].max(r0);
            let p1 = (offset[a] + shape[a] as i64).min(r1);
            if p0 >= p1 {
                return;
            }
            (lo[a], hi[a]) = ((p0 - r0) as usize, (p1 - r0) as usize);
            (src_lo[a], src_hi[a]) = ((p0 - offset[a]) as usize, (p1 - offset[a]) as usize);
        }
        let src = patch.slice(s![
            src_lo[0]..src_hi[0],
            src_lo[1]..src_hi[1],
            src_lo[2]..src_hi[2]
        ]);
        let mut dst = self
            .values
            .slice_mut(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]]);
        let mut w = self
            .weights
            .slice_mut(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]]);
        match self.mode {
            StitchMode::Mean => {
                ndarray::Zip::from(&mut dst)
                    .and(&mut w)
                    .and(&src)
                    .for_each(|d, w, &v| {
                        *d += v;
                        *w = w.saturating_add(1);
                    })
            }
            StitchMode::Max => {
                ndarray::Zip::from(&mut dst)
                    .and(&mut w)
                    .and(&src)
                    .for_each(|d, w, &v| {
                        *d = d.max(v);
                        *w = w.saturating_add(1);
                    })
            }
        }
    }

    /// The merged region; voxels no patch covered are NaN.
    pub fn finish(self) -> Array3<f32> {
        let mode = self.mode;
        let mut values = self.values;
        ndarray::Zip::from(&mut values)
            .and(&self.weights)
            .for_each(|v, &w| {
                *v = match (w, mode) {
                    (0, _) => f32::NAN,
                    (_, StitchMode::Max) => *v,
                    (w, StitchMode::Mean) => *v / w as f32,
                }
            });
        values
    }
}

/// A patch cut from the preprocessed volume: windowed values, where it lies and how its
/// voxels map to the world.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// Windowed values `(z, y, x)`.
    pub data: Array3<f32>,
    /// Preprocessed voxel of the patch's voxel `(0, 0, 0)`.
    pub offset_vox: [i64; 3],
    /// Patch voxel index to world millimetres.
    pub geometry: Geometry,
}

/// Draws training patches centred on world points, with a random integer shift of up to
/// `jitter_mm` per axis; deterministic by seed (SplitMix64).
#[derive(Debug, Clone)]
pub struct PatchSampler {
    rng: SplitMix64,
    /// Patch size `(z, y, x)`.
    pub size_vox: [usize; 3],
    /// Largest shift of the centre, millimetres per axis.
    pub jitter_mm: f64,
}

impl PatchSampler {
    pub fn new(seed: u64, size_vox: [usize; 3], jitter_mm: f64) -> Result<Self> {
        if !(jitter_mm.is_finite() && jitter_mm >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "jitter must be a non-negative number of mm, got {jitter_mm}"
            )));
        }
        check_patch_size(size_vox)?;
        Ok(PatchSampler {
            rng: SplitMix64::new(seed),
            size_vox,
            jitter_mm,
        })
    }

    /// The shift (voxels, `(z, y, x)`) for the next patch on a grid of `spacing_mm`: each
    /// axis uniform in `[-J, J]` with `J = floor(jitter_mm / spacing)`.
    pub fn next_shift(&mut self, spacing_mm: [f64; 3]) -> [i64; 3] {
        spacing_mm.map(|s| {
            let j = (self.jitter_mm / s).floor() as i64;
            self.rng.below((2 * j + 1) as usize) as i64 - j
        })
    }

    /// A patch around `centre_world` (`(x, y, z)` mm) of `pre`, shifted at random.
    pub fn sample(&mut self, pre: &super::Preprocessed, centre_world: [f64; 3]) -> Result<Patch> {
        let shift = self.next_shift(pre.geometry().spacing_mm);
        pre.patch_at_world(centre_world, self.size_vox, shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_region_and_stay_inside_it() {
        for (len, size, overlap) in [
            (300, 128, 32),
            (128, 128, 32),
            (129, 128, 0),
            (50, 128, 32),
            (60, 8, 7),
        ] {
            let region = VoxelBox {
                start: [7, 0, 3],
                end: [7 + len, 40, 3 + len / 2 + 1],
            };
            let g = PatchGrid::new(region, [size, 40, size], [overlap, 0, overlap]).unwrap();
            let mut covered = Array3::<u8>::zeros(region.len());
            for o in g.offsets() {
                for a in 0..3 {
                    let (r0, r1) = (region.start[a] as i64, region.end[a] as i64);
                    let p = [size as i64, 40, size as i64][a];
                    if r1 - r0 >= p {
                        assert!(o[a] >= r0 && o[a] + p <= r1, "tile {o:?} leaves {region:?}");
                    }
                }
                let lo = [0, 1, 2].map(|a| (o[a] - region.start[a] as i64).max(0) as usize);
                let hi = [0, 1, 2].map(|a| {
                    ((o[a] + [size, 40, size][a] as i64 - region.start[a] as i64).max(0) as usize)
                        .min(region.len()[a])
                });
                covered
                    .slice_mut(s![lo[0]..hi[0], lo[1]..hi[1], lo[2]..hi[2]])
                    .fill(1);
            }
            assert!(covered.iter().all(|&c| c == 1), "len {len} size {size}");
            assert_eq!(g.len(), g.offsets().count());
        }
    }

    #[test]
    fn stitching_identity_outputs_reproduces_the_input() {
        let region = VoxelBox {
            start: [2, 5, 1],
            end: [45, 38, 60],
        };
        let full = Array3::from_shape_fn((50, 40, 64), |(z, y, x)| {
            ((z * 131 + y * 17 + x * 7) % 101) as f32 / 7.0 - 3.0
        });
        let g = PatchGrid::new(region, [16, 20, 24], [5, 3, 8]).unwrap();
        for mode in [StitchMode::Mean, StitchMode::Max] {
            let mut st = Stitcher::new(region, mode);
            for o in g.offsets() {
                // Cut the patch from `full` (zero outside it).
                let patch = Array3::from_shape_fn((16, 20, 24), |(z, y, x)| {
                    let p = [o[0] + z as i64, o[1] + y as i64, o[2] + x as i64];
                    if p.iter().zip([50, 40, 64]).all(|(&v, n)| v >= 0 && v < n) {
                        full[(p[0] as usize, p[1] as usize, p[2] as usize)]
                    } else {
                        0.0
                    }
                });
                st.add(o, patch.view());
            }
            let out = st.finish();
            let want = full.slice(s![2..45, 5..38, 1..60]);
            let max_diff = out
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(max_diff <= 1e-5, "{mode:?}: {max_diff}");
        }
        // A voxel no patch covers is NaN.
        let st = Stitcher::new(region, StitchMode::Mean);
        assert!(st.finish().iter().all(|v| v.is_nan()));
    }

    #[test]
    fn bad_patch_configs_are_refused() {
        let r = VoxelBox {
            start: [0; 3],
            end: [10; 3],
        };
        assert!(PatchGrid::new(r, [0, 8, 8], [0; 3]).is_err());
        assert!(PatchGrid::new(r, [8, 8, 8], [8, 0, 0]).is_err());
        assert!(PatchSampler::new(1, [8; 3], -1.0).is_err());
        assert!(PatchSampler::new(1, [4096, 8, 8], 1.0).is_err());
    }

    #[test]
    fn sampler_shifts_are_bounded_and_reproducible() {
        let mut a = PatchSampler::new(9, [8; 3], 3.0).unwrap();
        let mut b = PatchSampler::new(9, [8; 3], 3.0).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let s = a.next_shift([1.0, 0.7, 2.0]);
            assert_eq!(s, b.next_shift([1.0, 0.7, 2.0]));
            assert!(
                s[0].abs() <= 3 && s[1].abs() <= 4 && s[2].abs() <= 1,
                "{s:?}"
            );
            seen.insert(s[0]);
        }
        assert_eq!(seen.len(), 7, "every shift in [-3, 3] is drawn");
    }
}
