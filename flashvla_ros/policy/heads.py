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
The action heads behind one interface: what turns the prefill's last hidden states into actions.

- `TokenHead` (OpenVLA): greedy-decodes `action_dim` action tokens (decode.py) and maps their
  bins back to actions; one action per step.
- `DiffusionHead` (CogACT): DDIM with a DiT conditioned on the cognition token (the EOS after
  the prompt), a chunk of actions per step, the gripper binarised (`actions.binarize_gripper`).

Both take a batch (one robot per row, one row alone for the single-robot node) and return a
`HeadOutput` per row in the dataset's units, or that row's NaN/inf error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from .actions import GRIPPER, ActionCodec, NormStats, binarize_gripper
from .composition import Composition
from .decode import DecodeOne, Draft, decode_one, decode_rows, verify_draft
from .dit import ddim_sample, frame_seed
from .errors import NonFiniteOutputError
from .step import Step


@dataclass
class HeadOutput:
    actions: np.ndarray  # [H, action_dim] float64, un-normalised
    normalized: np.ndarray  # [H, action_dim] in [-1, 1]
    token_ids: list[int]
    non_action_tokens: int = 0


class Clock(Protocol):
    def mark(self, stage: str) -> None: ...


class ActionHead(Protocol):
    decoded_tokens: int  # tokens generated after the prefill (the layout's `actions`)

    def prompt_suffix(self, tokenizer: Any) -> list[int]:
        """Return the token ids the prompt ends with for this head (after OpenVLA's '▁')."""

    def bind(self, composition: Composition, compile: bool) -> None:
        """Take the hooks' layer plan (and compile what runs per token, if asked)."""

    def run(self, steps: list[Step], hidden: torch.Tensor, compositions: list[Composition],
            clock: Clock) -> list[HeadOutput | NonFiniteOutputError]:
        """
        Turn the last layer's hidden states [B, T, D] into actions: one robot per row.

        A row's NaN/inf is that row's error; the other rows' actions stand.
        """


class TokenHead:
    """OpenVLA's head: `action_dim` greedy tokens after the prefill, each one bin of an action."""

    def __init__(self, model: Any, codec: ActionCodec, stats: NormStats) -> None:
        self.llm = model.language_model
        self.codec, self.stats = codec, stats
        self.decoded_tokens = stats.action_dim
        self.step: DecodeOne | None = None
        self.verify: DecodeOne | None = None

    def prompt_suffix(self, tokenizer: Any) -> list[int]:
        return []

    def bind(self, composition: Composition, compile: bool) -> None:
        self.step = partial(decode_one, self.llm, composition.plan)
        self.verify = partial(verify_draft, self.llm, composition.plan)
        if compile:  # each pass has one shape: a CUDA graph each on CUDA
            device = self.llm.lm_head.weight.device
            mode = 'reduce-overhead' if device.type == 'cuda' else None
            self.step = torch.compile(self.step, mode=mode, fullgraph=True)
            self.verify = torch.compile(self.verify, mode=mode, fullgraph=True)

    def run(self, steps: list[Step], hidden: torch.Tensor, compositions: list[Composition],
            clock: Clock) -> list[HeadOutput | NonFiniteOutputError]:
        first = self.llm.logits(hidden)
        for step in steps:
            step.record.head_positions += 1
        clock.mark('prefill')
        drafts = [c.draft(s) for c, s in zip(compositions, steps, strict=True)]
        forced = None
        if len(drafts) == 1 and isinstance(drafts[0], Draft):  # a replayed decision
            forced, drafts = drafts[0].accept, [drafts[0].tokens]
        starts = {step.layout.prefill for step in steps}  # padded rows: one start each
        start = starts.pop() if len(starts) == 1 else torch.tensor(
            [[step.layout.prefill] for step in steps], device=first.device)
        rows, finite = decode_rows(self.llm, compositions[0].plan, first, start,
                                   self.decoded_tokens,
                                   drafts if all(d is not None for d in drafts) else None,
                                   [s.record for s in steps], self.step, self.verify, forced)
        clock.mark('decode')
        return [self._actions(tokens) if ok else
                NonFiniteOutputError('the language model produced NaN/inf logits')
                for tokens, ok in zip(rows, finite, strict=True)]

    def _actions(self, tokens: list[int]) -> HeadOutput | NonFiniteOutputError:
        normalized = self.codec.decode(np.array(tokens))
        values = self.stats.unnormalize(normalized)
        if not np.isfinite(values).all():
            return NonFiniteOutputError(f'non-finite action {values.tolist()}')
        non_action = int((~self.codec.is_action_token(np.array(tokens))).sum())
        return HeadOutput(values[None], normalized[None], tokens, non_action)


