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
Replay a trained model's decisions on other weights: what an accelerator saves at 7B shapes.

Random weights cannot show what reuse, accepted drafts or a calibrated layer plan save: their
gates never see a stable action, their drafts are wrong, they have no calibration. So
`flashvla-bench --decisions FILE` records what every step of a trained model ran (its
`StepRecord`: reused or not, the layer plan, the tokens entering each layer, the token scoring,
the decode calls, the DiT parts computed, the MLP shares), and `Replay` runs those steps again on
a model of other shapes, as `flops.project` counts them: the same share of visual tokens at the
same layer index, the layers skipped at the same relative depth, the same draft guesses taken
as confirmed, the same steps reused, the same DiT parts cached, the same scoring work. A
replayed step runs the decisions of that projection (test_replay.py checks it record by
record), so its time is the time of those decisions on those shapes. Which tokens it keeps is
not replayed (evenly spaced ones): on random weights only their number matters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..accel.efficientvla import EfficientVLAOptions, diverse_selection, task_relevance
from ..accel.flashvla import information_contribution
from ..policy.decode import Draft
from ..policy.flops import StepRecord, project
from ..policy.step import ActionChunk, Hooks, Step

SELECTION_PROBES = {'diverse': 'attention_weights'}  # else FlashVLA's SVDs: the output
DIVERSE = EfficientVLAOptions()  # the diverse selection's own defaults (its work, not choice)


def read_decisions(path: str | Path) -> dict[str, Any]:
    """Read a decision recording: {"model", "episodes", "configs": {name: [records]}}."""
    raw = json.loads(Path(path).read_text())
    raw['configs'] = {name: [StepRecord.from_dict(r) for r in records]
                      for name, records in raw['configs'].items()}
    return raw


def evenly(present: int, keep: int, device: torch.device) -> torch.Tensor:
    """Return `keep` of `present` token indices, evenly spaced, ascending."""
    return torch.arange(keep, device=device) * present // keep


