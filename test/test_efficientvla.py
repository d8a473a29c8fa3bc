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

"""EfficientVLA: calibration and layer pruning, diverse tokens, DiT feature caching."""

import json
import shutil

import numpy as np
import pytest
from test_cogact import tiny_cogact
import torch

from flashvla_ros.accel.efficientvla import Calibration, diverse_selection, task_relevance
from flashvla_ros.accel.registry import accelerate
from flashvla_ros.policy import Observation, load_policy
from flashvla_ros.policy.flops import count_flops, full_flops
from flashvla_ros.policy.step import Hooks
from flashvla_ros.sim.tasks import Episode
from flashvla_ros.tools.calibrate import main as calibrate_main


def observation(seed: int = 3) -> Observation:
    ep = Episode(seed)
    return Observation(ep.observe(), ep.instruction)


@pytest.fixture(scope='module')
def calibrated(tiny_dir, tmp_path_factory):
    """Copy the tiny checkpoint and write its calibration file beside the weights."""
    model = tmp_path_factory.mktemp('calibrated') / 'model'
    shutil.copytree(tiny_dir, model)
    assert calibrate_main(['--model', str(model), '--episodes', '2', '--every', '10']) == 0
    return model


def test_calibration_names_the_weights_and_scores_every_layer(calibrated):
    raw = json.loads((calibrated / 'calibration.json').read_text())
    policy = load_policy(str(calibrated))
    depth = policy.cfg.text.num_hidden_layers
    assert len(raw['importance']) == depth and raw['samples']['source'] == 'mock_world'
    assert raw['samples']['count'] > 0 and len(raw['weights_sha256']) == 64
    assert all(0.0 <= v <= 2.0 for v in raw['importance'])  # 1 - cos


@pytest.mark.slow  # the default tier keeps the calibration and refusals
def test_prune_layers_drops_the_least_important_and_counts_exactly(calibrated):
    cal = Calibration.load(calibrated / 'calibration.json')
    dropped = cal.least_important(1)
    policy = accelerate(load_policy(str(calibrated)), ['efficientvla'],
                        {'efficientvla': {'preset': '', 'prune_layers': 1, 'token_layer': 1}})
    chunk = policy.predict(observation())
    depth = policy.cfg.text.num_hidden_layers
    assert policy.plan == [i for i in range(depth) if i not in dropped]
    assert set(chunk.info.record.layer_tokens) == set(policy.plan)
    full = full_flops(policy.cfg, chunk.info.record.layout)
    assert chunk.info.flops == count_flops(policy.cfg, chunk.info.record)
    # One decoder layer of `depth` gone: exactly that layer's prefill and decode FLOPs.
    llm, got = full.prefill + full.decode, chunk.info.flops.prefill + chunk.info.flops.decode
    assert llm - got == pytest.approx(llm / depth, rel=1e-9)
    assert chunk.info.flops.vision == full.vision and chunk.info.flops.head == full.head


@pytest.mark.slow  # the default tier keeps the calibration and refusals
def test_mlp_sparsity_runs_the_most_important_neurons_exactly_and_counts_them(calibrated):
    cal = Calibration.load(calibrated / 'calibration.json')
    policy = accelerate(load_policy(str(calibrated)), ['efficientvla'],
                        {'efficientvla': {'preset': '', 'mlp_sparsity': 0.25}})
    text = policy.cfg.text
    width, removed = text.intermediate_size, round(0.25 * text.intermediate_size)
    kept = {layer: cal.kept_neurons(layer, 0.25) for layer in range(text.num_hidden_layers)}
    for layer, neurons in kept.items():  # the highest scores stay
        scores = torch.tensor(cal.neuron_importance[layer])
        assert neurons.numel() == width - removed
        assert scores[neurons].min() >= torch.sort(scores).values[removed - 1]
    # The reference: the plain model with the other neurons' output weights zeroed.
    masked = load_policy(str(calibrated))
    with torch.no_grad():
        for layer, neurons in kept.items():
            down = masked.model.language_model.model.layers[layer].mlp.down_proj.weight
            gone = torch.ones(width, dtype=torch.bool)
            gone[neurons] = False
            down[:, gone] = 0.0
    for seed in (3, 4):
        sparse, reference = policy.predict(observation(seed)), masked.predict(observation(seed))
        assert sparse.token_ids == reference.token_ids
    record = sparse.info.record
    assert record.mlp_kept == {layer: (width - removed) / width for layer in kept}
    full = full_flops(policy.cfg, record.layout)
    assert sparse.info.flops == count_flops(policy.cfg, record)
    # Every token through every layer skips exactly `removed` neurons' three products.
    tokens = sum(record.layer_tokens.values()) + text.num_hidden_layers * sum(
        fed for fed, _ in record.decode_calls)
    llm, got = full.prefill + full.decode, sparse.info.flops.prefill + sparse.info.flops.decode
    assert llm - got == 2 * 3 * text.hidden_size * removed * tokens
    accelerate(policy, [], {})  # unplugged: every neuron runs again
    assert policy.predict(observation(3)).info.record.mlp_kept == {}
    assert all(layer.mlp.kept is None for layer in policy.model.language_model.model.layers)


