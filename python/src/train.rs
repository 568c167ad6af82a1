//! `train`, with `lungcad train`'s options.

use crate::errors::{invalid, json_to_py, py_to_json, run};
use crate::volume::limits;
use lungcad::model::select_device;
use lungcad::train::run::{self as tr, Dataset, Event, TrainConfig, TrainOverrides};
use lungcad::LoadConfig;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// The outcome of `train`.
#[pyclass(frozen, get_all, module = "lungcad", name = "TrainResult")]
pub struct PyTrainResult {
    /// Epochs completed.
    pub epochs: usize,
    /// The model after the last epoch (`<out>/model.safetensors`).
    pub final_model: PathBuf,
    /// The model of the best validation CPM, when validation found nodules to score.
    pub best_model: Option<PathBuf>,
    pub best_cpm: Option<f64>,
    pub best_epoch: Option<usize>,
}

#[pymethods]
impl PyTrainResult {
    fn __repr__(&self) -> String {
        format!(
            "TrainResult(epochs={}, final_model='{}', best_cpm={:?})",
            self.epochs,
            self.final_model.display(),
            self.best_cpm
        )
    }
}

/// A config: a dict (a partial `TrainConfig`; missing fields take the defaults) or a JSON
/// file.
#[derive(FromPyObject)]
pub enum ConfigArg<'py> {
    Dict(Bound<'py, PyDict>),
    Path(PathBuf),
}

/// Trains a detector on a dataset folder, as `lungcad train` does (same options, same run
/// folder: config, split, metrics.jsonl, curves.png, checkpoints, best and final models).
/// `on_epoch`, when given, is called after each epoch with its record (a dict, as in
/// metrics.jsonl); an exception it raises is raised when the run ends.
#[pyfunction]
#[pyo3(signature = (
    data, out, *, annotations = None, excluded = None, config = None, epochs = None,
    batch_size = None, micro_batch_size = None, patches_per_epoch = None, lr = None,
    val_fraction = None, seed = None, device = "auto", cache = None, resume = false,
    max_voxels = None, on_epoch = None
))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    data: PathBuf,
    out: PathBuf,
    annotations: Option<PathBuf>,
    excluded: Option<PathBuf>,
    config: Option<ConfigArg<'_>>,
    epochs: Option<usize>,
    batch_size: Option<usize>,
    micro_batch_size: Option<usize>,
    patches_per_epoch: Option<usize>,
    lr: Option<f64>,
    val_fraction: Option<f64>,
    seed: Option<u64>,
    device: &str,
    cache: Option<PathBuf>,
    resume: bool,
    max_voxels: Option<u64>,
    on_epoch: Option<Py<PyAny>>,
) -> PyResult<PyTrainResult> {
    if resume && config.is_some() {
        return Err(invalid(
            "resume continues a run with its own config: do not pass config",
        ));
    }
    // The config as JSON text, or the file to read it from (inside the GIL-free part).
    let config: Option<Result<String, PathBuf>> = match config {
        Some(ConfigArg::Dict(d)) => Some(Ok(py_to_json(d.as_any())?)),
        Some(ConfigArg::Path(p)) => Some(Err(p)),
        None => None,
    };
    let choice = device.parse().map_err(crate::errors::to_py)?;
    let overrides = TrainOverrides {
        epochs,
        batch_size,
        micro_batch_size,
        patches_per_epoch,
        lr,
        val_fraction,
        seed,
    };
    let mut callback_error: Option<PyErr> = None;
    let (summary, missing) = run(py, || {
        let base = match &config {
            _ if resume => tr::run_config(&out)?,
            Some(Ok(text)) => TrainConfig::from_json(text)?,
            Some(Err(p)) => TrainConfig::from_json(
                &std::fs::read_to_string(p).map_err(|e| lungcad::Error::io(p, e))?,
            )?,
            None => TrainConfig::default(),
        };
        let config = overrides.apply(base)?;
        let load = LoadConfig {
            limits: limits(max_voxels),
            ..LoadConfig::default()
        };
        let (dataset, missing) = Dataset::from_folder(
            &data,
            annotations.as_deref(),
            excluded.as_deref(),
            load,
            cache.clone().unwrap_or_else(|| out.join("cache")),
        )?;
        let (dev, _) = select_device(choice)?;
        let summary = tr::train(&config, &dataset, &out, &dev, resume, &mut |ev| {
            if let (Event::Epoch(e), Some(cb)) = (ev, &on_epoch) {
                if callback_error.is_some() {
                    return;
                }
                let Ok(text) = serde_json::to_string(e) else {
                    return;
                };
                Python::attach(|py| {
                    if let Err(err) = json_to_py(py, &text).and_then(|d| cb.call1(py, (d,))) {
                        callback_error = Some(err);
                    }
                });
            }
        })?;
        Ok((summary, missing))
    })?;
    if !missing.is_empty() {
        let msg = std::ffi::CString::new(format!(
            "{} annotated series not found under {} (first: {})",
            missing.len(),
            data.display(),
            missing[0]
        ))
        .unwrap_or_default();
        PyErr::warn(
            py,
            &py.get_type::<pyo3::exceptions::PyUserWarning>(),
            &msg,
            1,
        )?;
    }
    if let Some(e) = callback_error {
        return Err(e);
    }
    let (best_model, best_cpm, best_epoch) = match summary.best {
        Some((p, c, e)) => (Some(p), Some(c), Some(e)),
        None => (None, None, None),
    };
    Ok(PyTrainResult {
        epochs: summary.epochs,
        final_model: summary.final_model,
        best_model,
        best_cpm,
        best_epoch,
    })
}
