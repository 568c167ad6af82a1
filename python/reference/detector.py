#!/usr/bin/env python3
"""PyTorch reference of lungcad's detector network (src/model/net.rs), for tests and
benchmarks only: same layers, same parameter names, so lungcad model files (safetensors)
load with `load_lungcad_model` and a PyTorch model saves as a lungcad model file with
`save_lungcad_model`.

    python3 python/reference/detector.py forward MODEL.safetensors IN.f32 OUT.f32 B D H W
        Runs MODEL on the (B, 1, D, H, W) little-endian float32 input, writes the output.
    python3 python/reference/detector.py export CONFIG_MODEL.safetensors OUT.safetensors SEED
        Builds the network of CONFIG_MODEL's configs with PyTorch's own random weights
        (and random batch-norm statistics), seeded, and saves it as a lungcad model file.
    python3 python/reference/detector.py fixture MODEL.safetensors OUT_DIR B D H W SEED
        Writes OUT_DIR/input.f32 (uniform [0, 1) values, seeded) and OUT_DIR/output.f32
        (MODEL's output on it): the committed parity fixture (tests/fixtures/README.md).
"""
import json
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

MODEL_FORMAT = "1"


class ConvBnRelu(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(c_out, eps=1e-5)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out, eps=1e-5)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out, eps=1e-5)
        if c_in != c_out:
            self.shortcut = nn.Conv3d(c_in, c_out, 1, bias=False)
            self.shortcut_bn = nn.BatchNorm3d(c_out, eps=1e-5)
        else:
            self.shortcut = None
            self.shortcut_bn = None

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + skip)


class Stage(nn.Module):
    def __init__(self, c_in, c_out, n):
        super().__init__()
        self.blocks = nn.ModuleList([ResBlock(c_in if i == 0 else c_out, c_out) for i in range(max(n, 1))])

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


class DetectorNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c0, c1, c2, c3, c4 = cfg["channels"]
        cd = cfg["decoder_channels"]
        b = cfg["blocks"]
        n_out = 5 * len(cfg["head"]["anchors_mm"])
        self.stem1 = ConvBnRelu(cfg["in_channels"], c0)
        self.stem2 = ConvBnRelu(c0, c0)
        self.enc1 = Stage(c0, c1, b[0])
        self.enc2 = Stage(c1, c2, b[1])
        self.enc3 = Stage(c2, c3, b[2])
        self.enc4 = Stage(c3, c4, b[3])
        self.dec3 = Stage(c4 + c3, cd, cfg["decoder_blocks"])
        self.dec2 = Stage(cd + c2, cd, cfg["decoder_blocks"])
        self.head1 = nn.Conv3d(cd, cd, 1, bias=True)
        self.head2 = nn.Conv3d(cd, n_out, 1, bias=True)

    def forward(self, x):
        x = self.stem2(self.stem1(x))
        e1 = self.enc1(F.max_pool3d(x, 2))
        e2 = self.enc2(F.max_pool3d(e1, 2))
        e3 = self.enc3(F.max_pool3d(e2, 2))
        e4 = self.enc4(F.max_pool3d(e3, 2))
        d3 = self.dec3(torch.cat([F.interpolate(e4, scale_factor=2, mode="nearest"), e3], 1))
        d2 = self.dec2(torch.cat([F.interpolate(d3, scale_factor=2, mode="nearest"), e2], 1))
        return self.head2(F.relu(self.head1(d2)))


def read_metadata(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata() or {}


def load_lungcad_model(path):
    meta = read_metadata(path)
    if meta.get("lungcad_model_format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a lungcad model of format {MODEL_FORMAT}")
    cfg = json.loads(meta["detector_config"])
    net = DetectorNet(cfg)
    from safetensors.torch import load_file

    state = load_file(path)
    missing, unexpected = net.load_state_dict(state, strict=False)
    # burn does not store BatchNorm's num_batches_tracked (unused in eval mode)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net.eval(), meta


def save_lungcad_model(net, meta, path):
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, path, metadata={"lungcad_model_format": MODEL_FORMAT, "detector_config": meta["detector_config"], "preprocess_config": meta["preprocess_config"]})


def main(argv):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if argv[0] == "forward":
        model, src, dst = argv[1:4]
        b, d, h, w = (int(v) for v in argv[4:8])
        net, _ = load_lungcad_model(model)
        x = torch.from_numpy(np.fromfile(src, dtype="<f4").reshape(b, 1, d, h, w))
        with torch.no_grad():
            y = net(x)
        y.numpy().astype("<f4").tofile(dst)
    elif argv[0] == "export":
        src, dst, seed = argv[1], argv[2], int(argv[3])
        meta = read_metadata(src)
        torch.manual_seed(seed)
        net = DetectorNet(json.loads(meta["detector_config"]))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        save_lungcad_model(net, meta, dst)
    elif argv[0] == "fixture":
        model, out = argv[1], argv[2]
        b, d, h, w, seed = (int(v) for v in argv[3:8])
        net, _ = load_lungcad_model(model)
        x = torch.rand(b, 1, d, h, w, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            y = net(x)
        x.numpy().astype("<f4").tofile(f"{out}/input.f32")
        y.numpy().astype("<f4").tofile(f"{out}/output.f32")
        print(f"torch {torch.__version__}: input {tuple(x.shape)}, output {tuple(y.shape)}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
