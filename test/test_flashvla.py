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

"""FlashVLA: token scores and selection, the reuse gate, exact records, and identity at K = N."""

import math

import numpy as np
import pytest
import torch

from flashvla_ros.accel.flashvla import (
    FlashVLA,
    ReuseGate,
    action_angle_deg,
    information_contribution,
    select_tokens,
    token_overlap,
)
from flashvla_ros.accel.registry import accelerate
from flashvla_ros.policy import ActionChunk, Observation, load_policy
from flashvla_ros.policy.decode import decode_action
from flashvla_ros.policy.flops import StepRecord
from flashvla_ros.policy.preprocess import preprocess
from flashvla_ros.policy.step import RunningStats
from flashvla_ros.sim.tasks import Episode

METHODS = ('gram', 'exact', 'lowrank')


def frames(n: int, seed: int = 1_000_000, family: str = 'pick_place'):
    """Closed-loop frames from the mock world driven by its scripted expert."""
    ep = Episode(seed, family)
    for _ in range(n):
        yield ep.observe(), ep.instruction
        ep.step(ep.expert_action())


def prefill(policy, rgb, instruction):
    """Return the prefill sequence of a frame: (embeddings [1, T, D], its layout)."""
    ids = policy.prompt_ids(instruction)
    layout = policy.layout(ids.numel())
    pixels = policy.model.encode_image(preprocess(rgb, policy.cfg.image_size).to(policy.dtype))
    llm = policy.model.language_model
    return layout.assemble(llm.embed(ids[None]), pixels), layout


def attention_output(policy, rgb, instruction, layer: int):
    """Prefill embeddings and layer `layer`'s attention output at the visual positions."""
    seq, layout = prefill(policy, rgb, instruction)
    llm = policy.model.language_model
    probes = []
    llm.reset_cache()
    llm.run(seq, layout.positions(), range(layer + 1), {layer: {'attention_output'}},
            lambda i, hidden, found: probes.append(found))
    return seq, probes[-1]['attention_output'][0, layout.visual_span]


def flashvla(policy, **options):
    """`policy` with FlashVLA plugged in (its running statistics start again)."""
    return accelerate(policy, ['flashvla'], {'flashvla': options})


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


def action(*normalized: float) -> ActionChunk:
    v = np.array([normalized], dtype=np.float64)
    return ActionChunk(v, v, [0] * v.shape[1], info=None)


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


def plan(gripper: list[float]) -> ActionChunk:
    """Make a chunk moving along x at every row, with this gripper column."""
    v = np.array([[0.5, 0.0, g] for g in gripper], dtype=np.float64)
    return ActionChunk(v, v, [], info=None)


