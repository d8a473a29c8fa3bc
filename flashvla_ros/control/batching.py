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
Several robots, one model: one inference worker that batches the robots' runners.

    worker = BatchWorker(policy, runners, lock, window_s=0.02, max_batch=8)
    worker.start()   # each runner keeps its own mailbox, queue, timing, limits and holds

Each robot has its own `PolicyRunner` (its `policy` a `RobotPolicy`: its own accelerator
memory), all sharing one condition so that any robot's frame or tick wakes the worker. When a
runner's inference is due (its own just-in-time start), every runner due within `window_s`
joins it, the most urgent first (then the longest unserved), up to `max_batch`: they start up
to `window_s` early and run as one forward (`OpenVLAPolicy.predict_batch`). A robot with no
fresh frame never joins, so a robot that disappears or floods its camera costs the others
nothing but its own row; an error of one robot's input is that robot's; a failure of the
batch's forward is every member's.
"""

from __future__ import annotations

from collections.abc import Sequence
import threading
import time
from typing import Any

from ..policy.step import Observation
from .runner import PolicyRunner, Request


class BatchWorker:
    def __init__(self, policy: Any, runners: Sequence[PolicyRunner],
                 lock: threading.Condition, window_s: float = 0.02,
                 max_batch: int = 8) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError(f'batch window {window_s} s must be >= 0, max_batch {max_batch} '
                             '>= 1')
        self.policy = policy  # the shared OpenVLAPolicy (its predict_batch)
        self.runners = list(runners)
        self.lock = lock
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches = 0
        self.batched_steps = 0  # requests served, over all batches
        self.sizes: dict[int, int] = {}  # batch size -> batches of that size
        self._served = [0.0] * len(self.runners)  # when each runner last joined a batch
        self._running = False
        self._thread: threading.Thread | None = None

    def start(self, runners: Sequence[PolicyRunner] | None = None) -> None:
        """Serve `runners` (default: all) from now on, starting the thread if needed."""
        if not (self._running and self.alive):
            if self._thread is not None:  # a stopped thread may still finish a long batch:
                self._thread.join()       # two threads never share the model
            self._running = True
            self._thread = threading.Thread(target=self._work, name='flashvla-batch',
                                            daemon=True)
            self._thread.start()
        for runner in self.runners if runners is None else runners:
            runner.start(worker=self._thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving every runner; the thread ends after its current batch."""
        for runner in self.runners:
            runner.stop()
        with self.lock:
            self._running = False
            self.lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)  # kept: a start waits for it if it is still running

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _next_batch(self) -> list[PolicyRunner]:
        """Wait (under the lock) until some runner is due; return who runs now, or [] to end."""
        while self._running:
            waits = [(wait, i) for i, r in enumerate(self.runners)
                     if r.running and (wait := r._due(r.clock())) is not None]
            if any(wait == 0.0 for wait, _ in waits):
                # The most urgent first; among those due alike, the longest unserved: a full
                # batch never starves the same robots.
                joining = sorted((w, self._served[i], i) for w, i in waits if w <= self.window_s)
                now = time.monotonic()
                for *_, i in joining[:self.max_batch]:
                    self._served[i] = now
                return [self.runners[i] for *_, i in joining[:self.max_batch]]
            soonest = min((wait for wait, _ in waits), default=None)
            self.lock.wait(0.1 if soonest is None else min(soonest, 0.1))
        return []

    def _work(self) -> None:
        while True:
            with self.lock:
                due = self._next_batch()
                if not due:
                    return
                requests = [(runner, runner._take()) for runner in due]
            ready = [(runner, request) for runner, request in requests
                     if runner._prepare(request) and not request.stale]
            if ready:
                self._run(ready)

    def _run(self, ready: list[tuple[PolicyRunner, Request]]) -> None:
        """One forward for every ready robot; each runner gets its own result."""
        start = time.perf_counter()
        try:
            results: list[Any] = self.policy.predict_batch(
                [(runner.policy, Observation(request.rgb, request.instruction))
                 for runner, request in ready])
        except Exception as exc:  # the shared forward failed: every member's error
            results = [exc] * len(ready)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        self.batches += 1
        self.batched_steps += len(ready)
        self.sizes[len(ready)] = self.sizes.get(len(ready), 0) + 1
        for (runner, request), result in zip(ready, results, strict=True):
            runner._deliver(request, result, elapsed_ms)

    def status(self) -> dict[str, Any]:
        """Batches run, robots served, and the mean robots per batch."""
        return {'batches': self.batches, 'batched_steps': self.batched_steps,
                'mean_batch': self.batched_steps / max(1, self.batches),
                'batch_window_s': self.window_s, 'max_batch': self.max_batch}
