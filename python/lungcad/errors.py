"""lungcad's exceptions, one class per pipeline stage.

Every error lungcad raises is a :class:`LungcadError`, except file-system errors, which are
:class:`OSError` (``FileNotFoundError``, ``PermissionError``, ...) with ``errno`` and
``filename``. Messages name the file or the series (by SeriesInstanceUID), never a patient.
"""

from __future__ import annotations

__all__ = [
    "LungcadError",
    "DicomError",
    "FormatError",
    "LimitError",
    "GeometryError",
    "PreprocessError",
    "ModelError",
    "DeviceError",
    "EvaluationError",
    "TrainingError",
    "InvalidArgumentError",
    "InternalError",
]


class LungcadError(Exception):
    """Base class of lungcad's errors."""


class DicomError(LungcadError):
    """A DICOM file or series that cannot be read: not DICOM, an unsupported transfer
    syntax, no series found, a series that cannot be assembled into a volume."""


class FormatError(LungcadError):
    """A MetaImage or NIfTI file that is invalid, or a path in no known CT format."""


class LimitError(LungcadError):
    """Untrusted input larger than the limits allow (voxels, slices, files, bytes)."""


class GeometryError(LungcadError):
    """Invalid spacing, origin or direction."""


class PreprocessError(LungcadError):
    """Preprocessing could not go on (no lungs found, ...)."""


class ModelError(LungcadError):
    """A model file that cannot be used: not a lungcad model, another format version,
    weights missing or of the wrong shape."""


class DeviceError(LungcadError):
    """The compute device cannot be used (no wgpu adapter, no CUDA in this build)."""


class EvaluationError(LungcadError):
    """Evaluation inputs that are malformed (a bad CSV row, a NaN probability, ...)."""


class TrainingError(LungcadError):
    """A training checkpoint or cache file that cannot be used."""


class InvalidArgumentError(LungcadError, ValueError):
    """An invalid argument or configuration."""


class InternalError(LungcadError):
    """A bug in lungcad (a Rust panic, stopped before it reached Python)."""
