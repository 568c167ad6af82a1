#!/usr/bin/env python3
"""Writes the JPEG fixtures of lungcad's sequential DCT decoder (src/io/dicom/jpeg.rs):
small grey images encoded and decoded by libjpeg-turbo, the reference the decoder must
match sample for sample (it ports libjpeg's integer inverse DCT). Run by developers, not
by CI; the outputs are committed in tests/fixtures/jpeg/:

    NAME.jpg   the JPEG stream
    NAME.u16   libjpeg-turbo's decoded samples, little-endian uint16, row order

Usage:  pip install imagecodecs pillow numpy && python3 tests/scripts/make_jpeg_fixtures.py
"""
import io
import os

import imagecodecs
import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "jpeg"))


def ct_like(rows, cols, bits, seed):
    """A body-like ellipse of soft tissue with lungs, a bright rim and noise, as stored
    values of `bits` bits (for 12 bits: HU + 1024)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    r = ((y - cy) / (0.45 * rows)) ** 2 + ((x - cx) / (0.45 * cols)) ** 2
    hu = np.full((rows, cols), -1000.0)
    hu[r < 1.0] = 40.0
    hu[(r > 0.85) & (r < 1.0)] = 900.0
    for sx in (-1, 1):
        lr = ((y - cy) / (0.3 * rows)) ** 2 + ((x - cx - sx * 0.2 * cols) / (0.15 * cols)) ** 2
        hu[lr < 1.0] = -850.0
    hu += rng.normal(0, 25, hu.shape)
    stored = hu + 1024 if bits == 12 else (hu + 1024) / 16
    return np.clip(np.round(stored), 0, (1 << bits) - 1).astype(np.uint16 if bits == 12 else np.uint8)


def write(name, stream):
    with open(os.path.join(OUT, name + ".jpg"), "wb") as fh:
        fh.write(stream)
    decoded = imagecodecs.jpeg8_decode(stream)
    with open(os.path.join(OUT, name + ".u16"), "wb") as fh:
        fh.write(decoded.astype("<u2").tobytes())
    print(f"{name}: {len(stream)} bytes, {decoded.shape}, {decoded.dtype}")


def main():
    os.makedirs(OUT, exist_ok=True)
    # 12-bit extended sequential (SOF1), sizes not multiples of 8.
    write("ct12_q90", imagecodecs.jpeg8_encode(ct_like(37, 53, 12, 1), level=90, bitspersample=12))
    # 12-bit with optimised (custom) Huffman tables, coarse quantisation, larger.
    write(
        "ct12_q40_optimized",
        imagecodecs.jpeg8_encode(ct_like(96, 120, 12, 2), level=40, bitspersample=12, optimize=True),
    )
    # 8-bit baseline with a restart interval of 3 blocks (Pillow's encoder, libjpeg-turbo).
    buf = io.BytesIO()
    Image.fromarray(ct_like(40, 44, 8, 3)).save(buf, "JPEG", quality=85, restart_marker_blocks=3)
    write("grey8_restart3", buf.getvalue())
    # 8-bit progressive: refused by lungcad's decoder (not a sequential process).
    buf = io.BytesIO()
    Image.fromarray(ct_like(16, 16, 8, 4)).save(buf, "JPEG", quality=85, progressive=True)
    with open(os.path.join(OUT, "grey8_progressive.jpg"), "wb") as fh:
        fh.write(buf.getvalue())
    print(f"libjpeg-turbo {imagecodecs.jpeg8_version()}")


if __name__ == "__main__":
    main()
