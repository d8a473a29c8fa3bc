#!/usr/bin/env bash
# Reproduce the embedded default policy (flashvla_ros/models/default) from scratch, on 2 CPU
# cores (about 47 min): expert data with noise injection (20 s), training (24 min), two DAgger
# rounds on the harder families (about 4 min of rollouts and 7 min of fine-tuning each), then
# the held-out closed-loop benchmark (2 min).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/default}
BIN=.venv/bin
$BIN/flashvla-dataset --out "$OUT/data" --episodes 4000 --seed 0
$BIN/flashvla-train --data "$OUT/data" --out "$OUT/base" --steps 5000 --seed 0
$BIN/flashvla-dataset --out "$OUT/data" --episodes 600 --seed 4000 \
    --families pick_place,push --dagger-model "$OUT/base"
$BIN/flashvla-train --data "$OUT/data" --out "$OUT/round1" --init "$OUT/base" \
    --steps 1500 --lr 0.001 --warmup 100 --seed 0
$BIN/flashvla-dataset --out "$OUT/data" --episodes 600 --seed 4600 \
    --families push,pick_place,push --dagger-model "$OUT/round1"
$BIN/flashvla-train --data "$OUT/data" --out "$OUT/model" --init "$OUT/round1" \
    --steps 1500 --lr 0.001 --warmup 100 --seed 0
$BIN/flashvla-bench --model "$OUT/model" --accel none --episodes 200
# The training record for docs/training/: each round's curves (loss.png) and the data behind
# them (train_log.json, redrawn with `flashvla-train --plot-log FILE`).
mkdir -p "$OUT/record"
for round in base:base round1:dagger1 model:dagger2; do
  cp "$OUT/${round%%:*}/train_log.json" "$OUT/record/train_log_${round##*:}.json"
  cp "$OUT/${round%%:*}/loss.png" "$OUT/record/loss_${round##*:}.png"
done
echo "training record in $OUT/record (copy to docs/training/ with the new model)"
