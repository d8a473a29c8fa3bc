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
The picture a user tuning the accelerator wants (`~/debug_image`, rqt_image_view, Foxglove).

The camera frame the command came from, with the visual tokens the accelerator dropped darkened
(the model sees the frame resized to a square, so the token grid spans the whole frame), the
commanded motion drawn as an arrow from the centre (x to the right, y up, as in the mock world's
top-down camera), and a coloured border: green for a freshly inferred action, orange for a
reused one, red for a hold.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ..policy.actions import GRIPPER, XY

FRESH, REUSED, HOLD = (60, 200, 60), (255, 150, 0), (230, 40, 40)  # RGB
DROPPED_SHADE = 0.35  # brightness left on dropped tokens


def render_debug(rgb: np.ndarray, command: np.ndarray, *, kind: str, reused: bool = False,
                 kept: tuple[int, ...] | None = None, tokens: int = 0,
                 max_step: float = 0.05, min_side: int = 224) -> np.ndarray:
    """
    Draw the debug view of one command; return an HxWx3 uint8 RGB image.

    `kind` is the tick's ('action' or 'hold'); `kept` the indices of the visual tokens the
    model kept out of `tokens` (a square grid), None when all were kept; `max_step` the motion
    that draws as an arrow to the frame's edge.
    """
    scale = max(1.0, min_side / min(rgb.shape[:2]))
    img = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) \
        if scale > 1 else rgb.copy()
    h, w = img.shape[:2]
    grid = math.isqrt(tokens)
    if kept is not None and grid * grid == tokens and grid > 0:
        mask = np.zeros(tokens, bool)
        mask[list(kept)] = True
        cells = cv2.resize(mask.reshape(grid, grid).astype(np.uint8), (w, h),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
        img[~cells] = (img[~cells] * DROPPED_SHADE).astype(np.uint8)
    colour = HOLD if kind == 'hold' else REUSED if reused else FRESH
    centre = np.array([w / 2, h / 2])
    motion = np.nan_to_num(np.asarray(command[XY], float))
    tip = centre + np.array([motion[0], -motion[1]]) / max_step * min(w, h) / 2
    if np.abs(tip - centre).max() >= 1:
        cv2.arrowedLine(img, tuple(int(v) for v in centre), tuple(int(v) for v in tip), colour,
                        2, cv2.LINE_AA, tipLength=0.25)
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), colour, 4)
    gripper = command[GRIPPER]
    label = 'HOLD' if kind == 'hold' else 'REUSED' if reused else 'inferred'
    label += ' | gripper ' + ('-' if np.isnan(gripper) else f'{gripper:.2f}')
    if kept is not None:
        label += f' | tokens {len(kept)}/{tokens}'
    cv2.putText(img, label, (6, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return img