@pytest.mark.parametrize('rows, reused', [(0, False), (4, False), (3, True)])
def test_a_chunk_that_changes_the_gripper_within_gripper_rows_is_not_reused(rows, reused):
    # The same motion twice (angle 0): only the gripper column of the last plan decides.
    gate = ReuseGate(eps1_deg=30.0, eps2=0.0, max_reuse=1, gripper_rows=rows)
    gate.gripper = np.array([False, False, True])
    gate.record(plan([1.0] * 6), frozenset({1}))
    assert not gate.decide()  # one inference: never
    gate.record(plan([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), frozenset({1}))  # closes at row 4
    assert gate.decide() is reused and gate.alpha == pytest.approx(0.0, abs=1e-3)
    gate.record(plan([1.0] * 6), frozenset({1}))  # a plan that holds it: reused again
    assert gate.decide()


# -- the accelerated policy ----------------------------------------------------------------


def predict(policy, rgb, instruction):
    return policy.predict(Observation(rgb, instruction))


@pytest.mark.parametrize('layer', [1, 3])
def test_all_tokens_and_no_reuse_is_bit_identical(policies, layer):
    base, other = policies
    fast = flashvla(other, keep_fraction=1.0, reuse=False, layer=layer, draft=False)
    for rgb, instruction in frames(3):
        a, b = predict(base, rgb, instruction), predict(fast, rgb, instruction)
        assert a.token_ids == b.token_ids
        assert np.array_equal(a.values, b.values)
        assert b.info.kept_tokens == 256 and not b.info.reused and b.info.layers_run == 4
    # With the reuse gate on and every token kept, nothing is scored: the gate's token set is
    # every token either way (the scores would decide nothing, and cost an SVD per step).
    gated = flashvla(other, keep_fraction=1.0, layer=layer, draft=False)
    chunk = predict(gated, *next(frames(1)))
    assert chunk.info.record.scoring == [] and chunk.info.flops.select == 0


def prefill_record(layout, layers: dict, decode_calls, scoring=(), stopped=False,
                   vision=True) -> StepRecord:
    head = (1 + sum(fed for fed, _ in decode_calls)) if not stopped else 0
    return StepRecord(layout, 4, (0, 1, 2, 3), stopped, vision, layers, list(decode_calls),
                      head, list(scoring))


@torch.inference_mode()
def test_pruning_drops_tokens_from_later_layers_and_their_caches(policies):
    base, other = policies
    fast = flashvla(other, keep_tokens=160, reuse=False, layer=2, draft=False)
    rgb, instruction = next(frames(1))
    action = predict(fast, rgb, instruction)
    prompt = action.info.prompt_tokens
    full = 1 + 256 + prompt - 1
    pruned = 1 + 160 + prompt - 1
    decoded = 6  # the last of 7 action tokens needs no forward pass
    lengths = [layer.self_attn.cache.length for layer in other.model.language_model.model.layers]
    assert lengths == [full + decoded] * 2 + [pruned + decoded] * 2
    assert action.info.record == prefill_record(
        action.info.record.layout, {0: full, 1: full, 2: pruned, 3: pruned},
        [(1, k) for k in range(6)], scoring=[('gram', 256, 0)])
    # The pruned prediction equals the plain model run with a callback that drops the same
    # tokens at their original positions (an independent path through the loop).
    seq, t = attention_output(other, rgb, instruction, 1)
    keep = select_tokens(information_contribution(t)[0], 160)
    index = torch.cat([torch.tensor([0]), keep + 1, torch.arange(257, full)])
    llm = base.model.language_model
    llm.reset_cache()
    hidden, _ = llm.run(seq, torch.arange(full), None, None,
                        lambda i, hidden, probe: index if i == 1 else None)
    first = llm.logits(hidden)
    assert int(first[0].argmax()) == action.token_ids[0]
    record = StepRecord(None, 4)
    assert decode_action(llm, range(4), first, full, 7, None, record) == action.token_ids


@pytest.mark.parametrize('guess', ['previous', 'wrong', 'right'])
@pytest.mark.parametrize('static', [False, True])
@torch.inference_mode()
def test_draft_verification_decodes_the_same_tokens(tiny_dir, policies, guess, static):
    base = policies[0] if not static else load_policy(str(tiny_dir), static_cache=True)
    llm = base.model.language_model
    for rgb, instruction in frames(2):
        expected = predict(base, rgb, instruction).token_ids
        draft = {'previous': predict(base, next(frames(1, seed=7))[0], instruction).token_ids,
                 'wrong': [t - 1 for t in expected], 'right': expected}[guess]
        seq, layout = prefill(base, rgb, instruction)
        llm.reset_cache()
        full = seq.shape[1]
        record = StepRecord(layout, 4)
        first = llm(seq, torch.arange(full))
        assert decode_action(llm, range(4), first, full, 7, draft, record) == expected
        calls = record.decode_calls
        assert calls[0] == (6, 0)  # all guesses fed at once
        accepted = next((i for i in range(1, 6) if draft[i] != expected[i]), 6)
        # Sequential calls only after the first wrong guess, from the token it produced on.
        assert calls[1:] == [(1, k) for k in range(accepted, 6)]
        if guess == 'right':
            assert len(calls) == 1
        if not static:  # the cache holds t0..t5, each once: later entries were truncated
            assert {layer.self_attn.cache.length for layer in llm.model.layers} == {full + 6}


def test_draft_steps_record_their_decode_calls(policies):
    _, other = policies
    fast = flashvla(other, keep_tokens=100, reuse=False, draft=True)
    steps = [predict(fast, rgb, instruction) for rgb, instruction in frames(3)]
    assert steps[0].info.decode_calls == [(1, k) for k in range(6)]  # no draft yet
    for step in steps[1:]:
        calls = step.info.decode_calls
        assert calls[0] == (6, 0)
        layout = step.info.record.layout
        assert step.info.record == prefill_record(
            layout, {0: layout.prefill, 1: layout.prefill, 2: 100 + layout.prompt,
                     3: 100 + layout.prompt}, calls, scoring=[('gram', 256, 0)])


def test_records_of_pruned_and_reused_steps_are_exact(policies):
    _, other = policies
    for gate in ('current', 'past'):
        fast = flashvla(other, keep_tokens=100, layer=1, gate=gate, eps1_deg=180.0, eps2=0.0,
                        max_reuse=1)
        rgb, instruction = next(frames(1))
        steps = [predict(fast, rgb, instruction) for _ in range(4)]  # same frame: stable
        calls = steps[3].info.decode_calls
        assert [s.info.reused for s in steps] == [False, False, True, False]
        layout = steps[0].info.record.layout
        full, pruned = layout.prefill, 100 + layout.prompt
        scored = [('gram', 256, 0)]
        layers = {0: full, 1: pruned, 2: pruned, 3: pruned}
        assert steps[0].info.record == prefill_record(layout, layers,
                                                      [(1, k) for k in range(6)], scored)
        assert calls == [(6, 0)]  # the same frame again: the previous action is right
        assert steps[3].info.record == prefill_record(layout, layers, calls, scored)
        if gate == 'current':  # vision and the first layer ran on the new frame
            reused = prefill_record(layout, {0: full}, [], scored, stopped=True)
        else:  # decided from memory: nothing ran
            reused = prefill_record(layout, {}, [], stopped=True, vision=False)
        assert steps[2].info.record == reused
        assert np.array_equal(steps[2].values, steps[1].values)
        stats = RunningStats()
        for s in steps:
            stats.add(s.info)
        assert stats.reuse_rate == 0.25
        done = sum(s.info.flops.total for s in steps)
        plain = predict(policies[0], rgb, instruction).info.flops.total
        assert steps[3].info.flops_full == plain
        assert stats.flops_saved == pytest.approx(1 - done / (4 * plain))


def test_memory_resets_on_instruction_change_and_reset(policies):
    _, other = policies
    fast = flashvla(other, gate='past', eps1_deg=180.0, eps2=0.0, max_reuse=3)
    rgb, _ = next(frames(1))
    run = [predict(fast, rgb, 'pick up the red block').info.reused for _ in range(3)]
    assert run == [False, False, True]
    assert not predict(fast, rgb, 'push the blue block').info.reused  # new task: inference
    assert not predict(fast, rgb, 'push the blue block').info.reused  # needs two actions
    assert predict(fast, rgb, 'push the blue block').info.reused
    fast.reset()
    assert not predict(fast, rgb, 'push the blue block').info.reused


def test_bad_input_is_rejected_on_reuse_steps_too(policies):
    from flashvla_ros.policy import InputError

    _, other = policies
    fast = flashvla(other, gate='past', eps1_deg=180.0, eps2=0.0, max_reuse=3)
    rgb, instruction = next(frames(1))
    predict(fast, rgb, instruction)
    predict(fast, rgb, instruction)
    with pytest.raises(InputError):
        predict(fast, rgb[:, :, :2], instruction)  # the gate would have reused here
    assert predict(fast, rgb, instruction).info.reused


@pytest.mark.parametrize('options, reason', [
    ({'keep_fraction': 0}, r'keep_fraction=0 must be in \(0, 1\]'),
    ({'keep_fraction': 2.5}, r'must be in \(0, 1\]'),
    ({'keep_tokens': 2.5}, 'must be an integer'),
    ({'energy': 1.5}, 'energy'),
    ({'svd': 'qr'}, "choose one of gram, exact, lowrank"),
    ({'gate': 'future'}, 'gate=.future'),
    ({'eps2': -0.1}, 'eps2'),
    ({'max_reuse': 0}, 'max_reuse'),
    ({'svd': 'lowrank'}, 'lowrank needs a fixed rank'),
    ({'preset': 'ludicrous'}, 'unknown flashvla preset'),
    ({'kepp': 0.5}, 'unknown flashvla option'),
    ({'reuse': 'yes'}, 'true or false'),
    ({'layer': 1.5}, 'must be an integer'),
    ({'keep_fraction': math.nan}, 'must be finite'),
])
def test_bad_options_are_rejected_with_the_reason(options, reason):
    with pytest.raises(ValueError, match=reason):
        FlashVLA.build_options(options)


def test_presets_and_overrides(policies):
    fast = FlashVLA.build_options({'preset': 'fast', 'keep_fraction': 0.75})
    assert fast.gate == 'past' and fast.keep_fraction == 0.75
    assert FlashVLA.build_options({'preset': 'conservative'}).gate == 'current'
    with pytest.raises(ValueError, match=r'layer must be in 1\.\.3'):
        flashvla(policies[1], layer=4)
    assert FlashVLA.build_options({'keep_fraction': 0.625}).kept_tokens(64) == 40
    assert FlashVLA.build_options({'keep_tokens': 10}).kept_tokens(64) == 10
