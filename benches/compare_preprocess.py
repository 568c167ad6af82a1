#!/usr/bin/env python3
"""Preprocessing of one CT by lungcad against SimpleITK's resampling to the same grid, in
the same run; prints seconds, the ratio, and lungcad's peak memory against the input.

    cargo build --release
    python3 benches/compare_preprocess.py [CT] [--runs 5] [--lungcad target/release/lungcad]

CT defaults to LIDC-IDRI-0001 under $LUNGCAD_DATA (default ../shared/data). lungcad's
stage times come from `lungcad preprocess --json` (resample, lung mask; best of the runs);
the whole process (DICOM load, preprocessing, writing the 1 mm volume) is timed too.
SimpleITK reads the same volume (converted to .mha by lungcad once) and its
ResampleImageFilter.Execute() is timed alone, to 1 mm, linear, same grid (origin,
direction, size rounded half up), best of the runs. Peak memory: maximum resident set
size of one `lungcad preprocess` process (GNU time), over the input volume's bytes
(int16 voxels).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    data = os.environ.get("LUNGCAD_DATA", os.path.join(ROOT, "..", "shared", "data"))
    ap = argparse.ArgumentParser()
    ap.add_argument("ct", nargs="?", default=os.path.join(data, "lidc", "LIDC-IDRI-0001"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--lungcad", default=os.path.join(ROOT, "target", "release", "lungcad"))
    a = ap.parse_args()
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.mha")
        subprocess.run([a.lungcad, "convert", a.ct, src], check=True, stderr=subprocess.DEVNULL)
        out = os.path.join(tmp, "pre.mha")
        cmd = [a.lungcad, "preprocess", a.ct, "--out", out, "--json"]
        best = {"resample": math.inf, "lung_mask": math.inf, "process": math.inf}
        summary = None
        img = sitk.ReadImage(src)
        sitk_best = math.inf
        for _ in range(a.runs):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
            best["process"] = min(best["process"], time.perf_counter() - t0)
            summary = json.loads(p.stdout)
            for k in ("resample", "lung_mask"):
                best[k] = min(best[k], summary["seconds"][k])
            sitk_best = min(sitk_best, sitk_resample_seconds(sitk, img))
        rss_kb = float("nan")
        if os.path.exists("/usr/bin/time"):
            p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            rss_kb = int(p.stderr.strip().splitlines()[-1])
    nz, ny, nx = summary["input_shape_zyx"]
    input_mib = nz * ny * nx * 2 / 2**20
    whole = best["resample"] + best["lung_mask"]
    print(f"input {nz}x{ny}x{nx} -> {summary['shape_zyx']} at 1 mm, lungs {summary['lung_volume_ml']:.0f} mL, {summary['tiles']} tiles")
    print(f"lungcad resample      {best['resample']:.3f} s")
    print(f"lungcad lung mask     {best['lung_mask']:.3f} s")
    print(f"lungcad preprocessing {whole:.3f} s (resample + mask + crop)")
    print(f"lungcad process       {best['process']:.3f} s (load DICOM, preprocess, write the 1 mm volume)")
    print(f"SimpleITK resample    {sitk_best:.3f} s (Execute only)")
    print(f"resample ratio        {sitk_best / best['resample']:.2f}x faster than SimpleITK")
    print(f"peak RSS              {rss_kb / 1024:.1f} MiB = {rss_kb / 1024 / input_mib:.2f}x the input volume ({input_mib:.1f} MiB)")


def sitk_resample_seconds(sitk, img):
    sys.path.insert(0, os.path.join(ROOT, "tests", "scripts"))
    from resample_sitk import lungcad_grid_filter

    f = lungcad_grid_filter(img, (1.0, 1.0, 1.0))
    t0 = time.perf_counter()
    f.Execute(img)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
