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

"""Small OpenVLA-architecture configurations for tests, demos and training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from torch import nn

from .config import OpenVLAConfig, TextConfig, ViTConfig
from .dit import DiTConfig

# A 7-D action (xyz, rpy deltas, gripper), gripper not normalised: OpenVLA's layout.
TINY_NORM_STATS = {
    'mock_world': {
        'action': {
            'q01': [-0.05, -0.05, -0.05, -0.2, -0.2, -0.2, 0.0],
            'q99': [0.05, 0.05, 0.05, 0.2, 0.2, 0.2, 1.0],
            'mask': [True, True, True, True, True, True, False],
        },
    },
}


def tiny_config(vocab_size: int = 32064, pad_token_id: int = 32000) -> OpenVLAConfig:
    """Return OpenVLA's shape at 224 px (256 visual tokens) with tiny widths, fast on CPU."""
    dino = ViTConfig(embed_dim=64, depth=3, num_heads=4, mlp_dim=256, reg_tokens=4,
                     layer_scale=True)
    siglip = ViTConfig(embed_dim=72, depth=3, num_heads=4, mlp_dim=288, class_token=False,
                       attn_pool=True)
    text = TextConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=344,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=2048, pad_token_id=pad_token_id)
    return OpenVLAConfig(
        vision=(dino, siglip),
        text=text,
        norm_stats=TINY_NORM_STATS,
        timm_model_ids=('flashvla_tiny_dinov2_reg4', 'flashvla_tiny_siglip'),
    )


def openvla_7b_config() -> OpenVLAConfig:
    """Return OpenVLA-7B's shapes (DINOv2-L + SigLIP-so400m, Llama-2 7B), as its config.json."""
    return OpenVLAConfig.from_dict({
        'timm_model_ids': ['vit_large_patch14_reg4_dinov2.lvd142m',
                           'vit_so400m_patch14_siglip_224'],
        'text_config': {'model_type': 'llama', 'pad_token_id': 32000, 'vocab_size': 32064},
        'norm_stats': TINY_NORM_STATS,
    }, source='openvla-7b shapes')


def tiny_cogact_config(size: str = 'DiT-S', **head) -> OpenVLAConfig:
    """Return the tiny VLM with a CogACT head conditioned on its 128-wide cognition feature."""
    cfg = tiny_config()
    return replace(cfg, action_model=DiTConfig.sized(size, token_size=cfg.text.hidden_size,
                                                     **head))


def cogact_7b_config() -> OpenVLAConfig:
    """Return CogACT's shapes: OpenVLA-7B's VLM and a DiT-B head (for FLOPs projections)."""
    return replace(openvla_7b_config(), action_model=DiTConfig.sized('DiT-B'))


EMBEDDED_MODELS = ('default', 'default-dit')  # flashvla_ros/models/<name>


def default_model_dir(name: str = 'default') -> Path:
    """Return where an embedded checkpoint lives inside the installed package."""
    return Path(__file__).resolve().parent.parent / 'models' / name


def model_path(model: str | Path | None) -> Path:
    """
    Resolve a model name or path to a checkpoint directory.

    Empty means the embedded default, an embedded name (`default-dit`) its directory in the
    package, anything else a checkpoint path (`~` expanded).
    """
    if not model:
        return default_model_dir()
    if str(model) in EMBEDDED_MODELS and not Path(model).exists():
        return default_model_dir(str(model))
    return Path(model).expanduser()


def init_weights(model: nn.Module, std_for: Callable[[str], float | None]) -> None:
    """
    Random init: matrices normal(0, std_for(name)), biases 0, norms 1, LayerScale 0.1.

    A None std leaves that matrix to the caller, without drawing from the random stream.
    """
    for name, p in model.named_parameters():
        if name.endswith('scale_factor'):
            nn.init.constant_(p, 0.1)
        elif p.ndim == 1:
            nn.init.constant_(p, 1.0 if 'norm' in name and name.endswith('weight') else 0.0)
        elif std_for(name) is not None:
            nn.init.normal_(p, std=std_for(name))
