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
launch_testing: `ros2 launch`-style graph with `ros2 bag play` feeding the policy node.

Runs only where launch_testing and the ros2 CLI exist (a ROS workspace: `colcon test`);
elsewhere it is skipped and test_ros_nodes.py runs the same graph with real processes.
"""

import os
from pathlib import Path
import shutil
import time
import unittest

import pytest

pytest.importorskip('launch_testing', reason='needs a ROS 2 install')
if shutil.which('ros2') is None:
    pytest.skip('needs the ros2 CLI (ros2 bag play)', allow_module_level=True)

from launch import LaunchDescription  # noqa: E402
from launch.actions import ExecuteProcess, TimerAction  # noqa: E402
from launch_ros.actions import Node  # noqa: E402
import launch_testing.actions  # noqa: E402
import rclpy  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

BAG = Path(__file__).resolve().parent / 'data' / 'mock_world_bag'


@pytest.mark.launch_test
def generate_test_description():
    model = os.environ.get('FLASHVLA_TEST_MODEL', '')
    policy = Node(package='flashvla_ros', executable='policy_node', name='policy_node',
                  parameters=[{'model': model, 'instruction': 'put the red block in the '
                               'purple zone', 'max_image_age_s': 2.0,
                               'outputs': ['array', 'raw']}])
    play = ExecuteProcess(cmd=['ros2', 'bag', 'play', str(BAG)], output='screen')
    return LaunchDescription([policy, TimerAction(period=5.0, actions=[play]),
                              launch_testing.actions.ReadyToTest()])


class TestBagReplay(unittest.TestCase):
    def test_commands_follow_the_replayed_frames(self):
        rclpy.init()
        node = rclpy.create_node('launch_test_probe')
        got = []
        node.create_subscription(Float64MultiArray, '/policy_node/raw_action',
                                 lambda m: got.append(m.data), 10)
        end = time.monotonic() + 30.0
        while time.monotonic() < end and len(got) < 15:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.destroy_node()
        rclpy.shutdown()
        self.assertGreaterEqual(len(got), 15)
