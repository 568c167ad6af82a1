//! `Detector`, `Nodule`, and the phantoms (`synth`, `Phantom`, `SynthNodule`).

use crate::errors::{invalid, json_to_py, py_to_json, run, to_py};
use crate::volume::{limits, PyVolume};
use lungcad::detect::{DecodeConfig, Flips};
use lungcad::model::monai::MonaiDetector;
use lungcad::model::{select_device, Detector};
use lungcad::synth::{generate, SynthConfig};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// A detected nodule: centre in world LPS millimetres, diameter, probability, and the
/// series it was found in.
#[pyclass(frozen, eq, get_all, module = "lungcad", name = "Nodule")]
#[derive(Debug, Clone, PartialEq)]
pub struct PyNodule {
    pub coord_x: f64,
    pub coord_y: f64,
    pub coord_z: f64,
    pub diameter_mm: f64,
    pub probability: f64,
    pub series_uid: Option<String>,
}

#[pymethods]
impl PyNodule {
    #[new]
    #[pyo3(signature = (coord_x, coord_y, coord_z, diameter_mm, probability, series_uid = None))]
    fn new(
        coord_x: f64,
        coord_y: f64,
        coord_z: f64,
        diameter_mm: f64,
        probability: f64,
        series_uid: Option<String>,
    ) -> Self {
        PyNodule {
            coord_x,
            coord_y,
            coord_z,
            diameter_mm,
            probability,
            series_uid,
        }
    }

    /// The nodule with LUNA16's column names: seriesuid, coordX, coordY, coordZ,
    /// probability, diameter_mm.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("seriesuid", &self.series_uid)?;
        d.set_item("coordX", self.coord_x)?;
        d.set_item("coordY", self.coord_y)?;
        d.set_item("coordZ", self.coord_z)?;
        d.set_item("probability", self.probability)?;
        d.set_item("diameter_mm", self.diameter_mm)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Nodule(coord_x={:.2}, coord_y={:.2}, coord_z={:.2}, diameter_mm={:.1}, probability={:.4})",
            self.coord_x, self.coord_y, self.coord_z, self.diameter_mm, self.probability
        )
    }
}

/// The network behind a `Detector`. Boxed: burn's tensors ask for 64-byte alignment, more
/// than a Python object's memory gives a pyclass.
enum Model {
    Lungcad(Box<Detector>),
    Monai(Box<MonaiDetector>),
}

/// A nodule detector: a model on a device. One detector may be used from several threads
/// at once; `detect` releases the GIL.
#[pyclass(frozen, module = "lungcad", name = "Detector")]
pub struct PyDetector {
    inner: Model,
    device: String,
    batch_size: usize,
    model: String,
}

#[pymethods]
impl PyDetector {
    /// `model`: a lungcad model file (a MONAI RetinaNet from `import_monai` runs MONAI's
    /// pipeline), or None for the shipped model (phantom-v2, trained on synthetic phantoms
    /// only). `device`: auto (a wgpu GPU when there is one and it holds a patch of the
    /// network, else the CPU), wgpu, cpu or cuda. `batch_size`: tiles per forward pass
    /// (None: 32 on a GPU, fewer when its buffers hold fewer; on the CPU as many tiles as
    /// hold 4 x 128³ voxels, at most 32).
    #[new]
    #[pyo3(signature = (model = None, device = "auto", batch_size = None))]
    fn new(
        py: Python<'_>,
        model: Option<PathBuf>,
        device: &str,
        batch_size: Option<usize>,
    ) -> PyResult<Self> {
        if batch_size == Some(0) {
            return Err(invalid("batch_size must be at least 1"));
        }
        let choice = device.parse().map_err(to_py)?;
        let (inner, device) = run(py, || {
            let (dev, name) = select_device(choice)?;
            let d = match &model {
                Some(p) => {
                    let bytes = lungcad::model::read_model_file(p)?;
                    if lungcad::model::is_monai_model(&bytes, p)? {
                        Model::Monai(Box::new(MonaiDetector::from_bytes(bytes, p, &dev)?))
                    } else {
                        Model::Lungcad(Box::new(Detector::from_bytes(bytes, p, &dev)?))
                    }
                }
                None => Model::Lungcad(Box::new(Detector::shipped(&dev)?)),
            };
            // With auto, the CPU instead of a GPU that cannot hold one patch.
            match d {
                Model::Lungcad(d) if choice == lungcad::model::DeviceChoice::Auto => {
                    let (d, name) = d.or_cpu_if_unfit(name)?;
                    Ok((Model::Lungcad(Box::new(d)), name))
                }
                d => Ok((d, name)),
            }
        })?;
        let batch_size = batch_size.unwrap_or_else(|| match &inner {
            Model::Lungcad(d) => d.default_batch_size(&device),
            Model::Monai(_) => 1,
        });
        let model = match model {
            Some(p) => p.display().to_string(),
            None => lungcad::model::SHIPPED_MODEL_NAME.to_string(),
        };
        Ok(PyDetector {
            inner,
            device,
            batch_size,
            model,
        })
    }

