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
policy_node: camera + instruction in, clamped robot commands out, at a fixed control rate.

A lifecycle node: configure loads and warms up the model, activate starts the inference worker
and the control timer. All real-time logic lives in `control.runner.PolicyRunner`; this file
only turns messages into calls and results into messages.
"""

from __future__ import annotations

import array
import sys
from typing import Any

from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
import numpy as np
from rcl_interfaces.msg import (
    FloatingPointRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64, Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..accel.registry import accelerate
from ..control.runner import PolicyRunner, Tick
from ..control.safety import GRIPPER, SafetyLimits
from ..params import PARAMS, NodeConfig, build_config, check_config, check_value
from ..policy import InputError, PolicyError, load_policy
from ..policy.presets import default_model_dir
from .convert import compressed_to_rgb, image_to_rgb

ROS_TYPES = {bool: ParameterType.PARAMETER_BOOL, float: ParameterType.PARAMETER_DOUBLE,
             str: ParameterType.PARAMETER_STRING}
LIST_TYPES = {float: ParameterType.PARAMETER_DOUBLE_ARRAY,
              str: ParameterType.PARAMETER_STRING_ARRAY}
INSTRUCTION_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.VOLATILE)
RELIABLE_CAMERA_QOS = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE,
                                 durability=QoSDurabilityPolicy.VOLATILE)


def descriptor(p) -> ParameterDescriptor:
    if p.kind is not None:  # unset by default; typed and checked by the config validator
        return ParameterDescriptor(description=f'{p.description} (unset: the preset decides)',
                                   read_only=p.read_only, dynamic_typing=True)
    d = p.default
    kind = LIST_TYPES[type(d[0])] if isinstance(d, list) else ROS_TYPES[type(d)]
    desc = ParameterDescriptor(type=kind, description=p.description, read_only=p.read_only)
    if p.choices:
        desc.additional_constraints = f'one of {list(p.choices)}'
    if p.low is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=p.low, to_value=p.high)]
    return desc


class PolicyNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__('policy_node', **kwargs)
        for p in PARAMS:
            self.declare_parameter(p.name, p.default, descriptor(p))
        self.config: NodeConfig = build_config(
            {p.name: plain(self.get_parameter(p.name).value) for p in PARAMS})
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.policy = None
        self.runner: PolicyRunner | None = None
        self.timer = None
        self.joint_state: JointState | None = None
        self.state_label = 'unconfigured'
        self.model_label = ''
        self._pub: dict[str, Any] = {}

        inputs = MutuallyExclusiveCallbackGroup()
        camera_qos = qos_profile_sensor_data if self.config.image_reliability == 'best_effort' \
            else RELIABLE_CAMERA_QOS
        if self.config.image_transport == 'compressed':
            self.create_subscription(CompressedImage, 'image_raw/compressed', self._on_compressed,
                                     camera_qos, callback_group=inputs)
        else:
            self.create_subscription(Image, 'image_raw', self._on_image, camera_qos,
                                     callback_group=inputs)
        self.create_subscription(String, 'instruction', self._on_instruction, INSTRUCTION_QOS,
                                 callback_group=inputs)
        self.create_subscription(JointState, 'joint_states', self._on_joint_state,
                                 qos_profile_sensor_data, callback_group=inputs)
        self.control_group = MutuallyExclusiveCallbackGroup()
        self.diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(1.0, self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())
        self.create_service(Trigger, '~/reset', self._on_reset, callback_group=inputs)

    # -- lifecycle -------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        c = self.config
        model = c.model or str(default_model_dir())
        if not c.model and not default_model_dir().is_dir():
            self.get_logger().error('no model: set the `model` parameter to a checkpoint '
                                    'directory (this install has no embedded default model)')
            self.state_label = 'configure failed: no model'
            return TransitionCallbackReturn.FAILURE
        try:
            plain_policy = load_policy(model, device=c.device, dtype=c.dtype,
                                       unnorm_key=c.unnorm_key or None,
                                       center_crop=c.center_crop)
            self.policy = accelerate(plain_policy, c.accel.name, c.accel.options)
        except (PolicyError, ValueError, OSError) as exc:
            self.get_logger().error(f'cannot load the model: {exc}')
            self.state_label = f'configure failed: {exc}'
            return TransitionCallbackReturn.FAILURE
        self.model_label = c.model or 'default'
        self.runner = PolicyRunner(
            self.policy, SafetyLimits.from_lists(c.action_scale, c.action_lower, c.action_upper),
            c.max_image_age_s, c.max_action_age_s, clock=self._now)
        outputs = {
            'twist': (TwistStamped, '~/delta_twist_cmds'),
            'array': (Float64MultiArray, '~/commands'),
            'trajectory': (JointTrajectory, '~/joint_trajectory'),
            'gripper': (Float64, '~/gripper_cmd'),
            'raw': (Float64MultiArray, '~/raw_action'),
        }
        for name in c.outputs:
            msg_type, topic = outputs[name]
            self._pub[name] = self.create_publisher(msg_type, topic, 10)
        if c.instruction:
            self.runner.set_instruction(c.instruction)
        self.state_label = 'inactive'
        self.get_logger().info(f'model loaded ({self.model_label}, {c.device}, {c.dtype}, '
                               f'accel {c.accel.name} {c.accel.options}); '
                               f'outputs: {list(c.outputs)}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.runner.start()
        self.timer = self.create_timer(self.config.control_period_s, self._on_control_tick,
                                       callback_group=self.control_group)
        self.state_label = 'active'
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_commanding()
        self.state_label = 'inactive'
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        for pub in self._pub.values():
            self.destroy_publisher(pub)
        self._pub.clear()
        self.policy = self.runner = None
        self.state_label = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_commanding()
        return TransitionCallbackReturn.SUCCESS

    def _stop_commanding(self) -> None:
        if self.timer is not None:
            self.destroy_timer(self.timer)
            self.timer = None
        if self.runner is not None and self.runner.worker_alive:
            self.runner.stop()
            if rclpy.ok():
                self._publish(Tick('hold', command=self.runner.limits.hold(None)))

    # -- inputs ----------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, msg: Image) -> None:
        self._submit(image_to_rgb, msg)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._submit(compressed_to_rgb, msg)

    def _submit(self, convert, msg) -> None:
        if self.runner is None:
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        try:
            self.runner.submit_frame(convert(msg), capture_time=stamp or None)
        except InputError as exc:
            self.runner.reject_input(str(exc))
            self.get_logger().warning(f'rejected camera frame: {exc}',
                                      throttle_duration_sec=2.0)

    def _on_instruction(self, msg: String) -> None:
        self._set_instruction(msg.data)

    def _set_instruction(self, text: str) -> None:
        if self.runner is None:
            return
        try:
            if text.strip():
                self.policy.prompt_ids(text)  # reject what the policy cannot take, up front
        except InputError as exc:
            self.runner.reject_input(f'instruction rejected: {exc}')
            self.get_logger().error(f'instruction rejected, stopping: {exc}')
            text = ''
        if self.runner.set_instruction(text):
            self.get_logger().info(f'new episode: {text!r}')

    def _on_reset(self, request, response):
        """Start a new episode (same instruction): the queue and the reuse memory empty."""
        if self.runner is None:
            response.success, response.message = False, f'not configured ({self.state_label})'
            return response
        self.runner.reset_episode()
        self.get_logger().info('episode reset')
        response.success, response.message = True, f'new episode: {self.runner.instruction!r}'
        return response

    def _on_joint_state(self, msg: JointState) -> None:
        self.joint_state = msg

    def _on_set_parameters(self, params) -> SetParametersResult:
        values = {p.name: plain(self.get_parameter(p.name).value) for p in PARAMS}
        for p in params:
            if p.name == 'use_sim_time':
                continue
            value = plain(p.value)
            reason = check_value(p.name, value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            values[p.name] = value
        reason = check_config(values)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        self.config = build_config(values)
        c = self.config
        if self.runner is not None:
            self.runner.limits = SafetyLimits.from_lists(c.action_scale, c.action_lower,
                                                         c.action_upper)
            self.runner.max_image_age_s = c.max_image_age_s
            self.runner.max_action_age_s = c.max_action_age_s
            if any(p.name == 'instruction' for p in params):
                self._set_instruction(c.instruction)
        return SetParametersResult(successful=True)

    # -- outputs ---------------------------------------------------------------------------

    def _on_control_tick(self) -> None:
        tick = self.runner.tick()
        if tick.kind == 'hold':
            self.get_logger().error(f'holding: {tick.fault}')
        self._publish(tick)

    def _publish(self, tick: Tick) -> None:
        if tick.command is None:
            return
        stamp = self.get_clock().now().to_msg()
        cmd = tick.command
        period = self.config.control_period_s
        if 'twist' in self._pub:
            msg = TwistStamped()
            msg.header.stamp, msg.header.frame_id = stamp, self.config.command_frame_id
            v = cmd / period
            msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = map(float, v[:3])
            msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = map(float, v[3:6])
            self._pub['twist'].publish(msg)
        if 'array' in self._pub:
            self._pub['array'].publish(float_array(cmd, 'action'))
        if 'gripper' in self._pub:
            self._pub['gripper'].publish(Float64(data=float(cmd[GRIPPER])))
        if 'raw' in self._pub and tick.raw is not None:
            self._pub['raw'].publish(float_array(tick.raw, 'raw_action'))
        if 'trajectory' in self._pub:
            self._pub['trajectory'].publish(self._trajectory(tick, stamp, period))

    def _trajectory(self, tick: Tick, stamp, period: float) -> JointTrajectory:
        """Execute the chunk as timed points; a hold is an empty trajectory (stop)."""
        msg = JointTrajectory()
        msg.header.stamp = stamp
        msg.joint_names = list(self.config.joint_names)
        if tick.kind == 'action':
            for i, values in enumerate([tick.command, *tick.remaining], start=1):
                nanos = int(round(i * period * 1e9))
                msg.points.append(JointTrajectoryPoint(
                    positions=[float(v) for v in values],
                    time_from_start=Duration(sec=nanos // 10**9, nanosec=nanos % 10**9)))
        return msg

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name='flashvla_ros: policy_node', hardware_id=self.model_label)
        accel = self.config.accel
        values: dict[str, Any] = {'lifecycle_state': self.state_label, 'model': self.model_label,
                                  'device': self.config.device, 'dtype': self.config.dtype,
                                  'accel': accel.name, 'accel_options': accel.options}
        if self.runner is None:
            status.level = DiagnosticStatus.WARN if 'failed' not in self.state_label \
                else DiagnosticStatus.ERROR
            status.message = self.state_label
        else:
            s = self.runner.status()
            values.update(s)
            values.update(policy_values(self.runner.last_info))
            if self.joint_state is not None:
                age = self._now() - (self.joint_state.header.stamp.sec
                                     + self.joint_state.header.stamp.nanosec * 1e-9)
                values['joint_state_age_s'] = round(age, 3)
            if self.state_label != 'active':
                status.level, status.message = DiagnosticStatus.OK, self.state_label
            elif s['fault']:
                status.level, status.message = DiagnosticStatus.ERROR, s['fault']
            else:
                status.level, status.message = DiagnosticStatus.OK, 'commanding'
        status.values = [KeyValue(key=k, value=fmt(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics.publish(msg)


def policy_values(info: dict[str, Any]) -> dict[str, Any]:
    """Report the last prediction's info: scalars as they are, FLOPs in GFLOPs."""
    values = {f'policy_{k}': v for k, v in info.items()
              if v is None or isinstance(v, (bool, int, float, str))}
    if 'flops' in info:
        values['policy_gflops_step'] = info['flops'].total / 1e9
    return values


def plain(value: Any) -> Any:
    """Return array parameters (rclpy gives array.array) as lists, other values as they are."""
    return list(value) if isinstance(value, array.array) else value


def fmt(v: Any) -> str:
    return f'{v:.3f}' if isinstance(v, float) else str(v)


def float_array(values: np.ndarray, label: str) -> Float64MultiArray:
    msg = Float64MultiArray(data=[float(v) for v in values])
    msg.layout.dim = [MultiArrayDimension(label=label, size=len(values), stride=len(values))]
    return msg


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = PolicyNode()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    if node.config.autostart:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            node.get_logger().fatal('configure failed; exiting')
            node.destroy_node()
            rclpy.try_shutdown()
            sys.exit(1)
        node.trigger_activate()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._stop_commanding()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
