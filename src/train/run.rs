//! A training run, as `lungcad train` makes it: scans split into training and validation
//! (by seed), prepared once into the cache, epochs of augmented patches fed by worker
//! threads, validation (CPM) every few epochs with the best model kept, a checkpoint per
//! epoch, a metrics log and a plot of the curves.
//!
//! ```text
//! <out>/train_config.json         the TrainConfig (the whole config tree)
//! <out>/split.json                the series UIDs of the training and validation scans
//! <out>/metrics.jsonl             one JSON object per step and per epoch
//! <out>/curves.png                loss and validation CPM over the run
//! <out>/checkpoints/epoch-NNNN/   model, optimiser and state after epoch NNNN (the last
//!                                 `keep_checkpoints`), and `checkpoints/latest`
//! <out>/best.safetensors          the model of the best validation CPM
//! <out>/model.safetensors         the model after the last epoch
//! ```
//!
//! Model files are ordinary lungcad models (`lungcad detect --model`). A run is the same
//! on the same device for the same seed: each epoch's patches come from `(seed, epoch)`
//! alone, so resuming from a checkpoint continues exactly where the run was.

use super::cache::{CachedScan, ScanCache};
use super::checkpoint;
use super::dataset::ScanSource;
use super::loss::{LossConfig, LossParts};
use super::optim::{OptimizerConfig, ScheduleConfig};
use super::sampler::{for_each_batch, plan_epoch, SamplerConfig, ScanData, TrainScan};
use super::Trainer;
use crate::detect::{detections, DecodeConfig};
use crate::error::{Error, Result};
use crate::eval::{Annotations, EvalConfig, EvalInputs, Predictions};
use crate::io::metaimage::AtomicFile;
use crate::io::LoadConfig;
use crate::model::{Detector, DetectorConfig, Device};
use crate::preprocess::PreprocessConfig;
use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Validation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Fraction of the scans held out for validation, drawn by the run's seed. Default 0.1;
    /// at least one scan when there are two or more and the fraction is above 0.
    pub fraction: f64,
    /// Validate after every this many epochs (and after the last). Default 1.
    pub every_epochs: usize,
    /// Tiles per forward pass. Default 4.
    pub batch_size: usize,
    /// Decoding of the validation detections. Default: probability 0.05 and up (so the
    /// FROC curve sees low-scoring candidates), NMS IoU 0.1, 100 per scan.
    pub decode: DecodeConfig,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            fraction: 0.1,
            every_epochs: 1,
            batch_size: 4,
            decode: DecodeConfig {
                min_probability: 0.05,
                ..DecodeConfig::default()
            },
        }
    }
}

/// Everything about a training run; serialised into the run folder and checked on
/// `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Default 100.
    pub epochs: usize,
    /// Patches per optimisation step. Default 32.
    pub batch_size: usize,
    /// Patches per forward pass when the device cannot hold the batch: gradients of
    /// `batch_size / micro_batch_size` passes are summed into one step. Default: the batch.
    pub micro_batch_size: Option<usize>,
    /// Patches per epoch. Default: twice the training nodules (with `positive_fraction`
    /// 0.5, each nodule is seen about once an epoch), rounded up to whole batches.
    pub patches_per_epoch: Option<usize>,
    /// Seed of the split, the initial weights and every epoch's patches. Default 0.
    pub seed: u64,
    /// Batches the data pipeline prepares ahead of the training step. Default 2.
    pub prefetch_batches: usize,
    /// Checkpoints kept (older ones are deleted). Default 2.
    pub keep_checkpoints: usize,
    pub detector: DetectorConfig,
    pub preprocess: PreprocessConfig,
    pub sampler: SamplerConfig,
    pub loss: LossConfig,
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    pub validation: ValidationConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 100,
            batch_size: 32,
            micro_batch_size: None,
            patches_per_epoch: None,
            seed: 0,
            prefetch_batches: 2,
            keep_checkpoints: 2,
            detector: DetectorConfig::default(),
            preprocess: PreprocessConfig::default(),
            sampler: SamplerConfig::default(),
            loss: LossConfig::default(),
            optimizer: OptimizerConfig::default(),
            schedule: ScheduleConfig::default(),
            validation: ValidationConfig::default(),
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.epochs == 0 || self.batch_size == 0 || self.keep_checkpoints == 0 {
            return bad("epochs, batch_size and keep_checkpoints must be at least 1".into());
        }
        if self.micro_batch_size == Some(0) || self.patches_per_epoch == Some(0) {
            return bad("micro_batch_size and patches_per_epoch must be at least 1".into());
        }
        let v = &self.validation;
        if !(0.0..1.0).contains(&v.fraction) || v.every_epochs == 0 || v.batch_size == 0 {
            return bad(format!(
                "validation {v:?}: fraction must be in [0, 1), every_epochs and batch_size at \
                 least 1"
            ));
        }
        self.detector.validate()?;
        self.preprocess.validate()?;
        self.sampler.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate()
    }

    /// The config as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A config from JSON; missing fields take their defaults, unknown ones are refused.
    pub fn from_json(text: &str) -> Result<Self> {
        let c: TrainConfig = serde_json::from_str(text)
            .map_err(|e| Error::InvalidArgument(format!("training config: {e}")))?;
        c.validate()?;
        Ok(c)
    }
}