def test_two_neuron_plans_for_one_layer_are_refused(tiny_dir):
    class Thin(Hooks):
        def __init__(self, name: str) -> None:
            self.name = name

        def mlp_neurons(self) -> dict[int, torch.Tensor]:
            return {0: torch.arange(8)}

    policy = load_policy(str(tiny_dir))
    with pytest.raises(ValueError, match='a and b both thin the MLP of decoder layer 0'):
        policy.set_hooks([Thin('a'), Thin('b')])
    policy.set_hooks([Thin('a')])
    assert policy.model.language_model.model.layers[0].mlp.kept[2].shape[1] == 8
    assert policy.predict(observation()).info.record.mlp_kept == {
        0: 8 / policy.cfg.text.intermediate_size}


def test_a_missing_or_foreign_calibration_is_refused(tiny_dir, calibrated, tmp_path):
    with pytest.raises(ValueError, match=r'needs a calibration: .* does not exist'):
        accelerate(load_policy(str(tiny_dir)), ['efficientvla'],
                   {'efficientvla': {'preset': '', 'prune_layers': 1}})
    other = tmp_path / 'other'
    shutil.copytree(calibrated, other)
    with open(other / 'model.safetensors', 'r+b') as f:  # other weights: one byte changed
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match='calibrated on other weights'):
        accelerate(load_policy(str(other)), ['efficientvla'],
                   {'efficientvla': {'preset': '', 'prune_layers': 1}})
    # The same bytes in another directory are the same model: the hash decides, not the path.
    same = accelerate(load_policy(str(tiny_dir)), ['efficientvla'], {'efficientvla': {
        'preset': '', 'prune_layers': 1, 'calibration': str(calibrated / 'calibration.json')}})
    assert len(same.plan) == same.cfg.text.num_hidden_layers - 1
    # A version-1 calibration scores layers only: MLP sparsity is refused, pruning still runs.
    raw = json.loads((calibrated / 'calibration.json').read_text())
    del raw['neuron_importance']
    old = tmp_path / 'v1.json'
    old.write_text(json.dumps({**raw, 'version': 1}))
    with pytest.raises(ValueError, match=r'mlp_sparsity=0.25 needs MLP neuron scores.*none'):
        accelerate(load_policy(str(tiny_dir)), ['efficientvla'], {'efficientvla': {
            'preset': '', 'mlp_sparsity': 0.25, 'calibration': str(old)}})
    accelerate(same, ['efficientvla'], {'efficientvla': {
        'preset': '', 'prune_layers': 1, 'calibration': str(old)}})


def test_diverse_selection_keeps_keys_then_relevance_then_the_most_different():
    relevance = torch.tensor([0.0, 1.0, 0.9, 0.8, 0.1, 0.2])
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.01], [0.9, 0.1], [0.0, 1.0],
                             [0.7, 0.7]])
    # Budget 4: 1 key (token 1), half of the other 3 rounded (2) by relevance: 2 and 3; then
    # the token least like any kept: 4 (orthogonal to them), not the relevant-looking 5.
    kept = diverse_selection(relevance, features, 4, key_tokens=1, relevance_share=0.5)
    assert kept.tolist() == [1, 2, 3, 4]
    # relevance_share 0: after the key, diversity alone picks 4, then 5 (45 degrees off).
    kept = diverse_selection(relevance, features, 3, key_tokens=1, relevance_share=0.0)
    assert kept.tolist() == [1, 4, 5]


def test_relevance_is_the_prompts_head_averaged_attention_min_max_normalised():
    w = torch.zeros(1, 2, 6, 6)  # [batch, heads, queries, keys]: 1..3 visual, 4..5 the prompt
    w[0, 0, 4:, 1:4] = torch.tensor([0.1, 0.3, 0.2])
    w[0, 1, 4:, 1:4] = torch.tensor([0.3, 0.5, 0.1])
    w[0, :, 1:4, 3] = 9.0  # what visual tokens attend to never counts
    # Means 0.2, 0.4, 0.15 -> min-max normalised.
    assert torch.allclose(task_relevance(w, slice(1, 4), slice(4, 6)),
                          torch.tensor([0.2, 1.0, 0.0]))


