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
CogACT's diffusion action head: a DiT over the noisy action chunk, conditioned by one token.

Parameter names and shapes follow microsoft/CogACT's `action_model.net.*` (DiT-S/B/L), so its
published head loads unchanged. The condition token is the timestep embedding (sinusoid of 256,
cos first, then an MLP) plus a linear map of the LLM's cognition feature; it is prepended to the
chunk's action tokens, learned positions cover all 1 + chunk rows, the pre-LayerNorm blocks
(no affine, eps 1e-6, GELU tanh, bidirectional attention) run, and the condition row is dropped
at the output: the predicted noise of every action.

`DiT.forward(..., block_cache=...)` is the head's hook point: a callable that decides, per
denoising step, block and part ('attn' or 'mlp'), whether to compute that output or return a
cached one (DiT feature caching). The default computes everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
import functools
import hashlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .errors import CheckpointError

# (depth, hidden, heads) of CogACT's sizes.
DIT_SIZES = {'DiT-S': (6, 384, 4), 'DiT-B': (12, 768, 12), 'DiT-L': (24, 1024, 16)}
FREQUENCY_SIZE = 256  # sinusoid width of the timestep embedding

# block_cache(block, part, compute) -> the part's output (compute() when not cached).
BlockCache = Callable[[int, str, Callable[[], torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class DiTConfig:
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    action_dim: int = 7
    chunk: int = 16  # actions per prediction: the current step and 15 future ones
    token_size: int = 4096  # width of the cognition feature (the LLM's hidden size)
    train_steps: int = 100  # diffusion steps of the squared-cosine schedule
    ddim_steps: int = 10
    cfg_scale: float = 1.5  # classifier-free guidance; 1 disables it (no doubled batch)
    class_dropout: float = 0.1  # training: the condition replaced by `uncondition`

    @classmethod
    def sized(cls, name: str, **kw: Any) -> DiTConfig:
        depth, hidden, heads = DIT_SIZES[name]
        return cls(hidden_size=hidden, depth=depth, num_heads=heads, **kw)

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> DiTConfig:
        if not isinstance(raw, dict):
            raise CheckpointError(f'{source}: "action_model" must be a mapping')
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CheckpointError(f'{source}: unknown "action_model" keys {unknown}')
        cfg = cls(**raw)
        if cfg.hidden_size % cfg.num_heads or min(cfg.depth, cfg.chunk, cfg.action_dim) < 1:
            raise CheckpointError(f'{source}: "action_model" has inconsistent sizes {raw}')
        if not 1 <= cfg.ddim_steps <= cfg.train_steps or cfg.train_steps % cfg.ddim_steps:
            raise CheckpointError(f'{source}: "action_model" ddim_steps {cfg.ddim_steps} must '
                                  f'divide train_steps {cfg.train_steps}')
        if cfg.ddim_steps == 1 and cfg.train_steps <= 50:
            raise CheckpointError(f'{source}: "action_model" one DDIM step samples at timestep '
                                  f'50 (as CogACT): train_steps must exceed 50')
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, size: int = FREQUENCY_SIZE) -> torch.Tensor:
    """Sinusoids of the timesteps t [N]: [N, size], cos first, then sin (as CogACT)."""
    half = size // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32,
                                                        device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_SIZE, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


class LinearEmbedder(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class ConditionEmbedder(nn.Module):
    """The cognition feature -> one condition row; `uncondition` is the learned null one."""

    def __init__(self, token_size: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(token_size, hidden)
        self.uncondition = nn.Parameter(torch.zeros(1, token_size))

    def forward(self, z: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Embed z [N, 1, C]; `drop` [N] (training) puts the null condition in those rows."""
        if drop is not None:
            z = torch.where(drop[:, None, None], self.uncondition.expand_as(z), z)
        return self.linear(z)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # bidirectional: no mask
        return self.proj(y.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, hidden: int, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, width)
        self.fc2 = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate='tanh'))


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm_final(x))


def compute_all(block: int, part: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    return compute()


class DiT(nn.Module):
    """`action_model.net` of CogACT: noisy chunk [N, H, A], timesteps [N], condition [N, 1, C]."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        # Unused by CogACT's forward, but present in its checkpoints (past actions, window 0).
        self.history_embedder = LinearEmbedder(cfg.action_dim, h)
        self.x_embedder = LinearEmbedder(cfg.action_dim, h)
        self.t_embedder = TimestepEmbedder(h)
        self.z_embedder = ConditionEmbedder(cfg.token_size, h)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.chunk + 1, h))
        self.blocks = nn.ModuleList(DiTBlock(h, cfg.num_heads, cfg.mlp_ratio)
                                    for _ in range(cfg.depth))
        self.final_layer = FinalLayer(h, cfg.action_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor,
                drop: torch.Tensor | None = None,
                block_cache: BlockCache = compute_all) -> torch.Tensor:
        """Predict the noise of every action of `x` [N, H, A]."""
        return self.denoise(x, self.t_embedder(t)[:, None] + self.z_embedder(z, drop),
                            block_cache)

    def denoise(self, x: torch.Tensor, condition: torch.Tensor,
                block_cache: BlockCache = compute_all) -> torch.Tensor:
        """`forward` from the embedded condition row [N, 1, hidden] (timestep + cognition)."""
        h = torch.cat([condition, self.x_embedder(x)], dim=1) + self.positional_embedding
        for i, block in enumerate(self.blocks):
            h = h + block_cache(i, 'attn', lambda b=block, h=h: b.attn(b.norm1(h)))
            h = h + block_cache(i, 'mlp', lambda b=block, h=h: b.mlp(b.norm2(h)))
        return self.final_layer(h)[:, 1:]


class ActionModel(nn.Module):
    """CogACT's `action_model`: the DiT under `net` (the diffusion itself has no parameters)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.net = DiT(cfg)


# -- the diffusion ----------------------------------------------------------------------------


def squaredcos_betas(steps: int) -> np.ndarray:
    """Return the squared-cosine schedule's betas (capped at 0.999) as a float64 array."""

    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999)
                     for i in range(steps)], dtype=np.float64)


