//! Synthetic chest CT phantoms with known nodules, deterministic by seed: body outline with
//! fat and muscle, ribs, spine, sternum, heart and aorta, two lungs with parenchyma texture
//! and a gravity gradient, branching and tapering vessel trees from the hila (the main
//! source of false positives in real CT), trachea and bronchi, and nodules of 3 to 30 mm
//! (solid, part-solid, ground-glass, juxtapleural, juxtavascular), blurred and with noise
//! like a scanner's, on grids of varied spacing, size and origin.
//!
//! Body frame, in millimetres from the body's axis: `x` to the patient's left, `y`
//! posterior, `z` superior (LPS, like world coordinates; the frame is the world shifted).

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::volume::{dot, norm, sub, Geometry, Volume, VolumeInfo};
use ndarray::{Array3, Axis};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Ranges the phantoms' parameters are drawn from (uniformly unless said otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// In-plane pixel spacing, mm. Default 0.6 to 0.9.
    pub in_plane_spacing_mm: [f64; 2],
    /// Slice spacing, mm, one of these. Default 0.625, 1, 1.25, 2, 2.5.
    pub slice_spacing_mm: Vec<f64>,
    /// Field of view (square), mm. Default 360 to 420.
    pub fov_mm: [f64; 2],
    /// Scanned length along z, mm (covers the lungs). Default 270 to 330.
    pub scan_length_mm: [f64; 2],
    /// Half-width of the body (left-right), mm. Default 130 to 160.
    pub body_half_width_mm: [f64; 2],
    /// Half-depth of the body (front-back), mm. Default 95 to 120.
    pub body_half_depth_mm: [f64; 2],
    /// Nodules per phantom (inclusive). Default 1 to 4.
    pub nodules: [usize; 2],
    /// Nodule diameter, mm, drawn log-uniformly. Default 3 to 30.
    pub nodule_diameter_mm: [f64; 2],
    /// Standard deviation of the noise, HU. Default 8 to 25.
    pub noise_hu: [f64; 2],
    /// Gaussian blur (the scanner's point spread), sigma in mm. Default 0.4 to 0.8.
    pub blur_mm: [f64; 2],
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            in_plane_spacing_mm: [0.6, 0.9],
            slice_spacing_mm: vec![0.625, 1.0, 1.25, 2.0, 2.5],
            fov_mm: [360.0, 420.0],
            scan_length_mm: [270.0, 330.0],
            body_half_width_mm: [130.0, 160.0],
            body_half_depth_mm: [95.0, 120.0],
            nodules: [1, 4],
            nodule_diameter_mm: [3.0, 30.0],
            noise_hu: [8.0, 25.0],
            blur_mm: [0.4, 0.8],
        }
    }
}

impl SynthConfig {
    /// Small, coarse phantoms (2.5 mm voxels, about 150 x 150 x 120) for tests and quick
    /// looks; the anatomy is the same.
    pub fn coarse() -> Self {
        SynthConfig {
            in_plane_spacing_mm: [2.5, 2.5],
            slice_spacing_mm: vec![2.5],
            nodule_diameter_mm: [6.0, 30.0],
            ..SynthConfig::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let range = |r: [f64; 2], lo: f64, hi: f64| {
            r[0].is_finite() && r[1].is_finite() && lo <= r[0] && r[0] <= r[1] && r[1] <= hi
        };
        let ok = range(self.in_plane_spacing_mm, 0.1, 10.0)
            && !self.slice_spacing_mm.is_empty()
            && self
                .slice_spacing_mm
                .iter()
                .all(|s| s.is_finite() && (0.1..=10.0).contains(s))
            && range(self.fov_mm, 200.0, 600.0)
            && range(self.scan_length_mm, 200.0, 500.0)
            && range(self.body_half_width_mm, 100.0, 200.0)
            && range(self.body_half_depth_mm, 70.0, 150.0)
            && self.body_half_width_mm[1] * 2.0 + 40.0 <= self.fov_mm[0]
            && self.nodules[0] <= self.nodules[1]
            && self.nodules[1] <= 20
            && range(self.nodule_diameter_mm, 2.0, 40.0)
            && range(self.noise_hu, 0.0, 200.0)
            && range(self.blur_mm, 0.0, 5.0);
        if !ok {
            return Err(Error::InvalidArgument(format!(
                "phantom config {self:?}: ranges must be ordered and plausible (the body must fit \
                 the field of view with 20 mm to spare, at most 20 nodules, 2 to 40 mm)"
            )));
        }
        Ok(())
    }
}

/// What kind of nodule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoduleKind {
    Solid,
    PartSolid,
    GroundGlass,
    /// Solid, touching the pleura (the chest wall).
    Juxtapleural,
    /// Solid, touching a vessel.
    Juxtavascular,
}

