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
The node path sends LIBERO's controller what OpenVLA's evaluation sends it.

Node path: a LIBERO checkpoint's raw action -> `SafetyLimits.apply` with config/libero.yaml's
scale and limits (metres, radians) -> libero_world's `LIBERO_COMMAND.from_metres` ->
`LiberoEpisode.libero_action` (the env's action). OpenVLA's evaluation: the raw action, its
gripper binarised and inverted (`libero_gripper(g, open_is_one=True)`). Both then pass the
OSC_POSE controller's own input clip to [-1, 1]. No LIBERO needed: `libero_action` runs on an
episode without an env.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flashvla_ros.control.safety import SafetyLimits
from flashvla_ros.params import load_yaml
from flashvla_ros.policy.actions import GRIPPER, MOTION
from flashvla_ros.sim.libero import LIBERO_COMMAND, LiberoEpisode
from flashvla_ros.sim.openvla_protocol import libero_gripper

CONFIG = Path(__file__).resolve().parent.parent / 'config' / 'libero.yaml'


@pytest.fixture(scope='module')
def limits() -> SafetyLimits:
    config = load_yaml(CONFIG)
    return SafetyLimits.from_lists(config.action_scale, config.action_lower,
                                   config.action_upper)


def episode(held_gripper: float = -1.0) -> LiberoEpisode:
    """Return an episode with no env: enough for `libero_action`."""
    ep = LiberoEpisode.__new__(LiberoEpisode)
    ep.world = SimpleNamespace(command=LIBERO_COMMAND)
    ep._gripper = held_gripper
    return ep


def controller_input(action: np.ndarray) -> np.ndarray:
    """Return what OSC_POSE and the gripper controller act on: their inputs clipped to [-1, 1]."""
    return np.clip(action, -1.0, 1.0)


def node_path(raw: np.ndarray, limits: SafetyLimits) -> np.ndarray:
    command, _ = limits.apply(raw)
    return episode().libero_action(LIBERO_COMMAND.from_metres(command))


def openvla_path(raw: np.ndarray) -> np.ndarray:
    action = np.array(raw, dtype=np.float64)
    action[GRIPPER] = libero_gripper(raw[GRIPPER], open_is_one=True)
    return action


def raw_actions(count: int = 5000) -> np.ndarray:
    rng = np.random.default_rng(0)
    raw = np.empty((count, 7))
    raw[:, MOTION] = rng.uniform(-3.0, 3.0, (count, 6))  # in and far beyond [-1, 1]
    raw[: count // 2, MOTION] = rng.uniform(-1.0, 1.0, (count // 2, 6))
    raw[:, GRIPPER] = rng.uniform(-0.5, 1.5, count)
    raw[::4, GRIPPER] = rng.choice([0.0, 0.5, 1.0], len(raw[::4]))  # both values and the tie
    raw[1::97, MOTION] = rng.choice([-1.0, 1.0], (len(raw[1::97]), 6))  # exactly at the clip
    return raw


def test_the_config_scales_the_controller_inputs_into_metres_and_radians(limits):
    assert limits.scale.tolist() == [0.05] * 3 + [0.5] * 3 + [1.0]
    assert limits.upper.tolist() == [0.05] * 3 + [0.5] * 3 + [1.0]
    assert limits.lower.tolist() == [-0.05] * 3 + [-0.5] * 3 + [0.0]
    assert load_yaml(CONFIG).control_rate_hz == 20.0  # LIBERO's control_freq
    assert load_yaml(CONFIG).center_crop is False  # libero_world's frame is already cropped


def test_node_path_equals_openvla_evaluation(limits):
    raw = raw_actions()
    node = np.array([node_path(r, limits) for r in raw])
    openvla = np.array([openvla_path(r) for r in raw])
    # The node's clamp is the controller's clip: its action needs no further clipping.
    assert np.abs(node[:, MOTION]).max() <= 1.0 + 1e-12
    np.testing.assert_allclose(controller_input(node), controller_input(openvla), rtol=0,
                               atol=1e-12)
    assert set(node[:, GRIPPER]) == {-1.0, 0.0, 1.0}
    assert (node[:, GRIPPER] == openvla[:, GRIPPER]).all()


def test_gripper_convention(limits):
    zero = np.zeros(6)
    assert node_path(np.array([*zero, 1.0]), limits)[GRIPPER] == -1.0  # 1 opens: LIBERO's -1
    assert node_path(np.array([*zero, 0.0]), limits)[GRIPPER] == 1.0  # 0 closes: LIBERO's +1
    assert node_path(np.array([*zero, 0.5]), limits)[GRIPPER] == 0.0  # the tie holds the fingers


def test_a_hold_keeps_the_gripper_and_stays_still():
    hold = np.array([0.0] * 6 + [np.nan])  # SafetyLimits.hold before or after a gripper command
    for held in (-1.0, 1.0):
        action = episode(held).libero_action(LIBERO_COMMAND.from_metres(hold))
        assert action.tolist() == [0.0] * 6 + [held]
