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

"""FlashVLA: token scores and selection, the reuse gate, exact FLOPs, and identity at K = N."""

import math

import numpy as np
import pytest
import torch

from flashvla_ros.accel.flashvla import (
    FlashVLAPolicy,
    ReuseGate,
    action_angle_deg,
    flashvla_options,
    information_contribution,
    scoring_flops,
    select_tokens,
    token_overlap,
)
from flashvla_ros.accel.flops import Flops, openvla_step_flops
from flashvla_ros.policy import Action, load_policy
from flashvla_ros.policy.openvla import Stopwatch
from flashvla_ros.sim.tasks import Episode

METHODS = ('gram', 'exact', 'lowrank')


def frames(n: int, seed: int = 1_000_000, family: str = 'pick_place'):
    """Closed-loop frames from the mock world driven by its scripted expert."""
    ep = Episode(seed, family)
    for _ in range(n):
        yield ep.observe(), ep.instruction
        ep.step(ep.expert_action())


def attention_output(policy, rgb, instruction, layer: int):
    """Prefill embeddings and layer `layer`'s attention output at the visual positions."""
    llm = policy.model.language_model
    ids, pixels = policy.prepare(rgb, instruction)
    seq = policy.sequence(ids, policy.model.encode_image(pixels))
    captured = []
    hook = llm.model.layers[layer].self_attn.register_forward_hook(
        lambda _m, _a, out: captured.append(out))
    llm.reset_cache()
    try:
        llm.run_layers(seq, torch.arange(seq.shape[1]), 0, layer + 1)
    finally:
        hook.remove()
    return seq, captured[0][0, 1:1 + policy.cfg.num_patches]


@pytest.fixture(scope='module')
def policies(tiny_dir):
    return load_policy(str(tiny_dir)), load_policy(str(tiny_dir))


# -- scoring and selection on a constructed case -------------------------------------------


def constructed_tokens() -> torch.Tensor:
    """
    Six tokens in 4-D whose SVD is known by construction.

    Rows 4, 1, 3, 0 are 5 e1, 3 e2, 1 e3, 0.5 e4 and rows 2 and 5 are zero, so the singular
    values are 5, 3, 1, 0.5 and U's columns pick out those rows: C(x) = |row x| up to rank r.
    """
    t = torch.zeros(6, 4)
    t[4, 0], t[1, 1], t[3, 2], t[0, 3] = 5.0, 3.0, 1.0, 0.5
    return t


@pytest.mark.parametrize('method', METHODS)
def test_scores_match_the_construction(method):
    t = constructed_tokens()
    # energy 0.9: 25 / 35.25 = 0.71 < 0.9 <= 34 / 35.25 = 0.96, so r = 2 (fixed ranks for
    # lowrank, which needs one).
    rank = 2 if method == 'lowrank' else 0
    scores, r = information_contribution(t, energy=0.9, rank=rank, method=method)
    assert r == 2
    assert scores.tolist() == pytest.approx([0, 3, 0, 0, 5, 0], abs=1e-4)
    scores, r = information_contribution(t, rank=3, method=method)
    assert r == 3 and scores.tolist() == pytest.approx([0, 3, 0, 1, 5, 0], abs=1e-4)
    # Kept in original order, not by score.
    assert select_tokens(scores, 3).tolist() == [1, 3, 4]


def test_scores_of_tokens_sharing_a_direction():
    # One direction: S = [5], U[:, 0] = [0.6, 0.8]: C is each token's share, 3 and 4.
    t = torch.tensor([[3.0, 0.0], [4.0, 0.0]])
    scores, r = information_contribution(t, energy=1.0)
    assert r == 1 and scores.tolist() == pytest.approx([3.0, 4.0], abs=1e-5)


@torch.inference_mode()
def test_gram_and_exact_svd_pick_the_same_tokens_on_real_attention_outputs(policies):
    _, policy = policies
    for rgb, instruction in frames(3):
        _, t = attention_output(policy, rgb, instruction, 1)
        exact, r_exact = information_contribution(t, method='exact')
        gram, r_gram = information_contribution(t, method='gram')
        assert r_exact == r_gram
        assert torch.equal(select_tokens(exact, 160), select_tokens(gram, 160))


