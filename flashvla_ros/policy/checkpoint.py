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
Load and save OpenVLA checkpoints in the Hugging Face layout, tensor by tensor.

Layout: `config.json` (with `text_config` and `norm_stats`), `model.safetensors` or shards
listed in `model.safetensors.index.json`, and the tokenizer files. The model is built on the
meta device, allocated once in the target dtype and device, and every tensor is copied
straight in: peak memory is the model in its target dtype plus one tensor (a 7B checkpoint
loads in bf16 without an fp32 copy). A CogACT diffusion head (`action_model.*`) stays float32
whatever the VLM's dtype, loaded and stored, as CogACT deploys it beside a bf16 VLM.

Quantized loading (`quantize='int8'`, `'int4'`) streams: the layers to quantize stay on the
meta device, and each weight is quantized as it is read, so the full-precision model never
exists: peak memory is the quantized model plus one tensor (`scripts/measure_load.py`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
import hashlib
import json
from pathlib import Path
import shutil
import time

from safetensors import safe_open
from safetensors.torch import save_file
import torch
from torch import nn

from .config import OpenVLAConfig
from .errors import CheckpointError
from .openvla import OpenVLA, OpenVLAPolicy
from .quantize import Quantization, quantize_weight
from .tokenizer import TOKENIZER_FILES, load_tokenizer
from .vision import unused_tower_keys

CONFIG = 'config.json'
WEIGHTS = 'model.safetensors'
INDEX = 'model.safetensors.index.json'
DTYPES = {
    'float32': torch.float32, 'fp32': torch.float32,
    'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16,
    'float16': torch.float16, 'fp16': torch.float16,
}
HEAD = 'action_model.'  # the diffusion head's parameters: float32 at any VLM dtype
HEAD_DTYPE = torch.float32


@dataclass
class LoadReport:
    files: list[str]
    loaded: int = 0
    skipped_unused: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    quantized: int = 0  # linear layers whose weights were quantized while loading
    seconds: float = 0.0


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f'unknown dtype {name!r}; use one of {sorted(DTYPES)}')
    return DTYPES[name]


def parse_device(name: str | torch.device) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f'unknown device {name!r}; use "cpu" or "cuda[:N]"') from exc
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {name!r} requested but CUDA is not available here')
    if device.type not in ('cpu', 'cuda'):
        raise ValueError(f'device {name!r} is not supported; use "cpu" or "cuda[:N]"')
    return device


def read_config(path: str | Path) -> OpenVLAConfig:
    path = _checkpoint_dir(path)
    file = path / CONFIG
    if not file.is_file():
        raise CheckpointError(f'{path}: missing {CONFIG} (the Hugging Face OpenVLA layout)')
    return OpenVLAConfig.from_dict(read_json(file), source=str(file))


def read_json(file: Path) -> dict:
    """Read a JSON object from `file`; CheckpointError names the file when it is not one."""
    if not file.is_file():
        raise CheckpointError(f'{file}: missing')
    try:
        raw = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f'{file}: not valid JSON: {exc}') from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f'{file}: must hold a JSON object')
    return raw


def weight_files(path: str | Path) -> list[Path]:
    """List the safetensors files of a checkpoint: the single file or every indexed shard."""
    path = _checkpoint_dir(path)
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text())['weight_map']
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f'{path / INDEX}: needs a "weight_map" object: {exc}') from exc
        files = [path / name for name in dict.fromkeys(weight_map.values())]
    elif (path / WEIGHTS).is_file():
        files = [path / WEIGHTS]
    else:
        raise CheckpointError(f'{path}: no weights (expected {WEIGHTS} or {INDEX} with shards)')
    for file in files:
        if not file.is_file():
            raise CheckpointError(f'{file}: shard listed in {INDEX} is missing')
    return files


def expand_path(path: str | Path) -> Path:
    """
    Return `path` with a leading `~` or `~user` expanded.

    Shells leave `~` alone after `model:=` or `--model=`, so every path a user types that
    reaches the runtime goes through this.
    """
    return Path(path).expanduser()


