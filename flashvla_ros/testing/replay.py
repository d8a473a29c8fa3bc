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
Replay a recorded bag through a running policy node and check what it commanded.

Checking (`Expectations`, `check_commands`) is plain Python on (receive time, 7-D command)
pairs; `replay` (needs rclpy) plays the bag once every subscriber has matched, while recording
the node's outputs. `test/test_launch_bag_replay.py` is the template that puts the two together
under launch_testing with your bag and parameter file; docs/BAGS.md "Testing your own setup".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import json
from pathlib import Path
import threading
import time

import numpy as np

from ..policy.actions import ACTION_DIM
from ..policy.step import Observation

MOTION = slice(0, 6)  # dx, dy, dz, droll, dpitch, dyaw; index 6 is the gripper


def is_hold(command: Sequence[float]) -> bool:
    """Return whether a command is the node's hold: zero motion (the gripper is kept)."""
    return bool((np.asarray(command, dtype=float)[MOTION] == 0).all())


@dataclass
class Expectations:
    """What a replay must show; leave a field None (or 0) to not check it."""

    count: int | None = None  # exact number of non-hold commands (e.g. one per frame)
    min_count: int = 1  # at least this many non-hold commands
    rate_hz: tuple[float, float] | None = None  # bounds on the command rate while commanding
    lower: Sequence[float] | None = None  # per-dimension limits every command must respect
    upper: Sequence[float] | None = None
    edge_holds: bool = True  # holds allowed before the first and after the last action
    max_holds: int = 0  # holds allowed between actions
    golden: Sequence[Sequence[float]] | None = None  # expected non-hold commands, in order
    atol: float = 1e-6  # absolute tolerance against `golden`


def check_commands(stamps: Sequence[float], commands: Sequence[Sequence[float]],
                   expect: Expectations) -> list[str]:
    """Return every way the recorded commands miss `expect` (empty: all good)."""
    stamps = np.asarray(stamps, dtype=float)
    values = np.asarray(commands, dtype=float).reshape(-1, ACTION_DIM)
    if len(stamps) != len(values):
        raise ValueError(f'{len(stamps)} stamps for {len(values)} commands')
    holds = np.array([is_hold(v) for v in values], dtype=bool)
    acting = np.flatnonzero(~holds)
    problems = []
    n = len(acting)
    if expect.count is not None and n != expect.count:
        problems.append(f'{n} commands, expected {expect.count}')
    if n < expect.min_count:
        problems.append(f'{n} commands, expected at least {expect.min_count}')
    inner = holds[acting[0]:acting[-1]] if n else holds
    if not expect.edge_holds:
        inner = holds
    if inner.sum() > expect.max_holds:
        where = [int(i) for i in np.flatnonzero(holds)]
        problems.append(f'{int(inner.sum())} unexpected holds (at messages {where}), '
                        f'allowed {expect.max_holds}')
    if expect.rate_hz is not None and n >= 2:
        span = stamps[acting[-1]] - stamps[acting[0]]
        rate = (n - 1) / span if span > 0 else float('inf')
        low, high = expect.rate_hz
        if not low <= rate <= high:
            problems.append(f'commands at {rate:.2f} Hz, expected {low}..{high} Hz')
    for name, bound, outside in (('lower', expect.lower, np.less),
                                 ('upper', expect.upper, np.greater)):
        if bound is None:
            continue
        # NaN (a hold's "no gripper command yet") is outside no limit.
        bad = np.argwhere(outside(values, np.asarray(bound, dtype=float)))
        if len(bad):
            i, d = (int(x) for x in bad[0])
            problems.append(f'{len(bad)} values beyond the {name} limits, first: message {i} '
                            f'dimension {d} = {values[i, d]:.6g} (limit {bound[d]})')
    if expect.golden is not None:
        golden = np.asarray(expect.golden, dtype=float).reshape(-1, ACTION_DIM)
        got = values[acting]
        if len(got) != len(golden):
            problems.append(f'{len(got)} commands to compare with {len(golden)} golden ones')
        m = min(len(got), len(golden))
        diff = np.abs(got[:m] - golden[:m])
        if m and diff.max() > expect.atol:
            i, d = np.unravel_index(int(diff.argmax()), diff.shape)
            off = int((diff > expect.atol).any(axis=1).sum())
            problems.append(f'{off} of {m} commands differ from the golden ones by more than '
                            f'{expect.atol}; worst: command {i} dimension {d}: '
                            f'{got[i, d]:.6g} vs {golden[i, d]:.6g}')
    return problems


