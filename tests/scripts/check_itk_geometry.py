#!/usr/bin/env python3
"""Report images as SimpleITK (ITK) reads them, to check lungcad's MetaImage/NIfTI I/O.

Usage:
    check_itk_geometry.py [info] FILE [FILE ...]
        Print a JSON list with, per file: ITK size (x, y, z), array shape (z, y, x), spacing,
        origin, direction (row-major, as sitk.Image.GetDirection()), pixel type, and a
        checksum of the voxels. Spacing, origin and direction values are strings holding
        Python's repr() of each double, so that they parse back exactly.
    check_itk_geometry.py write-reference OUTDIR
        Write reference images with SimpleITK's own writers (oblique, left-handed, compressed,
        2-D...) into OUTDIR and print the same JSON for them.

The checksum is computed on voxels converted the way lungcad converts them to int16 HU
(round half away from zero, clamp to [-32768, 32767], NaN -> -1024), in the (z, y, x)
order of sitk.GetArrayFromImage, which is also lungcad's order:
    sum      = sum of v[i]
    weighted = sum of v[i] * ((i % 65521) + 1)    (i = flat C-order index)
    min, max
"""

import json
import math
import os
import sys

import numpy as np
import SimpleITK as sitk

WEIGHT_MODULUS = 65521


def to_hu(array):
    """lungcad's conversion of any voxel type to int16 HU."""
    if np.issubdtype(array.dtype, np.floating):
        a = array.astype(np.float64)
        nan = np.isnan(a)
        a = np.where(a >= 0, np.floor(a + 0.5), np.ceil(a - 0.5))
        a = np.where(nan, -1024, a)
        return np.clip(a, -32768, 32767).astype(np.int64)
    return np.clip(array.astype(np.int64), -32768, 32767)


def checksum(array):
    flat = to_hu(array).ravel()
    weights = (np.arange(flat.size, dtype=np.int64) % WEIGHT_MODULUS) + 1
    return {
        "sum": int(flat.sum(dtype=np.int64)),
        "weighted": int(np.dot(flat, weights)),
        "min": int(flat.min()) if flat.size else 0,
        "max": int(flat.max()) if flat.size else 0,
    }


def exact(values):
    """Floats as their shortest round-trip decimal strings, so that any JSON reader gets the
    exact double (some JSON number parsers are off by an ulp)."""
    return [repr(float(v)) for v in values]


def info(path):
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    return {
        "path": str(path),
        "size": list(image.GetSize()),
        "shape": list(array.shape),
        "spacing": exact(image.GetSpacing()),
        "origin": exact(image.GetOrigin()),
        "direction": exact(image.GetDirection()),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "checksum": checksum(array),
    }


def rotation(ax, ay, az):
    """A rotation matrix (columns = directions of index axes x, y, z)."""
    cx, sx, cy, sy, cz, sz = (math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay),
                              math.cos(az), math.sin(az))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def write_reference(outdir):
    os.makedirs(outdir, exist_ok=True)
    rng = np.random.default_rng(1234)
    shape = (5, 7, 9)  # z, y, x
    values = rng.integers(-1024, 3072, size=shape, dtype=np.int16)
    values[0, 0, 0] = -32768
    values[-1, -1, -1] = 32767

    oblique = rotation(0.3, -0.2, 0.7)
    left_handed = oblique @ np.diag([1.0, 1.0, -1.0])
    cases = [
        # name, array, direction, spacing, origin, write kwargs
        ("oblique.mha", values, oblique, (0.7, 0.8, 2.5), (-195.3, 12.25, -378.125), {}),
        ("oblique_z.mha", values, oblique, (0.7, 0.8, 2.5), (-195.3, 12.25, -378.125),
         {"useCompression": True}),
        ("left.mhd", values, left_handed, (0.65, 0.703125, 1.25), (10.0, -20.5, 30.75), {}),
        ("left_z.mhd", values, left_handed, (0.65, 0.703125, 1.25), (10.0, -20.5, 30.75),
         {"useCompression": True}),
        ("oblique.nii.gz", values, oblique, (0.7, 0.8, 2.5), (-195.3, 12.25, -378.125), {}),
        ("left.nii", values, left_handed, (0.65, 0.703125, 1.25), (10.0, -20.5, 30.75), {}),
        ("float.nii.gz", values.astype(np.float32) + 0.25, np.eye(3), (1.0, 1.0, 1.0),
         (0.0, 0.0, 0.0), {}),
        ("uchar.mha", (values & 0xFF).astype(np.uint8), np.diag([1.0, -1.0, 1.0]),
         (1.5, 1.5, 3.0), (1.0, 2.0, 3.0), {}),
        ("double.mhd", values.astype(np.float64) * 1.5, np.eye(3), (1.0, 2.0, 3.0),
         (4.0, 5.0, 6.0), {}),
    ]
    paths = []
    for name, array, direction, spacing, origin, kwargs in cases:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection([float(v) for v in np.asarray(direction).flatten()])
        path = os.path.join(outdir, name)
        sitk.WriteImage(image, path, **kwargs)
        paths.append(path)
    return [info(p) for p in paths]


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "write-reference":
        if len(argv) != 2:
            print("usage: check_itk_geometry.py write-reference OUTDIR", file=sys.stderr)
            return 2
        print(json.dumps(write_reference(argv[1]), indent=1))
        return 0
    files = argv[1:] if argv[0] == "info" else argv
    print(json.dumps([info(f) for f in files], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
