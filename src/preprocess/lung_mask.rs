//! A 3-D lung mask from a CT volume in HU, robust on real chest scans.
//!
//! The steps, on the volume as given (normally the 1 mm resampled one):
//!
//! 1. **Threshold**: voxels below `threshold_hu` are air-like (lung, airways, outside air).
//! 2. **Outside air**: in every axial slice, air connected (4-connectivity) to the slice's
//!    border is outside the body and dropped. Working per slice (not from the volume's
//!    top and bottom faces) keeps lungs that reach the first or last slice, and keeps the
//!    airway of scans that include the head from leaking the lungs to the outside air.
//! 3. **Lung components**: the remaining air is split into 3-D components (6-connectivity).
//!    A component is kept when its volume is at least `min_component_ml`, at least
//!    `min_fraction_of_largest` of the largest component's, and (position) at least
//!    `min_z_overlap` of its slices lie within the largest component's slice range. This
//!    keeps the two lungs (joined by the airways or not) and the airways, and drops bowel
//!    and stomach gas, air in clothing or the table, and noise.
//! 4. **Per slice** (parallel): holes are filled (vessels, nodules, airway walls), then each
//!    2-D region (8-connectivity) is replaced by its convex hull when the hull's area is at
//!    most `convex_hull_max_ratio` times the region's. This pulls nodules that touch the
//!    chest wall (juxtapleural), which sit in the lung's outline as notches, inside the mask,
//!    while crescent-shaped regions (lung bases around the diaphragm, slices where the two
//!    lungs touch through the main bronchi) whose hull would swallow other organs keep their
//!    own outline, closed by a `closing_mm` square, which fills narrow notches only.
//! 5. **Dilation** (optional, `dilation_mm`): by a cuboid of half-sides `round(dilation_mm /
//!    spacing)` voxels per axis, computed separably in place.
//!
//! The result is a `u8` array of 0 and 1 on the input's grid, the lungs' bounding box and
//! volume (before dilation). Memory: one byte per voxel plus small per-thread buffers.

use super::VoxelBox;
use crate::error::{Error, Result};
use crate::volume::Volume;
use ndarray::{Array3, ArrayViewMut2, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Settings of [`lung_mask`]; see the module docs for what each step does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LungMaskConfig {
    /// Voxels below this value (HU) are air-like. Default -400 (lung parenchyma is about
    /// -850 HU, fat about -100 HU).
    pub threshold_hu: i16,
    /// Air components smaller than this (millilitres) are never lung. Default 20.
    pub min_component_ml: f64,
    /// A component must hold at least this fraction of the largest one's volume.
    /// Default 0.1 (each lung is 30 to 70 % of the total; stomach gas a few per cent).
    pub min_fraction_of_largest: f64,
    /// At least this fraction of a component's slices must lie within the largest
    /// component's slice range. Default 0.5.
    pub min_z_overlap: f64,
    /// Per slice, a region becomes its convex hull when the hull is at most this many
    /// times its area; `0` turns hulls off (regions are then only closed). Default 1.2: at
    /// grt123's 1.5 the hull of a lung wrapped around the heart takes in part of the heart.
    pub convex_hull_max_ratio: f64,
    /// Per slice, a region not replaced by its hull is closed (dilated then eroded) by a
    /// square of this half-side (mm), which fills notches up to about twice as wide
    /// (juxtapleural nodules) without bridging the heart's or the diaphragm's concavity;
    /// `0` for none. Default 10.
    pub closing_mm: f64,
    /// Dilation of the final mask (mm); `0` for none. Default 5, so that the pleura and the
    /// tissue around nodules at the lung border stay visible to the detector.
    pub dilation_mm: f64,
}

impl Default for LungMaskConfig {
    fn default() -> Self {
        LungMaskConfig {
            threshold_hu: -400,
            min_component_ml: 20.0,
            min_fraction_of_largest: 0.1,
            min_z_overlap: 0.5,
            convex_hull_max_ratio: 1.2,
            closing_mm: 10.0,
            dilation_mm: 5.0,
        }
    }
}

impl LungMaskConfig {
    /// Checks every value is in its range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| {
            Err(Error::InvalidArgument(format!(
                "lung mask: {what} is {v}, out of range"
            )))
        };
        if !(self.min_component_ml.is_finite() && self.min_component_ml >= 0.0) {
            return bad("min_component_ml", self.min_component_ml);
        }
        if !(0.0..=1.0).contains(&self.min_fraction_of_largest) {
            return bad("min_fraction_of_largest", self.min_fraction_of_largest);
        }
        if !(0.0..=1.0).contains(&self.min_z_overlap) {
            return bad("min_z_overlap", self.min_z_overlap);
        }
        if !(self.convex_hull_max_ratio.is_finite() && self.convex_hull_max_ratio >= 0.0) {
            return bad("convex_hull_max_ratio", self.convex_hull_max_ratio);
        }
        if !(self.closing_mm.is_finite() && (0.0..=100.0).contains(&self.closing_mm)) {
            return bad("closing_mm (0 to 100)", self.closing_mm);
        }
        if !(self.dilation_mm.is_finite() && (0.0..=100.0).contains(&self.dilation_mm)) {
            return bad("dilation_mm (0 to 100)", self.dilation_mm);
        }
        Ok(())
    }
}