# -- the reuse gate on scripted histories --------------------------------------------------


def action(*normalized: float) -> Action:
    v = np.array(normalized, dtype=np.float64)
    return Action(values=v, normalized=v, token_ids=[0] * len(v), timings_ms={})


def test_angle_and_overlap():
    assert action_angle_deg(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(45.0)
    assert action_angle_deg(np.array([1.0, 0.0]), np.array([-1.0, 0.0])) == pytest.approx(180.0)
    assert action_angle_deg(np.zeros(2), np.ones(2)) == 90.0
    assert token_overlap(frozenset({1, 2, 3, 4}), frozenset({2, 3, 4, 5})) == 0.75


def test_current_gate_reuses_when_stable_up_to_the_cap():
    gate = ReuseGate(eps1_deg=10.0, eps2=0.7, max_reuse=2)
    same = frozenset(range(10))
    assert not gate.decide(same)  # empty memory
    gate.record(action(1.0, 0.0, 0.0), same)
    assert not gate.decide(same)  # one action: no angle yet
    gate.record(action(1.0, 0.1, 0.0), same)  # 5.7 degrees from the first
    assert gate.decide(same) and gate.alpha == pytest.approx(5.71, abs=0.01) and gate.phi == 1.0
    gate.record(None, same)
    assert gate.decide(same)
    gate.record(None, same)
    assert not gate.decide(same)  # the cap: two reuses in a row, then inference
    gate.record(action(1.0, 0.1, 0.0), same)
    assert gate.decide(same)  # the counter restarts after an inference


def test_current_gate_refuses_on_motion_or_scene_change():
    gate = ReuseGate(eps1_deg=10.0, eps2=0.7, max_reuse=5)
    tokens = frozenset(range(10))
    gate.record(action(1.0, 0.0, 0.0), tokens)
    gate.record(action(1.0, 0.0, 1.0), tokens)  # the gripper closes: 45 degrees
    assert not gate.decide(tokens) and gate.alpha == pytest.approx(45.0)
    gate.record(action(1.0, 0.0, 1.0), tokens)
    assert gate.decide(tokens)
    moved = frozenset(range(3, 13))  # 7 of 10 shared: phi 0.7 is not above eps2
    assert not gate.decide(moved) and gate.phi == pytest.approx(0.7)
    assert gate.decide(frozenset(range(2, 12)))  # phi 0.8


def test_past_gate_uses_the_last_two_token_sets():
    gate = ReuseGate(eps1_deg=10.0, eps2=0.7, max_reuse=2)
    gate.record(action(0.0, 1.0), frozenset(range(10)))
    gate.record(action(0.0, 1.0), frozenset(range(5, 15)))  # phi 0.5
    assert not gate.decide() and gate.phi == 0.5
    gate.record(action(0.0, 1.0), frozenset(range(5, 15)))
    assert gate.decide() and gate.phi == 1.0
    gate.record(None, None)
    gate.record(None, None)
    assert not gate.decide()  # capped
    gate.reset()
    assert not gate.decide() and gate.last is None


def test_gate_ignores_dimensions_outside_dims():
    # Constant dimensions (always -1 here) would make opposite motions look 55 degrees apart.
    gate = ReuseGate(eps1_deg=30.0, eps2=0.0, max_reuse=1, dims=np.array([True, False, False]))
    gate.record(action(1.0, -1.0, -1.0), frozenset({1}))
    gate.record(action(-1.0, -1.0, -1.0), frozenset({1}))
    assert not gate.decide(frozenset({1})) and gate.alpha == pytest.approx(180.0)


# -- the accelerated policy ----------------------------------------------------------------


@pytest.mark.parametrize('layer', [1, 3])
def test_all_tokens_and_no_reuse_is_bit_identical(policies, layer):
    base, other = policies
    fast = FlashVLAPolicy(other, flashvla_options(
        {'keep': 1.0, 'reuse': False, 'layer': layer, 'draft': False}))
    for rgb, instruction in frames(3):
        a, b = base.predict(rgb, instruction), fast.predict(rgb, instruction)
        assert a.token_ids == b.token_ids
        assert np.array_equal(a.values, b.values)
        assert b.info['kept_tokens'] == 256 and not b.info['reused']


@torch.inference_mode()
def test_pruning_drops_tokens_from_later_layers_and_their_caches(policies):
    base, other = policies
    fast = FlashVLAPolicy(other, flashvla_options(
        {'keep': 160, 'reuse': False, 'layer': 2, 'draft': False}))
    rgb, instruction = next(frames(1))
    action = fast.predict(rgb, instruction)
    prompt = action.info['prompt_tokens']
    full = 1 + 256 + prompt - 1
    pruned = 1 + 160 + prompt - 1
    decoded = 6  # the last of 7 action tokens needs no forward pass
    lengths = [layer.self_attn.cache.length for layer in other.model.language_model.model.layers]
    assert lengths == [full + decoded] * 2 + [pruned + decoded] * 2
    # The pruned prediction equals the plain model run with a layer hook that drops the same
    # tokens at their original positions (an independent path through Llama.forward).
    seq, t = attention_output(other, rgb, instruction, 1)
    keep = select_tokens(information_contribution(t)[0], 160)
    index = torch.cat([torch.tensor([0]), keep + 1, torch.arange(257, full)])

    def drop(i, hidden, positions):
        return (hidden[:, index], positions[index]) if i == 1 else None

    llm = other.model.language_model
    llm.reset_cache()
    first = base.greedy(llm(seq, torch.arange(full), layer_hook=drop))
    assert first == action.token_ids[0]
    assert other.decode(first, full)[0] == action.token_ids


@pytest.mark.parametrize('guess', ['previous', 'wrong', 'right'])
@torch.inference_mode()
def test_draft_verification_decodes_the_same_tokens(policies, guess):
    base, _ = policies
    llm = base.model.language_model
    for rgb, instruction in frames(2):
        expected = base.predict(rgb, instruction).token_ids
        draft = {'previous': base.predict(next(frames(1, seed=7))[0], instruction).token_ids,
                 'wrong': [t - 1 for t in expected], 'right': expected}[guess]
        _, seq = base.embed_inputs(rgb, instruction, Stopwatch(base.device))
        full = seq.shape[1]
        first = base.greedy(llm(seq, torch.arange(full)))
        tokens, calls = base.decode(first, full, draft)
        assert tokens == expected
        assert calls[0] == (6, 0)  # all guesses fed at once
        accepted = next((i for i in range(1, 6) if draft[i] != expected[i]), 6)
        # Sequential calls only after the first wrong guess, from the token it produced on.
        assert calls[1:] == [(1, k) for k in range(accepted, 6)]
        if guess == 'right':
            assert len(calls) == 1
        # The cache holds t0..t5, each once: entries after a wrong guess were truncated.
        assert {layer.self_attn.cache.length for layer in llm.model.layers} == {full + 6}


def test_draft_steps_count_their_decode_calls(policies):
    _, other = policies
    fast = FlashVLAPolicy(other, flashvla_options({'keep': 100, 'reuse': False, 'draft': True}))
    steps = [fast.predict(rgb, instruction) for rgb, instruction in frames(3)]
    assert steps[0].info['decode_calls'] == [(1, k) for k in range(6)]  # no draft yet
    for step in steps[1:]:
        calls = step.info['decode_calls']
        assert calls[0] == (6, 0)
        prompt = step.info['prompt_tokens']
        cfg = other.cfg
        expected = openvla_step_flops(cfg, prompt, 7, [256 + prompt] * 2 + [100 + prompt] * 2,
                                      decode_calls=calls)
        assert step.info['flops'] == expected + Flops(
            select=scoring_flops('gram', 256, cfg.text.hidden_size, 0))


def test_flops_of_pruned_and_reused_steps_are_exact(policies):
    _, other = policies
    cfg = other.cfg
    for gate in ('current', 'past'):
        fast = FlashVLAPolicy(other, flashvla_options(
            {'keep': 100, 'layer': 1, 'gate': gate, 'eps1_deg': 180.0, 'eps2': 0.0,
             'max_reuse': 1}))
        rgb, instruction = next(frames(1))
        steps = [fast.predict(rgb, instruction) for _ in range(4)]  # same frame: stable
        calls = steps[3].info['decode_calls']
        assert [s.info['reused'] for s in steps] == [False, False, True, False]
        prompt = steps[0].info['prompt_tokens']
        full, pruned = 256 + prompt, 100 + prompt
        select = Flops(select=scoring_flops('gram', 256, cfg.text.hidden_size, 0))
        inferred = openvla_step_flops(cfg, prompt, 7, [full] + [pruned] * 3) + select
        assert steps[0].info['flops'] == inferred  # no draft yet: one token at a time
        assert calls == [(6, 0)]  # the same frame again: the previous action is right
        assert steps[3].info['flops'] == openvla_step_flops(
            cfg, prompt, 7, [full] + [pruned] * 3, decode_calls=calls) + select
        if gate == 'current':  # vision and the first layer ran on the new frame
            reused = openvla_step_flops(cfg, prompt, 0, [full]) + select
            assert reused.decode == reused.head == 0
        else:
            reused = Flops()  # decided from memory: nothing ran
        assert steps[2].info['flops'] == reused
        assert np.array_equal(steps[2].values, steps[1].values)
        assert steps[3].info['reuse_rate'] == 0.25
        done = sum((s.info['flops'].total for s in steps), 0)
        whole = 4 * openvla_step_flops(cfg, prompt, 7).total
        assert steps[3].info['flops_saved'] == pytest.approx(1 - done / whole)


def test_memory_resets_on_instruction_change_and_reset(policies):
    _, other = policies
    fast = FlashVLAPolicy(other, flashvla_options(
        {'gate': 'past', 'eps1_deg': 180.0, 'eps2': 0.0, 'max_reuse': 3}))
    rgb, _ = next(frames(1))
    run = [fast.predict(rgb, 'pick up the red block').info['reused'] for _ in range(3)]
    assert run == [False, False, True]
    assert not fast.predict(rgb, 'push the blue block').info['reused']  # new task: inference
    assert not fast.predict(rgb, 'push the blue block').info['reused']  # needs two actions
    assert fast.predict(rgb, 'push the blue block').info['reused']
    fast.reset()
    assert not fast.predict(rgb, 'push the blue block').info['reused']


def test_bad_input_is_rejected_on_reuse_steps_too(policies):
    from flashvla_ros.policy import InputError

    _, other = policies
    fast = FlashVLAPolicy(other, flashvla_options(
        {'gate': 'past', 'eps1_deg': 180.0, 'eps2': 0.0, 'max_reuse': 3}))
    rgb, instruction = next(frames(1))
    fast.predict(rgb, instruction)
    fast.predict(rgb, instruction)
    with pytest.raises(InputError):
        fast.predict(rgb[:, :, :2], instruction)  # the gate would have reused here
    assert fast.predict(rgb, instruction).info['reused']


@pytest.mark.parametrize('options, reason', [
    ({'keep': 0}, 'keep must be > 0'),
    ({'keep': 2.5}, 'whole count'),
    ({'energy': 1.5}, 'energy'),
    ({'svd': 'qr'}, "svd must be 'gram'"),
    ({'gate': 'future'}, 'gate must be'),
    ({'eps2': -0.1}, 'eps2'),
    ({'max_reuse': 0}, 'max_reuse'),
    ({'svd': 'lowrank'}, 'lowrank needs a fixed rank'),
    ({'preset': 'ludicrous'}, 'unknown FlashVLA preset'),
    ({'kepp': 0.5}, 'unknown FlashVLA option'),
    ({'reuse': 'yes'}, 'must be a bool'),
    ({'layer': 1.5}, 'must be a int'),
    ({'keep': math.nan}, 'keep must be > 0'),
])
def test_bad_options_are_rejected_with_the_reason(options, reason):
    with pytest.raises(ValueError, match=reason):
        flashvla_options(options)


def test_presets_and_overrides(policies):
    fast = flashvla_options({'preset': 'fast', 'keep': 0.75})
    assert fast.gate == 'past' and fast.keep == 0.75
    assert flashvla_options({'preset': 'conservative'}).gate == 'current'
    with pytest.raises(ValueError, match=r'layer must be in 1\.\.3'):
        FlashVLAPolicy(policies[1], flashvla_options({'layer': 4}))
    assert flashvla_options({'keep': 0.625}).kept_tokens(64) == 40
