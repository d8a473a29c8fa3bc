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

import struct

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
import simplejpeg

from ..policy.errors import InputError
from ..policy.preprocess import MAX_SIDE

CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
TO_RGB = {'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB, 'bgra8': cv2.COLOR_BGRA2RGB,
          'mono8': cv2.COLOR_GRAY2RGB}
MAX_COMPRESSED_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
JPEG_SOI = b'\xff\xd8'


def check_size(width: int, height: int, max_pixels: int) -> None:
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise InputError(f'image size {width}x{height} is outside 1..{MAX_SIDE}')
    if width * height > max_pixels:
        raise InputError(f'image of {width}x{height} = {width * height} pixels is above '
                         f'max_image_pixels {max_pixels}')


def image_to_rgb(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Convert sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) to HxWx3 uint8 RGB."""
    if msg.encoding not in CHANNELS:
        raise InputError(f'unsupported image encoding {msg.encoding!r}; use one of '
                         f'{sorted(CHANNELS)}')
    c, h, w = CHANNELS[msg.encoding], msg.height, msg.width
    check_size(w, h, max_pixels)
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


def compressed_size(data) -> tuple[str, int, int]:
    """Read (format, width, height) from a PNG or JPEG header, without decoding the pixels."""
    head = bytes(data[:24])  # any buffer: bytes, or the array.array rclpy gives
    if head.startswith(PNG_SIGNATURE):
        if len(head) < 24 or head[12:16] != b'IHDR':
            raise InputError('PNG without an IHDR header')
        width, height = struct.unpack('>II', head[16:24])
        return 'png', width, height
    if head.startswith(JPEG_SOI):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as exc:
            raise InputError(f'corrupt JPEG header: {exc}') from exc
        return 'jpeg', width, height
    raise InputError(f'compressed image is neither PNG nor JPEG (starts {head[:4]!r})')


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """
    Decode sensor_msgs/CompressedImage (JPEG or PNG) to HxWx3 uint8 RGB.

    The size comes from the header and is checked before any pixel is decoded (a small file
    can declare a huge image). JPEG is decoded strictly: data the decoder reports as corrupt
    or truncated is rejected instead of being filled in (OpenCV would warn and return it).
    """
    data = msg.data
    if not data:
        raise InputError('compressed image is empty')
    if len(data) > MAX_COMPRESSED_BYTES:
        raise InputError(f'compressed image of {len(data)} bytes is too large')
    fmt, width, height = compressed_size(data)
    check_size(width, height, max_pixels)
    if fmt == 'jpeg':
        try:
            return simplejpeg.decode_jpeg(data, colorspace='RGB', strict=True)
        except ValueError as exc:
            raise InputError(f'corrupt JPEG: {exc}') from exc
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError('corrupt PNG: the decoder failed')
    if bgr.shape[:2] != (height, width):
        raise InputError(f'PNG decoded to {bgr.shape[1]}x{bgr.shape[0]}, header said '
                         f'{width}x{height}')
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
