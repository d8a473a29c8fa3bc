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
The policy node's /diagnostics: why it commands or not, in one entry (and one per robot).

The node's entry, `flashvla_ros: policy_node`, has the lifecycle state and why it is not
commanding, the model and the worker; a single robot's values are the node's own; a server of
several robots adds one entry per robot (`robot_io.RobotIO.status`), and its entry names the
robots that are not commanding, and why.
"""

from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

from .robot_io import key_values


def node_diagnostics(node: Any) -> DiagnosticArray:
    """Return the node's /diagnostics message now; log its warnings (throttled)."""
    status = DiagnosticStatus(name=f'flashvla_ros: {node.get_name()}',
                              hardware_id=node.model_label)
    c = node.config
    values: dict[str, Any] = {'lifecycle_state': node.state_label, 'model': node.model_label,
                              'device': c.device, 'dtype': c.dtype,
                              'quantize': c.quantize, 'cpu_threads': node.cpu_threads,
                              'control_rate_hz': c.control_rate_hz,
                              'accel': '+'.join(c.accel.names) or 'none',
                              'accel_options': c.accel.options,
                              'stop_reason': node.stop_reason,
                              'chunk_steps_from': node.chunk_steps_from}
    warnings: dict[str, str] = {}  # reason -> text
    robot_fault = tick_fault = ''
    now = node.now_s()
    robots = list(node.robots)
    statuses = []
    if robots and not robots[0].name:  # the single robot: its values are the node's
        robot_values, warnings, robot_fault = robots[0].values(now)
        values.update(robot_values)
        tick_fault = node.tick_fault(robots[0])
    elif robots:
        values['robots'] = ','.join(r.name for r in robots)
        state = 'active' if node.state_label == 'active' else \
            f'{node.state_label}: {node.stop_reason}'
        statuses = [robot.status(now, node.model_label, state, node.tick_fault(robot))
                    for robot in robots]
        faulted = [f'{r.name}: {s.message}' for r, s in zip(robots, statuses, strict=True)
                   if s.level == DiagnosticStatus.ERROR]
        if faulted:  # the node's entry says which robots are not commanding, and why
            robot_fault = f'{len(faulted)} of {len(robots)} robots: ' + '; '.join(faulted)
    worker = node.worker
    stuck = worker.stuck() if worker is not None else ''
    if worker is not None:
        values.update(worker.status())
    if stuck:
        values['worker'] = stuck
    if node.loops:
        values.update(skipped_ticks=sum(loop.skipped for loop in node.loops),
                      tick_errors=sum(loop.errors for loop in node.loops))
    if node.state_label != 'active':
        failed = node.stop_reason.startswith('configure failed') or bool(stuck)
        status.level = DiagnosticStatus.ERROR if failed else DiagnosticStatus.WARN
        status.message = f'{node.state_label}: not commanding ({node.stop_reason})' + (
            f'; {stuck}' if stuck else '')
    elif tick_fault:
        status.level, status.message = DiagnosticStatus.ERROR, tick_fault
    elif robot_fault:
        status.level, status.message = DiagnosticStatus.ERROR, robot_fault
    elif warnings:
        status.level, status.message = DiagnosticStatus.WARN, '; '.join(warnings.values())
    else:
        status.level, status.message = DiagnosticStatus.OK, 'commanding'
    for reason, text in warnings.items():
        if line := node.log(reason, text, period_s=30.0):
            node.get_logger().warning(line)
    status.values = key_values(values)
    msg = DiagnosticArray(status=[status, *statuses])
    msg.header.stamp = node.get_clock().now().to_msg()
    return msg
