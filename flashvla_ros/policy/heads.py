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
  the prompt), a chunk of actions per step, the gripper binarised at 0.5.

Both return a `HeadOutput` in the dataset's units, checked for NaN/inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch

from .actions import GRIPPER, ActionCodec, NormStats
from .composition import Composition
from .decode import DecodeOne, decode_action, decode_one, verify_draft
from .dit import ddim_sample, frame_seed
from .errors import NonFiniteOutputError
from .step import Step

GRIPPER_THRESHOLD = 0.5  # CogACT binarises the predicted gripper here


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

    def run(self, step: Step, hidden: torch.Tensor, composition: Composition,
            clock: Clock) -> HeadOutput:
        """Turn the last layer's hidden states [1, T, D] into actions."""


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

    def run(self, step: Step, hidden: torch.Tensor, composition: Composition,
            clock: Clock) -> HeadOutput:
        record = step.record
        first = self.llm.logits(hidden)
        record.head_positions += 1
        clock.mark('prefill')
        tokens = decode_action(self.llm, composition.plan, first, step.layout.prefill,
                               self.decoded_tokens, composition.draft(step), record, self.step,
                               self.verify)
        clock.mark('decode')
        normalized = self.codec.decode(np.array(tokens))
        values = self.stats.unnormalize(normalized)
        if not np.isfinite(values).all():
            raise NonFiniteOutputError(f'non-finite action {values.tolist()}')
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

    def run(self, step: Step, hidden: torch.Tensor, composition: Composition,
            clock: Clock) -> HeadOutput:
        cfg, net = self.cfg, self.model.action_model.net
        clock.mark('prefill')
        cognition = self.model.language_model.model.norm(hidden[:, -1:])  # [1, 1, D]
        w = net.x_embedder.linear.weight
        generator = torch.Generator(device=w.device).manual_seed(
            frame_seed(step.observation.rgb, self.noise_seed))
        noise = torch.randn((1, cfg.chunk, cfg.action_dim), generator=generator,
                            device=w.device).to(w.dtype)
        rows = 2 if cfg.cfg_scale > 1 else 1
        record = step.record

        def counted(k: int):
            inner = composition.block_cache(step, k)

            def cache(block: int, part: str, compute):
                def run() -> torch.Tensor:
                    record.dit_parts[part] = record.dit_parts.get(part, 0) + rows
                    return compute()
                return inner(block, part, run)
            return cache

        x = ddim_sample(net, cognition.to(w.dtype), noise, counted)
        record.dit_passes = cfg.ddim_steps * rows
        record.dit_depth = cfg.depth
        normalized = x[0].float().clamp(-1.0, 1.0).cpu().numpy().astype(np.float64)
        normalized[:, GRIPPER] = np.where(normalized[:, GRIPPER] >= GRIPPER_THRESHOLD, 1.0, 0.0)
        values = self.stats.unnormalize(normalized)
        if not np.isfinite(values).all() or not np.isfinite(normalized).all():
            raise NonFiniteOutputError('the action head produced NaN/inf actions')
        return HeadOutput(values, normalized, [])