/// The output of [`lung_mask`].
#[derive(Debug, Clone, PartialEq)]
pub struct LungMask {
    /// 1 inside the (dilated) lung mask, 0 outside; same grid as the input volume.
    pub mask: Array3<u8>,
    /// Bounding box of the lungs before dilation, in the input's voxel indices.
    pub lung_box: VoxelBox,
    /// Volume of the lungs before dilation (after hole filling and hulls), millilitres.
    pub lung_volume_ml: f64,
    /// Volume of the final mask, millilitres.
    pub mask_volume_ml: f64,
    /// Number of 3-D air components kept as lung (1 when the airways join both lungs).
    pub components: usize,
}

const AIR: u8 = 1;
const OUTSIDE: u8 = 2;
const SEEN: u8 = 3;
const LUNG: u8 = 4;

/// How a volume is named in errors: its series UID, or "the volume".
pub(crate) fn source_name(volume: &Volume) -> String {
    match &volume.info.series_uid {
        Some(uid) => format!("series {uid}"),
        None => "the volume".to_string(),
    }
}

/// Computes the lung mask of `volume`; see the module docs.
///
/// Fails with [`Error::Preprocess`] when no air-filled region of at least
/// `min_component_ml` lies inside the body (not a chest CT, or lungs cut by the field of view).
pub fn lung_mask(volume: &Volume, config: &LungMaskConfig) -> Result<LungMask> {
    config.validate()?;
    let [nz, ny, nx] = volume.shape();
    let fail = |message: String| Error::Preprocess {
        source_name: source_name(volume),
        message,
    };
    if nz == 0 || ny == 0 || nx == 0 {
        return Err(fail("the volume is empty".into()));
    }
    let plane = ny * nx;
    let hu: std::borrow::Cow<[i16]> = match volume.hu.as_slice() {
        Some(s) => s.into(),
        None => volume.hu.iter().copied().collect::<Vec<_>>().into(),
    };
    let spacing = volume.geometry.spacing_mm;
    let voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0;

    // 1 and 2: threshold, then per slice drop air connected to the slice border.
    let threshold = config.threshold_hu;
    let mut m = vec![0u8; nz * plane];
    m.par_chunks_mut(plane)
        .zip(hu.par_chunks(plane))
        .for_each_init(Vec::new, |stack, (ms, hs)| {
            for (d, &h) in ms.iter_mut().zip(hs) {
                *d = (h < threshold) as u8 * AIR;
            }
            flood_from_border(ms, ny, nx, AIR, OUTSIDE, stack);
        });

    // 3: 3-D components of the remaining air.
    let comps = air_components(&mut m, [nz, ny, nx]);
    let Some(largest) = comps.iter().max_by_key(|c| c.voxels) else {
        return Err(fail(format!(
            "no air-filled region inside the body (below {threshold} HU): is this a chest CT?"
        )));
    };
    let largest_ml = largest.voxels as f64 * voxel_ml;
    if largest_ml < config.min_component_ml {
        return Err(fail(format!(
            "no air-filled region of at least {} mL inside the body (the largest holds {largest_ml:.1} mL): is this a chest CT, with the lungs inside the field of view?",
            config.min_component_ml
        )));
    }
    let kept: Vec<&Component> = comps
        .iter()
        .filter(|c| {
            let overlap = (c.z1.min(largest.z1) as i64 - c.z0.max(largest.z0) as i64 + 1).max(0)
                as f64
                / (c.z1 - c.z0 + 1) as f64;
            c.voxels as f64 * voxel_ml >= config.min_component_ml
                && c.voxels as f64 >= config.min_fraction_of_largest * largest.voxels as f64
                && overlap >= config.min_z_overlap
        })
        .collect();
    let mut stack = Vec::new();
    for c in &kept {
        flood_spans(
            &mut m,
            [nz, ny, nx],
            c.seed,
            SEEN,
            LUNG,
            &mut stack,
            |_, _| {},
        );
    }

    // 4: per slice, binarise, fill holes, convex hulls; count and bound.
    let shape2 = RegionShaping {
        hull_max_ratio: config.convex_hull_max_ratio,
        closing_vox: [1, 2].map(|a| (config.closing_mm / spacing[a]).round() as usize),
    };
    let stats: Vec<SliceStats> = m
        .par_chunks_mut(plane)
        .map_init(SliceScratch::default, |scratch, ms| {
            let mut any = 0u8;
            for v in ms.iter_mut() {
                *v = (*v == LUNG) as u8;
                any |= *v;
            }
            if any == 0 {
                return SliceStats::of(&[], 0, 0);
            }
            fill_holes(ms, ny, nx, &mut scratch.stack);
            shape_regions(ms, ny, nx, &shape2, scratch);
            SliceStats::of(ms, ny, nx)
        })
        .collect();
    let mut lung_voxels = 0u64;
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for (z, s) in stats.iter().enumerate() {
        if s.count == 0 {
            continue;
        }
        lung_voxels += s.count;
        lo = [lo[0].min(z), lo[1].min(s.y0), lo[2].min(s.x0)];
        hi = [hi[0].max(z + 1), hi[1].max(s.y1), hi[2].max(s.x1)];
    }
    if lung_voxels == 0 {
        return Err(fail("the lung mask is empty".into()));
    }
    let lung_box = VoxelBox { start: lo, end: hi };

    // 5: dilation.
    let mut mask = Array3::from_shape_vec((nz, ny, nx), m)
        .map_err(|e| fail(format!("internal shape error: {e}")))?;
    if config.dilation_mm > 0.0 {
        let r = spacing.map(|s| (config.dilation_mm / s).round() as usize);
        dilate(&mut mask, r);
    }
    let mask_voxels: u64 = mask
        .as_slice()
        .map(|s| s.par_iter().map(|&v| v as u64).sum())
        .unwrap_or_else(|| mask.iter().map(|&v| v as u64).sum());
    Ok(LungMask {
        mask,
        lung_box,
        lung_volume_ml: lung_voxels as f64 * voxel_ml,
        mask_volume_ml: mask_voxels as f64 * voxel_ml,
        components: kept.len(),
    })
}

