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
One robot's topics on the policy node: its camera and joint states in, its commands out.

The single-robot node has one `RobotIO` with no name: `image_raw`, `~/commands`, `~/reset`.
A server for several robots has one per robot, each under the robot's namespace, with the
topics a single-robot node in that namespace would have (`r1/image_raw`,
`r1/policy_node/commands`, `r1/policy_node/reset`), so a robot's side is the same either way.
All real-time logic stays in its `PolicyRunner`; this turns messages into calls and results
into messages. With joint outputs (`trajectory`, `joint_positions`) it also holds the robot's
model (the URDF from the `robot_description` parameter or topic) and a `JointCommander` that
turns each tick into joint targets (`control/joint_commands.py`).
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
import numpy as np
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CompressedImage, Image, JointState, TimeReference
from std_msgs.msg import Float64, Float64MultiArray, MultiArrayDimension, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..control.joint_commands import JointCommander, JointTargets
from ..control.kinematics import ArmKinematics, KinematicsError
from ..control.records import Tick
from ..control.runner import PolicyRunner
from ..control.throttle import ThrottledLog
from ..params import JOINT_OUTPUTS, OUTPUTS, NodeConfig
from ..policy import InputError, StepInfo
from ..policy.actions import ANGULAR, GRIPPER, LINEAR, XY
from ..policy.config import EE_DELTA
from ..viz.debug_view import render_debug
from .convert import compressed_to_rgb, image_to_rgb, rgb_to_image

INSTRUCTION_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.VOLATILE)
RELIABLE_CAMERA_QOS = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE,
                                 durability=QoSDurabilityPolicy.VOLATILE)
# As robot_state_publisher publishes it: a late subscriber still gets the description.
DESCRIPTION_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)


def joint_commander(urdf: str, config: NodeConfig, action_space: str = EE_DELTA,
                    action_joints: tuple[str, ...] = ()) -> JointCommander:
    """Build a robot's joint commander from its URDF; raise KinematicsError with the reason."""
    kinematics = ArmKinematics.from_urdf(urdf, config.ee_frame, config.base_frame or None,
                                         command_frame=config.command_frame_id)
    return JointCommander(kinematics, config.control_period_s, config.max_joint_state_age_s,
                          action_space, action_joints, config.gripper_joints,
                          config.gripper_joint_positions)


def message_type(name: str) -> type:
    """Import a message class by its ROS name, e.g. 'std_msgs/msg/Float64'."""
    package, kind, message = name.split('/')
    return getattr(importlib.import_module(f'{package}.{kind}'), message)


