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
OpenVLA's LIBERO evaluation protocol (images, gripper, episode length) in numpy, no TensorFlow.

The source is OpenVLA's own evaluation code (the `experiments/robot/libero` scripts and the
helpers beside them in `experiments/robot`), which runs TensorFlow on every frame. This
module repeats each step with the same arithmetic so that a checkpoint sees the pixels it
saw in OpenVLA's published LIBERO numbers:

1. The agentview camera renders at `RENDER_SIZE` (256x256) and is turned 180 degrees
   (`rotate`), the orientation the training data has.
2. JPEG round trip (`jpeg_round_trip`), as the RLDS dataset builder stored the training
   frames: TensorFlow's `encode_jpeg` defaults (quality 95, 4:2:0 chroma, accurate integer
   DCT) then `decode_image` (TensorFlow decodes with libjpeg's fast integer IDCT and fancy
   upsampling).
3. `resize_lanczos3` to `POLICY_SIZE` (224x224): TensorFlow's `scale_and_translate` with the
   lanczos3 kernel, antialiased, in float32, then rounded half to even and clipped to uint8.
4. Only for checkpoints trained with random-crop augmentation, `center_crop_resize`: uint8
   to float in [0, 1], TensorFlow's bilinear `crop_and_resize` of the central box of area
   `CROP_AREA` (side sqrt(0.9)) back to 224x224, clip, and TensorFlow's float to uint8
   conversion (times 255.5, truncated, saturated).

`policy_frame` chains these. Episodes (`SUITE_STEPS`, `WAIT_STEPS`, `NOOP_ACTION`): the
first `WAIT_STEPS` steps send the no-op action while the objects settle, then the policy
acts for at most the suite's step limit (the loop runs while t < limit + WAIT_STEPS).
Actions are un-normalised with the suite's statistics (`unnorm_key`), and the gripper goes
through `libero_gripper`.

JPEG: TensorFlow's output is reproduced bit for bit when Pillow is installed (its encoder
runs libjpeg with the same settings as TensorFlow's) and simplejpeg decodes with the fast
IDCT. Without Pillow, simplejpeg encodes: the TurboJPEG API it wraps always uses the fast
forward DCT below quality 96, a few grey levels away from TensorFlow at edges.
"""

from __future__ import annotations

from collections.abc import Iterable
import functools
import io
import math

import numpy as np
import simplejpeg

SUITE_STEPS: dict[str, int] = {
    'libero_spatial': 220,
    'libero_object': 280,
    'libero_goal': 300,
    'libero_10': 520,
    'libero_90': 400,
}
WAIT_STEPS = 10
NOOP_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
RENDER_SIZE = 256
POLICY_SIZE = 224
CROP_AREA = 0.9
JPEG_QUALITY = 95
# This project's gripper threshold (`flashvla_ros.policy.actions.GRIPPER_THRESHOLD`), kept
# here so that this module does not import the policy package (and PyTorch with it).
GRIPPER_THRESHOLD = 0.5

_LANCZOS_RADIUS = np.float32(3.0)
_PI = np.float32(3.14159265359)  # the constant TensorFlow's sampling kernels use


def _check_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f'expected an HxWx3 uint8 image, got {img.shape} {img.dtype}')
    return img


def rotate(img: np.ndarray) -> np.ndarray:
    """Return the image turned 180 degrees, as LIBERO's agentview is before anything else."""
    return np.ascontiguousarray(img[::-1, ::-1])


