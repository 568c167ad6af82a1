//! [`Volume`]: HU voxels in `(z, y, x)` order with the geometry that places them in the
//! scanner's world (LPS millimetres, `(x, y, z)`).

use crate::error::{Error, Result};
use ndarray::Array3;
use serde::{Deserialize, Serialize};

/// Where a voxel grid sits in the world.
///
/// * `spacing_mm` is in voxel-axis order `(z, y, x)`.
/// * `origin_mm` is the world position `(x, y, z)` (LPS mm) of the centre of voxel `(0, 0, 0)`.
/// * `direction[a]` is the world unit vector `(x, y, z)` along which voxel axis `a`
///   (in `(z, y, x)` order) increases. For an axial DICOM series, `direction[2]` is the
///   row direction (first three values of ImageOrientationPatient), `direction[1]` the
///   column direction, and `direction[0]` the slice normal oriented the way slice
///   positions increase.
///
/// The world point of voxel index `(k, j, i)` (z, y, x) is
/// `origin + k*spacing[0]*direction[0] + j*spacing[1]*direction[1] + i*spacing[2]*direction[2]`,
/// the same convention as ITK/SimpleITK once axes are reordered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    pub spacing_mm: [f64; 3],
    pub origin_mm: [f64; 3],
    pub direction: [[f64; 3]; 3],
}

/// The identity direction for `(z, y, x)` voxel axes: z along world z, y along world y, x along world x.
pub const IDENTITY_DIRECTION: [[f64; 3]; 3] = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]];

impl Geometry {
    /// A geometry with identity direction.
    pub fn new(spacing_mm: [f64; 3], origin_mm: [f64; 3]) -> Self {
        Geometry {
            spacing_mm,
            origin_mm,
            direction: IDENTITY_DIRECTION,
        }
    }

    /// Checks spacing is finite and positive, the origin finite and the direction invertible.
    pub fn validate(&self) -> Result<()> {
        if self.spacing_mm.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(Error::Geometry(format!(
                "spacing must be finite and positive, got {:?}",
                self.spacing_mm
            )));
        }
        if self.origin_mm.iter().any(|o| !o.is_finite()) {
            return Err(Error::Geometry(format!(
                "origin is not finite: {:?}",
                self.origin_mm
            )));
        }
        let det = det3(&self.direction);
        if !det.is_finite() || det.abs() < 1e-6 {
            return Err(Error::Geometry(format!(
                "direction matrix is singular: {:?}",
                self.direction
            )));
        }
        Ok(())
    }

    /// The 3x3 matrix `M` with `world = origin + M * index_zyx`, stored as `m[row=world axis][col=voxel axis]`.
    pub fn index_to_world_matrix(&self) -> [[f64; 3]; 3] {
        let mut m = [[0.0; 3]; 3];
        for a in 0..3 {
            for w in 0..3 {
                m[w][a] = self.direction[a][w] * self.spacing_mm[a];
            }
        }
        m
    }

    /// World `(x, y, z)` mm of a (possibly fractional) voxel index `(z, y, x)`.
    pub fn voxel_to_world(&self, zyx: [f64; 3]) -> [f64; 3] {
        let m = self.index_to_world_matrix();
        let mut out = self.origin_mm;
        for w in 0..3 {
            for a in 0..3 {
                out[w] += m[w][a] * zyx[a];
            }
        }
        out
    }

    /// Continuous voxel index `(z, y, x)` of a world point `(x, y, z)` mm.
    pub fn world_to_voxel(&self, xyz: [f64; 3]) -> [f64; 3] {
        let inv = inv3(&self.index_to_world_matrix());
        let d = [
            xyz[0] - self.origin_mm[0],
            xyz[1] - self.origin_mm[1],
            xyz[2] - self.origin_mm[2],
        ];
        let mut out = [0.0; 3];
        for a in 0..3 {
            for w in 0..3 {
                out[a] += inv[a][w] * d[w];
            }
        }
        out
    }

    /// Direction as ITK stores it: a row-major matrix whose column `c` is the world direction
    /// of index axis `c` in ITK's `(x, y, z)` index order. Row-major flattening of this
    /// matrix is what SimpleITK's `GetDirection()` returns.
    pub fn itk_direction(&self) -> [[f64; 3]; 3] {
        let mut d = [[0.0; 3]; 3];
        for c in 0..3 {
            for r in 0..3 {
                d[r][c] = self.direction[2 - c][r];
            }
        }
        d
    }

    /// Inverse of [`Geometry::itk_direction`].
    pub fn from_itk(
        spacing_xyz: [f64; 3],
        origin_xyz: [f64; 3],
        itk_direction: [[f64; 3]; 3],
    ) -> Self {
        let mut direction = [[0.0; 3]; 3];
        for c in 0..3 {
            for r in 0..3 {
                direction[2 - c][r] = itk_direction[r][c];
            }
        }
        Geometry {
            spacing_mm: [spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]],
            origin_mm: origin_xyz,
            direction,
        }
    }

    /// Spacing in ITK's `(x, y, z)` order.
    pub fn spacing_xyz(&self) -> [f64; 3] {
        [self.spacing_mm[2], self.spacing_mm[1], self.spacing_mm[0]]
    }
}

