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

"""Several robots, one model: the batched forward and the worker that batches runners (no ROS)."""

from conftest import LIMITS, ScriptedClock, wait_for
import numpy as np
import pytest
import torch

from flashvla_ros.accel.registry import accelerate, parse_accel
from flashvla_ros.bench.batching import measure_batches
from flashvla_ros.control.runner import PolicyRunner, RunnerSettings
from flashvla_ros.control.worker import InferenceWorker
from flashvla_ros.policy import Observation, load_policy
from flashvla_ros.policy.decode import decode_rows
from flashvla_ros.policy.errors import InputError
from flashvla_ros.policy.flops import StepRecord
from flashvla_ros.policy.presets import model_path
from flashvla_ros.sim.tasks import Episode

# Seeds whose instructions differ in length: the batch pads the shorter prompts.
SEEDS = (3, 1000, 2001)


def lockstep(single: list, shared, steps: int = 6) -> list[tuple]:
    """Drive one episode per robot: each robot alone, and all of them in one batch per step."""
    robots = [shared.for_robot() for _ in single]
    episodes = [Episode(seed, max_steps=40) for seed in SEEDS[:len(single)]]
    pairs = []
    for _ in range(steps):
        observations = [Observation(e.observe(), e.instruction) for e in episodes]
        alone = [p.predict(o) for p, o in zip(single, observations, strict=True)]
        together = shared.predict_batch(list(zip(robots, observations, strict=True)))
        pairs += list(zip(alone, together, strict=True))
        for episode, chunk in zip(episodes, alone, strict=True):
            episode.step(chunk.values)
    return pairs


@pytest.mark.parametrize('spec', ['flashvla:keep_fraction=0.5', 'flashvla:fast',
                                  'efficientvla:preset=,keep_fraction=0.5'])
def test_a_batch_gives_each_robot_what_it_alone_would_get(tiny_dir, spec):
    names, options = parse_accel(spec)
    single = [accelerate(load_policy(tiny_dir), names, options) for _ in SEEDS]
    shared = accelerate(load_policy(tiny_dir), names, options)
    shared.serve(len(SEEDS))
    pairs = lockstep(single, shared)
    assert len({len(Episode(s).instruction) for s in SEEDS}) > 1  # prompts of other lengths
    for alone, together in pairs:
        assert together.token_ids == alone.token_ids
        assert together.info.reused == alone.info.reused
        assert together.info.kept_tokens == alone.info.kept_tokens
        if together.info.decode_calls == alone.info.decode_calls:  # drafts may cut differently
            assert together.info.flops.total == alone.info.flops.total
    inferred = [t.info.extras['batch'] for _, t in pairs if not t.info.reused]
    assert max(inferred) == len(SEEDS)  # one forward for every robot that inferred


def test_a_batch_of_diffusion_heads_samples_each_robots_own_noise():
    # The embedded default-dit: a batched DiT differs from batch 1 in the last bits (its
    # timestep embedding, the matmuls), which random weights amplify a hundredfold.
    single = [load_policy(model_path('default-dit')) for _ in SEEDS]
    shared = load_policy(model_path('default-dit'))
    shared.serve(len(SEEDS))
    for alone, together in lockstep(single, shared, steps=3):
        np.testing.assert_allclose(together.actions, alone.actions, atol=1e-5)
        assert together.info.record.dit_parts == alone.info.record.dit_parts


def test_one_robots_bad_input_or_nan_stays_that_robots(tiny_dir):
    shared = load_policy(tiny_dir)
    shared.serve(3)
    robots = [shared.for_robot() for _ in range(3)]
    frame = Episode(3).observe()
    results = shared.predict_batch([(robots[0], Observation(frame, 'pick up the block')),
                                    (robots[1], Observation(frame[:5], 'pick up the block')),
                                    (robots[2], Observation(frame, ''))])
    assert not isinstance(results[0], Exception)
    assert isinstance(results[1], InputError) and isinstance(results[2], InputError)
    llm = shared.model.language_model
    first = torch.zeros(2, llm.cfg.vocab_size)
    first[1, 5] = float('nan')
    llm.reset_cache()
    _, finite = decode_rows(llm, range(llm.num_layers), first, 0, 3, None,
                            [StepRecord(shared.layout(4), llm.num_layers, []) for _ in range(2)])
    assert finite == [True, False]


