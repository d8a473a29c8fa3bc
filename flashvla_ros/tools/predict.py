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

"""flashvla-predict: one OpenVLA prediction on an image file, printed as one JSON object."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys

import cv2
import numpy as np

from ..policy import PolicyError, expand_path, load_policy


def read_rgb(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PolicyError(f'{path}: cannot read an image from this file')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--model', required=True, type=expand_path,
                        help='checkpoint directory (HF layout)')
    parser.add_argument('--image', required=True, type=expand_path,
                        help='image file (PNG, JPEG, ...)')
    parser.add_argument('--instruction', required=True, help='task, e.g. "pick up the cup"')
    parser.add_argument('--unnorm-key', default=None, help='dataset statistics to un-normalise')
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    parser.add_argument('--dtype', default='float32', help='float32, bfloat16 or float16')
    parser.add_argument('--center-crop', action='store_true', help='90%% centre crop (LIBERO)')
    args = parser.parse_args(argv)
    try:
        policy = load_policy(args.model, device=args.device, dtype=args.dtype,
                             unnorm_key=args.unnorm_key, center_crop=args.center_crop)
        action = policy.predict(read_rgb(args.image), args.instruction)
    except (PolicyError, ValueError) as exc:
        print(f'flashvla-predict: error: {exc}', file=sys.stderr)
        return 2
    print(json.dumps({
        'action': [round(float(v), 6) for v in action.values],
        'token_ids': action.token_ids,
        'timings_ms': {k: round(v, 3) for k, v in action.timings_ms.items()},
        'unnorm_key': policy.unnorm_key,
    }))
    return 0


if __name__ == '__main__':
    sys.exit(main())
