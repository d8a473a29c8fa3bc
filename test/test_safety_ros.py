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
Control-path safety, tried as a user would.

policy_node runs as a real process, with an independent subscriber and real signals. A hold
never changes the gripper; every exit ends in exactly one hold; the node never stops commanding
without saying why; one bad input never starves another.
"""

import json
import re
import shutil
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
from sensor_msgs.msg import CompressedImage, Image, TimeReference  # noqa: E402
from std_msgs.msg import Float64, Float64MultiArray, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from flashvla_ros.policy.presets import default_model_dir  # noqa: E402
from flashvla_ros.ros.convert import rgb_to_compressed, rgb_to_image  # noqa: E402
from flashvla_ros.sim.tasks import Episode  # noqa: E402

GRIPPER_CMD = '/policy_node/gripper_cmd'
TRAJECTORY = '/policy_node/joint_trajectory'
TWIST = '/policy_node/delta_twist_cmds'
TIMING = '/policy_node/command_timing'
TASK = 'pick up the red block'
# Every output; the joint ones from the mock world's gantry, its gripper as a joint.
ALL_OUTPUTS = ('outputs:=[twist, array, trajectory, joint_positions, gripper, raw]',
               'ee_frame:=tool', 'gripper_joints:=[gripper]')
ACTIVATE, DEACTIVATE, ACTIVE_SHUTDOWN = 3, 4, 7  # lifecycle_msgs/Transition ids


def start_world(procs: Processes, *params: str, commands: str = COMMANDS):
    """Start the mock world as camera and robot; its task goes to a topic nobody follows."""
    args = ['--ros-args', '-p', 'max_steps:=100000', '-r', 'instruction:=/mock_world/task',
            '-r', f'commands:={commands}']
    for p in params:
        args += ['-p', p]
    return procs.start('mock_world', *args)


def wait_for_actions(probe, procs, count: int = 1, since: int = 0, topic: str = COMMANDS):
    def enough():
        return sum(not is_hold(c) for _, c in commands(probe, topic)[since:]) >= count
    probe.wait_for(enough, 30, f'{count} action commands', procs)


def wait_for_hold(probe, procs, since: int, what: str) -> None:
    """Exactly one hold among the commands from index `since` on."""
    def holds():
        return [c for _, c in commands(probe)[since:] if is_hold(c)]
    probe.wait_for(holds, 10, f'a hold after {what}', procs)
    probe.spin(0.3)  # a second hold would arrive within a few ticks
    assert len(holds()) == 1, f'{what}: {len(holds())} holds, expected exactly one'


def hold_flags(probe) -> list[bool]:
    """
    Tell which commands were holds, from the trajectory output (one point, due now).

    The array cannot tell: the policy itself may command zero motion. An action's first point
    is due one control period on.
    """
    return [m.points[0].time_from_start.sec == m.points[0].time_from_start.nanosec == 0
            for _, m in probe.messages[TRAJECTORY]]


def node_log(procs: Processes) -> str:
    return next(log.read_text() for p, log in procs.procs if p.args[0].endswith('policy_node'))


def test_a_hold_never_changes_the_gripper(probe, procs):
    """A block in the closed gripper; five faults, five holds, the gripper closed throughout."""
    task = Episode(0, 'pick_place').instruction  # the default policy grasps within ~5 steps
    for msg_type, topic in ((Float64MultiArray, COMMANDS), (Float64, GRIPPER_CMD),
                            (JointTrajectory, TRAJECTORY), (TwistStamped, TWIST)):
        listen_once(probe, msg_type, topic)
    # The world steps on the commands relayed here until the gripper closes on the block; then
    # the scene stands still, and the policy keeps seeing (and commanding) the grasp.
    to_world = probe.node.create_publisher(Float64MultiArray, '/world_commands', 10)
    grasp: dict[str, float] = {}

    closed_in_a_row = [0]

    def relay(msg: Float64MultiArray) -> None:
        # Until the policy has commanded the closed gripper 3 times in a row (it sees the
        # grasp, not just a frame from before it); then the world stands still.
        if not grasp:
            to_world.publish(msg)
            closed_in_a_row[0] = closed_in_a_row[0] + 1 if msg.data[6] >= 0.5 else 0
            if closed_in_a_row[0] == 3:
                grasp['at'] = time.monotonic()

    relay_sub = probe.node.create_subscription(Float64MultiArray, COMMANDS, relay, 10)
    start_world(procs, 'task_family:=pick_place', 'seed:=0', commands='/world_commands')
    procs.start('policy_node', *policy_args(default_model_dir(), *ALL_OUTPUTS))
    wait_active(probe, procs)
    instruction = probe.node.create_publisher(String, '/instruction', 10)
    probe.wait_for(instruction.get_subscription_count, 10, 'the instruction subscription', procs)
    instruction.publish(String(data=task))
    probe.wait_for(lambda: grasp, 30, 'the gripper to close on the block', procs)
    faults = [
        ('clearing the instruction', lambda: instruction.publish(String(data=''))),
        ('a whitespace-only instruction', lambda: instruction.publish(String(data=' \t '))),
        ('a 5000-character instruction', lambda: instruction.publish(String(data='x' * 5000))),
        ('deactivate', lambda: change_state(probe, DEACTIVATE)),
        ('shutdown', lambda: change_state(probe, ACTIVE_SHUTDOWN)),
    ]
    shown = {}
    for what, fault in faults:
        if what == 'shutdown':
            assert change_state(probe, ACTIVATE)
        since = len(hold_flags(probe))
        instruction.publish(String(data=task))
        probe.wait_for(lambda i=since: sum(not h for h in hold_flags(probe)[i:]) >= 2, 30,
                       f'commands before {what}', procs)
        shown[f'following {what}'] = get_parameter(probe, 'instruction').string_value
        since = len(hold_flags(probe))
        fault()
        probe.wait_for(lambda i=since: any(hold_flags(probe)[i:]), 10, f'a hold after {what}',
                       procs)
        probe.spin(0.3)  # a second hold would arrive within a few ticks
        assert sum(hold_flags(probe)[since:]) == 1, f'{what}: expected exactly one hold'
        if what.endswith('instruction'):
            shown[f'after {what}'] = get_parameter(probe, 'instruction').string_value
    # ~/commands and ~/joint_trajectory carry the same commands in the same order (a hold at
    # start-up may precede discovery on one of them: align at the end).
    array, flags = commands(probe), hold_flags(probe)
    n = min(len(array), len(flags))
    paired = [(t, c, h) for (t, c), h in zip(array[-n:], flags[-n:], strict=True)]
    after = [(c, h) for t, c, h in paired if t > grasp['at']]
    holds = [c.tolist() for c, h in after if h]
    assert len(holds) == len(faults), holds
    # Each hold is zero motion with the gripper command sent just before it: closed.
    for i, (c, h) in enumerate(after):
        if h:
            last = next(a for a, held in reversed(after[:i]) if not held)
            assert c.tolist() == [0.0] * 6 + [last[6]] and last[6] >= 0.5, (c, last)
    # The gripper stays closed in every message on every output after the grasp.
    assert all(c[6] >= 0.5 for c, _ in after), after
    assert all(m.data >= 0.5 for t, m in probe.messages[GRIPPER_CMD] if t > grasp['at'])
    trajectories = [m for t, m in probe.messages[TRAJECTORY] if t > grasp['at']]
    assert all(m.joint_names[2] == 'gripper' and p.positions[2] >= 0.5
               for m in trajectories for p in m.points)
    twists = [m.twist for t, m in probe.messages[TWIST] if t > grasp['at']]
    assert sum(t.linear.x == t.linear.y == t.angular.z == 0.0 for t in twists) >= len(faults)
    # Before any gripper command a hold commands no gripper: NaN, nothing on ~/gripper_cmd.
    first_action = next(i for i, (_, c) in enumerate(array) if not is_hold(c))
    assert all(is_hold(c) and np.isnan(c[6]) for _, c in array[:first_action])
    assert probe.messages[GRIPPER_CMD][0][0] >= array[first_action][0] - 0.05
    # The parameter shows the instruction the node follows, wherever it came from.
    assert shown == {k: task if k.startswith('following') else '' for k in shown}
    # The node says it stopped and why, in its real lifecycle state.
    diag = probe.wait_for(
        lambda: (probe.diagnostics() or {}).get('lifecycle_state') == 'finalized'
        and probe.diagnostics(), 5, 'finalized diagnostics', procs)
    assert diag['level'] == 1 and diag['message'] == 'finalized: not commanding (shut down)'
    probe.node.destroy_subscription(relay_sub)
    probe.node.destroy_publisher(to_world)
    probe.node.destroy_publisher(instruction)


@pytest.mark.parametrize('sig', [  # each once in the default tier, again in the slow one
    signal.SIGINT, signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow),
    pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_every_signal_exit_ends_in_one_hold(probe, procs, tiny_dir, sig):
    listen_once(probe, Float64MultiArray, COMMANDS)
    listen_once(probe, TimeReference, TIMING, 100)
    start_world(procs)
    node = procs.start('policy_node', *policy_args(tiny_dir, f'instruction:={TASK}'))
    wait_active(probe, procs)
    wait_for_actions(probe, procs, count=3)
    sent = time.monotonic()
    node.send_signal(sig)
    probe.wait_for(lambda: node.poll() is not None, 15, 'policy_node to exit', procs)
    probe.spin(0.5)
    # ~/command_timing tells a hold from an action that happens to be zero motion.
    kinds = [m.source for _, m in probe.messages[TIMING]]
    after = [m.source for t, m in probe.messages[TIMING] if t >= sent]
    assert after.count('hold') == 1 and after[-1] == 'hold', f'{sig.name}: {after}\n' \
        f'{procs.logs()}'
    # The same commands in the same order (aligned at the end: a hold at start-up may
    # precede discovery on one of the topics): zero motion, the last action's gripper kept.
    array = [c for _, c in commands(probe)]
    paired = list(zip(array[::-1], kinds[::-1], strict=False))
    last_action = next(c for c, kind in paired if kind == 'action')
    assert array[-1][:6].tolist() == [0.0] * 6 and array[-1][6] == last_action[6]
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


def test_a_model_whose_actions_are_not_7_d_is_refused_at_configure(
        probe, procs, tiny_dir, tmp_path):
    model = tmp_path / 'six'
    shutil.copytree(tiny_dir, model)
    config = json.loads((model / 'config.json').read_text())
    for stats in config['norm_stats'].values():  # x, y, z, roll, pitch, yaw: no gripper
        stats['action'] = {k: v[:6] for k, v in stats['action'].items()}
    (model / 'config.json').write_text(json.dumps(config))
    node = procs.start('policy_node', *policy_args(model))
    probe.wait_for(lambda: node.poll() is not None, 60, 'policy_node to refuse the model')
    assert node.returncode != 0
    assert 'predicts 6-D actions; this node commands 7-D ones' in node_log(procs)


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
    procs.start('policy_node', *policy_args(tiny_dir, f'instruction:={TASK}', 'accel:=[none]',
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
    """Encode a small PNG that declares a huge image (flat grey compresses to almost nothing)."""
    ok, data = cv2.imencode('.png', np.full((side, side), 128, np.uint8))
    assert ok
    return data.tobytes()


@pytest.mark.slow  # the header check is unit-tested in test_params_convert (default tier)
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
    bad = (png_bomb(8000), png_bomb(12000), bytes(corrupt), jpeg[:len(jpeg) // 2],
           b'\xff\xd8garbage', b'')
    sent = publish_frames(probe, camera, good, 1.0, encode=rgb_to_compressed)
    wait_for_actions(probe, procs, count=3)
    since, published = len(commands(probe)), 0
    for i, data in enumerate(bad, start=1):
        # A reliable reader of depth 5 may still lose a frame to a busy node: each bad frame
        # is sent until the node has counted it, with good frames in between meanwhile.
        def counted(i=i):
            return int((probe.diagnostics() or {}).get('rejected_frames', 0)) >= i
        for _ in range(3):
            camera.publish(CompressedImage(format='png' if data[1:4] == b'PNG' else 'jpeg',
                                           data=data))
            published += 1
            end = time.monotonic() + 2.5
            while not counted() and time.monotonic() < end:
                sent += publish_frames(probe, camera, good, 0.1, encode=rgb_to_compressed)
            if counted():
                break
        assert counted(), f'bad frame {i} never counted: {probe.diagnostics()}'
    sent += publish_frames(probe, camera, good, 1.1, encode=rgb_to_compressed)  # diagnostics
    assert not any(is_hold(c) for _, c in commands(probe)[since:]), procs.logs()
    diag = probe.diagnostics()
    assert len(bad) <= int(diag['rejected_frames']) <= published, (published, diag)
    # Good frames count as frames, rejected ones never do (some good ones may be lost).
    assert sent // 2 <= int(diag['frames']) <= sent, (sent, diag)
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


@pytest.mark.slow  # 10 s; the default tier's 5 minutes went to the joint outputs' test
def test_an_instruction_flood_starves_nothing(probe, procs, tiny_dir):
    listen_once(probe, Float64MultiArray, COMMANDS)
    start_world(procs, 'camera_rate_hz:=30.0')
    # What is tested is the camera; the flood's CPU may slow inference past the watchdog's
    # default on a loaded machine, which would be a (correct) hold of its own.
    procs.start('policy_node', *policy_args(tiny_dir, f'instruction:={TASK}',
                                            'max_command_gap_s:=2.0'))
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
