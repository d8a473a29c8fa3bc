#!/usr/bin/env bash
# Reproduce the embedded diffusion-head default (flashvla_ros/models/default-dit) from scratch
# on 2 CPU cores: expert data with noise injection, the base run (vision towers copied from
# the autoregressive default, its 4 decoder layers grown to 12: each repeated 3 times), one
# DAgger round on the harder families, then the
# held-out closed-loop benchmark. Every training stage is resumable: run the script again
# after an interruption and each finished stage is skipped, an unfinished one continues from
# its last train_state.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/default-dit}
BIN=.venv/bin
MODEL=(--head diffusion --layers 12 --intermediate 344 --dit-hidden 48 --dit-depth 2
       --dit-heads 4 --noise-draws 32 --batch 16 --seed 0)
done_stage() { [[ -f "$1/model.safetensors" && ! -f "$1/train_state.pt" ]]; }

[[ -f "$OUT/data/episodes.npz" ]] || \
  $BIN/flashvla-dataset --out "$OUT/data" --episodes 4000 --seed 0
done_stage "$OUT/base" || $BIN/flashvla-train --data "$OUT/data" --out "$OUT/base" "${MODEL[@]}" \
  --init-vision flashvla_ros/models/default --grow-llm flashvla_ros/models/default \
  --lr 0.001 --steps 2000
if ! done_stage "$OUT/model"; then
  [[ -f "$OUT/dagger1.done" ]] || {
    $BIN/flashvla-dataset --out "$OUT/data" --episodes 400 --seed 4000 \
      --families pick_place,push --dagger-model "$OUT/base"
    touch "$OUT/dagger1.done"; }
  $BIN/flashvla-train --data "$OUT/data" --out "$OUT/model" --init "$OUT/base" "${MODEL[@]}" \
    --lr 0.001 --warmup 100 --steps 1200
fi
$BIN/flashvla-bench --model "$OUT/model" --accel none --episodes 200
mkdir -p "$OUT/record"
for round in base:base model:dagger1; do
  cp "$OUT/${round%%:*}/train_log.json" "$OUT/record/train_log_${round##*:}.json"
  cp "$OUT/${round%%:*}/loss.png" "$OUT/record/loss_${round##*:}.png"
done
echo "training record in $OUT/record (copy to docs/training/default-dit/ with the new model)"
