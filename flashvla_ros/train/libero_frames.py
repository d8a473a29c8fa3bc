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
The policy frames of the LIBERO demonstrations, drawn once and kept as JPEG: resumable.

    MUJOCO_GL=egl nice -n 19 python -m flashvla_ros.train.libero_frames --suite libero_object

Every step of every successful episode of `data/libero/<suite>/task<k>.npz` is redrawn from
its scene qpos (`LiberoWorld.render_state`: the 224 px frame of OpenVLA's protocol, what the
bench feeds a policy) and stored under `build/libero_frames/<suite>/`:

  task<k>.jpg        the frames' JPEG bytes (quality 95, 4:2:0), concatenated in step order
  task<k>.index.npz  ep_seed[C] ep_frames[C] ep_crc[C] (CRC-32 of the episode's qpos, so a
                     regenerated demonstration file is noticed) offsets[F + 1] (byte offsets
                     into task<k>.jpg), render, quality, center_crop, suite, task

Episodes are appended one at a time (bytes first, then the index, atomically): a run stopped
anywhere continues where the index says, and a task file that gained episodes since (the
generator resumes too) gains their frames on the next run. The render setting is the bench's
default (`openvla`); a cache refuses to mix settings.

Why JPEG: measured on LIBERO-Object frames, quality 95 takes 20.5 KiB a frame (a raw frame
147 KiB, PNG 75 KiB) and decodes in 0.3 ms (simplejpeg); it differs from the frame by 1.3 grey
levels on average, about what `render fast` differs from `openvla` by (1.5), and the frame
itself already went through OpenVLA's JPEG round trip at 256 px. A suite (about 48,000 steps)
takes about 1 GB.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import os
from pathlib import Path
import time
import zlib

import numpy as np
import simplejpeg

from .libero_data import load_task, task_file

FRAMES_DIR = Path('build/libero_frames')
DATA_DIR = Path('data/libero')
QUALITY = 95
RENDER = 'openvla'  # the bench's default (flashvla-bench --render)


def cache_paths(cache: Path, suite: str, task: int) -> tuple[Path, Path]:
    """Return the JPEG stream and the index of a task's frames."""
    return cache / suite / f'task{task}.jpg', cache / suite / f'task{task}.index.npz'


def encode(frame: np.ndarray, quality: int = QUALITY) -> bytes:
    return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=quality,
                                  colorspace='RGB', colorsubsampling='420', fastdct=False)