/// Facts about where a volume came from. Holds no patient identifiers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// SeriesInstanceUID for DICOM (`None` for files without one, as ACR-NEMA files are);
    /// for other formats, `None`.
    pub series_uid: Option<String>,
    /// DICOM Modality (e.g. `CT`), when known.
    pub modality: Option<String>,
    /// `dicom`, `metaimage` or `nifti`.
    pub format: String,
    /// Number of slices (frames) the volume was assembled from (DICOM), else the z size.
    pub slice_count: usize,
    /// Transfer syntax UIDs of the files read (DICOM only).
    pub transfer_syntaxes: Vec<String>,
    /// Non-fatal problems met while loading (duplicate slices, other series skipped...).
    pub warnings: Vec<String>,
}

/// A CT volume in Hounsfield units.
///
/// `hu` is indexed `(z, y, x)`; see [`Geometry`] for how indices map to world millimetres.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub hu: Array3<i16>,
    pub geometry: Geometry,
    pub info: VolumeInfo,
}

impl Volume {
    /// A volume from an array and its geometry; the geometry is validated.
    pub fn new(hu: Array3<i16>, geometry: Geometry) -> Result<Self> {
        geometry.validate()?;
        let slice_count = hu.shape()[0];
        Ok(Volume {
            hu,
            geometry,
            info: VolumeInfo {
                slice_count,
                ..VolumeInfo::default()
            },
        })
    }

