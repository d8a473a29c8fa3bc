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
How the error of weight-only int8 and int4 scales with layer width, and on the trained models.

    python scripts/measure_quant_error.py --json docs/quantization/error_vs_width.json

Relative output error ||x Wq^T - x W^T|| / ||x W^T|| of one linear layer, over 256 inputs,
with the formats the node uses (policy/quantize.py: int8 per row, int4 in groups of 128 or
the largest divisor below). Rows: square random layers from 128 to 4096 wide (Gaussian
weights, and Student-t weights with 4 degrees of freedom, whose heavier tails stand for the
outliers of trained weights), then every decoder linear of each embedded model (its real
weights, averaged per projection; inputs: Gaussian).
"""

import argparse
import json
from pathlib import Path

import torch

from flashvla_ros.policy.checkpoint import load_model
from flashvla_ros.policy.presets import model_path
from flashvla_ros.policy.quantize import int4_group, quantize_weight

WIDTHS = (128, 256, 512, 1024, 2048, 4096)
FORMATS = ('int8', 'int4')


def relative_error(weight: torch.Tensor, fmt: str, inputs: torch.Tensor) -> float:
    ref = inputs @ weight.T
    out = torch.nn.functional.linear(inputs, quantize_weight(weight, fmt))
    return float((out - ref).norm() / ref.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--json', type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for dist in ('gaussian', 'student-t4'):
        for width in WIDTHS:
            shape = (width, width)
            weight = (torch.randn(shape) if dist == 'gaussian'
                      else torch.distributions.StudentT(4.0).sample(shape)) * 0.02
            inputs = torch.randn(256, width)
            rows.append({'layer': f'random {dist}', 'width': width,
                         'int4_group': int4_group(width, torch.device('cpu')),
                         **{f: relative_error(weight, f, inputs) for f in FORMATS}})
    for name in ('default', 'default-dit'):
        model, _ = load_model(model_path(name))
        per_proj: dict[str, list[dict]] = {}  # projection -> per layer: width and errors
        for layer_name, module in model.language_model.model.layers.named_modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight.detach()
                inputs = torch.randn(256, weight.shape[1])
                per_proj.setdefault(layer_name.rpartition('.')[2], []).append(
                    {'width': weight.shape[1],
                     **{f: relative_error(weight, f, inputs) for f in FORMATS}})
        for proj, errors in per_proj.items():
            width = errors[0]['width']
            rows.append({'layer': f'{name} {proj}', 'width': width,
                         'int4_group': int4_group(width, torch.device('cpu')),
                         **{f: sum(e[f] for e in errors) / len(errors) for f in FORMATS}})
    print('| layer | input width | int4 group | int8 rel. error | int4 rel. error |')
    print('|---|---|---|---|---|')
    for r in rows:
        print(f'| {r["layer"]} | {r["width"]} | {r["int4_group"]} | {r["int8"]:.4f} | '
              f'{r["int4"]:.4f} |')
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({'command': 'python scripts/measure_quant_error.py',
                                         'rows': rows}, indent=1) + '\n')


if __name__ == '__main__':
    main()
