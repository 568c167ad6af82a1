"""lungcad: find lung nodules in chest CT.

The same API as the Rust library, on numpy arrays:

- :func:`load` reads a CT (DICOM folder or file, MetaImage ``.mhd``/``.mha``, NIfTI
  ``.nii``/``.nii.gz``) into a :class:`Volume`; :meth:`Volume.from_numpy` builds one from an
  array; :func:`to_sitk` / :func:`from_sitk` convert to and from SimpleITK images;
  :func:`list_series` lists the DICOM series under a folder and their stacks.
- :func:`preprocess` resamples, masks the lungs and crops, as the detector does.
- :class:`Detector` finds nodules (:class:`Nodule`, world millimetres) with a model file or
  the shipped model; :func:`to_luna_csv` and :func:`to_dataframe` write them out.
- :func:`evaluate` scores a submission with the LUNA16 FROC/CPM (:func:`read_lidc_file`
  makes LUNA16-style reference rows from an LIDC-IDRI reader XML); :func:`train` trains a
  model as ``lungcad train`` does; :func:`synth` makes a phantom with known nodules.

Conventions: voxel arrays are ``(z, y, x)``; world coordinates are ``(x, y, z)`` in LPS
millimetres, as in DICOM, ITK and the LUNA16 CSVs. ``spacing_mm`` is ``(z, y, x)``,
``origin_mm`` the world position of voxel ``(0, 0, 0)``, ``direction[a]`` the world unit
vector of voxel axis ``a``. Loading, preprocessing, detection, evaluation and training
release the GIL; one :class:`Detector` may be used from several threads at once.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence, Union

from . import errors
from ._lungcad import (
    SHIPPED_MODEL_NAME,
    Detector,
    FrocResult,
    Nodule,
    Phantom,
    Preprocessed,
    SynthNodule,
    TrainResult,
    Volume,
    __version__,
    _evaluate,
    default_config,
    import_monai,
    list_series,
    load,
    preprocess,
    read_lidc_file,
    synth,
    train,
)
from .errors import (
    DeviceError,
    DicomError,
    EvaluationError,
    FormatError,
    GeometryError,
    InternalError,
    InvalidArgumentError,
    LimitError,
    LungcadError,
    ModelError,
    PreprocessError,
    TrainingError,
)

__all__ = [
    "SHIPPED_MODEL_NAME",
    "Detector",
    "DeviceError",
    "DicomError",
    "EvaluationError",
    "FormatError",
    "FrocResult",
    "GeometryError",
    "InternalError",
    "InvalidArgumentError",
    "LimitError",
    "LungcadError",
    "ModelError",
    "Nodule",
    "Phantom",
    "PreprocessError",
    "Preprocessed",
    "SynthNodule",
    "TrainResult",
    "TrainingError",
    "Volume",
    "__version__",
    "default_config",
    "errors",
    "evaluate",
    "from_sitk",
    "import_monai",
    "list_series",
    "load",
    "preprocess",
    "read_lidc_file",
    "synth",
    "to_dataframe",
    "to_luna_csv",
    "to_sitk",
    "train",
]

PathLike = Union[str, "os.PathLike[str]"]

_FINDING_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
_PREDICTION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


def _is_path(x: object) -> bool:
    return isinstance(x, (str, os.PathLike))


def _rows(records: Any, columns: Sequence[str], what: str) -> list[tuple[Any, ...]]:
    """Rows of `columns` from a pandas DataFrame, dicts with those keys, objects with
    `series_uid`/`coord_x`/... attributes (a `Nodule`), or tuples in that order."""
    if hasattr(records, "to_dict") and hasattr(records, "columns"):
        records = records.to_dict("records")
    attrs = {
        "seriesuid": "series_uid",
        "coordX": "coord_x",
        "coordY": "coord_y",
        "coordZ": "coord_z",
        "diameter_mm": "diameter_mm",
        "probability": "probability",
    }
    out: list[tuple[Any, ...]] = []
    for i, r in enumerate(records):
        if isinstance(r, Mapping):
            missing = [c for c in columns if c not in r]
            if missing and not (missing == ["diameter_mm"]):
                raise InvalidArgumentError(f"{what} row {i}: no {', '.join(missing)}")
            out.append(tuple(r.get(c) for c in columns))
        elif all(hasattr(r, attrs[c]) for c in columns):
            out.append(tuple(getattr(r, attrs[c]) for c in columns))
        elif isinstance(r, Sequence) and not isinstance(r, str):
            if len(r) != len(columns):
                raise InvalidArgumentError(
                    f"{what} row {i}: {len(r)} values, expected {len(columns)} ({', '.join(columns)})"
                )
            out.append(tuple(r))
        else:
            raise InvalidArgumentError(
                f"{what} row {i}: a dict, a tuple ({', '.join(columns)}) or a Nodule, got {type(r).__name__}"
            )
    for i, row in enumerate(out):
        if row[0] is None:
            raise InvalidArgumentError(f"{what} row {i}: no series UID")
    return [
        (str(r[0]), float(r[1]), float(r[2]), float(r[3]), None if r[4] is None else float(r[4]))
        for r in out
    ]


def evaluate(
    annotations: PathLike | Iterable[Any],
    excluded: PathLike | Iterable[Any] | None,
    seriesuids: PathLike | Iterable[str],
    predictions: PathLike | Iterable[Any],
    **config: Any,
) -> FrocResult:
    """Scores `predictions` against `annotations` with the LUNA16 protocol.

    Each input is a CSV path (LUNA16 columns), a pandas DataFrame, or rows: dicts with the
    LUNA16 column names, tuples in column order, or `Nodule`s (predictions). `excluded`
    (irrelevant findings, ``annotations_excluded.csv``) may be None. `seriesuids` lists
    the scans evaluated. Keyword arguments are `EvalConfig` fields
    (``max_candidates_per_scan=100``, ``bootstrap_resamples=1000``, ``seed=16``, ...).
    """

    def findings(x: Any, what: str) -> Any:
        return x if _is_path(x) else _rows(x, _FINDING_COLUMNS, what)

    if _is_path(predictions):
        preds: Any = predictions
    else:
        preds = _rows(predictions, _PREDICTION_COLUMNS, "predictions")
        if any(r[4] is None for r in preds):
            raise InvalidArgumentError("predictions: every row needs a probability")
    scans: Any = (
        seriesuids
        if isinstance(seriesuids, (str, os.PathLike))
        else [str(s) for s in seriesuids]
    )
    return _evaluate(
        findings(annotations, "annotations"),
        None if excluded is None else findings(excluded, "excluded"),
        scans,
        preds,
        config or None,
    )


def to_luna_csv(
    nodules: Iterable[Nodule], path: PathLike | None = None, *, series_uid: str | None = None
) -> str:
    """The nodules as a LUNA16 submission CSV (``seriesuid,coordX,coordY,coordZ,probability``),
    as ``lungcad detect --out det.csv`` writes it; also written to `path` when given.
    `series_uid` replaces each nodule's own."""
    lines = ["seriesuid,coordX,coordY,coordZ,probability"]
    for i, n in enumerate(nodules):
        uid = series_uid if series_uid is not None else n.series_uid
        if uid is None:
            raise InvalidArgumentError(f"nodule {i} has no series UID: pass series_uid")
        lines.append(f"{uid},{n.coord_x!r},{n.coord_y!r},{n.coord_z!r},{n.probability!r}")
    text = "\n".join(lines) + "\n"
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text


