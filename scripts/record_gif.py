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
Record the README's GIF: the embedded default policy on the three task families.

    .venv/bin/python scripts/record_gif.py                      # -> docs/demo.gif
    .venv/bin/python scripts/record_gif.py --accel none --out build/plain.gif

ROS-free and deterministic: the mock-world simulator and the policy in-process, as the
benchmark runs them (flashvla-bench), one frame per control step at the node's 10 Hz. The
episodes are the first held-out ones of each family (training never saw these seeds),
shown whatever their outcome; the last frame of each is held for a second.
"""

import argparse
from pathlib import Path
import sys

import torch

from flashvla_ros.accel.registry import accelerate
from flashvla_ros.bench.run import read_accel
from flashvla_ros.policy import Observation, load_policy
from flashvla_ros.policy.presets import default_model_dir
from flashvla_ros.sim.tasks import FAMILIES, Episode
from flashvla_ros.train.dataset import HELDOUT_SEED_START
from flashvla_ros.viz.video import FrameWriter, annotate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, default=Path('docs/demo.gif'), help='.gif or .mp4')
    parser.add_argument('--accel', default='flashvla',
                        help="as flashvla-bench's --accel (default: the node's default, "
                             'flashvla, conservative preset)')
    parser.add_argument('--episodes', type=int, default=2, help='per family')
    parser.add_argument('--seed', type=int, default=HELDOUT_SEED_START,
                        help='first seed; families take seeds in turn, as in the benchmark')
    parser.add_argument('--width', type=int, default=224,
                        help='frame width, px (the camera: 224)')
    parser.add_argument('--lines', type=int, default=3, help='caption lines under the frame')
    parser.add_argument('--fps', type=float, default=10.0)
    parser.add_argument('--max-steps', type=int, default=80)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    names, options = read_accel(args.accel)
    policy = accelerate(load_policy(str(default_model_dir())), names, options)
    label = 'embedded default policy' + ('' if names == ['none'] else f', {args.accel}')
    wins = 0
    with FrameWriter(args.out, args.fps) as writer:
        for i in range(args.episodes * len(FAMILIES)):
            seed, family = args.seed + i, FAMILIES[i % len(FAMILIES)]
            ep = Episode(seed, family, max_steps=args.max_steps)
            policy.reset()
            name = family.replace('_', ' & ')  # OpenCV's font draws '_' poorly
            while True:
                frame = ep.observe()
                if ep.done:
                    break
                status = f'{name}, seed {seed}: step {ep.state.steps}'
                writer.write(annotate(frame, ep.instruction, status, width=args.width,
                                      band_lines=args.lines))
                ep.step(policy.predict(Observation(frame, ep.instruction)).values)
            wins += ep.success()
            outcome = f'{name}: {"success" if ep.success() else "failed"} in ' \
                      f'{ep.state.steps} steps'
            for _ in range(round(args.fps)):
                writer.write(annotate(frame, ep.instruction, outcome, width=args.width,
                                      success=ep.success(), band_lines=args.lines))
            print(f'seed {seed}, {outcome}: {ep.instruction!r}')
    n = args.episodes * len(FAMILIES)
    size = args.out.stat().st_size
    print(f'{args.out}: {writer.frames} frames of {writer.size[0]}x{writer.size[1]} px, '
          f'{writer.frames / args.fps:.1f} s at {args.fps:g} fps, {size / 1e6:.2f} MB; '
          f'{wins}/{n} succeeded ({label})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
