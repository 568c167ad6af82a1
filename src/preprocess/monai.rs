//! The preprocessing of MONAI's lung-nodule detection bundle (its raw-LUNA16 path):
//! the CT in MONAI's `(X, Y, Z)` axis order, turned to RAS (`Orientationd(axcodes="RAS")`),
//! resampled to 0.703125 x 0.703125 x 1.25 mm (`Spacingd`, trilinear, border padding), HU
//! mapped from [-1024, 300] to [0, 1] and clipped (`ScaleIntensityRanged`). The result's
//! affine maps its voxel indices to RAS millimetres, as MONAI's, so boxes found on it map
//! back to the world as the bundle's `AffineBoxToWorldCoordinated` does.
//!
//! Axis-aligned scans only (each voxel axis along a world axis, as in LUNA16 and most CT):
//! MONAI resamples oblique ones through a general affine, which this does not reproduce.

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::volume::Volume;
use serde::{Deserialize, Serialize};

/// The bundle's preprocessing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonaiPreprocessConfig {
    /// Output spacing `(x, y, z)` mm (MONAI's `pixdim`). Default `[0.703125, 0.703125, 1.25]`.
    pub pixdim: [f64; 3],
    /// HU mapped to 0. Default -1024.
    pub a_min: f32,
    /// HU mapped to 1. Default 300.
    pub a_max: f32,
}

impl Default for MonaiPreprocessConfig {
    fn default() -> Self {
        MonaiPreprocessConfig {
            pixdim: [0.703125, 0.703125, 1.25],
            a_min: -1024.0,
            a_max: 300.0,
        }
    }
}

/// A preprocessed image: values `(X, Y, Z)` row-major (Z fastest) and the affine from its
/// voxel index `(x, y, z)` to RAS millimetres.
#[derive(Debug, Clone, PartialEq)]
pub struct MonaiImage {
    pub values: Vec<f32>,
    pub size: [usize; 3],
    /// Rows: RAS x, y, z; columns: voxel axes x, y, z, then the translation.
    pub affine_ras: [[f64; 4]; 3],
}

impl MonaiImage {
    /// The LPS world millimetres of a voxel index `(x, y, z)` of this image.
    pub fn voxel_to_lps(&self, p: [f64; 3]) -> [f64; 3] {
        let a = &self.affine_ras;
        let ras: [f64; 3] =
            std::array::from_fn(|r| a[r][0] * p[0] + a[r][1] * p[1] + a[r][2] * p[2] + a[r][3]);
        [-ras[0], -ras[1], ras[2]]
    }
}

impl MonaiImage {
    /// A box `[min, max]` in this image's voxel coordinates as the bundle reports it in the
    /// world (`AffineBoxToWorldCoordinated(affine_lps_to_ras=True)`, then `cccwhd`): both
    /// corners through the affine to LPS, per-axis min and max; returns the centre (LPS mm)
    /// and the size (mm) along world x, y, z.
    pub fn box_to_world(&self, min: [f32; 3], max: [f32; 3]) -> ([f64; 3], [f64; 3]) {
        let a = self.voxel_to_lps(min.map(f64::from));
        let b = self.voxel_to_lps(max.map(f64::from));
        let lo: [f64; 3] = std::array::from_fn(|d| a[d].min(b[d]));
        let hi: [f64; 3] = std::array::from_fn(|d| a[d].max(b[d]));
        (
            std::array::from_fn(|d| (lo[d] + hi[d]) / 2.0),
            std::array::from_fn(|d| hi[d] - lo[d]),
        )
    }
}

impl MonaiPreprocessConfig {
    /// `pixdim` finite and positive, `a_max` above `a_min` (both finite).
    pub fn validate(&self) -> Result<()> {
        if self.pixdim.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || !(self.a_min.is_finite() && self.a_max.is_finite() && self.a_max > self.a_min)
        {
            return Err(Error::InvalidArgument(format!(
                "MONAI preprocessing: pixdim {:?} must be positive and a_max ({}) above \
                 a_min ({})",
                self.pixdim, self.a_max, self.a_min
            )));
        }
        Ok(())
    }
}

