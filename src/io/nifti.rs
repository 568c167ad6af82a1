//! NIfTI: single-file `.nii` and gzip-compressed `.nii.gz`, NIfTI-1 and NIfTI-2 (either byte
//! order) for reading; NIfTI-1 `int16` for writing.
//!
//! # Geometry
//!
//! NIfTI maps voxel indices `(i, j, k)` (x fastest) to RAS world millimetres with either the
//! `sform` (a 3x4 affine) or the `qform` (a quaternion, `qfac` and offsets, with `pixdim`
//! scales). The transform is chosen as ITK (SimpleITK) does, so that lungcad and ITK agree on
//! every file:
//!
//! * neither code set (`qform_code` and `sform_code` both 0): `pixdim` spacing, origin 0,
//!   identity direction;
//! * otherwise the sform when `sform_code > 0` and its columns, once normalised, are
//!   orthonormal (within 1e-4) and either `sform_code` is 1 (scanner anatomical), the qform
//!   is unknown, or the sform and the qform agree; else the qform when `qform_code > 0`;
//! * an sform with shear and no qform (which ITK refuses) is used with its columns
//!   normalised, and a warning says so.
//!
//! As in ITK, spacing always comes from `pixdim[1..=3]` (scaled to mm by `xyzt_units`; a
//! non-positive or non-finite value becomes 1 with a warning), the direction of each voxel
//! axis is the normalised column of the chosen matrix, and the origin is its translation.
//! RAS becomes lungcad's LPS by negating the x and y rows.
//!
//! # Values
//!
//! `scl_slope`/`scl_inter` are applied as ITK does (a slope of 0 or a non-finite one counts as
//! 1; a non-finite intercept as 0). Every data type is converted to `i16` HU by rounding to
//! the nearest integer (halves away from zero) and clamping to `[-32768, 32767]`; NaN becomes
//! -1024 (air); `info.warnings` counts clamped voxels. Supported data types: `uint8`, `int8`,
//! `int16`, `uint16`, `int32`, `uint32`, `int64`, `uint64`, `float32`, `float64`. Images with
//! more than one volume (`dim[4..] > 1`) are refused; 2-D images are read as one slice. Data
//! after the last voxel (which NIfTI allows) is ignored; data that ends early is an error.
//!
//! # Writing
//!
//! [`write()`] writes a NIfTI-1 single file (gzip-compressed when the name ends in `.gz`) with
//! `int16` data, `scl_slope = 1`, `scl_inter = 0`, `xyzt_units` = mm and seconds, and both the
//! sform (the exact affine, in `float32`) and the qform (quaternion of the orthogonalised
//! rotation, `qfac = -1` for left-handed directions), both with code 1 (scanner anatomical),
//! as ITK writes them. The NIfTI header stores `float32`, so geometry read back agrees with
//! what was written to `float32` precision; voxels round-trip exactly.

use crate::error::{Error, Result};
use crate::io::metaimage::{
    clamp_warning, write_i16_le, AtomicFile, CountingReader, Decoder, ElementType,
    MAX_DEFLATE_RATIO,
};
use crate::limits::Limits;
use crate::volume::{det3, Geometry, Volume, VolumeInfo};
use flate2::read::MultiGzDecoder;
use ndarray::Array3;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

/// Size of a NIfTI-1 header.
pub const NIFTI1_HEADER_BYTES: usize = 348;
/// Size of a NIfTI-2 header.
pub const NIFTI2_HEADER_BYTES: usize = 540;

/// The fields of a NIfTI-1 or NIfTI-2 header that lungcad uses, widened to NIfTI-2's types.
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiHeader {
    /// 1 or 2.
    pub version: u8,
    pub big_endian: bool,
    /// `dim[0]` is the number of dimensions, `dim[1..=3]` the x, y, z sizes.
    pub dim: [i64; 8],
    pub datatype: i16,
    /// `pixdim[0]` is `qfac`; `pixdim[1..=3]` the x, y, z spacing.
    pub pixdim: [f64; 8],
    pub vox_offset: f64,
    pub scl_slope: f64,
    pub scl_inter: f64,
    pub xyzt_units: i32,
    pub qform_code: i32,
    pub sform_code: i32,
    /// `quatern_b`, `quatern_c`, `quatern_d`.
    pub quatern: [f64; 3],
    /// `qoffset_x`, `qoffset_y`, `qoffset_z`.
    pub qoffset: [f64; 3],
    /// `srow_x`, `srow_y`, `srow_z`.
    pub srow: [[f64; 4]; 3],
}

impl NiftiHeader {
    /// Bytes in this header (348 or 540).
    pub fn header_bytes(&self) -> usize {
        if self.version == 2 {
            NIFTI2_HEADER_BYTES
        } else {
            NIFTI1_HEADER_BYTES
        }
    }
}

/// Reads fixed-size fields out of a header in its byte order.
struct Fields<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl Fields<'_> {
    fn raw<const N: usize>(&self, offset: usize) -> Result<[u8; N], String> {
        let s = self
            .bytes
            .get(offset..offset + N)
            .ok_or_else(|| format!("header truncated at byte {offset}"))?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        if self.big_endian {
            a.reverse();
        }
        Ok(a)
    }
    fn i16(&self, o: usize) -> Result<i16, String> {
        self.raw(o).map(i16::from_le_bytes)
    }
    fn i32(&self, o: usize) -> Result<i32, String> {
        self.raw(o).map(i32::from_le_bytes)
    }
    fn i64(&self, o: usize) -> Result<i64, String> {
        self.raw(o).map(i64::from_le_bytes)
    }
    fn f32(&self, o: usize) -> Result<f64, String> {
        self.raw(o).map(|b| f64::from(f32::from_le_bytes(b)))
    }
    fn f64(&self, o: usize) -> Result<f64, String> {
        self.raw(o).map(f64::from_le_bytes)
    }
    fn byte(&self, o: usize) -> Result<u8, String> {
        self.bytes
            .get(o)
            .copied()
            .ok_or_else(|| format!("header truncated at byte {o}"))
    }
}

