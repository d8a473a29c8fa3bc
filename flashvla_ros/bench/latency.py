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
Measure latency at OpenVLA-7B's shapes (random weights): full model vs presets, per decode path.

The decode paths are the reference one, the static-cache one and the compiled one.

    python -m flashvla_ros.bench.latency --device cuda --dtype bfloat16 --shapes 7b \
        --json docs/latency/latency_h200.json

Per configuration: the first step's time (after configure's warm-up, as the node runs it),
median and p99 per stage over the steady-state steps, and peak GPU memory. The frames come from
mock-world episodes driven by the (random) policy, so reuse gates see a moving scene. On CPU it
runs at tiny shapes (`--shapes tiny`), which is what the tests do.

Random weights decide nothing useful (no stable action to reuse, wrong drafts, no calibration),
so `--replay FILE` times a trained model's decisions instead (bench/replay.py): every
configuration that `flashvla-bench --decisions FILE` recorded, step by step, on these shapes
(OpenVLA-7B for an autoregressive recording, CogACT-7B for a diffusion one):

    flashvla-bench --model default-dit --episodes 20 --accel none --accel efficientvla \
        --decisions decisions.json
    python -m flashvla_ros.bench.latency --replay decisions.json --shapes cogact-7b \
        --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
import tempfile
import time

import numpy as np
import torch

from ..accel.registry import accelerate, parse_accel
from ..policy.checkpoint import HEAD_DTYPE
from ..policy.flops import count_flops, full_flops, project
from ..policy.openvla import OpenVLA, OpenVLAPolicy
from ..policy.presets import cogact_7b_config, openvla_7b_config, tiny_cogact_config, tiny_config
from ..policy.step import Observation
from ..policy.tokenizer import (
    LLAMA2_SPACE_ID,
    build_llama_tokenizer,
    instruction_corpus,
    load_tokenizer,
    save_tokenizer_files,
)
from ..sim.tasks import FAMILIES, Episode
from ..tools.make_tiny import random_model
from .replay import Replay, read_decisions

STAGES = ('preprocess', 'vision', 'prefill', 'decode', 'head', 'total')
CONFIGS = ('none', 'flashvla', 'flashvla:fast')
PATHS = ('reference', 'static', 'compiled')
SHAPES = {'tiny': tiny_config, 'tiny-dit': tiny_cogact_config, '7b': openvla_7b_config,
          'cogact-7b': cogact_7b_config}


def build_model(shapes: str, device: str, dtype: torch.dtype) -> tuple[OpenVLA, object]:
    """Make a randomly initialised model (make_tiny's init) and a Llama-2-sized tokenizer."""
    cfg = SHAPES[shapes]()
    with torch.device(device):
        model = random_model(cfg, seed=0)
    tok = build_llama_tokenizer(instruction_corpus(), vocab_size=32000,
                                space_token_id=LLAMA2_SPACE_ID)
    with tempfile.TemporaryDirectory() as tmp:  # the files, as a checkpoint holds them
        save_tokenizer_files(tok, Path(tmp), model_max_length=cfg.text.max_position_embeddings)
        tokenizer = load_tokenizer(tmp)
    model = model.to(dtype).eval()
    if cfg.action_model is not None:  # the diffusion head stays fp32, as load_model keeps it
        model.action_model.to(HEAD_DTYPE)
    return model, tokenizer


def frames(steps: int, seed: int = 1_000_000) -> list[Observation]:
    """Mock-world frames along scripted-expert episodes, families in turn."""
    out, i = [], 0
    while len(out) < steps:
        ep = Episode(seed + i, FAMILIES[i % len(FAMILIES)], max_steps=40)
        while not ep.done and len(out) < steps:
            out.append(Observation(ep.observe(), ep.instruction))
            ep.step(ep.expert_action())
        i += 1
    return out


