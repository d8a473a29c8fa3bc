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
Accelerators by name: what the node's `accel.*` parameters and the bench's `--accel` choose.

Each entry checks its options (raising ValueError with the reason) before any model loads,
and wraps a loaded OpenVLAPolicy into an object with the same predict() and reset().
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..policy.openvla import OpenVLAPolicy
from .flashvla import FlashVLAPolicy, flashvla_options

# name -> (check(options), wrap(policy, options)); `none` ignores options, so a parameter file
# can switch acceleration off without deleting its tuning.
ACCELERATORS: dict[str, tuple[Callable[[dict], Any], Callable[[OpenVLAPolicy, dict], Any]]] = {
    'none': (lambda options: None, lambda policy, options: policy),
    'flashvla': (flashvla_options,
                 lambda policy, options: FlashVLAPolicy(policy, flashvla_options(options))),
}


def check_accel(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError (with the reason) unless `name` and `options` make an accelerator."""
    if name not in ACCELERATORS:
        raise ValueError(f'unknown accelerator {name!r}; known: {sorted(ACCELERATORS)}')
    ACCELERATORS[name][0](options)


def accelerate(policy: OpenVLAPolicy, name: str, options: dict[str, Any]) -> Any:
    """Wrap `policy` in the accelerator `name` configured by `options`."""
    check_accel(name, options)
    return ACCELERATORS[name][1](policy, options)
