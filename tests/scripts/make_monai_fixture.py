#!/usr/bin/env python3
"""Makes the MONAI RetinaNet parity fixture (tests/fixtures/monai/): MONAI's own 3-D
RetinaNet (ResNet + FPN + heads, as its lung_nodule_ct_detection bundle builds it, at a small
size) with random weights, its state_dict, an input volume and MONAI's head outputs.

Run by developers, not by CI (it needs `pip install monai torch safetensors nibabel` and
lungcad's Python package, `pip install ./python`, for the phantom):

    python3 tests/scripts/make_monai_fixture.py [--out tests/fixtures/monai]

With `--full`, the bundle's full-size network (ResNet-50, FPN 256; 20.9 M parameters,
84 MB: not committed) on a 64 x 64 x 32 input, as `retinanet_full*.safetensors`, for
`LUNGCAD_MONAI_FULL=<dir> cargo test --test monai`.

The scan: a small phantom, an 80 x 64 x 18 voxel (64 x 51 x 45 mm) piece of a lungcad
phantom (seed 9003, 0.8 mm pixels, 2.5 mm slices) around its 13.4 mm solid nodule, lung,
vessels and chest wall in it, stored as an LPS-identity scanner would (x and y reversed in
NIfTI's RAS), so MONAI's orientation flips two axes and its spacing resamples all three.

Writes `preprocess_input.nii.gz` (that scan) and `preprocess_output.safetensors`: the
bundle's preprocessing of it (`image` (1, X, Y, Z), `affine` 4 x 4 RAS);
`retinanet_small.safetensors` (the state_dict, PyTorch names; metadata: the MONAI and torch
versions and the network's settings as JSON), the same state_dict as PyTorch saves it,
`retinanet_small.pt` (`torch.save(net.state_dict())`, as the bundle ships `model.pt`) and
`retinanet_small_checkpoint.pt` (nested: `{"epoch": 7, "model": <the state_dict under
DataParallel's "module." prefix>}`); `retinanet_small_io.safetensors` (`input`
(1, 1, X, Y, Z), a piece of the preprocessed scan, and MONAI's outputs
`classification.{0,1,2}`, `box_regression.{0,1,2}`, one per FPN level, in eval mode);
`retinanet_small_detections.safetensors`: MONAI's `RetinaNetDetector` with the bundle's
anchors and box selection (no sliding window) on `input` (another piece, whose size is not
a multiple of the bundle's (16, 16, 8), so padding and clipping matter): `boxes` (N, 6)
`xyzxyz` voxel coordinates and `scores` (N), and `boxes_sliding_window`,
`scores_sliding_window` with the sliding window (roi 32 x 32 x 16, overlap 0.25) over the
head maps; and `end_to_end.safetensors`: the bundle's whole pipeline on the scan with the
small network (`boxes_world` (N, 6) `cccwhd` LPS mm, `scores`). Deterministic by seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

import monai
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.blocks.feature_pyramid_network import LastLevelMaxPool
from monai.networks.nets.resnet import ResNet

# The bundle's network at a small size: the same block type, stem and returned layers,
# fewer blocks and channels (the bundle: layers [3, 4, 6, 3], block_inplanes
# [64, 128, 256, 512], FPN 256 channels).
SETTINGS = {
    "block": "bottleneck",
    "layers": [2, 2, 1, 1],
    "block_inplanes": [8, 16, 32, 64],
    "conv1_size": [7, 7, 7],
    "conv1_stride": [2, 2, 1],
    "returned_layers": [1, 2],
    "fpn_channels": 16,
    "num_anchors": 3,
    "num_classes": 1,
}
INPUT_SHAPE = (1, 1, 48, 40, 24)  # (B, C, X, Y, Z), divisible by the bundle's (16, 16, 8)
# The scan: a piece of a lungcad phantom around a nodule.
PHANTOM_SEED = 9003
PHANTOM_SPACING = {"in_plane_spacing_mm": [0.8, 0.8], "slice_spacing_mm": [2.5]}
SCAN_SIZE = (80, 64, 18)  # (x, y, z) voxels
SLIDING_WINDOW_ROI = [32, 32, 16]
DETECT_INPUT_SHAPE = (1, 45, 37, 21)  # (C, X, Y, Z): padded to 48 x 48 x 24 by the detector
FULL = {
    "block": "bottleneck",
    "layers": [3, 4, 6, 3],
    "block_inplanes": [64, 128, 256, 512],
    "conv1_size": [7, 7, 7],
    "conv1_stride": [2, 2, 1],
    "returned_layers": [1, 2],
    "fpn_channels": 256,
    "num_anchors": 3,
    "num_classes": 1,
}
FULL_INPUT_SHAPE = (1, 1, 64, 64, 32)


def build(s: dict) -> RetinaNet:
    backbone = ResNet(
        block=s["block"],
        layers=s["layers"],
        block_inplanes=s["block_inplanes"],
        spatial_dims=3,
        n_input_channels=1,
        conv1_t_size=s["conv1_size"],
        conv1_t_stride=s["conv1_stride"],
    )
    # As resnet_fpn_feature_extractor does, with fpn_channels instead of its fixed 256.
    expansion = 4 if s["block"] == "bottleneck" else 1
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(s["returned_layers"])}
    in_channels_list = [s["block_inplanes"][k - 1] * expansion for k in s["returned_layers"]]
    fe = BackboneWithFPN(
        backbone, return_layers, in_channels_list, s["fpn_channels"], spatial_dims=3, extra_blocks=LastLevelMaxPool(3)
    )
    return RetinaNet(
        spatial_dims=3,
        num_classes=s["num_classes"],
        num_anchors=s["num_anchors"],
        feature_extractor=fe,
        size_divisible=[16, 16, 8],
    )


def randomize(net: RetinaNet) -> RetinaNet:
    """Random weights everywhere, batch-norm statistics and affine terms included, so that
    every tensor of the state_dict matters to the outputs; the network in eval mode."""
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype != torch.float32:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) * 1.5 + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn_like(t) * 0.1)
            elif t.dim() == 1:  # norm scales
                t.copy_(torch.rand_like(t) + 0.5)
            else:  # conv weights: He normal
                fan_in = t[0].numel()
                t.copy_(torch.randn_like(t) * (2.0 / fan_in) ** 0.5)
    return net.eval()


def centre_crop(image: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The middle `size` (X, Y, Z) of a (C, X, Y, Z) image."""
    starts = [(n - s) // 2 for n, s in zip(image.shape[1:], size)]
    assert all(s >= 0 for s in starts), (image.shape, size)
    return image[:, starts[0] : starts[0] + size[0], starts[1] : starts[1] + size[1], starts[2] : starts[2] + size[2]]


def detections(net: RetinaNet, scan: torch.Tensor, path: Path, meta: dict) -> None:
    """MONAI's whole detector, as the bundle configures it, without the sliding window."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[1, 2, 4], base_anchor_shapes=[[6, 8, 4], [8, 6, 5], [10, 10, 6]]
    )
    detector = RetinaNetDetector(network=net, anchor_generator=anchors, debug=False)
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(
        score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22, detections_per_img=300
    )
    detector.eval()
    image = centre_crop(scan, DETECT_INPUT_SHAPE[1:]).contiguous()
    with torch.no_grad():
        out = detector([image], use_inferer=False)[0]
    # The same with the sliding window over the head maps (the bundle's settings but a
    # window smaller than this image: 8 windows over the padded 48 x 48 x 24).
    detector.set_sliding_window_inferer(
        roi_size=SLIDING_WINDOW_ROI, overlap=0.25, sw_batch_size=1, mode="constant", device="cpu"
    )
    with torch.no_grad():
        out_sw = detector([image], use_inferer=True)[0]
    save_file(
        {
            "input": image[None].contiguous(),
            "boxes": out["box"].float().contiguous(),
            "scores": out["label_scores"].float().contiguous(),
            "boxes_sliding_window": out_sw["box"].float().contiguous(),
            "scores_sliding_window": out_sw["label_scores"].float().contiguous(),
        },
        str(path),
        metadata=meta,
    )
    print(f"sliding window: {len(out_sw['box'])} boxes")
    print(f"detector: {len(out['box'])} boxes, scores {float(out['label_scores'].min()):.3f} to {float(out['label_scores'].max()):.3f}")


def end_to_end(net: RetinaNet, image: torch.Tensor, out_dir: Path) -> None:
    """The bundle's detector and post-processing transforms on the preprocessed image: boxes
    in LPS world millimetres, `cccwhd`, as the bundle writes them."""
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.transforms.dictionary import AffineBoxToWorldCoordinated, ConvertBoxModed
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[1, 2, 4], base_anchor_shapes=[[6, 8, 4], [8, 6, 5], [10, 10, 6]]
    )
    detector = RetinaNetDetector(network=net, anchor_generator=anchors, debug=False)
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(
        score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22, detections_per_img=300
    )
    detector.eval()
    with torch.no_grad():
        out = detector([image.as_tensor()], use_inferer=False)[0]
    d = {"image": image, "box": out["box"], "label": out["label"], "label_scores": out["label_scores"]}
    d = AffineBoxToWorldCoordinated(box_keys="box", box_ref_image_keys="image", affine_lps_to_ras=True)(d)
    d = ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd")(d)
    save_file(
        {
            "boxes_world": torch.as_tensor(d["box"]).float().contiguous(),
            "scores": torch.as_tensor(d["label_scores"]).float().contiguous(),
        },
        str(out_dir / "end_to_end.safetensors"),
    )
    print(f"end to end: {len(d['box'])} boxes")


def phantom_scan(path: Path) -> None:
    """The scan (see the module's doc) as NIfTI at `path`."""
    import lungcad
    import nibabel as nib
    import numpy as np

    phantom = lungcad.synth(PHANTOM_SEED, **PHANTOM_SPACING)
    v = phantom.volume
    n = phantom.nodules[0]
    centre = np.round(v.world_to_voxel((n.coord_x, n.coord_y, n.coord_z))).astype(int)  # (z, y, x)
    size_zyx = SCAN_SIZE[::-1]
    lo = [int(np.clip(c - s // 2, 0, d - s)) for c, s, d in zip(centre, size_zyx, v.shape)]
    piece = v.array[lo[0] : lo[0] + size_zyx[0], lo[1] : lo[1] + size_zyx[1], lo[2] : lo[2] + size_zyx[2]]
    assert np.allclose(v.direction[::-1], np.eye(3))  # rows: the (z, y, x) axes in world x, y, z
    origin_lps = v.voxel_to_world(tuple(float(i) for i in lo))
    sz, sy, sx = v.spacing_mm
    affine = np.diag([-sx, -sy, sz, 1.0])  # LPS identity in RAS
    affine[:3, 3] = [-origin_lps[0], -origin_lps[1], origin_lps[2]]
    hu = np.ascontiguousarray(piece.transpose(2, 1, 0))  # (x, y, z)
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    print(f"scan: {hu.shape} around a {n.diameter_mm:.1f} mm {n.kind} nodule, HU {hu.min()} to {hu.max()}")


def preprocessing(out_dir: Path) -> torch.Tensor:
    """The bundle's preprocessing (raw-LUNA16 path: orientation to RAS, spacing, intensity)
    of the scan; returns the preprocessed image (MONAI's MetaTensor)."""
    import numpy as np
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    path = out_dir / "preprocess_input.nii.gz"
    phantom_scan(path)
    t = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=[0.703125, 0.703125, 1.25], padding_mode="border"),
            ScaleIntensityRanged(keys="image", a_min=-1024, a_max=300, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    image = t({"image": str(path)})["image"]
    save_file(
        {
            "image": torch.as_tensor(np.asarray(image)).float().contiguous(),
            "affine": torch.as_tensor(np.asarray(image.affine)).double().contiguous(),
        },
        str(out_dir / "preprocess_output.safetensors"),
    )
    print(f"preprocessing: {tuple(image.shape)}")
    return image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "fixtures" / "monai"))
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="the bundle's full-size network")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    settings, shape, stem = (FULL, FULL_INPUT_SHAPE, "retinanet_full") if a.full else (SETTINGS, INPUT_SHAPE, "retinanet_small")
    net = randomize(build(settings))
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    scan = preprocessing(out_dir)
    x = centre_crop(scan.as_tensor(), shape[2:])[None].contiguous()
    with torch.no_grad():
        out = net(x)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    meta = {
        "monai": monai.__version__,
        "torch": torch.__version__,
        "settings": json.dumps(settings),
        "parameters": str(sum(p.numel() for p in net.parameters())),
    }
    save_file(state, str(out_dir / f"{stem}.safetensors"), metadata=meta)
    if not a.full:
        torch.save(net.state_dict(), str(out_dir / f"{stem}.pt"))
        nested = {"epoch": 7, "model": {f"module.{k}": v for k, v in net.state_dict().items()}}
        torch.save(nested, str(out_dir / f"{stem}_checkpoint.pt"))
    io = {"input": x.contiguous()}
    for key in ("classification", "box_regression"):
        for i, t in enumerate(out[key]):
            io[f"{key}.{i}"] = t.contiguous()
    save_file(io, str(out_dir / f"{stem}_io.safetensors"), metadata=meta)
    if not a.full:
        detections(net, scan.as_tensor(), out_dir / f"{stem}_detections.safetensors", meta)
        end_to_end(net, scan, out_dir)
    for k, v in io.items():
        print(k, tuple(v.shape))
    print(f"{meta['parameters']} parameters; wrote {out_dir}")


if __name__ == "__main__":
    main()
