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

"""The control core: the inference worker and a robot's runner, faults, holds, limits (no ROS)."""

from dataclasses import dataclass, field, replace
import threading
from types import SimpleNamespace

from conftest import LIMITS, ScriptedClock, settle, wait_for
import numpy as np
import pytest

from flashvla_ros.control.chunks import ChunkExecution
from flashvla_ros.control.frames import CAMERA_INTERVALS
from flashvla_ros.control.runner import (
    JIT_FRAME_WAIT_S,
    JIT_MARGIN_DECAY_S,
    JIT_MARGIN_S,
    JIT_MIN_LATENCIES,
    LATE_TICK_S,
    PolicyRunner,
    RunnerSettings,
)
from flashvla_ros.control.safety import SafetyLimits
from flashvla_ros.control.worker import InferenceWorker
from flashvla_ros.policy import Observation
from flashvla_ros.policy.errors import InputError

FRAME = np.zeros((32, 32, 3), np.uint8)


def step_info(reused: bool) -> SimpleNamespace:
    """Make what the runner reads of a step's info: whether it was reused, and its FLOPs."""
    return SimpleNamespace(reused=reused, flops=SimpleNamespace(total=1), flops_full=2)


@dataclass
class Result:
    actions: np.ndarray  # [H, 7]: a chunk
    info: object = field(default_factory=lambda: step_info(False))


@dataclass
class Reused:
    """A scripted outcome: the gate returned this (the last inferred) chunk again."""

    actions: list


