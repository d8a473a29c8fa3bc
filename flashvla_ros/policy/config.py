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
Typed model configuration, read from an OpenVLA (Prismatic) `config.json`.

The real OpenVLA `config.json` names its vision towers by timm model id and leaves most Llama
sizes at their `LlamaConfig` defaults (Llama-2-7B). We resolve both here, so the rest of the
runtime sees only explicit dataclasses. Small models (tests, the trained default) add a
`vision_tower_specs` list with explicit tower sizes; everything else is the real schema.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .dit import DiTConfig
from .errors import CheckpointError


@dataclass(frozen=True)
class ViTConfig:
    """One timm-style ViT tower. Only the first `depth - 1` blocks run (second-to-last output)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int = 14
    image_size: int = 224
    class_token: bool = True
    reg_tokens: int = 0
    layer_scale: bool = False
    attn_pool: bool = False
    ln_eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @property
    def used_blocks(self) -> int:
        return self.depth - 1


@dataclass(frozen=True)
class TextConfig:
    """A Llama decoder. Defaults are Llama-2-7B, as `LlamaConfig` has them."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            object.__setattr__(self, 'num_key_value_heads', self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, 'head_dim', self.hidden_size // self.num_attention_heads)


# Towers OpenVLA checkpoints name by timm id (sizes as timm builds them at 224 px).
KNOWN_TIMM_TOWERS: dict[str, ViTConfig] = {
    'vit_large_patch14_reg4_dinov2': ViTConfig(
        embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, reg_tokens=4, layer_scale=True
    ),
    'vit_so400m_patch14_siglip_224': ViTConfig(
        embed_dim=1152, depth=27, num_heads=16, mlp_dim=4304, class_token=False, attn_pool=True
    ),
}

SUPPORTED_RESIZE = ('resize-naive',)
SUPPORTED_PROJECTORS = ('no-align+fused-gelu-mlp', 'fused-gelu-mlp')
# What an action's motion dimensions are (config.json "action_space"): end-effector deltas
# (OpenVLA, CogACT, LIBERO's OSC_POSE) or absolute joint positions named by "joint_names".
EE_DELTA, JOINT_POSITION = 'ee_delta', 'joint_position'
ACTION_SPACES = (EE_DELTA, JOINT_POSITION)


@dataclass(frozen=True)
class Execution:
    """
    How a model is best executed, as measured by whoever trained it (`config.json` "execution").

    Used where the user leaves the matching node parameter (and bench flag) unset: a model
    trained for open-loop chunks knows how many of each chunk to run better than a default.
    """

    chunk_steps: int | None = None  # execute mode: actions of each chunk run before the next
    measured: str = ''  # where the recommendation was measured (for people)

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> Execution:
        if not isinstance(raw, dict) or set(raw) - {'chunk_steps', 'measured'}:
            raise CheckpointError(f'{source}: "execution" must be a mapping with chunk_steps '
                                  f'and measured, not {raw!r}')
        steps = raw.get('chunk_steps')
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                                  or steps < 0):
            raise CheckpointError(f'{source}: "execution" chunk_steps must be an integer >= 0, '
                                  f'not {steps!r}')
        return cls(steps, str(raw.get('measured', '')))

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, '')}


