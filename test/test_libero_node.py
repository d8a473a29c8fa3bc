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

"""LIBERO through the real nodes: libero_world and policy_node close the loop (the LIBERO tier)."""

import json
import time

import numpy as np
import pytest

pytest.importorskip('libero')
pytest.importorskip('robosuite')
rclpy = pytest.importorskip('rclpy', reason='real rclpy (pip wheels) is part of make test')

from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_harness import COMMANDS, ROOT, commands, listen_once, wait_active  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from flashvla_ros.ros.processes import resolve_model  # noqa: E402

pytestmark = pytest.mark.libero
RESULT = '/libero_world/episode_result'
MAX_STEPS = 12


def test_libero_world_and_policy_node_close_the_loop(probe, fresh_probe, procs):
    for kind, topic, qos in ((Float64MultiArray, COMMANDS, 10), (String, RESULT, 10),
                             (Image, '/image_raw', qos_profile_sensor_data),
                             (JointState, '/joint_states', qos_profile_sensor_data)):
        listen_once(probe, kind, topic, qos)
    world = procs.start('libero_world', '--ros-args', '-p', f'max_steps:={MAX_STEPS}',
                        '-p', 'tasks:=0', '-p', 'init_states:=0:2', '-p', 'render:=fast',
                        '-p', 'camera_rate_hz:=20.0', '-r', f'commands:={COMMANDS}')
    procs.start('policy_node', '--ros-args', '--params-file',
                str(ROOT / 'config' / 'libero.yaml'), '-p', f'model:={resolve_model(None)}')
    wait_active(probe, procs)
    start = time.monotonic()
    result = probe.wait_for(lambda: world.poll() is not None or probe.messages[RESULT], 90,
                            'an episode to end', procs)
    assert world.poll() is None, procs.logs()
    done = json.loads(result[0][1].data)
    assert done['world'] == 'libero' and done['steps'] == MAX_STEPS and done['task'] == 0
    assert done['seed'] == 0 and done['success'] is False  # the default model never saw LIBERO
    assert done['instruction'] == 'pick up the alphabet soup and place it in the basket'
    # The policy's commands in metres and radians, inside config/libero.yaml's limits.
    values = np.array([c for _, c in commands(probe)])
    motion = values[:, :6]
    assert (np.abs(motion) <= [0.05] * 3 + [0.5] * 3).all()
    # The protocol frame (224 px) and the Panda's joints.
    image = probe.messages['/image_raw'][-1][1]
    assert (image.width, image.height, image.encoding) == (224, 224, 'rgb8')
    joints = probe.messages['/joint_states'][-1][1]
    assert len(joints.name) == 9 and joints.name[0] == 'panda_joint1'
    assert np.isfinite(joints.position).all()
    # The next initial state opens: its instruction, and the joints move on as it is stepped.
    probe.wait_for(lambda: len(probe.messages[RESULT]) >= 2, 60, 'the second episode to end',
                   procs)
    second = json.loads(probe.messages[RESULT][1][1].data)
    assert second['seed'] == 1 and second['steps'] == MAX_STEPS
    assert time.monotonic() - start < 120


def test_in_lockstep_every_command_is_one_world_step(probe, fresh_probe, procs):
    # LIBERO renders slower than 20 Hz on a CPU: the world publishes /clock, one control
    # period per step, and the policy node ticks on it, so no command is dropped.
    for kind, topic, qos in ((Float64MultiArray, COMMANDS, 10), (String, RESULT, 10)):
        listen_once(probe, kind, topic, qos)
    steps = 30
    world = procs.start('libero_world', '--ros-args', '-p', f'max_steps:={steps}',
                        '-p', 'tasks:=0', '-p', 'init_states:=0:1', '-p', 'render:=fast',
                        '-p', 'lockstep:=true', '-r', f'commands:={COMMANDS}')
    procs.start('policy_node', '--ros-args', '--params-file',
                str(ROOT / 'config' / 'libero.yaml'), '-p', f'model:={resolve_model(None)}',
                '-p', 'use_sim_time:=true')
    wait_active(probe, procs)
    result = probe.wait_for(lambda: world.poll() is not None or probe.messages[RESULT], 120,
                            'an episode to end', procs)
    assert world.poll() is None, procs.logs()
    done = json.loads(result[0][1].data)
    assert done['steps'] == steps
    # One command per step: the activation hold, the episode's commands, at most a tick more.
    sent = len(commands(probe))
    assert steps <= sent <= steps + 3, (sent, procs.logs())


