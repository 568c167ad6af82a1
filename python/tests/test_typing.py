"""The stubs match the extension (mypy.stubtest) and the package type-checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_stubtest_passes() -> None:
    pytest.importorskip("mypy")
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "lungcad"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_and_tests_type_check() -> None:
    pytest.importorskip("mypy")
    here = Path(__file__).resolve().parent
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", str(here.parent / "examples"), str(here)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
