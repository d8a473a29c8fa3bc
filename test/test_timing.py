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

"""The tick's schedule and the timing figures, on scripted clocks and records (no ROS)."""

import threading

from conftest import LIMITS, ScriptedClock
import numpy as np
import pytest

from flashvla_ros.control.runner import PolicyRunner, RunnerSettings
from flashvla_ros.control.ticker import FixedRateLoop
from flashvla_ros.control.timing import (
    BUSY,
    CommandRecord,
    command_figures,
    enough_samples,
    missed_targets,
    unjudged_targets,
)
from flashvla_ros.control.worker import InferenceWorker


class ScriptedLoop(FixedRateLoop):
    """The loop on a scripted clock: each wait moves the clock to its end, nothing else."""

    def _wait(self, seconds: float, wake=None) -> bool:
        self.clock.t += seconds
        return self._stop.is_set()


def run_loop(clock: ScriptedClock, ticks: int, on_tick) -> tuple[list[float], FixedRateLoop]:
    """Run a 0.1 s loop on `clock` for `ticks` ticks; `on_tick(i)` may move the clock."""
    planned: list[float] = []

    def tick(p: float) -> None:
        planned.append(p)
        on_tick(len(planned) - 1)
        if len(planned) == ticks:
            loop._stop.set()  # the loop ends after this tick

    loop = ScriptedLoop(0.1, tick, clock)
    loop._run()  # in this thread: deterministic
    return planned, loop


def test_the_schedule_keeps_its_phase_and_skips_what_a_late_tick_cost():
    clock = ScriptedClock(50.0)

    def on_tick(i: int) -> None:
        if i == 3:
            clock.t += 0.25  # this tick took 2.5 periods: the next is a period late, skipped

    planned, loop = run_loop(clock, 8, on_tick)
    steps = np.round(np.diff(planned) / 0.1).astype(int).tolist()
    assert steps == [1, 1, 1, 2, 1, 1, 1]  # on the grid, one tick skipped, no burst
    assert loop.skipped == 1
    assert np.allclose(np.diff(planned) / 0.1, np.round(np.diff(planned) / 0.1))


def test_a_waiting_tick_runs_again_when_woken_or_at_its_deadline():
    clock = ScriptedClock(50.0)
    wake = threading.Event()
    calls: list[tuple[float, float]] = []  # (planned, clock) of every call

    def tick(p: float) -> float | None:
        calls.append((p, clock.t))
        if len(calls) == 1:  # its action is in flight: it lands 3 ms later
            clock.t += 0.003
            wake.set()
            return p + 0.02
        if len(calls) == 3:  # nothing lands: run again at the deadline
            wake.clear()  # (the runner clears it when its tick starts waiting)
            return p + 0.02
        if len(calls) == 5:
            loop._stop.set()
        return None

    loop = ScriptedLoop(0.1, tick, clock, wake=wake)
    loop._run()
    planned = [p for p, _ in calls]
    assert planned == pytest.approx([50.1, 50.1, 50.2, 50.2, 50.3])  # the same tick again
    assert calls[1][1] == pytest.approx(50.103)  # at once when woken
    assert calls[3][1] == pytest.approx(50.22)  # else at its deadline
    assert loop.skipped == 0


def test_a_clock_that_jumps_back_restarts_the_schedule():
    clock = ScriptedClock(50.0)

    def on_tick(i: int) -> None:
        if i == 2:
            clock.t -= 30.0  # a sim reset

    planned, loop = run_loop(clock, 5, on_tick)
    assert planned[3] < planned[2] - 29 and loop.skipped == 0
    assert np.diff(planned[3:]) == pytest.approx([0.1])


def test_sim_time_starts_the_schedule_at_its_first_clock_message():
    clock = ScriptedClock(0.0)
    planned: list[float] = []

    class SimLoop(ScriptedLoop):
        def _wait(self, seconds: float, wake=None) -> bool:
            if clock.t == 0.0:
                clock.t = 1000.0  # /clock arrives
                return False
            return super()._wait(seconds, wake)

    def tick(p: float) -> None:
        planned.append(p)
        if len(planned) == 2:
            loop._stop.set()

    loop = SimLoop(0.1, tick, clock)
    loop._run()
    assert planned == pytest.approx([1000.1, 1000.2]) and loop.skipped == 0


def test_stopping_the_loop_wakes_it_at_once():
    loop = FixedRateLoop(10.0, lambda p: None, lambda: 0.0)  # a tick every 10 s
    loop.start()
    assert loop.running
    stopped = threading.Event()
    threading.Thread(target=lambda: (loop.stop(), stopped.set()), daemon=True).start()
    assert stopped.wait(2.0)  # far sooner than the 10 s wait
    assert not loop.running


def test_the_runner_records_each_ticks_lateness_against_its_planned_time():
    clock = ScriptedClock(10.0)
    runner = PolicyRunner(None, RunnerSettings(LIMITS), InferenceWorker(list), clock)
    for late in (0.0, 0.002, 0.010):
        runner.tick(planned=clock.t - late)
    assert list(runner.lateness_ms) == pytest.approx([0.0, 2.0, 10.0])
    status = runner.status()
    assert status['tick_lateness_max_ms'] == pytest.approx(10.0)
    assert runner.counters.ticks == 3


