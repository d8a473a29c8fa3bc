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
EfficientVLA (arXiv 2506.10100) as hooks of the one forward.

Calibrated layer pruning (and MLP sparsity), task-aware diverse visual tokens and DiT feature
caching.

    policy = accelerate(load_policy(path), ['efficientvla'], {})  # the default preset

Layer pruning (a layer plan): `flashvla-calibrate` measures each decoder layer's importance
I(l) = 1 - mean cos(x_l, x_{l+1}) (its input and output states, over every token of a
calibration set) and writes a calibration file naming the model's weights (sha256). With
`prune_layers` n, the n least important layers never run. A missing calibration, or one
written for other weights, is refused with the reason: it is never silently recomputed.

Structured MLP sparsity (the paper's 25%, part of its "layers" gain): the same calibration
scores every MLP neuron j of every layer by the size of what it adds to the layer's output,
sqrt(mean a_j^2) * ||W_down[:, j]|| (a_j its activation, over the same samples); with
`mlp_sparsity` s, each running layer keeps the 1 - s highest-scoring neurons and runs smaller
dense matrices (a layer-weights plan, like the layer plan: the runtime slices them once).

Task-aware diverse tokens (an after-layer hook): after the first `token_layer` layers that run,
whose last alone computes explicit attention weights (every other layer keeps fused SDPA), a
visual token's relevance is the head-averaged attention the prompt's tokens pay it, min-max
normalised. The `key_tokens` most relevant stay; `relevance_share` of the rest of the budget is
filled by relevance, the remainder greedily by diversity (1 - the largest cosine similarity of a
token's state to those already kept). `selection: random` keeps as many tokens at random (the
paper's control).

DiT feature caching (a head hook): each DiT block's attention and MLP outputs are computed only
at denoising steps k with k mod `cache_interval` == 0 and reused at the others; interval 1 is
the exact model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..policy.checkpoint import expand_path, weights_digest
from ..policy.step import Hooks, Step
from .base import Accelerator, option, token_budget

CALIBRATION_FILE = 'calibration.json'  # beside the weights, when `calibration` is empty
CALIBRATION_VERSION = 2  # 2 added the MLP neuron scores; 1 is still read (layers only)


@dataclass(frozen=True)
class EfficientVLAOptions:
    prune_layers: int = option(0, 'decoder layers never run, least important first (needs a '
                               'calibration)', low=0)
    calibration: str = option('', 'calibration file of flashvla-calibrate (empty: '
                              'calibration.json beside the weights)')
    token_layer: int = option(2, 'decoder layers that run on every visual token', low=1)
    keep_fraction: float = option(1.0, "share of the model's visual tokens kept after "
                                  'token_layer (at most the tokens present)',
                                  low=0.0, high=1.0, low_open=True)
    keep_tokens: int = option(0, 'visual tokens kept, as a count (0: use keep_fraction)',
                              low=0)
    key_tokens: int = option(4, 'most task-relevant tokens always kept (K_key)', low=0,
                             live=True)
    relevance_share: float = option(0.5, 'share of the rest of the budget filled by '
                                    'relevance (alpha); the remainder by diversity', low=0.0,
                                    high=1.0, live=True)
    selection: str = option('diverse', 'token selection: diverse (task-aware) or random (a '
                            'control)', choices=('diverse', 'random'))
    cache_interval: int = option(1, 'DiT features recomputed every N denoising steps (1: '
                                 'exact)', low=1, live=True)
    mlp_sparsity: float = option(0.0, "share of each running decoder layer's MLP neurons "
                                 'never run, least important first (needs a calibration)',
                                 low=0.0, high=0.9)

    def kept_tokens(self, visual_tokens: int, present: int | None = None) -> int:
        """Tokens kept of `present` (default: all); the budget counts the model's (base.py)."""
        return token_budget(visual_tokens, self.keep_tokens, self.keep_fraction, present)


# -- calibration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """Layer importances of one model's weights, and where the samples came from."""

    weights_sha256: str
    model: str  # the checkpoint directory it was measured on (for people; the hash decides)
    samples: dict[str, Any]  # source, count, and the seeds or the bag and topics
    importance: list[float]  # I(l) per decoder layer
    neuron_importance: list[list[float]] | None = None  # per layer, per MLP neuron (version 2)

    def least_important(self, n: int) -> list[int]:
        """Return the `n` least important layers (ties: the later layer first), ascending."""
        order = sorted(range(len(self.importance)), key=lambda i: (self.importance[i], -i))
        return sorted(order[:n])

    def kept_neurons(self, layer: int, sparsity: float) -> torch.Tensor:
        """Return the MLP neurons of `layer` that `sparsity` keeps, the most important."""
        assert self.neuron_importance is not None
        scores = torch.tensor(self.neuron_importance[layer])
        keep = scores.numel() - round(sparsity * scores.numel())
        return torch.sort(torch.argsort(scores, descending=True, stable=True)[:keep]).values

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({'version': CALIBRATION_VERSION, **asdict(self)}, indent=1)
                        + '\n')

    @classmethod
    def load(cls, path: Path) -> Calibration:
        try:
            raw = json.loads(path.read_text())
            if raw.pop('version', None) not in (1, CALIBRATION_VERSION):
                raise ValueError(f'version must be 1 or {CALIBRATION_VERSION}')
            return cls(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f'{path}: not a readable calibration file ({exc})') from exc


class LayerSimilarity(Hooks):
    """Record, per decoder layer, the mean cosine similarity of its input and output states."""

    name = 'layer_similarity'

    def __init__(self) -> None:
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}
        self._previous: torch.Tensor | None = None

    def after_layer(self, step: Step, layer: int, hidden: torch.Tensor,
                    probes: dict[str, torch.Tensor]) -> None:
        before = step.decoder_input if layer == 0 else self._previous
        assert before is not None and before.shape == hidden.shape  # every layer, every token
        cos = F.cosine_similarity(before.float(), hidden.float(), dim=-1)  # [B, T]
        self.sums[layer] = self.sums.get(layer, 0.0) + float(cos.sum())
        self.counts[layer] = self.counts.get(layer, 0) + cos.numel()
        self._previous = hidden
        return None

    def importance(self) -> list[float]:
        """I(l) = 1 - mean cos(x_l, x_{l+1}) for every layer seen."""
        return [1.0 - self.sums[layer] / self.counts[layer] for layer in sorted(self.sums)]


