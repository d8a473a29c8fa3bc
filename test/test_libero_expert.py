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

"""The scripted LIBERO expert places the object on fixed episodes it is known to solve."""

import numpy as np
import pytest

pytestmark = pytest.mark.libero

pytest.importorskip('libero')


@pytest.mark.parametrize('suite, task, state', [
    ('libero_object', 0, 0),  # the alphabet soup into the basket
    ('libero_spatial', 0, 0),  # the bowl between the plate and the ramekin onto the plate
])
def test_expert_succeeds(suite: str, task: int, state: int) -> None:
    from flashvla_ros.sim.libero import LiberoWorld
    from flashvla_ros.sim.libero_expert import expert_action
    from flashvla_ros.sim.worlds import EpisodeSpec

    world = LiberoWorld(suite=suite)
    try:
        episode = world.open(EpisodeSpec(world.task_name(task), seed=state, task=task),
                             render=False)
        while not episode.done:
            command = expert_action(episode)
            assert command.shape == (7,) and np.all(np.abs(command[:6]) <= 1.0)
            assert command[6] in (0.0, 1.0)
            episode.step(command)
        assert episode.success(), f'{suite} task {task} state {state}: no success'
        assert episode.steps < 150  # it took about 90 steps when this test was written
    finally:
        world.close()