def jpeg_encoder() -> str:
    """Return the JPEG encoder `jpeg_round_trip` uses: 'pillow' (exact) or 'simplejpeg'."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return 'simplejpeg'
    return 'pillow'


def jpeg_round_trip(img: np.ndarray, encoder: str | None = None) -> np.ndarray:
    """
    Encode an RGB uint8 image to JPEG and decode it back, as TensorFlow does by default.

    `encoder` is 'pillow' (bit-exact with TensorFlow), 'simplejpeg' (TurboJPEG's fast DCT,
    within a few grey levels) or None for `jpeg_encoder()`. Decoding is always simplejpeg's
    fast integer IDCT with fancy upsampling, which is what TensorFlow's decoder does.
    """
    img = np.ascontiguousarray(_check_rgb(img))
    encoder = encoder or jpeg_encoder()
    if encoder == 'pillow':
        from PIL import Image

        buf = io.BytesIO()
        # subsampling=2 is 4:2:0, TensorFlow's chroma_downsampling=True.
        Image.fromarray(img).save(buf, 'JPEG', quality=JPEG_QUALITY, subsampling=2)
        data = buf.getvalue()
    elif encoder == 'simplejpeg':
        data = simplejpeg.encode_jpeg(
            img, quality=JPEG_QUALITY, colorspace='RGB', colorsubsampling='420'
        )
    else:
        raise ValueError(f"encoder must be 'pillow', 'simplejpeg' or None, got {encoder!r}")
    return simplejpeg.decode_jpeg(data, colorspace='RGB', fastdct=True, fastupsample=False)


def _sinf(x: np.ndarray) -> np.ndarray:
    """Return sin of float32 values correctly rounded to float32, as C's sinf gives it."""
    return np.sin(x.astype(np.float64)).astype(np.float32)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    """Return TensorFlow's lanczos3 kernel at |x| (float32), 1 near 0 and 0 beyond 3."""
    x = np.abs(x.astype(np.float32))
    safe = np.where(x <= np.float32(1e-3), np.float32(1.0), x)
    px = _PI * safe
    value = (
        _LANCZOS_RADIUS * _sinf(px) * _sinf(px / _LANCZOS_RADIUS) / (_PI * _PI * safe * safe)
    ).astype(np.float32)
    value = np.where(x <= np.float32(1e-3), np.float32(1.0), value)
    return np.where(x > _LANCZOS_RADIUS, np.float32(0.0), value).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """
    Return TensorFlow's antialiased lanczos3 sampling spans for one axis (no translation).

    Starts [out_size] and normalised float32 weights [out_size, span]: zero weights pad
    short spans at the borders, where TensorFlow clamps the span to the image. Cached: the
    arrays are shared, never write to them.
    """
    scale = np.float32(out_size) / np.float32(in_size)
    inv_scale = np.float32(1.0 / float(scale))
    kernel_scale = max(inv_scale, np.float32(1.0))
    one_over_kernel_scale = np.float32(1.0) / kernel_scale
    reach = _LANCZOS_RADIUS * kernel_scale
    span = min(2 * math.ceil(float(reach)) + 1, in_size)
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, span), np.float32)
    for x in range(out_size):
        sample = (np.float32(x) + np.float32(0.5)) * inv_scale
        start = int(np.ceil(sample - reach - np.float32(0.5)))
        end = int(np.floor(sample + reach - np.float32(0.5)))
        start = min(max(start, 0), in_size - 1)
        end = min(max(end, 0), in_size - 1) + 1
        pos = np.arange(start, end, dtype=np.float32) + np.float32(0.5) - sample
        w = _lanczos3(np.abs(pos * one_over_kernel_scale))
        total = np.float32(0.0)
        for v in w:  # sequential float32 sum, as TensorFlow adds them
            total = np.float32(total + v)
        if abs(total) >= 1000.0 * np.finfo(np.float32).tiny:
            weights[x, :end - start] = w * (np.float32(1.0) / total)
        starts[x] = start
    return starts, weights


