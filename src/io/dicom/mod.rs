//! DICOM series loading.
//!
//! Loading runs in two parallel passes: pass 1 reads every file's header (up to, not
//! including, PixelData) and groups image planes by SeriesInstanceUID; one series is
//! chosen and assembled ([`assemble`]): sorted by ImagePositionPatient projected on the
//! slice normal (never by file name or InstanceNumber), with its slice spacing taken from
//! the positions. Pass 2 decodes each file's pixel data straight into its plane of the
//! output volume.
//!
//! Stored values are masked to BitsStored (sign-extended when PixelRepresentation is 1),
//! PixelPaddingValue (up to PixelPaddingRangeLimit) becomes -1024 HU, and everything else
//! `round(stored * RescaleSlope + RescaleIntercept)`. Enhanced multi-frame CT is read from
//! its per-frame and shared functional groups.

pub mod assemble;
pub mod decode;
pub mod guard;
pub mod header;
pub mod jpeg;
pub mod list;
pub mod write;

pub use assemble::{assemble, assemble_stack, display_uid, Assembly};
pub use header::{read_slice_headers, SliceHeader};
pub use list::{list_series, SeriesList, SeriesListing, StackListing};
pub use write::{write_series, SeriesWriteOptions, StoredFormat};

use crate::error::{Error, Result, SeriesProblem};
use crate::io::LoadConfig;
use crate::volume::{Volume, VolumeInfo};
use ndarray::Array3;
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The revision of DICOM series loading, raised whenever the same files load as another
/// volume: 2 corrected gantry tilts (refused before) and uneven slice spacing (read as a
/// regular grid before); 3 read files without the Part 10 header (skipped before); 4
/// corrects stacks whose middle slices alone are shifted in their plane (read as untilted
/// before) and loads the largest stack of a series whose planes form several (refused
/// before). Training caches prepare a DICOM scan again when it changes.
pub const LOADER_REVISION: u32 = 4;

/// One series found by [`scan`].
#[derive(Debug, Clone)]
pub struct SeriesSummary {
    pub series_uid: String,
    pub modality: String,
    /// Image planes (frames) in the series.
    pub slices: usize,
    /// Image planes in its largest stack ([`assemble::stacks`]); all of them when it has
    /// over [`assemble::MAX_STACKS`].
    pub largest_stack: usize,
}

/// The image planes found under a path, grouped by series (each series' planes in the
/// order of their files' paths, then frames).
#[derive(Debug, Default)]
pub struct Scan {
    pub series: BTreeMap<String, Vec<SliceHeader>>,
    pub files_seen: usize,
    /// Files that are not DICOM or hold no image, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Scan {
    pub fn summaries(&self) -> Vec<SeriesSummary> {
        self.series
            .iter()
            .map(|(uid, s)| SeriesSummary {
                series_uid: uid.clone(),
                modality: s.first().map(|h| h.modality.clone()).unwrap_or_default(),
                slices: s.len(),
                largest_stack: assemble::stacks(s)
                    .map_or(s.len(), |st| st.first().map_or(0, Vec::len)),
            })
            .collect()
    }
}

fn collect_files(path: &Path, config: &LoadConfig, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let p = entry.path();
        let ft = entry.file_type().map_err(|e| Error::io(&p, e))?;
        if ft.is_dir() {
            collect_files(&p, config, out)?;
        } else if ft.is_file() || (ft.is_symlink() && p.is_file()) {
            out.push(p);
            config.limits.check_files(out.len() as u64)?;
        }
    }
    Ok(())
}

