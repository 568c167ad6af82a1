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
    /// Bounds on untrusted sizes.
    pub limits: Limits,
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
