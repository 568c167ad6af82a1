#!/usr/bin/env bash
# Prepares .gpu/ (ignored by git) for benches/gpu_checks.sh, the GPU measurements of
# docs/PERFORMANCE.md, on a machine with Rust and network access: the device machines have
# neither (no cargo, nothing fetched there), so everything the checks need travels from here.
#
#   LUNGCAD_DATA=../shared/data benches/prepare_gpu_checks.sh
#
# Writes .gpu/lungcad.xz (the release binary, stripped), .gpu/lidc.nii.xz (LIDC-IDRI-0001 as
# NIfTI), .gpu/libvulkan1*.deb (the Vulkan loader wgpu needs) and .gpu/monai-*.whl (MONAI
# for the comparison; torch is there). About 45 MB: the device tool takes 64 MiB with the
# working tree. Then, with the device tool: run `bash benches/gpu_checks.sh` with carry
# [".gpu"] and a timeout of 600 s.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
rm -rf .gpu && mkdir -p .gpu
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked
strip -o .gpu/lungcad "$target/release/lungcad"
xz -T0 -6 .gpu/lungcad
data=${LUNGCAD_DATA:-../shared/data}
"$target/release/lungcad" convert "$data/lidc/LIDC-IDRI-0001" .gpu/lidc.nii
xz -T0 -6 .gpu/lidc.nii
(cd .gpu && apt-get download libvulkan1)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .gpu monai==1.6.1
du -sh .gpu
git ls-files -z | xargs -0 du -cb | tail -1
