//! `lungcad detect`, and what `lungcad demo` shares with it: the model, the batch size, the
//! progress bar over tiles and the table of detections. One CT or many: with several, the
//! model is loaded once, the scans run one after another, each scan's detections are
//! appended to the outputs as it finishes, and a scan that cannot be read is reported and
//! skipped.

use crate::LoadArgs;
use clap::Args;
use lungcad::detect::{self, DecodeConfig, Detection, Flips};
use lungcad::model::{self as m, DetectionRun, Detector, Device};
use lungcad::{Error, Limits, Volume};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct DetectArgs {
    /// The CT, or several: each a DICOM folder (searched recursively; one series from each)
    /// or file, a .mhd/.mha, or a .nii/.nii.gz. With several (say `subset0/*.mhd`), the model
    /// is loaded once, the scans run one after another, and a scan that cannot be read or
    /// preprocessed is reported and skipped (the exit status is then 1).
    #[arg(required = true, value_name = "CT")]
    ct: Vec<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
    /// Model file (safetensors with lungcad metadata; see `lungcad init-model`,
    /// `lungcad train` and `lungcad import-monai`, whose MONAI RetinaNet models run MONAI's
    /// preprocessing, sliding window and post-processing). Default: the shipped model phantom-v2, trained on synthetic
    /// phantoms only (models/phantom-v2/README.md): a demonstration, not a model for real CT.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Refuse a scan that takes the network more tiles than this (MONAI models: sliding
    /// windows). The model file sets the tile size, so this bounds the network's calls.
    #[arg(long, default_value_t = Limits::default().max_tiles)]
    max_tiles: u64,
    /// Refuse a scan whose tiles (or windows) cover each voxel more times than this, on
    /// average. The model file sets their overlap, so this bounds the network's work per
    /// scan: the default allows overlaps of three quarters of a tile on every axis.
    #[arg(long, default_value_t = Limits::default().max_tile_coverage)]
    max_tile_coverage: u64,
    /// Largest tensor in bytes one pass of the network may make: batches are cut to fit,
    /// and a tile (MONAI models: a window, or the whole image) past it is refused. The
    /// model file sets the widths and the tile size, so this bounds the network's memory
    /// (a multiple of it). Default 8 GiB.
    #[arg(long, default_value_t = Limits::default().max_tensor_bytes)]
    max_tensor_bytes: u64,
    #[command(flatten)]
    run: RunArgs,
    /// Lowest probability reported.
    #[arg(long, default_value_t = DecodeConfig::default().min_probability)]
    threshold: f32,
    /// Most detections reported per scan.
    #[arg(long, default_value_t = DecodeConfig::default().max_detections)]
    max_detections: usize,
    /// Write the detections: .csv (LUNA16 submission columns
    /// seriesuid,coordX,coordY,coordZ,probability; all scans in one file), .json (one CT
    /// only; adds diameter_mm) or .jsonl (one JSON object per scan and line, as .json
    /// writes it). Written as <file>.partial, each scan's detections added as it finishes,
    /// and renamed at the end (a failed run leaves an existing file as it was). Repeat to
    /// write several.
    #[arg(long)]
    out: Vec<PathBuf>,
    /// Write a PNG with axial, coronal and sagittal slices through the top detections (one
    /// CT only; see --overlay-dir).
    #[arg(long, conflicts_with = "overlay_dir")]
    overlay: Option<PathBuf>,
    /// Write one overlay PNG per scan into this folder (made if missing), named
    /// <seriesuid>.png.
    #[arg(long)]
    overlay_dir: Option<PathBuf>,
}