def measure(policy: OpenVLAPolicy, observations: list[Observation], device: str,
            after_warm_up=None) -> dict:
    """Warm up (as configure does), then time every step; the first one on its own."""
    cuda = device.startswith('cuda')
    start = time.perf_counter()
    policy.warm_up()
    warm_up_s = time.perf_counter() - start
    if after_warm_up is not None:
        after_warm_up()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    reused = 0
    for obs in observations:
        chunk = policy.predict(obs)
        reused += chunk.info.reused
        for s in STAGES:
            stages[s].append(chunk.timings_ms[s])
    steady = {s: v[1:] or v for s, v in stages.items()}
    return {
        'warm_up_s': round(warm_up_s, 2),
        'first_step_ms': round(stages['total'][0], 3),
        'median_ms': {s: round(float(np.median(v)), 3) for s, v in steady.items()},
        'p99_ms': {s: round(float(np.percentile(v, 99)), 3) for s, v in steady.items()},
        'mean_ms': round(float(np.mean(steady['total'])), 3),  # time per control step
        'stage_mean_ms': {s: round(float(np.mean(v)), 3) for s, v in steady.items()},
        'steps': len(observations), 'reuse_rate': reused / len(observations),
        'peak_memory_gib': round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def run(shapes: str = 'tiny', device: str = 'cpu', dtype: str = 'float32', steps: int = 30,
        configs: tuple[str, ...] = CONFIGS, paths: tuple[str, ...] = PATHS, log=print,
        save=None, built: tuple[OpenVLA, object] | None = None) -> dict:
    """
    Time every configuration on every path; `save(report)` gets the report after each one.

    `built`: the model and tokenizer of `build_model(shapes, ...)`, when already made.
    """
    torch_dtype = getattr(torch, dtype)
    model, tokenizer = built or build_model(shapes, device, torch_dtype)
    observations = frames(steps)
    results: list[dict] = []
    report = {
        'shapes': shapes, 'device': device, 'dtype': dtype, 'steps': steps,
        'gpu': torch.cuda.get_device_name() if device.startswith('cuda') else None,
        'torch': torch.__version__,
        'command': ' '.join(['python -m flashvla_ros.bench.latency', *sys.argv[1:]]),
        'results': results,
    }
    for path in paths:
        for spec in configs:
            names, options = parse_accel(spec)
            policy = OpenVLAPolicy(model, tokenizer, static_cache=path != 'reference',
                                   compile=path == 'compiled')
            accelerate(policy, names, options)
            result = {'config': spec, 'path': path, **measure(policy, observations, device)}
            results.append(result)
            log(f'{spec:>14} {path:>9}: first {result["first_step_ms"]:.1f} ms, median '
                f'{result["median_ms"]["total"]:.1f} ms, p99 {result["p99_ms"]["total"]:.1f} '
                f'ms', file=sys.stderr)
            if save is not None:  # a run cut off by a time limit keeps what it measured
                save(report)
            if device.startswith('cuda'):
                torch.compiler.reset()  # each compiled policy owns its graphs
    return report


def replay(decisions: dict, shapes: str = 'tiny', device: str = 'cpu', dtype: str = 'float32',
           path: str = 'reference', log=print, save=None,
           built: tuple[OpenVLA, object] | None = None) -> dict:
    """Time every recorded configuration's decisions on `shapes` (random weights)."""
    model, tokenizer = built or build_model(shapes, device, getattr(torch, dtype))
    cfg = model.cfg
    source = Path(decisions['model']).name
    label = (f'{shapes} shapes, random weights, decisions replayed from {source}, '
             f'{decisions["episodes"]} episodes')
    results: list[dict] = []
    report = {'shapes': shapes, 'device': device, 'dtype': dtype, 'decisions': label,
              'gpu': torch.cuda.get_device_name() if device.startswith('cuda') else None,
              'torch': torch.__version__,
              'command': ' '.join(['python -m flashvla_ros.bench.latency', *sys.argv[1:]]),
              'results': results}
    for name, records in decisions['configs'].items():
        policy = OpenVLAPolicy(model, tokenizer, static_cache=path != 'reference',
                               compile=path == 'compiled')
        replayed = Replay(records)
        policy.set_hooks([replayed])
        projected = [project(r, cfg) for r in records]
        flops = sum(count_flops(cfg, r).total for r in projected)
        full = sum(full_flops(cfg, r.layout).total for r in projected)
        result = {'config': name, 'path': path, 'decisions': label,
                  'flops_vs_full': round(flops / full, 4),
                  **measure(policy, frames(len(records)), device, replayed.rewind)}
        results.append(result)
        log(f'{name:>28} {path:>9}: median {result["median_ms"]["total"]:.1f} ms, mean '
            f'{result["mean_ms"]:.1f} ms, FLOPs {result["flops_vs_full"]:.1%} of full',
            file=sys.stderr)
        if save is not None:
            save(report)
        if device.startswith('cuda'):
            torch.compiler.reset()
    return report


def table(report: dict) -> str:
    head = ['config', 'path', 'first step ms', 'median ms', 'mean ms', 'p99 ms',
            'vision / prefill / decode median ms', 'mean vs none (same path)', 'reuse',
            'peak GiB']
    rows = []
    base = {r['path']: r['mean_ms'] for r in report['results'] if r['config'] == 'none'}
    for r in report['results']:
        m = r['median_ms']
        ratio = r['mean_ms'] / base[r['path']] if r['path'] in base else float('nan')
        rows.append([r['config'], r['path'], f'{r["first_step_ms"]:.1f}', f'{m["total"]:.1f}',
                     f'{r["mean_ms"]:.1f}', f'{r["p99_ms"]["total"]:.1f}',
                     ' / '.join(f'{m[s]:.1f}' for s in ('vision', 'prefill', 'decode')),
                     f'{ratio:.2f}x', f'{r["reuse_rate"]:.0%}',
                     '-' if r['peak_memory_gib'] is None else f'{r["peak_memory_gib"]:.1f}'])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shapes', choices=sorted(SHAPES), default='tiny')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32',
                        choices=('float32', 'bfloat16', 'float16'))
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--accel', action='append', help=f'configurations (default: {CONFIGS})')
    parser.add_argument('--path', action='append', choices=PATHS,
                        help=f'decode paths (default: all of {PATHS})')
    parser.add_argument('--replay', type=Path, metavar='DECISIONS.json',
                        help="time the decisions flashvla-bench --decisions recorded (each "
                             "configuration's steps, replayed) instead of --accel")
    parser.add_argument('--json', type=Path, help='write the report here')
    args = parser.parse_args(argv)

    def save(report: dict) -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + '\n')

    if args.replay:
        decisions = read_decisions(args.replay)
        report = {'results': []}
        for path in args.path or PATHS:
            part = replay(decisions, args.shapes, args.device, args.dtype, path)
            report = {**part, 'results': report['results'] + part['results']}
            if args.json:
                save(report)
    else:
        report = run(args.shapes, args.device, args.dtype, args.steps,
                     tuple(args.accel or CONFIGS), tuple(args.path or PATHS),
                     save=save if args.json else None)
    print(table(report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
