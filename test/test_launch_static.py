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
Check the launch file statically, and the YAML against the node's parameter table.

No `launch` package is needed: everything they name must exist and agree.
"""

import ast
from pathlib import Path
import re

import yaml

from flashvla_ros.params import PARAMS, flatten, load_yaml

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / 'launch' / 'policy.launch.py'
SETUP = (ROOT / 'setup.py').read_text()


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == name]


def kwarg(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return ast.literal_eval(k.value) if isinstance(k.value, ast.Constant) else k.value
    return None


def console_scripts() -> set[str]:
    return set(re.findall(r"'([\w-]+) = flashvla_ros\.[\w.]+:main'", SETUP))


def constant(tree: ast.AST, name: str):
    assign = next(n for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], 'id', '') == name)
    return assign.value


def test_launch_nodes_exist_in_this_package():
    tree = ast.parse(LAUNCH.read_text())
    nodes = calls(tree, 'Node')
    # The world node's executable is looked up by `world` (mock, libero) in WORLDS.
    worlds = ast.literal_eval(constant(tree, 'WORLDS'))
    assert worlds == {'mock': 'mock_world', 'libero': 'libero_world'}
    executables = {kwarg(n, 'executable') for n in nodes}
    assert {e for e in executables if isinstance(e, str)} == {'policy_node'}
    assert {ast.unparse(e) for e in executables if not isinstance(e, str)} == {'WORLDS[world]'}
    assert {kwarg(n, 'package') for n in nodes} == {'flashvla_ros'}
    assert {'policy_node', *worlds.values()} <= console_scripts()
    assert 'flashvla_ros' in (ROOT / 'package.xml').read_text()
    assert (ROOT / 'resource' / 'flashvla_ros').is_file()


def test_launch_arguments_are_the_documented_ones():
    tree = ast.parse(LAUNCH.read_text())
    assign = next(n for n in tree.body if isinstance(n, ast.Assign)
                  and getattr(n.targets[0], 'id', '') == 'ARGUMENTS')
    names = {ast.literal_eval(k) for k in assign.value.keys}
    assert names == {'model', 'config', 'device', 'dtype', 'quantize', 'namespace', 'robots',
                     'world', 'suite', 'render', 'center_crop', 'lockstep', 'control',
                     'use_mock_world', 'use_sim_time'}
    reference = (ROOT / 'docs' / 'PARAMETERS.md').read_text()
    for name in names:
        assert f'`{name}`' in reference, f'launch argument {name} is not in docs/PARAMETERS.md'


def test_parameter_file_is_installed_and_named_right():
    text = LAUNCH.read_text()
    assert "'config', 'policy.yaml'" in text and "'config', 'libero.yaml'" in text
    configs = ast.literal_eval(constant(ast.parse(text), 'CONFIGS'))
    assert set(configs) == set(ast.literal_eval(constant(ast.parse(text), 'WORLDS')))
    for parts in configs.values():
        assert ROOT.joinpath(*parts).is_file()
    assert "glob('launch/*.launch.py')" in SETUP and "glob('config/*.yaml')" in SETUP
    assert '$base/lib/flashvla_ros' in (ROOT / 'setup.cfg').read_text()


def test_yaml_sets_every_declared_parameter_with_a_comment():
    lines = (ROOT / 'config' / 'policy.yaml').read_text().splitlines()
    params = flatten(yaml.safe_load('\n'.join(lines))['policy_node']['ros__parameters'])
    # Options that default to "unset" (the preset decides) are there, commented out.
    assert list(params) == [p.name for p in PARAMS if p.kind is None]
    for p in PARAMS:
        if p.kind is not None:
            name = p.name.split('.')[-1]
            assert any(re.match(rf'\s+# {name}: ', line) for line in lines), p.name
    for i, line in enumerate(lines):
        m = re.match(r'    (\w+):( |$)', line) or re.match(r'      (\w+): ', line)
        if m:
            assert lines[i - 1].strip().startswith('#'), f'{m.group(1)} has no comment'
    config = load_yaml(ROOT / 'config' / 'policy.yaml')
    assert config.control_rate_hz == 10.0 and config.joint_names[1] == 'y'


def test_every_parameter_is_documented():
    # The node's own parameters in the reference, the accelerators' in their page.
    docs = ROOT / 'docs'
    text = (docs / 'PARAMETERS.md').read_text() + (docs / 'ACCELERATORS.md').read_text()
    for p in PARAMS:
        assert f'`{p.name}`' in text, f'parameter {p.name} is not documented'


def test_libero_yaml_names_declared_parameters_with_comments():
    lines = (ROOT / 'config' / 'libero.yaml').read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r'    (\w+):( |$)', line)
        if m:
            assert lines[i - 1].strip().startswith('#'), f'{m.group(1)} has no comment'
    config = load_yaml(ROOT / 'config' / 'libero.yaml')  # refuses an unknown parameter
    assert config.control_rate_hz == 20.0 and config.action_scale[0] == 0.05
