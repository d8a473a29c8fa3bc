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

Closed loop: publishes camera frames (`image_raw`, rgb8) at `camera_rate_hz` and the task on
`instruction`; every `commands` message (Float64MultiArray, the policy node's 7-D command)
advances the world one step. An episode ends on success or after `max_steps` commands; the
result goes out on `~/episode_result` (JSON) and `~/success`, then a new seed starts.
Open loop (`frames_source` set): frames come from a folder of images or a video file.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from ..sim.tasks import FAMILIES, Episode
from .convert import rgb_to_compressed, rgb_to_image

LATCHED = QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.bmp'}


class FrameSource:
    """Frames from a folder of images (sorted by name) or a video file, looping."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if self.path.is_dir() else []
        self.video = None if self.path.is_dir() else cv2.VideoCapture(str(self.path))
        if self.video is not None and not self.video.isOpened():
            raise ValueError(f'{path}: not a folder of images nor a readable video')
        if self.path.is_dir() and not self.files:
            raise ValueError(f'{path}: folder has no images ({sorted(IMAGE_SUFFIXES)})')
        self.index = 0

    def next(self) -> np.ndarray:
        if self.video is not None:
            ok, bgr = self.video.read()
            if not ok:
                self.video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self.video.read()
        else:
            bgr = cv2.imread(str(self.files[self.index % len(self.files)]), cv2.IMREAD_COLOR)
            self.index += 1
            ok = bgr is not None
        if not ok:
            raise ValueError(f'{self.path}: cannot read frame {self.index}')
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class MockWorld(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__('mock_world', **kwargs)

        def param(name, default, description):
            return self.declare_parameter(
                name, default, ParameterDescriptor(description=description)).value

        self.seed = param('seed', 0, 'Seed of the first episode; each reset uses the next one.')
        self.family = param('task_family', '', f'One of {list(FAMILIES)}; empty = mixed.')
        rate = param('camera_rate_hz', 20.0, 'Camera frame rate, Hz.')
        self.image_size = param('image_size', 224, 'Square camera image size, pixels.')
        self.max_steps = param('max_steps', 80, 'Commands per episode before it counts as failed.')
        self.reset_delay_s = param('reset_delay_s', 0.5, 'Pause between episodes, s.')
        self.compressed = param('publish_compressed', False, 'Also publish JPEG frames.')
        source = param('frames_source', '', 'Open loop: folder of images or video file.')
        self.open_loop_instruction = param('instruction', 'pick up the red block',
                                           'Instruction published in open-loop mode.')
        # Relative, like every name here: in a launch namespace it resolves to
        # /<ns>/policy_node/reset, the service of the policy node started beside this one.
        reset_service = param('policy_reset_service', 'policy_node/reset',
                              'Trigger called at each new episode so the policy forgets the '
                              'last one (its reuse memory); relative names resolve in this '
                              "node's namespace; empty = none.")
        self.policy_reset = self.create_client(Trigger, reset_service) if reset_service else None
        self.policy_resets = 0  # reset calls sent
        self.episodes = 0
        if self.family and self.family not in FAMILIES:
            raise ValueError(f'task_family {self.family!r} is not one of {list(FAMILIES)}')
        if rate <= 0:
            raise ValueError('camera_rate_hz must be positive')

        self.image_pub = self.create_publisher(Image, 'image_raw', qos_profile_sensor_data)
        self.compressed_pub = self.create_publisher(
            CompressedImage, 'image_raw/compressed', qos_profile_sensor_data)
        self.instruction_pub = self.create_publisher(String, 'instruction', LATCHED)
        self.success_pub = self.create_publisher(Bool, '~/success', LATCHED)
        self.result_pub = self.create_publisher(String, '~/episode_result', 10)
        self.rejected_commands = 0
        self.episode: Episode | None = None
        self.source = FrameSource(source) if source else None
        self.resume_at = 0.0
        if self.source is None:
            self.create_subscription(Float64MultiArray, 'commands', self._on_command, 10)
            self.create_service(Trigger, '~/reset', self._on_reset)
            self._new_episode()
        self.create_timer(1.0 / rate, self._publish_frame)
        # Re-sent every second: a volatile subscriber that starts late still gets the task.
        self.create_timer(1.0, self._publish_instruction)

    def _new_episode(self) -> None:
        self.episode = Episode(self.seed, self.family or None, max_steps=self.max_steps,
                               image_size=self.image_size)
        self.get_logger().info(f'episode seed {self.seed}: {self.episode.instruction!r}')
        self._publish_instruction()
        self.episodes += 1
        if self.policy_reset is None or self.episodes == 1:
            return  # the first episode starts with the world, before any policy has memory
        if self.policy_reset.service_is_ready():
            self.policy_reset.call_async(Trigger.Request())  # fire and forget: never wait
            self.policy_resets += 1
        else:
            self.get_logger().warning(
                f'policy reset service {self.policy_reset.srv_name!r} (namespace '
                f'{self.get_namespace()!r}) is not available: the policy keeps its memory of '
                'the last episode; set policy_reset_service, or empty it for no reset',
                throttle_duration_sec=60.0)

    def _instruction(self) -> str:
        return self.episode.instruction if self.episode else self.open_loop_instruction

    def _publish_instruction(self) -> None:
        self.instruction_pub.publish(String(data=self._instruction()))

    def _publish_frame(self) -> None:
        rgb = self.source.next() if self.source else self.episode.observe()
        stamp = self.get_clock().now().to_msg()
        self.image_pub.publish(rgb_to_image(rgb, stamp))
        if self.compressed:
            self.compressed_pub.publish(rgb_to_compressed(rgb, stamp))
        if self.episode is not None and self.resume_at and self._now() >= self.resume_at:
            self.resume_at = 0.0
            self.seed += 1
            self._new_episode()

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_command(self, msg: Float64MultiArray) -> None:
        if self.resume_at:
            return  # between episodes
        values = np.asarray(msg.data, dtype=np.float64)
        try:
            self.episode.step(values)
        except ValueError as exc:
            self.rejected_commands += 1
            self.get_logger().warning(f'rejected command: {exc}', throttle_duration_sec=2.0)
            return
        if self.episode.done:
            self._finish()

    def _finish(self) -> None:
        ep = self.episode
        result = {'seed': ep.seed, 'family': ep.task.family, 'instruction': ep.instruction,
                  'success': ep.success(), 'steps': ep.state.steps}
        self.result_pub.publish(String(data=json.dumps(result)))
        self.success_pub.publish(Bool(data=ep.success()))
        self.get_logger().info(f'episode seed {ep.seed} done: {result}')
        self.resume_at = self._now() + self.reset_delay_s

    def _on_reset(self, request, response):
        self.seed += 1
        self.resume_at = 0.0
        self._new_episode()
        response.success, response.message = True, f'seed {self.seed}: {self._instruction()}'
        return response


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = MockWorld()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
