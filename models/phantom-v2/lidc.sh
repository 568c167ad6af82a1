#!/usr/bin/env bash
# Runs a model on the real LIDC-IDRI-0001 (LUNA16 series ...192) and scores it against the
# official LUNA16 annotations of that one scan: where the 23 mm nodule ranks, and how many
# false positives come before it and in all.
#
#   models/phantom-v2/lidc.sh <model.safetensors | shipped> <output folder>
#
# LUNGCAD_DATA is the shared data folder (default ../shared/data); LUNGCAD the binary;
# DEVICE the device (default auto); FLIPS the test-time flips (default x).
set -euo pipefail
model=$1 out=$2
data=${LUNGCAD_DATA:-../shared/data}
lungcad=${LUNGCAD:-target/release/lungcad}
uid=1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192
mkdir -p "$out"
model_args=()
[ "$model" != shipped ] && model_args=(--model "$model")
"$lungcad" detect "$data/lidc/LIDC-IDRI-0001" "${model_args[@]}" --device "${DEVICE:-auto}" --flips "${FLIPS:-x}" \
    --threshold 0.02 --out "$out/lidc-0001.csv" --overlay "$out/lidc-0001.png" > "$out/detections.txt"
echo "$uid" > "$out/seriesuids.csv"
"$lungcad" eval --annotations "$data/luna16/annotations.csv" \
    --excluded "$data/luna16/annotations_excluded.csv" --seriesuids "$out/seriesuids.csv" \
    --predictions "$out/lidc-0001.csv" --bootstrap 0 | tee "$out/eval.txt"
# The nodule's rank: the first detection within its radius (LUNA16's hit).
grep "^$uid" "$data/luna16/annotations.csv" | while IFS=, read -r _ x y z d; do
    awk -F, -v x="$x" -v y="$y" -v z="$z" -v d="$d" 'NR > 1 {
        r = sqrt(($2 - x)^2 + ($3 - y)^2 + ($4 - z)^2)
        if (r <= d / 2) { printf "nodule (%s, %s, %s) %s mm: rank %d, probability %s, %.1f mm off\n", x, y, z, d, NR - 1, $5, r; found = 1; exit }
    } END { if (!found) printf "nodule (%s, %s, %s) %s mm: not found among %d detections\n", x, y, z, d, NR - 1 }' "$out/lidc-0001.csv"
done | tee -a "$out/eval.txt"
