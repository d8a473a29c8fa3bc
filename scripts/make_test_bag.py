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
Record `test/data/mock_world_bag` from a running mock world, and its golden commands.

    python scripts/make_test_bag.py

The mock world node runs in this process with a scripted-expert driver sending its commands,
so the frames show a task being solved; `image_raw` (2 Hz) and `instruction` are recorded
through real ROS subscriptions into an MCAP bag (one episode, one instruction). The golden
file holds what the tiny model (`flashvla-make-tiny --seed 0`, stored fp32) commands for every
recorded frame under that instruction, computed without ROS; the bag-replay test checks that
the node publishes exactly that.
"""

import json
from pathlib import Path
import shutil
import tempfile
import time

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, String

from flashvla_ros.control.safety import SafetyLimits
from flashvla_ros.params import build_config
from flashvla_ros.policy import load_policy
from flashvla_ros.ros.bag import BagWriter, qos_for, read_messages
from flashvla_ros.ros.mock_world_node import MockWorld
from flashvla_ros.testing.replay import golden_from_bag
from flashvla_ros.tools.make_tiny import make_tiny

DATA = Path(__file__).resolve().parent.parent / 'test' / 'data'
BAG = DATA / 'mock_world_bag'
GOLDEN = DATA / 'mock_world_bag_golden.json'
DURATION_S = 10.0


def record() -> None:
    rclpy.init()
    world = MockWorld(parameter_overrides=[
        Parameter('seed', value=7), Parameter('task_family', value='pick_place'),
        Parameter('camera_rate_hz', value=2.0), Parameter('max_steps', value=200)])
    driver = Node('expert_driver')
    commands = driver.create_publisher(Float64MultiArray, 'commands', 10)

    def drive() -> None:
        if not world.episode.done:
            commands.publish(Float64MultiArray(data=world.episode.expert_action().tolist()))

    driver.create_timer(0.5, drive)  # one episode fills the bag
    recorder = Node('bag_recorder')
    writer = BagWriter(BAG)
    for topic, kind in (('/image_raw', Image), ('/instruction', String)):
        type_name = f'{kind.__module__.split(".")[0]}/msg/{kind.__name__}'

        def on_message(data, topic=topic, type_name=type_name):
            writer.write(topic, type_name, recorder.get_clock().now().nanoseconds, data)

        recorder.create_subscription(kind, topic, on_message, qos_for(type_name), raw=True)
    executor = SingleThreadedExecutor()
    for node in (world, driver, recorder):
        executor.add_node(node)
    end = time.monotonic() + DURATION_S
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    writer.close()
    rclpy.shutdown()


def golden() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        policy = load_policy(str(make_tiny(Path(tmp) / 'tiny', seed=0, dtype='float32')))
        cfg = build_config({})
        limits = SafetyLimits.from_lists(cfg.action_scale, cfg.action_lower, cfg.action_upper)
        instructions = {deserialize_message(data, String).data
                        for topic, _, _, data in read_messages(BAG, ['/instruction'])}
        assert len(instructions) == 1, f'the bag must hold one episode, got {instructions}'
        instruction = instructions.pop()
        result = golden_from_bag(policy, BAG, instruction, limits)
        raw, commands = result['raw_actions'], result['commands']
    GOLDEN.write_text(json.dumps({
        'model': 'flashvla-make-tiny --seed 0 (stored float32)',
        'instruction': instruction, 'raw_actions': raw, 'commands': commands,
    }, indent=1) + '\n')
    print(f'{len(raw)} frames; {len(np.unique(np.array(raw), axis=0))} distinct actions')


if __name__ == '__main__':
    shutil.rmtree(BAG, ignore_errors=True)
    record()
    golden()
    print(f'wrote {BAG} ({sum(f.stat().st_size for f in BAG.iterdir()) / 1e6:.2f} MB), {GOLDEN}')
