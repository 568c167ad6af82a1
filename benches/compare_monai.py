#!/usr/bin/env python3
"""Times MONAI's RetinaNet detector (the lung_nodule_ct_detection bundle's network and
post-processing: anchors, decoding, selection, NMS) in MONAI/PyTorch and in lungcad, on the
same weights, the same machine, in the same run, on random inputs of one size.

    cargo build --release
    python3 benches/compare_monai.py [weights.safetensors] [--image 128,128,64] [--repeats 3]
        [--device cpu|wgpu|cuda] [--lungcad target/release/lungcad]

The weights: a MONAI state_dict as safetensors (`make_monai_fixture.py --full`), or without
one, the bundle's full-size network with random weights drawn here (seed 0, the fixture
script's `randomize`). Model-only time, as MONAI's published figures: preprocessing excluded
on both sides. Both take the first run as a warm-up and report the median of the others.
PyTorch runs on the GPU (cuda) when lungcad's device is wgpu or cuda and torch sees one, the
sliding window's maps on that device too, and then also with automatic mixed precision
(`torch.autocast`, float16), as MONAI's published AMP figure. Needs `monai`, `torch` and
`safetensors`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "scripts"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="?", help="a MONAI state_dict as safetensors (make_monai_fixture.py --full); default: random")
    ap.add_argument("--image", default="128,128,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="lungcad's --device; torch runs on cpu, or cuda when given cuda or wgpu and available")
    target = os.environ.get("CARGO_TARGET_DIR", str(HERE.parent / "target"))
    ap.add_argument("--lungcad", default=os.path.join(target, "release", "lungcad"))
    a = ap.parse_args()
    size = [int(v) for v in a.image.split(",")]

    import torch
    from safetensors.torch import load_file, save_file

    from make_monai_fixture import FULL, build, randomize
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    with tempfile.TemporaryDirectory() as tmp:
        if a.weights is None:
            torch.manual_seed(0)
            a.weights = str(Path(tmp) / "random.safetensors")
            save_file({k: v.contiguous() for k, v in randomize(build(FULL)).state_dict().items()}, a.weights)
        model = Path(tmp) / "monai.safetensors"
        config = Path(tmp) / "retinanet.json"
        config.write_text(json.dumps(FULL))
        subprocess.run([a.lungcad, "import-monai", a.weights, "--out", str(model), "--config", str(config)], check=True)
        out = subprocess.run(
            [a.lungcad, "benchmark", "--model", str(model), "--device", a.device, "--image", a.image,
             "--repeats", str(a.repeats), "--json"],
            check=True, stdout=subprocess.PIPE, text=True,
        )
        ours = json.loads(out.stdout)
        state = load_file(a.weights)
    print(f"lungcad benchmark: {json.dumps(ours)}", file=sys.stderr, flush=True)  # kept if the peer never ends

    torch_device = "cuda" if a.device in ("cuda", "wgpu") and torch.cuda.is_available() else "cpu"
    net = build(FULL)
    net.load_state_dict(state)
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[1, 2, 4], base_anchor_shapes=[[6, 8, 4], [8, 6, 5], [10, 10, 6]]
    )
    detector = RetinaNetDetector(network=net, anchor_generator=anchors, debug=False)
    detector.set_target_keys(box_key="box", label_key="label")
    detector.set_box_selector_parameters(score_thresh=0.02, topk_candidates_per_level=1000, nms_thresh=0.22, detections_per_img=300)
    detector.set_sliding_window_inferer(
        roi_size=[512, 512, 192], overlap=0.25, sw_batch_size=1, mode="constant", device=torch_device
    )
    detector.eval().to(torch_device)
    image = torch.randn([1] + size, device=torch_device)
    use_inferer = image.numel() >= 512 * 512 * 192

    def timed(amp: bool) -> tuple[list[float], int]:
        times = []
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            for _ in range(a.repeats + 1):
                if torch_device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                boxes = detector([image], use_inferer=use_inferer)[0]["box"]
                if torch_device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        return times, len(boxes)

    runs = [("MONAI / PyTorch eager fp32", *timed(False))]
    if torch_device == "cuda":
        runs.append(("MONAI / PyTorch AMP fp16", *timed(True)))
    import monai

    gpu = f", {torch.cuda.get_device_name()}" if torch_device == "cuda" else ""
    print(f"image {size}, {os.cpu_count()} cores{gpu}; MONAI {monai.__version__}, torch {torch.__version__} ({torch_device}, {torch.get_num_threads()} threads)")
    print(f"{'':<28}{'first s':>9}{'median s':>10}{'boxes':>7}")
    for name, times, boxes in runs:
        print(f"{name:<28}{times[0]:>9.3f}{statistics.median(times[1:]):>10.3f}{boxes:>7}")
    print(f"{'lungcad (' + ours['device'] + ')':<28}{ours['first_s']:>9.3f}{ours['median_s']:>10.3f}{ours['boxes']:>7}")
    for name, times, _ in runs:
        print(f"lungcad / {name} time: {ours['median_s'] / statistics.median(times[1:]):.2f}x")


if __name__ == "__main__":
    main()
