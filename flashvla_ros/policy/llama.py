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
A Llama decoder with a preallocated KV cache and a visible layer loop (gpt-fast style).

Parameter names follow Hugging Face's `LlamaForCausalLM` (`model.layers.N.self_attn.q_proj`,
...), so checkpoints load unchanged. Rotary positions are passed explicitly with every call and
each layer's cache fills independently: a layer that receives fewer tokens (token pruning)
simply stores fewer, and decoding still uses the original rotary positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
import torch.nn.functional as F

from .config import TextConfig

# Called after each decoder layer as hook(layer_index, hidden, positions) and may return a
# (hidden, positions) pair with fewer tokens: the visible place where accelerators plug in.
LayerHook = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, as the reference does, then scale in the model dtype.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class KVCache(nn.Module):
    """Preallocated keys/values for one layer; `length` slots are filled, in sequence order."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype, device) -> None:
        super().__init__()
        shape = (batch, heads, max_len, head_dim)
        self.register_buffer('k', torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer('v', torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f'KV cache overflow: {end} tokens > capacity {self.capacity}')
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.cache is not None:
            k, v = self.cache.append(k, v)
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        mask = _causal_mask(t, k.shape[2], x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


def _causal_mask(q_len: int, kv_len: int, device) -> torch.Tensor | None:
    """Mask for queries that are the last `q_len` of `kv_len` entries (each sees its past)."""
    if q_len == 1:
        return None
    offset = kv_len - q_len
    rows = torch.arange(q_len, device=device)[:, None] + offset
    return torch.arange(kv_len, device=device)[None, :] <= rows


class MLP(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaBody(nn.Module):
    """`model.*` of `LlamaForCausalLM`: embeddings, layers, final norm."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    """`LlamaForCausalLM` as an explicit loop: embed -> layers (with hooks) -> norm -> lm_head."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def setup_cache(self, max_len: int, batch: int = 1) -> None:
        """Allocate each layer's KV cache once; `reset_cache` empties it between predictions."""
        w = self.lm_head.weight
        for layer in self.model.layers:
            layer.self_attn.cache = KVCache(
                batch, self.cfg.num_key_value_heads, max_len, self.cfg.head_dim, w.dtype, w.device
            )

    def drop_cache(self) -> None:
        for layer in self.model.layers:
            layer.self_attn.cache = None

    def reset_cache(self) -> None:
        for layer in self.model.layers:
            if layer.self_attn.cache is not None:
                layer.self_attn.cache.length = 0

    def truncate_cache(self, entries: int) -> None:
        """Forget the last `entries` KV entries of every layer (rejected speculative tokens)."""
        for layer in self.model.layers:
            cache = layer.self_attn.cache
            if cache is not None:
                cache.length -= entries

    def rotary(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables [T, head_dim] for explicit integer positions (computed in fp32)."""
        d = self.cfg.head_dim
        inv_freq = 1.0 / (
            self.cfg.rope_theta
            ** (torch.arange(0, d, 2, device=positions.device, dtype=torch.float32) / d)
        )
        angles = positions.float()[:, None] * inv_freq[None, :]
        emb = torch.cat([angles, angles], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(token_ids)

    def run_layers(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        layer_hook: LayerHook | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Run decoder layers `start..stop-1` on `hidden` [B, T, D] at rotary `positions` [T].

        Returns the hidden states and positions that leave the last layer (a hook may have
        dropped tokens); no final norm, so a caller can stop early and continue later.
        """
        cos, sin = self.rotary(positions, hidden.dtype)
        for i in range(start, len(self.model.layers) if stop is None else stop):
            hidden = self.model.layers[i](hidden, cos, sin)
            if layer_hook is not None:
                changed = layer_hook(i, hidden, positions)
                if changed is not None:
                    hidden, positions = changed
                    cos, sin = self.rotary(positions, hidden.dtype)
        return hidden, positions

    def forward(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        layer_hook: LayerHook | None = None,
        last_only: bool = True,
    ) -> torch.Tensor:
        """
        Run embeddings `hidden` [B, T, D] at rotary `positions` [T]; return logits.

        With `last_only` only the last position's logits are computed ([B, vocab]); the
        full [B, T, vocab] otherwise.
        """
        hidden, _ = self.run_layers(hidden, positions, layer_hook=layer_hook)
        return self.logits(hidden, last_only)

    def logits(self, hidden: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """Apply the final norm and the LM head (to the last token only, by default)."""
        return self.lm_head(self.model.norm(hidden[:, -1] if last_only else hidden))