def _checkpoint_dir(path: str | Path) -> Path:
    path = expand_path(path)
    if not path.is_dir():
        raise CheckpointError(f'{path}: checkpoint directory does not exist')
    return path


def known_unused(cfg: OpenVLAConfig) -> tuple[str, ...]:
    """Checkpoint keys inference never reads: ViT tails and heads, cached rotary tables."""
    prefixes = []
    for name, tower in zip(('featurizer', 'fused_featurizer'), cfg.vision, strict=True):
        prefixes += [f'vision_backbone.{name}.{k}' for k in unused_tower_keys(tower)]
    return tuple(prefixes)


def summarise_keys(what: str, keys: list[str], groups: int = 8) -> str:
    """
    Summarise a list of weight names by module for an error message: counts, a few names.

    Names are grouped by their first two components (`language_model.model.*`); a group of
    three or fewer is listed in full, a larger one as its prefix and count. At most `groups`
    groups are shown, largest first, so the message stays a line whatever the list's length.
    """
    prefixes = {key: '.'.join(key.split('.')[:2]) for key in keys}
    counts = Counter(prefixes.values())
    shown = []
    for prefix, count in counts.most_common(groups):
        if count <= 3:
            shown += [key for key in keys if prefixes[key] == prefix]
        else:
            shown.append(f'{prefix}.* ({count})')
    rest = len(counts) - min(groups, len(counts))
    tail = f', and {rest} more groups' if rest else ''
    noun = 'weight' if len(keys) == 1 else 'weights'
    return f'{what} {len(keys)} {noun}: ' + ', '.join(shown) + tail


def _our_name(key: str) -> str:
    # timm 1.x names LayerScale's parameter `gamma`; OpenVLA's checkpoint calls it `scale_factor`.
    if key.endswith('.gamma') and ('.ls1.' in key or '.ls2.' in key):
        return key[: -len('gamma')] + 'scale_factor'
    return key


def load_model(
    path: str | Path, device: str | torch.device = 'cpu', dtype: str | torch.dtype = 'float32',
    quantize: str | Quantization | None = None,
) -> tuple[OpenVLA, LoadReport]:
    """
    Build the model for `path` and fill it from its safetensors files.

    Every parameter is allocated in `dtype` except a diffusion head's (`action_model.*`),
    which stays float32 (CogACT's deployment: fp32 head beside a bf16 VLM). `quantize`
    (`policy/quantize.py`): the covered linear layers' weights are quantized as they are read.
    """
    start = time.perf_counter()
    path = expand_path(path)
    cfg = read_config(path)
    files = weight_files(path)
    device, dtype = parse_device(device), parse_dtype(dtype)
    quant = Quantization.parse(quantize)
    quant.check(device, dtype)

    with torch.device('meta'):
        model = OpenVLA(cfg)
    model = model.to(dtype=dtype)
    head = getattr(model, 'action_model', None)
    if head is not None:
        head.to(dtype=HEAD_DTYPE)
    names = set(quant.linear_names(model, device))  # int4 groups checked before any read
    quantized = {name: m for name, m in model.named_modules() if name in names}
    for name, module in model.named_modules():
        if name not in quantized:
            module.to_empty(device=device, recurse=False)
        elif module.bias is not None:  # the weight waits on the meta device for its file
            module.bias = nn.Parameter(torch.empty_like(module.bias, device=device),
                                       requires_grad=False)
    targets = model.state_dict()  # allocated, or on the meta device until quantized
    unused = known_unused(cfg)
    report = LoadReport(files=[str(f) for f in files])
    filled: set[str] = set()
    # safetensors reads straight to the GPU when asked; the copy casts to the target dtype.
    read_device = str(device) if device.type == 'cuda' else 'cpu'
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), framework='pt', device=read_device) as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                    name = _our_name(key)
                    if name not in targets:
                        if key.startswith(unused) or key.endswith('rotary_emb.inv_freq'):
                            report.skipped_unused.append(key)
                        else:
                            report.unexpected.append(key)
                        continue
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != tuple(targets[name].shape):
                        raise CheckpointError(
                            f'{file.name}: "{key}" has shape {list(shape)}, the config implies '
                            f'{list(targets[name].shape)}'
                        )
                    module = quantized.get(name.removesuffix('.weight'))
                    if module is None:
                        targets[name].copy_(f.get_tensor(key))
                    else:
                        weight = f.get_tensor(key).to(device=device, dtype=dtype)
                        module.weight = nn.Parameter(quantize_weight(weight, quant.format),
                                                     requires_grad=False)
                        report.quantized += 1
                    filled.add(name)
    missing = [k for k in targets if k not in filled]
    if missing:
        raise CheckpointError(
            f'{Path(path)}: {summarise_keys("missing", missing)} (from '
            f'{[f.name for f in files]})'
        )
    report.loaded = len(filled)
    report.seconds = time.perf_counter() - start
    return model.eval(), report


