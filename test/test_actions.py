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

"""Action bins and un-normalisation against hand-computed values."""

import numpy as np
import pytest

from flashvla_ros.policy.actions import ActionCodec, NormStats
from flashvla_ros.policy.errors import CheckpointError


def test_llama2_bins_by_hand():
    codec = ActionCodec(vocab_size=32000, n_bins=256)
    step = 2.0 / 255  # linspace(-1, 1, 256) spacing
    # Token 31999 -> index clip(32000 - 31999 - 1) = 0 -> centre of the first bin.
    assert codec.decode(np.array([31999]))[0] == pytest.approx(-1 + step / 2)
    # Token 31745 -> index 254, the last centre; 31744 and anything lower clip there too.
    assert codec.decode(np.array([31745, 31744, 100]))[0] == pytest.approx(1 - step / 2)
    assert np.allclose(codec.decode(np.array([31744, 100])), 1 - step / 2)
    # A token above the base vocabulary (e.g. <PAD> 32000) clips to index 0.
    assert codec.decode(np.array([32000]))[0] == pytest.approx(-1 + step / 2)
    # Token 31872 -> index 127 -> centre between linspace[127] and linspace[128] = 0.
    assert codec.decode(np.array([31872]))[0] == pytest.approx(0.0, abs=1e-12)
    assert codec.first_action_token == 31744


def test_encode_decode_round_trip_is_within_half_a_bin():
    codec = ActionCodec(vocab_size=1000, n_bins=256)
    x = np.linspace(-0.999, 0.999, 101)
    tokens = codec.encode(x)
    assert codec.is_action_token(tokens).all()
    assert np.abs(codec.decode(tokens) - x).max() <= 1.0 / 255 + 1e-12


def test_unnormalize_by_hand():
    stats = {'ds': {'action': {'q01': [-1.0, 0.0, 2.0], 'q99': [1.0, 4.0, 3.0],
                               'mask': [True, True, False]}}}
    key, s = NormStats.select(stats, None)
    assert key == 'ds'
    out = s.unnormalize(np.array([0.5, -1.0, 0.7]))
    # 0.5*(0.5+1)*2 - 1 = 0.5; 0.5*0*4 + 0 = 0; masked dimension passes through.
    assert np.allclose(out, [0.5, 0.0, 0.7])
    assert np.allclose(s.normalize(out), [0.5, -1.0, 0.7])


def test_mask_defaults_to_all_true():
    _, s = NormStats.select({'a': {'action': {'q01': [0.0], 'q99': [2.0]}}}, 'a')
    assert s.unnormalize(np.array([0.0]))[0] == pytest.approx(1.0)


def test_unnorm_key_errors_list_the_choices():
    stats = {k: {'action': {'q01': [0.0], 'q99': [1.0]}} for k in ('bridge_orig', 'fractal')}
    with pytest.raises(CheckpointError, match=r"choose one.*\['bridge_orig', 'fractal'\]"):
        NormStats.select(stats, None)
    with pytest.raises(CheckpointError, match=r"unknown unnorm_key 'libero'.*bridge_orig"):
        NormStats.select(stats, 'libero')
    bad = {'x': {'action': {'q01': [0.0, 1.0], 'q99': [1.0]}}}
    with pytest.raises(CheckpointError, match='shapes differ'):
        NormStats.select(bad, 'x')
    with pytest.raises(CheckpointError, match='non-finite'):
        NormStats.select({'x': {'action': {'q01': [float('nan')], 'q99': [1.0]}}}, 'x')
