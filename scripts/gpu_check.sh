#!/usr/bin/env bash
# The GPU check (issue 25), one run on one CUDA GPU, under 8 minutes on an H200: 7B-shape step
# times of the plain model, of each configuration with a trained model's decisions replayed
# (docs/latency/decisions_*.json, recorded by flashvla-bench --decisions on the embedded
# models), and of each accelerator deciding nothing; the floor estimate and the targets.
# Writes docs/latency/gpu.json and the GPU table of README.md. On CPU: TINY=1 (a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
make -s .venv/.installed
args=(--json "${JSON:-docs/latency/gpu.json}" --readme README.md --path "${DECODE_PATH:-compiled}")
if [[ -n "${TINY:-}" ]]; then
  args+=(--tiny --device cpu --dtype float32 --steps 8)
else
  args+=(--device cuda --dtype bfloat16)
fi
timeout "${LIMIT_S:-480}" .venv/bin/python -m flashvla_ros.bench.gpu_check "${args[@]}"
