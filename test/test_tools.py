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

"""The command-line tools as a user runs them: installed entry points, real files."""

import json
from pathlib import Path
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

PARTS = {'preprocess', 'vision', 'prefill', 'decode', 'head', 'total'}


def tool(name: str) -> list[str]:
    exe = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(exe).exists():
        pytest.fail(f'{name} is not installed: run `pip install -e .` (make test does)')
    return [exe]


def test_make_tiny_then_predict(tmp_path):
    model = tmp_path / 'tiny'
    done = subprocess.run([*tool('flashvla-make-tiny'), '--out', str(model), '--seed', '1'],
                          capture_output=True, text=True, check=True)
    assert 'wrote tiny OpenVLA checkpoint' in done.stdout
    image = tmp_path / 'frame.png'
    rgb = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    cv2.imwrite(str(image), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cmd = [*tool('flashvla-predict'), '--model', str(model), '--image', str(image),
           '--instruction', 'pick up the red block', '--repeat', '3', '--static-cache']
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert len(result['action']) == 7 and len(result['token_ids']) == 7
    assert result['latency_ms']['calls'] == 3  # first call vs the steady state
    assert result['latency_ms']['first'] > 0 and result['latency_ms']['steady_median'] > 0
    assert set(result['timings_ms']) == PARTS
    assert result['unnorm_key'] == 'mock_world'
    assert out.stderr == ''  # no stray warnings on a clean run

    # The same prediction from the Python API: the CLI adds nothing of its own.
    from flashvla_ros.policy import Observation, load_policy
    action = load_policy(str(model)).predict(Observation(rgb, 'pick up the red block'))
    assert action.token_ids == result['token_ids']


@pytest.mark.parametrize('args, message', [
    (['--model', '/nonexistent/model'], 'does not exist'),
    (['--image', '/nonexistent.png'], 'cannot read an image'),
    (['--unnorm-key', 'bridge_orig'], 'unknown unnorm_key'),
    (['--dtype', 'int3'], 'unknown dtype'),
])
def test_predict_errors_are_clear(tiny_dir, tmp_path, capsys, args, message):
    # In-process: the entry point's own main (the installed script is run by the test above).
    from flashvla_ros.tools.predict import main
    image = tmp_path / 'frame.png'
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    base = {'--model': str(tiny_dir), '--image': str(image), '--instruction': 'push the cup'}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert main([x for kv in base.items() for x in kv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith('flashvla-predict: error: ')


REMOTE_CODE = '''
import pathlib
pathlib.Path(__file__).with_name('REMOTE_CODE_RAN').write_text(__name__)
raise SystemExit('remote code ran')
'''


def test_hub_layout_checkpoint_loads_without_asking_about_remote_code(tiny_dir, tmp_path):
    # openvla/openvla-7b names its own classes in `auto_map` and ships them as .py files;
    # transformers would ask "Do you wish to run the custom code? [y/N]" and wait 15 s.
    hub = shutil.copytree(tiny_dir, tmp_path / 'openvla-hub')
    config = json.loads((hub / 'config.json').read_text())
    config['auto_map'] = {
        'AutoConfig': 'configuration_prismatic.OpenVLAConfig',
        'AutoModelForVision2Seq': 'modeling_prismatic.OpenVLAForActionPrediction',
    }
    (hub / 'config.json').write_text(json.dumps(config))
    tok_config = json.loads((hub / 'tokenizer_config.json').read_text())
    tok_config['auto_map'] = {'AutoProcessor': 'processing_prismatic.PrismaticProcessor',
                              'AutoTokenizer': ['tokenization_prismatic.PrismaticTokenizer', None]}
    (hub / 'tokenizer_config.json').write_text(json.dumps(tok_config))
    for name in ('configuration', 'modeling', 'processing', 'tokenization'):
        (hub / f'{name}_prismatic.py').write_text(REMOTE_CODE)
    image = tmp_path / 'frame.png'
    rgb = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    cv2.imwrite(str(image), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    # A prompt would read this answer and run the remote code.
    out = subprocess.run([*tool('flashvla-predict'), '--model', str(hub), '--image', str(image),
                          '--instruction', 'pick up the red block'],
                         input='y\n', capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'custom code' not in out.stdout + out.stderr
    assert not (hub / 'REMOTE_CODE_RAN').exists()
    assert not list(hub.glob('__pycache__'))
    from flashvla_ros.policy import Observation, load_policy
    expected = load_policy(str(tiny_dir)).predict(Observation(rgb, 'pick up the red block'))
    assert json.loads(out.stdout)['token_ids'] == expected.token_ids
