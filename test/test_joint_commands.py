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

"""Joint commands: IK over a chunk, holds at the measured positions, staleness, refusals."""

import re
import sys

import numpy as np
import pytest

from flashvla_ros.control.joint_commands import JointCommander, require_pinocchio
from flashvla_ros.control.kinematics import INSTALL_HINT, ArmKinematics, KinematicsError
from flashvla_ros.params import PARAMS, build_config, check_config
from flashvla_ros.policy.config import JOINT_POSITION, _action_space
from flashvla_ros.policy.errors import CheckpointError
from flashvla_ros.ros.robot_io import joint_commander, trajectory
from flashvla_ros.sim.tasks import GANTRY_JOINTS, MockWorld

pytest.importorskip('pinocchio')

URDF = MockWorld().robot_description()
PERIOD = 0.1
NAMES = list(GANTRY_JOINTS)  # gantry_x, gantry_y, gripper: what the mock world publishes


def commander(**kwargs) -> JointCommander:
    kinematics = ArmKinematics.from_urdf(URDF, 'tool', command_frame='base_link')
    return JointCommander(kinematics, PERIOD, max_age_s=0.5, **kwargs)


def test_ik_path_over_a_chunk_from_the_measured_joints():
    c = commander()
    assert c.names == ['gantry_x', 'gantry_y']
    assert c.observe(NAMES, [0.2, 0.3, 0.0], now=10.0) == ''
    chunk = [np.array([0.02, -0.01, 0.03, 0.1, 0.0, 0.0, 1.0])] * 3
    t = c.targets(chunk)
    assert t.names == ['gantry_x', 'gantry_y'] and not t.hold
    # The first from the measured joints, each later one from the previous target; the
    # z and rotation parts are out of this arm's reach and move nothing.
    np.testing.assert_allclose(t.points, [[0.22, 0.29], [0.24, 0.28], [0.26, 0.27]], atol=1e-6)
    # Targets never leave the URDF's limits (table edge at 0.5).
    c.observe(NAMES, [0.49, 0.01, 0.0], now=10.0)
    t = c.targets([np.array([0.05, -0.05, 0, 0, 0, 0, 0.0])] * 4)
    assert (t.points >= 0.0).all() and (t.points <= 0.5).all()
    np.testing.assert_allclose(t.points[-1], [0.5, 0.0], atol=1e-9)
    assert len(c.target_ms) == 2


def test_hold_is_one_point_at_the_measured_positions_and_keeps_the_gripper():
    c = commander(gripper_joints=['gripper'], gripper_positions=(0.0, 0.8))
    assert c.hold(np.nan) is None  # no joint state yet: nothing to hold at
    c.observe(NAMES, [0.1, 0.4, 0.3], now=1.0)
    h = c.hold(np.nan)  # no gripper command sent yet: the gripper stays as measured
    assert h.hold and h.names == ['gantry_x', 'gantry_y', 'gripper']
    np.testing.assert_array_equal(h.points, [[0.1, 0.4, 0.3]])
    np.testing.assert_array_equal(c.hold(1.0).points, [[0.1, 0.4, 0.8]])  # the last command
    t = c.targets([np.array([0.01, 0, 0, 0, 0, 0, 0.5])])
    np.testing.assert_allclose(t.points, [[0.11, 0.4, 0.4]])
    msg = trajectory(h, stamp=None, period=PERIOD)
    assert len(msg.points) == 1 and msg.points[0].time_from_start.sec == 0 \
        and msg.points[0].time_from_start.nanosec == 0
    msg = trajectory(c.targets([np.zeros(7)] * 3), stamp=None, period=PERIOD)
    assert [p.time_from_start.nanosec for p in msg.points] == [100_000_000, 200_000_000,
                                                               300_000_000]


def test_stale_missing_or_refused_joint_states_are_faults():
    c = commander()
    assert c.fault(0.0) == 'no joint_states received yet'
    assert 'lacks chain joint(s) [\'gantry_y\']' in c.observe(['gantry_x'], [0.1], now=0.0)
    assert 'lacks chain joint' in c.fault(0.0)
    c.observe(NAMES, [0.1, 0.1, 0.0], now=1.0)
    assert c.fault(1.4) == ''
    assert c.fault(1.6).startswith('joint_states stale: no valid joint state for 0.60 s '
                                   '(max_joint_state_age_s 0.5)')
    # A state that is refused never refreshes: stale, and the reason names the refusal.
    c.observe(['gantry_x', 'gantry_y'], [0.1, float('nan')], now=1.6)
    assert 'stale' in c.fault(1.7) and 'non-finite' in c.fault(1.7)
    with pytest.raises(KinematicsError):
        commander().targets([np.zeros(7)])