/// Sets to `to` every pixel of value `from` connected (4-connectivity) to the slice border.
fn flood_from_border(
    s: &mut [u8],
    ny: usize,
    nx: usize,
    from: u8,
    to: u8,
    stack: &mut Vec<(u32, u32, u32)>,
) {
    let shape = [1, ny, nx];
    for x in 0..nx {
        for y in [0, ny - 1] {
            if s[y * nx + x] == from {
                flood_spans(s, shape, [0, y, x], from, to, stack, |_, _| {});
            }
        }
    }
    for y in 0..ny {
        for x in [0, nx - 1] {
            if s[y * nx + x] == from {
                flood_spans(s, shape, [0, y, x], from, to, stack, |_, _| {});
            }
        }
    }
}

/// A 3-D component of air: a voxel in it, its size and slice range.
#[derive(Debug, Clone, Copy)]
struct Component {
    seed: [usize; 3],
    voxels: u64,
    z0: usize,
    z1: usize,
}

/// Scanline flood fill (6-connectivity in 3-D, 4 in a single slice) from `seed` over
/// voxels equal to `from`, setting them to `to`. Whole runs along x are filled at once;
/// `visit(z, run_length)` is called for each. `stack` holds `(z, y, x)` run seeds.
fn flood_spans(
    m: &mut [u8],
    [nz, ny, nx]: [usize; 3],
    [sz, sy, sx]: [usize; 3],
    from: u8,
    to: u8,
    stack: &mut Vec<(u32, u32, u32)>,
    mut visit: impl FnMut(usize, usize),
) {
    stack.clear();
    stack.push((sz as u32, sy as u32, sx as u32));
    while let Some((z, y, x)) = stack.pop() {
        let (z, y, x) = (z as usize, y as usize, x as usize);
        let row = (z * ny + y) * nx;
        if m[row + x] != from {
            continue;
        }
        let mut l = x;
        while l > 0 && m[row + l - 1] == from {
            l -= 1;
        }
        let mut r = x;
        while r + 1 < nx && m[row + r + 1] == from {
            r += 1;
        }
        m[row + l..=row + r].fill(to);
        visit(z, r - l + 1);
        let scan = |zz: usize, yy: usize, stack: &mut Vec<(u32, u32, u32)>| {
            let rr = (zz * ny + yy) * nx;
            let mut i = l;
            while i <= r {
                if m[rr + i] == from {
                    stack.push((zz as u32, yy as u32, i as u32));
                    while i <= r && m[rr + i] == from {
                        i += 1;
                    }
                } else {
                    i += 1;
                }
            }
        };
        if y > 0 {
            scan(z, y - 1, stack);
        }
        if y + 1 < ny {
            scan(z, y + 1, stack);
        }
        if z > 0 {
            scan(z - 1, y, stack);
        }
        if z + 1 < nz {
            scan(z + 1, y, stack);
        }
    }
}