/// The NIfTI version and byte order announced by the first four bytes (`sizeof_hdr`).
fn sniff(first4: &[u8]) -> Option<(u8, bool)> {
    let b: [u8; 4] = first4.get(..4)?.try_into().ok()?;
    match (i32::from_le_bytes(b), i32::from_be_bytes(b)) {
        (348, _) => Some((1, false)),
        (_, 348) => Some((1, true)),
        (540, _) => Some((2, false)),
        (_, 540) => Some((2, true)),
        _ => None,
    }
}

/// Parses a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header, in either byte order.
///
/// Pure and total: any bytes give a header or an error message, never a panic. Checks the
/// magic (single-file `n+1`/`n+2` only) and the dimensions' signs; sizes are checked against
/// [`Limits`] by [`read`].
pub fn parse_header(bytes: &[u8]) -> Result<NiftiHeader, String> {
    let (version, big_endian) = sniff(bytes).ok_or_else(|| {
        "not a NIfTI file: sizeof_hdr is neither 348 (NIfTI-1) nor 540 (NIfTI-2)".to_string()
    })?;
    let f = Fields { bytes, big_endian };
    let header = if version == 1 {
        if bytes.len() < NIFTI1_HEADER_BYTES {
            return Err(format!(
                "NIfTI-1 header truncated: {} of 348 bytes",
                bytes.len()
            ));
        }
        match bytes.get(344..348) {
            Some(b"n+1\0") => {}
            Some(b"ni1\0") => {
                return Err("this is the header of a two-file (.hdr/.img) NIfTI-1 pair; only single-file .nii/.nii.gz is supported".into())
            }
            _ => return Err("bad NIfTI-1 magic (an Analyze 7.5 file?); only NIfTI single files are supported".into()),
        }
        let mut dim = [0i64; 8];
        let mut pixdim = [0f64; 8];
        for i in 0..8 {
            dim[i] = i64::from(f.i16(40 + 2 * i)?);
            pixdim[i] = f.f32(76 + 4 * i)?;
        }
        let mut srow = [[0f64; 4]; 3];
        for (r, row) in srow.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = f.f32(280 + 16 * r + 4 * c)?;
            }
        }
        NiftiHeader {
            version,
            big_endian,
            dim,
            datatype: f.i16(70)?,
            pixdim,
            vox_offset: f.f32(108)?,
            scl_slope: f.f32(112)?,
            scl_inter: f.f32(116)?,
            xyzt_units: i32::from(f.byte(123)?),
            qform_code: i32::from(f.i16(252)?),
            sform_code: i32::from(f.i16(254)?),
            quatern: [f.f32(256)?, f.f32(260)?, f.f32(264)?],
            qoffset: [f.f32(268)?, f.f32(272)?, f.f32(276)?],
            srow,
        }
    } else {
        if bytes.len() < NIFTI2_HEADER_BYTES {
            return Err(format!(
                "NIfTI-2 header truncated: {} of 540 bytes",
                bytes.len()
            ));
        }
        match bytes.get(4..12) {
            Some(b"n+2\0\r\n\x1a\n") => {}
            Some(m) if m.starts_with(b"ni2\0") => {
                return Err("this is the header of a two-file (.hdr/.img) NIfTI-2 pair; only single-file .nii/.nii.gz is supported".into())
            }
            _ => return Err("bad NIfTI-2 magic".into()),
        }
        let mut dim = [0i64; 8];
        let mut pixdim = [0f64; 8];
        for i in 0..8 {
            dim[i] = f.i64(16 + 8 * i)?;
            pixdim[i] = f.f64(104 + 8 * i)?;
        }
        let mut srow = [[0f64; 4]; 3];
        for (r, row) in srow.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = f.f64(400 + 32 * r + 8 * c)?;
            }
        }
        let vox_offset = f.i64(168)?;
        NiftiHeader {
            version,
            big_endian,
            dim,
            datatype: f.i16(12)?,
            pixdim,
            vox_offset: vox_offset as f64,
            scl_slope: f.f64(176)?,
            scl_inter: f.f64(184)?,
            xyzt_units: f.i32(500)?,
            qform_code: f.i32(344)?,
            sform_code: f.i32(348)?,
            quatern: [f.f64(352)?, f.f64(360)?, f.f64(368)?],
            qoffset: [f.f64(376)?, f.f64(384)?, f.f64(392)?],
            srow,
        }
    };
    let ndim = header.dim[0];
    if !(1..=7).contains(&ndim) {
        return Err(format!("dim[0] = {ndim}: must be 1 to 7"));
    }
    for i in 1..=ndim as usize {
        if header.dim[i] < 1 {
            return Err(format!(
                "dim[{i}] = {}: sizes must be at least 1",
                header.dim[i]
            ));
        }
    }
    Ok(header)
}

impl NiftiHeader {
    /// Shape `(z, y, x)`. Refuses images with more than one volume (`dim[4..] > 1`).
    pub fn shape_zyx(&self) -> Result<[u64; 3], String> {
        let ndim = self.dim[0].clamp(0, 7) as usize;
        let size = |i: usize| {
            if i <= ndim {
                self.dim[i].max(1).unsigned_abs()
            } else {
                1
            }
        };
        if let Some(i) = (4..=ndim).find(|&i| self.dim[i] > 1) {
            return Err(format!(
                "dim[{i}] = {}: 4-D (time series or multi-component) images are not supported; extract a 3-D volume first",
                self.dim[i]
            ));
        }
        Ok([size(3), size(2), size(1)])
    }