def squaredcos_alphas_cumprod(steps: int) -> torch.Tensor:
    """Return the cumulative products of 1 - beta of the squared-cosine schedule (float64)."""
    return torch.from_numpy(np.cumprod(1.0 - squaredcos_betas(steps)))


def ddim_timesteps(train_steps: int, ddim_steps: int) -> list[int]:
    """
    Return the original timesteps DDIM visits, ascending, as CogACT's "ddimN" respacing does.

    N steps take every stride-th timestep from 0, the stride the smallest giving N of them
    (train_steps / N when it divides); one step is CogACT's special case, timestep 50.
    """
    if ddim_steps == 1:
        if train_steps <= 50:
            raise ValueError(f'one DDIM step uses timestep 50 (as CogACT): train_steps '
                             f'{train_steps} must exceed it')
        return [50]
    stride = next((s for s in range(1, train_steps) if -(-train_steps // s) == ddim_steps), None)
    if stride is None:
        raise ValueError(f'no integer stride gives {ddim_steps} of {train_steps} timesteps')
    return list(range(0, train_steps, stride))


def ddim_coefficients(train_steps: int, timesteps: list[int]) -> dict[str, np.ndarray]:
    """
    Return the respaced schedule's DDIM coefficients per step (float64, ascending steps).

    As CogACT's SpacedDiffusion: the kept timesteps get new betas 1 - abar_t / abar_prev kept,
    whose cumulative product is the respaced abar (not bit-equal to abar_t itself); then
    sqrt(1 / abar), sqrt(1 / abar - 1) and abar_prev (1 before the first step), all float64.
    """
    full = np.cumprod(1.0 - squaredcos_betas(train_steps))
    betas, last = [], 1.0
    for t in timesteps:
        betas.append(1 - full[t] / last)
        last = full[t]
    alphas = np.cumprod(1.0 - np.array(betas, dtype=np.float64))
    return {
        'recip': np.sqrt(1.0 / alphas),
        'recipm1': np.sqrt(1.0 / alphas - 1),
        'prev': np.append(1.0, alphas[:-1]),
    }


def diffusion_loss(net: DiT, actions: torch.Tensor, condition: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise-prediction MSE at random timesteps; conditions dropped at `class_dropout`."""
    cfg = net.cfg
    n = actions.shape[0]
    alphas = squaredcos_alphas_cumprod(cfg.train_steps).to(actions.device)
    t = torch.randint(0, cfg.train_steps, (n,), device=actions.device, generator=generator)
    noise = torch.randn(actions.shape, device=actions.device, generator=generator)
    a = alphas[t].float()[:, None, None]
    noisy = a.sqrt() * actions + (1 - a).sqrt() * noise
    drop = torch.rand(n, device=actions.device, generator=generator) < cfg.class_dropout
    return F.mse_loss(net(noisy, t, condition, drop), noise)


def frame_seed(rgb: np.ndarray, base: int = 0) -> int:
    """
    Seed a step's initial noise from its frame (a hash of the pixels, plus `base`).

    The same observation gives the same chunk (a step is reproducible), and every new frame
    draws fresh noise, as CogACT's unseeded sampling does. One fixed noise for every step
    biases every chunk alike (measured: docs/CHECKPOINTS.md).
    """
    digest = hashlib.blake2b(np.ascontiguousarray(rgb).tobytes(), digest_size=8).digest()
    return (int.from_bytes(digest, 'little') + base) % 2**63


@functools.lru_cache(maxsize=8)
def ddim_schedule(train_steps: int, ddim_steps: int, device: torch.device
                  ) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor]:
    """
    Return the timesteps and the float32 coefficients of every DDIM step, on `device`.

    Worked out once per schedule and device, not on every step of the robot: the float64
    arrays cast to float32 at use (as CogACT's `_extract_into_tensor`), and the square roots
    of abar_prev taken in float32. With eta 0, sigma is 0, so sqrt(1 - abar_prev - sigma^2)
    is sqrt(1 - abar_prev) to the bit.
    """
    timesteps = ddim_timesteps(train_steps, ddim_steps)
    coef = ddim_coefficients(train_steps, timesteps)

    def at(name: str) -> torch.Tensor:
        return torch.from_numpy(coef[name]).to(device=device).float()

    prev = at('prev')
    return tuple(timesteps), at('recip'), at('recipm1'), torch.sqrt(prev), torch.sqrt(1 - prev)


def ddim_sample(net: DiT, condition: torch.Tensor, noise: torch.Tensor,
                block_cache: Callable[[int], BlockCache] | None = None) -> torch.Tensor:
    """
    Run DDIM (eta 0) from `noise` [N, H, A] at CogACT's respaced timesteps, last to first.

    Bit-for-bit CogACT's sampler: the coefficients are float64 arrays cast to float32 at use,
    the square roots of abar_prev taken in float32, and the noise estimate recomputed from x0
    before the step; x0 is not clipped (the caller clips). The net runs in its own parameter
    dtype whatever the inputs' (the policy keeps the head fp32). The timestep embedding is
    computed per step at the batch CogACT feeds it (a batched one differs in the last bits).
    With `cfg_scale` > 1 the batch doubles with the null condition and the noise estimate is
    uncond + scale (cond - uncond). `block_cache(step_index)` gives each denoising step's
    block-cache hook. Return the final x0 [N, H, A].
    """
    cfg = net.cfg
    dtype = next(net.parameters()).dtype
    timesteps, recip, recipm1, keep, blend = ddim_schedule(cfg.train_steps, cfg.ddim_steps,
                                                           noise.device)
    guided = cfg.cfg_scale > 1.0
    n = noise.shape[0]
    z = condition.to(dtype)
    if guided:
        z = torch.cat([z, net.z_embedder.uncondition.expand_as(z)], dim=0)
    z = net.z_embedder(z)  # the same input every step: embedded once, the same bits
    x = noise.to(dtype)
    for k, i in enumerate(reversed(range(len(timesteps)))):
        inputs = torch.cat([x, x], dim=0) if guided else x
        t = torch.full((inputs.shape[0],), timesteps[i], device=noise.device)
        hook = compute_all if block_cache is None else block_cache(k)
        eps = net.denoise(inputs.to(dtype), net.t_embedder(t)[:, None] + z, block_cache=hook)
        if guided:
            eps = eps[n:] + cfg.cfg_scale * (eps[:n] - eps[n:])
        x0 = recip[i] * x - recipm1[i] * eps
        eps = (recip[i] * x - x0) / recipm1[i]
        x = x0 * keep[i] + blend[i] * eps
    return x