/// Where and how the network runs.
#[derive(Args)]
pub struct RunArgs {
    /// Where the network runs: auto (a wgpu GPU when there is one and it holds a patch of
    /// the network in one buffer, else cpu), wgpu (any
    /// adapter, software ones such as lavapipe too), cpu (burn flex, multi-threaded) or cuda
    /// (builds with the cuda feature).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Tiles per forward pass; memory grows with it, not with the scan (on the CPU about
    /// 0.6 GB per 128³ tile). Default: 32 on a GPU; on the CPU, as many tiles as hold
    /// 4 x 128³ voxels, at most 32 (larger batches are no faster there).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Test-time flips: none, x (each tile also mirrored left to right: 2 passes) or all (the
    /// 8 mirror images along z, y and x: 8 passes); the mirrored passes' output maps are
    /// mapped back and averaged before decoding. Default: x for lungcad models (on the
    /// shipped model's development phantoms, CPM 0.910 with none, 0.950 with x); MONAI
    /// models take none.
    #[arg(long)]
    pub flips: Option<String>,
}

impl RunArgs {
    /// `--flips`, parsed, for a MONAI model or not ([`Flips::for_tool`]).
    pub fn flips(&self, monai: bool) -> Result<Flips, Error> {
        let requested = self.flips.as_deref().map(str::parse).transpose()?;
        Flips::for_tool(requested, monai)
    }

    /// The device, its name, and the model on it (`model`, or the shipped one).
    pub fn load(&self, model: Option<&Path>) -> Result<(Detector, String), Error> {
        let choice = self.device.parse()?;
        let (dev, name) = m::select_device(choice)?;
        self.settle(load_model(model, &dev)?, name)
    }

    /// With `auto`, the CPU instead of a GPU that cannot hold one patch of the network.
    fn settle(&self, detector: Detector, name: String) -> Result<(Detector, String), Error> {
        if self.device.parse::<m::DeviceChoice>()? == m::DeviceChoice::Auto {
            detector.or_cpu_if_unfit(name)
        } else {
            Ok((detector, name))
        }
    }

    /// Tiles per forward pass for `detector` on the device named `device_name`.
    pub fn batch_size(&self, detector: &Detector, device_name: &str) -> usize {
        self.batch_size
            .unwrap_or_else(|| detector.default_batch_size(device_name))
    }
}

/// `model`, or the shipped model when there is none.
pub fn load_model(model: Option<&Path>, device: &Device) -> Result<Detector, Error> {
    match model {
        Some(p) => Detector::load(p, device),
        None => Detector::shipped(device),
    }
}

/// [`Detector::detect`] with a progress bar over the tiles (drawn on a terminal only).
pub fn detect_with_progress(
    detector: &Detector,
    device_name: &str,
    label: &str,
    volume: Volume,
    batch_size: usize,
    decode: &DecodeConfig,
    limits: &Limits,
) -> Result<DetectionRun, Error> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} tiles, {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("{label}detect on {device_name}"));
    let run = detector.detect(volume, batch_size, decode, limits, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let run = run?;
    eprintln!(
        "{label}{} detection(s) from {} candidate(s) over {} tile(s) in batches of {} on {device_name}; preprocessing {:.2} s, network {:.2} s",
        run.detections.len(),
        run.candidates,
        run.tiles,
        run.batch_size,
        run.preprocess_s,
        run.network_s
    );
    Ok(run)
}

/// A detections file and how it is written.
#[derive(Clone, Copy, PartialEq)]
enum OutKind {
    /// LUNA16 submission rows, all scans in one file.
    Csv,
    /// One scan's object ([`detect::write_json`]).
    Json,
    /// One [`detect::to_json`] object per scan and line.
    Jsonl,
}

impl OutKind {
    fn of(path: &Path) -> Option<OutKind> {
        let name = path.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".csv") {
            Some(OutKind::Csv)
        } else if name.ends_with(".jsonl") {
            Some(OutKind::Jsonl)
        } else if name.ends_with(".json") {
            Some(OutKind::Json)
        } else {
            None
        }
    }
}

/// One `--out` file, written as `<path>.partial` until [`Outputs::keep`] renames it.
struct Out {
    path: PathBuf,
    partial: PathBuf,
    kind: OutKind,
    file: std::io::BufWriter<std::fs::File>,
}

