//! From network outputs to nodules in world millimetres: the head's map layout, decoding,
//! training targets ([`head`]), 3-D non-maximum suppression ([`nms`]), and detection
//! outputs (LUNA16 CSV, JSON, the overlay PNG in [`overlay`]).
//!
//! The network itself (burn) builds on these; everything here is plain Rust on `ndarray`
//! and runs the same on every device.

pub mod head;
pub mod nms;
pub mod overlay;
pub mod retina;

pub use head::{
    cube_iou, decode_patch, encode_targets, ideal_output, Candidate, HeadLayout, TargetConfig,
    VoxelNodule,
};
pub use nms::{keep_most_probable, nms};
pub use overlay::{render_overlay, write_overlay_png};

use crate::error::{Error, Result};
use crate::volume::Geometry;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How candidates become detections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeConfig {
    /// Candidates below this probability are dropped before NMS. Default 0.1.
    pub min_probability: f32,
    /// NMS drops a candidate whose cube overlaps a more probable kept one by more than
    /// this IoU. Default 0.1.
    pub nms_iou: f64,
    /// NMS also drops a candidate whose centre lies within a more probable kept one's
    /// radius (LUNA16 would count it a double detection of the same nodule). Default true.
    pub suppress_inside: bool,
    /// A kept candidate's centre becomes the probability-weighted mean of the centres of
    /// the candidates its cube suppressed ([`nms::NmsConfig::fuse_centres`]). Default false.
    pub fuse_centres: bool,
    /// At most this many detections per scan. Default 100.
    pub max_detections: usize,
    /// At most this many candidates are held for NMS, the most probable (in NMS's
    /// order): a scan's list is cut to them as it grows, at twice that. At least 1.
    /// Default 1,000,000 (40 MB, 80 MB before a cut). A
    /// network that finds every cell probable (a model file can make one) otherwise
    /// holds anchors x cells candidates: 57.8 million (3.5 GB) on the demo phantom for a
    /// 1.7 MB file with 64 anchors.
    pub max_candidates: usize,
    /// Test-time augmentation: each tile is also run mirrored, and the output maps are
    /// averaged before decoding ([`Flips`]). Default none.
    pub flips: Flips,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            min_probability: 0.1,
            nms_iou: 0.1,
            suppress_inside: true,
            fuse_centres: false,
            max_detections: 100,
            max_candidates: 1_000_000,
            flips: Flips::None,
        }
    }
}

/// Test-time flips: the mirror images of each tile the network also sees. The output map of
/// a mirrored tile is mirrored back (cells reversed along the flipped axes, those axes'
/// centre offsets negated: output cells are centred symmetrically in the tile, see
/// [`head`]) and the maps are averaged (logits, offsets and log-sizes) before decoding.
/// Each flip is one more pass of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flips {
    /// The tile as it is: one pass.
    #[default]
    None,
    /// Also mirrored left to right (along x): two passes.
    X,
    /// All 8 combinations of mirroring along z, y and x: eight passes.
    All,
}

impl Flips {
    /// What `lungcad detect`, `lungcad demo` and Python's `Detector.detect` use when not
    /// told: [`Flips::X`]. On the shipped model's 20 development phantoms it raised the CPM
    /// from 0.910 to 0.950 for twice the network time (models/phantom-v2/README.md). The
    /// library's [`DecodeConfig`] default stays [`Flips::None`], the network alone.
    pub const RECOMMENDED: Flips = Flips::X;

    /// The flips a tool runs (`lungcad detect`, `demo`, Python's `Detector.detect`):
    /// `requested`, or [`Flips::RECOMMENDED`] when none is. A MONAI RetinaNet (`monai`)
    /// runs MONAI's pipeline, which has no test-time flips: it takes [`Flips::None`] and
    /// refuses others.
    pub fn for_tool(requested: Option<Flips>, monai: bool) -> Result<Flips> {
        match (requested, monai) {
            (Some(f), true) if f != Flips::None => Err(Error::InvalidArgument(format!(
                "flips {}: MONAI RetinaNet models run MONAI's pipeline, which has no test-time flips",
                f.name()
            ))),
            (Some(f), _) => Ok(f),
            (None, true) => Ok(Flips::None),
            (None, false) => Ok(Flips::RECOMMENDED),
        }
    }

