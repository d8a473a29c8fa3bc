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

"""LIBERO training data without LIBERO: the frame cache and the data source on a stand-in world."""

from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np
import pytest

from flashvla_ros.policy.actions import NormStats
from flashvla_ros.sim.openvla_protocol import unnorm_key
from flashvla_ros.train import libero_frames as lf
from flashvla_ros.train import libero_train as lt
from flashvla_ros.train.libero_data import load_task, save_task, task_file
from flashvla_ros.train.trainer import TrainConfig, train


@dataclass
class StandIn:
    """Draws a frame whose colour is its qpos: what LiberoWorld.render_state is to the cache."""

    render: str = 'openvla'
    center_crop: bool = False

    def render_state(self, task: int, qpos: np.ndarray) -> np.ndarray:
        frame = np.zeros((224, 224, 3), np.uint8)
        frame[:, :] = (np.asarray(qpos[:3]) * 200).astype(np.uint8)
        frame[:112, :112, task % 3] = 255
        return frame


def demonstrations(seed: int, steps: tuple[int, ...], success: tuple[bool, ...],
                   instruction: str) -> dict[str, np.ndarray]:
    """Return a task file's arrays: random states and commands (gripper 0/1)."""
    rng = np.random.default_rng(seed)
    n = sum(steps)
    action = rng.uniform(-1, 1, (n, 7)).astype(np.float32)
    action[:, 6] = rng.integers(0, 2, n)
    return {'qpos': rng.uniform(0, 1, (n, 5)).astype(np.float32), 'action': action,
            'episode': np.repeat(np.arange(len(steps)), steps).astype(np.int32),
            'ep_seed': 1_000_000 + np.arange(len(steps)), 'ep_success': np.array(success),
            'ep_steps': np.array(steps), 'instruction': np.array(instruction)}


@pytest.fixture
def cached(tmp_path: Path) -> tuple[Path, Path]:
    data, cache = tmp_path / 'data', tmp_path / 'frames'
    world = StandIn()
    for task, (steps, success) in enumerate([((4, 3, 5), (True, False, True)),
                                             ((6,), (True,))]):
        save_task(task_file(data, 'libero_object', task),
                  demonstrations(task, steps, success, f'pick up thing {task}'))
        lf.cache_task(world, load_task(task_file(data, 'libero_object', task)), cache,
                      'libero_object', task, log=lambda *_, **__: None)
    return data, cache


def test_only_successful_episodes_are_cached_and_a_torn_write_is_cut(cached):
    data, cache = cached
    frames = lf.TaskFrames.open(cache, 'libero_object', 0)
    assert len(frames) == 4 + 5 and list(frames.episodes()) == [1_000_000, 1_000_002]
    demos = load_task(task_file(data, 'libero_object', 0))
    expected = StandIn().render_state(0, demos['qpos'][7])  # episode 2's first step
    assert np.abs(frames.frame(4).astype(int) - expected).mean() < 2
    stream, _ = lf.cache_paths(cache, 'libero_object', 0)
    with open(stream, 'ab') as f:
        f.write(b'torn')
    assert lf.cache_task(StandIn(), demos, cache, 'libero_object', 0) == (0, 0.0)
    demos = {**demos, 'ep_success': np.ones(3, bool)}  # a third episode now counts
    assert lf.cache_task(StandIn(), demos, cache, 'libero_object', 0, log=lambda *_, **__: None
                         )[0] == 3
    assert stream.stat().st_size == lf.TaskFrames.open(cache, 'libero_object', 0
                                                       ).index['offsets'][-1]