    /// The element type of the data.
    pub fn element_type(&self) -> Result<ElementType, String> {
        Ok(match self.datatype {
            2 => ElementType::U8,
            4 => ElementType::I16,
            8 => ElementType::I32,
            16 => ElementType::F32,
            64 => ElementType::F64,
            256 => ElementType::I8,
            512 => ElementType::U16,
            768 => ElementType::U32,
            1024 => ElementType::I64,
            1280 => ElementType::U64,
            other => {
                let name = match other {
                    1 => "binary",
                    32 => "complex64",
                    128 => "RGB24",
                    1536 => "float128",
                    1792 => "complex128",
                    2048 => "complex256",
                    2304 => "RGBA32",
                    _ => "unknown",
                };
                return Err(format!("datatype {other} ({name}) is not supported for CT"));
            }
        })
    }

    /// `(slope, intercept)` to apply, as ITK does, or `None` for the identity.
    pub fn scaling(&self) -> Option<(f64, f64)> {
        let slope = if self.scl_slope.is_finite() && self.scl_slope.abs() >= f64::EPSILON {
            self.scl_slope
        } else {
            1.0
        };
        let inter = if self.scl_inter.is_finite() {
            self.scl_inter
        } else {
            0.0
        };
        (slope != 1.0 || inter != 0.0).then_some((slope, inter))
    }

    /// The geometry (LPS) and any warnings, chosen from sform/qform/pixdim as ITK does (see
    /// the module documentation). Not validated.
    pub fn geometry(&self) -> (Geometry, Vec<String>) {
        let mut warnings = Vec::new();
        let units = match self.xyzt_units & 7 {
            1 => 1e3,  // metres
            3 => 1e-3, // microns
            _ => 1.0,  // mm or unknown
        };
        let (dx, dy, dz) = (self.pixdim[1], self.pixdim[2], self.pixdim[3]);
        let mut spacing = [0.0; 3];
        for (a, s) in spacing.iter_mut().enumerate() {
            let p = self.pixdim[a + 1] * units;
            *s = if p.is_finite() && p != 0.0 {
                p.abs()
            } else {
                if (a as i64) < self.dim[0] {
                    warnings.push(format!(
                        "pixdim[{}] = {} is not a valid spacing; using 1 mm",
                        a + 1,
                        self.pixdim[a + 1]
                    ));
                }
                1.0
            };
        }
        let qknown = self.qform_code > 0;
        let sknown = self.sform_code > 0;
        if !qknown && !sknown {
            return (Geometry::from_itk(spacing, [0.0; 3], IDENTITY3), warnings);
        }

        // qto_xyz and sto_xyz as nifti1_io builds them (float32 matrices).
        let qto: Mat34 = if qknown {
            let qfac = if self.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
            let m = quatern_to_mat(self.quatern, self.qoffset, [dx, dy, dz], qfac);
            m.map(|row| row.map(|v| f64::from(v as f32)))
        } else {
            [
                [dx, 0.0, 0.0, 0.0],
                [0.0, dy, 0.0, 0.0],
                [0.0, 0.0, dz, 0.0],
            ]
        };
        let sto: Mat34 = self.srow;

        let similar = sknown
            && (0..3).all(|r| (0..3).all(|c| (sto[r][c] - qto[r][c]).abs() <= 1e-5))
            && (0..3).map(|r| (sto[r][3] - qto[r][3]).abs()).sum::<f64>() <= 1e-7;
        let mut prefer_sform = similar;
        let decomposable = sknown && orthonormal_columns(&sto);
        if decomposable && (!qknown || self.sform_code == 1 || very_similar(&sto, &qto)) {
            prefer_sform = true;
        }
        let chosen = if prefer_sform {
            sto
        } else if qknown {
            qto
        } else {
            warnings.push(
                "the sform's columns are not orthonormal (shear, or an empty column) and there is \
                 no qform; using the sform's normalised columns (ITK refuses such files)"
                    .to_string(),
            );
            sto
        };
        // RAS -> LPS: negate the x and y rows.
        let origin = [-chosen[0][3], -chosen[1][3], chosen[2][3]];
        let mut itk = [[0.0; 3]; 3];
        for c in 0..3 {
            let col = [-chosen[0][c], -chosen[1][c], chosen[2][c]];
            let norm = (col[0] * col[0] + col[1] * col[1] + col[2] * col[2]).sqrt();
            for r in 0..3 {
                itk[r][c] = if norm > 0.0 { col[r] / norm } else { col[r] };
            }
        }
        // A 2-D file may leave the third column empty: complete it with the right-handed
        // normal of the other two, so that the single slice still has a valid geometry.
        let column = |c: usize| [itk[0][c], itk[1][c], itk[2][c]];
        if column(2) == [0.0; 3] {
            let n = crate::volume::cross(column(0), column(1));
            for (r, v) in n.iter().enumerate() {
                itk[r][2] = *v;
            }
        }
        (Geometry::from_itk(spacing, origin, itk), warnings)
    }
}

type Mat34 = [[f64; 4]; 3];
const IDENTITY3: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// The columns of the 3x3 part, normalised.
fn normalized_columns(m: &Mat34) -> Option<([[f64; 3]; 3], [f64; 3])> {
    let mut out = [[0.0; 3]; 3];
    let mut norms = [0.0; 3];
    for c in 0..3 {
        let n = (0..3).map(|r| m[r][c] * m[r][c]).sum::<f64>().sqrt();
        if !(n.is_finite() && n > 0.0) {
            return None;
        }
        norms[c] = n;
        for r in 0..3 {
            out[r][c] = m[r][c] / n;
        }
    }
    Some((out, norms))
}

