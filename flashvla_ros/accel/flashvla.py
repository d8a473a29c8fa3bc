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

    policy = accelerate(load_policy(path), ['flashvla'], {'flashvla': {'preset': 'fast'}})
    chunk = policy.predict(Observation(rgb, instruction))

Token selection (an after-layer hook): the first `layer` decoder layers that run (an earlier
accelerator may prune some) see every token.
The attention output of the last of them at the visual positions, T [N, d], is scored per
token by its information contribution C(x) = sum_{i<r} |U[x, i] S[i]| (T = U S V^T, r the
smallest rank that holds `energy` of T's squared Frobenius norm, or a fixed `rank`). The top
`keep_fraction` (or `keep_tokens`) stay, in their original order and at their original rotary
positions; the others leave every later layer and those layers' KV caches. The budget counts
the model's visual tokens: after an accelerator that kept fewer, every one of those stays
(`base.token_budget`).

Action reuse (a gate): it compares the angle between the last two inferred actions with
`eps1_deg` and the overlap of selected token sets with `eps2`; when both are stable the
previous action is returned again, at most `max_reuse` times in a row. `gate: current` (the
default) runs vision and the first `layer` layers on the new frame and compares its token set
with the previous frame's, so a changed scene always forces inference; `gate: past` decides
from memory alone (the paper's equation, I(s-2) vs I(s-1)) before anything runs. The memory
empties on reset() and whenever the instruction changes.

Draft verification (`draft`, a head hook, beyond the paper): on an inferred step the previous
action's tokens are verified in one forward pass instead of decoding the action token by
token, as in speculative decoding. The tokens are still the model's greedy choices, so it
costs no fidelity; it cuts the decode latency, which token selection leaves almost untouched
on a small model.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, ClassVar

import numpy as np
import torch

from ..policy.flops import OVERSAMPLE
from ..policy.step import ActionChunk, Step
from .base import Accelerator, option, token_budget


@dataclass(frozen=True)
class FlashVLAOptions:
    layer: int = option(2, 'decoder layers that run on every visual token (L_p)', low=1)
    keep_fraction: float = option(0.625, "share of the model's visual tokens kept after layer "
                                  'L_p (at most the tokens present)',
                                  low=0.0, high=1.0, low_open=True, live=True)
    keep_tokens: int = option(0, 'visual tokens kept, as a count (0: use keep_fraction)',
                              low=0, live=True)
    energy: float = option(0.9, 'effective SVD rank: share of the squared singular values',
                           low=0.0, high=1.0, low_open=True, live=True)
    rank: int = option(0, 'fixed effective SVD rank instead of energy (0: use energy)',
                       low=0, live=True)
    svd: str = option('gram', 'token-scoring SVD: gram (eigh of T T^T), exact, or lowrank '
                      '(randomised; needs rank)', choices=('gram', 'exact', 'lowrank'))
    reuse: bool = option(True, 'reuse the previous action while actions and tokens are stable',
                         live=True)
    gate: str = option('current', 'reuse gate: current (looks at the new frame) or past '
                       '(memory only, skips the whole step)', choices=('current', 'past'))
    eps1_deg: float = option(15.0, 'largest angle between the last two actions that counts '
                             'stable, degrees', low=0.0, high=180.0, live=True)
    eps2: float = option(0.8, 'smallest overlap of selected token sets that counts stable',
                         low=0.0, high=1.0, live=True)
    max_reuse: int = option(1, 'consecutive reuses before inference is forced', low=1,
                            live=True)
    gripper_rows: int = option(0, 'a chunk is reused only if its first N rows keep the gripper '
                               '(0: every row; chunked models: 2 x chunk_steps)', low=0,
                               live=True)
    draft: bool = option(True, 'verify the previous action as a draft in one pass (exact)',
                         live=True)

    def kept_tokens(self, visual_tokens: int, present: int | None = None) -> int:
        """Tokens kept of `present` (default: all); the budget counts the model's (base.py)."""
        return token_budget(visual_tokens, self.keep_tokens, self.keep_fraction, present)

    def scores_tokens(self, visual_tokens: int, present: int | None = None) -> bool:
        """
        Whether a step scores tokens: only to prune some of the `present` ones.

        Keeping every token, the scores decide nothing: the reuse gate's token set is then
        every token present, scored or not.
        """
        present = visual_tokens if present is None else present
        return self.kept_tokens(visual_tokens, present) < present


# -- token scoring -------------------------------------------------------------------------


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
    is not pushed into the action memory: stability must come from two real inferences. A chunk
    that plans a gripper change (`gripper`: the dimensions left unnormalised) is never reused:
    the gate compares first actions, and a reuse would run the change open-loop.
    """

    def __init__(self, eps1_deg: float, eps2: float, max_reuse: int,
                 dims: np.ndarray | None = None, gripper_rows: int = 0) -> None:
        self.eps1_deg, self.eps2, self.max_reuse = eps1_deg, eps2, max_reuse
        self.gripper_rows = gripper_rows
        self.dims = dims
        self.gripper: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        self.actions: list[np.ndarray] = []
        self.tokens: list[frozenset[int]] = []
        self.last: ActionChunk | None = None
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
        return self.alpha < self.eps1_deg and self.phi > self.eps2 and self._holds_gripper()

    def _holds_gripper(self) -> bool:
        """Whether the last chunk keeps the gripper in its first `gripper_rows` rows (0: all)."""
        if self.gripper is None or self.last is None:
            return True
        grip = np.asarray(self.last.normalized)[:self.gripper_rows or None, self.gripper]
        return bool((grip == grip[:1]).all())

    def record(self, action: ActionChunk | None, tokens: frozenset[int] | None) -> None:
        """Remember an inference (`action`) or count a reuse (`action` None)."""
        if tokens is not None:
            self.tokens = [*self.tokens[-1:], tokens]
        if action is None:
            self.consecutive += 1
            return
        self.consecutive = 0
        self.last = action
        vector = np.asarray(action.normalized[0], dtype=np.float64)
        if self.dims is not None:
            vector = vector[self.dims]
        self.actions = [*self.actions[-1:], vector]


# -- the accelerator ----------------------------------------------------------------------


class FlashVLA(Accelerator):
    """Token selection after layer L_p, the reuse gate and draft verification, as hooks."""

    name = 'flashvla'
    Options = FlashVLAOptions
    # A preset fills every option it names; explicit options override it. Why these values,
    # and what they measured: docs/ACCELERATORS.md (FlashVLA presets; `reuse`: the combination
    # after efficientvla, no token pruning of its own).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        'conservative': {'gate': 'current', 'keep_fraction': 0.625, 'eps1_deg': 15.0,
                         'eps2': 0.8, 'max_reuse': 1, 'draft': True},
        'fast': {'gate': 'past', 'keep_fraction': 0.5, 'eps1_deg': 15.0, 'eps2': 0.8,
                 'max_reuse': 2, 'draft': True},
        'reuse': {'layer': 3, 'gate': 'past', 'keep_fraction': 1.0, 'eps1_deg': 120.0,
                  'eps2': 0.0, 'max_reuse': 1, 'gripper_rows': 8, 'draft': True},
    }
    DEFAULT_PRESET = 'conservative'
    gates = True
    drafts = True

    @classmethod
    def check(cls, o: FlashVLAOptions) -> str | None:
        if o.svd == 'lowrank' and o.rank == 0:
            return 'svd: lowrank needs a fixed rank (rank > 0)'
        return None

    def __init__(self, options: FlashVLAOptions) -> None:
        super().__init__(options)
        self.gate_memory = ReuseGate(options.eps1_deg, options.eps2, options.max_reuse,
                                     gripper_rows=options.gripper_rows)
        self._kept: frozenset[int] | None = None
        self._layer = options.layer - 1  # the decoder layer after which it scores tokens

    def bind(self, policy: Any) -> None:
        stats = policy.stats  # compare actions over the dimensions the dataset varies
        self.gate_memory.dims = (stats.q99 > stats.q01) | ~stats.mask
        self.gate_memory.gripper = ~stats.mask
        depth = policy.cfg.text.num_hidden_layers
        if not 1 <= self.options.layer < depth:
            raise ValueError(f'flashvla layer={self.options.layer}: the model has {depth} '
                             f'decoder layers, so layer must be in 1..{depth - 1}')

    def update(self, options: FlashVLAOptions) -> None:
        super().update(options)
        g = self.gate_memory
        g.eps1_deg, g.eps2, g.max_reuse = options.eps1_deg, options.eps2, options.max_reuse
        g.gripper_rows = options.gripper_rows

    def reset(self) -> None:
        self.gate_memory.reset()

    def plan(self, layers: list[int]) -> list[int]:
        if self.options.layer > len(layers):  # equal: the gate reads the last layer that runs
            raise ValueError(f'flashvla layer={self.options.layer}: only {len(layers)} decoder '
                             'layers run')
        self._layer = layers[self.options.layer - 1]
        return layers

    def probes(self) -> dict[int, set[str]]:
        return {self._layer: {'attention_output'}}

    def before_step(self, step: Step) -> None:
        if self.options.reuse and self.options.gate == 'past':
            step.reuse = self._reusable(None)

    def after_layer(self, step: Step, layer: int, hidden: torch.Tensor,
                    probes: dict[str, torch.Tensor]) -> torch.Tensor | None:
        o = self.options
        if layer != self._layer:
            return None
        n, model = step.visual_kept.numel(), step.layout.visual  # present; the model's
        if o.scores_tokens(model, n):
            output = step.visual_hidden(probes['attention_output'])[0]
            scores, rank = information_contribution(output, o.energy, o.rank, o.svd)
            step.record.scoring.append((o.svd, n, o.rank))
            keep = select_tokens(scores, o.kept_tokens(model, n))
        else:  # keep everything: nothing to score
            keep, rank = torch.arange(n, device=hidden.device), 0
        if o.reuse:  # the gate compares token sets (on the host); without it, none is needed
            self._kept = frozenset(step.visual_kept[keep].tolist())
        step.extras['svd_rank'] = rank
        if o.reuse and o.gate == 'current':
            step.reuse = self._reusable(self._kept)
        return keep

    def draft(self, step: Step) -> list[int] | None:
        last = self.gate_memory.last
        return list(last.token_ids) if self.options.draft and last is not None else None

    def after_step(self, step: Step, chunk: ActionChunk) -> None:
        kept = self._kept if step.record.layers_run else None
        self._kept = None
        self.gate_memory.record(None if chunk.info.reused else chunk, kept)
        step.extras.setdefault('svd_rank', 0)
        chunk.info.extras.update(svd_rank=step.extras['svd_rank'],
                                 gate_alpha_deg=self.gate_memory.alpha,
                                 gate_phi=self.gate_memory.phi)

    def _reusable(self, kept: frozenset[int] | None) -> ActionChunk | None:
        return self.gate_memory.last if self.gate_memory.decide(kept) else None
