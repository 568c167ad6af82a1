#!/usr/bin/env bash
# The GPU measurements the issues ask for, in one short run on a device machine (NVIDIA,
# no Rust, no network): prepare .gpu/ here first (benches/prepare_gpu_checks.sh), then with
# the device tool run `bash benches/gpu_checks.sh` carrying [".gpu"], timeout 600 s. Every
# step has its own time limit and writes to $OUT/gpu_checks.log as it goes, so what
# finished comes back even when a later step does not.
#
#   1. wgpu on the GPU at all (a small pass)
#   2. detector forward, batches 1, 8, 32 of 128^3: lungcad wgpu against the PyTorch
#      reference on CUDA, same weights (compare_detector.py)             [detector issue]
#   3. whole-scan detection of LIDC-IDRI-0001, shipped model and the default network
#      (128^3 tiles), twice each: the first pays for kernel compilation   [detector issue]
#   4. a training step on 32 patches of 128^3, its time and the GPU memory it takes
#                                                                          [training issue]
#   5. MONAI's RetinaNet on 512 x 512 x 192: lungcad wgpu against MONAI fp32 and AMP on
#      CUDA, same weights (compare_monai.py)                               [MONAI issue]
#
# Not here: burn's `cuda` backend. Its build downloads LLVM from github.com, which the
# development machine cannot reach, and the device machine builds nothing.
#
# A dry run of the plumbing on any machine (lavapipe, PyTorch on the CPU, small sizes):
#   PATCH=32 IMAGE=64,64,32 TORCH_DEVICE=cpu OUT=/tmp/gpu_out bash benches/gpu_checks.sh
set -u
PATCH=${PATCH:-128}
IMAGE=${IMAGE:-512,512,192}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=/tmp/xdg
mkdir -p "$XDG_RUNTIME_DIR" /tmp/gpu
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
# step NAME SECONDS COMMAND...: runs it with a time limit, output into the log.
step() {
    local name=$1 limit=$2
    shift 2
    say "$name (limit ${limit} s): $*"
    local t0
    t0=$(date +%s%N)
    timeout "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "$name: rc $rc, $((($(date +%s%N) - t0) / 1000000)) ms"
}

say "setup"
if ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in .gpu/libvulkan1*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
xz -dc .gpu/lungcad.xz >/tmp/gpu/lungcad && chmod +x /tmp/gpu/lungcad
xz -dc .gpu/lidc.nii.xz >/tmp/gpu/lidc.nii
command -v nvidia-smi >/dev/null || nvidia-smi() { echo "no nvidia-smi"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/monai-*.whl >>"$LOG" 2>&1
export PYTHONPATH=/tmp/site
L=/tmp/gpu/lungcad
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    nproc
    python3 -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"
    $L --version
} >>"$LOG" 2>&1

step wgpu-smoke 45 $L benchmark --device wgpu --batch-sizes 1 --patch 32 --repeats 1

step detector-forward 170 python3 benches/compare_detector.py --lungcad $L --device wgpu \
    --torch-device "$TORCH_DEVICE" --batch-sizes 1,8,32 --patch "$PATCH" --repeats 3

$L init-model --out /tmp/gpu/default.safetensors >>"$LOG" 2>&1
for run in 1 2; do
    step "lidc-shipped-$run" 30 $L detect /tmp/gpu/lidc.nii --device wgpu --out /tmp/gpu/shipped.csv
done
for run in 1 2; do
    step "lidc-default-$run" 35 $L detect /tmp/gpu/lidc.nii --device wgpu \
        --model /tmp/gpu/default.safetensors --out /tmp/gpu/default.csv
done
head -4 /tmp/gpu/shipped.csv >>"$LOG" 2>&1

nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/memory_train.csv" 2>&1 &
mem=$!
step "train-32x$PATCH" 100 $L benchmark --device wgpu --train --batch-sizes 32 --patch "$PATCH" --repeats 2
kill $mem 2>/dev/null
say "GPU memory during training, peak MiB: $(sort -n "$OUT/memory_train.csv" | tail -1)"

nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/memory_monai.csv" 2>&1 &
mem=$!
step "monai-$IMAGE" 120 python3 benches/compare_monai.py --lungcad $L --device wgpu \
    --image "$IMAGE" --repeats 2
kill $mem 2>/dev/null
say "GPU memory during the MONAI comparison, peak MiB: $(sort -n "$OUT/memory_monai.csv" | tail -1)"
say "done"