/// Labels the components of `AIR` voxels (marking them `SEEN`) and returns them.
fn air_components(m: &mut [u8], shape: [usize; 3]) -> Vec<Component> {
    let mut comps = Vec::new();
    let mut stack = Vec::new();
    let mut pos = 0;
    let plane = shape[1] * shape[2];
    while let Some(off) = m[pos..].iter().position(|&v| v == AIR) {
        let i = pos + off;
        let seed = [i / plane, (i % plane) / shape[2], i % shape[2]];
        let (mut voxels, mut z0, mut z1) = (0u64, usize::MAX, 0usize);
        flood_spans(m, shape, seed, AIR, SEEN, &mut stack, |z, n| {
            voxels += n as u64;
            z0 = z0.min(z);
            z1 = z1.max(z);
        });
        comps.push(Component {
            seed,
            voxels,
            z0,
            z1,
        });
        pos = i + 1;
    }
    comps
}

/// Fills the holes of a 0/1 slice: background not connected to the border becomes 1.
/// Works in the box of the foreground grown by one pixel, whose border is all background.
fn fill_holes(s: &mut [u8], ny: usize, nx: usize, stack: &mut Vec<(u32, u32, u32)>) {
    const REACHED: u8 = 2;
    let Some(b) = SliceStats::of(s, ny, nx).bounds() else {
        return;
    };
    let (y0, y1) = (b.0.saturating_sub(1), (b.1 + 1).min(ny));
    let (x0, x1) = (b.2.saturating_sub(1), (b.3 + 1).min(nx));
    let (h, w) = (y1 - y0, x1 - x0);
    let mut sub = Vec::with_capacity(h * w);
    for y in y0..y1 {
        sub.extend_from_slice(&s[y * nx + x0..y * nx + x1]);
    }
    flood_from_border(&mut sub, h, w, 0, REACHED, stack);
    for (k, y) in (y0..y1).enumerate() {
        for (d, &v) in s[y * nx + x0..y * nx + x1]
            .iter_mut()
            .zip(&sub[k * w..(k + 1) * w])
        {
            *d = (v != REACHED) as u8;
        }
    }
}

#[derive(Default)]
struct SliceScratch {
    stack: Vec<(u32, u32, u32)>,
    pixels: Vec<u32>,
    labels: Vec<u32>,
    row_min: Vec<i64>,
    row_max: Vec<i64>,
    points: Vec<(i64, i64)>,
    hull: Vec<(i64, i64)>,
    spans: Vec<(i64, i64, i64)>,
    closing: Vec<u8>,
    out: Vec<u8>,
}

/// How each 2-D region of a slice is reshaped: its convex hull when the hull's area is at
/// most `hull_max_ratio` times the region's (`0`: never), else a closing by a rectangle of
/// half-sides `closing_vox` (y, x) (`[0, 0]`: none).
struct RegionShaping {
    hull_max_ratio: f64,
    closing_vox: [usize; 2],
}

