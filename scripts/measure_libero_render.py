#!/usr/bin/env python3
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
Time one LIBERO env step per render setting, and draw a frame of each side by side.

    MUJOCO_GL=egl scripts/measure_libero_render.py --json docs/libero/render.json \
        --image docs/libero/render_settings.png

Every setting steps the same episode (task 0 of the suite, initial state 0) with the same
commands, interleaved in rounds so that a busy machine slows all of them alike; `cameras off`
is physics and control alone (the expert's setting). Writes the median and p90 per step, ms.

`--policy MODEL` also draws the states of an expert episode of every task (every 10th step)
in both settings and compares the policy's actions on them: how far `fast` moves what the
policy sees (pixels) and does (token match, mean |action difference|).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time

import cv2
import numpy as np

from flashvla_ros.sim.libero import LiberoWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', default='libero_object')
    parser.add_argument('--steps', type=int, default=40, help='steps per setting per round')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--wrist', action='store_true', help='also render the wrist camera')
    parser.add_argument('--policy', help="also compare a policy's actions on both renders")
    parser.add_argument('--json', type=Path)
    parser.add_argument('--image', type=Path)
    args = parser.parse_args()
    settings = {'openvla': dict(render='openvla'), 'fast': dict(render='fast'),
                'cameras off': None}
    times: dict[str, list[float]] = {name: [] for name in settings}
    frames = {}
    rng = np.random.default_rng(0)
    commands = rng.uniform(-0.3, 0.3, size=(args.steps, 7))
    commands[:, 6] = 1.0  # open
    for _ in range(args.rounds):
        for name, options in settings.items():
            world = LiberoWorld(args.suite, wrist=args.wrist, **(options or {}))
            episode = world.open(world.specs(1, 0, [0])[0], render=options is not None)
            if options is not None:
                frames[name] = episode.cameras()['agentview']
            for command in commands:
                start = time.perf_counter()
                episode.step(command)
                times[name].append((time.perf_counter() - start) * 1e3)
            world.close()
    report = {'suite': args.suite, 'wrist': args.wrist, 'camera_px': 256,
              'steps': args.steps * args.rounds,
              'step_ms': {name: {'median': float(np.median(v)),
                                 'p90': float(np.percentile(v, 90))}
                          for name, v in times.items()}}
    if args.policy:
        report['policy'] = compare_policy(args.suite, args.policy)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + '\n')
    if args.image:
        row = []
        for name, rgb in frames.items():
            labelled = rgb.copy()
            cv2.putText(labelled, name, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                        (255, 255, 255), 1, cv2.LINE_AA)
            row.append(labelled)
        args.image.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.image), cv2.cvtColor(np.hstack(row), cv2.COLOR_RGB2BGR))


def compare_policy(suite: str, model: str) -> dict:
    """Compare a policy's actions on the same states drawn with `openvla` and with `fast`."""
    from flashvla_ros.policy import Observation, load_policy
    from flashvla_ros.policy.presets import model_path

    policy = load_policy(str(model_path(model)))
    expert = LiberoWorld(suite)
    states = []
    for task in range(expert.n_tasks):
        episode = expert.open(expert.specs(1, 0, [task])[0], render=False)
        while not episode.done:
            if episode.steps % 10 == 0:
                states.append((task, episode.env.sim.data.qpos.astype(np.float32),
                               episode.instruction))
            episode.step(episode.expert_action())
    expert.close()
    frames = {}
    for render in ('openvla', 'fast'):
        world = LiberoWorld(suite, render=render)
        frames[render] = [world.render_state(task, q) for task, q, _ in states]
        world.close()
    match, diff, pixels = [], [], []
    for (_, _, text), a, b in zip(states, frames['openvla'], frames['fast'], strict=True):
        pixels.append(float(np.abs(a.astype(int) - b.astype(int)).mean()))
        policy.reset()
        x = policy.predict(Observation(a, text))
        policy.reset()
        y = policy.predict(Observation(b, text))
        match.append(float(np.mean(np.array(x.token_ids) == np.array(y.token_ids)))
                     if len(x.token_ids) else float(np.array_equal(x.values, y.values)))
        diff.append(float(np.abs(x.values - y.values).mean()))
    return {'model': model, 'states': len(states), 'mean_pixel_diff': float(np.mean(pixels)),
            'token_match': float(np.mean(match)), 'mean_abs_action_diff': float(np.mean(diff))}


if __name__ == '__main__':
    main()
