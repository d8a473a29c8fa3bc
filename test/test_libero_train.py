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

"""Training on LIBERO (the LIBERO tier): the frame cache, and a batch from the committed data."""

import json
from pathlib import Path

import numpy as np
import pytest

from flashvla_ros.policy.actions import ActionCodec, NormStats
from flashvla_ros.policy.openvla import OpenVLA
from flashvla_ros.policy.preprocess import preprocess
from flashvla_ros.policy.tokenizer import build_llama_tokenizer
from flashvla_ros.sim.libero import LiberoWorld
from flashvla_ros.sim.openvla_protocol import unnorm_key
from flashvla_ros.train import libero_frames as lf
from flashvla_ros.train import libero_train as lt
from flashvla_ros.train.libero_data import load_task, save_task, task_file
from flashvla_ros.train.libero_train import random_shift
from flashvla_ros.train.trainer import (
    AuxHeads,
    TrainConfig,
    init_model,
    losses,
    model_config,
)

pytest.importorskip('libero')  # the modules above import LIBERO only when used
pytest.importorskip('robosuite')

pytestmark = pytest.mark.libero

DATA = Path(__file__).resolve().parent.parent / 'data' / 'libero'
SUITE, TASK = 'libero_object', 0
STEPS = (5, 3)  # the first steps kept of the task's first two successful episodes


def trimmed(episodes: int) -> dict[str, np.ndarray]:
    """Return the committed task 0 cut to its first `episodes` successful episodes, trimmed."""
    full = load_task(task_file(DATA, SUITE, TASK))
    kept = lf.successful_episodes(full)[:episodes]
    rows = np.concatenate([r[:n] for (_, r), n in zip(kept, STEPS, strict=False)])
    out = {k: full[k][rows] for k in ('qpos', 'action', 'joint_pos', 'gripper_qpos',
                                      'eef_pos', 'eef_quat')}
    out['episode'] = np.repeat(np.arange(len(kept)), STEPS[:len(kept)]).astype(np.int32)
    out['ep_seed'] = np.array([seed for seed, _ in kept])
    out['ep_success'] = np.ones(len(kept), bool)
    out['ep_steps'] = np.array(STEPS[:len(kept)])
    out.update(instruction=full['instruction'], task_name=full['task_name'],
               suite=full['suite'])
    return out


@pytest.fixture(scope='module')
def world():
    world = LiberoWorld(SUITE)  # the bench's default render, as the cache draws
    yield world
    world.close()


@pytest.fixture(scope='module')
def cached(world, tmp_path_factory):
    """Write a data directory of one trimmed task and draw its frame cache in two runs."""
    root = tmp_path_factory.mktemp('libero')
    data, cache = root / 'data', root / 'frames'
    save_task(task_file(data, SUITE, TASK), trimmed(1))
    assert lf.cache_task(world, load_task(task_file(data, SUITE, TASK)), cache, SUITE,
                         TASK)[0] == STEPS[0]
    stream, _ = lf.cache_paths(cache, SUITE, TASK)
    with open(stream, 'ab') as f:  # an episode whose index was never written
        f.write(b'\xff' * 100)
    save_task(task_file(data, SUITE, TASK), trimmed(2))  # the generator added an episode
    demos = load_task(task_file(data, SUITE, TASK))
    assert lf.cache_task(world, demos, cache, SUITE, TASK)[0] == STEPS[1]  # only the new one
    assert lf.cache_task(world, demos, cache, SUITE, TASK)[0] == 0
    return data, cache, demos


def test_the_cache_holds_each_steps_policy_frame_once(world, cached):
    _, cache, demos = cached
    frames = lf.TaskFrames.open(cache, SUITE, TASK)
    assert len(frames) == sum(STEPS)
    assert frames.setting('render') == 'openvla' and not frames.setting('center_crop')
    stream, _ = lf.cache_paths(cache, SUITE, TASK)
    assert stream.stat().st_size == frames.index['offsets'][-1]  # the torn tail is gone
    assert list(frames.episodes()) == demos['ep_seed'].tolist()
    for j in (0, STEPS[0] - 1, sum(STEPS) - 1):
        frame = frames.frame(j)
        assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8
        drawn = world.render_state(TASK, demos['qpos'][j])
        assert np.abs(frame.astype(int) - drawn).mean() < 3  # JPEG, quality 95


