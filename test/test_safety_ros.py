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
Control-path safety, tried as a user would: policy_node as a real process, an independent
subscriber, real signals. A hold never changes the gripper; every exit ends in exactly one hold;
the node never stops commanding without saying why; one bad input never starves another.
"""

import re
import signal
import time

import cv2
import numpy as np
import pytest
from ros_harness import (
    COMMANDS,
    Processes,
    change_state,
    commands,
    get_parameter,
    is_hold,
    listen_once,
    policy_args,
    set_parameter,
    wait_active,
)

rclpy = pytest.importorskip('rclpy', reason='real rclpy (pip wheels) is part of make test')
pytestmark = pytest.mark.usefixtures('fresh_probe')

from geometry_msgs.msg import TwistStamped  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float64, Float64MultiArray, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from flashvla_ros.ros.convert import rgb_to_compressed, rgb_to_image  # noqa: E402

GRIPPER_CMD = '/policy_node/gripper_cmd'
TRAJECTORY = '/policy_node/joint_trajectory'
TWIST = '/policy_node/delta_twist_cmds'
TASK = 'pick up the red block'
ALL_OUTPUTS = 'outputs:=[twist, array, trajectory, gripper, raw]'
# Every action closes the gripper (its limits are [1, 1]): what a grasp looks like downstream.
GRIPPER_CLOSED = 'action_lower:=[-0.05, -0.05, -0.05, -0.25, -0.25, -0.25, 1.0]'
ACTIVATE, DEACTIVATE, ACTIVE_SHUTDOWN = 3, 4, 7  # lifecycle_msgs/Transition ids


def start_world(procs: Processes, *params: str):
    """The mock world as camera and robot; its own task goes to a topic nobody follows."""
    args = ['--ros-args', '-p', 'max_steps:=100000', '-r', 'instruction:=/mock_world/task',
            '-r', f'commands:={COMMANDS}']
    for p in params:
        args += ['-p', p]
    return procs.start('mock_world', *args)


def wait_for_actions(probe, procs, count: int = 1, since: int = 0, topic: str = COMMANDS):
    def enough():
        return sum(not is_hold(c) for _, c in commands(probe, topic)[since:]) >= count
    probe.wait_for(enough, 30, f'{count} action commands', procs)


def wait_for_hold(probe, procs, since: int, what: str) -> np.ndarray:
    def hold():
        return next((c for _, c in commands(probe)[since:] if is_hold(c)), None)
    probe.wait_for(lambda: hold() is not None, 10, f'a hold after {what}', procs)
    probe.spin(0.3)  # a second hold would arrive within a few ticks
    holds = [c for _, c in commands(probe)[since:] if is_hold(c)]
    assert len(holds) == 1, f'{what}: {len(holds)} holds, expected exactly one'
    return holds[0]


def node_log(procs: Processes) -> str:
    return next(log.read_text() for p, log in procs.procs if p.args[0].endswith('policy_node'))


def test_a_hold_never_changes_the_gripper(probe, procs, tiny_dir):
    for msg_type, topic in ((Float64MultiArray, COMMANDS), (Float64, GRIPPER_CMD),
                            (JointTrajectory, TRAJECTORY), (TwistStamped, TWIST)):
        listen_once(probe, msg_type, topic)
    start_world(procs, 'task_family:=pick_place')
    procs.start('policy_node', *policy_args(tiny_dir, ALL_OUTPUTS, GRIPPER_CLOSED))
    wait_active(probe, procs)
    instruction = probe.node.create_publisher(String, '/instruction', 10)
    probe.wait_for(instruction.get_subscription_count, 10, 'the instruction subscription', procs)
    faults = [
        ('clearing the instruction', lambda: instruction.publish(String(data=''))),
        ('a whitespace-only instruction', lambda: instruction.publish(String(data=' \t '))),
        ('a 5000-character instruction', lambda: instruction.publish(String(data='x' * 5000))),
        ('deactivate', lambda: change_state(probe, DEACTIVATE)),
        ('shutdown', lambda: change_state(probe, ACTIVE_SHUTDOWN)),
    ]
    for what, fault in faults:
        if what == 'shutdown':
            assert change_state(probe, ACTIVATE)
        since = len(commands(probe))
        instruction.publish(String(data=TASK))
        wait_for_actions(probe, procs, count=2, since=since)  # commanding, gripper closed
        # The parameter shows the instruction the node follows, wherever it came from.
        assert get_parameter(probe, 'instruction').string_value == TASK
        since = len(commands(probe))
        fault()
        hold = wait_for_hold(probe, procs, since, what)
        assert hold.tolist() == [0.0] * 6 + [1.0], f'{what}: {hold}'
        if what.endswith('instruction'):
            assert get_parameter(probe, 'instruction').string_value == '', what
    # The gripper stays closed in every message on every output once it was commanded.
    array = [c for _, c in commands(probe)]
    first_action = next(i for i, c in enumerate(array) if not is_hold(c))
    assert all(c[6] == 1.0 for c in array[first_action:])
    # Before that, a hold commands no gripper: NaN in the array, nothing on ~/gripper_cmd.
    assert all(is_hold(c) and np.isnan(c[6]) for c in array[:first_action])
    gripper = [m.data for _, m in probe.messages[GRIPPER_CMD]]
    assert gripper and set(gripper) == {1.0}
    first_action_time = probe.messages[COMMANDS][first_action][0]
    assert probe.messages[GRIPPER_CMD][0][0] >= first_action_time - 0.05
    trajectories = [m for _, m in probe.messages[TRAJECTORY]]
    assert all(p.positions[6] == 1.0 for m in trajectories for p in m.points)
    assert sum(not m.points for m in trajectories) >= len(faults)  # holds: empty trajectories
    twists = [m.twist for _, m in probe.messages[TWIST]]
    assert sum(t.linear.x == t.linear.y == t.angular.z == 0.0 for t in twists) >= len(faults)
    # The node says it stopped and why, in its real lifecycle state.
    diag = probe.wait_for(
        lambda: (probe.diagnostics() or {}).get('lifecycle_state') == 'finalized'
        and probe.diagnostics(), 5, 'finalized diagnostics', procs)
    assert diag['level'] == 1 and diag['message'] == 'finalized: not commanding (shut down)'


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM])
def test_every_signal_exit_ends_in_one_hold(probe, procs, tiny_dir, sig):
    listen_once(probe, Float64MultiArray, COMMANDS)
    start_world(procs)
    node = procs.start('policy_node', *policy_args(tiny_dir, f'instruction:={TASK}'))
    wait_active(probe, procs)
    wait_for_actions(probe, procs, count=3)
    sent = time.monotonic()
    node.send_signal(sig)
    probe.wait_for(lambda: node.poll() is not None, 15, 'policy_node to exit', procs)
    probe.spin(0.5)
    before = [c for t, c in commands(probe) if t < sent]
    after = [c for t, c in commands(probe) if t >= sent]
    holds = [c for c in after if is_hold(c)]
    assert len(holds) == 1 and is_hold(after[-1]), f'{sig.name}: {after}\n{procs.logs()}'
    last_action = [c for c in before + after if not is_hold(c)][-1]
    assert holds[0][6] == last_action[6]  # zero motion, the gripper kept
    assert node.returncode == 0, procs.logs()
    diag = probe.diagnostics()
    assert diag['lifecycle_state'] == 'finalized', diag
    assert diag['stop_reason'] == f'{sig.name} received', diag


def test_limits_that_exclude_zero_motion_are_refused_at_start_up(probe, procs, tiny_dir):
    node = procs.start('policy_node', *policy_args(
        tiny_dir, 'action_lower:=[0.01, -0.05, -0.05, -0.25, -0.25, -0.25, 0.0]'))
    probe.wait_for(lambda: node.poll() is not None, 30, 'policy_node to refuse to start')
    assert node.returncode == 2
    assert "exclude zero in motion dimensions ['x']" in node_log(procs)


def publish_frames(probe, publisher, rgb: np.ndarray, seconds: float, rate: float = 20.0,
                   encode=rgb_to_image) -> int:
    """Stream one frame at `rate` while the probe keeps listening; return how many went out."""
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        publisher.publish(encode(rgb, probe.node.get_clock().now().to_msg()))
        sent += 1
        probe.spin(1.0 / rate)
    return sent


def test_the_node_never_stops_commanding_silently(probe, procs, tiny_dir):
    listen_once(probe, Float64MultiArray, COMMANDS)
    procs.start('policy_node', *policy_args(tiny_dir, f'instruction:={TASK}', 'accel.name:=none',
                                            'image_reliability:=reliable'))
    wait_active(probe, procs)
    camera = probe.node.create_publisher(Image, '/image_raw', 10)
    probe.wait_for(camera.get_subscription_count, 10, 'the camera subscription', procs)
    good = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    publish_frames(probe, camera, good, 1.0)
    wait_for_actions(probe, procs, count=3)
    # (a) A camera that sends only frames the model cannot use is a stale camera.
    since = len(commands(probe))
    publish_frames(probe, camera, good[:4, :4], 1.5)
    wait_for_hold(probe, procs, since, 'frames below the minimum size')
    diag = probe.diagnostics()
    assert diag['level'] == 2 and 'camera stale' in diag['message'], diag
    assert 'last frame rejected: image size 4x4' in diag['message'], diag
    # (b) Every action expires: the watchdog holds once, with the cause; (c) a WARN says why.
    since = len(commands(probe))
    publish_frames(probe, camera, good, 1.0)
    wait_for_actions(probe, procs, count=3, since=since)
    assert set_parameter(probe, 'max_action_age_s', 0.01).successful
    since = len(commands(probe))
    publish_frames(probe, camera, good, 2.0)
    wait_for_hold(probe, procs, since, 'every action expired')
    publish_frames(probe, camera, good, 1.1)  # the camera stays healthy meanwhile
    diag = probe.diagnostics()
    assert diag['level'] == 2 and 'all actions expired' in diag['message'], diag
    assert re.search(r'> max_action_age_s 10 ms', diag['message']), diag
    assert 'below the inference latency' in diag['warning'], diag
    assert 'all actions expired' in node_log(procs)
    probe.node.destroy_publisher(camera)


def png_bomb(side: int) -> bytes:
    """A small PNG that declares a huge image (flat grey compresses to almost nothing)."""
    ok, data = cv2.imencode('.png', np.full((side, side), 128, np.uint8))
    assert ok
    return data.tobytes()


def test_compressed_images_are_size_checked_before_decoding(probe, procs, tiny_dir):
    listen_once(probe, Float64MultiArray, COMMANDS)
    procs.start('policy_node', *policy_args(
        tiny_dir, f'instruction:={TASK}', 'image_transport:=compressed',
        'image_reliability:=reliable'))
    wait_active(probe, procs)
    camera = probe.node.create_publisher(CompressedImage, '/image_raw/compressed', 10)
    probe.wait_for(camera.get_subscription_count, 10, 'the camera subscription', procs)
    good = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    stamp = probe.node.get_clock().now().to_msg()
    jpeg = bytes(rgb_to_compressed(cv2.GaussianBlur(good, (5, 5), 0), stamp).data)
    corrupt = bytearray(jpeg)
    corrupt[len(jpeg) // 2:len(jpeg) // 2 + 30] = bytes(range(30))
    bad = (png_bomb(8000), png_bomb(12000), bytes(corrupt), jpeg[:len(jpeg) // 2])
    sent = publish_frames(probe, camera, good, 1.0, encode=rgb_to_compressed)
    wait_for_actions(probe, procs, count=3)
    since = len(commands(probe))
    for data in bad:
        camera.publish(CompressedImage(format='png' if data[1:4] == b'PNG' else 'jpeg',
                                       data=data))
        sent += publish_frames(probe, camera, good, 0.25, encode=rgb_to_compressed)
    sent += publish_frames(probe, camera, good, 1.1, encode=rgb_to_compressed)  # diagnostics
    assert not any(is_hold(c) for _, c in commands(probe)[since:]), procs.logs()
    diag = probe.wait_for(
        lambda: int((probe.diagnostics() or {}).get('frames', 0)) == sent and probe.diagnostics(),
        10, 'every good frame counted', procs)
    assert int(diag['rejected_frames']) == 4, diag
    log = node_log(procs)
    assert '8000x8000 = 64000000 pixels is above max_image_pixels' in log
    assert 'corrupt JPEG' in log
    # A second publisher on the camera topic is reported.
    second = probe.node.create_publisher(CompressedImage, '/image_raw/compressed', 10)
    publish_frames(probe, camera, good, 1.5, encode=rgb_to_compressed)
    diag = probe.diagnostics()
    assert diag['camera_publishers'] == '2' and diag['level'] == 1, diag
    assert '2 publishers on /image_raw/compressed' in diag['message'], diag
    probe.node.destroy_publisher(second)
    probe.node.destroy_publisher(camera)


def test_an_instruction_flood_starves_nothing(probe, procs, tiny_dir):
    listen_once(probe, Float64MultiArray, COMMANDS)
    start_world(procs, 'camera_rate_hz:=30.0')
    procs.start('policy_node', *policy_args(tiny_dir, f'instruction:={TASK}'))
    wait_active(probe, procs)
    instruction = probe.node.create_publisher(String, '/instruction', 10)
    probe.wait_for(instruction.get_subscription_count, 10, 'the instruction subscription', procs)
    wait_for_actions(probe, procs, count=3)
    since = len(commands(probe))
    frames_before = int(probe.diagnostics()['frames'])
    flood = [String(data=TASK), String(data='x' * 5000)]  # valid, then rejected: 1.5 s each
    start = time.monotonic()
    for message in flood:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            for _ in range(10):
                instruction.publish(message)
            probe.spin(0.01)  # about 1 kHz
    flood_s = time.monotonic() - start
    commanded = commands(probe)[since:]
    # The same instruction again and again changes nothing: commanding goes on, no hold (on
    # 2 cores the flood's CPU slows inference, so the rate may drop, never to a stop).
    actions = [t for t, c in commanded if not is_hold(c) and t < start + 1.5]
    assert len(actions) >= 3, f'{len(actions)} commands during 1.5 s of the same instruction'
    holds = [t for t, c in commanded if is_hold(c)]
    assert len(holds) == 1 and holds[0] > start + 1.5  # the rejected instruction stops it
    probe.spin(1.1)
    frames = int(probe.diagnostics()['frames']) - frames_before
    assert frames >= 0.6 * 30 * flood_s, f'{frames} frames in {flood_s:.1f} s of flood'
    log = node_log(procs)
    assert 'camera stale' not in log
    rejected_lines = log.count('instruction rejected, stopping')
    assert 1 <= rejected_lines <= 3, f'{rejected_lines} log lines for 1.5 s of rejections'
    since = len(commands(probe))
    instruction.publish(String(data=TASK))  # a valid instruction resumes at once
    wait_for_actions(probe, procs, count=3, since=since)
    probe.node.destroy_publisher(instruction)
