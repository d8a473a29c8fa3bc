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
The world node: any `sim.worlds.World` as a ROS 2 node (or an open-loop frame player).

`mock_world` serves the Gazebo-free tabletop, `libero_world` a LIBERO suite; one node does both.

Closed loop: publishes the policy camera (`image_raw`, rgb8) at `camera_rate_hz`, the task on
`instruction` (latched, re-sent every second), the robot's joints on `joint_states` and, with
`wrist` (LIBERO), the wrist camera on `wrist/image_raw`. Every `commands` message
(Float64MultiArray, the policy node's 7-D command in metres and radians per step) is converted
into the world's units (`World.command.from_metres`) and advances the world one step. An
episode ends on success or after `max_steps` commands; the result goes out on
`~/episode_result` (JSON) and `~/success` (latched), the policy's `~/reset` is called and the
next episode starts. Open loop (`frames_source` set): frames come from a folder of images or a
video file.

With `control: joint` the world takes joint position targets instead, as a robot's joint
controller would: each `joint_trajectory` message (trajectory_msgs/JointTrajectory, the policy
node's joint output) advances the world one step towards its first point, by joint name
(`Episode.step_joints`); `commands` is then not subscribed. The policy node's parameters for
that path are in config/joints_<world>.yaml.

For LIBERO `image_raw` is `episode.observe()`, the frame of OpenVLA's LIBERO evaluation
(rotated upright, JPEG round trip, lanczos3 to 224 px, optionally its centre crop): a LIBERO
checkpoint behind the policy node sees exactly what OpenVLA's evaluation feeds it (so the
policy node's own `center_crop` stays false; the world's does the crop). LIBERO's steps and
episode starts are slow (~0.1 s and seconds): they run on a thread of their own, which also
owns MuJoCo's GL context, so the executor only hands them over; a command that arrives while
the world is stepping replaces any command still waiting (the newest wins; `skipped_commands`).
"""

from __future__ import annotations

from collections.abc import Callable
import json
from pathlib import Path
import threading
import time

import cv2
import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ..sim import tasks
from ..sim.worlds import Episode, EpisodeSpec, World
from .convert import rgb_to_compressed, rgb_to_image

LATCHED = QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
# As robot_state_publisher publishes it: a late subscriber still gets the one message.
DESCRIPTION_QOS = QoSProfile(depth=1, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=QoSReliabilityPolicy.RELIABLE)
SIM_START_S = 1.0  # /clock's first time: a clock that reads 0 means "no time yet" to ROS
IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.bmp'}
WORLDS = ('mock', 'libero')
CONTROLS = ('ee', 'joint')
# A joint command: the names and positions of a trajectory's first point.
JointCommand = tuple[list[str], np.ndarray]


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


def parse_indices(text: str, what: str) -> list[int]:
    """Parse '3', '0:50' (start:stop) or '0,2,5:7' into indices; refuse anything else."""
    out: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(','))):
            if ':' in part:
                start, stop = (int(x) for x in part.split(':'))
                if stop <= start:
                    raise ValueError
                out.extend(range(start, stop))
            else:
                out.append(int(part))
    except ValueError:
        raise ValueError(f'{what} {text!r}: give indices such as 3, 0:50 or 0,2,5:7') from None
    if any(i < 0 for i in out):
        raise ValueError(f'{what} {text!r}: indices are >= 0')
    return out


class WorldNode(Node):
    """One world's closed loop on ROS topics; `world` is 'mock' or 'libero'."""

    def __init__(self, world: str = 'mock', node_name: str | None = None, **kwargs) -> None:
        if world not in WORLDS:
            raise ValueError(f'world {world!r} is not one of {WORLDS}')
        super().__init__(node_name or f'{world}_world', **kwargs)

        def param(name, default, description, any_type=False):
            # any_type: `-p tasks:=0` arrives as an integer, `tasks:=0:3` as a string.
            return self.declare_parameter(name, default, ParameterDescriptor(
                description=description, dynamic_typing=any_type)).value

        rate = param('camera_rate_hz', 20.0, 'Camera frame rate, Hz.')
        max_steps = param('max_steps', 80 if world == 'mock' else 0,
                          'Commands per episode before it counts as failed'
                          + ('.' if world == 'mock' else "; 0: the suite's (OpenVLA's)."))
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
        self.lockstep = param(
            'lockstep', False, 'Publish /clock and advance it by step_s per world step (the '
            'policy node runs with use_sim_time): the loop goes as fast as the world steps, '
            'one command per step, however slow the render.')
        self.step_s = param('step_s', 0.05 if world == 'libero' else 0.1,
                            "Simulated time per world step with lockstep, s (the policy node's "
                            'control period).')
        self.control = param('control', 'ee', "'ee': end-effector commands on `commands`; "
                             "'joint': joint position targets on `joint_trajectory`.")
        if self.control not in CONTROLS:
            raise ValueError(f'control {self.control!r} is not one of {CONTROLS}')
        if rate <= 0:
            raise ValueError('camera_rate_hz must be positive')
        if self.step_s <= 0:
            raise ValueError('step_s must be positive')
        self.idle_s = param('lockstep_idle_s', 2.0,
                            'With lockstep, no command for this long (wall clock) moves the '
                            'clock on by step_s without a step: time never stops for good '
                            'while the policy node holds or starts, s.')
        self.sim_time_s = SIM_START_S
        self._moved = time.monotonic()  # when the clock last moved (a step, an idle tick)
        self._clock_lock = threading.Lock()
        if max_steps < 0:
            raise ValueError('max_steps must be >= 0')
        self.max_steps = max_steps
        self.wrist = False
        self.world: World | None = None
        self.specs: Callable[[int], EpisodeSpec] = lambda index: EpisodeSpec('')
        self.source = FrameSource(source) if source else None
        if self.source is None:
            self._make_world(world, param)

        self.policy_reset = self.create_client(Trigger, reset_service) if reset_service else None
        self.policy_resets = 0  # reset calls sent
        self.episodes = 0  # episodes started
        self.rejected_commands = 0  # commands the world refused (shape, non-finite motion)
        self.skipped_commands = 0  # threaded: replaced by a newer one before the world was free
        self.index = 0  # of the current episode in the spec order
        self.episode: Episode | None = None
        self.resume_at = 0.0  # when the next episode starts (0: none pending)
        self.accepting = False  # the episode takes commands
        self._frame: np.ndarray | None = None  # the cameras and joints after the last step
        self._wrist: np.ndarray | None = None
        self._joints: tuple[tuple[str, ...], list[float]] | None = None

        self.image_pub = self.create_publisher(Image, 'image_raw', qos_profile_sensor_data)
        self.compressed_pub = self.create_publisher(
            CompressedImage, 'image_raw/compressed', qos_profile_sensor_data)
        self.wrist_pub = self.create_publisher(Image, 'wrist/image_raw',
                                               qos_profile_sensor_data) if self.wrist else None
        self.joint_pub = self.create_publisher(JointState, 'joint_states',
                                               qos_profile_sensor_data)
        self.instruction_pub = self.create_publisher(String, 'instruction', LATCHED)
        self.success_pub = self.create_publisher(Bool, '~/success', LATCHED)
        self.result_pub = self.create_publisher(String, '~/episode_result', 10)
        self.description_pub = self.create_publisher(String, 'robot_description',
                                                     DESCRIPTION_QOS)
        self.clock_pub = self.create_publisher(Clock, '/clock', 10) if self.lockstep else None
        self._description_sent = False

        # The mock steps inline (microseconds); LIBERO on its own thread, which also owns the
        # GL context MuJoCo renders with (created, used and freed there only).
        self.threaded = world == 'libero' and self.source is None
        self._wake = threading.Condition()
        self._pending: np.ndarray | JointCommand | None = None  # newest command not stepped
        self._open_requested = False
        self._closing = False
        self._thread: threading.Thread | None = None
        if self.threaded:
            self._thread = threading.Thread(target=self._world_loop, name='flashvla-world',
                                            daemon=True)
            self._thread.start()
        if self.source is None:
            if self.control == 'ee':
                self.create_subscription(Float64MultiArray, 'commands', self._on_command, 10)
            else:
                self.create_subscription(JointTrajectory, 'joint_trajectory',
                                         self._on_joint_trajectory, 10)
            self.create_service(Trigger, '~/reset', self._on_reset)
            self._start_episode()
        self.create_timer(1.0 / rate, self._publish_frame)
        # Re-sent every second: a volatile subscriber that starts late still gets the task.
        self.create_timer(1.0, self._publish_instruction)

    def _make_world(self, world: str, param) -> None:
        if world == 'mock':
            seed = param('seed', 0, 'Seed of the first episode; each reset uses the next one.')
            family = param('task_family', '', f'One of {list(tasks.FAMILIES)}; empty = mixed.')
            image_size = param('image_size', 224, 'Square camera image size, pixels.')
            if family and family not in tasks.FAMILIES:
                raise ValueError(f'task_family {family!r} is not one of {list(tasks.FAMILIES)}')
            self.world = tasks.MockWorld(self.max_steps, image_size=image_size)
            self.specs = lambda index: EpisodeSpec(family, seed + index)
            return
        from ..sim.libero import SUITES, LiberoWorld

        suite = param('suite', 'libero_object', f'LIBERO suite, one of {list(SUITES)}.')
        states = str(param('init_states', '0:50', "Initial states of each task: '0:50' "
                           "(start:stop), '3' or '0,2,5:7'.", any_type=True))
        task_text = str(param('tasks', '', "Tasks of the suite, by index ('0:3', '0,4'); "
                              'empty = all.', any_type=True))
        render = param('render', 'openvla', 'openvla (LIBERO\'s render, as OpenVLA evaluated) '
                       'or fast (no shadows, reflections nor multisampling).')
        center_crop = param('center_crop', False, "OpenVLA's centre crop of the policy frame "
                            '(checkpoints trained with random crops).')
        self.wrist = param('wrist', False, 'Also render and publish wrist/image_raw.')
        seed = param('seed', 0, "The environment's seed (OpenVLA's evaluation: 0).")
        # Constructing the world reads the suite; no scene (nor GL context) exists yet.
        world_ = LiberoWorld(suite, render=render, center_crop=center_crop, wrist=self.wrist,
                             seed=seed, control=self.control)
        chosen = parse_indices(task_text, 'tasks') or None
        if chosen and max(chosen) >= world_.n_tasks:
            raise ValueError(f'tasks {task_text!r}: {suite} has tasks 0..{world_.n_tasks - 1}')
        indices = parse_indices(states, 'init_states')
        if not indices:
            raise ValueError('init_states is empty')
        specs = [EpisodeSpec(world_.task_name(t), seed=i, task=t)
                 for t in (chosen if chosen is not None else range(world_.n_tasks))
                 for i in indices]
        self.world = world_
        # After the last one the list starts again: a demo runs on, results say which.
        self.specs = lambda index: specs[index % len(specs)]
        self.get_logger().info(f'{suite}: {len(specs)} episodes, render {render}')

    # -- the world: inline (mock) or on the world thread (LIBERO) ------------------------------

    def _start_episode(self) -> None:
        """Open the episode at `self.index`: now, or on the world thread."""
        self.accepting = False
        if not self.threaded:
            self._open(self.specs(self.index))
            return
        with self._wake:
            self._pending = None
            self._open_requested = True
            self._wake.notify()

    def _world_loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closing or self._open_requested
                                    or self._pending is not None)
                if self._closing:
                    break
                opening, self._open_requested = self._open_requested, False
                command, self._pending = (None, None) if opening else (self._pending, None)
            try:
                if opening:
                    self._open(self.specs(self.index))
                else:
                    self._step(command)
            except Exception as exc:  # the thread outlives a bad episode
                self.get_logger().error(f'world: {type(exc).__name__}: {exc}')
        self.world.close()  # on the thread whose GL context it frees

    def _open(self, spec: EpisodeSpec) -> None:
        episode = self.world.open(spec)
        if self.max_steps and self.world.name != 'mock':
            episode.max_steps = self.max_steps  # a shorter run than the suite's
        self._advance()  # lockstep: the new episode's first frame is the next tick's
        self._observe(episode)
        self.episode = episode
        self.get_logger().info(f'episode {spec.key}: {episode.instruction!r}')
        self._publish_instruction()
        self.episodes += 1
        self.accepting = True
        self._reset_policy()

    def _observe(self, episode: Episode) -> None:
        if not self._description_sent and hasattr(self.world, 'robot_description'):
            self.description_pub.publish(String(data=self.world.robot_description()))
            self._description_sent = True
        self._frame = episode.observe()
        if self.wrist:
            self._wrist = episode.cameras()['wrist']
        joints = episode.joint_state()
        self._joints = joints.names, [float(x) for x in joints.positions]

    def _step(self, command: np.ndarray | JointCommand) -> None:
        episode = self.episode
        if episode is None or episode.done:
            return  # a command that waited while the episode ended
        try:
            if isinstance(command, tuple):
                episode.step_joints(*command)
            else:
                episode.step(self.world.command.from_metres(command))
        except ValueError as exc:
            self.rejected_commands += 1
            self.get_logger().warning(f'rejected command: {exc}', throttle_duration_sec=2.0)
            return
        self._advance()  # lockstep: the step took one control period
        self._observe(episode)
        if self.lockstep:
            self._send_state()  # now, not at the next camera tick: the policy waits for it
        if episode.done:
            self._finish(episode)

    def _reset_policy(self) -> None:
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

    def _finish(self, episode: Episode) -> None:
        self.accepting = False
        spec = episode.spec
        result = {'seed': spec.seed, 'family': spec.group, 'instruction': episode.instruction,
                  'success': episode.success(), 'steps': episode.steps,
                  'world': self.world.name, 'task': spec.task}
        self.result_pub.publish(String(data=json.dumps(result)))
        self.success_pub.publish(Bool(data=result['success']))
        self.get_logger().info(f'episode {spec.key} done: {result}')
        self.resume_at = self._now() + self.reset_delay_s

    # -- ROS callbacks: short ------------------------------------------------------------------

    def _instruction(self) -> str | None:
        if self.source is not None:
            return self.open_loop_instruction
        return self.episode.instruction if self.episode is not None else None

    def _publish_instruction(self) -> None:
        text = self._instruction()
        if text is not None:  # LIBERO: none until its first episode is open
            self.instruction_pub.publish(String(data=text))

    def _advance(self) -> None:
        with self._clock_lock:  # the world thread's steps and the camera timer
            self.sim_time_s += self.step_s
            self._moved = time.monotonic()

    def _publish_frame(self) -> None:
        """Send the world's state at the camera rate; start the next episode when due."""
        if self.lockstep and time.monotonic() - self._moved > self.idle_s:
            self._advance()  # the policy sent nothing: its next tick needs time to pass
        self._send_state()
        if self.episode is not None and self.resume_at and self._now() >= self.resume_at:
            self.resume_at = 0.0
            self.index += 1
            self._start_episode()

    def _send_state(self) -> None:
        """Publish the cameras, the joints and (lockstep) the clock, in that order."""
        rgb = self.source.next() if self.source else self._frame
        if rgb is None:
            return  # the first episode is still opening
        stamp = self._stamp()
        self.image_pub.publish(rgb_to_image(rgb, stamp))
        if self.compressed:
            self.compressed_pub.publish(rgb_to_compressed(rgb, stamp))
        if self.wrist_pub is not None and self._wrist is not None:
            self.wrist_pub.publish(rgb_to_image(self._wrist, stamp))
        if self._joints is not None:
            names, positions = self._joints
            msg = JointState(name=list(names), position=positions)
            msg.header.stamp = stamp
            self.joint_pub.publish(msg)
        if self.clock_pub is not None:  # after the frame: a tick at this time finds it
            self.clock_pub.publish(Clock(clock=stamp))

    def _stamp(self):
        """Return the time of the world's state: simulated with lockstep, else now."""
        if self.lockstep:
            return Time(nanoseconds=round(self.sim_time_s * 1e9)).to_msg()
        return self.get_clock().now().to_msg()

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_command(self, msg: Float64MultiArray) -> None:
        self._take(np.asarray(msg.data, dtype=np.float64))

    def _on_joint_trajectory(self, msg: JointTrajectory) -> None:
        """Step towards the first point: the target for the next control period (or a hold)."""
        if not msg.points or len(msg.points[0].positions) != len(msg.joint_names):
            self.rejected_commands += 1
            self.get_logger().warning('rejected joint_trajectory: no first point with a '
                                      'position per joint', throttle_duration_sec=2.0)
            return
        self._take((list(msg.joint_names),
                    np.asarray(msg.points[0].positions, dtype=np.float64)))

    def _take(self, command: np.ndarray | JointCommand) -> None:
        """Step on `command` now (mock) or hand it to the world thread (the newest wins)."""
        if self.resume_at or not self.accepting:
            return  # between episodes
        if not self.threaded:
            self._step(command)
            return
        with self._wake:
            if self._pending is not None:
                self.skipped_commands += 1
            self._pending = command
            self._wake.notify()

    def _on_reset(self, request, response):
        self.index += 1
        self.resume_at = 0.0
        self._start_episode()
        spec = self.specs(self.index)
        response.success = True
        response.message = f'{spec.key}: {self._instruction()}' if not self.threaded \
            else f'{spec.key}: opening'
        return response

    def destroy_node(self) -> None:
        if self._thread is not None:
            with self._wake:
                self._closing = True
                self._wake.notify()
            self._thread.join(timeout=10.0)
        elif self.world is not None:
            self.world.close()
        super().destroy_node()


def run(make_node: Callable[[], Node], args: list[str] | None = None) -> None:
    """Spin one world node until interrupted."""
    rclpy.init(args=args)
    node = make_node()
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def main(args: list[str] | None = None) -> None:
    """Run `libero_world` (`mock_world` is ros/mock_world_node.py)."""
    run(lambda: WorldNode('libero', 'libero_world'), args)


if __name__ == '__main__':
    main()
