"""A MONAI RetinaNet from Python: import_monai, then Detector runs MONAI's pipeline and gives
MONAI's boxes (the fixtures of tests/scripts/make_monai_fixture.py, made by MONAI itself)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import lungcad

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "monai"


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    body = data[8 + n :]
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        dtype = {"F32": np.float32, "F64": np.float64, "I64": np.int64}[t["dtype"]]
        out[name] = np.frombuffer(body[a:b], dtype=dtype).reshape(t["shape"])
    return out, meta


@pytest.mark.parametrize("source", ["retinanet_small.safetensors", "retinanet_small.pt"])
def test_a_monai_model_runs_monais_pipeline(tmp_path: Path, source: str) -> None:
    """From the state_dict as safetensors and as PyTorch's .pt (the bundle's model.pt form)."""
    weights = FIXTURES / "retinanet_small.safetensors"
    _, meta = read_safetensors(weights)
    model = tmp_path / "monai.safetensors"
    lungcad.import_monai(FIXTURES / source, model, json.loads(meta["settings"]))
    detector = lungcad.Detector(model, device="cpu")
    assert detector.detector_config["fpn_channels"] == 16
    assert detector.preprocess_config["pixdim"] == [0.703125, 0.703125, 1.25]
    found = detector.detect(FIXTURES / "preprocess_input.nii.gz", threshold=0.0, max_detections=300)
    expected, _ = read_safetensors(FIXTURES / "end_to_end.safetensors")
    boxes, scores = expected["boxes_world"], expected["scores"]
    assert len(found) == len(boxes)
    np.testing.assert_allclose([(n.coord_x, n.coord_y, n.coord_z) for n in found], boxes[:, :3], atol=1e-3)
    np.testing.assert_allclose([n.probability for n in found], scores, atol=1e-4)
    np.testing.assert_allclose([n.diameter_mm for n in found], boxes[:, 3:].mean(axis=1), atol=1e-3)
    with pytest.raises(lungcad.InvalidArgumentError, match="test-time flips"):
        detector.detect(FIXTURES / "preprocess_input.nii.gz", flips="x")
    with pytest.raises(lungcad.ModelError, match="fit"):
        lungcad.import_monai(weights, tmp_path / "x.safetensors", {"fpn_channels": 8})
