"""lungcad.evaluate: a submission small enough to score by hand, every input form, errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pytest

import lungcad

# Three scans, one 10 mm nodule on scan A. A false positive on scan B outranks the hit on
# A, so the hit comes at 1/3 false positives per scan: sensitivity 0 at 1/8 and 1/4 FP/scan
# and 1 from 1/2 on, CPM 5/7.
ANNOTATIONS = [("A", 0.0, 0.0, 0.0, 10.0)]
EXCLUDED = [("C", 50.0, 50.0, 50.0, 8.0)]
SCANS = ["A", "B", "C"]
PREDICTIONS = [
    ("B", 0.0, 0.0, 0.0, 0.95),
    ("A", 1.0, 1.0, 1.0, 0.9),
    ("C", 51.0, 50.0, 50.0, 0.99),  # on the excluded finding: ignored
]


def check(r: lungcad.FrocResult) -> None:
    assert r.sensitivities == pytest.approx([0, 0, 1, 1, 1, 1, 1])
    assert r.cpm == pytest.approx(5 / 7)
    assert (r.tp, r.fp, r.fn_, r.nodules, r.scans) == (1, 1, 0, 1, 3)
    assert r.fps_per_scan == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]


def test_a_submission_scored_by_hand() -> None:
    r = lungcad.evaluate(ANNOTATIONS, EXCLUDED, SCANS, PREDICTIONS, bootstrap_resamples=0)
    check(r)
    assert math.isnan(r.cpm_ci[0])
    d = r.to_dict()
    assert d["cpm"] == pytest.approx(5 / 7) and d["fn"] == 0
    assert r.curve[-1][:2] == pytest.approx((1 / 3, 1.0))
    # Without the excluded list the prediction on it is a second false positive.
    r2 = lungcad.evaluate(ANNOTATIONS, None, SCANS, PREDICTIONS, bootstrap_resamples=0)
    assert r2.fp == 2 and r2.sensitivities[2] == 0.0


def test_every_input_form_gives_the_same_result(tmp_path: Path) -> None:
    def write(name: str, header: str, rows: Sequence[tuple[object, ...]]) -> Path:
        p = tmp_path / name
        p.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
        return p

    ann = write("annotations.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm", ANNOTATIONS)
    exc = write("excluded.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm", EXCLUDED)
    uids = tmp_path / "seriesuids.csv"
    uids.write_text("".join(u + "\n" for u in SCANS))
    pred = write("predictions.csv", "seriesuid,coordX,coordY,coordZ,probability", PREDICTIONS)
    check(lungcad.evaluate(ann, exc, uids, pred, bootstrap_resamples=0))
    check(lungcad.evaluate(str(ann), str(exc), str(uids), str(pred), bootstrap_resamples=0))
    cols = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
    dicts = [dict(zip(cols, p)) for p in PREDICTIONS]
    check(lungcad.evaluate(ANNOTATIONS, EXCLUDED, SCANS, dicts, bootstrap_resamples=0))
    nodules = [lungcad.Nodule(x, y, z, 5.0, p, uid) for (uid, x, y, z, p) in PREDICTIONS]
    check(lungcad.evaluate(ANNOTATIONS, EXCLUDED, SCANS, nodules, bootstrap_resamples=0))
    pandas = pytest.importorskip("pandas")
    check(
        lungcad.evaluate(
            pandas.read_csv(ann), pandas.read_csv(exc), SCANS, pandas.read_csv(pred), bootstrap_resamples=0
        )
    )


def test_bootstrap_gives_an_interval() -> None:
    r = lungcad.evaluate(ANNOTATIONS, EXCLUDED, SCANS, PREDICTIONS, bootstrap_resamples=200)
    lo, hi = r.cpm_ci
    assert 0.0 <= lo <= hi <= 1.0


def test_evaluation_errors_are_typed(tmp_path: Path) -> None:
    nan = [("A", 0.0, 0.0, 0.0, float("nan"))]
    with pytest.raises(lungcad.EvaluationError):
        lungcad.evaluate(ANNOTATIONS, None, SCANS, nan)
    with pytest.raises(lungcad.EvaluationError):
        lungcad.evaluate(ANNOTATIONS, None, ["A", "A"], PREDICTIONS)
    with pytest.raises(lungcad.InvalidArgumentError, match="unknown field"):
        lungcad.evaluate(ANNOTATIONS, None, SCANS, PREDICTIONS, bootstraps=3)
    with pytest.raises(lungcad.InvalidArgumentError):
        lungcad.evaluate(ANNOTATIONS, None, SCANS, [("A", 1.0, 2.0)])
    bad = tmp_path / "p.csv"
    bad.write_text("seriesuid,coordX,coordY,coordZ,probability\nA,1,2,x,0.5\n")
    with pytest.raises(lungcad.EvaluationError, match="p.csv:2"):
        lungcad.evaluate(ANNOTATIONS, None, SCANS, bad)
    with pytest.raises(FileNotFoundError):
        lungcad.evaluate(tmp_path / "none.csv", None, SCANS, PREDICTIONS)


def test_lidc_reads_give_rows_evaluate_takes(lidc_0001: Path, tmp_path: Path) -> None:
    [xml] = sorted(lidc_0001.rglob("*.xml"))
    read = lungcad.read_lidc_file(xml)
    [nodule] = read["nodules"]
    assert nodule["readers"] == 4 and len(nodule["annotations"]) == 4
    assert [a["characteristics"]["malignancy"] for a in nodule["annotations"]] == [5, 5, 5, 4]
    assert nodule["diameter_mm"] == pytest.approx(23.35, abs=0.25)
    [row] = read["annotations"]
    assert row[0] == read["series_uid"] and row[1:4] == tuple(nodule["centre_world"])
    assert len(read["excluded"]) == 22 and all(r[4] is None for r in read["excluded"])
    # A candidate at the nodule's centre and one on an excluded finding: every operating
    # point found, no false positive.
    hit = (read["series_uid"], *row[1:4], 0.9)
    ignored = (read["series_uid"], *read["excluded"][0][1:4], 0.8)
    result = lungcad.evaluate(
        read["annotations"], read["excluded"], [read["series_uid"]], [hit, ignored]
    )
    assert result.cpm == 1.0
    five = lungcad.read_lidc_file(xml, min_readers=5)
    assert five["nodules"] == [] and five["other_nodules"] == read["nodules"]
    bad = tmp_path / "bad.xml"
    bad.write_text("<LidcReadMessage><a></b></LidcReadMessage>")
    with pytest.raises(lungcad.EvaluationError, match="LIDC XML"):
        lungcad.read_lidc_file(bad)
    with pytest.raises(FileNotFoundError):
        lungcad.read_lidc_file(tmp_path / "none.xml")