/// Reshapes each 8-connected region of a 0/1 slice (see [`RegionShaping`]).
fn shape_regions(s: &mut [u8], ny: usize, nx: usize, how: &RegionShaping, sc: &mut SliceScratch) {
    let max_ratio = how.hull_max_ratio;
    // Regions are found in `s` and reshaped into `out`, so that one region's hull or
    // closing never joins the regions found after it.
    let mut out = std::mem::take(&mut sc.out);
    out.clear();
    out.extend_from_slice(s);
    let n = ny * nx;
    sc.labels.clear();
    sc.labels.resize(n, 0);
    sc.row_min.clear();
    sc.row_min.resize(ny, i64::MAX);
    sc.row_max.clear();
    sc.row_max.resize(ny, i64::MIN);
    let mut next_label = 0u32;
    for start in 0..n {
        if s[start] == 0 || sc.labels[start] != 0 {
            continue;
        }
        next_label += 1;
        // Flood the region, recording each row's extent.
        let (mut area, mut y0, mut y1) = (0u64, usize::MAX, 0usize);
        sc.pixels.clear();
        sc.labels[start] = next_label;
        sc.pixels.push(start as u32);
        while let Some(i) = sc.pixels.pop() {
            let i = i as usize;
            let (y, x) = (i / nx, i % nx);
            area += 1;
            y0 = y0.min(y);
            y1 = y1.max(y);
            sc.row_min[y] = sc.row_min[y].min(x as i64);
            sc.row_max[y] = sc.row_max[y].max(x as i64);
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (yy, xx) = (y as i64 + dy, x as i64 + dx);
                    if (dy == 0 && dx == 0)
                        || yy < 0
                        || xx < 0
                        || yy >= ny as i64
                        || xx >= nx as i64
                    {
                        continue;
                    }
                    let j = yy as usize * nx + xx as usize;
                    if s[j] != 0 && sc.labels[j] == 0 {
                        sc.labels[j] = next_label;
                        sc.pixels.push(j as u32);
                    }
                }
            }
        }
        sc.points.clear();
        for y in y0..=y1 {
            if sc.row_min[y] <= sc.row_max[y] {
                sc.points.push((sc.row_min[y], y as i64));
                if sc.row_max[y] != sc.row_min[y] {
                    sc.points.push((sc.row_max[y], y as i64));
                }
            }
            sc.row_min[y] = i64::MAX;
            sc.row_max[y] = i64::MIN;
        }
        convex_hull(&mut sc.points, &mut sc.hull);
        if sc.hull.len() < 3 || max_ratio <= 0.0 {
            close_region(&mut out, ny, nx, next_label, [y0, y1], how.closing_vox, sc);
            continue;
        }
        sc.spans.clear();
        let mut hull_area = 0u64;
        for y in y0..=y1 {
            if let Some((a, b)) = polygon_row_span(&sc.hull, y as i64) {
                let (a, b) = (a.max(0), b.min(nx as i64 - 1));
                if a <= b {
                    hull_area += (b - a + 1) as u64;
                    sc.spans.push((y as i64, a, b));
                }
            }
        }
        if hull_area as f64 <= max_ratio * area as f64 {
            for &(y, a, b) in &sc.spans {
                let row = y as usize * nx;
                out[row + a as usize..=row + b as usize].fill(1);
            }
        } else {
            close_region(&mut out, ny, nx, next_label, [y0, y1], how.closing_vox, sc);
        }
    }
    s.copy_from_slice(&out);
    sc.out = out;
}

/// Closes region `label` (rows `y0..=y1`) of a slice by a rectangle of half-sides `r`
/// (y, x) and adds the result to `out`. Works in the region's box grown by `2r`; the
/// slice border does not erode.
fn close_region(
    out: &mut [u8],
    ny: usize,
    nx: usize,
    label: u32,
    [y0, y1]: [usize; 2],
    r: [usize; 2],
    sc: &mut SliceScratch,
) {
    if r == [0, 0] {
        return;
    }
    let (mut x0, mut x1) = (usize::MAX, 0);
    for y in y0..=y1 {
        let row = &sc.labels[y * nx..(y + 1) * nx];
        if let Some(a) = row.iter().position(|&l| l == label) {
            x0 = x0.min(a);
            x1 = x1.max(row.iter().rposition(|&l| l == label).unwrap_or(a));
        }
    }
    if x0 > x1 {
        return;
    }
    // Grown by 2r: r for the dilation, r more of background for the erosion.
    let (by0, by1) = (y0.saturating_sub(2 * r[0]), (y1 + 2 * r[0]).min(ny - 1));
    let (bx0, bx1) = (x0.saturating_sub(2 * r[1]), (x1 + 2 * r[1]).min(nx - 1));
    let (h, w) = (by1 - by0 + 1, bx1 - bx0 + 1);
    let mut buf = std::mem::take(&mut sc.closing);
    buf.clear();
    for y in by0..=by1 {
        buf.extend(
            sc.labels[y * nx + bx0..=y * nx + bx1]
                .iter()
                .map(|&l| (l == label) as u8),
        );
    }
    let mut ring = Vec::new();
    let mut count = Vec::new();
    let mut pass = |buf: &mut Vec<u8>| {
        for row in buf.chunks_mut(w) {
            dilate_line(row, r[1], &mut ring);
        }
        if let Ok(view) = ArrayViewMut2::from_shape((h, w), &mut buf[..]) {
            dilate_axis0(view, r[0], &mut ring, &mut count);
        }
    };
    pass(&mut buf);
    buf.iter_mut().for_each(|v| *v ^= 1);
    pass(&mut buf);
    buf.iter_mut().for_each(|v| *v ^= 1);
    for (k, y) in (by0..=by1).enumerate() {
        for (d, &v) in out[y * nx + bx0..=y * nx + bx1]
            .iter_mut()
            .zip(&buf[k * w..(k + 1) * w])
        {
            *d |= v;
        }
    }
    sc.closing = buf;
}

