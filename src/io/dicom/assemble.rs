//! Series assembly: from unordered slice headers to an ordered stack with exact geometry.
//! Pure (no I/O), so it is unit-tested and fuzzed directly.

use super::header::SliceHeader;
use crate::error::{Error, Result, SeriesProblem};
use crate::io::GantryTilt;
use crate::volume::{cross, dot, norm, Geometry};
use rayon::prelude::*;

/// Tolerance on ImageOrientationPatient components when comparing slices.
const ORIENTATION_TOL: f64 = 1e-4;
/// Two slices closer than this along the normal are at the same position (mm).
const SAME_POSITION_MM: f64 = 1e-3;
/// A stack whose last slice lies off the normal through the first by more than this
/// (degrees), and by more than half a pixel ([`OFF_LINE_FLOOR_PIXELS`]), is tilted.
pub const MAX_TILT_DEG: f64 = 0.05;
/// The steepest gantry tilt corrected (degrees). Scanners tilt up to about 30 degrees; a
/// stack further off its normal is refused.
pub const MAX_CORRECTED_TILT_DEG: f64 = 45.0;
/// HU given to output voxels that no slice covers after a tilt correction (air).
const OUTSIDE_HU: f64 = -1024.0;
/// A gap over this many median spacings means slices are missing.
const MAX_GAP_RATIO: f64 = 1.5;
/// Slices further than this fraction of the mean slice spacing from a regular grid along
/// the normal are interpolated onto one ([`SpacingCorrection`]).
pub const MAX_POSITION_ERROR: f64 = 0.1;

/// An ordered slice stack and its geometry.
#[derive(Debug, Clone)]
pub struct Assembly {
    /// Slices in increasing position along the normal; index = z.
    pub slices: Vec<SliceHeader>,
    pub geometry: Geometry,
    /// How each slice is resampled when the series is gantry-tilted or its slices are
    /// shifted in their plane (then `geometry` is that of the resampled grid).
    pub tilt: Option<TiltCorrection>,
    /// How the planes are interpolated along the normal when the slices are unevenly
    /// spaced (after `tilt`, which keeps each slice's position along the normal).
    pub spacing: Option<SpacingCorrection>,
    pub warnings: Vec<String>,
}

/// The interpolation along the slice normal that puts unevenly spaced slices onto a
/// regular grid from the first slice to the last: output plane `k` is `(1 - w) x` slice
/// `a` `+ w x` slice `a + 1`, for `(a, w) = planes[k]`. The grid's spacing is the smaller
/// median gap between slices, fitted to a whole number of planes, so that the finer part
/// of the stack keeps (nearly) its resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct SpacingCorrection {
    /// The largest distance of a slice from the regular grid of the mean spacing (the grid
    /// the slices would be read as), mm.
    pub max_error_mm: f64,
    /// The output grid's spacing, mm.
    pub spacing_mm: f64,
    pub planes: Vec<(usize, f64)>,
}

impl SpacingCorrection {
    /// For slices at `proj` (positions along the normal, increasing, at least two, no gap
    /// over [`MAX_GAP_RATIO`] median gaps): `None` when every slice is within
    /// [`MAX_POSITION_ERROR`] of a spacing of its plane of the regular grid of the mean
    /// spacing (or the positions are not finite, refused later).
    fn new(proj: &[f64]) -> Option<SpacingCorrection> {
        let n = proj.len();
        let extent = proj[n - 1] - proj[0];
        let mean = extent / (n - 1) as f64;
        if n < 3 || !(mean.is_finite() && mean > 0.0) {
            return None;
        }
        let max_error_mm = (0..n)
            .map(|k| (proj[k] - proj[0] - k as f64 * mean).abs())
            .fold(0.0, f64::max);
        if max_error_mm.is_nan() || max_error_mm <= MAX_POSITION_ERROR * mean {
            return None;
        }
        let mut gaps: Vec<f64> = proj.windows(2).map(|w| w[1] - w[0]).collect();
        gaps.sort_by(f64::total_cmp);
        let median = gaps[(gaps.len() - 1) / 2];
        // With no gap over 1.5 median gaps, this is at most about 1.5 (n - 1) + 1 planes;
        // capped at 2n all the same.
        let count = ((extent / median).round() as usize).clamp(1, 2 * n - 1) + 1;
        let spacing_mm = extent / (count - 1) as f64;
        let mut a = 0;
        let planes = (0..count)
            .map(|k| {
                let t = proj[0] + k as f64 * spacing_mm;
                while a + 2 < n && proj[a + 1] <= t {
                    a += 1;
                }
                let w = ((t - proj[a]) / (proj[a + 1] - proj[a])).clamp(0.0, 1.0);
                (a, w)
            })
            .collect();
        Some(SpacingCorrection {
            max_error_mm,
            spacing_mm,
            planes,
        })
    }

    /// Interpolates `input` (z-major planes of `plane` voxels, one per slice) into `out`
    /// (`planes.len()` planes), one parallel job per plane.
    pub fn resample(&self, input: &[i16], plane: usize, out: &mut [i16]) {
        if plane == 0 {
            return;
        }
        out.par_chunks_mut(plane)
            .zip(&self.planes)
            .for_each(|(out, &(a, w))| {
                let lower = &input[a * plane..][..plane];
                if w == 0.0 {
                    out.copy_from_slice(lower);
                    return;
                }
                let upper = &input[(a + 1) * plane..][..plane];
                for ((v, &l), &u) in out.iter_mut().zip(lower).zip(upper) {
                    *v = (l as f64 * (1.0 - w) + u as f64 * w).round() as i16;
                }
            });
    }
}

/// The in-plane resampling that undoes a gantry tilt, or places slices shifted in their
/// plane: output plane `k`, voxel `(i, j)`, is slice `k` at row `i + offsets_vox[k][0]` and
/// column `j + offsets_vox[k][1]` (fractional: bilinear). A slice reaches half a pixel past
/// its edge pixels (their value); further out is [`OUTSIDE_HU`]. The output planes run
/// along the slice normal and cover every slice whole.
#[derive(Debug, Clone, PartialEq)]
pub struct TiltCorrection {
    /// The angle between the slice normal and the line from the first slice's position to
    /// the last's, degrees (whatever that line makes when only slices shifted in their
    /// plane called for the resampling).
    pub angle_deg: f64,
    /// The slices' rows and columns.
    pub input_plane: [usize; 2],
    /// The output planes' rows and columns.
    pub plane: [usize; 2],
    /// Per slice, in z order: where the output plane's voxel (0, 0) lies in the slice,
    /// `[row, column]`.
    pub offsets_vox: Vec<[f64; 2]>,
}

/// A slice's in-plane shift within this many pixels of a whole number of pixels is taken
/// as that whole number: DS positions are often rounded to 0.01 mm or coarser, and a tilt
/// of whole rows then stays a copy of the rows, not an interpolation.
const WHOLE_PIXEL_TOL: f64 = 1e-3;
/// The most pixels the output plane may grow by on an axis: far past any real tilt (a
/// 512-pixel plane grows by some hundreds), and small enough for the sizes to be exact.
const MAX_GROWTH_VOX: f64 = (1u64 << 31) as f64;

impl TiltCorrection {
    /// The offsets that place slices at `positions` (z order) on planes along the normal
    /// through the first, with rows along `col_dir` (`pixel_spacing[0]` apart) and columns
    /// along `row_dir` (`pixel_spacing[1]` apart), the rows and columns of the output
    /// grown to cover every slice. Returns it and the output's origin; a shift that is not
    /// finite, or grows the plane by over 2^31 pixels, is an error that begins with `what`
    /// (the gantry tilt, or shifted slices).
    fn new(
        series_uid: &str,
        what: &str,
        angle_deg: f64,
        positions: &[[f64; 3]],
        [col_dir, row_dir]: [[f64; 3]; 2],
        pixel_spacing: [f64; 2],
        input_plane: [usize; 2],
    ) -> Result<(TiltCorrection, [f64; 3])> {
        let p0 = positions[0];
        let snap = |v: f64| {
            if (v - v.round()).abs() < WHOLE_PIXEL_TOL {
                v.round()
            } else {
                v
            }
        };
        // Each slice's in-plane shift from the first, in its rows and columns.
        let shifts: Vec<[f64; 2]> = positions
            .iter()
            .map(|p| {
                let d = [p[0] - p0[0], p[1] - p0[1], p[2] - p0[2]];
                [
                    snap(dot(d, col_dir) / pixel_spacing[0]),
                    snap(dot(d, row_dir) / pixel_spacing[1]),
                ]
            })
            .collect();
        // The output's first row and column, in the first slice's pixels: whole pixels, so
        // that the first slice is not interpolated.
        let (mut start, mut plane) = ([0.0; 2], [0usize; 2]);
        for a in 0..2 {
            let (mut lo, mut hi) = (0.0f64, 0.0f64);
            for s in &shifts {
                if !s[a].is_finite() {
                    return Err(problem(
                        series_uid,
                        SeriesProblem::Attribute(format!(
                            "{what}: a slice's in-plane shift is {} pixels",
                            s[a]
                        )),
                    ));
                }
                (lo, hi) = (lo.min(s[a]), hi.max(s[a]));
            }
            start[a] = lo.floor();
            let growth = hi.ceil() - start[a];
            if growth > MAX_GROWTH_VOX {
                return Err(problem(
                    series_uid,
                    SeriesProblem::Attribute(format!(
                        "{what}: the slices' in-plane shifts span {growth} pixels"
                    )),
                ));
            }
            plane[a] = (growth as usize).saturating_add(input_plane[a]);
        }
        let offsets_vox = shifts
            .iter()
            .map(|s| [start[0] - s[0], start[1] - s[1]])
            .collect();
        let origin = std::array::from_fn(|w| {
            p0[w]
                + start[0] * pixel_spacing[0] * col_dir[w]
                + start[1] * pixel_spacing[1] * row_dir[w]
        });
        Ok((
            TiltCorrection {
                angle_deg,
                input_plane,
                plane,
                offsets_vox,
            },
            origin,
        ))
    }

