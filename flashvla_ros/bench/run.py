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
flashvla-bench: closed-loop success, latency, FLOPs, reuse and fidelity, side by side.

    flashvla-bench --accel none --episodes 200 --json out.json --plot out.png
    flashvla-bench --quantize none --quantize int8 --quantize int4 --accel none --accel flashvla
    flashvla-bench --world libero --suite libero_object --init-states 0:20 --accel none

Every configuration (`--accel NAME[:PRESET][,KEY=VALUE...]`, several accelerators joined by
`+` in hook order, or a YAML parameter file with an `accel: [names]` list; crossed with each
`--quantize FORMAT[:SCOPE]`, quantization first) runs the same held-out episodes (seeds from
--seed on, families in turn; or with `--world libero`, every task of a LIBERO suite on the
chosen fixed initial states under OpenVLA's evaluation protocol, docs/LIBERO.md), interleaved
episode by episode, in-process. A group is a task family (mock) or a task (LIBERO).
JSON schema (one object):

  {"model": str, "world": "mock" | "libero", "episodes": int, "seed": int, "max_steps": int,
   "command": str, "specs": [[task, seed or initial state], ...],
   # libero only: "suite": str, "init_states": [A, B], "render": str, "center_crop": bool
   "chunks": {"mode": str, "steps": int, "horizon": int, "alpha": float},  # steps -1: each
                                                                 # model's (configs' chunk_steps)
   "expert": {"success": float, "success_ci95": [lo, hi], "per_group": {group: float}},
   "configs": [{"name": str, "options": {...}, "model": str, "chunk_steps": int,
     "quantize": str,   # none, int8, int4 (name: "ACCEL [FORMAT]" when not none)
     "success": float, "success_ci95": [lo, hi],   # Wilson
     "per_group": {group: float},
     "paired_diff": {"mean": float, "ci95": [lo, hi]} | null,   # vs the first config
     "paired_diff_vs_full_precision": {...} | null,   # quantized: vs the same config unquantized
     "successes": [0 | 1, ...],   # per episode, in order
     "latency_ms": {part: {"median", "mean", "p99": float}},   # part: vision (with
                                                    # preprocessing), prefill, decode, head, total
     "flops_per_step": {"vision", "prefill", "decode", "head", "select", "total": float},
     "reuse_rate": float, "steps": int,   # inferences
     "control_steps": int,   # actions executed (a chunk drives several; FLOPs are per one)
     "flops_vs_full_7b_shapes": float,   # the same steps counted on OpenVLA-7B's shapes
     "fidelity": {"token_match": float, "mean_abs_diff": float}}]}  # vs the same model,
                                                    # full precision, no accelerator

`--markdown docs/BENCHMARKS.md` rewrites that page from the same run.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
import hashlib
import json
import math
import os
from pathlib import Path
import pickle
import sys
import time
from typing import Any

import numpy as np
import yaml

from ..accel.registry import accelerate, parse_accel
from ..control.chunks import (
    EXECUTE_CHUNKS,
    MODEL_CHUNKS,
    MODEL_STEPS,
    ChunkExecution,
    ChunkExecutor,
    Planned,
)
from ..params import accel_config, flatten, read_yaml
from ..policy import Observation, OpenVLAPolicy, expand_path, load_policy
from ..policy.flops import Flops, StepRecord, count_flops, full_flops, project
from ..policy.presets import EMBEDDED_MODELS, cogact_7b_config, model_path, openvla_7b_config
from ..policy.quantize import Quantization, quantize_arg
from ..sim.tasks import MockWorld
from ..sim.worlds import Episode, EpisodeSpec, World
from ..train.dataset import HELDOUT_SEED_START

PARTS = ('vision', 'prefill', 'decode', 'head', 'total')  # vision includes preprocessing
STAGES = PARTS[:-1]


@dataclass
class ConfigRun:
    name: str
    options: dict
    policy: Any
    successes: list[bool] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)  # per episode: its family or task
    latency: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PARTS})
    flops: list[Flops] = field(default_factory=list)
    reused: list[bool] = field(default_factory=list)
    records: list[StepRecord] = field(default_factory=list)
    token_match: list[float] = field(default_factory=list)
    abs_diff: list[float] = field(default_factory=list)
    digests: list[list[str]] = field(default_factory=list)  # per episode, per inference
    commands: list[list[np.ndarray]] = field(default_factory=list)  # per episode, per step
    model: str = ''  # its checkpoint
    baseline: Any = None  # the same model without accelerators (fidelity), if accelerated
    chunks: ChunkExecution = EXECUTE_CHUNKS  # as the node would execute this model's chunks
    executed: list[int] = field(default_factory=list)  # control steps each inference drove
    quantize: str = 'none'
    full_precision: Any = None  # the same configuration unquantized, if this one is quantized


