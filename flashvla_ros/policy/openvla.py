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

Accelerators (`accel/`) plug into the one forward, `predict_batch` (`predict` is its batch
of one), through `Hooks` (see `step.py`), composed and checked together by a `Composition`;
the policy runs the planned layers and the head (`heads.py`), and counts what ran in the
step's `StepRecord`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import copy
import os
from pathlib import Path
import threading
import time
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .actions import ActionCodec, NormStats
from .composition import Composition
from .config import OpenVLAConfig
from .decode import prefill
from .dit import ActionModel
from .errors import CheckpointError, InputError
from .flops import StepRecord, count_flops, full_flops
from .heads import ActionHead, DiffusionHead, HeadOutput, TokenHead
from .instruction import check_instruction, prompt_tokens
from .layout import SequenceLayout
from .llama import STOP, Llama, Narrow
from .preprocess import check_rgb, preprocess
from .quantize import Quantization
from .step import ActionChunk, Hooks, Observation, Step, StepInfo
from .tokenizer import SPACE
from .vision import FusedProjector, FusedVisionBackbone

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


class Robot(Protocol):
    """A robot of a forward: its accelerators' memory and the instruction that memory is for."""

    composition: Composition
    instruction: str | None

    def reset(self) -> None: ...


class RobotPolicy:
    """
    One robot's policy on a shared model (`OpenVLAPolicy.for_robot`): its own accelerators.

    The model, its layer plan and its weights are shared; the hooks' state (the reuse gate,
    the previous action, caches, the episode) and the instruction followed are the robot's.
    `predict` runs a batch of one; the inference worker batches robots with
    `OpenVLAPolicy.predict_batch`.
    """

    def __init__(self, shared: OpenVLAPolicy, composition: Composition) -> None:
        self.shared = shared
        self.composition = composition
        self.instruction: str | None = None

    def predict(self, observation: Observation) -> ActionChunk:
        (result,) = self.shared.predict_batch([(self, observation)])
        if isinstance(result, Exception):
            raise result
        return result

    def reset(self) -> None:
        """Forget this robot's accelerator memory (its new episode or instruction)."""
        self.composition.reset()

    def check_instruction(self, instruction: str) -> str:
        return self.shared.check_instruction(instruction)


