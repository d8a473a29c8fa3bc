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
A Llama decoder with preallocated KV caches and the one layer loop (gpt-fast style).

Parameter names follow Hugging Face's `LlamaForCausalLM` (`model.layers.N.self_attn.q_proj`,
...), so checkpoints load unchanged. Rotary tables are computed once and looked up at explicit
positions, so a token keeps its position when accelerators drop others.

Two caches, one interface (`update(k, v, positions) -> keys, values, mask`):
- `KVCache` appends in sequence order and attends to the filled entries only: a layer that
  receives fewer tokens stores fewer. The reference path, exact on any device.
- `StaticKVCache` (gpt-fast) writes each token at its position slot and attends over the whole
  preallocated length with a mask of the filled slots, so a decode step has one shape:
  what `torch.compile` and CUDA graphs need. Dropped tokens are slots never filled.

`Llama.run` is the one layer loop: a layer plan (which layers run), the probes asked of a
layer (the attention output or the attention weights, computed only where asked), and an
after-layer callback that may keep a subset of the tokens or stop the step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
import math

import torch
from torch import nn
import torch.nn.functional as F

from .config import TextConfig
from .quantize import select

PROBES = ('attention_output', 'attention_weights')  # what a layer can be asked to expose


class Stop:
    """Returned by an after-layer callback to end the step (a gate decided to reuse)."""


STOP = Stop()


@dataclass(frozen=True)
class Narrow:
    """
    Returned by a batch's after-layer callback: the rows that go on, and each one's tokens.

    `rows` [B'] indexes the batch (None: every row; the KV caches lose the others); `tokens`
    [B', T'] the tokens each remaining row keeps (None: all), the same count in every row.
    """

    rows: torch.Tensor | None = None
    tokens: torch.Tensor | None = None


# after_layer(layer, hidden, probes) -> None (go on), an index of tokens to keep, STOP, or
# (a batch of several robots) Narrow.
AfterLayer = Callable[[int, torch.Tensor, dict[str, torch.Tensor]],
                      torch.Tensor | Stop | Narrow | None]


