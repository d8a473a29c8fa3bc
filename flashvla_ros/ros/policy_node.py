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

A lifecycle node in the usual shape: configure loads and warms up the model and creates the
topic interface (inputs, lifecycle publishers for the outputs), activate enables the outputs
and starts the inference worker and the control timer; deactivate and cleanup undo them in
turn. /diagnostics and ~/reset exist in every state, to say why the node is not commanding.
All real-time logic lives in `control.runner.PolicyRunner`; this file only turns messages into
calls and results into messages, and makes every way out of commanding (deactivate, cleanup,
shutdown, SIGINT, SIGTERM) end with exactly one hold.
"""

from __future__ import annotations

import array
from pathlib import Path
import signal
import sys
import threading
import time
import traceback
from typing import Any

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
import numpy as np
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
import rclpy
from rclpy.duration import Duration as RclpyDuration
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState, TimeReference
from std_msgs.msg import Float64, Float64MultiArray, MultiArrayDimension, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ..accel.registry import accelerate, update_options
from ..control.runner import MODEL_STEPS, ChunkExecution, PolicyRunner, Tick
from ..control.safety import SafetyLimits
from ..control.throttle import ThrottledLog
from ..control.ticker import FixedRateLoop
from ..params import ACCEL_PARAMS, PARAMS, NodeConfig, build_config, check_config, check_value
from ..policy import (
    CheckpointError,
    InputError,
    PolicyError,
    StepInfo,
    load_policy,
    set_cpu_threads,
)
from ..policy.actions import ACTION_DIM, ACTION_NAMES, GRIPPER
from ..policy.instruction import check_instruction
from ..policy.presets import EMBEDDED_MODELS, model_path
from ..viz.debug_view import render_debug
from .convert import compressed_to_rgb, image_to_rgb, rgb_to_image

ROS_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
LIST_TYPES = {float: ParameterType.PARAMETER_DOUBLE_ARRAY,
              str: ParameterType.PARAMETER_STRING_ARRAY}
INSTRUCTION_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.VOLATILE)
RELIABLE_CAMERA_QOS = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE,
                                 durability=QoSDurabilityPolicy.VOLATILE)
# A final hold waits at most this long for reliable subscribers' acks; Fast DDS acknowledges
# on its writer's heartbeat, measured here at up to about 1 s after the sample arrived.
ACK_TIMEOUT_S = 1.0


def descriptor(p) -> ParameterDescriptor:
    if p.kind is not None:  # unset by default; typed and checked by the config validator
        return ParameterDescriptor(description=f'{p.description} (unset: the preset decides)',
                                   read_only=p.read_only, dynamic_typing=True)
    d = p.default
    kind = LIST_TYPES[type(d[0])] if isinstance(d, list) else ROS_TYPES[type(d)]
    desc = ParameterDescriptor(type=kind, description=p.description, read_only=p.read_only)
    if p.choices:
        desc.additional_constraints = f'one of {list(p.choices)}'
    if p.low is not None and isinstance(d, int) and not isinstance(d, bool):
        desc.integer_range = [IntegerRange(from_value=int(p.low), to_value=int(p.high))]
    elif p.low is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=p.low, to_value=p.high)]
    return desc


class PolicyNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__('policy_node', **kwargs)
        for p in PARAMS:
            self.declare_parameter(p.name, p.default, descriptor(p))
        self.config: NodeConfig = build_config(self._parameter_values())
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Side effects of a change run once it is stored; Humble's rclpy has no post-set
        # callback, so there the validator applies an accepted change itself.
        self._post_set = hasattr(self, 'add_post_set_parameters_callback')
        if self._post_set:
            self.add_post_set_parameters_callback(self._on_parameters_set)
        self.policy = None
        self.runner: PolicyRunner | None = None
        self.loop: FixedRateLoop | None = None  # the control tick, while active
        self.tick_error = ''  # the last tick's exception, reported until a tick succeeds
        self.joint_state: JointState | None = None
        self.state_label = 'unconfigured'
        self.stop_reason = 'not activated yet'  # why the node is not commanding
        self.exit_reason = ''  # set before the shutdown transition of a process exit
        self.model_label = ''
        self.chunk_steps_from = ''  # 'model', 'default' or 'parameter': whose chunk_steps runs
        self.cpu_threads = 0  # set at configure
        self._pub: dict[str, Any] = {}  # lifecycle publishers, while configured
        self._subs: list[Any] = []  # input subscriptions, while configured
        self.camera_topic = ''  # resolved camera topic, while configured
        self._debug_frame: np.ndarray | None = None
        self._log = ThrottledLog(period_s=1.0)
        # A tick and a final hold never interleave; after the final hold no tick publishes.
        self._output_lock = threading.Lock()
        self._commanding = False
        # The instruction topic and parameter changes apply one at a time (re-entrant: the
        # topic path sets the parameter, whose callback runs on the same thread).
        self._instruction_lock = threading.RLock()
        self._syncing_instruction = False

        # Plain publisher, timer and service, in every state: they say why nothing moves.
        self.diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.create_service(Trigger, '~/reset', self._on_reset)

    # -- lifecycle -------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        c = self.config
        model = str(model_path(c.model))
        if c.model in ('', *EMBEDDED_MODELS) and not Path(model).is_dir():
            self.get_logger().error(f'no model: set the `model` parameter to a checkpoint '
                                    f'directory (this install has no embedded {model})')
            self.state_label = 'unconfigured'
            self.stop_reason = 'configure failed: no model'
            return TransitionCallbackReturn.FAILURE
        try:
            self.cpu_threads = set_cpu_threads(c.cpu_threads)
            plain_policy = load_policy(model, device=c.device, dtype=c.dtype,
                                       unnorm_key=c.unnorm_key or None,
                                       center_crop=c.center_crop, static_cache=c.static_cache,
                                       compile=c.compile, quantize=c.quantize)
            if plain_policy.action_dim != ACTION_DIM:  # the limits and outputs are 7-D
                raise CheckpointError(f'{model} predicts {plain_policy.action_dim}-D actions; '
                                      f'this node commands {ACTION_DIM}-D ones '
                                      f'({", ".join(ACTION_NAMES)})')
            self.policy = accelerate(plain_policy, c.accel.names, c.accel.options)
            self.policy.warm_up()  # the first real step as fast as the tenth
        except (PolicyError, ValueError, OSError) as exc:
            self.get_logger().error(f'cannot load the model: {exc}')
            self.stop_reason = f'configure failed: {exc}'
            return TransitionCallbackReturn.FAILURE
        self.model_label = c.model or 'default'
        self.runner = PolicyRunner(
            self.policy, SafetyLimits.from_lists(c.action_scale, c.action_lower, c.action_upper),
            c.max_image_age_s, c.max_action_age_s, c.max_command_gap_s, clock=self._now,
            chunks=self._chunks(), control_period_s=c.control_period_s)
        outputs = {
            'twist': (TwistStamped, '~/delta_twist_cmds'),
            'array': (Float64MultiArray, '~/commands'),
            'trajectory': (JointTrajectory, '~/joint_trajectory'),
            'gripper': (Float64, '~/gripper_cmd'),
            'raw': (Float64MultiArray, '~/raw_action'),
        }
        for name in c.outputs:
            msg_type, topic = outputs[name]
            self._pub[name] = self.create_lifecycle_publisher(msg_type, topic, 10)
        self._pub['timing'] = self.create_lifecycle_publisher(TimeReference, '~/command_timing',
                                                              10)
        if c.debug_image:
            self._pub['debug'] = self.create_lifecycle_publisher(Image, '~/debug_image', 1)
        self._create_inputs()
        if c.instruction:  # the parameter's text passed the text rule; now the token limit
            self._follow(c.instruction)
        self.state_label, self.stop_reason = 'inactive', 'configured, not activated'
        self.get_logger().info(f'model loaded ({self.model_label}, {c.device}, {c.dtype}, '
                               f'quantize {c.quantize}, '
                               f'{self.cpu_threads} CPU threads, '
                               f'accel {list(c.accel.names)} {c.accel.options}); '
                               f'outputs: {list(c.outputs)}')
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # outputs enabled before the first tick
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self.runner.start()
        with self._output_lock:
            self._commanding = True
        self.loop = FixedRateLoop(self.config.control_period_s, self._on_control_tick, self._now,
                                  on_error=self._on_tick_error)
        self.loop.start()
        self.state_label, self.stop_reason = 'active', ''
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._final_hold('deactivated')  # first: a deactivated publisher drops what it is given
        self.state_label = 'inactive'
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._final_hold('cleaned up')
        self._release()
        self.state_label = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._final_hold(self.exit_reason or 'shut down')
        self.state_label = 'finalized'
        self._publish_diagnostics()  # why it stopped: acknowledged with the hold, in one wait
        self._release(also=[self.diagnostics])
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._final_hold('lifecycle error')
        self._release()  # error processing ends unconfigured: nothing configured is left
        self.state_label = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def _create_inputs(self) -> None:
        """Subscribe to the camera, the instruction and the joint states (configure)."""
        c = self.config
        camera_qos = qos_profile_sensor_data if c.image_reliability == 'best_effort' \
            else RELIABLE_CAMERA_QOS
        if c.image_transport == 'compressed':
            camera = self.create_subscription(CompressedImage, 'image_raw/compressed',
                                              self._on_compressed, camera_qos)
        else:
            camera = self.create_subscription(Image, 'image_raw', self._on_image, camera_qos)
        self.camera_topic = camera.topic_name  # with remappings applied, for the diagnostics
        # The instruction topic, like every input, exists only while configured; before
        # configure, the `instruction` parameter sets the task (configure follows it).
        instruction = self.create_subscription(String, 'instruction', self._on_instruction,
                                               INSTRUCTION_QOS)
        joints = self.create_subscription(JointState, 'joint_states', self._on_joint_state,
                                          qos_profile_sensor_data)
        self._subs = [camera, instruction, joints]

    def _release(self, also: tuple | list = ()) -> None:
        """Destroy what configure made, once reliable subscribers have the last hold."""
        wait_for_acks([*self._pub.values(), *also])
        for pub in self._pub.values():
            self.destroy_lifecycle_publisher(pub)
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._pub.clear()
        self._subs.clear()
        self.camera_topic = ''
        self.policy = self.runner = None
        self.joint_state = self._debug_frame = None

    def _final_hold(self, reason: str) -> None:
        """Stop the tick and the worker, after exactly one hold that says why."""
        with self._output_lock:
            self._commanding = False
            if self.runner is not None and self._pub:
                # From inactive (cleanup, shutdown) the outputs are disabled: the hold still
                # goes out, through outputs enabled for that one message.
                disabled = [p for p in self._pub.values() if not p.is_activated]
                for pub in disabled:
                    pub.on_activate(None)
                self._publish(self.runner.final_hold(reason))
                for pub in disabled:
                    pub.on_deactivate(None)
                self.get_logger().info(f'final hold: {reason}')
        self.stop_reason = reason
        if self.loop is not None:  # a tick still running sees _commanding off and returns
            self.loop.stop()
            self.loop = None
        if self.runner is not None:
            self.runner.stop()

    def exit(self, reason: str) -> None:
        """
        Stop for good before the process ends.

        The shutdown transition sends the one hold and diagnostics that say why, and waits
        (at most ACK_TIMEOUT_S) until reliable subscribers acknowledged both: a sample still
        in flight dies with the process.
        """
        self.exit_reason = reason
        if self.state_label != 'finalized':
            self.trigger_shutdown()
            return
        self.stop_reason = reason  # finalized before: only the diagnostics are new
        self._publish_diagnostics()
        wait_for_acks([self.diagnostics])

    # -- inputs ----------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, msg: Image) -> None:
        self._submit(image_to_rgb, msg)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._submit(compressed_to_rgb, msg)

    def _submit(self, convert, msg) -> None:
        runner = self.runner
        if runner is None:
            return
        stamp_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        try:
            rgb = convert(msg, self.config.max_image_pixels)
        except InputError as exc:
            runner.reject_frame(str(exc))
            self._warn_rejected_frame(exc)
            return
        try:
            runner.submit_frame(rgb, stamp_ns or None)  # counts its own rejections
        except InputError as exc:
            self._warn_rejected_frame(exc)

    def _warn_rejected_frame(self, exc: InputError) -> None:
        if line := self._log(f'camera: {exc}', f'rejected camera frame: {exc}'):
            self.get_logger().warning(line)

    def _on_instruction(self, msg: String) -> None:
        """Follow the topic's text if it passes the rule; stop otherwise."""
        with self._instruction_lock:
            runner = self.runner
            if runner is not None and msg.data.strip() == runner.instruction and msg.data:
                return  # the usual re-send of the current task: nothing to do
            self._follow(msg.data)

    def _follow(self, text: str) -> None:
        """Follow `text` ('' = none), or stop on a rejected one; the parameter shows it."""
        with self._instruction_lock:
            if text:
                try:
                    text = self._check_instruction(text)
                except InputError as exc:
                    if self.runner is not None:
                        self.runner.reject_input(f'instruction rejected: {exc}')
                    if line := self._log(f'instruction: {exc}',
                                         f'instruction rejected, stopping: {exc}'):
                        self.get_logger().error(line)
                    text = ''
            if self.runner is not None and self.runner.set_instruction(text) \
                    and (line := self._log('episode', f'new episode: {text!r}')):
                self.get_logger().info(line)
            if self.get_parameter('instruction').value != text:
                self._syncing_instruction = True
                try:
                    self.set_parameters([Parameter('instruction', Parameter.Type.STRING, text)])
                finally:
                    self._syncing_instruction = False

    def _check_instruction(self, text: str) -> str:
        """Apply the one instruction rule (text, then the policy's token limit when loaded)."""
        return self.runner.check_instruction(text) if self.runner is not None \
            else check_instruction(text)

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

    def _parameter_values(self) -> dict[str, Any]:
        return {p.name: plain(self.get_parameter(p.name).value) for p in PARAMS}

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Accept or refuse a change, saying why; its side effects come once it is stored."""
        with self._instruction_lock:
            values = self._parameter_values()
            reason = self._check_parameters(params, values)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if not self._post_set:  # Humble: no post-set callback, apply once accepted
                self._apply_parameters(params, values)
            return SetParametersResult(successful=True)

    def _on_parameters_set(self, params) -> None:
        """Apply a stored change (post-set callback): the config, the runner, the task."""
        with self._instruction_lock:
            self._apply_parameters(params, self._parameter_values())

    def _check_parameters(self, params, values: dict[str, Any]) -> str:
        """Return why the change is refused ('' when accepted); `values` gets the new values."""
        for p in params:
            if p.name == 'use_sim_time':
                return ('use_sim_time is fixed at start-up (--ros-args -p use_sim_time:=true): '
                        'switching clocks while running would invalidate every age and timeout')
            value = plain(p.value)
            reason = check_value(p.name, value)
            if reason:
                return reason
            values[p.name] = value
        reason = check_config(values)
        if not reason and any(p.name == 'instruction' for p in params) \
                and not self._syncing_instruction and values['instruction']:
            try:
                self._check_instruction(values['instruction'])
            except InputError as exc:
                reason = f'instruction rejected: {exc}'
        return reason or ''

    def _chunks(self) -> ChunkExecution:
        """Return the chunk execution: the parameters, chunk_steps -1 left to the model."""
        recommended = self.policy.cfg.execution
        left = self.config.chunk_steps == MODEL_STEPS
        self.chunk_steps_from = ('model' if recommended.chunk_steps is not None else 'default') \
            if left else 'parameter'
        return self.config.chunks.for_model(recommended)

    def _apply_parameters(self, params, values: dict[str, Any]) -> None:
        self.config = build_config(values)
        c = self.config
        changes_instruction = any(p.name == 'instruction' for p in params)
        if self.runner is not None:
            self.runner.reconfigure(
                SafetyLimits.from_lists(c.action_scale, c.action_lower, c.action_upper),
                c.max_image_age_s, c.max_action_age_s, c.max_command_gap_s, self._chunks())
            if changes_instruction and not self._syncing_instruction \
                    and self.runner.set_instruction(c.instruction):
                self.get_logger().info(f'new episode: {c.instruction!r}')
            if any(p.name in ACCEL_PARAMS for p in params):  # live options, at the next step
                policy, accel = self.policy, c.accel
                self.runner.update_policy(lambda: update_options(policy, accel.options))

    # -- outputs ---------------------------------------------------------------------------

    def _on_tick_error(self, exc: Exception) -> None:
        self.tick_error = f'control tick failed: {type(exc).__name__}: {exc}'
        if line := self._log('tick error', f'{self.tick_error}\n{traceback.format_exc()}'):
            self.get_logger().error(line)

    def _on_control_tick(self, planned: float) -> None:
        with self._output_lock:
            if not self._commanding or self.runner is None:
                return
            tick = self.runner.tick(planned)
            if tick.kind == 'hold':
                self.get_logger().error(f'holding: {tick.fault}')
            self._publish(tick)
            self.tick_error = ''

    def _publish(self, tick: Tick) -> None:
        """
        Publish a command on every chosen output.

        A hold is zero motion; its gripper entry is the last gripper command, or NaN ("no
        gripper command", nothing on ~/gripper_cmd) before there was one.
        """
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
        if 'gripper' in self._pub and not np.isnan(cmd[GRIPPER]):
            self._pub['gripper'].publish(Float64(data=float(cmd[GRIPPER])))
        if 'raw' in self._pub and tick.raw is not None:
            self._pub['raw'].publish(float_array(tick.raw, 'raw_action'))
        if 'trajectory' in self._pub:
            self._pub['trajectory'].publish(self._trajectory(tick, stamp, period))
        if 'debug' in self._pub:
            self._publish_debug(tick, stamp)
        self._pub['timing'].publish(command_timing(tick))

    def _publish_debug(self, tick: Tick, stamp) -> None:
        """Draw the command over the frame it came from (a hold: over the last one)."""
        if tick.frame is not None:
            self._debug_frame = tick.frame
        if self._debug_frame is None or not self._pub['debug'].get_subscription_count():
            return
        info = tick.info
        image = render_debug(self._debug_frame, tick.command, kind=tick.kind,
                             reused=bool(info and info.reused),
                             kept=info.kept_indices if info else None,
                             tokens=info.visual_tokens if info else 0,
                             max_step=float(np.max(np.abs(self.config.action_upper[:2]))))
        self._pub['debug'].publish(rgb_to_image(image, stamp))

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
                                  'quantize': self.config.quantize,
                                  'cpu_threads': self.cpu_threads,
                                  'control_rate_hz': self.config.control_rate_hz,
                                  'accel': '+'.join(accel.names) or 'none',
                                  'accel_options': accel.options,
                                  'stop_reason': self.stop_reason}
        warnings = {}  # reason -> text
        camera_topic = self.camera_topic
        if camera_topic:  # configured: the camera subscription exists
            camera_publishers = values['camera_publishers'] = self.count_publishers(camera_topic)
            if camera_publishers > 1:
                warnings['camera publishers'] = \
                    f'{camera_publishers} publishers on {camera_topic}'
        runner = self.runner
        if runner is not None:
            s = runner.status()
            values.update(s)
            values['chunk_steps_from'] = self.chunk_steps_from
            values.update(policy_values(runner.last_info))
            if s['warning']:
                warnings['latency'] = s['warning']
            if self.joint_state is not None:
                age = self._now() - (self.joint_state.header.stamp.sec
                                     + self.joint_state.header.stamp.nanosec * 1e-9)
                values['joint_state_age_s'] = round(age, 3)
        loop = self.loop
        tick_fault = self.tick_error
        if loop is not None:
            values.update(skipped_ticks=loop.skipped, tick_errors=loop.errors)
            if not loop.running and self._commanding:
                tick_fault = 'the control tick thread is not running'
        if self.state_label != 'active':
            failed = self.stop_reason.startswith('configure failed')
            status.level = DiagnosticStatus.ERROR if failed else DiagnosticStatus.WARN
            status.message = f'{self.state_label}: not commanding ({self.stop_reason})'
        elif tick_fault:
            status.level, status.message = DiagnosticStatus.ERROR, tick_fault
        elif runner is not None and s['fault']:
            status.level, status.message = DiagnosticStatus.ERROR, s['fault']
        elif warnings:
            status.level, status.message = DiagnosticStatus.WARN, '; '.join(warnings.values())
        else:
            status.level, status.message = DiagnosticStatus.OK, 'commanding'
        for reason, text in warnings.items():
            if line := self._log(reason, text, period_s=30.0):
                self.get_logger().warning(line)
        status.values = [KeyValue(key=k, value=fmt(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diagnostics.publish(msg)


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


def plain(value: Any) -> Any:
    """Return array parameters (rclpy gives array.array) as lists, other values as they are."""
    return list(value) if isinstance(value, array.array) else value


def fmt(v: Any) -> str:
    return f'{v:.3f}' if isinstance(v, float) else str(v)


def float_array(values: np.ndarray, label: str) -> Float64MultiArray:
    msg = Float64MultiArray(data=[float(v) for v in values])
    msg.layout.dim = [MultiArrayDimension(label=label, size=len(values), stride=len(values))]
    return msg


def wait_for_acks(publishers, timeout_s: float = ACK_TIMEOUT_S) -> bool:
    """
    Wait until every reliable subscriber acknowledged what was published.

    Polled, because rclpy's blocking wait keeps the GIL: inference and the acks themselves
    would stall.
    """
    now = RclpyDuration()
    pending, deadline = list(publishers), time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not p.wait_for_all_acked(now)]
        if pending:
            time.sleep(0.005)
    return not pending


class ExitSignals:
    """
    Record SIGINT and SIGTERM; the spin loop ends on them.

    rclpy's own handler would shut the context down at once, and the node must still publish
    its final hold after the signal arrives.
    """

    def __init__(self) -> None:
        self.received = ''
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signals = ExitSignals()
    try:
        node = PolicyNode()
    except (ValueError, ParameterException) as exc:  # refused before anything could move
        rclpy.logging.get_logger('policy_node').fatal(f'bad parameters, not starting: {exc}')
        rclpy.try_shutdown()
        sys.exit(2)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.config.autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal('configure failed; exiting')
                code = 1
            elif not signals.received:
                node.trigger_activate()
        while code == 0 and not signals.received and rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.1)  # wakes at least every 0.1 s for signals
            except (KeyboardInterrupt, ExternalShutdownException):
                raise
            except Exception:  # a bug in one callback must not take the control loop down
                node.get_logger().error(f'callback failed:\n{traceback.format_exc()}')
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        reason = f'{signals.received} received' if signals.received else 'process exit'
        if rclpy.ok():
            node.exit(reason)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    sys.exit(code)


if __name__ == '__main__':
    main()
