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
Weight-only int8 and int4 quantization of linear layers, with torchao's tensor subclasses.

    quantize: none | int8 | int4        (the node's parameter, load_policy's argument)
    int8[:all], int4[:all]              (bench and tools: also the vision towers, the
                                         projector and the LM head)

By default only the decoder's linear layers are quantized (q/k/v/o, gate/up/down: 86% of a
7B model's weights); the diffusion head always stays float32, as CogACT deploys it. int8 is
per row on CPU and CUDA; int4 is groups of 128 with a zero point, tinygemm-packed on CUDA
(sm_80+, bfloat16) and stored unpacked in int8 on CPU (int4 numerics, int8 memory). A format
is served only where it has a kernel, and refused otherwise with what works instead; nothing
ever falls back to another precision. Per device, sizes and measurements:
docs/QUANTIZATION.md.

torchao is imported only when a format other than `none` is asked for, so the node without
it still runs full precision (`pip install 'flashvla_ros[quantize]'` brings it).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
import importlib
import importlib.util
import logging
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

FORMATS = ('none', 'int8', 'int4')
SCOPES = ('decoder', 'all')  # all: also the vision towers, the projector and the LM head
INT4_GROUP = 128  # torchao's and gpt-fast's default group for int4 weights
CUDA_INT4_GROUPS = (128, 64, 32)  # the tinygemm kernel's groups (256 too, never needed here)
MIN_INT4_GROUP = 32  # a smaller group stores a scale and a zero for a handful of weights
INSTALL_HINT = "pip install 'flashvla_ros[quantize]' (torchao)"
TORCHAO_SERIES = '0.18.'  # the tensor classes below are this release's
TENSOR_FORMATS = {'Int8Tensor': 'int8', 'IntxUnpackedToInt8Tensor': 'int4',
                  'Int4TilePackedTo4dTensor': 'int4'}


@dataclass(frozen=True)
class Quantization:
    """What to quantize: a format and a scope (`none` quantizes nothing)."""

    format: str = 'none'
    scope: str = 'decoder'

    @classmethod
    def parse(cls, spec: str | Quantization | None) -> Quantization:
        """Read `FORMAT[:SCOPE]` (`int8`, `int4:all`); ValueError names what is accepted."""
        if isinstance(spec, Quantization):
            return spec
        fmt, _, scope = (spec or 'none').strip().partition(':')
        if fmt not in FORMATS:
            raise ValueError(f'quantize {spec!r}: unknown format; use one of {list(FORMATS)}')
        if scope and scope not in SCOPES:
            raise ValueError(f'quantize {spec!r}: unknown scope {scope!r}; use one of '
                             f'{list(SCOPES)} (decoder is the default)')
        if fmt == 'none' and scope:
            raise ValueError(f'quantize {spec!r}: none takes no scope')
        return cls(fmt, scope or 'decoder')

    @property
    def enabled(self) -> bool:
        return self.format != 'none'

    def __str__(self) -> str:
        return self.format if self.scope == 'decoder' else f'{self.format}:{self.scope}'

    def covers(self, name: str) -> bool:
        """Whether the linear layer `name` (a module path of OpenVLA) is quantized."""
        if not self.enabled or name.startswith('action_model.'):
            return False
        if name.startswith('language_model.model.layers.'):
            return True
        return self.scope == 'all' and (name == 'language_model.lm_head' or
                                        name.startswith(('projector.', 'vision_backbone.')))

    def check(self, device: torch.device, dtype: torch.dtype) -> None:
        """
        Raise ValueError when this format has no kernel for `device` and `dtype` here.

        Said at configure, with what works instead, before any weight is read.
        """
        if not self.enabled:
            return
        if importlib.util.find_spec('torchao') is None:
            raise ValueError(f'quantize {self}: torchao is not installed; {INSTALL_HINT}, or '
                             'use quantize: none')
        try:  # installed is not enough: it must import with this torch, and be the version
            _torchao()  # first: the quiet import
            version = getattr(importlib.import_module('torchao'), '__version__', '?')
        except Exception as exc:  # any import failure is the same refusal
            raise ValueError(f'quantize {self}: torchao does not import with torch '
                             f'{torch.__version__}: {exc}; {INSTALL_HINT}') from exc
        if not version.startswith(TORCHAO_SERIES):
            raise ValueError(f'quantize {self}: torchao {version} is installed; this runtime '
                             f'knows the tensor formats of torchao {TORCHAO_SERIES}x')
        if device.type == 'cuda':
            major, minor = torch.cuda.get_device_capability(device)
            if self.format == 'int4' and major < 8:
                raise ValueError(f'quantize int4 on CUDA needs compute capability 8.0 or newer '
                                 f'(tinygemm); this GPU is {major}.{minor}: use int8')
            if self.format == 'int4' and dtype != torch.bfloat16:
                raise ValueError(f'quantize int4 on CUDA runs in bfloat16 only (tinygemm), not '
                                 f'{str(dtype).removeprefix("torch.")}: set dtype: bfloat16, '
                                 'or use int8')
        elif device.type != 'cpu':
            raise ValueError(f'quantize {self}: no kernels for device {device}; use cpu or cuda')

    def linear_names(self, model: nn.Module, device: torch.device | None = None) -> list[str]:
        """
        Name the linear layers of `model` this quantization replaces.

        With `device`, int4 first checks that every one of them has a group there (on the meta
        model, before a weight is read): a refusal never comes after minutes of loading.
        """
        names = [name for name, m in model.named_modules()
                 if isinstance(m, nn.Linear) and self.covers(name)]
        if device is not None and self.format == 'int4':
            modules = dict(model.named_modules())
            for name in names:
                try:
                    int4_group(modules[name].in_features, device)
                except ValueError as exc:
                    raise ValueError(f'{exc} ({name})') from exc
        return names


