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
The OpenVLA model (vision -> projector -> Llama) and the policy that turns frames into actions.

    policy = load_policy('path/to/openvla-7b', device='cuda', dtype='bfloat16',
                         unnorm_key='bridge_orig')
    action = policy.predict(rgb, 'pick up the red block')   # action.values: 7 floats
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
import threading
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .actions import ActionCodec, NormStats
from .config import OpenVLAConfig
from .errors import CheckpointError, InputError, NonFiniteOutputError
from .instruction import check_instruction
from .llama import Llama
from .preprocess import check_rgb, preprocess
from .tokenizer import SPACE
from .vision import FusedProjector, FusedVisionBackbone

PROMPT = 'In: What action should the robot take to {}?\nOut:'


class OpenVLA(nn.Module):
    """Module tree and parameter names of the Hugging Face OpenVLA checkpoint."""

    def __init__(self, cfg: OpenVLAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_backbone = FusedVisionBackbone(cfg)
        self.projector = FusedProjector(cfg.vision_dim, cfg.text.hidden_size)
        self.language_model = Llama(cfg.text)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 6, S, S] -> projected patch embeddings [B, N, llm_dim]."""
        return self.projector(self.vision_backbone(pixels))


@dataclass
class Action:
    """One policy step: un-normalised action, its tokens, timings, and per-step extras."""

    values: np.ndarray  # [action_dim] float64, in the dataset's units (un-normalised)
    normalized: np.ndarray  # [action_dim] in [-1, 1], as decoded from the bins
    token_ids: list[int]
    timings_ms: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


class Stopwatch:
    """Stage timings of one prediction; marks synchronise CUDA so each stage owns its time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self.last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self.last) * 1e3
        self.last = now

    def timings(self) -> dict[str, float]:
        """Every stage (0 when skipped) and the total."""
        stages = ('preprocess', 'vision', 'prefill', 'decode', 'head')
        return {**{s: self.ms.get(s, 0.0) for s in stages},
                'total': (self.last - self.start) * 1e3}