def narrow_probes(probes: dict[str, torch.Tensor], index: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    """
    Keep the probes of the tokens at `index` only, as the hidden states are narrowed.

    The attention output [B, T, D] loses rows; the attention weights [B, H, T, T] (queries and
    keys of the same tokens, see `Attention.forward`) lose rows and columns.
    """
    return {kind: probe[:, :, index][..., index] if kind == 'attention_weights'
            else probe[:, index] for kind, probe in probes.items()}


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


class _KVBuffers(nn.Module):
    """One layer's preallocated keys and values [batch, heads, max_len, head_dim]."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, dtype, device) -> None:
        super().__init__()
        shape = (batch, heads, max_len, head_dim)
        self.register_buffer('k', torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer('v', torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def capacity(self) -> int:
        return self.k.shape[2]


class KVCache(_KVBuffers):
    """
    Keys/values in sequence order; `length` slots are filled.

    `padded` (a batch of robots whose prompts were padded to one length): the pad tokens,
    at position -1, are remembered per row and never attended to.
    """

    def __init__(self, *shape_args, **kwargs) -> None:
        super().__init__(*shape_args, **kwargs)
        self.length = 0
        self.padded = False
        self.register_buffer('valid', torch.ones(self.k.shape[0], self.capacity, dtype=torch.bool,
                                                 device=self.k.device), persistent=False)

    def reset(self) -> None:
        self.length = 0

    def forget(self, entries: int) -> None:
        """Drop the last `entries` entries (rejected speculative tokens)."""
        self.length -= entries

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Append `k`, `v` [b, H, T, hd]: the first b rows of the buffers (a smaller batch)."""
        b, start, end = k.shape[0], self.length, self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f'KV cache overflow: {end} tokens > capacity {self.capacity}')
        self.k[:b, :, start:end] = k
        self.v[:b, :, start:end] = v
        self.length = end
        mask = _causal_mask(k.shape[2], end, k.device)
        if self.padded:  # rows [b, 1, T, end]: causal, and no pad key
            self.valid[:b, start:end] = positions >= 0
            keys = self.valid[:b, None, None, :end]
            mask = keys if mask is None else keys & mask
        return self.k[:b, :, :end], self.v[:b, :, :end], mask

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep the batch rows `rows` (in that order) as the first ones; the others leave."""
        n, end = rows.numel(), self.length
        self.k[:n, :, :end] = self.k[rows, :, :end]
        self.v[:n, :, :end] = self.v[rows, :, :end]
        self.valid[:n, :end] = self.valid[rows, :end]


class StaticKVCache(_KVBuffers):
    """Keys/values at their position slots, with a mask of the filled ones (one shape always)."""

    def __init__(self, *shape_args, **kwargs) -> None:
        super().__init__(*shape_args, **kwargs)
        device, max_len = self.k.device, self.capacity
        self.register_buffer('filled', torch.zeros(max_len, dtype=torch.bool, device=device),
                             persistent=False)
        self.register_buffer('slots', torch.arange(max_len, device=device), persistent=False)

    def reset(self) -> None:
        self.filled.zero_()

    def forget(self, entries: int) -> None:
        """Nothing to do: a later slot is never visible to an earlier query, and is rewritten."""

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.k[:, :, positions] = k
        self.v[:, :, positions] = v
        self.filled[positions] = True
        mask = self.filled[None, :] & (self.slots[None, :] <= positions[:, None])
        return self.k, self.v, mask


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
        self.cache: KVCache | StaticKVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor | None = None, weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the attention output and, if `weights`, the attention weights [B, H, T, S]."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        if cos.dim() == 3:  # positions per batch row [B, T] (each robot kept its own tokens)
            cos, sin = cos[:, None], sin[:, None]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.cache is not None:
            k, v, mask = self.cache.update(k, v, positions)
        else:
            mask = _causal_mask(t, t, x.device)
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        probs = None
        if weights:  # explicit, for the one layer whose probe asks; the output stays SDPA's
            scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                scores = scores.masked_fill(~mask, float('-inf'))
            probs = scores.softmax(-1)
            if isinstance(self.cache, StaticKVCache):  # keys by position slot -> by token
                probs = probs[..., positions]
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1)), probs


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
        # Structured sparsity: (gate, up, down) weights of the kept neurons only, or None.
        self.kept: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def keep(self, neurons: torch.Tensor | None,
             source: Callable[[str], torch.Tensor] | None = None) -> None:
        """
        Run only these intermediate neurons from now on (None: all of them).

        The kept rows and columns are copied once into dense weights, so a sparse step runs
        plain, smaller matrix products (the full weights stay, for `keep(None)`); quantized
        weights are selected in their own format (`quantize.select`), from the full-precision
        weights `source(projection)` reads where they are given.
        """
        if neurons is None:
            self.kept = None
            return
        with torch.no_grad():
            self.kept = tuple(
                select(getattr(self, name).weight, neurons, dim,
                       None if source is None else lambda name=name: source(name))
                for name, dim in (('gate_proj', 0), ('up_proj', 0), ('down_proj', 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kept is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up, down = self.kept
        return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                positions: torch.Tensor | None = None, probes: Collection[str] = ()
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the layer's output and the `probes` asked for, by kind."""
        attended, weights = self.self_attn(self.input_layernorm(x), cos, sin, positions,
                                           weights='attention_weights' in probes)
        x = x + attended
        x = x + self.mlp(self.post_attention_layernorm(x))
        found = {'attention_output': attended, 'attention_weights': weights}
        return x, {kind: found[kind] for kind in probes}


