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


"""The flashvla-train command line: options from `TrainConfig`, `--plot-log` to redraw curves."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from ..policy.checkpoint import expand_path
from . import trainer
from .plots import plot_log


def main(argv: list[str] | None = None) -> None:
    """Train, or only redraw the curves of a saved train_log.json (`--plot-log`)."""
    parser = argparse.ArgumentParser(description=trainer.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=expand_path,
                        help='flashvla-dataset output, or LIBERO demonstrations (data/libero: '
                             'flashvla-libero-data output, frames from --libero-frames) '
                             '(required)')
    parser.add_argument('--out', type=expand_path, help='checkpoint directory (required)')
    parser.add_argument('--plot-log', type=expand_path, metavar='TRAIN_LOG_JSON',
                        help='only re-draw the curves of a saved train_log.json as loss.png '
                             'beside it (or as --plot-out), then exit')
    parser.add_argument('--plot-out', type=expand_path, help='PNG for --plot-log')
    parser.add_argument('--init', type=expand_path,
                        help='start from this checkpoint (fine-tuning)')
    parser.add_argument('--stop-after', type=int, default=None,
                        help='end after this step (a save point), writing the model as it '
                             'stands; running again without it continues the schedule')
    parser.add_argument('--libero-frames', type=expand_path, default=None,
                        help='LIBERO data: the frame cache (python -m '
                             'flashvla_ros.train.libero_frames; default build/libero_frames)')
    for f, default in asdict(trainer.TrainConfig()).items():
        parser.add_argument(f'--{f.replace("_", "-")}', type=type(default), default=default)
    args = parser.parse_args(argv)
    if args.plot_log:
        print(f'wrote {plot_log(args.plot_log, args.plot_out)}')
        return
    if args.data is None or args.out is None:
        parser.error('--data and --out are required to train')
    cfg = trainer.TrainConfig(**{f: getattr(args, f) for f in asdict(trainer.TrainConfig())})
    if args.stop_after is not None and (args.stop_after % cfg.save_every
                                        or not 0 < args.stop_after < cfg.steps):
        parser.error('--stop-after must be a multiple of --save-every below --steps')
    summary = trainer.train(args.data, args.out, cfg, init=args.init, stop_after=args.stop_after,
                            libero_frames=args.libero_frames)
    if summary is None:
        print(f'stopped after step {args.stop_after} of {cfg.steps} (snapshot and resumable '
              f'state in {args.out})')
        return
    print(f'trained {cfg.steps} steps in {summary["seconds"] / 60:.1f} min -> {args.out}')


if __name__ == '__main__':
    main()