def test_the_panda_follows_the_joint_targets_of_the_nodes_inverse_kinematics(
        probe, fresh_probe, procs):
    # The joint path (control:=joint): the node's IK turns each command into Panda joint
    # targets, LIBERO's joint position controller tracks them, one step per trajectory.
    from scipy.spatial.transform import Rotation
    from trajectory_msgs.msg import JointTrajectory

    from flashvla_ros.control.kinematics import ArmKinematics
    from flashvla_ros.ros.world_node import DESCRIPTION_QOS
    trajectories = '/policy_node/joint_trajectory'
    for kind, topic, qos in ((Float64MultiArray, COMMANDS, 10), (String, RESULT, 10),
                             (JointTrajectory, trajectories, 10),
                             (String, '/robot_description', DESCRIPTION_QOS),
                             (JointState, '/joint_states', qos_profile_sensor_data)):
        listen_once(probe, kind, topic, qos)
    steps = 20
    world = procs.start('libero_world', '--ros-args', '-p', f'max_steps:={steps}',
                        '-p', 'tasks:=0', '-p', 'init_states:=0:1', '-p', 'render:=fast',
                        '-p', 'lockstep:=true', '-p', 'control:=joint',
                        '-r', f'joint_trajectory:={trajectories}')
    procs.start('policy_node', '--ros-args', '--params-file',
                str(ROOT / 'config' / 'libero.yaml'), '--params-file',
                str(ROOT / 'config' / 'joints_libero.yaml'), '-p', f'model:={resolve_model(None)}',
                '-p', 'use_sim_time:=true', '-p', 'outputs:=[trajectory, array]')
    wait_active(probe, procs)
    result = probe.wait_for(lambda: world.poll() is not None or probe.messages[RESULT], 120,
                            'an episode to end', procs)
    assert world.poll() is None, procs.logs()
    assert json.loads(result[0][1].data)['steps'] == steps  # every step a joint trajectory

    urdf = probe.messages['/robot_description'][0][1].data
    kin = ArmKinematics.from_urdf(urdf, 'panda_grip_site')
    sent = [(t, m) for t, m in probe.messages[trajectories] if m.points[0].time_from_start.nanosec]
    cmds = [c for _, c in commands(probe) if (c[:6] != 0).any()]
    assert len(sent) >= steps - 2 and len(cmds) >= len(sent), (len(sent), len(cmds))
    assert list(sent[0][1].joint_names) == [*kin.joint_names, 'panda_finger_joint1']
    states = [(t, np.array(m.position[:7])) for t, m in probe.messages['/joint_states']]
    checked = 0
    for (t, msg), cmd in zip(sent, cmds[-len(sent):], strict=True):
        target = np.array(msg.points[0].positions[:7])
        # The joints the node solved from: one of the newest states before its tick.
        before = [q for ts, q in states if ts <= t][-3:]
        for q in before:
            if np.any(np.abs(target - q) >= kin.velocity * 0.05 * (1 - 1e-9)):
                continue  # a joint at its velocity limit: the step is shortened, by design
            start, reached = kin.forward(q), kin.forward(target)
            turn = Rotation.from_rotvec(cmd[3:6]).as_matrix() @ start[:3, :3]
            angle = Rotation.from_matrix(turn.T @ reached[:3, :3]).magnitude()
            if np.linalg.norm(reached[:3, 3] - start[:3, 3] - cmd[:3]) < 1e-3 \
                    and np.degrees(angle) < 0.5:
                checked += 1
                break
    # The forward kinematics of the targets moves the tool by the command: 1 mm, 0.5 degrees.
    assert checked >= len(sent) - 2, (checked, len(sent))