class RobotIO:
    """A robot's subscriptions, lifecycle publishers and runner on the node `node`."""

    def __init__(self, node: Any, name: str, runner: PolicyRunner, config: NodeConfig,
                 on_instruction, action_space: str = EE_DELTA,
                 action_joints: tuple[str, ...] = ()) -> None:
        self.node, self.name, self.runner = node, name, runner
        self.label = name or node.get_name()  # in logs and diagnostics
        self.lock = threading.Lock()  # its ticks and its final hold never interleave
        self.loop: Any = None  # its control tick (a FixedRateLoop), while active
        self.tick_error = ''  # its last tick's exception, reported until a tick succeeds
        self.enabled = True  # a server's robot may be disabled alone (its enable service)
        self.stop_reason = ''  # why this robot alone is not commanding ('' when it is)
        self.joint_state: JointState | None = None
        self._debug_frame: np.ndarray | None = None
        self.log = ThrottledLog(period_s=1.0)
        self.pub: dict[str, Any] = {}
        for output in config.outputs:
            topic, message = OUTPUTS[output]
            self.pub[output] = node.create_lifecycle_publisher(message_type(message),
                                                               self.private(topic), 10)
        self.pub['timing'] = node.create_lifecycle_publisher(
            TimeReference, self.private('command_timing'), 10)
        if config.debug_image:
            self.pub['debug'] = node.create_lifecycle_publisher(
                Image, self.private('debug_image'), 1)
        camera_qos = qos_profile_sensor_data if config.image_reliability == 'best_effort' \
            else RELIABLE_CAMERA_QOS
        if config.image_transport == 'compressed':
            camera = node.create_subscription(CompressedImage, self.input('image_raw/compressed'),
                                              self._on_compressed, camera_qos)
        else:
            camera = node.create_subscription(Image, self.input('image_raw'), self._on_image,
                                              camera_qos)
        self.camera_topic = camera.topic_name  # with remappings applied, for the diagnostics
        # The instruction topic, like every input, exists only while configured.
        self.subs = [
            camera,
            node.create_subscription(String, self.input('instruction'),
                                     lambda msg: on_instruction(self, msg), INSTRUCTION_QOS),
            node.create_subscription(JointState, self.input('joint_states'),
                                     self._on_joint_state, qos_profile_sensor_data)]
        self.config = config
        # Joint outputs: the robot's model, its joint states, and no command without both.
        self.joints: JointCommander | None = None
        self.joint_model_error = ''  # why the robot's model is not loaded ('' once it is)
        self._urdf = ''
        self._model = (action_space, action_joints)
        if any(o in JOINT_OUTPUTS for o in config.outputs):
            runner.input_fault = self._joint_fault
            if config.robot_description:
                self._load_model(config.robot_description)
            else:
                topic = self.input('robot_description')
                self.joint_model_error = f'waiting for the robot model on {topic}'
                self.subs.append(node.create_subscription(
                    String, topic, lambda msg: self._load_model(msg.data), DESCRIPTION_QOS))

    # -- names -----------------------------------------------------------------------------

    def input(self, topic: str) -> str:
        """Return an input topic's name: relative, under the robot's namespace."""
        return f'{self.name}/{topic}' if self.name else topic

    def private(self, topic: str) -> str:
        """Return an output's or service's name: private to the node, in the robot's namespace."""
        return f'{self.name}/{self.node.get_name()}/{topic}' if self.name else f'~/{topic}'

    def destroy(self) -> None:
        for pub in self.pub.values():
            self.node.destroy_lifecycle_publisher(pub)
        for sub in self.subs:
            self.node.destroy_subscription(sub)
        self.pub.clear()
        self.subs.clear()

    # -- inputs ----------------------------------------------------------------------------

    def _on_image(self, msg: Image) -> None:
        self._submit(image_to_rgb, msg)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._submit(compressed_to_rgb, msg)

    def _submit(self, convert, msg) -> None:
        stamp_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        try:
            rgb = convert(msg, self.config.max_image_pixels)
        except InputError as exc:
            self.runner.reject_frame(str(exc))
            self._warn_rejected_frame(exc)
            return
        try:
            self.runner.submit_frame(rgb, stamp_ns or None)  # counts its own rejections
        except InputError as exc:
            self._warn_rejected_frame(exc)

    def _warn_rejected_frame(self, exc: InputError) -> None:
        if line := self.log(f'camera: {exc}', f'{self.where}rejected camera frame: {exc}'):
            self.node.get_logger().warning(line)

    def _on_joint_state(self, msg: JointState) -> None:
        self.joint_state = msg
        if self.joints is not None:
            self.joints.observe(msg.name, msg.position, self.node.now_s())

    def _load_model(self, urdf: str) -> None:
        """Build the joint commander from a URDF; a model that does not load is a fault."""
        if urdf == self._urdf:
            return  # the same description again (a re-publish): keep the joint state
        self._urdf = urdf
        try:
            joints = joint_commander(urdf, self.config, *self._model)
        except (KinematicsError, ImportError) as exc:
            self.joints, self.joint_model_error = None, f'robot model refused: {exc}'
            self.node.get_logger().error(f'{self.where}{self.joint_model_error}')
            return
        if self.joint_state is not None:  # the joint state that came before the model
            msg = self.joint_state
            joints.observe(msg.name, msg.position, self.node.now_s())
        self.joints, self.joint_model_error = joints, ''
        k = joints.kinematics
        self.node.get_logger().info(
            f'{self.where}robot model: joints {joints.names} move {k.ee_frame!r} relative to '
            f'{k.base_frame!r}, commands in {k.command_frame!r}')

    def _joint_fault(self, now: float) -> str:
        """Say why joint commands cannot be made now ('' when they can): the runner holds."""
        joints = self.joints
        if joints is None:
            return self.joint_model_error
        joints.max_age_s = self.config.max_joint_state_age_s  # a live change applies here
        return joints.fault(now)

    @property
    def where(self) -> str:
        """Prefix of this robot's log lines ('' for the single robot)."""
        return f'[{self.name}] ' if self.name else ''

    # -- outputs ---------------------------------------------------------------------------

    def publish(self, tick: Tick, stamp) -> None:
        """
        Publish a command on every chosen output.

        A hold is zero motion; its gripper entry is the last gripper command, or NaN ("no
        gripper command", nothing on ~/gripper_cmd) before there was one.
        """
        if tick.command is None:
            return
        cmd = tick.command
        period = self.config.control_period_s
        # Joint targets first: should the IK fail, nothing at all is published for this tick.
        joints = self._joint_targets(tick)
        if 'twist' in self.pub:
            msg = TwistStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.config.command_frame_id
            v = cmd / period
            msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = map(float, v[LINEAR])
            msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = map(float, v[ANGULAR])
            self.pub['twist'].publish(msg)
        if 'array' in self.pub:
            self.pub['array'].publish(float_array(cmd, 'action'))
        if 'gripper' in self.pub and not np.isnan(cmd[GRIPPER]):
            self.pub['gripper'].publish(Float64(data=float(cmd[GRIPPER])))
        if 'raw' in self.pub and tick.raw is not None:
            self.pub['raw'].publish(float_array(tick.raw, 'raw_action'))
        if joints is not None and 'trajectory' in self.pub:
            self.pub['trajectory'].publish(trajectory(joints, stamp, period))
        if joints is not None and 'joint_positions' in self.pub:
            self.pub['joint_positions'].publish(float_array(joints.points[0], 'joint_positions'))
        if 'debug' in self.pub:
            self._publish_debug(tick, stamp)
        self.pub['timing'].publish(command_timing(tick))

    def publish_through_disabled(self, tick: Tick, stamp) -> None:
        """Publish `tick` (a final hold) even from inactive: outputs enabled for it alone."""
        disabled = [p for p in self.pub.values() if not p.is_activated]
        for pub in disabled:
            pub.on_activate(None)
        self.publish(tick, stamp)
        for pub in disabled:
            pub.on_deactivate(None)

    def _publish_debug(self, tick: Tick, stamp) -> None:
        """Draw the command over the frame it came from (a hold: over the last one)."""
        if tick.frame is not None:
            self._debug_frame = tick.frame
        if self._debug_frame is None or not self.pub['debug'].get_subscription_count():
            return
        info = tick.info
        image = render_debug(self._debug_frame, tick.command, kind=tick.kind,
                             reused=bool(info and info.reused),
                             kept=info.kept_indices if info else None,
                             tokens=info.visual_tokens if info else 0,
                             max_step=float(np.max(np.abs(self.config.action_upper[XY]))))
        self.pub['debug'].publish(rgb_to_image(image, stamp))

    def _joint_targets(self, tick: Tick) -> JointTargets | None:
        """
        Return the tick's joint targets (None without joint outputs or a joint state).

        An action: one point per remaining action of the chunk; a hold: the measured positions.
        """
        joints = self.joints
        if joints is None or tick.command is None:
            return None
        if tick.kind == 'hold':
            return joints.hold(float(tick.command[GRIPPER]))
        return joints.targets([tick.command, *tick.remaining])

    # -- diagnostics -----------------------------------------------------------------------

    def values(self, now: float) -> tuple[dict[str, Any], dict[str, str], str]:
        """Return this robot's diagnostic values, its warnings (reason -> text) and its fault."""
        values: dict[str, Any] = {}
        warnings: dict[str, str] = {}
        publishers = values['camera_publishers'] = self.node.count_publishers(self.camera_topic)
        if publishers > 1:
            warnings['camera publishers'] = f'{publishers} publishers on {self.camera_topic}'
        s = self.runner.status()
        values.update(s)
        values.update(policy_values(self.runner.last_info))
        if s['warning']:
            warnings['latency'] = s['warning']
        if self.joint_state is not None:
            age = now - (self.joint_state.header.stamp.sec
                         + self.joint_state.header.stamp.nanosec * 1e-9)
            values['joint_state_age_s'] = round(age, 3)
        if any(o in JOINT_OUTPUTS for o in self.config.outputs):
            joints = self.joints
            values['joint_model'] = self.joint_model_error or (
                f'{joints.kinematics.base_frame} -> {joints.kinematics.ee_frame}: '
                f'{",".join(joints.names)}')
            if joints is not None and joints.target_ms:
                ms = np.array(joints.target_ms)
                values['joint_targets_p50_ms'] = float(np.percentile(ms, 50))
                values['joint_targets_max_ms'] = float(ms.max())
        return values, warnings, s['fault']

    def status(self, now: float, hardware_id: str, node_state: str,
               node_fault: str = '') -> DiagnosticStatus:
        """
        Return a server robot's own /diagnostics entry: its level, message and values.

        `node_state`: the node's lifecycle state and why ('active' when commanding);
        `node_fault`: a fault of the node's that stops every robot (its tick threads).
        """
        values, warnings, fault = self.values(now)
        for reason, text in warnings.items():
            if line := self.log(reason, f'{self.where}{text}', period_s=30.0):
                self.node.get_logger().warning(line)
        status = DiagnosticStatus(name=f'flashvla_ros: {self.node.get_name()} {self.name}',
                                  hardware_id=hardware_id)
        values = {'robot': self.name, 'enabled': self.enabled,
                  'stop_reason': self.stop_reason, **values}
        if node_state != 'active' or not self.enabled:
            status.level = DiagnosticStatus.WARN
            status.message = f'not commanding ({self.stop_reason or node_state})'
        elif node_fault or fault:
            status.level, status.message = DiagnosticStatus.ERROR, node_fault or fault
        elif warnings:
            status.level, status.message = DiagnosticStatus.WARN, '; '.join(warnings.values())
        else:
            status.level, status.message = DiagnosticStatus.OK, 'commanding'
        status.values = key_values(values)
        return status