def _gather_rows(img: np.ndarray, starts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return the weighted sums of rows (axis 0), tap by tap in float32 as TensorFlow adds."""
    size = img.shape[0]
    acc = np.zeros((len(starts), *img.shape[1:]), np.float32)
    for k in range(weights.shape[1]):
        idx = np.minimum(starts + k, size - 1)  # padded taps have weight 0
        acc += weights[:, k][:, None, None] * img[idx]
    return acc


def resize_lanczos3(img: np.ndarray, size: int | tuple[int, int] = POLICY_SIZE) -> np.ndarray:
    """
    Resize as `tf.image.resize(method='lanczos3', antialias=True)`, then round and clip.

    Columns first, then rows, with float32 accumulation in TensorFlow's order; the result
    is rounded half to even (`tf.round`) and clipped to uint8 as OpenVLA does.
    """
    img = _check_rgb(img)
    out_h, out_w = (size, size) if isinstance(size, int) else size
    h, w = img.shape[:2]
    # Columns (through a transposed copy, to gather whole rows), then rows.
    x = np.ascontiguousarray(img.transpose(1, 0, 2)).astype(np.float32)
    x = np.ascontiguousarray(_gather_rows(x, *_spans(w, out_w)).transpose(1, 0, 2))
    x = _gather_rows(x, *_spans(h, out_h))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def center_crop_resize(img: np.ndarray, area: float = CROP_AREA) -> np.ndarray:
    """
    Return OpenVLA's centre crop: the central `area` of the frame, resized back bilinearly.

    Repeats `tf.image.convert_image_dtype` to float32, `tf.image.crop_and_resize` with the
    box [(1 - s) / 2, (1 - s) / 2, (1 + s) / 2, (1 + s) / 2] for s = sqrt(area), to the
    input's size, a clip to [0, 1] and the saturating conversion back to uint8.
    """
    img = _check_rgb(img)
    h, w = img.shape[:2]
    x = img.astype(np.float32) * np.float32(1.0 / 255.0)
    side = np.clip(np.sqrt(np.float32(area)), np.float32(0.0), np.float32(1.0))
    lo = (np.float32(1.0) - side) / np.float32(2.0)
    hi = np.float32(lo + side)

    def axis_coords(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        step = np.float32((hi - lo) * np.float32(n_in - 1)) / np.float32(n_out - 1)
        pos = lo * np.float32(n_in - 1) + np.arange(n_out, dtype=np.float32) * step
        low = np.floor(pos).astype(np.int64)
        return low, np.ceil(pos).astype(np.int64), (pos - low.astype(np.float32))

    top, bottom, y_lerp = axis_coords(h, h)
    left, right, x_lerp = axis_coords(w, w)
    # Along x for every row once, then along y: the same float32 operations as TensorFlow's
    # top/bottom lerps per output pixel.
    x_left = x[:, left]
    across = x_left + (x[:, right] - x_left) * x_lerp[None, :, None]
    upper = across[top]
    out = upper + (across[bottom] - upper) * y_lerp[:, None, None]
    out = np.clip(out, np.float32(0.0), np.float32(1.0)) * np.float32(255.5)
    return np.minimum(out, np.float32(255.0)).astype(np.uint8)


def policy_frame(agentview: np.ndarray, center_crop: bool) -> np.ndarray:
    """Return the 224x224x3 uint8 frame an OpenVLA checkpoint sees for a LIBERO agentview."""
    frame = resize_lanczos3(jpeg_round_trip(rotate(_check_rgb(agentview))), POLICY_SIZE)
    return center_crop_resize(frame) if center_crop else frame


def libero_gripper(value: float, open_is_one: bool) -> float:
    """
    Return LIBERO's gripper command (-1 open, +1 close) for a policy's gripper value.

    open_is_one=True is OpenVLA's convention (1 opens) and repeats its evaluation exactly:
    2 * value - 1, np.sign, times -1. A value of exactly 0.5 gives 0 (as -0.0): robosuite's
    Panda gripper moves its fingers by sign(command) per step, so 0 holds them where they
    are. NaN stays NaN, as in OpenVLA.

    open_is_one=False is this project's convention (1 closes): +1 when the value reaches
    GRIPPER_THRESHOLD (`flashvla_ros.policy.actions.gripper_closed`), else -1, NaN open.
    """
    if open_is_one:
        # normalize_gripper_action (binarised), then invert_gripper_action.
        return float(np.sign(2.0 * float(value) - 1.0) * -1.0)
    return 1.0 if value >= GRIPPER_THRESHOLD else -1.0


def unnorm_key(suite: str, available: Iterable[str]) -> str:
    """Return the action statistics key for a suite: the suite, else `<suite>_no_noops`."""
    keys = list(available)
    for key in (suite, f'{suite}_no_noops'):
        if key in keys:
            return key
    raise ValueError(
        f'no action statistics for {suite!r} (nor {suite}_no_noops); '
        f'the checkpoint has: {", ".join(sorted(keys)) or "none"}'
    )
