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

"""Weight-only int8/int4: what is quantized, to what values, streamed, and what is refused."""

import json

import numpy as np
import pytest
import torch

from flashvla_ros.accel.registry import accelerate
from flashvla_ros.bench.run import benchmark
from flashvla_ros.policy import Observation, load_policy
from flashvla_ros.policy import checkpoint as checkpoint_module
from flashvla_ros.policy import quantize as q
from flashvla_ros.policy.checkpoint import load_model
from flashvla_ros.tools import predict

DECODER_LINEARS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')


@pytest.mark.parametrize('spec, reason', [
    ('fp8', "unknown format; use one of ['none', 'int8', 'int4']"),
    ('int8:vision', "unknown scope 'vision'"),
    ('none:all', 'none takes no scope'),
])
def test_bad_specs_are_refused_with_what_is_accepted(spec, reason):
    with pytest.raises(ValueError, match=reason.replace('[', r'\[').replace(']', r'\]')):
        q.Quantization.parse(spec)


def test_scope_decides_which_linear_layers_are_quantized():
    decoder, everything = q.Quantization.parse('int8'), q.Quantization.parse('int4:all')
    layer = 'language_model.model.layers.3.mlp.down_proj'
    assert decoder.covers(layer) and everything.covers(layer)
    for name in ('language_model.lm_head', 'projector.fc1', 'vision_backbone.featurizer.x'):
        assert not decoder.covers(name) and everything.covers(name)
    assert not everything.covers('action_model.net.blocks.0.mlp.fc1')  # the head: fp32
    assert not q.Quantization.parse(None).covers(layer)
    assert str(everything) == 'int4:all' and str(decoder) == 'int8'


def test_int4_groups_follow_the_kernels():
    cpu, cuda = torch.device('cpu'), torch.device('cuda')
    assert q.int4_group(4096, cuda) == 128 and q.int4_group(11008, cuda) == 128  # OpenVLA-7B
    assert q.int4_group(8256, cuda) == 64  # 7B's MLP with a quarter of its neurons pruned
    assert q.int4_group(344, cpu) == 86  # the embedded models' down projection
    with pytest.raises(ValueError, match='fits no group'):
        q.int4_group(344, cuda)


def test_a_refusal_comes_before_any_weight_is_read(tiny_dir, monkeypatch):
    opened = []
    monkeypatch.setattr(checkpoint_module, 'safe_open', lambda *a, **k: opened.append(a))
    monkeypatch.setattr('importlib.util.find_spec', lambda name: None)
    with pytest.raises(ValueError, match='torchao is not installed'):
        load_model(tiny_dir, quantize='int8')
    assert opened == []


def test_int4_widths_no_group_fits_are_refused_by_layer_name():
    from flashvla_ros.policy.openvla import OpenVLA
    from flashvla_ros.policy.presets import openvla_7b_config
    with torch.device('meta'):
        model = OpenVLA(openvla_7b_config())
    cuda = torch.device('cuda')
    assert len(q.Quantization.parse('int4').linear_names(model, cuda)) == 32 * 7
    with pytest.raises(ValueError, match=r'4304 input features .* use int8 .*fc2'):
        q.Quantization.parse('int4:all').linear_names(model, cuda)  # SigLIP's MLP
    with pytest.raises(ValueError, match=r'7706 input features fits no group of 32\.\.128'):
        q.int4_group(7706, torch.device('cpu'))  # 70% of 11008 neurons: groups of 2


def test_the_static_cache_decodes_the_same_quantized_tokens(tiny_dir):
    frame = np.random.default_rng(2).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    chunks = [load_policy(str(tiny_dir), quantize='int4', static_cache=static).predict(
        Observation(frame, 'pick up the block')) for static in (False, True)]
    assert chunks[0].token_ids == chunks[1].token_ids


