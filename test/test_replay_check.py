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
The bag-replay checks users run on their own setups, on the shipped test bag and golden file.

The launch test (test_launch_bag_replay.py) needs launch_testing; its checking and playing
parts are exercised here on real data: the golden commands recomputed from the bag, the node's
command stream rebuilt from them, then broken one way at a time.
"""

import os
import time

import numpy as np
import pytest
from ros_harness import BAG, GOLDEN, ros_environment

from flashvla_ros.control.safety import SafetyLimits
from flashvla_ros.params import build_config
from flashvla_ros.ros.bag import read_messages
from flashvla_ros.testing.replay import (
    Expectations,
    assert_commands,
    check_commands,
    golden_from_bag,
    is_hold,
    load_golden,
)

CONFIG = build_config({})
LIMITS = SafetyLimits.from_lists(CONFIG.action_scale, CONFIG.action_lower, CONFIG.action_upper)


@pytest.fixture(scope='module')
def golden():
    return load_golden(GOLDEN)


@pytest.fixture(scope='module')
def stream(golden):
    """Rebuild the node's replay output: a hold, one command per frame, a final hold."""
    stamps = [t * 1e-9 for _, _, t, _ in read_messages(BAG, ['/image_raw'])]
    hold = [0.0] * 6 + [np.nan]  # before any gripper command: "no gripper command"
    last = [0.0] * 6 + [golden[-1][6]]  # stale camera after the bag: the gripper is kept
    return ([stamps[0] - 0.1, *stamps, stamps[-1] + 1.0],
            np.array([hold, *golden, last]))


def expectations(reference, **changes) -> Expectations:
    values = dict(count=len(reference), rate_hz=(1.5, 2.5), lower=CONFIG.action_lower,
                  upper=CONFIG.action_upper, golden=reference, atol=1e-9)
    values.update(changes)
    return Expectations(**values)


def test_golden_file_is_what_the_tiny_policy_commands_for_the_bag(tiny_policy, golden):
    again = golden_from_bag(tiny_policy, BAG, 'put the red block in the purple zone', LIMITS)
    np.testing.assert_allclose(again['commands'], golden, atol=1e-9)
    np.testing.assert_allclose(again['raw_actions'], load_golden(GOLDEN, 'raw_actions'),
                               atol=1e-9)
    assert len(golden) == 20 and len(np.unique(golden, axis=0)) > 1


def test_the_replay_as_the_node_sends_it_passes(stream, golden):
    stamps, commands = stream
    assert check_commands(stamps, commands, expectations(golden)) == []
    assert is_hold(commands[0]) and is_hold(commands[-1]) and not is_hold(commands[1])


def test_each_kind_of_fault_is_reported(stream, golden):
    stamps, commands = stream
    expect = expectations(golden)

    def problems(stamps, commands, expect=expect):
        return '\n'.join(check_commands(stamps, commands, expect))

    # A frame lost before the node saw it: one command short.
    lost = problems(stamps[:5] + stamps[6:], np.delete(commands, 5, axis=0))
    assert '19 commands, expected 20' in lost and '19 commands to compare with 20' in lost
    # A hold in the middle (e.g. the camera went stale).
    held = commands.copy()
    held[8, :6] = 0.0
    assert '1 unexpected holds (at messages [0, 8, 21])' in problems(stamps, held)
    assert problems(stamps, held, expectations(golden, max_holds=1, count=19, golden=None)) == ''
    # Actions off the golden ones beyond the tolerance, and within it.
    off = commands.copy()
    off[3, 2] += 2e-3
    assert 'worst: command 2 dimension 2' in problems(stamps, off)
    assert problems(stamps, off, expectations(golden, atol=3e-3)) == ''
    # Beyond the limits.
    wild = commands.copy()
    wild[4, 0] = 0.2
    assert 'beyond the upper limits, first: message 4 dimension 0 = 0.2' in problems(stamps, wild)
    # Too slow.
    slow = [stamps[0], *(s * 1.0 + i * 0.5 for i, s in enumerate(stamps[1:]))]
    assert 'expected 1.5..2.5 Hz' in problems(slow, commands)
    # Holds at the edges are errors when the setup promises none.
    assert '2 unexpected holds' in problems(stamps, commands, expectations(golden,
                                                                           edge_holds=False))
    with pytest.raises(AssertionError, match='replay check failed'):
        assert_commands(stamps, wild, expect)


def test_player_waits_for_the_subscriber_then_delivers_every_frame():
    rclpy = pytest.importorskip('rclpy', reason='real rclpy (pip wheels) is part of make test')
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from flashvla_ros.ros.bag import Player

    os.environ.update(ros_environment())
    rclpy.init()
    try:
        player_node = rclpy.create_node('replay_player')
        listener = rclpy.create_node('replay_listener')
        player = Player(player_node, BAG, ['/image_raw'])
        assert not player.matched()
        got = []
        listener.create_subscription(Image, '/image_raw', got.append, 100)  # reliable
        assert player.wait_for_subscribers(10.0)
        executor = SingleThreadedExecutor()
        executor.add_node(listener)
        start = time.monotonic()
        assert player.play(rate=8.0) == 20  # 9.5 s of bag in about 1.2 s
        end = time.monotonic() + 5.0
        while len(got) < 20 and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        assert time.monotonic() - start > 1.0
        frames = [deserialize_message(m, Image)
                  for _, _, _, m in read_messages(BAG, ['/image_raw'])]
        # Every frame, field for field and in order (another graph that shares the DDS domain
        # could add frames of its own; those are not the player's). Messages are compared, not
        # their CDR bytes: the serializer leaves alignment padding unset.
        assert [m for m in got if m in frames] == frames, (len(got), len(frames))
    finally:
        rclpy.shutdown()