    /// Resamples `slices` (z-major planes of `input_plane`) into `out` (z-major planes of
    /// `plane`), one parallel job per plane.
    pub fn resample(&self, slices: &[i16], out: &mut [i16]) {
        let [rows, cols] = self.input_plane;
        let [out_rows, out_cols] = self.plane;
        if rows == 0 || cols == 0 {
            out.fill(OUTSIDE_HU as i16);
            return;
        }
        // Where a coordinate falls: none past half a pixel outside the slice, else its
        // pixel, the next one (clamped to the slice) and the weight of the next one.
        let locate = |v: f64, n: usize| -> Option<(usize, usize, f64)> {
            if !(-0.5..=n as f64 - 0.5).contains(&v) {
                return None;
            }
            let v = v.clamp(0.0, (n - 1) as f64);
            let v0 = v.floor() as usize;
            Some((v0, (v0 + 1).min(n - 1), v - v0 as f64))
        };
        out.par_chunks_mut((out_rows * out_cols).max(1))
            .zip(slices.par_chunks(rows * cols).zip(&self.offsets_vox))
            .for_each(|(out, (slice, &[dr, dc]))| {
                let columns: Vec<Option<(usize, usize, f64)>> =
                    (0..out_cols).map(|j| locate(j as f64 + dc, cols)).collect();
                for (i, out_row) in out.chunks_mut(out_cols.max(1)).enumerate() {
                    let Some((y0, y1, fy)) = locate(i as f64 + dr, rows) else {
                        out_row.fill(OUTSIDE_HU as i16);
                        continue;
                    };
                    let (top, bottom) = (&slice[y0 * cols..][..cols], &slice[y1 * cols..][..cols]);
                    for (v, c) in out_row.iter_mut().zip(&columns) {
                        *v = match *c {
                            None => OUTSIDE_HU as i16,
                            Some((x0, x1, fx)) => {
                                let t = top[x0] as f64 * (1.0 - fx) + top[x1] as f64 * fx;
                                let b = bottom[x0] as f64 * (1.0 - fx) + bottom[x1] as f64 * fx;
                                (t * (1.0 - fy) + b * fy).round() as i16
                            }
                        };
                    }
                }
            });
    }
}

/// Slices shifted in their plane by less than this many pixels off the straight stack are
/// taken as in line: DS positions are often rounded to 0.01 mm or coarser, which moves an
/// oblique stack's slices by up to 0.01 mm off their line (0.14 mm for positions rounded to
/// 0.1 mm), and a shift under half a pixel moves no voxel centre past its neighbour's.
const OFF_LINE_FLOOR_PIXELS: f64 = 0.5;

/// Where the slices of a stack lie against the slice normal.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StackShape {
    /// The stack's length along the normal, first slice to last (mm).
    extent_mm: f64,
    /// The angle between the normal and the line from the first slice's position to the
    /// last's, degrees: a gantry tilt's angle.
    angle_deg: f64,
    /// The last slice's in-plane offset from the first (mm).
    end_offset_mm: f64,
    /// How far the slices lie from that line (mm): zero for a regular stack or a gantry
    /// tilt, more when some slices are shifted in their plane and others not.
    off_line_mm: f64,
    /// How far the slices lie from the normal through the first (mm): where an untilted
    /// stack places them.
    off_normal_mm: f64,
}

impl StackShape {
    /// For slice positions in increasing order along `normal` (a unit vector), at least
    /// two. Positions so far apart that their differences overflow give NaN.
    fn new(positions: &[[f64; 3]], normal: [f64; 3]) -> StackShape {
        let p0 = positions[0];
        // Each slice's distance along the normal and in-plane offset from the first.
        let split = |p: &[f64; 3]| {
            let v = [p[0] - p0[0], p[1] - p0[1], p[2] - p0[2]];
            let along = dot(v, normal);
            (along, [0, 1, 2].map(|w| v[w] - along * normal[w]))
        };
        let (extent_mm, last) = split(&positions[positions.len() - 1]);
        let (mut off_line_mm, mut off_normal_mm) = (0.0, 0.0);
        for p in positions {
            let (along, perp) = split(p);
            let t = along / extent_mm;
            off_line_mm = f64_max_nan(off_line_mm, norm([0, 1, 2].map(|w| perp[w] - t * last[w])));
            off_normal_mm = f64_max_nan(off_normal_mm, norm(perp));
        }
        StackShape {
            extent_mm,
            angle_deg: norm(last).atan2(extent_mm).to_degrees(),
            end_offset_mm: norm(last),
            off_line_mm,
            off_normal_mm,
        }
    }

    /// How far slices may lie off the normal through the first (the last slice), or off
    /// the straight stack (any slice), and still be read as in line (mm): the offset a tilt
    /// of [`MAX_TILT_DEG`] makes over the stack, and at least [`OFF_LINE_FLOOR_PIXELS`] of
    /// the smaller pixel spacing.
    fn in_line_tolerance_mm(&self, pixel_spacing: [f64; 2]) -> f64 {
        let tilt = self.extent_mm * MAX_TILT_DEG.to_radians().tan();
        tilt.max(OFF_LINE_FLOOR_PIXELS * pixel_spacing[0].min(pixel_spacing[1]))
    }
}

/// The larger of two numbers, NaN if either is.
fn f64_max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn problem(series_uid: &str, problem: SeriesProblem) -> Error {
    Error::Series {
        series_uid: display_uid(series_uid),
        problem,
    }
}

/// How a series UID is shown (an empty one is named so).
pub fn display_uid(uid: &str) -> String {
    if uid.is_empty() {
        "(no SeriesInstanceUID)".to_string()
    } else {
        uid.to_string()
    }
}

fn fmt_spacing(s: Option<[f64; 2]>) -> String {
    match s {
        Some([a, b]) => format!("{a}\\{b}"),
        None => "none".into(),
    }
}

/// Planes whose ImageOrientationPatient components differ by more than this (about 1.1
/// degrees) lie in different stacks, such as a localizer (90 degrees off) and the axial
/// stack. Planes closer than this but further than [`ORIENTATION_TOL`] are one stack with
/// jittery orientations, refused as mixed: splitting them would drop slices of one stack.
const STACK_ORIENTATION_TOL: f64 = 0.02;
/// Planes whose pixel spacings differ by more than this fraction lie in different stacks
/// (two reconstructions of different fields of view).
const STACK_SPACING_TOL: f64 = 0.01;
/// The most stacks a series is split into ([`stacks`]); a series of more is assembled
/// whole, and so refused as mixed.
pub const MAX_STACKS: usize = 64;

/// Whether two planes clearly lie in different stacks: another number of rows or columns,
/// a pixel spacing over [`STACK_SPACING_TOL`] apart, an orientation over
/// [`STACK_ORIENTATION_TOL`] off, or one of them without a spacing or orientation.
fn distinct_stacks(a: &SliceHeader, b: &SliceHeader) -> bool {
    (a.format.rows, a.format.columns) != (b.format.rows, b.format.columns)
        || match (a.pixel_spacing, b.pixel_spacing) {
            (Some(a), Some(b)) => {
                (0..2).any(|i| (a[i] - b[i]).abs() > STACK_SPACING_TOL * a[i].abs().max(b[i].abs()))
            }
            (None, None) => false,
            _ => true,
        }
        || match (a.orientation, b.orientation) {
            (Some(a), Some(b)) => (0..6).any(|i| (a[i] - b[i]).abs() > STACK_ORIENTATION_TOL),
            (None, None) => false,
            _ => true,
        }
}