def save_checkpoint(
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor],
    cfg: OpenVLAConfig,
    tokenizer_dir: str | Path | None = None,
    dtype: str | torch.dtype | None = 'bfloat16',
    max_shard_bytes: int = 5 * 1024**3,
) -> Path:
    """
    Write config.json, weights (sharded with an index past `max_shard_bytes`), tokenizer.

    `dtype` is the stored dtype of the floating-point tensors (None: as given), except the
    diffusion head's (`action_model.*`), stored float32 whatever the VLM's dtype.
    """
    out = expand_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cast = parse_dtype(dtype) if dtype is not None else None

    def stored(key: str, v: torch.Tensor) -> torch.Tensor:
        if cast is not None and v.is_floating_point():
            v = v.to(HEAD_DTYPE if key.startswith(HEAD) else cast)
        return v.detach().to('cpu').contiguous()

    tensors = {k: stored(k, v) for k, v in state_dict.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    metadata = {'format': 'pt'}
    for stale in [*out.glob('model*.safetensors'), out / INDEX]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(out / WEIGHTS), metadata=metadata)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, start=1):
            name = f'model-{i:05d}-of-{len(shards):05d}.safetensors'
            save_file(shard, str(out / name), metadata=metadata)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {'metadata': {'total_size': total}, 'weight_map': weight_map}
        (out / INDEX).write_text(json.dumps(index, indent=2) + '\n')
    (out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + '\n')
    tokenizer_dir = None if tokenizer_dir is None else expand_path(tokenizer_dir)
    if tokenizer_dir is not None and tokenizer_dir.resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy2(tokenizer_dir / name, out / name)
    return out


def load_policy(
    path: str,
    device: str = 'cpu',
    dtype: str = 'float32',
    unnorm_key: str | None = None,
    center_crop: bool = False,
    static_cache: bool = False,
    compile: bool = False,
    quantize: str | Quantization | None = None,
) -> OpenVLAPolicy:
    """Load a local OpenVLA checkpoint directory and its tokenizer into a ready policy."""
    model, _report = load_model(path, device=device, dtype=dtype, quantize=quantize)
    tokenizer = load_tokenizer(path)
    policy = OpenVLAPolicy(model, tokenizer, unnorm_key=unnorm_key, center_crop=center_crop,
                           static_cache=static_cache, compile=compile)
    policy.checkpoint_dir = _checkpoint_dir(path)
    policy.quantization = Quantization.parse(quantize)
    if policy.quantization.format == 'int4':  # int4 selections re-quantize from the file
        policy.weight_source = lambda name: read_tensor(policy.checkpoint_dir,
                                                        'language_model.' + name)
    return policy


def read_tensor(path: str | Path, key: str) -> torch.Tensor:
    """Read one tensor of a checkpoint by its key, from whichever shard holds it."""
    for file in weight_files(path):
        with safe_open(str(file), framework='pt', device='cpu') as f:
            if key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                return f.get_tensor(key)
    raise CheckpointError(f'{path}: no tensor {key!r}')


def weights_digest(path: str | Path) -> str:
    """
    Name a checkpoint's weights: sha256 over its weight files' bytes, in file-name order.

    What a calibration file records to say which model it belongs to (the same bytes in any
    directory, under any dtype they are loaded in).
    """
    digest = hashlib.sha256()
    for file in sorted(weight_files(path), key=lambda f: f.name):
        with open(file, 'rb') as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()
