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

"""The closed-loop benchmark's report: schema, exact FLOPs, pairing, plot and markdown."""

import json
from pathlib import Path

import pytest

from flashvla_ros.bench.run import benchmark, compare, main, markdown, read_accel
from flashvla_ros.policy import load_policy
from flashvla_ros.policy.flops import full_flops
from flashvla_ros.sim.tasks import FAMILIES, Episode


def test_report_schema_and_exact_flops(tiny_dir, tmp_path):
    yaml_accel = tmp_path / 'none.yaml'
    yaml_accel.write_text('accel: [none]\n')
    report = benchmark(str(tiny_dir), ['none', str(yaml_accel)], episodes=3, seed=1_000_000,
                       max_steps=4, log=lambda *a, **k: None)
    assert report['episodes'] == 3 and set(report['expert']['per_group']) == set(FAMILIES)
    first, second = report['configs']
    assert first['paired_diff'] is None
    assert second['paired_diff'] == {'mean': 0.0, 'ci95': [0.0, 0.0]}  # same model, same seeds
    assert first['steps'] == 12 and first['reuse_rate'] == 0.0
    assert first['fidelity'] == {'token_match': 1.0, 'mean_abs_diff': 0.0}
    # One digest per step and episode: the same model on the same seeds gives the same ones.
    assert [len(d) for d in first['step_digests']] == [4, 4, 4]
    assert second['step_digests'] == first['step_digests']
    assert all(len(h) == 12 for d in first['step_digests'] for h in d)
    assert compare(report, report) == []
    changed = json.loads(json.dumps(report))
    changed['configs'][1]['step_digests'][2][3] = '0' * 12
    changed['configs'][1]['success'] += 1 / 3
    assert compare(report, changed) == [f'{second["name"]}: episode 2 differs from step 3',
                                        f'{second["name"]}: success '
                                        f'{second["success"]:.3f} -> '
                                        f'{second["success"] + 1 / 3:.3f}']
    assert set(first['latency_ms']) == {'vision', 'prefill', 'decode', 'head', 'total'}
    # FLOPs per step: exactly the counter's value for the prompts that were run.
    policy = load_policy(str(tiny_dir))
    expected = [full_flops(policy.cfg,
                           policy.layout(len(policy.prompt_ids(Episode(s, f).instruction)))).total
                for s, f in zip(range(1_000_000, 1_000_003), FAMILIES, strict=True)]
    assert first['flops_per_step']['total'] == pytest.approx(sum(expected) / 3)
    assert first['flops_vs_full_7b_shapes'] == 1.0  # the plain model, projected: all of it


def test_cli_writes_json_plot_and_markdown(tiny_dir, tmp_path, capsys):
    out = tmp_path / 'docs'
    main(['--model', str(tiny_dir), '--accel', 'none', '--episodes', '2', '--max-steps', '3',
          '--json', str(out / 'b.json'), '--plot', str(out / 'b.png'),
          '--markdown', str(out / 'BENCHMARKS.md')])
    report = json.loads((out / 'b.json').read_text())
    assert report['configs'][0]['name'] == 'none'
    assert (out / 'b.png').stat().st_size > 2000
    page = (out / 'BENCHMARKS.md').read_text()
    assert '![success vs FLOPs, latency](b.png)' in page and '| none |' in page
    assert page == markdown(report, 'b.png')
    assert '| scripted expert (ceiling) |' in capsys.readouterr().out


def test_bad_accelerator_specs(tmp_path):
    with pytest.raises(ValueError, match='unknown accelerator'):
        benchmark('unused', ['warp-drive'], 1, 0)
    with pytest.raises(ValueError, match=r"flashvla'\] each bring a reuse gate|twice"):
        read_accel('flashvla+flashvla')
    with pytest.raises(ValueError, match=r'none .the plain model. combines with nothing'):
        read_accel('none+flashvla')
    with pytest.raises(ValueError, match='must be an integer'):
        read_accel('flashvla:fast,max_reuse=1.5')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('something: else\n')
    with pytest.raises(ValueError, match='needs "accel: \\[names\\]"'):
        read_accel(str(bad))


def test_accelerator_specs_and_parameter_files_read_alike(tmp_path):
    assert read_accel('none') == (['none'], {})
    assert read_accel('flashvla:fast,keep_fraction=0.75') == (
        ['flashvla'], {'flashvla': {'preset': 'fast', 'keep_fraction': 0.75}})
    # The node's own parameter file, and the same keys at the top level of a file.
    node_file = Path(__file__).resolve().parents[1] / 'config' / 'policy.yaml'
    assert read_accel(str(node_file)) == (['flashvla'], {'flashvla': {'preset': 'conservative'},
                                                         'efficientvla': {'preset': 'default'}})
    top = tmp_path / 'fast.yaml'
    top.write_text('accel: [flashvla]\nflashvla: {preset: fast, eps2: 0.7}\n')
    assert read_accel(str(top)) == (['flashvla'], {'flashvla': {'preset': 'fast', 'eps2': 0.7}})


