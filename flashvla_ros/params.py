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
The policy node's parameters: one table, one typed config, one loader.

The table is the single source of truth: the ROS node declares every entry with its
description, range and read-only flag; `config/policy.yaml` sets the same names; the
validators here reject bad values with a reason, at load and for live changes alike.

`accel` lists the accelerators in hook order. Each accelerator's entries (`flashvla.preset`,
`flashvla.<option>`: a nested `flashvla:` mapping in YAML) come from its one options
declaration (`accel/base.py`); options default to "unset": the preset decides, and any option
set explicitly overrides it. Live options may change while running; the others are read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
import math
from pathlib import Path
import re
from typing import Any

import yaml

from .accel.registry import ACCELERATORS, NONE, check_accel
from .control.runner import ChunkExecution
from .control.safety import hold_outside_limits
from .policy.actions import ACTION_DIM, ACTION_NAMES
from .policy.checkpoint import expand_path
from .policy.errors import InputError
from .policy.instruction import check_instruction
from .policy.quantize import FORMATS

OUTPUTS = ('twist', 'array', 'trajectory', 'gripper', 'raw')


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    read_only: bool = False
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    kind: type | None = None  # the type of an entry whose default is None (unset)


PARAMS: tuple[Param, ...] = (
    Param('model', '', 'Checkpoint directory (Hugging Face OpenVLA layout), or an embedded '
          'model (default-dit); empty = the embedded default model.', read_only=True),
    Param('device', 'cpu', 'Torch device: cpu, cuda or cuda:N.', read_only=True),
    Param('dtype', 'float32', 'Weights dtype.', read_only=True,
          choices=('float32', 'bfloat16', 'float16')),
    Param('quantize', 'none', "Weight-only quantization of the decoder's linear layers: none, "
          'int8, or int4 (int4 on CUDA needs dtype bfloat16; on CPU it stores int4 values in '
          'int8). Needs torchao; a format with no kernel here is refused at configure.',
          read_only=True, choices=FORMATS),
    Param('cpu_threads', 0, "Torch CPU threads for inference; 0: torch's default less one (at "
          'least 1), leaving a core to the camera, the control tick and ROS.', read_only=True,
          low=0, high=1024),
    Param('static_cache', False, 'Static-shape KV cache written at position slots, greedy '
          'tokens kept on the device until the action is complete (the GPU decode path; the '
          'same tokens).', read_only=True),
    Param('compile', False, 'torch.compile the one-token decode step (CUDA graphs on CUDA); '
          'implies static_cache. Compiled during configure (warm-up).', read_only=True),
    Param('unnorm_key', '', 'Dataset statistics used to un-normalise actions; empty = the '
          "checkpoint's only one.", read_only=True),
    Param('center_crop', False, 'Crop the central 90% of the image area first (LIBERO).',
          read_only=True),
    Param('autostart', True, 'Configure and activate the lifecycle node at start-up.',
          read_only=True),
    Param('image_transport', 'raw', 'Camera input: raw (sensor_msgs/Image on image_raw) or '
          'compressed (sensor_msgs/CompressedImage on image_raw/compressed).', read_only=True,
          choices=('raw', 'compressed')),
    Param('image_reliability', 'best_effort', 'Camera subscription QoS: best_effort (sensor '
          'data, never waits) or reliable (lossless replay of recorded frames).',
          read_only=True, choices=('best_effort', 'reliable')),
    Param('instruction', '', 'Task instruction (empty: none, hold); the instruction topic '
          'replaces it and this parameter always shows the one being followed. A change starts '
          'a new episode.'),
    Param('control_rate_hz', 10.0, 'Rate of the control tick that publishes commands, Hz.',
          read_only=True, low=0.5, high=500.0),
    Param('max_image_age_s', 0.5, 'Newest frame older than this (by arrival): hold and stop '
          'commanding; such frames are never inferred on, s.', low=0.01, high=10.0),
    Param('max_action_age_s', 1.0, 'Queued actions computed from frames older than this are '
          'dropped, s.', low=0.01, high=10.0),
    Param('max_command_gap_s', 0.5, 'Command watchdog: active, with an instruction and valid '
          'frames, yet no command for this long: one hold and ERROR with the cause, s.',
          low=0.01, high=60.0),
    Param('max_image_pixels', 4096 * 4096, 'Largest camera image (width x height) accepted; '
          'compressed frames are checked from their header, before decoding.', read_only=True,
          low=64.0, high=8192 * 8192),
    Param('outputs', ['twist', 'array', 'gripper', 'raw'], f'Which command outputs to publish, '
          f'any of {list(OUTPUTS)}.', read_only=True, choices=OUTPUTS),
    Param('command_frame_id', 'base_link', 'frame_id of TwistStamped commands (the frame the '
          'policy\'s end-effector deltas are expressed in).'),
    Param('action_scale', [1.0] * ACTION_DIM, 'Per-dimension factor applied to the policy '
          'action before clamping.', low=-100.0, high=100.0),
    Param('action_lower', [-0.05, -0.05, -0.05, -0.25, -0.25, -0.25, 0.0], 'Per-dimension '
          'lower command limits (m, rad per step; gripper).', low=-1e3, high=1e3),
    Param('action_upper', [0.05, 0.05, 0.05, 0.25, 0.25, 0.25, 1.0], 'Per-dimension upper '
          'command limits (m, rad per step; gripper).', low=-1e3, high=1e3),
    Param('debug_image', False, 'Publish ~/debug_image (sensor_msgs/Image): each command\'s '
          'camera frame with the dropped visual tokens darkened, the commanded motion drawn and '
          'reuse or hold marked.', read_only=True),
    Param('joint_names', list(ACTION_NAMES), 'Names of the JointTrajectory dimensions (one per '
          'action dimension).', read_only=True),
    Param('chunk_mode', 'execute', 'How action chunks become commands: execute (the first '
          'chunk_steps actions of each chunk, one per tick) or ensemble (a prediction every '
          "tick, blended with the previous ones by CogACT's adaptive weights).",
          choices=('execute', 'ensemble')),
    Param('chunk_steps', -1, 'execute: actions of each chunk to run before the next one (0: the '
          'whole chunk; -1: what the model recommends in its config.json "execution", else the '
          'whole chunk; an autoregressive model gives chunks of one).', low=-1, high=1024),
    Param('ensemble_horizon', 2, 'ensemble: the last K predictions blended (CogACT: 2 on the '
          'Google robot, 7 on WidowX).', low=1, high=64),
    Param('ensemble_alpha', 0.1, 'ensemble: weight exp(alpha * cos(prediction, newest)).',
          low=-10.0, high=10.0),
    Param('inference_timing', 'just_in_time', 'just_in_time: start each inference from the '
          'measured latency so it finishes just before the tick that uses it, on the newest '
          'frame; asap: as soon as the queue runs dry.', choices=('just_in_time', 'asap')),
    Param('robots', [], 'Namespaces of the robots this node serves with one model, e.g. [r1, '
          'r2]: each gets the topics of a single-robot node in that namespace, its own runner, '
          'accelerator memory, reset and enable services and /diagnostics entry, and their '
          'inferences run batched; empty: one robot, the topics without a namespace.',
          read_only=True),
    Param('batch_window_s', 0.02, "Several robots: inferences due within this long of the "
          "first due one join its batch (they start up to this much early), s.", low=0.0,
          high=1.0),
    Param('max_batch', 8, 'Several robots: the most robots in one forward (the KV cache is '
          'allocated for this many).', read_only=True, low=1, high=64),
    Param('accel', ['flashvla'], 'Accelerators, in the order their hooks run: [none] for the '
          f'plain model, or any of {sorted(ACCELERATORS)}.', read_only=True,
          choices=(NONE, *ACCELERATORS)),
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


@dataclass(frozen=True)
class AccelConfig:
    names: tuple[str, ...]  # hook order; () is the plain model
    options: dict[str, dict[str, Any]]  # per accelerator: its preset and the options set


@dataclass(frozen=True)
class NodeConfig:
    model: str
    device: str
    dtype: str
    quantize: str
    cpu_threads: int
    static_cache: bool
    compile: bool
    unnorm_key: str
    center_crop: bool
    autostart: bool
    image_transport: str
    image_reliability: str
    instruction: str
    control_rate_hz: float
    max_image_age_s: float
    max_action_age_s: float
    max_command_gap_s: float
    max_image_pixels: int
    outputs: tuple[str, ...]
    command_frame_id: str
    action_scale: tuple[float, ...]
    action_lower: tuple[float, ...]
    action_upper: tuple[float, ...]
    debug_image: bool
    joint_names: tuple[str, ...]
    chunk_mode: str
    chunk_steps: int
    ensemble_horizon: int
    ensemble_alpha: float
    inference_timing: str
    robots: tuple[str, ...]
    batch_window_s: float
    max_batch: int
    accel: AccelConfig

    @property
    def control_period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def chunks(self) -> ChunkExecution:
        return ChunkExecution(mode=self.chunk_mode, steps=self.chunk_steps,
                              horizon=self.ensemble_horizon, alpha=self.ensemble_alpha,
                              just_in_time=self.inference_timing == 'just_in_time')


assert [f.name for f in fields(NodeConfig)] == [
    p.name for p in PARAMS if p.name not in ACCEL_PARAMS]


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
    if len(value) != ACTION_DIM:
        return f'{name} needs {ACTION_DIM} entries (one per action dimension), got {len(value)}'
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
    if values['instruction']:
        try:
            check_instruction(values['instruction'])
        except InputError as exc:
            return str(exc)
    if values.get('robots') and (values['static_cache'] or values['compile']):
        return ('robots: several robots run batched on the append KV cache; set static_cache '
                'and compile to false')
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
