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

"""
Vision towers and projector against a straightforward re-computation from the raw weights.

The oracle reads a full timm-style state dict (including the last block, final norm and
attention pool that inference must not use), runs every block the way timm's
`get_intermediate_layers(n={depth - 2})` does, and takes the second-to-last block's output.
"""

import math

import pytest
import torch

from flashvla_ros.policy.config import ViTConfig
from flashvla_ros.policy.openvla import OpenVLA
from flashvla_ros.policy.presets import tiny_config
from flashvla_ros.tools.make_tiny import random_model, unused_timm_tensors


def layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def oracle_tower(sd: dict, p: str, cfg: ViTConfig, img: torch.Tensor) -> torch.Tensor:
    ps, d, g = cfg.patch_size, cfg.embed_dim, cfg.grid
    # Patchify by reshaping, then one matrix product with the flattened conv kernel.
    patches = img.reshape(3, g, ps, g, ps).permute(1, 3, 0, 2, 4).reshape(g * g, 3 * ps * ps)
    kernel = sd[p + 'patch_embed.proj.weight'].reshape(d, -1)
    x = patches @ kernel.T + sd[p + 'patch_embed.proj.bias']
    x = x + sd[p + 'pos_embed'][0]
    prefix = []
    if cfg.class_token:
        prefix.append(sd[p + 'cls_token'][0])
    if cfg.reg_tokens:
        prefix.append(sd[p + 'reg_token'][0])
    x = torch.cat([*prefix, x])
    outputs = []
    for i in range(cfg.depth):
        b = f'{p}blocks.{i}.'
        h = layer_norm(x, sd[b + 'norm1.weight'], sd[b + 'norm1.bias'])
        qkv = h @ sd[b + 'attn.qkv.weight'].T + sd[b + 'attn.qkv.bias']
        q, k, v = qkv.split(d, dim=-1)
        hd = d // cfg.num_heads
        heads = []
        for j in range(cfg.num_heads):
            s = slice(j * hd, (j + 1) * hd)
            att = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(hd), dim=-1)
            heads.append(att @ v[:, s])
        a = torch.cat(heads, -1) @ sd[b + 'attn.proj.weight'].T + sd[b + 'attn.proj.bias']
        x = x + (a * sd[b + 'ls1.scale_factor'] if cfg.layer_scale else a)
        h = layer_norm(x, sd[b + 'norm2.weight'], sd[b + 'norm2.bias'])
        m = gelu(h @ sd[b + 'mlp.fc1.weight'].T + sd[b + 'mlp.fc1.bias'])
        m = m @ sd[b + 'mlp.fc2.weight'].T + sd[b + 'mlp.fc2.bias']
        x = x + (m * sd[b + 'ls2.scale_factor'] if cfg.layer_scale else m)
        outputs.append(x)
    return outputs[cfg.depth - 2][cfg.num_prefix_tokens:]


def oracle_projector(sd: dict, x: torch.Tensor) -> torch.Tensor:
    for i, act in ((1, gelu), (2, gelu), (3, None)):
        x = x @ sd[f'projector.fc{i}.weight'].T + sd[f'projector.fc{i}.bias']
        x = act(x) if act else x
    return x


@pytest.fixture(scope='module')
def model_and_weights():
    cfg = tiny_config()
    model = random_model(cfg, seed=3).eval()
    # Non-trivial norms and biases, so a swapped or skipped term would show.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    sd = {**model.state_dict(), **unused_timm_tensors(cfg, seed=3)}
    return model, sd


@torch.no_grad()
def test_towers_and_projector_match_oracle(model_and_weights):
    model, sd = model_and_weights
    pixels = torch.randn(1, 6, 224, 224)
    dino, siglip = model.cfg.vision
    a = oracle_tower(sd, 'vision_backbone.featurizer.', dino, pixels[0, :3])
    b = oracle_tower(sd, 'vision_backbone.fused_featurizer.', siglip, pixels[0, 3:])
    assert a.shape == (256, dino.embed_dim) and b.shape == (256, siglip.embed_dim)
    fused = model.vision_backbone(pixels)[0]
    assert (fused - torch.cat([a, b], dim=1)).abs().max().item() < 1e-4
    projected = model.encode_image(pixels)[0]
    expected = oracle_projector(sd, torch.cat([a, b], dim=1))
    assert projected.shape == (256, model.cfg.text.hidden_size)
    assert (projected - expected).abs().max().item() < 1e-4


def test_unused_weights_are_not_built():
    names = set(OpenVLA(tiny_config()).state_dict())
    dino = tiny_config().vision[0]
    assert f'vision_backbone.featurizer.blocks.{dino.depth - 2}.norm1.weight' in names
    assert not any(f'featurizer.blocks.{dino.depth - 1}.' in n for n in names)
    assert not any('attn_pool' in n or ('.norm.' in n and 'vision' in n) for n in names)
