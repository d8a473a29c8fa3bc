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
Vision towers (timm parameter names) and the fused projector, in plain PyTorch.

A tower returns the patch tokens of its second-to-last block, with no final norm and without
its prefix (class/register) tokens, which is what Prismatic's `get_intermediate_layers` call
gives OpenVLA. The last block, the final norm and SigLIP's attention pool are never built.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .config import OpenVLAConfig, ViTConfig


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LayerScale(nn.Module):
    """timm's LayerScale; OpenVLA checkpoints store `gamma` under the name `scale_factor`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(d) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.mlp = Mlp(d, cfg.mlp_dim)
        self.ls2 = LayerScale(d) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTower(nn.Module):
    """A timm VisionTransformer truncated after its second-to-last block."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        if cfg.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        if cfg.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, d))
        # timm's `no_embed_class` layout: positions cover the patches only.
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.used_blocks))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        prefix = []
        if self.cfg.class_token:
            prefix.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.cfg.reg_tokens:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        x = torch.cat([*prefix, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return x[:, self.cfg.num_prefix_tokens:]


class FusedProjector(nn.Module):
    """Prismatic's `fused-gelu-mlp`: fc1 (4x widen), GELU, fc2 (to LLM width), GELU, fc3."""

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class FusedVisionBackbone(nn.Module):
    """DINOv2 on channels 0-2 and SigLIP on channels 3-5; patch features concatenated."""

    def __init__(self, cfg: OpenVLAConfig) -> None:
        super().__init__()
        dino, siglip = cfg.vision
        self.featurizer = VisionTower(dino)
        self.fused_featurizer = VisionTower(siglip)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        a = self.featurizer(pixels[:, :3])
        b = self.fused_featurizer(pixels[:, 3:])
        return torch.cat([a, b], dim=2)


def unused_tower_keys(cfg: ViTConfig) -> tuple[str, ...]:
    """Key prefixes a full timm tower has that inference never touches (skipped on load)."""
    keys = [f'blocks.{cfg.depth - 1}.', 'norm.', 'fc_norm.', 'head.']
    if cfg.attn_pool:
        keys.append('attn_pool.')
    return tuple(keys)