def test_a_cache_of_other_frames_is_refused(world, cached):
    _, cache, demos = cached
    changed = {**demos, 'qpos': demos['qpos'] + np.float32(1e-3)}
    with pytest.raises(ValueError, match='not the one in the demonstrations'):
        lf.cache_task(world, changed, cache, SUITE, TASK)
    fast = LiberoWorld(SUITE, render='fast')
    with pytest.raises(ValueError, match='drawn with'):
        lf.cache_task(fast, demos, cache, SUITE, TASK)
    fast.close()


def test_a_batch_has_the_frames_labels_and_normalisation(cached, tmp_path):
    data, cache, demos = cached
    source = lt.load(data, cache, tmp_path, log=lambda *_: None)
    assert source.data['action'].shape == (sum(STEPS), 7)
    manifest = json.loads((tmp_path / lt.MANIFEST).read_text())
    assert manifest['episodes'] == {SUITE: {str(TASK): demos['ep_seed'].tolist()}}
    instruction = str(demos['instruction'])
    assert source.corpus == [f'In: What action should the robot take to {instruction}?\nOut:']

    # OpenVLA's statistics under the key the bench picks for the suite, gripper unnormalised.
    assert unnorm_key(SUITE, source.norm_stats) == SUITE
    _, stats = NormStats.select(source.norm_stats, SUITE)
    actions = demos['action'].astype(np.float64)
    assert np.allclose(stats.q01, np.quantile(actions, 0.01, axis=0))
    assert np.allclose(stats.q99, np.quantile(actions, 0.99, axis=0))
    assert stats.mask.tolist() == [True] * 6 + [False]
    inside = np.clip(actions, stats.q01, stats.q99)
    assert np.allclose(stats.unnormalize(stats.normalize(inside)), inside)

    tok = build_llama_tokenizer(source.corpus, merges=300)
    codec = ActionCodec(vocab_size=tok.get_vocab_size(with_added_tokens=False))
    cfg = TrainConfig(head='diffusion', layers=2, dit_hidden=32, noise_draws=2)
    config = model_config(codec.vocab_size, source.norm_stats, cfg)
    chunk = config.action_model.chunk  # 16: longer than these episodes
    batcher = source.batcher(tok, codec, stats, chunk)
    idx = np.array([0, STEPS[0] - 2, STEPS[0]])  # an episode's start, its end, the next one
    batch = batcher(idx)
    assert set(batch) == {'pixels', 'text', 'first', 'actions', 'chunks'}  # no mock labels
    frames = lf.TaskFrames.open(cache, SUITE, TASK)
    rng = np.random.default_rng(idx)  # the batch's shifts (random_shift), drawn in order
    for b, i in enumerate(idx):
        shifted = random_shift(frames.frame(int(i)), rng)
        assert np.array_equal(batch['pixels'][b:b + 1], preprocess(shifted, 224))
    assert np.array_equal(batch['actions'].numpy(),
                          codec.encode(stats.normalize(demos['action'][idx])))
    labels = stats.normalize(demos['action'].astype(np.float64))
    chunks = batch['chunks'].numpy()
    zero = stats.normalize(np.zeros((1, 7)))[0, :6]
    # The next steps' labels of the same episode, then zero motion and the last gripper
    # command (raw, 1 = open).
    for b, (start, end) in enumerate([(0, STEPS[0]), (STEPS[0] - 2, STEPS[0]),
                                      (STEPS[0], sum(STEPS))]):
        n = end - start
        assert np.allclose(chunks[b, :n], labels[start:end], atol=1e-6)
        assert np.allclose(chunks[b, n:, :6], zero, atol=1e-6)
        assert np.all(chunks[b, n:, 6] == demos['action'][end - 1, 6])
    assert set(np.unique(chunks[..., 6])) <= {0.0, 1.0}

    # The trainer's losses on it: the mock world's auxiliary losses are left out.
    model = OpenVLA(config)
    init_model(model)
    action, vision, state, _ = losses(model, AuxHeads(128, 7), batch, codec, 2.0, 2)
    assert vision.item() == 0.0 and np.isfinite(action.item()) and state.item() > 0
