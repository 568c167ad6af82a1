//! # lungcad
//!
//! Find lung nodules in chest CT. This crate loads CT (DICOM series, LUNA16/Tianchi
//! MetaImage, NIfTI) into a geometry-aware HU [`Volume`], preprocesses it ([`preprocess`]:
//! resampling, lung mask, crop, windowing, 128³ patches), and evaluates detections with
//! the LUNA16 FROC/CPM protocol ([`eval`]).
//!
//! ## Conventions (used everywhere in lungcad)
//!
//! * **Voxel arrays are `(z, y, x)`**: slice, row, column. Spacing is given in the same
//!   order: `spacing_mm = (z, y, x)`.
//! * **World coordinates are `(x, y, z)` in LPS millimetres**, as in DICOM, ITK and the
//!   LUNA16 CSVs: +x towards the patient's left, +y towards posterior, +z towards head.
//!   NIfTI's RAS affine is converted to LPS on load.
//! * A [`Geometry`] maps one to the other: `origin_mm` is the world point of voxel
//!   `(0, 0, 0)`'s centre, `direction[a]` the world unit vector of voxel axis `a`.
//! * Units are in names: `spacing_mm`, `diameter_mm`, `_vox` / `_world` suffixes.
//! * HU voxels are `i16`. DICOM pixel padding (PixelPaddingValue, and the range up to
//!   PixelPaddingRangeLimit) becomes -1024 HU (air), so padding is never taken for tissue.
//! * No patient identifiers (PatientName, PatientID, BirthDate, ...) are read into any
//!   structure, log, error or output: series are named by SeriesInstanceUID.
//! * Untrusted sizes are bounded by [`Limits`], checked before allocating.

// `Error` carries the file path or series UID and the values that were wrong; it is large by
// design and only built on the cold error path.
#![allow(clippy::result_large_err)]

pub mod detect;
pub mod error;
pub mod eval;
pub mod io;
pub mod limits;
pub mod model;
pub mod preprocess;
pub(crate) mod render;
pub mod rng;
pub mod synth;
pub mod train;
pub mod volume;

pub use error::{Error, Result, SeriesProblem};
pub use io::{load, save, GantryTilt, LoadConfig};
pub use limits::Limits;
pub use volume::{Geometry, Volume, VolumeInfo};
