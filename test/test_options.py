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


"""One options declaration per accelerator: parameters, YAML, docs and parser agree with it."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from flashvla_ros.accel.base import Accelerator, option
from flashvla_ros.accel.docs import MARKDOWN_PAGE, generated_part, markdown_table, yaml_block
from flashvla_ros.accel.registry import ACCELERATORS, accelerate, parse_accel, update_options
from flashvla_ros.params import PARAM_BY_NAME, build_config, load_yaml
from flashvla_ros.policy import Observation, load_policy
from flashvla_ros.sim.tasks import Episode

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_and_docs_table_are_written_from_the_declarations():
    assert (ROOT / 'config' / 'policy.yaml').read_text().endswith(yaml_block())
    page = (ROOT / MARKDOWN_PAGE).read_text()
    assert generated_part(page) == markdown_table(), \
        f'{MARKDOWN_PAGE} is stale: python -m flashvla_ros.accel.docs markdown --write'
    with pytest.raises(ValueError, match='markers'):
        generated_part('no markers here')


@pytest.mark.parametrize('accel', ACCELERATORS.values(), ids=lambda a: a.name)
def test_every_option_is_a_parameter_and_parses_from_the_bench(accel):
    preset = PARAM_BY_NAME[f'{accel.name}.preset']
    assert preset.read_only and set(preset.choices) == {'', *accel.PRESETS}
    for spec in accel.specs():
        param = PARAM_BY_NAME[f'{accel.name}.{spec.name}']
        assert param.kind is spec.kind and param.default is None  # unset: the preset decides
        assert param.read_only is not spec.live
        assert spec.help[1:] in param.description
        text = str(spec.default).lower()
        names, options = parse_accel(f'{accel.name}:{spec.name}={text}')
        assert names == [accel.name] and options[accel.name] == {spec.name: spec.default}
    assert not set(PARAM_BY_NAME) - {'accel'} & {s.name for s in accel.specs()}


def test_node_config_carries_the_declared_options():
    config = load_yaml(ROOT / 'config' / 'policy.yaml')
    assert config.accel.names == ('flashvla',)
    assert config.accel.options == {'flashvla': {'preset': 'conservative'},
                                    'efficientvla': {'preset': 'default'}}  # unused: not named
    config = build_config({'accel': ['flashvla'], 'flashvla.preset': 'fast',
                           'flashvla.keep_tokens': 20})
    assert config.accel.options == {'flashvla': {'preset': 'fast', 'keep_tokens': 20},
                                    'efficientvla': {'preset': 'default'}}
    assert build_config({'accel': ['none'], 'flashvla.eps2': 0.5}).accel.names == ()
    for values, reason in (({'accel': ['none', 'flashvla']}, 'combines with nothing'),
                           ({'accel': ['warp']}, r"accel has \['warp'\]; allowed"),
                           ({'flashvla.eps2': 1.5}, r'eps2=1.5 must be in \[0, 1\]'),
                           ({'flashvla.svd': 'lowrank'}, 'needs a fixed rank')):
        with pytest.raises(ValueError, match=reason):
            build_config(values)


def test_live_options_apply_at_the_next_step_and_read_only_ones_refuse(tiny_dir):
    # A gate that accepts any history: with max_reuse 1 every other step is reused; raised
    # live to 3, three in a row.
    policy = accelerate(load_policy(str(tiny_dir)), ['flashvla'], {'flashvla': {
        'gate': 'past', 'eps1_deg': 180.0, 'eps2': 0.0, 'max_reuse': 1}})
    ep = Episode(3)
    obs = Observation(ep.observe(), ep.instruction)
    assert [policy.predict(obs).info.reused for _ in range(4)] == [False, False, True, False]
    options = {'flashvla': {'gate': 'past', 'eps1_deg': 180.0, 'eps2': 0.0, 'max_reuse': 3}}
    update_options(policy.hooks, options)
    assert [policy.predict(obs).info.reused for _ in range(4)] == [True, True, True, False]
    options['flashvla']['gate'] = 'current'
    with pytest.raises(ValueError, match=r"\['gate'\] are read-only while running"):
        update_options(policy.hooks, options)
    assert policy.hooks[0].options.max_reuse == 3 and policy.hooks[0].options.gate == 'past'


class SkipLast(Accelerator):
    """A test accelerator: a layer plan that drops the last decoder layer."""

    name = 'skip_last'

    @dataclass(frozen=True)
    class Options:
        layers: int = option(1, 'layers dropped from the end', low=0)

    def plan(self, layers: list[int]) -> list[int]:
        return layers[:len(layers) - self.options.layers]


class SkipSecond(SkipLast):
    """A test accelerator: a layer plan without decoder layer 1 (a hole)."""

    name = 'skip_second'

    def plan(self, layers: list[int]) -> list[int]:
        return [layer for layer in layers if layer != 1]


def test_accelerators_compose_in_order_and_incompatible_ones_are_refused(tiny_dir, monkeypatch):
    monkeypatch.setitem(ACCELERATORS, 'skip_last', SkipLast)
    names, options = parse_accel('skip_last+flashvla:keep_tokens=100,reuse=false,draft=false')
    policy = accelerate(load_policy(str(tiny_dir)), names, options)
    ep = Episode(3)
    info = policy.predict(Observation(ep.observe(), ep.instruction)).info
    layout = info.record.layout
    # Layer 3 never ran; FlashVLA kept 100 visual tokens after layer 1 (its L_p = 2).
    assert info.record.layer_tokens == {0: layout.prefill, 1: layout.prefill,
                                        2: layout.prompt + 100}
    assert info.layers_run == 3 and info.kept_tokens == 100
    # L_p counts the layers that run: too few left is refused, with the reason; so is a plan
    # pruned after FlashVLA chose its layer (the order matters).
    with pytest.raises(ValueError, match='flashvla layer=2: only 1 decoder layers run'):
        accelerate(policy, *parse_accel('skip_last:layers=3+flashvla'))
    with pytest.raises(ValueError, match=r'flashvla reads decoder layer\(s\) \[1\]'):
        accelerate(policy, *parse_accel('flashvla+skip_last:layers=3'))
    # With a hole in the plan, FlashVLA scores after the second layer that runs (layer 2).
    monkeypatch.setitem(ACCELERATORS, 'skip_second', SkipSecond)
    policy = accelerate(policy, *parse_accel('skip_second+flashvla:keep_tokens=100,reuse=false,'
                                             'draft=false'))
    record = policy.predict(Observation(ep.observe(), ep.instruction)).info.record
    assert record.layer_tokens == {0: layout.prefill, 2: layout.prefill,
                                   3: layout.prompt + 100}
