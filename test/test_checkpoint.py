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

"""Checkpoint save/load round trips and every loader error a user can hit."""

import json
import re
import shutil

import cv2
import numpy as np
import pytest
from safetensors.torch import load_file, save_file
import torch

from flashvla_ros.policy import CheckpointError, Observation, expand_path, load_policy
from flashvla_ros.policy.checkpoint import (
    INDEX,
    WEIGHTS,
    load_model,
    read_config,
    save_checkpoint,
    weight_files,
)
from flashvla_ros.tools.make_tiny import main as make_tiny_main
from flashvla_ros.tools.predict import main as predict_main

RGB = np.random.default_rng(5).integers(0, 256, (200, 260, 3), dtype=np.uint8)


@pytest.fixture
def ckpt(tiny_dir, tmp_path):
    """Copy the tiny checkpoint to a private directory that a test may break."""
    return shutil.copytree(tiny_dir, tmp_path / 'ckpt')


def test_tiny_checkpoint_has_the_real_layout(tiny_dir):
    names = {p.name for p in tiny_dir.iterdir()}
    assert {'config.json', WEIGHTS, 'tokenizer.json', 'tokenizer_config.json'} <= names
    raw = json.loads((tiny_dir / 'config.json').read_text())
    for key in ('timm_model_ids', 'image_sizes', 'text_config', 'norm_stats', 'n_action_bins',
                'arch_specifier', 'use_fused_vision_backbone', 'image_resize_strategy'):
        assert key in raw
    keys = set(load_file(str(tiny_dir / WEIGHTS)))
    # The unused parts a real timm tower stores are in the file too.
    assert 'vision_backbone.fused_featurizer.attn_pool.latent' in keys
    assert 'vision_backbone.featurizer.blocks.2.attn.qkv.weight' in keys
    assert 'language_model.lm_head.weight' in keys


def test_round_trip_single_file_and_sharded(tiny_dir, tmp_path):
    model, report = load_model(tiny_dir)
    assert report.unexpected == []
    assert any('attn_pool' in k for k in report.skipped_unused)
    expected = load_policy(str(tiny_dir)).predict(Observation(RGB, 'push the cup'))
    for name, shard in (('single', 10**12), ('sharded', 200_000)):
        out = save_checkpoint(tmp_path / name, model.state_dict(), model.cfg,
                              tokenizer_dir=tiny_dir, dtype=None, max_shard_bytes=shard)
        assert ((out / INDEX).is_file()) == (name == 'sharded')
        files = weight_files(out)
        if name == 'single':
            assert files == [out / WEIGHTS]
        else:
            # The loader reads exactly the shards the index names; each holds at most `shard`
            # bytes of tensors, or one tensor that is larger on its own.
            weight_map = json.loads((out / INDEX).read_text())['weight_map']
            assert files == [out / f for f in dict.fromkeys(weight_map.values())]
            assert not (out / WEIGHTS).exists()
            for f in files:
                stored = load_file(str(f))
                nbytes = sum(t.numel() * t.element_size() for t in stored.values())
                assert nbytes <= shard or len(stored) == 1, (f.name, nbytes, len(stored))
                assert {weight_map[k] for k in stored} == {f.name}
        again, _ = load_model(out)
        for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(),
                                   strict=True):
            assert k == k2 and torch.equal(a, b)
        action = load_policy(str(out)).predict(Observation(RGB, 'push the cup'))
        assert action.token_ids == expected.token_ids
    assert len(weight_files(tmp_path / 'sharded')) > 3


def test_loads_straight_into_bfloat16(tiny_dir):
    model, _ = load_model(tiny_dir, dtype='bf16')
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_timm_1x_gamma_names_load(ckpt):
    sd = load_file(str(ckpt / WEIGHTS))
    renamed = {k.replace('ls1.scale_factor', 'ls1.gamma'): v for k, v in sd.items()}
    save_file(renamed, str(ckpt / WEIGHTS))
    model, report = load_model(ckpt)
    assert report.unexpected == []
    key = 'vision_backbone.featurizer.blocks.0.ls1.scale_factor'
    assert torch.equal(model.state_dict()[key], sd[key])


def test_home_directory_paths_are_expanded(tiny_dir, tmp_path, monkeypatch, capsys):
    # `model:=~/models/x` and `--model=~/x` reach the runtime unexpanded: the shell only
    # expands a `~` that starts a word.
    monkeypatch.setenv('HOME', str(tmp_path))
    shutil.copytree(tiny_dir, tmp_path / 'models' / 'tiny')
    policy = load_policy('~/models/tiny')
    assert policy.predict(Observation(RGB, 'push the cup')).token_ids == \
        load_policy(str(tiny_dir)).predict(Observation(RGB, 'push the cup')).token_ids
    assert expand_path('~/models/tiny') == tmp_path / 'models' / 'tiny'
    cv2.imwrite(str(tmp_path / 'frame.png'), RGB[..., ::-1])
    assert predict_main(['--model=~/models/tiny', '--image=~/frame.png',
                         '--instruction', 'push the cup']) == 0
    assert json.loads(capsys.readouterr().out)['token_ids'] == \
        policy.predict(Observation(RGB, 'push the cup')).token_ids
    make_tiny_main(['--out=~/written', '--seed', '1'])
    assert (tmp_path / 'written' / WEIGHTS).is_file() and not (tmp_path / '~').exists()
    with pytest.raises(CheckpointError, match=re.escape(f'{tmp_path}/nope: checkpoint')):
        load_model('~/nope')


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        load_model(tmp_path / 'nope')