def quantize_arg(spec: str) -> str:
    """Read a `--quantize FORMAT[:SCOPE]` command-line argument; argparse says what is wrong."""
    try:
        return str(Quantization.parse(spec))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def int4_group(in_features: int, device: torch.device) -> int:
    """
    Choose the int4 group along a weight's input features: 128 where it divides them.

    Else the largest of CUDA's 64 and 32 that does; on CPU, failing those, the largest divisor
    from 32 up to 128 (the embedded models' 344-wide down projections: 86). CUDA's kernel has
    no other group, and a smaller group would store a scale and a zero for a handful of
    weights: a width that none fits is refused (ValueError), with what works instead.
    """
    for group in CUDA_INT4_GROUPS:
        if in_features % group == 0:
            return group
    fits = [g for g in range(MIN_INT4_GROUP, INT4_GROUP + 1) if in_features % g == 0]
    if device.type == 'cuda' or not fits:
        where = list(CUDA_INT4_GROUPS) if device.type == 'cuda' \
            else f'{MIN_INT4_GROUP}..{INT4_GROUP}'
        raise ValueError(f'quantize int4 on {device.type.upper()}: a layer with {in_features} '
                         f'input features fits no group of {where}; use int8')
    return max(fits)


def _torchao() -> Any:
    """
    Import torchao's quantization API, quietly.

    Its import warns about every optional kernel library this machine lacks (CUDA ones on a
    CPU), none of which the formats here use; what they need is checked by `check`.
    """
    loggers = [logging.getLogger(name) for name in ('torchao', 'torch.utils._pytree')]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        import torchao.quantization as api
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)
    return api


def _config(fmt: str, in_features: int, device: torch.device) -> Any:
    api = _torchao()
    if fmt == 'int8':
        return api.Int8WeightOnlyConfig(granularity=api.PerRow(), set_inductor_config=False)
    group = int4_group(in_features, device)
    if device.type == 'cuda':
        return api.Int4WeightOnlyConfig(group_size=group,
                                        int4_packing_format='tile_packed_to_4d',
                                        set_inductor_config=False)
    # Each group's min and max map to 16 levels with a zero point, as tinygemm's groups do on
    # CUDA (there a float zero point, here an integer one): CPU-measured success carries over.
    return api.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=api.PerGroup(group),
                                    mapping_type=api.MappingType.ASYMMETRIC)


