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
Scripted-expert demonstrations on LIBERO, resumable: one file per task, one episode at a time.

    flashvla-libero-data --suite libero_object --per-task 50 --out data/libero

Initial states come from each task's placement samplers with seeds from `PLACEMENT_SEED_START`
on, never from the 50 fixed evaluation states (each new one is checked against them). Every
episode is kept with its success flag (training takes the successful ones); a task is done
when it holds `per_task` successes. Rerunning the command continues where it stopped.

Like the mock world's dataset, frames are not stored: a step's simulator state redraws its
camera (`render_states`), which keeps a suite's steps in a few MB that can be committed. The
redraw is the state's own kinematics, one 2 ms physics substep after those the live camera
drew (MuJoCo renders the kinematics a step starts from): moving edges shift by about a pixel.
Arrays of `<suite>/task<k>.npz` (E episodes, S steps, Q = the scene's qpos size):

  ep_seed[E] ep_success[E] ep_steps[E]      (placement seed, success, steps it took)
  episode[S] qpos[S,Q] (float32: the scene's joint positions before the step, all a redraw
  needs) action[S,7] (the expert's command:
  OSC_POSE input in [-1, 1] and gripper 1 = open, as OpenVLA's LIBERO data)
  joint_pos[S,7] gripper_qpos[S,2] eef_pos[S,3] eef_quat[S,4] (x, y, z, w)
  instruction (str), task_name (str), suite (str)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import time

import numpy as np

PLACEMENT_SEED_START = 1_000_000
HOPELESS = 20  # episodes without one success after which a task is given up
STEP_KEYS = ('episode', 'qpos', 'action', 'joint_pos', 'gripper_qpos', 'eef_pos', 'eef_quat')
EPISODE_KEYS = ('ep_seed', 'ep_success', 'ep_steps')


def task_file(out: Path, suite: str, task: int) -> Path:
    return out / suite / f'task{task}.npz'


def load_task(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_task(path: Path, data: dict[str, np.ndarray]) -> None:
    """Write atomically: a run killed mid-write leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix('.partial.npz')
    np.savez_compressed(partial, **data)
    os.replace(partial, path)


def record_episode(world, task: int, seed: int, evaluation: np.ndarray
                   ) -> dict[str, np.ndarray]:
    """Roll the expert out from a sampled initial state, cameras off; return its steps."""
    from ..sim.worlds import EpisodeSpec

    state = world.sample_state(task, seed)
    # Compare the object poses (after the robot's joints) with every evaluation state.
    nearest = np.abs(evaluation[:, 1:] - state[1:]).max(axis=1).min()
    if nearest < 1e-6:
        raise RuntimeError(f'seed {seed} drew an evaluation state of task {task}')
    episode = world.open(EpisodeSpec(world.task_name(task), seed, task), render=False,
                         state=state)
    steps: dict[str, list] = {k: [] for k in STEP_KEYS}
    while not episode.done:
        obs = episode.obs
        action = episode.expert_action()
        steps['qpos'].append(np.asarray(episode.env.sim.data.qpos, np.float32))
        steps['action'].append(np.asarray(action, np.float32))
        steps['joint_pos'].append(obs['robot0_joint_pos'])
        steps['gripper_qpos'].append(obs['robot0_gripper_qpos'])
        steps['eef_pos'].append(obs['robot0_eef_pos'])
        steps['eef_quat'].append(obs['robot0_eef_quat'])
        episode.step(action)
    n = episode.steps
    out = {k: np.asarray(v) for k, v in steps.items() if k != 'episode'}
    out['episode'] = np.zeros(n, np.int32)
    out['ep_seed'] = np.array([seed])
    out['ep_success'] = np.array([episode.success()])
    out['ep_steps'] = np.array([n])
    return out


def append(data: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not data:
        return new
    new = dict(new, episode=new['episode'] + len(data['ep_seed']))
    return {k: np.concatenate([data[k], new[k]]) for k in (*STEP_KEYS, *EPISODE_KEYS)}


def generate(suite: str, tasks: list[int] | None, per_task: int, out: Path, log=print,
             max_tries: int = 3) -> None:
    """
    Record every task until it holds `per_task` successes, or give it up.

    A task is given up after `max_tries * per_task` episodes, or after `HOPELESS` that all
    failed, so that one the expert rarely solves does not stall the rest (rerun after
    improving the expert: the file goes on from where it stopped).
    """
    from ..sim.libero import LiberoWorld

    world = LiberoWorld(suite)
    for task in range(world.n_tasks) if tasks is None else tasks:
        path = task_file(out, suite, task)
        data = load_task(path)
        evaluation = world.init_states(task)
        start = time.perf_counter()
        while int(data.get('ep_success', np.zeros(0)).sum()) < per_task:
            tried = len(data.get('ep_seed', ()))
            ok = int(np.sum(data.get('ep_success', 0)))
            if tried >= max_tries * per_task or (tried >= HOPELESS and not ok):
                log(f'{suite} task {task}: gave up after {tried} episodes, {ok} succeeded',
                    flush=True)
                break
            seed = int(data['ep_seed'].max()) + 1 if data else PLACEMENT_SEED_START
            data = append(data, record_episode(world, task, seed, evaluation))
            data.update(instruction=np.array(world.instruction(task)),
                        task_name=np.array(world.task_name(task)), suite=np.array(suite))
            save_task(path, data)
            ok, n = int(data['ep_success'].sum()), len(data['ep_seed'])
            log(f'{suite} task {task}: {ok}/{per_task} demonstrations, {n} episodes '
                f'({ok / n:.0%} succeeded), {time.perf_counter() - start:.0f} s', flush=True)
    world.close()


def render_states(world, task: int, qpos: np.ndarray):
    """Yield the policy frame of each recorded step, as the episode's camera showed it."""
    for q in qpos:
        yield world.render_state(task, q)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--suite', default='libero_object')
    parser.add_argument('--tasks', default='', help='task indices, e.g. 0,3 (default: all)')
    parser.add_argument('--per-task', type=int, default=50,
                        help='successful demonstrations per task')
    parser.add_argument('--out', type=lambda s: Path(s).expanduser(), required=True)
    parser.add_argument('--max-tries', type=int, default=3,
                        help='give a task up after this many times per-task episodes')
    args = parser.parse_args(argv)
    tasks = [int(t) for t in args.tasks.split(',') if t.strip()] or None
    generate(args.suite, tasks, args.per_task, args.out, max_tries=args.max_tries)


if __name__ == '__main__':
    main()