/// A nodule of a phantom.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SynthNodule {
    /// Centre, world `(x, y, z)` LPS mm.
    pub centre_world: [f64; 3],
    pub diameter_mm: f64,
    pub kind: NoduleKind,
}

/// A phantom: the CT and its truth.
#[derive(Debug, Clone)]
pub struct Phantom {
    pub volume: Volume,
    pub series_uid: String,
    pub nodules: Vec<SynthNodule>,
}

/// A `2.25.` UID (a UUID as an OID) drawn from the seed.
fn uid(rng: &mut SplitMix64) -> String {
    let v = ((rng.next_u64() as u128) << 64 | rng.next_u64() as u128) >> 2;
    format!("2.25.{v}")
}

fn lerp(r: [f64; 2], t: f64) -> f64 {
    r[0] + (r[1] - r[0]) * t
}

fn add_scaled(a: [f64; 3], d: [f64; 3], s: f64) -> [f64; 3] {
    [a[0] + d[0] * s, a[1] + d[1] * s, a[2] + d[2] * s]
}

fn normalise(a: [f64; 3]) -> [f64; 3] {
    let n = norm(a).max(1e-12);
    [a[0] / n, a[1] / n, a[2] / n]
}

/// A unit vector drawn uniformly on the sphere.
fn random_direction(rng: &mut SplitMix64) -> [f64; 3] {
    normalise([rng.normal(), rng.normal(), rng.normal()])
}

/// The anatomy's shapes, in the body frame.
struct Anatomy {
    /// Body half-axes (x, y).
    a: f64,
    b: f64,
    fat_mm: f64,
    /// Lungs: centre x (right lung at -lx), centre y, half-axes, apex and base z, dome.
    lx: f64,
    ly: f64,
    rx: f64,
    ry: f64,
    apex_z: f64,
    base_z: f64,
    dome_mm: f64,
    /// Heart ellipsoid centre and half-axes.
    heart_c: [f64; 3],
    heart_r: [f64; 3],
    /// Lung texture: value noise on a coarse grid.
    texture: Array3<f32>,
    texture_origin: [f64; 3],
    texture_step_mm: f64,
}

impl Anatomy {
    /// `lung_level(p)`: below 1 inside a lung (0 at its core), above outside.
    fn lung_level(&self, p: [f64; 3]) -> f64 {
        let [x, y, z] = p;
        if z > self.apex_z {
            return 2.0;
        }
        let h = self.apex_z - self.base_z;
        // Taper to the apex over the top 40 % of the height.
        let taper = ((self.apex_z - z) / (0.4 * h))
            .clamp(0.0, 1.0)
            .sqrt()
            .max(0.05);
        let cx = if x < 0.0 { -self.lx } else { self.lx };
        let fx = (x - cx) / (self.rx * taper);
        let fy = (y - self.ly) / (self.ry * taper.max(0.3));
        let f = fx * fx + fy * fy;
        // The diaphragm: a dome rising towards the lung's centre.
        let floor = self.base_z + self.dome_mm * (1.0 - f).max(0.0);
        if z < floor {
            return 2.0;
        }
        let hc = sub(p, self.heart_c);
        let heart = (hc[0] / self.heart_r[0]).powi(2)
            + (hc[1] / self.heart_r[1]).powi(2)
            + (hc[2] / self.heart_r[2]).powi(2);
        if heart < 1.15 {
            return 2.0;
        }
        f
    }

    fn in_lung(&self, p: [f64; 3]) -> bool {
        self.lung_level(p) < 1.0
    }

    fn texture_at(&self, p: [f64; 3]) -> f32 {
        let t = &self.texture;
        let (nz, ny, nx) = t.dim();
        let g = [
            (p[2] - self.texture_origin[2]) / self.texture_step_mm,
            (p[1] - self.texture_origin[1]) / self.texture_step_mm,
            (p[0] - self.texture_origin[0]) / self.texture_step_mm,
        ];
        let dims = [nz, ny, nx];
        let i = [0, 1, 2].map(|a| (g[a].floor().max(0.0) as usize).min(dims[a] - 2));
        let w = [0, 1, 2].map(|a| (g[a] - i[a] as f64).clamp(0.0, 1.0) as f32);
        let at = |dz: usize, dy: usize, dx: usize| t[[i[0] + dz, i[1] + dy, i[2] + dx]];
        let l = |a: f32, b: f32, w: f32| a + (b - a) * w;
        l(
            l(
                l(at(0, 0, 0), at(0, 0, 1), w[2]),
                l(at(0, 1, 0), at(0, 1, 1), w[2]),
                w[1],
            ),
            l(
                l(at(1, 0, 0), at(1, 0, 1), w[2]),
                l(at(1, 1, 0), at(1, 1, 1), w[2]),
                w[1],
            ),
            w[0],
        )
    }

