#!/usr/bin/env python3
"""The training data pipeline against MONAI's detection pipeline, in the same run: augmented
128³ patches per second from LIDC-IDRI-0001 preprocessed at 1 mm.

    cargo build --release
    LUNGCAD_DATA=../shared/data python3 benches/compare_sampler.py [--patches 64] \
        [--lungcad target/release/lungcad] [--cargo-profile bench]

`--cargo-profile dev` runs the bench in the tests' profile (with
`CARGO_PROFILE_DEV_OPT_LEVEL=3` in the environment, lungcad's own code is optimised as
its dependencies are), which reuses the tests' build instead of a release one; `--lungcad`
may then be that build's binary (it only preprocesses the scan).

Both start from the scan already preprocessed (as both train: lungcad from its cache,
MONAI's LUNA16 tutorial from resampled files held by a CacheDataset) and time only the
per-patch, random part:

- lungcad: `cargo bench --profile <--cargo-profile> --bench sampler` (criterion; patches
  from the on-disk cache,
  batches of 32 through the prefetching pipeline on all cores), read from its JSON
  estimates after running it.
- MONAI (the transforms of its LUNA16 detection tutorial, `monai.apps.detection`):
  RandCropBoxByPosNegLabeld (128³, one positive to one negative), RandZoomBoxd (0.8 to
  1.15, always), RandFlipBoxd on each axis, RandRotateBox90d in the axial plane, on the
  windowed float volume (ScaleIntensityRanged done once, as the CacheDataset would), in a
  torch DataLoader with one worker per core (2 here) and batches of 32 made of single
  patches. MONAI's boxes are cheap; lungcad also makes the dense target map of each patch,
  which MONAI's RetinaNet does later, on the GPU.

Ratio = lungcad's patches/s / MONAI's (above 1: lungcad is faster).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NODULE_WORLD = (56.208, 86.343, -115.868)
NODULE_DIAMETER_MM = 23.35


def lidc_folder():
    data = os.environ.get("LUNGCAD_DATA", os.path.join(ROOT, "..", "shared", "data"))
    for d, _, files in os.walk(os.path.join(data, "lidc", "LIDC-IDRI-0001")):
        if any(f.endswith(".dcm") for f in files):
            return d
    sys.exit(f"LIDC-IDRI-0001 not found under {data} (set LUNGCAD_DATA)")


class Patches:
    """A dataset of `n` augmented patches from one preprocessed scan (MONAI transforms)."""

    def __init__(self, image, box, n, seed):
        from monai.apps.detection.transforms.dictionary import (
            RandCropBoxByPosNegLabeld, RandFlipBoxd, RandRotateBox90d, RandZoomBoxd)
        from monai.transforms import Compose

        self.image, self.box, self.n = image, box, n
        keys = dict(image_keys=["image"], box_keys=["box"], box_ref_image_keys=["image"])
        self.t = Compose([
            RandCropBoxByPosNegLabeld(image_keys=["image"], box_keys="box", label_keys="label",
                                      spatial_size=(128, 128, 128), whole_box=True, num_samples=1,
                                      pos=1, neg=1),
            RandZoomBoxd(prob=1.0, min_zoom=0.8, max_zoom=1.15, padding_mode="constant",
                         keep_size=True, **keys),
            RandFlipBoxd(prob=0.5, spatial_axis=0, **keys),
            RandFlipBoxd(prob=0.5, spatial_axis=1, **keys),
            RandFlipBoxd(prob=0.5, spatial_axis=2, **keys),
            RandRotateBox90d(prob=0.75, max_k=3, spatial_axes=(1, 2), **keys),
        ])
        self.t.set_random_state(seed)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch
        out = self.t({"image": self.image, "box": self.box.clone(), "label": torch.tensor([1])})
        out = out[0] if isinstance(out, list) else out
        return out["image"]


def monai_rate(mha, patches, workers):
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.data import MetaTensor

    img = sitk.ReadImage(mha)
    hu = sitk.GetArrayFromImage(img).astype(np.float32)  # (z, y, x)
    window = np.clip((hu + 1200.0) / 1800.0, 0.0, 1.0)  # ScaleIntensityRanged, done once
    image = MetaTensor(torch.from_numpy(window)[None])
    c = img.TransformPhysicalPointToContinuousIndex(NODULE_WORLD)[::-1]  # (z, y, x)
    r = [NODULE_DIAMETER_MM / 2 / s for s in img.GetSpacing()[::-1]]
    box = torch.tensor([[c[0] - r[0], c[1] - r[1], c[2] - r[2], c[0] + r[0], c[1] + r[1], c[2] + r[2]]])
    ds = Patches(image, box, patches, seed=0)
    one = time.perf_counter()
    for i in range(8):
        ds[i]
    one = (time.perf_counter() - one) / 8
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers,
                                         persistent_workers=False)
    t = time.perf_counter()
    n = sum(b.shape[0] for b in loader)
    batched = n / (time.perf_counter() - t)
    return one, batched


def lungcad_rates(profile):
    env = dict(os.environ)
    subprocess.run(["cargo", "bench", "--profile", profile, "--bench", "sampler"], cwd=ROOT,
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    rates = {}
    for name in ["one_augmented_patch_from_cache", "batch_of_32_prefetched_from_cache"]:
        path = os.path.join(target, "criterion", "training_patches_128cubed", name, "new", "estimates.json")
        est = json.load(open(path))["median"]["point_estimate"] * 1e-9  # seconds per iteration
        rates[name] = est
    return rates["one_augmented_patch_from_cache"], 32 / rates["batch_of_32_prefetched_from_cache"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=64, help="patches MONAI makes in the batched timing")
    ap.add_argument("--lungcad", default=os.path.join(ROOT, "target", "release", "lungcad"))
    ap.add_argument("--cargo-profile", default="bench", help="cargo profile of the bench run")
    a = ap.parse_args()
    workers = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        mha = os.path.join(tmp, "lidc_1mm.mha")
        subprocess.run([a.lungcad, "preprocess", lidc_folder(), "--out", mha], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        m_one, m_rate = monai_rate(mha, a.patches, workers)
    l_one, l_rate = lungcad_rates(a.cargo_profile)
    import monai
    print(f"LIDC-IDRI-0001 at 1 mm, augmented 128³ patches; {workers} CPU cores; MONAI {monai.__version__}; "
          f"cargo profile {a.cargo_profile}")
    print("pipeline | one patch (s) | batches of 32 (patches/s)")
    print("---|---|---")
    print(f"lungcad (from its cache) | {l_one:.4f} | {l_rate:.1f}")
    print(f"MONAI detection transforms ({workers} DataLoader workers) | {m_one:.4f} | {m_rate:.1f}")
    print(f"ratio lungcad / MONAI: one patch {m_one / l_one:.1f}x, batches {l_rate / m_rate:.1f}x")


if __name__ == "__main__":
    main()
