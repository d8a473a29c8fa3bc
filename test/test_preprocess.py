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

"""Image preprocessing against PIL (the resize OpenVLA's processor uses) and by hand."""

import numpy as np
from PIL import Image
import pytest
import torch

from flashvla_ros.policy.errors import InputError
from flashvla_ros.policy.preprocess import center_crop, preprocess, resize_bicubic


@pytest.mark.parametrize('shape, max_diff, max_share', [
    ((480, 640), 1, 0.01),  # camera frames: downscaling, within one level of PIL
    ((100, 150), 1, 0.01),
    ((224, 224), 0, 0.0),  # no resize at all
    # Upscaling one axis: PIL and PyTorch clip bicubic overshoot between passes differently.
    ((300, 200), 8, 0.35),
])
def test_resize_matches_pil_bicubic(shape, max_diff, max_share):
    rng = np.random.default_rng(0)
    # Smooth content plus noise: both interpolation regimes matter.
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    base = (np.sin(xx / 17.0) + np.cos(yy / 11.0)) * 60 + 128
    img = np.clip(base[..., None] + rng.normal(0, 20, (*shape, 3)), 0, 255).astype(np.uint8)
    ours = resize_bicubic(img, 224).permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(img).resize((224, 224), Image.BICUBIC)).astype(np.float32)
    diff = np.abs(ours - pil)
    assert diff.max() <= max_diff
    assert (diff > 0).mean() <= max_share
    assert diff.mean() < 0.5


def test_normalisations_by_hand():
    img = np.full((224, 224, 3), (255, 0, 128), dtype=np.uint8)
    x = preprocess(img, 224)
    assert x.shape == (1, 6, 224, 224) and x.dtype == torch.float32
    got = x[0, :, 0, 0].tolist()
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225,
                (1 - 0.5) / 0.5, (0 - 0.5) / 0.5, (128 / 255 - 0.5) / 0.5]
    assert got == pytest.approx(expected, abs=1e-5)


def test_center_crop_keeps_ninety_percent_of_the_area():
    img = np.zeros((200, 100, 3), dtype=np.uint8)
    out = center_crop(img, 0.9)
    assert out.shape[:2] == (190, 95)
    assert abs(out.shape[0] * out.shape[1] / 20000 - 0.9) < 0.01


@pytest.mark.parametrize('bad, message', [
    (np.zeros((224, 224), np.uint8), 'HxWx3'),
    (np.zeros((224, 224, 4), np.uint8), 'HxWx3'),
    (np.zeros((224, 224, 3), np.float32), 'uint8'),
    (np.zeros((4, 224, 3), np.uint8), 'outside'),
    ([[0, 0, 0]], 'numpy array'),
])
def test_bad_images_are_rejected(bad, message):
    with pytest.raises(InputError, match=message):
        preprocess(bad, 224)
