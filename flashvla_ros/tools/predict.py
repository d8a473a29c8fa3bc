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
flashvla-predict: one OpenVLA prediction on an image file, printed as one JSON object.

`--repeat N` runs the same prediction N times and adds the first call's latency and the
steady-state median (calls 2..N): what a warm-up buys, and what `--static-cache` and
`--compile` (the GPU decode path) change.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import statistics
import sys
import time

import cv2
import numpy as np

from ..accel.registry import accelerate, parse_accel
from ..policy import Observation, PolicyError, expand_path, load_policy
from ..policy.presets import model_path
from ..policy.quantize import quantize_arg


def read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PolicyError(f'{path}: cannot read an image from this file')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, type=model_path,
                        help='checkpoint directory, or an embedded model (default, default-dit)')
    parser.add_argument('--image', required=True, type=expand_path,
                        help='image file (PNG, JPEG, ...)')
    parser.add_argument('--instruction', required=True, help='task, e.g. "pick up the cup"')
    parser.add_argument('--unnorm-key', default=None, help='dataset statistics to un-normalise')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--dtype', default='float32', help='float32, bfloat16 or float16')
    parser.add_argument('--quantize', default='none', metavar='FORMAT[:SCOPE]',
                        type=quantize_arg,
                        help='weight-only quantization: none, int8 or int4 (:all also the '
                             'vision towers, the projector and the LM head); needs torchao')
    parser.add_argument('--center-crop', action='store_true', help='90%% centre crop (LIBERO)')
    parser.add_argument('--accel', default='none',
                        help="accelerators, as flashvla-bench's --accel (default: none)")
    parser.add_argument('--static-cache', action='store_true',
                        help='static-shape KV cache, tokens kept on the device (same tokens)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the decode step (CUDA graphs on CUDA)')
    parser.add_argument('--repeat', type=int, default=1,
                        help='predict N times; report the first and the steady-state latency')
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error('--repeat must be >= 1')
    try:
        names, options = parse_accel(args.accel)
        policy = load_policy(args.model, device=args.device, dtype=args.dtype,
                             unnorm_key=args.unnorm_key, center_crop=args.center_crop,
                             static_cache=args.static_cache, compile=args.compile,
                             quantize=args.quantize)
        accelerate(policy, names, options)
        observation = Observation(read_rgb(args.image), args.instruction)
        calls_ms = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            chunk = policy.predict(observation)
            calls_ms.append((time.perf_counter() - start) * 1e3)
            if len(calls_ms) == 1:
                first = chunk
    except (PolicyError, ValueError) as exc:
        print(f'flashvla-predict: error: {exc}', file=sys.stderr)
        return 2
    result = {
        'action': [round(float(v), 6) for v in first.values],
        'token_ids': first.token_ids,
        'timings_ms': {k: round(v, 3) for k, v in first.timings_ms.items()},
        'unnorm_key': policy.unnorm_key,
        'quantize': str(policy.quantization),
    }
    if args.repeat > 1:
        result['latency_ms'] = {'first': round(calls_ms[0], 3),
                                'steady_median': round(statistics.median(calls_ms[1:]), 3),
                                'calls': args.repeat}
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