    /// The HU of the static anatomy at `p` (body frame), and whether it is lung.
    fn base_hu(&self, p: [f64; 3]) -> (f32, bool) {
        let [x, y, _] = p;
        let e = (x / self.a).powi(2) + (y / self.b).powi(2);
        if e >= 1.0 {
            return (-1000.0, false);
        }
        let inner = (x / (self.a - self.fat_mm)).powi(2) + (y / (self.b - self.fat_mm)).powi(2);
        let level = self.lung_level(p);
        if level < 1.0 {
            // Parenchyma: texture, and denser where it hangs (posterior).
            let hu = -860.0 + 25.0 * (y / self.b) as f32 + self.texture_at(p);
            return (hu, true);
        }
        // Spine (vertebral body with a cortical rim, spinal canal behind it).
        let (sy, sr) = (0.62 * self.b, 0.17 * self.b);
        let ds = (x * x + (y - sy).powi(2)).sqrt();
        if ds < sr {
            return (if ds > sr - 2.5 { 700.0 } else { 250.0 }, false);
        }
        let dc = (x * x + (y - sy - sr - 0.07 * self.b).powi(2)).sqrt();
        if dc < 0.07 * self.b {
            return (15.0, false);
        }
        // Sternum.
        if x.abs() < 15.0 && (y + self.b - self.fat_mm - 9.0).abs() < 6.0 {
            return (450.0, false);
        }
        // Descending aorta beside the spine.
        let da = ((x - 0.13 * self.a).powi(2) + (y - 0.35 * self.b).powi(2)).sqrt();
        if da < 12.0 && p[2] < self.apex_z - 30.0 {
            return (45.0, false);
        }
        let hc = sub(p, self.heart_c);
        let heart = (hc[0] / self.heart_r[0]).powi(2)
            + (hc[1] / self.heart_r[1]).powi(2)
            + (hc[2] / self.heart_r[2]).powi(2);
        if heart < 1.0 {
            return (40.0, false);
        }
        if inner >= 1.0 {
            return (-100.0, false); // subcutaneous fat
        }
        (45.0, false) // muscle and mediastinal soft tissue
    }
}

/// A tube segment with round ends.
#[derive(Debug, Clone, Copy)]
struct Capsule {
    p0: [f64; 3],
    p1: [f64; 3],
    r0: f64,
    r1: f64,
    hu: f32,
    /// Paint only where the static anatomy is lung.
    lung_only: bool,
}

/// Squared distance from `p` to segment `a`-`b`, and the position along it in [0, 1].
fn segment_distance(p: [f64; 3], a: [f64; 3], b: [f64; 3]) -> (f64, f64) {
    let ab = sub(b, a);
    let t = (dot(sub(p, a), ab) / dot(ab, ab).max(1e-12)).clamp(0.0, 1.0);
    let q = add_scaled(a, ab, t);
    let d = sub(p, q);
    (dot(d, d), t)
}

/// Grows a branching tree of tubes from `start` along `dir` while it stays in the lung.
#[allow(clippy::too_many_arguments)]
fn grow_tree(
    anatomy: &Anatomy,
    start: [f64; 3],
    dir: [f64; 3],
    length: f64,
    radius: f64,
    depth: usize,
    min_radius: f64,
    hu: f32,
    rng: &mut SplitMix64,
    out: &mut Vec<Capsule>,
) {
    if radius < min_radius || depth == 0 {
        return;
    }
    let end = add_scaled(start, dir, length);
    // Branches stay in the lung (the first, from the hilum, may start outside it).
    if !anatomy.in_lung(end) {
        return;
    }
    let r_end = radius * 0.85;
    out.push(Capsule {
        p0: start,
        p1: end,
        r0: radius,
        r1: r_end,
        hu,
        lung_only: true,
    });
    for k in 0..2 {
        // Children turn 20 to 45 degrees off the parent, to opposite sides.
        let mut side = random_direction(rng);
        side = normalise(add_scaled(side, dir, -dot(side, dir)));
        let angle = (20.0 + 25.0 * rng.uniform()).to_radians();
        let s = if k == 0 { 1.0 } else { -1.0 };
        let child = normalise(add_scaled(
            add_scaled([0.0; 3], dir, angle.cos()),
            side,
            s * angle.sin(),
        ));
        let shrink = if k == 0 { 0.82 } else { 0.7 };
        grow_tree(
            anatomy,
            end,
            child,
            length * (0.75 + 0.15 * rng.uniform()),
            r_end * shrink,
            depth - 1,
            min_radius,
            hu,
            rng,
            out,
        );
    }
}

