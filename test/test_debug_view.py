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

"""The debug view: dropped tokens darkened, motion drawn, fresh/reused/hold marked (no ROS)."""

import numpy as np

from flashvla_ros.viz.debug_view import FRESH, HOLD, REUSED, render_debug

GREY = np.full((224, 224, 3), 200, np.uint8)
MOVE = np.array([0.05, 0.0, 0, 0, 0, 0, 1.0])  # full step to the right, gripper closed


def test_dropped_tokens_are_darkened_kept_ones_are_not():
    kept = tuple(range(0, 64, 2))  # every other token of an 8x8 grid
    img = render_debug(GREY, np.zeros(7), kind='action', kept=kept, tokens=64)
    cell = 224 // 8
    centres = [(r * cell + cell // 2, c * cell + cell // 2) for r in range(8) for c in range(8)]
    values = np.array([img[y, x, 0] for y, x in centres])[:56]  # the last row holds the label
    assert (values[[i for i in kept if i < 56]] == 200).all()
    assert (values[[i for i in range(56) if i not in kept]] == int(200 * 0.35)).all()


def test_border_tells_fresh_reused_and_hold_apart():
    for kind, reused, colour in (('action', False, FRESH), ('action', True, REUSED),
                                 ('hold', False, HOLD)):
        img = render_debug(GREY, MOVE if kind == 'action' else np.zeros(7), kind=kind,
                           reused=reused)
        assert tuple(img[1, 112]) == colour


def test_motion_arrow_points_along_the_command():
    img = render_debug(GREY, MOVE, kind='action', max_step=0.05)
    arrow = (np.abs(img.astype(int) - np.array(FRESH)).sum(axis=2) < 30)
    arrow[:8], arrow[-30:], arrow[:, :8], arrow[:, -8:] = False, False, False, False  # border
    ys, xs = np.nonzero(arrow)
    assert xs.min() >= 110 and xs.max() > 200  # from the centre to the right edge
    assert abs(ys.mean() - 112) < 3


def test_small_frames_are_enlarged_and_nan_gripper_is_shown_as_none():
    img = render_debug(np.zeros((48, 64, 3), np.uint8), np.array([0.0] * 6 + [np.nan]),
                       kind='hold')
    assert img.shape == (224, 299, 3)
