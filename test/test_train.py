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

"""Dataset generation and a short training run of the default-policy recipe."""

from dataclasses import asdict, replace
import json
import math

import numpy as np
import pytest
from safetensors.torch import load_file
import torch

from flashvla_ros.policy import Observation, load_policy
from flashvla_ros.policy.config import TextConfig
from flashvla_ros.policy.layout import SequenceLayout
from flashvla_ros.policy.llama import Llama, rotate_half
from flashvla_ros.policy.presets import model_path
from flashvla_ros.sim.tasks import Episode
from flashvla_ros.train import dataset as ds
from flashvla_ros.train.trainer import (
    FOCUS_LAYER,
    Batcher,
    TrainConfig,
    attention_focus_loss,
    instruction_corpus,
    run_with_attention,
    train,
)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('data')
    ds.save(ds.generate(24, seed=0, noise_p=0.3), out)
    return out


def test_dataset_format_and_norm_stats(data_dir):
    data = ds.load(data_dir)
    assert len(data['ep_seed']) == 24 and data['ep_seed'].max() < ds.HELDOUT_SEED_START
    assert data['action'].shape == (len(data['episode']), 7)
    assert set(data['ep_family']) == {'reach', 'pick_place', 'push'}
    stats = json.loads((data_dir / 'norm_stats.json').read_text())['mock_world']
    assert stats['action']['q01'][:2] == [-0.02, -0.02] and stats['action']['q99'][:2] == [
        0.02, 0.02]
    assert stats['action']['mask'] == [True] * 6 + [False]
    assert stats['num_transitions'] == len(data['action']) and stats['num_trajectories'] == 24
    # Labels are the expert's action for the stored state; noise shows in `executed` only.
    assert (data['action'] != data['executed']).any()


def test_frames_are_re_rendered_exactly(data_dir):
    data = ds.load(data_dir)
    ep = Episode(int(data['ep_seed'][0]), str(data['ep_family'][0]))
    assert np.array_equal(ds.render_step(data, 0), ep.observe())
    rows = np.flatnonzero(data['episode'] == 0)
    for i in rows[:3]:
        ep_frame = ep.observe()
        assert np.array_equal(ds.render_step(data, int(i)), ep_frame)
        ep.step(data['executed'][i])


def test_held_out_seeds_are_refused():
    with pytest.raises(ValueError, match='below'):
        ds.generate(10, seed=ds.HELDOUT_SEED_START - 5)


@pytest.mark.parametrize('model', ['default', 'default-dit'])
def test_the_trainer_feeds_a_frame_exactly_as_the_policy_is_served_it(data_dir, model):
    """The ids and pixels a training batch holds for a frame are those its model is served."""
    from flashvla_ros.policy.actions import ActionCodec, NormStats
    from flashvla_ros.policy.tokenizer import build_llama_tokenizer

    policy = load_policy(str(model_path(model)))
    served: dict[str, torch.Tensor] = {}

    def spy(name, fn):
        def seen(x):
            served.setdefault(name, x)  # the first call: the prompt and frame of the step
            return fn(x)
        return seen

    llm = policy.model.language_model
    llm.embed = spy('ids', llm.embed)
    policy.model.encode_image = spy('pixels', policy.model.encode_image)

    data = ds.load(data_dir)
    tok = build_llama_tokenizer(instruction_corpus(), merges=300)  # as train() builds it
    _, stats = NormStats.select(policy.cfg.norm_stats, 'mock_world')
    head = policy.cfg.action_model
    batcher = Batcher(data, tok, ActionCodec(tok.get_vocab_size(with_added_tokens=False)), stats,
                      chunk=head.chunk if head is not None else 0)
    i = int(np.flatnonzero(data['episode'] == 1)[2])
    batch = batcher(np.array([i]))
    policy.predict(Observation(ds.render_step(data, i), str(
        data['ep_instruction'][data['episode'][i]])))

    ids = served['ids'][0].tolist()
    assert batch['text'][0, :len(ids)].tolist() == ids
    if head is not None:  # the prompt ends in the cognition token, nothing after it
        assert batch['text'].shape[1] == len(ids) and ids[-1] == tok.token_to_id('</s>')
    assert int(batch['first'][0]) == policy.layout(len(ids)).prefill - 1
    assert torch.equal(batch['pixels'], served['pixels'])