/// The planes of a series grouped into stacks ([`distinct_stacks`]: each plane joins the
/// first stack whose first plane it does not clearly differ from), each the indices of its
/// planes in order, the largest first (equals in the order of their first planes). `None`
/// past [`MAX_STACKS`].
pub fn stacks(slices: &[SliceHeader]) -> Option<Vec<Vec<usize>>> {
    let mut stacks: Vec<Vec<usize>> = Vec::new();
    for (i, s) in slices.iter().enumerate() {
        match stacks
            .iter()
            .position(|st| !distinct_stacks(&slices[st[0]], s))
        {
            Some(k) => stacks[k].push(i),
            None if stacks.len() == MAX_STACKS => return None,
            None => stacks.push(vec![i]),
        }
    }
    stacks.sort_by_key(|st| std::cmp::Reverse(st.len()));
    Some(stacks)
}

/// A number as a short decimal: at most 4 places, no trailing zeros.
pub(crate) fn short(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// One stack of a series whose planes form several ([`stacks`]): the indices of its planes,
/// which it is (from 1), how many there are, and a warning naming the others.
struct ChosenStack {
    planes: Vec<usize>,
    number: usize,
    stacks: usize,
    warning: String,
}

/// The stack `stack` asks for (from 1, in the order of [`stacks`]), or the one that holds
/// the most. `None` when the planes form one stack (and `stack` is none or 1), or over
/// [`MAX_STACKS`] with no stack asked for: then the series is assembled whole (and the
/// latter refused as mixed).
fn choose_stack(
    series_uid: &str,
    slices: &[SliceHeader],
    stack: Option<usize>,
) -> Result<Option<ChosenStack>> {
    if slices.is_empty() {
        return Ok(None);
    }
    let Some(stacks) = stacks(slices) else {
        return match stack {
            None => Ok(None),
            Some(_) => Err(problem(
                series_uid,
                SeriesProblem::TooManyStacks { max: MAX_STACKS },
            )),
        };
    };
    let n = stacks.len();
    let describe = |k: usize| {
        let st = &stacks[k];
        let first = &slices[st[0]];
        format!(
            "stack {}, {} plane(s) of {}x{}, orientation ({}), pixel spacing {}",
            k + 1,
            st.len(),
            first.format.rows,
            first.format.columns,
            first
                .orientation
                .map_or("none".to_string(), |o| o.map(short).join(", ")),
            first.pixel_spacing.map_or("none".to_string(), |p| format!(
                "{} x {} mm",
                short(p[0]),
                short(p[1])
            ))
        )
    };
    // The stacks but `except`: the first few named, the rest counted.
    let others = |except: Option<usize>| {
        const NAMED: usize = 4;
        let rest: Vec<usize> = (0..n).filter(|&k| Some(k) != except).collect();
        let mut named: Vec<String> = rest.iter().take(NAMED).map(|&k| describe(k)).collect();
        if rest.len() > NAMED {
            named.push(format!("and {} more stacks", rest.len() - NAMED));
        }
        named.join("; ")
    };
    let k = match stack {
        Some(k) if k == 0 || k > n => {
            return Err(problem(
                series_uid,
                SeriesProblem::NoSuchStack {
                    requested: k,
                    stacks: n,
                },
            ))
        }
        Some(k) => k - 1,
        None if n == 1 => return Ok(None),
        None => {
            let planes = stacks[0].len();
            let tied = stacks.iter().take_while(|st| st.len() == planes).count();
            if tied > 1 {
                return Err(problem(
                    series_uid,
                    SeriesProblem::SeveralStacks {
                        stacks: n,
                        tied,
                        planes,
                        described: others(None),
                    },
                ));
            }
            0
        }
    };
    if n == 1 {
        return Ok(None);
    }
    let warning = format!(
        "the series' planes form {n} stacks (they differ in orientation, size or pixel \
         spacing): loaded {}, {}; not loaded (--stack N loads another): {}",
        if stack.is_some() {
            "the one asked for"
        } else {
            "the largest"
        },
        describe(k),
        others(Some(k))
    );
    let planes = stacks.into_iter().nth(k).unwrap_or_default();
    Ok(Some(ChosenStack {
        planes,
        number: k + 1,
        stacks: n,
        warning,
    }))
}

/// Orders the slices of one series and computes its geometry, refusing series that do not
/// form a regular stack (see [`SeriesProblem`]). A series whose planes form several stacks
/// is cut to the one that holds the most, and refused when the two largest are of one size
/// ([`SeriesProblem::SeveralStacks`]; [`assemble_stack`] picks any). A gantry-tilted stack
/// is refused or corrected as `gantry_tilt` says ([`Assembly::tilt`]).
pub fn assemble(
    series_uid: &str,
    slices: Vec<SliceHeader>,
    gantry_tilt: GantryTilt,
) -> Result<Assembly> {
    assemble_stack(series_uid, slices, gantry_tilt, None)
}

/// [`assemble`], with the stack to load when the series' planes form several: `stack`
/// from 1, in the order of [`stacks`] (`None`: the largest; a tie is refused).
/// A stack's problem names the stack ([`SeriesProblem::InStack`]).
pub fn assemble_stack(
    series_uid: &str,
    mut slices: Vec<SliceHeader>,
    gantry_tilt: GantryTilt,
    stack: Option<usize>,
) -> Result<Assembly> {
    let Some(chosen) = choose_stack(series_uid, &slices, stack)? else {
        return assemble_planes(series_uid, slices, gantry_tilt, Vec::new());
    };
    let mut keep = chosen.planes.into_iter().peekable();
    slices = slices
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| keep.next_if_eq(&i).map(|_| s))
        .collect();
    assemble_planes(series_uid, slices, gantry_tilt, vec![chosen.warning]).map_err(|e| match e {
        Error::Series {
            series_uid,
            problem,
        } => Error::Series {
            series_uid,
            problem: SeriesProblem::InStack {
                stack: chosen.number,
                stacks: chosen.stacks,
                problem: Box::new(problem),
            },
        },
        e => e,
    })
}

