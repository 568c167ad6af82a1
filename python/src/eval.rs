//! `evaluate` (LUNA16 FROC/CPM) and `FrocResult`.

use crate::errors::{invalid, json_to_py, py_to_json, run};
use lungcad::eval::{
    evaluate, read_seriesuids, Annotations, Candidate, EvalConfig, EvalInputs, Finding, FrocResult,
    Predictions,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// Findings: a LUNA16 CSV, or rows (seriesuid, coordX, coordY, coordZ, diameter_mm).
#[derive(FromPyObject)]
pub enum FindingsArg {
    Path(PathBuf),
    Rows(Vec<(String, f64, f64, f64, Option<f64>)>),
}

/// A submission: a LUNA16 CSV, or rows (seriesuid, coordX, coordY, coordZ, probability).
#[derive(FromPyObject)]
pub enum PredictionsArg {
    Path(PathBuf),
    Rows(Vec<(String, f64, f64, f64, f64)>),
}

/// The scans: a CSV of series UIDs (one per line), or the UIDs.
#[derive(FromPyObject)]
pub enum ScansArg {
    Path(PathBuf),
    Uids(Vec<String>),
}

fn findings(arg: FindingsArg) -> lungcad::Result<Annotations> {
    match arg {
        FindingsArg::Path(p) => Annotations::from_csv(p),
        FindingsArg::Rows(rows) => Ok(Annotations::from_findings(
            rows.into_iter()
                .map(|(seriesuid, coord_x, coord_y, coord_z, d)| Finding {
                    seriesuid,
                    coord_x,
                    coord_y,
                    coord_z,
                    diameter_mm: d.filter(|d| *d >= 0.0),
                })
                .collect(),
        )),
    }
}

/// The result of a LUNA16 evaluation.
#[pyclass(frozen, module = "lungcad", name = "FrocResult")]
pub struct PyFrocResult {
    inner: FrocResult,
}

#[pymethods]
impl PyFrocResult {
    /// Competition performance metric: the mean sensitivity at the seven operating points.
    #[getter]
    fn cpm(&self) -> f64 {
        self.inner.cpm
    }

    /// Bootstrap confidence interval of the CPM (NaN without bootstrap).
    #[getter]
    fn cpm_ci(&self) -> (f64, f64) {
        self.inner.cpm_ci
    }

    /// The operating points: 1/8, 1/4, 1/2, 1, 2, 4, 8 false positives per scan.
    #[getter]
    fn fps_per_scan(&self) -> Vec<f64> {
        self.inner.fps_per_scan.to_vec()
    }

    /// Sensitivity at each operating point.
    #[getter]
    fn sensitivities(&self) -> Vec<f64> {
        self.inner.sensitivities.to_vec()
    }

    /// Detected nodules.
    #[getter]
    fn tp(&self) -> usize {
        self.inner.tp
    }

    /// False-positive candidates.
    #[getter]
    fn fp(&self) -> usize {
        self.inner.fp
    }

    /// Missed nodules (`fn` in `to_dict()`).
    #[getter]
    fn fn_(&self) -> usize {
        self.inner.fn_
    }

    /// Nodules on the evaluated scans.
    #[getter]
    fn nodules(&self) -> usize {
        self.inner.nodules
    }

    /// Scans evaluated.
    #[getter]
    fn scans(&self) -> usize {
        self.inner.scans
    }

    /// The FROC curve: (false positives per scan, sensitivity, threshold) per point.
    #[getter]
    fn curve(&self) -> Vec<(f64, f64, f64)> {
        let c = &self.inner.curve;
        c.fps_per_scan
            .iter()
            .zip(&c.sensitivity)
            .zip(&c.thresholds)
            .map(|((f, s), t)| (*f, *s, *t))
            .collect()
    }

    /// Everything (`lungcad eval --json`'s fields) as a dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.inner).map_err(|e| invalid(e.to_string()))?;
        json_to_py(py, &text)
    }

    fn __repr__(&self) -> String {
        format!(
            "FrocResult(cpm={:.4}, tp={}, fp={}, fn={}, scans={})",
            self.inner.cpm, self.inner.tp, self.inner.fp, self.inner.fn_, self.inner.scans
        )
    }
}

