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


"""Composition: selections compose (probes narrowed with the tokens); conflicts are refused."""

import pytest
import torch

from flashvla_ros.accel.base import token_budget
from flashvla_ros.accel.efficientvla import EfficientVLA
from flashvla_ros.accel.flashvla import FlashVLA, information_contribution, select_tokens
from flashvla_ros.accel.registry import accelerate, check_accel, parse_accel
from flashvla_ros.policy import Observation, load_policy
from flashvla_ros.policy.presets import model_path
from flashvla_ros.policy.step import Hooks
from flashvla_ros.sim.tasks import Episode


def observation(seed: int = 3) -> Observation:
    ep = Episode(seed)
    return Observation(ep.observe(), ep.instruction)


@pytest.fixture(scope='module')
def policy(tiny_dir):
    return load_policy(str(tiny_dir))


class Recorder(Hooks):
    """Record what a hook sees after one layer: the tokens present and the probes."""

    name = 'recorder'

    def __init__(self, layer: int, kinds: set[str]) -> None:
        self.layer, self.kinds, self.seen = layer, kinds, []

    def probes(self):
        return {self.layer: self.kinds}

    def after_layer(self, step, layer, hidden, probes):
        if layer == self.layer:
            self.seen.append((step.visual_kept.clone(), hidden, dict(probes)))


@torch.inference_mode()
def test_flashvla_after_efficientvla_ranks_efficientvlas_survivors(policy):
    """`accel: [efficientvla, flashvla]` at one layer: both selections run, in that order."""
    obs = observation()
    alone = accelerate(policy, ['efficientvla'], {'efficientvla': {
        'preset': '', 'keep_tokens': 128, 'token_layer': 2}}).predict(obs)
    survivors = torch.tensor(alone.info.kept_indices)
    record = Recorder(1, {'attention_output'})  # the plain model's probe of that layer
    accelerate(policy, [], {}).set_hooks([record])
    policy.predict(obs)
    _, _, probes = record.seen[0]
    output = probes['attention_output'][0, 1:1 + 256]  # every visual token: nothing dropped
    scores, _ = information_contribution(output[survivors])
    expected = survivors[select_tokens(scores, 64)]

    both = accelerate(policy, ['efficientvla', 'flashvla'], {
        'efficientvla': {'preset': '', 'keep_tokens': 128, 'token_layer': 2},
        'flashvla': {'layer': 2, 'keep_tokens': 64, 'reuse': False}})
    assert both.composition.probes == {1: {'attention_weights', 'attention_output'}}
    chunk = both.predict(obs)
    n = chunk.info.record.layout.visual
    assert [(m, tokens) for m, tokens, _ in chunk.info.record.scoring] == [
        ('diverse', n), ('gram', 128)]  # FlashVLA scored EfficientVLA's 128, not all 256
    assert chunk.info.kept_tokens == 64
    assert torch.equal(torch.tensor(chunk.info.kept_indices), expected)
    assert chunk.info.record.layer_tokens[2] == chunk.info.record.layout.prompt + 64


@torch.inference_mode()
def test_hidden_states_and_probes_are_narrowed_together(policy):
    """A later hook at the same layer sees only the kept tokens, in its hidden and probes."""
    keep = torch.arange(0, 256, 4)  # 64 of the visual tokens

    class KeepEvery4th(Hooks):
        name = 'every4th'

        def after_layer(self, step, layer, hidden, probes):
            return keep if layer == 1 else None

    full = Recorder(1, {'attention_output', 'attention_weights'})
    policy.set_hooks([full])
    policy.predict(observation())
    late = Recorder(1, {'attention_output', 'attention_weights'})
    policy.set_hooks([KeepEvery4th(), late])
    policy.predict(observation())
    _, hidden, probes = full.seen[0]
    kept, narrowed_hidden, narrowed = late.seen[0]
    index = torch.cat([torch.tensor([0]), keep + 1, torch.arange(257, hidden.shape[1])])
    assert torch.equal(kept, keep)
    assert torch.equal(narrowed_hidden, hidden[:, index])
    assert torch.equal(narrowed['attention_output'], probes['attention_output'][:, index])
    weights = probes['attention_weights']
    assert narrowed['attention_weights'].shape[-2:] == (index.numel(), index.numel())
    assert torch.equal(narrowed['attention_weights'], weights[:, :, index][..., index])
    policy.set_hooks([])


def test_the_natural_spellings_of_the_combination_run():
    names, options = parse_accel('efficientvla+flashvla')
    assert names == ['efficientvla', 'flashvla'] and options == {}
    built = check_accel(['efficientvla', 'flashvla'], {})
    assert set(built) == {'efficientvla', 'flashvla'}


def test_every_conflict_is_refused_with_the_reason(policy):
    class Gate(Hooks):
        gates = True

        def __init__(self, name):
            self.name = name

    class Cache(Hooks):
        caches = True

        def __init__(self, name):
            self.name = name

    class Asks(Hooks):
        name = 'asks'

        def probes(self):
            return {0: {'attention_scores'}}

    with pytest.raises(ValueError, match=r"\['a', 'b'\] each bring a reuse gate"):
        policy.set_hooks([Gate('a'), Gate('b')])
    with pytest.raises(ValueError, match=r"\['c', 'd'\] each bring a DiT feature cache"):
        policy.set_hooks([Cache('c'), Cache('d')])
    with pytest.raises(ValueError, match=r"asks asks decoder layer 0 for unknown probe"):
        policy.set_hooks([Asks()])
    # The registry refuses the same, from the classes, before any model loads.
    assert FlashVLA.gates and EfficientVLA.caches and not EfficientVLA.gates
    with pytest.raises(ValueError, match='names an accelerator twice'):
        check_accel(['flashvla', 'flashvla'], {})
    policy.set_hooks([])
    assert policy.composition.probes == {} and policy.plan == list(range(4))


