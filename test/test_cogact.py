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


"""The CogACT-style diffusion head: CogACT's names and shapes, DDIM, the policy, checkpoints."""

from collections import Counter
import json
import math

import numpy as np
import pytest
from safetensors import safe_open
import torch

from flashvla_ros.accel.registry import accelerate
from flashvla_ros.policy import (
    CheckpointError,
    NonFiniteOutputError,
    Observation,
    heads,
    load_policy,
)
from flashvla_ros.policy.actions import GRIPPER
from flashvla_ros.policy.checkpoint import save_checkpoint, summarise_keys
from flashvla_ros.policy.cogact_checkpoint import PREFIXES, convert_cogact
from flashvla_ros.policy.dit import (
    DiT,
    DiTConfig,
    ddim_sample,
    frame_seed,
    squaredcos_alphas_cumprod,
    timestep_embedding,
)
from flashvla_ros.policy.flops import count_flops, full_flops
from flashvla_ros.policy.openvla import OpenVLA, OpenVLAPolicy
from flashvla_ros.policy.presets import cogact_7b_config, tiny_cogact_config
from flashvla_ros.policy.tokenizer import load_tokenizer
from flashvla_ros.sim.tasks import Episode
from flashvla_ros.tools import convert
from flashvla_ros.tools.make_tiny import random_model


def test_dit_b_has_cogacts_parameter_names_and_shapes():
    with torch.device('meta'):
        net = DiT(DiTConfig.sized('DiT-B'))
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert shapes['x_embedder.linear.weight'] == [768, 7]
    assert shapes['history_embedder.linear.weight'] == [768, 7]
    assert shapes['t_embedder.mlp.0.weight'] == [768, 256]
    assert shapes['t_embedder.mlp.2.weight'] == [768, 768]
    assert shapes['z_embedder.linear.weight'] == [768, 4096]
    assert shapes['z_embedder.uncondition'] == [1, 4096]
    assert shapes['positional_embedding'] == [17, 768]
    assert shapes['blocks.11.attn.qkv.weight'] == [2304, 768]
    assert shapes['blocks.11.attn.proj.weight'] == [768, 768]
    assert shapes['blocks.11.mlp.fc1.weight'] == [3072, 768]
    assert shapes['blocks.11.mlp.fc2.weight'] == [768, 3072]
    assert shapes['final_layer.linear.weight'] == [7, 768]
    assert 'blocks.12.attn.qkv.weight' not in shapes and not any('norm' in k for k in shapes)
    assert round(sum(v.numel() for v in net.state_dict().values()) / 1e6, 2) == 88.99


def test_timestep_embedding_is_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]))
    assert emb.shape == (2, 256)
    assert emb[0, :128].tolist() == [1.0] * 128 and emb[0, 128:].tolist() == [0.0] * 128
    assert emb[1, 0].item() == pytest.approx(math.cos(3.0)) and \
        emb[1, 128].item() == pytest.approx(math.sin(3.0))


def test_squared_cosine_schedule():
    a = squaredcos_alphas_cumprod(100).double()

    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    assert a[0].item() == pytest.approx(alpha_bar(0.01) / alpha_bar(0.0))
    assert (a[1:] < a[:-1]).all() and a[-1].item() == pytest.approx(a[-2].item() * 0.001)


@torch.no_grad()
def test_ddim_with_a_zero_noise_estimate_rescales_the_noise_exactly():
    # With eps = 0 every DDIM step is x <- sqrt(a_prev / a_t) x: from t = 90 to 0 it
    # telescopes to noise / sqrt(a_90), with or without guidance (uncond + s * 0 = 0).
    for scale in (1.0, 1.5):
        net = DiT(DiTConfig.sized('DiT-S', token_size=8, cfg_scale=scale)).eval()
        torch.nn.init.zeros_(net.final_layer.linear.weight)
        torch.nn.init.zeros_(net.final_layer.linear.bias)
        noise = torch.randn(1, 16, 7)
        out = ddim_sample(net, torch.randn(1, 1, 8), noise)
        alphas = squaredcos_alphas_cumprod(100)
        assert torch.allclose(out, noise / math.sqrt(float(alphas[90])), atol=1e-5)