/// MONAI's preprocessing of `volume` (see the module docs). A resampled image of more
/// voxels than `limits` allow is an [`Error::Limit`], before it is allocated.
pub fn monai_preprocess(
    volume: &Volume,
    cfg: &MonaiPreprocessConfig,
    limits: &Limits,
) -> Result<MonaiImage> {
    cfg.validate()?;
    let g = &volume.geometry;
    let shape = volume.shape();
    // MONAI axis k (x, y, z) is our voxel axis 2 - k.
    let n: [usize; 3] = std::array::from_fn(|k| shape[2 - k]);
    let spacing: [f64; 3] = std::array::from_fn(|k| g.spacing_mm[2 - k]);
    let ras_dir = |k: usize| {
        let d = g.direction[2 - k];
        [-d[0], -d[1], d[2]]
    };
    // Orientation to RAS: old axis k becomes axis `to[k]`, reversed when `flip[k]`.
    let mut to = [0usize; 3];
    let mut flip = [false; 3];
    for k in 0..3 {
        let d = ras_dir(k);
        let w = (0..3)
            .max_by(|&a, &b| d[a].abs().total_cmp(&d[b].abs()))
            .unwrap_or(k);
        if d[w].abs() < 1.0 - 1e-6 {
            return Err(Error::Geometry(format!(
                "MONAI preprocessing needs an axis-aligned scan; voxel axis {k} (x, y, z) points along {d:?} (RAS)"
            )));
        }
        to[k] = w;
        flip[k] = d[w] < 0.0;
    }
    if to[0] == to[1] || to[1] == to[2] || to[0] == to[2] {
        return Err(Error::Geometry(format!(
            "two voxel axes point along the same world axis: {to:?}"
        )));
    }
    // The oriented grid: size, spacing, origin (RAS position of its voxel 0).
    let mut on = [0usize; 3];
    let mut os = [0f64; 3];
    let mut corner = [0f64; 3]; // old index of the oriented voxel 0
    for k in 0..3 {
        on[to[k]] = n[k];
        os[to[k]] = spacing[k];
        corner[k] = if flip[k] { (n[k] - 1) as f64 } else { 0.0 };
    }
    let origin_lps = g.voxel_to_world([corner[2], corner[1], corner[0]]);
    let origin = [-origin_lps[0], -origin_lps[1], origin_lps[2]];
    // Spacing: output size round((n - 1) * s_in / s_out + 1), samples at o * s_out / s_in
    // clamped to the grid (border), trilinear.
    let out: [usize; 3] = std::array::from_fn(|w| {
        (((on[w] - 1) as f64 * os[w] / cfg.pixdim[w] + 1.0).round_ties_even() as usize).max(1)
    });
    limits.check_shape(out.map(|n| n as u64))?;
    let from: [usize; 3] = std::array::from_fn(|w| (0..3).find(|&k| to[k] == w).unwrap_or(w));
    let hu = &volume.hu;
    let sample = |old: [usize; 3]| -> f64 { hu[[old[2], old[1], old[0]]] as f64 };
    let range = cfg.a_max - cfg.a_min;
    let mut values = Vec::with_capacity(out.iter().product());
    // Per oriented axis and output index: the two old indices and the weight of the second.
    let taps: Vec<Vec<(usize, usize, f64)>> = (0..3)
        .map(|w| {
            let k = from[w];
            (0..out[w])
                .map(|o| {
                    let p = (o as f64 * cfg.pixdim[w] / os[w]).clamp(0.0, (on[w] - 1) as f64);
                    let i0 = p.floor() as usize;
                    let i1 = (i0 + 1).min(on[w] - 1);
                    let t = p - i0 as f64;
                    let old = |i: usize| if flip[k] { n[k] - 1 - i } else { i };
                    (old(i0), old(i1), t)
                })
                .collect()
        })
        .collect();
    for &(x0, x1, tx) in &taps[0] {
        for &(y0, y1, ty) in &taps[1] {
            for &(z0, z1, tz) in &taps[2] {
                let mut v = 0.0;
                for (xi, wx) in [(x0, 1.0 - tx), (x1, tx)] {
                    for (yi, wy) in [(y0, 1.0 - ty), (y1, ty)] {
                        for (zi, wz) in [(z0, 1.0 - tz), (z1, tz)] {
                            let w = wx * wy * wz;
                            if w != 0.0 {
                                let mut old = [0usize; 3];
                                old[from[0]] = xi;
                                old[from[1]] = yi;
                                old[from[2]] = zi;
                                v += w * sample(old);
                            }
                        }
                    }
                }
                let v = ((v as f32 - cfg.a_min) / range).clamp(0.0, 1.0);
                values.push(v);
            }
        }
    }
    let mut affine_ras = [[0f64; 4]; 3];
    for w in 0..3 {
        affine_ras[w][w] = cfg.pixdim[w];
        affine_ras[w][3] = origin[w];
    }
    Ok(MonaiImage {
        values,
        size: out,
        affine_ras,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_map_to_lps_world_coordinates() {
        // 0.5 mm voxels, origin (10, 20, 30) RAS: voxel (x, y, z) -> RAS 10 + x/2, ...
        let image = MonaiImage {
            values: vec![],
            size: [1, 1, 1],
            affine_ras: [
                [0.5, 0.0, 0.0, 10.0],
                [0.0, 0.5, 0.0, 20.0],
                [0.0, 0.0, 2.0, 30.0],
            ],
        };
        let (centre, size) = image.box_to_world([2.0, 4.0, 1.0], [6.0, 8.0, 3.0]);
        // RAS centre (12, 23, 34) is LPS (-12, -23, 34); sizes 2, 2, 4 mm.
        assert_eq!(centre, [-12.0, -23.0, 34.0]);
        assert_eq!(size, [2.0, 2.0, 4.0]);
    }
}
