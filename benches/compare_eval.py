#!/usr/bin/env python3
"""Times `lungcad eval` against the numpy implementation of the LUNA16 protocol
(tests/scripts/luna16_cpm_reference.py, which follows the official script operation by
operation) on one 500,000-candidate submission, in the same run, and checks both give the
same CPM.

    cargo build --release
    python3 benches/compare_eval.py [--lungcad target/release/lungcad] [--candidates 500000]
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lungcad", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "lungcad"))
    ap.add_argument("--candidates", type=int, default=500_000)
    a = ap.parse_args()
    data = os.path.join(os.environ.get("LUNGCAD_DATA", os.path.join(ROOT, "..", "shared", "data")), "luna16")
    ann = list(csv.DictReader(open(os.path.join(data, "annotations.csv"))))
    uids = [l.strip() for l in open(os.path.join(data, "seriesuids.csv")) if l.strip()]
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        pred = os.path.join(tmp, "pred.csv")
        with open(pred, "w") as f:
            f.write("seriesuid,coordX,coordY,coordZ,probability\n")
            # near-hits on 85% of the nodules, the rest random points in random scans
            hits = [r for r in ann if rng.random() < 0.85]
            for r in hits:
                j = rng.normal(0, 2, 3)
                f.write(f"{r['seriesuid']},{float(r['coordX']) + j[0]:.3f},{float(r['coordY']) + j[1]:.3f},{float(r['coordZ']) + j[2]:.3f},{0.5 + 0.5 * rng.random():.5f}\n")
            n = a.candidates - len(hits)
            scans = rng.integers(0, len(uids), n)
            xyz = rng.uniform(-200, 200, (n, 3))
            p = rng.random(n) ** 12
            for s, (x, y, z), q in zip(scans, xyz, p):
                f.write(f"{uids[s]},{x:.3f},{y:.3f},{z:.3f},{q:.5f}\n")
        args = ["--annotations", os.path.join(data, "annotations.csv"), "--excluded", os.path.join(data, "annotations_excluded.csv"),
                "--seriesuids", os.path.join(data, "seriesuids.csv"), "--predictions", pred]
        t0 = time.perf_counter()
        out = subprocess.run([a.lungcad, "eval", "--json"] + args, check=True, capture_output=True, text=True).stdout
        t_rust = time.perf_counter() - t0
        rust = json.loads(out)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "scripts", "luna16_cpm_reference.py"), "--data", data, "--predictions", pred],
                             check=True, capture_output=True, text=True).stdout
        t_py = time.perf_counter() - t0
        py = json.loads(out)
    print(f"submission: {a.candidates} candidates, 888 scans, 1000 bootstrap resamples, cores: {os.cpu_count()}")
    print(f"lungcad eval (process, CSV parse included): {t_rust:.3f} s   CPM {rust['cpm']!r}")
    print(f"numpy reference (process, CSV parse included): {t_py:.3f} s   CPM {py['cpm']!r}")
    print(f"lungcad faster by {t_py / t_rust:.1f}x; |CPM difference| = {abs(rust['cpm'] - py['cpm']):.3g}")


if __name__ == "__main__":
    main()
