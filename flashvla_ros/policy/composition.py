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
The hooks of one step, composed: every check of a combination, and the one hook sequence.

    composition = Composition(hooks, policy.cfg, policy)   # ValueError: why they conflict
    composition.plan, composition.probes    # what the layer loop runs and exposes

Hooks run in their declared order at every hook point. After a layer, a hook that keeps a
subset of the visual tokens narrows the hidden states and that layer's probes together, so the
next hook scores only the tokens still present (selections compose: FlashVLA after EfficientVLA
ranks EfficientVLA's survivors). A token budget counts the model's visual tokens, so a later
selection keeps at most its budget of the survivors, all of them when they are fewer: fractions
never multiply (`accel/base.py: token_budget`). Each selection's count is in the step's info
(`extras['<name>_kept_tokens']`). A step has at most one reuse gate, one decode draft and one
DiT feature cache; a layer may expose several probes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .config import OpenVLAConfig
from .dit import BlockCache, compute_all
from .llama import PROBES, STOP, Stop, narrow_probes
from .step import ActionChunk, Hooks, Step

# A role at most one hook of a step may take: the class attribute, and what it brings.
ROLES = {'gates': 'a reuse gate', 'drafts': 'a decode draft', 'caches': 'a DiT feature cache'}


def check_roles(hooks: Sequence[Any]) -> None:
    """Refuse two hooks (classes or instances) that take one role; ValueError says which."""
    names = [h.name for h in hooks]
    for role, what in ROLES.items():
        takers = [h.name for h in hooks if getattr(h, role)]
        if len(takers) > 1:
            raise ValueError(f'{names}: {takers} each bring {what}; a step has one, so keep '
                             'one of them')


class Composition:
    """Hooks bound to one model, checked together: layer plan, probes, MLP neurons, roles."""

    def __init__(self, hooks: Sequence[Hooks], cfg: OpenVLAConfig, policy: Any) -> None:
        self.hooks = list(hooks)
        check_roles(self.hooks)
        for h in self.hooks:
            h.bind(policy)
        depth = cfg.text.num_hidden_layers
        plan = list(range(depth))
        for h in self.hooks:
            plan = h.plan(plan)
        for h in self.hooks:
            missing = sorted(h.needs_layers() - set(plan))
            if missing:
                raise ValueError(f'{h.name} reads decoder layer(s) {missing}, which the layer '
                                 f'plan {plan} skips; change the order or the options')
        probes: dict[int, set[str]] = {}
        for h in self.hooks:
            for layer, kinds in h.probes().items():
                if isinstance(kinds, str):
                    raise TypeError(f'{h.name}.probes() names {kinds!r} at layer {layer}: '
                                    'give a set of probe kinds')
                unknown = sorted(set(kinds) - set(PROBES))
                if unknown:
                    raise ValueError(f'{h.name} asks decoder layer {layer} for unknown probe(s) '
                                     f'{unknown}; a layer exposes {list(PROBES)}')
                probes.setdefault(layer, set()).update(kinds)
        neurons: dict[int, tuple[torch.Tensor, str]] = {}  # layer -> (kept neurons, who)
        for h in self.hooks:
            for layer, kept in h.mlp_neurons().items():
                if layer in neurons:
                    raise ValueError(f'{neurons[layer][1]} and {h.name} both thin the MLP of '
                                     f'decoder layer {layer}; keep one')
                neurons[layer] = (kept, h.name)
        self.plan: tuple[int, ...] = tuple(plan)
        self.probes = {layer: frozenset(kinds) for layer, kinds in probes.items()}
        self.neurons = {layer: kept for layer, (kept, _) in neurons.items()}
        width = cfg.text.intermediate_size
        self.mlp_kept = {layer: kept.numel() / width for layer, kept in self.neurons.items()}
        self._cache = next((h for h in self.hooks if h.caches), None)
        self._selectors: set[str] = set()  # hooks that selected tokens: their counts go in info

    # -- the hook points, in order ---------------------------------------------------------

    def reset(self) -> None:
        """Empty every hook's memory (a new episode or instruction)."""
        for h in self.hooks:
            h.reset()

    def before_step(self, step: Step) -> None:
        """Run the gates that decide from memory; one may set `step.reuse`."""
        for h in self.hooks:
            h.before_step(step)
            if step.reuse is not None:
                return

    def after_layer(self, step: Step, layer: int, hidden: torch.Tensor,
                    probes: dict[str, torch.Tensor]) -> torch.Tensor | Stop | None:
        """
        Let every hook see `layer`'s output; return the tokens to keep (an index), STOP or None.

        A hook that keeps a subset narrows `hidden` and `probes` before the next hook sees them.
        """
        index = None
        for i, h in enumerate(self.hooks):
            keep = h.after_layer(step, layer, hidden, probes)
            if keep is not None:
                present = step.visual_kept.numel()
                local = step.layout.keep_visual(present, keep, hidden.shape[1])
                hidden = hidden[:, local]
                if i + 1 < len(self.hooks):  # only a later hook reads them
                    probes = narrow_probes(probes, local)
                index = local if index is None else index[local]
                step.visual_kept = step.visual_kept[keep]
                step.extras[f'{h.name}_kept_tokens'] = keep.numel()  # a shape: no device read
                self._selectors.add(h.name)
            if step.reuse is not None:
                return STOP
        return index

    def draft(self, step: Step) -> list[int] | None:
        """Return the first draft a hook proposes (at most one hook drafts), or None."""
        return next((d for h in self.hooks if (d := h.draft(step)) is not None), None)

    def block_cache(self, step: Step, denoising_step: int) -> BlockCache:
        """Return one denoising step's DiT block-cache hook: the caching hook's, or compute all."""
        if self._cache is None:
            return compute_all
        return self._cache.block_cache(step, denoising_step)

    def after_step(self, step: Step, chunk: ActionChunk) -> None:
        """Show every hook the step's chunk, inferred or reused."""
        for name in self._selectors:  # a step that selected nothing (reused) kept 0
            chunk.info.extras.setdefault(f'{name}_kept_tokens', 0)
        for h in self.hooks:
            h.after_step(step, chunk)
