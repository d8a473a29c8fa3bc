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

from contextlib import nullcontext
from pathlib import Path
import sys
import threading
import traceback
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from ..accel.registry import accelerate, update_options
from ..control.chunks import MODEL_STEPS
from ..control.joint_commands import require_pinocchio
from ..control.runner import PolicyRunner
from ..control.throttle import ThrottledLog
from ..control.ticker import FixedRateLoop
from ..control.worker import InferenceWorker
from ..params import ACCEL_PARAMS, JOINT_OUTPUTS, NodeConfig, build_config
from ..policy import CheckpointError, InputError, PolicyError, load_policy, set_cpu_threads
from ..policy.actions import ACTION_DIM, ACTION_NAMES
from ..policy.config import JOINT_POSITION, OpenVLAConfig
from ..policy.instruction import check_instruction
from ..policy.presets import EMBEDDED_MODELS, model_path
from . import parameters
from .diagnostics import node_diagnostics
from .robot_io import RobotIO, joint_commander
from .spin import ExitSignals, make_executor, wait_for_acks

ROBOT_STAGGER_S = 0.002  # several robots: each robot's tick this much after the previous one's


class PolicyNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__('policy_node', **kwargs)
        parameters.declare(self)
        self.config: NodeConfig = build_config(parameters.read(self))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # Side effects of a change run once it is stored; Humble's rclpy has no post-set
        # callback, so there the validator applies an accepted change itself.
        self._post_set = hasattr(self, 'add_post_set_parameters_callback')
        if self._post_set:
            self.add_post_set_parameters_callback(self._on_parameters_set)
        self.policy = None
        self.robots: list[RobotIO] = []  # one (unnamed) for a single robot, while configured
        self.worker: InferenceWorker | None = None  # the policy's only caller, every robot's
        self._robot_services: list[Any] = []
        self.loops: list[FixedRateLoop] = []  # the control ticks (one per robot), while active
        self.state_label = 'unconfigured'
        self.stop_reason = 'not activated yet'  # why the node is not commanding
        self.exit_reason = ''  # set before the shutdown transition of a process exit
        self.model_label = ''
        self.chunk_steps_from = ''  # 'model', 'default' or 'parameter': whose chunk_steps runs
        self.cpu_threads = 0  # set at configure
        self.log = ThrottledLog(period_s=1.0)
        # Whether ticks may publish; each robot's lock keeps its ticks and its final hold
        # apart, so that after the final hold no tick publishes.
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
            self.policy.serve(min(c.max_batch, len(c.robots) or 1))  # robots per forward
            self.policy.warm_up()  # the first real step as fast as the tenth, batch full
        except (PolicyError, ValueError, OSError) as exc:
            self.get_logger().error(f'cannot load the model: {exc}')
            self.stop_reason = f'configure failed: {exc}'
            return TransitionCallbackReturn.FAILURE
        try:
            self._check_outputs(plain_policy.cfg)
        except (PolicyError, ValueError, ImportError) as exc:
            self.get_logger().error(f'outputs refused: {exc}')
            self.stop_reason = f'configure failed: {exc}'
            self.policy = None
            return TransitionCallbackReturn.FAILURE
        self.model_label = c.model or 'default'
        # One robot is a batch of one: the same worker, runners and robot policies either way.
        self.worker = InferenceWorker(self.policy.predict_batch, c.batch_window_s,
                                      self.policy.max_batch)
        settings = self._runner_settings()
        for name in c.robots or ('',):
            runner = PolicyRunner(self.policy.for_robot(), settings, self.worker, self.now_s)
            self.robots.append(RobotIO(self, name, runner, c, self._on_instruction,
                                       self.policy.cfg.action_space,
                                       self.policy.cfg.action_joint_names))
        self._robot_services = [  # a server's robots: a reset and a lifecycle each
            service for robot in self.robots if robot.name for service in (
                self.create_service(Trigger, robot.private('reset'),
                                    lambda req, res, robot=robot: self._on_reset(req, res, robot)),
                self.create_service(SetBool, robot.private('enable'),
                                    lambda req, res, robot=robot: self._on_enable(req, res,
                                                                                  robot)))]
        if c.instruction:  # the parameter's text passed the text rule; now the token limit
            for robot in self.robots:
                self._follow(robot, c.instruction)
        self.state_label, self.stop_reason = 'inactive', 'configured, not activated'
        self.get_logger().info(f'model loaded ({self.model_label}, {c.device}, {c.dtype}, '
                               f'quantize {c.quantize}, '
                               f'{self.cpu_threads} CPU threads, '
                               f'accel {list(c.accel.names)} {c.accel.options}); '
                               f'outputs: {list(c.outputs)}'
                               + (f'; robots {list(c.robots)}, batches of up to {c.max_batch} '
                                  f'within {c.batch_window_s:g} s' if c.robots else ''))
        return TransitionCallbackReturn.SUCCESS

    def _check_outputs(self, cfg: OpenVLAConfig) -> None:
        """
        Refuse outputs the node cannot make for this model and robot, with the reason.

        A joint-position model has no end-effector displacements to send; joint outputs need
        Pinocchio and, when it is a parameter, a robot model that loads with the frames asked.
        """
        c = self.config
        if cfg.action_space == JOINT_POSITION:
            ee = [o for o in c.outputs if o in ('twist', 'array')]
            if ee:
                raise CheckpointError(
                    f'the model outputs joint positions ({list(cfg.action_joint_names)}); '
                    f'outputs {ee} carry end-effector displacements: choose from '
                    f'{[*JOINT_OUTPUTS, "gripper", "raw"]}')
        if not any(o in JOINT_OUTPUTS for o in c.outputs):
            return
        require_pinocchio()
        if c.robot_description:
            joint_commander(c.robot_description, c, cfg.action_space, cfg.action_joint_names)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # outputs enabled before the first tick
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self.worker.start([r.runner for r in self.robots if r.enabled])
        self._commanding = True
        # One tick thread per robot, robot k's schedule ROBOT_STAGGER_S * k after the first's:
        # one robot's publishing never delays another's command (measured: about 1 ms per
        # robot when they shared one tick; docs/MULTI_ROBOT.md).
        self.loops = [
            FixedRateLoop(self.config.control_period_s,
                          lambda planned, robot=robot: self._on_control_tick(robot, planned),
                          self.now_s,
                          name='-'.join(filter(None, ['flashvla-control', robot.name])),
                          on_error=lambda exc, robot=robot: self._on_tick_error(robot, exc),
                          on_skip=robot.runner.skipped, offset_s=k * ROBOT_STAGGER_S,
                          wake=robot.runner.delivered)
            for k, robot in enumerate(self.robots)]
        for robot, loop in zip(self.robots, self.loops, strict=True):
            robot.loop = loop
        for loop in self.loops:
            loop.start()
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

    def _release(self, also: tuple | list = ()) -> None:
        """Destroy what configure made, once reliable subscribers have the last hold."""
        wait_for_acks([*(p for r in self.robots for p in r.pub.values()), *also])
        for robot in self.robots:
            robot.destroy()
        for service in self._robot_services:
            self.destroy_service(service)
        self.robots, self._robot_services = [], []
        self.policy = self.worker = None

    def _final_hold(self, reason: str) -> None:
        """Stop the tick and the worker, after exactly one hold per robot that says why."""
        self._commanding = False  # a tick from now on publishes nothing
        if self.robots and self.robots[0].pub:
            for robot in self.robots:
                with robot.lock:  # after a tick that is publishing now
                    # From inactive (cleanup, shutdown) the outputs are disabled: the hold
                    # still goes out, through outputs enabled for that one message.
                    if robot.enabled:
                        robot.publish_through_disabled(robot.runner.final_hold(reason),
                                                       self.get_clock().now().to_msg())
            self.get_logger().info(f'final hold: {reason}')
        self.stop_reason = reason
        for loop in self.loops:  # a tick still running sees _commanding off and returns
            loop.stop()
        self.loops = []
        if self.worker is not None and not self.worker.stop():  # waits a bounded time
            self.get_logger().error(self.worker.stuck())

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

    def now_s(self) -> float:
        """Return the node clock's time in seconds (sim time under use_sim_time)."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_instruction(self, robot: RobotIO, msg: String) -> None:
        """Follow the topic's text if it passes the rule; stop otherwise."""
        with self._instruction_lock:
            if msg.data.strip() == robot.runner.instruction and msg.data:
                return  # the usual re-send of the current task: nothing to do
            self._follow(robot, msg.data)

    def _follow(self, robot: RobotIO, text: str) -> None:
        """
        Have `robot` follow `text` ('' = none), or stop it on a rejected one.

        The single robot's `instruction` parameter shows what it follows; a server's robots
        each follow their own topic (the parameter gives them all one instruction).
        """
        with self._instruction_lock:
            if text:
                try:
                    text = self._check_instruction(text)
                except InputError as exc:
                    robot.runner.reject_input(f'instruction rejected: {exc}')
                    if line := robot.log(f'instruction: {exc}',
                                         f'{robot.where}instruction rejected, stopping: {exc}'):
                        self.get_logger().error(line)
                    text = ''
            if robot.runner.set_instruction(text) \
                    and (line := robot.log('episode',
                                           f'{robot.where}new episode: {text!r}')):
                self.get_logger().info(line)
            if not robot.name and self.get_parameter('instruction').value != text:
                self._syncing_instruction = True
                try:
                    self.set_parameters([Parameter('instruction', Parameter.Type.STRING, text)])
                finally:
                    self._syncing_instruction = False

    def _check_instruction(self, text: str) -> str:
        """Apply the one instruction rule (text, then the policy's token limit when loaded)."""
        return self.policy.check_instruction(text) if self.policy is not None \
            else check_instruction(text)

    def _on_reset(self, request, response, robot: RobotIO | None = None):
        """Start a new episode (same instruction): the queue and the reuse memory empty."""
        robots = self.robots if robot is None else [robot]
        if not robots:
            response.success, response.message = False, f'not configured ({self.state_label})'
            return response
        for r in robots:
            r.runner.reset_episode()
            self.get_logger().info(f'{r.where}episode reset')
        response.success = True
        response.message = '; '.join(f'{r.where}new episode: {r.runner.instruction!r}'
                                     for r in robots)
        return response

    def _on_enable(self, request, response, robot: RobotIO):
        """
        Start (true) or stop (false) commanding one robot of a server: its own lifecycle.

        Disabling sends that robot one hold and stops asking for its inferences; the other
        robots go on. Enabling starts it again (a new episode, the same instruction).
        """
        with robot.lock:
            if request.data == robot.enabled:
                response.success = True
            elif not request.data:
                robot.enabled = False
                robot.stop_reason = f'disabled by {robot.private("enable")}'
                if self._commanding:
                    robot.publish(robot.runner.final_hold(robot.stop_reason),
                                  self.get_clock().now().to_msg())
                robot.runner.stop()
                response.success = True
            else:
                robot.enabled, robot.stop_reason = True, ''
                robot.runner.reset_episode()
                if self._commanding and self.worker is not None:
                    self.worker.start([robot.runner])  # never waits (worker.py)
                response.success = True
        response.message = f'{robot.name}: {"enabled" if robot.enabled else "disabled"}'
        self.get_logger().info(response.message)
        return response

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Accept or refuse a change, saying why; its side effects come once it is stored."""
        with self._instruction_lock:
            values = parameters.read(self)
            reason = parameters.refusal(params, values, None if self._syncing_instruction
                                        else self._check_instruction)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if not self._post_set:  # Humble: no post-set callback, apply once accepted
                self._apply_parameters(params, values)
            return SetParametersResult(successful=True)

    def _on_parameters_set(self, params) -> None:
        """Apply a stored change (post-set callback): the config, the runner, the task."""
        with self._instruction_lock:
            self._apply_parameters(params, parameters.read(self))

    def _runner_settings(self):
        """Every runner's settings from the parameters; chunk_steps -1 left to the model."""
        recommended = self.policy.cfg.execution
        left = self.config.chunk_steps == MODEL_STEPS
        self.chunk_steps_from = ('model' if recommended.chunk_steps is not None else 'default') \
            if left else 'parameter'
        return self.config.runner_settings(recommended)

    def _apply_parameters(self, params, values: dict[str, Any]) -> None:
        self.config = build_config(values)
        c = self.config
        changes_instruction = any(p.name == 'instruction' for p in params)
        settings = self._runner_settings() if self.robots else None
        for robot in self.robots:
            robot.config = c
            robot.runner.reconfigure(settings)
            if changes_instruction and not self._syncing_instruction:
                if robot.name:
                    self._follow(robot, c.instruction)
                elif robot.runner.set_instruction(c.instruction):
                    self.get_logger().info(f'new episode: {c.instruction!r}')
        if self.worker is not None:
            self.worker.window_s = c.batch_window_s
        if any(p.name in ACCEL_PARAMS for p in params):  # live options, at the next step
            # Every robot's change is queued at once (one hold of the shared lock), so no
            # batch mixes robots with old and new options (token counts must agree).
            with self.worker.lock if self.worker is not None else nullcontext():
                for robot in self.robots:
                    hooks = robot.runner.policy.composition.hooks
                    robot.runner.update_policy(
                        lambda hooks=hooks: update_options(hooks, c.accel.options))

    # -- outputs ---------------------------------------------------------------------------

    def _on_tick_error(self, robot: RobotIO, exc: Exception) -> None:
        robot.tick_error = f'control tick failed: {type(exc).__name__}: {exc}'
        if line := robot.log('tick error', f'{robot.where}{robot.tick_error}\n'
                                           f'{traceback.format_exc()}'):
            self.get_logger().error(line)

    def _on_control_tick(self, robot: RobotIO, planned: float) -> float | None:
        """Run `robot`'s tick and publish; return when to run it again ('waiting'), or None."""
        with robot.lock:
            if not self._commanding or not robot.enabled:
                return None
            tick = robot.runner.tick(planned)
            if tick.kind == 'hold':
                self.get_logger().error(f'{robot.where}holding: {tick.fault}')
            robot.publish(tick, self.get_clock().now().to_msg())
            robot.tick_error = ''
            return tick.retry_until

    def tick_fault(self, robot: RobotIO) -> str:
        """Why `robot`'s control tick fails ('' when it runs): its last error, or a dead thread."""
        if robot.tick_error:
            return robot.tick_error
        if robot.loop is not None and not robot.loop.running and self._commanding:
            return 'the control tick thread is not running'
        return ''

    def _publish_diagnostics(self) -> None:
        self.diagnostics.publish(node_diagnostics(self))


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signals = ExitSignals()
    try:
        node = PolicyNode()
    except (ValueError, ParameterException) as exc:  # refused before anything could move
        rclpy.logging.get_logger('policy_node').fatal(f'bad parameters, not starting: {exc}')
        rclpy.try_shutdown()
        sys.exit(2)
    executor = make_executor()
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