def records(planned, arrival_late_ms, sources, kinds, episodes):
    return [CommandRecord(p + late / 1e3, p, s, k, e)
            for p, late, s, k, e in zip(planned, arrival_late_ms, sources, kinds, episodes,
                                        strict=True)]


def test_figures_from_an_outside_subscriber():
    period = 0.1
    # Episode 1: a hold at start-up, then actions at ticks 1-5, tick 4 missing (skipped or
    # starved); chunks of two actions (same source frame), 1 ms late, tick 5 is 30 ms late.
    planned = [0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 1.1]
    late = [1.0, 1.0, 1.0, 1.0, 30.0, 1.0, 1.0]
    sources = [0.0, 0.05, 0.05, 0.25, 0.25, 0.95, 0.95]
    kinds = ['hold'] + ['action'] * 6
    episodes = ['1'] * 5 + ['2'] * 2
    f = command_figures(records(planned, late, sources, kinds, episodes), period)
    assert f['commands'] == 6 and f['holds'] == 1 and f['episodes'] == 2
    # On the node's clock: episode 1, 4 actions planned over 0.1..0.5 plus a period (the
    # late arrival of the last one does not count); episode 2, 2 actions over 0.1 s plus one.
    assert f['command_rate_hz'] == pytest.approx(6 / (0.4 + 0.1 + 0.1 + 0.1))
    assert f['missed_ticks'] == f['skipped_ticks'] == 1
    assert f['missed_share'] == pytest.approx(1 / (5 + 2))
    # The skipped tick 0.4 waited for the command that arrived at 0.530: 130 ms late.
    assert f['ticks'] == 8 and f['lateness_max_ms'] == pytest.approx(130.0)
    assert f['lateness_p50_ms'] == pytest.approx(1.0)
    # First action of each chunk: 0.101-0.05, 0.301-0.25, 1.001-0.95 s.
    assert f['first_action_p50_ms'] == pytest.approx(51.0) and f['chunks'] == 3
    misses = missed_targets(f, period, inference_p50_ms=10.0, camera_period_s=1 / 30)
    assert any(m.startswith('command rate') for m in misses)
    assert 'skipped ticks 1 > 0' in misses
    assert 'tick lateness max 130.0 ms > 20 ms' in misses
    assert any(m.startswith('missed ticks') for m in misses)
    assert not any(m.startswith(('frame to first action', 'tick lateness p99')) for m in misses)
    assert unjudged_targets(f) == ['too short to judge p99 (8 ticks)',
                                   'too short to judge frame to first action p50 (3 chunks)']


def test_a_skipped_tick_is_as_late_as_the_next_command_and_a_hold_skips_nothing():
    period = 0.1
    # Episode 1: actions at ticks 0, 1, 2, 5, 6 (3 and 4 sent nothing), 2 ms late each but
    # the last (50 ms). Episode 2: an action, a hold, two ticks of nothing (the node sends
    # nothing after a hold by design), an action.
    planned = [0.0, 0.1, 0.2, 0.5, 0.6, 1.0, 1.1, 1.4]
    late = [2.0, 2.0, 2.0, 2.0, 50.0, 2.0, 2.0, 2.0]
    kinds = ['action'] * 5 + ['action', 'hold', 'action']
    f = command_figures(records(planned, late, planned, kinds, ['1'] * 5 + ['2'] * 3), period)
    assert f['skipped_ticks'] == 2 and f['missed_ticks'] == 4 and f['ticks'] == 10
    # Ticks 0.3 and 0.4 got their command when tick 0.5's arrived, at 0.502.
    assert f['lateness_max_ms'] == pytest.approx(202.0)
    assert np.percentile([2.0] * 6 + [50.0, 2.0, 202.0, 102.0], 99) == \
        pytest.approx(f['lateness_p99_ms'])
    # Node clock: 5 actions over 0.0..0.6 and 2 over 1.0..1.4, each span plus a period.
    assert f['command_rate_hz'] == pytest.approx(7 / (0.7 + 0.5))


def test_a_percentile_is_judged_on_ten_samples_beyond_it():
    assert not enough_samples(999, 99) and enough_samples(1000, 99)
    assert not enough_samples(19, 50) and enough_samples(20, 50)


def test_figures_that_meet_the_targets_say_so():
    period = 0.1
    planned = [i * period for i in range(1000)]
    f = command_figures(records(planned, [2.0] * 1000, [p - 0.04 for p in planned],
                                ['action'] * 1000, ['7'] * 1000), period)
    assert f['command_rate_hz'] == pytest.approx(10.0, rel=1e-3)
    assert missed_targets(f, period, 20.0, 1 / 30) == [] == unjudged_targets(f)
    assert missed_targets({**f, 'lateness_p99_ms': 8.0}, period, 20.0, 1 / 30, BUSY) == []
    assert missed_targets({**f, 'lateness_p99_ms': 8.0}, period, 20.0, 1 / 30) == [
        'tick lateness p99 8.0 ms > 5 ms']