/// `lungcad.evaluate`'s core; the Python wrapper turns data frames, dicts and `Nodule`s
/// into rows.
#[pyfunction]
#[pyo3(signature = (annotations, excluded, seriesuids, predictions, config = None))]
pub fn _evaluate(
    py: Python<'_>,
    annotations: FindingsArg,
    excluded: Option<FindingsArg>,
    seriesuids: ScansArg,
    predictions: PredictionsArg,
    config: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyFrocResult> {
    let config: EvalConfig = match config {
        None => EvalConfig::default(),
        Some(d) => serde_json::from_str(&py_to_json(d.as_any())?)
            .map_err(|e| invalid(format!("evaluation config: {e}")))?,
    };
    let inner = run(py, || {
        let inputs = EvalInputs {
            annotations: findings(annotations)?,
            excluded: match excluded {
                Some(e) => findings(e)?,
                None => Annotations::default(),
            },
            seriesuids: match seriesuids {
                ScansArg::Path(p) => read_seriesuids(p)?,
                ScansArg::Uids(u) => u,
            },
            predictions: match predictions {
                PredictionsArg::Path(p) => Predictions::from_csv(p)?,
                PredictionsArg::Rows(rows) => Predictions::from_candidates(
                    rows.into_iter()
                        .map(
                            |(seriesuid, coord_x, coord_y, coord_z, probability)| Candidate {
                                seriesuid,
                                coord_x,
                                coord_y,
                                coord_z,
                                probability,
                            },
                        )
                        .collect(),
                ),
            },
        };
        evaluate(&inputs, &config)
    })?;
    Ok(PyFrocResult { inner })
}

/// Reads one LIDC-IDRI reader XML with the DICOM series in its folder, as `lungcad lidc`
/// does: a dict of `series_uid`, `nodules` (each with `centre_world`, `diameter_mm`,
/// `readers` and the readers' `annotations` with their ratings), `other_nodules` (those
/// not kept, likewise), and `annotations` and
/// `excluded` as LUNA16 rows `(seriesuid, coordX, coordY, coordZ, diameter_mm)` (`None`
/// for no diameter), the rows `evaluate` takes.
#[pyfunction]
#[pyo3(signature = (xml, *, min_readers = 3, min_diameter_mm = 3.0))]
pub fn read_lidc_file<'py>(
    py: Python<'py>,
    xml: PathBuf,
    min_readers: usize,
    min_diameter_mm: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let config = lungcad::eval::lidc::LidcConfig {
        min_readers,
        min_diameter_mm,
    };
    let found = run(py, || lungcad::eval::lidc::read_lidc_file(&xml, &config))?;
    let rows = |f: &[Finding]| -> Vec<(String, f64, f64, f64, Option<f64>)> {
        f.iter()
            .map(|f| {
                (
                    f.seriesuid.clone(),
                    f.coord_x,
                    f.coord_y,
                    f.coord_z,
                    f.diameter_mm,
                )
            })
            .collect()
    };
    let json = |v: &[lungcad::eval::lidc::LidcNodule]| {
        serde_json::to_string(v)
            .map_err(|e| invalid(e.to_string()))
            .and_then(|text| json_to_py(py, &text))
    };
    let dict = PyDict::new(py);
    dict.set_item("series_uid", &found.series_uid)?;
    dict.set_item("nodules", json(&found.nodules)?)?;
    dict.set_item("other_nodules", json(&found.other_nodules)?)?;
    dict.set_item("annotations", rows(&found.nodule_findings()))?;
    dict.set_item("excluded", rows(&found.excluded))?;
    Ok(dict.into_any())
}
