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

"""Image messages <-> numpy RGB, with every malformed input turned into a clear InputError."""

from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from ..policy.errors import InputError
from ..policy.preprocess import MAX_SIDE

CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
TO_RGB = {'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB,
          'mono8': cv2.COLOR_GRAY2RGB}
MAX_COMPRESSED_BYTES = 32 * 1024 * 1024


def image_to_rgb(msg: Image) -> np.ndarray:
    """Convert sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) to HxWx3 uint8 RGB."""
    if msg.encoding not in CHANNELS:
        raise InputError(f'unsupported image encoding {msg.encoding!r}; use one of '
                         f'{sorted(CHANNELS)}')
    c, h, w = CHANNELS[msg.encoding], msg.height, msg.width
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise InputError(f'image size {w}x{h} is outside 1..{MAX_SIDE}')
    if msg.step < w * c:
        raise InputError(f'image step {msg.step} is smaller than width*channels = {w * c}')
    if len(msg.data) < msg.step * h:
        raise InputError(f'image data has {len(msg.data)} bytes, step*height needs '
                         f'{msg.step * h}')
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * h).reshape(h, msg.step)
    pixels = rows[:, :w * c].reshape(h, w, c) if c > 1 else rows[:, :w]
    if msg.encoding == 'rgb8':
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(np.ascontiguousarray(pixels), TO_RGB[msg.encoding])


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode sensor_msgs/CompressedImage (JPEG or PNG) to HxWx3 uint8 RGB."""
    if not msg.data:
        raise InputError('compressed image is empty')
    if len(msg.data) > MAX_COMPRESSED_BYTES:
        raise InputError(f'compressed image of {len(msg.data)} bytes is too large')
    bgr = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f'cannot decode compressed image (format {msg.format!r})')
    h, w = bgr.shape[:2]
    if max(h, w) > MAX_SIDE:
        raise InputError(f'image size {w}x{h} is outside 1..{MAX_SIDE}')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rgb_to_image(rgb: np.ndarray, stamp, frame_id: str = 'camera') -> Image:
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding = 'rgb8'
    msg.step = rgb.shape[1] * 3
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def rgb_to_compressed(rgb: np.ndarray, stamp, frame_id: str = 'camera',
                      fmt: str = 'jpeg') -> CompressedImage:
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png',
                           cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f'cannot encode {fmt}')
    msg = CompressedImage()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.format = fmt
    msg.data = buf.tobytes()
    return msg
