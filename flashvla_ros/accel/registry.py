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
Name the accelerators and compose them in a declared order.

This is what the node's `accel` parameter, the YAML file and the bench's `--accel` choose.

    policy = accelerate(load_policy(path), ['flashvla'], {'flashvla': {'preset': 'fast'}})

`none` (alone) is the plain model. Options are checked (ValueError with the reason) before any
model loads; a combination that cannot run together is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from ..policy.composition import check_roles
from .base import Accelerator
from .efficientvla import EfficientVLA
from .flashvla import FlashVLA

ACCELERATORS: dict[str, type[Accelerator]] = {cls.name: cls for cls in (FlashVLA, EfficientVLA)}
NONE = 'none'


def check_accel(names: Sequence[str], options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return each named accelerator's options; raise ValueError why `names` cannot run."""
    names = list(names)
    if NONE in names:
        if len(names) > 1:
            raise ValueError(f'accel {names}: none (the plain model) combines with nothing')
        names = []
    unknown = [n for n in names if n not in ACCELERATORS]
    if unknown:
        raise ValueError(f'unknown accelerator(s) {unknown}; known: '
                         f'{[NONE, *sorted(ACCELERATORS)]}')
    if len(set(names)) != len(names):
        raise ValueError(f'accel {names} names an accelerator twice')
    check_roles([ACCELERATORS[n] for n in names])
    return {n: ACCELERATORS[n].build_options(options.get(n)) for n in names}


def build_accelerators(names: Sequence[str],
                       options: dict[str, dict[str, Any]]) -> list[Accelerator]:
    built = check_accel(names, options)
    return [ACCELERATORS[n](o) for n, o in built.items()]


def accelerate(policy: Any, names: Sequence[str], options: dict[str, dict[str, Any]]) -> Any:
    """Plug the accelerators `names` (in order) into `policy`'s forward; return the policy."""
    policy.set_hooks(build_accelerators(names, options))
    return policy


def update_options(hooks: Sequence[Any], options: dict[str, dict[str, Any]]) -> None:
    """
    Apply changed live options to the accelerators among `hooks` (a policy's, or a robot's).

    The runner's worker calls this between two steps; a read-only option that changed is
    refused (ValueError) and nothing changes.
    """
    changes = []
    for accel in hooks:
        if isinstance(accel, Accelerator):
            new = accel.build_options(options.get(accel.name))
            reason = accel.live_change(accel.options, new)
            if reason:
                raise ValueError(reason)
            changes.append((accel, new))
    for accel, new in changes:
        accel.update(new)


def parse_accel(spec: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """
    Read `NAME[:PRESET][,KEY=VALUE...]`, several joined by `+` in hook order.

    Examples: `none`, `flashvla`, `flashvla:fast`, `flashvla:keep_fraction=0.5,gate=past`.
    Values are read as YAML scalars and checked against the options' declarations.
    """
    names: list[str] = []
    options: dict[str, dict[str, Any]] = {}
    for part in spec.split('+'):
        name, _, rest = part.strip().partition(':')
        names.append(name)
        opts: dict[str, Any] = {}
        for item in filter(None, rest.split(',')):
            key, eq, value = item.partition('=')
            if eq:
                opts[key.strip()] = yaml.safe_load(value) if value.strip() else ''
            elif 'preset' not in opts:
                opts['preset'] = key.strip()
            else:
                raise ValueError(f'{spec}: "{item}" is neither KEY=VALUE nor the one preset')
        if opts:
            options[name] = opts
    check_accel(names, options)
    return names, options