def test_a_tick_that_raises_is_reported_and_the_ticks_go_on():
    clock, errors, planned = ScriptedClock(50.0), [], []

    def tick(p: float) -> None:
        planned.append(p)
        if len(planned) == 2:
            raise RuntimeError('a bug in one tick')
        if len(planned) == 4:
            loop._stop.set()

    loop = ScriptedLoop(0.1, tick, clock, on_error=errors.append)
    loop._run()
    assert len(planned) == 4 and loop.errors == 1
    assert [str(e) for e in errors] == ['a bug in one tick']


class RecordedProbe:
    """What flashvla-demo's summary reads of its CommandProbe: records and their figures."""

    def __init__(self, records: list[CommandRecord]) -> None:
        self.records = records

    def figures(self, period_s: float, since: float = 0.0) -> dict[str, float]:
        return command_figures([r for r in self.records if r.arrival >= since], period_s)


@pytest.mark.parametrize('ticks, late_ms, verdict', [
    (1000, [2.0], 'meets its timing targets (docs/TIMING.md)'),
    (1000, [30.0], 'MISSES its timing targets: tick lateness max 30.0 ms > 20 ms'),
    # A newcomer's healthy short run: its p99 is nearly its maximum, and is not judged.
    (99, [5.1, 5.2], 'meets the timing targets it can judge (docs/TIMING.md); '
                     'too short to judge p99 (99 ticks)'),
    (99, [30.0], 'MISSES its timing targets: tick lateness max 30.0 ms > 20 ms (too short '
                 'to judge p99 (99 ticks))'),
])
def test_the_demo_summary_says_whether_the_targets_are_met(capsys, ticks, late_ms, verdict):
    from flashvla_ros.ros.demo import summarize

    planned = [i * 0.1 for i in range(ticks)]
    lateness = [2.0] * (ticks - len(late_ms)) + late_ms
    # The hold at activation is start-up, left out: it is 500 ms late here.
    start = [CommandRecord(-0.5, -1.0, 0.0, 'hold', '0')]
    probe = RecordedProbe(start + records(planned, lateness, [p - 0.03 for p in planned],
                                          ['action'] * ticks, ['1'] * ticks))
    summarize([], {'control_rate_hz': '10.0', 'latency_p50_ms': '20.0'}, probe)
    out = capsys.readouterr().out
    assert 'commands per second while commanding (node clock): 10.00' in out
    assert f'{ticks} ticks' in out and 'skipped ticks (no command, counted late until the ' \
        'next one): 0' in out and 'holds: 0' in out
    assert out.rstrip().endswith(verdict), out


def test_the_demo_status_line_is_rewritten_on_a_terminal_and_seldom_in_a_log(capsys):
    from flashvla_ros.ros.demo import LOG_STATUS_S, StatusPrinter

    log, terminal = StatusPrinter(terminal=False), StatusPrinter(terminal=True)
    for i in range(250):  # 25 s at the demo's 10 polls a second
        state = ('commanding', 'episode 2' if i >= 123 else 'episode 1')
        log(i / 10, f'line {i}', state)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ['line 0', 'line 100', 'line 123', 'line 223'] and LOG_STATUS_S == 10.0
    terminal(0.0, 'line 0', None)
    terminal(0.1, 'line 1', None)
    out = capsys.readouterr().out
    assert out.count('\r') == 2 and '\n' not in out


def test_the_demo_summary_of_several_robots_has_each_robots_figures(capsys):
    from flashvla_ros.ros.demo import summarize_robots

    planned = [i * 0.1 for i in range(100)]
    frames = [p - 0.03 for p in planned]
    probes = {robot: RecordedProbe(records(planned, [late] * 100, frames, ['action'] * 100,
                                           ['1'] * 100))
              for robot, late in (('r1', 2.0), ('r2', 30.0))}
    results = {'r1': [{'success': True}], 'r2': [{'success': False}, {'success': True}]}
    status = {'control_rate_hz': '10.0', 'batched_steps': '180', 'batches': '100',
              'mean_batch': '1.8', 'max_batch': '8', 'batch_window_s': '0.02',
              'accel': 'flashvla'}
    robot_status = {r: {'latency_p50_ms': '20.0', 'policy_reuse_rate': '0.25'} for r in probes}
    summarize_robots(results, status, robot_status, probes)
    rows = {line.split('|')[1].strip(): line for line in capsys.readouterr().out.splitlines()
            if line.startswith('| r')}
    assert '| 1 | 1 | 10.00 |' in rows['r1'] and '| 0 |' in rows['r1']  # no skipped tick
    assert rows['r1'].endswith('| too short to judge p99 (100 ticks) |')
    assert '| 2 | 1 |' in rows['r2'] and 'tick lateness max 30.0 ms > 20 ms' in rows['r2']
