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


"""How a chunk's actions become commands; shared by the runner and the benchmark."""

from __future__ import annotations

import numpy as np

from ..policy.actions import GRIPPER
from ..policy.step import ActionChunk


def adaptive_ensemble(candidates: np.ndarray, alpha: float) -> np.ndarray:
    """
    Blend predictions for one step, oldest first, newest last (CogACT's adaptive ensemble).

    Weights exp(alpha * cos(a_k, a_newest)), normalised. A binary gripper (every candidate 0
    or 1) is re-binarised at 0.5, as CogACT deploys it.
    """
    a = np.asarray(candidates, dtype=np.float64)
    ref = a[-1]
    cos = a @ ref / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref) + 1e-7)
    w = np.exp(alpha * cos)
    blended = (w / w.sum()) @ a
    if np.isin(a[:, GRIPPER], (0.0, 1.0)).all():
        blended[GRIPPER] = float(blended[GRIPPER] > 0.5)
    return blended


def new_prediction(chunk: ActionChunk) -> bool:
    """
    Return whether a step's chunk is a new prediction to blend (ensemble mode).

    A reused chunk of several actions is the last prediction again: the blend already holds
    it. A one-action model's reused action is its whole plan, so it counts as new.
    """
    return not (chunk.info.reused and len(chunk.actions) > 1)


class ChunkProgress:
    """
    How far execution got into the last inferred chunk: what a reused step continues.

    A reuse gate (FlashVLA) returns the last inferred chunk again when the scene and the motion
    are stable. Replaying it from its first action would repeat motion the robot has already
    made, so a reused chunk continues where execution of the inferred one stopped; a one-action
    model's chunk is its whole plan, and is repeated.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.length = self.done = 0

    def rows(self, length: int, reused: bool, steps: int) -> slice:
        """Return the rows of this step's chunk to execute (`steps` per step, 0: all)."""
        if reused and self.length == 1:
            return slice(0, 1)
        if not reused or not self.length:
            self.length, self.done = length, 0
        end = self.length if not steps else min(self.length, self.done + steps)
        taken = slice(self.done, end)
        self.done = end
        return taken