/// What `lungcad train`'s flags (and `lungcad.train`'s arguments) change in a config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainOverrides {
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub micro_batch_size: Option<usize>,
    pub patches_per_epoch: Option<usize>,
    /// The schedule's peak learning rate.
    pub lr: Option<f64>,
    /// The validation fraction.
    pub val_fraction: Option<f64>,
    pub seed: Option<u64>,
}

impl TrainOverrides {
    /// `config` with these settings put over it, validated.
    pub fn apply(&self, mut c: TrainConfig) -> Result<TrainConfig> {
        if let Some(v) = self.epochs {
            c.epochs = v;
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.micro_batch_size {
            c.micro_batch_size = Some(v);
        }
        if let Some(v) = self.patches_per_epoch {
            c.patches_per_epoch = Some(v);
        }
        if let Some(v) = self.lr {
            c.schedule.lr = v;
        }
        if let Some(v) = self.val_fraction {
            c.validation.fraction = v;
        }
        if let Some(v) = self.seed {
            c.seed = v;
        }
        c.validate()?;
        Ok(c)
    }
}

/// The config a run in `out` was started with (its [`CONFIG_FILE`]), for `--resume`.
pub fn run_config(out: &Path) -> Result<TrainConfig> {
    let path = out.join(CONFIG_FILE);
    TrainConfig::from_json(&std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?)
}

/// A dataset to train on: its scans ([`super::dataset::find_scans`]), how to load them and
/// where to cache them.
pub struct Dataset {
    pub scans: Vec<ScanSource>,
    pub load: LoadConfig,
    /// Root of the preprocessing cache (a versioned folder is made inside).
    pub cache_dir: PathBuf,
}

impl Dataset {
    /// The dataset of a folder, as `lungcad train --data` reads it: the nodules of
    /// `annotations` (default `<data>/annotations.csv`), the irrelevant findings of
    /// `excluded` (default `<data>/annotations_excluded.csv` when it exists), and the scans
    /// found under `data` ([`super::dataset::find_scans`]). Also returns the annotated series
    /// UIDs not found under `data`. No scan at all is an error.
    pub fn from_folder(
        data: &Path,
        annotations: Option<&Path>,
        excluded: Option<&Path>,
        load: LoadConfig,
        cache_dir: PathBuf,
    ) -> Result<(Dataset, Vec<String>)> {
        let annotations = match annotations {
            Some(p) => Annotations::from_csv(p)?,
            None => Annotations::from_csv(data.join("annotations.csv"))?,
        };
        let default_excluded = data.join("annotations_excluded.csv");
        let excluded = match excluded {
            Some(p) => Some(Annotations::from_csv(p)?),
            None if default_excluded.exists() => Some(Annotations::from_csv(default_excluded)?),
            None => None,
        };
        let (scans, missing) =
            super::dataset::find_scans(data, &annotations, excluded.as_ref(), &load)?;
        if scans.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "no scans (.mhd, .mha, .nii, .nii.gz or DICOM) under {}",
                data.display()
            )));
        }
        Ok((
            Dataset {
                scans,
                load,
                cache_dir,
            },
            missing,
        ))
    }
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Step(StepRecord),
    Epoch(EpochRecord),
}

impl Record {
    fn epoch(&self) -> usize {
        match self {
            Record::Step(s) => s.epoch,
            Record::Epoch(e) => e.epoch,
        }
    }
}