def test_formats_with_no_kernel_are_refused_before_loading(monkeypatch):
    cuda = torch.device('cuda')
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (8, 7))
    q.Quantization.parse('int4').check(cuda, torch.bfloat16)  # an Orin: sm_87, bf16
    with pytest.raises(ValueError, match=r'bfloat16 only .* not float16: set dtype: bfloat16'):
        q.Quantization.parse('int4').check(cuda, torch.float16)
    q.Quantization.parse('int8').check(cuda, torch.float16)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (7, 5))
    with pytest.raises(ValueError, match=r'capability 8\.0 or newer .* 7\.5: use int8'):
        q.Quantization.parse('int4').check(cuda, torch.bfloat16)
    monkeypatch.setattr('importlib.util.find_spec', lambda name: None)
    with pytest.raises(ValueError, match='torchao is not installed'):
        q.Quantization.parse('int8').check(torch.device('cpu'), torch.float32)
    assert 'flashvla_ros[quantize]' in q.INSTALL_HINT
    q.Quantization.parse('none').check(torch.device('cpu'), torch.float32)  # needs nothing


def test_int8_is_per_row_absmax_and_the_model_runs_on_those_values(tiny_dir, tiny_policy):
    """The loaded int8 weights equal an independent per-row quantization of the file's."""
    model, report = load_model(tiny_dir, quantize='int8')
    layers = model.language_model.model.layers
    assert report.quantized == len(layers) * len(DECODER_LINEARS)
    plain = tiny_policy.model
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            wanted = 'int8' if name.startswith('language_model.model.layers.') else 'none'
            assert q.weight_format(module.weight) == wanted, name
    ref = plain.language_model.model.layers[1].mlp.gate_proj.weight.detach()
    scale = ref.abs().amax(dim=1, keepdim=True) / 127.5  # absmax over (qmax - qmin) / 2
    expected = torch.clamp(torch.round(ref * (1 / scale)), -128, 127) * scale
    assert torch.equal(layers[1].mlp.gate_proj.weight.dequantize(), expected)
    # The layer computes with those values, and the decoder takes a quarter of the bytes.
    x = torch.randn(5, ref.shape[1])
    out = layers[1].mlp.gate_proj(x)
    assert torch.allclose(out, torch.nn.functional.linear(x, expected), atol=1e-5)
    full, small = (q.weight_bytes(m.language_model.model.layers) for m in (plain, model))
    assert small < 0.27 * full


def test_int4_keeps_sixteen_levels_per_group_and_the_head_stays_float32():
    from flashvla_ros.policy.presets import model_path
    model, _ = load_model(model_path('default-dit'), quantize='int4:all')
    down = model.language_model.model.layers[0].mlp.down_proj.weight  # 344 inputs: groups of 86
    values = down.dequantize().reshape(down.shape[0], -1, 86)
    levels = max(len(torch.unique(g)) for g in values.reshape(-1, 86)[:64])
    assert q.weight_format(down) == 'int4' and levels <= 16
    assert q.weight_format(model.projector.fc1.weight) == 'int4'
    head = list(model.action_model.parameters())
    assert all(p.dtype == torch.float32 and q.weight_format(p) == 'none' for p in head)


def test_loading_streams_never_holding_a_full_precision_decoder(tiny_dir, monkeypatch):
    """Each decoder weight is quantized as it is read: none waits in full precision."""
    seen = []
    built = []
    original_model = checkpoint_module.OpenVLA
    original_quantize = checkpoint_module.quantize_weight

    def build(cfg):
        built.append(original_model(cfg))
        return built[-1]

    def quantize(weight, fmt):
        decoder = built[0].language_model.model.layers
        waiting = [p for layer in decoder for p in layer.parameters()
                   if p.dim() == 2 and not p.is_meta and q.weight_format(p) == 'none']
        seen.append(len(waiting))
        return original_quantize(weight, fmt)

    monkeypatch.setattr(checkpoint_module, 'OpenVLA', build)
    monkeypatch.setattr(checkpoint_module, 'quantize_weight', quantize)
    load_model(tiny_dir, quantize='int8')
    assert len(seen) == 7 * len(built[0].language_model.model.layers) and max(seen) == 0