    /// The name `--flips` and Python take: none, x or all.
    pub fn name(self) -> &'static str {
        match self {
            Flips::None => "none",
            Flips::X => "x",
            Flips::All => "all",
        }
    }

    /// The flipped axes `(z, y, x)` of each pass, the unflipped pass first.
    pub fn passes(self) -> Vec<[bool; 3]> {
        match self {
            Flips::None => vec![[false; 3]],
            Flips::X => vec![[false; 3], [false, false, true]],
            Flips::All => (0..8u8)
                .map(|m| [m & 4 != 0, m & 2 != 0, m & 1 != 0])
                .collect(),
        }
    }
}

impl std::str::FromStr for Flips {
    type Err = Error;
    fn from_str(s: &str) -> Result<Flips> {
        match s {
            "none" => Ok(Flips::None),
            "x" => Ok(Flips::X),
            "all" => Ok(Flips::All),
            other => Err(Error::InvalidArgument(format!(
                "flips {other:?}: use none, x or all"
            ))),
        }
    }
}

/// A detected nodule in world coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Centre, world `(x, y, z)` LPS millimetres.
    pub centre_world: [f64; 3],
    pub diameter_mm: f64,
    pub probability: f32,
}

/// NMS over `candidates` (centres in voxels of `grid`), then each kept one mapped to world
/// millimetres through `grid`, most probable first.
pub fn detections(
    candidates: Vec<Candidate>,
    grid: &Geometry,
    config: &DecodeConfig,
) -> Vec<Detection> {
    let kept = nms(
        candidates
            .into_iter()
            .filter(|c| c.probability >= config.min_probability)
            .collect(),
        grid.spacing_mm,
        &nms::NmsConfig {
            max_iou: config.nms_iou,
            suppress_inside: config.suppress_inside,
            fuse_centres: config.fuse_centres,
            max_keep: config.max_detections,
        },
    );
    kept.into_iter()
        .map(|c| Detection {
            centre_world: grid.voxel_to_world(c.centre_vox),
            diameter_mm: c.diameter_mm,
            probability: c.probability,
        })
        .collect()
}

/// Detections as rows of a LUNA16 submission CSV, all under `series_uid`.
pub fn to_candidates(detections: &[Detection], series_uid: &str) -> Vec<crate::eval::Candidate> {
    detections
        .iter()
        .map(|d| crate::eval::Candidate {
            seriesuid: series_uid.to_string(),
            coord_x: d.centre_world[0],
            coord_y: d.centre_world[1],
            coord_z: d.centre_world[2],
            probability: d.probability as f64,
        })
        .collect()
}

/// Writes detections as a LUNA16 submission CSV: `seriesuid,coordX,coordY,coordZ,probability`.
pub fn write_csv(detections: &[Detection], series_uid: &str, path: impl AsRef<Path>) -> Result<()> {
    crate::eval::write_predictions_csv(&to_candidates(detections, series_uid), path)
}

/// Detections as JSON: `{"seriesuid", "detections": [{coordX, coordY, coordZ, diameter_mm,
/// probability}]}`.
pub fn to_json(detections: &[Detection], series_uid: &str) -> serde_json::Value {
    serde_json::json!({
        "seriesuid": series_uid,
        "detections": detections.iter().map(|d| serde_json::json!({
            "coordX": d.centre_world[0],
            "coordY": d.centre_world[1],
            "coordZ": d.centre_world[2],
            "diameter_mm": d.diameter_mm,
            "probability": d.probability,
        })).collect::<Vec<_>>(),
    })
}

/// Writes [`to_json`] to `path`.
pub fn write_json(
    detections: &[Detection],
    series_uid: &str,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    let text = serde_json::to_string_pretty(&to_json(detections, series_uid))
        .map_err(|e| Error::InvalidArgument(format!("JSON: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}