def decode(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    return simplejpeg.decode_jpeg(data, colorspace='RGB', fastdct=False, fastupsample=False)


def episode_crc(qpos: np.ndarray) -> int:
    """Return a checksum of an episode's recorded qpos (which frames a cache entry shows)."""
    return zlib.crc32(np.ascontiguousarray(qpos, dtype=np.float32).tobytes())


def successful_episodes(demos: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
    """Return (placement seed, its step rows) of each successful episode, in file order."""
    if not demos:
        return []
    rows = np.argsort(demos['episode'], kind='stable')
    bounds = np.searchsorted(demos['episode'][rows], np.arange(len(demos['ep_seed']) + 1))
    return [(int(demos['ep_seed'][e]), rows[bounds[e]:bounds[e + 1]])
            for e in range(len(demos['ep_seed'])) if demos['ep_success'][e]]


def _write_index(path: Path, index: dict[str, np.ndarray]) -> None:
    partial = path.with_suffix('.partial.npz')
    np.savez(partial, **index)
    os.replace(partial, path)


def cache_task(world, demos: dict[str, np.ndarray], cache: Path, suite: str, task: int,
               quality: int = QUALITY, log=print) -> tuple[int, float]:
    """
    Draw and store the frames of `task`'s successful episodes not cached yet.

    Return the frames drawn now and the seconds it took. `world` is a `LiberoWorld` of
    `suite`, whose render setting is recorded (and checked against an existing cache).
    """
    stream, index_path = cache_paths(cache, suite, task)
    index = load_task(index_path)
    settings = {'render': world.render, 'quality': quality, 'center_crop': world.center_crop}
    if index:
        found = {k: index[k].item() for k in settings}
        if found != settings:
            raise ValueError(f'{index_path} holds frames drawn with {found}, not {settings}; '
                             'delete it (and its .jpg) to draw them again')
    else:
        index = {'ep_seed': np.zeros(0, np.int64), 'ep_frames': np.zeros(0, np.int64),
                 'ep_crc': np.zeros(0, np.int64), 'offsets': np.zeros(1, np.int64),
                 'suite': np.array(suite), 'task': np.array(task),
                 **{k: np.array(v) for k, v in settings.items()}}
    episodes = successful_episodes(demos)
    by_seed = dict(episodes)
    for seed, n, crc in zip(index['ep_seed'], index['ep_frames'], index['ep_crc'], strict=True):
        rows = by_seed.get(int(seed))
        if rows is None or len(rows) != n or episode_crc(demos['qpos'][rows]) != crc:
            raise ValueError(f'{index_path}: episode {seed} is not the one in the '
                             f'demonstrations any more; delete the cache of task {task}')
    done = set(index['ep_seed'].tolist())
    todo = [(seed, rows) for seed, rows in episodes if seed not in done]
    if not todo:
        return 0, 0.0
    stream.parent.mkdir(parents=True, exist_ok=True)
    start, drawn = time.perf_counter(), 0
    with open(stream, 'ab+') as f:
        f.truncate(int(index['offsets'][-1]))  # bytes of an episode the index never got
        for seed, rows in todo:
            offsets = [int(index['offsets'][-1])]
            for q in demos['qpos'][rows]:
                data = encode(world.render_state(task, q), quality)
                f.write(data)
                offsets.append(offsets[-1] + len(data))
            f.flush()
            os.fsync(f.fileno())
            index.update(
                ep_seed=np.append(index['ep_seed'], seed),
                ep_frames=np.append(index['ep_frames'], len(rows)),
                ep_crc=np.append(index['ep_crc'], episode_crc(demos['qpos'][rows])),
                offsets=np.append(index['offsets'], offsets[1:]))
            _write_index(index_path, index)
            drawn += len(rows)
            el = time.perf_counter() - start
            log(f'{suite} task {task}: {len(index["ep_seed"])}/{len(episodes)} episodes, '
                f'{drawn} frames in {el:.0f} s ({1000 * el / drawn:.0f} ms a frame), '
                f'{offsets[-1] / 2 ** 20:.0f} MiB', flush=True)
    return drawn, time.perf_counter() - start


def cache_suite(suite: str, data: Path = DATA_DIR, cache: Path = FRAMES_DIR,
                tasks: list[int] | None = None, render: str = RENDER, quality: int = QUALITY,
                log=print) -> dict:
    """Cache every task of `suite` that has demonstrations; return frames, seconds and bytes."""
    from ..sim.libero import LiberoWorld

    world = LiberoWorld(suite, render=render)
    frames, seconds = 0, 0.0
    try:
        for task in range(world.n_tasks) if tasks is None else tasks:
            demos = load_task(task_file(data, suite, task))
            if not demos:
                continue
            n, s = cache_task(world, demos, cache, suite, task, quality, log)
            frames, seconds = frames + n, seconds + s
    finally:
        world.close()
    size = sum(p.stat().st_size for p in (cache / suite).glob('task*.jpg')) \
        if (cache / suite).is_dir() else 0
    return {'frames': frames, 'seconds': seconds, 'bytes': size}


@dataclass
class TaskFrames:
    """The cached frames of one task, read through a memory map."""

    index: dict[str, np.ndarray]
    stream: np.ndarray  # uint8 memmap of task<k>.jpg

    @classmethod
    def open(cls, cache: Path, suite: str, task: int) -> TaskFrames | None:
        """Open a task's cache; None where it has none."""
        stream, index_path = cache_paths(cache, suite, task)
        index = load_task(index_path)
        if not index or len(index['ep_seed']) == 0:
            return None
        end = int(index['offsets'][-1])
        if stream.stat().st_size < end:
            raise ValueError(f'{stream} is shorter than its index says ({end} bytes)')
        return cls(index, np.memmap(stream, dtype=np.uint8, mode='r', shape=(end,)))

    def episodes(self) -> dict[int, tuple[int, int, int]]:
        """Map each cached episode's seed to (its first frame, its frame count, its CRC)."""
        first = np.concatenate([[0], np.cumsum(self.index['ep_frames'])[:-1]])
        return {int(s): (int(f), int(n), int(c)) for s, f, n, c in zip(
            self.index['ep_seed'], first, self.index['ep_frames'], self.index['ep_crc'],
            strict=True)}

    def setting(self, name: str):
        return self.index[name].item()

    def __len__(self) -> int:
        return len(self.index['offsets']) - 1

    def frame(self, j: int) -> np.ndarray:
        """Return frame `j` (in the task's cached step order), 224 x 224 x 3 uint8."""
        offsets = self.index['offsets']
        return decode(self.stream[int(offsets[j]):int(offsets[j + 1])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', default='libero_object')
    parser.add_argument('--tasks', default='', help='task indices, e.g. 0,3 (default: all)')
    parser.add_argument('--data', type=lambda s: Path(s).expanduser(), default=DATA_DIR,
                        help=f'flashvla-libero-data output (default {DATA_DIR})')
    parser.add_argument('--out', type=lambda s: Path(s).expanduser(), default=FRAMES_DIR,
                        help=f'the cache (default {FRAMES_DIR})')
    parser.add_argument('--render', default=RENDER, choices=('openvla', 'fast'),
                        help="LIBERO's render setting (default: the bench's, openvla)")
    parser.add_argument('--quality', type=int, default=QUALITY, help='JPEG quality')
    args = parser.parse_args(argv)
    # One process per core: Mesa's llvmpipe would otherwise spread each draw over every core
    # (measured: 127 ms a frame on one thread, 174 ms with the other core busy).
    os.environ.setdefault('LP_NUM_THREADS', '1')
    tasks = [int(t) for t in args.tasks.split(',') if t.strip()] or None
    result = cache_suite(args.suite, args.data, args.out, tasks, args.render, args.quality)
    print(f'{args.suite}: {result["frames"]} new frames in {result["seconds"]:.0f} s; the '
          f'cache holds {result["bytes"] / 2 ** 20:.0f} MiB in {args.out / args.suite}')


if __name__ == '__main__':
    main()
