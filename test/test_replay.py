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


"""Recorded decisions, replayed on other weights, run exactly what was recorded."""

from dataclasses import replace

import pytest
import torch

from flashvla_ros.bench.latency import frames, replay
from flashvla_ros.bench.replay import Replay, read_decisions
from flashvla_ros.bench.run import benchmark
from flashvla_ros.policy import load_policy
from flashvla_ros.policy.checkpoint import save_checkpoint
from flashvla_ros.policy.flops import count_flops
from flashvla_ros.policy.presets import tiny_cogact_config
from flashvla_ros.tools.make_tiny import random_model

QUIET = {'log': lambda *a, **k: None, 'episodes': 2, 'seed': 1_000_000, 'max_steps': 8}


def same_decisions(got, want) -> None:
    """Compare two step records on what the decisions fix (the prompts may differ)."""
    assert (got.stopped, got.vision, got.plan) == (want.stopped, want.vision, want.plan)
    assert {k: v - got.layout.prompt for k, v in got.layer_tokens.items()} == \
        {k: v - want.layout.prompt for k, v in want.layer_tokens.items()}
    assert got.decode_calls == want.decode_calls
    assert (got.dit_parts, got.mlp_kept) == (want.dit_parts, want.mlp_kept)

    def scoring(record):  # diverse selection's third value is the text it read: the prompt
        return [(m, n, r - record.layout.prompt if m == 'diverse' else r)
                for m, n, r in record.scoring]
    assert scoring(got) == scoring(want)


def replayed(path, records) -> list:
    """Run `records` again on a fresh policy of `path` (other weights, other frames)."""
    policy = load_policy(str(path))
    policy.set_hooks([Replay(records)])
    return [policy.predict(obs).info for obs in frames(len(records), seed=2_000_000)]


@pytest.mark.slow  # a benchmark tool; the diffusion replay stays in the default tier
def test_token_head_decisions_replay_step_by_step(tiny_dir, tmp_path):
    configs = ['none', 'flashvla:keep_tokens=100,gate=past,eps1_deg=180,eps2=0,max_reuse=1',
               'flashvla:keep_tokens=100,gate=current,eps1_deg=180,eps2=0,max_reuse=1',
               'efficientvla:preset=,keep_tokens=128,token_layer=1+flashvla:layer=1,'
               'keep_fraction=0.5,reuse=false']
    benchmark(str(tiny_dir), configs, decisions=tmp_path / 'd.json', **QUIET)
    decisions = read_decisions(tmp_path / 'd.json')
    assert list(decisions['configs']) == configs and decisions['episodes'] == 2
    kinds = set()
    for records in decisions['configs'].values():
        infos = replayed(tiny_dir, records)
        for info, record in zip(infos, records, strict=True):
            same_decisions(info.record, record)
            assert info.reused == record.stopped
            kinds.add((record.stopped, record.vision, bool(record.scoring),
                       any(fed > 1 for fed, _ in record.decode_calls)))
    # Every kind of decision was replayed: inferred, reused from memory and after looking,
    # tokens scored and dropped, drafts verified.
    assert {(True, False), (True, True)} <= {k[:2] for k in kinds}
    assert any(k[2] for k in kinds) and any(k[3] for k in kinds)


def test_diffusion_decisions_replay_the_cached_dit_parts(tiny_dir, tmp_path):
    torch.manual_seed(0)
    model = random_model(tiny_cogact_config(), 0)
    for p in model.action_model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    path = save_checkpoint(tmp_path / 'dit', model.state_dict(), model.cfg,
                           tokenizer_dir=tiny_dir, dtype='float32')
    configs = ['none', 'efficientvla:preset=,keep_tokens=64,cache_interval=5']
    benchmark(str(path), configs, decisions=tmp_path / 'd.json', **QUIET)
    decisions = read_decisions(tmp_path / 'd.json')
    for records in decisions['configs'].values():
        for info, record in zip(replayed(path, records), records, strict=True):
            same_decisions(info.record, record)
    cached = decisions['configs'][configs[1]][0]
    assert cached.dit_parts['attn'] < decisions['configs']['none'][0].dit_parts['attn']
    # On other shapes (a deeper head here) the parts scale; the report labels the rows.
    report = replay({**decisions, 'configs': {configs[1]: decisions['configs'][configs[1]]}},
                    shapes='tiny-dit')
    row = report['results'][0]
    assert row['decisions'].startswith('tiny-dit shapes, random weights, decisions replayed '
                                       'from dit, 2 episodes')
    assert 0 < row['flops_vs_full'] < 1 and row['steps'] == len(decisions['configs'][configs[1]])


def test_a_replayed_step_counts_the_projected_flops(tiny_dir, tmp_path):
    benchmark(str(tiny_dir), ['flashvla:keep_tokens=64,reuse=false'],
              decisions=tmp_path / 'd.json', **QUIET)
    records = read_decisions(tmp_path / 'd.json')['configs']['flashvla:keep_tokens=64,reuse=false']
    policy = load_policy(str(tiny_dir))
    infos = replayed(tiny_dir, records)
    for info, record in zip(infos, records, strict=True):
        mine = replace(record, layout=info.record.layout,
                       layer_tokens={k: v - record.layout.prompt + info.record.layout.prompt
                                     for k, v in record.layer_tokens.items()})
        assert count_flops(policy.cfg, info.record) == count_flops(policy.cfg, mine)


def test_a_new_instruction_does_not_rewind_the_replay(tiny_dir, tmp_path):
    """The recorded steps run in order, whatever instructions the timed frames carry."""
    spec = 'flashvla:keep_tokens=100,gate=past,eps1_deg=180,eps2=0,max_reuse=1'
    benchmark(str(tiny_dir), [spec], decisions=tmp_path / 'd.json', **QUIET)
    records = read_decisions(tmp_path / 'd.json')['configs'][spec]
    assert any(r.stopped for r in records) and any(len(r.decode_calls) > 1 for r in records)
    policy = load_policy(str(tiny_dir))
    replay_hook = Replay(records)
    policy.set_hooks([replay_hook])
    policy.warm_up()
    replay_hook.rewind()
    observations = frames(len(records), seed=2_000_000)
    for i, (obs, record) in enumerate(zip(observations, records, strict=True)):
        other = 'push the blue block' if i % 2 else 'pick up the red block'
        info = policy.predict(replace(obs, instruction=other)).info  # a reset every step
        assert info.record.decode_calls == record.decode_calls
        assert info.reused == record.stopped