def test_static_cache_is_refused_for_batches_and_kept_for_one(tiny_dir):
    policy = load_policy(tiny_dir, static_cache=True)
    with pytest.raises(ValueError, match='static_cache'):
        policy.serve(2)
    policy.serve(1)  # one robot per forward: the static cache stays
    frame = Episode(3).observe()
    static = policy.predict(Observation(frame, 'pick up the block'))
    plain = load_policy(tiny_dir).predict(Observation(frame, 'pick up the block'))
    assert static.token_ids == plain.token_ids


def runners_and_worker(policy, count: int, clock=None):
    worker = InferenceWorker(policy.predict_batch, window_s=0.05, max_batch=count)
    runners = [PolicyRunner(policy.for_robot(), RunnerSettings(LIMITS), worker,
                            clock or ScriptedClock()) for _ in range(count)]
    return runners, worker


def test_the_worker_batches_runners_and_a_stale_camera_holds_only_its_robot(tiny_dir):
    policy = accelerate(load_policy(tiny_dir), ['flashvla'], {})
    policy.serve(3)
    clock = ScriptedClock()
    runners, worker = runners_and_worker(policy, 3, clock)
    episodes = [Episode(seed) for seed in SEEDS]
    worker.start()
    try:
        for runner, episode in zip(runners, episodes, strict=True):
            runner.set_instruction(episode.instruction)
        for _ in range(4):  # every robot's frame, then every robot's tick
            for runner, episode in zip(runners, episodes, strict=True):
                runner.submit_frame(episode.observe())
            wait_for(lambda: all(r.status()['queue'] for r in runners))
            assert [r.tick().kind for r in runners] == ['action'] * 3
        assert worker.batches < worker.batched_steps  # several robots per forward
        # r3's camera stops: only r3 holds, and says why.
        clock.t += 0.6
        for runner, episode in zip(runners[:2], episodes[:2], strict=True):
            runner.submit_frame(episode.observe())
        wait_for(lambda: all(r.status()['queue'] for r in runners[:2]))
        ticks = [r.tick() for r in runners]
        assert [t.kind for t in ticks] == ['action', 'action', 'hold']
        assert 'camera stale' in ticks[2].fault
    finally:
        worker.stop()
    assert not worker.serving and not any(r.worker_alive for r in runners)


def test_a_dead_model_holds_every_robot_with_the_reason(tiny_dir):
    policy = load_policy(tiny_dir)
    policy.serve(2)
    runners, worker = runners_and_worker(policy, 2)

    def lost(*args):
        raise RuntimeError('CUDA error: device lost')

    policy.model.vision_backbone.forward = lost  # the device dies under the shared forward
    worker.start()
    try:
        for runner in runners:
            runner.set_instruction('pick up the block')
            runner.submit_frame(Episode(3).observe())
        wait_for(lambda: all(r.status()['worker_errors'] for r in runners))
        ticks = [r.tick() for r in runners]
    finally:
        worker.stop()
    assert [t.kind for t in ticks] == ['hold', 'hold']
    assert all('device lost' in t.fault for t in ticks)


@pytest.mark.slow  # a benchmark tool: its report's shape (the forward is tested above)
def test_the_batch_benchmark_reports_each_size_against_one(tmp_path):
    report = measure_batches('tiny', steps=2, batches=(1, 2), log=lambda *a: None)
    assert [r['batch'] for r in report['rows']] == [1, 2]
    assert report['rows'][0]['vs_batch_1']['total'] == 1.0
    assert report['rows'][1]['total_ms'] > 0