    /// Shape `(z, y, x)`.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.hu.shape();
        [s[0], s[1], s[2]]
    }

    pub fn spacing_mm(&self) -> [f64; 3] {
        self.geometry.spacing_mm
    }

    pub fn origin_mm(&self) -> [f64; 3] {
        self.geometry.origin_mm
    }

    pub fn direction(&self) -> [[f64; 3]; 3] {
        self.geometry.direction
    }

    pub fn voxel_to_world(&self, zyx: [f64; 3]) -> [f64; 3] {
        self.geometry.voxel_to_world(zyx)
    }

    pub fn world_to_voxel(&self, xyz: [f64; 3]) -> [f64; 3] {
        self.geometry.world_to_voxel(xyz)
    }

    /// HU at the voxel nearest to a world point, or `None` outside the volume.
    pub fn hu_at_world(&self, xyz: [f64; 3]) -> Option<i16> {
        let v = self.world_to_voxel(xyz);
        let s = self.shape();
        let mut idx = [0usize; 3];
        for a in 0..3 {
            let r = v[a].round();
            if !(r >= 0.0 && r < s[a] as f64) {
                return None;
            }
            idx[a] = r as usize;
        }
        Some(self.hu[idx])
    }

    /// Minimum and maximum HU (`(0, 0)` for an empty volume).
    pub fn hu_range(&self) -> (i16, i16) {
        use rayon::prelude::*;
        let slice = match self.hu.as_slice() {
            Some(s) => s,
            None => {
                return self
                    .hu
                    .iter()
                    .fold((i16::MAX, i16::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
            }
        };
        if slice.is_empty() {
            return (0, 0);
        }
        slice
            .par_chunks(1 << 16)
            .map(|c| {
                c.iter()
                    .fold((i16::MAX, i16::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
            })
            .reduce(|| (i16::MAX, i16::MIN), |a, b| (a.0.min(b.0), a.1.max(b.1)))
    }
}

pub(crate) fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

pub(crate) fn inv3(m: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let d = det3(m);
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            let (a, b) = ((j + 1) % 3, (j + 2) % 3);
            let (c, e) = ((i + 1) % 3, (i + 2) % 3);
            r[i][j] = (m[a][c] * m[b][e] - m[a][e] * m[b][c]) / d;
        }
    }
    r
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f64; 3], b: [f64; 3], tol: f64) -> bool {
        (0..3).all(|i| (a[i] - b[i]).abs() < tol)
    }

    #[test]
    fn identity_geometry_maps_axes() {
        let g = Geometry::new([2.5, 0.7, 0.5], [-10.0, 20.0, -300.0]);
        // voxel (z=1, y=2, x=3)
        let w = g.voxel_to_world([1.0, 2.0, 3.0]);
        assert!(close(w, [-10.0 + 1.5, 20.0 + 1.4, -300.0 + 2.5], 1e-12));
    }

    #[test]
    fn round_trip_with_oblique_direction() {
        // Rotate about world z by 30 degrees, then tilt; columns orthonormal, det -1 included.
        let (s, c) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
        let row = [c, s, 0.0];
        let col = [-s * 0.8, c * 0.8, 0.6];
        let normal = cross(row, col);
        for flip in [1.0, -1.0] {
            let g = Geometry {
                spacing_mm: [1.25, 0.8, 0.6],
                origin_mm: [12.0, -40.5, 7.0],
                direction: [
                    [normal[0] * flip, normal[1] * flip, normal[2] * flip],
                    col,
                    row,
                ],
            };
            g.validate().unwrap();
            for p in [[0.0, 0.0, 0.0], [10.0, 100.5, 3.25], [-4.0, 511.0, 0.5]] {
                let w = g.voxel_to_world(p);
                let back = g.world_to_voxel(w);
                assert!(close(p, back, 1e-9), "{p:?} -> {w:?} -> {back:?}");
            }
            // Moving one voxel along x moves spacing_x mm along the row direction.
            let a = g.voxel_to_world([0.0, 0.0, 0.0]);
            let b = g.voxel_to_world([0.0, 0.0, 1.0]);
            assert!(close(
                [b[0] - a[0], b[1] - a[1], b[2] - a[2]],
                [row[0] * 0.6, row[1] * 0.6, row[2] * 0.6],
                1e-12
            ));
        }
    }

    #[test]
    fn itk_direction_round_trip() {
        let g = Geometry {
            spacing_mm: [2.0, 0.5, 0.7],
            origin_mm: [1.0, 2.0, 3.0],
            direction: [[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
        };
        let d = g.itk_direction();
        // ITK column 2 (index axis z) is our direction[0]
        assert_eq!([d[0][2], d[1][2], d[2][2]], [0.0, 0.0, -1.0]);
        let back = Geometry::from_itk(g.spacing_xyz(), g.origin_mm, d);
        assert_eq!(back, g);
    }

    #[test]
    fn singular_direction_is_refused() {
        let g = Geometry {
            spacing_mm: [1.0; 3],
            origin_mm: [0.0; 3],
            direction: [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
        };
        assert!(matches!(g.validate(), Err(Error::Geometry(_))));
        assert!(Geometry::new([0.0, 1.0, 1.0], [0.0; 3]).validate().is_err());
    }

    #[test]
    fn hu_at_world_and_range() {
        let mut hu = Array3::<i16>::zeros((3, 4, 5));
        hu[[2, 1, 4]] = 77;
        hu[[0, 0, 0]] = -1000;
        let v = Volume::new(hu, Geometry::new([2.0, 1.0, 0.5], [0.0, 0.0, 0.0])).unwrap();
        assert_eq!(v.hu_at_world([2.0, 1.0, 4.0]), Some(77));
        assert_eq!(v.hu_at_world([-5.0, 0.0, 0.0]), None);
        assert_eq!(v.hu_range(), (-1000, 77));
    }
}
