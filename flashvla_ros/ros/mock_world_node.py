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
mock_world: the Gazebo-free tabletop as a ROS 2 node (or an open-loop frame player).

The world node (ros/world_node.py) serving the mock world, under the node name `mock_world`.
Closed loop: publishes camera frames (`image_raw`, rgb8) at `camera_rate_hz` and the task on
`instruction`; every `commands` message (Float64MultiArray, the policy node's 7-D command)
advances the world one step. An episode ends on success or after `max_steps` commands; the
result goes out on `~/episode_result` (JSON) and `~/success`, then a new seed starts.
Open loop (`frames_source` set): frames come from a folder of images or a video file.
"""

from __future__ import annotations

from .world_node import FrameSource, WorldNode, run

__all__ = ['FrameSource', 'MockWorld', 'main']


class MockWorld(WorldNode):
    """The world node serving the mock tabletop, named `mock_world`."""

    def __init__(self, **kwargs) -> None:
        super().__init__('mock', 'mock_world', **kwargs)


def main(args: list[str] | None = None) -> None:
    run(MockWorld, args)


if __name__ == '__main__':
    main()
