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
flashvla-demo: the main job, end to end on this machine.

For now: one OpenVLA prediction with the tiny embedded-format model on a generated tabletop
frame. The model is written once by flashvla-make-tiny into `build/openvla-tiny`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from ..policy import load_policy
from .make_tiny import make_tiny

DEFAULT_MODEL = Path('build/openvla-tiny')


def tabletop_frame(seed: int, size: int = 224) -> np.ndarray:
    """Render a top-down table with three coloured blocks (RGB, uint8)."""
    rng = np.random.default_rng(seed)
    frame = np.full((size, size, 3), (186, 160, 128), dtype=np.uint8)
    colours = [(220, 40, 40), (40, 180, 60), (40, 80, 220)]
    for colour in colours:
        x, y = rng.integers(30, size - 30, size=2)
        cv2.rectangle(frame, (int(x) - 12, int(y) - 12), (int(x) + 12, int(y) + 12), colour, -1)
    cv2.circle(frame, (size // 2, size - 30), 10, (30, 30, 30), -1)
    return frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--model', type=Path, default=None, help='checkpoint (default: tiny)')
    parser.add_argument('--instruction', default='pick up the red block')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    model = args.model
    if model is None:
        model = DEFAULT_MODEL
        if not (model / 'config.json').is_file():
            make_tiny(model, seed=0)
            print(f'wrote the tiny model to {model}')
    policy = load_policy(str(model))
    frame = tabletop_frame(args.seed)
    policy.predict(frame, args.instruction)  # warm-up: first call pays one-off allocations
    action = policy.predict(frame, args.instruction)
    print(f'instruction: {args.instruction!r} on a generated {frame.shape[1]}x{frame.shape[0]} '
          f'tabletop frame, model {model}')
    print(json.dumps({
        'action': [round(float(v), 5) for v in action.values],
        'token_ids': action.token_ids,
        'timings_ms': {k: round(v, 2) for k, v in action.timings_ms.items()},
    }, indent=1))


if __name__ == '__main__':
    main()
