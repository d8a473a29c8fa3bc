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

"""The embedded default policy: it loads from the package and solves held-out episodes."""

import pytest

from flashvla_ros.bench.run import benchmark
from flashvla_ros.policy import load_policy
from flashvla_ros.policy.presets import default_model_dir
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
    assert policy.codec.first_action_token == policy.codec.vocab_size - 256


@pytest.mark.slow  # 14 s on 2 idle cores, about 140 s on 2 busy ones: `make test-all`
def test_default_policy_solves_held_out_episodes(default_dir):
    # 12 held-out episodes (4 per family); the full 200-episode figure is in BENCHMARKS.md.
    report = benchmark(str(default_dir), ['none'], episodes=12, seed=HELDOUT_SEED_START,
                       log=lambda *a, **k: None)
    assert report['configs'][0]['success'] >= 0.6, report['configs'][0]['per_family']