/// ITK's "sform decomposable without skew": invertible, and `R Rᵀ ≈ I` (1e-4) once the
/// columns are normalised.
fn orthonormal_columns(m: &Mat34) -> bool {
    let Some((r, _)) = normalized_columns(m) else {
        return false;
    };
    let det = det3(&r);
    if !det.is_finite() || det.abs() < 1e-12 {
        return false;
    }
    (0..3).all(|i| {
        (0..3).all(|j| {
            let dot: f64 = (0..3).map(|k| r[i][k] * r[j][k]).sum();
            (dot - if i == j { 1.0 } else { 0.0 }).abs() <= 1e-4
        })
    })
}

/// Whether two affines have the same rotation, scales and offsets within 1e-4 (ITK's test
/// for preferring an sform whose code is not 1 over the qform).
fn very_similar(a: &Mat34, b: &Mat34) -> bool {
    let (Some((ra, na)), Some((rb, nb))) = (normalized_columns(a), normalized_columns(b)) else {
        return false;
    };
    (0..3).all(|i| (na[i] - nb[i]).abs() <= 1e-4 && (a[i][3] - b[i][3]).abs() <= 1e-4)
        && (0..3).all(|r| (0..3).all(|c| (ra[r][c] - rb[r][c]).abs() <= 1e-4))
}

/// `nifti_quatern_to_mat44`: the qform affine (RAS) from quaternion `(b, c, d)`, offsets,
/// voxel sizes (non-positive ones count as 1) and `qfac`.
fn quatern_to_mat(q: [f64; 3], offset: [f64; 3], d: [f64; 3], qfac: f64) -> Mat34 {
    let [mut b, mut c, mut dd] = q;
    let mut a = 1.0 - (b * b + c * c + dd * dd);
    if a < 1e-7 {
        let s = 1.0 / (b * b + c * c + dd * dd).sqrt();
        b *= s;
        c *= s;
        dd *= s;
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    let xd = if d[0] > 0.0 { d[0] } else { 1.0 };
    let yd = if d[1] > 0.0 { d[1] } else { 1.0 };
    let mut zd = if d[2] > 0.0 { d[2] } else { 1.0 };
    if qfac < 0.0 {
        zd = -zd;
    }
    [
        [
            (a * a + b * b - c * c - dd * dd) * xd,
            2.0 * (b * c - a * dd) * yd,
            2.0 * (b * dd + a * c) * zd,
            offset[0],
        ],
        [
            2.0 * (b * c + a * dd) * xd,
            (a * a + c * c - b * b - dd * dd) * yd,
            2.0 * (c * dd - a * b) * zd,
            offset[1],
        ],
        [
            2.0 * (b * dd - a * c) * xd,
            2.0 * (c * dd + a * b) * yd,
            (a * a + dd * dd - c * c - b * b) * zd,
            offset[2],
        ],
    ]
}

/// The nearest rotation-or-reflection to `m` (polar decomposition, Newton iteration).
fn orthogonalize(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut x = m;
    for _ in 0..100 {
        let det = det3(&x);
        if !det.is_finite() || det.abs() < 1e-12 {
            break;
        }
        let inv = crate::volume::inv3(&x);
        let mut next = [[0.0; 3]; 3];
        let mut change: f64 = 0.0;
        for r in 0..3 {
            for c in 0..3 {
                next[r][c] = 0.5 * (x[r][c] + inv[c][r]);
                change = change.max((next[r][c] - x[r][c]).abs());
            }
        }
        x = next;
        if change < 1e-15 {
            break;
        }
    }
    x
}

/// `nifti_mat44_to_quatern` for an orthonormal matrix: quaternion `(b, c, d)` and `qfac`.
fn rotation_to_quatern(m: [[f64; 3]; 3]) -> ([f64; 3], f64) {
    let mut r = m;
    let qfac = if det3(&r) > 0.0 {
        1.0
    } else {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    };
    let (r11, r12, r13) = (r[0][0], r[0][1], r[0][2]);
    let (r21, r22, r23) = (r[1][0], r[1][1], r[1][2]);
    let (r31, r32, r33) = (r[2][0], r[2][1], r[2][2]);
    let trace = r11 + r22 + r33 + 1.0;
    let a: f64;
    let (mut b, mut c, mut d): (f64, f64, f64);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r12 + r21) / b;
            d = 0.25 * (r13 + r31) / b;
            a = 0.25 * (r32 - r23) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r12 + r21) / c;
            d = 0.25 * (r23 + r32) / c;
            a = 0.25 * (r13 - r31) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r13 + r31) / d;
            c = 0.25 * (r23 + r32) / d;
            a = 0.25 * (r21 - r12) / d;
        }
        if a < 0.0 {
            b = -b;
            c = -c;
            d = -d;
        }
    }
    ([b, c, d], qfac)
}

