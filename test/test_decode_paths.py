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


"""The GPU decode path (static KV cache, device-resident tokens, compiled step) is exact."""

import pytest
import torch

from flashvla_ros.accel.registry import accelerate, parse_accel
from flashvla_ros.bench.latency import PATHS, STAGES, frames, run, table
from flashvla_ros.policy import load_policy
from flashvla_ros.policy.presets import default_model_dir

DEFAULT = str(default_model_dir())


def closed_loop_tokens(policy, n: int = 12) -> list[list[int]]:
    return [policy.predict(obs).token_ids for obs in frames(n)]


@pytest.mark.parametrize('spec', ['none', 'flashvla', 'flashvla:fast'])
def test_static_cache_gives_the_same_tokens(spec):
    names, options = parse_accel(spec)
    reference = accelerate(load_policy(DEFAULT), names, options)
    static = accelerate(load_policy(DEFAULT, static_cache=True), names, options)
    assert closed_loop_tokens(static) == closed_loop_tokens(reference)


@pytest.mark.slow
def test_compiled_decode_gives_the_same_tokens_on_cpu():
    reference = accelerate(load_policy(DEFAULT), ['flashvla'], {})
    compiled = accelerate(load_policy(DEFAULT, compile=True), ['flashvla'], {})
    compiled.warm_up()  # the compile happens here, as at configure
    assert closed_loop_tokens(compiled, 20) == closed_loop_tokens(reference, 20)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_cuda_static_and_compiled_paths_match_the_reference(dtype):
    reference = load_policy(DEFAULT, device='cuda', dtype=dtype)
    for kwargs in ({'static_cache': True}, {'compile': True}):
        fast = load_policy(DEFAULT, device='cuda', dtype=dtype, **kwargs)
        fast.warm_up()
        assert closed_loop_tokens(fast) == closed_loop_tokens(reference)


def test_latency_benchmark_runs_at_tiny_shapes_on_cpu():
    lines = []
    report = run('tiny', steps=3, configs=('none', 'flashvla:fast'),
                 paths=('reference', 'static'), log=lambda *a, **k: lines.append(a))
    assert [(r['config'], r['path']) for r in report['results']] == [
        ('none', 'reference'), ('flashvla:fast', 'reference'), ('none', 'static'),
        ('flashvla:fast', 'static')]
    for r in report['results']:
        assert set(r['median_ms']) == set(STAGES) == set(r['p99_ms'])
        assert r['first_step_ms'] > 0 and r['steps'] == 3 and r['peak_memory_gib'] is None
    assert len(lines) == 4 and PATHS == ('reference', 'static', 'compiled')
    assert table(report).count('\n') == 5  # header, rule, four rows