/// A nodule to paint.
struct NodulePaint {
    centre: [f64; 3],
    radius: f64,
    kind: NoduleKind,
    /// Lobulation: amplitude and phases.
    lobes: (f64, f64, f64),
    core_fraction: f64,
    hu_solid: f32,
    hu_ggo: f32,
}

impl NodulePaint {
    /// The nodule's HU at `p`, if `p` is inside it.
    fn hu_at(&self, p: [f64; 3]) -> Option<f32> {
        let d = sub(p, self.centre);
        let r = dot(d, d).sqrt();
        if r > self.radius * 1.2 {
            return None;
        }
        let theta = d[2].atan2((d[0] * d[0] + d[1] * d[1]).sqrt());
        let phi = d[1].atan2(d[0]);
        let (amp, a, b) = self.lobes;
        let edge = self.radius * (1.0 + amp * (3.0 * theta + a).sin() * (2.0 * phi + b).sin());
        if r > edge {
            return None;
        }
        Some(match self.kind {
            NoduleKind::GroundGlass => self.hu_ggo,
            NoduleKind::PartSolid if r > self.core_fraction * edge => self.hu_ggo,
            _ => self.hu_solid,
        })
    }
}

/// Makes phantom `seed` with `config`; see the module docs.
pub fn generate(seed: u64, config: &SynthConfig) -> Result<Phantom> {
    config.validate()?;
    let mut rng = SplitMix64::new(seed ^ 0x5A17_C0DE_0000_0001);
    let series_uid = uid(&mut rng);
    // The grid.
    let dxy = lerp(config.in_plane_spacing_mm, rng.uniform());
    let dz = config.slice_spacing_mm[rng.below(config.slice_spacing_mm.len())];
    let fov = lerp(config.fov_mm, rng.uniform());
    let length = lerp(config.scan_length_mm, rng.uniform());
    let n_xy = (fov / dxy).round() as usize;
    let nz = (length / dz).round().max(2.0) as usize;
    // World position of the body axis and of the scan's first slice.
    let body = [
        10.0 * (2.0 * rng.uniform() - 1.0),
        10.0 * (2.0 * rng.uniform() - 1.0),
    ];
    let z0 = -length - 50.0 + 100.0 * rng.uniform();
    let origin = [
        body[0] - fov / 2.0 + 10.0 * (2.0 * rng.uniform() - 1.0),
        body[1] - fov / 2.0 + 10.0 * (2.0 * rng.uniform() - 1.0),
        z0,
    ];
    let geometry = Geometry::new([dz, dxy, dxy], origin);
    let frame = |zyx: [f64; 3]| -> [f64; 3] {
        let w = geometry.voxel_to_world(zyx);
        [w[0] - body[0], w[1] - body[1], w[2] - z0 - length / 2.0]
    };
    let to_world = |p: [f64; 3]| [p[0] + body[0], p[1] + body[1], p[2] + z0 + length / 2.0];

    // The anatomy.
    let a = lerp(config.body_half_width_mm, rng.uniform());
    let b = lerp(config.body_half_depth_mm, rng.uniform());
    let fat_mm = 8.0 + 12.0 * rng.uniform();
    let half = length / 2.0;
    let apex_z = half - 10.0 - 15.0 * rng.uniform();
    let base_z = -half + 15.0 + 20.0 * rng.uniform();
    let h = apex_z - base_z;
    let (tz, ty, tx) = (
        (length / 6.0).ceil() as usize + 3,
        (2.0 * b / 6.0).ceil() as usize + 3,
        (2.0 * a / 6.0).ceil() as usize + 3,
    );
    let mut texture = Array3::<f32>::zeros((tz, ty, tx));
    texture
        .iter_mut()
        .for_each(|v| *v = (rng.normal() * 22.0) as f32);
    let anatomy = Anatomy {
        a,
        b,
        fat_mm,
        lx: 0.47 * a,
        ly: 0.08 * b,
        rx: 0.34 * a,
        ry: 0.68 * b,
        apex_z,
        base_z,
        dome_mm: 25.0 + 15.0 * rng.uniform(),
        heart_c: [0.12 * a, -0.32 * b, base_z + 0.22 * h],
        heart_r: [0.3 * a, 0.38 * b, 0.2 * h],
        texture,
        texture_origin: [-a - 6.0, -b - 6.0, -half - 6.0],
        texture_step_mm: 6.0,
    };

    // Tubes: ribs, vessels, airways.
    let mut capsules = Vec::new();
    let rib_gap = 22.0 + 6.0 * rng.uniform();
    let mut zr = apex_z - 5.0;
    while zr > base_z - 20.0 {
        for side in [-1.0, 1.0] {
            let (ea, eb) = (a - fat_mm - 6.0, b - fat_mm - 6.0);
            let steps = 14;
            let pt = |t: f64| {
                let phi = (75.0 - 140.0 * t).to_radians();
                [side * ea * phi.cos(), eb * phi.sin(), zr - 35.0 * t]
            };
            for s in 0..steps {
                let (t0, t1) = (s as f64 / steps as f64, (s + 1) as f64 / steps as f64);
                capsules.push(Capsule {
                    p0: pt(t0),
                    p1: pt(t1),
                    r0: 4.5,
                    r1: 4.5,
                    hu: 550.0,
                    lung_only: false,
                });
            }
        }
        zr -= rib_gap;
    }
    let carina = [0.0, -0.05 * b, apex_z - 0.28 * h];
    let mut vessels = Vec::new();
    for side in [-1.0, 1.0] {
        let hilum = [side * 0.24 * a, 0.02 * b, carina[2] - 25.0];
        // Trees up, down (front and back), lateral, forward and back.
        for dir in [
            [side * 0.3, 0.0, 1.0],
            [side * 0.4, -0.5, 0.8],
            [side * 0.3, 0.4, -1.0],
            [side * 0.3, -0.4, -1.0],
            [side * 1.0, 0.0, -0.3],
            [side * 1.0, -0.6, -0.1],
            [side * 1.0, 0.7, 0.1],
            [side * 0.6, 0.8, -0.6],
        ] {
            let jitter = random_direction(&mut rng);
            let d = normalise(add_scaled(normalise(dir), jitter, 0.25));
            grow_tree(
                &anatomy,
                add_scaled(hilum, d, 10.0),
                d,
                24.0,
                4.0,
                10,
                0.5,
                40.0,
                &mut rng,
                &mut vessels,
            );
        }
    }
    let mut airways = Vec::new();
    // Trachea from above the apex to the carina, then main bronchi and a few generations.
    let trachea_top = [0.0, -0.05 * b, half + 5.0];
    airways.push((trachea_top, carina, 9.0));
    for side in [-1.0, 1.0] {
        let bronchus_end = [side * 0.22 * a, 0.0, carina[2] - 22.0];
        airways.push((carina, bronchus_end, 6.5));
        let mut tree = Vec::new();
        for dir in [[side * 0.4, 0.1, 1.0], [side * 0.5, 0.2, -1.0]] {
            let d = normalise(dir);
            grow_tree(
                &anatomy,
                add_scaled(bronchus_end, d, 8.0),
                d,
                25.0,
                4.0,
                4,
                1.2,
                -1000.0,
                &mut rng,
                &mut tree,
            );
        }
        airways.extend(tree.into_iter().map(|c| (c.p0, c.p1, c.r0)));
    }

    // Nodules.
    let n_nodules = config.nodules[0] + rng.below(config.nodules[1] - config.nodules[0] + 1);
    let mut paints: Vec<NodulePaint> = Vec::new();
    let mut truth = Vec::new();
    let kinds = [
        NoduleKind::Solid,
        NoduleKind::PartSolid,
        NoduleKind::GroundGlass,
        NoduleKind::Juxtapleural,
        NoduleKind::Juxtavascular,
    ];
    // The 26 directions to the neighbours of a voxel: where a nodule's rim is probed.
    let directions: Vec<[f64; 3]> = (0..27)
        .map(|i| {
            [
                (i % 3) as f64 - 1.0,
                ((i / 3) % 3) as f64 - 1.0,
                (i / 9) as f64 - 1.0,
            ]
        })
        .filter(|d| d.iter().any(|v| *v != 0.0))
        .map(normalise)
        .collect();
    let [dlo, dhi] = config.nodule_diameter_mm;
    'nodules: for _ in 0..n_nodules {
        let kind = kinds[rng.below(kinds.len())];
        let diameter = (dlo.ln() + (dhi.ln() - dlo.ln()) * rng.uniform()).exp();
        let r = diameter / 2.0;
        for _try in 0..400 {
            let centre = match kind {
                NoduleKind::Juxtavascular => {
                    let thick: Vec<&Capsule> = vessels.iter().filter(|c| c.r1 >= 1.2).collect();
                    if thick.is_empty() {
                        continue;
                    }
                    let v = thick[rng.below(thick.len())];
                    let t = rng.uniform();
                    let axis = normalise(sub(v.p1, v.p0));
                    let q = add_scaled(v.p0, sub(v.p1, v.p0), t);
                    let mut side = random_direction(&mut rng);
                    side = normalise(add_scaled(side, axis, -dot(side, axis)));
                    add_scaled(q, side, v.r0 + 0.8 * r)
                }
                _ => [
                    (2.0 * rng.uniform() - 1.0) * a,
                    (2.0 * rng.uniform() - 1.0) * b,
                    base_z + h * rng.uniform(),
                ],
            };
            if !anatomy.in_lung(centre) {
                continue;
            }
            let inside = directions
                .iter()
                .filter(|d| anatomy.in_lung(add_scaled(centre, **d, 1.15 * r)))
                .count();
            let placed = match kind {
                // Touching the pleura: a quarter to two thirds of the rim outside the lung,
                // and the centre a little inside.
                NoduleKind::Juxtapleural => {
                    (7..=19).contains(&(directions.len() - inside))
                        && directions
                            .iter()
                            .all(|d| anatomy.in_lung(add_scaled(centre, *d, 0.3 * r)))
                }
                _ => inside == directions.len(),
            };
            let apart = paints.iter().all(|p| {
                dot(sub(p.centre, centre), sub(p.centre, centre)).sqrt() > p.radius + r + 8.0
            });
            if !(placed && apart) {
                continue;
            }
            let solid = (15.0 + 40.0 * rng.uniform()) as f32;
            paints.push(NodulePaint {
                centre,
                radius: r,
                kind,
                lobes: (
                    0.12 * rng.uniform(),
                    6.3 * rng.uniform(),
                    6.3 * rng.uniform(),
                ),
                core_fraction: 0.35 + 0.25 * rng.uniform(),
                hu_solid: solid,
                hu_ggo: (-650.0 + 200.0 * rng.uniform()) as f32,
            });
            truth.push(SynthNodule {
                centre_world: to_world(centre),
                diameter_mm: diameter,
                kind,
            });
            continue 'nodules;
        }
        // No room found for this one (rare): the phantom has one nodule fewer.
    }

    // Rasterise: static anatomy, tubes, nodules; then blur and noise.
    let shape = [nz, n_xy, n_xy];
    let mut hu = Array3::<f32>::zeros(shape);
    let mut lung = Array3::<u8>::zeros(shape);
    hu.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(lung.axis_iter_mut(Axis(0)).into_par_iter())
        .enumerate()
        .for_each(|(z, (mut plane, mut lplane))| {
            for ((y, x), v) in plane.indexed_iter_mut() {
                let p = frame([z as f64, y as f64, x as f64]);
                let (value, is_lung) = anatomy.base_hu(p);
                *v = value;
                lplane[[y, x]] = is_lung as u8;
            }
        });
    let to_vox = |p: [f64; 3]| geometry.world_to_voxel(to_world(p));
    let paint =
        |hu: &mut Array3<f32>,
         lo: [f64; 3],
         hi: [f64; 3],
         f: &(dyn Fn([f64; 3], usize, usize, usize) -> Option<f32> + Sync)| {
            let (a, b) = (to_vox(lo), to_vox(hi));
            let start = [0, 1, 2].map(|k| (a[k].min(b[k]).floor().max(0.0)) as usize);
            let end =
                [0, 1, 2].map(|k| ((a[k].max(b[k]).ceil() + 1.0).max(0.0) as usize).min(shape[k]));
            for z in start[0]..end[0] {
                for y in start[1]..end[1] {
                    for x in start[2]..end[2] {
                        let p = frame([z as f64, y as f64, x as f64]);
                        if let Some(v) = f(p, z, y, x) {
                            hu[[z, y, x]] = v;
                        }
                    }
                }
            }
        };
    let bbox = |c: &Capsule| {
        let r = c.r0.max(c.r1);
        (
            [0, 1, 2].map(|k| c.p0[k].min(c.p1[k]) - r),
            [0, 1, 2].map(|k| c.p0[k].max(c.p1[k]) + r),
        )
    };
    for c in capsules.iter().chain(vessels.iter()) {
        let (lo, hi) = bbox(c);
        let lung = &lung;
        paint(&mut hu, lo, hi, &|p, z, y, x| {
            if c.lung_only && lung[[z, y, x]] == 0 {
                return None;
            }
            let (d2, t) = segment_distance(p, c.p0, c.p1);
            let r = c.r0 + (c.r1 - c.r0) * t;
            (d2 <= r * r).then_some(c.hu)
        });
    }
    // Airways: a wall of soft tissue, then the air inside.
    for &(p0, p1, r) in &airways {
        let wall = (0.15 * r).max(1.0);
        let c = Capsule {
            p0,
            p1,
            r0: r + wall,
            r1: r + wall,
            hu: 30.0,
            lung_only: false,
        };
        let (lo, hi) = bbox(&c);
        paint(&mut hu, lo, hi, &|p, _, _, _| {
            let (d2, _) = segment_distance(p, p0, p1);
            if d2 <= r * r {
                Some(-1000.0)
            } else if d2 <= (r + wall).powi(2) {
                Some(30.0)
            } else {
                None
            }
        });
    }
    for n in &paints {
        let e = 1.2 * n.radius;
        let lo = [n.centre[0] - e, n.centre[1] - e, n.centre[2] - e];
        let hi = [n.centre[0] + e, n.centre[1] + e, n.centre[2] + e];
        paint(&mut hu, lo, hi, &|p, _, _, _| n.hu_at(p));
    }
    drop(lung);
    let blur = lerp(config.blur_mm, rng.uniform());
    let sigma_vox = [(blur.max(0.35 * dz)) / dz, blur / dxy, blur / dxy];
    for (axis, s) in sigma_vox.iter().enumerate() {
        gaussian_blur_axis(&mut hu, axis, *s);
    }
    let noise = lerp(config.noise_hu, rng.uniform());
    let noise_seed = rng.next_u64();
    let mut out = Array3::<i16>::zeros(shape);
    out.axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(hu.axis_iter(Axis(0)).into_par_iter())
        .enumerate()
        .for_each(|(z, (mut o, h))| {
            let mut r =
                SplitMix64::new(noise_seed ^ (z as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for (o, &h) in o.iter_mut().zip(h.iter()) {
                *o = (h as f64 + noise * r.normal())
                    .round()
                    .clamp(-1024.0, 3071.0) as i16;
            }
        });
    let mut volume = Volume::new(out, geometry)?;
    volume.info = VolumeInfo {
        series_uid: Some(series_uid.clone()),
        modality: Some("CT".into()),
        format: "synthetic".into(),
        slice_count: nz,
        ..VolumeInfo::default()
    };
    Ok(Phantom {
        volume,
        series_uid,
        nodules: truth,
    })
}

/// Blurs `a` along `axis` with a Gaussian of `sigma` voxels (edges clamped).
fn gaussian_blur_axis(a: &mut Array3<f32>, axis: usize, sigma: f64) {
    if sigma < 0.1 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as i64;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let n = a.shape()[axis];
    ndarray::Zip::from(a.lanes_mut(Axis(axis))).par_for_each(|mut lane| {
        let src: Vec<f32> = lane.iter().copied().collect();
        for (i, v) in lane.iter_mut().enumerate() {
            let mut acc = 0.0;
            for (k, w) in kernel.iter().enumerate() {
                let j = (i as i64 + k as i64 - radius).clamp(0, n as i64 - 1) as usize;
                acc += w * src[j];
            }
            *v = acc;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_around(v: &Volume, world: [f64; 3], r_vox: i64) -> f64 {
        let c = v.world_to_voxel(world).map(|x| x.round() as i64);
        let s = v.shape();
        let mut sum = 0.0;
        let mut n = 0.0;
        for dz in -r_vox..=r_vox {
            for dy in -r_vox..=r_vox {
                for dx in -r_vox..=r_vox {
                    let p = [c[0] + dz, c[1] + dy, c[2] + dx];
                    if (0..3).all(|a| p[a] >= 0 && (p[a] as usize) < s[a]) {
                        sum += v.hu[p.map(|x| x as usize)] as f64;
                        n += 1.0;
                    }
                }
            }
        }
        sum / n
    }

    #[test]
    fn phantoms_are_deterministic_and_their_truth_is_in_the_image() {
        let config = SynthConfig::coarse();
        let a = generate(7, &config).unwrap();
        let b = generate(7, &config).unwrap();
        assert_eq!(a.volume.hu, b.volume.hu);
        assert_eq!(a.nodules, b.nodules);
        assert_eq!(a.series_uid, b.series_uid);
        let c = generate(8, &config).unwrap();
        assert_ne!(a.series_uid, c.series_uid);
        assert_ne!(a.volume.shape(), [0; 3]);

        let mut kinds = std::collections::HashSet::new();
        let mut count = 0;
        for seed in 0..12 {
            let p = generate(seed, &config).unwrap();
            let [nz, ny, nx] = p.volume.shape();
            let g = p.volume.geometry;
            assert!((357.0..=423.0).contains(&(ny as f64 * g.spacing_mm[1])));
            assert!((267.0..=333.0).contains(&(nz as f64 * g.spacing_mm[0])));
            assert_eq!(ny, nx);
            assert!(!p.nodules.is_empty() && p.nodules.len() <= 4);
            for n in &p.nodules {
                count += 1;
                kinds.insert(n.kind);
                assert!((6.0..=30.0).contains(&n.diameter_mm), "{n:?}");
                // The nodule's core is nodule-dense; the air 2.5 diameters away (lung or
                // outside) is not, in at least one direction.
                let core = mean_around(&p.volume, n.centre_world, 0);
                match n.kind {
                    NoduleKind::GroundGlass => {
                        assert!(
                            (-800.0..-300.0).contains(&core),
                            "seed {seed}: {n:?}: {core}"
                        )
                    }
                    _ if n.diameter_mm >= 8.0 => {
                        assert!(core > -300.0, "seed {seed}: {n:?}: {core}")
                    }
                    _ => assert!(core > -600.0, "seed {seed}: {n:?}: {core}"),
                }
                let far = [
                    [1.0, 0.0, 0.0],
                    [-1.0, 0.0, 0.0],
                    [0.0, 1.0, 0.0],
                    [0.0, -1.0, 0.0],
                ]
                .iter()
                .map(|d| {
                    let w = add_scaled(n.centre_world, *d, 1.3 * n.diameter_mm);
                    mean_around(&p.volume, w, 0)
                })
                .fold(f64::INFINITY, f64::min);
                assert!(far < -700.0, "seed {seed}: {n:?}: darkest neighbour {far}");
            }
        }
        assert!(count >= 12);
        assert!(kinds.len() >= 4, "kinds drawn: {kinds:?}");
    }

    #[test]
    fn the_anatomy_is_a_chest() {
        let p = generate(3, &SynthConfig::coarse()).unwrap();
        let v = &p.volume;
        let [nz, ny, nx] = v.shape();
        let g = v.geometry;
        let hist = |lo: i16, hi: i16| {
            v.hu.iter().filter(|&&h| (lo..hi).contains(&h)).count() as f64
                * g.spacing_mm.iter().product::<f64>()
                / 1000.0
        };
        let lung_ml = hist(-950, -700);
        let bone_ml = hist(300, 3072);
        let soft_ml = hist(-150, 150);
        assert!((2500.0..9000.0).contains(&lung_ml), "lung {lung_ml} mL");
        assert!(bone_ml > 100.0, "bone {bone_ml} mL");
        assert!(soft_ml > lung_ml, "soft tissue {soft_ml} mL");
        // Air outside the body in the corners of a middle slice.
        assert!(v.hu[[nz / 2, 1, 1]] < -900 && v.hu[[nz / 2, ny - 2, nx - 2]] < -900);
        // Vessels: the middle slice's lung holds small bright spots.
        let bright_in_lung = (0..ny)
            .flat_map(|y| (0..nx).map(move |x| (y, x)))
            .filter(|&(y, x)| {
                let h = v.hu[[nz / 2, y, x]];
                h > -300 && {
                    let w = v.voxel_to_world([(nz / 2) as f64, y as f64, x as f64]);
                    // Within the lungs' lateral thirds (away from mediastinum and wall).
                    let dx = (w[0] - (v.origin_mm()[0] + nx as f64 * g.spacing_mm[2] / 2.0)).abs();
                    (60.0..110.0).contains(&dx)
                }
            })
            .count();
        assert!(bright_in_lung > 5, "{bright_in_lung} vessel voxels");
    }
}