def to_dataframe(nodules: Iterable[Nodule]) -> Any:
    """The nodules as a pandas DataFrame with LUNA16's columns (and ``diameter_mm``).
    Needs pandas."""
    import pandas  # type: ignore[import-untyped, unused-ignore]

    columns = ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"]
    return pandas.DataFrame([n.to_dict() for n in nodules], columns=columns)


def to_sitk(volume: Volume) -> Any:
    """The volume as a ``SimpleITK.Image`` (int16, same geometry). Needs SimpleITK."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    z, y, x = volume.spacing_mm
    image.SetSpacing((x, y, z))
    image.SetOrigin(volume.origin_mm)
    # ITK's direction matrix has the world vector of index axis i (x, y, z) in column i;
    # lungcad's row a is the world vector of voxel axis a (z, y, x).
    d = np.asarray(volume.direction)[::-1].T
    image.SetDirection(tuple(float(v) for v in d.ravel()))
    return image


def from_sitk(image: Any, series_uid: str | None = None) -> Volume:
    """A volume from a 3-D ``SimpleITK.Image`` of integer HU (geometry kept). Needs
    SimpleITK."""
    import numpy as np
    import SimpleITK as sitk

    if image.GetDimension() != 3:
        raise InvalidArgumentError(f"a volume is 3-D, the image has {image.GetDimension()} dimensions")
    x, y, z = image.GetSpacing()
    d = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    direction = d.T[::-1].tolist()
    return Volume.from_numpy(
        sitk.GetArrayViewFromImage(image),
        (z, y, x),
        tuple(image.GetOrigin()),
        direction,
        series_uid,
    )
