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
The node graph as processes: environment, start, stop, /diagnostics seen from outside.

One library for flashvla-demo, the measurement scripts and the integration tests.

It lives in ros/ because the demo (ros/demo.py) uses it and must not import upwards
(testing/ builds on ros/). Nothing here imports rclpy at module level: the tests' harness
imports it before any ROS process or node exists.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys

# What a run leaves unset: Fast DDS (the RMW the timing was measured on), localhost-only
# discovery (both spellings: Jazzy's range and Humble's flag), unbuffered Python logs.
LOCAL_ROS = {
    'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp',
    'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
    'ROS_LOCALHOST_ONLY': '1',
    'PYTHONUNBUFFERED': '1',
}


def own_domain_id() -> str:
    """Return a DDS domain of this process's own (100-199): runs in parallel never meet."""
    return str(100 + os.getpid() % 100)


def ros_env(own_domain: bool = False, override: bool = False) -> dict[str, str]:
    """
    Return the environment for the graph's processes (and this one's rclpy).

    The user's ROS settings win and `LOCAL_ROS` fills the rest; `own_domain` adds a domain of
    this process's own where the user chose none. `override` (the tests) imposes both over
    the user's settings, so that no other ROS graph on the machine sees the run.
    """
    chosen = {**LOCAL_ROS, **({'ROS_DOMAIN_ID': own_domain_id()} if own_domain else {})}
    env = dict(os.environ)
    for key, value in chosen.items():
        if override or key not in env:
            env[key] = value
    return env


def tool(name: str) -> str:
    """Return the path of an installed executable (a node or a flashvla tool), or refuse."""
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        raise FileNotFoundError(f'{name} is not installed: run `pip install -e .` (make does)')
    return path


def config_file(name: str) -> Path:
    """Return a parameter file of config/: the source tree's, else the installed share's."""
    for root in (Path(__file__).resolve().parents[2], Path(sys.prefix) / 'share' / 'flashvla_ros'):
        path = root / 'config' / name
        if path.is_file():
            return path
    raise FileNotFoundError(f'config/{name} is neither in the source tree nor installed')


def resolve_model(model: str | None) -> str:
    """Return the absolute checkpoint directory of `model` (default: the embedded model)."""
    from ..policy.presets import model_path  # deferred: it imports torch

    path = model_path(model)
    if not path.is_dir():
        raise FileNotFoundError(
            f'no checkpoint directory {path}' if model else
            f'this install has no embedded default model ({path}); pass a checkpoint '
            'directory (flashvla-make-tiny --out DIR writes a random one, whose actions are '
            'meaningless)')
    return str(path.resolve())  # the node may run in another working directory


def robot_names(count: int) -> list[str]:
    """Name `count` robots served by one node: r1, r2, ... ([] for none)."""
    return [f'r{i + 1}' for i in range(count)]


def start_world(robot: str, seed: int, logs: Path, *args: str,
                log_prefix: str = '', world: str = 'mock') -> subprocess.Popen:
    """
    Start a world node in `robot`'s namespace ('' for none), commanded by its policy node.

    `world`: mock (`mock_world`, seeded by `seed`) or libero (`libero_world`; `seed` is its
    environment's seed, OpenVLA's 0).
    """
    name = f'{world}_world'
    namespace = ['-r', f'__ns:=/{robot}'] if robot else []
    return subprocess.Popen(
        [tool(name), '--ros-args', *namespace, '-p', f'seed:={seed}', *args,
         '-r', 'commands:=policy_node/commands',
         '-r', 'joint_trajectory:=policy_node/joint_trajectory'],
        stdout=(logs / f'{log_prefix}{name}{"-" + robot if robot else ""}.log').open('w'),
        stderr=subprocess.STDOUT)


def start_policy(model: str, logs: Path, robots: list[str], *params: str,
                 params_file: Path | None = None, log_prefix: str = '',
                 more_params_files: tuple[Path, ...] = ()) -> subprocess.Popen:
    """
    Start the policy node (a parameter file, else its defaults) for `robots` or one robot.

    `more_params_files` are layered over `params_file` (a later file's values win).
    """
    robot_param = ['-p', f'robots:=[{", ".join(robots)}]'] if robots else []
    files = [params_file] if params_file else []
    file = [x for f in (*files, *more_params_files) for x in ('--params-file', str(f))]
    return subprocess.Popen(
        [tool('policy_node'), '--ros-args', *file, '-p', f'model:={model}', *robot_param,
         *[x for p in params for x in ('-p', p)]],
        stdout=(logs / f'{log_prefix}policy_node.log').open('w'), stderr=subprocess.STDOUT)


def interrupt(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    """Interrupt one process (a node's final hold goes out), kill it if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode


def stop_processes(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    """Interrupt every process at once, then wait for (or kill) each."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        interrupt(p, timeout_s)


def status_values(status) -> dict[str, str]:
    """Return a diagnostic_msgs/DiagnosticStatus's key-values, and its `message`, as a dict."""
    values = {kv.key: kv.value for kv in status.values}
    values['message'] = status.message
    return values


class DiagnosticsWatch:
    """
    The policy node's newest /diagnostics entry, as a dict (`status_values`).

    A server of several robots also has one entry per robot: `robot(name)`.
    """

    NAME = 'flashvla_ros: policy_node'

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.status: dict[str, str] = {}
        self.by_name: dict[str, dict[str, str]] = {}
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_diagnostics(self, msg) -> None:
        for s in msg.status:
            values = status_values(s)
            self.by_name[s.name] = values
            if s.name == self.NAME:  # in place: a caller may keep a reference
                self.status.clear()
                self.status.update(values)

    def robot(self, name: str) -> dict[str, str]:
        return self.by_name.get(f'{self.NAME} {name}', {})
