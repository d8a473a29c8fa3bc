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
Print docs/QUANTIZATION.md's success and CPU speed tables from flashvla-bench reports.

    python scripts/quantization_tables.py docs/quantization/bench_*.json

Each quantized configuration is compared with the same configuration at full precision on
the same episodes (paired), against issue 26's targets: int8 within 1 point with the 95% CI's
lower bound above -4, int4 within 3 points with it above -7.
"""

import json
from pathlib import Path
import sys

TARGETS = {'int8': (-0.01, -0.04), 'int4': (-0.03, -0.07)}  # (mean, CI lower bound) at least


def full_precision_diff(config: dict, first: dict) -> dict | None:
    """Return the paired difference to the same configuration unquantized, if reported."""
    if config.get('paired_diff_vs_full_precision'):
        return config['paired_diff_vs_full_precision']
    base = config['name'].rpartition(' [')[0]
    return config['paired_diff'] if first['name'] == base else None  # older reports


def main(paths: list[str]) -> None:
    rows: dict[tuple[str, str], tuple[dict, dict | None]] = {}  # in order of first appearance
    for path in paths:
        report = json.loads(Path(path).read_text())
        model = report['model'].split('/')[-1].split(' ')[0]
        for c in report['configs']:
            quant = c.get('quantize', 'none').partition(':')[0]
            diff = full_precision_diff(c, report['configs'][0]) if quant != 'none' else None
            key = (model, c['name'])  # a row in two reports: the one with its paired diff
            if key not in rows or (diff is not None and rows[key][1] is None):
                rows[key] = (c, diff)
    success = ['| model | config | success | vs full precision, paired (95% CI) | target | '
               'token match | mean abs action diff |', '|---|---|---|---|---|---|---|']
    speed = ['| model | config | median ms per call | vision / prefill / decode / head ms |',
             '|---|---|---|---|']
    for (model, name), (c, diff) in rows.items():
        quant = c.get('quantize', 'none').partition(':')[0]
        verdict = '-'
        if diff is not None and quant in TARGETS:
            mean, low = TARGETS[quant]
            met = diff['mean'] >= mean and diff['ci95'][0] > low
            verdict = ('met' if met else '**missed**') + f' (≥ {mean:+.0%}, CI > {low:+.0%})'
        d = '-' if diff is None else \
            f'{diff["mean"]:+.1%} [{diff["ci95"][0]:+.1%}, {diff["ci95"][1]:+.1%}]'
        f = c['fidelity']
        success.append(f'| {model} | `{name}` | {c["success"]:.1%} | {d} | {verdict} | '
                       f'{f["token_match"]:.3f} | {f["mean_abs_diff"]:.5f} |')
        lat = c['latency_ms']
        speed.append(f'| {model} | `{name}` | {lat["total"]["median"]:.1f} | ' +
                     ' / '.join(f'{lat[p]["median"]:.1f}'
                                for p in ('vision', 'prefill', 'decode', 'head')) + ' |')
    print('\n'.join(success), '', '\n'.join(speed), sep='\n')


if __name__ == '__main__':
    main(sys.argv[1:])