def test_the_data_source_pools_the_statistics_under_the_suites_key(cached, tmp_path):
    data, cache = cached
    source = lt.load(data, cache, tmp_path / 'run', log=lambda *_: None)
    assert len(source.data['action']) == 4 + 5 + 6 and len(source.data['ep_seed']) == 3
    assert source.data['ep_instruction'].tolist() == ['pick up thing 0'] * 2 + ['pick up thing 1']
    assert len(source.corpus) == 2
    assert unnorm_key('libero_object', source.norm_stats) == 'libero_object'
    stats = source.norm_stats['libero_object']['action']
    assert stats['mask'] == [True] * 6 + [False] and stats['q01'][6] == 0.0
    assert source.norm_stats['libero_object']['num_trajectories'] == 3
    both = lt.norm_stats(source.data['action'], 3, ['libero_object', 'libero_spatial'])
    assert both['libero_object'] == both['libero_spatial']
    assert unnorm_key('libero_spatial', both) == 'libero_spatial'
    # A resumed run keeps its selection although the cache grew.
    grown = load_task(task_file(data, 'libero_object', 0))
    lf.cache_task(StandIn(), {**grown, 'ep_success': np.ones(3, bool)}, cache, 'libero_object',
                  0, log=lambda *_, **__: None)
    again = lt.load(data, cache, tmp_path / 'run', log=lambda *_: None)
    assert len(again.data['action']) == len(source.data['action'])
    assert len(lt.load(data, cache, None, log=lambda *_: None).data['action']) == 4 + 5 + 6
    _, norm = NormStats.select(again.norm_stats, again.key)
    assert np.array_equal(norm.q99, NormStats.select(source.norm_stats, source.key)[1].q99)


@pytest.mark.slow  # a few seconds: two short training runs
def test_training_on_libero_data_resumes(cached, tmp_path):
    data, cache = cached
    cfg = TrainConfig(steps=4, batch=2, head='diffusion', layers=2, dit_hidden=32,
                      noise_draws=2, save_every=2, warmup=1, chunk_labels='next', threads=1)
    out = tmp_path / 'model'
    assert train(data, out, cfg, log=lambda *_: None, stop_after=2, libero_frames=cache) is None
    summary = train(data, out, cfg, log=lambda *_: None, libero_frames=cache)
    assert summary['steps_done'] == 4 and summary['samples'] == 15
    config = json.loads((out / 'config.json').read_text())
    assert list(config['norm_stats']) == ['libero_object']
    assert all(h['vision_loss'] == 0.0 for h in summary['history'])


def test_random_shift_moves_the_frame_within_its_bound():
    from flashvla_ros.train.libero_train import SHIFT_PX, random_shift
    frame = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    shifts = set()
    for seed in range(30):
        out = random_shift(frame, np.random.default_rng(seed))
        assert out.shape == frame.shape and out.dtype == frame.dtype
        # Find the shift: the interior is the frame moved by (dy, dx), |dy|, |dx| <= SHIFT_PX.
        found = [(dy, dx) for dy in range(-SHIFT_PX, SHIFT_PX + 1)
                 for dx in range(-SHIFT_PX, SHIFT_PX + 1)
                 if np.array_equal(out[20:-20, 20:-20], frame[20 + dy:204 + dy, 20 + dx:204 + dx])]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 10  # random, not one fixed offset
    same = random_shift(frame, np.random.default_rng(3))
    assert np.array_equal(same, random_shift(frame, np.random.default_rng(3)))


def test_the_generator_gives_up_a_task_the_expert_cannot_do(tmp_path, monkeypatch):
    import flashvla_ros.sim.libero as libero_module
    from flashvla_ros.train import libero_data

    class World:  # two tasks: the expert fails the first every time, solves the second
        n_tasks = 2

        def __init__(self, suite):
            pass

        def init_states(self, task):
            return np.zeros((1, 3))

        def instruction(self, task):
            return f'task {task}'

        def task_name(self, task):
            return f'task_{task}'

        def close(self):
            pass

    def record(world, task, seed, evaluation):
        return {'episode': np.zeros(1, np.int32), 'qpos': np.zeros((1, 3), np.float32),
                'action': np.zeros((1, 7), np.float32), 'joint_pos': np.zeros((1, 7)),
                'gripper_qpos': np.zeros((1, 2)), 'eef_pos': np.zeros((1, 3)),
                'eef_quat': np.zeros((1, 4)), 'ep_seed': np.array([seed]),
                'ep_success': np.array([task == 1]), 'ep_steps': np.array([1])}
    monkeypatch.setattr(libero_module, 'LiberoWorld', World)
    monkeypatch.setattr(libero_data, 'record_episode', record)
    said = []
    libero_data.generate('libero_spatial', None, 10, tmp_path, log=lambda *a, **k: said.append(a))
    hopeless = load_task(task_file(tmp_path, 'libero_spatial', 0))
    assert len(hopeless['ep_seed']) == libero_data.HOPELESS and not hopeless['ep_success'].any()
    assert 'gave up after 20 episodes, 0 succeeded' in str(said)
    assert load_task(task_file(tmp_path, 'libero_spatial', 1))['ep_success'].sum() == 10