class Replay(Hooks):
    """Force a recorded sequence of steps' decisions onto this policy's shapes, step by step."""

    name = 'replay'
    gates = True
    drafts = True

    def __init__(self, records: list[StepRecord]) -> None:
        if not records:
            raise ValueError('no recorded steps to replay')
        self.source = records

    def bind(self, policy: Any) -> None:
        self.records = [project(r, policy.cfg) for r in self.source]
        self.n = policy.action_dim
        self.head = policy.cfg.action_model
        full = next((r for r in self.records if not r.stopped), self.records[0])
        self._plan = list(full.plan)
        self._width = policy.cfg.text.intermediate_size
        self._mlp = dict(full.mlp_kept)
        # The scoring work of each selection, at the layer after which the tokens drop: the
        # layer that n scored tokens entered, and fewer left (composed selections: several).
        prompt, ran = full.layout.prompt, full.layer_tokens
        pairs = list(zip(self._plan, self._plan[1:], strict=False))
        self._keep_after = {a: ran[b] - prompt for a, b in pairs if a in ran and b in ran}
        self._next = 0  # the record the next step replays: a new instruction does not rewind
        self._last: ActionChunk | None = None
        self._now: StepRecord | None = None
        self._features: dict[tuple[int, str], torch.Tensor] = {}
        self._scoring: dict[int, list[tuple[str, int, int]]] = {}
        for entry in full.scoring:
            layer = next((a for a, b in pairs
                          if ran.get(a, 0) - prompt >= entry[1] > ran.get(b, 0) - prompt),
                         None)
            if layer is not None:
                self._scoring.setdefault(layer, []).append(entry)

    def rewind(self) -> None:
        """Replay from the first recorded step again (after a warm-up)."""
        self._next = 0

    def fresh(self) -> Replay:
        """Return another robot's replay of the same steps, from the first (a warm-up's)."""
        return Replay(self.source)

    def reset(self) -> None:
        """Keep everything: the recorded decisions, not the frames' instructions, lead."""

    def plan(self, layers: list[int]) -> list[int]:
        return list(self._plan)

    def probes(self) -> dict[int, set[str]]:
        return {layer: {SELECTION_PROBES.get(method, 'attention_output') for method, _, _ in e}
                for layer, e in self._scoring.items()}

    def mlp_neurons(self) -> dict[int, torch.Tensor]:
        return {layer: torch.arange(round(share * self._width))
                for layer, share in self._mlp.items()}

    def before_step(self, step: Step) -> None:
        self._now = record = self.records[self._next % len(self.records)]
        self._next += 1
        if record.stopped and not record.vision and self._last is not None:
            step.reuse = self._last  # a memory-only gate: nothing runs

    def after_layer(self, step: Step, layer: int, hidden: torch.Tensor,
                    probes: dict[str, torch.Tensor]) -> torch.Tensor | None:
        record = self._now
        assert record is not None
        present = step.visual_kept.numel()
        if record.stopped and record.layer_tokens and layer == max(record.layer_tokens):
            if record.scoring:  # it scored the new frame's tokens, then chose to reuse
                self._score(step, layer, hidden, probes, self._keep_after.get(layer, present))
            if self._last is not None:  # a gate that looked at the new frame: reuse
                step.reuse = self._last
            return None
        later = [j for j in self._plan if j > layer]
        if not later or later[0] not in record.layer_tokens:
            return None
        keep = record.layer_tokens[later[0]] - record.layout.prompt
        if keep >= present:
            return None
        self._score(step, layer, hidden, probes, keep)
        return evenly(present, keep, hidden.device)

    def _score(self, step: Step, layer: int, hidden: torch.Tensor,
               probes: dict[str, torch.Tensor], keep: int) -> None:
        """
        Spend the recorded scoring work on this step's tokens (its choice is not used).

        Each selection scores as many tokens as it did (the first ones present), into its
        recorded budget (the next selection's count, or what enters the next layer).
        """
        present = step.visual_kept.numel()
        visual, text = step.layout.visual_present(present), step.layout.text_present(present)
        entries = self._scoring.get(layer, [])
        for i, (method, n, rank) in enumerate(entries):
            budget = entries[i + 1][1] if i + 1 < len(entries) else keep
            if method == 'diverse':  # its third value: the text tokens it read
                relevance = task_relevance(probes['attention_weights'], visual, text)[:n]
                diverse_selection(relevance, hidden[0, visual][:n], budget,
                                  DIVERSE.key_tokens, DIVERSE.relevance_share)
                rank = hidden.shape[1] - present
            else:
                information_contribution(probes['attention_output'][0, visual][:n], rank=rank,
                                         method=method)
            step.record.scoring.append((method, n, rank))

    def draft(self, step: Step) -> Draft | None:
        calls = self._now.decode_calls if self._now is not None else []
        if not calls or calls[0][0] == 1:
            return None
        accepted = calls[1][1] - 1 if len(calls) > 1 else self.n - 2
        guess = list(self._last.token_ids) if self._last is not None else []
        return Draft(guess if len(guess) == self.n else [0] * self.n, accepted)

    def block_cache(self, step: Step, denoising_step: int):
        record, head = self._now, self.head
        assert record is not None and head is not None
        rows = 2 if head.cfg_scale > 1 else 1
        steps, k = head.ddim_steps, denoising_step
        if k == 0:
            self._features = {}

        def fresh(part: str) -> bool:  # the recorded count of computed steps, evenly spread
            computed = record.dit_parts.get(part, 0) // max(1, rows * record.dit_depth)
            return k == 0 or (k * computed) // steps != ((k - 1) * computed) // steps

        def cache(block: int, part: str, compute):
            if fresh(part) or (block, part) not in self._features:
                self._features[(block, part)] = compute()
            return self._features[(block, part)]
        return cache

    def after_step(self, step: Step, chunk: ActionChunk) -> None:
        if not chunk.info.reused:
            self._last = chunk
