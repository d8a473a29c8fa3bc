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
Write `test/data/openvla_protocol_tf.npz`: TensorFlow's own outputs for OpenVLA's LIBERO images.

Run it with a Python that has TensorFlow (CPU is enough), numpy and pillow, not the project's
venv, which has no TensorFlow:

    python3 -m venv /tmp/tfv/venv
    /tmp/tfv/venv/bin/pip install tensorflow-cpu numpy pillow
    /tmp/tfv/venv/bin/python scripts/make_protocol_fixture.py

The script imports nothing from the project. It draws a few deterministic 256x256 RGB scenes
(fixed numpy seed: flat regions, sharp edges, gradients, saturated colours and a patch of
noise) and runs TensorFlow's operations on them the way OpenVLA's LIBERO evaluation does,
storing:

- `inputs`: the scenes as rendered (uint8, N x 256 x 256 x 3), before the 180-degree rotation;
- `jpeg`: `encode_jpeg` (defaults) then `decode_image` of each input as it is (not rotated);
- `resize`: the lanczos3 antialiased resize to 224x224 of `jpeg`, rounded and clipped to uint8;
- `frame`: the whole policy frame: rotate, JPEG round trip, resize (what the policy sees);
- `frame_crop`: `frame` through the centre crop (area 0.9) and bilinear crop_and_resize, with
  the uint8/float32 conversions, as for checkpoints trained with image augmentation;
- `tf_version`: TensorFlow's version string.

`test/test_openvla_protocol.py` compares `flashvla_ros.sim.openvla_protocol` (numpy) with it.
"""

from pathlib import Path
import sys

import numpy as np
import tensorflow as tf

SIZE = 256
POLICY = 224
CROP_AREA = 0.9
SEED = 20260
N_IMAGES = 2
NOISE = 64  # side of the noisy patch: noise everywhere would not compress
OUT = Path(__file__).resolve().parent.parent / 'test' / 'data' / 'openvla_protocol_tf.npz'


def scene(rng: np.random.Generator) -> np.ndarray:
    """Draw a tabletop-like scene: gradients, rectangles, discs, thin lines and a noisy patch."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    img = np.empty((SIZE, SIZE, 3), np.float64)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-0.4, 0.4, size=(3, 2))
    for c in range(3):
        img[..., c] = base[c] + slope[c, 0] * (xx - SIZE / 2) + slope[c, 1] * (yy - SIZE / 2)
    for _ in range(8):
        y0, x0 = rng.integers(0, SIZE - 20, size=2)
        h, w = rng.integers(8, 90, size=2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, size=3)
    for _ in range(6):
        cy, cx = rng.uniform(0, SIZE, size=2)
        r = rng.uniform(5, 40)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, size=3)
    for _ in range(4):
        img[rng.integers(0, SIZE), :] = (255, 255, 255)
        img[:, rng.integers(0, SIZE)] = (0, 0, 0)
    img[:32, :32] = (255, 0, 0)
    img[-32:, -32:] = (0, 0, 255)
    y0, x0 = rng.integers(0, SIZE - NOISE, size=2)
    img[y0:y0 + NOISE, x0:x0 + NOISE] += rng.normal(0.0, 6.0, size=(NOISE, NOISE, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray) -> np.ndarray:
    """JPEG round trip as OpenVLA's LIBERO `resize_image` does it."""
    data = tf.image.encode_jpeg(img)
    return tf.io.decode_image(data, expand_animations=False, dtype=tf.uint8).numpy()


def resize(img: np.ndarray) -> np.ndarray:
    """Lanczos3 antialiased resize to the policy size, rounded and clipped to uint8."""
    out = tf.image.resize(img, (POLICY, POLICY), method='lanczos3', antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8).numpy()


def crop(img: np.ndarray) -> np.ndarray:
    """Centre crop of area CROP_AREA resized back, as OpenVLA's `get_vla_action` does it."""
    image = tf.image.convert_image_dtype(tf.convert_to_tensor(img), tf.float32)[None]
    side = tf.reshape(tf.clip_by_value(tf.sqrt(CROP_AREA), 0, 1), shape=(1,))
    offset = (1 - side) / 2
    boxes = tf.stack([offset, offset, offset + side, offset + side], axis=1)
    image = tf.image.crop_and_resize(image, boxes, tf.range(1), (POLICY, POLICY))[0]
    image = tf.clip_by_value(image, 0, 1)
    return tf.image.convert_image_dtype(image, tf.uint8, saturate=True).numpy()


def main() -> int:
    rng = np.random.default_rng(SEED)
    inputs = np.stack([scene(rng) for _ in range(N_IMAGES)])
    jpegs = np.stack([jpeg(img) for img in inputs])
    resized = np.stack([resize(img) for img in jpegs])
    frames = np.stack([resize(jpeg(img[::-1, ::-1])) for img in inputs])
    crops = np.stack([crop(img) for img in frames])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        OUT, inputs=inputs, jpeg=jpegs, resize=resized, frame=frames, frame_crop=crops,
        tf_version=np.array(tf.__version__),
    )
    print(f'wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, TensorFlow {tf.__version__})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
