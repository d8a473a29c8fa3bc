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
Scripted-expert episodes from the mock-world task suite, and OpenVLA-style norm_stats.

Format (one directory): `episodes.npz` stores every step as simulator state, the expert's
action for that state (the label) and the action actually executed (the expert's, or a noisy
one with probability `noise_p`, so that states off the expert's path are covered). Frames are
not stored: `render_step` redraws them bit-exactly from the state, which keeps 100k steps in a
few MB. `norm_stats.json` holds OpenVLA's statistics (q01/q99/mask/mean/std/min/max,
`num_transitions`, `num_trajectories`) under the key `mock_world`.

Seeds: training uses seeds below HELDOUT_SEED_START; evaluation (the benchmark) uses seeds
from HELDOUT_SEED_START on, which no dataset ever contains.

Arrays in episodes.npz (E episodes, S steps, B = 3 blocks, Z = 2 zones):
  ep_seed[E] ep_family[E] ep_instruction[E] ep_block_colours[E,B] ep_zone_colours[E,Z]
  ep_zones[E,Z,2] ep_success[E]
  episode[S] ee[S,2] gripper_closed[S] held[S] (-1: nothing) blocks[S,B,2]
  start_blocks[S,B,2] target_block[S] target_zone[S] (-1: none) action[S,7] (expert label)
  executed[S,7] plan[S,PLAN_STEPS,7] (float32: the expert's own next actions from that state)

`plan` is the label of an action-chunk model: what the expert would do from the state on,
rolled out in a copy of the world. The labels of the following steps are not that chunk when
the executed actions were noisy or the policy's own (DAgger): they are the expert correcting
moves it would not have made.
"""

from __future__ import annotations

import argparse
from copy import deepcopy
import json
from pathlib import Path
import time

import numpy as np

from ..policy.actions import ACTION_DIM, GRIPPER, XY
from ..policy.step import Observation
from ..sim.tasks import FAMILIES, Episode, Task, expert_action, is_success
from ..sim.world import MAX_STEP, Block, WorldState, Zone, render
from ..sim.world import step as world_step

HELDOUT_SEED_START = 1_000_000
PLAN_STEPS = 16  # CogACT's chunk


def expert_plan(task: Task, state: WorldState, steps: int = PLAN_STEPS) -> np.ndarray:
    """
    Roll the expert out `steps` actions from a copy of `state`: a chunk label [steps, 7].

    Once the task succeeds, zero motion with the last gripper command (the robot waits).
    """
    state = deepcopy(state)
    plan = np.zeros((steps, ACTION_DIM), dtype=np.float32)
    for k in range(steps):
        if is_success(task, state):
            plan[k:, GRIPPER] = plan[k - 1, GRIPPER] if k else float(state.gripper_closed)
            break
        action = expert_action(task, state)
        world_step(state, action)
        plan[k] = action
    return plan


def with_plans(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add `plan` to a dataset made before it existed (each episode's task from its seed)."""
    if 'plan' in data:
        return data
    tasks = [Episode(int(seed), str(family)).task
             for seed, family in zip(data['ep_seed'], data['ep_family'], strict=True)]
    plans = [expert_plan(tasks[int(e)], state_at(data, i)) for i, e in enumerate(data['episode'])]
    return {**data, 'plan': np.stack(plans)}


def generate(n_episodes: int, seed: int = 0, noise_p: float = 0.3, max_steps: int = 80,
             families: tuple[str, ...] = FAMILIES, policy=None,
             chunk_steps: int = 1) -> dict[str, np.ndarray]:
    """
    Roll out on seeds seed, seed + 1, ...; every step is labelled with the expert's action.

    Without `policy` the expert acts (a random move with probability `noise_p`). With one
    (DAgger), the policy acts on its own frames, so the data covers the states it reaches;
    it executes up to `chunk_steps` actions of each chunk it predicts, as the node would.
    """
    if seed + n_episodes > HELDOUT_SEED_START:
        raise ValueError(f'training seeds must stay below {HELDOUT_SEED_START}')
    rng = np.random.default_rng(seed)
    steps: dict[str, list] = {k: [] for k in ('episode', 'ee', 'gripper_closed', 'held', 'blocks',
                                              'start_blocks', 'target_block', 'target_zone',
                                              'action', 'executed', 'plan')}
    eps: dict[str, list] = {k: [] for k in ('ep_seed', 'ep_family', 'ep_instruction',
                                            'ep_block_colours', 'ep_zone_colours', 'ep_zones',
                                            'ep_success')}
    for e in range(n_episodes):
        ep = Episode(seed + e, families[e % len(families)], max_steps=max_steps)
        s = ep.state
        target = next(i for i, b in enumerate(s.blocks) if b.colour == ep.task.block)
        zone = next((i for i, z in enumerate(s.zones) if z.colour == ep.task.zone), -1)
        queue: list[np.ndarray] = []
        while not ep.done:
            label = ep.expert_action()
            executed = label.copy()
            if policy is not None:
                if not queue:
                    chunk = policy.predict(Observation(ep.observe(), ep.instruction))
                    queue = list(np.asarray(chunk.actions)[:max(1, chunk_steps)])
                executed = queue.pop(0)
            elif rng.random() < noise_p:
                executed[XY] = rng.uniform(-MAX_STEP, MAX_STEP, size=2)
                if rng.random() < 0.1:
                    executed[GRIPPER] = 1.0 - executed[GRIPPER]
            steps['episode'].append(e)
            steps['ee'].append(s.ee.copy())
            steps['gripper_closed'].append(s.gripper_closed)
            steps['held'].append(-1 if s.held is None else s.held)
            steps['blocks'].append([b.pos.copy() for b in s.blocks])
            steps['start_blocks'].append(np.array(s.start_blocks))
            steps['target_block'].append(target)
            steps['target_zone'].append(zone)
            steps['action'].append(label)
            steps['executed'].append(executed)
            steps['plan'].append(expert_plan(ep.task, s))
            ep.step(executed)
        eps['ep_seed'].append(seed + e)
        eps['ep_family'].append(ep.task.family)
        eps['ep_instruction'].append(ep.instruction)
        eps['ep_block_colours'].append([b.colour for b in s.blocks])
        eps['ep_zone_colours'].append([z.colour for z in s.zones])
        eps['ep_zones'].append([z.pos for z in s.zones])
        eps['ep_success'].append(ep.success())
    data = {k: np.asarray(v) for k, v in {**steps, **eps}.items()}
    data['gripper_closed'] = data['gripper_closed'].astype(bool)
    return data


def state_at(data: dict[str, np.ndarray], i: int) -> WorldState:
    """Rebuild the simulator state of step `i`, for rendering or relabelling."""
    e = int(data['episode'][i])
    held = int(data['held'][i])
    block_colours, zone_colours = data['ep_block_colours'][e], data['ep_zone_colours'][e]
    blocks = [Block(str(c), p.copy())
              for c, p in zip(block_colours, data['blocks'][i], strict=True)]
    zones = [Zone(str(c), p.copy())
             for c, p in zip(zone_colours, data['ep_zones'][e], strict=True)]
    return WorldState(ee=data['ee'][i].copy(), gripper_closed=bool(data['gripper_closed'][i]),
                      blocks=blocks, zones=zones, held=None if held < 0 else held,
                      start_blocks=list(data['start_blocks'][i].copy()))


def render_step(data: dict[str, np.ndarray], i: int, size: int = 224) -> np.ndarray:
    return render(state_at(data, i), size)


def norm_stats(actions: np.ndarray, n_trajectories: int) -> dict:
    """Compute OpenVLA's statistics; the gripper (absolute 0/1) stays un-normalised."""
    a = np.asarray(actions, dtype=np.float64)
    mask = [True] * (ACTION_DIM - 1) + [False]
    return {'mock_world': {
        'action': {
            'mean': a.mean(0).tolist(), 'std': a.std(0).tolist(),
            'max': a.max(0).tolist(), 'min': a.min(0).tolist(),
            'q01': np.quantile(a, 0.01, axis=0).tolist(),
            'q99': np.quantile(a, 0.99, axis=0).tolist(), 'mask': mask,
        },
        'num_transitions': len(a), 'num_trajectories': n_trajectories,
    }}


def save(data: dict[str, np.ndarray], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / 'episodes.npz', **data)
    stats = norm_stats(data['action'], len(data['ep_seed']))
    (out / 'norm_stats.json').write_text(json.dumps(stats, indent=1) + '\n')


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(Path(path) / 'episodes.npz', allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def merge(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate two datasets (episode indices of `b` shifted after `a`'s)."""
    a, b = with_plans(a), with_plans(b)
    out = {k: np.concatenate([a[k], b[k]]) for k in a}
    out['episode'] = np.concatenate([a['episode'], b['episode'] + len(a['ep_seed'])])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=lambda s: Path(s).expanduser(), required=True)
    parser.add_argument('--episodes', type=int, default=3000)
    parser.add_argument('--seed', type=int, default=0, help='first episode seed')
    parser.add_argument('--noise-p', type=float, default=0.3,
                        help='probability of executing a random move instead of the expert')
    parser.add_argument('--families', default=','.join(FAMILIES),
                        help='comma-separated task families, taken in turn')
    parser.add_argument('--dagger-model', type=lambda s: Path(s).expanduser(),
                        help='roll out this checkpoint instead of the expert (labels stay the '
                             "expert's) and append the episodes to the dataset in --out")
    parser.add_argument('--chunk-steps', type=int, default=1,
                        help='with --dagger-model: actions executed from each predicted chunk')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    families = tuple(args.families.split(','))
    if args.dagger_model:
        from ..policy import load_policy

        policy = load_policy(str(args.dagger_model))
        data = merge(load(args.out), generate(args.episodes, args.seed, policy=policy,
                                              families=families, chunk_steps=args.chunk_steps))
    else:
        data = generate(args.episodes, args.seed, args.noise_p, families=families)
    save(data, args.out)
    ok = data['ep_success'].mean()
    print(f'{len(data["ep_seed"])} episodes, {len(data["action"])} steps, executed episodes '
          f'succeeded {ok:.1%}, {time.perf_counter() - start:.1f} s -> {args.out}')


if __name__ == '__main__':
    main()
