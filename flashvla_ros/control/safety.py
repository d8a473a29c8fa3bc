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

"""Command limits: scale, clamp (counted), and the hold command."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..policy.actions import GRIPPER, MOTION


def hold_outside_limits(lower, upper) -> list[int]:
    """Motion dimensions whose limits exclude zero: a hold there would move the robot."""
    return [i for i in range(MOTION.stop) if not lower[i] <= 0.0 <= upper[i]]


@dataclass
class SafetyLimits:
    scale: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def from_lists(cls, scale, lower, upper) -> SafetyLimits:
        limits = cls(np.asarray(scale, float), np.asarray(lower, float),
                     np.asarray(upper, float))
        bad = hold_outside_limits(limits.lower, limits.upper)
        if bad:
            raise ValueError(f'limits exclude zero motion in dimensions {bad}')
        return limits

    def apply(self, action: np.ndarray) -> tuple[np.ndarray, int]:
        """Scale then clamp; return the command and how many dimensions were clamped."""
        scaled = np.asarray(action, dtype=np.float64) * self.scale
        if not np.isfinite(scaled).all():
            raise ValueError(f'non-finite action {scaled.tolist()}')
        command = np.clip(scaled, self.lower, self.upper)
        return command, int(np.count_nonzero(command != scaled))

    def hold(self, gripper: float | None) -> np.ndarray:
        """
        Zero motion with the gripper's last command, so a hold never opens or closes it.

        Before any gripper command was sent the gripper entry is NaN: "no gripper command".
        The limits always admit zero motion (`hold_outside_limits` rejects any that do not).
        """
        command = np.zeros(len(self.lower))
        command[GRIPPER] = np.nan if gripper is None else gripper
        return command
