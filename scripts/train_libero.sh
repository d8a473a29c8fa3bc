#!/usr/bin/env bash
# Train the embedded LIBERO policy (issue 36) on the scripted expert's demonstrations of
# LIBERO-Object and LIBERO-Spatial, one model for both, then calibrate and bench it. Needs the
# libero extra (make libero). Every stage is resumable: run the script again after an
# interruption; finished stages are skipped or return at once.
#
#  1. demonstrations (flashvla-libero-data, data/libero/<suite>/task<k>.npz): 50 successful
#     episodes per task; Spatial's task 4 (the bowl in the drawer) is left out, the expert
#     never solves it. A generator already running for a suite is waited for, not doubled.
#  2. the frame cache (build/libero_frames): every step's policy frame drawn once, render
#     openvla (the bench's default), one process per suite (about 130 ms a frame on one
#     core: about 1.7 h for a suite's 48,000 steps, both suites side by side).
#  3. base: the default-dit shape (12-layer Llama, width 128, 64 visual tokens, DiT head 2 x 48,
#     16-action chunks), vision towers and decoder layers from flashvla_ros/models/default-dit
#     (its embeddings stay new: LIBERO's instructions have their own tokenizer), a fresh DiT
#     head; chunks labelled by the next steps' commands.
#  4. layerdrop: continues base with LayerDrop 0.3, so that the model stands EfficientVLA's
#     layer pruning, as default-dit's last run.
#  5. flashvla-calibrate on the cached LIBERO frames, then flashvla-bench on each suite.
#
# Knobs (environment): THREADS (torch threads; 2 on an idle 2-core machine, 1 while other jobs
# run: a resumed run must keep the value it started with), STEPS (base steps, default 8000),
# LAYERDROP_STEPS (2000), INIT_STATES (bench: each task's fixed initial states, default 0:10;
# OpenVLA's protocol is 0:50), ACCELS (bench configurations, default none; e.g. "none
# flashvla efficientvla"), SUITES.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/libero}
BIN=.venv/bin
SUITES=${SUITES:-libero_object libero_spatial}
THREADS=${THREADS:-2}
STEPS=${STEPS:-8000}
LAYERDROP_STEPS=${LAYERDROP_STEPS:-2000}
INIT_STATES=${INIT_STATES:-0:10}
ACCELS=${ACCELS:-none}
DATA=data/libero
FRAMES=build/libero_frames
export MUJOCO_GL=${MUJOCO_GL:-egl}
MODEL=(--head diffusion --layers 12 --intermediate 344 --dit-hidden 48 --dit-depth 2
       --dit-heads 4 --noise-draws 32 --batch 16 --seed 0 --chunk-labels next
       --threads "$THREADS" --save-every 250)
finished() { [[ -f "$1/model.safetensors" && ! -f "$1/train_state.pt" ]]; }
tasks_of() { [[ $1 == libero_spatial ]] && echo 0,1,2,3,5,6,7,8,9 || echo 0,1,2,3,4,5,6,7,8,9; }
mkdir -p "$OUT" "$FRAMES"

# 1 and 2, per suite in the background (one core each): demonstrations, then their frames.
pids=()
for suite in $SUITES; do
  (
    while pgrep -f "flashvla-libero-data --suite $suite( |$)" > /dev/null; do
      echo "$suite: waiting for the running flashvla-libero-data"; sleep 60
    done
    nice -n 19 $BIN/flashvla-libero-data --suite "$suite" --tasks "$(tasks_of "$suite")" \
      --per-task 50 --out "$DATA"
    while pgrep -f "flashvla_ros.train.libero_frames --suite $suite( |$)" > /dev/null; do
      echo "$suite: waiting for the running frame cache"; sleep 60
    done
    nice -n 19 $BIN/python -m flashvla_ros.train.libero_frames --suite "$suite" \
      --data "$DATA" --out "$FRAMES"
  ) > "$OUT/prepare_$suite.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
tail -n 1 "$OUT"/prepare_*.log

# 3 and 4. The episodes each run trains on are fixed in its libero_data.json (layerdrop
# takes base's), so a cache that grows later changes neither the data nor the normalisation.
finished "$OUT/base" || $BIN/flashvla-train --data "$DATA" --libero-frames "$FRAMES" \
  --out "$OUT/base" "${MODEL[@]}" --init-vision flashvla_ros/models/default-dit \
  --grow-llm flashvla_ros/models/default-dit --lr 0.001 --warmup 150 --steps "$STEPS"
finished "$OUT/layerdrop" || $BIN/flashvla-train --data "$DATA" --libero-frames "$FRAMES" \
  --out "$OUT/layerdrop" --init "$OUT/base" "${MODEL[@]}" --lr 0.0003 --warmup 100 \
  --steps "$LAYERDROP_STEPS" --layer-drop 0.3

# 5. Calibration on LIBERO frames (one episode per task, every 4th step), then the bench:
# OpenVLA's protocol, the bench's default render, 4 actions of each 16-action chunk (what
# default-dit measured best; the model's config.json carries no recommendation yet).
$BIN/flashvla-calibrate --model "$OUT/layerdrop" --libero "${SUITES// /,}"
for suite in $SUITES; do
  [[ -f "$OUT/bench_$suite.json" ]] || $BIN/flashvla-bench --model "$OUT/layerdrop" \
    --world libero --suite "$suite" --init-states "$INIT_STATES" --chunk-steps 4 \
    $(printf -- '--accel %s ' $ACCELS) --json "$OUT/bench_$suite.json"
done
echo "copy $OUT/layerdrop (less aux_heads.pt, train_log.json, loss.png, libero_data.json) to" \
     "flashvla_ros/models/libero; the logs and curves of base and layerdrop, and the bench" \
     "reports, go to docs/training/libero/"