class LlamaBody(nn.Module):
    """`model.*` of `LlamaForCausalLM`: embeddings, layers, final norm."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Llama(nn.Module):
    """`LlamaForCausalLM` as an explicit loop: embed -> planned layers (hooks) -> norm -> head."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = LlamaBody(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    def setup_cache(self, max_len: int, batch: int = 1, static: bool = False) -> None:
        """Allocate each layer's KV cache once (`static`: position slots, one shape)."""
        w = self.lm_head.weight
        kind = StaticKVCache if static else KVCache
        for layer in self.model.layers:
            layer.self_attn.cache = kind(
                batch, self.cfg.num_key_value_heads, max_len, self.cfg.head_dim, w.dtype, w.device
            )

    def drop_cache(self) -> None:
        for layer in self.model.layers:
            layer.self_attn.cache = None

    def reset_cache(self) -> None:
        for layer in self.model.layers:
            if layer.self_attn.cache is not None:
                layer.self_attn.cache.reset()

    def pad_cache(self, padded: bool) -> None:
        """Have the append caches mask pad tokens (position -1) from now on, or not."""
        for layer in self.model.layers:
            cache = layer.self_attn.cache
            if isinstance(cache, KVCache):
                cache.padded = padded
            elif padded:
                raise TypeError('padded batches run the append KV cache only (static_cache off)')

    def keep_cache_rows(self, rows: torch.Tensor) -> None:
        """Keep the batch rows `rows` of every layer's KV cache (the append cache only)."""
        for layer in self.model.layers:
            cache = layer.self_attn.cache
            if not isinstance(cache, KVCache):
                raise TypeError('batch rows leave the append KV cache only (static_cache off)')
            cache.keep_rows(rows)

    def truncate_cache(self, entries: int) -> None:
        """Forget the last `entries` KV entries of every layer (rejected speculative tokens)."""
        for layer in self.model.layers:
            if layer.self_attn.cache is not None:
                layer.self_attn.cache.forget(entries)

    def rotary(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables [..., head_dim] at integer positions, from tables computed once."""
        needed = int(self.cfg.max_position_embeddings)
        if self._rope is None or self._rope[0].device != positions.device \
                or self._rope[0].dtype != dtype:
            self._rope = self.rotary_tables(needed, dtype, positions.device)
        cos, sin = self._rope
        return cos[positions], sin[positions]

    def rotary_tables(self, length: int, dtype: torch.dtype,
                      device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [length, head_dim] of positions 0..length-1 (computed in fp32)."""
        d = self.cfg.head_dim
        inv_freq = 1.0 / (self.cfg.rope_theta
                          ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        angles = torch.arange(length, device=device).float()[:, None] * inv_freq[None, :]
        emb = torch.cat([angles, angles], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def keep_mlp_neurons(self, neurons: dict[int, torch.Tensor],
                         source: Callable[[str], torch.Tensor] | None = None) -> None:
        """
        Run only `neurons[layer]` of each named layer's MLP; every other layer runs whole.

        `source(name)`: a weight's full-precision values by its name in this module, for
        quantized layers whose selection would otherwise be re-quantized from their own.
        """
        for i, layer in enumerate(self.model.layers):
            layer.mlp.keep(neurons.get(i), None if source is None else
                           lambda proj, i=i: source(f'model.layers.{i}.mlp.{proj}.weight'))

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(token_ids)

    def run(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        plan: Sequence[int] | None = None,
        probes: dict[int, Collection[str]] | None = None,
        after_layer: AfterLayer | None = None,
        tokens_per_layer: dict[int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """
        Run the layers of `plan` (all, in order, by default) on `hidden` [B, T, D].

        Rotary `positions` [T] travel with the tokens. After each layer, `after_layer` sees
        the hidden states and that layer's probes (`probes[layer]`, kinds of PROBES, by kind:
        {} where none is asked), and may return an index of the tokens to keep (the later
        layers, and their KV caches, never see the others) or STOP. Returns the hidden
        states and positions that leave the last layer (no final norm), or None on STOP.
        In a batch of robots, `after_layer` may return `Narrow` instead: rows leave, and
        each row keeps its own tokens (positions become [B, T]); None when no row is left.
        `tokens_per_layer` receives the tokens that entered each layer that ran.
        """
        probes = probes or {}
        if any(isinstance(kinds, str) for kinds in probes.values()):
            raise TypeError(f'probes {probes}: each layer takes a set of probe kinds')
        unknown = sorted({kind for kinds in probes.values() for kind in kinds} - set(PROBES))
        if unknown:
            raise ValueError(f'unknown probe(s) {unknown}; a layer exposes {list(PROBES)}')
        cos, sin = self.rotary(positions, hidden.dtype)
        for i in range(self.num_layers) if plan is None else plan:
            if tokens_per_layer is not None:
                tokens_per_layer[i] = hidden.shape[1]
            hidden, found = self.model.layers[i](hidden, cos, sin, positions, probes.get(i, ()))
            outcome = None if after_layer is None else after_layer(i, hidden, found)
            if outcome is STOP:
                return None
            if isinstance(outcome, Narrow):
                hidden, positions = self._narrow_rows(outcome, hidden, positions)
                if not hidden.shape[0]:
                    return None
                cos, sin = self.rotary(positions, hidden.dtype)
            elif outcome is not None:
                hidden, positions = hidden[:, outcome], positions[outcome]
                cos, sin = self.rotary(positions, hidden.dtype)
        return hidden, positions

    def _narrow_rows(self, outcome: Narrow, hidden: torch.Tensor, positions: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a batch's `Narrow`: drop rows (hidden, positions, caches), gather tokens."""
        if outcome.rows is not None:
            hidden = hidden[outcome.rows]
            positions = positions[outcome.rows] if positions.dim() == 2 else positions
            if outcome.rows.numel():
                self.keep_cache_rows(outcome.rows)
        if outcome.tokens is not None and hidden.shape[0]:
            if positions.dim() == 1:
                positions = positions.expand(hidden.shape[0], -1)
            index = outcome.tokens
            hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
            positions = positions.gather(1, index)
        return hidden, positions

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor,
                plan: Sequence[int] | None = None, last_only: bool = True) -> torch.Tensor:
        """Logits of `hidden` [B, T, D] at `positions` [T]: [B, vocab] (last only) or [B, T, V]."""
        out = self.run(hidden, positions, plan)
        assert out is not None  # no callback, no STOP
        return self.logits(out[0], last_only)

    def logits(self, hidden: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        """Apply the final norm and the LM head (to the last token only, by default)."""
        return self.lm_head(self.model.norm(hidden[:, -1] if last_only else hidden))
