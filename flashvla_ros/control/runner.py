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
One robot's real-time core: its frame mailbox, its chunk executor and its control tick.

The camera callback drops the newest frame into a one-slot mailbox after checking it (a frame
the policy cannot use never counts as fresh; an unread frame that gets replaced counts as
dropped). The inference worker (`worker.py`, shared by every robot of a node) takes it when
this runner is due, and delivers the chunk to the executor (`chunks.py`). Each control tick
takes one action, passes it through the safety limits and returns it as the command.

Resets (new episode, hold) and live option changes are requested from any thread and applied
by the worker before its next step, so no input thread ever touches the model mid-step.

Holds: a fault (no instruction, stale camera, worker error or death) or the command watchdog
(no command for `max_command_gap_s` while healthy) produces exactly one hold, then silence
until the pipeline commands again: the robot is never fed a repeated old command. A hold is
zero motion with the gripper's last command (NaN, "no gripper command", before there was one),
across episodes and instructions. A tick with a healthy pipeline and nothing to run publishes
nothing and is counted as starved.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
import threading
import time
from typing import Any

import numpy as np

from ..policy.actions import GRIPPER
from ..policy.errors import InputError, NonFiniteOutputError
from ..policy.preprocess import check_rgb
from ..policy.step import ActionChunk, RunningStats, StepInfo
from .chunks import EXECUTE_CHUNKS, ChunkExecution, ChunkExecutor
from .frames import FrameSlot
from .records import Counters, QueuedAction, RateMeter, Request, Tick
from .safety import SafetyLimits
from .worker import InferenceWorker

# Just in time: the start leaves the largest recent latency plus a margin that doubles when a
# result comes late (a starved tick while inferring: the load has risen) and shrinks by 1 ms
# per inference back to the floor.
JIT_MARGIN_S, JIT_MARGIN_MAX_S, JIT_MARGIN_DECAY_S = 0.010, 0.080, 0.001
JIT_MIN_LATENCIES = 20  # until then (start-up), inferences start as soon as possible
# A camera frame due within this long after the start is waited for: it is a camera period
# fresher, and the wait spends only the floor margin, less 2 ms for the tick's own jitter.
JIT_FRAME_WAIT_S = JIT_MARGIN_S - 0.002
# A tick whose action is still being inferred waits this long for it on its own thread (it runs
# again when the result lands), so a result a little late makes a late command, not a missed
# one; later than that, the tick is starved (nothing is sent). 20 ms left 2 of 6000 ticks
# starved in 10 minutes on idle cores (results up to ~48 ms, p99); 40 ms is as far as an
# interval between commands may stretch (issue 33's bound) before a missed tick is better.
LATE_TICK_S = 0.040


@dataclass(frozen=True)
class RunnerSettings:
    """A runner's live settings (the node builds them once from its parameters)."""

    limits: SafetyLimits
    max_image_age_s: float = 0.5
    max_action_age_s: float = 1.0
    max_command_gap_s: float = 0.5
    chunks: ChunkExecution = EXECUTE_CHUNKS
    control_period_s: float | None = None  # the tick's period, for just-in-time starts


