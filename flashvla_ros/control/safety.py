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

GRIPPER = 6  # index of the gripper in OpenVLA's 7-D action


@dataclass
class SafetyLimits:
    scale: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def from_lists(cls, scale, lower, upper) -> SafetyLimits:
        return cls(np.asarray(scale, float), np.asarray(lower, float), np.asarray(upper, float))

    def apply(self, action: np.ndarray) -> tuple[np.ndarray, int]:
        """Scale then clamp; return the command and how many dimensions were clamped."""
        scaled = np.asarray(action, dtype=np.float64) * self.scale
        if not np.isfinite(scaled).all():
            raise ValueError(f'non-finite action {scaled.tolist()}')
        command = np.clip(scaled, self.lower, self.upper)
        return command, int(np.count_nonzero(command != scaled))

    def hold(self, gripper: float | None) -> np.ndarray:
        """Zero motion; the gripper keeps its last command (an open gripper if none yet)."""
        command = np.zeros(len(self.lower))
        command = np.clip(command, self.lower, self.upper)
        if gripper is not None:
            command[GRIPPER] = gripper
        return command
