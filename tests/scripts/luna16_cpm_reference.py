#!/usr/bin/env python3
"""Independent reference implementation of the LUNA16 FROC/CPM evaluation (numpy only).

Written from the official LUNA16 evaluation script (noduleCADEvaluationLUNA16.py: its
evaluateCAD, computeFROC and computeFROC_bootstrap), loop for loop, to cross-check the Rust
implementation in src/eval. sklearn.metrics.roc_curve is re-implemented in numpy below
(`--check-sklearn` compares it with the real one when scikit-learn is installed);
numpy.interp is numpy's own.

Two modes:

* scenarios (default): builds the seeded synthetic submissions that lungcad::eval::synthetic
  builds (same SplitMix64 streams, same float operations, hence bit-identical candidates),
  evaluates them and prints one JSON object: scenario name -> results. tests/eval.rs holds
  these numbers.
* --predictions FILE: evaluates a submission CSV and prints the JSON result.

Where the official script would crash or produce NaN, this script does what lungcad
documents: no scored item at all gives the single point (0, 0); no detected nodule gives
sensitivity 0. The bootstrap uses SplitMix64 (resample b draws its scans from a generator
seeded with the b-th output of SplitMix64(seed)) instead of the unseeded numpy.random.

Usage:
    python3 tests/scripts/luna16_cpm_reference.py [--data DIR] [--scenario NAME ...]
    python3 tests/scripts/luna16_cpm_reference.py --predictions submission.csv
"""

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

MASK64 = (1 << 64) - 1
OPERATING_POINTS = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
FP_STREAM = 0x5EED_F00D_5EED_F00D
MIN_PROB_VALUE = -1000000000.0  # the official minProbValue for missed nodules


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def uniform(self):
        return (self.next_u64() >> 11) * (1.0 / 9007199254740992.0)

    def below(self, n):
        return (self.next_u64() * n) >> 64


# --------------------------------------------------------------------------- CSV reading


def read_rows(path):
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]


def read_findings(path):
    """(seriesuid, x, y, z, diameter) per row; an empty diameter reads as -1 (10 mm)."""
    rows = read_rows(path)
    header = [h.strip() for h in rows[0]]
    idx = [header.index(c) for c in ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")]
    out = []
    for row in rows[1:]:
        d = row[idx[4]].strip()
        out.append((row[idx[0]].strip(), float(row[idx[1]]), float(row[idx[2]]), float(row[idx[3]]),
                    float(d) if d else -1.0))
    return out


def read_predictions(path):
    rows = read_rows(path)
    header = [h.strip() for h in rows[0]]
    idx = [header.index(c) for c in ("seriesuid", "coordX", "coordY", "coordZ", "probability")]
    return [(row[idx[0]].strip(), float(row[idx[1]]), float(row[idx[2]]), float(row[idx[3]]),
             float(row[idx[4]])) for row in rows[1:]]


def read_seriesuids(path):
    return [row[0].strip() for row in read_rows(path)]


# --------------------------------------------------------------------------- submissions


def quantize(p, levels):
    return p if levels == 0 else math.floor(p * levels) / levels


def generate(annotations, excluded, seriesuids, spec):
    """The synthetic submission of lungcad::eval::synthetic::generate."""
    nodules, irrelevant = {}, {}
    for f in annotations:
        nodules.setdefault(f[0], []).append(f)
    for f in excluded:
        irrelevant.setdefault(f[0], []).append(f)
    hits = SplitMix64(spec["seed"])
    fps = SplitMix64(spec["seed"] ^ FP_STREAM)
    levels = spec["probability_levels"]
    total_fp = spec["false_positives"]
    n = len(seriesuids)
    out = []
    for i, uid in enumerate(seriesuids):
        for f in nodules.get(uid, []):
            if hits.uniform() < spec["detect_fraction"]:
                copies = 2 if hits.uniform() < spec["duplicate_fraction"] else 1
                d = f[4] if not f[4] < 0.0 else 10.0
                r = d / 2.0
                for _ in range(copies):
                    dx = (2.0 * hits.uniform() - 1.0) * r * spec["jitter"]
                    dy = (2.0 * hits.uniform() - 1.0) * r * spec["jitter"]
                    dz = (2.0 * hits.uniform() - 1.0) * r * spec["jitter"]
                    u = hits.uniform()
                    out.append((uid, f[1] + dx, f[2] + dy, f[3] + dz, quantize(1.0 - 0.5 * u * u, levels)))
        for f in irrelevant.get(uid, []):
            if hits.uniform() < spec["excluded_hit_fraction"]:
                out.append((uid, f[1], f[2], f[3], quantize(0.9 * hits.uniform(), levels)))
        count = total_fp * (i + 1) // n - total_fp * i // n
        for _ in range(count):
            x = -180.0 + 360.0 * fps.uniform()
            y = -180.0 + 360.0 * fps.uniform()
            z = -350.0 + 300.0 * fps.uniform()
            u = fps.uniform()
            out.append((uid, x, y, z, quantize(u * u * u * u, levels)))
    return out


def generate_with_total(annotations, excluded, seriesuids, spec, total):
    near = generate(annotations, excluded, seriesuids, dict(spec, false_positives=0))
    return generate(annotations, excluded, seriesuids, dict(spec, false_positives=max(0, total - len(near))))


# --------------------------------------------------------------------------- FROC


def roc_curve(y_true, y_score):
    """sklearn.metrics.roc_curve(y_true, y_score) (drop_intermediate=True), in numpy."""
    y_true = np.asarray(y_true, dtype=np.float64) == 1.0
    y_score = np.asarray(y_score, dtype=np.float64)
    desc = np.argsort(y_score, kind="mergesort")[::-1]
    y_score = y_score[desc]
    y_true = y_true[desc]
    distinct = np.where(np.diff(y_score))[0]
    thr_idx = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true * 1.0, dtype=np.float64)[thr_idx]
    fps = 1 + thr_idx - tps
    thresholds = y_score[thr_idx]
    if len(fps) > 2:
        keep = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[np.inf, thresholds]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = np.repeat(np.nan, fps.shape) if fps[-1] <= 0 else fps / fps[-1]
        tpr = np.repeat(np.nan, tps.shape) if tps[-1] <= 0 else tps / tps[-1]
    return fpr, tpr, thresholds


