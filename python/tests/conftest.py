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
