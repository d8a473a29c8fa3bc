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
The control tick's own thread: a fixed-rate schedule on a given clock, independent of ROS.

Why not a ROS timer: on an executor the tick waits behind every other callback and behind the
executor's own Python bookkeeping; measured on 2 cores (issue 23), that made ticks up to 0.8 s
late. Here the tick thread sleeps until its planned time and needs nothing but the GIL.

The schedule is planned = start + k * period. A tick that runs late keeps its planned time
(its lateness is actual - planned); ticks whose time has passed by a whole period before they
could run are skipped and counted, so the schedule keeps its phase and never bursts to catch
up. A clock that jumps (sim time reset, system clock step) re-anchors the schedule.

A tick may ask to run again (it returns a deadline: its action is still being inferred): the
loop runs the same planned tick again when `wake` is set or at that deadline, whichever first.
"""

from __future__ import annotations

from collections.abc import Callable
import threading

POLL_S = 0.05  # longest single wait: a clock other than the wall clock (sim time) is re-read


class FixedRateLoop:
    """Call `tick(planned)` every `period_s` on `clock` from a thread of its own."""

    def __init__(self, period_s: float, tick: Callable[[float], float | None],
                 clock: Callable[[], float], name: str = 'flashvla-control',
                 on_error: Callable[[Exception], None] | None = None,
                 on_skip: Callable[[float, float], None] | None = None,
                 offset_s: float = 0.0, wake: threading.Event | None = None) -> None:
        self.period_s = period_s
        self.offset_s = offset_s  # the schedule's phase: planned = start + offset + k * period
        self.tick = tick
        self.clock = clock
        self.name = name
        self.on_error = on_error  # told of a tick that raised; the next ticks still run
        self.on_skip = on_skip  # told of each skipped tick: (its planned time, now)
        self.wake = wake  # set when a tick waiting to run again should (its action arrived)
        self.skipped = 0  # planned ticks that never ran (the thread was a period late)
        self.errors = 0  # ticks that raised
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop; a tick in progress finishes first (never called from the tick itself)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wait(self, seconds: float, wake: threading.Event | None = None) -> bool:
        """Sleep (woken early by stop, or by `wake`); return whether the loop is to stop."""
        if wake is None:
            return self._stop.wait(seconds)
        wake.wait(seconds)
        return self._stop.is_set()

    def _wait_for_wake(self, deadline: float) -> bool:
        """Wait until `wake` is set or `deadline` (clock) passes; return whether to stop."""
        while not (self.wake is not None and self.wake.is_set()):
            left = deadline - self.clock()
            if left <= 0:
                break
            if self._wait(min(left, POLL_S), self.wake):
                return True
        return self._stop.is_set()

    def _run(self) -> None:
        period = self.period_s
        while not self.clock():  # sim time before the first /clock message reads 0
            if self._wait(POLL_S):
                return
        start, k = self.clock() + self.offset_s, 1  # planned = start + k * period: no drift
        while True:
            planned, now = start + k * period, self.clock()
            if now < planned - 2 * period:  # the clock jumped back: start over from now
                start, k = now, 1
                planned = start + period
            while now < planned:
                if self._wait(min(planned - now, POLL_S)):
                    return
                now = self.clock()
            if self._stop.is_set():
                return
            try:
                retry = self.tick(planned)
                while retry is not None:  # the same tick again, once woken or at `retry`
                    if self._wait_for_wake(retry):
                        return
                    retry = self.tick(planned)
            except Exception as exc:  # a bug in one tick must not end the ticks
                self.errors += 1
                if self.on_error is not None:
                    self.on_error(exc)
            k += 1
            now = self.clock()
            behind = int((now - (start + k * period)) // period)  # a period late
            if behind > 0:
                self.skipped += behind
                if self.on_skip is not None:
                    for j in range(behind):
                        self.on_skip(start + (k + j) * period, now)
                k += behind
