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

"""Parameter validation and image conversion: the checks behind 'rejected with the reason'."""

from pathlib import Path
import re

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from flashvla_ros.params import PARAMS, build_config, check_config, check_value, load_yaml
from flashvla_ros.policy.errors import InputError
from flashvla_ros.ros.convert import compressed_to_rgb, image_to_rgb, rgb_to_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize('name, value, reason', [
    ('control_rate_hz', 0.1, 'outside [0.5, 500.0]'),
    ('control_rate_hz', float('inf'), 'finite'),
    ('control_rate_hz', 'fast', 'must be a number'),
    ('dtype', 'int8', "choose one of ['float32', 'bfloat16', 'float16']"),
    ('quantize', 'fp8', "choose one of ['none', 'int8', 'int4']"),
    ('outputs', ['twist', 'laser'], "['laser']"),
    ('outputs', [], 'no entries'),
    ('action_scale', [1.0] * 6, 'needs 7 entries'),
    ('action_upper', [1.0] * 6 + [True], 'list of numbers'),
    ('center_crop', 'yes', 'true or false'),
    ('nonsense', 1, 'unknown parameter'),
    ('accel', ['warp'], "accel has ['warp']; allowed: ['none', 'flashvla', 'efficientvla']"),
    ('flashvla.max_reuse', 2.5, 'must be an integer'),
    ('flashvla.keep_fraction', 'most', 'must be a number'),
    ('flashvla.reuse', 1, 'true or false'),
    ('flashvla.preset', 'ludicrous', "choose one of ['', 'conservative', 'fast', 'reuse']"),
])
def test_bad_values_are_rejected_with_a_reason(name, value, reason):
    assert reason in (check_value(name, value) or '')


def test_good_values_pass():
    for p in PARAMS:
        assert check_value(p.name, p.default) is None, p.name


def test_inconsistent_limits_are_rejected():
    values = {p.name: p.default for p in PARAMS}
    values['action_lower'] = [0.1] * 7
    assert check_config(values) == 'action_lower > action_upper in dimensions [0, 1, 2]'
    with pytest.raises(ValueError, match='unknown parameters'):
        build_config({'contrl_rate_hz': 5.0})
    # A hold is zero motion: limits that exclude zero on a motion dimension would move it.
    values['action_lower'] = [-0.05, 0.01, -0.05, -0.25, -0.25, -0.25, 0.0]
    assert 'exclude zero in motion dimensions [\'y\']' in check_config(values)
    values['action_lower'] = [-0.05] * 6 + [0.5]  # the gripper may: a hold keeps it
    assert check_config(values) is None


@pytest.mark.parametrize('text, reason', [
    ('   \t ', 'only whitespace'),
    ('go ' * 2000, 'instruction is 6000 characters; the limit is 1000'),
    ('pick up\x00 the cup', "control characters ['U+0000']"),
    ('pick up\n the cup', "control characters ['U+000A']"),
])
def test_one_instruction_rule_for_parameter_and_policy(text, reason, tiny_policy):
    values = {p.name: p.default for p in PARAMS}
    values['instruction'] = text
    assert reason in check_config(values)
    with pytest.raises(InputError, match=re.escape(reason)):
        tiny_policy.check_instruction(text)
    with pytest.raises(InputError, match=re.escape(reason)):
        tiny_policy.prompt_ids(text)


def test_model_path_expands_the_home_directory():
    # Shells do not expand `~` after `model:=`: the node does.
    assert build_config({'model': '~/models/openvla-7b'}).model \
        == str(Path.home() / 'models' / 'openvla-7b')
    assert build_config({}).model == ''  # empty: the embedded default


def test_instruction_is_stripped_and_the_token_limit_checked(tiny_policy):
    assert build_config({'instruction': ' pick up the cup\n'}).instruction == 'pick up the cup'
    assert tiny_policy.check_instruction('  pick up the cup ') == 'pick up the cup'
    with pytest.raises(InputError, match='-token prompt; the limit is 128'):
        tiny_policy.check_instruction('zq' * 400)  # within 1000 characters, too many tokens


def test_accel_section_presets_and_overrides(tmp_path):
    shipped = load_yaml(ROOT / 'config' / 'policy.yaml').accel
    assert shipped.names == ('flashvla',)
    assert shipped.options == {'flashvla': {'preset': 'conservative'},
                               'efficientvla': {'preset': 'default'}}
    f = tmp_path / 'p.yaml'
    f.write_text('policy_node:\n  ros__parameters:\n    accel: [flashvla]\n    flashvla:\n'
                 '      preset: fast\n      keep_tokens: 40\n      eps2: 0.75\n')
    assert load_yaml(f).accel.options['flashvla'] == {'preset': 'fast', 'keep_tokens': 40,
                                                      'eps2': 0.75}
    # The accelerator's own validator gives the reason for a bad combination.
    values = {p.name: p.default for p in PARAMS}
    values.update({'flashvla.svd': 'lowrank'})
    assert 'lowrank needs a fixed rank' in check_config(values)
    values.update({'flashvla.svd': None, 'flashvla.eps2': 1.5})
    assert 'eps2=1.5 must be in [0, 1]' in check_config(values)
    assert build_config({'accel': ['none'], 'flashvla.keep_fraction': 0.5}).accel.names == ()


