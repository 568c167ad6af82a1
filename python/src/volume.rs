//! `Volume`, `load`, `preprocess` and `Preprocessed`.

use crate::errors::{invalid, json_to_py, py_to_json, run};
use lungcad::preprocess::PreprocessConfig;
use lungcad::{Geometry, Limits, LoadConfig, Volume};
use ndarray::Array3;
use numpy::{PyArray2, PyArray3, PyReadonlyArray3};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

type Xyz = (f64, f64, f64);

fn tuple3(v: [f64; 3]) -> Xyz {
    (v[0], v[1], v[2])
}

/// A numpy view of `array`, owned by `owner` (kept alive by the view), not writeable: the
/// data belongs to an immutable Rust object.
fn read_only_view<'py, T: numpy::Element>(
    array: &Array3<T>,
    owner: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray3<T>>> {
    // SAFETY: `array` lives in a frozen pyclass (`owner`), never modified nor reallocated
    // while `owner` is alive, and the view holds a reference to `owner`.
    let view = unsafe { PyArray3::borrow_from_array(array, owner) };
    let kwargs = PyDict::new(view.py());
    kwargs.set_item("write", false)?;
    view.call_method("setflags", (), Some(&kwargs))?;
    Ok(view)
}

fn direction_array<'py>(py: Python<'py>, d: &[[f64; 3]; 3]) -> Bound<'py, PyArray2<f64>> {
    PyArray2::from_array(py, &ndarray::arr2(d))
}

/// A CT volume in Hounsfield units with its geometry.
#[pyclass(frozen, module = "lungcad", name = "Volume")]
pub struct PyVolume {
    pub inner: Volume,
}

#[pymethods]
impl PyVolume {
    /// A volume from a 3-D array of HU indexed (z, y, x). Integer arrays are converted to
    /// int16 when their values fit; float arrays are refused (round them first).
    /// `spacing_mm` is (z, y, x), `origin_mm` the world (x, y, z) position of voxel
    /// (0, 0, 0) (default: the world origin), `direction[a]` the world unit vector of voxel axis a (z, y, x order;
    /// default: axes along world z, y, x).
    #[staticmethod]
    #[pyo3(signature = (array, spacing_mm, origin_mm = None, direction = None, series_uid = None))]
    fn from_numpy(
        array: &Bound<'_, PyAny>,
        spacing_mm: Xyz,
        origin_mm: Option<Xyz>,
        direction: Option<[[f64; 3]; 3]>,
        series_uid: Option<String>,
    ) -> PyResult<Self> {
        let py = array.py();
        let np = py.import("numpy")?;
        let a = np.call_method1("asarray", (array,))?;
        let ndim: usize = a.getattr("ndim")?.extract()?;
        if ndim != 3 {
            return Err(invalid(format!(
                "a volume is a 3-D (z, y, x) array, got {ndim} dimensions"
            )));
        }
        let kind: String = a.getattr("dtype")?.getattr("kind")?.extract()?;
        let size: usize = a.getattr("size")?.extract()?;
        let a16 = match kind.as_str() {
            "i" | "u" => {
                if size > 0 {
                    let lo: i64 = a.call_method0("min")?.extract()?;
                    let hi: i64 = a.call_method0("max")?.extract()?;
                    if lo < i16::MIN as i64 || hi > i16::MAX as i64 {
                        return Err(invalid(format!(
                            "HU values from {lo} to {hi} do not fit int16"
                        )));
                    }
                }
                a.call_method1("astype", ("int16",))?
            }
            _ => {
                let dtype = a.getattr("dtype")?.str()?.to_string();
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "HU must be an integer array (int16), got {dtype}; round floats first, \
                     e.g. numpy.rint(a).astype(numpy.int16)"
                )));
            }
        };
        let ro: PyReadonlyArray3<i16> = a16.extract()?;
        let hu = ro.as_array().as_standard_layout().into_owned();
        let origin_mm = origin_mm.unwrap_or((0.0, 0.0, 0.0));
        let mut geometry = Geometry::new(spacing_mm.into(), origin_mm.into());
        if let Some(d) = direction {
            geometry.direction = d;
        }
        let mut volume = Volume::new(hu, geometry).map_err(crate::errors::to_py)?;
        volume.info.series_uid = series_uid;
        volume.info.format = "numpy".into();
        Ok(PyVolume { inner: volume })
    }

    /// The HU voxels, int16, indexed (z, y, x): a read-only view (copy it to modify it).
    #[getter]
    fn array<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyArray3<i16>>> {
        let owner = slf.clone().into_any();
        read_only_view(&slf.get().inner.hu, owner)
    }

    /// (z, y, x) voxels.
    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        let [z, y, x] = self.inner.shape();
        (z, y, x)
    }

    /// Voxel spacing (z, y, x) in mm.
    #[getter]
    fn spacing_mm(&self) -> Xyz {
        tuple3(self.inner.spacing_mm())
    }

    /// World (x, y, z) LPS position of voxel (0, 0, 0), mm.
    #[getter]
    fn origin_mm(&self) -> Xyz {
        tuple3(self.inner.origin_mm())
    }

    /// 3x3: row a is the world (x, y, z) unit vector of voxel axis a (z, y, x).
    #[getter]
    fn direction<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f64>> {
        direction_array(py, &self.inner.direction())
    }

    /// The SeriesInstanceUID (DICOM), or the one given to `from_numpy`; else None.
    #[getter]
    fn series_uid(&self) -> Option<String> {
        self.inner.info.series_uid.clone()
    }

    /// The DICOM Modality, when known.
    #[getter]
    fn modality(&self) -> Option<String> {
        self.inner.info.modality.clone()
    }

    /// `dicom`, `metaimage`, `nifti` or `numpy`.
    #[getter]
    fn format(&self) -> String {
        self.inner.info.format.clone()
    }

    /// Non-fatal problems met while loading.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner.info.warnings.clone()
    }

    /// World (x, y, z) mm of a (possibly fractional) voxel index (z, y, x).
    fn voxel_to_world(&self, zyx: Xyz) -> Xyz {
        tuple3(self.inner.voxel_to_world(zyx.into()))
    }

    /// Continuous voxel index (z, y, x) of a world point (x, y, z) mm.
    fn world_to_voxel(&self, xyz: Xyz) -> Xyz {
        tuple3(self.inner.world_to_voxel(xyz.into()))
    }

    /// Writes the volume: `.mhd` (+ `.raw`), `.mha`, `.nii` or `.nii.gz`.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        run(py, || lungcad::save(&self.inner, &path))
    }

    fn __repr__(&self) -> String {
        let [z, y, x] = self.inner.shape();
        let s = self.inner.spacing_mm();
        format!(
            "Volume(shape=({z}, {y}, {x}), spacing_mm=({:.4}, {:.4}, {:.4}), series_uid={})",
            s[0],
            s[1],
            s[2],
            match &self.inner.info.series_uid {
                Some(u) => format!("'{u}'"),
                None => "None".into(),
            }
        )
    }
}

