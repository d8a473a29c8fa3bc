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
FlashVLA (arXiv 2505.21200): information-guided visual-token selection and action reuse.

    policy = FlashVLAPolicy(load_policy(path), flashvla_options({'preset': 'fast'}))
    action = policy.predict(rgb, instruction)     # same interface as OpenVLAPolicy

Token selection: the first `layer` decoder layers run on every token. The attention output of
the last of them at the visual positions, T [N, d], is scored per token by its information
contribution C(x) = sum_{i<r} |U[x, i] S[i]| (T = U S V^T, r the smallest rank that holds
`energy` of T's squared Frobenius norm, or a fixed `rank`). The top `keep` tokens stay, in
their original order and at their original rotary positions; the others leave every later
layer and those layers' KV caches, so decoding attends to the kept tokens only.

Action reuse: a gate compares the angle between the last two inferred actions with `eps1_deg`
and the overlap of selected token sets with `eps2`; when both are stable the previous action
is returned again, at most `max_reuse` times in a row. `gate: current` (the default) runs the
vision towers and the first `layer` layers on the new frame and compares its token set with
the previous frame's, so a changed scene always forces inference; `gate: past` decides from
memory alone (the paper's equation, I(s-2) vs I(s-1)) and skips the whole forward pass. The
memory empties on reset() and whenever the instruction changes.

Draft verification (`draft`, beyond the paper): on an inferred step the previous action's
tokens are verified in one forward pass instead of decoding the action token by token, as in
speculative decoding. The tokens are still the model's greedy choices, so it costs no fidelity;
it cuts the decode latency, which token selection leaves almost untouched on a small model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
import math
import threading
from typing import Any

import numpy as np
import torch

from ..policy.config import OpenVLAConfig
from ..policy.openvla import Action, OpenVLAPolicy, Stopwatch
from ..policy.preprocess import check_rgb
from .flops import Flops, openvla_step_flops, svd_flops

# Measured on the embedded default (docs/BENCHMARKS.md); a preset fills every option it names
# and explicit options override it.
PRESETS: dict[str, dict[str, Any]] = {
    'conservative': {'gate': 'current', 'keep': 0.625, 'eps1_deg': 15.0, 'eps2': 0.8,
                     'max_reuse': 1, 'draft': True},
    'fast': {'gate': 'past', 'keep': 0.5, 'eps1_deg': 15.0, 'eps2': 0.8, 'max_reuse': 2,
             'draft': True},
}


@dataclass(frozen=True)
class FlashVLAOptions:
    layer: int = 2  # L_p: decoder layers that see every visual token
    keep: float = 0.625  # fraction (<= 1) of the visual tokens kept, or a count (> 1)
    energy: float = 0.9  # effective rank: fraction of the squared singular values kept
    rank: int = 0  # a fixed effective rank instead of `energy` (0: use energy)
    svd: str = 'gram'  # 'gram', 'exact' or 'lowrank' (randomised, fixed seed)
    reuse: bool = True
    gate: str = 'current'  # 'current' or 'past', see the module docstring
    eps1_deg: float = 15.0  # largest angle between the last two actions that counts stable
    eps2: float = 0.8  # smallest token-set overlap that counts stable
    max_reuse: int = 1  # consecutive reuses before inference is forced
    draft: bool = True  # verify the previous action as a draft (exact; see OpenVLAPolicy)

    def kept_tokens(self, visual_tokens: int) -> int:
        k = round(self.keep * visual_tokens) if self.keep <= 1 else int(self.keep)
        return max(1, min(visual_tokens, k))

    def scores_tokens(self, visual_tokens: int) -> bool:
        """Whether a step scores tokens: to prune some, or for the reuse gate's token sets."""
        return self.reuse or self.kept_tokens(visual_tokens) < visual_tokens


def flashvla_options(options: dict[str, Any] | None) -> FlashVLAOptions:
    """Build options from a preset name (`preset:`) plus overrides; raise ValueError why not."""
    options = dict(options or {})
    preset = options.pop('preset', None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f'unknown FlashVLA preset {preset!r}; known: {sorted(PRESETS)}')
    merged = {**PRESETS.get(preset, {}), **options}
    known = {f.name: f.type for f in fields(FlashVLAOptions)}
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise ValueError(f'unknown FlashVLA option(s) {unknown}; known: {sorted(known)}')
    kinds = {'int': int, 'float': (int, float), 'bool': bool, 'str': str}
    for name, value in merged.items():
        ok = kinds[known[name]]
        if not isinstance(value, ok) or (known[name] != 'bool' and isinstance(value, bool)):
            raise ValueError(f'FlashVLA option {name}={value!r} must be a {known[name]}')
    opts = FlashVLAOptions(**merged)
    checks = [
        (opts.layer >= 1, f'layer must be >= 1, got {opts.layer}'),
        (math.isfinite(opts.keep) and opts.keep > 0,
         f'keep must be > 0 (a fraction or a count), got {opts.keep}'),
        (opts.keep <= 1 or float(opts.keep).is_integer(),
         f'keep above 1 must be a whole count, got {opts.keep}'),
        (0 < opts.energy <= 1, f'energy must be in (0, 1], got {opts.energy}'),
        (opts.rank >= 0, f'rank must be >= 0, got {opts.rank}'),
        (opts.svd in ('gram', 'exact', 'lowrank'),
         f"svd must be 'gram', 'exact' or 'lowrank', got {opts.svd!r}"),
        (opts.gate in ('current', 'past'), f"gate must be 'current' or 'past', got {opts.gate!r}"),
        (0 <= opts.eps1_deg <= 180, f'eps1_deg must be in [0, 180], got {opts.eps1_deg}'),
        (0 <= opts.eps2 <= 1, f'eps2 must be in [0, 1], got {opts.eps2}'),
        (opts.max_reuse >= 1,
         f'max_reuse must be >= 1 (reuse: false disables reuse), got {opts.max_reuse}'),
        (opts.svd != 'lowrank' or opts.rank > 0, 'svd: lowrank needs a fixed rank (rank > 0)'),
    ]
    for ok, reason in checks:
        if not ok:
            raise ValueError(f'FlashVLA option: {reason}')
    return opts


# -- token scoring -------------------------------------------------------------------------


OVERSAMPLE = 8  # extra sketch columns of the randomised SVD (Halko et al. suggest 5-10)


def _lowrank_svd(t: torch.Tensor, q: int, iters: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomised range finder (Halko et al.) with a fixed-seed sketch: U [N, q], S [q]."""
    gen = torch.Generator(device=t.device).manual_seed(0)
    sketch = torch.randn(t.shape[1], q, generator=gen, device=t.device, dtype=t.dtype)
    basis = torch.linalg.qr(t @ sketch).Q
    for _ in range(iters):
        basis = torch.linalg.qr(t @ (t.T @ basis)).Q
    u, s, _ = torch.linalg.svd(basis.T @ t, full_matrices=False)
    return basis @ u, s


def _gram_svd(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U and S^2 from the eigenvectors of T T^T [N, N]: the same factors, cheaper when N <= d."""
    eigenvalues, vectors = torch.linalg.eigh(t @ t.T)  # ascending
    return vectors.flip(1), eigenvalues.flip(0).clamp_min(0)


def information_contribution(t: torch.Tensor, energy: float = 0.9, rank: int = 0,
                             method: str = 'gram') -> tuple[torch.Tensor, int]:
    """
    Score tokens T [N, d] by C(x) = sum_{i<r} |U[x, i] S[i]|; return (scores [N], r).

    r is `rank` when given, else the smallest rank whose singular values hold `energy` of the
    squared Frobenius norm (with `lowrank`, the norm of the whole T, so r <= rank). Methods:
    `exact` (torch.linalg.svd), `gram` (eigh of T T^T), `lowrank` (randomised, rank q = r).
    """
    t = t.float()
    q = min(t.shape) if rank <= 0 else min(rank, *t.shape)
    if method == 'lowrank':
        u, s = _lowrank_svd(t, min(q + OVERSAMPLE, *t.shape))
        squares, total = s * s, (t * t).sum()  # a partial spectrum: the norm comes from T
    elif method == 'gram':
        u, squares = _gram_svd(t)
        total = squares.sum()
    else:
        u, s, _ = torch.linalg.svd(t, full_matrices=False)
        squares = s * s
        total = squares.sum()
    if rank > 0:
        r = q
    else:
        share = torch.cumsum(squares, 0) / total.clamp_min(1e-30)
        r = min(int((share < energy - 1e-6).sum()) + 1, squares.numel())
    return (u[:, :r] * squares[:r].sqrt()).abs().sum(dim=1), r


def scoring_flops(method: str, tokens: int, dim: int, rank: int) -> int:
    """Operation-count estimate of `information_contribution` (textbook counts, see flops.py)."""
    n, d, q = tokens, dim, min(rank + OVERSAMPLE, tokens, dim)
    if method == 'gram':
        return 2 * n * n * d + 9 * n ** 3  # T T^T, then the symmetric QR algorithm with vectors
    if method == 'lowrank':
        products = 2 * n * d * q * 5 + 2 * n * q * q  # sketch, 2 power iterations, U = Q u
        return products + 3 * 4 * n * q * q + svd_flops(q, d)  # 3 thin QRs, small SVD
    return svd_flops(n, d)


def select_tokens(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Return the indices of the `k` highest scores in ascending (original) order."""
    return torch.sort(torch.topk(scores, k, sorted=False).indices).values


# -- the reuse gate ------------------------------------------------------------------------


def action_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Return the angle between two actions in degrees (arccos of cos-sim; 90 if one is 0)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 90.0
    return math.degrees(math.acos(float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))))


def token_overlap(previous: frozenset[int], current: frozenset[int]) -> float:
    """Return phi = |previous & current| / |current|."""
    return len(previous & current) / max(1, len(current))


class ReuseGate:
    """
    Memory of the last two inferred actions and selected token sets, and the reuse decision.

    Actions are compared in the model's normalised space ([-1, 1] per dimension), so the
    gripper and metre-scale deltas weigh alike, over `dims` only (the dimensions the dataset
    varies: a constant one would pull every angle towards zero). A reused action is a copy and
    is not pushed into the action memory: stability must come from two real inferences.
    """

    def __init__(self, eps1_deg: float, eps2: float, max_reuse: int,
                 dims: np.ndarray | None = None) -> None:
        self.eps1_deg, self.eps2, self.max_reuse = eps1_deg, eps2, max_reuse
        self.dims = dims
        self.reset()

    def reset(self) -> None:
        self.actions: list[np.ndarray] = []
        self.tokens: list[frozenset[int]] = []
        self.last: Action | None = None
        self.consecutive = 0
        self.alpha: float | None = None
        self.phi: float | None = None

    def decide(self, current: frozenset[int] | None = None) -> bool:
        """
        Reuse now? With `current` (this frame's set) compare it with the last set.

        Without it, compare the last two sets (the memory-only gate).
        """
        self.alpha = self.phi = None
        if self.last is None or len(self.actions) < 2 or self.consecutive >= self.max_reuse:
            return False
        self.alpha = action_angle_deg(self.actions[-2], self.actions[-1])
        if current is not None and self.tokens:
            self.phi = token_overlap(self.tokens[-1], current)
        elif current is None and len(self.tokens) >= 2:
            self.phi = token_overlap(self.tokens[-2], self.tokens[-1])
        else:
            return False
        return self.alpha < self.eps1_deg and self.phi > self.eps2

    def record(self, action: Action | None, tokens: frozenset[int] | None) -> None:
        """Remember an inference (`action`) or count a reuse (`action` None)."""
        if tokens is not None:
            self.tokens = [*self.tokens[-1:], tokens]
        if action is None:
            self.consecutive += 1
            return
        self.consecutive = 0
        self.last = action
        vector = np.asarray(action.normalized, dtype=np.float64)
        if self.dims is not None:
            vector = vector[self.dims]
        self.actions = [*self.actions[-1:], vector]


# -- the accelerated policy ----------------------------------------------------------------


class FlashVLAPolicy:
    """OpenVLAPolicy with FlashVLA token selection and action reuse; same predict()/reset()."""

    def __init__(self, base: OpenVLAPolicy, options: FlashVLAOptions | None = None) -> None:
        self.base = base
        self.options = options or FlashVLAOptions()
        layers = base.cfg.text.num_hidden_layers
        if not 1 <= self.options.layer < layers:
            raise ValueError(f'FlashVLA layer={self.options.layer}: the model has {layers} '
                             f'decoder layers, so layer must be in 1..{layers - 1}')
        self.cfg = base.cfg
        self.action_dim = base.action_dim
        self.visual_tokens = base.cfg.num_patches
        self.keep = self.options.kept_tokens(self.visual_tokens)
        o = self.options
        stats = base.stats
        self.gate = ReuseGate(o.eps1_deg, o.eps2, o.max_reuse,
                              dims=(stats.q99 > stats.q01) | ~stats.mask)
        self._lock = threading.Lock()  # reset() may come from another thread mid-predict
        self._generation = 0
        self._instruction: str | None = None
        self.steps = self.reused = 0
        self.flops_done = self.flops_full = 0
        self._full_flops: dict[int, int] = {}  # prompt length -> the plain model's step FLOPs

    def prompt_ids(self, instruction: str) -> torch.Tensor:
        """Check an instruction as the plain policy does (InputError when it is unusable)."""
        return self.base.prompt_ids(instruction)

    def check_instruction(self, instruction: str) -> str:
        """Thread-safe instruction check of the plain policy (InputError when unusable)."""
        return self.base.check_instruction(instruction)

    def reset(self) -> None:
        """Forget the reuse memory (new episode or instruction)."""
        with self._lock:
            self._generation += 1
            self.gate.reset()

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray, instruction: str) -> Action:
        with self._lock:
            if instruction != self._instruction:
                self._instruction = instruction
                self._generation += 1
                self.gate.reset()
            generation = self._generation
        base, o = self.base, self.options
        clock = Stopwatch(base.device)
        if o.reuse and o.gate == 'past':
            check_rgb(rgb)  # bad input is rejected on a reuse step too
            ids = base.prompt_ids(instruction)
            last = self._reusable(generation, None)
            if last is not None:
                clock.mark('preprocess')
                return self._reuse(clock, self.step_flops(self.cfg, ids.numel(), 'reused'),
                                   last, None, ids)

        ids, seq = base.embed_inputs(rgb, instruction, clock)
        llm = base.model.language_model
        positions = torch.arange(seq.shape[1], device=base.device)
        captured: list[torch.Tensor] = []
        hook = llm.model.layers[o.layer - 1].self_attn.register_forward_hook(
            lambda _module, _args, output: captured.append(output))
        try:
            hidden, positions = llm.run_layers(seq, positions, 0, o.layer)
        finally:
            hook.remove()
        n = self.visual_tokens
        full = seq.shape[1]
        if o.scores_tokens(n):
            scores, rank = information_contribution(captured[0][0, 1:1 + n], o.energy, o.rank,
                                                    o.svd)
            keep = select_tokens(scores, self.keep)
        else:  # keep everything, no gate: nothing to score
            keep, rank = torch.arange(n, device=base.device), 0
        kept = frozenset(keep.tolist())
        last = self._reusable(generation, kept) if o.reuse and o.gate == 'current' else None
        if last is not None:
            clock.mark('prefill')
            return self._reuse(clock, self.step_flops(self.cfg, ids.numel(), 'reused'),
                               last, kept, ids)

        index = torch.cat([torch.zeros(1, dtype=torch.long, device=keep.device), keep + 1,
                           torch.arange(1 + n, full, device=keep.device)])
        hidden, positions = llm.run_layers(hidden[:, index], positions[index], o.layer)
        first = base.greedy(llm.logits(hidden))
        clock.mark('prefill')
        last = self.gate.last
        tokens, calls = base.decode(first, full, last.token_ids if o.draft and last else None)
        clock.mark('decode')
        done = self.step_flops(self.cfg, ids.numel(), 'inferred', calls)
        info = {'prompt_tokens': int(ids.numel()), 'visual_tokens': n, 'decode_calls': calls,
                'kept_indices': tuple(sorted(kept))}
        action = base.finish(tokens, clock, info)
        with self._lock:
            if generation == self._generation:
                self.gate.record(action, kept)
        self._count(action, done, reused=False, kept_tokens=self.keep, rank=rank)
        return action

    def _reusable(self, generation: int, kept: frozenset[int] | None) -> Action | None:
        """Return the action to reuse now (and count the reuse), or None: one atomic step."""
        with self._lock:
            if generation != self._generation or not self.gate.decide(kept):
                return None
            self.gate.record(None, kept)
            return self.gate.last

    def _reuse(self, clock: Stopwatch, done: Flops, last: Action,
               kept: frozenset[int] | None, ids: torch.Tensor) -> Action:
        clock.mark('head')
        action = Action(values=last.values.copy(), normalized=last.normalized.copy(),
                        token_ids=list(last.token_ids), timings_ms=clock.timings(),
                        info={'prompt_tokens': int(ids.numel()),
                              'visual_tokens': self.visual_tokens,
                              'non_action_tokens': last.info.get('non_action_tokens', 0),
                              'kept_indices': tuple(sorted(kept)) if kept else None})
        self._count(action, done, reused=True, kept_tokens=len(kept) if kept else 0, rank=0)
        return action

    def step_flops(self, cfg: OpenVLAConfig, prompt_tokens: int, kind: str,
                   decode_calls: list[tuple[int, int]] | None = None) -> Flops:
        """
        Count one step of `kind` for a model of shape `cfg` with these options.

        Kinds: 'inferred' (pruned forward and decoding, made of `decode_calls`), 'reused' (what
        a reuse step ran: nothing for the past gate, vision and the first `layer` layers for
        the current one). Evaluated with another `cfg` (OpenVLA-7B's), it projects the
        measured mix of steps onto that model.
        """
        o = self.options
        n = cfg.num_patches
        full = 1 + n + prompt_tokens - 1
        select = Flops(select=scoring_flops(o.svd, n, cfg.text.hidden_size, o.rank)
                       if o.scores_tokens(n) else 0)
        if kind == 'reused':
            if o.gate == 'past':
                return Flops()
            return openvla_step_flops(cfg, prompt_tokens, 0, [full] * o.layer) + select
        pruned = 1 + o.kept_tokens(n) + prompt_tokens - 1
        layers = cfg.text.num_hidden_layers
        return openvla_step_flops(cfg, prompt_tokens, self.action_dim,
                                  [full] * o.layer + [pruned] * (layers - o.layer),
                                  decode_calls=decode_calls) + select

    def _count(self, action: Action, done: Flops, reused: bool, kept_tokens: int,
               rank: int) -> None:
        """Per-step info for the bench and the node's diagnostics, plus running totals."""
        prompt = action.info['prompt_tokens']
        if prompt not in self._full_flops:
            self._full_flops[prompt] = openvla_step_flops(self.cfg, prompt, self.action_dim).total
        self.steps += 1
        self.reused += reused
        self.flops_done += done.total
        self.flops_full += self._full_flops[prompt]
        action.info.update({
            'reused': reused, 'kept_tokens': kept_tokens, 'svd_rank': rank, 'flops': done,
            'gate_alpha_deg': self.gate.alpha, 'gate_phi': self.gate.phi,
            'reuse_rate': self.reused / self.steps,
            'flops_saved': 1.0 - self.flops_done / max(1, self.flops_full),
        })