class ScriptedPolicy:
    """Stands in for the model: returns queued outcomes in order (arrays or exceptions)."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.resets = 0
        self.log = []  # 'reset' and 'predict', in the order the worker called them
        self.frames = []  # the frame each predict saw
        self.running = self.most_running = 0  # steps at once (never more than one)

    def predict_batch(self, requests):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            self.gate.wait()
            results = []
            for policy, observation in requests:
                try:
                    results.append(policy.predict(observation))
                except Exception as exc:
                    results.append(exc)
            return results
        finally:
            self.running -= 1

    def predict(self, observation):
        self.calls += 1
        self.log.append('predict')
        self.frames.append(observation.rgb)
        out = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(out, Exception):
            raise out
        if isinstance(out, Reused):
            return Result(np.atleast_2d(np.asarray(out.actions, dtype=float)),
                          step_info(True))
        return Result(np.atleast_2d(np.asarray(out, dtype=float)))

    def reset(self):
        # Only the worker thread may call this, between two steps.
        assert threading.current_thread().name == 'flashvla-inference'
        self.resets += 1
        self.log.append('reset')


def serve(policy, settings: RunnerSettings, clock=None) -> PolicyRunner:
    """Return a runner of `policy` with its own worker, started (runner.worker.stop() ends it)."""
    worker = InferenceWorker(policy.predict_batch)
    runner = PolicyRunner(policy, settings, worker, clock or ScriptedClock())
    worker.start()
    return runner


@pytest.fixture
def make_runner():
    runners = []

    def make(policy, clock=None):
        runners.append(serve(policy, RunnerSettings(LIMITS, 0.5, 1.0), clock))
        return runners[-1]

    yield make
    for r in runners:
        r.worker.stop()


def next_action(runner):
    wait_for(lambda: runner.status()['queue'] > 0)
    return runner.tick()


def test_actions_flow_and_are_clamped(make_runner):
    runner = make_runner(ScriptedPolicy([0.01, -0.2, 0, 0, 0, 0, 0.7]))
    runner.set_instruction('pick up the cup')
    runner.submit_frame(FRAME)
    tick = next_action(runner)
    assert tick.kind == 'action'
    assert tick.command.tolist() == [0.01, -0.05, 0, 0, 0, 0, 0.7]
    assert tick.raw.tolist() == [0.01, -0.2, 0, 0, 0, 0, 0.7]
    assert runner.counters.clamped_values == 1
    assert runner.tick().kind == 'starved'  # the queue is empty until the next inference


def test_no_instruction_holds_once_then_stays_silent(make_runner):
    runner = make_runner(ScriptedPolicy([0.0] * 7))
    runner.submit_frame(FRAME)
    first, second = runner.tick(), runner.tick()
    assert first.kind == 'hold' and first.fault == 'no instruction'
    # Zero motion; no gripper command was ever sent, so the hold sends none (NaN) either.
    assert first.command[:6].tolist() == [0.0] * 6 and np.isnan(first.command[6])
    assert second.kind == 'idle' and second.command is None


def test_stale_camera_holds_with_last_gripper_and_recovers(make_runner):
    clock = ScriptedClock()
    policy = ScriptedPolicy([0.01, 0, 0, 0, 0, 0, 1.0])
    runner = make_runner(policy, clock)
    runner.set_instruction('pick up the cup')
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action'
    clock.t += 0.6  # no frame for longer than max_image_age_s
    hold = runner.tick()
    assert hold.kind == 'hold' and 'camera stale' in hold.fault
    assert hold.command.tolist() == [0, 0, 0, 0, 0, 0, 1.0]  # keeps the grasp
    assert runner.tick().kind == 'idle'
    clock.t += 5.0  # still stale, later: still silent
    assert runner.tick().kind == 'idle'
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action'
    assert runner.counters.holds == 1
    # The instruction, then the hold: no reuse across a stop (the worker resets the policy
    # before its next step, never from the thread that asked).
    assert policy.log == ['reset', 'predict', 'reset', 'predict']


def test_episode_reset_empties_the_queue_and_the_policy_memory(make_runner):
    policy = ScriptedPolicy([[0.01] * 7, [0.02] * 7])
    runner = make_runner(policy)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.status()['queue'] == 2)
    runner.reset_episode()
    assert runner.status()['queue'] == 0 and runner.status()['episode'] == 2
    assert runner.instruction == 'push the cup'
    runner.submit_frame(FRAME)
    wait_for(lambda: policy.calls == 2)
    assert policy.log == ['reset', 'predict', 'reset', 'predict']


def test_frames_older_than_the_limit_are_never_inferred(make_runner):
    clock = ScriptedClock()
    policy = ScriptedPolicy([0.0] * 7)
    policy.gate.clear()
    runner = make_runner(policy, clock)
    runner.submit_frame(FRAME)  # arrives before any instruction: waits in the mailbox
    clock.t += 1.0
    runner.set_instruction('push the cup')
    policy.gate.set()
    wait_for(lambda: runner.counters.stale_frames == 1)
    assert policy.calls == 0


def test_frames_arriving_while_busy_replace_each_other(make_runner):
    policy = ScriptedPolicy([0.0] * 7)
    policy.gate.clear()
    runner = make_runner(policy)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.status()['busy'])
    for _ in range(5):
        runner.submit_frame(FRAME)
    assert runner.counters.dropped_frames == 4
    # The control tick answers while inference is stuck (it would deadlock otherwise).
    ticker = threading.Thread(target=runner.tick)
    ticker.start()
    ticker.join(2.0)
    assert not ticker.is_alive()
    policy.gate.set()


def test_worker_errors_hold_and_recover(make_runner):
    policy = ScriptedPolicy(RuntimeError('CUDA out of memory'), [0.01] + [0.0] * 6)
    runner = make_runner(policy)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.counters.worker_errors == 1)
    hold = runner.tick()
    assert hold.kind == 'hold' and 'CUDA out of memory' in hold.fault
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action'


def test_nonfinite_output_never_reaches_the_robot(make_runner):
    policy = ScriptedPolicy([np.nan] + [0.0] * 6)
    runner = make_runner(policy)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.counters.nonfinite_outputs == 1)
    tick = runner.tick()
    assert tick.kind == 'hold' and tick.command[:6].tolist() == [0.0] * 6
    assert np.isnan(tick.command[6])  # "no gripper command": none was ever sent
    assert runner.counters.commands == 0


def test_rejected_inputs_are_counted_without_fault(make_runner):
    policy = ScriptedPolicy(InputError('image must be uint8'), [0.0] * 7)
    runner = make_runner(policy)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.counters.rejected_inputs == 1)
    assert runner.status()['fault'] == ''
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action'


def test_instruction_change_discards_in_flight_result(make_runner):
    policy = ScriptedPolicy([0.01] + [0.0] * 6)
    policy.gate.clear()
    runner = make_runner(policy)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.status()['busy'])
    assert runner.set_instruction('move to the red block')
    assert not runner.set_instruction('move to the red block')  # same text: same episode
    policy.gate.set()
    wait_for(lambda: runner.counters.discarded_results == 1)
    assert runner.status()['queue'] == 0
    runner.submit_frame(FRAME)
    wait_for(lambda: policy.calls == 2)
    assert policy.log == ['reset', 'predict', 'reset', 'predict']  # the new task's memory


def test_dead_worker_is_a_fault(make_runner):
    runner = make_runner(ScriptedPolicy([0.0] * 7))
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    runner.worker.stop()
    tick = runner.tick()
    assert tick.kind == 'hold' and tick.fault == 'inference worker is not running'


def test_a_stop_that_times_out_leaves_one_worker_that_a_start_takes_back(make_runner):
    policy = ScriptedPolicy([0.01] + [0.0] * 6)
    policy.gate.clear()  # the step hangs (a slow device, a first compile, a 7B model on a CPU)
    runner = make_runner(policy)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.status()['busy'])
    assert not runner.worker.stop(wait_s=0.05)  # it did not stop: faulted, and says why
    hold = runner.tick()
    assert hold.kind == 'hold' and 'did not stop: a step has been running for' in hold.fault
    runner.worker.start()  # at once: the thread still in its step serves on afterwards
    workers = [t for t in threading.enumerate() if t.name == 'flashvla-inference']
    assert len(workers) == 1
    policy.gate.set()  # the step ends; its action is served, then the next frame's
    assert next_action(runner).kind == 'action' and runner.worker.stuck() == ''
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action'
    assert policy.calls == 2 and policy.most_running == 1  # never two steps on one model


@pytest.mark.parametrize('failing', ['option change', 'policy reset'])
def test_a_failing_option_change_or_reset_holds_and_the_worker_survives(make_runner, failing):
    policy = ScriptedPolicy([0.01] + [0.0] * 6)
    runner = make_runner(policy)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action'

    def broken():
        raise ValueError('no such option')

    if failing == 'option change':
        runner.update_policy(broken)
    else:
        policy.reset = broken
        runner.reset_episode()
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.counters.worker_errors == 1)
    hold = runner.tick()
    assert hold.kind == 'hold' and hold.fault == f'{failing} failed: ValueError: no such option'
    assert runner.worker_alive
    if failing == 'policy reset':  # tried again before the next step, until it works
        policy.reset = lambda: None
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action' and runner.status()['fault'] == ''


def test_a_chunk_mode_change_drops_what_was_planned_for_the_old_one():
    policy = ScriptedPolicy(chunk(0.01))
    runner = make_chunk_runner(policy, ChunkExecution(mode='execute', steps=4))
    try:
        runner.set_instruction('push the cup')
        runner.submit_frame(FRAME)
        wait_for(lambda: runner.status()['queue'] == 4)
        runner.tick()
        same = ChunkExecution(mode='execute', steps=4, just_in_time=True)
        runner.reconfigure(RunnerSettings(LIMITS, 5.0, 5.0, 60.0, same))  # timing: plan stays
        assert runner.status()['queue'] == 3
        runner.reconfigure(RunnerSettings(LIMITS, 5.0, 5.0, 60.0, ChunkExecution('ensemble')))
        assert runner.status()['queue'] == 0 and runner.chunks.mode == 'ensemble'
    finally:
        runner.worker.stop()


def test_with_the_real_tiny_policy(make_runner, tiny_policy):
    from flashvla_ros.sim.tasks import Episode

    ep = Episode(3)
    runner = serve(tiny_policy, RunnerSettings(LIMITS, 5.0, 5.0))
    try:
        runner.set_instruction(ep.instruction)
        runner.submit_frame(ep.observe())
        tick = next_action(runner)
    finally:
        runner.worker.stop()
    expected = tiny_policy.predict(Observation(ep.observe(), ep.instruction)).values
    assert tick.raw.tolist() == expected.tolist()
    assert ((tick.command >= LIMITS.lower) & (tick.command <= LIMITS.upper)).all()
    assert runner.status()['latency_p50_ms'] > 0


def test_reused_actions_pass_the_same_limits(make_runner, tiny_dir):
    from flashvla_ros.accel.registry import accelerate
    from flashvla_ros.policy import load_policy
    from flashvla_ros.sim.tasks import Episode

    # A gate that accepts any history reuses every other step; limits tighter than the model's
    # outputs clamp fresh and reused actions alike.
    policy = accelerate(load_policy(str(tiny_dir)), ['flashvla'], {'flashvla': {
        'gate': 'past', 'eps1_deg': 180.0, 'eps2': 0.0, 'max_reuse': 1}})
    tight = SafetyLimits.from_lists([1.0] * 7, [-1e-4] * 6 + [0.0], [1e-4] * 6 + [1.0])
    runner = serve(policy, RunnerSettings(tight, 5.0, 5.0))
    ep = Episode(3)
    ticks = []
    try:
        runner.set_instruction(ep.instruction)
        for _ in range(5):
            runner.submit_frame(ep.observe())
            ticks.append(next_action(runner))
    finally:
        runner.worker.stop()
    assert runner.step_stats.reused >= 1
    for tick in ticks:
        assert ((tick.command >= tight.lower) & (tick.command <= tight.upper)).all()
        assert np.abs(tick.raw[:6]).max() > 1e-4  # the raw action was outside: clamped
    assert runner.counters.clamped_values >= 5


def test_a_hold_keeps_the_gripper_across_episodes_and_instructions(make_runner):
    policy = ScriptedPolicy([0.01, 0, 0, 0, 0, 0, 1.0])
    runner = make_runner(policy)
    runner.set_instruction('pick up the cup')
    runner.submit_frame(FRAME)
    assert next_action(runner).command[6] == 1.0  # the block is grasped
    runner.reset_episode()
    assert runner.set_instruction('put it in the bowl')  # a new episode and instruction
    runner.set_instruction('')  # cleared: hold
    hold = runner.tick()
    assert hold.kind == 'hold' and hold.command.tolist() == [0, 0, 0, 0, 0, 0, 1.0]
    assert runner.final_hold('stopped').command.tolist() == [0, 0, 0, 0, 0, 0, 1.0]
    assert runner.counters.holds == 2


def test_limits_that_exclude_zero_motion_are_refused():
    with pytest.raises(ValueError, match=r'dimensions \[0\]'):
        SafetyLimits.from_lists([1.0] * 7, [0.01] + [-0.05] * 5 + [0.0], [0.05] * 6 + [1.0])
    # The gripper may exclude zero: a hold keeps its last command instead.
    SafetyLimits.from_lists([1.0] * 7, [-0.05] * 6 + [0.2], [0.05] * 6 + [1.0])


def test_a_camera_sending_only_bad_frames_is_stale(make_runner):
    clock = ScriptedClock()
    runner = make_runner(ScriptedPolicy([0.01] + [0.0] * 6), clock)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action'
    for _ in range(3):
        clock.t += 0.2
        with pytest.raises(InputError):
            runner.submit_frame(np.zeros((4, 4, 3), np.uint8))  # below the model's minimum
    hold = runner.tick()
    assert hold.kind == 'hold' and 'camera stale' in hold.fault
    assert 'last frame rejected: image size 4x4' in hold.fault
    assert runner.counters.rejected_frames == 3 and runner.counters.frames == 1
    runner.submit_frame(FRAME)  # a valid frame clears it
    assert next_action(runner).kind == 'action'


def test_watchdog_holds_once_when_every_action_expires(make_runner):
    clock = ScriptedClock()
    policy = ScriptedPolicy([0.01, 0, 0, 0, 0, 0, 1.0])
    runner = make_runner(policy, clock)
    runner.reconfigure(replace(runner.settings, max_action_age_s=0.1, max_command_gap_s=0.25))
    runner.set_instruction('pick up the cup')
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action'
    kinds = []
    for _ in range(6):  # each action reaches the tick 0.15 s after its frame: expired
        runner.submit_frame(FRAME)
        wait_for(lambda: runner.status()['queue'] > 0)
        clock.t += 0.15
        kinds.append(runner.tick())
    assert [t.kind for t in kinds] == ['starved', 'hold', 'idle', 'idle', 'idle', 'idle']
    hold = kinds[1]
    assert hold.command.tolist() == [0, 0, 0, 0, 0, 0, 1.0]
    assert 'all actions expired: 150 ms from frame to tick' in hold.fault
    assert 'max_action_age_s 100 ms' in hold.fault
    assert runner.status()['fault'] == hold.fault and runner.counters.watchdog_holds == 1
    runner.set_instruction('')  # a fault while the watchdog holds: no second hold
    assert runner.tick().kind == 'idle' and runner.counters.holds == 1
    runner.set_instruction('pick up the cup')
    runner.reconfigure(replace(runner.settings, max_action_age_s=1.0))  # commands resume
    runner.submit_frame(FRAME)
    assert next_action(runner).kind == 'action'
    assert runner.status()['fault'] == ''


def test_warning_when_actions_expire_before_inference_ends(make_runner):
    policy = ScriptedPolicy([0.0] * 7)
    runner = make_runner(policy)
    runner.set_instruction('push the cup')
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.counters.inferences == 1)
    assert runner.warning() == ''
    runner.latencies_ms.extend([180.0] * 5)
    runner.reconfigure(replace(runner.settings, max_action_age_s=0.1))
    assert runner.warning() == ('max_action_age_s 0.1 s is below the inference latency '
                                '180 ms: actions expire before they are used')


# -- chunks ----------------------------------------------------------------------------------


def chunk(first: float, rows: int = 16, gripper: float = 1.0) -> np.ndarray:
    """Rows whose x grows by 0.001 per step from `first`: each row says which it is."""
    out = np.zeros((rows, 7))
    out[:, 0] = first + 0.001 * np.arange(rows)
    out[:, 6] = gripper
    return out


def make_chunk_runner(policy, chunks, clock=None, period=None):
    return serve(policy, RunnerSettings(LIMITS, 5.0, 5.0, 60.0, chunks, period), clock)


def test_execute_mode_runs_n_actions_of_each_chunk_and_counts_boundary_stalls():
    policy = ScriptedPolicy(chunk(0.01), chunk(0.02))
    policy.gate.clear()
    runner = make_chunk_runner(policy, ChunkExecution(mode='execute', steps=3))
    try:
        runner.set_instruction('push the cup')
        assert runner.tick().kind == 'hold'  # no frame yet
        runner.submit_frame(FRAME)
        assert runner.tick().kind == 'starved' and runner.counters.boundary_stalls == 0
        policy.gate.set()
        wait_for(lambda: runner.status()['queue'] == 3)
        ticks = [runner.tick() for _ in range(3)]
        assert [t.command[0] for t in ticks] == pytest.approx([0.010, 0.011, 0.012])
        assert [len(t.remaining) for t in ticks] == [2, 1, 0]  # the rest of what will run
        assert runner.tick().kind == 'starved'  # no frame: the chunk seam stalls
        assert runner.counters.boundary_stalls == 1 and runner.counters.starved_ticks == 2
        runner.submit_frame(FRAME)
        assert next_action(runner).command[0] == pytest.approx(0.020)
    finally:
        runner.worker.stop()


def test_the_next_inference_starts_before_a_long_chunk_tail_expires():
    """A 16-action chunk at 10 Hz outlives max_action_age_s 1.0 s: its tail never runs."""
    clock = ScriptedClock()
    policy = ScriptedPolicy(chunk(0.01), chunk(0.05))
    runner = serve(policy, RunnerSettings(LIMITS, 5.0, 1.0, control_period_s=0.1), clock)
    try:
        runner.set_instruction('push the cup')
        runner.submit_frame(FRAME)  # arrives at 100.0
        wait_for(lambda: runner.status()['queue'] == 16)
        for k in range(11):  # ticks 100.0 .. 101.0: rows 0-10 are fresh enough
            clock.t = 100.0 + 0.1 * k
            if k == 10:
                runner.submit_frame(FRAME)
            assert runner.tick().command[0] == pytest.approx(0.01 + 0.001 * k)
        # Rows 11-15 would be 1.1-1.5 s old at their ticks: the worker does not wait for them.
        wait_for(lambda: policy.calls == 2)
        clock.t = 101.1
        wait_for(lambda: runner.status()['queue'] == 5 + 16)
        # The new chunk, queued behind the old tail, counts: no third inference meanwhile.
        runner.submit_frame(FRAME)
        settle(runner.worker)
        assert policy.calls == 2
        tick = runner.tick()
        assert tick.command[0] == pytest.approx(0.05)  # the new chunk's first row: no stall
        assert runner.counters.stale_actions == 5 and runner.counters.starved_ticks == 0
    finally:
        runner.worker.stop()


def commands_of(runner, ticks: int) -> list[float]:
    """Command x of `ticks` ticks, a new frame before each (the worker infers on demand)."""
    runner.set_instruction('push the cup')
    commands = []
    for _ in range(ticks):
        runner.submit_frame(FRAME)
        commands.append(next_action(runner).command[0])
    return commands


def test_a_reused_chunk_continues_where_execution_stopped():
    plan = chunk(0.01)
    policy = ScriptedPolicy(plan, Reused(plan), chunk(0.05))
    runner = make_chunk_runner(policy, ChunkExecution(mode='execute', steps=2))
    try:
        commands = commands_of(runner, 5)
        # Rows 0-1 inferred, rows 2-3 of the same plan on reuse (not rows 0-1 again), then
        # the next inference.
        assert commands == pytest.approx([0.010, 0.011, 0.012, 0.013, 0.050])
    finally:
        runner.worker.stop()


def test_a_reused_one_action_chunk_repeats_and_ensembles_add_nothing_on_reuse():
    policy = ScriptedPolicy([0.01] + [0.0] * 6, Reused([0.01] + [0.0] * 6), [0.03] + [0.0] * 6)
    runner = make_chunk_runner(policy, ChunkExecution(mode='execute', steps=1))
    try:
        commands = commands_of(runner, 3)
        assert commands == pytest.approx([0.01, 0.01, 0.03])  # FlashVLA's reuse: the action
    finally:
        runner.worker.stop()
    first = chunk(0.01)
    policy = ScriptedPolicy(first, Reused(first))
    runner = make_chunk_runner(policy, ChunkExecution(mode='ensemble', horizon=2))
    try:
        runner.set_instruction('push the cup')
        runner.submit_frame(FRAME)
        wait_for(lambda: runner.status()['inferences'] == 1)
        assert runner.tick().command[0] == pytest.approx(0.010)
        runner.submit_frame(FRAME)
        wait_for(lambda: runner.status()['inferences'] == 2)
        assert runner.tick().command[0] == pytest.approx(0.011)  # first[1] alone, not first[0]
    finally:
        runner.worker.stop()


def test_ensemble_blends_the_last_chunks_with_cogacts_weights():
    first, second = chunk(0.01), chunk(0.03)
    second[:, 1] = 0.02  # a different direction: cos < 1
    policy = ScriptedPolicy(first, second, second)
    runner = make_chunk_runner(policy, ChunkExecution(mode='ensemble', horizon=2, alpha=0.1))
    try:
        runner.set_instruction('push the cup')
        runner.submit_frame(FRAME)
        wait_for(lambda: policy.calls == 1)
        wait_for(lambda: runner.status()['inferences'] == 1)
        tick = runner.tick()  # one prediction: its first row
        assert tick.command[0] == pytest.approx(0.010) and len(tick.remaining) == 15
        runner.submit_frame(FRAME)
        wait_for(lambda: runner.status()['inferences'] == 2)
        tick = runner.tick()  # first[1] and second[0], weighted by cos to second[0]
        a = np.stack([first[1], second[0]])
        w = np.exp(0.1 * (a @ second[0]) / (np.linalg.norm(a, axis=1)
                                            * np.linalg.norm(second[0])))
        expected = (w / w.sum()) @ a
        assert np.allclose(tick.raw[:6], expected[:6]) and tick.raw[6] == 1.0
        assert w[1] > w[0]  # the newest agrees with itself most
    finally:
        runner.worker.stop()


def just_in_time_runner(policy, clock):
    """Start a just-in-time runner at 10 Hz and take its first action (inferred at once)."""
    runner = make_chunk_runner(policy, ChunkExecution(just_in_time=True), clock, period=0.1)
    try:
        runner.set_instruction('push the cup')
        runner.submit_frame(FRAME)
        assert next_action(runner).kind == 'action'  # no latency measured yet: at once
    except BaseException:
        runner.worker.stop()
        raise
    return runner


def test_just_in_time_waits_for_the_tick_and_takes_the_newest_frame():
    clock = ScriptedClock()
    policy = ScriptedPolicy([0.01] + [0.0] * 6)
    runner = just_in_time_runner(policy, clock)
    try:
        assert policy.calls == 1
        # Too few latencies to trust (start-up): still at once.
        runner.submit_frame(FRAME)
        assert next_action(runner).kind == 'action' and policy.calls == 2
        runner.latencies_ms.extend([1.0] * (JIT_MIN_LATENCIES - 2))  # as if measured
        # Queue empty right after a tick at t = 100.0; the next tick is at 100.1 and the
        # measured latency is a few ms: the worker waits (in clock time) until about 100.09.
        newest = np.full((32, 32, 3), 7, np.uint8)
        runner.submit_frame(FRAME)
        settle(runner.worker)
        assert policy.calls == 2  # not yet: the clock has not moved
        clock.t = 100.099
        runner.submit_frame(newest)  # arrives before the start: this is the one inferred
        wait_for(lambda: policy.calls == 3)
        assert runner.counters.dropped_frames == 1  # the older frame was replaced, unread
    finally:
        runner.worker.stop()


def test_just_in_time_waits_for_a_camera_frame_due_just_after_the_start():
    clock = ScriptedClock()
    policy = ScriptedPolicy([0.01] + [0.0] * 6)
    runner = just_in_time_runner(policy, clock)  # its tick at 100.0; the next at 100.1
    try:
        runner.latencies_ms.extend([1.0] * JIT_MIN_LATENCIES)  # start at 100.1 - 11 ms
        start = 100.1 - 0.001 - JIT_MARGIN_S
        for k in range(CAMERA_INTERVALS + 1):  # a 20 Hz camera, its next frame due at 100.092
            clock.t = 100.042 - 0.05 * (CAMERA_INTERVALS - k)
            runner.submit_frame(FRAME)
        assert start + JIT_FRAME_WAIT_S > 100.092  # the next frame falls in the window
        clock.t = start + 0.0005  # past the start, but a fresher frame is due in the window
        settle(runner.worker)
        assert policy.calls == 1
        fresh = np.full((32, 32, 3), 7, np.uint8)
        clock.t = 100.092
        runner.submit_frame(fresh)
        wait_for(lambda: policy.calls == 2)
        assert policy.frames[-1] is fresh
        # Next tick at 100.1 (start 100.189). A frame at 100.15 puts the next one at 100.2,
        # beyond the window: the worker starts on time, on the frame it has.
        clock.t = 100.1
        assert next_action(runner).kind == 'action'
        clock.t = 100.15
        older = np.full((32, 32, 3), 9, np.uint8)
        runner.submit_frame(older)
        clock.t = start + 0.1 + 0.0005
        wait_for(lambda: policy.calls == 3)
        assert policy.frames[-1] is older
    finally:
        runner.worker.stop()


def late_inference(runner, policy, clock) -> None:
    """Start an inference just in time for the tick at 100.1 that hangs past it (came late)."""
    runner.latencies_ms.extend([1.0] * JIT_MIN_LATENCIES)  # as if measured
    policy.gate.clear()
    clock.t = 100.099
    runner.submit_frame(FRAME)
    wait_for(lambda: runner.status()['busy'])
    clock.t = 100.1


def test_a_late_result_makes_a_late_command_and_widens_the_margin():
    clock = ScriptedClock()
    policy = ScriptedPolicy([0.01] + [0.0] * 6)
    runner = just_in_time_runner(policy, clock)
    try:
        assert runner.jit_margin_s == JIT_MARGIN_S
        late_inference(runner, policy, clock)
        ticks = runner.counters.ticks
        waiting = runner.tick(planned=100.1)  # its action is in flight: the tick waits for it
        assert waiting.kind == 'waiting' and waiting.command is None
        assert waiting.retry_until == pytest.approx(100.1 + LATE_TICK_S)
        assert runner.jit_margin_s == pytest.approx(2 * JIT_MARGIN_S)
        assert runner.status()['jit_margin_ms'] == pytest.approx(2e3 * JIT_MARGIN_S)
        assert not runner.delivered.is_set()
        policy.gate.set()  # each finished inference takes 1 ms off, down to the floor
        wait_for(runner.delivered.is_set)
        assert runner.jit_margin_s == pytest.approx(2 * JIT_MARGIN_S - JIT_MARGIN_DECAY_S)
        clock.t = 100.104
        late = runner.tick(planned=100.1)  # the same tick, run again: a command 4 ms late
        assert late.kind == 'action' and late.command[0] == pytest.approx(0.01)
        assert runner.lateness_ms[-1] == pytest.approx(4.0)
        assert runner.counters.ticks == ticks + 1 and runner.counters.starved_ticks == 0
    finally:
        policy.gate.set()
        runner.worker.stop()


def test_a_failed_step_ends_a_waiting_tick_at_once():
    clock = ScriptedClock()
    policy = ScriptedPolicy([0.01] + [0.0] * 6, RuntimeError('device lost'))
    runner = just_in_time_runner(policy, clock)
    try:
        late_inference(runner, policy, clock)
        assert runner.tick(planned=100.1).kind == 'waiting'
        policy.gate.set()
        wait_for(runner.delivered.is_set)  # the error wakes the tick: no 40 ms wait for it
        hold = runner.tick(planned=100.1)
        assert hold.kind == 'hold' and 'device lost' in hold.fault
    finally:
        policy.gate.set()
        runner.worker.stop()


def test_a_result_later_than_the_wait_starves_its_tick():
    clock = ScriptedClock()
    policy = ScriptedPolicy([0.01] + [0.0] * 6)
    runner = just_in_time_runner(policy, clock)
    try:
        late_inference(runner, policy, clock)
        assert runner.tick(planned=100.1).kind == 'waiting'
        clock.t = 100.1 + LATE_TICK_S
        assert runner.tick(planned=100.1).kind == 'starved'  # its wait is over
        assert runner.counters.starved_ticks == 1 and runner.counters.boundary_stalls == 1
        assert runner.jit_margin_s == pytest.approx(2 * JIT_MARGIN_S)  # doubled once
        clock.t = 100.2  # still in flight at the next tick: that one waits too, then starves
        assert runner.tick(planned=100.2).kind == 'waiting'
        clock.t = 100.2 + LATE_TICK_S
        assert runner.tick(planned=100.2).kind == 'starved'
        assert runner.counters.starved_ticks == 2 and runner.counters.ticks == 3
    finally:
        policy.gate.set()
        runner.worker.stop()