/// Convex hull (Andrew's monotone chain) of integer points, counter-clockwise, without
/// collinear points. `points` is sorted in place.
pub(crate) fn convex_hull(points: &mut [(i64, i64)], hull: &mut Vec<(i64, i64)>) {
    hull.clear();
    points.sort_unstable();
    if points.len() < 3 {
        hull.extend_from_slice(points);
        return;
    }
    let cross = |o: (i64, i64), a: (i64, i64), b: (i64, i64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    for &p in points.iter() {
        while hull.len() >= 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
            hull.pop();
        }
        hull.push(p);
    }
    let lower = hull.len() + 1;
    for &p in points.iter().rev().skip(1) {
        while hull.len() >= lower && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0 {
            hull.pop();
        }
        hull.push(p);
    }
    hull.pop();
}

/// The integer x range `[a, b]` of pixel centres on row `y` inside a convex polygon (edges
/// included), or `None`.
pub(crate) fn polygon_row_span(poly: &[(i64, i64)], y: i64) -> Option<(i64, i64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for k in 0..poly.len() {
        let (p, q) = (poly[k], poly[(k + 1) % poly.len()]);
        if (y < p.1 && y < q.1) || (y > p.1 && y > q.1) {
            continue;
        }
        if p.1 == q.1 {
            lo = lo.min(p.0.min(q.0) as f64);
            hi = hi.max(p.0.max(q.0) as f64);
        } else {
            let x = p.0 as f64 + (y - p.1) as f64 * (q.0 - p.0) as f64 / (q.1 - p.1) as f64;
            lo = lo.min(x);
            hi = hi.max(x);
        }
    }
    if lo > hi {
        return None;
    }
    let (a, b) = ((lo - 1e-9).ceil() as i64, (hi + 1e-9).floor() as i64);
    (a <= b).then_some((a, b))
}

/// Count and in-plane bounds (half-open) of a 0/1 slice.
struct SliceStats {
    count: u64,
    y0: usize,
    y1: usize,
    x0: usize,
    x1: usize,
}

impl SliceStats {
    /// `(y0, y1, x0, x1)` (half-open) of the foreground, or `None` when empty.
    fn bounds(&self) -> Option<(usize, usize, usize, usize)> {
        (self.count > 0).then_some((self.y0, self.y1, self.x0, self.x1))
    }

    fn of(s: &[u8], ny: usize, nx: usize) -> SliceStats {
        let mut st = SliceStats {
            count: 0,
            y0: usize::MAX,
            y1: 0,
            x0: usize::MAX,
            x1: 0,
        };
        for y in 0..ny {
            let row = &s[y * nx..(y + 1) * nx];
            let c = row.iter().map(|&v| v as u32).sum::<u32>() as u64;
            if c == 0 {
                continue;
            }
            st.count += c;
            st.y0 = st.y0.min(y);
            st.y1 = y + 1;
            let first = row.iter().position(|&v| v != 0).unwrap_or(0);
            let last = row.iter().rposition(|&v| v != 0).unwrap_or(0);
            st.x0 = st.x0.min(first);
            st.x1 = st.x1.max(last + 1);
        }
        st
    }
}

