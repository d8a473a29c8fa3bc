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
The node's ROS parameters, from the one declaration in `params.py`: declare, read, check.

Every entry is declared with a descriptor (type, description, range, read-only), read back as
plain Python values, and a change is checked as a whole (`params.check_config`) and refused
with the reason.
"""

from __future__ import annotations

import array
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
)

from ..params import PARAMS, Param, check_config, check_value
from ..policy import InputError

ROS_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
LIST_TYPES = {float: ParameterType.PARAMETER_DOUBLE_ARRAY,
              str: ParameterType.PARAMETER_STRING_ARRAY}


def descriptor(p: Param) -> ParameterDescriptor:
    """Return the ROS descriptor of one declaration: its type, description and range."""
    if p.kind is not None:  # unset by default; typed and checked by the config validator
        return ParameterDescriptor(description=f'{p.description} (unset: the preset decides)',
                                   read_only=p.read_only, dynamic_typing=True)
    d = p.default
    if isinstance(d, list) and not d:  # an empty list has no type of its own: checked here
        return ParameterDescriptor(description=p.description, read_only=p.read_only,
                                   dynamic_typing=True)
    kind = LIST_TYPES[type(d[0])] if isinstance(d, list) else ROS_TYPES[type(d)]
    desc = ParameterDescriptor(type=kind, description=p.description, read_only=p.read_only)
    if p.choices:
        desc.additional_constraints = f'one of {list(p.choices)}'
    if p.low is not None and isinstance(d, int) and not isinstance(d, bool):
        desc.integer_range = [IntegerRange(from_value=int(p.low), to_value=int(p.high))]
    elif p.low is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=p.low, to_value=p.high)]
    return desc


def declare(node: Any) -> None:
    """Declare every parameter of the node (the values of a parameter file override them)."""
    for p in PARAMS:
        node.declare_parameter(p.name, p.default, descriptor(p))


def read(node: Any) -> dict[str, Any]:
    """Return every parameter's value, arrays as lists."""
    values = {p.name: plain(node.get_parameter(p.name).value) for p in PARAMS}
    for name in ('robots', 'gripper_joints'):  # `robots:=[]` leaves it unset
        if values[name] is None:
            values[name] = []
    return values


def refusal(params: list, values: dict[str, Any], check_instruction: Any = None) -> str:
    """
    Return why a change is refused ('' when accepted); `values` gets the new values.

    `check_instruction`: the loaded policy's instruction rule (its token limit), or None.
    """
    for p in params:
        if p.name == 'use_sim_time':
            return ('use_sim_time is fixed at start-up (--ros-args -p use_sim_time:=true): '
                    'switching clocks while running would invalidate every age and timeout')
        value = plain(p.value)
        reason = check_value(p.name, value)
        if reason:
            return reason
        values[p.name] = value
    reason = check_config(values)
    if not reason and check_instruction is not None and values['instruction'] \
            and any(p.name == 'instruction' for p in params):
        try:
            check_instruction(values['instruction'])
        except InputError as exc:
            reason = f'instruction rejected: {exc}'
    return reason or ''


def plain(value: Any) -> Any:
    """Return array parameters (rclpy gives array.array) as lists, other values as they are."""
    return list(value) if isinstance(value, array.array) else value
