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
The joint path through real processes.

The mock world's robot model and joint states in, absolute joint targets out (IK), holds at
the measured positions, stale joint states.
"""

import itertools
import time

import numpy as np
import pytest
from ros_harness import (
    COMMANDS,
    ROOT,
    commands,
    is_hold,
    listen_once,
    policy_args,
    wait_active,
)

rclpy = pytest.importorskip('rclpy', reason='real rclpy (pip wheels) is part of make test')
pytest.importorskip('pinocchio')
pytestmark = pytest.mark.usefixtures('fresh_probe')

from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from flashvla_ros.sim.world import MAX_STEP  # noqa: E402

TRAJECTORY = '/policy_node/joint_trajectory'
POSITIONS = '/policy_node/joint_positions'
CHAIN = ['gantry_x', 'gantry_y']  # the mock gantry's URDF, base_link -> tool


def test_joint_outputs_ik_holds_and_stale_joint_states(probe, procs, tiny_dir):
    # The world's joint states reach the node through this relay, which the test can stop.
    relay = {'on': True, 'last': None, 'sent': []}  # the world's newest, what the node got
    pub = probe.node.create_publisher(JointState, '/joint_states', qos_profile_sensor_data)

    def forward(msg):
        relay['last'] = np.array(msg.position[:2])
        if relay['on']:
            pub.publish(msg)
            relay['sent'].append(relay['last'])
    sub = probe.node.create_subscription(JointState, '/world_joints', forward,
                                         qos_profile_sensor_data)
    listen_once(probe, JointTrajectory, TRAJECTORY)
    listen_once(probe, Float64MultiArray, POSITIONS)
    listen_once(probe, Float64MultiArray, COMMANDS)
    procs.start('mock_world', '--ros-args', '-p', 'seed:=3', '-p', 'max_steps:=400',
                '-r', f'commands:={COMMANDS}', '-r', 'joint_states:=/world_joints')
    procs.start('policy_node', *policy_args(
        tiny_dir, 'outputs:=[array, trajectory, joint_positions, gripper]', 'ee_frame:=tool',
        'accel:=[none]'))
    wait_active(probe, procs)
    probe.wait_for(lambda: len(probe.messages[TRAJECTORY]) > 5, 30, 'joint trajectories', procs)
    trajectories = [m for _, m in probe.messages[TRAJECTORY]]
    actions = [m for m in trajectories if m.points and m.points[0].time_from_start.nanosec]
    assert actions, trajectories
    for msg in actions:  # absolute targets inside the URDF's limits, named by the chain
        assert list(msg.joint_names) == CHAIN
        points = np.array([p.positions for p in msg.points])
        assert ((points >= 0.0) & (points <= 0.5)).all(), points
        assert msg.points[0].time_from_start.nanosec == 100_000_000  # one control period
    # Each first target is one clamped command (|dx|, |dy| <= 0.05) from the measured joints.
    assert np.abs(np.array(actions[-1].points[0].positions) - relay['last']).max() < 0.1
    positions = [np.array(m.data) for _, m in probe.messages[POSITIONS]]
    assert positions and all(len(p) == 2 for p in positions)
    diag = probe.wait_for(lambda: 'joint_targets_p50_ms' in (probe.diagnostics() or {})
                          and probe.diagnostics(), 5, 'IK timings in /diagnostics', procs)
    assert diag['joint_model'] == 'base_link -> tool: gantry_x,gantry_y', diag
    ik_ms = float(diag['joint_targets_p50_ms'])
    print(f'IK per tick in the node: p50 {ik_ms:.2f} ms, max {diag["joint_targets_max_ms"]} ms')

    # Stale joint states: exactly one hold, at the last measured positions, and the reason.
    relay['on'] = False
    since = len(probe.messages[TRAJECTORY])
    probe.wait_for(lambda: 'joint_states stale' in (probe.diagnostics() or {}).get('message', ''),
                   10, 'the stale joint states in /diagnostics', procs)
    probe.spin(1.0)
    # The commands until the joint states went stale (max_joint_state_age_s 0.5), then one
    # hold and silence.
    sent = [m for _, m in probe.messages[TRAJECTORY][since:]]
    held = [m for m in sent if not m.points[0].time_from_start.nanosec]
    assert len(held) == 1 and sent[-1] is held[0] and len(held[0].points) == 1, sent
    assert held[0].points[0].time_from_start.sec == 0 == held[0].points[0].time_from_start.nanosec
    # Where the node last measured the arm (the world moved on with the last commands).
    np.testing.assert_allclose(held[0].points[0].positions, relay['sent'][-1], atol=1e-9)
    assert probe.diagnostics()['level'] == 2

    # Joint states again: commanding resumes; deactivate ends in one hold, where the arm is.
    relay['on'] = True
    since = len(probe.messages[TRAJECTORY])
    probe.wait_for(lambda: len(probe.messages[TRAJECTORY]) > since + 3, 20, 'commands again',
                   procs)
    request = ChangeState.Request()
    request.transition.id = 4  # deactivate
    assert probe.call(ChangeState, '/policy_node/change_state', request).success
    time.sleep(0.1)
    probe.spin(0.5)
    last = probe.messages[TRAJECTORY][-1][1]
    assert len(last.points) == 1 and last.points[0].time_from_start.nanosec == 0
    # A measured position (the newest joint state, or the one before when the world stepped
    # once more with the last command), not a target: no jump.
    hold = np.array(last.points[0].positions)
    sent = relay['sent']
    states = [q for i, q in enumerate(sent) if i == 0 or (q != sent[i - 1]).any()]
    assert any(np.allclose(hold, q, atol=1e-9) for q in states[-2:]), (hold, states[-2:])
    assert is_hold(commands(probe)[-1][1])
    probe.node.destroy_subscription(sub)
    probe.node.destroy_publisher(pub)


def test_the_world_steps_on_the_joint_targets(probe, procs, tiny_dir):
    # The joint path drives the world (`control:=joint`, config/joints_mock.yaml): each
    # trajectory's first point is where the world's gantry goes.
    listen_once(probe, JointTrajectory, TRAJECTORY)
    listen_once(probe, JointState, '/joint_states', qos_profile_sensor_data)
    procs.start('mock_world', '--ros-args', '-p', 'seed:=3', '-p', 'max_steps:=400',
                '-p', 'control:=joint', '-r', f'joint_trajectory:={TRAJECTORY}')
    procs.start('policy_node', *policy_args(tiny_dir, 'accel:=[none]'),
                '--params-file', str(ROOT / 'config' / 'joints_mock.yaml'))
    wait_active(probe, procs)
    since = len(probe.messages['/joint_states'])
    probe.wait_for(lambda: len(probe.messages[TRAJECTORY]) > 12, 30, 'joint trajectories',
                   procs)
    probe.spin(0.3)  # the world's state after the last step
    targets = [m for _, m in probe.messages[TRAJECTORY]
               if m.points[0].time_from_start.nanosec]
    assert all(list(m.joint_names) == [*CHAIN, 'gripper'] for m in targets), targets[0]
    states = np.array([m.position[:3] for _, m in probe.messages['/joint_states'][since:]])
    # Each move of the gantry is a step towards one of the targets it was sent, as its
    # controller makes it (at most MAX_STEP a step), gripper included (closed from 0.5).
    goals = np.array([[*m.points[0].positions[:2], float(m.points[0].positions[2] >= 0.5)]
                      for m in targets])
    changes = [(a, b) for a, b in itertools.pairwise(states) if (a != b).any()]
    assert len(changes) > 5, states

    def stepped_to(a, b):
        reach = a[:2] + np.clip(goals[:, :2] - a[:2], -MAX_STEP, MAX_STEP)
        return bool((np.isclose(reach, b[:2], atol=1e-9).all(axis=1)
                     & (goals[:, 2] == b[2])).any())
    explained = [stepped_to(a, b) for a, b in changes]
    assert sum(explained) >= len(explained) - 1, explained  # the episode may reset once
