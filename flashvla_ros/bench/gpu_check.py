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
The GPU check (scripts/gpu_check.sh): 7B-shape step times, per configuration, in one run.

    python -m flashvla_ros.bench.gpu_check --device cuda --dtype bfloat16 \
        --json docs/latency/gpu.json --readme README.md

For each head (OpenVLA-7B shapes with the autoregressive default's decisions, CogACT-7B
shapes with default-dit's): the plain model; every recorded configuration with its decisions
replayed from the trained model (bench/replay.py); and each accelerator set up to decide
nothing (every token kept, no reuse, drafts that random weights reject), which must cost
nothing. Beside them, a floor: the weights read once per pass at the measured memory
bandwidth plus the prefill's FLOPs at the measured matmul rate (an estimate, labelled so).
It writes `--json` and the GPU table of `--readme` (between its markers), and says which
targets are met. On CPU at tiny shapes it is what the tests run.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
from pathlib import Path
import re
import sys
import time

import torch

from ..policy.actions import ACTION_DIM
from ..policy.flops import full_flops
from ..policy.layout import SequenceLayout
from ..policy.openvla import OpenVLA
from ..policy.quantize import Quantization, quantize_arg, quantize_model, weight_bytes
from .latency import build_model, replay, run
from .replay import read_decisions

ROOT = Path(__file__).resolve().parents[2]
DECISIONS = {'openvla-7b': ROOT / 'docs' / 'latency' / 'decisions_default.json',
             'cogact-7b': ROOT / 'docs' / 'latency' / 'decisions_default-dit.json'}
DECIDE_NOTHING = {  # each accelerator's hooks running, deciding nothing (no draft either:
    # random weights may accept one; a rejected draft is the replayed REJECTED row)
    'openvla-7b': ('flashvla:keep_fraction=1.0,reuse=false,draft=false',),
    'cogact-7b': ('efficientvla:preset=', 'flashvla:keep_fraction=1.0,reuse=false,draft=false'),
}
REJECTED = 'flashvla drafts, every one rejected'
# Targets on one H200, bf16, batch 1 (issue 25): (shapes, config or kind, bound, what).
TARGETS = (('openvla-7b', 'none', 40.0, 'median ms'),
           ('openvla-7b', 'none', 1.2, 'first step vs median'),
           ('cogact-7b', 'none', 1.2, 'first step vs median'),
           ('openvla-7b', 'decide nothing', 1.03, 'mean vs none'),
           ('cogact-7b', 'decide nothing', 1.03, 'mean vs none'),
           ('openvla-7b', 'flashvla', 0.7, 'mean vs none'),
           ('cogact-7b', 'efficientvla', 0.6, 'mean vs none'),
           ('cogact-7b', 'efficientvla+flashvla:reuse', 0.45, 'mean vs none'))
STAGES = ('vision', 'prefill', 'decode', 'head')
# Published figures of the edge targets: memory bandwidth (LPDDR5) and dense FP16 tensor rate
# (the GPU's sparse INT8 TOPS / 4: AGX Orin 64 GB 170, Orin NX 16 GB 60), and memory size.
JETSONS = {'Jetson AGX Orin 64GB': {'bandwidth_gb_s': 204.8, 'fp16_tflop_s': 42.5,
                                    'memory_gib': 64},
           'Jetson Orin NX 16GB': {'bandwidth_gb_s': 102.4, 'fp16_tflop_s': 15.0,
                                   'memory_gib': 16}}
MEMORY_SHARE = 0.75  # of a Jetson's memory (shared with the CPU) the weights may take
MEMORY_BOUND = ('decode',)  # a pass per token reads every weight: scales with bandwidth
BEGIN, END = '<!-- BEGIN gpu table: scripts/gpu_check.sh -->', '<!-- END gpu table -->'


def measured_rates(device: str, dtype: torch.dtype) -> tuple[float, float]:
    """Measure memory bandwidth (bytes/s, a large copy) and matmul rate (FLOP/s) here."""
    def timed(fn, reps: int = 5) -> float:
        fn()
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / reps

    size = 2**28 if device.startswith('cuda') else 2**24  # elements
    a = torch.empty(size, dtype=dtype, device=device)
    b = torch.empty_like(a)
    bandwidth = 2 * a.numel() * a.element_size() / timed(lambda: b.copy_(a))
    n = 8192 if device.startswith('cuda') else 512
    x = torch.randn(n, n, dtype=dtype, device=device)
    rate = 2 * n**3 / timed(lambda: x @ x)
    return bandwidth, rate


def floor_ms(model: OpenVLA, bandwidth: float, rate: float) -> float:
    """
    Estimate the step's floor: the weights a pass reads, once per pass, plus the compute.

    Passes: the prefill, then one per action token after the first (OpenVLA: the decoder
    layers and the LM head) or one per DiT forward (its weights only, as stored). The vision
    towers and the prefill of a 20-token prompt are counted at the measured matmul rate.
    """
    cfg, llm = model.cfg, model.language_model
    decoder = weight_bytes(llm.model.layers, llm.lm_head)
    layout = SequenceLayout(cfg.num_patches, 20, 0 if cfg.action_model else ACTION_DIM)
    flops = full_flops(cfg, layout)
    reads = decoder * max(1, layout.actions)  # the prefill, then actions - 1 decode passes
    if cfg.action_model is not None:
        reads += cfg.action_model.ddim_steps * weight_bytes(model.action_model)
    return 1e3 * (reads / bandwidth + (flops.vision + flops.prefill) / rate)


def check(device: str = 'cpu', dtype: str = 'float32', path: str = 'compiled',
          shapes: dict[str, str] | None = None, decisions: dict[str, Path] | None = None,
          steps: int = 30, log=print, save=None, quantize: tuple[str, ...] = (),
          plain_only: bool = False) -> dict:
    """
    Run every row; return the gpu.json report (its shape: docs/latency/README.md).

    Then, per `quantize` format, the plain OpenVLA-7B-shaped model with its decoder quantized
    (head `openvla-7b [FORMAT]`), against the unquantized plain row. `plain_only`: of each
    head, only the plain model (a short run for the quantized rows).
    """
    shapes = shapes or {'openvla-7b': '7b', 'cogact-7b': 'cogact-7b'}
    decisions = decisions or DECISIONS
    torch_dtype = getattr(torch, dtype)
    bandwidth, rate = measured_rates(device, torch_dtype)
    report: dict = {
        'device': torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu',
        'dtype': dtype, 'path': path, 'torch': torch.__version__,
        'bandwidth_gb_s': round(bandwidth / 1e9, 1), 'matmul_tflop_s': round(rate / 1e12, 2),
        'floor_ms': {}, 'results': []}
    quantized = [Quantization.parse(q) for q in quantize]  # a typo fails now, not at the end
    if quantized and 'openvla-7b' not in shapes:
        raise ValueError('the quantized rows are OpenVLA-7B shapes: keep the openvla-7b head')
    plain_runs: dict[str, dict] = {}  # head -> its plain model's run (the quantized rows' base)
    for name, shape in shapes.items():
        recorded = read_decisions(decisions[name])
        plain_records = recorded['configs']['none']
        n = plain_records[0].layout.actions
        if n > 1:  # a token head: every step drafts, and every guess is wrong at once
            recorded['configs'][REJECTED] = [
                replace(r, decode_calls=[(n - 1, 0)] + [(1, k) for k in range(1, n - 1)])
                for r in plain_records]
        built = build_model(shape, device, torch_dtype)  # once per head: 15 GB at 7B
        report['floor_ms'][name] = round(floor_ms(built[0], bandwidth, rate), 2)
        report.setdefault('weights_gib', {})[name] = round(weight_bytes(built[0]) / 2**30, 2)
        label = shapes_label(name, shape)
        if plain_only:
            r = run(shape, device, dtype, steps, ('none',), (path,), log=log,
                    built=built)['results'][0]
            report['results'].append(row(r, name, label, 'plain', path, r))
            plain_runs[name] = r
            del built
            continue
        rows = replay(recorded, shape, device, dtype, path, log=log, built=built)['results']
        none = next(r for r in rows if r['config'] == 'none')
        nothing = run(shape, device, dtype, steps, ('none', *DECIDE_NOTHING[name]), (path,),
                      log=log, built=built)['results']
        del built
        plain = plain_runs[name] = next(r for r in nothing if r['config'] == 'none')
        for r in rows:
            kind = 'decide nothing' if r['config'] == REJECTED else r['decisions']
            report['results'].append(row(r, name, label, kind, path, none))
        for r in nothing:
            if r['config'] != 'none':
                report['results'].append(row(r, name, label, 'decide nothing', path, plain))
        if device.startswith('cuda'):
            torch.cuda.empty_cache()
        if save is not None:  # a run cut off by its time limit keeps the heads it finished
            save(report)
    for quant in quantized:
        try:
            quant.check(torch.device(device), torch_dtype)
        except ValueError as exc:  # no kernel or no torchao here: said, not measured
            report.setdefault('quantize_refused', {})[str(quant)] = str(exc)
            continue
        shape = shapes['openvla-7b']
        built = build_model(shape, device, torch_dtype)
        quantize_model(built[0], quant)
        head = f'openvla-7b [{quant}]'
        report['weights_gib'][head] = round(weight_bytes(built[0]) / 2**30, 2)
        r = run(shape, device, dtype, steps, ('none',), (path,), log=log,
                built=built)['results'][0]
        del built
        r['config'] = f'none [{quant}]'
        report['results'].append(row(r, head, shapes_label('openvla-7b', shape), 'plain', path,
                                     plain_runs['openvla-7b']))
        if device.startswith('cuda'):
            torch.cuda.empty_cache()
        if save is not None:
            save(report)
    report['targets'] = targets(report)
    report['jetson_estimate'] = jetson_estimate(report)
    return report


def shapes_label(head: str, shape: str) -> str:
    """Name the shapes a head's rows ran at: the head's name at 7B, else the tiny shapes."""
    return head if shape in ('7b', 'cogact-7b') else shape


def jetson_estimate(report: dict) -> list[dict]:
    """
    Estimate each measured row on the Jetsons from the per-stage times measured here.

    The decode stage (one pass per token, every weight read) scales with memory bandwidth;
    vision, prefill and head (compute-bound at these sizes) with the dense FP16 rate, each at
    its mean over the steps (reused ones included); the median scales as the mean does. What
    it assumes: the same kernels reach the same share of each device's peak. `weights_fit`
    says whether the weights, in the measured dtype, take at most MEMORY_SHARE of the
    device's memory (15 GB of bf16 at OpenVLA-7B do not, on 16 GB: that needs int8 or int4).
    """
    out = []
    for device, spec in JETSONS.items():
        slower_memory = report['bandwidth_gb_s'] / spec['bandwidth_gb_s']
        slower_compute = report['matmul_tflop_s'] / spec['fp16_tflop_s']
        for r in report['results']:
            stages = r['stages_mean_ms']
            mean = sum(ms * (slower_memory if s in MEMORY_BOUND else slower_compute)
                       for s, ms in stages.items())
            scale = mean / max(1e-9, sum(stages.values()))
            out.append({'device': device, 'config': r['config'], 'head': r['head'],
                        'decisions': r['decisions'], 'mean_ms': round(mean, 1),
                        'median_ms': round(r['median_ms'] * scale, 1),
                        'weights_fit': report['weights_gib'][r['head']]
                        <= MEMORY_SHARE * spec['memory_gib'],
                        'label': 'estimate from published bandwidth and FP16 rate'})
    return out


def row(r: dict, head: str, shapes: str, decisions: str, path: str, none: dict) -> dict:
    return {'config': r['config'], 'head': head, 'shapes': shapes, 'decisions': decisions,
            'path': path,
            'median_ms': r['median_ms']['total'], 'mean_ms': r['mean_ms'],
            'first_step_ms': r['first_step_ms'],
            'stages_median_ms': {s: r['median_ms'][s] for s in STAGES},
            'stages_mean_ms': {s: r['stage_mean_ms'][s] for s in STAGES},
            'ratio_mean_vs_none': round(r['mean_ms'] / none['mean_ms'], 4),
            'flops_vs_full': r.get('flops_vs_full'), 'reuse_rate': r['reuse_rate']}


def targets(report: dict) -> list[dict]:
    """Say, per target, the value reached and whether it is met (7B shapes only)."""
    out = []
    for shapes, what, bound, unit in TARGETS:
        rows = [r for r in report['results'] if r['shapes'] == shapes and (
            r['decisions'] == 'decide nothing' if what == 'decide nothing'
            else r['config'] == what and r['decisions'] != 'decide nothing')]
        if not rows:
            continue
        worst = max(value(r, unit) for r in rows)
        out.append({'shapes': shapes, 'config': what, 'value': worst, 'bound': bound,
                    'unit': unit, 'met': worst <= bound})
    return out


def value(r: dict, unit: str) -> float:
    """Read one row's value in a target's unit."""
    if unit == 'median ms':
        return r['median_ms']
    if unit == 'first step vs median':  # the warm-up at configure: the first step as fast
        return round(r['first_step_ms'] / r['median_ms'], 3)
    return r['ratio_mean_vs_none']


def table(report: dict) -> str:
    """Render the GPU table: one line per row, the floor above it, the targets under it."""
    lines = [f'{report["device"]}, {report["dtype"]}, path `{report["path"]}`; floor '
             'estimate (weights read once per pass + prefill compute): '
             + ', '.join(f'{k} {v:.1f} ms' for k, v in report['floor_ms'].items()), '',
             '| config | shapes | decisions | median ms | mean ms | mean vs none '
             '| first step ms |', '|---|---|---|---|---|---|---|']
    for r in report['results']:
        lines.append(f'| `{r["config"]}` | {r["shapes"]} | {r["decisions"]} | '
                     f'{r["median_ms"]:.1f} | {r["mean_ms"]:.1f} | '
                     f'{r["ratio_mean_vs_none"]:.2f}x | {r["first_step_ms"]:.1f} |')
    for device in JETSONS:
        rows = [e for e in report.get('jetson_estimate', []) if e['device'] == device
                and e['decisions'] != 'decide nothing']
        if rows:
            lines += ['', f'{device}, an estimate (published bandwidth and FP16 rate, the '
                      'stages measured here): ' + '; '.join(
                          f'{e["head"]} `{e["config"]}` mean {e["mean_ms"]:.0f} ms'
                          + ('' if e['weights_fit'] else ' (weights do not fit)')
                          for e in rows)]
    lines += ['', 'Targets (issue 25): ' + ('; '.join(
        f'{t["shapes"]} {t["config"]} {t["unit"]} {t["value"]:.2f} '
        f'({"met" if t["met"] else "missed"}, at most {t["bound"]:g})'
        for t in report['targets']) or 'they apply at 7B shapes')]
    return '\n'.join(lines)


def write_table(readme: Path, text: str) -> None:
    """Replace what lies between the GPU table's markers in `readme`."""
    page = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + '.*?' + re.escape(END), re.S)
    if not pattern.search(page):
        raise ValueError(f'{readme} has no GPU table markers ({BEGIN} ... {END})')
    readme.write_text(pattern.sub(lambda _: f'{BEGIN}\n{text}\n{END}', page))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--dtype', default='bfloat16',
                        choices=('float32', 'bfloat16', 'float16'))
    parser.add_argument('--path', default='compiled', choices=('reference', 'static',
                                                               'compiled'))
    parser.add_argument('--tiny', action='store_true',
                        help='tiny shapes instead of 7B ones (a dry run on CPU)')
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--heads', nargs='+', choices=('openvla-7b', 'cogact-7b'),
                        help='only these heads (default: both)')
    parser.add_argument('--plain-only', action='store_true',
                        help='of each head, only the plain model (with --quantize: a short '
                             'run of the quantized rows)')
    parser.add_argument('--quantize', nargs='*', default=[], metavar='FORMAT',
                        type=quantize_arg,
                        help='also time the plain OpenVLA-7B shapes with the decoder in these '
                             'formats (int8, int4; needs torchao)')
    parser.add_argument('--json', type=Path)
    parser.add_argument('--readme', type=Path, help='rewrite the GPU table of this page')
    args = parser.parse_args(argv)
    shapes = ({'openvla-7b': 'tiny', 'cogact-7b': 'tiny-dit'} if args.tiny
              else {'openvla-7b': '7b', 'cogact-7b': 'cogact-7b'})
    shapes = {k: v for k, v in shapes.items() if k in (args.heads or shapes)}

    def save(report: dict) -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + '\n')

    report = check(args.device, args.dtype, args.path, shapes, steps=args.steps,
                   save=save if args.json else None, quantize=tuple(args.quantize),
                   plain_only=args.plain_only)
    text = table(report)
    print(text)
    if args.json:
        save(report)
    if args.readme:
        write_table(args.readme, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
