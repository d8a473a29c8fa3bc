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
Several robots, one model: mock worlds as separate processes against one policy server.

The embedded default model closes three loops at once, each robot under its own namespace;
one robot's camera dies and only that robot holds; the server's exit holds every robot.
"""

import json
import signal
import time

import numpy as np
import pytest
from ros_harness import commands, is_hold, listen_once, policy_args, wait_active, within_limits

rclpy = pytest.importorskip('rclpy', reason='real rclpy (pip wheels) is part of make test')
pytestmark = pytest.mark.usefixtures('fresh_probe')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import TimeReference  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402

from flashvla_ros.policy.presets import model_path  # noqa: E402

ROBOTS = {'r1': 0, 'r2': 1000, 'r3': 2000}  # namespace -> first episode seed (all solved)


def robot_status(probe, robot: str) -> dict[str, str]:
    return probe.diagnostics(f'flashvla_ros: policy_node {robot}') or {}


def test_one_server_closes_three_loops_and_holds_each_robot_alone(probe, procs):
    listen_once(probe, DiagnosticArray, '/diagnostics')
    worlds = {}
    for robot, seed in ROBOTS.items():
        listen_once(probe, Float64MultiArray, f'/{robot}/policy_node/commands')
        listen_once(probe, TimeReference, f'/{robot}/policy_node/command_timing', 100)
        listen_once(probe, String, f'/{robot}/mock_world/episode_result')
        worlds[robot] = procs.start(
            'mock_world', '--ros-args', '-r', f'__ns:=/{robot}', '-p', f'seed:={seed}',
            '-p', 'max_steps:=60', '-r', 'commands:=policy_node/commands')
    server = procs.start('policy_node', *policy_args(model_path('default'),
                                                     'robots:=[r1, r2, r3]'))
    wait_active(probe, procs)
    # Every robot's own episode ends in success, the three loops closed by one model.
    results = {}
    for robot in ROBOTS:
        topic = f'/{robot}/mock_world/episode_result'
        got = probe.wait_for(lambda topic=topic: probe.messages[topic], 60,
                             f'{robot} to finish an episode', procs)
        results[robot] = json.loads(got[0][1].data)
    assert all(r['success'] for r in results.values()), results
    assert {r: results[r]['seed'] for r in ROBOTS} == ROBOTS
    for robot in ROBOTS:
        values = np.array([c for _, c in commands(probe, f'/{robot}/policy_node/commands')])
        assert within_limits(values)
    server_status = probe.diagnostics()
    assert server_status['robots'] == 'r1,r2,r3', server_status
    assert float(server_status['mean_batch']) > 1.0, server_status  # they share forwards
    assert all(robot_status(probe, r)['message'] == 'commanding' for r in ROBOTS)

    # r3's world is killed: r3 alone holds, once, and says why; r1 and r2 go on commanding.
    worlds['r3'].kill()
    killed = time.monotonic()
    probe.wait_for(lambda: 'camera stale' in robot_status(probe, 'r3').get('message', ''), 10,
                   'r3 to hold on its stale camera')
    probe.spin(1.5)
    for robot in ('r1', 'r2'):
        assert robot_status(probe, robot)['message'] == 'commanding', robot_status(probe, robot)
        later = [m.source for t, m in probe.messages[f'/{robot}/policy_node/command_timing']
                 if t > killed]
        assert len(later) >= 8 and 'hold' not in later, (robot, later)
    timing = [m.source for t, m in probe.messages['/r3/policy_node/command_timing']
              if t > killed]
    assert timing[-1] == 'hold' and timing.count('hold') == 1, timing
    assert robot_status(probe, 'r3')['level'] == 2
    node = probe.diagnostics()  # the node's entry names the robot that is not commanding
    assert node['level'] == 2 and node['message'].startswith('1 of 3 robots: r3: camera stale')

    # A robot is stopped alone through its enable service, and started again.
    reply = probe.call(SetBool, '/r2/policy_node/enable', SetBool.Request(data=False))
    assert reply.success and not reply.message.endswith('enabled'), reply
    probe.spin(0.5)
    assert 'disabled' in robot_status(probe, 'r2')['message'], robot_status(probe, 'r2')
    assert is_hold(commands(probe, '/r2/policy_node/commands')[-1][1])
    assert robot_status(probe, 'r1')['message'] == 'commanding'
    assert probe.call(SetBool, '/r2/policy_node/enable', SetBool.Request(data=True)).success

    # The server's exit: one last hold on every robot.
    for robot in ROBOTS:
        probe.messages[f'/{robot}/policy_node/command_timing'].clear()
    server.send_signal(signal.SIGINT)
    probe.wait_for(lambda: server.poll() is not None, 15, 'the server to exit')
    probe.spin(0.5)
    for robot in ROBOTS:
        kinds = [m.source for _, m in probe.messages[f'/{robot}/policy_node/command_timing']]
        assert kinds and kinds[-1] == 'hold' and kinds.count('hold') == 1, (robot, kinds)
    assert server.returncode == 0, procs.logs()


BAD_NAMES = ('2nd', '/r2', 'r 2', 'r1/', 'a//b', 'r-1')


def test_robot_namespaces_are_checked_as_rclpy_checks_namespaces():
    from rclpy.exceptions import InvalidNamespaceException
    from rclpy.validate_namespace import validate_namespace

    from flashvla_ros.params import check_robots

    good = ['r1', 'cell_a/r2', '_r3']
    assert check_robots(good) is None
    for name in good:
        validate_namespace(f'/{name}')
    for name in BAD_NAMES:
        assert check_robots(['r1', name]), name
        with pytest.raises(InvalidNamespaceException):
            validate_namespace(f'/{name}')
    assert 'twice' in check_robots(['r1', 'r1'])
    assert 'list' in check_robots('r1')


def test_an_invalid_robot_namespace_stops_the_node_at_start_up(procs, tiny_dir):
    node = procs.start('policy_node', *policy_args(tiny_dir, 'robots:=[r1, 2nd]'))
    assert node.wait(30) == 2
    assert "bad parameters, not starting: robots: '2nd' is not a valid ROS namespace" \
        in procs.logs(), procs.logs()
