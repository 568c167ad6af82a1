"""Detection with the shipped model: on a held-out phantom, from several threads, and the
errors a detector raises."""

from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import lungcad

REPO = Path(__file__).resolve().parents[2]


def hits(nodule: lungcad.SynthNodule, found: list[lungcad.Nodule], min_p: float) -> bool:
    r = nodule.diameter_mm / 2
    return any(
        f.probability >= min_p
        and math.dist((f.coord_x, f.coord_y, f.coord_z), (nodule.coord_x, nodule.coord_y, nodule.coord_z)) <= r
        for f in found
    )


def test_shipped_model_finds_a_held_out_phantoms_nodules(cpu_detector: lungcad.Detector) -> None:
    # Seed 5010 is in the model card's held-out range (5000-5019), never trained on; the
    # phantom is made with the shipped model's synthetic config (nodules 6 to 30 mm), as
    # tests/model.rs does.
    config = json.loads((REPO / "models" / "phantom-v2" / "synth_config.json").read_text())
    phantom = lungcad.synth(5010, **config)
    assert phantom.nodules
    found = cpu_detector.detect(phantom.volume, threshold=0.05)
    assert found == sorted(found, key=lambda n: -n.probability)
    for n in phantom.nodules:
        assert hits(n, found, 0.5), f"{n} not found at p >= 0.5"
    assert all(f.series_uid == phantom.series_uid for f in found)
    assert cpu_detector.device.startswith("cpu")
    assert cpu_detector.model == lungcad.SHIPPED_MODEL_NAME
    assert cpu_detector.preprocess_config["patch"]["size_vox"] == [32, 32, 32]


def test_four_threads_detect_at_once_with_identical_results(
    cpu_detector: lungcad.Detector, coarse_slab: lungcad.Volume
) -> None:
    vol = coarse_slab
    reference = cpu_detector.detect(vol)
    assert reference
    # While the threads detect, the GIL is free: a pure-Python thread keeps counting.
    stop = threading.Event()
    ticks = [0]

    def count() -> None:
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: cpu_detector.detect(vol), range(4)))
    finally:
        stop.set()
        counter.join()
    elapsed = time.monotonic() - start
    assert all(r == reference for r in results)
    # A tick takes a millisecond or a little more: held by the GIL, the counter would
    # make none while the detections run.
    assert ticks[0] > max(20, 0.1 * elapsed * 1000), (ticks[0], elapsed)


def test_test_time_flips_change_the_outputs_not_their_kind(
    cpu_detector: lungcad.Detector, coarse_slab: lungcad.Volume
) -> None:
    vol = coarse_slab
    plain = cpu_detector.detect(vol, threshold=0.0, flips="none")
    # The default is "x", as in `lungcad detect`.
    assert cpu_detector.detect(vol, threshold=0.0) == cpu_detector.detect(vol, threshold=0.0, flips="x")
    flipped = cpu_detector.detect(vol, threshold=0.0, flips="all")
    assert plain and flipped and flipped != plain
    assert all(0.0 <= n.probability <= 1.0 for n in flipped)


def test_detect_reads_a_path_and_names_the_series_by_file(
    cpu_detector: lungcad.Detector, coarse_slab: lungcad.Volume, tmp_path: Path
) -> None:
    path = tmp_path / "1.2.826.0.1.99.mhd"
    coarse_slab.save(path)
    from_path = cpu_detector.detect(path)
    assert from_path
    from_volume = cpu_detector.detect(coarse_slab)
    assert [n.series_uid for n in from_path] == ["1.2.826.0.1.99"] * len(from_path)
    # Every volume extension is stripped, .nii.gz whole (LUNA16's and Tianchi's naming).
    gz = tmp_path / "1.2.826.0.1.98.nii.gz"
    coarse_slab.save(gz)
    assert {n.series_uid for n in cpu_detector.detect(gz, threshold=0.0)} == {"1.2.826.0.1.98"}
    np.testing.assert_allclose(
        [(n.coord_x, n.coord_y, n.coord_z, n.probability) for n in from_path],
        [(n.coord_x, n.coord_y, n.coord_z, n.probability) for n in from_volume],
        atol=1e-6,
    )
    csv = lungcad.to_luna_csv(from_path, tmp_path / "det.csv")
    assert csv.splitlines()[0] == "seriesuid,coordX,coordY,coordZ,probability"
    assert len(csv.splitlines()) == len(from_path) + 1
    assert (tmp_path / "det.csv").read_text() == csv
    pandas = pytest.importorskip("pandas")
    df = lungcad.to_dataframe(from_path)
    assert isinstance(df, pandas.DataFrame)
    assert list(df.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"]
    np.testing.assert_allclose(df["probability"], [n.probability for n in from_path])


def test_detector_errors_are_typed(tmp_path: Path, coarse_phantom: lungcad.Phantom) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(lungcad.ModelError, match="model.safetensors"):
        lungcad.Detector(bad, device="cpu")
    with pytest.raises(FileNotFoundError):
        lungcad.Detector(tmp_path / "none.safetensors", device="cpu")
    with pytest.raises(lungcad.InvalidArgumentError):
        lungcad.Detector(device="tpu")
    with pytest.raises(lungcad.InvalidArgumentError):
        lungcad.Detector(device="cpu", batch_size=0)
    with pytest.raises(lungcad.DeviceError):
        lungcad.Detector(device="cuda")
    d = lungcad.Detector(device="cpu", batch_size=3)
    assert d.batch_size == 3
    with pytest.raises(lungcad.InvalidArgumentError):
        d.detect(coarse_phantom.volume, threshold=1.5)
    with pytest.raises(TypeError):
        d.detect(42)  # type: ignore[arg-type]
    with pytest.raises(lungcad.InvalidArgumentError, match="flips"):
        d.detect(coarse_phantom.volume, flips="mirror")  # type: ignore[arg-type]
    with pytest.raises(lungcad.LimitError):
        path = tmp_path / "v.mhd"
        coarse_phantom.volume.save(path)
        d.detect(path, max_voxels=1000)
    # The tiles a model's patch size and overlap make are bounded too, before the network.
    with pytest.raises(lungcad.LimitError, match="tile count"):
        d.detect(coarse_phantom.volume, max_tiles=1)
    with pytest.raises(lungcad.LimitError, match="tile coverage"):
        d.detect(coarse_phantom.volume, max_tile_coverage=1)
    with pytest.raises(lungcad.LimitError, match="largest tensor"):
        d.detect(coarse_phantom.volume, max_tensor_bytes=1000)
