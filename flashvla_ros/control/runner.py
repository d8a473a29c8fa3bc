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
The real-time core: an inference worker thread and a fixed-rate control tick that never waits.

Data flow: the camera callback drops the newest frame into a one-slot mailbox after checking it
(a frame the policy cannot use never counts as fresh; an unread frame that gets replaced counts
as dropped). The worker takes the newest frame whenever the action queue runs dry, runs the
policy, and queues the resulting chunk. Each control tick pops one action, passes it through the
safety limits and returns it as the command to publish.

The worker is the policy's only caller: resets (new episode, hold) and live option changes are
requested from any thread and applied by the worker before its next step, so no input thread
ever touches the model, the tokenizer or an accelerator's memory mid-step.

Holds: a fault (no instruction, stale camera, worker error or death) or the command watchdog (no
command for `max_command_gap_s` while healthy) produces exactly one hold, then silence until the
pipeline commands again: the robot is never fed a repeated old command. A hold is zero motion
with the gripper's last command (NaN, "no gripper command", before there was one), across
episodes and instructions. A tick with a healthy pipeline and an empty queue publishes nothing
and is counted as starved.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import islice
import threading
import time
from typing import Any, Protocol

import numpy as np

from ..policy.actions import GRIPPER
from ..policy.config import Execution
from ..policy.errors import InputError, NonFiniteOutputError
from ..policy.preprocess import check_rgb
from ..policy.step import ActionChunk, Observation, RunningStats, StepInfo
from .chunks import ChunkProgress, adaptive_ensemble, new_prediction
from .safety import SafetyLimits


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


MODEL_STEPS = -1  # chunk_steps left to the model (its config.json "execution"; else 0: all)


def check_resolved(chunks: ChunkExecution) -> None:
    """Refuse an execution whose chunk_steps still waits for the model's recommendation."""
    if chunks.steps < 0:
        raise ValueError(f'chunk_steps {chunks.steps}: resolve it with for_model() first')


EXECUTE_CHUNKS = ChunkExecution()  # every action of each chunk, as soon as due
MODEL_CHUNKS = ChunkExecution(steps=MODEL_STEPS)  # as many as the model recommends
# Just in time: the start leaves the largest recent latency plus a margin that doubles when a
# result comes late (a starved tick while inferring: the load has risen) and shrinks by 1 ms
# per inference back to the floor.
JIT_MARGIN_S, JIT_MARGIN_MAX_S, JIT_MARGIN_DECAY_S = 0.010, 0.080, 0.001
JIT_MIN_LATENCIES = 20  # until then (start-up), inferences start as soon as possible
# A camera frame due within this long after the start is waited for: it is a camera period
# fresher, and the wait spends only the floor margin, less 2 ms for the tick's own jitter.
JIT_FRAME_WAIT_S = JIT_MARGIN_S - 0.002
CAMERA_INTERVALS = 16  # recent frame intervals whose median predicts the next frame


class Policy(Protocol):
    """What the runner needs of a policy (`OpenVLAPolicy` with any accelerators)."""

    def predict(self, observation: Observation) -> ActionChunk: ...

    def reset(self) -> None: ...

    def check_instruction(self, instruction: str) -> str: ...


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


@dataclass
class Tick:
    """What one control tick decided. `command` is None when nothing is to be published."""

    kind: str  # 'action', 'hold', 'idle' (hold already sent) or 'starved'
    command: np.ndarray | None = None
    raw: np.ndarray | None = None
    remaining: list[np.ndarray] = field(default_factory=list)  # rest of the chunk, limited
    fault: str = ''
    frame: np.ndarray | None = None  # the frame an action was computed from
    info: StepInfo | None = None  # the policy's step info, for an action
    planned: float = 0.0  # the tick's planned time on the schedule (runner clock)
    source_stamp_ns: int = 0  # an action's camera frame stamp (0: a hold)
    episode: int = 0


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
    commanding_ticks: int = 0  # ticks after an episode's first command: what stalls count in
    commanding_commands: int = 0  # commands on those ticks
    holds: int = 0
    watchdog_holds: int = 0
    starved_ticks: int = 0
    boundary_stalls: int = 0  # starved ticks after an episode's first command (chunk seams)