def test_refusals_name_the_reason():
    config = build_config({'outputs': ['trajectory'], 'ee_frame': 'tool'})
    with pytest.raises(KinematicsError, match='does not load'):
        joint_commander('<robot name="x"><link name="a"/>', config)
    bad_frame = build_config({'outputs': ['trajectory'], 'ee_frame': 'flange'})
    with pytest.raises(KinematicsError, match="ee_frame 'flange' is not a frame"):
        joint_commander(URDF, bad_frame)
    bad_command = build_config({'outputs': ['trajectory'], 'ee_frame': 'tool',
                                'command_frame_id': 'world'})
    with pytest.raises(KinematicsError, match="command_frame 'world' is not a frame"):
        joint_commander(URDF, bad_command)
    with pytest.raises(KinematicsError, match='are joints of the arm chain'):
        commander(gripper_joints=['gantry_x'])
    c = commander(gripper_joints=['finger_joint'])
    assert 'lacks gripper joint(s)' in c.observe(NAMES, [0.1, 0.1, 0.0], now=0.0)
    # The parameters: joint outputs need the tool frame.
    values = {p.name: p.default for p in PARAMS}
    values['outputs'] = ['joint_positions', 'gripper']
    assert 'set ee_frame' in check_config(values)


def test_no_pinocchio_refuses_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pinocchio', None)  # import pinocchio raises
    with pytest.raises(ImportError, match='pip install'):
        require_pinocchio()
    config = build_config({'outputs': ['trajectory'], 'ee_frame': 'tool'})
    with pytest.raises(ImportError) as error:
        joint_commander(URDF, config)
    assert INSTALL_HINT in str(error.value)


def test_joint_position_models_pass_through_by_name_within_limits():
    # The model names its dimensions in its own order; targets come in the chain's.
    c = commander(action_space=JOINT_POSITION, action_joints=['gantry_y', 'gantry_x'])
    c.observe(NAMES, [0.2, 0.3, 0.0], now=0.0)
    t = c.targets([np.array([0.31, 0.25, 0, 0, 0, 0, 1.0]),
                   np.array([0.9, 0.25, 0, 0, 0, 0, 1.0])])
    assert t.names == ['gantry_x', 'gantry_y']
    # gantry_x: 0.25 (reached), then 0.25 again; gantry_y: 0.31 (reached), then 0.9 is past
    # its limit and more than one period's reach (1 m/s * 0.1 s): 0.41.
    np.testing.assert_allclose(t.points, [[0.25, 0.31], [0.25, 0.41]])
    np.testing.assert_array_equal(c.hold(np.nan).points, [[0.2, 0.3]])
    with pytest.raises(KinematicsError, match="are not the chain's joints"):
        commander(action_space=JOINT_POSITION, action_joints=['gantry_x'])


@pytest.mark.parametrize('raw, reason', [
    ({'action_space': 'joint_velocity'}, "supported: ['ee_delta', 'joint_position']"),
    ({'action_space': 'joint_position'}, 'needs "joint_names"'),
    ({'action_space': 'joint_position', 'joint_names': ['a', 'a']}, 'distinct joints'),
])
def test_checkpoint_action_space_is_checked(raw, reason):
    with pytest.raises(CheckpointError, match=re.escape(reason)):
        _action_space(raw, 'config.json')
    assert _action_space({}, 'config.json') == ('ee_delta', ())
    assert _action_space({'action_space': 'joint_position', 'joint_names': ['j1', 'j2']},
                         'config.json') == ('joint_position', ('j1', 'j2'))


def test_the_mock_gantry_steps_towards_joint_targets_by_name():
    from flashvla_ros.sim.world import MAX_STEP
    from flashvla_ros.sim.worlds import EpisodeSpec
    episode = MockWorld().open(EpisodeSpec('reach', 5))
    start = episode.joint_state().positions
    near = start[:2] + np.array([0.01, -0.005])
    episode.step_joints(['gantry_y', 'gantry_x'], np.array([near[1], near[0]]))  # any order
    np.testing.assert_allclose(episode.joint_state().positions, [*near, start[2]])
    far = near + np.array([0.3, 0.0])  # a controller's reach per step: MAX_STEP
    episode.step_joints(['gantry_x', 'gantry_y', 'gripper'], np.array([*far, 1.0]))
    np.testing.assert_allclose(episode.joint_state().positions, [near[0] + MAX_STEP, near[1], 1])
    episode.step_joints(['gantry_x', 'gantry_y', 'gripper'], np.array([*far, np.nan]))
    assert episode.joint_state().positions[2] == 1.0  # NaN: the gripper as it is
    assert episode.steps == 3
    for names, values, reason in ((['gantry_x'], [0.1], 'missing'),
                                  (['gantry_x', 'gantry_y', 'z'], [0.1, 0.1, 0], 'unknown'),
                                  (['gantry_x', 'gantry_y'], [np.inf, 0.1], 'finite')):
        with pytest.raises(ValueError, match=reason):
            episode.step_joints(names, np.array(values))
    assert episode.steps == 3
