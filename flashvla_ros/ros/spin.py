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
How the policy node's process runs and ends: its executor, exit signals, acknowledged holds.

The last hold must reach the robot before the process ends: signals are recorded (the spin
loop ends on them) instead of shutting the context down at once, and the shutdown transition
waits, for at most `ACK_TIMEOUT_S`, until reliable subscribers acknowledged it.
"""

from __future__ import annotations

import signal
import time

from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor

# A final hold waits at most this long for reliable subscribers' acks; Fast DDS acknowledges
# on its writer's heartbeat, measured here at up to about 1 s after the sample arrived.
ACK_TIMEOUT_S = 1.0


def make_executor():
    """
    Return the executor: rclpy's C++ events executor where it exists (after Jazzy).

    The Python executor's bookkeeping holds the GIL the tick threads need: with 4 robots on 2
    cores it made tick lateness p99 9-13 ms against 3-5 ms with the events executor (two A/B
    pairs, docs/MULTI_ROBOT.md). rclpy ships it as experimental; elsewhere the Python one.
    """
    try:
        from rclpy.experimental import EventsExecutor
    except ImportError:
        return SingleThreadedExecutor()
    return EventsExecutor()


def wait_for_acks(publishers, timeout_s: float = ACK_TIMEOUT_S) -> bool:
    """
    Wait until every reliable subscriber acknowledged what was published.

    Polled, because rclpy's blocking wait keeps the GIL: inference and the acks themselves
    would stall.
    """
    now = Duration()
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
