//! Reading and writing CT volumes: DICOM series, MetaImage, NIfTI.

pub mod dicom;
pub mod metaimage;
pub mod nifti;

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::volume::Volume;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How to load a CT.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadConfig {
    /// DICOM only: the SeriesInstanceUID to load. Default: the CT series with the most slices.
    pub series_uid: Option<String>,
    /// DICOM only: accept a series whose Modality is not CT.
    pub allow_modality: bool,
    /// DICOM only: what to do with a gantry-tilted series (default: correct it).
    pub gantry_tilt: GantryTilt,
    /// DICOM only: which stack to load when the series' planes form several (they differ
    /// in orientation, rows and columns, or pixel spacing: a localizer stored in the CT
    /// series, two reconstructions under one UID), numbered from 1 as the load warning
    /// names them: the largest first, equals in the order of their first files. Default:
    /// the largest; two largest of the same size are refused
    /// ([`SeriesProblem::SeveralStacks`](crate::SeriesProblem)).
    pub stack: Option<usize>,
    /// Bounds on untrusted sizes.
    pub limits: Limits,
}

/// DICOM only: what loading does with a gantry-tilted series, one whose slice positions do
/// not run along the slice normal (the scanner's gantry was tilted, so each slice is shifted
/// in its own plane against the one before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GantryTilt {
    /// Resample each slice in its plane (bilinear) onto a grid that runs along the slice
    /// normal and covers every slice, so that each voxel lies where its world coordinates
    /// say, with a warning naming the angle. Tilts over
    /// [`MAX_CORRECTED_TILT_DEG`](dicom::assemble::MAX_CORRECTED_TILT_DEG) are refused.
    /// Slices shifted in their plane off a straight stack are placed the same way.
    #[default]
    Correct,
    /// Refuse a tilted series with [`SeriesProblem::GantryTilt`](crate::SeriesProblem), and
    /// one whose slices are shifted in their plane off a straight stack with
    /// [`SeriesProblem::ShiftedSlices`](crate::SeriesProblem).
    Refuse,
}

impl std::str::FromStr for GantryTilt {
    type Err = Error;
    fn from_str(s: &str) -> Result<GantryTilt> {
        match s {
            "correct" => Ok(GantryTilt::Correct),
            "refuse" => Ok(GantryTilt::Refuse),
            other => Err(Error::InvalidArgument(format!(
                "gantry tilt {other:?}: use correct or refuse"
            ))),
        }
    }
}

/// The on-disk formats lungcad reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dicom,
    MetaImage,
    Nifti,
}

impl Format {
    /// The format a path names by its extension (`.mhd`, `.mha`, `.nii`, `.nii.gz`); a folder
    /// or any other file is taken as DICOM.
    pub fn of_path(path: &Path) -> Format {
        match Format::of_file_name(path) {
            Some(f) if !path.is_dir() => f,
            _ => Format::Dicom,
        }
    }

    /// MetaImage or NIfTI when the file name ends in one of their extensions.
    pub fn of_file_name(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".mhd") || name.ends_with(".mha") {
            Some(Format::MetaImage)
        } else if name.ends_with(".nii") || name.ends_with(".nii.gz") {
            Some(Format::Nifti)
        } else {
            None
        }
    }
}

/// Loads a CT from a DICOM folder or file, a MetaImage (`.mhd`/`.mha`) or a NIfTI
/// (`.nii`/`.nii.gz`) file.
pub fn load(path: impl AsRef<Path>, config: &LoadConfig) -> Result<Volume> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    match Format::of_path(path) {
        Format::Dicom => dicom::load_series(path, config),
        Format::MetaImage => metaimage::read(path, &config.limits),
        Format::Nifti => nifti::read(path, &config.limits),
    }
}

/// Writes a volume as int16 HU with its geometry: `.mhd` (+ `.raw`), `.mha`, `.nii` or `.nii.gz`.
pub fn save(volume: &Volume, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    match Format::of_file_name(path) {
        Some(Format::MetaImage) => {
            metaimage::write(volume, path, &metaimage::WriteOptions::default())
        }
        Some(Format::Nifti) => nifti::write(volume, path),
        _ => Err(Error::InvalidArgument(format!(
            "{}: output must end in .mhd, .mha, .nii or .nii.gz",
            path.display()
        ))),
    }
}