class DiffusionHead:
    """
    CogACT's head: DDIM conditioned on the cognition token's final hidden state.

    Seeded noise makes a step reproducible (`frame_seed`: the frame's hash plus `noise_seed`);
    the chunk is clipped to [-1, 1], the gripper (last dimension) binarised, then
    un-normalised. The DiT runs in its own parameters' dtype (fp32 as loaded: CogACT deploys
    its head in fp32 beside a bf16 VLM).
    """

    decoded_tokens = 0

    def __init__(self, model: Any, stats: NormStats) -> None:
        self.model = model
        self.cfg = model.cfg.action_model
        self.stats = stats
        self.noise_seed = 0

    def prompt_suffix(self, tokenizer: Any) -> list[int]:
        return [tokenizer.eos_token_id]  # the cognition token

    def bind(self, composition: Composition, compile: bool) -> None:
        pass

    def run(self, steps: list[Step], hidden: torch.Tensor, compositions: list[Composition],
            clock: Clock) -> list[HeadOutput | NonFiniteOutputError]:
        """
        Sample every row's chunk in one DDIM run, each from its own frame's noise.

        The DiT feature cache is the first row's hook: its schedule depends on the denoising
        step alone, the same for every robot of one server.
        """
        cfg, net = self.cfg, self.model.action_model.net
        clock.mark('prefill')
        cognition = self.model.language_model.model.norm(hidden[:, -1:])  # [B, 1, D]
        w = net.x_embedder.linear.weight
        noise = torch.cat([
            torch.randn((1, cfg.chunk, cfg.action_dim), device=w.device,
                        generator=torch.Generator(device=w.device).manual_seed(
                            frame_seed(step.observation.rgb, self.noise_seed)))
            for step in steps]).to(w.dtype)
        rows = 2 if cfg.cfg_scale > 1 else 1
        records = [step.record for step in steps]

        def counted(k: int):
            inner = compositions[0].block_cache(steps[0], k)

            def cache(block: int, part: str, compute):
                def run() -> torch.Tensor:
                    for record in records:
                        record.dit_parts[part] = record.dit_parts.get(part, 0) + rows
                    return compute()
                return inner(block, part, run)
            return cache

        x = ddim_sample(net, cognition.to(w.dtype), noise, counted)
        for record in records:
            record.dit_passes = cfg.ddim_steps * rows
            record.dit_depth = cfg.depth
        return [self._actions(chunk) for chunk in x.float().cpu()]

    def _actions(self, chunk: torch.Tensor) -> HeadOutput | NonFiniteOutputError:
        normalized = chunk.numpy().astype(np.float64)
        # Before clamping and binarising, which would turn a NaN/inf into a valid-looking value
        # (a NaN gripper into 0, open).
        if not np.isfinite(normalized).all():
            return NonFiniteOutputError('the action head produced NaN/inf actions')
        normalized = normalized.clip(-1.0, 1.0)
        normalized[:, GRIPPER] = binarize_gripper(normalized[:, GRIPPER])
        return HeadOutput(self.stats.unnormalize(normalized), normalized, [])  # stats: finite
