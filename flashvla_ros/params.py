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
The policy node's parameters: one declaration each, one typed config, one loader.

`NodeConfig`'s fields are the declarations (`param`, as the accelerators' `option`): the ROS
node declares every entry with its description, range and read-only flag (`PARAMS`);
`config/policy.yaml` sets the same names; the validators here reject bad values with a reason,
at load and for live changes alike.

`accel` lists the accelerators in hook order. Each accelerator's entries (`flashvla.preset`,
`flashvla.<option>`: a nested `flashvla:` mapping in YAML) come from its one options
declaration (`accel/base.py`); options default to "unset": the preset decides, and any option
set explicitly overrides it. Live options may change while running; the others are read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
import math
from pathlib import Path
import re
from typing import Any

import yaml

from .accel.registry import ACCELERATORS, NONE, check_accel
from .control.chunks import ChunkExecution
from .control.runner import RunnerSettings
from .control.safety import SafetyLimits, hold_outside_limits
from .policy.actions import ACTION_DIM, ACTION_NAMES
from .policy.checkpoint import expand_path
from .policy.config import Execution
from .policy.errors import InputError
from .policy.instruction import check_instruction
from .policy.quantize import FORMATS

# The command outputs: name -> (topic, private to the node; message type).
OUTPUTS = {
    'twist': ('delta_twist_cmds', 'geometry_msgs/msg/TwistStamped'),
    'array': ('commands', 'std_msgs/msg/Float64MultiArray'),
    'trajectory': ('joint_trajectory', 'trajectory_msgs/msg/JointTrajectory'),
    'gripper': ('gripper_cmd', 'std_msgs/msg/Float64'),
    'raw': ('raw_action', 'std_msgs/msg/Float64MultiArray'),
    'joint_positions': ('joint_positions', 'std_msgs/msg/Float64MultiArray'),
}
# Outputs of absolute joint positions (the robot model, joint states and IK behind them).
JOINT_OUTPUTS = ('trajectory', 'joint_positions')


