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
Read CogACT's published checkpoint layout and convert it once to ours (safetensors, HF-style).

CogACT ships a run directory: `checkpoints/<name>.pt` (a state dict under "model", split into
`vision_backbone`, `projector`, `llm_backbone`, `action_model`, and `ema_diffusion` when trained
with EMA), `config.json` (only `vla.base_vlm` names the VLM; the head's size, chunk and action
width are not recorded: they are arguments here) and `dataset_statistics.json`. The `.pt` is
read with `weights_only=True`: tensors only, never arbitrary pickle.

    convert_cogact('~/CogACT-Base', '~/models/cogact-base', tokenizer_dir='~/llama-2-7b-hf')
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
import pickle

import torch

from .checkpoint import (
    CONFIG,
    expand_path,
    known_unused,
    read_json,
    save_checkpoint,
    summarise_keys,
)
from .config import OpenVLAConfig
from .dit import DiTConfig
from .errors import CheckpointError
from .openvla import OpenVLA

# CogACT's base VLM ids -> the OpenVLA config of the same shapes (towers, Llama-2 7B).
BASE_VLMS = {'prism-dinosiglip-224px+7b'}
STATS = 'dataset_statistics.json'
# Sub-dict prefix in CogACT's state dict -> our module prefix.
PREFIXES = (
    ('vision_backbone.dino_featurizer.', 'vision_backbone.featurizer.'),
    ('vision_backbone.siglip_featurizer.', 'vision_backbone.fused_featurizer.'),
    ('projector.projector.0.', 'projector.fc1.'),
    ('projector.projector.2.', 'projector.fc2.'),
    ('projector.projector.4.', 'projector.fc3.'),
    ('llm_backbone.llm.', 'language_model.'),
    ('action_model.', 'action_model.'),
)
SKIPPED = ('ema_diffusion.',)  # the EMA copy of the head: kept out unless asked for
PARTS = ('vision_backbone', 'projector', 'llm_backbone', 'action_model')  # a full .pt's parts


def find_weights(run_dir: Path) -> Path:
    files = sorted((run_dir / 'checkpoints').glob('*.pt'))
    if len(files) != 1:
        raise CheckpointError(f'{run_dir}/checkpoints: expected exactly one .pt file, found '
                              f'{[f.name for f in files]}')
    return files[0]


def read_state(pt: Path) -> dict[str, torch.Tensor]:
    """Flatten `{"model": {part: {key: tensor}}}` into `part.key` names (tensors only)."""
    try:
        raw = torch.load(pt, map_location='cpu', weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f'{pt}: not a tensor-only PyTorch checkpoint ({exc})') from exc
    if not isinstance(raw, dict) or not isinstance(raw.get('model'), dict):
        raise CheckpointError(f'{pt}: expected {{"model": {{part: state dict}}}}')
    flat = {}
    for part, state in raw['model'].items():
        if not isinstance(state, dict):
            raise CheckpointError(f'{pt}: "model.{part}" is not a state dict')
        flat.update({f'{part}.{k}': v for k, v in state.items()})
    return flat