/// In-place binary dilation of a 0/1 array by a cuboid of half-sides `r` (z, y, x) voxels.
pub(crate) fn dilate(mask: &mut Array3<u8>, r: [usize; 3]) {
    if r[2] > 0 || r[1] > 0 {
        mask.axis_iter_mut(Axis(0)).into_par_iter().for_each_init(
            || (Vec::new(), Vec::new()),
            |(ring, count), mut slice| {
                if r[2] > 0 {
                    for mut row in slice.rows_mut() {
                        if let Some(row) = row.as_slice_mut() {
                            dilate_line(row, r[2], ring);
                        }
                    }
                }
                if r[1] > 0 {
                    dilate_axis0(slice.view_mut(), r[1], ring, count);
                }
            },
        );
    }
    if r[0] > 0 {
        mask.axis_iter_mut(Axis(1)).into_par_iter().for_each_init(
            || (Vec::new(), Vec::new()),
            |(ring, count), plane| dilate_axis0(plane, r[0], ring, count),
        );
    }
}

/// Dilates a 0/1 line in place: `out[i] = max(in[i-r ..= i+r])`. Two passes over a copy:
/// the distance to the nearest 1 on the left, then on the right.
fn dilate_line(v: &mut [u8], r: usize, tmp: &mut Vec<u8>) {
    if r == 0 || !v.contains(&1) {
        return;
    }
    tmp.clear();
    tmp.extend_from_slice(v);
    let r = r as i64;
    let mut last = i64::MIN / 2;
    for (i, (o, &t)) in v.iter_mut().zip(tmp.iter()).enumerate() {
        if t != 0 {
            last = i as i64;
        }
        *o = (i as i64 - last <= r) as u8;
    }
    let mut next = i64::MAX / 2;
    for (i, (o, &t)) in v.iter_mut().zip(tmp.iter()).enumerate().rev() {
        if t != 0 {
            next = i as i64;
        }
        *o |= (next - i as i64 <= r) as u8;
    }
}

/// Dilates a 0/1 2-D array in place along its first axis, every column at once and row by
/// row (memory is read in rows): `out[i] = max(in[i-r ..= i+r])`. A running count of ones
/// per column covers the window; the last `r + 1` original rows are kept in `ring`, and
/// windows holding no one at all are skipped.
fn dilate_axis0(mut a: ArrayViewMut2<u8>, r: usize, ring: &mut Vec<u8>, count: &mut Vec<u16>) {
    let (n, w) = a.dim();
    if n == 0 || w == 0 || r == 0 {
        return;
    }
    let mut rows: Vec<&mut [u8]> = Vec::with_capacity(n);
    for row in a.rows_mut() {
        match row.into_slice() {
            Some(s) => rows.push(s),
            None => return dilate_axis0_strided(a, r),
        }
    }
    let nonzero: Vec<bool> = rows.iter().map(|row| row.contains(&1)).collect();
    count.clear();
    count.resize(w, 0);
    ring.clear();
    ring.resize((r + 1) * w, 0);
    let mut ring_nonzero = vec![false; r + 1];
    let mut active = 0usize; // rows with a one in the current window
    let add = |count: &mut [u16], row: &[u8]| {
        for (c, &v) in count.iter_mut().zip(row) {
            *c += v as u16;
        }
    };
    for j in 0..=r.min(n - 1) {
        if nonzero[j] {
            add(count, rows[j]);
            active += 1;
        }
    }
    for i in 0..n {
        let slot = i % (r + 1);
        ring_nonzero[slot] = nonzero[i];
        if active > 0 {
            if nonzero[i] {
                ring[slot * w..(slot + 1) * w].copy_from_slice(rows[i]);
            }
            for (v, &c) in rows[i].iter_mut().zip(count.iter()) {
                *v = (c > 0) as u8;
            }
        }
        if i + r + 1 < n && nonzero[i + r + 1] {
            add(count, rows[i + r + 1]);
            active += 1;
        }
        if i >= r {
            let s = (i - r) % (r + 1);
            if ring_nonzero[s] {
                for (c, &v) in count.iter_mut().zip(&ring[s * w..(s + 1) * w]) {
                    *c -= v as u16;
                }
                active -= 1;
            }
        }
    }
}