@dataclass(frozen=True)
class Param:
    """One ROS parameter of the node: its declaration (name, default, description, range)."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    kind: type | None = None  # the type of an entry whose default is None (unset)
    size: int | None = ACTION_DIM  # entries of a list of numbers (None: any)


def param(default: Any, description: str, **declaration: Any) -> Any:
    """Declare one node parameter as a NodeConfig field (its name is the field's)."""
    return field(metadata={'param': Param('', default, description, **declaration)})


@dataclass(frozen=True)
class AccelConfig:
    names: tuple[str, ...]  # hook order; () is the plain model
    options: dict[str, dict[str, Any]]  # per accelerator: its preset and the options set


@dataclass(frozen=True)
class NodeConfig:
    """
    The node's parameters, typed and validated: each declared once, here.

    The fields carry the declarations (`param`): the ROS node declares them with their
    descriptions and ranges, `config/policy.yaml` sets the same names, and `build_config`
    fills every field (they have no dataclass defaults).
    """

    model: str = param(
        '', 'Checkpoint directory (Hugging Face OpenVLA layout), or an embedded model '
        '(default-dit); empty = the embedded default model.', read_only=True)
    device: str = param(
        'cpu', 'Torch device: cpu, cuda or cuda:N.', read_only=True)
    dtype: str = param(
        'float32', 'Weights dtype.', read_only=True, choices=('float32', 'bfloat16', 'float16'))
    quantize: str = param(
        'none', "Weight-only quantization of the decoder's linear layers: none, int8, or int4 "
        '(int4 on CUDA needs dtype bfloat16; on CPU it stores int4 values in int8). Needs '
        'torchao; a format with no kernel here is refused at configure.',
        read_only=True, choices=FORMATS)
    cpu_threads: int = param(
        0, "Torch CPU threads for inference; 0: torch's default less one (at least 1), leaving a "
        'core to the camera, the control tick and ROS.', read_only=True, low=0, high=1024)
    static_cache: bool = param(
        False, 'Static-shape KV cache written at position slots, greedy tokens kept on the '
        'device until the action is complete (the GPU decode path; the same tokens).',
        read_only=True)
    compile: bool = param(
        False, 'torch.compile the one-token decode step (CUDA graphs on CUDA); implies '
        'static_cache. Compiled during configure (warm-up).', read_only=True)
    unnorm_key: str = param(
        '', "Dataset statistics used to un-normalise actions; empty = the checkpoint's only one.",
        read_only=True)
    center_crop: bool = param(
        False, 'Crop the central 90% of the image area first (LIBERO).', read_only=True)
    autostart: bool = param(
        True, 'Configure and activate the lifecycle node at start-up.', read_only=True)
    image_transport: str = param(
        'raw', 'Camera input: raw (sensor_msgs/Image on image_raw) or compressed '
        '(sensor_msgs/CompressedImage on image_raw/compressed).',
        read_only=True, choices=('raw', 'compressed'))
    image_reliability: str = param(
        'best_effort', 'Camera subscription QoS: best_effort (sensor data, never waits) or '
        'reliable (lossless replay of recorded frames).',
        read_only=True, choices=('best_effort', 'reliable'))
    instruction: str = param(
        '', 'Task instruction (empty: none, hold); the instruction topic replaces it and this '
        'parameter always shows the one being followed. A change starts a new episode.')
    control_rate_hz: float = param(
        10.0, 'Rate of the control tick that publishes commands, Hz.',
        read_only=True, low=0.5, high=500.0)
    max_image_age_s: float = param(
        0.5, 'Newest frame older than this (by arrival): hold and stop commanding; such frames '
        'are never inferred on, s.', low=0.01, high=10.0)
    max_action_age_s: float = param(
        1.0, 'Queued actions computed from frames older than this are dropped, s.',
        low=0.01, high=10.0)
    max_command_gap_s: float = param(
        0.5, 'Command watchdog: active, with an instruction and valid frames, yet no command for '
        'this long: one hold and ERROR with the cause, s.', low=0.01, high=60.0)
    max_image_pixels: int = param(
        4096 * 4096, 'Largest camera image (width x height) accepted; compressed frames are '
        'checked from their header, before decoding.', read_only=True, low=64.0, high=67108864)
    outputs: tuple[str, ...] = param(
        ['twist', 'array', 'gripper', 'raw'], f'Which command outputs to publish, any of '
        f'{list(OUTPUTS)}.', read_only=True, choices=tuple(OUTPUTS))
    command_frame_id: str = param(
        'base_link', "frame_id of TwistStamped commands (the frame the policy's end-effector "
        'deltas are expressed in); joint outputs: a frame of the robot model.', read_only=True)
    ee_frame: str = param(
        '', 'Joint outputs: the tool frame the actions move (a link of the URDF); required by '
        'the trajectory and joint_positions outputs.', read_only=True)
    base_frame: str = param(
        '', "Joint outputs: the arm's fixed base (a link of the URDF, an ancestor of ee_frame); "
        "empty: the URDF's root link. The joints between it and ee_frame are commanded.",
        read_only=True)
    robot_description: str = param(
        '', 'Joint outputs: the URDF (XML text); empty: from the robot_description topic '
        '(reliable, transient local, as robot_state_publisher publishes it).', read_only=True)
    max_joint_state_age_s: float = param(
        0.5, 'Joint outputs: newest valid joint_states older than this (by arrival): hold and '
        'stop commanding, s.', low=0.01, high=10.0)
    gripper_joints: tuple[str, ...] = param(
        [], 'Joint outputs: gripper joints commanded with the arm, e.g. [panda_finger_joint1]; '
        'empty: the gripper command only on ~/gripper_cmd.', read_only=True)
    gripper_joint_positions: tuple[float, ...] = param(
        [0.0, 1.0], 'Joint outputs: the gripper joints\' position at gripper command 0 and at 1 '
        '(linear between).', read_only=True, low=-1000.0, high=1000.0, size=2)
    action_scale: tuple[float, ...] = param(
        [1.0] * ACTION_DIM, 'Per-dimension factor applied to the policy action before clamping.',
        low=-100.0, high=100.0)
    action_lower: tuple[float, ...] = param(
        [-0.05, -0.05, -0.05, -0.25, -0.25, -0.25, 0.0], 'Per-dimension lower command limits (m, '
        'rad per step; gripper).', low=-1000.0, high=1000.0)
    action_upper: tuple[float, ...] = param(
        [0.05, 0.05, 0.05, 0.25, 0.25, 0.25, 1.0], 'Per-dimension upper command limits (m, rad '
        'per step; gripper).', low=-1000.0, high=1000.0)
    debug_image: bool = param(
        False, "Publish ~/debug_image (sensor_msgs/Image): each command's camera frame with the "
        'dropped visual tokens darkened, the commanded motion drawn and reuse or hold marked.',
        read_only=True)
    joint_names: tuple[str, ...] = param(
        list(ACTION_NAMES), 'Unused: ~/joint_trajectory names the joints of the URDF chain '
        '(ee_frame); kept so that older parameter files still load.', read_only=True)
    chunk_mode: str = param(
        'execute', 'How action chunks become commands: execute (the first chunk_steps actions of '
        'each chunk, one per tick) or ensemble (a prediction every tick, blended with the '
        "previous ones by CogACT's adaptive weights).", choices=('execute', 'ensemble'))
    chunk_steps: int = param(
        -1, 'execute: actions of each chunk to run before the next one (0: the whole chunk; -1: '
        'what the model recommends in its config.json "execution", else the whole chunk; an '
        'autoregressive model gives chunks of one).', low=-1, high=1024)
    ensemble_horizon: int = param(
        2, 'ensemble: the last K predictions blended (CogACT: 2 on the Google robot, 7 on '
        'WidowX).', low=1, high=64)
    ensemble_alpha: float = param(
        0.1, 'ensemble: weight exp(alpha * cos(prediction, newest)).', low=-10.0, high=10.0)
    inference_timing: str = param(
        'just_in_time', 'just_in_time: start each inference from the measured latency so it '
        'finishes just before the tick that uses it, on the newest frame; asap: as soon as the '
        'queue runs dry.', choices=('just_in_time', 'asap'))
    robots: tuple[str, ...] = param(
        [], 'Namespaces of the robots this node serves with one model, e.g. [r1, r2]: each gets '
        'the topics of a single-robot node in that namespace, its own runner, accelerator '
        'memory, reset and enable services and /diagnostics entry, and their inferences run '
        'batched; empty: one robot, the topics without a namespace.', read_only=True)
    batch_window_s: float = param(
        0.02, 'Several robots: inferences due within this long of the first due one join its '
        'batch (they start up to this much early), s.', low=0.0, high=1.0)
    max_batch: int = param(
        8, 'Several robots: the most robots in one forward (the KV cache is allocated for this '
        'many).', read_only=True, low=1, high=64)
    accel: AccelConfig = param(  # noqa: RUF009 (a declaration: every field has metadata only)
        ['flashvla'], 'Accelerators, in the order their hooks run: [none] for the plain model, '
        f'or any of {sorted(ACCELERATORS)}.', read_only=True, choices=(NONE, *ACCELERATORS))

    @property
    def control_period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def chunks(self) -> ChunkExecution:
        return ChunkExecution(mode=self.chunk_mode, steps=self.chunk_steps,
                              horizon=self.ensemble_horizon, alpha=self.ensemble_alpha,
                              just_in_time=self.inference_timing == 'just_in_time')

    def runner_settings(self, recommended: Execution) -> RunnerSettings:
        """Return a runner's settings; chunk_steps -1 takes the model's `recommended` execution."""
        return RunnerSettings(
            SafetyLimits.from_lists(self.action_scale, self.action_lower, self.action_upper),
            self.max_image_age_s, self.max_action_age_s, self.max_command_gap_s,
            self.chunks.for_model(recommended), self.control_period_s)


PARAMS: tuple[Param, ...] = (
    *(replace(f.metadata['param'], name=f.name) for f in fields(NodeConfig)),
    *(param for accel in ACCELERATORS.values() for param in (
        Param(f'{accel.name}.preset', accel.DEFAULT_PRESET, f'{accel.name} preset '
              f'({", ".join(accel.PRESETS)}) or empty for the built-in defaults; options set '
              'below override it.', read_only=True, choices=('', *accel.PRESETS)),
        *(Param(f'{accel.name}.{spec.name}', None, f'{spec.help[:1].upper()}{spec.help[1:]}'
                f'{f" ({spec.describe_range()})" if spec.describe_range() else ""}.',
                read_only=not spec.live, kind=spec.kind)
          for spec in accel.specs()))),
)
PARAM_BY_NAME = {p.name: p for p in PARAMS}
ACCEL_PARAMS = {p.name for p in PARAMS if p.name.partition('.')[0] in ACCELERATORS}


def check_value(name: str, value: Any) -> str | None:
    """Return why `value` is not acceptable for parameter `name`, or None when it is."""
    spec = PARAM_BY_NAME.get(name)
    if spec is None:
        return f'unknown parameter {name!r}'
    default = spec.default if spec.kind is None else spec.kind()
    if spec.kind is not None and value is None:
        return None  # unset: the preset decides
    if spec.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f'{name} must be an integer'
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f'{name} must be true or false'
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return f'{name} must be an integer'
        return _check_number(spec, float(value))
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f'{name} must be a number'
        return _check_number(spec, float(value))
    if isinstance(default, str):
        if not isinstance(value, str):
            return f'{name} must be a string'
        if spec.choices and value not in spec.choices:
            return f'{name} is {value!r}; choose one of {list(spec.choices)}'
        return None
    if name == 'robots':
        return check_robots(value)
    if name == 'gripper_joints':
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value) \
            and len(set(value)) == len(value)
        return None if ok else f'gripper_joints must be distinct joint names, not {value!r}'
    # Lists: numbers or strings, one entry per action dimension unless they are choices.
    if not isinstance(value, (list, tuple)):
        return f'{name} must be a list'
    if isinstance(default[0], str):
        if not all(isinstance(v, str) for v in value):
            return f'{name} must be a list of strings'
        if spec.choices:
            bad = [v for v in value if v not in spec.choices]
            if bad or not value:
                return f'{name} has {bad or "no entries"}; allowed: {list(spec.choices)}'
            return None
    elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f'{name} must be a list of numbers'
    if spec.size == ACTION_DIM and len(value) != ACTION_DIM:
        return f'{name} needs {ACTION_DIM} entries (one per action dimension), got {len(value)}'
    if spec.size is not None and len(value) != spec.size:
        return f'{name} needs {spec.size} entries, got {len(value)}'
    if not isinstance(default[0], str):
        for v in value:
            reason = _check_number(spec, float(v))
            if reason:
                return reason
    return None