/// Reads the headers of every file at `path` (a file, or a folder searched recursively).
pub fn scan(path: &Path, config: &LoadConfig) -> Result<Scan> {
    let mut files = Vec::new();
    if path.is_dir() {
        collect_files(path, config, &mut files)?;
    } else {
        files.push(path.to_path_buf());
    }
    files.sort();
    let single = !path.is_dir();
    let results: Vec<(PathBuf, std::result::Result<Vec<SliceHeader>, String>)> = files
        .into_par_iter()
        .map(|p| {
            let r = match std::fs::metadata(&p) {
                Err(e) => Err(e.to_string()),
                Ok(m) if m.len() > config.limits.max_file_bytes => Err(format!(
                    "file of {} bytes is over the limit of {}",
                    m.len(),
                    config.limits.max_file_bytes
                )),
                Ok(_) => read_slice_headers(&p),
            };
            (p, r)
        })
        .collect();
    let mut scan = Scan {
        files_seen: results.len(),
        ..Scan::default()
    };
    for (p, r) in results {
        match r {
            Ok(headers) if headers.is_empty() => {
                scan.skipped.push((p, "no image (no Rows/Columns)".into()))
            }
            Ok(headers) => {
                for h in headers {
                    scan.series.entry(h.series_uid.clone()).or_default().push(h);
                }
            }
            Err(msg) => {
                if single {
                    return Err(Error::Dicom {
                        path: p,
                        message: msg,
                    });
                }
                tracing::debug!("skipping {}: {msg}", p.display());
                scan.skipped.push((p, msg));
            }
        }
    }
    Ok(scan)
}

/// The series loaded when none is named: the CT series (any series with
/// `allow_modality`) with the most planes in one stack ([`assemble::stacks`]: a localizer
/// stored in a series does not count), then the most planes; ties go to the smallest UID,
/// for determinism.
fn default_series(summaries: &[SeriesSummary], allow_modality: bool) -> Option<&SeriesSummary> {
    summaries
        .iter()
        .filter(|s| allow_modality || s.modality == "CT")
        .max_by(|a, b| {
            a.largest_stack
                .cmp(&b.largest_stack)
                .then_with(|| a.slices.cmp(&b.slices))
                .then_with(|| b.series_uid.cmp(&a.series_uid))
        })
}

