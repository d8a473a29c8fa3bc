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
launch_testing: the policy node as `ros2 launch` starts it, fed a recorded bag, checked.

Runs where launch_testing exists (a ROS workspace: `colcon test`); elsewhere it is skipped
and test_replay_check.py / test_ros_nodes.py cover the same parts with real processes.

It is also the template for testing your own setup (docs/BAGS.md, "Testing your own
setup"): copy it into your package, point BAG, GOLDEN and PARAMS_FILE at your recording,
golden commands and parameter file, set MODEL and OVERRIDES, and adjust EXPECT. Playing
starts only when the node is active and matched (flashvla_ros.testing.replay), so no frame is
lost to start-up or discovery.
"""

import json
from pathlib import Path
import tempfile
import unittest

import pytest

pytest.importorskip('launch_testing', reason='needs a ROS 2 install (launch_testing)')

from launch import LaunchDescription  # noqa: E402
from launch_ros.actions import Node  # noqa: E402
import launch_testing.actions  # noqa: E402
import rclpy  # noqa: E402

from flashvla_ros.params import build_config  # noqa: E402
from flashvla_ros.testing.replay import Expectations, assert_commands, load_golden  # noqa: E402

DATA = Path(__file__).resolve().parent / 'data'
BAG = DATA / 'mock_world_bag'  # your recording: camera (and instruction) topics
GOLDEN = DATA / 'mock_world_bag_golden.json'  # flashvla_ros.testing.replay.golden_from_bag
PARAMS_FILE = None  # your parameter file, e.g. '/path/to/my_robot.yaml'
INSTRUCTION = json.loads(GOLDEN.read_text())['instruction']
# Your model directory; empty: the tiny model the golden file was made with
# (`flashvla-make-tiny --seed 0`, stored float32), written to a temporary directory.
MODEL = ''
# The bag's camera runs at 2 Hz: the camera age limit and the command watchdog must both
# exceed its 0.5 s frame interval, or every late frame is a (correct) hold.
OVERRIDES = {'instruction': INSTRUCTION, 'max_image_age_s': 2.0, 'max_command_gap_s': 2.0,
             'control_rate_hz': 20.0, 'outputs': ['array', 'raw'],
             'image_reliability': 'reliable',
             'accel': ['none']}  # the golden file is the plain model's
CONFIG = build_config({k: v for k, v in OVERRIDES.items() if k != 'instruction'})
GOLDEN_COMMANDS = load_golden(GOLDEN)
EXPECT = Expectations(
    count=len(GOLDEN_COMMANDS),  # one command per replayed frame: none lost, none extra
    lower=CONFIG.action_lower, upper=CONFIG.action_upper,
    max_holds=0,  # holds only before the first frame and after the camera goes stale
    golden=GOLDEN_COMMANDS, atol=1e-6,
)
RAW_EXPECT = Expectations(count=len(GOLDEN_COMMANDS), golden=load_golden(GOLDEN, 'raw_actions'),
                          atol=1e-6)


def model_dir() -> str:
    if MODEL:
        return MODEL
    from flashvla_ros.tools.make_tiny import make_tiny
    out = Path(tempfile.mkdtemp(prefix='flashvla-launch-test-')) / 'tiny'
    return str(make_tiny(out, seed=0, dtype='float32'))


@pytest.mark.launch_test
def generate_test_description():
    parameters = [PARAMS_FILE] if PARAMS_FILE else []
    parameters.append({**OVERRIDES, 'model': model_dir()})
    policy = Node(package='flashvla_ros', executable='policy_node', name='policy_node',
                  output='screen', parameters=parameters)
    return LaunchDescription([policy, launch_testing.actions.ReadyToTest()])


class TestBagReplay(unittest.TestCase):
    def test_commands_follow_the_replayed_frames(self):
        from flashvla_ros.testing.replay import replay
        rclpy.init()
        node = rclpy.create_node('replay_probe')
        try:
            got = replay(node, BAG, record=['/policy_node/commands', '/policy_node/raw_action'],
                         topics=['/image_raw'], lifecycle_node='/policy_node', wait_s=120.0)
        finally:
            node.destroy_node()
            rclpy.shutdown()
        assert_commands(*got['/policy_node/commands'], EXPECT)
        assert_commands(*got['/policy_node/raw_action'], RAW_EXPECT)
