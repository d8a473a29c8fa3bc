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

"""OpenVLA's LIBERO protocol in numpy, against TensorFlow's outputs (make_protocol_fixture.py)."""

import math
from pathlib import Path

import numpy as np
import pytest

from flashvla_ros.sim import openvla_protocol as op

FIXTURE = Path(__file__).parent / 'data' / 'openvla_protocol_tf.npz'


@pytest.fixture(scope='module')
def tf_data():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def grey_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def test_constants():
    assert op.SUITE_STEPS == {
        'libero_spatial': 220, 'libero_object': 280, 'libero_goal': 300,
        'libero_10': 520, 'libero_90': 400,
    }
    assert op.WAIT_STEPS == 10
    np.testing.assert_array_equal(op.NOOP_ACTION, [0, 0, 0, 0, 0, 0, -1])
    assert op.NOOP_ACTION.shape == (7,)
    assert (op.RENDER_SIZE, op.POLICY_SIZE, op.CROP_AREA) == (256, 224, 0.9)


def test_rotate_is_180_degrees():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    out = op.rotate(img)
    np.testing.assert_array_equal(out, np.rot90(img, 2))
    assert out[0, 0].tolist() == img[-1, -1].tolist()
    np.testing.assert_array_equal(op.rotate(out), img)


@pytest.mark.parametrize('value, expected', [
    (1.0, -1.0), (0.9, -1.0), (0.51, -1.0),  # OpenVLA: 1 opens -> LIBERO -1
    (0.0, 1.0), (0.1, 1.0), (0.49, 1.0),
])
def test_gripper_openvla_convention(value, expected):
    assert op.libero_gripper(value, open_is_one=True) == expected


def test_gripper_openvla_exact_half_is_zero():
    # np.sign(2 * 0.5 - 1) == 0: OpenVLA sends 0 (holds the fingers), reproduced as is.
    assert op.libero_gripper(0.5, open_is_one=True) == 0.0
    assert math.isnan(op.libero_gripper(float('nan'), open_is_one=True))


@pytest.mark.parametrize('value, expected', [
    (1.0, 1.0), (0.5, 1.0), (0.7, 1.0),  # this project: 1 closes, 0.5 already closes
    (0.0, -1.0), (0.49999, -1.0), (float('nan'), -1.0),
])
def test_gripper_project_convention(value, expected):
    assert op.libero_gripper(value, open_is_one=False) == expected


def test_gripper_threshold_matches_policy_actions():
    from flashvla_ros.policy.actions import GRIPPER_THRESHOLD, gripper_closed

    assert op.GRIPPER_THRESHOLD == GRIPPER_THRESHOLD
    for value in (0.0, 0.4999, 0.5, 0.5001, 1.0):
        assert (op.libero_gripper(value, open_is_one=False) > 0) == gripper_closed(value)


def test_unnorm_key():
    assert op.unnorm_key('libero_goal', ['bridge_orig', 'libero_goal']) == 'libero_goal'
    assert op.unnorm_key('libero_goal', {'libero_goal_no_noops': 1}) == 'libero_goal_no_noops'
    both = ['libero_10', 'libero_10_no_noops']
    assert op.unnorm_key('libero_10', iter(both)) == 'libero_10'
    with pytest.raises(ValueError, match=r'libero_spatial.*bridge_orig, libero_goal'):
        op.unnorm_key('libero_spatial', ['libero_goal', 'bridge_orig'])


def test_bad_image_is_rejected():
    with pytest.raises(ValueError, match='uint8'):
        op.policy_frame(np.zeros((256, 256, 3), np.float32), center_crop=False)
    with pytest.raises(ValueError):
        op.jpeg_round_trip(np.zeros((256, 256), np.uint8))


def test_fixture_shape(tf_data):
    n = len(tf_data['inputs'])
    assert n >= 2
    assert tf_data['inputs'].shape == (n, 256, 256, 3)
    for key in ('resize', 'frame', 'frame_crop'):
        assert tf_data[key].shape == (n, 224, 224, 3)


def test_jpeg_round_trip_is_tensorflow_exactly(tf_data):
    pytest.importorskip('PIL')
    assert op.jpeg_encoder() == 'pillow'
    for img, ref in zip(tf_data['inputs'], tf_data['jpeg'], strict=True):
        assert grey_diff(op.jpeg_round_trip(img), ref).max() == 0


def test_jpeg_round_trip_simplejpeg_fallback(tf_data):
    # TurboJPEG's fast forward DCT (below quality 96): measured max 10, mean 0.72.
    for img, ref in zip(tf_data['inputs'], tf_data['jpeg'], strict=True):
        diff = grey_diff(op.jpeg_round_trip(img, encoder='simplejpeg'), ref)
        assert diff.max() <= 12 and diff.mean() < 1.0
    with pytest.raises(ValueError, match='encoder'):
        op.jpeg_round_trip(tf_data['inputs'][0], encoder='cv2')


def test_resize_lanczos3_against_tensorflow(tf_data):
    # Same input as TensorFlow: float32 rounding ties only (measured 1 level, 0.01% of values).
    for img, ref in zip(tf_data['jpeg'], tf_data['resize'], strict=True):
        diff = grey_diff(op.resize_lanczos3(img, 224), ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_resize_identity_and_size():
    img = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(op.resize_lanczos3(img, (40, 30)), img)
    assert op.resize_lanczos3(img, (17, 23)).shape == (17, 23, 3)


def test_center_crop_against_tensorflow(tf_data):
    # TensorFlow's frame as input: bit-exact.
    for frame, ref in zip(tf_data['frame'], tf_data['frame_crop'], strict=True):
        assert grey_diff(op.center_crop_resize(frame), ref).max() == 0


def test_policy_frame_against_tensorflow(tf_data):
    pytest.importorskip('PIL')
    refs = zip(tf_data['inputs'], tf_data['frame'], tf_data['frame_crop'], strict=True)
    for img, ref, ref_crop in refs:
        frame = op.policy_frame(img, center_crop=False)
        diff = grey_diff(frame, ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
        diff = grey_diff(op.policy_frame(img, center_crop=True), ref_crop)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