/// Picks the series to load: `config.series_uid`, or [`default_series`].
fn select(
    scan: &mut Scan,
    path: &Path,
    config: &LoadConfig,
) -> Result<(String, Vec<SliceHeader>, Vec<String>)> {
    if scan.series.is_empty() {
        return Err(Error::NoSeries {
            path: path.to_path_buf(),
            files_seen: scan.files_seen,
            not_dicom: scan.skipped.len(),
        });
    }
    let summaries = scan.summaries();
    let describe = |s: &SeriesSummary| {
        format!(
            "{} ({} slices, {})",
            display_uid(&s.series_uid),
            s.slices,
            s.modality
        )
    };
    let uid = match &config.series_uid {
        Some(want) => {
            let want = want.trim();
            if !scan.series.contains_key(want) {
                return Err(Error::SeriesNotFound {
                    requested: want.to_string(),
                    available: summaries
                        .iter()
                        .map(describe)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            want.to_string()
        }
        None => match default_series(&summaries, config.allow_modality) {
            Some(s) => s.series_uid.clone(),
            None => {
                // no CT series: name the largest one in the refusal
                let s = default_series(&summaries, true);
                return Err(Error::Series {
                    series_uid: display_uid(s.map(|s| s.series_uid.as_str()).unwrap_or("")),
                    problem: SeriesProblem::Modality {
                        modality: s.map(|s| s.modality.clone()).unwrap_or_default(),
                    },
                });
            }
        },
    };
    let slices = scan.series.remove(&uid).unwrap_or_default();
    let modality = slices
        .first()
        .map(|h| h.modality.clone())
        .unwrap_or_default();
    if modality != "CT" && !config.allow_modality {
        return Err(Error::Series {
            series_uid: display_uid(&uid),
            problem: SeriesProblem::Modality { modality },
        });
    }
    let mut warnings = Vec::new();
    let others: Vec<String> = summaries
        .iter()
        .filter(|s| s.series_uid != uid)
        .map(describe)
        .collect();
    if !others.is_empty() {
        warnings.push(format!("other series not loaded: {}", others.join(", ")));
    }
    Ok((uid, slices, warnings))
}

/// Loads one DICOM series from a file or a folder (searched recursively).
pub fn load_series(path: &Path, config: &LoadConfig) -> Result<Volume> {
    let t0 = std::time::Instant::now();
    let mut scan = scan(path, config)?;
    let t_scan = t0.elapsed();
    let (uid, slices, mut warnings) = select(&mut scan, path, config)?;
    config.limits.check_slices(slices.len() as u64)?;
    let assembly = assemble::assemble_stack(&uid, slices, config.gantry_tilt, config.stack)?;
    warnings.extend(assembly.warnings.iter().cloned());
    let first = &assembly.slices[0];
    let (rows, cols) = (first.format.rows as usize, first.format.columns as usize);
    let n = assembly.slices.len();
    config
        .limits
        .check_shape([n as u64, rows as u64, cols as u64])?;
    let plane = assembly.tilt.as_ref().map_or([rows, cols], |t| t.plane);
    if assembly.tilt.is_some() {
        config.limits.check_shape_of(
            "voxel count after the gantry tilt correction",
            [n as u64, plane[0] as u64, plane[1] as u64],
        )?;
    }
    let planes_out = assembly.spacing.as_ref().map_or(n, |s| s.planes.len());
    if assembly.spacing.is_some() {
        config.limits.check_shape_of(
            "voxel count after the slice spacing correction",
            [planes_out as u64, plane[0] as u64, plane[1] as u64],
        )?;
    }
    if first.photometric == "MONOCHROME1" {
        warnings.push("MONOCHROME1 data: values are used as stored, not inverted".into());
    }
    if assembly.slices.iter().any(|s| s.rescale != first.rescale) {
        warnings.push("RescaleSlope/Intercept vary between slices (applied per slice)".into());
    }
    let mut voxels = vec![0i16; n * rows * cols];
    let decode_warnings = decode_into(&assembly.slices, &mut voxels, rows * cols)?;
    warnings.extend(decode_warnings);
    let (rows, cols, voxels) = match &assembly.tilt {
        None => (rows, cols, voxels),
        Some(t) => {
            // Both volumes are held while resampling: the peak is their sum.
            let mut out = vec![0i16; n * t.plane[0] * t.plane[1]];
            t.resample(&voxels, &mut out);
            drop(voxels);
            (t.plane[0], t.plane[1], out)
        }
    };
    let voxels = match &assembly.spacing {
        None => voxels,
        Some(s) => {
            let mut out = vec![0i16; planes_out * rows * cols];
            s.resample(&voxels, rows * cols, &mut out);
            drop(voxels);
            out
        }
    };
    let hu = Array3::from_shape_vec((planes_out, rows, cols), voxels)
        .map_err(|e| Error::Geometry(format!("volume of {planes_out}x{rows}x{cols}: {e}")))?;
    tracing::debug!(
        "series {}: headers of {} files read in {:.1} ms, {n} slices decoded in {:.1} ms",
        display_uid(&uid),
        scan.files_seen,
        t_scan.as_secs_f64() * 1e3,
        (t0.elapsed() - t_scan).as_secs_f64() * 1e3
    );

    let transfer_syntaxes: BTreeSet<String> = assembly
        .slices
        .iter()
        .map(|s| s.transfer_syntax.clone())
        .collect();
    for w in &warnings {
        tracing::warn!("series {}: {w}", display_uid(&uid));
    }
    Ok(Volume {
        hu,
        geometry: assembly.geometry,
        info: VolumeInfo {
            // none for files without one (ACR-NEMA)
            series_uid: Some(uid).filter(|u| !u.is_empty()),
            modality: Some(first.modality.clone()),
            format: "dicom".into(),
            slice_count: n,
            transfer_syntaxes: transfer_syntaxes.into_iter().collect(),
            warnings,
        },
    })
}

/// Decodes every slice into its plane of `data` (z-major planes of `plane` voxels), one
/// parallel job per file. Returns the decoders' warnings, each once.
fn decode_into(slices: &[SliceHeader], data: &mut [i16], plane: usize) -> Result<Vec<String>> {
    let mut index: HashMap<Arc<Path>, usize> = HashMap::new();
    let mut jobs: Vec<(Arc<Path>, Vec<(&SliceHeader, &mut [i16])>)> = Vec::new();
    for (s, out) in slices.iter().zip(data.chunks_mut(plane.max(1))) {
        let j = *index.entry(s.path.clone()).or_insert_with(|| {
            jobs.push((s.path.clone(), Vec::new()));
            jobs.len() - 1
        });
        jobs[j].1.push((s, out));
    }
    let results: Vec<Result<Vec<String>>> = jobs
        .into_par_iter()
        .map(|(path, frames)| decode::decode_file(&path, frames))
        .collect();
    let mut warnings: Vec<String> = Vec::new();
    for r in results {
        for w in r? {
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
    }
    Ok(warnings)
}

/// Fuzzing entry point for header parsing and series assembly: `data` is parsed as a
/// DICOM stream, and also read as a list of synthetic slice headers that are assembled.
/// Never panics on any input.
pub fn assemble_fuzz(data: &[u8]) {
    use dicom_dictionary_std::tags;
    let fits = guard::check_declared_lengths(data, data.len(), false).is_ok();
    if let Some(Ok(obj)) = fits.then(|| {
        dicom_object::OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .from_reader(data)
    }) {
        let _ = header::headers_of_object(&obj, Arc::from(Path::new("fuzz")), String::new(), true);
    }
    let f = |c: &[u8], i: usize| i16::from_le_bytes([c[i], c[i + 1]]) as f64 / 64.0;
    let slices: Vec<SliceHeader> = data
        .chunks_exact(24)
        .take(1024)
        .enumerate()
        .map(|(i, c)| SliceHeader {
            path: Arc::from(Path::new(if i % 2 == 0 { "a" } else { "b" })),
            frame: c[20] as u32,
            number_of_frames: 1 + c[20] as u32,
            series_uid: "fuzz".into(),
            sop_instance_uid: String::new(),
            modality: "CT".into(),
            transfer_syntax: String::new(),
            position: (c[21] & 1 == 0).then(|| [f(c, 0), f(c, 2), f(c, 4)]),
            orientation: (c[21] & 2 == 0)
                .then(|| [f(c, 6), f(c, 8), f(c, 10), f(c, 12), f(c, 14), f(c, 16)]),
            pixel_spacing: (c[21] & 4 == 0).then(|| [f(c, 18).abs(), 0.5]),
            slice_thickness: None,
            spacing_between_slices: None,
            format: header::PixelFormat {
                rows: 1 + (c[22] & 3) as u32,
                columns: 1 + (c[23] & 3) as u32,
                bits_allocated: 16,
                bits_stored: 16,
                signed: true,
                samples_per_pixel: 1,
            },
            photometric: String::new(),
            rescale: header::Rescale::default(),
            padding: None,
            instance_number: None,
            gantry_detector_tilt_deg: None,
        })
        .collect();
    // The bytes past the last whole slice ask for a stack (none: the largest).
    let stack = Some(data.len() % 24).filter(|&r| r > 0).map(|r| r - 1);
    if let Ok(a) = assemble::assemble_stack("fuzz", slices, crate::io::GantryTilt::Correct, stack) {
        let _ = a.geometry.world_to_voxel([0.0; 3]);
        // Resample tilted stacks of small planes (the fuzzer's rows and columns are 1 to
        // 4; the shifts, and so the output, can be large).
        if let Some(t) = a
            .tilt
            .filter(|t| t.plane[0].saturating_mul(t.plane[1]) <= 1 << 16)
        {
            let input = vec![0i16; a.slices.len() * t.input_plane[0] * t.input_plane[1]];
            let mut out = vec![0i16; a.slices.len() * t.plane[0] * t.plane[1]];
            t.resample(&input, &mut out);
        }
        if let Some(s) = a.spacing {
            let input = vec![0i16; a.slices.len() * 2];
            let mut out = vec![0i16; s.planes.len() * 2];
            s.resample(&input, 2, &mut out);
        }
    }
}
