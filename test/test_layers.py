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
The layering rules.

policy/, accel/, control/ and sim/ import nothing from ROS; no layer imports an application
(tools/, bench/, train/, testing/).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / 'flashvla_ros'
ROS_FREE = ('policy', 'accel', 'control', 'sim', 'viz')
ROS_MODULES = ('rclpy', 'rosbags', 'launch', 'launch_ros', 'builtin_interfaces', 'ament_index')


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level and node.module:
            names.add(f'.{node.module}')
    return names


def test_core_layers_import_no_ros():
    checked = 0
    for layer in ROS_FREE:
        for path in (PACKAGE / layer).rglob('*.py'):
            checked += 1
            for name in imported_modules(path):
                top = name.split('.')[0]
                assert top not in ROS_MODULES and not top.endswith('_msgs') \
                    and not top.endswith('_srvs'), f'{path} imports {name}'
                relative_ros = name.startswith('.ros') or '..ros' in name
                assert not relative_ros, f'{path} imports {name}'
    assert checked >= 12


APPLICATIONS = ('tools', 'bench', 'train', 'testing')  # built on the layers, never below them


def test_no_layer_imports_an_application():
    for layer in (*ROS_FREE, 'ros'):
        for path in (PACKAGE / layer).rglob('*.py'):
            for name in imported_modules(path):
                parts = name.lstrip('.').split('.')
                app = parts[1] if parts[0] == 'flashvla_ros' and len(parts) > 1 else \
                    parts[0] if name.startswith('.') else ''
                assert app not in APPLICATIONS, f'{path} imports {name}'
