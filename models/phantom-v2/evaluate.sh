#!/usr/bin/env bash
# Detects on every scan of a folder of .mhd phantoms (as `lungcad synth` writes them) and
# scores the detections with `lungcad eval` against the folder's annotations.csv.
#
#   models/phantom-v2/evaluate.sh <model.safetensors | shipped> <phantom folder> <output folder>
#
# LUNGCAD names the binary (default target/release/lungcad); DEVICE the device (default auto);
# FLIPS the test-time flips (none, x or all; default x, as `lungcad detect`).
set -euo pipefail
model=$1 data=$2 out=$3
lungcad=${LUNGCAD:-target/release/lungcad}
device=${DEVICE:-auto}
flips=${FLIPS:-x}
mkdir -p "$out"
model_args=()
[ "$model" != shipped ] && model_args=(--model "$model")
scans=("$data"/*.mhd)
for mhd in "${scans[@]}"; do basename "$mhd" .mhd; done > "$out/seriesuids.csv"
# All scans in one process (the model is loaded once), into one submission CSV; a low
# threshold, so the FROC curve reaches 8 false positives per scan.
"$lungcad" detect "${scans[@]}" "${model_args[@]}" --device "$device" --flips "$flips" \
    --threshold 0.02 --out "$out/predictions.csv" > "$out/detections.txt"
echo "seriesuid,coordX,coordY,coordZ,diameter_mm" > "$out/excluded.csv"
"$lungcad" eval --annotations "$data/annotations.csv" --excluded "$out/excluded.csv" \
    --seriesuids "$out/seriesuids.csv" --predictions "$out/predictions.csv" \
    --plot "$out/froc.png" | tee "$out/eval.txt"