/// The series UID a volume file stands for: its file name without the extension, as the
/// LUNA16 and Tianchi layouts name scans (`<uid>.mhd`, `LKDS-00001.mhd`, `<uid>.nii.gz`).
/// `None` for a name without one of the volume extensions (`.mhd`, `.mha`, `.nii`,
/// `.nii.gz`).
pub fn series_uid_of_file(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let lower = name.to_ascii_lowercase();
    [".nii.gz", ".mhd", ".mha", ".nii"]
        .iter()
        .find(|ext| lower.ends_with(*ext))
        .map(|ext| name[..name.len() - ext.len()].to_string())
}

/// The name a scan's detections are reported under (the `seriesuid` of the LUNA16 CSVs):
/// the volume's SeriesInstanceUID (DICOM), else the file's name without its extension
/// ([`series_uid_of_file`]), else the last component of `path`, the file or folder it was
/// loaded from; made safe by [`safe_series_name`].
pub fn series_name(volume: &Volume, path: &Path) -> String {
    let name = volume
        .info
        .series_uid
        .clone()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| series_uid_of_file(path))
        .or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    safe_series_name(&name)
}

/// A series name that is safe as a CSV field and as a file name: a character that would
/// break a CSV row or leave a folder (comma, quote, whitespace, control characters, `/`,
/// `\`) becomes `_`; an empty name, `.` or `..` becomes `unnamed`. Real UIDs (digits and
/// dots) and LUNA16/Tianchi file names are unchanged.
pub fn safe_series_name(name: &str) -> String {
    let safe: String = name
        .trim()
        .chars()
        .map(|c| {
            if c == ',' || c == '"' || c == '/' || c == '\\' || c.is_whitespace() || c.is_control()
            {
                '_'
            } else {
                c
            }
        })
        .collect();
    match safe.as_str() {
        "" | "." | ".." => "unnamed".to_string(),
        _ => safe,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    #[test]
    fn series_uid_of_file_strips_the_volume_extensions_only() {
        let of = |p: &str| series_uid_of_file(Path::new(p));
        assert_eq!(of("a/1.3.6.1.4.mhd").as_deref(), Some("1.3.6.1.4"));
        assert_eq!(of("LKDS-00001.MHD").as_deref(), Some("LKDS-00001"));
        assert_eq!(of("x/scan.nii.gz").as_deref(), Some("scan"));
        assert_eq!(of("scan.nii").as_deref(), Some("scan"));
        assert_eq!(of("scan.mha").as_deref(), Some("scan"));
        assert_eq!(of("IM0001.dcm"), None);
        assert_eq!(of("folder"), None);
    }

    #[test]
    fn series_name_prefers_the_uid_then_the_file_and_is_safe_in_csv_and_paths() {
        let mut v = Volume::new(
            ndarray::Array3::zeros((1, 1, 1)),
            Geometry::new([1.0; 3], [0.0; 3]),
        )
        .expect("a 1-voxel volume");
        let name = |v: &Volume, p: &str| series_name(v, Path::new(p));
        assert_eq!(name(&v, "data/1.2.840.5.nii.gz"), "1.2.840.5");
        assert_eq!(name(&v, "data/LIDC-IDRI-0001"), "LIDC-IDRI-0001");
        assert_eq!(name(&v, "/"), "unnamed");
        v.info.series_uid = Some("1.2.3".into());
        assert_eq!(name(&v, "data/other.mhd"), "1.2.3");
        // A blank UID (seen in real files) is no name.
        v.info.series_uid = Some("  ".into());
        assert_eq!(name(&v, "data/s.mha"), "s");
        // A hostile UID cannot add a CSV row or column, or leave its folder.
        v.info.series_uid = Some("1,2\n3/../\"x\" y".into());
        assert_eq!(name(&v, "d"), "1_2_3_..__x__y");
        v.info.series_uid = Some("..".into());
        assert_eq!(name(&v, "d"), "unnamed");
    }
}