@pytest.mark.slow  # ~6 s on idle cores; the default tier is near its 5-minute budget
def test_chunks_drive_several_steps_and_ensembles_blend(tmp_path, tiny_dir):
    from dataclasses import replace

    import torch

    from flashvla_ros.control.chunks import MODEL_STEPS, ChunkExecution
    from flashvla_ros.policy.checkpoint import save_checkpoint
    from flashvla_ros.policy.config import Execution
    from flashvla_ros.policy.dit import DiTConfig
    from flashvla_ros.policy.presets import tiny_config
    from flashvla_ros.tools.make_tiny import random_model

    head = DiTConfig(hidden_size=32, depth=1, num_heads=2, token_size=128)
    model = random_model(replace(tiny_config(), action_model=head), 0)
    for p in model.action_model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    path = save_checkpoint(tmp_path / 'dit', model.state_dict(), model.cfg,
                           tokenizer_dir=tiny_dir, dtype='float32')
    quiet = {'log': lambda *a, **k: None, 'episodes': 2, 'seed': 1_000_000, 'max_steps': 8}
    four = benchmark(str(path), ['none'], chunks=ChunkExecution(steps=4), **quiet)
    run = four['configs'][0]
    assert four['chunks']['steps'] == 4
    assert run['control_steps'] == 16 and run['steps'] == 4  # two chunks per 8-step episode
    whole = benchmark(str(path), ['none'], **quiet)['configs'][0]
    assert whole['steps'] == 2  # one 16-action chunk covers an 8-step episode
    # FLOPs are per control step: a chunk's work spread over the steps it drove.
    assert run['flops_per_step']['total'] == pytest.approx(2 * whole['flops_per_step']['total'])
    blend = benchmark(str(path), ['none'], chunks=ChunkExecution(mode='ensemble'), **quiet)
    assert blend['configs'][0]['steps'] == blend['configs'][0]['control_steps'] == 16
    # A model that recommends 4 steps per chunk runs 4 where chunk_steps is left to it (-1),
    # and what the user sets where it is not.
    advised = save_checkpoint(tmp_path / 'advised', model.state_dict(),
                              replace(model.cfg, execution=Execution(chunk_steps=4)),
                              tokenizer_dir=tiny_dir, dtype='float32')
    left = benchmark(str(advised), ['none'], chunks=ChunkExecution(steps=MODEL_STEPS), **quiet)
    assert left['configs'][0]['chunk_steps'] == 4 and left['configs'][0]['steps'] == 4
    told = benchmark(str(advised), ['none'], chunks=ChunkExecution(steps=0), **quiet)
    assert told['configs'][0]['chunk_steps'] == 0 and told['configs'][0]['steps'] == 2
    plain = benchmark(str(path), ['none'], chunks=ChunkExecution(steps=MODEL_STEPS), **quiet)
    assert plain['configs'][0]['chunk_steps'] == 0  # no recommendation: the whole chunk


def test_an_interrupted_run_resumes_where_it_stopped(tiny_dir, tmp_path, monkeypatch):
    import flashvla_ros.bench.run as bench
    quiet = dict(episodes=2, seed=1_000_000, max_steps=2, log=lambda *a, **k: None)
    accels = ['none', 'none']
    whole = benchmark(str(tiny_dir), accels, **quiet)
    progress = tmp_path / 'progress.pkl'
    expert = bench.run_expert
    calls = []

    def dies_on_the_third(world, spec):
        calls.append(spec)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the session ends mid-run
        return expert(world, spec)
    monkeypatch.setattr(bench, 'run_expert', dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        benchmark(str(tiny_dir), accels, resume=progress, **quiet)
    monkeypatch.setattr(bench, 'run_expert', expert)
    resumed = benchmark(str(tiny_dir), accels, resume=progress, **quiet)
    for a, b in zip(whole['configs'], resumed['configs'], strict=True):
        assert a['successes'] == b['successes'] and a['step_digests'] == b['step_digests']
        assert a['steps'] == b['steps'] and a['flops_per_step'] == b['flops_per_step']
    assert resumed['expert'] == whole['expert']
    with pytest.raises(ValueError, match="another run's progress"):
        benchmark(str(tiny_dir), ['none'], resume=progress, **{**quiet, 'max_steps': 3})