@dataclass(frozen=True)
class OpenVLAConfig:
    """Everything the runtime needs to build and run an OpenVLA-architecture checkpoint."""

    vision: tuple[ViTConfig, ...]
    text: TextConfig
    norm_stats: dict[str, Any]
    n_action_bins: int = 256
    image_resize_strategy: str = 'resize-naive'
    arch_specifier: str = 'no-align+fused-gelu-mlp'
    timm_model_ids: tuple[str, ...] = ()
    # A CogACT-style diffusion action head (None: OpenVLA's action tokens).
    action_model: DiTConfig | None = None
    execution: Execution = Execution()  # the recommended execution (none: the node's defaults)
    action_space: str = EE_DELTA  # EE_DELTA or JOINT_POSITION
    # JOINT_POSITION: the joint each leading action dimension commands (the last is the gripper)
    action_joint_names: tuple[str, ...] = ()

    @property
    def image_size(self) -> int:
        return self.vision[0].image_size

    @property
    def num_patches(self) -> int:
        return self.vision[0].num_patches

    @property
    def vision_dim(self) -> int:
        return sum(t.embed_dim for t in self.vision)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = 'config.json') -> OpenVLAConfig:
        """Parse and validate; every error names the key in `source` that is wrong."""

        def need(key: str) -> Any:
            if key not in raw:
                raise CheckpointError(f'{source}: missing key "{key}"')
            return raw[key]

        if raw.get('use_fused_vision_backbone') is False:
            raise CheckpointError(
                f'{source}: "use_fused_vision_backbone" is false; only fused DINOv2+SigLIP '
                'OpenVLA checkpoints are supported'
            )
        arch = raw.get('arch_specifier', 'no-align+fused-gelu-mlp')
        if arch not in SUPPORTED_PROJECTORS:
            raise CheckpointError(
                f'{source}: "arch_specifier" is {arch!r}; supported: {list(SUPPORTED_PROJECTORS)}'
            )
        resize = raw.get('image_resize_strategy', 'resize-naive')
        if resize not in SUPPORTED_RESIZE:
            raise CheckpointError(
                f'{source}: "image_resize_strategy" is {resize!r}; '
                f'supported: {list(SUPPORTED_RESIZE)}'
            )

        timm_ids = tuple(need('timm_model_ids'))
        image_sizes = list(raw.get('image_sizes', [224] * len(timm_ids)))
        specs = raw.get('vision_tower_specs')
        if len(image_sizes) != len(timm_ids):
            raise CheckpointError(
                f'{source}: "image_sizes" has {len(image_sizes)} entries for '
                f'{len(timm_ids)} "timm_model_ids"'
            )
        towers = []
        for i, timm_id in enumerate(timm_ids):
            if specs is not None:
                tower = _vit_from_spec(specs, i, source)
            else:
                base = timm_id.split('.')[0]
                if base not in KNOWN_TIMM_TOWERS:
                    raise CheckpointError(
                        f'{source}: unknown vision tower "timm_model_ids[{i}]" = {timm_id!r}; '
                        f'known: {sorted(KNOWN_TIMM_TOWERS)} (or give "vision_tower_specs")'
                    )
                tower = KNOWN_TIMM_TOWERS[base]
            towers.append(replace(tower, image_size=int(image_sizes[i])))
        if len(towers) != 2:
            raise CheckpointError(f'{source}: a fused backbone needs 2 towers, got {len(towers)}')
        if len({(t.image_size, t.patch_size) for t in towers}) != 1:
            raise CheckpointError(f'{source}: fused towers must share image and patch size')
        for i, t in enumerate(towers):
            if t.image_size % t.patch_size or t.depth < 2 or t.embed_dim % t.num_heads:
                raise CheckpointError(f'{source}: vision tower {i} has inconsistent sizes {t}')

        text = _text_from_dict(need('text_config'), source)
        norm_stats = need('norm_stats')
        if not isinstance(norm_stats, dict) or not norm_stats:
            raise CheckpointError(f'{source}: "norm_stats" must be a non-empty mapping')
        n_bins = int(raw.get('n_action_bins', 256))
        if not 2 <= n_bins <= text.vocab_size:
            raise CheckpointError(f'{source}: "n_action_bins" = {n_bins} is out of range')
        head = raw.get('action_model')
        space, joint_names = _action_space(raw, source)
        return cls(
            vision=tuple(towers),
            text=text,
            norm_stats=norm_stats,
            n_action_bins=n_bins,
            image_resize_strategy=resize,
            arch_specifier=arch,
            timm_model_ids=timm_ids,
            action_model=None if head is None else DiTConfig.from_dict(head, source),
            execution=Execution.from_dict(raw.get('execution', {}), source),
            action_space=space,
            action_joint_names=joint_names,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the `config.json` content for this model, in OpenVLA's schema."""
        text = asdict(self.text)
        text['model_type'] = 'llama'
        head = {} if self.action_model is None else {'action_model': self.action_model.to_dict()}
        execution = self.execution.to_dict()
        joints = {} if self.action_space == EE_DELTA else {
            'action_space': self.action_space, 'joint_names': list(self.action_joint_names)}
        return {
            **head,
            **({'execution': execution} if execution else {}),
            **joints,
            'architectures': ['OpenVLAForActionPrediction' if self.action_model is None
                              else 'CogACT'],
            'model_type': 'openvla',
            'arch_specifier': self.arch_specifier,
            'image_resize_strategy': self.image_resize_strategy,
            'image_sizes': [t.image_size for t in self.vision],
            'timm_model_ids': list(self.timm_model_ids),
            'timm_override_act_layers': [None] * len(self.vision),
            'use_fused_vision_backbone': True,
            'vision_tower_specs': [
                {k: v for k, v in asdict(t).items() if k != 'image_size'} for t in self.vision
            ],
            'llm_backbone_id': 'llama2-custom',
            'llm_max_length': self.text.max_position_embeddings,
            'n_action_bins': self.n_action_bins,
            'norm_stats': self.norm_stats,
            'pad_token_id': self.text.pad_token_id,
            'pad_to_multiple_of': 64,
            'text_config': text,
            'torch_dtype': 'bfloat16',
        }


def _action_space(raw: dict[str, Any], source: str) -> tuple[str, tuple[str, ...]]:
    """Return the action kind and, for joint positions, the joint of each motion dimension."""
    space = raw.get('action_space', EE_DELTA)
    if space not in ACTION_SPACES:
        raise CheckpointError(f'{source}: "action_space" is {space!r}; supported: '
                              f'{list(ACTION_SPACES)}')
    names = raw.get('joint_names', [])
    if space == EE_DELTA:
        return space, ()
    if not isinstance(names, list) or not names \
            or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise CheckpointError(f'{source}: "action_space" joint_position needs "joint_names", '
                              f'the distinct joints of the leading action dimensions, not '
                              f'{names!r}')
    return space, tuple(names)


def _vit_from_spec(specs: Any, i: int, source: str) -> ViTConfig:
    try:
        spec = dict(specs[i])
    except (IndexError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f'{source}: "vision_tower_specs[{i}]" is missing or not a mapping'
        ) from exc
    allowed = {f.name for f in fields(ViTConfig)}
    unknown = set(spec) - allowed
    if unknown:
        raise CheckpointError(
            f'{source}: "vision_tower_specs[{i}]" has unknown keys {sorted(unknown)}'
        )
    try:
        return ViTConfig(**spec)
    except TypeError as exc:
        raise CheckpointError(f'{source}: "vision_tower_specs[{i}]": {exc}') from exc


def _text_from_dict(raw: Any, source: str) -> TextConfig:
    if not isinstance(raw, dict):
        raise CheckpointError(f'{source}: "text_config" must be a mapping')
    model_type = raw.get('model_type', 'llama')
    if model_type != 'llama':
        raise CheckpointError(
            f'{source}: "text_config.model_type" is {model_type!r}; need "llama"'
        )
    rope = raw.get('rope_parameters') or {}
    rope_type = rope.get('rope_type', 'default')
    if raw.get('rope_scaling') or rope_type != 'default':
        raise CheckpointError(f'{source}: "text_config" asks for RoPE scaling (unsupported)')
    known = {f.name for f in fields(TextConfig)}
    values = {k: v for k, v in raw.items() if k in known}
    if 'rope_theta' in rope:
        values['rope_theta'] = rope['rope_theta']
    text = TextConfig(**values)
    if text.num_attention_heads % text.num_key_value_heads:
        raise CheckpointError(f'{source}: "text_config" heads are not a multiple of kv heads')
    return text