# What a configuration has measured so far: what `--resume` saves after every episode.
MEASURED = ('successes', 'groups', 'latency', 'flops', 'reused', 'records', 'token_match',
            'abs_diff', 'digests', 'commands', 'executed')


class Progress:
    """
    The episodes done so far, saved after each one (`--resume FILE`): a rerun goes on there.

    The file names the run it belongs to (model, configurations, episodes, execution); a
    different run refuses it rather than mixing two runs' numbers.
    """

    def __init__(self, path: Path | None, run_key: dict) -> None:
        self.path, self.key = path, json.dumps(run_key, sort_keys=True, default=str)

    def load(self, runs: list[ConfigRun], expert: list[bool]) -> int:
        """Restore the measurements into `runs` and `expert`; return the episodes done."""
        if self.path is None or not self.path.exists():
            return 0
        with self.path.open('rb') as f:
            saved = pickle.load(f)
        if saved['key'] != self.key:
            raise ValueError(f'{self.path} holds another run\'s progress ({saved["key"]}); '
                             'remove it or name another file')
        for run, measured in zip(runs, saved['runs'], strict=True):
            for name in MEASURED:
                setattr(run, name, measured[name])
        expert[:] = saved['expert']
        return len(expert)

    def save(self, runs: list[ConfigRun], expert: list[bool]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix('.partial')
        with partial.open('wb') as f:  # then renamed: a run killed mid-write keeps the last
            pickle.dump({'key': self.key, 'expert': expert,
                         'runs': [{n: getattr(r, n) for n in MEASURED} for r in runs]}, f)
        os.replace(partial, self.path)


def read_accel(spec: str) -> tuple[list[str], dict]:
    """
    Read `--accel`: `NAME[:PRESET][,KEY=VALUE...]` joined by `+`, or a YAML parameter file.

    A YAML file is the node's (`policy_node: ros__parameters: {accel: [...], flashvla: ...}`)
    or holds the same keys at its top level.
    """
    if not spec.endswith(('.yaml', '.yml')):
        return parse_accel(spec)
    data = yaml.safe_load(expand_path(spec).read_text()) or {}
    values = flatten(data) if 'accel' in data else read_yaml(spec)
    if 'accel' not in values:
        raise ValueError(f'{spec}: needs "accel: [names]"')
    accel = accel_config(values)
    return list(accel.names), accel.options


def run_episode(run: ConfigRun, episode: Episode, baseline: OpenVLAPolicy | None) -> None:
    """
    Run one closed-loop episode, executing chunks as the node does (its `ChunkExecutor`).

    `execute`: the first `steps` actions of each chunk (0: all), the next inference when they
    ran; `ensemble`: a prediction every step, blended with the last ones.
    """
    executor: ChunkExecutor[Planned] = ChunkExecutor(run.chunks)
    run.policy.reset()
    run.digests.append([])
    run.commands.append([])
    while not episode.done:
        step = episode.steps
        if executor.wants(step):
            action = infer(run, Observation(episode.observe(), episode.instruction), baseline)
            executor.add([Planned(v) for v in action.actions], action.info.reused, step)
            run.executed.append(0)  # control steps this inference drives
        item, _ = executor.next(step, Planned.blend)
        if item is not None:  # None: a reuse continued a chunk that had run out
            episode.step(item.values)
            run.commands[-1].append(item.values)
            run.executed[-1] += 1
    run.successes.append(episode.success())
    run.groups.append(episode.spec.group)


def run_expert(world: World, spec: EpisodeSpec) -> bool:
    """Roll the world's scripted expert out on `spec` (no cameras): the bench's ceiling."""
    episode = world.open(spec, render=False)
    while not episode.done:
        episode.step(episode.expert_action())
    return episode.success()


def infer(run: ConfigRun, observation: Observation, baseline: OpenVLAPolicy | None):
    """One policy step of a configuration, with its timings, FLOPs, decisions and fidelity."""
    action = run.policy.predict(observation)
    for part in PARTS:
        ms = action.timings_ms.get(part, 0.0)
        run.latency[part].append(ms + (action.timings_ms['preprocess']
                                       if part == 'vision' else 0.0))
    run.flops.append(action.info.flops)
    run.reused.append(action.info.reused)
    run.records.append(action.info.record)
    run.digests[-1].append(action_digest(action))
    if baseline is not None:
        ref = baseline.predict(observation)
        same = np.array_equal(ref.token_ids, action.token_ids) if not action.token_ids \
            else np.mean(np.array(ref.token_ids) == np.array(action.token_ids))
        run.token_match.append(float(same))  # a chunk without tokens: identical or not
        run.abs_diff.append(float(np.abs(ref.values - action.values).mean()))
    else:
        run.token_match.append(1.0)
        run.abs_diff.append(0.0)
    return action


def action_digest(action) -> str:
    """
    Name one step's action in 12 hex digits (its tokens and values, bit for bit).

    Two runs of the same seeds are token-identical exactly when their digests are: what a
    refactor that must not change behaviour compares.
    """
    data = np.asarray(action.token_ids, np.int64).tobytes() + \
        np.asarray(action.values, np.float64).tobytes()
    return hashlib.sha1(data).hexdigest()[:12]


def per_group(successes: list[bool], groups: list[str]) -> dict[str, float]:
    """Success per task family (mock) or task (LIBERO), in the order they first ran."""
    return {g: float(np.mean([s for s, h in zip(successes, groups, strict=True) if h == g]))
            for g in dict.fromkeys(groups)}


def wilson(successes: list[bool]) -> list[float]:
    """Return the 95% Wilson interval of a success rate."""
    n = len(successes)
    if not n:
        return [float('nan'), float('nan')]
    p, z = float(np.mean(successes)), 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def paired_diff(a: list[bool], b: list[bool]) -> dict:
    d = np.array(b, float) - np.array(a, float)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float('nan')
    return {'mean': float(d.mean()), 'ci95': [float(d.mean() - half), float(d.mean() + half)]}


def projected_7b(run: ConfigRun) -> float:
    """
    Return the FLOPs share of the full model if these steps ran on OpenVLA-7B's shapes.

    Each step's record (what ran: layers, tokens per layer, decode calls, token scoring)
    re-counted on the 7B configuration: where the FLOPs targets would land on the real model.
    """
    cfg = cogact_7b_config() if run.policy.cfg.action_model is not None \
        else openvla_7b_config()  # a diffusion head projects onto CogACT's DiT-B
    projected = [project(r, cfg) for r in run.records]
    done = sum(count_flops(cfg, r).total for r in projected)
    full = sum(full_flops(cfg, r.layout).total for r in projected)
    return done / full if full else 1.0


def summarize(run: ConfigRun, first: ConfigRun | None) -> dict:
    full = run.full_precision
    flops = sum(run.flops, Flops())
    n = max(1, sum(run.executed))  # per control step: a chunk's FLOPs over the steps it drove
    return {
        'name': run.name, 'options': run.options, 'model': run.model,
        'chunk_steps': run.chunks.steps, 'quantize': run.quantize,
        'success': float(np.mean(run.successes)), 'success_ci95': wilson(run.successes),
        'per_group': per_group(run.successes, run.groups),
        'paired_diff': None if first is None else paired_diff(first.successes, run.successes),
        'paired_diff_vs_full_precision': None if full is None
        else paired_diff(full.successes, run.successes),
        'successes': [int(s) for s in run.successes],
        'latency_ms': {p: {'median': float(np.median(v)), 'mean': float(np.mean(v)),
                           'p99': float(np.percentile(v, 99))}
                       for p, v in run.latency.items()},
        'flops_per_step': {k: v / n for k, v in flops.as_dict().items()},
        'reuse_rate': float(np.mean(run.reused)) if run.reused else 0.0,
        'flops_vs_full_7b_shapes': projected_7b(run),
        'steps': len(run.flops), 'control_steps': sum(run.executed),
        'fidelity': {'token_match': float(np.mean(run.token_match)),
                     'mean_abs_diff': float(np.mean(run.abs_diff))},
        'step_digests': run.digests,
    }


def benchmark(model: str, accels: list[str], episodes: int = 0, seed: int = HELDOUT_SEED_START,
              max_steps: int = 80, device: str = 'cpu', log=print,
              chunks: ChunkExecution = MODEL_CHUNKS, decisions: Path | None = None,
              quantize: list[str] | None = None, dtype: str = 'float32',
              world: World | None = None, specs: list[EpisodeSpec] | None = None,
              unnorm_key: str | None = None, resume: Path | None = None) -> dict:
    """
    Run every configuration on the same held-out episodes.

    The mock world's `episodes` from `seed` on (at most `max_steps` each), or `world`'s `specs`
    (LIBERO: every task on its chosen initial states).

    A configuration is `[MODEL@]ACCEL`: MODEL (a path or an embedded name) runs instead of
    `model`, so two models compare side by side, paired on the same seeds. Each of `quantize`
    (default: none) crosses every configuration, in order. `decisions`: write every step's
    record there, per configuration (bench/replay.py replays them). `resume`: save the
    progress there after every episode, and go on from it (`Progress`).
    """
    plain: dict[str, OpenVLAPolicy] = {}

    def plain_policy(path: str) -> OpenVLAPolicy:
        if path not in plain:
            plain[path] = load_policy(path, device=device, dtype=dtype, unnorm_key=unnorm_key)
        return plain[path]

    runs = []
    for quant in [Quantization.parse(q) for q in quantize or ['none']]:
        for spec in accels:
            named, _, accel = spec.rpartition('@')
            path = str(model_path(named)) if named else model
            names, options = read_accel(accel)
            base = plain_policy(path)
            policy = base
            if quant.enabled or names not in ([], ['none']):
                policy = accelerate(load_policy(path, device=device, dtype=dtype,
                                                quantize=quant, unnorm_key=unnorm_key),
                                    names, options)
            label = '+'.join(names) if accel.endswith(('.yaml', '.yml')) else accel
            label = f'{named}@{label}' if named else label
            full = next((r for r in runs if r.name == label), None) if quant.enabled else None
            runs.append(ConfigRun(label + (f' [{quant}]' if quant.enabled else ''), options,
                                  policy, model=path, quantize=str(quant),
                                  baseline=None if policy is base else base,
                                  chunks=chunks.for_model(base.cfg.execution),
                                  full_precision=full))
    if world is None:
        world = MockWorld(max_steps)
        specs = world.specs(episodes, seed)
    specs = list(specs or [])
    expert: list[bool] = []
    progress = Progress(resume, {
        'model': model, 'configs': [(r.name, r.model) for r in runs], 'world': world.name,
        'specs': [(s.group, s.task, s.seed) for s in specs], 'max_steps': max_steps,
        'chunks': [r.chunks for r in runs], 'dtype': dtype, 'unnorm_key': unnorm_key})
    done = progress.load(runs, expert)
    if done:
        log(f'resuming after {done}/{len(specs)} episodes ({resume})', file=sys.stderr)
    start = time.perf_counter()
    for i, spec in enumerate(specs):
        if i < done:
            continue
        expert.append(run_expert(world, spec))
        for r in runs:
            run_episode(r, world.open(spec), r.baseline)
        progress.save(runs, expert)
        if (i + 1) % 10 == 0 or i + 1 == len(specs):
            rates = ' '.join(f'{r.name} {np.mean(r.successes):.1%}' for r in runs)
            log(f'episode {i + 1}/{len(specs)} | {rates} | '
                f'{time.perf_counter() - start:.0f} s', file=sys.stderr)
    if decisions is not None:
        write_decisions(decisions, model, len(specs), seed, runs)
    return {
        'model': model, 'world': world.name, 'episodes': len(specs), 'seed': seed,
        'max_steps': max_steps, 'specs': [[s.task, s.seed] for s in specs],
        'chunks': {'mode': chunks.mode, 'steps': chunks.steps, 'horizon': chunks.horizon,
                   'alpha': chunks.alpha},
        'command': ' '.join(['flashvla-bench', *sys.argv[1:]]),
        'expert': {'success': float(np.mean(expert)), 'success_ci95': wilson(expert),
                   'per_group': per_group(expert, runs[0].groups)},
        'configs': [summarize(r, runs[0] if k else None)
                    for k, r in enumerate(runs)],
    }


def write_decisions(path: Path, model: str, episodes: int, seed: int,
                    runs: list[ConfigRun]) -> None:
    """Write what every step of every configuration ran (its StepRecord), in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        'model': Path(model).name, 'episodes': episodes, 'seed': seed,
        'configs': {r.name: [record.to_dict() for record in r.records] for r in runs},
    }) + '\n')


MAX_GROUP_COLUMNS = 4  # more groups (LIBERO's ten tasks) get a table of their own


def table(report: dict) -> str:
    groups = list(report['expert']['per_group'])
    fams = groups if len(groups) <= MAX_GROUP_COLUMNS else []
    head = ['#', 'config', 'success', *fams, 'paired diff (95% CI)',
            'latency median / mean / p99 ms', 'median vs first',
            'vision / prefill / decode / head ms', 'GFLOPs/step', 'vision / LLM / head',
            'FLOPs vs first', 'FLOPs vs full, 7B shapes', 'actions per call', 'reuse',
            'token match', 'mean |dA|']
    rows = []
    first = report['configs'][0]
    for i, c in enumerate(report['configs'], 1):
        d = c['paired_diff']
        lat = c['latency_ms']
        rows.append([
            str(i), c['name'], f'{c["success"]:.1%}',
            *(f'{c["per_group"][f]:.1%}' for f in fams),
            '-' if d is None else f'{d["mean"]:+.1%} [{d["ci95"][0]:+.1%}, {d["ci95"][1]:+.1%}]',
            ' / '.join(f'{lat["total"][k]:.1f}' for k in ('median', 'mean', 'p99')),
            f'{lat["total"]["median"] / first["latency_ms"]["total"]["median"]:.2f}x',
            ' / '.join(f'{lat[p]["median"]:.1f}' for p in STAGES),
            f'{c["flops_per_step"]["total"] / 1e9:.3f}', flops_split(c['flops_per_step']),
            f'{c["flops_per_step"]["total"] / first["flops_per_step"]["total"]:.1%}',
            f'{c["flops_vs_full_7b_shapes"]:.1%}',
            f'{c.get("control_steps", c["steps"]) / max(1, c["steps"]):.2f}',  # older reports
            f'{c["reuse_rate"]:.1%}',
            f'{c["fidelity"]["token_match"]:.3f}', f'{c["fidelity"]["mean_abs_diff"]:.4f}',
        ])
    e = report['expert']
    expert = ['-', 'scripted expert (ceiling)', f'{e["success"]:.1%}',
              *(f'{e["per_group"][f]:.1%}' for f in fams)]
    rows.append(expert + ['-'] * (len(head) - len(expert)))
    text = markdown_table(head, rows)
    return text if fams or len(groups) <= 1 else text + '\n\n' + group_table(report)


def group_table(report: dict) -> str:
    """Success per task (a row each), every configuration and the expert side by side."""
    configs, expert = report['configs'], report['expert']
    head = ['task', *(f'#{i}' for i in range(1, len(configs) + 1)), 'expert']
    rows = [[g, *(f'{c["per_group"][g]:.0%}' for c in configs), f'{expert["per_group"][g]:.0%}']
            for g in expert['per_group']]
    return markdown_table(head, rows)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    return '\n'.join(lines + ['| ' + ' | '.join(r) + ' |' for r in rows])


def flops_split(per_step: dict[str, float]) -> str:
    """Say a step's FLOPs as vision / LLM (prefill, decode, token scoring) / head shares."""
    llm = per_step['prefill'] + per_step['decode'] + per_step['select']
    total = max(per_step['total'], 1e-30)
    return ' / '.join(f'{v / total:.0%}' for v in (per_step['vision'], llm, per_step['head']))


def plot_size(n_configs: int) -> tuple[int, int]:
    """Pixel size of the report figure: a row per configuration above two trade-off plots."""
    return 1600, 520 + 30 * max(n_configs, 3)


def plot(report: dict, path: Path, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """
    Draw the report with matplotlib (Agg) and write a PNG of `size` pixels; return the size.

    Top, one row per configuration (numbered as in the table): success with its 95% Wilson
    interval (per family as markers, the scripted expert as the ceiling), the paired
    difference to configuration 1 with its 95% CI, GFLOPs per control step by part, and
    latency per policy call (median bar, mean, p99). Bottom: success against GFLOPs per
    step and against mean latency, with the same success intervals.
    """
    from ..viz.figures import agg_figure, save_png, wilson_ci

    configs = report['configs']
    n = int(report['episodes'])
    size = size or plot_size(len(configs))
    fig = agg_figure(*size)
    grid = fig.add_gridspec(2, 4, height_ratios=[max(len(configs), 3) * 30 + 120, 380])
    rows = np.arange(len(configs))
    labels = [f'{i + 1}  {c["name"]}' if len(c['name']) <= 42 else f'{i + 1}  {c["name"][:40]}..'
              for i, c in enumerate(configs)]
    success = np.array([c['success'] for c in configs]) * 100
    ci = np.array([wilson_ci(round(c['success'] * n), n) for c in configs]) * 100
    err = np.stack([success - ci[:, 0], ci[:, 1] - success])
    colour = 'tab:blue'

    def below(ax) -> None:  # a legend under the axis label, clear of the rows
        ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.07), ncol=3,
                  frameon=False)

    ax = fig.add_subplot(grid[0, 0])
    ax.errorbar(success, rows, xerr=err, fmt='o', color=colour, capsize=3,
                label='all episodes, 95% CI (Wilson)')
    markers = {'reach': '^', 'pick_place': 's', 'push': 'v'}
    for family, marker in markers.items():
        if all(family in c['per_group'] for c in configs):
            ax.scatter([c['per_group'][family] * 100 for c in configs], rows, marker=marker,
                       facecolors='none', edgecolors='0.45', s=22, label=family)
    ax.axvline(report['expert']['success'] * 100, color='tab:green', ls='--', lw=1,
               label='scripted expert')
    ax.set_yticks(rows)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f'success rate, % of {n} episodes')
    ax.set_title('closed-loop success')
    below(ax)
    ax.grid(axis='x', alpha=0.3)

    ax = fig.add_subplot(grid[0, 1], sharey=ax)
    for i, c in enumerate(configs):
        d = c.get('paired_diff')
        if d is None:
            ax.text(0, i, 'reference', ha='center', va='center', fontsize=7, color='0.4')
            continue
        mean, (lo, hi) = d['mean'] * 100, (v * 100 for v in d['ci95'])
        tone = 'tab:green' if lo > 0 else 'tab:red' if hi < 0 else '0.35'
        ax.errorbar([mean], [i], xerr=[[mean - lo], [hi - mean]], fmt='o', color=tone,
                    capsize=3)
    ax.axvline(0, color='k', lw=0.8)
    ax.set_xlabel('success difference to #1, percentage points')
    ax.set_title('paired difference, 95% CI (same episodes)')
    ax.tick_params(labelleft=False)
    ax.grid(axis='x', alpha=0.3)

    ax = fig.add_subplot(grid[0, 2], sharey=ax)
    left = np.zeros(len(configs))
    parts = [p for p in ('vision', 'prefill', 'decode', 'head', 'select')
             if any(c['flops_per_step'].get(p, 0) for c in configs)]
    for part, tone in zip(parts, ('tab:purple', 'tab:blue', 'tab:orange', 'tab:gray',
                                  'tab:olive'), strict=False):
        width = np.array([c['flops_per_step'].get(part, 0.0) for c in configs]) / 1e9
        ax.barh(rows, width, left=left, color=tone, height=0.7, label=part)
        left += width
    ax.set_xlabel('GFLOPs per control step (analytic)')
    ax.set_title('work per step')
    below(ax)
    ax.tick_params(labelleft=False)
    ax.grid(axis='x', alpha=0.3)

    ax = fig.add_subplot(grid[0, 3], sharey=ax)
    lat = [c['latency_ms']['total'] for c in configs]
    med = np.array([v['median'] for v in lat])
    p99 = np.array([v['p99'] for v in lat])
    ax.barh(rows, med, color='tab:cyan', height=0.7, label='median')
    ax.errorbar(med, rows, xerr=[np.zeros_like(med), p99 - med], fmt='none', ecolor='k',
                capsize=3, lw=1, label='to p99')
    ax.scatter([v['mean'] for v in lat], rows, marker='x', color='k', s=18, zorder=3,
               label='mean (time per step)')
    ax.set_xlabel('latency per policy call, ms')
    ax.set_title('latency (this machine)')
    below(ax)
    ax.tick_params(labelleft=False)
    ax.grid(axis='x', alpha=0.3)

    for col, (key, xlabel) in enumerate((('flops', 'GFLOPs per control step (analytic)'),
                                         ('latency', 'mean latency per control step, ms'))):
        ax = fig.add_subplot(grid[1, 2 * col:2 * col + 2])
        xs = (np.array([c['flops_per_step']['total'] for c in configs]) / 1e9 if key == 'flops'
              else np.array([v['mean'] for v in lat]))
        ax.errorbar(xs, success, yerr=err, fmt='o', color=colour, capsize=3, ms=4,
                    label='success, 95% CI (Wilson)')
        for i, (x, y) in enumerate(zip(xs, success, strict=True)):
            ax.annotate(str(i + 1), (x, y), textcoords='offset points', xytext=(4, 3),
                        fontsize=7)
        ax.axhline(report['expert']['success'] * 100, color='tab:green', ls='--', lw=1,
                   label='scripted expert')
        ax.set_xlim(left=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('success rate, %')
        ax.set_title('success against ' + ('work' if key == 'flops' else 'time') +
                     ' (numbers: rows above)')
        ax.legend(fontsize=7, loc='lower right')
        ax.grid(alpha=0.3)
    fig.suptitle(f'{report["model"]}: {episodes_said(report)}', fontsize=11)
    save_png(fig, path)
    return size


def episodes_said(report: dict) -> str:
    """Say which episodes a report ran, in words."""
    if report.get('world', 'mock') == 'mock':
        return (f'{report["episodes"]} held-out mock-world episodes (seeds {report["seed"]}..'
                f'{report["seed"] + report["episodes"] - 1}, families in turn, at most '
                f'{report["max_steps"]} steps)')
    first, last = report['init_states']
    return (f'{report["suite"]}: {len(report["expert"]["per_group"])} tasks x initial states '
            f'{first}..{last - 1} ({report["episodes"]} episodes, OpenVLA\'s LIBERO protocol, '
            f'render {report["render"]})')


def upgrade(report: dict) -> dict:
    """Read a report saved before `per_group` (success per task family was `per_family`)."""
    for entry in [report['expert'], *report['configs']]:
        if 'per_family' in entry:
            entry['per_group'] = entry.pop('per_family')
    return report


def markdown(report: dict, plot_path: str | None) -> str:
    lines = ['# Benchmarks', '',
             'Regenerated by the benchmark itself (do not edit by hand):', '',
             f'    {report["command"]}', '',
             f'Model `{report["model"]}`, {episodes_said(report)}, on this machine\'s CPU, every '
             'configuration interleaved episode by episode. FLOPs are analytic counts of the '
             'work each control step recorded it ran (flashvla_ros/policy/flops.py: vision, '
             'decoder layers, head, and FlashVLA\'s token scoring as a textbook operation '
             'count); "7B shapes" re-counts the same records on OpenVLA-7B\'s shapes, '
             'CogACT-7B\'s (DiT-B) for a diffusion head (vision is 37% of the autoregressive '
             'default\'s FLOPs but 10% of OpenVLA-7B\'s). Latency is '
             'wall-clock per policy call (a reused step is one call); with reuse the '
             'distribution is bimodal, so the mean is the time per control step and the median '
             'is that of the more frequent kind of step. The paired difference is against the '
             'first configuration on the same episodes; fidelity compares actions with the full '
             'model\'s on the same observations (token match, mean |action difference|). '
             'FlashVLA options are written `flashvla[:preset][,option=value]`; `flashvla` alone '
             'is the conservative preset.', '', table(report), '']
    if report.get('note'):
        lines += [f'Note: {report["note"]}', '']
    if plot_path:
        lines += [f'![success vs FLOPs, latency]({plot_path})', '']
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=None,
                        help='checkpoint directory, or an embedded model: default (the '
                             'default), default-dit')
    parser.add_argument('--accel', action='append',
                        help='none, NAME[:PRESET][,KEY=VALUE...] (a+b composes), or a YAML file')
    parser.add_argument('--quantize', action='append', metavar='FORMAT[:SCOPE]', type=quantize_arg,
                        help='none, int8 or int4 (:all also quantizes the vision towers, the '
                             'projector and the LM head); repeat to cross with every --accel')
    parser.add_argument('--world', default='mock', choices=('mock', 'libero'),
                        help='mock: the tabletop (--episodes, --seed, --max-steps); libero: a '
                             "LIBERO suite under OpenVLA's protocol (the libero extra)")
    parser.add_argument('--suite', default='libero_object', help='libero: the suite')
    parser.add_argument('--init-states', default='0:50', metavar='A:B',
                        help="libero: each task's fixed initial states A..B-1 (default 0:50)")
    parser.add_argument('--tasks', default='',
                        help='libero: task indices, e.g. 0,3 (default: all)')
    parser.add_argument('--render', default='openvla', choices=('openvla', 'fast'),
                        help="libero: OpenVLA's rendering, or no shadows/multisampling")
    parser.add_argument('--center-crop', action='store_true',
                        help='libero: the 90%% centre crop of checkpoints trained with crops '
                             "(OpenVLA's LIBERO fine-tunes)")
    parser.add_argument('--unnorm-key', default=None,
                        help='the statistics to un-normalise with (libero default: the suite, '
                             'or SUITE_no_noops)')
    parser.add_argument('--episodes', type=int, default=200)
    parser.add_argument('--seed', type=int, default=HELDOUT_SEED_START,
                        help='first held-out seed (training never uses seeds from '
                             f'{HELDOUT_SEED_START} on)')
    parser.add_argument('--max-steps', type=int, default=80)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16', 'float16'),
                        help='weights dtype (int4 on CUDA needs bfloat16)')
    parser.add_argument('--chunk-mode', default='execute', choices=('execute', 'ensemble'),
                        help="how chunks drive the robot, as the node's chunk_mode")
    parser.add_argument('--chunk-steps', type=int, default=MODEL_STEPS,
                        help='execute: actions of each chunk to run (0: all; default -1: what '
                             "each model's config.json recommends, else all)")
    parser.add_argument('--ensemble-horizon', type=int, default=2)
    parser.add_argument('--ensemble-alpha', type=float, default=0.1)
    parser.add_argument('--resume', type=expand_path, metavar='FILE',
                        help='save the progress here after every episode, and go on from it '
                             '(a long LIBERO run over several sessions)')
    parser.add_argument('--json', type=expand_path, help='write the report here')
    parser.add_argument('--plot', type=expand_path,
                        help='write the figure (success with 95%% CIs, FLOPs, latency) here')
    parser.add_argument('--markdown', type=expand_path,
                        help='rewrite this page (docs/BENCHMARKS.md)')
    parser.add_argument('--report', type=expand_path,
                        help='render --plot/--markdown from this saved JSON instead of running')
    parser.add_argument('--decisions', type=expand_path, metavar='FILE.json',
                        help="write every step's decisions (its StepRecord), per configuration, "
                             'to replay them at 7B shapes (python -m flashvla_ros.bench.latency '
                             '--replay FILE.json)')
    parser.add_argument('--compare', type=expand_path, metavar='BEFORE.json',
                        help='check that every config named in both reports took the same '
                             'actions at every step (exit 1 if not)')
    args = parser.parse_args(argv)
    if args.plot:  # before a run of minutes, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from ..viz.figures import INSTALL_HINT
            parser.error(f'--plot: {INSTALL_HINT}')
    if args.report:
        report = upgrade(json.loads(args.report.read_text()))
    else:
        model = str(model_path(args.model))
        chunks = ChunkExecution(mode=args.chunk_mode, steps=args.chunk_steps,
                                horizon=args.ensemble_horizon, alpha=args.ensemble_alpha)
        world, specs, unnorm_key = open_world(args, model)
        report = benchmark(model, args.accel or ['none'], args.episodes, args.seed,
                           args.max_steps, args.device, log=print, chunks=chunks,
                           decisions=args.decisions, quantize=args.quantize, dtype=args.dtype,
                           world=world, specs=specs, unnorm_key=unnorm_key,
                           resume=args.resume)
        if world is not None:
            world.close()  # its GL contexts, before the interpreter tears EGL down
        if args.world == 'libero':
            report.update(suite=args.suite, init_states=list(specs_range(args.init_states)),
                          render=args.render, center_crop=args.center_crop)
        if args.model in (None, *EMBEDDED_MODELS):
            report['model'] = f'flashvla_ros/models/{args.model or "default"} (embedded)'
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + '\n')
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(report, args.plot)
    if args.markdown:
        rel = None
        if args.plot:
            rel = str(Path(args.plot).resolve().relative_to(args.markdown.resolve().parent)) \
                if args.plot.resolve().is_relative_to(args.markdown.resolve().parent) \
                else str(args.plot)
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(report, rel))
    if args.compare:
        differences = compare(json.loads(args.compare.read_text()), report)
        print('\n'.join(differences) or f'token-identical to {args.compare} in every episode')
        return 1 if differences else 0
    return 0


