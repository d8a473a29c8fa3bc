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

"""What a runner exchanges with its worker and its tick: requests, actions, ticks, counts."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..policy.step import StepInfo


@dataclass
class Request:
    """One inference a runner asks for: its frame, the task, and what to apply first."""

    rgb: np.ndarray
    times: tuple[float, int]  # the frame's arrival (runner clock) and its own stamp (ns)
    instruction: str
    episode: int
    reset: bool  # empty the policy's memory before the step
    update: Callable[[], None] | None  # a live option change to apply before the step
    stale: bool = False  # the frame is older than max_image_age_s: no inference on it


@dataclass
class QueuedAction:
    values: np.ndarray  # raw policy output, before the safety limits
    frame_time: float  # arrival time of the frame it was computed from
    stamp_ns: int  # the frame's own timestamp (camera clock), exact: it names the frame
    episode: int
    info: StepInfo | None = None
    frame: np.ndarray | None = None  # the frame itself (a reference), for the debug view

    def blended(self, values: np.ndarray) -> QueuedAction:
        """Return the ensemble's action for a tick: `values`, this newest chunk's frame, info."""
        return QueuedAction(values, self.frame_time, self.stamp_ns, self.episode, self.info,
                            self.frame)


@dataclass
class Tick:
    """What one control tick decided. `command` is None when nothing is to be published."""

    kind: str  # 'action', 'hold', 'idle' (hold already sent), 'starved' or 'waiting'
    command: np.ndarray | None = None
    raw: np.ndarray | None = None
    remaining: list[np.ndarray] = field(default_factory=list)  # rest of the chunk, limited
    fault: str = ''
    frame: np.ndarray | None = None  # the frame an action was computed from
    info: StepInfo | None = None  # the policy's step info, for an action
    planned: float = 0.0  # the tick's planned time on the schedule (runner clock)
    source_stamp_ns: int = 0  # an action's camera frame stamp (0: a hold)
    episode: int = 0
    retry_until: float | None = None  # 'waiting': run this tick again by then (runner clock)


@dataclass
class Counters:
    frames: int = 0
    dropped_frames: int = 0
    stale_frames: int = 0
    rejected_frames: int = 0
    rejected_inputs: int = 0  # frames and instructions
    nonfinite_outputs: int = 0
    worker_errors: int = 0
    inferences: int = 0
    discarded_results: int = 0
    stale_actions: int = 0
    clamped_values: int = 0
    commands: int = 0
    ticks: int = 0
    skipped_ticks: int = 0  # planned ticks that never ran (the tick thread was a period late)
    commanding_ticks: int = 0  # ticks after an episode's first command: what stalls count in
    commanding_commands: int = 0  # commands on those ticks
    holds: int = 0
    watchdog_holds: int = 0
    starved_ticks: int = 0
    boundary_stalls: int = 0  # starved ticks after an episode's first command (chunk seams)


class RateMeter:
    """Events per second over a sliding window of timestamps (the runner's clock)."""

    def __init__(self, window: int = 100) -> None:
        self.times: deque[float] = deque(maxlen=window)

    def mark(self, t: float) -> None:
        self.times.append(t)

    def rate(self) -> float:
        if len(self.times) < 2 or self.times[-1] == self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])
