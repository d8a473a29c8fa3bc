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
Define what an accelerator is: hooks of the one forward plus one declaration of its options.

The hooks are `policy.step.Hooks`; everything else about the options is derived from the
declaration:

    @dataclass(frozen=True)
    class MyOptions:
        budget: float = option(0.5, 'share of the visual tokens kept', low=0, high=1,
                               low_open=True, live=True)

An option's declaration (type, default, help, range or choices, live) is the only one: the
node's ROS parameters and their validation, `config/policy.yaml`, the options table of
docs/ACCELERATORS.md and the bench's `name:key=value` parser all come from it
(`test/test_options.py` checks the files).
Live options may change while the robot runs (`ros2 param set`); the worker applies them
between two steps. The others are fixed when the model is configured.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
import math
from typing import Any, ClassVar

from ..policy.step import Hooks


@dataclass(frozen=True)
class OptionSpec:
    name: str
    kind: type  # int, float, bool or str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the range excludes `low`
    live: bool = False

    def describe_range(self) -> str:
        """Say the allowed values in words: `one of a, b`, `in (0, 1]`, `>= 1` ('' if any)."""
        if self.choices:
            return f'one of {", ".join(self.choices)}'
        if self.low is None:
            return ''
        if self.high is None:
            return f'{">" if self.low_open else ">="} {self.low:g}'
        return f'in {"(" if self.low_open else "["}{self.low:g}, {self.high:g}]'

    def check(self, value: Any, owner: str) -> str | None:
        """Return why `value` is not acceptable, or None."""
        where = f'{owner} option {self.name}={value!r}'
        if self.kind is bool:
            return None if isinstance(value, bool) else f'{where} must be true or false'
        if self.kind is str:
            if not isinstance(value, str):
                return f'{where} must be a string'
            if self.choices and value not in self.choices:
                return f'{where}: choose {self.describe_range()}'
            return None
        if isinstance(value, bool) or not isinstance(value, int if self.kind is int
                                                     else (int, float)):
            return f'{where} must be {"an integer" if self.kind is int else "a number"}'
        if not math.isfinite(value):
            return f'{where} must be finite'
        below = self.low is not None and (value <= self.low if self.low_open
                                          else value < self.low)
        above = self.high is not None and value > self.high
        if below or above:
            return f'{where} must be {self.describe_range()}'
        return None


def option(default: Any, help: str, *, choices: tuple[str, ...] = (), low: float | None = None,
           high: float | None = None, low_open: bool = False, live: bool = False) -> Any:
    """Declare one option of an accelerator's options dataclass."""
    return field(default=default, metadata={'option': {
        'help': help, 'choices': choices, 'low': low, 'high': high, 'low_open': low_open,
        'live': live}})


def token_budget(visual_tokens: int, keep_tokens: int, keep_fraction: float,
                 present: int | None = None) -> int:
    """
    Visual tokens a selection keeps: the one rule of a token budget, alone or composed.

    A budget counts the MODEL's visual tokens (`visual_tokens`, the image's patches):
    `keep_tokens`, else `keep_fraction` of them; at least 1. A selection keeps that many of the
    `present` tokens (default: all of the model's), or all of them when an earlier
    accelerator's selection already left fewer. So composed selections never multiply their
    fractions: `[efficientvla, flashvla]` at their defaults keeps EfficientVLA's 14 of 64
    (FlashVLA's budget, 0.625 x 64 = 40, is not below 14), not 0.625 x 14 = 9. Alone,
    `present` is every visual token and nothing changes.
    """
    k = keep_tokens or round(keep_fraction * visual_tokens)
    k = max(1, min(visual_tokens, k))
    return k if present is None else min(present, k)


def option_specs(options_type: type) -> list[OptionSpec]:
    """Return the declarations of an options dataclass, in field order."""
    kinds = {'int': int, 'float': float, 'bool': bool, 'str': str}
    specs = []
    for f in fields(options_type):
        meta = f.metadata['option']
        assert f.default is not MISSING
        kind = f.type if isinstance(f.type, type) else kinds[f.type]  # postponed annotations
        specs.append(OptionSpec(f.name, kind, f.default, **meta))
    return specs


class Accelerator(Hooks):
    """An accelerator: hooks, its options (a dataclass of `option`s) and named presets."""

    name: ClassVar[str]
    Options: ClassVar[type]
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    DEFAULT_PRESET: ClassVar[str] = ''

    def __init__(self, options: Any) -> None:
        self.options = options

    @classmethod
    def specs(cls) -> list[OptionSpec]:
        return option_specs(cls.Options)

    @classmethod
    def build_options(cls, values: dict[str, Any] | None) -> Any:
        """
        Return the options of `preset` with overrides.

        `preset` is a name, '' for the built-in defaults, or absent for the default preset.

        Raise ValueError with the reason: unknown names, wrong types, out-of-range values and
        combinations `check` refuses.
        """
        values = dict(values or {})
        preset = values.pop('preset', cls.DEFAULT_PRESET)  # as the node's parameter defaults
        if preset and preset not in cls.PRESETS:
            raise ValueError(f'unknown {cls.name} preset {preset!r}; known: {sorted(cls.PRESETS)}')
        specs = {s.name: s for s in cls.specs()}
        unknown = sorted(set(values) - set(specs))
        if unknown:
            raise ValueError(f'unknown {cls.name} option(s) {unknown}; known: {sorted(specs)}')
        merged = {**cls.PRESETS.get(preset or '', {}), **values}
        for key, value in merged.items():
            reason = specs[key].check(value, cls.name)
            if reason:
                raise ValueError(reason)
        options = cls.Options(**merged)
        reason = cls.check(options)
        if reason:
            raise ValueError(f'{cls.name}: {reason}')
        return options

    @classmethod
    def check(cls, options: Any) -> str | None:
        """Why a combination of options cannot work (None when it can)."""
        return None

    @classmethod
    def live_change(cls, old: Any, new: Any) -> str | None:
        """Why `old` cannot become `new` while running (a read-only option changed), or None."""
        fixed = [s.name for s in cls.specs()
                 if not s.live and getattr(old, s.name) != getattr(new, s.name)]
        return f'{cls.name} option(s) {fixed} are read-only while running' if fixed else None

    def update(self, options: Any) -> None:
        """Apply changed live options (the worker calls this between two steps)."""
        self.options = options

    def fresh(self) -> Accelerator:
        return type(self)(self.options)
