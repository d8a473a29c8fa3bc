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
Write the accelerator sections of `config/policy.yaml` and the README from the declarations.

`test/test_options.py` fails when the files disagree with what this writes.

    python -m flashvla_ros.accel.docs yaml      # the tail of config/policy.yaml
    python -m flashvla_ros.accel.docs markdown  # the README rows
"""

from __future__ import annotations

import sys
import textwrap

from .base import OptionSpec
from .registry import ACCELERATORS, NONE

DEFAULT_ACCEL = ('flashvla',)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return 'true' if v else 'false'
    return f'"{v}"' if v == '' else str(v)


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, 99 - len(indent) - 2, initial_indent=f'{indent}# ',
                         subsequent_indent=f'{indent}# ')


def _meaning(spec: OptionSpec) -> str:
    """Help text and the allowed values (unless the help already names every choice)."""
    named = spec.choices and all(c in spec.help for c in spec.choices)
    bounds = '' if named else spec.describe_range()
    return f'{spec.help}{f", {bounds}" if bounds else ""}'


def yaml_block() -> str:
    """Return the `accel` entry and each accelerator's mapping, as config/policy.yaml ends."""
    lines = _comment('Training-free acceleration (docs/BENCHMARKS.md has the measurements '
                     'behind the presets): the accelerators, in the order their hooks run; '
                     f'[{NONE}] is the plain model. Reused actions pass the same limits as '
                     'fresh ones. (read-only)', '    ')
    lines.append(f'    accel: [{", ".join(DEFAULT_ACCEL)}]')
    for accel in ACCELERATORS.values():
        lines += _comment(f'{accel.name}: {(accel.__doc__ or "").strip()} Options left '
                          'commented take the preset\'s value; (live) ones may be changed '
                          'while running (ros2 param set), the others are read-only.', '    ')
        lines.append(f'    {accel.name}:')
        presets = ', '.join(accel.PRESETS)
        lines += _comment(f'{presets}, or "" for the built-in defaults. (read-only)', '      ')
        lines.append(f'      preset: {_value(accel.DEFAULT_PRESET)}')
        for spec in accel.specs():
            entry = f'      # {spec.name}: {_value(spec.default)}'.ljust(30)
            text = f'{_meaning(spec)}{" (live)" if spec.live else ""}'
            wrapped = textwrap.wrap(text, 99 - 32)
            lines.append(f'{entry}# {wrapped[0]}')
            lines += [f'      #{" " * 23}# {more}' for more in wrapped[1:]]
    return '\n'.join(lines) + '\n'


def markdown_rows() -> str:
    """Return the README's parameter-table rows of `accel` and every accelerator's options."""
    rows = [f'| `accel` | `[{", ".join(DEFAULT_ACCEL)}]` | no | accelerators in hook order: '
            f'`[{NONE}]` (plain model) or any of {", ".join(f"`{n}`" for n in ACCELERATORS)} '
            '([Acceleration](#acceleration-flashvla)) |']
    for accel in ACCELERATORS.values():
        presets = ', '.join(f'`{p}`' for p in accel.PRESETS)
        rows.append(f'| `{accel.name}.preset` | `{accel.DEFAULT_PRESET}` | no | {presets}, or '
                    'empty for the built-in defaults |')
        for spec in accel.specs():
            rows.append(f'| `{accel.name}.{spec.name}` | unset (`{_value(spec.default)}`) | '
                        f'{"yes" if spec.live else "no"} | {_meaning(spec)} |')
    return '\n'.join(rows) + '\n'


if __name__ == '__main__':
    print(yaml_block() if sys.argv[1:] == ['yaml'] else markdown_rows(), end='')
