#!/usr/bin/env python3
"""Decode every file of the shared DICOM corpus with pydicom and record what lungcad must
reproduce: for each image file, its frame count, size and order-independent statistics of
the HU values (sum, sum of squares, min, max), computed with the rule lungcad documents:

    stored value == PixelPaddingValue (.. PixelPaddingRangeLimit)  ->  -1024 HU
    otherwise  round(stored * RescaleSlope + RescaleIntercept), clamped to int16

Rescale attributes are taken per frame from the functional groups for enhanced
multi-frame files. A file holding a data set without the Part 10 header (ACR-NEMA) is
read with force=True in the transfer syntax lungcad infers for it. 12-bit JPEG Extended
pixel data (1.2.840.10008.1.2.4.51) is decoded by libjpeg-turbo (imagecodecs), whose
integer inverse DCT lungcad's decoder ports: pydicom's pylibjpeg plugin rounds differently
(by one, in about 1% of the samples) and refuses a stream that libjpeg reads with a
warning. Usage (writes tests/fixtures/dicom_corpus.json):

    pip install pydicom numpy pillow pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg imagecodecs
    python3 tests/scripts/make_dicom_corpus_fixture.py [$LUNGCAD_DATA/dicom-corpus]
"""
import json
import os
import sys
import warnings

import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import VR

warnings.filterwarnings("ignore")
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))


def fg_value(ds, frame, seq_name, attr):
    """Value of attr from the per-frame functional group, the shared one, or the top level."""
    for fg_name, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        fgs = ds.get(fg_name)
        if fgs is not None and len(fgs) > idx:
            item = fgs[idx].get(seq_name)
            if item is not None and len(item) > 0 and attr in item[0]:
                return item[0][attr].value
    return ds.get(attr)


def as_stored(ds, v):
    v = int(v)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        bits = int(ds.BitsAllocated)
        if bits == 16 and v > 32767:
            v -= 65536
        elif bits == 8 and v > 127:
            v -= 256
    return v


def read_headless(path):
    """A data set stored without the Part 10 header, read as lungcad reads it: only when its
    first two elements are of group 0008 in ascending order, the first at most 1024 bytes
    long; little endian, explicit VR when the first element carries a VR, else implicit VR
    (pydicom's force=True guesses the same way)."""
    with open(path, "rb") as fh:
        head = fh.read(2048)
    if len(head) < 12 or head[:2] != b"\x08\x00":
        return None
    vr = head[4:6]
    explicit = vr in {v.value.encode() for v in VR}
    if not explicit:
        value_at, length = 8, int.from_bytes(head[4:8], "little")
    elif vr in (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"):
        value_at, length = 12, int.from_bytes(head[8:12], "little")
    else:
        value_at, length = 8, int.from_bytes(head[6:8], "little")
    nxt = value_at + length
    if length > 1024 or len(head) < nxt + 4:
        return None
    first, (group, element) = int.from_bytes(head[2:4], "little"), (
        int.from_bytes(head[nxt : nxt + 2], "little"),
        int.from_bytes(head[nxt + 2 : nxt + 4], "little"),
    )
    if group != 0x0008 or element <= first:
        return None
    ds = pydicom.dcmread(path, force=True)
    explicit = head[4:6] in {vr.value.encode() for vr in VR}
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
    # ACR-NEMA images may lack attributes DICOM requires: lungcad (like GDCM) reads them as
    # grayscale, one sample per pixel
    if "Rows" in ds:
        ds.setdefault("PhotometricInterpretation", "MONOCHROME2")
        ds.setdefault("SamplesPerPixel", 1)
    return ds


def describe(path):
    headless = False
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as e:
        try:
            ds = read_headless(path)
        except Exception as e2:  # noqa: BLE001
            return {"pydicom": "unreadable", "reason": f"{type(e2).__name__}: {e2}"[:200]}
        if ds is None:
            return {"pydicom": "unreadable", "reason": f"{type(e).__name__}: {e}"[:200]}
        headless = True
    except Exception as e:  # noqa: BLE001 - we record any failure
        return {"pydicom": "unreadable", "reason": f"{type(e).__name__}: {e}"[:200]}
    described = describe_dataset(ds)
    if headless:
        described["headless"] = True
    return described


def describe_dataset(ds):
    if "PixelData" not in ds or "Rows" not in ds:
        return {"pydicom": "no-image"}
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return {"pydicom": "colour", "samples_per_pixel": int(ds.SamplesPerPixel)}
    decoder = "pydicom"
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if ds.file_meta.get("TransferSyntaxUID") == JPEG_EXTENDED and int(ds.BitsStored) > 8:
            decoder = f"{imagecodecs.jpeg8_version()} (imagecodecs)"
            arr = np.stack(
                [imagecodecs.jpeg8_decode(f) for f in generate_frames(ds.PixelData, number_of_frames=frames)]
            )
        else:
            arr = ds.pixel_array
            if frames == 1:
                arr = arr[np.newaxis]
    except Exception as e:  # noqa: BLE001
        return {"pydicom": "undecodable", "reason": f"{type(e).__name__}: {e}"[:200]}
    pad = ds.get("PixelPaddingValue")
    pad_hi = ds.get("PixelPaddingRangeLimit", pad)
    hu_frames = []
    for f in range(arr.shape[0]):
        slope = fg_value(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
        icpt = fg_value(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
        slope = float(slope.value if hasattr(slope, "value") else (slope if slope is not None else 1.0))
        icpt = float(icpt.value if hasattr(icpt, "value") else (icpt if icpt is not None else 0.0))
        stored = arr[f].astype(np.int64)
        hu = np.clip(np.round(stored * slope + icpt), -32768, 32767)
        if pad is not None:
            lo, hi = sorted((as_stored(ds, pad), as_stored(ds, pad_hi)))
            hu[(stored >= lo) & (stored <= hi)] = -1024
        hu_frames.append(hu.astype(np.int64))
    hu = np.stack(hu_frames)
    return {
        "pydicom": "image",
        "decoder": decoder,
        "modality": str(ds.get("Modality", "")),
        "frames": int(hu.shape[0]),
        "rows": int(hu.shape[1]),
        "columns": int(hu.shape[2]),
        "sum": int(hu.sum()),
        "sum_sq": int((hu * hu).sum()),
        "min": int(hu.min()),
        "max": int(hu.max()),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
    }


def main():
    data = os.environ.get("LUNGCAD_DATA", os.path.join(ROOT, "..", "shared", "data"))
    corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(data, "dicom-corpus")
    out = {}
    for dirpath, _, names in os.walk(corpus):
        for n in sorted(names):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, corpus).replace(os.sep, "/")
            out[rel] = describe(p)
    out = dict(sorted(out.items()))
    dst = os.path.join(ROOT, "tests", "fixtures", "dicom_corpus.json")
    with open(dst, "w") as fh:
        json.dump({"pydicom_version": pydicom.__version__, "files": out}, fh, indent=1, sort_keys=True)
        fh.write("\n")
    counts = {}
    for v in out.values():
        counts[v["pydicom"]] = counts.get(v["pydicom"], 0) + 1
    print(f"wrote {dst}: {counts}")


if __name__ == "__main__":
    main()
