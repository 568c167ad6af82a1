//! Preprocessing: from a loaded CT to what the detector sees.
//!
//! [`preprocess`] (or [`preprocess_owned`], which frees the input early) runs the stages in order, each with its own config inside
//! [`PreprocessConfig`]:
//!
//! 1. [`resample`] to `spacing_mm` (1 mm isotropic by default), trilinear; the
//!    **preprocessed grid** is the resampled grid, whose [`Geometry`] maps its voxels to world
//!    millimetres (same origin and direction as the scan).
//! 2. [`lung_mask`]: 3-D lung mask on that grid, its lungs' bounding box and volume.
//! 3. **Crop**: the lungs' box grown by `crop_margin_mm` and clamped to the grid; the
//!    region the detector tiles ([`Preprocessed::crop`], geometry
//!    [`Preprocessed::crop_geometry`]).
//! 4. **Windowing** ([`WindowConfig`]) is applied when patches are cut, so the float volume
//!    is never held whole: [`Preprocessed::tiles`] gives the tile offsets,
//!    [`Preprocessed::patch`] / [`Preprocessed::patch_into`] cut them,
//!    [`Stitcher`] merges per-tile outputs back, and [`PatchSampler`] /
//!    [`Preprocessed::patch_at_world`] cut training patches centred on world points.
//!
//! Every step keeps the map back to the scanner: preprocessed voxel `v` is at world
//! `geometry().voxel_to_world(v)`; crop voxel `c` is preprocessed voxel `crop.start + c`; patch
//! voxel `p` is preprocessed voxel `offset + p`.
//!
//! Memory: the resampled `i16` volume plus one byte per resampled voxel for the mask, on
//! top of the input while it is being resampled (dropped then by [`preprocess_owned`]).

pub mod lung_mask;
pub mod monai;
pub mod patches;
pub mod preview;
pub mod resample;
pub mod window;