def as_image(encoding, array, pad=0):
    h, w = array.shape[:2]
    rows = array.reshape(h, -1)
    padded = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image(encoding=encoding, height=h, width=w, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


RGB = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize('encoding, data, expected', [
    ('rgb8', RGB, RGB),
    ('bgr8', RGB[..., ::-1].copy(), RGB),
    ('rgba8', np.dstack([RGB, np.full((6, 5), 7, np.uint8)]), RGB),
    ('bgra8', np.dstack([RGB[..., ::-1], np.full((6, 5), 7, np.uint8)]), RGB),
    ('mono8', RGB[..., 0].copy(), np.repeat(RGB[..., :1], 3, axis=2)),
])
@pytest.mark.parametrize('pad', [0, 3])
def test_encodings_convert_to_rgb(encoding, data, expected, pad):
    out = image_to_rgb(as_image(encoding, data, pad))
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    assert np.array_equal(out, expected)


def test_round_trip_and_compressed():
    msg = rgb_to_image(RGB, stamp=Image().header.stamp)
    assert np.array_equal(image_to_rgb(msg), RGB)
    _, png = cv2.imencode('.png', cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert np.array_equal(compressed_to_rgb(CompressedImage(format='png', data=png.tobytes())),
                          RGB)


@pytest.mark.parametrize('msg, message', [
    (as_image('yuv422', np.zeros((4, 8), np.uint8)), 'unsupported image encoding'),
    (Image(encoding='rgb8', height=4, width=4, step=12), 'data has 0 bytes'),
    (Image(encoding='rgb8', height=4, width=4, step=4), 'step 4 is smaller'),
    (Image(encoding='rgb8', height=0, width=4, step=12), 'outside'),
    (CompressedImage(format='jpeg', data=b'not a jpeg'), 'neither PNG nor JPEG'),
    (CompressedImage(format='jpeg'), 'empty'),
])
def test_malformed_messages_raise_input_errors(msg, message):
    convert = compressed_to_rgb if isinstance(msg, CompressedImage) else image_to_rgb
    with pytest.raises(InputError, match=message):
        convert(msg)


def png_header(width: int, height: int) -> bytes:
    """Return a PNG's signature and IHDR chunk only: what a size check may read."""
    return b'\x89PNG\r\n\x1a\n' + b'\x00\x00\x00\rIHDR' + width.to_bytes(4, 'big') \
        + height.to_bytes(4, 'big') + b'\x08\x02\x00\x00\x00' + b'\x00' * 4


def test_compressed_size_is_checked_from_the_header_before_decoding():
    # Only a header: a decoder would fail on it, so a size error proves nothing was decoded.
    with pytest.raises(InputError, match='8000x8000 = 64000000 pixels is above max_image_pix'):
        compressed_to_rgb(CompressedImage(format='png', data=png_header(8000, 8000)))
    _, big = cv2.imencode('.jpg', np.zeros((300, 400, 3), np.uint8))
    with pytest.raises(InputError, match='400x300 = 120000 pixels is above max_image_pixels'):
        compressed_to_rgb(CompressedImage(format='jpeg', data=big.tobytes()), max_pixels=10**5)
    assert compressed_to_rgb(CompressedImage(format='jpeg', data=big.tobytes())).shape \
        == (300, 400, 3)
    with pytest.raises(InputError, match='above max_image_pixels'):
        image_to_rgb(rgb_to_image(np.zeros((300, 400, 3), np.uint8), Image().header.stamp),
                     max_pixels=10**5)


def test_corrupt_or_truncated_jpeg_is_rejected():
    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (5, 5), 0)
    _, jpeg = cv2.imencode('.jpg', rgb)
    data = jpeg.tobytes()
    corrupt, at = bytearray(data), len(data) // 3
    corrupt[at:at + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    # OpenCV decodes this one with a warning on stderr and returns an image.
    assert cv2.imdecode(np.frombuffer(bytes(corrupt), np.uint8), cv2.IMREAD_COLOR) is not None
    for bad, reason in ((bytes(corrupt), ''),  # libjpeg's words vary with the damage
                        (data[:len(data) // 2], 'Premature end of JPEG file'),
                        (data[:-2], 'Premature end of JPEG file')):
        with pytest.raises(InputError, match=f'corrupt JPEG: {reason}'):
            compressed_to_rgb(CompressedImage(format='jpeg', data=bad))
