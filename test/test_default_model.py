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

"""The embedded default policies: they load from the package and solve held-out episodes."""

import numpy as np
import pytest

from flashvla_ros.accel.efficientvla import CALIBRATION_FILE, Calibration
from flashvla_ros.bench.run import benchmark
from flashvla_ros.control.chunks import MODEL_STEPS, ChunkExecution
from flashvla_ros.policy import Observation, load_policy
from flashvla_ros.policy.checkpoint import weights_digest
from flashvla_ros.policy.flops import full_flops
from flashvla_ros.policy.presets import EMBEDDED_MODELS, default_model_dir, model_path
from flashvla_ros.sim.tasks import Episode
from flashvla_ros.train.dataset import HELDOUT_SEED_START


@pytest.fixture(scope='module')
def default_dir():
    path = default_model_dir()
    assert (path / 'model.safetensors').is_file(), f'no embedded default model in {path}'
    return path


def test_default_checkpoint_is_small_and_standard(default_dir):
    size = sum(f.stat().st_size for f in default_dir.iterdir())
    assert size < 25 * 2**20
    policy = load_policy(str(default_dir))
    assert policy.cfg.num_patches >= 64 and policy.unnorm_key == 'mock_world'
    assert policy.head.codec.first_action_token == policy.head.codec.vocab_size - 256


@pytest.mark.slow  # 14 s on 2 idle cores, about 140 s on 2 busy ones: `make test-all`
def test_default_policy_solves_held_out_episodes(default_dir):
    # 12 held-out episodes (4 per family); the full 200-episode figure is in BENCHMARKS.md.
    report = benchmark(str(default_dir), ['none'], episodes=12, seed=HELDOUT_SEED_START,
                       log=lambda *a, **k: None)
    assert report['configs'][0]['success'] >= 0.6, report['configs'][0]['per_group']


@pytest.mark.parametrize('name', EMBEDDED_MODELS)
def test_embedded_models_resolve_by_name_and_carry_their_calibration(name):
    path = model_path(name)
    assert path == default_model_dir(name) and (path / 'model.safetensors').is_file()
    calibration = Calibration.load(path / CALIBRATION_FILE)
    assert calibration.weights_sha256 == weights_digest(path)  # made on these weights
    assert calibration.neuron_importance is not None  # the preset's MLP sparsity needs them


def test_default_dit_has_cogacts_proportions():
    path = default_model_dir('default-dit')
    assert sum(f.stat().st_size for f in path.iterdir()) < 25 * 2**20
    policy = load_policy(str(path))
    head, text = policy.cfg.action_model, policy.cfg.text
    assert (head.chunk, head.ddim_steps, head.cfg_scale) == (16, 10, 1.5)
    assert text.num_hidden_layers >= 12 and policy.cfg.num_patches >= 64
    ep = Episode(HELDOUT_SEED_START)
    chunk = policy.predict(Observation(ep.observe(), ep.instruction))
    assert chunk.actions.shape == (16, 7) and np.isfinite(chunk.actions).all()
    flops = full_flops(policy.cfg, chunk.info.record.layout)
    llm = flops.prefill + flops.decode
    assert llm >= 0.75 * flops.total and max(flops.vision, flops.head) < 0.25 * flops.total
    # It carries its recommended execution: 4 actions of each chunk where the user sets none.
    assert policy.cfg.execution.chunk_steps == 4
    assert ChunkExecution(steps=MODEL_STEPS).for_model(policy.cfg.execution).steps == 4
    assert ChunkExecution(steps=0).for_model(policy.cfg.execution).steps == 0


@pytest.mark.slow  # about 20 s on 2 idle cores
def test_default_dit_solves_held_out_episodes():
    report = benchmark(str(default_model_dir('default-dit')), ['none'], episodes=12,
                       seed=HELDOUT_SEED_START, log=lambda *a, **k: None,
                       chunks=ChunkExecution(steps=MODEL_STEPS))
    assert report['configs'][0]['chunk_steps'] == 4
    assert report['configs'][0]['success'] >= 0.5, report['configs'][0]['per_group']