/// The detection files. Each is written as `<path>.partial`, appended to and flushed as
/// each scan finishes, and renamed to its path by [`Outputs::keep`]; dropped without that
/// (no scan detected, or an early error), the partial files are removed, so a file
/// already at the path is never lost to a failed run.
pub struct Outputs {
    files: Vec<Out>,
}

impl Outputs {
    /// Checks the names (.csv, .json with one scan, .jsonl; no path twice, none that is an
    /// input) and creates the partial files, so that one that cannot be written fails
    /// before any scan is read.
    pub fn create(paths: &[PathBuf], inputs: &[PathBuf]) -> Result<Outputs, Error> {
        let same = |a: &Path, b: &Path| {
            a == b
                || matches!((std::path::absolute(a), std::path::absolute(b)), (Ok(x), Ok(y)) if x == y)
        };
        let mut files: Vec<Out> = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let bad = |why: String| Error::InvalidArgument(format!("{}: {why}", p.display()));
            let kind = OutKind::of(p)
                .ok_or_else(|| bad("detections are written as .csv, .json or .jsonl".into()))?;
            if kind == OutKind::Json && inputs.len() > 1 {
                return Err(bad(format!(
                    ".json holds one scan's detections; with {} CTs write .jsonl (one object per scan and line) or .csv",
                    inputs.len()
                )));
            }
            if paths[..i].iter().any(|q| same(p, q)) {
                return Err(bad("given twice as --out".into()));
            }
            if inputs.iter().any(|q| same(p, q)) {
                return Err(bad("is also a CT to read".into()));
            }
            let mut partial = p.clone().into_os_string();
            partial.push(".partial");
            let partial = PathBuf::from(partial);
            let file = std::fs::File::create(&partial).map_err(|e| super::io_error(&partial, e))?;
            let mut file = std::io::BufWriter::new(file);
            let header = match kind {
                OutKind::Csv => writeln!(file, "{}", lungcad::eval::PREDICTIONS_CSV_HEADER)
                    .and_then(|_| file.flush())
                    .map_err(|e| super::io_error(&partial, e)),
                _ => Ok(()),
            };
            // Kept before the header's error is returned, so that Drop removes the file.
            files.push(Out {
                path: p.clone(),
                partial,
                kind,
                file,
            });
            header?;
        }
        Ok(Outputs { files })
    }

    /// Appends one scan's detections to every file, flushed.
    pub fn add(&mut self, dets: &[Detection], uid: &str) -> Result<(), Error> {
        for out in &mut self.files {
            let written = match out.kind {
                OutKind::Csv => lungcad::eval::write_prediction_rows(
                    &mut out.file,
                    &detect::to_candidates(dets, uid),
                ),
                OutKind::Json => {
                    detect::write_json(dets, uid, &out.partial)?;
                    Ok(())
                }
                OutKind::Jsonl => serde_json::to_writer(&mut out.file, &detect::to_json(dets, uid))
                    .map_err(std::io::Error::from)
                    .and_then(|_| writeln!(out.file)),
            };
            written
                .and_then(|_| out.file.flush())
                .map_err(|e| super::io_error(&out.partial, e))?;
        }
        Ok(())
    }

    /// Renames the partial files to their paths, saying so on stderr.
    pub fn keep(mut self) -> Result<(), Error> {
        for out in std::mem::take(&mut self.files) {
            let Out {
                path,
                partial,
                mut file,
                ..
            } = out;
            file.flush().map_err(|e| super::io_error(&partial, e))?;
            drop(file);
            std::fs::rename(&partial, &path).map_err(|e| super::io_error(&path, e))?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for out in self.files.drain(..) {
            drop(out.file);
            let _ = std::fs::remove_file(&out.partial);
        }
    }
}

/// The network `lungcad detect` runs, ready for scan after scan.
enum Runner {
    Lungcad {
        detector: Box<Detector>,
        device_name: String,
        batch_size: usize,
        decode: DecodeConfig,
        limits: Limits,
    },
    Monai {
        detector: Box<m::monai::MonaiDetector>,
        device_name: String,
        threshold: f32,
        max_detections: usize,
        limits: Limits,
    },
}