# A robot namespace: relative ROS name tokens (a letter or _ first, then letters, digits, _),
# joined by '/'.
ROBOT_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*')


def check_robots(value: Any) -> str | None:
    """Return why `value` is not a list of distinct robot namespaces, or None."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        return f'robots must be a list of namespaces, e.g. [r1, r2], not {value!r}'
    for name in value:
        if not ROBOT_NAME.fullmatch(name):
            return (f'robots: {name!r} is not a valid ROS namespace: use letters, digits and _ '
                    '(not first a digit), tokens joined by /, no leading or trailing /')
    if len(set(value)) != len(value):
        return f'robots {list(value)} names a robot twice'
    return None


def _check_number(spec: Param, v: float) -> str | None:
    if not math.isfinite(v):
        return f'{spec.name} must be finite, got {v}'
    if spec.low is not None and not spec.low <= v <= spec.high:
        return f'{spec.name} = {v} is outside [{spec.low}, {spec.high}]'
    return None


def check_config(values: dict[str, Any]) -> str | None:
    """Return why a complete set of values is inconsistent, or None."""
    for name, value in values.items():
        reason = check_value(name, value)
        if reason:
            return reason
    lower, upper = values['action_lower'], values['action_upper']
    bad = [i for i in range(ACTION_DIM) if lower[i] > upper[i]]
    if bad:
        return f'action_lower > action_upper in dimensions {bad}'
    bad = hold_outside_limits(lower, upper)
    if bad:
        return (f'action_lower/action_upper exclude zero in motion dimensions '
                f'{[ACTION_NAMES[i] for i in bad]}: a hold (zero motion) must stay inside the '
                f'limits')
    joint_outputs = [o for o in values['outputs'] if o in JOINT_OUTPUTS]
    if joint_outputs and not values['ee_frame']:
        return (f'outputs {joint_outputs} command joints: set ee_frame, the tool frame the '
                'actions move (a link of the robot model)')
    if values['instruction']:
        try:
            check_instruction(values['instruction'])
        except InputError as exc:
            return str(exc)
    if min(len(values.get('robots') or ()), values['max_batch']) > 1 \
            and (values['static_cache'] or values['compile']):
        return ('robots: batches of several robots run the append KV cache; set static_cache '
                'and compile to false, or max_batch to 1')
    try:
        accel_config(values)
    except ValueError as exc:
        return str(exc)
    return None


def accel_config(values: dict[str, Any]) -> AccelConfig:
    """Return the accelerators (`accel`) and each one's set options; raise ValueError why not."""
    names = list(values.get('accel', []))
    options: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        owner, dot, option = key.partition('.')
        if dot and owner in ACCELERATORS and value not in (None, ''):
            options.setdefault(owner, {})[option] = value
    check_accel(names, options)
    return AccelConfig(tuple(n for n in names if n != NONE), options)


