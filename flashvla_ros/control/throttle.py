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

"""Log throttling per reason: a flood of one bad input costs one line a second, not thousands."""

from __future__ import annotations

from collections.abc import Callable
import re
import threading
import time


class ThrottledLog:
    """
    Pass at most one line per reason per period.

    The lines held back are counted and the count goes out with the next line of that reason.
    It returns the line to log instead of logging it: rclpy's logger ties a severity to the
    calling line, so the caller must make the call itself.
    """

    def __init__(self, period_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.period_s = period_s
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # reason -> (time of last line, held)
        self._lock = threading.Lock()

    def __call__(self, reason: str, text: str, period_s: float | None = None) -> str | None:
        """
        Return the line to log now, or None when a line of `reason` went out recently.

        Numbers in `reason` do not count: 'image of 8000x8000' and 'image of 9000x9000' are
        one reason.
        """
        reason = re.sub(r'\d+(\.\d+)?', '#', reason)
        now = self.clock()
        period = self.period_s if period_s is None else period_s
        with self._lock:
            last, held = self._last.get(reason, (float('-inf'), 0))
            if now - last < period:
                self._last[reason] = (last, held + 1)
                return None
            self._last[reason] = (now, 0)
        return f'{text} ({held} more like it since the last line)' if held else text
