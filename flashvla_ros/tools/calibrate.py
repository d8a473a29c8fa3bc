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


r"""
flashvla-calibrate: measure a model's decoder-layer importances for EfficientVLA's pruning.

    flashvla-calibrate --model MODEL                       # mock-world episodes (the default)
    flashvla-calibrate --model MODEL --bag BAG --image-topic /image_raw \\
        --instruction-topic /instruction                   # your robot's recordings
    flashvla-calibrate --model MODEL --libero libero_object,libero_spatial
                                                           # cached LIBERO demonstration frames

It runs the plain model on the samples and writes the calibration file (default:
calibration.json beside the weights), which names the weights (sha256), the samples and
I(l) = 1 - mean cos(x_l, x_{l+1}) for every layer. The efficientvla accelerator refuses a
calibration of other weights.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
import sys

from ..accel.efficientvla import CALIBRATION_FILE, calibrate
from ..policy import Observation, PolicyError, expand_path, load_policy
from ..policy.presets import model_path
from ..sim.tasks import FAMILIES, Episode


def mock_world_samples(episodes: int, seed: int, every: int) -> Iterator[Observation]:
    """Frames of expert episodes on seeds seed.. (every `every`-th step), all task families."""
    for e in range(episodes):
        ep = Episode(seed + e, FAMILIES[e % len(FAMILIES)])
        while not ep.done:
            if ep.state.steps % every == 0:
                yield Observation(ep.observe(), ep.instruction)
            ep.step(ep.expert_action())


def bag_samples(bag: Path, image_topic: str, instruction_topic: str | None,
                instruction: str | None, samples: int) -> list[Observation]:
    """
    Return up to `samples` camera frames of a rosbag2 bag, evenly spread.

    Each comes with the instruction in force at its time (the latest on `instruction_topic`,
    else `instruction`).
    """
    from rclpy.serialization import deserialize_message  # ROS only for bags

    from ..ros.bag import message_class, read_messages
    from ..ros.convert import compressed_to_rgb, image_to_rgb

    topics = [image_topic, *([instruction_topic] if instruction_topic else [])]
    frames: list[tuple[bytes, str, str]] = []  # raw image, its type, the instruction then
    current = instruction
    for topic, type_name, _stamp, data in read_messages(bag, topics):
        if topic == instruction_topic:
            current = deserialize_message(data, message_class(type_name)).data
        elif current:
            frames.append((data, type_name, current))
    if not frames:
        raise ValueError(f'{bag}: no {image_topic} frame with an instruction in force (topics '
                         f'{topics}; give --instruction when the bag has none)')
    step = max(1, len(frames) // samples)
    out = []
    for data, type_name, text in frames[::step][:samples]:
        msg = deserialize_message(data, message_class(type_name))
        compressed = type_name.endswith('CompressedImage')
        out.append(Observation(compressed_to_rgb(msg) if compressed else image_to_rgb(msg), text))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, type=model_path,
                        help='checkpoint directory, or an embedded model (default, default-dit)')
    parser.add_argument('--out', type=expand_path,
                        help=f'calibration file (default: MODEL/{CALIBRATION_FILE})')
    parser.add_argument('--episodes', type=int, default=None,
                        help='mock world: expert episodes (default 24); --libero: episodes '
                             'per task (default 1)')
    parser.add_argument('--seed', type=int, default=0, help='mock world: first episode seed')
    parser.add_argument('--every', type=int, default=4,
                        help='mock world: one frame every N steps (default 4)')
    parser.add_argument('--bag', type=expand_path, help='rosbag2 directory (mcap or sqlite3)')
    parser.add_argument('--image-topic', default='/image_raw')
    parser.add_argument('--instruction-topic', default=None,
                        help='std_msgs/String topic of the bag with the instructions')
    parser.add_argument('--instruction', default=None,
                        help='the instruction, when the bag has no instruction topic')
    parser.add_argument('--samples', type=int, default=128, help='bag: frames used')
    parser.add_argument('--libero', default='', metavar='SUITE[,SUITE]',
                        help='LIBERO: the frames of these suites\' demonstrations (data/libero, '
                             'cached in build/libero_frames: flashvla_ros.train.libero_frames), '
                             '--episodes per task, every --every-th step')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    suites = [s for s in args.libero.split(',') if s]
    if args.episodes is None:
        args.episodes = 1 if suites else 24
    if min(args.episodes, args.every, args.samples) < 1:
        parser.error('--episodes, --every and --samples must be >= 1')
    try:
        # A LIBERO model has one statistics key per suite; calibration does not un-normalise.
        policy = load_policy(args.model, device=args.device,
                             unnorm_key=suites[0] if suites else None)
        if suites:
            from ..train.libero_train import calibration_samples
            observations = calibration_samples(suites, episodes=args.episodes,
                                               every=args.every)
            source = {'source': 'libero', 'suites': suites, 'episodes_per_task': args.episodes,
                      'every': args.every}
        elif args.bag:
            observations = bag_samples(args.bag, args.image_topic, args.instruction_topic,
                                       args.instruction, args.samples)
            source = {'source': 'bag', 'bag': str(args.bag), 'image_topic': args.image_topic,
                      'instruction_topic': args.instruction_topic,
                      'instruction': args.instruction}
        else:
            observations = mock_world_samples(args.episodes, args.seed, args.every)
            source = {'source': 'mock_world', 'episodes': args.episodes, 'seed': args.seed,
                      'every': args.every}
        calibration = calibrate(policy, observations, source)
    except (PolicyError, ValueError, OSError) as exc:
        print(f'flashvla-calibrate: {exc}', file=sys.stderr)
        return 2
    out = args.out or args.model / CALIBRATION_FILE
    calibration.save(out)
    ranked = sorted(range(len(calibration.importance)), key=calibration.importance.__getitem__)
    print(f'{calibration.samples["count"]} samples; importance per layer: '
          + ', '.join(f'{i}:{v:.4f}' for i, v in enumerate(calibration.importance)))
    print(f'least important first: {ranked}\nwrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
