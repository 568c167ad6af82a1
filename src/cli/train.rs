//! `lungcad train`.

use clap::Args;
use lungcad::train::run::{self, Dataset, Event, TrainConfig, TrainOverrides};
use lungcad::Error;
use lungcad::{Limits, LoadConfig};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct TrainArgs {
    /// Dataset folder: LUNA16 (subset*/<uid>.mhd), Tianchi (.mhd folders), <uid>.nii(.gz)
    /// files or DICOM series folders, searched recursively.
    #[arg(long)]
    data: PathBuf,
    /// Nodules, LUNA16 columns seriesuid,coordX,coordY,coordZ,diameter_mm [default:
    /// <data>/annotations.csv].
    #[arg(long)]
    annotations: Option<PathBuf>,
    /// Irrelevant findings, never trained as negatives nor counted in validation [default:
    /// <data>/annotations_excluded.csv when it exists].
    #[arg(long)]
    excluded: Option<PathBuf>,
    /// Run folder: config, split, metrics.jsonl, curves.png, checkpoints/, best.safetensors,
    /// model.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Training settings as JSON (a TrainConfig: network, preprocessing, sampler, loss,
    /// optimiser, schedule, validation; missing fields take their defaults). Print the
    /// defaults with --print-config. The flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the training config in use as JSON and exit.
    #[arg(long)]
    print_config: bool,
    /// Continue the run in --out from its latest checkpoint, with the config it was started
    /// with (only --epochs may change it).
    #[arg(long)]
    resume: bool,
    /// Epochs [default: 100].
    #[arg(long)]
    epochs: Option<usize>,
    /// Patches per optimisation step [default: 32].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Patches per forward pass when the device cannot hold the batch (gradient
    /// accumulation) [default: the batch].
    #[arg(long)]
    micro_batch_size: Option<usize>,
    /// Patches per epoch [default: twice the training nodules, in whole batches].
    #[arg(long)]
    patches_per_epoch: Option<usize>,
    /// Peak learning rate [default: 0.001].
    #[arg(long)]
    lr: Option<f64>,
    /// Fraction of the scans held out for validation [default: 0.1].
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Seed of the split, the initial weights and the patches [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// auto (a wgpu GPU when there is one, else cpu), wgpu, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Where preprocessed scans are cached (reused across runs with the same preprocessing)
    /// [default: <out>/cache].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Refuse scans with more voxels than this.
    #[arg(long, default_value_t = Limits::default().max_voxels)]
    max_voxels: u64,
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| super::io_error(path, e))
}

impl TrainArgs {
    /// The config: the run's own on --resume, else --config or the defaults; then the
    /// flags.
    fn config(&self) -> Result<TrainConfig, Error> {
        let base = if self.resume {
            run::run_config(&self.out)?
        } else if let Some(p) = &self.config {
            TrainConfig::from_json(&read(p)?)?
        } else {
            TrainConfig::default()
        };
        TrainOverrides {
            epochs: self.epochs,
            batch_size: self.batch_size,
            micro_batch_size: self.micro_batch_size,
            patches_per_epoch: self.patches_per_epoch,
            lr: self.lr,
            val_fraction: self.val_fraction,
            seed: self.seed,
        }
        .apply(base)
    }
}

pub fn train_command(args: TrainArgs) -> Result<(), Error> {
    let config = args.config()?;
    if args.print_config {
        println!("{}", config.to_json());
        return Ok(());
    }
    let load = LoadConfig {
        limits: Limits {
            max_voxels: args.max_voxels,
            ..Limits::default()
        },
        ..LoadConfig::default()
    };
    let (data, missing) = Dataset::from_folder(
        &args.data,
        args.annotations.as_deref(),
        args.excluded.as_deref(),
        load,
        args.cache.clone().unwrap_or_else(|| args.out.join("cache")),
    )?;
    if !missing.is_empty() {
        eprintln!(
            "warning: {} annotated series not found under {} (first: {})",
            missing.len(),
            args.data.display(),
            missing[0]
        );
    }
    let choice: lungcad::model::DeviceChoice = args.device.parse()?;
    let (mut device, mut device_name) = lungcad::model::select_device(choice)?;
    // With auto, the CPU instead of a GPU that cannot hold one patch of the network.
    let patch = config.preprocess.patch.size_vox;
    if choice == lungcad::model::DeviceChoice::Auto
        && lungcad::model::check_patches_fit(&device, &config.detector, 1, patch).is_err()
    {
        eprintln!(
            "{device_name} cannot hold one {patch:?} patch of this network: training on the CPU"
        );
        (device, device_name) = lungcad::model::select_device(lungcad::model::DeviceChoice::Cpu)?;
    }
    let style = |t: &str| {
        indicatif::ProgressStyle::with_template(t)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    };
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut steps = 0u64;
    let summary = run::train(
        &config,
        &data,
        &args.out,
        &device,
        args.resume,
        &mut |ev| match ev {
            Event::Prepared {
                done,
                total,
                series_uid,
                ..
            } => {
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(total as u64);
                    b.set_style(style("cache [{bar:30}] {pos}/{len} scans {msg}"));
                    b
                });
                b.set_position(done as u64);
                b.set_message(series_uid.to_string());
                if done == total {
                    b.finish_and_clear();
                    bar = None;
                }
            }
            Event::Started {
                first_epoch,
                epochs,
                steps_per_epoch,
                train_scans,
                val_scans,
                train_nodules,
            } => {
                steps = steps_per_epoch as u64;
                eprintln!(
                    "training on {device_name}: {train_scans} scans ({train_nodules} nodules), \
                 {val_scans} for validation; epochs {first_epoch} to {epochs}, \
                 {steps_per_epoch} steps of {} patches each",
                    config.batch_size
                )
            }
            Event::Step(s) => {
                let b = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(steps);
                    b.set_style(style("epoch {prefix} [{bar:30}] {pos}/{len} steps {msg}"));
                    b
                });
                b.set_prefix(s.epoch.to_string());
                b.set_message(format!("loss {:.4} lr {:.2e}", s.loss.total, s.lr));
                b.inc(1);
            }
            Event::Validating { done, total } => {
                if let Some(b) = &bar {
                    b.set_message(format!("validating {done}/{total}"));
                }
            }
            Event::Epoch(e) => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                let val = match &e.validation {
                    Some(v) => match v.cpm {
                        Some(c) => format!(
                            ", validation CPM {c:.3} ({}/{} nodules){}",
                            v.detected,
                            v.nodules,
                            if e.best { ", best so far" } else { "" }
                        ),
                        None => ", validation scans hold no nodule".into(),
                    },
                    None => String::new(),
                };
                eprintln!(
                    "epoch {}: loss {:.4} (positive {:.4}, negative {:.4}, regression {:.4}), \
                     {:.1} patches/s, waited {:.1} s for data{val}",
                    e.epoch,
                    e.loss.total,
                    e.loss.positive,
                    e.loss.negative,
                    e.loss.regression,
                    e.patches_per_s,
                    e.data_wait_s
                );
            }
        },
    )?;
    eprintln!("wrote {}", summary.final_model.display());
    if let Some((path, cpm, epoch)) = &summary.best {
        eprintln!(
            "best validation CPM {cpm:.3} at epoch {epoch}: {}",
            path.display()
        );
    }
    Ok(())
}