/// One optimisation step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based.
    pub epoch: usize,
    /// 1-based, counted over the run.
    pub step: usize,
    pub lr: f64,
    pub loss: LossParts,
    pub patches: usize,
    /// Seconds of the step (forward, backward, optimiser).
    pub step_s: f64,
    /// Seconds the step waited for its batch from the data pipeline (0 when the pipeline
    /// keeps up).
    pub data_wait_s: f64,
}

/// One epoch: means over its steps, and its validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub steps: usize,
    pub loss: LossParts,
    /// Patches trained per second of the epoch's wall-clock time (data waits included).
    pub patches_per_s: f64,
    /// Seconds the steps waited for data, over the epoch.
    pub data_wait_s: f64,
    pub seconds: f64,
    pub validation: Option<Validation>,
    /// Whether this epoch's model became `best.safetensors`.
    pub best: bool,
}

/// Detection on the validation scans, scored with the LUNA16 protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// `None` when the validation scans hold no nodule.
    pub cpm: Option<f64>,
    /// Sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 false positives per scan.
    pub sensitivities: [f64; 7],
    pub nodules: usize,
    pub detected: usize,
    pub scans: usize,
    pub seconds: f64,
}

/// What a run reports as it goes (for progress bars and logs).
#[derive(Debug)]
pub enum Event<'a> {
    /// Scan `done` of `total` is in the cache (`prepared_now`: it was preprocessed now).
    Prepared {
        done: usize,
        total: usize,
        series_uid: &'a str,
        prepared_now: bool,
    },
    /// Training starts (or resumes) at `first_epoch` (1-based).
    Started {
        first_epoch: usize,
        epochs: usize,
        steps_per_epoch: usize,
        train_scans: usize,
        val_scans: usize,
        train_nodules: usize,
    },
    Step(&'a StepRecord),
    /// Validation scan `done` of `total` detected.
    Validating {
        done: usize,
        total: usize,
    },
    Epoch(&'a EpochRecord),
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub epochs: usize,
    pub final_model: PathBuf,
    /// The best model and its CPM, when validation found nodules to score.
    pub best: Option<(PathBuf, f64, usize)>,
    pub last_epoch: Option<EpochRecord>,
}

/// What a checkpoint's `state.json` holds besides the network and optimiser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunState {
    /// Epochs completed.
    epoch: usize,
    /// Steps completed.
    step: usize,
    best_cpm: Option<f64>,
    best_epoch: Option<usize>,
    config: TrainConfig,
}

pub const CONFIG_FILE: &str = "train_config.json";
pub const SPLIT_FILE: &str = "split.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CURVES_FILE: &str = "curves.png";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const BEST_MODEL: &str = "best.safetensors";
pub const FINAL_MODEL: &str = "model.safetensors";

/// Splits scans into training and validation by seed: `fraction` of them (at least one when
/// there are two or more and the fraction is above 0) go to validation. The split depends
/// on the set of UIDs and the seed, not on their order.
pub fn split_scans(
    scans: &[ScanSource],
    fraction: f64,
    seed: u64,
) -> (Vec<ScanSource>, Vec<ScanSource>) {
    let mut order: Vec<&ScanSource> = scans.iter().collect();
    order.sort_by(|a, b| a.series_uid.cmp(&b.series_uid));
    let mut rng = SplitMix64::new(seed ^ 0x5EED_5917_u64);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut n_val = (order.len() as f64 * fraction).round() as usize;
    if fraction > 0.0 && order.len() >= 2 {
        n_val = n_val.max(1);
    }
    n_val = n_val.min(order.len().saturating_sub(1));
    let val = order[..n_val].iter().map(|s| (*s).clone()).collect();
    let train = order[n_val..].iter().map(|s| (*s).clone()).collect();
    (train, val)
}