class OpenVLAPolicy:
    """
    Greedy OpenVLA inference: the one forward, with hook points, for one robot or a batch.

    The prompt and the vision towers feed the decoder layers of the hooks' plan (a
    `Composition`), then the model's head (`heads.py`: action tokens, or CogACT's diffusion
    head). `static_cache` uses position-slot KV caches (one shape per decode step); `compile`
    also compiles the one-token decode step (torch.compile; CUDA graphs on CUDA). Both give
    the same tokens as the reference path.
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
        codec = ActionCodec(vocab_size=tokenizer.vocab_size, n_bins=self.cfg.n_action_bins)
        self.crop_area = 0.9 if center_crop else None
        self.max_prompt_tokens = max_prompt_tokens
        self.space_id = tokenizer.convert_tokens_to_ids(SPACE)
        if codec.vocab_size > self.cfg.text.vocab_size:
            raise CheckpointError(
                f'tokenizer has {codec.vocab_size} tokens but the model embeds only '
                f'{self.cfg.text.vocab_size}'
            )
        diffusion = self.cfg.action_model
        if diffusion is not None and diffusion.action_dim != self.action_dim:
            raise CheckpointError(f'the action head predicts {diffusion.action_dim}-D actions '
                                  f'but the statistics have {self.action_dim} dimensions')
        self.head: ActionHead = (TokenHead(model, codec, self.stats) if diffusion is None
                                 else DiffusionHead(model, self.stats))
        self.checkpoint_dir: Path | None = None  # set by load_policy: where the weights live
        self.quantization = Quantization()  # set by load_policy: which weights are quantized
        # An int4 model's full-precision weights by name under `language_model.` (set by
        # load_policy: read from the checkpoint when a sparse MLP selects neurons).
        self.weight_source: Callable[[str], torch.Tensor] | None = None
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        capacity = self.layout(max_prompt_tokens).length  # positions of the longest step
        if capacity > self.cfg.text.max_position_embeddings:
            raise CheckpointError(
                f'{capacity} positions needed, model allows '
                f'{self.cfg.text.max_position_embeddings}'
            )
        self.static_cache = static_cache or compile
        self.compile = compile
        model.language_model.setup_cache(capacity, static=self.static_cache)
        self.set_hooks(hooks or [])
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._check_lock = threading.Lock()
        self._check_tokenizer: Any = None  # made on first use
        self.instruction: str | None = None  # the instruction its composition's memory is for
        self._full_flops: dict[int, int] = {}  # prompt length -> the plain model's step FLOPs
        self.max_batch = 1  # robots per forward (`serve`)

    # -- hooks -----------------------------------------------------------------------------

    def set_hooks(self, hooks: list[Hooks]) -> None:
        """Plug accelerators in, in order; raise ValueError when they cannot run together."""
        composition = Composition(hooks, self.cfg, self)
        self.model.language_model.keep_mlp_neurons(
            {layer: kept.to(self.device) for layer, kept in composition.neurons.items()},
            self.weight_source)
        self.head.bind(composition, self.compile)
        self.composition = composition

    @property
    def hooks(self) -> list[Hooks]:
        return self.composition.hooks

    @property
    def plan(self) -> list[int]:
        return list(self.composition.plan)

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
        ids = prompt_tokens(lambda t: tokenizer(t)['input_ids'], text, self.space_id,
                            self.head.prompt_suffix(tokenizer))
        if len(ids) > self.max_prompt_tokens:
            raise InputError(
                f'instruction makes a {len(ids)}-token prompt; '
                f'the limit is {self.max_prompt_tokens}'
            )
        return ids

    def layout(self, prompt_tokens: int) -> SequenceLayout:
        return SequenceLayout(self.cfg.num_patches, prompt_tokens, self.head.decoded_tokens)

    # -- the one forward -------------------------------------------------------------------

    def predict(self, observation: Observation) -> ActionChunk:
        """One step: gates, vision, the planned layers with their hooks, the head."""
        (result,) = self.predict_batch([(self, observation)])
        if isinstance(result, Exception):
            raise result
        return result

    def _gated_step(self, observation: Observation, ids: torch.Tensor,
                    composition: Composition) -> Step:
        """Start a step and run its gates; a gate that reuses leaves `step.reuse` set."""
        layout = self.layout(ids.numel())
        record = StepRecord(layout, self.cfg.text.num_hidden_layers, composition.plan,
                            mlp_kept=composition.mlp_kept)
        step = Step(observation, layout, record, torch.arange(layout.visual, device=self.device))
        composition.before_step(step)
        record.stopped = step.reuse is not None
        return step

    # -- results ---------------------------------------------------------------------------

    def _reused(self, step: Step, clock: Stopwatch,
                composition: Composition | None = None) -> ActionChunk:
        """Return the chunk a gate chose to reuse, as a copy with this step's info."""
        last = step.reuse
        assert last is not None
        clock.mark('head')
        result = HeadOutput(last.actions.copy(), last.normalized.copy(), list(last.token_ids),
                            last.info.non_action_tokens)
        return self._finish(step, result, clock, reused=True, composition=composition)

    def _finish(self, step: Step, result: HeadOutput, clock: Stopwatch, reused: bool,
                composition: Composition | None = None) -> ActionChunk:
        """Wrap the head's actions with the step's info; let the hooks see the chunk."""
        record, layout = step.record, step.layout
        if layout.prompt not in self._full_flops:
            self._full_flops[layout.prompt] = full_flops(self.cfg, layout).total
        kept = step.visual_kept.numel()
        ran = record.layers_run > 0
        info = StepInfo(
            timings_ms=clock.timings(), record=record, flops=count_flops(self.cfg, record),
            prompt_tokens=layout.prompt, visual_tokens=layout.visual,
            kept_tokens=kept if ran else 0,
            kept=step.visual_kept if ran and kept < layout.visual else None,
            layers_run=record.layers_run, reused=reused,
            non_action_tokens=result.non_action_tokens,
            flops_full=self._full_flops[layout.prompt], extras=dict(step.extras))
        chunk = ActionChunk(result.actions, result.normalized, result.token_ids, info)
        (composition or self.composition).after_step(step, chunk)
        return chunk

    def reset(self) -> None:
        """Forget every accelerator's memory (a new episode or instruction)."""
        self.composition.reset()

    # -- several robots, one model ---------------------------------------------------------

    def serve(self, max_batch: int) -> None:
        """
        Prepare for batches of up to `max_batch` robots: the append KV cache with that many rows.

        The static cache (and compile) keep one row per slot: a batch of one only.
        """
        if max_batch == self.max_batch:
            return
        if self.static_cache:
            raise ValueError('batches of several robots run the append KV cache: turn '
                             'static_cache and compile off, or serve one robot per forward '
                             '(max_batch 1)')
        capacity = self.layout(self.max_prompt_tokens).length
        self.model.language_model.setup_cache(capacity, batch=max_batch)
        self.max_batch = max_batch

    def for_robot(self) -> RobotPolicy:
        """Return a new robot's policy: this model, its own copies of the accelerators."""
        composition = Composition([h.fresh() for h in self.hooks], self.cfg, self)
        if composition.plan != self.composition.plan \
                or composition.neurons.keys() != self.composition.neurons.keys():
            raise ValueError('a copy of the accelerators planned other layers')
        return RobotPolicy(self, composition)

    @torch.inference_mode()
    def predict_batch(self, requests: Sequence[tuple[Robot, Observation]]
                      ) -> list[ActionChunk | Exception]:
        """
        One step for each robot, as few forwards as possible: a chunk or that robot's error.

        Each robot's gates run on its own memory first, and a robot whose gate reuses never
        joins the batch. The others run vision, the planned layers and the head as batches of
        up to `max_batch` rows, each robot's hooks seeing its own row (a selection keeps the
        same count in every row, so shapes agree); a gate that stops its robot after a layer
        takes that row out of the batch. Shorter prompts are padded after the visual tokens
        to the batch's longest: pad tokens sit at position -1 and no token attends to them.
        Bad input (InputError) and NaN/inf are one robot's. A robot's timings are those of
        the forward that served it. One robot (`predict`) is a batch of one.
        """
        results: list[ActionChunk | Exception | None] = [None] * len(requests)
        waiting: list[tuple[int, Robot, Step, torch.Tensor]] = []
        for i, (robot, observation) in enumerate(requests):
            clock = Stopwatch(self.device)
            try:
                check_rgb(observation.rgb)
                ids = self.prompt_ids(observation.instruction)
            except InputError as exc:
                results[i] = exc
                continue
            if observation.instruction != robot.instruction:
                robot.instruction = observation.instruction
                robot.reset()
            step = self._gated_step(observation, ids, robot.composition)
            step.extras['batch'] = 0  # rows of the forward it joined (0: none)
            if step.reuse is not None:
                clock.mark('preprocess')
                results[i] = self._reused(step, clock, robot.composition)
            else:
                waiting.append((i, robot, step, ids))
        waiting.sort(key=lambda row: row[3].numel())  # several batches: alike lengths together
        for start in range(0, len(waiting), self.max_batch):
            self._forward_rows(waiting[start:start + self.max_batch], results)
        return results  # type: ignore[return-value]  # every entry is set

    def _forward_rows(self, rows: list[tuple[int, Robot, Step, torch.Tensor]],
                      results: list) -> None:
        """Run vision, the planned layers and the head for one batch of robots."""
        clock = Stopwatch(self.device)
        steps = [step for _, _, step, _ in rows]
        compositions = [robot.composition for _, robot, _, _ in rows]
        for step in steps:
            step.extras['batch'] = len(rows)
        pixels = torch.cat([preprocess(step.observation.rgb, self.cfg.image_size,
                                       self.crop_area) for step in steps])
        pixels = pixels.to(self.device, self.dtype)
        clock.mark('preprocess')
        patches = self.model.encode_image(pixels)
        for step in steps:
            step.record.vision = True
        clock.mark('vision')
        llm, layout = self.model.language_model, steps[-1].layout  # the longest prompt
        text, positions = self._padded_prompts([ids for *_, ids in rows], steps)
        sequence = layout.assemble(llm.embed(text), patches)
        for row, step in enumerate(steps):
            step.decoder_input = sequence[row:row + 1]
        active = list(range(len(rows)))  # the batch's rows -> `rows` index
        stopped: list[int] = []

        def after_layer(layer: int, hidden: torch.Tensor, probes: dict[str, torch.Tensor]):
            if len(rows) == 1:  # a batch of one: its hooks' own outcome, positions stay [T]
                steps[0].record.layer_tokens[layer] = hidden.shape[1]  # (the static cache)
                outcome = compositions[0].after_layer(steps[0], layer, hidden, probes)
                if outcome is STOP:
                    active.clear()
                    stopped.append(0)
                return outcome
            outcomes = []
            for row, g in enumerate(active):
                steps[g].record.layer_tokens[layer] = hidden.shape[1] - steps[g].padding
                mine = {kind: probe[row:row + 1] for kind, probe in probes.items()}
                outcomes.append(compositions[g].after_layer(steps[g], layer,
                                                            hidden[row:row + 1], mine))
            going = [row for row, outcome in enumerate(outcomes) if outcome is not STOP]
            stopped.extend(active[row] for row, o in enumerate(outcomes) if o is STOP)
            kept = [outcomes[row] for row in going]
            selects = {k is not None for k in kept}
            if len(selects) > 1 or len({k.numel() for k in kept if k is not None}) > 1:
                raise ValueError(f'decoder layer {layer}: the robots kept different token '
                                 'counts, so their rows cannot share a batch')
            if len(going) == len(active) and selects <= {False}:
                return None
            active[:] = [active[row] for row in going]
            return Narrow(None if len(going) == len(outcomes) else
                          torch.tensor(going, dtype=torch.long, device=hidden.device),
                          torch.stack(kept) if kept and kept[0] is not None else None)

        composition = self.composition
        llm.pad_cache(positions.dim() == 2)
        try:
            out = prefill(llm, sequence, positions, composition.plan, composition.probes,
                          after_layer)
            if out is None:
                clock.mark('prefill')
            else:
                heads = self.head.run([steps[g] for g in active], out[0],
                                      [compositions[g] for g in active], clock)
                clock.mark('head')
        finally:
            llm.pad_cache(False)
        if out is not None:
            for g, result in zip(active, heads, strict=True):
                results[rows[g][0]] = result if isinstance(result, Exception) else \
                    self._finish(steps[g], result, clock, False, compositions[g])
        for g in stopped:
            steps[g].record.stopped = True
            results[rows[g][0]] = self._reused(steps[g], clock, compositions[g])

    def _padded_prompts(self, prompts: list[torch.Tensor], steps: list[Step]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Return the prompts' ids [B, P] and the prefill's positions ([T], or [B, T] if padded).

        A shorter prompt gets pad tokens (BOS again, never attended to) between BOS and the
        rest, where the visual tokens' end; its real tokens keep their unpadded positions.
        """
        longest = max(ids.numel() for ids in prompts)
        if all(ids.numel() == longest for ids in prompts):
            return torch.stack(prompts), steps[0].layout.positions(self.device)
        visual = self.cfg.num_patches
        text, positions = [], []
        for ids, step in zip(prompts, steps, strict=True):
            step.padding = pad = longest - ids.numel()
            text.append(torch.cat([ids[:1], ids[:1].expand(pad), ids[1:]]))
            positions.append(torch.cat([
                torch.arange(1 + visual, device=self.device),
                torch.full((pad,), -1, device=self.device),
                torch.arange(1 + visual, visual + ids.numel(), device=self.device)]))
        return torch.stack(text), torch.stack(positions)

    def warm_up(self, steps: int = 2) -> None:
        """
        Run `steps` batches of blank frames so that the first real step is not the slowest.

        A full batch (`serve`), each robot with its own copies of the accelerators, so this
        policy's memory stays untouched. Two steps by default: the second one drafts
        (FlashVLA), so the draft-verifying pass is traced and compiled too (with `compile`)
        before the robot needs it; a CUDA graph may still be recorded on a later call.
        """
        size = self.cfg.image_size
        blank = Observation(np.zeros((size, size, 3), np.uint8), WARMUP_INSTRUCTION)
        robots = [self.for_robot() for _ in range(self.max_batch)]
        for _ in range(steps):
            for result in self.predict_batch([(robot, blank) for robot in robots]):
                if isinstance(result, Exception):
                    raise result
