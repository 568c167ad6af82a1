//! `lungcad._lungcad`: the Rust side of the Python package `lungcad`. A thin layer over the
//! `lungcad` crate: the same names and defaults, numpy arrays in and out, the GIL released
//! during loading, preprocessing, detection, evaluation and training, and errors mapped to
//! Python exceptions in one place (`errors.rs`).

mod detector;
mod errors;
mod eval;
mod train;
mod volume;

use errors::{invalid, json_to_py};
use pyo3::prelude::*;

/// The defaults of a config, as a dict: `preprocess` (PreprocessConfig), `detector`
/// (DetectorConfig), `decode` (DecodeConfig), `eval` (EvalConfig), `train` (TrainConfig),
/// `synth` (SynthConfig) or `synth_coarse`.
#[pyfunction]
fn default_config<'py>(py: Python<'py>, kind: &str) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::to_string as js;
    let text = match kind {
        "preprocess" => js(&lungcad::preprocess::PreprocessConfig::default()),
        "detector" => js(&lungcad::model::DetectorConfig::default()),
        "decode" => js(&lungcad::detect::DecodeConfig::default()),
        "eval" => js(&lungcad::eval::EvalConfig::default()),
        "train" => js(&lungcad::train::run::TrainConfig::default()),
        "synth" => js(&lungcad::synth::SynthConfig::default()),
        "synth_coarse" => js(&lungcad::synth::SynthConfig::coarse()),
        other => {
            return Err(invalid(format!(
                "no config {other:?}: use preprocess, detector, decode, eval, train, synth or synth_coarse"
            )))
        }
    }
    .map_err(|e| invalid(e.to_string()))?;
    json_to_py(py, &text)
}

#[pymodule]
fn _lungcad(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SHIPPED_MODEL_NAME", lungcad::model::SHIPPED_MODEL_NAME)?;
    m.add_class::<volume::PyVolume>()?;
    m.add_class::<volume::PyPreprocessed>()?;
    m.add_class::<detector::PyDetector>()?;
    m.add_class::<detector::PyNodule>()?;
    m.add_class::<detector::PyPhantom>()?;
    m.add_class::<detector::PySynthNodule>()?;
    m.add_class::<eval::PyFrocResult>()?;
    m.add_class::<train::PyTrainResult>()?;
    m.add_function(wrap_pyfunction!(volume::load, m)?)?;
    m.add_function(wrap_pyfunction!(volume::list_series, m)?)?;
    m.add_function(wrap_pyfunction!(volume::preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(detector::synth, m)?)?;
    m.add_function(wrap_pyfunction!(detector::import_monai, m)?)?;
    m.add_function(wrap_pyfunction!(eval::_evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(eval::read_lidc_file, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    m.add_function(wrap_pyfunction!(default_config, m)?)?;
    Ok(())
}
