#!/usr/bin/env bash
# EfficientVLA's measurements (docs/efficientvla/): one bench run per embedded model on the
# same held-out episodes (200 for default-dit, 30 for the autoregressive default), every
# component alone and composed, FlashVLA and the combination; the diffusion model's run also
# carries the autoregressive default (plain) side by side, paired on the same seeds. Calibrations come first (flashvla-calibrate writes
# calibration.json beside each model's weights; both are committed).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=docs/efficientvla
EPISODES=${EPISODES:-200}
EPISODES_AR=${EPISODES_AR:-30}  # the autoregressive default's run: the components that apply
mkdir -p "$OUT"
for model in default default-dit; do
  [[ -f flashvla_ros/models/$model/calibration.json ]] || $BIN/flashvla-calibrate --model $model
done
# default-dit runs 4 actions of each chunk: its config.json recommends it (chunk_steps -1).
$BIN/flashvla-bench --model default-dit --episodes "$EPISODES" \
  --accel none \
  --accel 'efficientvla:preset=,prune_layers=6' \
  --accel 'efficientvla:preset=,mlp_sparsity=0.25' \
  --accel 'efficientvla:preset=,keep_fraction=0.22' \
  --accel 'efficientvla:preset=,cache_interval=5' \
  --accel 'efficientvla:preset=,keep_fraction=0.22,selection=random' \
  --accel efficientvla \
  --accel flashvla \
  --accel 'efficientvla+flashvla' \
  --accel 'efficientvla+flashvla:reuse' \
  --accel 'default@none' \
  --json "$OUT/default-dit.json" --plot "$OUT/default-dit.png" --markdown "$OUT/default-dit.md"
$BIN/flashvla-bench --model default --episodes "$EPISODES_AR" \
  --accel none \
  --accel 'efficientvla:preset=,prune_layers=1' \
  --accel 'efficientvla:preset=,mlp_sparsity=0.25' \
  --accel 'efficientvla:preset=,keep_fraction=0.22' \
  --accel 'efficientvla:preset=,keep_fraction=0.22,selection=random' \
  --accel 'efficientvla:prune_layers=1' \
  --accel flashvla \
  --accel 'efficientvla:prune_layers=1+flashvla' \
  --accel 'efficientvla:prune_layers=1+flashvla:reuse' \
  --json "$OUT/default.json" --plot "$OUT/default.png" --markdown "$OUT/default.md"