/// Loads a CT: a DICOM folder (searched recursively) or file, a MetaImage (`.mhd`/`.mha`)
/// or a NIfTI (`.nii`/`.nii.gz`) file.
#[pyfunction]
#[pyo3(signature = (path, series_uid = None, *, allow_modality = false, gantry_tilt = "correct", stack = None, max_voxels = None))]
pub fn load(
    py: Python<'_>,
    path: PathBuf,
    series_uid: Option<String>,
    allow_modality: bool,
    gantry_tilt: &str,
    stack: Option<usize>,
    max_voxels: Option<u64>,
) -> PyResult<PyVolume> {
    let config = LoadConfig {
        series_uid,
        allow_modality,
        gantry_tilt: gantry_tilt.parse().map_err(crate::errors::to_py)?,
        stack,
        limits: limits(max_voxels),
    };
    let inner = run(py, || lungcad::load(&path, &config))?;
    Ok(PyVolume { inner })
}

/// Lists the DICOM series at a path (a file, or a folder searched recursively) from the
/// files' headers alone, as `lungcad series --json` does: a dict of `files_seen`,
/// `skipped` and `series` (each with its stacks, numbered as `load(..., stack=N)` takes
/// them, `default`: the one `load` picks when no series is named, and `default_stack`).
#[pyfunction]
#[pyo3(signature = (path, *, allow_modality = false))]
pub fn list_series<'py>(
    py: Python<'py>,
    path: PathBuf,
    allow_modality: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let config = LoadConfig {
        allow_modality,
        ..LoadConfig::default()
    };
    let list = run(py, || lungcad::io::dicom::list_series(&path, &config))?;
    let text = serde_json::to_string(&list).map_err(|e| invalid(e.to_string()))?;
    json_to_py(py, &text)
}

pub fn limits(max_voxels: Option<u64>) -> Limits {
    let mut l = Limits::default();
    if let Some(v) = max_voxels {
        l.max_voxels = v;
    }
    l
}

/// A preprocessed scan: the crop around the lungs on the resampled grid.
#[pyclass(frozen, module = "lungcad", name = "Preprocessed")]
pub struct PyPreprocessed {
    volume: Py<PyVolume>,
    array: Array3<f32>,
    lung_mask: Array3<u8>,
    crop_start: [usize; 3],
    crop: Geometry,
    config: String,
    lung_volume_ml: f64,
    resample_s: f64,
    lung_mask_s: f64,
}