/// Saves a model file atomically (a temporary file renamed into place).
fn save_model_atomically(detector: &Detector, path: &Path) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    detector.save(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Reads `metrics.jsonl` (missing: empty).
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Appends records to the metrics log, one JSON object per line, flushed per line.
struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens the log, keeping only `keep` (the records up to the checkpoint resumed from).
    fn open(path: &Path, keep: &[Record]) -> Result<MetricsLog> {
        let mut text = String::new();
        for r in keep {
            text.push_str(&serde_json::to_string(r).unwrap_or_default());
            text.push('\n');
        }
        AtomicFile::write_bytes(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    fn push(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r)
            .map_err(|e| Error::InvalidArgument(format!("metrics record: {e}")))?;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// Runs (or, with `resume`, continues) the training run in `out`; see the module docs.
///
/// A run folder that already holds a checkpoint is refused without `resume`; with it, the
/// config must be the one the run was started with (only `epochs` may differ, to extend a
/// run).
pub fn train(
    config: &TrainConfig,
    data: &Dataset,
    out: &Path,
    device: &Device,
    resume: bool,
    on_event: &mut dyn FnMut(Event),
) -> Result<RunSummary> {
    config.validate()?;
    // A GPU that cannot hold one patch fails now, not after the cache is prepared.
    let patch = config.preprocess.patch.size_vox;
    crate::model::check_patches_fit(device, &config.detector, 1, patch)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let ckpt_dir = out.join(CHECKPOINTS_DIR);
    let existing = checkpoint::latest(&ckpt_dir)?;
    if existing.is_some() && !resume {
        return Err(Error::InvalidArgument(format!(
            "{} already holds a training run: resume it or choose another folder",
            out.display()
        )));
    }

    // The run resumed: its trainer and state; its config must be this one (but for the
    // epochs).
    let resumed = match &existing {
        Some(_) => {
            let (trainer, value) =
                Trainer::resume(&ckpt_dir, device, config.loss.clone(), &config.optimizer)?
                    .ok_or_else(|| Error::InvalidArgument("the checkpoint vanished".into()))?;
            let mut state: RunState =
                serde_json::from_value(value).map_err(|e| Error::Checkpoint {
                    path: ckpt_dir.clone(),
                    message: format!("state: {e}"),
                })?;
            let mut same = state.config.clone();
            same.epochs = config.epochs;
            if &same != config {
                return Err(Error::InvalidArgument(format!(
                    "{} was trained with another config (see its {CONFIG_FILE}); only the \
                     number of epochs may change on resume",
                    out.display()
                )));
            }
            state.config = config.clone();
            Some((trainer, state))
        }
        None => None,
    };

    // Split and cache.
    let (train_src, val_src) = split_scans(&data.scans, config.validation.fraction, config.seed);
    if train_src.iter().all(|s| s.nodules.is_empty()) {
        return Err(Error::InvalidArgument(
            "no annotated nodule in the training scans".into(),
        ));
    }
    let split = serde_json::json!({
        "train": train_src.iter().map(|s| &s.series_uid).collect::<Vec<_>>(),
        "validation": val_src.iter().map(|s| &s.series_uid).collect::<Vec<_>>(),
    });
    let split_path = out.join(SPLIT_FILE);
    if resumed.is_some() {
        let before: serde_json::Value = std::fs::read_to_string(&split_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        if before != split {
            return Err(Error::InvalidArgument(format!(
                "the dataset's scans differ from those the run in {} was split from (see its \
                 {SPLIT_FILE}): resuming would train on another split",
                out.display()
            )));
        }
    }
    AtomicFile::write_bytes(&split_path, format!("{split:#}\n").as_bytes())?;
    AtomicFile::write_bytes(&out.join(CONFIG_FILE), (config.to_json() + "\n").as_bytes())?;
    let cache = ScanCache::open(&data.cache_dir, &config.preprocess)?;
    let total = train_src.len() + val_src.len();
    let mut prepared = 0;
    let mut prepare = |s: &ScanSource, on_event: &mut dyn FnMut(Event)| -> Result<CachedScan> {
        let (c, now) = cache.prepare(s, &data.load)?;
        prepared += 1;
        on_event(Event::Prepared {
            done: prepared,
            total,
            series_uid: &s.series_uid,
            prepared_now: now,
        });
        Ok(c)
    };
    let mut train_scans = Vec::with_capacity(train_src.len());
    for s in &train_src {
        let c = prepare(s, on_event)?;
        train_scans.push(TrainScan::new(
            &s.series_uid,
            ScanData::Cached(c),
            &s.nodules,
        ));
    }
    let mut val_scans = Vec::with_capacity(val_src.len());
    for s in &val_src {
        val_scans.push(prepare(s, on_event)?);
    }

    // The network, fresh or resumed.
    let (mut trainer, mut state) = match resumed {
        Some(resumed) => resumed,
        None => {
            let detector = Detector::new(
                config.detector.clone(),
                config.preprocess.clone(),
                device,
                config.seed,
            )?;
            let trainer = Trainer::new(&detector, config.loss.clone(), &config.optimizer);
            let state = RunState {
                epoch: 0,
                step: 0,
                best_cpm: None,
                best_epoch: None,
                config: config.clone(),
            };
            (trainer, state)
        }
    };
    let metrics_path = out.join(METRICS_FILE);
    let mut records: Vec<Record> = read_metrics(&metrics_path)?
        .into_iter()
        .filter(|r| r.epoch() <= state.epoch)
        .collect();
    let mut log = MetricsLog::open(&metrics_path, &records)?;

    let train_nodules: usize = train_scans.iter().map(|s| s.nodules.len()).sum();
    let patches = config.patches_per_epoch.unwrap_or_else(|| {
        let p = 2 * train_nodules;
        p.div_ceil(config.batch_size).max(1) * config.batch_size
    });
    let steps_per_epoch = patches.div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let micro = config.micro_batch_size.unwrap_or(config.batch_size);
    let patch = config.preprocess.patch.size_vox;
    let head = config.detector.head.clone();
    on_event(Event::Started {
        first_epoch: state.epoch + 1,
        epochs: config.epochs,
        steps_per_epoch,
        train_scans: train_scans.len(),
        val_scans: val_scans.len(),
        train_nodules,
    });

    let mut last_epoch = None;
    for epoch in state.epoch + 1..=config.epochs {
        let t_epoch = Instant::now();
        let plan = plan_epoch(
            &train_scans,
            patches,
            epoch as u64,
            config.seed,
            &config.sampler,
        )?;
        let mut sum = LossParts::default();
        let (mut steps, mut wait) = (0usize, 0.0f64);
        let mut ready = Instant::now();
        for_each_batch(
            &train_scans,
            &plan,
            config.batch_size,
            patch,
            &head,
            &config.sampler,
            config.prefetch_batches,
            |_, batch| {
                let t0 = Instant::now();
                let lr = config.schedule.lr_at(state.step, total_steps);
                let loss = trainer.step_accumulated(&batch, lr, micro)?;
                state.step += 1;
                steps += 1;
                let waited = (t0 - ready).as_secs_f64();
                wait += waited;
                sum += loss;
                let rec = StepRecord {
                    epoch,
                    step: state.step,
                    lr,
                    loss,
                    patches: batch.len(),
                    step_s: t0.elapsed().as_secs_f64(),
                    data_wait_s: waited,
                };
                on_event(Event::Step(&rec));
                let rec = Record::Step(rec);
                log.push(&rec)?;
                records.push(rec);
                ready = Instant::now();
                Ok(())
            },
        )?;
        let seconds = t_epoch.elapsed().as_secs_f64();
        let n = steps.max(1) as f64;
        let mean = LossParts {
            positive: sum.positive / n,
            negative: sum.negative / n,
            regression: sum.regression / n,
            total: sum.total / n,
            positives: sum.positives,
        };
        let validate_now = !val_scans.is_empty()
            && (epoch % config.validation.every_epochs == 0 || epoch == config.epochs);
        let detector = trainer.detector();
        let validation = if validate_now {
            Some(validate(
                &detector,
                &val_scans,
                &val_src,
                &config.validation,
                on_event,
            )?)
        } else {
            None
        };
        let cpm = validation.as_ref().and_then(|v| v.cpm);
        let best = matches!((cpm, state.best_cpm), (Some(c), None) if c.is_finite())
            || matches!((cpm, state.best_cpm), (Some(c), Some(b)) if c > b);
        if best {
            save_model_atomically(&detector, &out.join(BEST_MODEL))?;
            state.best_cpm = cpm;
            state.best_epoch = Some(epoch);
        }
        let rec = EpochRecord {
            epoch,
            steps,
            loss: mean,
            patches_per_s: plan.len() as f64 / seconds.max(1e-9),
            data_wait_s: wait,
            seconds,
            validation,
            best,
        };
        on_event(Event::Epoch(&rec));
        last_epoch = Some(rec.clone());
        let rec = Record::Epoch(rec);
        log.push(&rec)?;
        records.push(rec);
        state.epoch = epoch;
        let state_json = serde_json::to_value(&state)
            .map_err(|e| Error::InvalidArgument(format!("run state: {e}")))?;
        trainer.save_checkpoint(&ckpt_dir, &format!("epoch-{epoch:04}"), &state_json)?;
        prune_checkpoints(&ckpt_dir, config.keep_checkpoints)?;
        super::curves::plot_curves(&records)?.write_png(out.join(CURVES_FILE))?;
    }
    let final_model = out.join(FINAL_MODEL);
    save_model_atomically(&trainer.detector(), &final_model)?;
    Ok(RunSummary {
        epochs: state.epoch,
        final_model,
        best: state
            .best_cpm
            .zip(state.best_epoch)
            .map(|(c, e)| (out.join(BEST_MODEL), c, e)),
        last_epoch,
    })
}

/// Deletes all but the newest `keep` checkpoint folders (`epoch-*`) in `dir`.
fn prune_checkpoints(dir: &Path, keep: usize) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("epoch-"))
        .collect();
    names.sort();
    let n = names.len();
    for name in names.into_iter().take(n.saturating_sub(keep)) {
        let p = dir.join(name);
        std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

/// Detects on every validation scan (one in memory at a time) and scores the detections
/// with the LUNA16 protocol (no bootstrap).
fn validate(
    detector: &Detector,
    scans: &[CachedScan],
    sources: &[ScanSource],
    config: &ValidationConfig,
    on_event: &mut dyn FnMut(Event),
) -> Result<Validation> {
    let t0 = Instant::now();
    let mut candidates = Vec::new();
    for (i, scan) in scans.iter().enumerate() {
        let pre = scan.load()?;
        let found = detector.candidates(&pre, config.batch_size, &config.decode, &mut |_, _| {})?;
        for d in detections(found, pre.geometry(), &config.decode) {
            candidates.push(crate::eval::Candidate {
                seriesuid: scan.series_uid().to_string(),
                coord_x: d.centre_world[0],
                coord_y: d.centre_world[1],
                coord_z: d.centre_world[2],
                probability: d.probability as f64,
            });
        }
        on_event(Event::Validating {
            done: i + 1,
            total: scans.len(),
        });
    }
    let inputs = EvalInputs {
        annotations: Annotations::from_findings(
            sources.iter().flat_map(|s| s.nodules.clone()).collect(),
        ),
        excluded: Annotations::from_findings(
            sources.iter().flat_map(|s| s.excluded.clone()).collect(),
        ),
        seriesuids: sources.iter().map(|s| s.series_uid.clone()).collect(),
        predictions: Predictions::from_candidates(candidates),
    };
    let nodules = inputs.annotations.len();
    let r = crate::eval::evaluate(
        &inputs,
        &EvalConfig {
            bootstrap_resamples: 0,
            ..EvalConfig::default()
        },
    )?;
    Ok(Validation {
        cpm: (nodules > 0).then_some(r.cpm),
        sensitivities: r.sensitivities,
        nodules,
        detected: r.tp,
        scans: r.scans,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uid: &str) -> ScanSource {
        ScanSource {
            series_uid: uid.into(),
            path: PathBuf::from(format!("{uid}.mhd")),
            dicom: false,
            nodules: Vec::new(),
            excluded: Vec::new(),
        }
    }

    #[test]
    fn splits_are_seeded_order_free_and_never_empty() {
        let scans: Vec<ScanSource> = (0..20).map(|i| source(&format!("s{i:02}"))).collect();
        let (t, v) = split_scans(&scans, 0.1, 7);
        assert_eq!((t.len(), v.len()), (18, 2));
        let mut reversed = scans.clone();
        reversed.reverse();
        let (_, v2) = split_scans(&reversed, 0.1, 7);
        assert_eq!(v, v2, "order of the input does not matter");
        let (_, v3) = split_scans(&scans, 0.1, 8);
        assert_ne!(v, v3, "the seed does");
        assert_eq!(split_scans(&scans[..2], 0.01, 0).1.len(), 1);
        assert_eq!(split_scans(&scans[..1], 0.5, 0).1.len(), 0);
        assert_eq!(split_scans(&scans, 0.0, 0).1.len(), 0);
    }

    #[test]
    fn config_round_trips_and_checks() {
        let c = TrainConfig {
            epochs: 3,
            micro_batch_size: Some(8),
            optimizer: OptimizerConfig::sgd(),
            ..TrainConfig::default()
        };
        assert_eq!(TrainConfig::from_json(&c.to_json()).unwrap(), c);
        assert_eq!(
            TrainConfig::from_json(r#"{"epochs": 5}"#)
                .unwrap()
                .batch_size,
            32
        );
        assert!(TrainConfig::from_json(r#"{"epoch": 5}"#).is_err());
        assert!(TrainConfig::from_json(r#"{"batch_size": 0}"#).is_err());
        assert!(TrainConfig::from_json(r#"{"validation": {"fraction": 1.0}}"#).is_err());
    }
}