class PolicyRunner:
    def __init__(self, policy: Any, settings: RunnerSettings, worker: InferenceWorker,
                 clock: Callable[[], float] = time.monotonic,
                 check_frame: Callable[[np.ndarray], object] = check_rgb) -> None:
        self.policy = policy  # this robot's policy, as the worker passes it to predict_batch
        self.settings = settings
        self.worker = worker
        self.check_frame = check_frame  # raises InputError for a frame the policy cannot use
        self.clock = clock
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
        self._lock = worker.lock  # any runner's frame or tick wakes the one worker
        self._frames = FrameSlot()
        self._instruction = ''
        self._episode = 0
        self._executor: ChunkExecutor[QueuedAction] = ChunkExecutor(settings.chunks)
        self._tick_index = 0  # ticks so far
        self._last_tick: float | None = None  # clock of the last tick
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
        self._waiting_for: float | None = None  # a tick waiting for its action: its planned
        self.delivered = threading.Event()  # set when a step ends (a waiting tick runs again)
        self.running = False  # served by the worker (between resume and pause)
        # Another input the commands need (the joint states of joint outputs): why it is not
        # usable now, or ''. A fault like a stale camera: one hold, then silence.
        self.input_fault: Callable[[float], str] | None = None
        worker.add(self)

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
            self.counters.dropped_frames += self._frames.put(
                rgb, now, round(now * 1e9) if stamp_ns is None else stamp_ns)
            self._lock.notify_all()

    def reject_frame(self, reason: str) -> None:
        """Count a camera frame that could not be used (bad encoding, corrupt JPEG...)."""
        with self._lock:
            self.counters.rejected_frames += 1
            self.counters.rejected_inputs += 1
            self._frames.rejected = self.last_error = reason

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
        self._executor.reset()
        self._commanded = False
        self._reset_pending = True
        self._lock.notify_all()

    def check_instruction(self, text: str) -> str:
        """Apply the policy's thread-safe instruction rule (InputError when unusable)."""
        return self.policy.check_instruction(text)

    def reconfigure(self, settings: RunnerSettings) -> None:
        """Apply live settings at once, between two ticks (a new chunk plan drops the old)."""
        with self._lock:
            self._executor.reconfigure(settings.chunks)
            self.settings = settings
            self._lock.notify_all()

    def update_policy(self, apply: Callable[[], None]) -> None:
        """Run `apply` (a live option change) in the worker, between two steps."""
        with self._lock:
            self._pending_update = apply
            self._lock.notify_all()

    @property
    def instruction(self) -> str:
        return self._instruction

    @property
    def chunks(self) -> ChunkExecution:
        return self._executor.execution

    def resume(self) -> None:
        """Be served again (the worker calls it under the lock); the watchdog starts afresh."""
        self._gap_start, self._stall, self._fault = None, '', ''
        self.running = True

    def pause(self) -> None:
        """Stop being served (under the lock); a step in flight for it is discarded."""
        self.running = False

    def stop(self) -> None:
        """Stop this robot alone; the worker goes on for the others."""
        with self._lock:
            self.pause()
            self._lock.notify_all()

    @property
    def worker_alive(self) -> bool:
        return self.running and self.worker.serving

    # -- for the worker (under its lock unless said) --------------------------------------

    def due(self, now: float) -> float | None:
        """
        Seconds until the next inference should start (0: now; None: not wanted yet).

        As soon as possible: when no queued action is left that will still be fresh at its
        tick (ensemble: once per tick). Just in time: the first tick that will need a new
        action, less the measured latency (the largest of the last 100 inferences, plus
        `jit_margin_s`: a late result starves a tick), so the result is fresh when that tick
        comes; and when the camera's next frame is due within `JIT_FRAME_WAIT_S` of that
        start, it waits for that frame (its arrival wakes it).
        """
        if self._frames.newest is None or not self._instruction:
            return None
        s = self.settings
        ensemble = s.chunks.ensemble
        if ensemble and not self._executor.wants(self._tick_index + 1):
            return None  # the next tick already has its prediction
        period = s.control_period_s or 0.0
        next_tick = now if self._last_tick is None else max(now, self._last_tick + period)
        usable = 0 if ensemble else self._usable(next_tick)
        if not s.chunks.just_in_time or not period or self._last_tick is None \
                or len(self.latencies_ms) < JIT_MIN_LATENCIES:  # too few to trust: asap
            return 0.0 if ensemble or not usable else None
        needed = next_tick + usable * period
        latency = max(islice(reversed(self.latencies_ms), 100)) / 1e3 + self.jit_margin_s
        start = needed - latency
        if start > now:
            return start - now
        wait_until = start + JIT_FRAME_WAIT_S
        next_frame = self._frames.next_arrival()
        if next_frame is not None and next_frame <= wait_until and now < wait_until:
            return wait_until - now
        return 0.0

    def _usable(self, next_tick: float) -> int:
        """
        Count the queued actions that will still be fresh at their tick, from `next_tick` on.

        The rest will expire unused (max_action_age_s, e.g. the tail of a long chunk, left
        before the next chunk): the next inference is timed as if they were not there.
        """
        period = self.settings.control_period_s or 0.0
        usable, tick = 0, next_tick
        for item in self._executor.queue:  # as the ticks will: an expired action costs no tick
            if tick - item.frame_time <= self.settings.max_action_age_s:
                usable += 1
                tick += period
        return usable

    def take(self) -> Request:
        """
        Take the newest frame for an inference; a stale one is only counted.

        The pending reset and live option change travel with the request: `prepare` applies
        them in the worker before the step, even when the frame is too old to infer on.
        """
        rgb, frame_time, stamp_ns = self._frames.take()
        stale = self.clock() - frame_time > self.settings.max_image_age_s
        request = Request(rgb, (frame_time, stamp_ns), self._instruction, self._episode,
                          self._reset_pending, self._pending_update, stale)
        self._reset_pending, self._pending_update = False, None
        if stale:
            self.counters.stale_frames += 1
        else:
            self._busy_since = self.clock()
        return request

    def prepare(self, request: Request) -> bool:
        """
        Apply a live option change and the policy's reset before a step (worker, no lock).

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

    def deliver(self, request: Request, result: ActionChunk | Exception,
                elapsed_ms: float) -> None:
        """Queue a step's actions, or count its error (worker, no lock)."""
        values = np.zeros((0, 0))
        if not isinstance(result, Exception):
            try:
                values = np.atleast_2d(np.asarray(result.actions, dtype=np.float64))
            except (TypeError, ValueError, AttributeError) as exc:  # malformed: worker error
                result = exc
            else:
                if not np.isfinite(values).all():
                    result = NonFiniteOutputError(f'non-finite action {values.tolist()}')
        with self._lock:
            self._busy_since = None
            self.delivered.set()  # a waiting tick runs again (it takes the lock after this)
            if isinstance(result, Exception):
                self._count_error(result)
                return
            self._error = ''
            self.counters.inferences += 1
            self.latencies_ms.append(elapsed_ms)
            self.jit_margin_s = max(JIT_MARGIN_S, self.jit_margin_s - JIT_MARGIN_DECAY_S)
            self.inference_rate.mark(self.clock())
            self.last_info = result.info
            self.step_stats.add(result.info)
            if request.episode != self._episode:  # the instruction changed meanwhile
                self.counters.discarded_results += 1
                return
            self._executor.add(
                [QueuedAction(v, *request.times, request.episode, result.info, request.rgb)
                 for v in values], result.info.reused, self._tick_index + 1)

    def _count_error(self, error: Exception) -> None:
        """Count a step's error: bad input is only counted; anything else is a fault."""
        if isinstance(error, InputError):
            self.counters.rejected_inputs += 1
            self.last_error = str(error)
            return
        if isinstance(error, NonFiniteOutputError):
            self._error = f'non-finite model output: {error}'
            self.counters.nonfinite_outputs += 1
        else:
            self._error = f'inference failed: {type(error).__name__}: {error}'
            self.counters.worker_errors += 1
        self.last_error = self._error

    # -- control tick (its own thread; never blocks on inference) -------------------------

    def fault(self, now: float) -> str:
        """Return why commanding must stop now, or '' when the pipeline is healthy."""
        if not self._instruction:
            return 'no instruction'
        camera = self._frames.fault(now, self.settings.max_image_age_s)
        if camera:
            return camera
        if self.input_fault is not None and (other := self.input_fault(now)):
            return other
        if not self.worker_alive:
            return self.worker.stuck() or 'inference worker is not running'
        return self._error

    def tick(self, planned: float | None = None) -> Tick:
        """
        One control tick; `planned` is its time on the schedule (default: now).

        A tick that returns 'waiting' (its action is still being inferred) is run again with
        the same `planned` when `delivered` is set or at its `retry_until`: the same tick.
        """
        now = self.clock()
        planned = now if planned is None else planned
        s = self.settings
        with self._lock:
            waited, self._waiting_for = planned == self._waiting_for, None
            if waited:  # the same tick again: its lateness is now's
                self.lateness_ms[-1] = (now - planned) * 1e3
            else:
                self.tick_rate.mark(now)
                self.lateness_ms.append((now - planned) * 1e3)
                self.counters.ticks += 1
                self.counters.commanding_ticks += self._commanded
                self._tick_index += 1
                self._last_tick = now
            fault = self.fault(now)
            if fault:
                self._executor.reset()
                holding = bool(self._fault or self._stall)  # already stopped: stay silent
                self._stall, self._gap_start = '', None
                self._fault = fault
                return Tick('idle', fault=fault) if holding else self._hold(fault, planned)
            if self._fault or self._gap_start is None:  # healthy (again): the watchdog starts
                self._fault = ''
                self._restart_watchdog(now)
            for item in self._executor.drop(lambda q: now - q.frame_time <= s.max_action_age_s):
                self._expired_age_s = now - item.frame_time
                self.counters.stale_actions += 1
            item, rest = self._executor.next(self._tick_index, QueuedAction.blended)
            if item is None:
                return self._starved(now, planned, waited)
            if not rest:
                self._lock.notify_all()  # wake the worker: the next frame is needed now
            remaining = [s.limits.apply(q.values)[0] for q in rest]
            command, clamped = s.limits.apply(item.values)
            self.counters.commanding_commands += self._commanded
            self._stall = ''
            self._restart_watchdog(now)
            self._last_gripper = float(command[GRIPPER])
            self.counters.clamped_values += clamped
            self.counters.commands += 1
            self._commanded = True
            episode = self._episode
        self.e2e_ms.append((now - item.stamp_ns * 1e-9) * 1e3)
        return Tick('action', command=command, raw=item.values, remaining=remaining,
                    frame=item.frame, info=item.info, planned=planned,
                    source_stamp_ns=item.stamp_ns, episode=episode)

    def skipped(self, planned: float, now: float) -> None:
        """Count a planned tick that never ran; its lateness is how late it would have been."""
        with self._lock:
            self.counters.skipped_ticks += 1
            self.lateness_ms.append((now - planned) * 1e3)

    def _starved(self, now: float, planned: float, waited: bool) -> Tick:
        """
        Nothing to run on a healthy tick: wait for an action in flight, or count it starved.

        The watchdog holds once after a gap.
        """
        assert self._gap_start is not None
        if self._busy_since is not None and self.settings.chunks.just_in_time and not waited:
            # Its action comes late: the load has risen, so the margin doubles.
            self.jit_margin_s = min(JIT_MARGIN_MAX_S, 2 * self.jit_margin_s)
            if not self._stall and now - planned < LATE_TICK_S:
                self._waiting_for = planned
                self.delivered.clear()
                return Tick('waiting', planned=planned, retry_until=planned + LATE_TICK_S)
        self.counters.starved_ticks += 1
        self.counters.boundary_stalls += self._commanded
        self._lock.notify_all()
        if self._stall:
            return Tick('idle', fault=self._stall)
        if now - self._gap_start > self.settings.max_command_gap_s:
            self._stall = self._stall_cause(now)
            self.counters.watchdog_holds += 1
            return self._hold(self._stall, planned)
        return Tick('starved')

    def _restart_watchdog(self, now: float) -> None:
        self._gap_start, self._stale_mark = now, self.counters.stale_actions

    def _hold(self, reason: str, planned: float) -> Tick:
        """One hold (under the lock): the reuse memory goes, since the robot stops here."""
        self.counters.holds += 1
        self._reset_pending = True
        return Tick('hold', command=self.settings.limits.hold(self._last_gripper), fault=reason,
                    planned=planned, episode=self._episode)

    def _stall_cause(self, now: float) -> str:
        """Why no command came for max_command_gap_s although no input is faulty."""
        assert self._gap_start is not None
        s = self.settings
        gap = f'no command for {now - self._gap_start:.2f} s (max_command_gap_s ' \
              f'{s.max_command_gap_s:g})'
        if self.counters.stale_actions > self._stale_mark:
            latency = f'{self.latencies_ms[-1]:.0f} ms' if self.latencies_ms else 'unknown'
            return (f'{gap}: all actions expired: {self._expired_age_s * 1e3:.0f} ms from frame '
                    f'to tick (inference {latency}) > max_action_age_s '
                    f'{s.max_action_age_s * 1e3:.0f} ms')
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
            return Tick('hold', command=self.settings.limits.hold(self._last_gripper),
                        fault=reason, planned=self.clock(), episode=self._episode)

    # -- reporting -----------------------------------------------------------------------

    def warning(self) -> str:
        """Say why actions expire before a tick can use them ('' when they do not)."""
        if not self.latencies_ms:
            return ''
        latency_ms = float(np.median(np.array(self.latencies_ms)))
        max_age_s = self.settings.max_action_age_s
        if latency_ms > max_age_s * 1e3:
            return (f'max_action_age_s {max_age_s:g} s is below the inference '
                    f'latency {latency_ms:.0f} ms: actions expire before they are used')
        return ''

    def status(self) -> dict[str, Any]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        e2e = np.array(self.e2e_ms) if self.e2e_ms else np.zeros(1)
        late = np.array(self.lateness_ms) if self.lateness_ms else np.zeros(1)
        c = self.counters
        commanding_s = c.commanding_ticks * (self.settings.control_period_s or 0.0)
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
                'queue': len(self._executor.queue),
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