def cogact_sampler(net: DiT, condition: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """
    Sample as CogACT's vendored gaussian_diffusion / respace do, written out independently.

    Float64 numpy schedule, respaced "ddimN" (new betas between the kept timesteps and their
    cumulative product again), coefficients cast to float32 per batch row at use, the whole
    eta 0 formula with its zero sigma, x0 unclipped; guidance runs on the doubled batch and
    keeps the first half. The net is called through its plain forward each step.
    """
    cfg, steps = net.cfg, net.cfg.train_steps

    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                      for i in range(steps)], dtype=np.float64)
    full = np.cumprod(1.0 - betas)
    stride = min(s for s in range(1, steps) if len(range(0, steps, s)) == cfg.ddim_steps)
    kept = list(range(0, steps, stride))
    new_betas = [1 - full[t] / (full[kept[j - 1]] if j else 1.0) for j, t in enumerate(kept)]
    abar = np.cumprod(1.0 - np.array(new_betas, dtype=np.float64))
    table = {'abar': abar, 'prev': np.append(1.0, abar[:-1]),
             'recip': np.sqrt(1.0 / abar), 'recipm1': np.sqrt(1.0 / abar - 1)}

    guided = cfg.cfg_scale > 1
    n = noise.shape[0]
    x = torch.cat([noise, noise]) if guided else noise
    z = condition
    if guided:
        z = torch.cat([condition, net.z_embedder.uncondition[None].expand(n, 1, -1)])

    def coef(name, index):  # one float32 value per row, broadcast to x's shape
        rows = torch.from_numpy(table[name])[index].float()
        return rows[:, None, None] + torch.zeros(x.shape)

    for i in range(len(kept) - 1, -1, -1):
        index = torch.full((x.shape[0],), i)
        t = torch.tensor(kept)[index]
        if guided:
            out = net(torch.cat([x[:n], x[:n]]), t, z)
            cond, uncond = out.split(n)
            half = uncond + cfg.cfg_scale * (cond - uncond)
            out = torch.cat([half, half])
        else:
            out = net(x, t, z)
        x0 = coef('recip', index) * x - coef('recipm1', index) * out
        eps = (coef('recip', index) * x - x0) / coef('recipm1', index)
        a, a_prev, eta = coef('abar', index), coef('prev', index), 0.0
        sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
        mean = x0 * torch.sqrt(a_prev) + torch.sqrt(1 - a_prev - sigma ** 2) * eps
        x = mean + (index != 0).float()[:, None, None] * sigma * torch.randn(x.shape)
    return x[:n]


@torch.no_grad()
@pytest.mark.parametrize('scale,ddim_steps,batch', [
    pytest.param(1.0, 10, 1, marks=pytest.mark.slow),  # no guidance: the default tier has 1.5
    (1.5, 10, 1), (3.0, 5, 2)])
