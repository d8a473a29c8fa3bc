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

"""The process library of the demo, the scripts and the tests (no ROS process is started)."""

import os

import pytest

from flashvla_ros.policy.presets import default_model_dir
from flashvla_ros.ros import demo
from flashvla_ros.ros.processes import own_domain_id, resolve_model, ros_env


def test_the_users_ros_settings_win_except_where_a_run_is_isolated(monkeypatch):
    monkeypatch.setenv('RMW_IMPLEMENTATION', 'rmw_cyclonedds_cpp')
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    monkeypatch.delenv('ROS_LOCALHOST_ONLY', raising=False)
    env = ros_env()
    assert env['RMW_IMPLEMENTATION'] == 'rmw_cyclonedds_cpp' and env['ROS_LOCALHOST_ONLY'] == '1'
    assert 'ROS_DOMAIN_ID' not in env  # the demo joins the user's graph
    monkeypatch.setenv('ROS_DOMAIN_ID', '7')
    assert ros_env(own_domain=True)['ROS_DOMAIN_ID'] == '7'  # the scripts: the user's choice
    tests = ros_env(own_domain=True, override=True)  # the tests: nobody else's graph
    assert tests['ROS_DOMAIN_ID'] == own_domain_id() == str(100 + os.getpid() % 100)
    assert tests['RMW_IMPLEMENTATION'] == 'rmw_fastrtps_cpp'


def test_a_missing_model_is_refused_with_what_to_do(tmp_path, monkeypatch, capsys):
    assert resolve_model(None) == str(default_model_dir().resolve())
    with pytest.raises(FileNotFoundError, match='no checkpoint directory'):
        resolve_model(str(tmp_path / 'nothing'))
    monkeypatch.setattr('flashvla_ros.policy.presets.default_model_dir',
                        lambda name='default': tmp_path / name)
    with pytest.raises(FileNotFoundError, match='flashvla-make-tiny'):
        resolve_model(None)
    with pytest.raises(SystemExit):  # before any process starts
        demo.main(['--model', str(tmp_path / 'nothing')])
    assert 'no checkpoint directory' in capsys.readouterr().err