SKLEARN_CHECKS = {"curves": 0}


def compute_froc(gt, prob, total_images, exclude, check_sklearn=False):
    """The official computeFROC."""
    gt = np.asarray(gt, dtype=np.float64)
    prob = np.asarray(prob, dtype=np.float64)
    exclude = np.asarray(exclude, dtype=bool)
    gt_local = gt[~exclude]
    prob_local = prob[~exclude]
    detected = float(np.sum(gt_local))
    total_lesions = float(np.sum(gt))
    total_candidates = len(prob_local)
    if total_candidates == 0:
        return np.array([0.0]), np.array([0.0]), np.array([np.inf])
    fpr, tpr, thresholds = roc_curve(gt_local, prob_local)
    if check_sklearn:
        import warnings
        from sklearn.metrics import roc_curve as sk_roc_curve
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sk = sk_roc_curve(gt_local, prob_local)
        for mine, theirs in zip((fpr, tpr, thresholds), sk):
            if not np.array_equal(mine, theirs, equal_nan=True):
                raise AssertionError("numpy roc_curve differs from sklearn's")
        SKLEARN_CHECKS["curves"] += 1
    if np.sum(gt) == len(gt):  # no false positives: the official special case
        fps = np.zeros(len(fpr))
    else:
        fps = fpr * (total_candidates - detected) / total_images
    if detected == 0:  # sklearn: NaN
        sens = np.zeros(len(tpr))
    else:
        sens = (tpr * detected) / total_lesions
    return fps, sens, thresholds