class RateMeter:
    """Events per second over a sliding window of timestamps."""

    def __init__(self, window: int = 100) -> None:
        self.times: deque[float] = deque(maxlen=window)

    def mark(self, t: float) -> None:
        self.times.append(t)

    def rate(self) -> float:
        if len(self.times) < 2 or self.times[-1] == self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


class PolicyRunner:
    def __init__(
        self,
        policy: Policy,
        limits: SafetyLimits,
        max_image_age_s: float,
        max_action_age_s: float,
        max_command_gap_s: float = 0.5,
        check_frame: Callable[[np.ndarray], object] = check_rgb,
        clock: Callable[[], float] = time.monotonic,
        chunks: ChunkExecution = EXECUTE_CHUNKS,
        control_period_s: float | None = None,
        lock: threading.Condition | None = None,
    ) -> None:
        check_resolved(chunks)
        self.policy = policy
        self.limits = limits
        self.max_image_age_s = max_image_age_s
        self.max_action_age_s = max_action_age_s
        self.max_command_gap_s = max_command_gap_s
        self.check_frame = check_frame  # raises InputError for a frame the policy cannot use
        self.clock = clock
        self.chunks = chunks
        self.control_period_s = control_period_s  # the tick's period, for just-in-time starts
        self.counters = Counters()
        self.latencies_ms: deque[float] = deque(maxlen=500)
        self.jit_margin_s = JIT_MARGIN_S
        self.e2e_ms: deque[float] = deque(maxlen=500)  # frame capture -> command
        self.inference_rate = RateMeter()
        self.tick_rate = RateMeter(window=200)
        self.lateness_ms: deque[float] = deque(maxlen=600)  # actual - planned tick time
        self.last_error = ''
        self.last_info: StepInfo | None = None  # of the last inference
        self.step_stats = RunningStats()  # reuse and FLOPs saved over this runner's steps
        # Several robots served by one worker (control/batching.py) share one condition: any
        # robot's new frame or tick wakes that worker.
        self._lock = lock or threading.Condition()
        self._frame: tuple[np.ndarray, float, float] | None = None  # newest unread frame
        # Arrival times of the newest valid frames, newest last: camera staleness reads the
        # last, the just-in-time frame wait their intervals.
        self._arrivals: deque[float] = deque(maxlen=CAMERA_INTERVALS + 1)
        self._frame_error = ''  # why the newest frame was rejected ('' when it was valid)
        self._instruction = ''
        self._episode = 0
        self._queue: deque[QueuedAction] = deque()  # execute mode: actions to run, in order
        self._progress = ChunkProgress()  # execute mode: what a reused chunk continues
        self._predictions: deque[tuple[int, list[QueuedAction]]] = deque()  # ensemble mode:
        # (tick index of the chunk's first action, its actions), newest last
        self._tick_index = 0  # ticks so far
        self._last_tick: float | None = None  # clock of the last tick
        self._predicted_for = -1  # ensemble: the tick the newest prediction starts at
        self._commanded = False  # the episode has sent a command (stalls count from then)
        self._busy_since: float | None = None
        self._error = ''  # set by the worker on failure, cleared by its next success
        self._fault = ''  # the fault being held for ('' while healthy)
        self._stall = ''  # why the command watchdog holds ('' when it does not)
        self._gap_start: float | None = None  # the watchdog counts from here
        self._expired_age_s = 0.0  # frame-to-tick age of the last action that expired
        self._stale_mark = 0  # stale_actions at _gap_start
        self._last_gripper: float | None = None  # the gripper's last command, kept for holds
        self._reset_pending = False  # the worker empties the policy's memory before its next step
        self._pending_update: Callable[[], None] | None = None  # a live option change
        self._running = False
        self._thread: threading.Thread | None = None
        self._own_thread = True  # False: a BatchWorker's thread serves this runner

    # -- inputs (any thread) -------------------------------------------------------------

    def submit_frame(self, rgb: np.ndarray, stamp_ns: int | None = None) -> None:
        """
        Offer the newest frame; `stamp_ns` is its own stamp in ns (defaults to arrival).

        A frame the policy cannot use raises InputError and is counted; it never refreshes
        the camera, so a camera that sends only bad frames goes stale and holds.
        """
        now = self.clock()
        try:
            self.check_frame(rgb)
        except InputError as exc:
            self.reject_frame(str(exc))
            raise
        with self._lock:
            self.counters.frames += 1
            if self._frame is not None:
                self.counters.dropped_frames += 1
            self._frame = (rgb, now, round(now * 1e9) if stamp_ns is None else stamp_ns)
            self._arrivals.append(now)
            self._frame_error = ''
            self._lock.notify_all()

    def reject_frame(self, reason: str) -> None:
        """Count a camera frame that could not be used (bad encoding, corrupt JPEG...)."""
        with self._lock:
            self.counters.rejected_frames += 1
            self.counters.rejected_inputs += 1
            self._frame_error = self.last_error = reason

    def reject_input(self, reason: str) -> None:
        """Count another input that was refused (an instruction)."""
        with self._lock:
            self.counters.rejected_inputs += 1
            self.last_error = reason

    def set_instruction(self, text: str) -> bool:
        """Change the task; a different instruction starts a new episode. Returns True then."""
        text = text.strip()
        with self._lock:
            if text == self._instruction:
                return False
            self._instruction = text
            self._new_episode()
            return True

    def reset_episode(self) -> None:
        """Start a new episode with the same instruction (the robot or scene was reset)."""
        with self._lock:
            self._new_episode()

    def _new_episode(self) -> None:
        # Under the lock: results of the old episode are discarded, memories forgotten. The
        # gripper's last command is not: the robot still holds what it grasped.
        self._episode += 1
        self._queue.clear()
        self._predictions.clear()
        self._progress.reset()
        self._commanded = False
        self._reset_policy()
        self._lock.notify_all()

    def _reset_policy(self) -> None:
        """Have the worker empty the policy's memory (reuse history) before its next step."""
        self._reset_pending = True

    def check_instruction(self, text: str) -> str:
        """Apply the policy's thread-safe instruction rule (InputError when unusable)."""
        return self.policy.check_instruction(text)

    def reconfigure(self, limits: SafetyLimits, max_image_age_s: float,
                    max_action_age_s: float, max_command_gap_s: float,
                    chunks: ChunkExecution) -> None:
        """
        Apply live parameters at once, between two ticks.

        A change of how chunks execute (mode or steps) empties the queue, the chunk progress
        and the ensemble's predictions: they were planned for the old one.
        """
        check_resolved(chunks)
        with self._lock:
            self.limits = limits
            self.max_image_age_s = max_image_age_s
            self.max_action_age_s = max_action_age_s
            self.max_command_gap_s = max_command_gap_s
            if (chunks.mode, chunks.steps) != (self.chunks.mode, self.chunks.steps):
                self._queue.clear()
                self._predictions.clear()
                self._progress.reset()
            self.chunks = chunks
            self._lock.notify_all()

    def update_policy(self, apply: Callable[[], None]) -> None:
        """Run `apply` (a live option change) in the worker, between two steps."""
        with self._lock:
            self._pending_update = apply
            self._lock.notify_all()

    @property
    def instruction(self) -> str:
        return self._instruction

    # -- worker thread -------------------------------------------------------------------

    def start(self, worker: threading.Thread | None = None) -> None:
        """Start commanding: with its own inference thread, or served by `worker`'s."""
        if worker is None and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:  # the watchdog counts from the first healthy tick of this run
            self._gap_start, self._stall, self._fault = None, '', ''
            self._running = True
        self._own_thread = worker is None
        if worker is not None:
            self._thread = worker
            return
        self._thread = threading.Thread(target=self._work, name='flashvla-inference', daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._running = False
            self._lock.notify_all()
        if self._thread is not None and self._own_thread:
            self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def lock(self) -> threading.Condition:
        """Return the condition guarding this runner (shared by the robots of one batch worker)."""
        return self._lock

    @property
    def worker_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _due(self, now: float) -> float | None:
        """
        Seconds until the next inference should start (0: now; None: not wanted yet).

        As soon as possible: when no queued action is left that will still be fresh at its
        tick (ensemble: once per tick). Just in time: the first tick that will need a new
        action, less the measured latency (the largest of the last 100 inferences, plus
        `jit_margin_s`: a late result starves a tick), so the result is fresh when that tick
        comes; and when the camera's next frame is due within `JIT_FRAME_WAIT_S` of that
        start, it waits for that frame (its arrival wakes it).
        """
        if self._frame is None or not self._instruction:
            return None
        c = self.chunks
        ensemble = c.mode == 'ensemble'
        if ensemble and self._predicted_for > self._tick_index:
            return None  # the next tick already has its prediction
        period = self.control_period_s or 0.0
        next_tick = now if self._last_tick is None else max(now, self._last_tick + period)
        usable = 0 if ensemble else self._usable(next_tick)
        if not c.just_in_time or not period or self._last_tick is None \
                or len(self.latencies_ms) < JIT_MIN_LATENCIES:  # too few to trust: asap
            return 0.0 if ensemble or not usable else None
        needed = next_tick + usable * period
        latency = max(islice(reversed(self.latencies_ms), 100)) / 1e3 + self.jit_margin_s
        start = needed - latency
        if start > now:
            return start - now
        wait_until = start + JIT_FRAME_WAIT_S
        next_frame = self._next_frame_time()
        if next_frame is not None and next_frame <= wait_until and now < wait_until:
            return wait_until - now
        return 0.0

    def _usable(self, next_tick: float) -> int:
        """
        Count the queued actions that will still be fresh at their tick, from `next_tick` on.

        The rest will expire unused (max_action_age_s, e.g. the tail of a long chunk, left
        before the next chunk): the next inference is timed as if they were not there.
        """
        period = self.control_period_s or 0.0
        usable, tick = 0, next_tick
        for item in self._queue:  # as the ticks will: an expired action costs no tick
            if tick - item.frame_time <= self.max_action_age_s:
                usable += 1
                tick += period
        return usable

    def _next_frame_time(self) -> float | None:
        """When the camera's next frame should arrive (the median interval; None: unknown)."""
        if len(self._arrivals) <= CAMERA_INTERVALS // 2:
            return None
        interval = float(np.median(np.diff(np.array(self._arrivals))))
        return self._arrivals[-1] + interval if interval > 0 else None

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._running:
                    wait = self._due(self.clock())
                    if wait == 0.0:
                        break
                    self._lock.wait(0.1 if wait is None else min(wait, 0.1))
                if not self._running:
                    return
                request = self._take()
            if self._prepare(request) and not request.stale:
                self._deliver(request, *self._predict(request))

    def _take(self) -> Request:
        """
        Take the newest frame for an inference (under the lock); a stale one is only counted.

        The pending reset and live option change travel with the request: `_prepare` applies
        them in the worker before the step, even when the frame is too old to infer on.
        """
        (rgb, frame_time, stamp_ns), self._frame = self._frame, None
        stale = self.clock() - frame_time > self.max_image_age_s
        request = Request(rgb, (frame_time, stamp_ns), self._instruction, self._episode,
                          self._reset_pending, self._pending_update, stale)
        self._reset_pending, self._pending_update = False, None
        if stale:
            self.counters.stale_frames += 1
        else:
            self._busy_since = self.clock()
        return request

    def _predict(self, request: Request) -> tuple[ActionChunk | Exception, float]:
        """Run the policy on one request; return its chunk or error, and the time it took."""
        start = time.perf_counter()
        try:
            result: ActionChunk | Exception = self.policy.predict(
                Observation(request.rgb, request.instruction))
        except Exception as exc:
            result = exc
        return result, (time.perf_counter() - start) * 1e3

    def _prepare(self, request: Request) -> bool:
        """
        Apply a live option change and the policy's reset before a step (worker thread).

        A failure is a worker error (a fault: one hold, the reason in the diagnostics), not
        the worker's end; a failed reset is tried again before the next step.
        """
        what = 'option change'
        try:
            if request.update is not None:
                request.update()
            what = 'policy reset'
            if request.reset:
                self.policy.reset()
        except Exception as exc:
            with self._lock:
                self._busy_since = None
                self._error = self.last_error = f'{what} failed: {type(exc).__name__}: {exc}'
                self.counters.worker_errors += 1
                self._reset_pending = self._reset_pending or request.reset
            return False
        return True

    def _deliver(self, request: Request, result: ActionChunk | Exception,
                 elapsed_ms: float) -> None:
        """Queue a step's actions, or count its error (worker thread)."""
        error, counter, rejected, chunk = '', '', '', None
        values = np.zeros((0, 0))
        if not isinstance(result, Exception):
            chunk = result
            try:
                values = np.atleast_2d(np.asarray(chunk.actions, dtype=np.float64))
            except (TypeError, ValueError) as exc:  # a malformed result: a worker error
                result = exc
            else:
                if not np.isfinite(values).all():
                    result = NonFiniteOutputError(f'non-finite action {values.tolist()}')
        if isinstance(result, InputError):
            rejected = str(result)
        elif isinstance(result, NonFiniteOutputError):
            error, counter = f'non-finite model output: {result}', 'nonfinite_outputs'
        elif isinstance(result, Exception):
            error = f'inference failed: {type(result).__name__}: {result}'
            counter = 'worker_errors'
        with self._lock:
            self._busy_since = None
            if rejected:
                self.counters.rejected_inputs += 1
                self.last_error = rejected
                return
            self._error = error
            if error:
                setattr(self.counters, counter, getattr(self.counters, counter) + 1)
                self.last_error = error
                return
            assert chunk is not None
            self.counters.inferences += 1
            self.latencies_ms.append(elapsed_ms)
            self.jit_margin_s = max(JIT_MARGIN_S, self.jit_margin_s - JIT_MARGIN_DECAY_S)
            self.inference_rate.mark(time.monotonic())
            self.last_info = chunk.info
            self.step_stats.add(chunk.info)
            if request.episode != self._episode:  # the instruction changed meanwhile
                self.counters.discarded_results += 1
                return
            actions = [QueuedAction(v, *request.times, request.episode, chunk.info, request.rgb)
                       for v in values]
            if self.chunks.mode == 'ensemble':
                if not new_prediction(chunk):
                    return  # the last predictions still cover the ticks
                self._predicted_for = self._tick_index + 1  # its first action: the next tick
                self._predictions.append((self._predicted_for, actions))
                while len(self._predictions) > self.chunks.horizon:
                    self._predictions.popleft()
            else:
                self._queue.extend(actions[self._progress.rows(len(actions), chunk.info.reused,
                                                               self.chunks.steps)])

    # -- control tick (timer thread; never blocks on inference) ---------------------------

    def fault(self, now: float) -> str:
        """Return why commanding must stop now, or '' when the pipeline is healthy."""
        if not self._instruction:
            return 'no instruction'
        rejected = f' (last frame rejected: {self._frame_error})' if self._frame_error else ''
        if not self._arrivals:
            return f'camera stale: no valid frame yet{rejected}' if rejected \
                else 'no camera frame yet'
        if now - self._arrivals[-1] > self.max_image_age_s:
            return f'camera stale: no valid frame for over {self.max_image_age_s:g} s{rejected}'
        if not self.worker_alive:
            return 'inference worker is not running'
        if self._error:
            return self._error
        return ''

    def tick(self, planned: float | None = None) -> Tick:
        """One control tick; `planned` is its time on the schedule (default: now)."""
        now = self.clock()
        planned = now if planned is None else planned
        self.tick_rate.mark(time.monotonic())
        with self._lock:
            self.lateness_ms.append((now - planned) * 1e3)
            self.counters.ticks += 1
            self.counters.commanding_ticks += self._commanded
            self._tick_index += 1
            self._last_tick = now
            episode = self._episode
            fault = self.fault(now)
            if fault:
                self._queue.clear()
                self._predictions.clear()
                self._progress.reset()
                holding = bool(self._fault or self._stall)  # already stopped: stay silent
                self._stall, self._gap_start = '', None
                self._fault = fault
                return Tick('idle', fault=fault) if holding else self._hold(fault, planned)
            if self._fault or self._gap_start is None:  # healthy (again): the watchdog starts
                self._fault = ''
                self._restart_watchdog(now)
            if self.chunks.mode == 'ensemble':
                self._queue = self._ensembled(now)
            while self._queue and now - self._queue[0].frame_time > self.max_action_age_s:
                self._expired_age_s = now - self._queue.popleft().frame_time
                self.counters.stale_actions += 1
            if not self._queue:
                self.counters.starved_ticks += 1
                if self.chunks.just_in_time and self._busy_since is not None:  # came late
                    self.jit_margin_s = min(JIT_MARGIN_MAX_S, 2 * self.jit_margin_s)
                self.counters.boundary_stalls += self._commanded
                self._lock.notify_all()
                if self._stall:
                    return Tick('idle', fault=self._stall)
                if now - self._gap_start > self.max_command_gap_s:
                    self._stall = self._stall_cause(now)
                    self.counters.watchdog_holds += 1
                    return self._hold(self._stall, planned)
                return Tick('starved')
            item = self._queue.popleft()
            remaining = [self.limits.apply(q.values)[0] for q in self._queue]
            if not self._queue:
                self._lock.notify_all()  # wake the worker: the next frame is needed now
            command, clamped = self.limits.apply(item.values)
            self.counters.commanding_commands += self._commanded
            self._stall = ''
            self._restart_watchdog(now)
            self._last_gripper = float(command[GRIPPER])
            self.counters.clamped_values += clamped
            self.counters.commands += 1
            self._commanded = True
            if self.chunks.mode == 'ensemble':
                self._queue.clear()  # the rest of the newest chunk was only for the trajectory
        self.e2e_ms.append((now - item.stamp_ns * 1e-9) * 1e3)
        return Tick('action', command=command, raw=item.values, remaining=remaining,
                    frame=item.frame, info=item.info, planned=planned,
                    source_stamp_ns=item.stamp_ns, episode=episode)

    def _ensembled(self, now: float) -> deque[QueuedAction]:
        """
        Blend the last chunks' predictions for this tick (`adaptive_ensemble`).

        Returns the blended action followed by the rest of the newest chunk (for the
        trajectory), or nothing. Chunks from stale frames are dropped.
        """
        while self._predictions and \
                now - self._predictions[0][1][0].frame_time > self.max_action_age_s:
            self._expired_age_s = now - self._predictions.popleft()[1][0].frame_time
            self.counters.stale_actions += 1
        s = self._tick_index
        rows = [(start, actions) for start, actions in self._predictions
                if 0 <= s - start < len(actions)]
        if not rows:
            return deque()
        start, newest = rows[-1]
        current = newest[s - start]
        blended = adaptive_ensemble(np.stack([actions[s - k].values for k, actions in rows]),
                                    self.chunks.alpha)
        item = QueuedAction(blended, current.frame_time, current.stamp_ns, current.episode,
                            current.info, current.frame)
        return deque([item, *newest[s - start + 1:]])

    def _restart_watchdog(self, now: float) -> None:
        self._gap_start, self._stale_mark = now, self.counters.stale_actions

    def _hold(self, reason: str, planned: float) -> Tick:
        """One hold (under the lock): the reuse memory goes, since the robot stops here."""
        self.counters.holds += 1
        self._reset_policy()
        return Tick('hold', command=self.limits.hold(self._last_gripper), fault=reason,
                    planned=planned, episode=self._episode)

    def _stall_cause(self, now: float) -> str:
        """Why no command came for max_command_gap_s although no input is faulty."""
        gap = f'no command for {now - self._gap_start:.2f} s (max_command_gap_s ' \
              f'{self.max_command_gap_s:g})'
        if self.counters.stale_actions > self._stale_mark:
            latency = f'{self.latencies_ms[-1]:.0f} ms' if self.latencies_ms else 'unknown'
            return (f'{gap}: all actions expired: {self._expired_age_s * 1e3:.0f} ms from frame '
                    f'to tick (inference {latency}) > max_action_age_s '
                    f'{self.max_action_age_s * 1e3:.0f} ms')
        if self._busy_since is not None:
            return f'{gap}: inference running for {now - self._busy_since:.2f} s'
        if self.last_error:
            return f'{gap}: no usable result; last error: {self.last_error}'
        return f'{gap}: no action produced'

    def final_hold(self, reason: str) -> Tick:
        """
        Return the hold to send when commanding ends (deactivate, shutdown, signal).

        It is counted; a result still being computed is discarded, as at a new episode.
        """
        with self._lock:
            self._new_episode()
            self.counters.holds += 1
            return Tick('hold', command=self.limits.hold(self._last_gripper), fault=reason,
                        planned=self.clock(), episode=self._episode)

    # -- reporting -----------------------------------------------------------------------

    def warning(self) -> str:
        """Say why actions expire before a tick can use them ('' when they do not)."""
        if not self.latencies_ms:
            return ''
        latency_ms = float(np.median(np.array(self.latencies_ms)))
        if latency_ms > self.max_action_age_s * 1e3:
            return (f'max_action_age_s {self.max_action_age_s:g} s is below the inference '
                    f'latency {latency_ms:.0f} ms: actions expire before they are used')
        return ''

    def status(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        e2e = np.array(self.e2e_ms) if self.e2e_ms else np.zeros(1)
        late = np.array(self.lateness_ms) if self.lateness_ms else np.zeros(1)
        c = self.counters
        commanding_s = c.commanding_ticks * (self.control_period_s or 0.0)
        warning = self.warning()
        with self._lock:
            fault = self.fault(self.clock())
            return {
                'fault': fault or self._stall,
                'warning': warning,
                'instruction': self._instruction,
                'episode': self._episode,
                'chunk_mode': self.chunks.mode,
                'chunk_steps': self.chunks.steps,
                'queue': len(self._queue),
                'busy': self._busy_since is not None,
                'last_gripper': self._last_gripper,
                'latency_p50_ms': float(np.percentile(lat, 50)),
                'latency_p99_ms': float(np.percentile(lat, 99)),
                'frame_to_command_p50_ms': float(np.percentile(e2e, 50)),
                'frame_to_command_p99_ms': float(np.percentile(e2e, 99)),
                'tick_hz': self.tick_rate.rate(),
                'tick_lateness_p50_ms': float(np.percentile(late, 50)),
                'tick_lateness_p99_ms': float(np.percentile(late, 99)),
                'tick_lateness_max_ms': float(late.max()),
                'stalled_tick_share': c.boundary_stalls / max(1, c.commanding_ticks),
                'jit_margin_ms': 1e3 * self.jit_margin_s,
                'inference_hz': self.inference_rate.rate(),
                # docs/TIMING.md: actions per second after each episode's first action
                'command_hz': c.commanding_commands / commanding_s if commanding_s else 0.0,
                'last_error': self.last_error,
                **{f'policy_{k}': v for k, v in self.step_stats.scalars().items()},
                **vars(self.counters),
            }