@pytest.mark.slow  # 17 s on 2 idle cores, about 260 s on 2 busy ones: `make test-all`
def test_short_training_run_learns_and_saves_a_loadable_checkpoint(data_dir, tmp_path):
    cfg = TrainConfig(steps=40, batch=8, warmup=5, lr=1e-3)
    summary = train(data_dir, tmp_path / 'a', cfg, log=lambda *a, **k: None)
    losses = [h['loss'] for h in summary['history']]  # the whole objective, aux terms included
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert np.isfinite([h['action_loss'] for h in summary['history']]).all()
    assert (tmp_path / 'a' / 'loss.png').stat().st_size > 1000
    weights = load_file(str(tmp_path / 'a' / 'model.safetensors'))
    assert not any('aux' in k or 'patch_objects' in k for k in weights)  # plain OpenVLA
    policy = load_policy(str(tmp_path / 'a'))
    assert policy.cfg.num_patches == 64 and policy.head.codec.vocab_size < 1000
    ep = Episode(ds.HELDOUT_SEED_START)
    action = policy.predict(Observation(ep.observe(), ep.instruction))
    assert action.values.shape == (7,) and action.info.visual_tokens == 64
    # Seeded and reproducible: the same run gives the same weights.
    train(data_dir, tmp_path / 'b', TrainConfig(steps=3, batch=4, warmup=2),
          log=lambda *a, **k: None)
    train(data_dir, tmp_path / 'c', TrainConfig(steps=3, batch=4, warmup=2),
          log=lambda *a, **k: None)
    b, c = (load_file(str(tmp_path / x / 'model.safetensors')) for x in 'bc')
    assert all(np.array_equal(b[k].numpy(), c[k].numpy()) for k in b)


def test_chunk_labels_are_the_experts_plan_from_each_state(data_dir):
    from flashvla_ros.policy.actions import NormStats
    from flashvla_ros.train.trainer import chunk_targets

    data = ds.load(data_dir)
    plan, action, executed, episode = (data[k] for k in ('plan', 'action', 'executed',
                                                         'episode'))
    assert plan.shape == (len(action), ds.PLAN_STEPS, 7)
    assert np.allclose(plan[:, 0], action, atol=1e-6)
    # Where the expert itself acted (no noise), its plan is what it then did, row by row;
    # after a noisy step the next labels correct that move and the plan does not.
    clean_runs, noisy_differs = 0, 0
    for i in range(len(action)):
        k = 0
        while i + k + 1 < len(action) and episode[i + k + 1] == episode[i] and k + 1 < 16 \
                and np.array_equal(executed[i + k], action[i + k]):
            k += 1
        assert np.allclose(plan[i, :k + 1], action[i:i + k + 1], atol=1e-6)
        clean_runs += k >= 3
        if k == 0 and i + 1 < len(action) and episode[i + 1] == episode[i]:
            noisy_differs += not np.allclose(plan[i, 1], action[i + 1], atol=1e-6)
    assert clean_runs > 50 and noisy_differs > 20
    # The last step of a successful episode: its label, then a wait holding the gripper.
    last = int(np.flatnonzero(episode == np.flatnonzero(data['ep_success'])[0])[-1])
    assert np.allclose(plan[last, 1:, :6], 0.0) and (plan[last, 1:, 6] == action[last, 6]).all()
    # Relabelling a dataset made before plans existed gives the same plans.
    legacy = {k: v for k, v in data.items() if k != 'plan'}
    assert np.array_equal(ds.with_plans(legacy)['plan'], plan)

    norm = json.loads((data_dir / 'norm_stats.json').read_text())
    _, stats = NormStats.select(norm, 'mock_world')
    chunks = chunk_targets(data, stats, np.array([0, last]), 16)
    assert np.allclose(chunks, np.clip(stats.normalize(plan[[0, last]].astype(float)), -1, 1))
    # Without plans: the labels of the following steps, and a wait past the episode's end.
    long = next(e for e in range(24) if (episode == e).sum() >= 16)
    start = int(np.flatnonzero(episode == long)[0])
    old = chunk_targets(legacy, stats, np.array([start, last]), 16)
    assert np.allclose(old[0], np.clip(stats.normalize(action[start:start + 16]), -1, 1))
    assert np.allclose(old[1, 1:, :6], stats.normalize(np.zeros((1, 7)))[:, :6])
    assert (old[1, 1:, 6] == action[last, 6]).all()


