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
Image preprocessing exactly as OpenVLA's processor does it, without PIL or torchvision.

resize-naive: one bicubic, antialiased resize of the whole frame to the model's square size
(aspect ratio is not kept), rounded to 8-bit as PIL's resize is, then two normalisations
stacked into 6 channels: DINOv2 (ImageNet mean/std) on 0-2 and SigLIP (0.5/0.5) on 3-5.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

DINO_MEAN = (0.485, 0.456, 0.406)
DINO_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
MIN_SIDE = 8
MAX_SIDE = 8192


def check_rgb(rgb: object) -> np.ndarray:
    """Accept HxWx3 uint8 RGB only; anything else is a clear InputError."""
    if not isinstance(rgb, np.ndarray):
        raise InputError(f'image must be a numpy array, got {type(rgb).__name__}')
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f'image must be HxWx3 RGB, got shape {rgb.shape}')
    if rgb.dtype != np.uint8:
        raise InputError(f'image must be uint8, got {rgb.dtype}')
    h, w = rgb.shape[:2]
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise InputError(f'image size {w}x{h} is outside {MIN_SIDE}..{MAX_SIDE} pixels per side')
    return rgb


def center_crop(rgb: np.ndarray, area_fraction: float) -> np.ndarray:
    """Keep the central `area_fraction` of the frame (same aspect ratio)."""
    scale = math.sqrt(area_fraction)
    h, w = rgb.shape[:2]
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    return rgb[top:top + ch, left:left + cw]


def resize_bicubic(rgb: np.ndarray, size: int) -> torch.Tensor:
    """
    HxWx3 uint8 -> [3, size, size] float in 0..255.

    PyTorch's uint8 antialiased bicubic follows PIL's fixed-point resampler (within 1 level
    when downscaling, the camera case).
    """
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].contiguous()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode='bicubic', antialias=True, align_corners=False
        )
    return x[0].float()


def preprocess(rgb: np.ndarray, image_size: int, crop_area: float | None = None) -> torch.Tensor:
    """HxWx3 uint8 RGB -> [1, 6, S, S] float32 pixel values for the fused backbone."""
    rgb = check_rgb(rgb)
    if crop_area is not None:
        rgb = center_crop(rgb, crop_area)
    x = resize_bicubic(rgb, image_size) / 255.0
    mean = torch.tensor(DINO_MEAN + SIGLIP_MEAN).view(6, 1, 1)
    std = torch.tensor(DINO_STD + SIGLIP_STD).view(6, 1, 1)
    return ((torch.cat([x, x], dim=0) - mean) / std)[None]
