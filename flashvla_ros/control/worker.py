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
The inference worker: the policy's only caller, one thread for one robot or several.

    worker = InferenceWorker(policy.predict_batch, window_s=0.02, max_batch=8)
    runner = PolicyRunner(policy.for_robot(), settings, worker)   # one per robot
    worker.start()

One robot is a batch of one. When a runner's inference is due (its own just-in-time start),
every runner due within `window_s` joins it, the most urgent first (then the longest
unserved), up to `max_batch`, and they run as one `predict_batch`. A robot with no fresh frame
never joins, so a robot that disappears or floods its camera costs the others nothing; an
error of one robot's input is that robot's; a failure of the shared forward is every member's.

There is never a second thread on one model. `stop` waits a bounded time for the step in
flight; a step that outlives it keeps the thread, which ends after the step, and `stuck` says
so. A `start` meanwhile re-enlists that same thread instead of starting another, so it never
waits at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import threading
import time
from typing import TYPE_CHECKING, Any

from ..policy.step import ActionChunk, Observation

if TYPE_CHECKING:
    from .runner import PolicyRunner, Request

PredictBatch = Callable[[Sequence[tuple[Any, Observation]]], Sequence[ActionChunk | Exception]]
STOP_WAIT_S = 1.0  # how long a stop waits for the step in flight (on the caller's thread)
POLL_S = 0.1  # longest wait before due times are read again (a clock other than the wall's)


class InferenceWorker:
    def __init__(self, predict_batch: PredictBatch, window_s: float = 0.0,
                 max_batch: int = 1) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError(f'batch window {window_s} s must be >= 0, max_batch {max_batch} '
                             '>= 1')
        self.predict_batch = predict_batch  # [(a robot's policy, its observation)] -> results
        self.window_s = window_s
        self.max_batch = max_batch
        # Any runner's frame, tick or reset wakes the worker: they all share this condition.
        self.lock = threading.Condition()
        self.runners: list[PolicyRunner] = []
        self.batches = 0
        self.batched_steps = 0  # requests served, over all batches
        self.looks = 0  # times the worker found nothing due and waited (tests settle on it)
        self._served: dict[int, float] = {}  # runner index -> when it last joined a batch
        self._running = False
        self._thread: threading.Thread | None = None  # the loop, until it returns
        self._busy_since: float | None = None  # the step in flight started then (monotonic)

    def add(self, runner: PolicyRunner) -> None:
        """Serve `runner` too (its inferences join the batches while it is running)."""
        with self.lock:
            self.runners.append(runner)

    def start(self, runners: Sequence[PolicyRunner] | None = None) -> None:
        """Serve `runners` (default: all) from now on; start the thread unless one is left."""
        with self.lock:
            for runner in self.runners if runners is None else runners:
                runner.resume()
            self._running = True
            if self._thread is None:  # else the old loop, still in its step, goes on
                self._thread = threading.Thread(target=self._work, name='flashvla-inference',
                                                daemon=True)
                self._thread.start()
            self.lock.notify_all()

    def stop(self, wait_s: float = STOP_WAIT_S) -> bool:
        """Stop serving every runner; wait at most `wait_s` for the step in flight to end."""
        with self.lock:
            self._running = False
            for runner in self.runners:
                runner.pause()
            self.lock.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)
        return not self.stuck()

    @property
    def serving(self) -> bool:
        return self._running and self._thread is not None

    def stuck(self) -> str:
        """Why a stopped worker still runs ('' when it does not): a step that has not ended."""
        busy = self._busy_since
        if self._running or self._thread is None or busy is None:
            return ''
        return (f'the inference worker did not stop: a step has been running for '
                f'{time.monotonic() - busy:.1f} s (it ends after that step)')

    def _work(self) -> None:
        try:
            while True:
                with self.lock:
                    due = self._next_batch()
                    if not due:
                        return
                    requests = [(runner, runner.take()) for runner in due]
                    self._busy_since = time.monotonic()
                ready = [(runner, request) for runner, request in requests
                         if runner.prepare(request) and not request.stale]
                if ready:
                    self._run(ready)
                self._busy_since = None
        finally:
            with self.lock:  # under the lock: a start from now on makes a new thread
                self._thread = self._busy_since = None
                self.lock.notify_all()

    def _next_batch(self) -> list[PolicyRunner]:
        """Wait (under the lock) until some runner is due; return who runs now, or [] to end."""
        while self._running:
            waits = [(wait, i) for i, r in enumerate(self.runners)
                     if r.running and (wait := r.due(r.clock())) is not None]
            if any(wait == 0.0 for wait, _ in waits):
                # The most urgent first; among those due alike, the longest unserved: a full
                # batch never starves the same robots.
                joining = sorted((w, self._served.get(i, 0.0), i) for w, i in waits
                                 if w <= self.window_s)[:self.max_batch]
                now = time.monotonic()
                for *_, i in joining:
                    self._served[i] = now
                return [self.runners[i] for *_, i in joining]
            self.looks += 1
            self.lock.notify_all()
            soonest = min((wait for wait, _ in waits), default=POLL_S)
            self.lock.wait(min(soonest, POLL_S))
        return []

    def _run(self, ready: list[tuple[PolicyRunner, Request]]) -> None:
        """One forward for every ready robot; each runner gets its own result."""
        start = time.perf_counter()
        try:
            results: Sequence[Any] = self.predict_batch(
                [(runner.policy, Observation(request.rgb, request.instruction))
                 for runner, request in ready])
        except Exception as exc:  # the shared forward failed: every member's error
            results = [exc] * len(ready)
        if len(results) != len(ready):  # a malformed result: every member's error
            results = [ValueError(f'{len(results)} results for {len(ready)} requests')] \
                * len(ready)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        self.batches += 1
        self.batched_steps += len(ready)
        for (runner, request), result in zip(ready, results, strict=True):
            runner.deliver(request, result, elapsed_ms)

    def status(self) -> dict[str, Any]:
        """Batches run, robots served, and the mean robots per batch."""
        return {'batches': self.batches, 'batched_steps': self.batched_steps,
                'mean_batch': self.batched_steps / max(1, self.batches),
                'batch_window_s': self.window_s, 'max_batch': self.max_batch}
