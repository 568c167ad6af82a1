//! The `lungcad` command-line tool.

// See lib.rs: `Error` is large by design and only built on the cold path.
#![allow(clippy::result_large_err)]

mod cli;

use clap::{Args, Parser, Subcommand};
use lungcad::{Error, Limits, LoadConfig, Volume};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "lungcad", version, about = "Find lung nodules in chest CT", long_about = None)]
struct Cli {
    /// More log output (-v: info, -vv: debug). Logs never contain patient identifiers.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a synthetic chest CT with known nodules, find them with the shipped model and
    /// print what was found against the truth; writes the detections (CSV, JSON), the truth
    /// (CSV) and an overlay PNG with the detections circled.
    Demo(cli::demo::DemoArgs),
    /// Describe a CT: series UID, modality, shape, spacing, origin, direction, HU range.
    Info {
        #[command(flatten)]
        input: Input,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the DICOM series under a folder from their headers alone (no pixel data is
    /// decoded): each series' UID, modality, planes, files and stacks (numbered as --stack
    /// takes them), and the one the other commands load when no --series is given.
    Series {
        /// A DICOM folder (searched recursively) or file.
        path: PathBuf,
        /// Pick the default among series of any modality, as --allow-modality does.
        #[arg(long)]
        allow_modality: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make LUNA16-style annotation CSVs from LIDC-IDRI's reader XML files, as LUNA16 made
    /// its reference standard: each reader's nodule of 3 mm or more measured on its
    /// contours (centre, and the diameter of the sphere of its volume), readers' nodules
    /// within the sum of their radii merged, and those of at least 3 readers kept (centre
    /// and diameter averaged); the rest are excluded findings.
    Lidc(cli::lidc::LidcArgs),
    /// Write a CT as int16 HU with its geometry (.mhd, .mha, .nii or .nii.gz).
    Convert {
        #[command(flatten)]
        input: Input,
        /// Output file: .mhd (+ .raw), .mha, .nii or .nii.gz.
        output: PathBuf,
    },
    /// Resample a CT, mask the lungs and find the crop to tile. Writes the resampled HU volume
    /// (int16, before windowing) and optionally the lung mask (uint8, 0/1) with their
    /// geometry, and a preview PNG; prints a summary.
    Preprocess {
        #[command(flatten)]
        input: Input,
        /// Output for the resampled volume: .mhd (+ .raw), .mha, .nii or .nii.gz.
        #[arg(long)]
        out: PathBuf,
        /// Write the lung mask on the same grid: .mhd (+ .raw) or .mha.
        #[arg(long)]
        mask_out: Option<PathBuf>,
        /// Output spacing in mm, isotropic [default: 1, or the --config file's].
        #[arg(long)]
        spacing: Option<f64>,
        /// Write a PNG of three axial and three coronal slices with the lung mask outlined
        /// (green) and the crop (amber).
        #[arg(long)]
        preview: Option<PathBuf>,
        /// Preprocessing settings as JSON (a PreprocessConfig; missing fields take their
        /// defaults). Print the defaults with --print-config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the preprocessing settings in use as JSON and exit without writing.
        #[arg(long)]
        print_config: bool,
        /// Write only the crop (the lungs' box plus the margin) instead of the whole grid.
        #[arg(long)]
        crop: bool,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Find nodules: preprocess with the model's settings, run the network over the lung
    /// tiles in batches, decode, 3-D NMS; prints the detections (world mm, LPS) and writes
    /// them as a LUNA16 CSV or JSON, and an overlay PNG.
    Detect(cli::detect::DetectArgs),
    /// Train the detector on a dataset (LUNA16, Tianchi, NIfTI or DICOM with a LUNA16-style
    /// CSV): scans are preprocessed once into a cache, epochs of augmented 128³ patches run
    /// in batches, validation CPM after each epoch keeps the best model, and a checkpoint
    /// per epoch lets --resume continue exactly.
    Train(cli::train::TrainArgs),
    /// Make synthetic chest CT phantoms with known nodules (deterministic by seed): body,
    /// ribs, spine, heart, lungs with texture, vessel trees, airways, and solid, part-solid,
    /// ground-glass, juxtapleural and juxtavascular nodules of 3 to 30 mm, as MetaImage or
    /// DICOM with a LUNA16 annotations.csv.
    Synth(cli::synth::SynthArgs),
    /// Make a lungcad model file from a MONAI RetinaNet state_dict (MONAI's
    /// lung_nodule_ct_detection bundle's network, or another of its design): the bundle's
    /// PyTorch model.pt as it is (read without Python; a state_dict nested in a checkpoint
    /// such as {"model": ...} or under DataParallel's "module." is found), or safetensors.
    /// Every tensor's name and shape is checked; `lungcad detect --model` then runs MONAI's
    /// pipeline (preprocessing, sliding window, anchors, NMS) with it.
    ImportMonai {
        /// The state_dict: a PyTorch checkpoint (.pt, .pth) or safetensors, with MONAI's
        /// tensor names.
        state_dict: PathBuf,
        /// Output model file (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Network settings as JSON (a RetinaNetConfig; missing fields take the bundle's:
        /// ResNet-50, layers 1-2 into a 256-channel FPN, 3 anchors, 1 class).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write a model file with freshly initialised, untrained weights (the starting point of
    /// training, and a way to run the pipeline end to end before training).
    InitModel {
        /// Output model file (.safetensors).
        #[arg(long)]
        out: PathBuf,
        /// Seed of the weight initialisation.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Network shape as JSON (a DetectorConfig; missing fields take their defaults).
        #[arg(long)]
        detector_config: Option<PathBuf>,
        /// Preprocessing settings as JSON (a PreprocessConfig).
        #[arg(long)]
        preprocess_config: Option<PathBuf>,
    },
    /// Time the network's forward pass on random input: patches/s per batch size, after one
    /// warm-up pass per size (on a GPU the first pass compiles and autotunes kernels). With
    /// --train, time training steps (forward, backward, Adam) instead. A batch whose largest
    /// tensor does not fit one of the GPU's buffers runs in several passes (micro-batches
    /// when training), as detect and train do; the output says so. Reports the process's
    /// peak resident memory (Linux) too: run one batch size per process to read each one's.
    Benchmark {
        /// Model file; without one, the default network, untrained (speed does not depend on
        /// the weights).
        #[arg(long)]
        model: Option<PathBuf>,
        /// auto, wgpu, cpu or cuda, as for detect.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Batch sizes to time, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        batch_sizes: Vec<usize>,
        /// Edge of the cubic patch in voxels (a multiple of 16); default: the model's patch.
        #[arg(long)]
        patch: Option<usize>,
        /// Timed passes per batch size (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Time training steps instead of inference passes.
        #[arg(long)]
        train: bool,
        /// With a MONAI RetinaNet model (`lungcad import-monai`): the image size X,Y,Z whose
        /// detection is timed (network and post-processing, on random values).
        #[arg(long, value_delimiter = ',', default_value = "128,128,64")]
        image: Vec<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// LUNA16 FROC/CPM evaluation of a detection CSV, as the official protocol defines it.
    Eval {
        /// Reference nodules: seriesuid,coordX,coordY,coordZ,diameter_mm (LUNA16 annotations.csv).
        #[arg(long)]
        annotations: PathBuf,
        /// Irrelevant findings, ignored when hit (LUNA16 annotations_excluded.csv).
        #[arg(long)]
        excluded: PathBuf,
        /// The scans evaluated, one SeriesInstanceUID per line (LUNA16 seriesuids.csv).
        #[arg(long)]
        seriesuids: PathBuf,
        /// Detections: seriesuid,coordX,coordY,coordZ,probability.
        #[arg(long)]
        predictions: PathBuf,
        /// Print one JSON object (sensitivities, cpm, cpm_ci, tp, fp, fn, ...).
        #[arg(long)]
        json: bool,
        /// Write the FROC curve with its bootstrap confidence band to this PNG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Bootstrap resamples over scans for the confidence intervals (0: none).
        #[arg(long, default_value_t = lungcad::eval::EvalConfig::default().bootstrap_resamples)]
        bootstrap: usize,
        /// Seed of the bootstrap.
        #[arg(long, default_value_t = lungcad::eval::EvalConfig::default().seed)]
        seed: u64,
    },
}

/// Where the CT comes from and how to read it.
#[derive(Args)]
struct Input {
    /// A DICOM folder (searched recursively) or file, a .mhd/.mha, or a .nii/.nii.gz.
    ct: PathBuf,
    #[command(flatten)]
    load: LoadArgs,
}

impl Input {
    fn load(&self) -> Result<Volume, Error> {
        self.load.load(&self.ct)
    }
}

/// How to read a CT.
#[derive(Args)]
struct LoadArgs {
    /// DICOM: SeriesInstanceUID to load (default: the CT series with the most slices in one
    /// stack).
    #[arg(long = "series")]
    series: Option<String>,
    /// DICOM: accept a series whose Modality is not CT.
    #[arg(long)]
    allow_modality: bool,
    /// DICOM: a gantry-tilted series (slice positions off the slice normal), or one whose
    /// slices are shifted in their plane, is corrected, each slice resampled in its plane
    /// onto a grid along the normal (up to 45 degrees, with a warning), or refused.
    #[arg(long, value_name = "correct|refuse", default_value = "correct")]
    gantry_tilt: lungcad::GantryTilt,
    /// DICOM: when the series' planes form several stacks (a localizer stored in the
    /// series, two reconstructions of different fields of view), load stack N, numbered as
    /// the load warning and `lungcad series` name them: the largest first (default: the
    /// largest; refused when the two largest are of the same size). One CT only.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    stack: Option<usize>,
    /// Refuse volumes with more voxels than this: as read and, where the command resamples
    /// (detect), as resampled and padded for the network.
    #[arg(long, default_value_t = Limits::default().max_voxels)]
    max_voxels: u64,
}

impl LoadArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_voxels: self.max_voxels,
            ..Limits::default()
        }
    }

    fn load(&self, ct: &std::path::Path) -> Result<Volume, Error> {
        let config = LoadConfig {
            series_uid: self.series.clone(),
            allow_modality: self.allow_modality,
            gantry_tilt: self.gantry_tilt,
            stack: self.stack,
            limits: self.limits(),
        };
        lungcad::load(ct, &config)
    }
}

fn info_json(v: &Volume) -> serde_json::Value {
    let (lo, hi) = v.hu_range();
    serde_json::json!({
        "series_uid": v.info.series_uid,
        "modality": v.info.modality,
        "format": v.info.format,
        "shape_zyx": v.shape(),
        "spacing_mm_zyx": v.spacing_mm(),
        "origin_mm_xyz": v.origin_mm(),
        "direction_zyx_axes": v.direction(),
        "hu_min": lo,
        "hu_max": hi,
        "slice_count": v.info.slice_count,
        "transfer_syntaxes": v.info.transfer_syntaxes,
        "warnings": v.info.warnings,
    })
}

fn info_text(v: &Volume) -> String {
    let (lo, hi) = v.hu_range();
    let f3 = |a: [f64; 3]| format!("({:.6}, {:.6}, {:.6})", a[0], a[1], a[2]);
    let mut s = String::new();
    s += &format!(
        "series_uid:   {}\n",
        v.info.series_uid.as_deref().unwrap_or("-")
    );
    s += &format!(
        "modality:     {}\n",
        v.info.modality.as_deref().unwrap_or("-")
    );
    s += &format!("format:       {}\n", v.info.format);
    let [z, y, x] = v.shape();
    s += &format!("shape:        {z} x {y} x {x} (z, y, x)\n");
    s += &format!("spacing_mm:   {} (z, y, x)\n", f3(v.spacing_mm()));
    s += &format!("origin_mm:    {} (world x, y, z; LPS)\n", f3(v.origin_mm()));
    let d = v.direction();
    s += &format!(
        "direction:    z axis {}, y axis {}, x axis {} (world LPS unit vectors)\n",
        f3(d[0]),
        f3(d[1]),
        f3(d[2])
    );
    s += &format!("hu_range:     {lo} .. {hi}\n");
    s += &format!("slice_count:  {}\n", v.info.slice_count);
    if !v.info.transfer_syntaxes.is_empty() {
        s += &format!(
            "transfer_syntaxes: {}\n",
            v.info.transfer_syntaxes.join(", ")
        );
    }
    for w in &v.info.warnings {
        s += &format!("warning:      {w}\n");
    }
    s
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Info { input, json } => {
            let v = input.load()?;
            if json {
                println!("{:#}", info_json(&v));
            } else {
                print!("{}", info_text(&v));
            }
        }
        Command::Series {
            path,
            allow_modality,
            json,
        } => {
            let config = LoadConfig {
                allow_modality,
                ..LoadConfig::default()
            };
            let list = lungcad::io::dicom::list_series(&path, &config)?;
            if json {
                println!(
                    "{:#}",
                    serde_json::to_value(&list)
                        .map_err(|e| Error::InvalidArgument(e.to_string()))?
                );
            } else {
                print!("{list}");
            }
        }
        Command::Convert { input, output } => {
            let v = input.load()?;
            lungcad::save(&v, &output)?;
            eprintln!("wrote {}", output.display());
        }
        Command::Preprocess {
            input,
            out,
            mask_out,
            spacing,
            preview,
            config,
            print_config,
            crop,
            json,
        } => preprocess_command(
            input,
            PreprocessOutputs {
                out,
                mask_out,
                preview,
                crop,
            },
            spacing,
            config,
            print_config,
            json,
        )?,
        Command::Demo(args) => cli::demo::demo_command(args)?,
        Command::Detect(args) => return cli::detect::detect_command(args),
        Command::Lidc(args) => return cli::lidc::lidc_command(args),
        Command::Train(args) => cli::train::train_command(args)?,
        Command::Synth(args) => cli::synth::synth_command(args)?,
        Command::ImportMonai {
            state_dict,
            out,
            config,
        } => {
            let config: lungcad::model::monai::RetinaNetConfig = match &config {
                Some(p) => {
                    serde_json::from_str(&std::fs::read_to_string(p).map_err(|e| Error::Io {
                        path: p.clone(),
                        source: e,
                    })?)
                    .map_err(|e| {
                        Error::InvalidArgument(format!("{}: RetinaNet config: {e}", p.display()))
                    })?
                }
                None => Default::default(),
            };
            let (device, _) = lungcad::model::select_device(lungcad::model::DeviceChoice::Cpu)?;
            lungcad::model::monai::MonaiDetector::import(&state_dict, &config, &out, &device)?;
            eprintln!("wrote {} (every tensor checked)", out.display());
        }
        Command::InitModel {
            out,
            seed,
            detector_config,
            preprocess_config,
        } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| Error::Io {
                    path: p.clone(),
                    source: e,
                })
            };
            let config: lungcad::model::DetectorConfig = match &detector_config {
                Some(p) => serde_json::from_str(&read(p)?).map_err(|e| {
                    Error::InvalidArgument(format!("{}: detector config: {e}", p.display()))
                })?,
                None => Default::default(),
            };
            let pre = match &preprocess_config {
                Some(p) => lungcad::preprocess::PreprocessConfig::from_json(&read(p)?)?,
                None => Default::default(),
            };
            let (device, _) = lungcad::model::select_device(lungcad::model::DeviceChoice::Cpu)?;
            let d = lungcad::model::Detector::new(config, pre, &device, seed)?;
            d.save(&out)?;
            let cost = d.config.cost(d.preprocess.patch.size_vox);
            eprintln!(
                "wrote {} ({} parameters, {:.1} GFLOPs per {:?} patch, untrained)",
                out.display(),
                cost.parameters,
                cost.gflops(),
                d.preprocess.patch.size_vox
            );
        }
        Command::Benchmark {
            model,
            device,
            batch_sizes,
            patch,
            repeats,
            train,
            image,
            json,
        } => {
            // The model file is read once; a MONAI RetinaNet is timed on a whole image.
            let model = match &model {
                Some(p) => Some((p.clone(), lungcad::model::read_model_file(p)?)),
                None => None,
            };
            let monai = match &model {
                Some((p, bytes)) => lungcad::model::is_monai_model(bytes, p)?,
                None => false,
            };
            match model {
                Some((p, bytes)) if monai => {
                    monai_benchmark(&p, bytes, &device, &image, repeats, json)?
                }
                model => {
                    benchmark_command(model, &device, &batch_sizes, patch, repeats, train, json)?
                }
            }
        }
        Command::Eval {
            annotations,
            excluded,
            seriesuids,
            predictions,
            json,
            plot,
            bootstrap,
            seed,
        } => {
            use lungcad::eval;
            let inputs =
                eval::EvalInputs::from_csv(&annotations, &excluded, &seriesuids, &predictions)?;
            let config = eval::EvalConfig {
                bootstrap_resamples: bootstrap,
                seed,
                ..eval::EvalConfig::default()
            };
            let r = eval::evaluate(&inputs, &config)?;
            if json {
                println!("{:#}", eval::report_json(&r));
            } else {
                print!("{}", eval::report_text(&r));
            }
            if let Some(png) = plot {
                eval::plot_froc_png(&r, &png, &eval::PlotOptions::default())?;
                eprintln!("wrote {}", png.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Times a MONAI RetinaNet model's detection (network and post-processing, no
/// preprocessing) on random values of `image` size, median of `repeats` after a warm-up.
fn monai_benchmark(
    path: &std::path::Path,
    bytes: Vec<u8>,
    device: &str,
    image: &[usize],
    repeats: usize,
    json: bool,
) -> Result<(), Error> {
    use lungcad::model as m;
    let [x, y, z] = <[usize; 3]>::try_from(image)
        .map_err(|_| Error::InvalidArgument(format!("--image takes X,Y,Z, got {image:?}")))?;
    if x * y * z == 0 || repeats == 0 {
        return Err(Error::InvalidArgument(
            "the image and repeats must be at least 1".into(),
        ));
    }
    let (dev, dev_name) = m::select_device(device.parse()?)?;
    let detector = m::monai::MonaiDetector::from_bytes(bytes, path, &dev)?;
    let mut rng = lungcad::rng::SplitMix64::new(7);
    let values: Vec<f32> = (0..x * y * z).map(|_| rng.normal() as f32).collect();
    let window = detector.uses_sliding_window([x, y, z]);
    let limits = lungcad::Limits::default();
    let run = || detector.detect_image(&values, [x, y, z], &limits);
    let t = std::time::Instant::now();
    let boxes = run()?.len();
    let first_s = t.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..repeats {
        let t = std::time::Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if json {
        println!(
            "{}",
            serde_json::json!({"device": dev_name, "image": [x, y, z], "first_s": first_s,
                "median_s": median, "times_s": times, "boxes": boxes,
                "sliding_window": window})
        );
    } else {
        println!(
            "MONAI RetinaNet on {dev_name}, image {x}x{y}x{z}: first run {first_s:.3} s, median of {repeats} {median:.3} s, {boxes} boxes"
        );
    }
    Ok(())
}

fn benchmark_command(
    model: Option<(PathBuf, Vec<u8>)>,
    device: &str,
    batch_sizes: &[usize],
    patch: Option<usize>,
    repeats: usize,
    train: bool,
    json: bool,
) -> Result<(), Error> {
    use lungcad::model as m;
    let (dev, dev_name) = m::select_device(device.parse()?)?;
    let detector = match model {
        Some((p, bytes)) => m::Detector::from_bytes(bytes, &p, &dev)?,
        None => m::Detector::new(
            m::DetectorConfig::default(),
            lungcad::preprocess::PreprocessConfig::default(),
            &dev,
            0,
        )?,
    };
    let size = patch.map_or(detector.preprocess.patch.size_vox, |n| [n; 3]);
    if size.iter().any(|&n| n == 0 || n % 16 != 0) || repeats == 0 || batch_sizes.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "the patch edge must be a positive multiple of 16 ({size:?}), repeats and batch sizes at least 1"
        )));
    }
    let cost = detector.config.cost(size);
    let per_patch: usize = size.iter().product();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut rows = Vec::new();
    for &b in batch_sizes {
        let input: Vec<f32> = (0..b * per_patch)
            .map(|_| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        // A batch larger than the device's buffers hold runs in several passes (inference,
        // as `detect` does) or micro-batches (training, gradients accumulated).
        let per_pass = detector.max_batch(size).unwrap_or(b).clamp(1, b);
        let mut pass: Box<dyn FnMut() -> Result<(), Error>> = if train {
            let samples = training_batch(&detector, &input, b, size)?;
            let mut trainer =
                lungcad::train::Trainer::new(&detector, Default::default(), &Default::default());
            Box::new(move || trainer.step(&samples, 1e-4).map(|_| ()))
        } else {
            Box::new(|| {
                for chunk in input.chunks(per_pass * per_patch) {
                    detector.forward_batch(chunk.to_vec(), chunk.len() / per_patch, size)?;
                }
                Ok(())
            })
        };
        let t = std::time::Instant::now();
        pass()?;
        let first_s = t.elapsed().as_secs_f64();
        let mut times: Vec<f64> = (0..repeats)
            .map(|_| {
                let t = std::time::Instant::now();
                pass().map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        let median_s = times[times.len() / 2];
        let row = serde_json::json!({
            "batch_size": b,
            "first_pass_s": first_s,
            "median_s": median_s,
            "patches_per_s": b as f64 / median_s,
            "patches_per_pass": per_pass,
            "times_s": times,
        });
        if !json {
            println!(
                "batch {b:>3}: {:>8.3} s per {} (median of {repeats}), {:>8.2} patches/s; first {:.3} s{}",
                median_s,
                if train { "training step" } else { "pass" },
                b as f64 / median_s,
                first_s,
                if per_pass < b {
                    format!(" ({per_pass} patches per pass: the device's buffers hold no more)")
                } else {
                    String::new()
                }
            );
        }
        rows.push(row);
    }
    if json {
        println!(
            "{}",
            serde_json::json!({
                "device": dev_name,
                "mode": if train { "training step" } else { "inference" },
                "peak_rss_bytes": peak_rss_bytes(),
                "patch_vox": size,
                "parameters": cost.parameters,
                "gflops_per_patch": cost.gflops(),
                "results": rows,
            })
        );
    } else {
        eprintln!(
            "{dev_name}, {:?} patches, {} parameters, {:.1} GFLOPs per patch (forward){}",
            size,
            cost.parameters,
            cost.gflops(),
            peak_rss_bytes()
                .map(|b| format!(", peak resident memory {:.2} GB", b as f64 / 1e9))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Training samples of random images, each with one 10 mm nodule at its centre as target.
fn training_batch(
    detector: &lungcad::model::Detector,
    input: &[f32],
    batch: usize,
    size: [usize; 3],
) -> Result<Vec<lungcad::train::sampler::TrainSample>, Error> {
    use lungcad::detect::{encode_targets, VoxelNodule};
    let nodule = VoxelNodule {
        centre_vox: size.map(|n| n as f64 / 2.0),
        diameter_mm: 10.0,
    };
    let spacing = detector.preprocess.spacing_mm;
    let targets = encode_targets(
        &detector.config.head,
        size,
        spacing,
        &[nodule],
        &Default::default(),
    )?;
    let per: usize = size.iter().product();
    (0..batch)
        .map(|k| {
            let image =
                ndarray::Array3::from_shape_vec(size, input[k * per..(k + 1) * per].to_vec())
                    .map_err(|e| Error::InvalidArgument(format!("patch: {e}")))?;
            Ok(lungcad::train::sampler::TrainSample {
                image,
                targets: targets.clone(),
                nodules: vec![nodule],
            })
        })
        .collect()
}

/// The process's peak resident memory (Linux `VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

struct PreprocessOutputs {
    out: PathBuf,
    mask_out: Option<PathBuf>,
    preview: Option<PathBuf>,
    crop: bool,
}

fn preprocess_command(
    input: Input,
    outputs: PreprocessOutputs,
    spacing: Option<f64>,
    config: Option<PathBuf>,
    print_config: bool,
    json: bool,
) -> Result<(), Error> {
    use lungcad::preprocess::{self, PreprocessConfig};
    let mut cfg = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            PreprocessConfig::from_json(&text)?
        }
        None => PreprocessConfig::default(),
    };
    if let Some(s) = spacing {
        cfg.spacing_mm = [s; 3];
    }
    cfg.validate()?;
    if print_config {
        println!("{}", cfg.to_json());
        return Ok(());
    }
    // Refuse output names we cannot write before doing the work.
    if let Some(m) = &outputs.mask_out {
        if lungcad::io::Format::of_file_name(m) != Some(lungcad::io::Format::MetaImage) {
            return Err(Error::InvalidArgument(format!(
                "{}: the mask is written as MetaImage; use .mhd or .mha",
                m.display()
            )));
        }
    }
    if lungcad::io::Format::of_file_name(&outputs.out).is_none() {
        return Err(Error::InvalidArgument(format!(
            "{}: output must end in .mhd, .mha, .nii or .nii.gz",
            outputs.out.display()
        )));
    }
    let t0 = std::time::Instant::now();
    let volume = input.load()?;
    let load_s = t0.elapsed().as_secs_f64();
    let limits = input.load.limits();
    let input_shape = volume.shape();
    let pre = preprocess::preprocess_owned(volume, &cfg, &limits)?;
    let t1 = std::time::Instant::now();
    let (region, geometry) = if outputs.crop {
        (pre.crop, pre.crop_geometry())
    } else {
        (preprocess::VoxelBox::of_shape(pre.shape()), *pre.geometry())
    };
    let sl = ndarray::s![
        region.start[0]..region.end[0],
        region.start[1]..region.end[1],
        region.start[2]..region.end[2]
    ];
    if outputs.crop {
        let mut v = Volume::new(pre.volume.hu.slice(sl).to_owned(), geometry)?;
        v.info = pre.volume.info.clone();
        lungcad::save(&v, &outputs.out)?;
    } else {
        lungcad::save(&pre.volume, &outputs.out)?;
    }
    if let Some(m) = &outputs.mask_out {
        let opts = lungcad::io::metaimage::WriteOptions::default();
        if outputs.crop {
            let mask = pre.lung.mask.slice(sl).to_owned();
            lungcad::io::metaimage::write_mask(&mask, &geometry, m, &opts)?;
        } else {
            lungcad::io::metaimage::write_mask(&pre.lung.mask, &geometry, m, &opts)?;
        }
    }
    if let Some(p) = &outputs.preview {
        preprocess::write_preview_png(&pre, p)?;
    }
    let write_s = t1.elapsed().as_secs_f64();
    let g = pre.geometry();
    let lb = pre.lung.lung_box;
    let world = |b: [usize; 3]| g.voxel_to_world(b.map(|v| v as f64));
    let tiles = pre.tiles()?;
    let summary = serde_json::json!({
        "series_uid": pre.volume.info.series_uid,
        "input_shape_zyx": input_shape,
        "shape_zyx": pre.shape(),
        "spacing_mm_zyx": g.spacing_mm,
        "origin_mm_xyz": g.origin_mm,
        "lung_volume_ml": pre.lung.lung_volume_ml,
        "mask_volume_ml": pre.lung.mask_volume_ml,
        "lung_components": pre.lung.components,
        "lung_box_vox": {"start": lb.start, "end": lb.end},
        "lung_box_first_corner_mm_xyz": world(lb.start),
        "lung_box_last_corner_mm_xyz": world(lb.end.map(|v| v.saturating_sub(1))),
        "crop_vox": {"start": pre.crop.start, "end": pre.crop.end},
        "written_region_vox": {"start": region.start, "end": region.end},
        "tiles": tiles.len(),
        "tiles_zyx": tiles.counts(),
        "patch_size_vox": cfg.patch.size_vox,
        "seconds": {
            "load": load_s,
            "resample": pre.timings.resample_s,
            "lung_mask": pre.timings.lung_mask_s,
            "write": write_s,
        },
    });
    if json {
        println!("{summary:#}");
    } else {
        let [z, y, x] = pre.shape();
        let c = pre.crop.len();
        let t = tiles.counts();
        println!(
            "series_uid:   {}",
            pre.volume.info.series_uid.as_deref().unwrap_or("-")
        );
        println!(
            "resampled:    {z} x {y} x {x} at {:?} mm (from {} x {} x {})",
            g.spacing_mm, input_shape[0], input_shape[1], input_shape[2]
        );
        println!(
            "lungs:        {:.0} mL in {} component(s); mask {:.0} mL (dilated {} mm)",
            pre.lung.lung_volume_ml,
            pre.lung.components,
            pre.lung.mask_volume_ml,
            cfg.lung_mask.dilation_mm
        );
        println!("lung box:     voxels {:?}..{:?}", lb.start, lb.end);
        println!(
            "crop:         {} x {} x {} voxels, {} tile(s) of {:?} ({} x {} x {})",
            c[0],
            c[1],
            c[2],
            tiles.len(),
            cfg.patch.size_vox,
            t[0],
            t[1],
            t[2]
        );
        println!(
            "seconds:      load {load_s:.3}, resample {:.3}, lung mask {:.3}, write {write_s:.3}",
            pre.timings.resample_s, pre.timings.lung_mask_s
        );
    }
    eprintln!("wrote {}", outputs.out.display());
    for p in outputs.mask_out.iter().chain(outputs.preview.iter()) {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LUNGCAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    // A panic is a bug; never let one reach the user as a backtrace: report it in one line.
    std::panic::set_hook(Box::new(|_| {}));
    match std::panic::catch_unwind(move || run(cli)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!("error: internal error (a bug, please report it): {msg}");
            ExitCode::from(101)
        }
    }
}
