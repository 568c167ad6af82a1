#!/usr/bin/env python3
"""Checks a volume written by `lungcad convert` against the DICOM series it came from:
the file is read with SimpleITK, the series with pydicom (sorted by ImagePositionPatient
along the slice normal, RescaleSlope/Intercept applied). Prints a JSON report; exits 1
when geometry or voxels differ.

    python3 tests/scripts/check_convert_against_pydicom.py OUT.mha DICOM_DIR
"""
import glob
import json
import os
import sys

import numpy as np
import pydicom
import SimpleITK as sitk


def main(out_path, dicom_dir):
    files = [f for f in glob.glob(os.path.join(dicom_dir, "**", "*"), recursive=True) if f.endswith(".dcm")]
    dss = [pydicom.dcmread(f) for f in files]
    iop = np.array(dss[0].ImageOrientationPatient, float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dss.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, float))))
    ref = np.stack([np.round(d.pixel_array.astype(np.float64) * float(d.RescaleSlope) + float(d.RescaleIntercept)) for d in dss])
    pos = np.array([d.ImagePositionPatient for d in dss], float)
    dz = (np.dot(pos[-1] - pos[0], normal)) / (len(dss) - 1)
    ps = [float(v) for v in dss[0].PixelSpacing]

    img = sitk.ReadImage(out_path)
    arr = sitk.GetArrayFromImage(img).astype(np.float64)
    direction = np.array(img.GetDirection()).reshape(3, 3)
    expect_dir = np.stack([row, col, normal], axis=1)
    report = {
        "shape_zyx": list(arr.shape),
        "pydicom_shape_zyx": list(ref.shape),
        "spacing_xyz": list(img.GetSpacing()),
        "pydicom_spacing_xyz": [ps[1], ps[0], dz],
        "origin_xyz": list(img.GetOrigin()),
        "pydicom_origin_xyz": list(pos[0]),
        "direction_max_abs_diff": float(np.abs(direction - expect_dir).max()),
    }
    ok = arr.shape == ref.shape
    if ok:
        report["voxel_max_abs_diff"] = float(np.abs(arr - ref).max())
        ok = report["voxel_max_abs_diff"] == 0.0
    ok = ok and np.allclose(report["spacing_xyz"], report["pydicom_spacing_xyz"], atol=1e-4)
    ok = ok and np.allclose(report["origin_xyz"], report["pydicom_origin_xyz"], atol=1e-4)
    ok = ok and report["direction_max_abs_diff"] < 1e-6
    report["ok"] = bool(ok)
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
