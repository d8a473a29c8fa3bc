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

"""flashvla-make-tiny: write a small random OpenVLA checkpoint in the real layout."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from ..policy.checkpoint import expand_path, save_checkpoint
from ..policy.config import OpenVLAConfig, ViTConfig
from ..policy.openvla import OpenVLA
from ..policy.presets import init_weights, tiny_config
from ..policy.tokenizer import (
    LLAMA2_SPACE_ID,
    build_llama_tokenizer,
    instruction_corpus,
    save_tokenizer_files,
)
from ..policy.vision import Block

INIT_STD = 0.02
MIXING_STD = 0.15
ACTION_STD = 1.0


def random_model(cfg: OpenVLAConfig, seed: int, action_vocab: int = 32000) -> OpenVLA:
    """
    Seeded random init: normal weights, zero biases, unit norms.

    At GPT-2's 0.02 a tiny random VLA gives the same tokens for every input (near-uniform
    attention washes the image out), so the projector and decoder matrices get 0.15 and the
    output rows of the action tokens (the last 256 of the `action_vocab` base vocabulary)
    1.0: the random model then answers with action tokens that depend on the image and the
    instruction, as a trained VLA does.
    """
    torch.manual_seed(seed)
    model = OpenVLA(cfg)
    init_weights(model, lambda name: INIT_STD if name.startswith('vision_backbone')
                 or 'embed_tokens' in name else MIXING_STD)
    with torch.no_grad():
        first = action_vocab - cfg.n_action_bins
        nn.init.normal_(model.language_model.lm_head.weight[first:action_vocab], std=ACTION_STD)
    return model


def unused_timm_tensors(cfg: OpenVLAConfig, seed: int) -> dict[str, torch.Tensor]:
    """Make the tensors a real timm tower also stores: last block, final norm, SigLIP pool."""
    gen = torch.Generator().manual_seed(seed + 1)
    out: dict[str, torch.Tensor] = {}

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * INIT_STD

    for name, tower in zip(('featurizer', 'fused_featurizer'), cfg.vision, strict=True):
        prefix = f'vision_backbone.{name}.'
        for k, v in Block(tower).state_dict().items():
            out[f'{prefix}blocks.{tower.depth - 1}.{k}'] = rand(*v.shape)
        d = tower.embed_dim
        out[prefix + 'norm.weight'], out[prefix + 'norm.bias'] = torch.ones(d), torch.zeros(d)
        if tower.attn_pool:
            out.update(_attn_pool(prefix + 'attn_pool.', tower, rand))
    return out


def _attn_pool(prefix: str, tower: ViTConfig, rand) -> dict[str, torch.Tensor]:
    d, h = tower.embed_dim, tower.mlp_dim
    shapes = {
        'latent': (1, 1, d), 'q.weight': (d, d), 'q.bias': (d,), 'kv.weight': (2 * d, d),
        'kv.bias': (2 * d,), 'proj.weight': (d, d), 'proj.bias': (d,), 'norm.weight': (d,),
        'norm.bias': (d,), 'mlp.fc1.weight': (h, d), 'mlp.fc1.bias': (h,),
        'mlp.fc2.weight': (d, h), 'mlp.fc2.bias': (d,),
    }
    return {prefix + k: rand(*s) for k, s in shapes.items()}


def make_tiny(out: str | Path, seed: int = 0, dtype: str = 'bfloat16') -> Path:
    out = expand_path(out)
    cfg = tiny_config()
    model = random_model(cfg, seed)
    state = {**model.state_dict(), **unused_timm_tensors(cfg, seed)}
    save_checkpoint(out, state, cfg, dtype=dtype)
    tok = build_llama_tokenizer(instruction_corpus(), vocab_size=32000,
                                space_token_id=LLAMA2_SPACE_ID)
    save_tokenizer_files(tok, out, model_max_length=cfg.text.max_position_embeddings)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--out', required=True, type=expand_path,
                        help='checkpoint directory to write')
    parser.add_argument('--seed', type=int, default=0, help='weight initialisation seed')
    parser.add_argument('--dtype', default='bfloat16', help='stored dtype (OpenVLA ships bf16)')
    args = parser.parse_args(argv)
    path = make_tiny(args.out, seed=args.seed, dtype=args.dtype)
    print(f'wrote tiny OpenVLA checkpoint to {path}')


if __name__ == '__main__':
    main()