/// Reads a NIfTI-1 or NIfTI-2 single file (`.nii`, or gzip-compressed `.nii.gz`; compression
/// is recognised by content) as an HU volume. See the module documentation for geometry and
/// value conversion.
pub fn read(path: &Path, limits: &Limits) -> Result<Volume> {
    let fail = |message: String| Error::Nifti {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    limits.check_file_bytes(file_len)?;
    let mut buffered = BufReader::with_capacity(1 << 20, file);
    let gzip = buffered
        .fill_buf()
        .map_err(|e| Error::io(path, e))?
        .starts_with(&[0x1f, 0x8b]);
    let inner: Box<dyn Read> = if gzip {
        Box::new(MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut reader = CountingReader { inner, count: 0 };
    let io_fail = |e: std::io::Error, what: &str, count: u64| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            fail(format!(
                "file ends early ({count} bytes{}): {what}",
                if gzip { " decompressed" } else { "" }
            ))
        } else if gzip
            && matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        {
            fail(format!("corrupt gzip data: {e}"))
        } else {
            Error::io(path, e)
        }
    };

    let mut head = vec![0u8; NIFTI2_HEADER_BYTES];
    let first = head.get_mut(..4).unwrap_or_default();
    reader
        .read_exact(first)
        .map_err(|e| io_fail(e, "no NIfTI header", reader.count))?;
    let (version, _) = sniff(&head).ok_or_else(|| {
        fail("not a NIfTI file: sizeof_hdr is neither 348 (NIfTI-1) nor 540 (NIfTI-2)".into())
    })?;
    let header_bytes = if version == 2 {
        NIFTI2_HEADER_BYTES
    } else {
        NIFTI1_HEADER_BYTES
    };
    head.truncate(header_bytes);
    let rest = head.get_mut(4..).unwrap_or_default();
    reader
        .read_exact(rest)
        .map_err(|e| io_fail(e, "header truncated", reader.count))?;
    let header = parse_header(&head).map_err(&fail)?;

    let shape = header.shape_zyx().map_err(&fail)?;
    limits.check_shape(shape)?;
    let ty = header.element_type().map_err(&fail)?;
    let overflow = || fail("the dimensions give a data size that overflows 64 bits".into());
    let voxels = shape
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n))
        .ok_or_else(overflow)?;
    let expected = voxels.checked_mul(ty.size() as u64).ok_or_else(overflow)?;
    let vox_offset = header.vox_offset;
    if !vox_offset.is_finite() || vox_offset < 0.0 {
        return Err(fail(format!("vox_offset = {vox_offset} is invalid")));
    }
    // The data never starts inside the header; an unset (smaller) vox_offset means the
    // usual place, after the 4-byte extension flag.
    let data_start = if vox_offset < header_bytes as f64 {
        header_bytes as u64 + 4
    } else {
        vox_offset.floor() as u64
    };
    let skip = data_start - header_bytes as u64;
    // What the file can hold is known before decompressing; check before allocating.
    let room = if gzip {
        file_len
            .saturating_mul(MAX_DEFLATE_RATIO)
            .saturating_add(1024)
    } else {
        file_len
    };
    if data_start.saturating_add(expected) > room {
        return Err(fail(format!(
            "data is shorter than the header says: {expected} bytes of {} voxels from byte \
             {data_start}, but the file {} only {room} bytes",
            ty_name(ty),
            if gzip { "can decompress to" } else { "holds" }
        )));
    }
    let (geometry, mut warnings) = header.geometry();
    geometry.validate().map_err(|e| fail(e.to_string()))?;

    let skipped = std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink())
        .map_err(|e| io_fail(e, "extensions", reader.count))?;
    if skipped != skip {
        return Err(fail(format!("file ends before vox_offset = {vox_offset}")));
    }
    let mut hu = vec![
        0i16;
        usize::try_from(voxels)
            .map_err(|_| fail("image too large for this platform".into()))?
    ];
    let decoder = Decoder {
        ty,
        big_endian: header.big_endian,
        scale: header.scaling(),
    };
    let clamped = decoder.read_into(&mut reader, &mut hu).map_err(|e| {
        let count = reader.count;
        io_fail(
            e,
            &format!("the header needs {expected} bytes of voxel data from byte {data_start}"),
            count,
        )
    })?;
    warnings.extend(clamp_warning(clamped));

    let [nz, ny, nx] = shape.map(|n| n as usize); // each fits: their product does
    let hu =
        Array3::from_shape_vec((nz, ny, nx), hu).map_err(|e| fail(format!("internal: {e}")))?;
    Ok(Volume {
        hu,
        geometry,
        info: VolumeInfo {
            format: "nifti".into(),
            slice_count: nz,
            warnings,
            ..VolumeInfo::default()
        },
    })
}

fn ty_name(ty: ElementType) -> &'static str {
    match ty {
        ElementType::I8 => "int8",
        ElementType::U8 => "uint8",
        ElementType::I16 => "int16",
        ElementType::U16 => "uint16",
        ElementType::I32 => "int32",
        ElementType::U32 => "uint32",
        ElementType::I64 => "int64",
        ElementType::U64 => "uint64",
        ElementType::F32 => "float32",
        ElementType::F64 => "float64",
    }
}

