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

"""One chunk executor: a bench episode and the node's runner command the same, step by step."""

from conftest import ScriptedClock, settle
import numpy as np
import pytest

from flashvla_ros.accel.registry import accelerate, parse_accel
from flashvla_ros.bench.run import ConfigRun, run_episode
from flashvla_ros.control.chunks import ChunkExecution, ChunkExecutor, Planned
from flashvla_ros.control.runner import JIT_MIN_LATENCIES, PolicyRunner, RunnerSettings
from flashvla_ros.control.safety import SafetyLimits
from flashvla_ros.control.worker import InferenceWorker
from flashvla_ros.policy import load_policy
from flashvla_ros.policy.presets import model_path
from flashvla_ros.sim.tasks import Episode

WIDE = SafetyLimits.from_lists([1.0] * 7, [-1e3] * 7, [1e3] * 7)  # commands = actions
SEED, STEPS = 1_000_007, 24


def through_the_runner(policy, chunks: ChunkExecution) -> list[np.ndarray]:
    """
    Run the bench's episode through a runner and its worker, on a scripted clock at 10 Hz.

    Just in time (the node's default): each step's frame arrives halfway through the period,
    after the last command moved the scene, and the inference starts just before the tick
    that needs it, on that frame: the bench's observation.
    """
    worker = InferenceWorker(policy.predict_batch)
    clock = ScriptedClock()
    runner = PolicyRunner(policy, RunnerSettings(WIDE, 5.0, 5.0, 60.0, chunks, 0.1), worker,
                          clock)
    episode = Episode(SEED, 'push', max_steps=STEPS)
    commands = []
    worker.start()
    try:
        runner.set_instruction(episode.instruction)
        for k in range(1, 10 * STEPS):
            if episode.done:
                break
            clock.t = 100.0 + 0.1 * k - 0.05
            runner.latencies_ms.clear()  # as if each step took 1 ms: it starts 11 ms early
            runner.latencies_ms.extend([1.0] * JIT_MIN_LATENCIES)
            runner.submit_frame(episode.observe())
            settle(worker)  # not due yet: the tick is 50 ms away
            clock.t += 0.049
            settle(worker)  # due now, if this tick needs a new action
            clock.t += 0.001
            tick = runner.tick(planned=clock.t)
            if tick.kind == 'starved':  # a reuse continued a chunk that had run out
                continue
            assert tick.kind == 'action', tick.fault
            episode.step(tick.command)
            commands.append(tick.command)
    finally:
        worker.stop()
    return commands


@pytest.fixture(scope='module')
def reusing():
    """Load the embedded default-dit with FlashVLA reusing chunks (a reuse continues one)."""
    return accelerate(load_policy(model_path('default-dit')), *parse_accel('flashvla:reuse'))


@pytest.mark.parametrize('chunks', [ChunkExecution(steps=4, just_in_time=True),
                                    ChunkExecution('ensemble', just_in_time=True)],
                         ids=['execute 4', 'ensemble'])
def test_the_bench_and_the_runner_command_the_same(reusing, chunks):
    policy = reusing
    run = ConfigRun('flashvla:reuse', {}, policy, chunks=chunks)
    run_episode(run, Episode(SEED, 'push', max_steps=STEPS), baseline=None)
    assert any(run.reused)  # the reuse gate's continuation is part of what is compared
    bench = run.commands[0]
    node = through_the_runner(policy, chunks)
    assert len(node) == len(bench) > 4
    for step, (a, b) in enumerate(zip(bench, node, strict=True)):
        assert np.array_equal(a, b), f'step {step}: bench {a} node {b}'


def test_a_reused_chunk_continues_and_a_mode_change_drops_the_plan():
    executor: ChunkExecutor[Planned] = ChunkExecutor(ChunkExecution(steps=2))
    plan = [Planned(np.full(7, float(i))) for i in range(5)]
    executor.add(plan, reused=False, first_step=1)
    assert [executor.next(s, Planned.blend)[0].values[0] for s in (1, 2)] == [0.0, 1.0]
    assert executor.wants(3)
    executor.add(plan, reused=True, first_step=3)  # rows 2-3, not 0-1 again
    assert [executor.next(s, Planned.blend)[0].values[0] for s in (3, 4)] == [2.0, 3.0]
    executor.add(plan, reused=False, first_step=5)
    executor.reconfigure(ChunkExecution('ensemble'))
    assert executor.next(5, Planned.blend) == (None, [])
    with pytest.raises(ValueError, match='for_model'):
        ChunkExecutor(ChunkExecution(steps=-1))