def evaluate(seriesuids, annotations, excluded, candidates, max_marks=100, excluded_irrelevant=True,
             resamples=1000, seed=16, confidence=0.95, check_sklearn=False):
    """The official evaluateCAD (+ computeFROC_bootstrap), numpy-vectorised per finding."""
    listed = set(seriesuids)
    per_scan = {}
    unknown = 0
    for c in candidates:
        if c[0] in listed:
            per_scan.setdefault(c[0], []).append(c)
        else:
            unknown += 1
    nodules, irrelevant = {}, {}
    for f in annotations:
        nodules.setdefault(f[0], []).append(f)
    for f in excluded:
        irrelevant.setdefault(f[0], []).append(f)

    gt_list, prob_list, scan_list, exclude_list = [], [], [], []
    counts = dict(tp=0, fp=0, fn=0, nodules=0, candidates=0, candidates_submitted=0,
                  ignored_on_excluded=0, ignored_double_detections=0)
    for uid in seriesuids:
        cands = per_scan.get(uid, [])
        counts["candidates_submitted"] += len(cands)
        if max_marks > 0 and len(cands) > max_marks:
            probs = sorted((c[4] for c in cands), reverse=True)
            threshold = probs[max_marks]
            kept = []
            for c in cands:
                if len(kept) >= max_marks:
                    break
                if c[4] > threshold:
                    kept.append(c)
            cands = kept
        counts["candidates"] += len(cands)
        cx = np.array([c[1] for c in cands], dtype=np.float64)
        cy = np.array([c[2] for c in cands], dtype=np.float64)
        cz = np.array([c[3] for c in cands], dtype=np.float64)
        cp = np.array([c[4] for c in cands], dtype=np.float64)
        remaining = np.ones(len(cands), dtype=bool)  # the official candidates2

        def radius_squared(f):
            diameter = f[4]
            if diameter < 0.0:
                diameter = 10.0
            return pow(diameter / 2.0, 2.0)

        for f in nodules.get(uid, []):
            counts["nodules"] += 1
            dist = (f[1] - cx) ** 2 + (f[2] - cy) ** 2 + (f[3] - cz) ** 2
            hits = dist < radius_squared(f)
            n_hits = int(hits.sum())
            if n_hits > 1:
                counts["ignored_double_detections"] += n_hits - 1
            gt_list.append(1.0)
            scan_list.append(uid)
            if n_hits > 0:
                remaining[hits] = False
                prob_list.append(float(cp[hits].max()))
                exclude_list.append(False)
                counts["tp"] += 1
            else:
                prob_list.append(MIN_PROB_VALUE)
                exclude_list.append(True)
                counts["fn"] += 1
        if excluded_irrelevant:
            for f in irrelevant.get(uid, []):
                dist = (f[1] - cx) ** 2 + (f[2] - cy) ** 2 + (f[3] - cz) ** 2
                hits = (dist < radius_squared(f)) & remaining
                counts["ignored_on_excluded"] += int(hits.sum())
                remaining[hits] = False
        for p in cp[remaining]:
            gt_list.append(0.0)
            prob_list.append(float(p))
            scan_list.append(uid)
            exclude_list.append(False)
            counts["fp"] += 1

    n_images = len(seriesuids)
    fps, sens, thresholds = compute_froc(gt_list, prob_list, n_images, exclude_list, check_sklearn)
    sens7 = np.interp(OPERATING_POINTS, fps, sens)
    result = dict(counts)
    result.update(
        scans=n_images,
        candidates_unknown_series=unknown,
        curve_points=len(fps),
        sensitivities=[float(v) for v in sens7],
        cpm=float(np.mean(sens7)),
    )
    if resamples > 0:
        result.update(bootstrap(gt_list, prob_list, scan_list, exclude_list, seriesuids, resamples, seed,
                                confidence))
    return result


def bootstrap(gt_list, prob_list, scan_list, exclude_list, seriesuids, resamples, seed, confidence):
    """computeFROC_bootstrap: resample scans, concatenate their items, computeFROC."""
    gt = np.asarray(gt_list, dtype=np.float64)
    prob = np.asarray(prob_list, dtype=np.float64)
    excl = np.asarray(exclude_list, dtype=bool)
    scans = np.asarray(scan_list)
    by_scan = {}
    order = np.argsort(scans, kind="stable")
    uniq, starts = np.unique(scans[order], return_index=True)
    bounds = list(starts) + [len(order)]
    for k, uid in enumerate(uniq):
        sel = order[bounds[k]:bounds[k + 1]]
        by_scan[str(uid)] = (gt[sel], prob[sel], excl[sel])
    n = len(seriesuids)
    master = SplitMix64(seed)
    sens_rows, cpms = [], []
    for _ in range(resamples):
        stream = SplitMix64(master.next_u64())
        picks = [seriesuids[stream.below(n)] for _ in range(n)]
        parts = [by_scan[uid] for uid in picks if uid in by_scan]
        if parts:
            g = np.concatenate([p[0] for p in parts])
            pr = np.concatenate([p[1] for p in parts])
            ex = np.concatenate([p[2] for p in parts])
        else:
            g = pr = np.zeros(0)
            ex = np.zeros(0, dtype=bool)
        fps, sens, _ = compute_froc(g, pr, n, ex)
        s7 = np.interp(OPERATING_POINTS, fps, sens)
        sens_rows.append(s7)
        cpms.append(float(np.mean(s7)))
    pz = (1.0 - confidence) / 2.0

    def mean_ci(values):
        v = np.sort(np.asarray(values, dtype=np.float64))
        lo = v[min(int(math.floor(pz * len(v))), len(v) - 1)]
        hi = v[min(int(math.floor((1.0 - pz) * len(v))), len(v) - 1)]
        return float(np.average(v)), float(lo), float(hi)

    rows = np.asarray(sens_rows)
    sens_ci = []
    for i in range(7):
        _, lo, hi = mean_ci(rows[:, i])
        sens_ci.append([lo, hi])
    mean, lo, hi = mean_ci(cpms)
    return dict(cpm_ci=[lo, hi], cpm_bootstrap_mean=mean, sensitivity_ci=sens_ci)


