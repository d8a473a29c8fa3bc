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
The OpenVLA model (vision -> projector -> Llama) and the policy: one forward with hook points.

    policy = load_policy('path/to/openvla-7b', device='cuda', dtype='bfloat16',
                         unnorm_key='bridge_orig')
    chunk = policy.predict(Observation(rgb, 'pick up the red block'))  # chunk.values: 7 floats

Accelerators (`accel/`) plug into `predict` through `Hooks` (see `step.py`); the policy runs
every layer, and counts what ran in the step's `StepRecord`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
import threading
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .actions import ActionCodec, NormStats
from .config import OpenVLAConfig
from .dit import ActionModel, compute_all, ddim_sample, frame_seed
from .errors import CheckpointError, InputError, NonFiniteOutputError
from .flops import StepRecord, count_flops, full_flops
from .instruction import check_instruction
from .layout import SequenceLayout
from .llama import STOP, Llama
from .preprocess import check_rgb, preprocess
from .step import ActionChunk, Hooks, Observation, Step, StepInfo
from .tokenizer import SPACE
from .vision import FusedProjector, FusedVisionBackbone

PROMPT = 'In: What action should the robot take to {}?\nOut:'
WARMUP_INSTRUCTION = 'pick up the block'


def set_cpu_threads(requested: int = 0) -> int:
    """
    Set torch's CPU threads (intra-op, process-wide) and return how many it uses.

    0: torch's default (its physical cores) less one, at least 1 and at most the CPUs less one:
    the node's camera callbacks and control tick need a core, and an inference whose threads
    wait for a busy core is slower and its latency less predictable (docs/latency/README.md).
    """
    if requested < 0:
        raise ValueError(f'cpu_threads must be >= 0, not {requested}')
    threads = requested or max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - 1))
    torch.set_num_threads(threads)
    return threads


