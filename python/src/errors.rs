//! The one place where lungcad's errors become Python exceptions, and where calls into the
//! core release the GIL and stop panics.
//!
//! The exception classes are defined in Python (`lungcad/errors.py`, so that
//! `InvalidArgumentError` can also be a `ValueError`); file-system errors become `OSError`
//! with `errno` and `filename` (so `FileNotFoundError`, `PermissionError`, ...).

use lungcad::Error;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

pyo3::import_exception!(lungcad.errors, LungcadError);
pyo3::import_exception!(lungcad.errors, DicomError);
pyo3::import_exception!(lungcad.errors, FormatError);
pyo3::import_exception!(lungcad.errors, LimitError);
pyo3::import_exception!(lungcad.errors, GeometryError);
pyo3::import_exception!(lungcad.errors, PreprocessError);
pyo3::import_exception!(lungcad.errors, ModelError);
pyo3::import_exception!(lungcad.errors, DeviceError);
pyo3::import_exception!(lungcad.errors, EvaluationError);
pyo3::import_exception!(lungcad.errors, TrainingError);
pyo3::import_exception!(lungcad.errors, InvalidArgumentError);
pyo3::import_exception!(lungcad.errors, InternalError);

/// The Python exception for a lungcad error.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Io { path, source } => os_error(&path, &source),
        Error::Dicom { .. }
        | Error::UnsupportedTransferSyntax { .. }
        | Error::NoSeries { .. }
        | Error::SeriesNotFound { .. }
        | Error::Series { .. } => DicomError::new_err(msg),
        Error::MetaImage { .. } | Error::Nifti { .. } | Error::UnknownFormat { .. } => {
            FormatError::new_err(msg)
        }
        Error::Limit { .. } => LimitError::new_err(msg),
        Error::Geometry(_) => GeometryError::new_err(msg),
        Error::Preprocess { .. } => PreprocessError::new_err(msg),
        Error::Model { .. } => ModelError::new_err(msg),
        Error::Device(_) => DeviceError::new_err(msg),
        Error::Csv { .. } | Error::Lidc { .. } | Error::Eval(_) => EvaluationError::new_err(msg),
        Error::Checkpoint { .. } | Error::Cache { .. } => TrainingError::new_err(msg),
        Error::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
        _ => LungcadError::new_err(msg),
    }
}

/// `OSError(errno, strerror, filename)`: Python picks the subclass from the errno.
fn os_error(path: &std::path::Path, source: &std::io::Error) -> PyErr {
    use std::io::ErrorKind as K;
    let errno = source.raw_os_error().unwrap_or(match source.kind() {
        K::NotFound => 2,
        K::PermissionDenied => 13,
        K::AlreadyExists => 17,
        K::NotADirectory => 20,
        K::IsADirectory => 21,
        _ => 5, // EIO
    });
    let text = source.to_string();
    let strerror = match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    PyOSError::new_err((errno, strerror, path.display().to_string()))
}

/// An invalid argument found in the binding itself.
pub fn invalid(msg: impl Into<String>) -> PyErr {
    InvalidArgumentError::new_err(msg.into())
}

/// Runs `f` with the GIL released; a lungcad error becomes its exception and a panic
/// becomes `InternalError` (a panic never unwinds into Python).
pub fn run<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> lungcad::Result<T> + Send,
    T: Send,
{
    py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|payload| {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            InternalError::new_err(format!(
                "internal error, a bug in lungcad (please report it): {what}"
            ))
        })?
        .map_err(to_py)
}

/// A JSON text as Python objects (`json.loads`).
pub fn json_to_py<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (text,))
}

/// Python objects as a JSON text (`json.dumps`).
pub fn py_to_json(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    obj.py()
        .import("json")?
        .call_method1("dumps", (obj,))?
        .extract()
}