class NeuronActivity:
    """
    Record the mean square of every MLP neuron's activation, per decoder layer.

    The activations live inside the MLP, where the forward has no hook point: a torch
    pre-hook on each `down_proj` reads its input (calibration only; the plain model runs).
    """

    def __init__(self, layers) -> None:
        self.layers = list(layers)
        self.squares = [torch.zeros(layer.mlp.down_proj.in_features) for layer in self.layers]
        self.counts = [0] * len(self.layers)
        self._handles = [layer.mlp.down_proj.register_forward_pre_hook(self._recorder(i))
                         for i, layer in enumerate(self.layers)]

    def _recorder(self, i: int):
        def record(module, inputs) -> None:
            a = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            self.squares[i] += (a * a).sum(dim=0).cpu()
            self.counts[i] += a.shape[0]
        return record

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def importance(self) -> list[list[float]]:
        """Per layer and neuron: sqrt(mean a_j^2) * ||W_down[:, j]||, the size it adds."""
        scores = []
        for layer, squares, count in zip(self.layers, self.squares, self.counts, strict=True):
            rms = (squares / max(1, count)).sqrt()
            column = layer.mlp.down_proj.weight.detach().float().norm(dim=0).cpu()
            scores.append([float(f'{v:.6g}') for v in (rms * column).tolist()])
        return scores


def calibrate(policy: Any, observations, samples: dict[str, Any]) -> Calibration:
    """Run the plain model on `observations`; return its layer and MLP-neuron importances."""
    if policy.checkpoint_dir is None:
        raise ValueError('calibration needs a policy loaded from a checkpoint directory')
    probe = LayerSimilarity()
    policy.set_hooks([probe])
    neurons = NeuronActivity(policy.model.language_model.model.layers)
    count = 0
    try:
        for observation in observations:
            policy.predict(observation)
            count += 1
    finally:
        neurons.close()
        policy.set_hooks([])
    if not count:
        raise ValueError('no calibration samples')
    model = Path(policy.checkpoint_dir).resolve()
    if model.is_relative_to(Path.cwd()):  # a shipped file names no one's home directory
        model = model.relative_to(Path.cwd())
    return Calibration(weights_digest(policy.checkpoint_dir), str(model),
                       {**samples, 'count': count}, probe.importance(), neurons.importance())