@torch.inference_mode()
def test_accelerators_that_decide_nothing_run_exactly_the_plain_step(policy):
    """Every token kept, no reuse, no draft, no cache: the same record, FLOPs and tokens."""
    obs = observation()
    policy.set_hooks([])
    plain = policy.predict(obs)
    for names, options in (
            (['efficientvla'], {'efficientvla': {'preset': ''}}),
            (['flashvla'], {'flashvla': {'keep_fraction': 1.0, 'reuse': False,
                                         'draft': False}}),
            (['efficientvla', 'flashvla'], {'efficientvla': {'preset': ''}, 'flashvla': {
                'keep_fraction': 1.0, 'reuse': False, 'draft': False}})):
        chunk = accelerate(policy, names, options).predict(obs)
        assert chunk.info.record == plain.info.record, names
        assert chunk.info.flops == plain.info.flops and chunk.token_ids == plain.token_ids
    policy.set_hooks([])


# -- the token-budget rule: a budget counts the model's visual tokens ----------------------


@pytest.mark.parametrize(('model', 'keep_tokens', 'keep_fraction', 'present', 'kept'), [
    (64, 0, 0.625, None, 40),  # alone: a fraction of the model's tokens
    (64, 0, 0.625, 64, 40),  # nothing selected before: the same
    (64, 0, 0.625, 14, 14),  # after EfficientVLA's 14: 40 >= 14, so all 14 stay (not 9)
    (64, 0, 0.125, 14, 8),  # a budget below the survivors still selects: 8 of the model's 64
    (64, 9, 0.625, 14, 9),  # a count was always of the model's tokens
    (64, 40, 1.0, 14, 14),
    (256, 0, 0.5, 128, 128),
    (256, 0, 0.25, 128, 64),
    (64, 0, 0.001, None, 1),  # at least one
    (64, 0, 0.001, 14, 1),
    (64, 100, 1.0, None, 64),  # at most the model's
])
def test_a_token_budget_counts_the_models_visual_tokens(model, keep_tokens, keep_fraction,
                                                        present, kept):
    assert token_budget(model, keep_tokens, keep_fraction, present) == kept


def test_flashvla_scores_only_when_its_budget_is_below_the_tokens_present():
    defaults = FlashVLA.build_options({})  # conservative: keep_fraction 0.625
    assert defaults.kept_tokens(64) == 40 and defaults.scores_tokens(64)
    assert defaults.kept_tokens(64, 14) == 14 and not defaults.scores_tokens(64, 14)
    assert defaults.kept_tokens(64, 41) == 40 and defaults.scores_tokens(64, 41)
    efficient = EfficientVLA.build_options({})  # default: keep_fraction 0.22
    assert efficient.kept_tokens(64) == 14 and efficient.kept_tokens(64, 10) == 10


@torch.inference_mode()
@pytest.mark.parametrize(('fraction', 'kept', 'scored'), [
    (0.625, 128, []),  # budget 160 of 256 >= EfficientVLA's 128: FlashVLA keeps them all
    (0.25, 64, [('gram', 128)]),  # budget 64 of 256: it ranks the 128 and keeps 64
])
def test_composed_fractions_do_not_multiply(policy, fraction, kept, scored):
    chunk = accelerate(policy, ['efficientvla', 'flashvla'], {
        'efficientvla': {'preset': '', 'keep_tokens': 128, 'token_layer': 2},
        'flashvla': {'layer': 2, 'keep_fraction': fraction, 'reuse': False}}).predict(
            observation())
    n = chunk.info.record.layout.visual
    assert n == 256
    scoring = [(m, tokens) for m, tokens, _ in chunk.info.record.scoring]
    assert scoring == [('diverse', n), *scored]
    assert chunk.info.kept_tokens == kept
    assert chunk.info.extras['efficientvla_kept_tokens'] == 128
    assert chunk.info.extras['flashvla_kept_tokens'] == kept
    policy.set_hooks([])


@torch.inference_mode()
def test_efficientvla_after_flashvla_follows_the_same_rule(policy):
    chunk = accelerate(policy, ['flashvla', 'efficientvla'], {
        'flashvla': {'layer': 2, 'keep_tokens': 100, 'reuse': False},
        'efficientvla': {'preset': '', 'keep_fraction': 0.5, 'token_layer': 2}}).predict(
            observation())  # EfficientVLA's budget: 128 of 256, above FlashVLA's 100
    assert chunk.info.kept_tokens == 100
    assert chunk.info.extras['flashvla_kept_tokens'] == 100
    assert chunk.info.extras['efficientvla_kept_tokens'] == 100
    policy.set_hooks([])


@torch.inference_mode()
def test_the_combination_as_users_write_it_keeps_efficientvlas_14_tokens():
    """`efficientvla+flashvla`, both presets at their defaults, on the embedded default-dit."""
    dit = load_policy(str(model_path('default-dit')))
    names, options = parse_accel('efficientvla+flashvla')
    chunk = accelerate(dit, names, options).predict(observation())
    assert chunk.info.visual_tokens == 64 and chunk.info.kept_tokens == 14
    assert chunk.info.extras['efficientvla_kept_tokens'] == 14
    assert chunk.info.extras['flashvla_kept_tokens'] == 14  # 0.625 x 64 = 40 >= 14
    assert [m for m, *_ in chunk.info.record.scoring] == ['diverse']  # nothing left to rank
    alone = accelerate(dit, ['flashvla'], {}).predict(observation())
    assert alone.info.kept_tokens == alone.info.extras['flashvla_kept_tokens'] == 40