impl DetectArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_tiles: self.max_tiles,
            max_tile_coverage: self.max_tile_coverage,
            max_tensor_bytes: self.max_tensor_bytes,
            ..self.load.limits()
        }
    }
}

impl Runner {
    fn new(args: &DetectArgs) -> Result<Runner, Error> {
        // The model file is read once; a MONAI RetinaNet (lungcad import-monai) runs MONAI's
        // pipeline.
        let model = match &args.model {
            Some(p) => Some((p.clone(), m::read_model_file(p)?)),
            None => None,
        };
        let monai = match &model {
            Some((p, bytes)) => m::is_monai_model(bytes, p)?,
            None => false,
        };
        let flips = args.run.flips(monai)?;
        let (dev, device_name) = m::select_device(args.run.device.parse()?)?;
        Ok(match model {
            Some((path, bytes)) if monai => Runner::Monai {
                detector: Box::new(m::monai::MonaiDetector::from_bytes(bytes, &path, &dev)?),
                device_name,
                threshold: args.threshold,
                max_detections: args.max_detections,
                limits: args.limits(),
            },
            model => {
                let detector = match model {
                    Some((path, bytes)) => Detector::from_bytes(bytes, &path, &dev)?,
                    None => Detector::shipped(&dev)?,
                };
                let (detector, device_name) = args.run.settle(detector, device_name)?;
                // A tile past the tensor limit fails every scan: the run ends here.
                detector.tiles_within(&args.limits())?;
                let batch_size = args.run.batch_size(&detector, &device_name);
                let decode = DecodeConfig {
                    min_probability: args.threshold,
                    max_detections: args.max_detections,
                    flips,
                    ..DecodeConfig::default()
                };
                Runner::Lungcad {
                    detector: Box::new(detector),
                    device_name,
                    batch_size,
                    decode,
                    limits: args.limits(),
                }
            }
        })
    }

    /// The detections in `volume`, and the volume to draw them on.
    fn detect(&self, volume: Volume, label: &str) -> Result<(Vec<Detection>, Volume), Error> {
        match self {
            Runner::Lungcad {
                detector,
                device_name,
                batch_size,
                decode,
                limits,
            } => {
                let run = detect_with_progress(
                    detector,
                    device_name,
                    label,
                    volume,
                    *batch_size,
                    decode,
                    limits,
                )?;
                Ok((run.detections, run.preprocessed.volume))
            }
            Runner::Monai {
                detector,
                device_name,
                threshold,
                max_detections,
                limits,
            } => {
                let t = std::time::Instant::now();
                let found = detector.detect(&volume, limits)?;
                let dets = m::monai::select(&found, *threshold, *max_detections);
                eprintln!(
                    "{label}{} detection(s) of {} with MONAI's RetinaNet pipeline on {device_name} in {:.2} s",
                    dets.len(),
                    found.len(),
                    t.elapsed().as_secs_f64()
                );
                Ok((dets, volume))
            }
        }
    }
}

/// Whether a failure concerns its scan only (it could not be read, was refused by a
/// limit or could not be preprocessed), so that a run over several CTs goes on; a model
/// or device failure would fail every scan and ends the run.
fn only_this_scan(e: &Error) -> bool {
    !matches!(
        e,
        Error::Model { .. } | Error::Device(_) | Error::InvalidArgument(_)
    )
}

fn print_table(detections: &[Detection]) {
    println!("rank  coordX_mm  coordY_mm  coordZ_mm  diameter_mm  probability");
    for (i, d) in detections.iter().enumerate() {
        println!(
            "{:>4}  {:>9.2}  {:>9.2}  {:>9.2}  {:>11.1}  {:>11.4}",
            i + 1,
            d.centre_world[0],
            d.centre_world[1],
            d.centre_world[2],
            d.diameter_mm,
            d.probability
        );
    }
}