/// [`dilate_axis0`] for views whose rows are not contiguous (not met by the mask's own
/// layouts; kept so any view works).
fn dilate_axis0_strided(mut a: ArrayViewMut2<u8>, r: usize) {
    let orig = a.to_owned();
    let n = a.nrows();
    for i in 0..n {
        let (lo, hi) = (i.saturating_sub(r), (i + r).min(n - 1));
        for (k, v) in a.row_mut(i).iter_mut().enumerate() {
            *v = (lo..=hi).any(|j| orig[(j, k)] != 0) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain-loop cuboid dilation.
    fn dilate_naive(m: &Array3<u8>, r: [usize; 3]) -> Array3<u8> {
        let (nz, ny, nx) = m.dim();
        Array3::from_shape_fn((nz, ny, nx), |(z, y, x)| {
            let mut v = 0;
            for zz in z.saturating_sub(r[0])..=(z + r[0]).min(nz - 1) {
                for yy in y.saturating_sub(r[1])..=(y + r[1]).min(ny - 1) {
                    for xx in x.saturating_sub(r[2])..=(x + r[2]).min(nx - 1) {
                        v |= m[(zz, yy, xx)];
                    }
                }
            }
            v
        })
    }

    #[test]
    fn dilation_matches_a_plain_loop() {
        let mut rng = crate::rng::SplitMix64::new(3);
        for (shape, r) in [
            ((7, 9, 11), [1, 2, 3]),
            ((5, 4, 3), [0, 1, 0]),
            ((12, 6, 8), [4, 0, 2]),
            ((3, 3, 3), [5, 5, 5]),
        ] {
            let m = Array3::from_shape_fn(shape, |_| (rng.uniform() < 0.05) as u8);
            let mut ours = m.clone();
            dilate(&mut ours, r);
            assert_eq!(ours, dilate_naive(&m, r), "shape {shape:?} r {r:?}");
        }
    }

    #[test]
    fn convex_hull_and_spans() {
        // An L shape: its hull is the triangle-ish region closing the notch.
        let mut pts = vec![(0, 0), (0, 4), (4, 4), (1, 1), (0, 2), (2, 4), (4, 4)];
        let mut hull = Vec::new();
        convex_hull(&mut pts, &mut hull);
        assert_eq!(hull, vec![(0, 0), (4, 4), (0, 4)]);
        assert_eq!(polygon_row_span(&hull, 0), Some((0, 0)));
        assert_eq!(polygon_row_span(&hull, 2), Some((0, 2)));
        assert_eq!(polygon_row_span(&hull, 4), Some((0, 4)));
        assert_eq!(polygon_row_span(&hull, 5), None);
    }

    #[test]
    fn holes_are_filled_and_notches_closed_per_slice() {
        // A 20x20 disc-ish square region with a hole and a notch on its edge.
        let (ny, nx) = (30, 30);
        let mut s = vec![0u8; ny * nx];
        for y in 5..25 {
            for x in 5..25 {
                s[y * nx + x] = 1;
            }
        }
        s[15 * nx + 15] = 0; // hole
        for y in 12..18 {
            for x in 5..9 {
                s[y * nx + x] = 0; // notch from the left edge
            }
        }
        let mut sc = SliceScratch::default();
        fill_holes(&mut s, ny, nx, &mut sc.stack);
        assert_eq!(s[15 * nx + 15], 1);
        assert_eq!(s[14 * nx + 6], 0);
        let hull_only = RegionShaping {
            hull_max_ratio: 1.5,
            closing_vox: [0, 0],
        };
        shape_regions(&mut s, ny, nx, &hull_only, &mut sc);
        assert_eq!(s[14 * nx + 6], 1, "the notch is inside the hull");
        assert_eq!(s.iter().map(|&v| v as usize).sum::<usize>(), 400);
        // A thin crescent (an arc) is not replaced: its hull would be far larger.
        let mut c = vec![0u8; ny * nx];
        for y in 0..ny {
            for x in 0..nx {
                let d = ((y as f64 - 29.0).powi(2) + (x as f64 - 15.0).powi(2)).sqrt();
                c[y * nx + x] = (10.0..12.0).contains(&d) as u8;
            }
        }
        let before = c.clone();
        shape_regions(&mut c, ny, nx, &hull_only, &mut sc);
        assert_eq!(c, before);
        // Closing fills a narrow notch in a region whose hull is refused, but not a wide bay.
        let mut u = vec![0u8; ny * nx];
        for y in 2..28 {
            for x in 2..28 {
                let bay = (8..22).contains(&x) && y >= 8; // wide bay from the bottom
                let notch = (4..7).contains(&x) && (10..26).contains(&y);
                u[y * nx + x] = !(bay || notch) as u8;
            }
        }
        let closing = RegionShaping {
            hull_max_ratio: 1.01,
            closing_vox: [2, 2],
        };
        shape_regions(&mut u, ny, nx, &closing, &mut sc);
        assert_eq!(u[15 * nx + 5], 1, "notch 3 wide closed");
        assert_eq!(u[15 * nx + 15], 0, "bay 14 wide kept open");
    }
}
