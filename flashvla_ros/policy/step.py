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
The policy interface (observation in, action chunk out) and the hook points of its one forward.

A step runs: gates (`before_step`) -> vision -> the planned decoder layers, each followed by
`after_layer` (keep a subset of tokens, or end the step with a reused chunk) -> the head
(autoregressive decode, given a `draft` to verify) -> `after_step` (memories). Accelerators
implement `Hooks`; they never run layers themselves. Several compose in a declared order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .flops import Flops, StepRecord
from .layout import SequenceLayout


@dataclass(frozen=True)
class Observation:
    rgb: np.ndarray  # [H, W, 3] uint8
    instruction: str


@dataclass
class StepInfo:
    """What one step did; the bench, the node's diagnostics and the tests read it."""

    timings_ms: dict[str, float]
    record: StepRecord  # what ran (FLOPs are counted from it)
    flops: Flops
    prompt_tokens: int
    visual_tokens: int
    kept_tokens: int  # visual tokens that reached the last layer
    kept: torch.Tensor | None  # which ones (None: every token, or nothing ran), on the device
    layers_run: int
    reused: bool = False
    non_action_tokens: int = 0
    flops_full: int = 0  # the plain model's FLOPs for the same step (what `flops` saves on)
    extras: dict[str, Any] = field(default_factory=dict)  # accelerator values (gate angles...)

    @property
    def kept_indices(self) -> tuple[int, ...] | None:
        """Return the kept visual tokens' indices (read from the device when first asked)."""
        return None if self.kept is None else tuple(self.kept.tolist())

    @property
    def decode_calls(self) -> list[tuple[int, int]]:
        return self.record.decode_calls

    def scalars(self) -> dict[str, Any]:
        """Flat values for diagnostics and JSON (FLOPs as a number, no index lists)."""
        return {'reused': self.reused, 'prompt_tokens': self.prompt_tokens,
                'visual_tokens': self.visual_tokens, 'kept_tokens': self.kept_tokens,
                'layers_run': self.layers_run, 'non_action_tokens': self.non_action_tokens,
                'flops_step': self.flops.total, **self.extras}


class RunningStats:
    """Reuse rate and FLOPs saved over the steps a reader saw (the node's, the bench's)."""

    def __init__(self) -> None:
        self.steps = self.reused = 0
        self.flops_done = self.flops_full = 0

    def add(self, info: StepInfo) -> None:
        self.steps += 1
        self.reused += info.reused
        self.flops_done += info.flops.total
        self.flops_full += info.flops_full

    @property
    def reuse_rate(self) -> float:
        return self.reused / max(1, self.steps)

    @property
    def flops_saved(self) -> float:
        """Share of the plain model's FLOPs on the same steps not spent."""
        return 1.0 - self.flops_done / self.flops_full if self.flops_full else 0.0

    def scalars(self) -> dict[str, float]:
        return {'reuse_rate': self.reuse_rate, 'flops_saved': self.flops_saved}


@dataclass
class ActionChunk:
    """One or more actions (an autoregressive model gives one), with the step's info."""

    actions: np.ndarray  # [H, action_dim] float64, un-normalised (dataset units)
    normalized: np.ndarray  # [H, action_dim] in [-1, 1]
    token_ids: list[int]
    info: StepInfo

    @property
    def values(self) -> np.ndarray:
        """Return the first action of the chunk (the one to execute now)."""
        return self.actions[0]

    @property
    def timings_ms(self) -> dict[str, float]:
        return self.info.timings_ms


@dataclass
class Step:
    """One step in progress: what hooks read, and the few things they may set."""

    observation: Observation
    layout: SequenceLayout
    record: StepRecord
    visual_kept: torch.Tensor  # original indices of the visual tokens still in the sequence
    reuse: ActionChunk | None = None  # set by a gate: end the step with this chunk
    decoder_input: torch.Tensor | None = None  # [B, T, D] entering the first planned layer
    extras: dict[str, Any] = field(default_factory=dict)  # hooks' values for StepInfo.extras
    # Pad tokens after the visual ones: a robot's row padded to its batch's prompt length.
    padding: int = 0

    def visual_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return the visual tokens still present in `hidden` [B, T, D]: [B, n, D]."""
        return hidden[:, self.layout.visual_present(self.visual_kept.numel())]

    def text_present(self) -> slice:
        """Return where the prompt after BOS sits now (after the visual tokens and any pads)."""
        start = self.layout.text_present(self.visual_kept.numel()).start + self.padding
        return slice(start, None)


class Hooks:
    """Hook points of the one forward: an accelerator overrides those it needs (defaults: none)."""

    name = 'hooks'
    # Roles a composition gives to one hook at most (policy/composition.py).
    gates = False  # it may end steps early: a reuse gate
    drafts = False  # it proposes drafts for the token head
    caches = False  # it caches DiT block outputs: set for every class that overrides block_cache

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if 'block_cache' in vars(cls):  # a cache can never be plugged in unnoticed
            cls.caches = True

    def bind(self, policy: Any) -> None:
        """Read what it needs of the policy (shapes, statistics); raise ValueError if unfit."""

    def fresh(self) -> Hooks:
        """Return a new instance with the same settings and no memory (another robot's)."""
        raise NotImplementedError(f'{self.name} cannot be copied for another robot')

    def reset(self) -> None:
        """Forget memories: a new episode or instruction."""

    def plan(self, layers: list[int]) -> list[int]:
        """Return the decoder layers to run, given the plan so far (pruning makes holes)."""
        return layers

    def probes(self) -> dict[int, set[str]]:
        """Name the probes it reads, by layer ('attention_output', 'attention_weights')."""
        return {}

    def mlp_neurons(self) -> dict[int, torch.Tensor]:
        """Layer -> the MLP neurons to run (structured sparsity); other layers run whole."""
        return {}

    def needs_layers(self) -> set[int]:
        """Layers whose output it reads: a plan that skips one is refused."""
        return set(self.probes())

    def before_step(self, step: Step) -> None:
        """Before vision: may set `step.reuse` (a memory-only gate)."""

    def after_layer(self, step: Step, layer: int, hidden: torch.Tensor,
                    probes: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """
        Return the indices of the present visual tokens to keep after `layer` (ascending), or None.

        `hidden` and `probes` (the kinds asked of this layer, by kind) hold only the tokens
        still present: an earlier hook's selection is already applied.
        """
        return None

    def block_cache(self, step: Step, denoising_step: int):
        """
        Diffusion head: return the block-cache hook of one denoising step.

        `block_cache(block, part, compute)` returns a DiT block part's output ('attn' or 'mlp');
        calling `compute()` computes it, anything else reuses (feature caching). A class that
        overrides it takes the `caches` role; the default computes every part.
        """
        return lambda block, part, compute: compute()

    def draft(self, step: Step) -> list[int] | None:
        """Propose action tokens to verify in one pass instead of decoding them one by one."""
        return None

    def after_step(self, step: Step, chunk: ActionChunk) -> None:
        """See the step's chunk (inferred or reused): update memories and counters."""
