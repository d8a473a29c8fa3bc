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
LIBERO demonstrations as flashvla-train's data: the cached policy frames and the expert's labels.

    flashvla-train --data data/libero --libero-frames build/libero_frames --out build/libero ...

`--data` names a directory of `<suite>/task<k>.npz` (flashvla-libero-data) instead of a
mock-world dataset. Training takes the successful episodes whose frames are in the cache
(`libero_frames`), every suite found; nothing is rendered while training.

- Labels: the expert's command at each step (OSC_POSE input in [-1, 1], gripper 1 = open, as
  OpenVLA's LIBERO data). A chunk label is the next steps' commands of the same episode, and
  past its end zero motion with the last gripper command (`trainer.chunk_targets`, as
  `--chunk-labels next` on mock data). The expert is memoryless and acted unperturbed in
  these episodes, so those steps are also its plan from the state.
- norm_stats: OpenVLA's format (q01/q99/mean/std/min/max, the gripper unnormalised by its
  mask), computed over every training step of every suite, stored once per suite under the
  suite's name: the key the bench picks (`unnorm_key`), with the same values under each, as
  one normalisation trained one model.
- The tokenizer's corpus is the tasks' instructions in OpenVLA's prompt.
- The mock world's auxiliary labels (objects per patch, positions) need its state: a LIBERO
  batch has none, and the trainer leaves those losses out (`trainer.losses`).

The selection (episodes per task) is written to `libero_data.json` in the run's directory
and reused when the run resumes, and by a run started `--init` from it, so that a cache that
grew meanwhile does not change a run's data or its normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np
import torch

from ..policy.actions import ACTION_DIM
from ..policy.instruction import PROMPT
from ..policy.step import Observation
from .libero_data import load_task, task_file
from .libero_frames import FRAMES_DIR, TaskFrames, episode_crc, successful_episodes
from .trainer import Batcher

MANIFEST = 'libero_data.json'


def is_libero_data(path: Path) -> bool:
    """Say whether `path` holds LIBERO demonstrations (not a mock-world dataset)."""
    path = Path(path)
    return not (path / 'episodes.npz').exists() and any(path.glob('*/task*.npz'))


def tasks_in(data_dir: Path) -> list[tuple[str, int]]:
    """Return the (suite, task) pairs with a demonstration file, in order."""
    found = [(p.parent.name, int(p.stem[len('task'):])) for p in Path(data_dir).glob('*/task*.npz')
             if p.stem[len('task'):].isdigit()]
    return sorted(found)


def available(data_dir: Path, frames_dir: Path) -> dict[str, dict[str, list[int]]]:
    """Return the seeds of the successful, cached episodes: {suite: {task: [seed, ...]}}."""
    out: dict[str, dict[str, list[int]]] = {}
    for suite, task in tasks_in(data_dir):
        frames = TaskFrames.open(frames_dir, suite, task)
        if frames is None:
            continue
        cached = frames.episodes()
        demos = load_task(task_file(data_dir, suite, task))
        seeds = [seed for seed, _ in successful_episodes(demos) if seed in cached]
        if seeds:
            out.setdefault(suite, {})[str(task)] = seeds
    return out


def norm_stats(actions: np.ndarray, n_trajectories: int, keys: list[str]) -> dict:
    """Return OpenVLA's statistics of `actions` under each of `keys` (gripper unnormalised)."""
    a = np.asarray(actions, dtype=np.float64)
    entry = {
        'action': {
            'mean': a.mean(0).tolist(), 'std': a.std(0).tolist(),
            'max': a.max(0).tolist(), 'min': a.min(0).tolist(),
            'q01': np.quantile(a, 0.01, axis=0).tolist(),
            'q99': np.quantile(a, 0.99, axis=0).tolist(),
            'mask': [True] * (ACTION_DIM - 1) + [False],
        },
        'num_transitions': len(a), 'num_trajectories': n_trajectories,
    }
    return {key: json.loads(json.dumps(entry)) for key in keys}  # copies, not one shared dict


@dataclass
class LiberoSource:
    """The training steps (flat arrays), their frames, norm_stats and the instruction corpus."""

    data: dict[str, np.ndarray]
    frames: list[TaskFrames]
    norm_stats: dict
    corpus: list[str]
    manifest: dict

    def batcher(self, tokenizer, codec, stats, chunk: int = 0) -> LiberoBatcher:
        return LiberoBatcher(self, tokenizer, codec, stats, chunk)

    @property
    def key(self) -> str:
        """Return the statistics key the trainer normalises with (all hold the same values)."""
        return sorted(self.norm_stats)[0]


