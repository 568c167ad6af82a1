"""Type stubs of the Rust extension `lungcad._lungcad` (checked by mypy.stubtest in the tests)."""

import os
from typing import Any, Callable, Literal, Mapping, Sequence, Union, final

import numpy as np
import numpy.typing as npt

_Path = Union[str, os.PathLike[str]]
_Xyz = tuple[float, float, float]

__all__ = [
    "Detector",
    "FrocResult",
    "Nodule",
    "Phantom",
    "Preprocessed",
    "SHIPPED_MODEL_NAME",
    "SynthNodule",
    "TrainResult",
    "Volume",
    "__version__",
    "_evaluate",
    "default_config",
    "import_monai",
    "list_series",
    "load",
    "preprocess",
    "read_lidc_file",
    "synth",
    "train",
]
__version__: str
SHIPPED_MODEL_NAME: str

@final
class Volume:
    @staticmethod
    def from_numpy(
        array: npt.ArrayLike,
        spacing_mm: tuple[float, float, float],
        origin_mm: tuple[float, float, float] | None = None,
        direction: Sequence[Sequence[float]] | npt.NDArray[np.float64] | None = None,
        series_uid: str | None = None,
    ) -> Volume: ...
    @property
    def array(self) -> npt.NDArray[np.int16]: ...
    @property
    def shape(self) -> tuple[int, int, int]: ...
    @property
    def spacing_mm(self) -> _Xyz: ...
    @property
    def origin_mm(self) -> _Xyz: ...
    @property
    def direction(self) -> npt.NDArray[np.float64]: ...
    @property
    def series_uid(self) -> str | None: ...
    @property
    def modality(self) -> str | None: ...
    @property
    def format(self) -> str: ...
    @property
    def warnings(self) -> list[str]: ...
    def voxel_to_world(self, zyx: tuple[float, float, float]) -> _Xyz: ...
    def world_to_voxel(self, xyz: tuple[float, float, float]) -> _Xyz: ...
    def save(self, path: _Path) -> None: ...

@final
class Preprocessed:
    @property
    def array(self) -> npt.NDArray[np.float32]: ...
    @property
    def lung_mask(self) -> npt.NDArray[np.uint8]: ...
    @property
    def volume(self) -> Volume: ...
    @property
    def crop_start_vox(self) -> tuple[int, int, int]: ...
    @property
    def spacing_mm(self) -> _Xyz: ...
    @property
    def origin_mm(self) -> _Xyz: ...
    @property
    def direction(self) -> npt.NDArray[np.float64]: ...
    def voxel_to_world(self, zyx: tuple[float, float, float]) -> _Xyz: ...
    def world_to_voxel(self, xyz: tuple[float, float, float]) -> _Xyz: ...
    @property
    def lung_volume_ml(self) -> float: ...
    @property
    def timings(self) -> tuple[float, float]: ...
    @property
    def config(self) -> dict[str, Any]: ...

@final
class Nodule:
    def __new__(
        cls,
        coord_x: float,
        coord_y: float,
        coord_z: float,
        diameter_mm: float,
        probability: float,
        series_uid: str | None = None,
    ) -> Nodule: ...
    @property
    def coord_x(self) -> float: ...
    @property
    def coord_y(self) -> float: ...
    @property
    def coord_z(self) -> float: ...
    @property
    def diameter_mm(self) -> float: ...
    @property
    def probability(self) -> float: ...
    @property
    def series_uid(self) -> str | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Detector:
    def __new__(
        cls, model: _Path | None = None, device: str = "auto", batch_size: int | None = None
    ) -> Detector: ...
    def detect(
        self,
        ct: Volume | _Path,
        *,
        threshold: float = 0.1,
        max_detections: int = 100,
        max_voxels: int | None = None,
        flips: Literal["none", "x", "all"] | None = None,
        max_tiles: int | None = None,
        max_tile_coverage: int | None = None,
        max_tensor_bytes: int | None = None,
    ) -> list[Nodule]: ...
    @property
    def device(self) -> str: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def detector_config(self) -> dict[str, Any]: ...
    @property
    def preprocess_config(self) -> dict[str, Any]: ...

@final
class SynthNodule:
    @property
    def coord_x(self) -> float: ...
    @property
    def coord_y(self) -> float: ...
    @property
    def coord_z(self) -> float: ...
    @property
    def diameter_mm(self) -> float: ...
    @property
    def kind(self) -> str: ...

@final
class Phantom:
    @property
    def volume(self) -> Volume: ...
    @property
    def nodules(self) -> list[SynthNodule]: ...
    @property
    def series_uid(self) -> str: ...

@final
class FrocResult:
    @property
    def cpm(self) -> float: ...
    @property
    def cpm_ci(self) -> tuple[float, float]: ...
    @property
    def fps_per_scan(self) -> list[float]: ...
    @property
    def sensitivities(self) -> list[float]: ...
    @property
    def tp(self) -> int: ...
    @property
    def fp(self) -> int: ...
    @property
    def fn_(self) -> int: ...
    @property
    def nodules(self) -> int: ...
    @property
    def scans(self) -> int: ...
    @property
    def curve(self) -> list[tuple[float, float, float]]: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class TrainResult:
    @property
    def epochs(self) -> int: ...
    @property
    def final_model(self) -> str: ...
    @property
    def best_model(self) -> str | None: ...
    @property
    def best_cpm(self) -> float | None: ...
    @property
    def best_epoch(self) -> int | None: ...

def load(
    path: _Path,
    series_uid: str | None = None,
    *,
    allow_modality: bool = False,
    gantry_tilt: Literal["correct", "refuse"] = "correct",
    stack: int | None = None,
    max_voxels: int | None = None,
) -> Volume: ...
def list_series(path: _Path, *, allow_modality: bool = False) -> dict[str, Any]: ...
def read_lidc_file(
    xml: _Path, *, min_readers: int = 3, min_diameter_mm: float = 3.0
) -> dict[str, Any]: ...
def preprocess(volume: Volume, *, max_voxels: int | None = None, **config: Any) -> Preprocessed: ...
def synth(seed: int, *, coarse: bool = False, **config: Any) -> Phantom: ...
def default_config(kind: str) -> dict[str, Any]: ...
def import_monai(state_dict: _Path, out: _Path, config: dict[str, Any] | None = None) -> None: ...
def train(
    data: _Path,
    out: _Path,
    *,
    annotations: _Path | None = None,
    excluded: _Path | None = None,
    config: dict[str, Any] | _Path | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    micro_batch_size: int | None = None,
    patches_per_epoch: int | None = None,
    lr: float | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
    device: str = "auto",
    cache: _Path | None = None,
    resume: bool = False,
    max_voxels: int | None = None,
    on_epoch: Callable[[dict[str, Any]], object] | None = None,
) -> TrainResult: ...
def _evaluate(
    annotations: _Path | Sequence[tuple[str, float, float, float, float | None]],
    excluded: _Path | Sequence[tuple[str, float, float, float, float | None]] | None,
    seriesuids: _Path | Sequence[str],
    predictions: _Path | Sequence[tuple[str, float, float, float, float]],
    config: dict[str, Any] | None = None,
) -> FrocResult: ...