def build_config(values: dict[str, Any]) -> NodeConfig:
    """Turn a name -> value mapping (defaults filled in) into a validated NodeConfig."""
    unknown = sorted(set(values) - set(PARAM_BY_NAME))
    if unknown:
        raise ValueError(f'unknown parameters {unknown}; known: {sorted(PARAM_BY_NAME)}')
    merged = {p.name: values.get(p.name, p.default) for p in PARAMS}
    reason = check_config(merged)
    if reason:
        raise ValueError(reason)
    node = {k: _typed(k, v) for k, v in merged.items() if k not in ACCEL_PARAMS}
    node['accel'] = accel_config(merged)
    return NodeConfig(**node)


def _typed(name: str, value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if name == 'model':  # shells do not expand `~` after `model:=`
        return str(expand_path(value)) if value else value
    if name == 'instruction':
        return value.strip()
    if isinstance(PARAM_BY_NAME[name].default, float):
        return float(value)
    return value


def flatten(params: dict[str, Any], prefix: str = '') -> dict[str, Any]:
    """Nested YAML mappings -> dotted ROS parameter names (`a: {b: 1}` -> `a.b`)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def read_yaml(path: str | Path, node_name: str = 'policy_node') -> dict[str, Any]:
    """Read a ROS parameter file (`node: ros__parameters: {...}`) as dotted names -> values."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    section = data.get(node_name, data.get(f'/{node_name}', data.get('/**', {})))
    params = flatten(dict((section or {}).get('ros__parameters', {})))
    params.pop('use_sim_time', None)
    return params


def load_yaml(path: str | Path, node_name: str = 'policy_node') -> NodeConfig:
    """Read a ROS parameter file into a validated NodeConfig."""
    return build_config(read_yaml(path, node_name))
