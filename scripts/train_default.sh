#!/usr/bin/env bash
# Reproduce the embedded default policy (flashvla_ros/models/default) from scratch:
# data from the scripted expert with noise injection, then training (about 30 min on 2 CPU
# cores), then the held-out closed-loop benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/default}
.venv/bin/flashvla-dataset --out "$OUT/data" --episodes 4000 --seed 0
.venv/bin/flashvla-train --data "$OUT/data" --out "$OUT/model" --steps 5000 --seed 0
.venv/bin/flashvla-bench --model "$OUT/model" --accel none --episodes 200