#[pymethods]
impl PyPreprocessed {
    /// The network's input over the crop: windowed and normalised HU, float32, (z, y, x).
    #[getter]
    fn array<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let owner = slf.clone().into_any();
        read_only_view(&slf.get().array, owner)
    }

    /// The lung mask over the crop: uint8, 1 inside the (dilated) lungs.
    #[getter]
    fn lung_mask<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyArray3<u8>>> {
        let owner = slf.clone().into_any();
        read_only_view(&slf.get().lung_mask, owner)
    }

    /// The whole resampled volume (HU); the crop starts at `crop_start_vox` in it.
    #[getter]
    fn volume(&self, py: Python<'_>) -> Py<PyVolume> {
        self.volume.clone_ref(py)
    }

    /// Index (z, y, x) of the crop's first voxel in `volume`.
    #[getter]
    fn crop_start_vox(&self) -> (usize, usize, usize) {
        let [z, y, x] = self.crop_start;
        (z, y, x)
    }

    /// Spacing (z, y, x) mm of the crop grid.
    #[getter]
    fn spacing_mm(&self) -> Xyz {
        tuple3(self.crop.spacing_mm)
    }

    /// World (x, y, z) mm of the crop's voxel (0, 0, 0).
    #[getter]
    fn origin_mm(&self) -> Xyz {
        tuple3(self.crop.origin_mm)
    }

    /// 3x3: row a is the world unit vector of voxel axis a (z, y, x).
    #[getter]
    fn direction<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f64>> {
        direction_array(py, &self.crop.direction)
    }

    /// World (x, y, z) mm of a crop voxel index (z, y, x).
    fn voxel_to_world(&self, zyx: Xyz) -> Xyz {
        tuple3(self.crop.voxel_to_world(zyx.into()))
    }

    /// Crop voxel index (z, y, x) of a world point (x, y, z) mm.
    fn world_to_voxel(&self, xyz: Xyz) -> Xyz {
        tuple3(self.crop.world_to_voxel(xyz.into()))
    }

    /// Volume of the lungs (before dilation), millilitres.
    #[getter]
    fn lung_volume_ml(&self) -> f64 {
        self.lung_volume_ml
    }

    /// Seconds spent resampling and masking.
    #[getter]
    fn timings(&self) -> (f64, f64) {
        (self.resample_s, self.lung_mask_s)
    }

    /// The preprocessing config used, as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.config)
    }

    fn __repr__(&self) -> String {
        let [z, y, x] = self.array.shape() else {
            return "Preprocessed()".into();
        };
        format!(
            "Preprocessed(shape=({z}, {y}, {x}), spacing_mm={:?}, lung_volume_ml={:.0})",
            self.crop.spacing_mm, self.lung_volume_ml
        )
    }
}

/// A `PreprocessConfig` from keyword arguments (missing ones take the defaults).
pub fn preprocess_config(config: Option<&Bound<'_, PyDict>>) -> PyResult<PreprocessConfig> {
    match config {
        None => Ok(PreprocessConfig::default()),
        Some(d) => {
            PreprocessConfig::from_json(&py_to_json(d.as_any())?).map_err(crate::errors::to_py)
        }
    }
}

/// Resamples the volume, masks the lungs and crops around them, as the detector does.
/// Keyword arguments are `PreprocessConfig` fields (`spacing_mm`, `crop_margin_mm`,
/// `lung_mask={...}`, `window={...}`, `patch={...}`, ...); missing ones take the defaults.
#[pyfunction]
#[pyo3(signature = (volume, *, max_voxels = None, **config))]
pub fn preprocess(
    py: Python<'_>,
    volume: &PyVolume,
    max_voxels: Option<u64>,
    config: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyPreprocessed> {
    let config = preprocess_config(config)?;
    let lim = limits(max_voxels);
    let (pre, array, mask) = run(py, || {
        let pre = lungcad::preprocess::preprocess(&volume.inner, &config, &lim)?;
        let array = pre.windowed_crop();
        let c = pre.crop;
        let [z0, y0, x0] = c.start;
        let [z1, y1, x1] = c.end;
        let mask = pre
            .lung
            .mask
            .slice(ndarray::s![z0..z1, y0..y1, x0..x1])
            .to_owned();
        Ok((pre, array, mask))
    })?;
    let crop = pre.crop_geometry();
    let config_json = pre.config.to_json();
    Ok(PyPreprocessed {
        array,
        lung_mask: mask,
        crop_start: pre.crop.start,
        crop,
        config: config_json,
        lung_volume_ml: pre.lung.lung_volume_ml,
        resample_s: pre.timings.resample_s,
        lung_mask_s: pre.timings.lung_mask_s,
        volume: Py::new(py, PyVolume { inner: pre.volume })?,
    })
}