def test_sparse_mlp_selection_keeps_int8_values_exactly():
    weight = q.quantize_weight(torch.randn(344, 128), 'int8')
    keep = torch.tensor([0, 5, 9, 300])
    rows = q.select(weight, keep, 0)
    assert q.weight_format(rows) == 'int8'
    assert torch.equal(rows.dequantize(), weight.dequantize()[keep])
    down8 = q.quantize_weight(torch.randn(128, 344), 'int8')
    cols = q.select(down8, keep, 1)
    assert q.weight_format(cols) == 'int8' and cols.shape == (128, 4)
    assert torch.equal(cols.dequantize(), down8.dequantize()[:, keep])  # exactly
    x = torch.randn(3, 4)
    assert torch.allclose(torch.nn.functional.linear(x, cols), x @ cols.dequantize().T,
                          atol=1e-5)
    down = q.quantize_weight(torch.randn(128, 344), 'int4')
    cols = q.select(down, torch.arange(258), 1)  # EfficientVLA's 75% of 344: groups of 86
    assert q.weight_format(cols) == 'int4' and cols.shape == (128, 258)
    # Re-grouped from dequantized values: within half an int4 step of them.
    dense = down.dequantize()[:, :258]
    step = dense.reshape(128, 3, 86).abs().amax(-1, keepdim=True) / 7
    assert ((cols.dequantize() - dense).reshape(128, 3, 86).abs() <= step / 2 + 1e-6).all()


def test_quantization_composes_with_the_shipped_accelerator(tiny_dir):
    policy = accelerate(load_policy(str(tiny_dir), quantize='int4'), ['flashvla'], {})
    frame = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    chunk = policy.predict(Observation(frame, 'push the cube'))
    assert np.isfinite(chunk.values).all() and len(chunk.token_ids) == 7


def test_bench_crosses_quantization_with_every_config(tiny_dir):
    report = benchmark(str(tiny_dir), ['none', 'flashvla'], episodes=1, seed=1_000_000,
                       max_steps=3, log=lambda *a, **k: None, quantize=['none', 'int8'])
    names = [c['name'] for c in report['configs']]
    assert names == ['none', 'flashvla', 'none [int8]', 'flashvla [int8]']
    assert [c['quantize'] for c in report['configs']] == ['none', 'none', 'int8', 'int8']
    assert 0.0 <= report['configs'][2]['fidelity']['token_match'] <= 1.0
    full, quantized = report['configs'][1], report['configs'][3]  # flashvla, flashvla [int8]
    paired = quantized['paired_diff_vs_full_precision']
    expected = np.mean(quantized['successes']) - np.mean(full['successes'])
    assert paired['mean'] == pytest.approx(expected)
    assert report['configs'][1]['paired_diff_vs_full_precision'] is None


def test_predict_says_its_quantization(tiny_dir, tmp_path, capsys):
    import cv2
    image = tmp_path / 'frame.png'
    cv2.imwrite(str(image), np.full((64, 64, 3), 90, np.uint8))
    assert predict.main(['--model', str(tiny_dir), '--image', str(image), '--instruction',
                         'pick up the block', '--quantize', 'int8']) == 0
    assert json.loads(capsys.readouterr().out)['quantize'] == 'int8'
    with pytest.raises(SystemExit):  # refused by the argument parser, before loading
        predict.main(['--model', str(tiny_dir), '--image', str(image), '--instruction',
                      'pick up the block', '--quantize', 'int3'])
    assert 'unknown format' in capsys.readouterr().err


def test_int4_sparse_mlp_quantizes_the_kept_neurons_from_the_checkpoint():
    """The kept columns are grouped as if they had been quantized from the file, not twice."""
    from flashvla_ros.policy.presets import model_path
    path = model_path('default-dit')
    policy = accelerate(load_policy(str(path), quantize='int4'), ['efficientvla'], {})
    layer, neurons = next(iter(policy.composition.neurons.items()))
    kept = policy.model.language_model.model.layers[layer].mlp.kept
    full = checkpoint_module.read_tensor(path, f'language_model.model.layers.{layer}.mlp.'
                                               'down_proj.weight').float()
    expected = q.quantize_weight(full[:, neurons.cpu()].contiguous(), 'int4')
    assert torch.equal(kept[2].dequantize(), expected.dequantize())