def our_names(state: dict[str, torch.Tensor], use_ema: bool = False
              ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename CogACT keys to ours; return them and the keys that have no place here."""
    if use_ema:
        ema = {k: v for k, v in state.items() if k.startswith('ema_diffusion.')}
        if not ema:
            raise CheckpointError('use_ema: the checkpoint has no ema_diffusion weights')
        state = {k: v for k, v in state.items() if not k.startswith('action_model.')}
        state.update({'action_model.' + k[len('ema_diffusion.'):]: v for k, v in ema.items()})
    out, unplaced = {}, []
    for key, value in state.items():
        target = next((ours + key[len(theirs):] for theirs, ours in PREFIXES
                       if key.startswith(theirs)), None)
        if target is None:
            if not key.startswith(SKIPPED):
                unplaced.append(key)
            continue
        out[target] = value
    return out, unplaced


def head_config(state: dict[str, torch.Tensor], size: str, chunk: int,
                **overrides) -> DiTConfig:
    """Return the head's config from its size name, checked against the tensors' shapes."""
    x = state.get('action_model.net.x_embedder.linear.weight')
    z = state.get('action_model.net.z_embedder.linear.weight')
    if x is None or z is None:
        raise CheckpointError('no action_model.net.{x,z}_embedder weights: not a CogACT head')
    cfg = DiTConfig.sized(size, action_dim=x.shape[1], chunk=chunk, token_size=z.shape[1],
                          **overrides)
    pos = state.get('action_model.net.positional_embedding')
    if x.shape[0] != cfg.hidden_size or pos is None or pos.shape[0] != chunk + 1:
        raise CheckpointError(
            f'the head does not match {size} with chunk {chunk}: x_embedder {list(x.shape)}, '
            f'positional_embedding {None if pos is None else list(pos.shape)}')
    return cfg


def missing_parts_hint(state: dict[str, torch.Tensor], use_ema: bool = False) -> str:
    """Say which of CogACT's parts a .pt lacks entirely, '' when it has them all."""
    present = {key.partition('.')[0] for key in state}
    if use_ema and 'ema_diffusion' in present:
        present.add('action_model')
    absent = [part for part in PARTS if part not in present]
    if not absent:
        return ''
    full = ("CogACT's full checkpoint has vision_backbone, projector, llm_backbone and "
            'action_model')
    if absent == ['vision_backbone', 'projector', 'llm_backbone']:
        return f'this .pt holds only the action model; {full}'
    if absent == ['action_model']:
        return f'this .pt holds no action model (a VLM-only checkpoint?); {full}'
    return f'this .pt lacks {", ".join(absent)}; {full}'


def convert_cogact(run_dir: str | Path, out_dir: str | Path, *,
                   tokenizer_dir: str | Path | None = None,
                   base_config: str | Path | None = None, size: str = 'DiT-B',
                   chunk: int = 16, use_ema: bool = False, dtype: str = 'bfloat16') -> Path:
    """
    Convert a CogACT run directory into our checkpoint layout; return the output directory.

    `base_config` is an OpenVLA `config.json` giving the VLM's shapes when CogACT's
    `vla.base_vlm` is not one we know. Missing and unexpected weights are summarised by
    module, with what a wholly missing part suggests. `dtype` is the VLM's stored dtype; the
    action head is stored float32 whatever it is (CogACT runs its head in fp32).
    """
    run = expand_path(run_dir)
    pt = find_weights(run)
    raw_config = read_json(run / CONFIG)
    stats = read_json(run / STATS)
    if base_config is not None:
        vlm = OpenVLAConfig.from_dict(read_json(expand_path(base_config)), str(base_config))
    else:
        base = (raw_config.get('vla') or {}).get('base_vlm')
        if base not in BASE_VLMS:
            raise CheckpointError(f'{run / CONFIG}: base VLM {base!r} is not one of '
                                  f'{sorted(BASE_VLMS)}; give base_config')
        from .presets import openvla_7b_config
        vlm = openvla_7b_config()
    raw_state = read_state(pt)
    state, unplaced = our_names(raw_state, use_ema)
    embed = state.get('language_model.model.embed_tokens.weight')
    if embed is not None:  # Prismatic pads the vocabulary; the shape is the truth
        vlm = replace(vlm, text=replace(vlm.text, vocab_size=embed.shape[0]))
    try:
        head = head_config(state, size, chunk)
    except CheckpointError as exc:
        hint = missing_parts_hint(raw_state, use_ema)
        raise CheckpointError(f'{pt}: {exc}' + (f'; {hint}' if hint else '')) from exc
    cfg = replace(vlm, norm_stats=stats, action_model=head)
    with torch.device('meta'):
        expected = OpenVLA(cfg).state_dict()
    missing = sorted(set(expected) - set(state))
    shapes = [f'{k} {list(state[k].shape)} != {list(expected[k].shape)}' for k in expected
              if k in state and state[k].shape != expected[k].shape]
    unused = known_unused(cfg)  # ViT tails timm stores and inference never reads
    extra = sorted(k for k in set(state) - set(expected) if not k.startswith(unused)) + unplaced
    problems = [summarise_keys('missing', missing) if missing else '',
                summarise_keys('unexpected', extra) if extra else '',
                f'{len(shapes)} shapes differ: {shapes[:3]}' if shapes else '',
                missing_parts_hint(raw_state, use_ema) if missing else '']
    if any(problems):
        raise CheckpointError(f'{pt}: ' + '; '.join(p for p in problems if p))
    return save_checkpoint(expand_path(out_dir), state, cfg, tokenizer_dir=tokenizer_dir,
                           dtype=dtype)
