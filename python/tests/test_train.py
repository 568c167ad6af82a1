"""lungcad.train: a short run on phantoms writes a model lungcad.Detector reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import lungcad

TINY = {
    "batch_size": 4,
    "micro_batch_size": 2,
    "patches_per_epoch": 8,
    "seed": 3,
    "detector": {"channels": [4, 4, 8, 8, 8], "blocks": [1, 1, 1, 1], "decoder_channels": 8, "decoder_blocks": 1},
    "preprocess": {"spacing_mm": [2.0, 2.0, 2.0], "patch": {"size_vox": [32, 32, 32], "overlap_vox": [8, 8, 8]}},
    "validation": {"fraction": 0.5},
}


def phantoms(root: Path, seeds: list[int]) -> None:
    root.mkdir()
    rows = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    for seed in seeds:
        p = lungcad.synth(seed, coarse=True)
        p.volume.save(root / f"{p.series_uid}.mhd")
        rows += [f"{p.series_uid},{n.coord_x},{n.coord_y},{n.coord_z},{n.diameter_mm}" for n in p.nodules]
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")


def test_a_short_run_writes_a_model_and_reports_its_epochs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    phantoms(data, [11, 12])
    epochs: list[dict[str, Any]] = []
    r = lungcad.train(data, tmp_path / "run", config=TINY, epochs=1, device="cpu", on_epoch=epochs.append)
    assert r.epochs == 1
    assert Path(r.final_model).is_file()
    assert [e["epoch"] for e in epochs] == [1]
    assert epochs[0]["steps"] == 2 and epochs[0]["loss"]["total"] > 0
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["batch_size"] == 4 and config["epochs"] == 1
    d = lungcad.Detector(r.final_model, device="cpu")
    assert d.detector_config["channels"] == [4, 4, 8, 8, 8]
    assert d.model == str(r.final_model)
    # The run folder now holds a run: starting again is refused, resuming extends it.
    with pytest.raises(lungcad.InvalidArgumentError, match="already holds a training run"):
        lungcad.train(data, tmp_path / "run", config=TINY, epochs=1, device="cpu")
    r2 = lungcad.train(data, tmp_path / "run", resume=True, epochs=2, device="cpu")
    assert r2.epochs == 2


def test_train_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lungcad.train(tmp_path, tmp_path / "run", device="cpu")
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    with pytest.raises(lungcad.InvalidArgumentError, match="no scans"):
        lungcad.train(tmp_path, tmp_path / "run", device="cpu")
    with pytest.raises(lungcad.InvalidArgumentError, match="unknown field"):
        lungcad.train(tmp_path, tmp_path / "run", config={"epoch": 3}, device="cpu")

    def boom(_: dict[str, Any]) -> None:
        raise RuntimeError("from the callback")

    data = tmp_path / "data"
    phantoms(data, [13, 14])
    with pytest.raises(RuntimeError, match="from the callback"):
        lungcad.train(data, tmp_path / "run2", config=TINY, epochs=1, device="cpu", on_epoch=boom)