/// [`assemble`] of planes that form one stack (or are refused as mixed), `warnings` the
/// ones so far.
fn assemble_planes(
    series_uid: &str,
    mut slices: Vec<SliceHeader>,
    gantry_tilt: GantryTilt,
    mut warnings: Vec<String>,
) -> Result<Assembly> {
    let Some(first) = slices.first().cloned() else {
        return Err(problem(
            series_uid,
            SeriesProblem::Attribute("no image slices".into()),
        ));
    };
    for s in &slices[1..] {
        if (s.format.rows, s.format.columns) != (first.format.rows, first.format.columns) {
            return Err(problem(
                series_uid,
                SeriesProblem::MixedDimensions {
                    what: "rows/columns",
                    first: format!("{}x{}", first.format.rows, first.format.columns),
                    other: format!("{}x{}", s.format.rows, s.format.columns),
                },
            ));
        }
        let same_spacing = match (first.pixel_spacing, s.pixel_spacing) {
            (Some(a), Some(b)) => (0..2).all(|i| (a[i] - b[i]).abs() <= 1e-4 * a[i].abs().max(1.0)),
            (None, None) => true,
            _ => false,
        };
        if !same_spacing {
            return Err(problem(
                series_uid,
                SeriesProblem::MixedDimensions {
                    what: "pixel spacing",
                    first: fmt_spacing(first.pixel_spacing),
                    other: fmt_spacing(s.pixel_spacing),
                },
            ));
        }
        match (first.orientation, s.orientation) {
            (Some(a), Some(b)) => {
                if (0..6).any(|i| (a[i] - b[i]).abs() > ORIENTATION_TOL) {
                    return Err(problem(
                        series_uid,
                        SeriesProblem::MixedOrientation { first: a, other: b },
                    ));
                }
            }
            (None, None) => {}
            (a, b) => {
                return Err(problem(
                    series_uid,
                    SeriesProblem::MixedOrientation {
                        first: a.unwrap_or([f64::NAN; 6]),
                        other: b.unwrap_or([f64::NAN; 6]),
                    },
                ))
            }
        }
    }

    let pixel_spacing = match first.pixel_spacing {
        Some(p) => p,
        None => {
            warnings.push("no PixelSpacing: assuming 1 mm".to_string());
            [1.0, 1.0]
        }
    };
    let (row_dir, col_dir) = match first.orientation {
        Some(o) => {
            let r = [o[0], o[1], o[2]];
            let c = [o[3], o[4], o[5]];
            let (nr, nc) = (norm(r), norm(c));
            if !(nr > 0.5 && nc > 0.5) || dot(r, c).abs() / (nr * nc) > 1e-3 {
                return Err(problem(
                    series_uid,
                    SeriesProblem::Attribute(format!(
                        "ImageOrientationPatient {o:?} is not two orthogonal unit vectors"
                    )),
                ));
            }
            (
                [r[0] / nr, r[1] / nr, r[2] / nr],
                [c[0] / nc, c[1] / nc, c[2] / nc],
            )
        }
        None => {
            if slices.len() > 1 {
                return Err(problem(
                    series_uid,
                    SeriesProblem::Attribute("slices lack ImageOrientationPatient".into()),
                ));
            }
            warnings.push(
                "no ImageOrientationPatient: assuming axial identity orientation".to_string(),
            );
            ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
        }
    };
    let normal = cross(row_dir, col_dir);

    if slices.len() > 1 && slices.iter().any(|s| s.position.is_none()) {
        return Err(problem(
            series_uid,
            SeriesProblem::Attribute(
                "slices lack ImagePositionPatient (per-frame positions for multi-frame)".into(),
            ),
        ));
    }
    let pos = |s: &SliceHeader| s.position.unwrap_or([0.0; 3]);
    if slices.len() == 1 && first.position.is_none() {
        warnings.push("no ImagePositionPatient: origin set to (0, 0, 0)".to_string());
    }

    // Sort along the normal; ties broken by file and frame so the order is deterministic.
    slices.sort_by(|a, b| {
        dot(pos(a), normal)
            .total_cmp(&dot(pos(b), normal))
            .then_with(|| a.path.cmp(&b.path))
            .then_with(|| a.frame.cmp(&b.frame))
    });

    // Exact duplicate positions: keep the first, warn.
    let before = slices.len();
    slices.dedup_by(|b, a| {
        let (pa, pb) = (pos(a), pos(b));
        (0..3).all(|i| (pa[i] - pb[i]).abs() < SAME_POSITION_MM)
    });
    if slices.len() < before {
        warnings.push(format!(
            "{} slice(s) at exactly the same position as another were dropped",
            before - slices.len()
        ));
    }
    let positions: Vec<[f64; 3]> = slices.iter().map(pos).collect();
    let proj: Vec<f64> = positions.iter().map(|&p| dot(p, normal)).collect();
    if let Some(w) = proj
        .windows(2)
        .find(|w| (w[1] - w[0]).abs() < SAME_POSITION_MM)
    {
        let _ = w;
        return Err(problem(
            series_uid,
            SeriesProblem::Attribute(
                "two slices share a position along the normal but differ in-plane".into(),
            ),
        ));
    }

    let n = slices.len();
    // The stack's shape when its slices are to be placed one by one: tilted, off a line.
    let mut shape = None;
    let mut spacing = None;
    let spacing_z = if n == 1 {
        first
            .spacing_between_slices
            .or(first.slice_thickness)
            .filter(|s| *s > 0.0)
            .unwrap_or(1.0)
    } else {
        let mut diffs: Vec<f64> = proj.windows(2).map(|w| w[1] - w[0]).collect();
        let gaps = diffs.clone();
        diffs.sort_by(f64::total_cmp);
        let median = diffs[diffs.len() / 2];
        if median <= 0.0 {
            return Err(problem(series_uid, SeriesProblem::SinglePosition));
        }
        for (i, g) in gaps.iter().enumerate() {
            if *g > MAX_GAP_RATIO * median {
                return Err(problem(
                    series_uid,
                    SeriesProblem::MissingSlices {
                        gap_mm: *g,
                        median_mm: median,
                        at_mm: proj[i],
                    },
                ));
            }
        }
        let mean = (proj[n - 1] - proj[0]) / (n - 1) as f64;
        spacing = SpacingCorrection::new(&proj);
        let (lo, hi) = (diffs[0], diffs[diffs.len() - 1]);
        if let Some(c) = &spacing {
            warnings.push(format!(
                "slice spacing varies from {lo:.3} to {hi:.3} mm, slices up to {:.3} mm off a \
                 regular grid: interpolated along the slice normal onto {} planes {:.3} mm \
                 apart",
                c.max_error_mm,
                c.planes.len(),
                c.spacing_mm
            ));
        } else if hi - lo > 0.01 * median + 0.01 {
            warnings.push(format!(
                "slice spacing varies from {lo:.3} to {hi:.3} mm; used as a regular grid of \
                 {mean:.3} mm (no slice over {:.0}% of that off it)",
                MAX_POSITION_ERROR * 100.0
            ));
        }
        // Gantry tilt: the stack must run along the slice normal, and its slices lie on a
        // line: every slice is measured, not only the last, so that a stack whose middle
        // slices alone are shifted in their plane is not read as a regular one.
        let stack = StackShape::new(&positions, normal);
        if [stack.angle_deg, stack.off_line_mm, stack.off_normal_mm]
            .iter()
            .any(|v| v.is_nan())
        {
            return Err(problem(
                series_uid,
                SeriesProblem::Attribute(
                    "slice positions too far apart to measure the stack's direction".into(),
                ),
            ));
        }
        let tolerance = stack.in_line_tolerance_mm(pixel_spacing);
        let tilted = stack.end_offset_mm > tolerance;
        // A stack over 45 degrees off its normal is refused even where its last slice lies
        // under half a pixel off (slices closer than that).
        let max_deg = match gantry_tilt {
            GantryTilt::Refuse if tilted => MAX_TILT_DEG,
            _ => MAX_CORRECTED_TILT_DEG,
        };
        if stack.angle_deg > max_deg {
            return Err(problem(
                series_uid,
                SeriesProblem::GantryTilt {
                    angle_deg: stack.angle_deg,
                    max_deg,
                },
            ));
        }
        // Slices are shifted when they lie off where the stack would place them: on the
        // line from the first slice to the last when it is tilted, else on the normal.
        let shift_mm = if tilted {
            stack.off_line_mm
        } else {
            stack.off_normal_mm
        };
        let shifted = shift_mm > tolerance;
        if shifted {
            let max_mm = match gantry_tilt {
                GantryTilt::Refuse => tolerance,
                GantryTilt::Correct => stack.extent_mm,
            };
            if shift_mm > max_mm {
                return Err(problem(
                    series_uid,
                    SeriesProblem::ShiftedSlices {
                        offset_mm: shift_mm,
                        max_mm,
                    },
                ));
            }
        }
        if tilted || shifted {
            shape = Some((stack, tilted, shifted.then_some(shift_mm)));
        }
        spacing.as_ref().map_or(mean, |c| c.spacing_mm)
    };

    let direction = [normal, col_dir, row_dir];
    let input_plane = [first.format.rows as usize, first.format.columns as usize];
    let (tilt, origin_mm) = match shape {
        None => {
            // Some scanners record a tilt here with positions that show none: they are what
            // places the voxels, so say so.
            if let Some(t) = first.gantry_detector_tilt_deg {
                if n > 1 && t.abs() > MAX_TILT_DEG {
                    warnings.push(format!(
                        "GantryDetectorTilt is {t} degrees but the slice positions run along \
                         the slice normal: loaded where the positions place the slices"
                    ));
                }
            }
            (None, pos(&slices[0]))
        }
        Some((stack, tilted, shift_mm)) => {
            let (t, origin) = TiltCorrection::new(
                series_uid,
                if tilted {
                    "gantry tilt"
                } else {
                    "shifted slices"
                },
                stack.angle_deg,
                &positions,
                [col_dir, row_dir],
                pixel_spacing,
                input_plane,
            )?;
            let resampled = format!(
                "each slice resampled in its plane (bilinear) onto a grid along the slice \
                 normal, {}x{} pixels to {}x{}",
                input_plane[0], input_plane[1], t.plane[0], t.plane[1]
            );
            if tilted {
                warnings.push(format!(
                    "gantry tilt of {:.2} degrees corrected: {resampled}",
                    stack.angle_deg
                ));
            }
            if let Some(shift_mm) = shift_mm {
                warnings.push(format!(
                    "slice positions are up to {:.3} mm off a straight stack (slices shifted \
                     in their plane): {}",
                    shift_mm,
                    if tilted {
                        "each slice placed at its own position".to_string()
                    } else {
                        resampled.clone()
                    }
                ));
            }
            (Some(t), origin)
        }
    };
    let geometry = Geometry {
        spacing_mm: [spacing_z, pixel_spacing[0], pixel_spacing[1]],
        origin_mm,
        direction,
    };
    geometry.validate()?;
    Ok(Assembly {
        slices,
        geometry,
        tilt,
        spacing,
        warnings,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::io::dicom::header::{PixelFormat, Rescale};
    use std::path::Path;
    use std::sync::Arc;

    pub(crate) fn slice(name: &str, pos: [f64; 3], ori: [f64; 6]) -> SliceHeader {
        SliceHeader {
            path: Arc::from(Path::new(name)),
            frame: 0,
            number_of_frames: 1,
            series_uid: "1.2.3".into(),
            sop_instance_uid: String::new(),
            modality: "CT".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            position: Some(pos),
            orientation: Some(ori),
            pixel_spacing: Some([0.7, 0.6]),
            slice_thickness: Some(2.5),
            spacing_between_slices: None,
            format: PixelFormat {
                rows: 4,
                columns: 5,
                bits_allocated: 16,
                bits_stored: 16,
                signed: true,
                samples_per_pixel: 1,
            },
            photometric: "MONOCHROME2".into(),
            rescale: Rescale::default(),
            padding: None,
            instance_number: None,
            gantry_detector_tilt_deg: None,
        }
    }

    const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

    #[test]
    fn sorts_by_position_not_name() {
        let s = vec![
            slice("a", [0.0, 0.0, 5.0], AXIAL),
            slice("b", [0.0, 0.0, -5.0], AXIAL),
            slice("c", [0.0, 0.0, 0.0], AXIAL),
        ];
        let a = assemble("1.2.3", s, GantryTilt::Refuse).unwrap();
        let names: Vec<_> = a
            .slices
            .iter()
            .map(|s| s.path.to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["b", "c", "a"]);
        assert_eq!(a.geometry.spacing_mm, [5.0, 0.7, 0.6]);
        assert_eq!(a.geometry.origin_mm, [0.0, 0.0, -5.0]);
        assert_eq!(a.geometry.direction[0], [0.0, 0.0, 1.0]);
    }

    #[test]
    fn missing_slice_is_refused() {
        let s = (0..6)
            .filter(|i| *i != 3)
            .map(|i| slice(&i.to_string(), [0.0, 0.0, i as f64 * 2.0], AXIAL))
            .collect();
        match assemble("1.2.3", s, GantryTilt::Refuse) {
            Err(Error::Series {
                series_uid,
                problem: SeriesProblem::MissingSlices { gap_mm, .. },
            }) => {
                assert_eq!(series_uid, "1.2.3");
                assert!((gap_mm - 4.0).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Axial slices at these positions along z.
    fn axial_at(z: &[f64]) -> Vec<SliceHeader> {
        z.iter()
            .enumerate()
            .map(|(i, z)| slice(&i.to_string(), [0.0, 0.0, *z], AXIAL))
            .collect()
    }

    #[test]
    fn uneven_spacing_is_interpolated_onto_a_regular_grid() {
        // 1 mm gaps, then 1.25 mm: read as a regular grid of the mean spacing, 1.125 mm,
        // slice 3 (at 3 mm) would be 0.375 mm off its plane (at 3.375 mm), over a tenth of
        // the spacing. Interpolated onto the grid of the smaller median gap, 1 mm, fitted
        // to the 6.75 mm: 8 planes 6.75 / 7 mm apart.
        let z = [0.0, 1.0, 2.0, 3.0, 4.25, 5.5, 6.75];
        let a = assemble("u", axial_at(&z), GantryTilt::Correct).unwrap();
        let step = 6.75 / 7.0;
        assert_eq!(a.geometry.spacing_mm[0], step);
        let c = a.spacing.expect("a spacing correction");
        assert!((c.max_error_mm - 0.375).abs() < 1e-12);
        assert_eq!(c.planes.len(), 8);
        // Plane k at k x step lies between the slices around it.
        for (k, &(a, w)) in c.planes.iter().enumerate() {
            let t = k as f64 * step;
            let want = z[a] + w * (z[a + 1] - z[a]);
            assert!(
                (t - want).abs() < 1e-12 && z[a] <= t + 1e-12,
                "{k}: {:?}",
                (a, w)
            );
        }
        assert_eq!((c.planes[0], c.planes[7]), ((0, 0.0), (5, 1.0)));
        assert!(
            a.warnings[0].starts_with(
                "slice spacing varies from 1.000 to 1.250 mm, slices up to 0.375 mm off"
            ),
            "{:?}",
            a.warnings
        );
        // Planes holding 100 x their position hold 100 x their grid position after.
        let input: Vec<i16> = z.iter().flat_map(|z| [(100.0 * z) as i16; 2]).collect();
        let mut out = vec![0i16; 16];
        c.resample(&input, 2, &mut out);
        for k in 0..8 {
            let want = 100.0 * k as f64 * step;
            assert!(
                (out[2 * k] as f64 - want).abs() <= 0.5,
                "plane {k}: {}",
                out[2 * k]
            );
        }
        // Gaps of 1.0 and 1.05 mm leave every slice within a tenth of the spacing: used as
        // they are, with a warning.
        let z = [0.0, 1.0, 2.05, 3.05, 4.1];
        let a = assemble("u", axial_at(&z), GantryTilt::Correct).unwrap();
        assert!(a.spacing.is_none());
        assert!(
            a.warnings[0].contains("used as a regular grid of 1.025 mm"),
            "{:?}",
            a.warnings
        );
    }

    #[test]
    fn duplicates_dropped_with_warning() {
        let s = vec![
            slice("a", [0.0, 0.0, 0.0], AXIAL),
            slice("b", [0.0, 0.0, 0.0], AXIAL),
            slice("c", [0.0, 0.0, 1.0], AXIAL),
        ];
        let a = assemble("1.2.3", s, GantryTilt::Refuse).unwrap();
        assert_eq!(a.slices.len(), 2);
        assert_eq!(a.warnings.len(), 1);
    }

    /// Planes that differ in orientation or pixel spacing by less than splits them into
    /// stacks (jitter) are refused as mixed; planes that differ more, in stacks of one
    /// size, are refused as several stacks.
    #[test]
    fn mixed_orientation_and_dimensions_refused() {
        let jitter = [1.0, 0.001, 0.0, 0.0, 1.0, 0.0];
        let s = vec![
            slice("a", [0.0, 0.0, 0.0], AXIAL),
            slice("b", [0.0, 0.0, 1.0], jitter),
        ];
        assert!(matches!(
            assemble("x", s, GantryTilt::Refuse),
            Err(Error::Series {
                problem: SeriesProblem::MixedOrientation { .. },
                ..
            })
        ));
        let mut b = slice("b", [0.0, 0.0, 1.0], AXIAL);
        b.pixel_spacing = Some([0.702, 0.6]);
        assert!(matches!(
            assemble(
                "x",
                vec![slice("a", [0.0; 3], AXIAL), b],
                GantryTilt::Refuse
            ),
            Err(Error::Series {
                problem: SeriesProblem::MixedDimensions {
                    what: "pixel spacing",
                    ..
                },
                ..
            })
        ));
        for other in [
            {
                let mut b = slice("b", [0.0, 0.0, 1.0], AXIAL);
                b.format.rows = 8;
                b
            },
            {
                let mut b = slice("b", [0.0, 0.0, 1.0], AXIAL);
                b.pixel_spacing = Some([0.8, 0.6]);
                b
            },
            slice("b", [0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]),
        ] {
            assert!(matches!(
                assemble(
                    "x",
                    vec![slice("a", [0.0; 3], AXIAL), other],
                    GantryTilt::Refuse
                ),
                Err(Error::Series {
                    problem: SeriesProblem::SeveralStacks {
                        stacks: 2,
                        tied: 2,
                        planes: 1,
                        ..
                    },
                    ..
                })
            ));
        }
    }

    /// A localizer (one sagittal plane of another size) stored in an axial series, and a
    /// second reconstruction of another field of view: the largest stack is loaded, the
    /// others named in a warning; another is loaded when asked for. Stacks of equal size
    /// are refused, and each can be asked for.
    #[test]
    fn a_series_of_several_stacks_loads_the_largest() {
        const SAGITTAL: [f64; 6] = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0];
        let mut localizer = slice("0", [-100.0, -100.0, 50.0], SAGITTAL);
        localizer.format.rows = 8;
        let mut s = vec![localizer];
        s.extend((0..4).map(|i| slice(&format!("a{i}"), [0.0, 0.0, i as f64], AXIAL)));
        let mut wider: Vec<_> = (0..2)
            .map(|i| slice(&format!("b{i}"), [-10.0, -10.0, 2.0 * i as f64], AXIAL))
            .collect();
        for w in &mut wider {
            w.pixel_spacing = Some([0.9, 0.9]);
        }
        s.splice(2..2, wider);
        let a = assemble("x", s.clone(), GantryTilt::Refuse).unwrap();
        let names: Vec<_> = a.slices.iter().map(|h| h.path.to_str().unwrap()).collect();
        assert_eq!(names, ["a0", "a1", "a2", "a3"]);
        assert_eq!(a.geometry.spacing_mm, [1.0, 0.7, 0.6]);
        assert_eq!(
            a.warnings,
            [
                "the series' planes form 3 stacks (they differ in orientation, size or pixel \
                 spacing): loaded the largest, stack 1, 4 plane(s) of 4x5, orientation (1, 0, \
                 0, 0, 1, 0), pixel spacing 0.7 x 0.6 mm; not loaded (--stack N loads \
                 another): stack 2, 2 plane(s) of 4x5, orientation (1, 0, 0, 0, 1, 0), pixel \
                 spacing 0.9 x 0.9 mm; stack 3, 1 plane(s) of 8x5, orientation (0, 1, 0, 0, \
                 0, -1), pixel spacing 0.7 x 0.6 mm"
            ]
        );
        // Another stack, asked for: the wider reconstruction.
        let a = assemble_stack("x", s.clone(), GantryTilt::Refuse, Some(2)).unwrap();
        let names: Vec<_> = a.slices.iter().map(|h| h.path.to_str().unwrap()).collect();
        assert_eq!(names, ["b0", "b1"]);
        assert_eq!(a.geometry.spacing_mm, [2.0, 0.9, 0.9]);
        assert!(
            a.warnings[0].contains("loaded the one asked for, stack 2, 2 plane(s)")
                && a.warnings[0].contains("another): stack 1, 4 plane(s)"),
            "{}",
            a.warnings[0]
        );
        // Stack 1 asked for is the default's; a stack past the last is refused, as is 0.
        assert_eq!(
            assemble_stack("x", s.clone(), GantryTilt::Refuse, Some(1))
                .unwrap()
                .slices
                .len(),
            4
        );
        for k in [0, 4] {
            assert!(matches!(
                assemble_stack("x", s.clone(), GantryTilt::Refuse, Some(k)),
                Err(Error::Series {
                    problem: SeriesProblem::NoSuchStack { requested, stacks: 3 },
                    ..
                }) if requested == k
            ));
        }
        // A series of one stack: stack 1 is it, stack 2 is not there.
        let one: Vec<_> = s
            .iter()
            .filter(|h| h.path.to_str().is_some_and(|p| p.starts_with('a')))
            .cloned()
            .collect();
        assert_eq!(
            assemble_stack("x", one.clone(), GantryTilt::Refuse, Some(1))
                .unwrap()
                .warnings,
            Vec::<String>::new()
        );
        assert!(matches!(
            assemble_stack("x", one, GantryTilt::Refuse, Some(2)),
            Err(Error::Series {
                problem: SeriesProblem::NoSuchStack {
                    requested: 2,
                    stacks: 1
                },
                ..
            })
        ));
        // The stack asked for has its own problem, which names the stack: two planes at
        // one position along the normal.
        let mut twin = s.clone();
        let b1 = twin
            .iter()
            .position(|h| h.path.to_str() == Some("b1"))
            .unwrap();
        twin[b1].position = Some([-5.0, -10.0, 0.0]);
        let e = assemble_stack("x", twin, GantryTilt::Refuse, Some(2)).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Series {
                    problem: SeriesProblem::InStack {
                        stack: 2,
                        stacks: 3,
                        ..
                    },
                    ..
                }
            ),
            "{e}"
        );
        // The largest stack's slices leave a gap: the gap is named, and so is the stack.
        let mut gap = s.clone();
        gap.retain(|h| h.path.to_str() != Some("a2"));
        gap.push(slice("a4", [0.0, 0.0, 4.0], AXIAL));
        gap.push(slice("a5", [0.0, 0.0, 5.0], AXIAL));
        let e = assemble("x", gap, GantryTilt::Refuse).unwrap_err();
        match &e {
            Error::Series {
                problem:
                    SeriesProblem::InStack {
                        stack: 1,
                        stacks: 3,
                        problem,
                    },
                ..
            } => assert!(
                matches!(**problem, SeriesProblem::MissingSlices { .. }),
                "{problem}"
            ),
            e => panic!("{e}"),
        }
        assert!(
            e.to_string().starts_with(
                "series x: stack 1 of the 3 the series' planes form (--stack N picks another): \
                 missing slices: a gap of 2.000 mm"
            ),
            "{e}"
        );
        // Two stacks of four: no largest, refused, both named; either can be asked for.
        let mut tie = s.clone();
        tie.retain(|h| !h.path.starts_with("0"));
        tie.extend((2..4).map(|i| {
            let mut h = slice(&format!("b{i}"), [-10.0, -10.0, 2.0 * i as f64], AXIAL);
            h.pixel_spacing = Some([0.9, 0.9]);
            h
        }));
        let e = assemble("x", tie.clone(), GantryTilt::Refuse).unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Series {
                    problem: SeriesProblem::SeveralStacks {
                        stacks: 2,
                        tied: 2,
                        planes: 4,
                        ..
                    },
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().ends_with(
                "choose one with --stack N (Python: stack=N); stack 1, 4 plane(s) of 4x5, \
                 orientation (1, 0, 0, 0, 1, 0), pixel spacing 0.7 x 0.6 mm; stack 2, 4 \
                 plane(s) of 4x5, orientation (1, 0, 0, 0, 1, 0), pixel spacing 0.9 x 0.9 mm"
            ),
            "{e}"
        );
        for (k, first) in [(1, "a0"), (2, "b0")] {
            let a = assemble_stack("x", tie.clone(), GantryTilt::Refuse, Some(k)).unwrap();
            assert_eq!(a.slices.len(), 4);
            assert_eq!(&*a.slices[0].path, Path::new(first));
        }
        // Orientations within the tolerance are one stack; off by more, but by less than
        // a degree, still one stack (jitter, not a localizer), refused as mixed rather than
        // loaded without the plane.
        let mut near = s.clone();
        near[4].orientation = Some([1.0, 0.00005, 0.0, 0.0, 1.0, 0.0]);
        let a = assemble("x", near, GantryTilt::Refuse).unwrap();
        assert_eq!(a.slices.len(), 4);
        assert!(a.warnings[0].contains("loaded the largest, stack 1, 4 plane(s)"));
        near = s.clone();
        near[4].orientation = Some([1.0, 0.0002, 0.0, 0.0, 1.0, 0.0]);
        match assemble("x", near.clone(), GantryTilt::Refuse) {
            Err(Error::Series {
                problem:
                    SeriesProblem::InStack {
                        stack: 1, problem, ..
                    },
                ..
            }) => assert!(matches!(*problem, SeriesProblem::MixedOrientation { .. })),
            other => panic!("{other:?}"),
        }
        // Two degrees off: another stack.
        near[4].orientation = Some([1.0, 0.035, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(
            assemble("x", near, GantryTilt::Refuse)
                .unwrap()
                .slices
                .len(),
            3
        );
        // Over 64 stacks: assembled whole, and refused.
        let many: Vec<_> = (0..66)
            .map(|i| {
                let mut h = slice(&i.to_string(), [0.0, 0.0, i as f64], AXIAL);
                h.format.rows = 1 + (i as u32).min(64);
                h
            })
            .collect();
        assert!(stacks(&many).is_none());
        assert!(matches!(
            assemble("x", many.clone(), GantryTilt::Refuse),
            Err(Error::Series {
                problem: SeriesProblem::MixedDimensions { .. },
                ..
            })
        ));
        assert!(matches!(
            assemble_stack("x", many.clone(), GantryTilt::Refuse, Some(1)),
            Err(Error::Series {
                problem: SeriesProblem::TooManyStacks { max: 64 },
                ..
            })
        ));
        // 64 stacks, the largest of two planes: loaded, five stacks named and 59 counted.
        let a = assemble("x", many[1..].to_vec(), GantryTilt::Refuse).unwrap();
        assert_eq!(a.slices.len(), 2);
        assert!(
            a.warnings[0].ends_with("; and 59 more stacks"),
            "{}",
            a.warnings[0]
        );
    }

    #[test]
    fn gantry_tilt_refused_or_corrected() {
        // positions shift in y by 0.2 mm per 1 mm step along z: about 11 degrees of tilt
        let s: Vec<_> = (0..5)
            .map(|i| slice(&i.to_string(), [0.0, 0.2 * i as f64, i as f64], AXIAL))
            .collect();
        let tilt = 0.2f64.atan().to_degrees();
        match assemble("t", s.clone(), GantryTilt::Refuse) {
            Err(Error::Series {
                problem: SeriesProblem::GantryTilt { angle_deg, max_deg },
                ..
            }) => {
                assert!((angle_deg - tilt).abs() < 1e-6);
                assert_eq!(max_deg, MAX_TILT_DEG);
            }
            other => panic!("{other:?}"),
        }
        // Corrected: rows (0.7 mm) run along y, so slice k is shifted 0.2k / 0.7 rows; the
        // output grows by the last slice's shift, 0.8 / 0.7 rows, rounded up.
        let a = assemble("t", s.clone(), GantryTilt::Correct).unwrap();
        let t = a.tilt.as_ref().expect("a tilt correction");
        assert!((t.angle_deg - tilt).abs() < 1e-6);
        assert_eq!((t.input_plane, t.plane), ([4, 5], [6, 5]));
        for (k, o) in t.offsets_vox.iter().enumerate() {
            assert!((o[0] + 0.2 * k as f64 / 0.7).abs() < 1e-12, "{k}: {o:?}");
            assert_eq!(o[1], 0.0);
        }
        assert_eq!(a.geometry.origin_mm, [0.0, 0.0, 0.0]);
        assert_eq!(a.geometry.spacing_mm, [1.0, 0.7, 0.6]);
        assert_eq!(a.geometry.direction, crate::volume::IDENTITY_DIRECTION);
        assert!(a.warnings[0].starts_with("gantry tilt of 11.31 degrees corrected"));
        // Resampling, slices whose pixel value is 100 x world y: output (k, i) holds world
        // y 0.7i, slice k's row (0.7i - 0.2k) / 0.7, so 70i where that lies within the
        // slice's rows 0 to 3, and air (-1024) a row or more outside them.
        let slices: Vec<i16> = (0..5 * 4 * 5)
            .map(|v| {
                let (k, row) = (v / 20, v / 5 % 4);
                (20 * k + 70 * row) as i16
            })
            .collect();
        let mut out = vec![0i16; 5 * 6 * 5];
        t.resample(&slices, &mut out);
        let mut checked = [0; 2];
        for k in 0..5 {
            for i in 0..6 {
                let row = (0.7 * i as f64 - 0.2 * k as f64) / 0.7;
                let want = if (-1e-9..=3.0 + 1e-9).contains(&row) {
                    70.0 * i as f64
                } else if row >= 4.0 || row <= -1.0 {
                    -1024.0
                } else {
                    continue;
                };
                checked[(want < 0.0) as usize] += 1;
                for j in 0..5 {
                    let have = out[(k * 6 + i) * 5 + j] as f64;
                    assert!((have - want).abs() <= 0.5, "{k} {i} {j}: {have} {want}");
                }
            }
        }
        assert_eq!(checked, [16, 6]);
        // Positions rounded as DS strings often are: a tilt of one row (0.7 mm) per slice
        // stays whole rows, a copy, not an interpolation.
        let noise = [0.0, 0.0004, -0.0003, 0.0002, -0.0004];
        let rounded: Vec<_> = (0..5)
            .map(|i| {
                let y = 0.7 * i as f64 + noise[i];
                slice(&i.to_string(), [0.0, y, 2.0 * i as f64], AXIAL)
            })
            .collect();
        let a = assemble("t", rounded, GantryTilt::Correct).unwrap();
        let t = a.tilt.unwrap();
        assert_eq!(t.plane, [8, 5]);
        for (k, o) in t.offsets_vox.iter().enumerate() {
            assert_eq!(*o, [-(k as f64), 0.0]);
        }
        // A hostile PixelSpacing makes the shifts absurd (or infinite): an error, not a
        // plane of 2^64 rows.
        for spacing in [1e-300, 1e-320] {
            let hostile: Vec<_> = s
                .iter()
                .cloned()
                .map(|mut h| {
                    h.pixel_spacing = Some([spacing, spacing]);
                    h
                })
                .collect();
            assert!(matches!(
                assemble("t", hostile, GantryTilt::Correct),
                Err(Error::Series {
                    problem: SeriesProblem::Attribute(m),
                    ..
                }) if m.starts_with("gantry tilt: ")
            ));
        }
        // A tilt recorded only in GantryDetectorTilt: loaded as positioned, with a warning.
        let recorded: Vec<_> = (0..3)
            .map(|i| {
                let mut h = slice(&i.to_string(), [0.0, 0.0, i as f64], AXIAL);
                h.gantry_detector_tilt_deg = Some(-15.0);
                h
            })
            .collect();
        let a = assemble("t", recorded, GantryTilt::Correct).unwrap();
        assert!(a.tilt.is_none());
        assert!(a.warnings[0].starts_with("GantryDetectorTilt is -15 degrees"));
        // A slice stack further than 45 degrees off its normal is refused either way.
        let steep: Vec<_> = (0..3)
            .map(|i| slice(&i.to_string(), [0.0, 1.5 * i as f64, i as f64], AXIAL))
            .collect();
        assert!(matches!(
            assemble("t", steep, GantryTilt::Correct),
            Err(Error::Series {
                problem: SeriesProblem::GantryTilt { max_deg, .. },
                ..
            }) if max_deg == MAX_CORRECTED_TILT_DEG
        ));
    }

    #[test]
    fn stack_shape_measures_every_slice() {
        let z = [0.0, 0.0, 1.0];
        // A tilt: offsets in proportion to the distance along the normal.
        let tilt = StackShape::new(&[[0.0; 3], [0.0, 0.2, 1.0], [0.0, 0.4, 2.0]], z);
        assert!((tilt.angle_deg - 0.2f64.atan().to_degrees()).abs() < 1e-12);
        assert!(tilt.off_line_mm < 1e-12);
        assert_eq!(tilt.extent_mm, 2.0);
        // The ends in line, the middle slice 0.5 mm along x: no angle, 0.5 mm off line.
        let kink = StackShape::new(&[[0.0; 3], [0.5, 0.0, 1.0], [0.0, 0.0, 2.0]], z);
        assert_eq!(kink.angle_deg, 0.0);
        assert!((kink.off_line_mm - 0.5).abs() < 1e-12);
        // Both: the middle slice 0.6 mm off, the last 0.2 mm, the line to the last passing
        // 0.5 mm from the middle.
        let bent = StackShape::new(&[[0.0; 3], [0.0, 0.6, 1.0], [0.0, 0.2, 2.0]], z);
        assert!((bent.angle_deg - 0.1f64.atan().to_degrees()).abs() < 1e-12);
        assert!((bent.off_line_mm - 0.5).abs() < 1e-12);
        // The tolerance: half the smaller pixel on a short stack, the 0.05-degree offset on
        // a long one (0.436 mm over 500 mm).
        assert_eq!(kink.in_line_tolerance_mm([0.7, 0.6]), 0.3);
        let long = StackShape::new(&[[0.0; 3], [0.0, 0.0, 500.0]], z);
        assert!((long.in_line_tolerance_mm([0.7, 0.6]) - 0.43633).abs() < 1e-5);
    }

    /// An oblique stack (rows 25 degrees about z, then 10 degrees about x) whose positions
    /// are rounded to 0.01 or 0.1 mm as DS strings often are, from 40 first positions each:
    /// the rounding moves the slices off the normal and off their line by up to about
    /// 0.14 mm, and the stack loads as the regular one it is, for short and long stacks
    /// alike. Judged by the 0.05-degree angle alone, without the half-pixel floor, some
    /// of these stacks read as tilted (and are refused here).
    #[test]
    fn rounded_positions_of_an_oblique_stack_are_in_line() {
        let (a, b) = (25f64.to_radians(), 10f64.to_radians());
        let row = [a.cos(), a.sin(), 0.0];
        let col = [-a.sin() * b.cos(), a.cos() * b.cos(), b.sin()];
        let normal = cross(row, col);
        let ori = [row[0], row[1], row[2], col[0], col[1], col[2]];
        // First positions spread over the patient, from a fixed sequence.
        let mut seed = 12345u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 11) as f64 / (1u64 << 53) as f64 * 400.0 - 200.0
        };
        let cases = [
            (10, 1.0, 0.01),
            (10, 1.0, 0.1),
            (30, 1.0, 0.1),
            (100, 1.25, 0.1),
            (300, 0.625, 0.01),
        ];
        for (count, step, rounding) in cases.into_iter().flat_map(|c| std::iter::repeat_n(c, 40)) {
            let first = [next(), next(), next()];
            let s: Vec<_> = (0..count)
                .map(|k| {
                    let p: [f64; 3] = std::array::from_fn(|w| {
                        let v = first[w] + k as f64 * step * normal[w];
                        (v / rounding).round() * rounding
                    });
                    slice(&k.to_string(), p, ori)
                })
                .collect();
            let a = assemble("t", s, GantryTilt::Refuse).unwrap();
            assert!(a.tilt.is_none(), "{count} slices from {first:?}");
            // (Rounded to 0.1 mm, the gaps vary, which the spacing warning says.)
            assert!(
                a.warnings
                    .iter()
                    .all(|w| w.starts_with("slice spacing varies")),
                "{count} slices: {:?}",
                a.warnings
            );
        }
    }

    /// The ends of the stack in line, the middle slices shifted in their plane (as in a
    /// series put together from two reconstructions of different centres): measured at the
    /// ends alone this read as untilted, the middle slices misplaced by their shift.
    #[test]
    fn stack_shifted_in_the_middle_is_corrected() {
        // Slices 2 and 3 of six are one row (0.7 mm along y) further than the others.
        let shifted = [0.0, 0.0, 0.7, 0.7, 0.0, 0.0];
        let s: Vec<_> = (0..6)
            .map(|i| slice(&i.to_string(), [0.0, shifted[i], i as f64], AXIAL))
            .collect();
        match assemble("t", s.clone(), GantryTilt::Refuse) {
            Err(Error::Series {
                problem: SeriesProblem::ShiftedSlices { offset_mm, max_mm },
                ..
            }) => assert_eq!((offset_mm, max_mm), (0.7, 0.3)),
            other => panic!("{other:?}"),
        }
        let a = assemble("t", s.clone(), GantryTilt::Correct).unwrap();
        let t = a.tilt.as_ref().expect("a correction");
        assert_eq!(t.angle_deg, 0.0);
        assert_eq!((t.input_plane, t.plane), ([4, 5], [5, 5]));
        for (k, o) in t.offsets_vox.iter().enumerate() {
            assert_eq!(*o, [-shifted[k] / 0.7, 0.0], "{k}");
        }
        assert_eq!(a.geometry.origin_mm, [0.0, 0.0, 0.0]);
        assert_eq!(
            a.warnings,
            [
                "slice positions are up to 0.700 mm off a straight stack (slices shifted in \
                 their plane): each slice resampled in its plane (bilinear) onto a grid along \
                 the slice normal, 4x5 pixels to 5x5"
            ]
        );
        // Resampled, output row i of every plane is world y 0.7i: the shifted slices' rows
        // move down by one, air above them.
        let slices: Vec<i16> = (0..6 * 4 * 5).map(|v| (v / 5 % 4) as i16).collect();
        let mut out = vec![0i16; 6 * 5 * 5];
        t.resample(&slices, &mut out);
        for k in 0..6 {
            for i in 0..5 {
                let row = i as i64 - (shifted[k] / 0.7).round() as i64;
                let want = if (0..4).contains(&row) {
                    row as i16
                } else {
                    -1024
                };
                assert!(
                    out[(k * 5 + i) * 5..][..5].iter().all(|&v| v == want),
                    "{k} {i}"
                );
            }
        }
        // Shifted and tilted: both warnings. Slice k also moves 0.1k mm along x.
        let both: Vec<_> = s
            .iter()
            .enumerate()
            .map(|(k, h)| {
                let mut h = h.clone();
                h.position = h.position.map(|p| [0.1 * k as f64, p[1], p[2]]);
                h
            })
            .collect();
        let a = assemble("t", both, GantryTilt::Correct).unwrap();
        assert_eq!(a.warnings.len(), 2, "{:?}", a.warnings);
        assert!(a.warnings[0].starts_with("gantry tilt of 5.71 degrees corrected: "));
        assert!(a.warnings[1].ends_with("each slice placed at its own position"));
        // Shifted further than the stack is long: refused either way.
        let mut far = s.clone();
        far[2].position = Some([0.0, 6.0, 2.0]);
        for tilt in [GantryTilt::Refuse, GantryTilt::Correct] {
            assert!(matches!(
                assemble("t", far.clone(), tilt),
                Err(Error::Series {
                    problem: SeriesProblem::ShiftedSlices { offset_mm: 6.0, .. },
                    ..
                })
            ));
        }
        // Shifted by under half a pixel: in line.
        let mut near = s.clone();
        near[2].position = Some([0.0, 0.29, 2.0]);
        near[3].position = Some([0.0, 0.29, 3.0]);
        assert!(assemble("t", near, GantryTilt::Refuse).is_ok());
        // A hostile PixelSpacing makes the shifts absurd: an error, named for the shift.
        let hostile: Vec<_> = s
            .iter()
            .cloned()
            .map(|mut h| {
                h.pixel_spacing = Some([1e-300, 1e-300]);
                h
            })
            .collect();
        assert!(matches!(
            assemble("t", hostile, GantryTilt::Correct),
            Err(Error::Series {
                problem: SeriesProblem::Attribute(m),
                ..
            }) if m.starts_with("shifted slices: the slices' in-plane shifts span")
        ));
        // Positions so far apart in-plane that their offsets overflow: refused, not read
        // as untilted.
        let far: Vec<_> = [-1e308, 0.0, 1e308]
            .iter()
            .enumerate()
            .map(|(i, &x)| slice(&i.to_string(), [x, 0.0, i as f64], AXIAL))
            .collect();
        assert!(matches!(
            assemble("t", far, GantryTilt::Correct),
            Err(Error::Series {
                problem: SeriesProblem::Attribute(m),
                ..
            }) if m.starts_with("slice positions too far apart")
        ));
        // The half-pixel floor (0.3 mm here) at its edge: a tilt whose last slice lies
        // 0.29 mm off the normal is read as untilted, 0.31 mm off is corrected.
        let tilt_to = |end: f64| -> Vec<SliceHeader> {
            (0..6)
                .map(|i| slice(&i.to_string(), [end * i as f64 / 5.0, 0.0, i as f64], AXIAL))
                .collect()
        };
        let a = assemble("t", tilt_to(0.29), GantryTilt::Correct).unwrap();
        assert!(
            a.tilt.is_none() && a.warnings.is_empty(),
            "{:?}",
            a.warnings
        );
        let a = assemble("t", tilt_to(0.31), GantryTilt::Correct).unwrap();
        assert!(a.tilt.is_some());
        assert!(a.warnings[0].starts_with("gantry tilt of 3.55 degrees corrected"));
        // Untilted by that measure, a middle slice further off the normal than the floor
        // is shifted: it would be placed 0.522 mm from where it lies.
        let mut bent = tilt_to(0.29);
        bent[4].position = Some([0.522, 0.0, 4.0]);
        let a = assemble("t", bent, GantryTilt::Correct).unwrap();
        assert_eq!(a.warnings.len(), 1, "{:?}", a.warnings);
        assert!(
            a.warnings[0].starts_with("slice positions are up to 0.522 mm off a straight stack")
        );
        // Slices closer than half a pixel but over 45 degrees off the normal: refused.
        let steep = vec![
            slice("0", [0.0; 3], AXIAL),
            slice("1", [0.25, 0.0, 0.2], AXIAL),
        ];
        assert!(matches!(
            assemble("t", steep, GantryTilt::Correct),
            Err(Error::Series {
                problem: SeriesProblem::GantryTilt { max_deg, .. },
                ..
            }) if max_deg == MAX_CORRECTED_TILT_DEG
        ));
        // A regular tilt is on a straight stack: no second warning.
        let tilted: Vec<_> = (0..6)
            .map(|i| slice(&i.to_string(), [0.0, 0.7 * i as f64, i as f64], AXIAL))
            .collect();
        let a = assemble("t", tilted, GantryTilt::Correct).unwrap();
        assert_eq!(a.warnings.len(), 1, "{:?}", a.warnings);
    }

    #[test]
    fn oblique_negative_direction_geometry() {
        // Sagittal-ish oblique: rows along y, columns along -z rotated; positions decrease in file order.
        let r = [0.0, 0.8, 0.6];
        let c = [0.0, -0.6, 0.8];
        let n = cross(r, c);
        let ori = [r[0], r[1], r[2], c[0], c[1], c[2]];
        let s = (0..4)
            .map(|i| {
                let t = -1.5 * i as f64;
                slice(
                    &format!("{i}"),
                    [10.0 + t * n[0], 20.0 + t * n[1], 30.0 + t * n[2]],
                    ori,
                )
            })
            .collect();
        let a = assemble("o", s, GantryTilt::Refuse).unwrap();
        assert!((a.geometry.spacing_mm[0] - 1.5).abs() < 1e-9);
        assert_eq!(a.slices[0].path.to_str(), Some("3"));
        let w = a.geometry.voxel_to_world([3.0, 0.0, 0.0]);
        assert!(
            (0..3).all(|k| (w[k] - [10.0, 20.0, 30.0][k]).abs() < 1e-9),
            "{w:?}"
        );
    }
}
