#!/usr/bin/env bash
# Reproduce the embedded diffusion-head default (flashvla_ros/models/default-dit) on 2 CPU
# cores (about 111 min): expert data with noise injection, the base run (vision towers copied
# from the autoregressive default, its 4 decoder layers grown to 12 by repeating each 3 times,
# a fresh DiT head; 2000 steps), a DAgger round on the harder families (400 episodes rolled
# out by the base model one action per inference, labelled by the expert) and 800 steps of
# fine-tuning; these two stages learn chunks from the next steps' labels (--chunk-labels next),
# as the model was first trained. Then a second DAgger round rolled out as deployed (4 actions
# of each chunk) and 2000 steps on the expert's own plans from every state (the default
# --chunk-labels plan), then 1500 steps with LayerDrop (each decoder layer from the third
# skipped with probability 0.3 per batch, so that the model stands EfficientVLA's calibrated
# layer pruning as a large LLM does), the calibration for EfficientVLA and the held-out
# closed-loop benchmark. Every stage is resumable: run the script again after an interruption; finished
# stages are skipped and a training run continues from its last train_state.pt (saved every
# 250 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/default-dit}
BIN=.venv/bin
MODEL=(--head diffusion --layers 12 --intermediate 344 --dit-hidden 48 --dit-depth 2
       --dit-heads 4 --noise-draws 32 --batch 16 --seed 0)
finished() { [[ -f "$1/model.safetensors" && ! -f "$1/train_state.pt" ]]; }

[[ -f "$OUT/data/episodes.npz" ]] || \
  $BIN/flashvla-dataset --out "$OUT/data" --episodes 4000 --seed 0
finished "$OUT/base" || $BIN/flashvla-train --data "$OUT/data" --out "$OUT/base" "${MODEL[@]}" \
  --init-vision flashvla_ros/models/default --grow-llm flashvla_ros/models/default \
  --lr 0.001 --steps 2000 --chunk-labels next
if ! finished "$OUT/dagger1"; then
  [[ -f "$OUT/dagger1.done" ]] || {
    $BIN/flashvla-dataset --out "$OUT/data" --episodes 400 --seed 4000 \
      --families pick_place,push --dagger-model "$OUT/base"
    touch "$OUT/dagger1.done"; }
  $BIN/flashvla-train --data "$OUT/data" --out "$OUT/dagger1" --init "$OUT/base" "${MODEL[@]}" \
    --lr 0.0005 --warmup 100 --steps 800 --chunk-labels next
fi
if ! finished "$OUT/model"; then
  [[ -f "$OUT/dagger2.done" ]] || {
    $BIN/flashvla-dataset --out "$OUT/data" --episodes 600 --seed 4400 \
      --families pick_place,push --dagger-model "$OUT/dagger1" --chunk-steps 4
    touch "$OUT/dagger2.done"; }
  $BIN/flashvla-train --data "$OUT/data" --out "$OUT/model" --init "$OUT/dagger1" "${MODEL[@]}" \
    --lr 0.0003 --warmup 100 --steps 2000
fi
finished "$OUT/layerdrop" || $BIN/flashvla-train --data "$OUT/data" --out "$OUT/layerdrop" \
  --init "$OUT/model" "${MODEL[@]}" --lr 0.0003 --warmup 100 --steps 1500 --layer-drop 0.3
$BIN/flashvla-calibrate --model "$OUT/layerdrop"
$BIN/flashvla-bench --model "$OUT/layerdrop" --accel none --episodes 200 --chunk-steps 4
echo "copy $OUT/layerdrop (less aux_heads.pt, train_log.json, loss.png) to" \
     "flashvla_ros/models/default-dit; the logs and curves of base, dagger1, model and" \
     "layerdrop go to docs/training/default-dit/"