class OpenVLAPolicy:
    """Greedy OpenVLA inference on one frame at a time, with a preallocated KV cache."""

    def __init__(
        self,
        model: OpenVLA,
        tokenizer: Any,
        unnorm_key: str | None = None,
        center_crop: bool = False,
        max_prompt_tokens: int = 128,
    ) -> None:
        self.model = model.eval()
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.unnorm_key, self.stats = NormStats.select(self.cfg.norm_stats, unnorm_key)
        self.action_dim = self.stats.action_dim
        self.codec = ActionCodec(vocab_size=tokenizer.vocab_size, n_bins=self.cfg.n_action_bins)
        self.crop_area = 0.9 if center_crop else None
        self.max_prompt_tokens = max_prompt_tokens
        self.space_id = tokenizer.convert_tokens_to_ids(SPACE)
        if self.codec.vocab_size > self.cfg.text.vocab_size:
            raise CheckpointError(
                f'tokenizer has {self.codec.vocab_size} tokens but the model embeds only '
                f'{self.cfg.text.vocab_size}'
            )
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        max_len = 1 + self.cfg.num_patches + max_prompt_tokens + self.action_dim
        if max_len > self.cfg.text.max_position_embeddings:
            raise CheckpointError(
                f'{max_len} positions needed, model allows {self.cfg.text.max_position_embeddings}'
            )
        model.language_model.setup_cache(max_len)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._check_lock = threading.Lock()
        self._check_tokenizer: Any = None  # made on first use

    def prompt_ids(self, instruction: str) -> torch.Tensor:
        """Token ids of OpenVLA's prompt, BOS first, ending in the empty '▁' token."""
        if instruction in self._prompt_cache:
            return self._prompt_cache[instruction]
        ids = self._prompt_tokens(self.tokenizer, check_instruction(instruction))
        tensor = torch.tensor(ids, dtype=torch.long, device=self.device)
        if len(self._prompt_cache) > 64:
            self._prompt_cache.clear()
        self._prompt_cache[instruction] = tensor
        return tensor

    def check_instruction(self, instruction: str) -> str:
        """
        Return the instruction as the policy will follow it (stripped), or raise InputError.

        Thread-safe, for input callbacks: it tokenizes with a private copy of the tokenizer,
        so it never touches the one the inference worker is using.
        """
        text = check_instruction(instruction)
        with self._check_lock:
            if self._check_tokenizer is None:
                self._check_tokenizer = copy.deepcopy(self.tokenizer)
            self._prompt_tokens(self._check_tokenizer, text)
        return text

    def _prompt_tokens(self, tokenizer: Any, text: str) -> list[int]:
        """Tokenize the prompt of an instruction that passed the text rule; check its length."""
        ids = list(tokenizer(PROMPT.format(text.lower()))['input_ids'])
        if ids[-1] != self.space_id:
            ids.append(self.space_id)
        if len(ids) > self.max_prompt_tokens:
            raise InputError(
                f'instruction makes a {len(ids)}-token prompt; '
                f'the limit is {self.max_prompt_tokens}'
            )
        return ids

    def prepare(self, rgb: np.ndarray, instruction: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Check the inputs; return prompt ids [P] and model pixels [1, 6, S, S]."""
        check_rgb(rgb)
        ids = self.prompt_ids(instruction)
        pixels = preprocess(rgb, self.cfg.image_size, self.crop_area)
        return ids, pixels.to(self.device, self.dtype)

    def sequence(self, ids: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Embed the prefill in OpenVLA's order: BOS, the visual tokens, the rest of the prompt."""
        text = self.model.language_model.embed(ids[None])
        return torch.cat([text[:, :1], patches, text[:, 1:]], dim=1)

    def embed_inputs(self, rgb: np.ndarray, instruction: str,
                     clock: Stopwatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocess, encode the image, embed the prefill (timed); empty the KV caches."""
        ids, pixels = self.prepare(rgb, instruction)
        clock.mark('preprocess')
        patches = self.model.encode_image(pixels)
        clock.mark('vision')
        self.model.language_model.reset_cache()
        return ids, self.sequence(ids, patches)

    def decode(self, first_token: int, next_position: int,
               draft: list[int] | None = None) -> tuple[list[int], list[tuple[int, int]]]:
        """
        Greedy-decode the remaining action tokens after the prefill filled the KV cache.

        With a `draft` (a guess of all the action tokens, e.g. the previous action's) the
        guesses are verified in one forward pass, speculative-decoding style: every token is
        still the model's own greedy choice, a wrong guess only costs the tokens after it,
        which are decoded one by one as without a draft. Returns the tokens and the forward
        calls made, as (tokens fed, decoded tokens already in the cache), for FLOPs counting.
        """
        llm = self.model.language_model
        n = self.action_dim
        tokens, calls = [first_token], []
        if draft is not None and len(draft) == n and n > 1:
            fed = [first_token, *draft[1:n - 1]]
            ids = torch.tensor([fed], device=self.device)
            positions = torch.arange(next_position, next_position + len(fed), device=self.device)
            predicted = self.greedy_all(llm(llm.embed(ids), positions, last_only=False))
            calls.append((len(fed), 0))
            for i, token in enumerate(predicted, start=1):
                tokens.append(token)  # right: every input before it was right
                if i == n - 1 or token != draft[i]:
                    break
            llm.truncate_cache(len(fed) - (len(tokens) - 1))  # entries after a wrong guess
        while len(tokens) < n:
            position = next_position + len(tokens) - 1
            step = llm.embed(torch.tensor([[tokens[-1]]], device=self.device))
            calls.append((1, len(tokens) - 1))
            tokens.append(self.greedy(llm(step, torch.tensor([position], device=self.device))))
        return tokens, calls

    def finish(self, tokens: list[int], clock: Stopwatch, info: dict[str, Any]) -> Action:
        """Bins -> un-normalised action, checked for NaN/inf, with timings and info."""
        normalized = self.codec.decode(np.array(tokens))
        values = self.stats.unnormalize(normalized)
        if not np.isfinite(values).all():
            raise NonFiniteOutputError(f'non-finite action {values.tolist()}')
        clock.mark('head')
        info['non_action_tokens'] = int((~self.codec.is_action_token(np.array(tokens))).sum())
        return Action(values=values, normalized=normalized, token_ids=tokens,
                      timings_ms=clock.timings(), info=info)

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray, instruction: str) -> Action:
        clock = Stopwatch(self.device)
        ids, seq = self.embed_inputs(rgb, instruction, clock)
        llm = self.model.language_model
        first = self.greedy(llm(seq, torch.arange(seq.shape[1], device=self.device)))
        clock.mark('prefill')
        tokens, _ = self.decode(first, seq.shape[1])
        clock.mark('decode')
        return self.finish(tokens, clock, {'prompt_tokens': int(ids.numel()),
                                           'visual_tokens': self.cfg.num_patches})

    def reset(self) -> None:
        """Forget nothing: the plain policy keeps no memory between frames."""

    @staticmethod
    def greedy(logits: torch.Tensor) -> int:
        if not torch.isfinite(logits).all():
            raise NonFiniteOutputError('the language model produced NaN/inf logits')
        return int(logits[0].argmax())

    @staticmethod
    def greedy_all(logits: torch.Tensor) -> list[int]:
        """Greedy tokens at every position of [1, T, vocab] logits."""
        if not torch.isfinite(logits).all():
            raise NonFiniteOutputError('the language model produced NaN/inf logits')
        return logits[0].argmax(dim=-1).tolist()


def load_policy(
    path: str,
    device: str = 'cpu',
    dtype: str = 'float32',
    unnorm_key: str | None = None,
    center_crop: bool = False,
) -> OpenVLAPolicy:
    """Load a local OpenVLA checkpoint directory and its tokenizer into a ready policy."""
    from .checkpoint import load_model
    from .tokenizer import load_tokenizer

    model, _report = load_model(path, device=device, dtype=dtype)
    tokenizer = load_tokenizer(path)
    return OpenVLAPolicy(model, tokenizer, unnorm_key=unnorm_key, center_crop=center_crop)