    /// Finds the nodules of a CT (a `Volume`, or a path `load` reads), most probable
    /// first, in world millimetres. Candidates below `threshold` are dropped, at most
    /// `max_detections` are returned. `flips` ("none", "x" or "all") runs each tile also
    /// mirrored and averages the mapped-back outputs (test-time augmentation); None is "x"
    /// for lungcad models, as in `lungcad detect`, and "none" for MONAI models.
    /// `max_voxels`, `max_tiles`, `max_tile_coverage` and `max_tensor_bytes` are the
    /// bounds of lungcad's `Limits` (None: its defaults; `lungcad detect --help`); past
    /// one, a `LimitError` before the network runs.
    #[pyo3(signature = (ct, *, threshold = 0.1, max_detections = 100, max_voxels = None, flips = None, max_tiles = None, max_tile_coverage = None, max_tensor_bytes = None))]
    #[allow(clippy::too_many_arguments)]
    fn detect(
        &self,
        py: Python<'_>,
        ct: &Bound<'_, PyAny>,
        threshold: f32,
        max_detections: usize,
        max_voxels: Option<u64>,
        flips: Option<&str>,
        max_tiles: Option<u64>,
        max_tile_coverage: Option<u64>,
        max_tensor_bytes: Option<u64>,
    ) -> PyResult<Vec<PyNodule>> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(invalid(format!(
                "threshold must be a probability in [0, 1], got {threshold}"
            )));
        }
        let requested = flips.map(str::parse).transpose().map_err(to_py)?;
        let flips =
            Flips::for_tool(requested, matches!(self.inner, Model::Monai(_))).map_err(to_py)?;
        enum Input {
            Volume(lungcad::Volume),
            Path(PathBuf),
        }
        let input = match ct.extract::<PyRef<'_, PyVolume>>() {
            Ok(v) => Input::Volume(v.inner.clone()),
            Err(_) => Input::Path(ct.extract::<PathBuf>().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(
                    "detect takes a lungcad.Volume or a path (str or os.PathLike)",
                )
            })?),
        };
        let decode = DecodeConfig {
            min_probability: threshold,
            max_detections,
            flips,
            ..DecodeConfig::default()
        };
        let mut lim = limits(max_voxels);
        if let Some(n) = max_tiles {
            lim.max_tiles = n;
        }
        if let Some(n) = max_tile_coverage {
            lim.max_tile_coverage = n;
        }
        if let Some(n) = max_tensor_bytes {
            lim.max_tensor_bytes = n;
        }
        let (found, uid) = run(py, || {
            let (volume, uid) = match input {
                Input::Volume(v) => {
                    let uid = v
                        .info
                        .series_uid
                        .as_deref()
                        .filter(|u| !u.trim().is_empty());
                    let uid = uid.map(lungcad::io::safe_series_name);
                    (v, uid)
                }
                Input::Path(p) => {
                    let load = lungcad::LoadConfig {
                        limits: lim.clone(),
                        ..Default::default()
                    };
                    let volume = lungcad::load(&p, &load)?;
                    let uid = lungcad::io::series_name(&volume, &p);
                    (volume, Some(uid))
                }
            };
            let found = match &self.inner {
                Model::Lungcad(d) => {
                    d.detect(volume, self.batch_size, &decode, &lim, &mut |_, _| {})?
                        .detections
                }
                Model::Monai(d) => lungcad::model::monai::select(
                    &d.detect(&volume, &lim)?,
                    threshold,
                    max_detections,
                ),
            };
            Ok((found, uid))
        })?;
        Ok(found
            .into_iter()
            .map(|d| PyNodule {
                coord_x: d.centre_world[0],
                coord_y: d.centre_world[1],
                coord_z: d.centre_world[2],
                diameter_mm: d.diameter_mm,
                probability: d.probability as f64,
                series_uid: uid.clone(),
            })
            .collect())
    }

    /// The device the network runs on, e.g. `cpu (flex)` or `wgpu (NVIDIA H100, Vulkan)`.
    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }

    /// Tiles per forward pass (lungcad networks; a MONAI RetinaNet reports 1: it runs the
    /// image, or one sliding window, at a time).
    #[getter]
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The model file, or the shipped model's name.
    #[getter]
    fn model(&self) -> String {
        self.model.clone()
    }

    /// The network's config as a dict: a `DetectorConfig`, or a `RetinaNetConfig` for a
    /// MONAI RetinaNet (`lungcad import-monai`).
    #[getter]
    fn detector_config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = match &self.inner {
            Model::Lungcad(d) => serde_json::to_string(&d.config),
            Model::Monai(d) => serde_json::to_string(&d.config),
        }
        .map_err(|e| invalid(e.to_string()))?;
        json_to_py(py, &text)
    }

    /// The preprocessing the model runs, as a dict: a `PreprocessConfig`, or a
    /// `MonaiPreprocessConfig` for a MONAI RetinaNet.
    #[getter]
    fn preprocess_config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = match &self.inner {
            Model::Lungcad(d) => Ok(d.preprocess.to_json()),
            Model::Monai(d) => serde_json::to_string(&d.preprocess),
        }
        .map_err(|e| invalid(e.to_string()))?;
        json_to_py(py, &text)
    }

    fn __repr__(&self) -> String {
        format!(
            "Detector(model='{}', device='{}', batch_size={})",
            self.model, self.device, self.batch_size
        )
    }
}