def quantize_weight(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """
    Return `weight` (out x in, a plain tensor) quantized to `fmt`, on its own device.

    Raise ValueError where torchao would leave it unquantized (its int4 path skips, and only
    logs, a shape it cannot group): never a silent full-precision layer.
    """
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device='meta')
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    _torchao().quantize_(linear, _config(fmt, weight.shape[1], weight.device))
    quantized = linear.weight
    if not is_quantized(quantized):
        raise ValueError(f'quantize {fmt}: torchao left a {list(weight.shape)} weight '
                         'unquantized')
    return quantized


def quantize_linear(linear: nn.Linear, fmt: str) -> None:
    """Replace `linear`'s weight by its quantized form, in place (the bias stays)."""
    linear.weight = nn.Parameter(quantize_weight(linear.weight, fmt), requires_grad=False)


def quantize_model(model: nn.Module, quantization: Quantization) -> int:
    """Quantize an in-memory model's covered linear layers in place; return how many."""
    device = next(model.parameters()).device
    names = set(quantization.linear_names(model, device))
    for name, module in model.named_modules():
        if name in names:
            quantize_linear(module, quantization.format)
    return len(names)


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether `weight` is a torchao quantized tensor (not a plain one)."""
    return type(weight) not in (torch.Tensor, nn.Parameter)


def weight_format(weight: torch.Tensor) -> str:
    """Name the format of a (possibly quantized) weight: none, int8 or int4."""
    if not is_quantized(weight):
        return 'none'
    name = type(weight).__name__
    if name not in TENSOR_FORMATS:  # a torchao release with other classes: never guess
        raise TypeError(f'{name}: not a weight format of torchao {TORCHAO_SERIES}x')
    return TENSOR_FORMATS[name]


def dequantize(weight: torch.Tensor) -> torch.Tensor:
    """
    Return a quantized weight's values as a plain tensor (out x in), in its dtype.

    tinygemm's packed int4 has no dequantize of its own: its layer applied to the identity is
    its weight, transposed, exactly (one non-zero product per output).
    """
    if type(weight).__name__ != 'Int4TilePackedTo4dTensor':
        return weight.dequantize()
    eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
    return F.linear(eye, weight).T.contiguous()


def select(weight: torch.Tensor, index: torch.Tensor, dim: int,
           full_precision: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """
    Return the rows (`dim` 0) or columns (`dim` 1) of `weight` at `index`, as dense weights.

    A quantized weight keeps its format: int8 selections are its own values with their
    per-row scales, exactly; int4 ones are quantized from `full_precision()` (the weight as
    the checkpoint holds it) where given, as if the selection had been quantized at load,
    else again from their dequantized values: columns then get new groups mixing the old
    ones, one more rounding.
    """
    fmt = weight_format(weight)
    if fmt == 'none':
        return weight.index_select(dim, index).contiguous()
    if fmt == 'int8' and dim == 0:
        return weight[index]  # torchao indexes an Int8Tensor's rows with their scales
    if fmt == 'int8':  # columns: the same int8 values under the same per-row scales
        qdata = weight.qdata.index_select(1, index).contiguous()
        return type(weight)(qdata, weight.scale, [1, qdata.shape[1]], weight.dtype,
                            zero_point=weight.zero_point)
    values = dequantize(weight) if full_precision is None \
        else full_precision().to(weight.device, weight.dtype)
    return quantize_weight(values.index_select(dim, index).contiguous(), fmt)


def weight_bytes(*modules: nn.Module) -> int:
    """Bytes the weights of `modules` occupy, quantized ones as stored (data, scales, zeros)."""
    total = 0
    for p in (p for m in modules for p in m.parameters()):
        if is_quantized(p):
            names, _ = p.__tensor_flatten__()
            total += sum(getattr(p, n).numel() * getattr(p, n).element_size() for n in names)
        else:
            total += p.numel() * p.element_size()
    return total
