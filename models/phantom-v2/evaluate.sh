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
mkdir -p "$out/detections"
model_args=()
[ "$model" != shipped ] && model_args=(--model "$model")
echo "seriesuid,coordX,coordY,coordZ,probability" > "$out/predictions.csv"
: > "$out/seriesuids.csv"
for mhd in "$data"/*.mhd; do
    uid=$(basename "$mhd" .mhd)
    echo "$uid" >> "$out/seriesuids.csv"
    # A low threshold, so the FROC curve reaches 8 false positives per scan.
    "$lungcad" detect "$mhd" "${model_args[@]}" --device "$device" --flips "$flips" --threshold 0.02 \
        --out "$out/detections/$uid.csv" > /dev/null
    tail -n +2 "$out/detections/$uid.csv" >> "$out/predictions.csv"
done
echo "seriesuid,coordX,coordY,coordZ,diameter_mm" > "$out/excluded.csv"
"$lungcad" eval --annotations "$data/annotations.csv" --excluded "$out/excluded.csv" \
    --seriesuids "$out/seriesuids.csv" --predictions "$out/predictions.csv" \
    --plot "$out/froc.png" | tee "$out/eval.txt"