def load(data_dir: Path, frames_dir: Path = FRAMES_DIR, out: Path | None = None,
         init: Path | None = None, log=print) -> LiberoSource:
    """
    Gather the training steps; write (or reuse) the selection in `out`/libero_data.json.

    A selection in `out` (a resumed run) or else in `init` (a run continuing a model) is
    reused; every episode it names must still be in the demonstrations and the cache.
    """
    data_dir, frames_dir = Path(data_dir), Path(frames_dir)
    previous = next((p / MANIFEST for p in (out, init)
                     if p is not None and (p / MANIFEST).is_file()), None)
    if previous is not None:
        selection = json.loads(previous.read_text())['episodes']
        log(f'LIBERO episodes as selected in {previous}')
    else:
        selection = available(data_dir, frames_dir)
    if not selection:
        raise ValueError(f'no LIBERO training episodes: no successful episode of {data_dir} has '
                         f'its frames in {frames_dir} (python -m '
                         'flashvla_ros.train.libero_frames draws them)')
    steps: dict[str, list] = {k: [] for k in ('action', 'episode', 'frame_source',
                                              'frame_index')}
    eps: dict[str, list] = {k: [] for k in ('ep_seed', 'ep_suite', 'ep_task', 'ep_instruction')}
    frames: list[TaskFrames] = []
    settings = set()
    for suite in sorted(selection):
        for task in sorted(selection[suite], key=int):
            demos = load_task(task_file(data_dir, suite, int(task)))
            cache = TaskFrames.open(frames_dir, suite, int(task))
            if cache is None:
                raise ValueError(f'{suite} task {task}: no frames in {frames_dir}')
            settings.add((cache.setting('render'), cache.setting('quality'),
                          cache.setting('center_crop')))
            cached, rows_of = cache.episodes(), dict(successful_episodes(demos))
            for seed in selection[suite][task]:
                rows = rows_of.get(seed)
                if rows is None or seed not in cached:
                    raise ValueError(f'{suite} task {task}: episode {seed} is no longer in '
                                     f'{data_dir} and {frames_dir}')
                first, n, crc = cached[seed]
                if n != len(rows) or crc != episode_crc(demos['qpos'][rows]):
                    raise ValueError(f'{suite} task {task}: the cached frames of episode '
                                     f'{seed} show other steps than the demonstration')
                steps['action'].append(demos['action'][rows])
                steps['episode'].append(np.full(n, len(eps['ep_seed'])))
                steps['frame_source'].append(np.full(n, len(frames)))
                steps['frame_index'].append(np.arange(first, first + n))
                eps['ep_seed'].append(seed)
                eps['ep_suite'].append(suite)
                eps['ep_task'].append(int(task))
                eps['ep_instruction'].append(str(demos['instruction']))
            frames.append(cache)
    if len(settings) != 1:
        raise ValueError(f'the cached frames were drawn with different settings: {settings}')
    data = {k: np.concatenate(v) for k, v in steps.items()}
    data['action'] = data['action'].astype(np.float32)
    data.update({k: np.asarray(v) for k, v in eps.items()})
    stats = norm_stats(data['action'], len(data['ep_seed']), sorted(selection))
    render, quality, crop = settings.pop()
    manifest = {'data': str(data_dir), 'frames': str(frames_dir), 'render': render,
                'quality': quality, 'center_crop': crop, 'steps': len(data['action']),
                'episodes': selection}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / MANIFEST).write_text(json.dumps(manifest) + '\n')
    counts = ', '.join(f'{s} {sum(len(v) for v in selection[s].values())}' for s in selection)
    log(f'LIBERO: {len(data["ep_seed"])} episodes ({counts}), {len(data["action"])} steps, '
        f'frames drawn with render {render}')
    corpus = [PROMPT.format(t) for t in sorted(set(eps['ep_instruction']))]
    return LiberoSource(data, frames, stats, corpus, manifest)


SHIFT_PX = 10  # random-shift augmentation: each frame moves by up to this many pixels


def random_shift(frame: np.ndarray, rng: np.random.Generator, pad: int = SHIFT_PX
                 ) -> np.ndarray:
    """
    Return `frame` shifted by up to `pad` pixels each way, the edges repeated (DrQ's shift).

    Fifty demonstrations per task show each scene from one camera pose: without it a small
    model learns pixel positions rather than objects.
    """
    h, w = frame.shape[:2]
    padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), mode='edge')
    dy, dx = rng.integers(0, 2 * pad + 1, size=2)
    return padded[dy:dy + h, dx:dx + w]


class LiberoBatcher(Batcher):
    """A batch of LIBERO steps: cached frames (randomly shifted), prompts, labels."""

    def __init__(self, source: LiberoSource, tokenizer, codec, stats, chunk: int = 0) -> None:
        super().__init__(source.data, tokenizer, codec, stats, chunk)
        self.frames = source.frames

    def __call__(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        d = self.data
        rng = np.random.default_rng(np.asarray(idx))  # the batch's own: a resumed run repeats it
        frames = [random_shift(self.frames[int(d['frame_source'][i])].frame(
            int(d['frame_index'][i])), rng) for i in idx]
        return self.assemble(idx, frames)


def calibration_samples(suites: list[str], data_dir: Path = Path('data/libero'),
                        frames_dir: Path = FRAMES_DIR, episodes: int = 1, every: int = 4
                        ) -> Iterator[Observation]:
    """
    Yield cached frames with their instructions, for flashvla-calibrate.

    Every `every`-th step of the first `episodes` cached episodes of every task of `suites`.
    """
    for suite, task in tasks_in(data_dir):
        if suite not in suites:
            continue
        cache = TaskFrames.open(frames_dir, suite, task)
        if cache is None:
            continue
        instruction = str(load_task(task_file(data_dir, suite, task))['instruction'])
        for first, n, _ in list(cache.episodes().values())[:episodes]:
            for j in range(first, first + n, every):
                yield Observation(cache.frame(j), instruction)
