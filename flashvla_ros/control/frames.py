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

"""A robot's camera mailbox: the newest unread frame, and when the last valid ones arrived."""

from __future__ import annotations

from collections import deque

import numpy as np

CAMERA_INTERVALS = 16  # recent frame intervals whose median predicts the next frame


class FrameSlot:
    """
    One slot for the newest valid frame (an unread one that gets replaced is dropped).

    A rejected frame never counts as an arrival, so a camera that sends only bad frames goes
    stale; its reason stays until a valid frame comes.
    """

    def __init__(self) -> None:
        self.newest: tuple[np.ndarray, float, int] | None = None  # rgb, arrival, stamp (ns)
        # Arrival times of the newest valid frames, newest last: staleness reads the last,
        # the just-in-time frame wait their intervals.
        self.arrivals: deque[float] = deque(maxlen=CAMERA_INTERVALS + 1)
        self.rejected = ''  # why the newest frame was rejected ('' when it was valid)

    def put(self, rgb: np.ndarray, now: float, stamp_ns: int) -> bool:
        """Keep `rgb` as the newest frame; return whether an unread one was replaced."""
        dropped = self.newest is not None
        self.newest = (rgb, now, stamp_ns)
        self.arrivals.append(now)
        self.rejected = ''
        return dropped

    def take(self) -> tuple[np.ndarray, float, int]:
        """Return the newest frame (rgb, arrival, stamp) and empty the slot."""
        assert self.newest is not None
        newest, self.newest = self.newest, None
        return newest

    def fault(self, now: float, max_age_s: float) -> str:
        """Return why the camera counts as stale now ('' when a valid frame is fresh enough)."""
        rejected = f' (last frame rejected: {self.rejected})' if self.rejected else ''
        if not self.arrivals:
            return f'camera stale: no valid frame yet{rejected}' if rejected \
                else 'no camera frame yet'
        if now - self.arrivals[-1] > max_age_s:
            return f'camera stale: no valid frame for over {max_age_s:g} s{rejected}'
        return ''

    def next_arrival(self) -> float | None:
        """Return when the next frame should arrive (the median interval; None: unknown)."""
        if len(self.arrivals) <= CAMERA_INTERVALS // 2:
            return None
        interval = float(np.median(np.diff(np.array(self.arrivals))))
        return self.arrivals[-1] + interval if interval > 0 else None