class OpenVLA(nn.Module):
    """Module tree and parameter names of the Hugging Face OpenVLA checkpoint."""

    def __init__(self, cfg: OpenVLAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision_backbone = FusedVisionBackbone(cfg)
        self.projector = FusedProjector(cfg.vision_dim, cfg.text.hidden_size)
        self.language_model = Llama(cfg.text)
        if cfg.action_model is not None:  # CogACT-style: a diffusion head instead of tokens
            self.action_model = ActionModel(cfg.action_model)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 6, S, S] -> projected patch embeddings [B, N, llm_dim]."""
        return self.projector(self.vision_backbone(pixels))


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
    """
    Greedy OpenVLA inference on one frame at a time: the one forward, with hook points.

    `static_cache` uses position-slot KV caches and keeps the greedy tokens on the device
    until the action is complete; `compile` also compiles the one-token decode step
    (torch.compile; CUDA graphs on CUDA). Both give the same tokens as the reference path.
    """

    def __init__(
        self,
        model: OpenVLA,
        tokenizer: Any,
        unnorm_key: str | None = None,
        center_crop: bool = False,
        max_prompt_tokens: int = 128,
        hooks: list[Hooks] | None = None,
        static_cache: bool = False,
        compile: bool = False,
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
        self.head = self.cfg.action_model  # None: OpenVLA's action tokens
        if self.head is not None and self.head.action_dim != self.action_dim:
            raise CheckpointError(f'the action head predicts {self.head.action_dim}-D actions '
                                  f'but the statistics have {self.action_dim} dimensions')
        self.noise_seed = 0  # diffusion: mixed with the frame's hash into each step's noise seed
        self.checkpoint_dir: Path | None = None  # set by load_policy: where the weights live
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        max_len = 1 + self.cfg.num_patches + max_prompt_tokens + self.action_dim
        if max_len > self.cfg.text.max_position_embeddings:
            raise CheckpointError(
                f'{max_len} positions needed, model allows {self.cfg.text.max_position_embeddings}'
            )
        self.static_cache = static_cache or compile
        model.language_model.setup_cache(max_len, static=self.static_cache)
        self._decode_one = self._decode_step
        if compile:
            mode = 'reduce-overhead' if self.device.type == 'cuda' else None
            self._decode_one = torch.compile(self._decode_step, mode=mode, fullgraph=True)
        self.hooks: list[Hooks] = []
        self.plan: list[int] = []
        self.set_hooks(hooks or [])
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._check_lock = threading.Lock()
        self._check_tokenizer: Any = None  # made on first use
        self._instruction: str | None = None
        self._full_flops: dict[int, int] = {}  # prompt length -> the plain model's step FLOPs

    # -- hooks -----------------------------------------------------------------------------

    def set_hooks(self, hooks: list[Hooks]) -> None:
        """Plug accelerators in, in order; raise ValueError when they cannot run together."""
        depth = self.cfg.text.num_hidden_layers
        for h in hooks:
            h.bind(self)
        for role in ('gates', 'drafts'):
            takers = [h.name for h in hooks if getattr(h, role)]
            if len(takers) > 1:
                raise ValueError(f'accelerators {takers} all {role[:-1]} (a step has one '
                                 f'{"reuse gate" if role == "gates" else "draft"}); keep one')
        plan = list(range(depth))
        for h in hooks:
            plan = h.plan(plan)
        for h in hooks:
            missing = sorted(h.needs_layers() - set(plan))
            if missing:
                raise ValueError(f'{h.name} reads decoder layer(s) {missing}, which the layer '
                                 f'plan {plan} skips; change the order or the options')
        probes: dict[int, tuple[str, str]] = {}  # layer -> (kind, who asked)
        for h in hooks:
            for layer, kind in h.probes().items():
                other = probes.setdefault(layer, (kind, h.name))
                if other[0] != kind:  # a layer computes one probe
                    raise ValueError(f'{other[1]} reads the {other[0]} of decoder layer '
                                     f'{layer} and {h.name} its {kind}; move one to another '
                                     'layer')
        neurons: dict[int, tuple[torch.Tensor, str]] = {}  # layer -> (kept neurons, who)
        for h in hooks:
            for layer, kept in h.mlp_neurons().items():
                if layer in neurons:
                    raise ValueError(f'{neurons[layer][1]} and {h.name} both thin the MLP of '
                                     f'decoder layer {layer}; keep one')
                neurons[layer] = (kept, h.name)
        self.model.language_model.keep_mlp_neurons(
            {layer: kept.to(self.device) for layer, (kept, _) in neurons.items()})
        width = self.cfg.text.intermediate_size
        self._mlp_kept = {layer: kept.numel() / width for layer, (kept, _) in neurons.items()}
        self.hooks, self.plan = list(hooks), plan
        self._probes = {layer: kind for layer, (kind, _) in probes.items()}
        self.steps = self.reused = 0  # running statistics of this configuration
        self.flops_done = self.flops_full = 0

    # -- instructions ----------------------------------------------------------------------

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
        if self.head is not None:  # CogACT: the EOS after it is the cognition token
            ids.append(tokenizer.eos_token_id)
        if len(ids) > self.max_prompt_tokens:
            raise InputError(
                f'instruction makes a {len(ids)}-token prompt; '
                f'the limit is {self.max_prompt_tokens}'
            )
        return ids

    def layout(self, prompt_tokens: int) -> SequenceLayout:
        actions = 0 if self.head is not None else self.action_dim  # tokens decoded
        return SequenceLayout(self.cfg.num_patches, prompt_tokens, actions)

    # -- the one forward -------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, observation: Observation) -> ActionChunk:
        """One step: gates, vision, the planned layers with their hooks, the head."""
        clock = Stopwatch(self.device)
        check_rgb(observation.rgb)  # bad input is rejected on a reused step too
        ids = self.prompt_ids(observation.instruction)
        if observation.instruction != self._instruction:
            self._instruction = observation.instruction
            self.reset()
        layout = self.layout(ids.numel())
        n = layout.visual
        record = StepRecord(layout, self.cfg.text.num_hidden_layers, tuple(self.plan),
                            mlp_kept=self._mlp_kept)
        step = Step(observation, layout, record, torch.arange(n, device=self.device))
        for h in self.hooks:
            h.before_step(step)
            if step.reuse is not None:
                record.stopped = True
                clock.mark('preprocess')
                return self._finish_reuse(step, clock)

        pixels = preprocess(observation.rgb, self.cfg.image_size, self.crop_area)
        pixels = pixels.to(self.device, self.dtype)
        clock.mark('preprocess')
        patches = self.model.encode_image(pixels)
        record.vision = True
        clock.mark('vision')
        llm = self.model.language_model
        llm.reset_cache()
        seq = layout.assemble(llm.embed(ids[None]), patches)
        step.decoder_input = seq
        out = llm.run(seq, layout.positions(self.device), self.plan, self._probes,
                      lambda layer, hidden, probe: self._after_layer(step, layer, hidden, probe),
                      record.layer_tokens)
        if out is None:  # a gate ended the step
            record.stopped = True
            clock.mark('prefill')
            return self._finish_reuse(step, clock)
        if self.head is not None:
            return self._diffuse(step, out[0], clock)
        first = llm.logits(out[0])
        record.head_positions += 1
        clock.mark('prefill')
        draft = next((d for h in self.hooks if (d := h.draft(step)) is not None), None)
        tokens = self.decode(first, layout.prefill, draft, record)
        clock.mark('decode')
        return self._finish(step, tokens, clock)

    def _after_layer(self, step: Step, layer: int, hidden: torch.Tensor,
                     probe: torch.Tensor | None) -> torch.Tensor | object | None:
        index = None
        for h in self.hooks:
            keep = h.after_layer(step, layer, hidden, probe)
            if keep is not None:
                present = step.visual_kept.numel()
                local = step.layout.keep_visual(present, keep, hidden.shape[1])
                hidden = hidden[:, local]
                index = local if index is None else index[local]
                step.visual_kept = step.visual_kept[keep]
            if step.reuse is not None:
                return STOP
        return index

    def decode(self, first: torch.Tensor, next_position: int, draft: list[int] | None,
               record: StepRecord) -> list[int]:
        """
        Greedy-decode the action tokens after the prefill filled the KV cache.

        `first` holds the prefill's last logits. With a `draft` (a guess of all the action
        tokens, e.g. the previous action's) the guesses are verified in one forward pass,
        speculative-decoding style: every token is still the model's own greedy choice, a
        wrong guess only costs the tokens after it, which are decoded one by one as without
        a draft. Each forward call is recorded as (tokens fed, decoded tokens already cached).
        """
        if self.static_cache:
            return self._decode_on_device(first, next_position, draft, record)
        llm = self.model.language_model
        n = self.action_dim
        tokens = [self.greedy(first)]
        if draft is not None and len(draft) == n and n > 1:
            fed = [tokens[0], *draft[1:n - 1]]
            ids = torch.tensor([fed], device=self.device)
            positions = torch.arange(next_position, next_position + len(fed), device=self.device)
            predicted = self.greedy_all(llm(llm.embed(ids), positions, self.plan,
                                            last_only=False))
            self._record_call(record, len(fed), 0)
            for i, token in enumerate(predicted, start=1):
                tokens.append(token)  # right: every input before it was right
                if i == n - 1 or token != draft[i]:
                    break
            llm.truncate_cache(len(fed) - (len(tokens) - 1))  # entries after a wrong guess
        while len(tokens) < n:
            position = next_position + len(tokens) - 1
            step = llm.embed(torch.tensor([[tokens[-1]]], device=self.device))
            self._record_call(record, 1, len(tokens) - 1)
            tokens.append(self.greedy(llm(step, torch.tensor([position], device=self.device),
                                          self.plan)))
        return tokens

    @staticmethod
    def _record_call(record: StepRecord, fed: int, cached: int) -> None:
        record.decode_calls.append((fed, cached))
        record.head_positions += fed

    def _decode_step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One token [1, 1] at `position` [1] -> last logits [1, vocab] (what gets compiled)."""
        llm = self.model.language_model
        return llm(llm.embed(token), position, self.plan)

    def _decode_on_device(self, first: torch.Tensor, next_position: int,
                          draft: list[int] | None, record: StepRecord) -> list[int]:
        """
        Decode with the static cache: tokens stay on the device until the action is complete.

        One host sync per action (and one more to verify a draft); a NaN/inf anywhere is
        remembered on the device and raised at the end.
        """
        llm = self.model.language_model
        n = self.action_dim
        tokens = torch.empty(n, dtype=torch.long, device=self.device)
        tokens[0] = first[0].argmax()
        finite = torch.isfinite(first).all()
        done = 1
        if draft is not None and len(draft) == n and n > 1:
            fed = torch.tensor(draft[:n - 1], device=self.device)
            fed[0] = tokens[0]
            positions = torch.arange(next_position, next_position + n - 1, device=self.device)
            logits = llm(llm.embed(fed[None]), positions, self.plan, last_only=False)
            self._record_call(record, n - 1, 0)
            finite = finite & torch.isfinite(logits).all()
            predicted = logits[0].argmax(-1)
            right = (predicted[:-1] == torch.tensor(draft[1:n - 1], device=self.device))
            accepted = int(torch.cumprod(right.long(), 0).sum())  # guesses confirmed in a row
            tokens[1:2 + accepted] = predicted[:1 + accepted]
            done = 2 + accepted
        for i in range(done, n):
            position = torch.tensor([next_position + i - 1], device=self.device)
            self._record_call(record, 1, i - 1)
            logits = self._decode_one(tokens[i - 1:i].view(1, 1), position)
            finite = finite & torch.isfinite(logits).all()
            tokens[i] = logits[0].argmax()
        if not bool(finite):
            raise NonFiniteOutputError('the language model produced NaN/inf logits')
        return tokens.tolist()

    def _diffuse(self, step: Step, hidden: torch.Tensor, clock: Stopwatch) -> ActionChunk:
        """
        Run the diffusion head: DDIM conditioned on the cognition token's final hidden state.

        Seeded noise makes a step reproducible; the chunk is clipped to [-1, 1], the gripper
        (last dimension) binarised at 0.5, then un-normalised.
        """
        cfg, net = self.head, self.model.action_model.net
        clock.mark('prefill')
        cognition = self.model.language_model.model.norm(hidden[:, -1:])  # [1, 1, D]
        w = net.x_embedder.linear.weight
        generator = torch.Generator(device=self.device).manual_seed(
            frame_seed(step.observation.rgb, self.noise_seed))
        noise = torch.randn((1, cfg.chunk, cfg.action_dim), generator=generator,
                            device=self.device).to(w.dtype)
        # Only hooks that override block_cache (a bound method is never the base function).
        caches = [h.block_cache for h in self.hooks
                  if type(h).block_cache is not Hooks.block_cache]
        rows = 2 if cfg.cfg_scale > 1 else 1
        record = step.record

        def counted(k: int):
            inner = caches[0](step, k) if caches else compute_all

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
        normalized[:, -1] = np.where(normalized[:, -1] >= 0.5, 1.0, 0.0)  # the gripper
        values = self.stats.unnormalize(normalized)
        if not np.isfinite(values).all() or not np.isfinite(normalized).all():
            raise NonFiniteOutputError('the action head produced NaN/inf actions')
        clock.mark('head')
        info = self._info(step, clock, reused=False, non_action=0)
        chunk = ActionChunk(values, normalized, [], info)
        for h in self.hooks:
            h.after_step(step, chunk)
        return chunk

    # -- results ---------------------------------------------------------------------------

    def _finish(self, step: Step, tokens: list[int], clock: Stopwatch) -> ActionChunk:
        """Bins -> un-normalised action, checked for NaN/inf, with the step's info."""
        normalized = self.codec.decode(np.array(tokens))
        values = self.stats.unnormalize(normalized)
        if not np.isfinite(values).all():
            raise NonFiniteOutputError(f'non-finite action {values.tolist()}')
        clock.mark('head')
        info = self._info(step, clock, reused=False,
                          non_action=int((~self.codec.is_action_token(np.array(tokens))).sum()))
        chunk = ActionChunk(values[None], normalized[None], tokens, info)
        for h in self.hooks:
            h.after_step(step, chunk)
        return chunk

    def _finish_reuse(self, step: Step, clock: Stopwatch) -> ActionChunk:
        """Return the chunk a gate chose to reuse, as a copy with this step's info."""
        last = step.reuse
        assert last is not None
        clock.mark('head')
        info = self._info(step, clock, reused=True, non_action=last.info.non_action_tokens)
        chunk = ActionChunk(last.actions.copy(), last.normalized.copy(), list(last.token_ids),
                            info)
        for h in self.hooks:
            h.after_step(step, chunk)
        return chunk

    def _info(self, step: Step, clock: Stopwatch, reused: bool, non_action: int) -> StepInfo:
        record, layout = step.record, step.layout
        flops = count_flops(self.cfg, record)
        if layout.prompt not in self._full_flops:
            self._full_flops[layout.prompt] = full_flops(self.cfg, layout).total
        self.steps += 1
        self.reused += reused
        self.flops_done += flops.total
        self.flops_full += self._full_flops[layout.prompt]
        kept = step.visual_kept.numel()
        ran = record.layers_run > 0
        return StepInfo(
            timings_ms=clock.timings(), record=record, flops=flops,
            prompt_tokens=layout.prompt, visual_tokens=layout.visual,
            kept_tokens=kept if ran else 0,
            kept_indices=tuple(step.visual_kept.tolist()) if ran and kept < layout.visual
            else None,
            layers_run=record.layers_run, reused=reused, non_action_tokens=non_action,
            reuse_rate=self.reused / self.steps,
            flops_saved=1.0 - self.flops_done / max(1, self.flops_full),
            extras=dict(step.extras))

    def reset(self) -> None:
        """Forget every accelerator's memory (a new episode or instruction)."""
        for h in self.hooks:
            h.reset()

    def warm_up(self, steps: int = 1) -> None:
        """Run `steps` predictions on a blank frame so the first real step is not the slowest."""
        size = self.cfg.image_size
        blank = np.zeros((size, size, 3), np.uint8)
        for _ in range(steps):
            self.predict(Observation(blank, WARMUP_INSTRUCTION))
        self._instruction = None
        self.reset()

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