def specs_range(text: str) -> tuple[int, int]:
    """Read `--init-states A:B`."""
    first, _, last = text.partition(':')
    try:
        a, b = int(first), int(last)
    except ValueError:
        raise ValueError(f'--init-states wants A:B, got {text!r}') from None
    if not 0 <= a < b:
        raise ValueError(f'--init-states A:B needs 0 <= A < B, got {text!r}')
    return a, b


def open_world(args, model: str) -> tuple[World | None, list[EpisodeSpec] | None, str | None]:
    """Return the world and episodes the arguments name (None: the mock world's defaults)."""
    if args.world == 'mock':
        return None, None, args.unnorm_key
    from ..sim.libero import LiberoWorld
    from ..sim.openvla_protocol import unnorm_key
    world = LiberoWorld(args.suite, render=args.render, center_crop=args.center_crop)
    a, b = specs_range(args.init_states)
    tasks = [int(t) for t in args.tasks.split(',') if t.strip()] or None
    keys = list(json.loads((Path(model) / 'config.json').read_text()).get('norm_stats', {}))
    key = args.unnorm_key or (unnorm_key(args.suite, keys) if len(keys) > 1 else None)
    return world, world.specs(b - a, a, tasks), key


def compare(before: dict, after: dict) -> list[str]:
    """Say where the configs both reports ran differ: the first different step, and success."""
    old = {c['name']: c for c in before['configs']}
    out = []
    for config in after['configs']:
        was = old.get(config['name'])
        if was is None:
            continue
        name, runs = config['name'], (was['step_digests'], config['step_digests'])
        if len(runs[0]) != len(runs[1]):
            out.append(f'{name}: {len(runs[0])} episodes before, {len(runs[1])} now')
        for episode, (a, b) in enumerate(zip(*runs, strict=False)):
            if a != b:
                step = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                            min(len(a), len(b)))
                out.append(f'{name}: episode {episode} differs from step {step}')
                break
        if was['success'] != config['success']:
            out.append(f'{name}: success {was["success"]:.3f} -> {config["success"]:.3f}')
    return out


if __name__ == '__main__':
    sys.exit(main())