def assert_commands(stamps, commands, expect: Expectations) -> None:
    """Raise AssertionError listing every problem `check_commands` finds."""
    problems = check_commands(stamps, commands, expect)
    if problems:
        raise AssertionError('replay check failed:\n  ' + '\n  '.join(problems))


def load_golden(path: str | Path, key: str = 'commands') -> np.ndarray:
    """Read the [N, 7] golden commands (or `raw_actions`) of a golden JSON file."""
    data = json.loads(Path(path).expanduser().read_text())
    return np.asarray(data[key], dtype=float).reshape(-1, ACTION_DIM)


def golden_from_bag(policy, bag: str | Path, instruction: str, limits,
                    topic: str = '/image_raw') -> dict:
    """
    Compute what the node must command for every frame of `bag`, without ROS.

    `policy` is a loaded policy (`load_policy`), `limits` the node's `SafetyLimits`. Returns
    the golden file's content: `instruction`, `raw_actions` and `commands`.
    """
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from ..ros.bag import read_messages
    from ..ros.convert import image_to_rgb

    raw, commands = [], []
    for _, _, _, data in read_messages(Path(bag).expanduser(), [topic]):
        rgb = image_to_rgb(deserialize_message(data, Image))
        values = policy.predict(Observation(rgb, instruction)).values
        raw.append(values.tolist())
        commands.append(limits.apply(values)[0].tolist())
    return {'instruction': instruction, 'raw_actions': raw, 'commands': commands}


def replay(node, bag: str | Path, record: Sequence[str], topics: Sequence[str] | None = None,
           rate: float = 1.0, lifecycle_node: str | None = '/policy_node',
           wait_s: float = 60.0,
           after_s: float = 2.5) -> dict[str, tuple[list[float], list[list[float]]]]:
    """
    Play `bag` from `node` and record the Float64MultiArray topics in `record`.

    Playing starts only when the node under test is ready: `lifecycle_node` reports `active`
    (its model is loaded; None: don't ask), every `record` topic has a publisher and every
    played topic a matched subscriber, so no frame is lost to start-up or discovery.
    Recording goes on `after_s` after the last message. Returns {topic: (receive times in s,
    commands)}. `node` must not be spun by anyone else meanwhile.
    """
    from lifecycle_msgs.msg import State
    from lifecycle_msgs.srv import GetState
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Float64MultiArray

    from ..ros.bag import Player

    got: dict[str, tuple[list[float], list[list[float]]]] = {t: ([], []) for t in record}

    def keep(msg, topic):
        got[topic][0].append(time.monotonic())
        got[topic][1].append(list(msg.data))

    subs = [node.create_subscription(Float64MultiArray, t, lambda m, t=t: keep(m, t), 100)
            for t in record]
    player = Player(node, Path(bag).expanduser(), list(topics) if topics else None)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.02)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    deadline = time.monotonic() + wait_s

    def wait(what: str, ready) -> None:
        while not ready():
            if time.monotonic() > deadline:
                raise AssertionError(f'not ready after {wait_s} s: {what}')
            time.sleep(0.05)

    try:
        if lifecycle_node:
            client = node.create_client(GetState, f'{lifecycle_node}/get_state')
            state = {}

            def active() -> bool:
                if state.get('future') is None and client.service_is_ready():
                    state['future'] = client.call_async(GetState.Request())
                future = state.get('future')
                if future is not None and future.done():
                    state['future'] = None
                    return future.result().current_state.id == State.PRIMARY_STATE_ACTIVE
                return False

            wait(f'{lifecycle_node} active', active)
        wait(f'publishers on {list(record)}',
             lambda: all(node.count_publishers(t) for t in record))
        remaining = max(0.0, deadline - time.monotonic())
        if not player.wait_for_subscribers(remaining):
            raise AssertionError(f'no subscriber on {list(player.publishers)} after {wait_s} s')
        player.play(rate)
        time.sleep(after_s)
    finally:
        stop.set()
        thread.join()
        executor.remove_node(node)
        for sub in subs:
            node.destroy_subscription(sub)
    return got
