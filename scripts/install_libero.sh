#!/usr/bin/env bash
# The libero extra into a venv, offline but for the package registry (docs/LIBERO.md):
#   scripts/install_libero.sh [PYTHON]      (default: .venv/bin/python)
# LIBERO's code (hf-libero), robosuite and bddl go in without their declared requirements:
# those bring opencv-python (the same cv2 package as the project's opencv-python-headless),
# wandb, robomimic, and a CUDA torch, and the simulation imports none of them. What it does
# import is the `libero` extra of setup.py, pinned in constraints.txt with the three.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
"$py" -m pip install -q -c constraints.txt -e '.[libero]'
"$py" -m pip install -q --no-deps -c constraints.txt hf-libero robosuite bddl
# A check that needs no display: LIBERO imports, and its config is written without a prompt.
MUJOCO_GL=${MUJOCO_GL:-egl} "$py" -c 'from flashvla_ros.sim.libero import LiberoWorld; print("libero: ready,", LiberoWorld("libero_object").n_tasks, "tasks in libero_object")'
