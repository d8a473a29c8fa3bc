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
How a chunk's actions become commands: one executor for the node's runner and the bench.

    executor = ChunkExecutor(ChunkExecution(mode='execute', steps=4))
    executor.add(chunk_actions, reused, first_step)   # after each inference
    action, rest = executor.next(step)                # at each control step

The bench runs its episodes through the same object as the node, so a bench number is the
node's behaviour (`test/test_chunks.py` runs one episode both ways).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

import numpy as np

from ..policy.actions import GRIPPER, gripper_closed
from ..policy.config import Execution

MODEL_STEPS = -1  # chunk_steps left to the model (its config.json "execution"; else 0: all)


@dataclass(frozen=True)
class ChunkExecution:
    """
    How action chunks become commands, and when the next inference starts.

    `execute`: the first `steps` actions of each chunk (0: all; MODEL_STEPS: the model's
    recommendation, see `for_model`) are queued and run one per tick. `ensemble` (CogACT's
    adaptive ensembling): a prediction every tick, and the command for a tick blends what the
    last `horizon` chunks predicted for it with weights exp(alpha * cos(a_k, a_newest)).
    `just_in_time`: the next inference starts from the measured latency so that it finishes
    just before the tick that needs it, on the newest frame (instead of as soon as the queue
    runs dry).
    """

    mode: str = 'execute'
    steps: int = 0
    horizon: int = 2
    alpha: float = 0.1
    just_in_time: bool = False

    def for_model(self, recommended: Execution) -> ChunkExecution:
        """Return this execution with MODEL_STEPS replaced by the model's recommendation."""
        if self.steps != MODEL_STEPS:
            return self
        return replace(self, steps=recommended.chunk_steps or 0)

    @property
    def ensemble(self) -> bool:
        return self.mode == 'ensemble'


def resolved(execution: ChunkExecution) -> ChunkExecution:
    """Refuse an execution whose chunk_steps still waits for the model's recommendation."""
    if execution.steps < 0:
        raise ValueError(f'chunk_steps {execution.steps}: resolve it with for_model() first')
    return execution


EXECUTE_CHUNKS = ChunkExecution()  # every action of each chunk, as soon as due
MODEL_CHUNKS = ChunkExecution(steps=MODEL_STEPS)  # as many as the model recommends


def adaptive_ensemble(candidates: np.ndarray, alpha: float) -> np.ndarray:
    """
    Blend predictions for one step, oldest first, newest last (CogACT's adaptive ensemble).

    Weights exp(alpha * cos(a_k, a_newest)), normalised. A binary gripper (every candidate 0
    or 1) is re-binarised by `actions.gripper_closed`, as CogACT deploys it.
    """
    a = np.asarray(candidates, dtype=np.float64)
    ref = a[-1]
    cos = a @ ref / (np.linalg.norm(a, axis=1) * np.linalg.norm(ref) + 1e-7)
    w = np.exp(alpha * cos)
    blended = (w / w.sum()) @ a
    if np.isin(a[:, GRIPPER], (0.0, 1.0)).all():
        blended[GRIPPER] = float(gripper_closed(blended[GRIPPER]))
    return blended


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


class Action(Protocol):
    values: np.ndarray  # one action, before any safety limit


@dataclass
class Planned:
    """An action and nothing else (the bench's: no frame times, nothing expires)."""

    values: np.ndarray

    @staticmethod
    def blend(newest: Planned, values: np.ndarray) -> Planned:
        return Planned(values)


A = TypeVar('A', bound=Action)


class ChunkExecutor(Generic[A]):
    """
    The actions to run, one per control step: a queue (execute) or blended predictions.

    Items are the caller's (the runner's carry their frame's time, for expiry); `add` takes a
    step's chunk as items, `next` gives the action of a control step and the rest of the plan.
    """

    def __init__(self, execution: ChunkExecution = EXECUTE_CHUNKS) -> None:
        self.execution = resolved(execution)
        self.queue: deque[A] = deque()  # execute: actions to run, in order
        self.progress = ChunkProgress()  # execute: what a reused chunk continues
        self.predictions: deque[tuple[int, list[A]]] = deque()  # ensemble: (the step of the
        self.predicted_for = -1  # chunk's first action, its actions), newest last

    def reset(self) -> None:
        """Forget every plan (a new episode, a fault, a new execution)."""
        self.queue.clear()
        self.predictions.clear()
        self.progress.reset()

    def reconfigure(self, execution: ChunkExecution) -> None:
        """Take a new execution; a new mode or step count drops what was planned for the old."""
        if (execution.mode, execution.steps) != (self.execution.mode, self.execution.steps):
            self.reset()
        self.execution = resolved(execution)

    def add(self, items: list[A], reused: bool, first_step: int) -> None:
        """Take one inference's chunk; in ensemble mode its first action is for `first_step`."""
        c = self.execution
        if c.ensemble:
            # A reused chunk of several actions is the last prediction again: the blend holds
            # it already. A one-action model's reused action is its whole plan: new.
            if reused and len(items) > 1:
                return
            self.predicted_for = first_step
            self.predictions.append((first_step, items))
            while len(self.predictions) > c.horizon:
                self.predictions.popleft()
        else:
            self.queue.extend(items[self.progress.rows(len(items), reused, c.steps)])

    def wants(self, step: int) -> bool:
        """Whether control step `step` needs a new inference (execute: the queue ran dry)."""
        return self.predicted_for < step if self.execution.ensemble else not self.queue

    def drop(self, fresh: Callable[[A], bool]) -> list[A]:
        """Drop the actions (ensemble: the chunks) that are no longer fresh; return them."""
        dropped = []
        while self.queue and not fresh(self.queue[0]):
            dropped.append(self.queue.popleft())
        while self.predictions and not fresh(self.predictions[0][1][0]):
            dropped.append(self.predictions.popleft()[1][0])
        return dropped

    def next(self, step: int, blend: Callable[[A, np.ndarray], A]) -> tuple[A | None, list[A]]:
        """
        Return control step `step`'s action (None: none planned) and the rest of the plan.

        Ensemble: what the last chunks predicted for this step, blended (`blend` makes the
        item of the blended values from the newest chunk's); the rest is the newest chunk's.
        """
        if not self.execution.ensemble:
            return (self.queue.popleft(), list(self.queue)) if self.queue else (None, [])
        rows = [(start, items) for start, items in self.predictions
                if 0 <= step - start < len(items)]
        if not rows:
            return None, []
        start, newest = rows[-1]
        values = adaptive_ensemble(np.stack([items[step - s].values for s, items in rows]),
                                   self.execution.alpha)
        return blend(newest[step - start], values), newest[step - start + 1:]
