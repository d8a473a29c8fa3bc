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
The nodes as users run them: separate processes, real rclpy and Fast DDS, real messages.

Covers the closed loop with the mock world, bag replay against golden commands, bad inputs of
every kind, the stale-camera hold, parameter validation and lifecycle transitions.
"""

import json
import time

import numpy as np
import pytest
from ros_harness import (
    BAG,
    COMMANDS,
    GOLDEN,
    RAW,
    commands,
    is_hold,
    listen_once,
    param,
    policy_args,
    wait_active,
    within_limits,
)

rclpy = pytest.importorskip('rclpy', reason='real rclpy (pip wheels) is part of make test')
pytestmark = pytest.mark.usefixtures('fresh_probe')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, TimeReference  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from flashvla_ros.ros.bag import read_messages  # noqa: E402
from flashvla_ros.ros.command_probe import seconds  # noqa: E402
from flashvla_ros.ros.processes import interrupt  # noqa: E402

TIMING = '/policy_node/command_timing'


def test_closed_loop_with_the_mock_world(probe, procs, tiny_dir):
    listen_once(probe, Float64MultiArray, COMMANDS)
    listen_once(probe, String, '/mock_world/episode_result')
    procs.start('mock_world', '--ros-args', '-p', 'seed:=3', '-p', 'max_steps:=30',
                '-r', f'commands:={COMMANDS}')
    listen_once(probe, Image, '/policy_node/debug_image')
    listen_once(probe, TimeReference, TIMING, 100)
    # Quantized through the real node: int8 decoder weights under the shipped accelerator.
    procs.start('policy_node', *policy_args(tiny_dir, 'debug_image:=true', 'quantize:=int8'))
    wait_active(probe, procs)
    probe.wait_for(lambda: len(commands(probe)) > 3, 60, 'commands', procs)
    probe.spin(0.2)
    probe.messages[COMMANDS].clear()
    probe.messages[TIMING].clear()
    probe.spin(3.0)
    got = commands(probe)
    # One timing record per command, right after it: the tick's planned time on a fixed
    # 10 Hz grid, and the camera frame the action came from, before that time.
    timing = [m for _, m in probe.messages[TIMING]]
    assert abs(len(timing) - len(got)) <= 1, (len(timing), len(got))
    planned = np.array([seconds(m.header.stamp) for m in timing])
    ticks = np.diff(planned) / 0.1
    assert np.allclose(ticks, np.round(ticks), atol=1e-4) and (np.round(ticks) >= 1).all(), ticks
    actions = [m for m in timing if m.source == 'action']
    assert actions and all(0 < seconds(m.header.stamp) - seconds(m.time_ref) < 1.0
                           for m in actions)  # max_action_age_s
    # The debug view: the camera frame with FlashVLA's dropped tokens darkened (160 of 256 kept).
    debug = [m for _, m in probe.messages['/policy_node/debug_image']]
    assert len(debug) >= 10 and (debug[-1].width, debug[-1].height) == (224, 224)
    assert debug[-1].encoding == 'rgb8'
    rate = (len(got) - 1) / (got[-1][0] - got[0][0])
    assert 5.0 <= rate <= 12.0, f'commands at {rate:.1f} Hz for a 10 Hz control rate'
    values = np.array([c for _, c in got])
    assert within_limits(values)
    # The world consumes the commands: 30 of them end an episode.
    result = probe.wait_for(lambda: probe.messages['/mock_world/episode_result'], 20,
                            'an episode to end', procs)
    assert json.loads(result[0][1].data)['steps'] == 30
    diag = probe.diagnostics()
    assert diag['level'] == 0 and diag['message'] == 'commanding', diag
    assert float(diag['latency_p50_ms']) > 0 and int(diag['inferences']) > 10
    # The shipped configuration accelerates: FlashVLA's conservative preset keeps 160 of 256.
    assert diag['accel'] == 'flashvla' and diag['policy_kept_tokens'] == '160', diag
    assert diag['quantize'] == 'int8'
    assert 0.0 <= float(diag['policy_reuse_rate']) <= 1.0
    # Saved FLOPs can be slightly negative on this random model: its draft guesses are mostly
    # wrong, and verifying them runs the 32k-word LM head at 6 extra positions.
    assert -0.1 < float(diag['policy_flops_saved']) < 1.0
    assert float(diag['policy_gflops_step']) > 0
    assert (diag['chunk_steps'], diag['chunk_steps_from']) == ('0', 'default')  # no advice


def test_bag_replay_reproduces_golden_commands(probe, procs, tiny_dir):
    golden = json.loads(GOLDEN.read_text())
    listen_once(probe, Float64MultiArray, COMMANDS)
    listen_once(probe, Float64MultiArray, RAW)
    listen_once(probe, TimeReference, TIMING, 100)
    procs.start('policy_node', *policy_args(
        tiny_dir, f'instruction:={golden["instruction"]}', 'max_image_age_s:=2.0',
        'max_command_gap_s:=2.0',  # the bag's camera runs at 2 Hz
        'control_rate_hz:=20.0', 'outputs:=[array, raw]', 'image_reliability:=reliable',
        'accel:=[none]'),  # the golden file is the plain model's
        '-r', 'image_raw:=/golden/image_raw')
    wait_active(probe, procs)
    # The camera on a topic of its own: a node of the test before (killed) is still known
    # to discovery for a while on /image_raw, and the player would start for that ghost.
    player = procs.start('flashvla-bag', 'play', str(BAG), '--topic', '/image_raw', '--rate',
                         '2', '--wait-subscribers', '20', '--ros-args', '-r',
                         '/image_raw:=/golden/image_raw')
    probe.wait_for(lambda: player.poll() is not None, 30, 'the bag to finish', procs)
    assert player.returncode == 0
    n = len(golden['raw_actions'])

    def settled():  # every frame arrived and was inferred on, or replaced unread
        d = probe.diagnostics() or {}
        done = int(d.get('frames', 0)) == n \
            and int(d.get('inferences', 0)) + int(d.get('dropped_frames', 0)) == n
        return done and len(probe.messages[RAW]) == int(d['inferences']) and d

    diag = probe.wait_for(settled, 15, f'actions for all {n} replayed frames', procs)
    probe.spin(2.5)  # the camera goes stale after the bag: one hold, then silence
    # Each command names its source frame (~/command_timing), so every one is checked against
    # the golden command of that frame. A frame replaced in the node's one-slot mailbox before
    # it was read (a player that had to catch up on a busy machine) has no command; the node
    # counts it, and it may happen at most twice here.
    dropped = int(diag['dropped_frames'])
    assert dropped <= 2, diag
    stamps = [seconds(deserialize_message(data, Image).header.stamp)
              for *_, data in read_messages(BAG, ['/image_raw'])]
    sent = [c for _, c in commands(probe)]
    timing = [m for _, m in probe.messages[TIMING]]
    m = min(len(sent), len(timing))  # a hold at activation may precede discovery on one
    sent, timing = sent[-m:], timing[-m:]
    kinds = [t.source for t in timing]
    assert [is_hold(c) for c in sent] == [k == 'hold' for k in kinds]
    first = kinds.index('action')
    assert kinds[-1] == 'hold' and 'hold' not in kinds[first:-1], (kinds, procs.logs())
    frames = [stamps.index(seconds(t.time_ref)) for t in timing if t.source == 'action']
    assert frames == sorted(set(frames)) and len(frames) == n - dropped, (frames, diag)
    actions = [c for c, k in zip(sent, kinds, strict=True) if k == 'action']
    np.testing.assert_allclose(actions, [golden['commands'][i] for i in frames], atol=1e-9)
    raw = [c for _, c in commands(probe, RAW)]
    np.testing.assert_allclose(raw, [golden['raw_actions'][i] for i in frames], atol=1e-9)


def image(encoding: str, width: int, height: int, step: int, data: bytes) -> Image:
    msg = Image(encoding=encoding, width=width, height=height, step=step)
    msg.data = data
    return msg


def test_bad_inputs_are_rejected_and_counted(probe, procs, tiny_dir):
    listen_once(probe, Float64MultiArray, COMMANDS)
    procs.start('policy_node', *policy_args(tiny_dir, 'instruction:=push the red block',
                                            'image_reliability:=reliable'))
    wait_active(probe, procs)
    assert probe.node.count_publishers('/policy_node/debug_image') == 0  # off by default
    images = probe.node.create_publisher(Image, '/image_raw', 10)
    instructions = probe.node.create_publisher(String, '/instruction', 10)
    probe.wait_for(lambda: images.get_subscription_count() and
                   instructions.get_subscription_count(), 10, 'subscriptions', procs)
    probe.spin(0.3)
    good = np.random.default_rng(0).integers(0, 256, (48, 64, 4), dtype=np.uint8).tobytes()
    bad = [
        image('yuv422', 64, 48, 128, bytes(64 * 48 * 2)),  # unsupported encoding
        image('rgb8', 64, 48, 192, bytes(100)),  # truncated data
        image('rgb8', 0, 48, 0, b''),  # empty image
        image('rgb8', 20000, 10, 60000, bytes(60000)),  # absurd size
        image('rgb8', 64, 48, 10, bytes(64 * 48 * 3)),  # step smaller than a row
    ]
    valid = [image('bgra8', 64, 48, 256, good), image('mono8', 64, 48, 64, good[:64 * 48])]
    for msg in [*bad, *valid]:
        images.publish(msg)
        probe.spin(0.15)
    instructions.publish(String(data='go ' * 2000))  # far too long
    probe.spin(0.5)
    instructions.publish(String(data='push the red block'))

    def counted():
        d = probe.diagnostics() or {}
        return int(d.get('rejected_inputs', 0)) == 6 and int(d.get('frames', 0)) >= 2 and d

    diag = probe.wait_for(counted, 10, '6 rejections and 2 accepted frames', procs)
    assert 'instruction rejected' in diag['last_error'], diag  # the last of the six
    assert all(p.poll() is None for p, _ in procs.procs), procs.logs()
    values = np.array([c for _, c in commands(probe)] or np.zeros((1, 7)))
    assert within_limits(values)
    probe.node.destroy_publisher(images)
    probe.node.destroy_publisher(instructions)


@pytest.mark.slow  # the default tier sends these in test_safety_ros's compressed-frame test
def test_corrupt_compressed_images_are_rejected(probe, procs, tiny_dir):
    import cv2

    procs.start('policy_node', *policy_args(tiny_dir, 'image_transport:=compressed',
                                            'instruction:=push the red block',
                                            'image_reliability:=reliable'))
    wait_active(probe, procs)
    pub = probe.node.create_publisher(CompressedImage, '/image_raw/compressed', 10)
    probe.wait_for(pub.get_subscription_count, 10, 'the subscription', procs)
    probe.spin(0.3)
    _, jpeg = cv2.imencode('.jpg', np.full((48, 64, 3), 128, np.uint8))
    for data in (b'\xff\xd8garbage', b'', jpeg.tobytes()):
        pub.publish(CompressedImage(format='jpeg', data=data))
        probe.spin(0.2)

    def counted():
        d = probe.diagnostics() or {}
        return int(d.get('rejected_inputs', 0)) == 2 and int(d.get('frames', 0)) == 1 and d

    probe.wait_for(counted, 10, '2 rejected and 1 accepted compressed frames', procs)
    assert all(p.poll() is None for p, _ in procs.procs)
    probe.node.destroy_publisher(pub)


def test_stopping_the_camera_holds_within_max_image_age(probe, procs, tiny_dir):
    listen_once(probe, Float64MultiArray, COMMANDS)
    world = procs.start('mock_world', '--ros-args', '-p', 'max_steps:=1000',
                        '-r', f'commands:={COMMANDS}')
    procs.start('policy_node', *policy_args(tiny_dir, 'max_image_age_s:=0.5'))
    wait_active(probe, procs)
    probe.wait_for(lambda: len(commands(probe)) > 5, 60, 'commands', procs)
    # The last frame leaves the camera between the interrupt and the process's exit.
    stop_sent = time.monotonic()
    interrupt(world)
    stopped = time.monotonic()
    probe.spin(2.0)
    after = [(t, c) for t, c in commands(probe) if t > stop_sent]
    holds = [(t, c) for t, c in after if is_hold(c)]
    assert len(holds) == 1, f'expected exactly one hold after the camera stopped: {after}'
    assert after[-1][0] == holds[0][0], 'kept commanding after the hold'
    # Triggered by staleness (not before max_image_age_s after the last frame) and promptly;
    # the upper margin covers a control period plus scheduling on a loaded 2-core machine.
    assert holds[0][0] >= stop_sent - 0.05 + 0.5 - 0.05
    assert holds[0][0] <= stopped + 0.5 + 1.0, f'hold {holds[0][0] - stopped:.3f} s after exit'
    diag = probe.diagnostics()
    assert diag['level'] == 2 and 'camera stale' in diag['message']


def test_parameter_changes_are_validated(probe, procs, tiny_dir):
    procs.start('policy_node', *policy_args(tiny_dir))
    wait_active(probe, procs)
    cases = [
        (param('control_rate_hz', 5.0), 'read-only'),
        (param('max_image_age_s', -1.0), ''),  # outside the declared range
        (param('max_image_age_s', 'soon'), ''),  # wrong type
        (param('action_lower', [0.0] * 3), 'needs 7 entries'),
        (param('action_lower', [0.1] * 7), 'action_lower > action_upper'),
        (param('action_scale', [float('nan')] * 7), 'finite'),
        (param('flashvla.layer', 3), 'read-only'),
        (param('flashvla.eps2', 1.5), 'eps2=1.5 must be in [0, 1]'),  # live, checked
        # A hold is zero motion: limits must admit it on every motion dimension.
        (param('action_lower', [0.01] + [-0.05] * 5 + [0.0]), "exclude zero in motion dim"),
        (param('action_upper', [0.05] * 2 + [-0.01] + [0.25] * 3 + [1.0]), "dimensions ['z']"),
        # One instruction rule for the parameter and the topic; the token limit needs the model.
        (param('instruction', '   '), 'only whitespace'),
        (param('instruction', 'pick up\x1b[2J the cup'), "control characters ['U+001B']"),
        (param('instruction', 'go ' * 400), 'the limit is 1000'),
        (param('instruction', 'zq' * 400), 'token prompt; the limit is 128'),
        (param('use_sim_time', True), 'fixed at start-up'),
    ]
    for p, reason in cases:
        result = probe.call(SetParameters, '/policy_node/set_parameters',
                            SetParameters.Request(parameters=[p])).results[0]
        assert not result.successful, p.name
        assert reason.lower() in result.reason.lower(), (p.name, result.reason)
    ok = probe.call(SetParameters, '/policy_node/set_parameters',
                    SetParameters.Request(parameters=[param('max_image_age_s', 0.8),
                                                      param('flashvla.eps2', 0.7)]))
    assert all(r.successful for r in ok.results)
    got = probe.call(GetParameters, '/policy_node/get_parameters',
                     GetParameters.Request(names=['max_image_age_s', 'control_rate_hz',
                                                  'flashvla.eps2']))
    assert [v.double_value for v in got.values] == [0.8, 10.0, 0.7]
    # The live option reached the accelerator: its options now say so.
    listen_once(probe, DiagnosticArray, '/diagnostics')
    diag = probe.wait_for(
        lambda: (d := probe.diagnostics() or {}) and "'eps2': 0.7" in d.get('accel_options', '')
        and d, 5.0, 'the live option in the diagnostics', procs)
    assert "'preset': 'conservative'" in diag['accel_options']
    reset = probe.call(Trigger, '/policy_node/reset', Trigger.Request())
    assert reset.success and 'new episode' in reset.message
    # A refused instruction leaves the one the node follows (none here) in place.
    got = probe.call(GetParameters, '/policy_node/get_parameters',
                     GetParameters.Request(names=['instruction']))
    assert got.values[0].string_value == ''


@pytest.mark.slow  # test_lifecycle_shape drives the same transitions in the default tier
def test_lifecycle_without_autostart(probe, procs, tiny_dir):
    listen_once(probe, DiagnosticArray, '/diagnostics')
    listen_once(probe, Float64MultiArray, COMMANDS)
    procs.start('policy_node', *policy_args(tiny_dir, 'autostart:=false'))

    def state():
        return (probe.diagnostics() or {}).get('lifecycle_state')

    probe.wait_for(lambda: state() == 'unconfigured', 60, 'an unconfigured node', procs)
    # Activation holds once (no instruction yet); deactivate and cleanup each end in one hold.
    for transition, expected, holds in ((1, 'inactive', 0), (3, 'active', 1),
                                        (4, 'inactive', 1), (2, 'unconfigured', 1)):
        since = len(commands(probe))
        request = ChangeState.Request()
        request.transition.id = transition
        assert probe.call(ChangeState, '/policy_node/change_state', request).success
        probe.wait_for(lambda e=expected: state() == e, 10, f'state {expected}', procs)
        probe.spin(0.3)
        sent = [c for _, c in commands(probe)[since:]]
        assert len(sent) == holds and all(is_hold(c) for c in sent), (expected, sent)
    diag = probe.diagnostics()
    assert diag['level'] == 1 and diag['message'] == 'unconfigured: not commanding (cleaned up)'
