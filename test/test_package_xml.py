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
`rosdep install --from-paths src` must resolve every key of package.xml on Humble and Jazzy.

One key without a rule fails the whole command, so package.xml may only use keys from the list
below, each checked by hand against github.com/ros/rosdistro at commit
8468e88ccd523427f9131e39d2af0938f1c298b2 (2026-08-22): ROS packages in both
humble/distribution.yaml and jazzy/distribution.yaml (with the repository that releases them),
system keys in rosdep/python.yaml with an unconditional `debian` and `ubuntu` rule (an apt
package, so it also works where pip into the system Python is refused). Adding a key means
checking it there first and adding it here.
"""

from pathlib import Path
import xml.etree.ElementTree as ET

ROOT = Path(__file__).resolve().parent.parent
ROSDISTRO_COMMIT = '8468e88ccd523427f9131e39d2af0938f1c298b2'

# key -> where it resolves (rosdistro at ROSDISTRO_COMMIT)
VERIFIED = {
    'rclpy': 'humble+jazzy distribution.yaml, repository rclpy',
    'rcl_interfaces': 'humble+jazzy distribution.yaml, repository rcl_interfaces',
    'builtin_interfaces': 'humble+jazzy distribution.yaml, repository rcl_interfaces',
    'lifecycle_msgs': 'humble+jazzy distribution.yaml, repository rcl_interfaces',
    'std_msgs': 'humble+jazzy distribution.yaml, repository common_interfaces',
    'sensor_msgs': 'humble+jazzy distribution.yaml, repository common_interfaces',
    'geometry_msgs': 'humble+jazzy distribution.yaml, repository common_interfaces',
    'trajectory_msgs': 'humble+jazzy distribution.yaml, repository common_interfaces',
    'diagnostic_msgs': 'humble+jazzy distribution.yaml, repository common_interfaces',
    'std_srvs': 'humble+jazzy distribution.yaml, repository common_interfaces',
    'launch': 'humble+jazzy distribution.yaml, repository launch',
    'launch_testing': 'humble+jazzy distribution.yaml, repository launch',
    'launch_ros': 'humble+jazzy distribution.yaml, repository launch_ros',
    'ament_copyright': 'humble+jazzy distribution.yaml, repository ament_lint',
    'ament_flake8': 'humble+jazzy distribution.yaml, repository ament_lint',
    'ament_pep257': 'humble+jazzy distribution.yaml, repository ament_lint',
    'rosbag2_storage_mcap': 'humble+jazzy distribution.yaml, repository rosbag2',
    'pinocchio': 'humble+jazzy distribution.yaml, repository pinocchio (4.1.0-1)',
    'python3-numpy': 'rosdep/python.yaml: debian/ubuntu apt python3-numpy',
    'python3-opencv': 'rosdep/python.yaml: debian/ubuntu apt python3-opencv',
    'python3-yaml': 'rosdep/python.yaml: debian/ubuntu apt python3-yaml',
    'python3-pytest': 'rosdep/python.yaml: debian/ubuntu apt python3-pytest',
}
DEPEND_TAGS = {'depend', 'build_depend', 'build_export_depend', 'buildtool_depend',
               'buildtool_export_depend', 'exec_depend', 'test_depend', 'doc_depend'}


def package_keys() -> dict[str, list[str]]:
    root = ET.parse(ROOT / 'package.xml').getroot()
    keys: dict[str, list[str]] = {}
    for element in root:
        if element.tag in DEPEND_TAGS:
            keys.setdefault(element.text.strip(), []).append(element.tag)
    return keys


def test_every_rosdep_key_was_verified_against_rosdistro():
    keys = package_keys()
    unknown = sorted(set(keys) - set(VERIFIED))
    assert not unknown, (f'package.xml keys not verified against rosdistro {ROSDISTRO_COMMIT}: '
                         f'{unknown}; check rosdep/*.yaml and */distribution.yaml, then add '
                         'them to VERIFIED')
    assert len(keys) >= 15  # the parse found the dependencies at all


def test_keys_that_broke_rosdep_stay_out():
    keys = package_keys()
    assert 'rclpy_lifecycle' not in keys  # part of rclpy
    assert not [k for k in keys if k.endswith('-pip')], 'pip packages go through constraints.txt'
    # The pip-installed runtime is named in a comment instead.
    text = (ROOT / 'package.xml').read_text()
    for name in ('torch', 'transformers', 'tokenizers', 'safetensors', 'simplejpeg', 'rosbags'):
        assert name in text


def test_the_mcap_test_bag_declares_its_storage_plugin():
    metadata = (ROOT / 'test' / 'data' / 'mock_world_bag' / 'metadata.yaml').read_text()
    assert 'storage_identifier: mcap' in metadata
    assert 'test_depend' in package_keys()['rosbag2_storage_mcap']


def test_package_format_and_build_type():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'flashvla_ros'
    assert root.find('export').findtext('build_type') == 'ament_python'
