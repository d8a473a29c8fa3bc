# Copyright 2026 flashvla_ros contributors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
What a batch of robots costs against one robot, per stage, in one run (random weights).

    python -m flashvla_ros.bench.batching --shapes 7b --device cuda --dtype bfloat16 \
        --batches 1 8 --json docs/multi_robot/gpu.json      # PART=batch scripts/gpu_check.sh

Each batch size B runs `predict_batch` on B robots (each its own `RobotPolicy`) with the same
frames and instruction, so every row has the prompt length the others have (robots with other
prompt lengths run as further batches: docs/MULTI_ROBOT.md). The plain model (no accelerator:
random weights decide nothing useful) on the batched path, the append KV cache, eager. Per
stage: the median over `--steps` forwards after two warm-up batches; then each size's total
against batch 1, and the issue's target (a batch of 8 at most 1.6x a batch of 1 on CUDA).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

import numpy as np
import torch

from ..policy.openvla import OpenVLAPolicy
from ..policy.step import Observation
from .latency import SHAPES, STAGES, build_model, frames

TARGET = (8, 1.6)  # a batch of 8 robots costs at most 1.6x a batch of 1 (CUDA, 7B shapes)


def measure_batches(shapes: str = 'tiny', device: str = 'cpu', dtype: str = 'float32',
                    batches: tuple[int, ...] = (1, 8), steps: int = 20, log=print) -> dict:
    """Time `predict_batch` at each batch size; return the report (see the module doc)."""
    model, tokenizer = build_model(shapes, device, getattr(torch, dtype))
    policy = OpenVLAPolicy(model, tokenizer)
    policy.serve(max(batches))
    shots = frames(steps)
    instruction = shots[0].instruction
    report: dict = {'device': torch.cuda.get_device_name() if device.startswith('cuda')
                    else 'cpu', 'dtype': dtype, 'shapes': shapes, 'steps': steps,
                    'torch': torch.__version__, 'rows': []}
    for size in batches:
        robots = [policy.for_robot() for _ in range(size)]
        for shot in shots[:2]:  # warm-up: allocations, kernels picked for this shape
            policy.predict_batch([(r, Observation(shot.rgb, instruction)) for r in robots])
        per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
        for shot in shots:
            results = policy.predict_batch([(r, Observation(shot.rgb, instruction))
                                            for r in robots])
            for r in results:
                if isinstance(r, Exception):
                    raise r
            for s in STAGES:
                per_stage[s].append(results[0].info.timings_ms.get(s, 0.0))
        row = {'batch': size, **{f'{s}_ms': float(np.median(v)) for s, v in per_stage.items()}}
        report['rows'].append(row)
        log(f'batch {size}: ' + ', '.join(f'{s} {row[f"{s}_ms"]:.1f}' for s in STAGES) + ' ms')
    one = report['rows'][0]
    for row in report['rows']:
        row['vs_batch_1'] = {s: row[f'{s}_ms'] / one[f'{s}_ms'] if one[f'{s}_ms'] else None
                             for s in STAGES}
        row['robot_steps_per_s'] = 1e3 * row['batch'] / row['total_ms']
    eight = next((r for r in report['rows'] if r['batch'] == TARGET[0]), None)
    if eight is not None and one['batch'] == 1:
        ratio = eight['vs_batch_1']['total']
        report['target'] = {'what': f'batch {TARGET[0]} total <= {TARGET[1]}x batch 1',
                            'ratio': ratio, 'met': ratio <= TARGET[1]}
        log(f'batch {TARGET[0]} costs {ratio:.2f}x batch 1 (target <= {TARGET[1]}x): '
            f'{"met" if ratio <= TARGET[1] else "MISSED"}')
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shapes', default='tiny', choices=sorted(SHAPES))
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--steps', type=int, default=20)
    parser.add_argument('--json', help='write the report here')
    args = parser.parse_args(argv)
    report = measure_batches(args.shapes, args.device, args.dtype, tuple(args.batches),
                             args.steps)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
