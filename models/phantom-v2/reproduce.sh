#!/usr/bin/env bash
# Remakes the shipped model phantom-v2 and its model card's figures from nothing: phantoms,
# training on the CPU (44 epochs), the development and held-out evaluations. About 75
# minutes on 2 cores, and 25 GB of disk for the phantoms.
#
#   cargo build --release && models/phantom-v2/reproduce.sh [work folder]
#
# LUNGCAD names the binary (default target/release/lungcad).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-phantom-v2-work}
lungcad=${LUNGCAD:-target/release/lungcad}
# Training phantoms: seeds 1000 to 1127; development (choices such as the test-time flips
# and the demo's threshold): 3000 to 3019; held-out (the model card's figures): 5000 to 5019.
"$lungcad" synth --out "$work/train" --count 128 --seed 1000 --config "$here/synth_config.json"
"$lungcad" synth --out "$work/dev" --count 20 --seed 3000 --config "$here/synth_config.json"
"$lungcad" synth --out "$work/heldout" --count 20 --seed 5000 --config "$here/synth_config.json"
"$lungcad" train --data "$work/train" --out "$work/run" --config "$here/train_config.json" \
    --cache "$work/cache" --device cpu
cp "$work/run/model.safetensors" "$work/model.safetensors"
for set in dev heldout; do
    for flips in none x all; do
        LUNGCAD=$lungcad DEVICE=cpu FLIPS=$flips "$here/evaluate.sh" "$work/model.safetensors" \
            "$work/$set" "$work/eval-$set-$flips"
    done
done
