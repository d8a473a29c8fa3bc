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


"""The GPU check's dry run on CPU: every row, the report's shape, the README table."""

import json
from pathlib import Path

import pytest

from flashvla_ros.bench import gpu_check
from flashvla_ros.bench.replay import read_decisions

ROOT = Path(__file__).resolve().parents[1]


def shortened(path: Path, out: Path, steps: int) -> Path:
    """Keep the first `steps` steps of each recorded configuration (a quick dry run)."""
    raw = json.loads(path.read_text())
    raw['configs'] = {k: v[:steps] for k, v in raw['configs'].items()}
    out.write_text(json.dumps(raw))
    return out


@pytest.mark.slow  # the GPU script's whole dry run; its parts are tested below
def test_the_dry_run_writes_every_row_and_the_readme_table(tmp_path):
    decisions = {name: shortened(path, tmp_path / path.name, 6)
                 for name, path in gpu_check.DECISIONS.items()}
    report = gpu_check.check('cpu', 'float32', 'reference',
                             {'openvla-7b': 'tiny', 'cogact-7b': 'tiny-dit'}, decisions,
                             steps=3, log=lambda *a, **k: None, quantize=('int8',))
    rows = [r for r in report['results'] if r['decisions'] != 'plain']
    quantized = [r for r in report['results'] if r['decisions'] == 'plain']
    assert [(r['head'], r['config']) for r in quantized] == [('openvla-7b [int8]', 'none [int8]')]
    assert report['weights_gib']['openvla-7b [int8]'] < report['weights_gib']['openvla-7b']
    for head, path in decisions.items():
        recorded = read_decisions(path)['configs']
        replayed = [r for r in rows if r['head'] == head and r['decisions'] != 'decide nothing']
        assert [r['config'] for r in replayed] == list(recorded)
        assert all('decisions replayed from default' in r['decisions'] for r in replayed)
        nothing = [r['config'] for r in rows if r['head'] == head
                   and r['decisions'] == 'decide nothing']
        rejected = [gpu_check.REJECTED] if head == 'openvla-7b' else []  # token head only
        assert nothing == rejected + list(gpu_check.DECIDE_NOTHING[head])
    assert {r['shapes'] for r in rows} == {'tiny', 'tiny-dit'}
    assert all(r['ratio_mean_vs_none'] > 0 and r['median_ms'] > 0 for r in rows)
    assert set(report['floor_ms']) == {'openvla-7b', 'cogact-7b'}
    assert report['targets'] == []  # they apply at 7B shapes
    estimates = report['jetson_estimate']
    assert len(estimates) == 2 * (len(rows) + 1) and all(e['mean_ms'] > 0 for e in estimates)
    agx, nx = (next(e for e in estimates if e['device'] == d and e['config'] == 'none')
               for d in gpu_check.JETSONS)
    assert nx['median_ms'] > agx['median_ms']  # half the bandwidth, a third of the compute
    readme = tmp_path / 'README.md'
    readme.write_text((ROOT / 'README.md').read_text())
    gpu_check.write_table(readme, gpu_check.table(report))
    page = readme.read_text()
    assert page.count(gpu_check.BEGIN) == 1 and '| `efficientvla` | tiny-dit |' in page
    assert 'Targets (issue 25): they apply at 7B shapes' in page


def test_jetson_estimates_scale_decode_with_bandwidth_and_the_rest_with_compute():
    report = {'bandwidth_gb_s': 4096.0, 'matmul_tflop_s': 425.0, 'weights_gib': {'h': 14.1},
              'results': [{'config': 'none', 'head': 'h', 'decisions': 'd', 'median_ms': 50.0,
                           'mean_ms': 50.0,
                           'stages_mean_ms': {'vision': 10.0, 'prefill': 20.0,
                                              'decode': 20.0, 'head': 0.0}}]}
    agx, nx = gpu_check.jetson_estimate(report)
    assert agx['mean_ms'] == round(30.0 * 10 + 20.0 * 20, 1)  # compute 10x, bandwidth 20x
    assert agx['median_ms'] == agx['mean_ms'] and agx['weights_fit'] and not nx['weights_fit']


def test_targets_are_read_from_the_7b_rows():
    rows = [{'config': 'none', 'shapes': 'openvla-7b', 'decisions': 'replayed',
             'median_ms': 38.0, 'ratio_mean_vs_none': 1.0, 'first_step_ms': 50.0},
            {'config': 'flashvla', 'shapes': 'openvla-7b', 'decisions': 'replayed',
             'median_ms': 30.0, 'ratio_mean_vs_none': 0.75},
            {'config': 'flashvla:keep_fraction=1.0,reuse=false', 'shapes': 'openvla-7b',
             'decisions': 'decide nothing', 'median_ms': 39.0, 'ratio_mean_vs_none': 1.02}]
    got = {(t['config'], t['unit'], t['met']) for t in gpu_check.targets({'results': rows})}
    assert got == {('none', 'median ms', True), ('none', 'first step vs median', False),
                   ('flashvla', 'mean vs none', False), ('decide nothing', 'mean vs none', True)}


def test_the_quantize_part_times_only_the_plain_rows():
    report = gpu_check.check('cpu', 'float32', 'reference', {'openvla-7b': 'tiny'}, steps=2,
                             log=lambda *a, **k: None, quantize=('int4',), plain_only=True)
    assert [(r['head'], r['config'], r['decisions']) for r in report['results']] == [
        ('openvla-7b', 'none', 'plain'), ('openvla-7b [int4]', 'none [int4]', 'plain')]