/// A nodule placed in a phantom.
#[pyclass(frozen, eq, get_all, module = "lungcad", name = "SynthNodule")]
#[derive(Debug, Clone, PartialEq)]
pub struct PySynthNodule {
    pub coord_x: f64,
    pub coord_y: f64,
    pub coord_z: f64,
    pub diameter_mm: f64,
    /// solid, part_solid, ground_glass, juxtapleural or juxtavascular.
    pub kind: String,
}

#[pymethods]
impl PySynthNodule {
    fn __repr__(&self) -> String {
        format!(
            "SynthNodule(coord_x={:.2}, coord_y={:.2}, coord_z={:.2}, diameter_mm={:.1}, kind='{}')",
            self.coord_x, self.coord_y, self.coord_z, self.diameter_mm, self.kind
        )
    }
}

/// A synthetic chest CT and its nodules.
#[pyclass(frozen, module = "lungcad", name = "Phantom")]
pub struct PyPhantom {
    volume: Py<PyVolume>,
    series_uid: String,
    nodules: Vec<PySynthNodule>,
}

#[pymethods]
impl PyPhantom {
    #[getter]
    fn volume(&self, py: Python<'_>) -> Py<PyVolume> {
        self.volume.clone_ref(py)
    }

    #[getter]
    fn nodules(&self) -> Vec<PySynthNodule> {
        self.nodules.clone()
    }

    #[getter]
    fn series_uid(&self) -> String {
        self.series_uid.clone()
    }

    fn __repr__(&self) -> String {
        format!("Phantom(nodules={})", self.nodules.len())
    }
}

/// A synthetic chest CT phantom with known nodules, deterministic by `seed` (as
/// `lungcad synth`). `coarse=True` starts from the small, fast config; keyword arguments
/// are `SynthConfig` fields put over it.
#[pyfunction]
#[pyo3(signature = (seed, *, coarse = false, **config))]
pub fn synth(
    py: Python<'_>,
    seed: u64,
    coarse: bool,
    config: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyPhantom> {
    let base = if coarse {
        SynthConfig::coarse()
    } else {
        SynthConfig::default()
    };
    let config = match config {
        None => base,
        Some(d) => {
            let mut v = serde_json::to_value(&base).map_err(|e| invalid(e.to_string()))?;
            let over: serde_json::Value = serde_json::from_str(&py_to_json(d.as_any())?)
                .map_err(|e| invalid(e.to_string()))?;
            merge(&mut v, over);
            serde_json::from_value(v).map_err(|e| invalid(format!("phantom config: {e}")))?
        }
    };
    let p = run(py, || {
        config.validate()?;
        generate(seed, &config)
    })?;
    let nodules = p
        .nodules
        .iter()
        .map(|n| PySynthNodule {
            coord_x: n.centre_world[0],
            coord_y: n.centre_world[1],
            coord_z: n.centre_world[2],
            diameter_mm: n.diameter_mm,
            kind: serde_json::to_value(n.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        })
        .collect();
    Ok(PyPhantom {
        series_uid: p.series_uid,
        volume: Py::new(py, PyVolume { inner: p.volume })?,
        nodules,
    })
}

/// Puts `over` onto `base`, object by object (a partial nested config keeps the rest).
pub fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Makes a lungcad model file from a MONAI RetinaNet state_dict, a PyTorch checkpoint (the
/// bundle's model.pt) or safetensors (as `lungcad import-monai`): every tensor checked
/// against the network of `config` (a dict,
/// a partial `RetinaNetConfig`; default the lung_nodule_ct_detection bundle's).
#[pyfunction]
#[pyo3(signature = (state_dict, out, config = None))]
pub fn import_monai(
    py: Python<'_>,
    state_dict: PathBuf,
    out: PathBuf,
    config: Option<&Bound<'_, PyDict>>,
) -> PyResult<()> {
    let config: lungcad::model::monai::RetinaNetConfig = match config {
        None => Default::default(),
        Some(d) => serde_json::from_str(&py_to_json(d.as_any())?)
            .map_err(|e| invalid(format!("RetinaNet config: {e}")))?,
    };
    run(py, || {
        let (dev, _) = select_device(lungcad::model::DeviceChoice::Cpu)?;
        MonaiDetector::import(&state_dict, &config, &out, &dev)
    })
}
