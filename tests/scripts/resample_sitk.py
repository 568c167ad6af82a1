#!/usr/bin/env python3
"""Resamples a volume with SimpleITK to the grid lungcad's `preprocess::resample` uses: same
origin and direction, the given spacing, size = round(size * spacing / new_spacing) per
axis, linear interpolation, -1024 outside; writes float32 so ITK does not truncate.

    python3 tests/scripts/resample_sitk.py IN.mha OUT.mha SPACING_Z SPACING_Y SPACING_X
"""
import math
import sys
import time

import SimpleITK as sitk


def lungcad_grid_filter(img, new_spacing):
    """A ResampleImageFilter onto lungcad's grid for `img` at `new_spacing` (x, y, z)."""
    # round half up, as lungcad documents (Python round() would round 332.5 to 332)
    size = [max(1, int(math.floor(n * s / t + 0.5))) for n, s, t in zip(img.GetSize(), img.GetSpacing(), new_spacing)]
    f = sitk.ResampleImageFilter()
    f.SetOutputSpacing(new_spacing)
    f.SetSize(size)
    f.SetOutputOrigin(img.GetOrigin())
    f.SetOutputDirection(img.GetDirection())
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(-1024)
    f.SetOutputPixelType(sitk.sitkFloat32)
    return f


def main(src, dst, sz, sy, sx):
    img = sitk.ReadImage(src)
    f = lungcad_grid_filter(img, (float(sx), float(sy), float(sz)))
    t0 = time.perf_counter()
    out = f.Execute(img)
    print(f"simpleitk_resample_s {time.perf_counter() - t0:.4f}")
    sitk.WriteImage(out, dst)


if __name__ == "__main__":
    main(*sys.argv[1:6])