@pytest.mark.slow  # the default tier keeps the calibration and refusals
def test_only_the_token_layer_computes_attention_weights_and_random_is_a_control(tiny_dir):
    policy = accelerate(load_policy(str(tiny_dir)), ['efficientvla'],
                        {'efficientvla': {'preset': '', 'keep_tokens': 64, 'token_layer': 2}})
    assert policy.composition.probes == {1: {'attention_weights'}}
    obs = observation()
    diverse = policy.predict(obs)
    assert diverse.info.kept_tokens == 64 and len(diverse.info.kept_indices) == 64
    record = diverse.info.record
    n = record.layout.visual
    assert record.scoring == [('diverse', n, record.layout.prefill - n)]
    assert record.layer_tokens[1] == record.layout.prefill
    assert record.layer_tokens[2] == record.layout.prefill - n + 64
    accelerate(policy, ['efficientvla'], {'efficientvla': {
        'preset': '', 'keep_tokens': 64, 'selection': 'random'}})
    assert policy.composition.probes == {}
    first = policy.predict(obs).info.kept_indices
    again = policy.predict(obs).info.kept_indices
    policy.reset()
    assert policy.predict(obs).info.kept_indices == first != again  # a new draw per step
    assert first != diverse.info.kept_indices


@pytest.mark.slow  # the default tier keeps the calibration and refusals
def test_dit_feature_caching_is_exact_at_interval_1_and_counts_what_ran(tiny_dir):
    plain = tiny_cogact(tiny_dir).predict(observation())
    one = accelerate(tiny_cogact(tiny_dir), ['efficientvla'],
                     {'efficientvla': {'preset': '', 'cache_interval': 1}})
    exact = one.predict(observation())
    assert np.array_equal(exact.actions, plain.actions)
    assert exact.info.record.dit_parts == plain.info.record.dit_parts
    five = accelerate(tiny_cogact(tiny_dir), ['efficientvla'],
                      {'efficientvla': {'preset': '', 'cache_interval': 5}})
    cached = five.predict(observation())
    depth = five.cfg.action_model.depth
    # Denoising steps 0 and 5 of 10 compute every block part, for both guidance rows.
    assert cached.info.record.dit_parts == {'attn': 2 * depth * 2, 'mlp': 2 * depth * 2}
    assert cached.info.flops.head < plain.info.flops.head
    assert not np.array_equal(cached.actions, plain.actions)  # an approximation


@pytest.mark.slow  # the default tier keeps the calibration and refusals
def test_efficientvla_composes_with_flashvla_and_refuses_what_cannot_run(calibrated):
    cal = Calibration.load(calibrated / 'calibration.json')
    dropped = cal.least_important(1)[0]
    policy = load_policy(str(calibrated))
    plan = [i for i in range(policy.cfg.text.num_hidden_layers) if i != dropped]
    accelerate(policy, ['efficientvla', 'flashvla'], {
        'efficientvla': {'preset': '', 'prune_layers': 1, 'keep_tokens': 128, 'token_layer': 1},
        'flashvla': {'layer': plan[1] + 1, 'keep_fraction': 0.25}})  # 64 of the model's 256
    chunk = policy.predict(observation())
    assert chunk.info.kept_tokens == 64 and dropped not in chunk.info.record.layer_tokens
    assert [method for method, *_ in chunk.info.record.scoring] == ['diverse', 'gram']
    # At one layer, both selections run (test_composition.py checks what FlashVLA ranks).
    chunk = accelerate(policy, ['efficientvla', 'flashvla'], {
        'efficientvla': {'preset': '', 'prune_layers': 1, 'keep_tokens': 128,
                         'token_layer': 1},
        'flashvla': {'layer': 1, 'keep_fraction': 0.25}}).predict(observation())
    assert chunk.info.kept_tokens == 64
    assert [tokens for _, tokens, _ in chunk.info.record.scoring][1] == 128
    if 1 <= dropped < policy.cfg.text.num_hidden_layers - 1:
        with pytest.raises(ValueError, match=rf'reads decoder layer.*{dropped}'):
            accelerate(policy, ['efficientvla', 'flashvla'], {
                'efficientvla': {'preset': '', 'prune_layers': 1},
                'flashvla': {'layer': dropped + 1}})
