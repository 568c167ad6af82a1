"""Shared fixtures: the real CT under LUNGCAD_DATA (default ../shared/data; tests needing it
skip when it is absent) and phantoms made by lungcad itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import lungcad

REPO = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    return Path(os.environ.get("LUNGCAD_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def lidc_0001() -> Path:
    p = data_dir() / "lidc" / "LIDC-IDRI-0001"
    if not p.is_dir():
        pytest.skip(f"LIDC-IDRI-0001 not found under {data_dir()} (set LUNGCAD_DATA)")
    return p


@pytest.fixture(scope="session")
def cpu_detector() -> lungcad.Detector:
    return lungcad.Detector(device="cpu")


@pytest.fixture(scope="session")
def coarse_phantom() -> lungcad.Phantom:
    return lungcad.synth(7, coarse=True)


@pytest.fixture(scope="session")
def coarse_slab(coarse_phantom: lungcad.Phantom) -> lungcad.Volume:
    """24 slices of 2.5 mm (60 mm) of the coarse phantom through its largest nodule: one
    layer of the shipped model's tiles, so a detection takes an eighth of the whole
    phantom's time."""
    vol = coarse_phantom.volume
    n = max(coarse_phantom.nodules, key=lambda n: n.diameter_mm)
    centre = round(vol.world_to_voxel((n.coord_x, n.coord_y, n.coord_z))[0])
    z0 = min(max(centre - 12, 0), vol.shape[0] - 24)
    assert z0 >= 0
    return lungcad.Volume.from_numpy(
        vol.array[z0 : z0 + 24],
        spacing_mm=vol.spacing_mm,
        origin_mm=vol.voxel_to_world((z0, 0, 0)),
        direction=vol.direction,
        series_uid=vol.series_uid,
    )
