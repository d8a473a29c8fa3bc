#!/usr/bin/env bash
# The GPU check (issue 25), one run on one CUDA GPU, under 8 minutes on an H200: 7B-shape step
# times of the plain model, of each configuration with a trained model's decisions replayed
# (docs/latency/decisions_*.json, recorded by flashvla-bench --decisions on the embedded
# models), and of each accelerator deciding nothing; the floor estimate, the targets and a
# Jetson estimate. Writes docs/latency/gpu.json and the GPU table of README.md.
#
# It needs only a Python with torch, numpy, opencv, pyyaml, safetensors and tokenizers (a
# CUDA machine's image usually has them; nothing is installed): the package runs from this
# checkout. PYTHON picks the interpreter (default: .venv's if there is one, else python3).
# TINY=1 is a dry run on CPU at tiny shapes (what test/test_gpu_check.py runs in-process); it
# writes /tmp/gpu_check_tiny.json and leaves the README alone.
# The report is written after each head, so a run cut off by LIMIT_S keeps what it measured.
# Last (issue 26), the plain OpenVLA-7B shapes with the decoder in each of QUANTIZE (default
# "int8 int4"; empty: none): torchao must be importable, e.g. from TORCHAO_PATH (a folder
# holding the torchao package, such as a venv's site-packages carried to the GPU machine);
# without it those rows are refused in the report, with the reason. PART=quantize runs only
# those rows and the bf16 plain row they compare with (a few minutes), into
# docs/latency/gpu_quantize.json, leaving gpu.json and the README alone.
# PART=batch (issue 27): what a batch of robots costs against one, per stage, at OpenVLA-7B
# and CogACT-7B shapes (batches 1 2 4 8), into docs/multi_robot/gpu_<shapes>.json.
# PART=libero (issue 34): one LIBERO suite under OpenVLA's protocol with a published LIBERO
# fine-tune, plain and FlashVLA, into docs/libero/gpu_<suite>.json. It needs the libero extra
# (make libero) and the checkpoint in LIBERO_CHECKPOINT (e.g. a download of
# openvla/openvla-7b-finetuned-libero-spatial); LIBERO_SUITE (default libero_spatial, matching
# the checkpoint) and LIBERO_STATES (default 0:50). It has not been run here: no GPU session
# has had the 15 GB checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
if [[ "${PART:-}" == libero ]]; then
  suite=${LIBERO_SUITE:-libero_spatial}
  : "${LIBERO_CHECKPOINT:?set LIBERO_CHECKPOINT to a LIBERO fine-tune of OpenVLA (docs/LIBERO.md)}"
  PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MUJOCO_GL=${MUJOCO_GL:-egl} \
    timeout "${LIMIT_S:-480}" "$python" -m flashvla_ros.bench.run --world libero \
    --suite "$suite" --init-states "${LIBERO_STATES:-0:50}" --center-crop \
    --model "$LIBERO_CHECKPOINT" --device cuda --dtype bfloat16 \
    --accel none --accel flashvla --json "docs/libero/gpu_$suite.json"
  exit 0
fi
if [[ "${PART:-}" == batch ]]; then
  for shapes in 7b cogact-7b; do
    PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 timeout "${LIMIT_S:-480}" \
      "$python" -m flashvla_ros.bench.batching --shapes "$shapes" --device cuda \
      --dtype bfloat16 --batches 1 2 4 8 --json "docs/multi_robot/gpu_$shapes.json"
  done
  exit 0
fi
args=(--path "${DECODE_PATH:-compiled}")
if [[ -n "${TINY:-}" ]]; then  # never over the real figures
  args+=(--tiny --device cpu --dtype float32 --steps 8 --json "${JSON:-/tmp/gpu_check_tiny.json}")
elif [[ "${PART:-}" == quantize ]]; then
  args+=(--device cuda --dtype bfloat16 --heads openvla-7b --plain-only
         --quantize ${QUANTIZE-int8 int4} --json "${JSON:-docs/latency/gpu_quantize.json}")
else
  args+=(--device cuda --dtype bfloat16 --json "${JSON:-docs/latency/gpu.json}" --readme README.md
         --quantize ${QUANTIZE-int8 int4})
fi
PYTHONPATH=$PWD${TORCHAO_PATH:+:$TORCHAO_PATH}${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 \
  timeout "${LIMIT_S:-480}" "$python" -m flashvla_ros.bench.gpu_check "${args[@]}"
