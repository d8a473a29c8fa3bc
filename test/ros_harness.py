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
Real rclpy processes for the integration tests: start nodes, probe topics, call services.

Every test session gets its own DDS domain and stays on localhost, so parallel runs and
other ROS graphs on the machine never see each other. The fixtures (`probe`, `procs`,
`fresh_probe`) live in conftest.py; starting and stopping processes is
flashvla_ros/ros/processes.py, as for the demo and the scripts.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
import subprocess
import time

import numpy as np

from flashvla_ros.policy.actions import GRIPPER, MOTION
from flashvla_ros.ros.processes import interrupt, ros_env, status_values, tool

ROOT = Path(__file__).resolve().parent.parent
BAG = ROOT / 'test' / 'data' / 'mock_world_bag'
GOLDEN = ROOT / 'test' / 'data' / 'mock_world_bag_golden.json'
LOWER = np.array([-0.05] * 3 + [-0.25] * 3 + [0.0])  # config/policy.yaml's limits
UPPER = np.array([0.05] * 3 + [0.25] * 3 + [1.0])
COMMANDS = '/policy_node/commands'
RAW = '/policy_node/raw_action'


def ros_environment() -> dict[str, str]:
    """Return this test session's environment: its own DDS domain, localhost only."""
    return ros_env(own_domain=True, override=True)


class Processes:
    """Started nodes; all are interrupted (then killed) at teardown, logs kept for failures."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = self.log_dir / f'{name}-{len(self.procs)}.log'
        proc = subprocess.Popen([tool(name), *args], stdout=log.open('w'),
                                stderr=subprocess.STDOUT, env=ros_environment())
        self.procs.append((proc, log))
        return proc

    def died(self) -> bool:
        """Whether a node (not a tool like the bag player) has exited."""
        nodes = ('policy_node', 'mock_world', 'libero_world')
        return any(p.poll() is not None and p.args[0].endswith(nodes)
                   for p, _ in self.procs if p.returncode is None or p.returncode != -2)

    def logs(self) -> str:
        return '\n'.join(f'--- {log.name}\n{log.read_text()[-3000:]}' for _, log in self.procs)

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            interrupt(proc)


class Probe:
    """An in-process node that records what it hears, with the receive time."""

    def __init__(self, node) -> None:
        self.node = node
        self.messages: dict[str, list[tuple[float, object]]] = defaultdict(list)

    def listen(self, msg_type, topic: str, qos=10) -> None:
        def keep(msg, topic=topic):
            self.messages[topic].append((time.monotonic(), msg))
        self.node.create_subscription(msg_type, topic, keep, qos)

    def spin(self, seconds: float) -> None:
        import rclpy
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.02)

    def wait_for(self, predicate, timeout: float, what: str, processes: Processes | None = None):
        import rclpy
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            result = predicate()
            if result:
                return result
            if processes and processes.died():
                raise AssertionError(f'a node exited while waiting for {what}\n{processes.logs()}')
            rclpy.spin_once(self.node, timeout_sec=0.02)
        logs = processes.logs() if processes else ''
        raise AssertionError(f'timed out after {timeout} s waiting for {what}\n'
                             f'diagnostics: {self.diagnostics()}\n{logs}')

    def diagnostics(self, name: str = 'flashvla_ros: policy_node') -> dict[str, str] | None:
        """Key-values (plus 'level' and 'message') of the newest status called `name`."""
        for _, msg in reversed(self.messages['/diagnostics']):
            for status in msg.status:
                if status.name == name:
                    values: dict = status_values(status)
                    values['level'] = int.from_bytes(status.level, 'little') \
                        if isinstance(status.level, bytes) else int(status.level)
                    return values
        return None

    def call(self, srv_type, name: str, request, timeout: float = 10.0):
        import rclpy
        client = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f'service {name} not available')
        future = client.call_async(request)
        end = time.monotonic() + timeout
        while not future.done() and time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.02)
        self.node.destroy_client(client)
        if not future.done():
            raise AssertionError(f'service {name} did not answer')
        return future.result()


def policy_args(model, *params: str) -> list[str]:
    args = ['--ros-args', '--params-file', str(ROOT / 'config' / 'policy.yaml'),
            '-p', f'model:={model}']
    for p in params:
        args += ['-p', p]
    return args


def listen_once(probe: Probe, msg_type, topic: str, qos=10) -> None:
    if not any(s.topic_name == topic for s in probe.node.subscriptions):
        probe.listen(msg_type, topic, qos)


def wait_active(probe: Probe, procs: Processes) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    listen_once(probe, DiagnosticArray, '/diagnostics')
    probe.wait_for(lambda: (probe.diagnostics() or {}).get('lifecycle_state') == 'active',
                   60, 'policy_node to become active', procs)


def commands(probe: Probe, topic: str = COMMANDS) -> list[tuple[float, np.ndarray]]:
    return [(t, np.array(m.data)) for t, m in probe.messages[topic]]


def is_hold(cmd: np.ndarray) -> bool:
    return bool((cmd[MOTION] == 0).all())


def within_limits(values: np.ndarray) -> bool:
    """Every command is inside the limits; only a hold may carry NaN ("no gripper command")."""
    values = np.array(values, dtype=float).reshape(-1, 7)
    unset = np.isnan(values[:, GRIPPER]) & (values[:, MOTION] == 0).all(axis=1)
    values[unset, GRIPPER] = LOWER[GRIPPER]
    return bool(((values >= LOWER) & (values <= UPPER)).all())


def param(name: str, value):
    """Make an rcl_interfaces Parameter: bool, int, float, str or a list of floats."""
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    v = ParameterValue()
    if isinstance(value, bool):
        v.type, v.bool_value = ParameterType.PARAMETER_BOOL, value
    elif isinstance(value, int):
        v.type, v.integer_value = ParameterType.PARAMETER_INTEGER, value
    elif isinstance(value, float):
        v.type, v.double_value = ParameterType.PARAMETER_DOUBLE, value
    elif isinstance(value, str):
        v.type, v.string_value = ParameterType.PARAMETER_STRING, value
    else:
        v.type, v.double_array_value = ParameterType.PARAMETER_DOUBLE_ARRAY, list(value)
    return Parameter(name=name, value=v)


def set_parameter(probe: Probe, name: str, value, node: str = '/policy_node'):
    """Set one parameter through the node's service; return its SetParametersResult."""
    from rcl_interfaces.srv import SetParameters
    request = SetParameters.Request(parameters=[param(name, value)])
    return probe.call(SetParameters, f'{node}/set_parameters', request).results[0]


def get_parameter(probe: Probe, name: str, node: str = '/policy_node'):
    from rcl_interfaces.srv import GetParameters
    request = GetParameters.Request(names=[name])
    return probe.call(GetParameters, f'{node}/get_parameters', request).values[0]


def change_state(probe: Probe, transition: int, node: str = '/policy_node') -> bool:
    """Trigger a lifecycle transition by id (lifecycle_msgs/Transition)."""
    from lifecycle_msgs.srv import ChangeState
    request = ChangeState.Request()
    request.transition.id = transition
    return probe.call(ChangeState, f'{node}/change_state', request).success