def read_calibration(options: EfficientVLAOptions, policy: Any) -> Calibration:
    """Return the calibration `options` name, checked against the policy's weights."""
    what = ' '.join(f'{name}={getattr(options, name):g}' for name in
                    ('prune_layers', 'mlp_sparsity') if getattr(options, name))
    if options.calibration:
        path = expand_path(options.calibration)
    elif policy.checkpoint_dir is not None:
        path = policy.checkpoint_dir / CALIBRATION_FILE
    else:
        raise ValueError(f'efficientvla {what} needs a calibration file (option '
                         'calibration), and this policy was not loaded from a directory')
    if not path.is_file():
        raise ValueError(f'efficientvla {what} needs a calibration: '
                         f'{path} does not exist; write it with flashvla-calibrate --model '
                         f'{policy.checkpoint_dir or "MODEL"} --out {path}')
    calibration = Calibration.load(path)
    digest = weights_digest(policy.checkpoint_dir) if policy.checkpoint_dir else None
    if calibration.weights_sha256 != digest:
        raise ValueError(f'{path} was calibrated on other weights ({calibration.model}, sha256 '
                         f'{calibration.weights_sha256[:12]}...), not these '
                         f'({policy.checkpoint_dir}, {str(digest)[:12]}...); calibrate this '
                         'model with flashvla-calibrate')
    depth = policy.cfg.text.num_hidden_layers
    if len(calibration.importance) != depth:
        raise ValueError(f'{path} scores {len(calibration.importance)} layers; the model has '
                         f'{depth}')
    if options.mlp_sparsity:
        width = policy.cfg.text.intermediate_size
        scores = calibration.neuron_importance
        if scores is None:
            raise ValueError(f'efficientvla mlp_sparsity={options.mlp_sparsity:g} needs MLP '
                             f'neuron scores, and {path} (version 1) has none; recalibrate with '
                             'flashvla-calibrate')
        if len(scores) != depth or any(len(layer) != width for layer in scores):
            raise ValueError(f'{path} does not score {width} MLP neurons in each of {depth} '
                             'layers')
    return calibration


# -- token selection -----------------------------------------------------------------------


def task_relevance(weights: torch.Tensor, visual: slice, prompt: slice) -> torch.Tensor:
    """Head-averaged attention of the prompt's tokens to each visual token, min-max normalised."""
    scores = weights[0, :, prompt, visual].float().mean(dim=(0, 1))  # [n]
    low, high = scores.min(), scores.max()
    return (scores - low) / (high - low).clamp_min(1e-12)


def diverse_selection(relevance: torch.Tensor, features: torch.Tensor, budget: int,
                      key_tokens: int, relevance_share: float) -> torch.Tensor:
    """
    Keep `budget` tokens; return their indices in ascending (original) order.

    First the `key_tokens` most relevant, then `relevance_share` of the rest of the budget by
    relevance, then greedily the token least similar (cosine) to any already kept.
    """
    n = relevance.numel()
    order = torch.argsort(relevance, descending=True, stable=True)
    key = min(key_tokens, budget)
    by_relevance = key + round(relevance_share * (budget - key))
    kept = order[:by_relevance].tolist()
    if len(kept) < budget:
        unit = F.normalize(features.float(), dim=-1)
        # The greedy loop runs on the host: a few dozen tiny steps, each a sync on a GPU.
        similarity = (unit @ unit.T).cpu().numpy()  # [n, n]
        closest = similarity[:, kept].max(axis=1) if kept else np.full(n, -1.0, np.float32)
        closest[kept] = np.inf
        for _ in range(budget - len(kept)):
            pick = int(np.argmin(closest))  # the most diverse: 1 - max cos is largest
            kept.append(pick)
            closest = np.maximum(closest, similarity[:, pick])
            closest[pick] = np.inf
    return torch.tensor(sorted(kept), device=relevance.device)