@pytest.mark.slow  # about 40 s on 2 idle cores
def test_a_diffusion_run_learns_resumes_exactly_and_predicts_chunks(data_dir, tmp_path):
    cfg = TrainConfig(steps=30, batch=8, warmup=5, lr=1e-3, head='diffusion', layers=2,
                      noise_draws=4, save_every=10)
    whole = train(data_dir, tmp_path / 'whole', cfg, log=lambda *a, **k: None)
    losses = [h['action_loss'] for h in whole['history']]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    # Interrupted after step 20 (its saved state), then continued: the same weights.
    part = tmp_path / 'part'
    train(data_dir, part, cfg, log=lambda *a, **k: None, stop_after=20)
    assert (part / 'train_state.pt').is_file()
    train(data_dir, part, cfg, log=lambda *a, **k: None)
    assert not (part / 'train_state.pt').exists()
    a, b = (load_file(str(p / 'model.safetensors')) for p in (tmp_path / 'whole', part))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    policy = load_policy(str(part))
    ep = Episode(ds.HELDOUT_SEED_START)
    chunk = policy.predict(Observation(ep.observe(), ep.instruction))
    assert chunk.actions.shape == (16, 7) and policy.cfg.action_model.depth == 2


@pytest.mark.slow  # a training lever (docs/TRAINING-NOTES): the trainer's loop is tested above
def test_layer_drop_skips_layers_and_resumes_exactly(data_dir, tmp_path):
    cfg = TrainConfig(steps=12, batch=4, warmup=2, lr=1e-3, head='diffusion', layers=4,
                      noise_draws=2, save_every=6, layer_drop=0.5)
    quiet = {'log': lambda *a, **k: None}
    train(data_dir, tmp_path / 'whole', cfg, **quiet)
    train(data_dir, tmp_path / 'part', cfg, stop_after=6, **quiet)
    train(data_dir, tmp_path / 'part', cfg, **quiet)  # the skipped layers come from the state
    whole, part = (load_file(str(tmp_path / d / 'model.safetensors')) for d in ('whole', 'part'))
    assert all(np.array_equal(whole[k].numpy(), part[k].numpy()) for k in whole)
    # Always dropped, layers 2 and 3 never train: 3 steps or 6, the same weights; the first
    # two (never dropped) do train.
    always = replace(cfg, layer_drop=1.0, save_every=250)
    for steps in (3, 6):
        train(data_dir, tmp_path / f'drop{steps}', replace(always, steps=steps), **quiet)
    short, longer = (load_file(str(tmp_path / f'drop{n}' / 'model.safetensors')) for n in (3, 6))
    layer = 'language_model.model.layers.{}.'
    for i, trained in ((0, True), (1, True), (2, False), (3, False)):
        keys = [k for k in short if k.startswith(layer.format(i))]
        same = all(np.array_equal(short[k].numpy(), longer[k].numpy()) for k in keys)
        assert keys and same != trained, i


def test_dagger_rollouts_execute_chunks_as_the_node_does():
    # The rollout infers once per `chunk_steps` steps and executes those rows in order; the
    # labels stay the expert's. A stand-in policy numbers its rows (x = 0.001 * row).
    from flashvla_ros.policy.step import ActionChunk

    calls = []

    class NumberedRows:
        def predict(self, observation):
            calls.append(observation.instruction)
            rows = np.zeros((16, 7))
            rows[:, 0] = 0.001 * np.arange(16)
            return ActionChunk(rows, rows, [], None)

    data = ds.generate(1, seed=7, families=('pick_place',), policy=NumberedRows(),
                       chunk_steps=4)
    steps = len(data['action'])
    assert steps == 80 and len(calls) == 20 and not data['ep_success'].any()
    assert np.allclose(data['executed'][:, 0], 0.001 * (np.arange(steps) % 4))
    assert np.allclose(data['plan'][:, 0], data['action'])


