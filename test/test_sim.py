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

"""The mock world: determinism, mechanics, success checks and the scripted expert."""

import numpy as np
import pytest

from flashvla_ros.sim.tasks import FAMILIES, Episode, Task, is_success, run_expert
from flashvla_ros.sim.world import GRASP_RADIUS, MAX_STEP, TABLE_SIZE, render, step


def act(dx=0.0, dy=0.0, grip=0.0):
    return np.array([dx, dy, 0, 0, 0, 0, grip])


def test_episodes_are_deterministic_from_the_seed():
    a, b = Episode(11), Episode(11)
    assert a.instruction == b.instruction
    assert np.array_equal(a.observe(), b.observe())
    for _ in range(5):
        a.step(a.expert_action())
        b.step(b.expert_action())
    assert np.array_equal(a.observe(), b.observe())
    assert not np.array_equal(Episode(12).observe(), a.observe())


def test_render_is_an_rgb_frame_of_the_asked_size():
    img = Episode(0, image_size=160).observe()
    assert img.shape == (160, 160, 3) and img.dtype == np.uint8


@pytest.mark.parametrize('family', FAMILIES)
def test_expert_solves_every_family(family):
    results = [run_expert(seed, family) for seed in range(100)]
    assert sum(ok for ok, _ in results) == 100
    assert max(steps for _, steps in results) <= 40  # well inside the 80-step limit


def test_moves_are_clipped_and_stay_on_the_table():
    ep = Episode(0, 'reach')
    start = ep.state.ee.copy()
    ep.step(act(1.0, -1.0))
    assert np.allclose(ep.state.ee - start, [MAX_STEP, -MAX_STEP])
    for _ in range(50):
        ep.step(act(1.0, 1.0))
    assert np.allclose(ep.state.ee, [TABLE_SIZE, TABLE_SIZE])


def test_grasp_carry_release():
    ep = Episode(5, 'pick_place')
    s = ep.state
    block = s.block(ep.task.block)
    s.ee = block.pos + np.array([GRASP_RADIUS * 0.5, 0.0])
    step(s, act(grip=1.0))
    assert s.held is not None and s.blocks[s.held] is block
    step(s, act(0.01, 0.01, 1.0))
    assert np.allclose(block.pos, s.ee)
    step(s, act(grip=0.0))
    assert s.held is None
    before = block.pos.copy()
    step(s, act(0.02, 0.0, 0.0))  # an open gripper hovers over blocks
    assert np.array_equal(block.pos, before)


def test_closed_empty_gripper_pushes():
    ep = Episode(2, 'push')
    s = ep.state
    block = s.block(ep.task.block)
    s.ee = block.pos + np.array([-0.06, 0.0])
    step(s, act(grip=1.0))  # closes away from blocks: nothing grasped
    assert s.held is None
    start = block.pos.copy()
    for _ in range(5):
        step(s, act(0.02, 0.0, 1.0))
    assert block.pos[0] > start[0] + 0.03 and block.pos[1] == pytest.approx(start[1])


def test_success_checks():
    ep = Episode(4, 'pick_place')
    s = ep.state
    block, zone = s.block(ep.task.block), s.zone(ep.task.zone)
    assert not ep.success()
    block.pos = zone.pos.copy()
    assert ep.success()
    s.held = s.blocks.index(block)  # still in the gripper: not placed yet
    assert not ep.success()
    reach = Task('reach', block.colour)
    s.ee = block.pos + 0.019
    assert not is_success(reach, s)
    s.ee = block.pos + 0.01
    assert is_success(reach, s)


BAD_COMMANDS = [np.zeros(6), np.array([np.nan] * 7), np.array([np.inf] + [0] * 6)]


@pytest.mark.parametrize('bad', BAD_COMMANDS)
def test_bad_commands_are_refused(bad):
    with pytest.raises(ValueError, match='6 finite motions and a finite or NaN'):
        step(Episode(0).state, bad)


def test_a_nan_gripper_command_keeps_the_gripper_as_it_is():
    ep = Episode(0)
    ep.state.ee = ep.state.blocks[0].pos.copy()
    step(ep.state, np.array([0.0] * 6 + [1.0]))  # close on the block: grasped
    assert ep.state.gripper_closed and ep.state.held == 0
    step(ep.state, np.array([0.0] * 6 + [np.nan]))  # a hold before any gripper command
    assert ep.state.gripper_closed and ep.state.held == 0


def test_render_shows_the_gripper_state():
    ep = Episode(0)
    open_img = render(ep.state)
    ep.state.gripper_closed = True
    assert (render(ep.state) != open_img).any()
