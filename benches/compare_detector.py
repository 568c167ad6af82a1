#!/usr/bin/env python3
"""The detector network's forward pass, lungcad against the PyTorch reference
(python/reference/detector.py) on identical weights, in the same run: patches/s per batch
size and the ratio.

    cargo build --release
    python3 benches/compare_detector.py [--batch-sizes 1,8] [--patch 128] [--repeats 3]
        [--device cpu] [--torch-device cpu] [--lungcad target/release/lungcad]

The model is the default network (`lungcad init-model`, seed 0) unless --model names one.
lungcad is timed by `lungcad benchmark --json` (random input, one warm-up pass per batch
size, median of the repeats); PyTorch by the same protocol, eager fp32, under
torch.no_grad(), with all cores (torch.set_num_threads(os.cpu_count())). On a GPU
(--torch-device cuda) each PyTorch pass ends with torch.cuda.synchronize(), as lungcad's
ends with reading the output back. Ratio = PyTorch's time / lungcad's (above 1: lungcad is
faster).

--train times training steps instead (`lungcad benchmark --train`): forward, backward and
an Adam step, the network in training mode (batch statistics). lungcad's loss is its
detection loss (BCE with hard-negative top-k, smooth L1); PyTorch's is the mean square of
the output, a cheaper loss on the same output, so the comparison slightly favours PyTorch
(the loss is a few small tensors against a 3-D U-Net's convolutions).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python", "reference"))


def torch_times(model, batch_sizes, patch, repeats, device, train=False):
    import numpy as np
    import torch
    from detector import load_lungcad_model

    torch.set_num_threads(os.cpu_count())
    net, _ = load_lungcad_model(model)
    net = net.to(device)
    if train:
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    rows = []
    for b in batch_sizes:
        x = torch.from_numpy(np.random.default_rng(0).random((b, 1, patch, patch, patch), dtype=np.float32)).to(device)

        def one():
            t = time.perf_counter()
            if train:
                opt.zero_grad()
                y = net(x)
                y.square().mean().backward()
                opt.step()
            else:
                with torch.no_grad():
                    y = net(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            _ = y
            return time.perf_counter() - t

        first = one()
        times = sorted(one() for _ in range(repeats))
        med = times[len(times) // 2]
        rows.append({"batch_size": b, "first_pass_s": first, "median_s": med, "patches_per_s": b / med})
    return torch.__version__, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="lungcad's device: cpu, wgpu, cuda")
    ap.add_argument("--torch-device", default="cpu")
    ap.add_argument("--model")
    ap.add_argument("--train", action="store_true", help="time training steps instead of inference passes")
    ap.add_argument("--lungcad", default=os.path.join(ROOT, "target", "release", "lungcad"))
    a = ap.parse_args()
    sizes = [int(s) for s in a.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model
        if model is None:
            model = os.path.join(tmp, "default.safetensors")
            subprocess.run([a.lungcad, "init-model", "--out", model], check=True, stderr=subprocess.DEVNULL)
        p = subprocess.run(
            [a.lungcad, "benchmark", "--model", model, "--device", a.device, "--batch-sizes", a.batch_sizes,
             "--patch", str(a.patch), "--repeats", str(a.repeats), "--json"] + (["--train"] if a.train else []),
            check=True, stdout=subprocess.PIPE, text=True)
        ours = json.loads(p.stdout)
        print(f"lungcad benchmark: {json.dumps(ours)}", file=sys.stderr, flush=True)  # kept if the peer never ends
        version, theirs = torch_times(model, sizes, a.patch, a.repeats, a.torch_device, a.train)
    print(f"default detector, {ours['parameters']} parameters, {ours['gflops_per_patch']:.1f} GFLOPs per {a.patch}^3 patch; "
          f"{os.cpu_count()} CPU cores")
    unit = "step" if a.train else "pass"
    print(f"{ours['mode']}: lungcad on {ours['device']} (peak resident memory {ours['peak_rss_bytes'] / 1e9:.2f} GB); "
          f"PyTorch {version} eager fp32 on {a.torch_device}")
    print(f"batch | lungcad s/{unit} | lungcad patches/s | PyTorch s/{unit} | PyTorch patches/s | PyTorch time / lungcad time")
    print("---|---|---|---|---|---")
    for o, t in zip(ours["results"], theirs):
        print(f"{o['batch_size']} | {o['median_s']:.3f} | {o['patches_per_s']:.2f} | {t['median_s']:.3f} | "
              f"{t['patches_per_s']:.2f} | {t['median_s'] / o['median_s']:.2f}")
    print("lungcad patches per pass (the device's largest buffer): "
          + ", ".join(str(o.get("patches_per_pass", o["batch_size"])) for o in ours["results"]))
    print("first passes (s): lungcad " + ", ".join(f"{o['first_pass_s']:.2f}" for o in ours["results"])
          + "; PyTorch " + ", ".join(f"{t['first_pass_s']:.2f}" for t in theirs))


if __name__ == "__main__":
    main()
