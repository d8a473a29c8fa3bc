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
FLOPs of one policy step, counted from what the forward actually ran (its `StepRecord`).

What is counted: every matrix product, at 2 FLOPs per multiply-add: patch embeddings, ViT
blocks (the ones that run), projector, decoder projections and MLPs, attention scores and
weighted sums (each query against the keys it may see: causal in the decoder, all in the
ViTs), and the LM head at the positions whose logits are computed. Not counted: norms,
activations, softmax, rotary embeddings, embedding lookups, bin decoding (all O(tokens * width),
under 1% here).

Split: vision (towers + projector), prefill (decoder layers over the prompt), decode (decoder
layers for generated tokens), head (LM head logits), select (an accelerator's token scoring,
such as FlashVLA's SVD; an operation-count estimate, see `svd_flops`).

`count_flops(cfg, record)` is the one counter: the policy fills every step's info with it, and
`project(record, cfg_7b)` re-counts the same plan at OpenVLA-7B's shapes.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass, field, fields, replace

from .config import OpenVLAConfig, TextConfig, ViTConfig
from .dit import FREQUENCY_SIZE, DiTConfig
from .layout import SequenceLayout

OVERSAMPLE = 8  # extra sketch columns of the randomised SVD (Halko et al. suggest 5-10)


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


@dataclass
class StepRecord:
    """What one step ran: the only input of the FLOPs counter."""

    layout: SequenceLayout
    depth: int  # decoder layers of the model
    plan: tuple[int, ...] = ()  # the layers the step was to run (a layer plan may skip some)
    stopped: bool = False  # a gate ended the step early (after the last layer in layer_tokens)
    vision: bool = False  # the towers and the projector ran
    layer_tokens: dict[int, int] = field(default_factory=dict)  # layer -> prefill tokens in
    decode_calls: list[tuple[int, int]] = field(default_factory=list)  # (fed, decoded cached)
    head_positions: int = 0  # positions whose LM-head logits were computed
    scoring: list[tuple[str, int, int]] = field(default_factory=list)  # (method, tokens, rank)
    dit_passes: int = 0  # diffusion head: DiT forward rows (denoising steps x CFG batch)
    dit_parts: dict[str, int] = field(default_factory=dict)  # 'attn'/'mlp' -> rows computed
    dit_depth: int = 0  # blocks of the DiT the parts were counted on (to project them)
    mlp_kept: dict[int, float] = field(default_factory=dict)  # layer -> share of MLP neurons

    @property
    def layers_run(self) -> int:
        return len(self.layer_tokens)

    def to_dict(self) -> dict:
        """Return the record as JSON-able values (what a decision recording stores)."""
        values = asdict(self)
        values['layer_tokens'] = [[k, v] for k, v in self.layer_tokens.items()]
        values['mlp_kept'] = [[k, v] for k, v in self.mlp_kept.items()]
        return values

    @classmethod
    def from_dict(cls, raw: dict) -> StepRecord:
        """Read a record written by `to_dict`."""
        return cls(SequenceLayout(**raw['layout']), raw['depth'], tuple(raw['plan']),
                   raw['stopped'], raw['vision'], {k: v for k, v in raw['layer_tokens']},
                   [tuple(c) for c in raw['decode_calls']], raw['head_positions'],
                   [tuple(s) for s in raw['scoring']], raw['dit_passes'], dict(raw['dit_parts']),
                   raw['dit_depth'], {k: v for k, v in raw['mlp_kept']})

    @classmethod
    def full(cls, layout: SequenceLayout, layers: int,
             head: DiTConfig | None = None) -> StepRecord:
        """Record the plain model's step: every layer on every token, then its whole head."""
        calls = [(1, k) for k in range(layout.actions - 1)]
        passes = 0 if head is None else head.ddim_steps * (2 if head.cfg_scale > 1 else 1)
        return cls(layout, layers, plan=tuple(range(layers)), vision=True,
                   layer_tokens={i: layout.prefill for i in range(layers)},
                   decode_calls=calls,
                   head_positions=1 + len(calls) if layout.actions else 0,
                   dit_passes=passes,
                   dit_parts={} if head is None else {'attn': passes * head.depth,
                                                      'mlp': passes * head.depth},
                   dit_depth=0 if head is None else head.depth)


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


def decoder_layer_flops(text: TextConfig, new_tokens: int, past_tokens: int,
                        mlp_share: float = 1.0) -> int:
    """
    One decoder layer: `new_tokens` queries appended after `past_tokens` cached keys.

    `mlp_share` of the MLP's neurons run (structured sparsity; 1: all of them).
    """
    d, kv = text.hidden_size, text.num_key_value_heads * text.head_dim
    q = text.num_attention_heads * text.head_dim
    projections = 2 * new_tokens * d * (q + 2 * kv) + 2 * new_tokens * q * d
    mlp = 2 * 3 * new_tokens * d * round(mlp_share * text.intermediate_size)
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


def scoring_flops(method: str, tokens: int, dim: int, rank: int) -> int:
    """Operation-count estimate of an accelerator's token scoring (textbook counts)."""
    n, d, q = tokens, dim, min(rank + OVERSAMPLE, tokens, dim)
    if method == 'diverse':  # EfficientVLA: `rank` holds the other tokens of the sequence
        length = n + rank  # explicit attention weights of one layer, then token cosines
        return 2 * length * length * d + 2 * n * n * d
    if method == 'gram':
        return 2 * n * n * d + 9 * n ** 3  # T T^T, then the symmetric QR algorithm with vectors
    if method == 'lowrank':
        products = 2 * n * d * q * 5 + 2 * n * q * q  # sketch, 2 power iterations, U = Q u
        return products + 3 * 4 * n * q * q + svd_flops(q, d)  # 3 thin QRs, small SVD
    return svd_flops(n, d)


def dit_flops(head: DiTConfig, passes: int, parts: dict[str, int]) -> int:
    """Count a DiT head: `passes` rows through embeddings and final layer, and each part run."""
    n, h, a = head.chunk + 1, head.hidden_size, head.action_dim
    per_pass = (2 * head.chunk * a * h  # action embedding
                + 2 * (FREQUENCY_SIZE * h + h * h)  # timestep MLP
                + 2 * head.token_size * h  # condition
                + 2 * n * h * a)  # final layer (the condition row too)
    attn = 2 * n * h * 3 * h + 2 * 2 * n * n * h + 2 * n * h * h  # qkv, scores+sum, proj
    mlp = 2 * 2 * n * h * int(h * head.mlp_ratio)
    return passes * per_pass + parts.get('attn', 0) * attn + parts.get('mlp', 0) * mlp


def count_flops(cfg: OpenVLAConfig, record: StepRecord) -> Flops:
    """Count the FLOPs of what `record` says ran, on a model of shape `cfg`."""
    text = cfg.text
    share = record.mlp_kept
    prefill = sum(decoder_layer_flops(text, n, 0, share.get(layer, 1.0))
                  for layer, n in record.layer_tokens.items())
    decode = sum(decoder_layer_flops(text, fed, past + cached, share.get(layer, 1.0))
                 for fed, cached in record.decode_calls
                 for layer, past in record.layer_tokens.items())
    select = sum(scoring_flops(method, tokens, text.hidden_size, rank)
                 for method, tokens, rank in record.scoring)
    head = head_flops(text, record.head_positions)
    if cfg.action_model is not None:
        head += dit_flops(cfg.action_model, record.dit_passes, record.dit_parts)
    return Flops(vision=vision_flops(cfg) if record.vision else 0, prefill=prefill,
                 decode=decode, head=head, select=select)


def full_flops(cfg: OpenVLAConfig, layout: SequenceLayout) -> Flops:
    """Count the plain model's FLOPs for one step of this layout."""
    return count_flops(cfg, StepRecord.full(layout, cfg.text.num_hidden_layers,
                                            cfg.action_model))


def project(record: StepRecord, cfg: OpenVLAConfig) -> StepRecord:
    """
    Re-express `record` on a model of shape `cfg` (OpenVLA-7B's, for the labelled projection).

    The same prompt and decode calls; visual tokens scale with the visual-token count (a layer
    that kept 62.5% of them keeps 62.5% there). Token counts and an early stop keep their layer
    index, and the last layer stands for every deeper one (FlashVLA's L_p = 2 stays 2 of 32);
    layers a plan skips are skipped at the same relative depth. A DiT head's computed block
    parts scale to the target head's depth (a cached part is cached in every block).
    """
    src = record.layout
    layout = replace(src, visual=cfg.num_patches)
    text = src.text_tokens

    def scaled(tokens: int) -> int:
        return text + round((tokens - text) * layout.visual / max(1, src.visual))

    depth, ran = cfg.text.num_hidden_layers, record.layer_tokens
    last = max(ran, default=-1)
    plan = tuple(j for j in range(depth) if (j * record.depth) // depth in record.plan)
    if record.stopped:  # a gate ended the step after layer `last` (or before any, at -1)
        plan = tuple(j for j in plan if j <= last)
    layers, mlp_kept = {}, {}
    for j in plan:
        source = min(j, last)
        while source not in ran:  # a skipped layer: the nearest shallower one that ran
            source -= 1
        layers[j] = scaled(ran[source])
        if source in record.mlp_kept:  # the same share of the wider MLP's neurons
            mlp_kept[j] = record.mlp_kept[source]
    scoring = [(m, round(n * layout.visual / max(1, src.visual)), r) for m, n, r in record.scoring]
    head = cfg.action_model
    blocks = head.depth if head is not None and record.dit_depth else record.dit_depth
    parts = {k: v * blocks // max(1, record.dit_depth) for k, v in record.dit_parts.items()}
    return StepRecord(layout, depth, plan, record.stopped, record.vision, layers,
                      list(record.decode_calls), record.head_positions, scoring,
                      record.dit_passes, parts, blocks, mlp_kept)