/// The 348-byte NIfTI-1 header (little endian) [`write()`] writes for a volume, followed by the
/// 4-byte empty extension flag.
fn header_bytes(volume: &Volume) -> Result<Vec<u8>> {
    let [nz, ny, nx] = volume.shape();
    let dims = [nx, ny, nz].map(|n| i16::try_from(n).ok());
    let [Some(dx), Some(dy), Some(dz)] = dims else {
        return Err(Error::InvalidArgument(format!(
            "volume {nx}x{ny}x{nz} has a side over 32767 voxels, which NIfTI-1 cannot store"
        )));
    };
    let g = &volume.geometry;
    let spacing = g.spacing_xyz();
    // LPS -> RAS: negate the x and y rows of the direction and the origin.
    let lps = g.itk_direction();
    let mut ras = lps;
    for row in ras.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    let origin = [-g.origin_mm[0], -g.origin_mm[1], g.origin_mm[2]];
    let (quatern, qfac) = rotation_to_quatern(orthogonalize(ras));

    let mut h = vec![0u8; NIFTI1_HEADER_BYTES + 4];
    let mut put = |offset: usize, bytes: &[u8]| {
        if let Some(dst) = h.get_mut(offset..offset + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(0, &348i32.to_le_bytes());
    put(38, b"r"); // regular
    for (i, d) in [3i16, dx, dy, dz, 1, 1, 1, 1].iter().enumerate() {
        put(40 + 2 * i, &d.to_le_bytes());
    }
    put(70, &4i16.to_le_bytes()); // datatype int16
    put(72, &16i16.to_le_bytes()); // bitpix
    let pixdim = [qfac, spacing[0], spacing[1], spacing[2], 0.0, 0.0, 0.0, 0.0];
    for (i, p) in pixdim.iter().enumerate() {
        put(76 + 4 * i, &(*p as f32).to_le_bytes());
    }
    put(108, &((NIFTI1_HEADER_BYTES + 4) as f32).to_le_bytes()); // vox_offset
    put(112, &1f32.to_le_bytes()); // scl_slope
    put(116, &0f32.to_le_bytes()); // scl_inter
    put(123, &[2 | 8]); // xyzt_units: mm, s
    put(148, b"lungcad");
    put(252, &1i16.to_le_bytes()); // qform_code: scanner anatomical
    put(254, &1i16.to_le_bytes()); // sform_code: scanner anatomical
    for (i, v) in quatern.iter().chain(origin.iter()).enumerate() {
        put(256 + 4 * i, &(*v as f32).to_le_bytes());
    }
    for r in 0..3 {
        for c in 0..3 {
            put(
                280 + 16 * r + 4 * c,
                &((ras[r][c] * spacing[c]) as f32).to_le_bytes(),
            );
        }
        put(280 + 16 * r + 12, &(origin[r] as f32).to_le_bytes());
    }
    put(344, b"n+1\0");
    Ok(h)
}

/// Writes a volume as a NIfTI-1 single file with `int16` data: gzip-compressed when the name
/// ends in `.nii.gz`, plain for `.nii`. Geometry goes into both the sform and the qform (see the
/// module documentation). Written to a temporary file and renamed into place.
pub fn write(volume: &Volume, path: &Path) -> Result<()> {
    volume.geometry.validate()?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let gzip = if name.ends_with(".nii.gz") {
        true
    } else if name.ends_with(".nii") {
        false
    } else {
        return Err(Error::InvalidArgument(format!(
            "{}: a NIfTI file name must end in .nii or .nii.gz",
            path.display()
        )));
    };
    let header = header_bytes(volume)?;
    let mut out = AtomicFile::create(path)?;
    out.write_with(|w| {
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
            gz.write_all(&header)?;
            write_i16_le(&volume.hu, &mut gz)?;
            gz.finish()?;
            Ok(())
        } else {
            w.write_all(&header)?;
            write_i16_le(&volume.hu, w)
        }
    })?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{cross, IDENTITY_DIRECTION};

    fn oblique(flip: f64) -> [[f64; 3]; 3] {
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        let row = [c, s, 0.0];
        let col = [-s * 0.8, c * 0.8, 0.6];
        let n = cross(row, col);
        [[n[0] * flip, n[1] * flip, n[2] * flip], col, row]
    }

    fn test_volume(direction: [[f64; 3]; 3]) -> Volume {
        let mut hu = Array3::<i16>::zeros((4, 5, 6));
        for ((z, y, x), v) in hu.indexed_iter_mut() {
            *v = (z as i16 * 1000 - y as i16 * 37 + x as i16 * 11)
                * if (x + y) % 2 == 0 { 1 } else { -1 };
        }
        hu[[0, 0, 0]] = i16::MIN;
        hu[[3, 4, 5]] = i16::MAX;
        let geometry = Geometry {
            spacing_mm: [2.5, 0.703125, 0.65],
            origin_mm: [-195.3, 12.000001, -378.25],
            direction,
        };
        Volume::new(hu, geometry).unwrap()
    }

    /// Geometry equal to `float32` precision.
    fn assert_close(a: &Geometry, b: &Geometry) {
        for i in 0..3 {
            assert!(
                (a.spacing_mm[i] - b.spacing_mm[i]).abs() <= 1e-6 * a.spacing_mm[i],
                "{a:?}\n{b:?}"
            );
            assert!(
                (a.origin_mm[i] - b.origin_mm[i]).abs() <= 1e-4,
                "{a:?}\n{b:?}"
            );
            for j in 0..3 {
                assert!(
                    (a.direction[i][j] - b.direction[i][j]).abs() <= 1e-6,
                    "{a:?}\n{b:?}"
                );
            }
        }
    }

    #[test]
    fn round_trip_nii_and_nii_gz() {
        let dir = tempfile::tempdir().unwrap();
        for (i, direction) in [IDENTITY_DIRECTION, oblique(1.0), oblique(-1.0)]
            .into_iter()
            .enumerate()
        {
            let v = test_volume(direction);
            for name in ["a.nii", "b.nii.gz", "C.NII.GZ"] {
                let path = dir.path().join(format!("{i}{name}"));
                write(&v, &path).unwrap();
                let back = read(&path, &Limits::default()).unwrap();
                assert_eq!(back.hu, v.hu);
                assert_close(&v.geometry, &back.geometry);
                assert_eq!(back.info.format, "nifti");
                assert_eq!(back.info.slice_count, 4);
                assert!(back.info.warnings.is_empty(), "{:?}", back.info.warnings);
            }
            let plain = std::fs::metadata(dir.path().join(format!("{i}a.nii")))
                .unwrap()
                .len();
            assert_eq!(plain, 352 + 4 * 5 * 6 * 2);
        }
    }

    #[test]
    fn qform_alone_gives_the_same_geometry() {
        // Zero the sform code of a written file: the qform must describe the same geometry.
        let dir = tempfile::tempdir().unwrap();
        for flip in [1.0, -1.0] {
            let v = test_volume(oblique(flip));
            let path = dir.path().join("q.nii");
            write(&v, &path).unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[254] = 0;
            bytes[255] = 0;
            let h = parse_header(&bytes).unwrap();
            assert_eq!(h.pixdim[0], flip);
            std::fs::write(&path, &bytes).unwrap();
            let back = read(&path, &Limits::default()).unwrap();
            assert_close(&v.geometry, &back.geometry);
        }
    }

    #[test]
    fn quaternion_round_trip() {
        for flip in [1.0, -1.0] {
            let g = Geometry {
                spacing_mm: [1.0; 3],
                origin_mm: [0.0; 3],
                direction: oblique(flip),
            };
            let m = g.itk_direction();
            let (q, qfac) = rotation_to_quatern(orthogonalize(m));
            assert_eq!(qfac, flip);
            let back = quatern_to_mat(q, [0.0; 3], [1.0; 3], qfac);
            for r in 0..3 {
                for c in 0..3 {
                    assert!((back[r][c] - m[r][c]).abs() < 1e-12, "{back:?} vs {m:?}");
                }
            }
        }
        // 180-degree rotations take the other branches.
        for m in [
            [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]],
            [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]],
            [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
        ] {
            let (q, qfac) = rotation_to_quatern(m);
            let back = quatern_to_mat(q, [0.0; 3], [1.0; 3], qfac);
            for r in 0..3 {
                for c in 0..3 {
                    assert!((back[r][c] - m[r][c]).abs() < 1e-12);
                }
            }
        }
    }

    /// A minimal NIfTI-1 header for hand-made test files.
    fn hand_header(dims: [i16; 8], datatype: i16, big_endian: bool) -> Vec<u8> {
        let mut h = vec![0u8; 352];
        let mut put = |o: usize, b: &[u8]| {
            let mut b = b.to_vec();
            if big_endian {
                b.reverse();
            }
            h[o..o + b.len()].copy_from_slice(&b);
        };
        put(0, &348i32.to_le_bytes());
        for (i, d) in dims.iter().enumerate() {
            put(40 + 2 * i, &d.to_le_bytes());
        }
        put(70, &datatype.to_le_bytes());
        for i in 1..4 {
            put(76 + 4 * i, &1f32.to_le_bytes());
        }
        put(108, &352f32.to_le_bytes());
        h[344..348].copy_from_slice(b"n+1\0");
        h
    }

    #[test]
    fn reads_big_endian_scaled_floats_and_pixdim_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = hand_header([3, 3, 1, 1, 1, 1, 1, 1], 16, true);
        bytes[112..116].copy_from_slice(&2f32.to_be_bytes()); // slope
        bytes[116..120].copy_from_slice(&(-1024f32).to_be_bytes()); // intercept
        for v in [0.25f32, 100.0, f32::NAN] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let path = dir.path().join("be.nii");
        std::fs::write(&path, &bytes).unwrap();
        let v = read(&path, &Limits::default()).unwrap();
        assert_eq!(v.hu.as_slice().unwrap(), &[-1024, -824, -1024]); // -1023.5 rounds to -1024
        assert_eq!(v.geometry, Geometry::new([1.0; 3], [0.0; 3]));
        assert_eq!(v.info.warnings.len(), 1);
    }

    #[test]
    fn two_d_and_unset_vox_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = hand_header([2, 3, 2, 0, 0, 0, 0, 0], 2, false);
        bytes[108..112].copy_from_slice(&0f32.to_le_bytes()); // vox_offset unset: data at 352
        bytes[254..256].copy_from_slice(&1i16.to_le_bytes()); // sform_code, with an empty z column
        for (r, row) in [
            [-0.5f32, 0.0, 0.0, 1.0],
            [0.0, -0.5, 0.0, 2.0],
            [0.0, 0.0, 0.0, 3.0],
        ]
        .iter()
        .enumerate()
        {
            for (c, v) in row.iter().enumerate() {
                bytes[280 + 16 * r + 4 * c..284 + 16 * r + 4 * c].copy_from_slice(&v.to_le_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let path = dir.path().join("flat.nii");
        std::fs::write(&path, &bytes).unwrap();
        let v = read(&path, &Limits::default()).unwrap();
        assert_eq!(v.shape(), [1, 2, 3]);
        assert_eq!(v.hu.as_slice().unwrap(), &[1, 2, 3, 4, 5, 6]);
        assert_eq!(v.geometry.direction, IDENTITY_DIRECTION);
        assert_eq!(v.geometry.origin_mm, [-1.0, -2.0, 3.0]);
    }

    #[test]
    fn nifti2_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = vec![0u8; 544];
        h[0..4].copy_from_slice(&540i32.to_le_bytes());
        h[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
        h[12..14].copy_from_slice(&512i16.to_le_bytes()); // uint16
        for (i, d) in [3i64, 2, 2, 1, 1, 1, 1, 1].iter().enumerate() {
            h[16 + 8 * i..24 + 8 * i].copy_from_slice(&d.to_le_bytes());
        }
        for (i, p) in [1f64, 0.5, 0.5, 3.0].iter().enumerate() {
            h[104 + 8 * i..112 + 8 * i].copy_from_slice(&p.to_le_bytes());
        }
        h[168..176].copy_from_slice(&544i64.to_le_bytes());
        h[348..352].copy_from_slice(&1i32.to_le_bytes()); // sform_code
        let srow = [
            [-0.5, 0.0, 0.0, 10.0],
            [0.0, -0.5, 0.0, 20.0],
            [0.0, 0.0, 3.0, -30.0],
        ];
        for (r, row) in srow.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                h[400 + 32 * r + 8 * c..408 + 32 * r + 8 * c]
                    .copy_from_slice(&f64::to_le_bytes(*v));
            }
        }
        for v in [1u16, 2, 3, 65535] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        let path = dir.path().join("two.nii");
        std::fs::write(&path, &h).unwrap();
        let v = read(&path, &Limits::default()).unwrap();
        assert_eq!(v.hu.as_slice().unwrap(), &[1, 2, 3, i16::MAX]);
        // RAS diag(-1,-1,1) is LPS identity; origin (-10, -20, -30) LPS.
        assert_eq!(v.geometry.direction, IDENTITY_DIRECTION);
        assert_eq!(v.geometry.origin_mm, [-10.0, -20.0, -30.0]);
        assert_eq!(v.geometry.spacing_mm, [3.0, 0.5, 0.5]);
    }

    #[test]
    fn bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.nii");
        let check = |bytes: &[u8], needle: &str| {
            std::fs::write(&path, bytes).unwrap();
            let err = read(&path, &Limits::default()).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        };
        check(b"", "ends early");
        check(b"hello world", "not a NIfTI");
        check(
            &hand_header([3, 2, 2, 2, 1, 1, 1, 1], 4, false)[..200],
            "ends early",
        );
        let mut h = hand_header([3, 2, 2, 2, 1, 1, 1, 1], 4, false);
        h[344..348].copy_from_slice(b"ni1\0");
        check(&h, "two-file");
        check(&hand_header([4, 2, 2, 2, 5, 1, 1, 1], 4, false), "4-D");
        check(
            &hand_header([3, 2, 0, 2, 1, 1, 1, 1], 4, false),
            "at least 1",
        );
        check(&hand_header([9, 2, 2, 2, 1, 1, 1, 1], 4, false), "dim[0]");
        check(
            &hand_header([3, 2, 2, 2, 1, 1, 1, 1], 32, false),
            "complex64",
        );
        // Short data, plain and gzip.
        let mut h = hand_header([3, 2, 2, 2, 1, 1, 1, 1], 4, false);
        h.extend_from_slice(&[0u8; 15]);
        check(&h, "shorter");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&h).unwrap();
        check(&gz.finish().unwrap(), "ends early");
        // Corrupt gzip.
        check(
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8],
            "gzip",
        );
        // A 4-D file whose extra dimension is 1 is fine, as is trailing data.
        let mut h = hand_header([4, 2, 2, 2, 1, 1, 1, 1], 4, false);
        h.extend_from_slice(&[0u8; 20]);
        std::fs::write(&path, &h).unwrap();
        assert_eq!(read(&path, &Limits::default()).unwrap().shape(), [2, 2, 2]);
    }

    #[test]
    fn limits_are_checked_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.nii");
        std::fs::write(
            &path,
            hand_header([3, 32767, 32767, 32767, 1, 1, 1, 1], 64, false),
        )
        .unwrap();
        assert!(matches!(
            read(&path, &Limits::default()),
            Err(Error::Limit {
                what: "voxel count",
                ..
            })
        ));
        // Without the voxel limit, the file's size refuses it before allocating.
        let err = read(&path, &Limits::none()).unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
        let path_gz = dir.path().join("huge.nii.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&hand_header(
            [3, 32767, 32767, 32767, 1, 1, 1, 1],
            64,
            false,
        ))
        .unwrap();
        std::fs::write(&path_gz, gz.finish().unwrap()).unwrap();
        let err = read(&path_gz, &Limits::none()).unwrap_err();
        assert!(err.to_string().contains("shorter"), "{err}");
    }

    #[test]
    fn parse_header_survives_garbage() {
        let base = hand_header([3, 2, 2, 2, 1, 1, 1, 1], 4, false);
        let mut seed = 0x9E3779B97F4A7C15u64;
        for len in [0, 1, 3, 4, 100, 347, 348, 352, 539, 540, 600] {
            for _ in 0..50 {
                let mut b = base.clone();
                b.resize(len, 0);
                for byte in b.iter_mut() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed.is_multiple_of(7) {
                        *byte = (seed >> 32) as u8;
                    }
                }
                if let Ok(h) = parse_header(&b) {
                    let _ = h.shape_zyx();
                    let _ = h.geometry();
                    let _ = h.element_type();
                }
            }
        }
    }

    #[test]
    fn sform_choice_follows_itk() {
        // sform code 2 that disagrees with a valid qform: ITK takes the qform.
        let mut h = parse_header(&hand_header([3, 2, 2, 2, 1, 1, 1, 1], 4, false)).unwrap();
        h.qform_code = 1;
        h.sform_code = 2;
        h.srow = [
            [2.0, 0.0, 0.0, 5.0],
            [0.0, 2.0, 0.0, 6.0],
            [0.0, 0.0, 2.0, 7.0],
        ];
        let (g, _) = h.geometry();
        assert_eq!(g.origin_mm, [0.0, 0.0, 0.0]);
        assert_eq!(
            g.itk_direction(),
            [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]
        );
        // sform code 1 wins.
        h.sform_code = 1;
        let (g, _) = h.geometry();
        assert_eq!(g.origin_mm, [-5.0, -6.0, 7.0]);
        // Sheared sform with a qform: the qform.
        h.srow[0][1] = 1.0;
        assert_eq!(h.geometry().0.origin_mm, [0.0, 0.0, 0.0]);
        // Sheared sform alone: used, with a warning.
        h.qform_code = 0;
        let (g, w) = h.geometry();
        assert_eq!(g.origin_mm, [-5.0, -6.0, 7.0]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn refuses_bad_output() {
        let dir = tempfile::tempdir().unwrap();
        let v = test_volume(IDENTITY_DIRECTION);
        assert!(matches!(
            write(&v, &dir.path().join("x.img")),
            Err(Error::InvalidArgument(_))
        ));
        let big = Volume::new(
            Array3::zeros((1, 1, 40000)),
            Geometry::new([1.0; 3], [0.0; 3]),
        )
        .unwrap();
        assert!(matches!(
            write(&big, &dir.path().join("x.nii")),
            Err(Error::InvalidArgument(_))
        ));
        assert!(!dir.path().join("x.nii").exists());
    }
}
