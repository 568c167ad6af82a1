//! Finding a dataset's scans and their nodules: the LUNA16 layout (`subset*/<uid>.mhd` and
//! `annotations.csv`), the Tianchi layout (`.mhd` folders and the same CSV columns), NIfTI
//! files named by series, and folders of DICOM series, each matched to the annotation CSV
//! by its SeriesInstanceUID.

use crate::error::{Error, Result};
use crate::eval::{Annotations, Finding};
use crate::io::{dicom, series_uid_of_file, LoadConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One scan of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanSource {
    pub series_uid: String,
    /// A volume file, or a DICOM folder (load it with `series` set to the UID).
    pub path: PathBuf,
    /// Whether `path` is a DICOM folder holding (possibly among others) this series.
    pub dicom: bool,
    /// Its nodules (rows of `annotations.csv`).
    pub nodules: Vec<Finding>,
    /// Its irrelevant findings (rows of `annotations_excluded.csv`), never trained as
    /// negatives.
    pub excluded: Vec<Finding>,
}

impl ScanSource {
    /// The load settings that read this scan.
    pub fn load_config(&self, base: &LoadConfig) -> LoadConfig {
        LoadConfig {
            series_uid: self.dicom.then(|| self.series_uid.clone()),
            ..base.clone()
        }
    }
}

/// Whether `path` is a DICOM Part 10 file (the `DICM` magic after the 128-byte preamble);
/// only the first 132 bytes are read.
fn looks_like_dicom(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[128..] == b"DICM"
}

/// Collects volume files, and folders holding DICOM files, children before parents.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, dicom_dirs: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::io(dir, e))?;
    entries.sort_by_key(|e| e.path());
    let mut has_dicom = false;
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            walk(&p, files, dicom_dirs)?;
        } else if series_uid_of_file(&p).is_some() {
            files.push(p);
        } else if !has_dicom && looks_like_dicom(&p) {
            has_dicom = true;
        }
    }
    if has_dicom {
        dicom_dirs.push(dir.to_path_buf());
    }
    Ok(())
}

/// The scans under `root` with their findings. Volume files (`.mhd`, `.mha`, `.nii`,
/// `.nii.gz`) are named by series UID; folders holding DICOM Part 10 files are read as DICOM
/// (a folder may hold several series). Scans without any
/// annotation are kept (they give negatives). A series found twice is an error; an
/// annotation whose series is not found is reported in the returned list of missing UIDs.
pub fn find_scans(
    root: &Path,
    annotations: &Annotations,
    excluded: Option<&Annotations>,
    load: &LoadConfig,
) -> Result<(Vec<ScanSource>, Vec<String>)> {
    let mut files = Vec::new();
    let mut dicom_dirs = Vec::new();
    walk(root, &mut files, &mut dicom_dirs)?;
    let mut found: BTreeMap<String, (PathBuf, bool)> = BTreeMap::new();
    let mut add = |uid: String, path: PathBuf, is_dicom: bool| -> Result<()> {
        if let Some((first, first_dicom)) = found.get(&uid) {
            // Folders are walked children first, and reading a folder as DICOM searches its
            // subfolders too: a series already found deeper is the same series.
            if is_dicom && *first_dicom && first.starts_with(&path) {
                return Ok(());
            }
            return Err(Error::InvalidArgument(format!(
                "series {uid} is in both {} and {}",
                first.display(),
                path.display()
            )));
        }
        found.insert(uid, (path, is_dicom));
        Ok(())
    };
    for f in files {
        if let Some(uid) = series_uid_of_file(&f) {
            add(uid, f, false)?;
        }
    }
    for d in dicom_dirs {
        let scan = dicom::scan(&d, load)?;
        for s in scan.summaries() {
            add(s.series_uid, d.clone(), true)?;
        }
    }
    let mut by_uid: BTreeMap<&str, Vec<Finding>> = BTreeMap::new();
    for f in &annotations.findings {
        by_uid.entry(&f.seriesuid).or_default().push(f.clone());
    }
    let mut ex_by_uid: BTreeMap<&str, Vec<Finding>> = BTreeMap::new();
    for f in excluded.map(|e| e.findings.as_slice()).unwrap_or(&[]) {
        ex_by_uid.entry(&f.seriesuid).or_default().push(f.clone());
    }
    let missing = by_uid
        .keys()
        .filter(|u| !found.contains_key(**u))
        .map(|u| u.to_string())
        .collect();
    let scans = found
        .into_iter()
        .map(|(uid, (path, is_dicom))| ScanSource {
            nodules: by_uid.get(uid.as_str()).cloned().unwrap_or_default(),
            excluded: ex_by_uid.get(uid.as_str()).cloned().unwrap_or_default(),
            series_uid: uid,
            path,
            dicom: is_dicom,
        })
        .collect();
    Ok((scans, missing))
}