# --------------------------------------------------------------------------- scenarios

BASE_SPEC = dict(seed=1, detect_fraction=0.9, duplicate_fraction=0.2, jitter=0.7, excluded_hit_fraction=0.1,
                 false_positives=100_000, probability_levels=1000)

# name -> (submission spec, total candidates or None, evaluation settings overriding the
# defaults: cap 100, excluded findings irrelevant, 1000 resamples, seed 16). Mirrored in
# tests/eval.rs.
SCENARIOS = {
    "capped": (BASE_SPEC, None, dict()),
    "sparse": (dict(BASE_SPEC, seed=2, detect_fraction=0.6, duplicate_fraction=0.5, jitter=0.5,
                    excluded_hit_fraction=0.3, false_positives=300, probability_levels=0), None, dict()),
    "excluded_as_fp": (dict(BASE_SPEC, seed=3, detect_fraction=0.8, duplicate_fraction=0.1, jitter=0.6,
                            excluded_hit_fraction=0.5, false_positives=20_000, probability_levels=100), None,
                       dict(excluded_irrelevant=False)),
    "bench500k": (dict(BASE_SPEC, seed=4), 500_000, dict()),
    "bench500k_uncapped": (dict(BASE_SPEC, seed=4), 500_000, dict(max_marks=0, resamples=200)),
}


def default_data_dir():
    root = Path(__file__).resolve().parents[2]
    base = os.environ.get("LUNGCAD_DATA")
    return (Path(base) if base else root / ".." / "shared" / "data") / "luna16"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None,
                    help="folder with annotations.csv, annotations_excluded.csv, seriesuids.csv "
                         "(default: $LUNGCAD_DATA/luna16, else ../shared/data/luna16 from the repository)")
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="run only these")
    ap.add_argument("--predictions", type=Path, help="evaluate this submission CSV instead of the scenarios")
    ap.add_argument("--max-candidates", type=int, default=100, help="per-scan cap (0 = none)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--check-sklearn", action="store_true",
                    help="compare the numpy roc_curve with sklearn.metrics.roc_curve (needs scikit-learn)")
    args = ap.parse_args()

    data = args.data or default_data_dir()
    annotations = read_findings(data / "annotations.csv")
    excluded = read_findings(data / "annotations_excluded.csv")
    seriesuids = read_seriesuids(data / "seriesuids.csv")

    if args.predictions:
        result = evaluate(seriesuids, annotations, excluded, read_predictions(args.predictions),
                          max_marks=args.max_candidates, resamples=args.resamples, seed=args.seed,
                          check_sklearn=args.check_sklearn)
        print(json.dumps(result, indent=1))
        return

    out = {}
    for name in args.scenario or list(SCENARIOS):
        spec, total, settings = SCENARIOS[name]
        start = time.time()
        if total is None:
            cands = generate(annotations, excluded, seriesuids, spec)
        else:
            cands = generate_with_total(annotations, excluded, seriesuids, spec, total)
        settings = dict(dict(resamples=args.resamples, seed=args.seed), **settings)
        result = evaluate(seriesuids, annotations, excluded, cands, check_sklearn=args.check_sklearn, **settings)
        result["submitted"] = len(cands)
        out[name] = result
        print(f"{name}: {len(cands)} candidates, CPM {result['cpm']!r} ({time.time() - start:.1f} s)",
              file=sys.stderr)
    if args.check_sklearn:
        print(f"sklearn roc_curve agreed on {SKLEARN_CHECKS['curves']} curves", file=sys.stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