def reference_focus_loss(layer, hidden, cos, sin, batch, layout):
    """Compute the focus loss as the trainer did before reading `Llama.run`'s probe."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    b = torch.arange(x.shape[0])
    q = attn.q_proj(x[b, batch['first']]).view(len(b), attn.n_heads, attn.head_dim)
    k = attn.k_proj(x).view(*x.shape[:2], attn.n_kv, attn.head_dim)
    k = k.repeat_interleave(attn.n_heads // attn.n_kv, dim=2)
    rot = batch['first']
    q = q * cos[rot].unsqueeze(1) + rotate_half(q) * sin[rot].unsqueeze(1)
    k = k * cos[None, :, None] + rotate_half(k) * sin[None, :, None]
    scores = torch.einsum('bhd,bthd->bht', q[:, :3], k[:, :, :3]) / math.sqrt(attn.head_dim)
    visible = torch.arange(x.shape[1])[None, :] <= batch['first'][:, None]
    scores = scores.masked_fill(~visible[:, None, :], float('-inf'))
    log_p = scores.log_softmax(-1)[:, :, layout.visual_span]
    target = batch['focus'] > 0
    mass = torch.logsumexp(log_p.masked_fill(~target, float('-inf')), dim=-1)
    return -(mass[target.any(-1)]).mean()


def test_attention_focus_loss_from_the_layer_loops_probe_matches_the_old_computation():
    torch.manual_seed(0)
    llm = Llama(TextConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=64))  # grouped-query attention
    with torch.no_grad():
        for layer in llm.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
    layout = SequenceLayout(visual=9, prompt=8)
    seq = torch.randn(3, layout.prefill, 32, requires_grad=True)
    positions = layout.positions()
    focus = (torch.rand(3, 3, layout.visual) < 0.3).float()
    focus[1, 2] = 0  # no zone: that head is not supervised
    focus[:, :, 0] = 1  # every other head has a target
    batch = {'first': torch.tensor([12, 16, 10]), 'focus': focus}
    # Before: the layers one by one, and the attention rebuilt from the focus layer's input.
    cos, sin = llm.rotary(positions, seq.dtype)
    hidden = seq
    for i, layer in enumerate(llm.model.layers):
        if i == FOCUS_LAYER:
            old = reference_focus_loss(layer, hidden, cos, sin, batch, layout)
        hidden = layer(hidden, cos, sin)[0]
    old_grad = torch.autograd.grad(old, seq)[0]
    # Now: the layer loop and its attention-weights probe.
    out, weights = run_with_attention(llm, seq, positions, [0, 1, 2], FOCUS_LAYER)
    new = attention_focus_loss(weights, batch, layout)
    assert torch.equal(out, hidden)
    torch.testing.assert_close(new, old, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(new, seq)[0], old_grad, rtol=1e-4, atol=1e-6)
    assert 1.0 < old.item() < 10.0  # a real -log mass, not a degenerate 0
    # A plan without the focus layer (LayerDrop) has no weights to supervise.
    assert run_with_attention(llm, seq, positions, [0, 2], FOCUS_LAYER)[1] is None


def test_the_command_line_offers_every_training_option(capsys):
    from flashvla_ros.train.cli import main

    with pytest.raises(SystemExit):
        main(['--help'])
    text = capsys.readouterr().out
    assert 'flashvla-train: train the embedded default' in text
    for flag in ['--data', '--out', '--plot-log', '--plot-out', '--init', '--stop-after',
                 *(f'--{f.replace("_", "-")}' for f in asdict(TrainConfig()))]:
        assert flag in text, flag