def test_ddim_is_bit_identical_to_cogacts_sampler(scale, ddim_steps, batch):
    # The old sampler (float64 python square roots of the unspaced schedule) differed from
    # this in the last bits (up to 1.3e-6 on default-dit); this pins CogACT's arithmetic.
    torch.manual_seed(0)
    net = DiT(DiTConfig(hidden_size=32, depth=2, num_heads=2, chunk=4, token_size=8,
                        ddim_steps=ddim_steps, cfg_scale=scale)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    for _ in range(3):
        condition, noise = torch.randn(batch, 1, 8), torch.randn(batch, 4, 7)
        ours = ddim_sample(net, condition, noise)
        assert ours.dtype == torch.float32
        assert torch.equal(ours, cogact_sampler(net, condition, noise))
        # bf16 inputs: the net and the sampler still run in the head's fp32.
        low = ddim_sample(net, condition.bfloat16(), noise.bfloat16())
        assert torch.equal(low, cogact_sampler(net, condition.bfloat16().float(),
                                               noise.bfloat16().float()))


def tiny_cogact(tiny_dir, seed: int = 0) -> OpenVLAPolicy:
    """Make a random tiny VLM with a random DiT-S head (make_tiny's init) and tokenizer."""
    torch.manual_seed(seed)
    model = random_model(tiny_cogact_config(), seed)
    for p in model.action_model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return OpenVLAPolicy(model, load_tokenizer(str(tiny_dir)))


@pytest.fixture(scope='module')
def cogact(tiny_dir):
    return tiny_cogact(tiny_dir)


def test_the_policy_returns_a_reproducible_chunk(cogact):
    ep = Episode(3)
    obs = Observation(ep.observe(), ep.instruction)
    a, b = cogact.predict(obs), cogact.predict(obs)
    assert a.actions.shape == (16, 7) and a.normalized.shape == (16, 7)
    assert np.array_equal(a.actions, b.actions)  # seeded noise: the same step, the same chunk
    assert set(np.unique(a.normalized[:, 6])) <= {0.0, 1.0}  # the gripper is binarised
    assert np.all(np.abs(a.normalized) <= 1.0) and a.token_ids == []
    assert np.array_equal(a.values, a.actions[0])
    # The prompt ends in the cognition token (EOS after the space), as CogACT's does.
    ids = cogact.prompt_ids(ep.instruction).tolist()
    assert ids[-2:] == [cogact.space_id, cogact.tokenizer.eos_token_id]
    record = a.info.record
    assert record.decode_calls == [] and record.head_positions == 0
    assert record.dit_passes == 20 and record.dit_parts == {'attn': 120, 'mlp': 120}
    assert a.info.flops == full_flops(cogact.cfg, record.layout)
    assert count_flops(cogact.cfg, record).head > 0


def test_each_frame_draws_its_own_noise(cogact):
    ep = Episode(3)
    frame = ep.observe()
    other = frame.copy()
    other[0, 0, 0] ^= 1  # one pixel's lowest bit
    assert frame_seed(frame) == frame_seed(frame.copy()) != frame_seed(other)
    assert frame_seed(frame, 1) != frame_seed(frame)
    # The policy's noise follows the frame: another frame, another draw of the same model.
    seen = [cogact.predict(Observation(f, ep.instruction)).normalized for f in (frame, other)]
    cogact.head.noise_seed = 1
    try:
        seen.append(cogact.predict(Observation(frame, ep.instruction)).normalized)
    finally:
        cogact.head.noise_seed = 0
    assert not np.allclose(seen[0], seen[1]) and not np.allclose(seen[0], seen[2])


@pytest.mark.parametrize('bad', [math.nan, math.inf])
def test_a_non_finite_gripper_is_refused_not_binarised(cogact, bad):
    # Thresholded first, a NaN gripper became 0 (open) and passed as a valid chunk.
    chunk = torch.zeros(16, 7)
    chunk[-1, GRIPPER] = bad
    assert isinstance(cogact.head._actions(chunk), NonFiniteOutputError)
    assert isinstance(cogact.head._actions(torch.zeros(16, 7)), heads.HeadOutput)


@pytest.mark.parametrize('gripper_rows', [0, 1])
def test_flashvla_hooks_plug_into_the_diffusion_model(tiny_dir, gripper_rows):
    policy = accelerate(tiny_cogact(tiny_dir), ['flashvla'], {'flashvla': {
        'keep_tokens': 100, 'gate': 'past', 'eps1_deg': 180.0, 'eps2': 0.0,
        'gripper_rows': gripper_rows}})
    ep = Episode(3)
    obs = Observation(ep.observe(), ep.instruction)
    steps = [policy.predict(obs) for _ in range(3)]
    assert steps[0].info.kept_tokens == 100
    # The random model's chunk changes the gripper in its later rows: checking every row (0)
    # refuses the reuse, checking the first row only (1) lets it through.
    assert len(set(steps[1].normalized[1:, -1])) == 2
    assert [s.info.reused for s in steps] == [False, False, gripper_rows == 1]
    if gripper_rows == 1:
        assert np.array_equal(steps[2].actions, steps[1].actions)


def cogact_run_dir(tmp_path, policy: OpenVLAPolicy, extra: dict | None = None,
                   drop: str | None = None):
    """Write `policy`'s weights as CogACT publishes them: checkpoints/*.pt + two JSON files."""
    parts: dict[str, dict] = {}
    for key, value in policy.model.state_dict().items():
        theirs, ours = next((t, o) for t, o in PREFIXES if key.startswith(o))
        name = theirs + key[len(ours):]
        part, _, inner = name.partition('.')
        if name != drop:
            parts.setdefault(part, {})[inner] = value.clone()
    for name, value in (extra or {}).items():
        part, _, inner = name.partition('.')
        parts.setdefault(part, {})[inner] = value
    run = tmp_path / 'cogact-run'
    (run / 'checkpoints').mkdir(parents=True)
    torch.save({'model': parts}, run / 'checkpoints' / 'step-010000-epoch-01-loss=0.1.pt')
    (run / 'config.json').write_text(json.dumps({'vla': {'base_vlm': 'tiny'}}))
    (run / 'dataset_statistics.json').write_text(json.dumps(policy.cfg.norm_stats))
    base = tmp_path / 'base.json'
    base.write_text(json.dumps(policy.cfg.to_dict()))
    return run, base


def test_a_cogact_checkpoint_converts_and_predicts_the_same_chunk(tmp_path, tiny_dir, cogact):
    run, base = cogact_run_dir(tmp_path, cogact)
    assert set(torch.load(next((run / 'checkpoints').glob('*.pt')), weights_only=True)['model']) \
        == {'vision_backbone', 'projector', 'llm_backbone', 'action_model'}
    out = convert_cogact(run, tmp_path / 'ours', tokenizer_dir=tiny_dir, base_config=base,
                         size='DiT-S', dtype='float32')
    loaded = load_policy(str(out))
    assert loaded.cfg.action_model == cogact.cfg.action_model
    ep = Episode(5)
    obs = Observation(ep.observe(), ep.instruction)
    assert np.array_equal(loaded.predict(obs).actions, cogact.predict(obs).actions)


def test_conversion_names_missing_and_unexpected_keys(tmp_path, cogact):
    missing = 'action_model.net.blocks.3.mlp.fc1.weight'
    run, base = cogact_run_dir(tmp_path / 'a', cogact, drop=missing,
                               extra={'action_model.net.bonus.weight': torch.zeros(2)})
    with pytest.raises(CheckpointError) as err:
        convert_cogact(run, tmp_path / 'out', base_config=base, size='DiT-S')
    assert f'missing 1 weight: {missing}' in str(err.value)
    assert 'unexpected 1 weight: action_model.net.bonus.weight' in str(err.value)
    with pytest.raises(CheckpointError, match='does not match DiT-B'):
        convert_cogact(cogact_run_dir(tmp_path / 'b', cogact)[0], tmp_path / 'out',
                       base_config=base, size='DiT-B')


def test_only_tensors_are_unpickled(tmp_path, cogact):
    run, base = cogact_run_dir(tmp_path, cogact)
    pt = next((run / 'checkpoints').glob('*.pt'))
    torch.save({'model': {'action_model': {'x': object()}}}, pt)  # arbitrary pickle
    with pytest.raises(CheckpointError, match='not a tensor-only PyTorch checkpoint'):
        convert_cogact(run, tmp_path / 'out', base_config=base, size='DiT-S')


def test_model_builds_the_head_from_config():
    with torch.device('meta'):
        model = OpenVLA(tiny_cogact_config())
    assert model.action_model.net.cfg.token_size == 128


def test_an_action_model_only_pt_is_summarised_by_module(tmp_path, cogact):
    run, base = cogact_run_dir(tmp_path, cogact)
    pt = next((run / 'checkpoints').glob('*.pt'))
    parts = torch.load(pt, weights_only=True)['model']
    torch.save({'model': {'action_model': parts['action_model']}}, pt)
    with pytest.raises(CheckpointError) as err:
        convert_cogact(run, tmp_path / 'out', base_config=base, size='DiT-S')
    message = str(err.value)
    vlm = [k for k in cogact.model.state_dict() if not k.startswith('action_model.')]
    groups = Counter('.'.join(k.split('.')[:2]) for k in vlm)
    assert len(message) < 1000 and f'missing {len(vlm)} weights: ' in message
    assert f"language_model.model.* ({groups['language_model.model']})" in message
    assert f"vision_backbone.featurizer.* ({groups['vision_backbone.featurizer']})" in message
    assert 'this .pt holds only the action model' in message
    # At CogACT's own size the 939 missing VLM weights still make one short line.
    with torch.device('meta'):
        full = [k for k in OpenVLA(cogact_7b_config()).state_dict()
                if not k.startswith('action_model.')]
    summary = summarise_keys('missing', full)
    assert summary.startswith('missing 939 weights: ') and len(summary) < 600
    assert 'language_model.model.* (290)' in summary


def test_the_head_stays_fp32_beside_a_bf16_vlm(tmp_path, tiny_dir, cogact, capsys):
    run, base = cogact_run_dir(tmp_path, cogact)
    out = convert_cogact(run, tmp_path / 'ours', tokenizer_dir=tiny_dir, base_config=base,
                         size='DiT-S', dtype='bfloat16')
    direct = save_checkpoint(tmp_path / 'saved', cogact.model.state_dict(), cogact.cfg,
                             dtype='bfloat16')
    for path in (out, direct):
        with safe_open(str(path / 'model.safetensors'), framework='pt') as f:
            stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
        assert {d for k, d in stored.items() if k.startswith('action_model.')} == {'F32'}
        assert {d for k, d in stored.items() if not k.startswith('action_model.')} == {'BF16'}
    policy = load_policy(str(out), dtype='bfloat16')
    model = policy.model
    assert {p.dtype for p in model.language_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vision_backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.action_model.parameters()} == {torch.float32}
    # fp32 end to end, the head's weights arrive bit for bit.
    head, theirs = model.action_model.parameters(), cogact.model.action_model.parameters()
    assert all(torch.equal(a, b) for a, b in zip(head, theirs, strict=True))
    ep = Episode(4)
    chunk = policy.predict(Observation(ep.observe(), ep.instruction))
    assert chunk.actions.shape == (16, 7) and np.isfinite(chunk.actions).all()
    with pytest.raises(SystemExit):
        convert.main(['--help'])
    assert 'always stored float32' in ' '.join(capsys.readouterr().out.split())
