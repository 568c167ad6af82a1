#!/usr/bin/env python3
"""Times loading one DICOM series with lungcad, SimpleITK's ImageSeriesReader and
pydicom+numpy, in the same run, on page-cached files; prints seconds, ratios and peak RSS.

    cargo build --release
    python3 benches/compare_load.py [SERIES_DIR] [--runs 7] [--lungcad target/release/lungcad]

The default series is LIDC-IDRI-0001 under $LUNGCAD_DATA (default ../shared/data).
lungcad is timed as the whole `lungcad info --json` process (start-up included), so its
figure is conservative. When the Python package is installed (`pip install ./python`), its
`lungcad.load` is timed too, in this process and as a whole `python -c` process, against
the CLI: the cost of the Python binding. Build the CLI and the package with the same
profile (both release, or both `--profile dev`) for a like-for-like figure. Peak memory is the maximum resident set size of one
`lungcad info` run, measured with GNU time (apt-get install time).
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def lungcad_run(binary, series):
    t0 = time.perf_counter()
    p = subprocess.run([binary, "info", "--json", series], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"lungcad failed on {series}")
    return dt, json.loads(p.stdout)


def peak_rss_mb(cmd):
    """Peak RSS of one run of cmd, measured by GNU time (a forked Python child would
    report the parent's memory as its own)."""
    if not os.path.exists("/usr/bin/time"):
        return float("nan")
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return int(p.stderr.strip().splitlines()[-1]) / 1024.0


def sitk_load(series):
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(series))
    img = r.Execute()
    return sitk.GetArrayViewFromImage(img).shape


def pydicom_load(series):
    import numpy as np
    import pydicom

    files = glob.glob(os.path.join(series, "**", "*"), recursive=True)
    dss = [pydicom.dcmread(f) for f in files if f.endswith(".dcm")]
    normal = np.cross(np.array(dss[0].ImageOrientationPatient[:3], float), np.array(dss[0].ImageOrientationPatient[3:], float))
    dss.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    vol = np.stack([d.pixel_array.astype(np.int16) * np.int16(d.RescaleSlope) + np.int16(d.RescaleIntercept) for d in dss])
    return vol.shape


def python_load(series):
    import lungcad

    return lungcad.load(series).shape


def python_process(series):
    code = "import sys, lungcad; lungcad.load(sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, series], check=True)


def best(fn, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main():
    data = os.environ.get("LUNGCAD_DATA", os.path.join(ROOT, "..", "shared", "data"))
    default = glob.glob(os.path.join(data, "lidc", "LIDC-IDRI-0001", "*", "*"))
    ap = argparse.ArgumentParser()
    ap.add_argument("series", nargs="?", default=default[0] if default else None)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--lungcad", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "lungcad"))
    a = ap.parse_args()
    if not a.series:
        sys.exit("no series given and LIDC-IDRI-0001 not found")
    # warm the page cache
    for f in glob.glob(os.path.join(a.series, "**", "*"), recursive=True):
        if os.path.isfile(f):
            with open(f, "rb") as fh:
                fh.read()
    lc = best(lambda: lungcad_run(a.lungcad, a.series), a.runs)
    st = best(lambda: sitk_load(a.series), a.runs)
    pd = best(lambda: pydicom_load(a.series), a.runs)
    info = lungcad_run(a.lungcad, a.series)[1]
    vol_mb = 2 * info["shape_zyx"][0] * info["shape_zyx"][1] * info["shape_zyx"][2] / 2**20
    rss = peak_rss_mb([a.lungcad, "info", "--json", a.series])
    print(f"series: {a.series}\nshape (z, y, x): {info['shape_zyx']}, int16 volume {vol_mb:.1f} MiB, cores: {os.cpu_count()}")
    print(f"{'reader':<22}{'best s':>9}{'median s':>10}{'lungcad faster by':>19}")
    for name, (b, m) in [("lungcad (process)", lc), ("SimpleITK", st), ("pydicom+numpy", pd)]:
        ratio = "" if name.startswith("lungcad") else f"{b / lc[0]:.1f}x"
        print(f"{name:<22}{b:>9.3f}{m:>10.3f}{ratio:>19}")
    print(f"lungcad peak RSS: {rss:.1f} MiB = {rss / vol_mb:.2f}x the volume's bytes")
    try:
        import lungcad
    except ImportError:
        print("the Python package is not installed (pip install ./python): not timed")
        return
    python_load(a.series)  # import and first-call costs out of the timing
    pi = best(lambda: python_load(a.series), a.runs)
    pp = best(lambda: python_process(a.series), a.runs)
    print(f"{'lungcad.load (Python)':<22}{pi[0]:>9.3f}{pi[1]:>10.3f}  {pi[0] / lc[0]:.2f}x the CLI's time")
    print(f"{'python -c load':<22}{pp[0]:>9.3f}{pp[1]:>10.3f}  {pp[0] / lc[0]:.2f}x the CLI's time (interpreter, numpy and lungcad imports included)")


if __name__ == "__main__":
    main()