pub use lung_mask::{lung_mask, LungMask, LungMaskConfig};
pub use patches::{Patch, PatchConfig, PatchGrid, PatchSampler, StitchMode, Stitcher};
pub use preview::{render_preview, write_preview_png};
pub use resample::{resample, resampled_grid, Interpolation};
pub use window::WindowConfig;

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::volume::{Geometry, Volume};
use ndarray::{s, Array3, ArrayViewMut3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A box of voxels: `start` inclusive, `end` exclusive, `(z, y, x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VoxelBox {
    pub start: [usize; 3],
    pub end: [usize; 3],
}

impl VoxelBox {
    /// The box of a whole grid of `shape`.
    pub fn of_shape(shape: [usize; 3]) -> Self {
        VoxelBox {
            start: [0; 3],
            end: shape,
        }
    }

    /// Size per axis.
    pub fn len(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.end[a].saturating_sub(self.start[a]))
    }

    pub fn is_empty(&self) -> bool {
        self.len().contains(&0)
    }

    /// Number of voxels.
    pub fn voxels(&self) -> u64 {
        self.len().iter().map(|&n| n as u64).product()
    }

    pub fn contains(&self, zyx: [usize; 3]) -> bool {
        (0..3).all(|a| zyx[a] >= self.start[a] && zyx[a] < self.end[a])
    }

    /// The box grown by `margin` voxels on every side, clamped to a grid of `shape`.
    pub fn grown(&self, margin: [usize; 3], shape: [usize; 3]) -> Self {
        VoxelBox {
            start: [0, 1, 2].map(|a| self.start[a].saturating_sub(margin[a])),
            end: [0, 1, 2].map(|a| self.end[a].saturating_add(margin[a]).min(shape[a])),
        }
    }
}

/// Every preprocessing setting, with defaults; serialisable, so a model file records the
/// preprocessing it was trained with (unknown fields are refused, missing ones default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Output spacing `(z, y, x)` mm. Default 1 mm isotropic.
    pub spacing_mm: [f64; 3],
    /// HU of resampled voxels beyond the scan. Default -1024 (air).
    pub outside_volume_hu: i16,
    pub lung_mask: LungMaskConfig,
    /// Margin around the lungs' box for the crop, mm. Default 10.
    pub crop_margin_mm: f64,
    pub window: WindowConfig,
    pub patch: PatchConfig,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            spacing_mm: [1.0; 3],
            outside_volume_hu: -1024,
            lung_mask: LungMaskConfig::default(),
            crop_margin_mm: 10.0,
            window: WindowConfig::default(),
            patch: PatchConfig::default(),
        }
    }
}

impl PreprocessConfig {
    /// Checks every stage's settings.
    pub fn validate(&self) -> Result<()> {
        if self.spacing_mm.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::InvalidArgument(format!(
                "spacing must be positive, got {:?}",
                self.spacing_mm
            )));
        }
        if !(self.crop_margin_mm.is_finite() && self.crop_margin_mm >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "crop margin must be a non-negative number of mm, got {}",
                self.crop_margin_mm
            )));
        }
        self.lung_mask.validate()?;
        self.window.validate()?;
        self.patch.validate()
    }

    /// The config as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A config from JSON; missing fields take their defaults.
    pub fn from_json(text: &str) -> Result<Self> {
        let c: PreprocessConfig = serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("preprocessing config: {e}")))?;
        c.validate()?;
        Ok(c)
    }
}

/// Wall-clock seconds of each stage of [`preprocess`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PreprocessTimings {
    pub resample_s: f64,
    pub lung_mask_s: f64,
}

/// A preprocessed scan: the resampled HU volume, its lung mask and the crop to tile.
#[derive(Debug, Clone)]
pub struct Preprocessed {
    /// The resampled volume (HU, `i16`): the preprocessed grid.
    pub volume: Volume,
    /// Lung mask on the preprocessed grid.
    pub lung: LungMask,
    /// The region to tile: the lungs' box plus the margin, clamped to the grid.
    pub crop: VoxelBox,
    pub config: PreprocessConfig,
    pub timings: PreprocessTimings,
}

/// Resamples `volume`, masks the lungs and finds the crop; see the module docs.
pub fn preprocess(
    volume: &Volume,
    config: &PreprocessConfig,
    limits: &Limits,
) -> Result<Preprocessed> {
    config.validate()?;
    let t0 = Instant::now();
    let resampled = resample_stage(volume, config, limits)?;
    finish(resampled, config, t0)
}

/// [`preprocess`] taking the volume by value: it is dropped once resampled, so peak memory
/// is the larger of (input + resampled) and (resampled + mask) instead of all three.
pub fn preprocess_owned(
    volume: Volume,
    config: &PreprocessConfig,
    limits: &Limits,
) -> Result<Preprocessed> {
    config.validate()?;
    let t0 = Instant::now();
    let resampled = resample_stage(&volume, config, limits)?;
    drop(volume);
    finish(resampled, config, t0)
}

fn resample_stage(volume: &Volume, config: &PreprocessConfig, limits: &Limits) -> Result<Volume> {
    let mut resampled = resample(
        volume,
        config.spacing_mm,
        Interpolation::Linear,
        config.outside_volume_hu,
        limits,
    )?;
    resampled.info = volume.info.clone();
    Ok(resampled)
}

fn finish(resampled: Volume, config: &PreprocessConfig, t0: Instant) -> Result<Preprocessed> {
    let t1 = Instant::now();
    let lung = lung_mask(&resampled, &config.lung_mask)?;
    let t2 = Instant::now();
    let margin = config
        .spacing_mm
        .map(|s| (config.crop_margin_mm / s).ceil() as usize);
    let crop = lung.lung_box.grown(margin, resampled.shape());
    Ok(Preprocessed {
        volume: resampled,
        lung,
        crop,
        config: config.clone(),
        timings: PreprocessTimings {
            resample_s: (t1 - t0).as_secs_f64(),
            lung_mask_s: (t2 - t1).as_secs_f64(),
        },
    })
}

impl Preprocessed {
    /// The preprocessed grid: voxel `(z, y, x)` to world `(x, y, z)` mm.
    pub fn geometry(&self) -> &Geometry {
        &self.volume.geometry
    }

    /// Shape of the preprocessed grid.
    pub fn shape(&self) -> [usize; 3] {
        self.volume.shape()
    }

    /// Geometry of the crop: crop voxel `c` (preprocessed voxel `crop.start + c`) to world.
    pub fn crop_geometry(&self) -> Geometry {
        let g = self.geometry();
        Geometry {
            origin_mm: g.voxel_to_world(self.crop.start.map(|v| v as f64)),
            ..*g
        }
    }

    /// The windowed value of a preprocessed voxel.
    pub fn value(&self, zyx: [usize; 3]) -> f32 {
        self.config
            .window
            .value(self.volume.hu[zyx], self.lung.mask[zyx] != 0)
    }

    /// The tiles covering the crop, with the config's patch size and overlap.
    pub fn tiles(&self) -> Result<PatchGrid> {
        PatchGrid::new(
            self.crop,
            self.config.patch.size_vox,
            self.config.patch.overlap_vox,
        )
    }

    /// Writes the windowed patch whose voxel `(0, 0, 0)` is preprocessed voxel `offset` into
    /// `out` (whose shape is the patch size); voxels beyond the grid get `patch.pad_hu`.
    pub fn patch_into(&self, offset: [i64; 3], mut out: ArrayViewMut3<f32>) {
        let [nz, ny, nx] = self.shape().map(|n| n as i64);
        let w = &self.config.window;
        let pad = w.normalize(self.config.patch.pad_hu);
        let (hu, mask) = (&self.volume.hu, &self.lung.mask);
        out.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(pz, mut plane)| {
                let z = offset[0] + pz as i64;
                if z < 0 || z >= nz {
                    plane.fill(pad);
                    return;
                }
                for (py, mut row) in plane.rows_mut().into_iter().enumerate() {
                    let y = offset[1] + py as i64;
                    if y < 0 || y >= ny {
                        row.fill(pad);
                        continue;
                    }
                    let h = hu.slice(s![z as usize, y as usize, ..]);
                    let m = mask.slice(s![z as usize, y as usize, ..]);
                    for (px, v) in row.iter_mut().enumerate() {
                        let x = offset[2] + px as i64;
                        *v = if x < 0 || x >= nx {
                            pad
                        } else {
                            w.value(h[x as usize], m[x as usize] != 0)
                        };
                    }
                }
            });
    }

    /// The windowed patch of `size_vox` at `offset` (see [`Preprocessed::patch_into`]).
    pub fn patch(&self, offset: [i64; 3], size_vox: [usize; 3]) -> Result<Patch> {
        patches::check_patch_size(size_vox)?;
        let mut data = Array3::zeros(size_vox);
        self.patch_into(offset, data.view_mut());
        let g = self.geometry();
        Ok(Patch {
            data,
            offset_vox: offset,
            geometry: Geometry {
                origin_mm: g.voxel_to_world(offset.map(|v| v as f64)),
                ..*g
            },
        })
    }

    /// The patch of `size_vox` whose voxel `size_vox / 2 + shift_vox` (integer division)
    /// holds `centre_world` (`(x, y, z)` mm), to within half a voxel: the nearest voxel
    /// centre is used, no interpolation.
    pub fn patch_at_world(
        &self,
        centre_world: [f64; 3],
        size_vox: [usize; 3],
        shift_vox: [i64; 3],
    ) -> Result<Patch> {
        let c = self.geometry().world_to_voxel(centre_world);
        if c.iter().any(|v| !(v.is_finite() && v.abs() < 1e7)) {
            return Err(Error::InvalidArgument(format!(
                "patch centre {centre_world:?} mm is not a usable world point"
            )));
        }
        let offset =
            [0, 1, 2].map(|a| c[a].round() as i64 - (size_vox[a] / 2) as i64 - shift_vox[a]);
        self.patch(offset, size_vox)
    }

    /// The windowed crop as one array (for inspection and bindings; the detector works
    /// patch by patch).
    pub fn windowed_crop(&self) -> Array3<f32> {
        let mut out = Array3::zeros(self.crop.len());
        self.patch_into(self.crop.start.map(|v| v as i64), out.view_mut());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_json_and_defaults_missing_fields() {
        let mut c = PreprocessConfig {
            spacing_mm: [1.25, 0.8, 0.8],
            ..PreprocessConfig::default()
        };
        c.lung_mask.dilation_mm = 0.0;
        c.window.outside_lung_hu = None;
        c.patch.size_vox = [96, 128, 128];
        let back = PreprocessConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(back, c);
        let partial =
            PreprocessConfig::from_json(r#"{"crop_margin_mm": 4, "window": {"min_hu": -1000}}"#)
                .unwrap();
        assert_eq!(partial.crop_margin_mm, 4.0);
        assert_eq!(partial.window.min_hu, -1000.0);
        assert_eq!(partial.window.max_hu, 600.0);
        assert_eq!(partial.patch, PatchConfig::default());
        assert!(PreprocessConfig::from_json(r#"{"spacing": [1, 1, 1]}"#).is_err());
        assert!(PreprocessConfig::from_json(r#"{"spacing_mm": [0, 1, 1]}"#).is_err());
        assert!(PreprocessConfig::from_json(r#"{"patch": {"overlap_vox": [128, 0, 0]}}"#).is_err());
    }

    #[test]
    fn boxes_grow_and_clamp() {
        let b = VoxelBox {
            start: [2, 10, 0],
            end: [5, 20, 7],
        };
        assert_eq!(b.len(), [3, 10, 7]);
        assert_eq!(b.voxels(), 210);
        let g = b.grown([3, 4, 5], [6, 100, 9]);
        assert_eq!(g.start, [0, 6, 0]);
        assert_eq!(g.end, [6, 24, 9]);
        assert!(g.contains([0, 6, 8]) && !g.contains([0, 24, 0]));
    }
}
