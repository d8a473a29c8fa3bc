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
The policy runtime: OpenVLA-compatible models in plain PyTorch, with no ROS imports.

One forward (`OpenVLAPolicy.predict_batch`, a robot alone being a batch of one) with the
accelerators' hook points, the token and diffusion heads, checkpoints and quantized weights.
"""

from .checkpoint import expand_path, load_policy
from .errors import CheckpointError, InputError, NonFiniteOutputError, PolicyError
from .openvla import OpenVLA, OpenVLAPolicy, RobotPolicy, set_cpu_threads
from .step import ActionChunk, Observation, StepInfo

__all__ = [
    'ActionChunk', 'CheckpointError', 'InputError', 'NonFiniteOutputError', 'Observation',
    'OpenVLA', 'OpenVLAPolicy', 'PolicyError', 'RobotPolicy', 'StepInfo', 'expand_path',
    'load_policy', 'set_cpu_threads',
]
