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
One interface for every world: the mock tabletop and LIBERO.

The bench, the demo, the ROS world nodes and the training data use it. A `World` lists its
episodes (`EpisodeSpec`: a mock seed and task family, or a LIBERO task and one of its fixed
initial states) and opens one. An `Episode` gives the camera frames, the
instruction and the robot's joint state, takes one command per step, and says whether it
succeeded and when it is over. What a command means (units, gripper convention) is the world's:
`World.command` says it, so that the ROS world node can convert the policy node's metres and
radians into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class JointState:
    names: tuple[str, ...]
    positions: np.ndarray


@dataclass(frozen=True)
class EpisodeSpec:
    """Which episode: `group` is what success is reported per (a task family, a task)."""

    group: str
    seed: int = 0  # the mock world's seed; LIBERO: the index of the task's initial state
    task: int = 0  # LIBERO: the task's index in its suite

    @property
    def key(self) -> str:
        return f'{self.group}#{self.seed}' if self.group else str(self.seed)


@dataclass(frozen=True)
class CommandUnits:
    """
    How a world reads a 7-D command.

    `motion_scale`: metres (x, y, z) and radians (roll, pitch, yaw) per step that a command of
    1.0 moves (1.0 each when commands are already metres and radians); `gripper_open_is_one`:
    the gripper value 1 opens (OpenVLA's LIBERO convention) instead of closing (the mock's).
    """

    motion_scale: tuple[float, ...] = (1.0,) * 6
    gripper_open_is_one: bool = False

    def from_metres(self, command: np.ndarray) -> np.ndarray:
        """Convert a command in metres and radians per step (the node's) into this world's."""
        out = np.array(command, dtype=np.float64)
        out[:6] = out[:6] / np.asarray(self.motion_scale)
        return out

    def to_metres(self, command: np.ndarray) -> np.ndarray:
        """Convert a command in this world's units into metres and radians per step."""
        out = np.array(command, dtype=np.float64)
        out[:6] = out[:6] * np.asarray(self.motion_scale)
        return out


class Episode(Protocol):
    spec: EpisodeSpec
    instruction: str
    max_steps: int  # commands the policy gets (a world's settling steps not counted)

    @property
    def steps(self) -> int: ...

    @property
    def done(self) -> bool: ...

    def observe(self) -> np.ndarray:
        """Return the policy's camera frame (HxWx3 uint8 RGB) under the world's protocol."""

    def cameras(self) -> dict[str, np.ndarray]:
        """Return every camera's frame as a camera topic carries it, by camera name."""

    def joint_state(self) -> JointState: ...

    def step(self, command: np.ndarray) -> None:
        """Apply one command in this world's units; a NaN gripper keeps the gripper as it is."""

    def success(self) -> bool: ...

    def expert_action(self) -> np.ndarray:
        """Return the scripted expert's command for the current state."""


class World(Protocol):
    name: str
    command: CommandUnits

    def specs(self, count: int, start: int = 0) -> list[EpisodeSpec]:
        """List episodes in the order a benchmark runs them."""

    def open(self, spec: EpisodeSpec, render: bool = True) -> Episode:
        """Start one episode; `render=False` leaves the cameras off (the expert needs none)."""

    def close(self) -> None: ...