# -- the accelerator ---------------------------------------------------------------------------


class EfficientVLA(Accelerator):
    """Calibrated layer pruning, task-aware diverse tokens and DiT feature caching, as hooks."""

    name = 'efficientvla'
    Options = EfficientVLAOptions
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # The paper's proportions on CogACT, tuned on default-dit: docs/ACCELERATORS.md.
        'default': {'prune_layers': 6, 'keep_fraction': 0.22, 'cache_interval': 5,
                    'mlp_sparsity': 0.25},
    }
    DEFAULT_PRESET = 'default'

    def __init__(self, options: EfficientVLAOptions) -> None:
        super().__init__(options)
        self.pruned: list[int] = []
        self._neurons: dict[int, torch.Tensor] = {}  # layer -> MLP neurons kept (sparsity)
        self._token_layer = -1  # the decoder layer after which tokens are selected
        self._features: dict[tuple[int, str], torch.Tensor] = {}
        self._steps = 0  # random selection: a new, reproducible draw every step
        self._selects = False  # whether steps select tokens (the budget is below every token)

    def bind(self, policy: Any) -> None:
        o = self.options
        depth = policy.cfg.text.num_hidden_layers
        self.pruned, self._neurons = [], {}
        if o.prune_layers >= depth:
            raise ValueError(f'efficientvla prune_layers={o.prune_layers}: the model has '
                             f'{depth} decoder layers')
        if o.prune_layers or o.mlp_sparsity:
            calibration = read_calibration(o, policy)
            self.pruned = calibration.least_important(o.prune_layers)
            if o.mlp_sparsity:
                self._neurons = {layer: calibration.kept_neurons(layer, o.mlp_sparsity)
                                 for layer in range(depth) if layer not in self.pruned}
        running = depth - len(self.pruned)
        if o.token_layer >= running:
            raise ValueError(f'efficientvla token_layer={o.token_layer}: {running} decoder '
                             'layers run, so token_layer must be smaller')
        self._selects = o.kept_tokens(policy.cfg.num_patches) < policy.cfg.num_patches

    def reset(self) -> None:
        self._steps = 0

    def plan(self, layers: list[int]) -> list[int]:
        kept = [layer for layer in layers if layer not in self.pruned]
        self._token_layer = kept[min(self.options.token_layer, len(kept)) - 1]
        return kept

    def probes(self) -> dict[int, set[str]]:
        diverse = self._selects and self.options.selection == 'diverse'
        return {self._token_layer: {'attention_weights'}} if diverse else {}

    def needs_layers(self) -> set[int]:
        return {self._token_layer} if self._selects else set()

    def mlp_neurons(self) -> dict[int, torch.Tensor]:
        return dict(self._neurons)

    def after_layer(self, step: Step, layer: int, hidden: torch.Tensor,
                    probes: dict[str, torch.Tensor]) -> torch.Tensor | None:
        o = self.options
        n = step.visual_kept.numel()
        if layer != self._token_layer or not self._selects:
            return None
        budget = o.kept_tokens(step.layout.visual, n)
        if o.selection == 'random':
            gen = torch.Generator().manual_seed(self._steps)
            self._steps += 1
            keep = torch.sort(torch.randperm(n, generator=gen)[:budget]).values
            return keep.to(hidden.device)
        visual, text = step.layout.visual_present(n), step.text_present()
        relevance = task_relevance(probes['attention_weights'], visual, text)
        step.record.scoring.append(('diverse', n, hidden.shape[1] - n - step.padding))
        return diverse_selection(relevance, hidden[0, visual], budget, o.key_tokens,
                                 o.relevance_share)

    def block_cache(self, step: Step, denoising_step: int):
        interval = self.options.cache_interval
        if interval == 1:
            return lambda block, part, compute: compute()
        fresh = denoising_step % interval == 0
        if denoising_step == 0:
            self._features = {}

        def cache(block: int, part: str, compute):
            if fresh or (block, part) not in self._features:
                self._features[(block, part)] = compute()
            return self._features[(block, part)]
        return cache
