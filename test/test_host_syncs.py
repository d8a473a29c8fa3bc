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
Host reads of device tensors per step: each one is a sync on a GPU, so they are counted.

On CPU nothing waits, so the reads themselves are counted: every Tensor method that brings a
value to the host, wrapped for one step (`numpy()` is not one: a device tensor needs `cpu()`
first, which is counted).
"""

import pytest
import torch

from flashvla_ros.accel.registry import accelerate, parse_accel
from flashvla_ros.policy import Observation, load_policy
from flashvla_ros.policy.presets import default_model_dir
from flashvla_ros.sim.tasks import Episode

READS = ('tolist', 'item', '__bool__', '__int__', '__float__', '__index__', 'cpu')


def reads_in_step(policy, steps: int = 3) -> int:
    """Run `steps` closed-loop steps; count the host reads of the last one."""
    ep = Episode(1_000_000)
    count = [0]
    originals = {name: getattr(torch.Tensor, name) for name in READS}
    for i in range(steps):
        obs = Observation(ep.observe(), ep.instruction)
        if i == steps - 1:
            for name, method in originals.items():
                setattr(torch.Tensor, name, counted(method, count))
        try:
            chunk = policy.predict(obs)
        finally:
            for name, method in originals.items():
                setattr(torch.Tensor, name, method)
        ep.step(chunk.values)
    return count[0]


def counted(method, count):
    def read(self, *args, **kwargs):
        count[0] += 1
        return method(self, *args, **kwargs)
    return read


@pytest.mark.parametrize('model, spec, reads', [
    ('default', 'none', 1),  # the action's tokens, and whether they are finite, at once
    ('default-dit', 'none', 1),  # the chunk
    # An accelerator that decides nothing reads nothing more.
    ('default', 'flashvla:keep_fraction=1.0,reuse=false,draft=false', 1),
    ('default-dit', 'efficientvla:preset=', 1),
    # A draft: one more read, how many guesses were confirmed (the loop after it is the host's).
    ('default', 'flashvla:keep_fraction=1.0,reuse=false', 2),
])
def test_host_reads_per_step(model, spec, reads):
    policy = accelerate(load_policy(str(default_model_dir(model))), *parse_accel(spec))
    assert reads_in_step(policy) == reads