pub fn detect_command(args: DetectArgs) -> Result<ExitCode, Error> {
    let n = args.ct.len();
    if n > 1 {
        if args.load.series.is_some() {
            return Err(Error::InvalidArgument(
                "--series picks a series of one DICOM input; with several CTs, each DICOM folder gives its CT series with the most slices".into(),
            ));
        }
        if args.load.stack.is_some() {
            return Err(Error::InvalidArgument(
                "--stack picks a stack of one DICOM series; with several CTs, each series loads its largest stack".into(),
            ));
        }
        if args.overlay.is_some() {
            return Err(Error::InvalidArgument(format!(
                "--overlay writes one scan's PNG; with {n} CTs use --overlay-dir"
            )));
        }
    }
    // The model first, then the outputs: nothing is written when it cannot be loaded.
    let runner = Runner::new(&args)?;
    let mut outputs = Outputs::create(&args.out, &args.ct)?;
    let mut done = 0usize;
    let mut skipped: Vec<&Path> = Vec::new();
    let mut seen: HashMap<String, &Path> = HashMap::new();
    let mut run_all = || -> Result<(), Error> {
        for (i, ct) in args.ct.iter().enumerate() {
            let label = if n > 1 {
                format!("[{}/{n}] ", i + 1)
            } else {
                String::new()
            };
            let t = std::time::Instant::now();
            let volume = match args.load.load(ct) {
                Ok(v) => v,
                Err(e) if n > 1 => {
                    eprintln!("{label}skipped {}: {e}", ct.display());
                    skipped.push(ct);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let uid = lungcad::io::series_name(&volume, ct);
            if let Some(first) = seen.get(uid.as_str()) {
                eprintln!(
                    "{label}skipped {}: its series {uid} was already detected from {}",
                    ct.display(),
                    first.display()
                );
                skipped.push(ct);
                continue;
            }
            let (detections, background) = match runner.detect(volume, &label) {
                Ok(r) => r,
                Err(e) if n > 1 && only_this_scan(&e) => {
                    eprintln!("{label}skipped {}: {e}", ct.display());
                    skipped.push(ct);
                    continue;
                }
                Err(e) => return Err(e),
            };
            seen.insert(uid.clone(), ct);
            if n == 1 {
                print_table(&detections);
            } else {
                let best = detections
                    .first()
                    .map(|d| {
                        format!(
                            ", best {:.4} at ({:.2}, {:.2}, {:.2}) mm",
                            d.probability, d.centre_world[0], d.centre_world[1], d.centre_world[2]
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "{label}{uid}: {} detection(s){best} ({:.1} s)",
                    detections.len(),
                    t.elapsed().as_secs_f64()
                );
            }
            outputs.add(&detections, &uid)?;
            let overlay = match (&args.overlay, &args.overlay_dir) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(d)) => {
                    std::fs::create_dir_all(d).map_err(|e| super::io_error(d, e))?;
                    Some(d.join(format!("{uid}.png")))
                }
                (None, None) => None,
            };
            if let Some(p) = overlay {
                detect::write_overlay_png(&background, &detections, 5, &p)?;
                eprintln!("{label}wrote {}", p.display());
            }
            done += 1;
        }
        Ok(())
    };
    let finished = run_all();
    // The scans detected so far are kept even when a model or device failure ended the
    // run; with none, the partial files are removed (Outputs' Drop).
    if done > 0 {
        outputs.keep()?;
    }
    finished?;
    if skipped.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut list: Vec<String> = skipped
        .iter()
        .take(5)
        .map(|p| p.display().to_string())
        .collect();
    if skipped.len() > 5 {
        list.push(format!("and {} more", skipped.len() - 5));
    }
    eprintln!(
        "error: {} of {n} CTs skipped (the reasons are above): {}",
        skipped.len(),
        list.join(", ")
    );
    Ok(ExitCode::from(1))
}