def test_missing_config(ckpt):
    (ckpt / 'config.json').unlink()
    with pytest.raises(CheckpointError, match=re.escape('missing config.json')):
        load_model(ckpt)


def test_corrupt_config(ckpt):
    (ckpt / 'config.json').write_text('{"timm_model_ids": [')
    with pytest.raises(CheckpointError, match='not valid JSON'):
        read_config(ckpt)


@pytest.mark.parametrize('key', ['text_config', 'norm_stats', 'timm_model_ids'])
def test_config_missing_key_is_named(ckpt, key):
    raw = json.loads((ckpt / 'config.json').read_text())
    del raw[key]
    (ckpt / 'config.json').write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=f'missing key "{key}"'):
        read_config(ckpt)


def test_unknown_tower_lists_known_ones(ckpt):
    raw = json.loads((ckpt / 'config.json').read_text())
    del raw['vision_tower_specs']
    raw['timm_model_ids'][0] = 'vit_mystery'
    (ckpt / 'config.json').write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match='vit_large_patch14_reg4_dinov2'):
        read_config(ckpt)


def test_real_openvla_config_resolves_7b_shapes(ckpt):
    """A config.json as OpenVLA-7B ships it (sparse text_config) gives the 7B sizes."""
    raw = json.loads((ckpt / 'config.json').read_text())
    del raw['vision_tower_specs']
    raw['timm_model_ids'] = ['vit_large_patch14_reg4_dinov2.lvd142m',
                             'vit_so400m_patch14_siglip_224']
    raw['text_config'] = {'model_type': 'llama', 'pad_token_id': 32000, 'vocab_size': 32064,
                          'torch_dtype': 'bfloat16'}
    cfg = read_config_from(raw, ckpt)
    assert cfg.vision_dim == 2176 and cfg.num_patches == 256
    assert (cfg.text.hidden_size, cfg.text.num_hidden_layers, cfg.text.intermediate_size) == (
        4096, 32, 11008)
    from flashvla_ros.policy.openvla import OpenVLA
    with torch.device('meta'):
        sd = OpenVLA(cfg).state_dict()
    assert sd['projector.fc1.weight'].shape == (8704, 2176)
    assert sd['projector.fc2.weight'].shape == (4096, 8704)
    assert sd['vision_backbone.featurizer.reg_token'].shape == (1, 4, 1024)
    assert sd['vision_backbone.fused_featurizer.blocks.25.mlp.fc1.weight'].shape == (4304, 1152)
    total = sum(t.numel() for t in sd.values())
    assert 7.4e9 < total < 7.6e9  # OpenVLA-7B: 7.5 B parameters used at inference


def read_config_from(raw, ckpt):
    (ckpt / 'config.json').write_text(json.dumps(raw))
    return read_config(ckpt)


def test_missing_weights_file(ckpt):
    (ckpt / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match='no weights'):
        load_model(ckpt)


def test_missing_shard(tiny_dir, tmp_path):
    model, _ = load_model(tiny_dir)
    out = save_checkpoint(tmp_path / 's', model.state_dict(), model.cfg, max_shard_bytes=500_000)
    victim = sorted(out.glob('model-*.safetensors'))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        load_model(out)


def test_missing_key_is_named(ckpt):
    sd = load_file(str(ckpt / WEIGHTS))
    del sd['language_model.model.layers.1.mlp.up_proj.weight']
    save_file(sd, str(ckpt / WEIGHTS))
    with pytest.raises(CheckpointError,
                       match=r'missing 1 weight: language_model\.model\.layers\.1\.mlp\.up_proj'):
        load_model(ckpt)


def test_many_missing_keys_are_summarised_by_module(ckpt):
    sd = load_file(str(ckpt / WEIGHTS))
    gone = [k for k in sd if k.startswith('language_model.model.layers.')]
    save_file({k: v for k, v in sd.items() if k not in gone}, str(ckpt / WEIGHTS))
    with pytest.raises(CheckpointError) as err:
        load_model(ckpt)
    assert f'missing {len(gone)} weights: language_model.model.* ({len(gone)})' in str(err.value)
    assert len(str(err.value)) < 300


def test_shape_mismatch_names_file_and_key(ckpt):
    sd = load_file(str(ckpt / WEIGHTS))
    sd['projector.fc3.weight'] = torch.zeros(3, 3)
    save_file(sd, str(ckpt / WEIGHTS))
    message = r'model.safetensors: "projector.fc3.weight" has shape'
    with pytest.raises(CheckpointError, match=message):
        load_model(ckpt)


def test_unexpected_keys_are_reported_not_fatal(ckpt):
    sd = load_file(str(ckpt / WEIGHTS))
    sd['language_model.model.layers.0.extra_adapter.weight'] = torch.zeros(2)
    save_file(sd, str(ckpt / WEIGHTS))
    _, report = load_model(ckpt)
    assert report.unexpected == ['language_model.model.layers.0.extra_adapter.weight']


def test_unknown_unnorm_key_lists_available(tiny_dir):
    with pytest.raises(CheckpointError, match=r"unknown unnorm_key 'bridge_orig'.*mock_world"):
        load_policy(str(tiny_dir), unnorm_key='bridge_orig')


def test_missing_tokenizer(ckpt):
    (ckpt / 'tokenizer.json').unlink()
    with pytest.raises(CheckpointError, match='no tokenizer files'):
        load_policy(str(ckpt))


def test_bad_dtype_and_device(tiny_dir):
    with pytest.raises(ValueError, match='unknown dtype'):
        load_model(tiny_dir, dtype='float8')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            load_model(tiny_dir, device='cuda')
