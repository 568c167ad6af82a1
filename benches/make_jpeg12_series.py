#!/usr/bin/env python3
"""Re-encodes a DICOM CT series as 12-bit JPEG Extended (1.2.840.10008.1.2.4.51) with
libjpeg-turbo (imagecodecs), for the loading benchmark and a real-data check of lungcad's
12-bit JPEG decoder (src/io/dicom/jpeg.rs):

    python3 benches/make_jpeg12_series.py OUT_DIR [SERIES_DIR] [--quality 95] [--check BINARY]

Stored values are HU + 1024 clipped to [0, 4095] (RescaleIntercept -1024), as 12-bit CT
is stored. The default series is LIDC-IDRI-0001 under $LUNGCAD_DATA. With --check, BINARY
(`lungcad`) converts the new series to NIfTI and every voxel is compared with
libjpeg-turbo's own decoding of the same streams; the script exits 1 if any differs.
Needs pydicom, imagecodecs, numpy and, for --check, SimpleITK.
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile

import imagecodecs
import numpy as np
import pydicom
from pydicom.encaps import encapsulate

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    data = os.environ.get("LUNGCAD_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
    lidc = glob.glob(os.path.join(data, "lidc", "LIDC-IDRI-0001", "*", "*", ""))
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("series", nargs="?", default=lidc[0] if lidc else None)
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--check", metavar="BINARY")
    a = ap.parse_args()
    if not a.series:
        sys.exit("no series given and LIDC-IDRI-0001 not found")
    os.makedirs(a.out, exist_ok=True)
    planes = []
    for f in sorted(glob.glob(os.path.join(a.series, "*.dcm"))):
        d = pydicom.dcmread(f)
        hu = d.pixel_array * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))
        stored = np.clip(np.round(hu) + 1024, 0, 4095).astype(np.uint16)
        stream = imagecodecs.jpeg8_encode(stored, level=a.quality, bitspersample=12)
        normal = np.cross(np.array(d.ImageOrientationPatient[:3], float), np.array(d.ImageOrientationPatient[3:], float))
        planes.append((float(np.dot(normal, np.array(d.ImagePositionPatient, float))), imagecodecs.jpeg8_decode(stream)))
        d.PixelData = encapsulate([stream])
        d["PixelData"].VR = "OB"
        d["PixelData"].is_undefined_length = True
        d.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.51"
        d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation = 16, 12, 11, 0
        d.RescaleIntercept, d.RescaleSlope = -1024, 1
        d.LossyImageCompression = "01"
        d.save_as(os.path.join(a.out, os.path.basename(f)), enforce_file_format=True)
    planes.sort(key=lambda p: p[0])
    print(f"{len(planes)} slices written to {a.out} (libjpeg-turbo {imagecodecs.jpeg8_version()}, quality {a.quality})")
    if a.check:
        import SimpleITK as sitk

        ref = np.stack([p[1] for p in planes]).astype(np.int32) - 1024
        with tempfile.TemporaryDirectory() as tmp:
            nii = os.path.join(tmp, "v.nii.gz")
            p = subprocess.run([a.check, "convert", a.out, nii], capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"lungcad convert failed: {p.stderr}")
            got = sitk.GetArrayFromImage(sitk.ReadImage(nii)).astype(np.int32)
        differ = int((got != ref).sum()) if got.shape == ref.shape else -1
        print(f"lungcad {got.shape} against libjpeg-turbo {ref.shape}: {differ} voxels differ")
        sys.exit(0 if differ == 0 else 1)


if __name__ == "__main__":
    main()
