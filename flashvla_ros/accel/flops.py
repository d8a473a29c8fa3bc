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
Analytic FLOPs of one OpenVLA step, counting the work actually done.

What is counted: every matrix product, at 2 FLOPs per multiply-add: patch embeddings, ViT
blocks (the ones that run), projector, decoder projections and MLPs, attention scores and
weighted sums (each query against the keys it may see: causal in the decoder, all in the
ViTs), and the LM head at the positions whose logits are computed. Not counted: norms,
activations, softmax, rotary embeddings, embedding lookups, bin decoding (all O(tokens * width),
under 1% here).

Split: vision (towers + projector), prefill (decoder layers over the prompt), decode (decoder
layers for generated tokens), head (LM head logits), select (an accelerator's own work, such as
FlashVLA's SVD; an operation-count estimate, see `svd_flops`). Accelerators describe what they
skipped by passing the tokens that actually entered each decoder layer.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

from ..policy.config import OpenVLAConfig, TextConfig, ViTConfig


@dataclass(frozen=True)
class Flops:
    vision: int = 0
    prefill: int = 0
    decode: int = 0
    head: int = 0
    select: int = 0

    @property
    def total(self) -> int:
        return sum(astuple(self))

    def __add__(self, other: Flops) -> Flops:
        return Flops(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def as_dict(self) -> dict[str, int]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, 'total': self.total}


def vit_flops(t: ViTConfig) -> int:
    n = t.num_patches + t.num_prefix_tokens
    d = t.embed_dim
    patch_embed = 2 * t.num_patches * (3 * t.patch_size ** 2) * d
    per_block = (2 * n * d * 3 * d  # qkv
                 + 2 * 2 * n * n * d  # scores and weighted sum, all heads
                 + 2 * n * d * d  # output projection
                 + 2 * 2 * n * d * t.mlp_dim)  # fc1, fc2
    return patch_embed + t.used_blocks * per_block


def vision_flops(cfg: OpenVLAConfig) -> int:
    v, llm = cfg.vision_dim, cfg.text.hidden_size
    projector = 2 * cfg.num_patches * (v * 4 * v + 4 * v * llm + llm * llm)
    return sum(vit_flops(t) for t in cfg.vision) + projector


def decoder_layer_flops(text: TextConfig, new_tokens: int, past_tokens: int) -> int:
    """One decoder layer: `new_tokens` queries appended after `past_tokens` cached keys."""
    d, kv = text.hidden_size, text.num_key_value_heads * text.head_dim
    q = text.num_attention_heads * text.head_dim
    projections = 2 * new_tokens * d * (q + 2 * kv) + 2 * new_tokens * q * d
    mlp = 2 * 3 * new_tokens * d * text.intermediate_size
    # Query i (0-based) sees the past plus itself and the i new tokens before it.
    keys_seen = new_tokens * past_tokens + new_tokens * (new_tokens + 1) // 2
    attention = 2 * 2 * keys_seen * q
    return projections + mlp + attention


def head_flops(text: TextConfig, positions: int = 1) -> int:
    return 2 * positions * text.hidden_size * text.vocab_size


def svd_flops(rows: int, cols: int) -> int:
    """
    Estimate a thin SVD with both singular-vector sets (what `torch.linalg.svd` computes).

    Golub & Van Loan's R-SVD count, 6 m n^2 + 20 n^3 with m >= n: a textbook operation count,
    not a measurement (LAPACK's divide-and-conquer differs by a small factor).
    """
    m, n = max(rows, cols), min(rows, cols)
    return 6 * m * n * n + 20 * n ** 3


def openvla_step_flops(cfg: OpenVLAConfig, prompt_tokens: int, action_tokens: int,
                       prefill_tokens_per_layer: list[int] | None = None,
                       decode_calls: list[tuple[int, int]] | None = None) -> Flops:
    """
    Count the FLOPs of one full prediction.

    That is vision, a prefill of 1 + visual + prompt tokens, then `action_tokens - 1`
    single-token decode steps (the last token needs no forward pass).

    `prefill_tokens_per_layer` gives the tokens that entered each layer (token pruning; a
    shorter list when the later layers did not run); each layer keeps its prefill tokens in
    the KV cache for decoding. `action_tokens=0`: no decoding and no head.
    `decode_calls` lists the decode forward passes as (tokens fed, decoded tokens already
    cached); the default is one token at a time, [(1, 0), (1, 1), ...].
    """
    text = cfg.text
    full = 1 + cfg.num_patches + prompt_tokens - 1  # BOS + patches + prompt after BOS
    per_layer = prefill_tokens_per_layer or [full] * text.num_hidden_layers
    prefill = sum(decoder_layer_flops(text, n, 0) for n in per_layer)
    calls = [(1, k) for k in range(action_tokens - 1)] if decode_calls is None else decode_calls
    decode = sum(decoder_layer_flops(text, fed, c + cached)
                 for fed, cached in calls for c in per_layer)
    head = head_flops(text, 1 + sum(fed for fed, _ in calls)) if action_tokens else 0
    return Flops(vision=vision_flops(cfg), prefill=prefill, decode=decode, head=head)
