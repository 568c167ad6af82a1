//! `lungcad detect`, and what `lungcad demo` shares with it: the model, the batch size, the
//! progress bar over tiles and the table of detections.

use crate::Input;
use clap::Args;
use lungcad::detect::{self, DecodeConfig, Detection, Flips};
use lungcad::model::{self as m, DetectionRun, Detector, Device};
use lungcad::{Error, Limits, Volume};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct DetectArgs {
    #[command(flatten)]
    input: Input,
    /// Model file (safetensors with lungcad metadata; see `lungcad init-model`,
    /// `lungcad train` and `lungcad import-monai`, whose MONAI RetinaNet models run MONAI's
    /// preprocessing, sliding window and post-processing). Default: the shipped model phantom-v2, trained on synthetic
    /// phantoms only (models/phantom-v2/README.md): a demonstration, not a model for real CT.
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Lowest probability reported.
    #[arg(long, default_value_t = DecodeConfig::default().min_probability)]
    threshold: f32,
    /// Most detections reported.
    #[arg(long, default_value_t = DecodeConfig::default().max_detections)]
    max_detections: usize,
    /// Write the detections: .csv (LUNA16 submission columns
    /// seriesuid,coordX,coordY,coordZ,probability) or .json (adds diameter_mm). Repeat
    /// to write both.
    #[arg(long)]
    out: Vec<PathBuf>,
    /// Write a PNG with axial, coronal and sagittal slices through the top detections.
    #[arg(long)]
    overlay: Option<PathBuf>,
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
    bar.set_prefix(format!("detect on {device_name}"));
    let run = detector.detect(volume, batch_size, decode, limits, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let run = run?;
    eprintln!(
        "{} detection(s) from {} candidate(s) over {} tile(s) in batches of {batch_size} on {device_name}; preprocessing {:.2} s, network {:.2} s",
        run.detections.len(),
        run.candidates,
        run.tiles,
        run.preprocess_s,
        run.network_s
    );
    Ok(run)
}

/// Writes `detections` as .csv or .json by each path's extension.
pub fn write_detections(dets: &[Detection], uid: &str, out: &[PathBuf]) -> Result<(), Error> {
    for o in out {
        if is_json(o) {
            detect::write_json(dets, uid, o)?;
        } else {
            detect::write_csv(dets, uid, o)?;
        }
        eprintln!("wrote {}", o.display());
    }
    Ok(())
}

fn is_json(path: &Path) -> bool {
    path.to_string_lossy()
        .to_ascii_lowercase()
        .ends_with(".json")
}

pub fn detect_command(args: DetectArgs) -> Result<(), Error> {
    for o in &args.out {
        let name = o.to_string_lossy().to_ascii_lowercase();
        if !(name.ends_with(".csv") || name.ends_with(".json")) {
            return Err(Error::InvalidArgument(format!(
                "{}: detections are written as .csv or .json",
                o.display()
            )));
        }
    }
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
    let volume = args.input.load()?;
    let uid = volume.info.series_uid.clone().unwrap_or_else(|| {
        args.input
            .ct
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let (dev, dev_name) = m::select_device(args.run.device.parse()?)?;
    let (detections, background) = match model {
        Some((path, bytes)) if monai => {
            let detector = m::monai::MonaiDetector::from_bytes(bytes, &path, &dev)?;
            let t = std::time::Instant::now();
            let found = detector.detect(&volume)?;
            let dets = m::monai::select(&found, args.threshold, args.max_detections);
            eprintln!(
                "{} detection(s) of {} with MONAI's RetinaNet pipeline on {dev_name} in {:.2} s",
                dets.len(),
                found.len(),
                t.elapsed().as_secs_f64()
            );
            (dets, volume)
        }
        model => {
            let detector = match model {
                Some((path, bytes)) => Detector::from_bytes(bytes, &path, &dev)?,
                None => Detector::shipped(&dev)?,
            };
            let (detector, dev_name) = args.run.settle(detector, dev_name)?;
            let batch_size = args.run.batch_size(&detector, &dev_name);
            let limits = Limits {
                max_voxels: args.input.max_voxels,
                ..Limits::default()
            };
            let decode = DecodeConfig {
                min_probability: args.threshold,
                max_detections: args.max_detections,
                flips,
                ..DecodeConfig::default()
            };
            let run =
                detect_with_progress(&detector, &dev_name, volume, batch_size, &decode, &limits)?;
            (run.detections, run.preprocessed.volume)
        }
    };
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
    write_detections(&detections, &uid, &args.out)?;
    if let Some(p) = &args.overlay {
        detect::write_overlay_png(&background, &detections, 5, p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