def trajectory(joints: JointTargets, stamp, period: float) -> JointTrajectory:
    """
    Return joint targets as a JointTrajectory: point k at k control periods.

    A hold is one point at the measured positions, due now (time_from_start 0): a stop that
    every controller release honours, never an empty trajectory.
    """
    msg = JointTrajectory(joint_names=list(joints.names))
    msg.header.stamp = stamp
    for i, values in enumerate(joints.points, start=0 if joints.hold else 1):
        nanos = int(round(i * period * 1e9))
        msg.points.append(JointTrajectoryPoint(
            positions=[float(v) for v in values],
            time_from_start=Duration(sec=nanos // 10**9, nanosec=nanos % 10**9)))
    return msg


def policy_values(info: StepInfo | None) -> dict[str, Any]:
    """Report the last prediction's info: scalars as they are, FLOPs in GFLOPs."""
    if info is None:
        return {}
    values = {f'policy_{k}': v for k, v in info.scalars().items()
              if v is None or isinstance(v, (bool, int, float, str))}
    values['policy_gflops_step'] = values.pop('policy_flops_step') / 1e9
    return values


def command_timing(tick: Tick) -> TimeReference:
    """
    Say when a command was due and which camera frame it came from (~/command_timing).

    header.stamp: the tick's planned time (node clock); time_ref: the stamp of the camera
    frame the action was computed from (zero for a hold); source: 'action' or 'hold';
    header.frame_id: the episode number. Published right after the command itself, so that a
    subscriber that is not the node can measure tick lateness and frame-to-command latency.
    """
    msg = TimeReference(source=tick.kind)
    msg.header.stamp = time_msg(round(tick.planned * 1e9))
    msg.header.frame_id = str(tick.episode)
    msg.time_ref = time_msg(tick.source_stamp_ns)
    return msg


def time_msg(nanos: int) -> Time:
    return Time(sec=nanos // 10**9, nanosec=nanos % 10**9)


def fmt(v: Any) -> str:
    return f'{v:.3f}' if isinstance(v, float) else str(v)


def key_values(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=fmt(v)) for k, v in values.items()]


def float_array(values: np.ndarray, label: str) -> Float64MultiArray:
    msg = Float64MultiArray(data=[float(v) for v in values])
    msg.layout.dim = [MultiArrayDimension(label=label, size=len(values), stride=len(values))]
    return msg
