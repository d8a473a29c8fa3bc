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

"""The FLOPs counter against counts by hand, and the 7B projection of a record."""

from dataclasses import replace

from flashvla_ros.policy.config import OpenVLAConfig, TextConfig, ViTConfig
from flashvla_ros.policy.flops import (
    StepRecord,
    count_flops,
    decoder_layer_flops,
    full_flops,
    project,
    scoring_flops,
    vit_flops,
)
from flashvla_ros.policy.layout import SequenceLayout
from flashvla_ros.policy.presets import cogact_7b_config, openvla_7b_config, tiny_cogact_config

TOWER = ViTConfig(embed_dim=4, depth=3, num_heads=2, mlp_dim=8, patch_size=2, image_size=4,
                  reg_tokens=1)
TEXT = TextConfig(vocab_size=10, hidden_size=4, intermediate_size=6, num_hidden_layers=2,
                  num_attention_heads=2)
CFG = OpenVLAConfig(vision=(TOWER, TOWER), text=TEXT, norm_stats={})
LAYOUT = SequenceLayout(visual=4, prompt=5, actions=3)  # prefill: BOS + 4 patches + 4 = 9


def record(layers: dict, calls: list, **kw) -> StepRecord:
    return StepRecord(LAYOUT, 2, (0, 1), kw.pop('stopped', False), True, layers, calls,
                      kw.pop('head', 1 + sum(fed for fed, _ in calls)), **kw)


def test_vit_by_hand():
    # 2x2 grid = 4 patches of 2*2*3 = 12 values -> 4 dims; + cls + 1 register = 6 tokens.
    patch_embed = 2 * 4 * 12 * 4  # 384
    qkv = 2 * 6 * 4 * 12  # 576
    attention = 2 * (6 * 6 * 4) * 2  # scores + weighted sum: 576
    proj = 2 * 6 * 4 * 4  # 192
    mlp = 2 * 6 * 4 * 8 * 2  # 768
    assert vit_flops(TOWER) == patch_embed + 2 * (qkv + attention + proj + mlp)  # 2 blocks run


def test_decoder_layer_by_hand():
    # 3 new tokens after 5 cached: q/k/v/o projections, SwiGLU MLP, causal attention.
    projections = 2 * 3 * 4 * 4 * 4  # q, k, v, o: 384
    mlp = 2 * 3 * 4 * 6 * 3  # 432
    keys_seen = 6 + 7 + 8  # query i sees 5 cached + i + 1 new
    attention = 2 * 2 * keys_seen * 4  # 336
    assert decoder_layer_flops(TEXT, 3, 5) == projections + mlp + attention


def test_whole_step_by_hand():
    f = full_flops(CFG, LAYOUT)
    vision = 2 * vit_flops(TOWER)
    projector = 2 * 4 * (8 * 32 + 32 * 4 + 4 * 4)  # fused dim 8 -> 32 -> 4 -> 4, 4 patches
    assert f.vision == vision + projector
    assert f.prefill == 2 * decoder_layer_flops(TEXT, 9, 0)
    # Two decode steps (the third token needs no forward pass), caches of 9 then 10.
    assert f.decode == 2 * (decoder_layer_flops(TEXT, 1, 9) + decoder_layer_flops(TEXT, 1, 10))
    assert f.head == 2 * 3 * 4 * 10
    assert f.total == f.vision + f.prefill + f.decode + f.head
    assert count_flops(CFG, record({0: 9, 1: 9}, [(1, 0), (1, 1)])) == f


def test_decode_calls_count_what_ran():
    # A draft of 2 tokens verified in one pass (cache of 9 after the prefill)...
    one_pass = count_flops(CFG, record({0: 9, 1: 9}, [(2, 0)]))
    assert one_pass.decode == 2 * decoder_layer_flops(TEXT, 2, 9)
    assert one_pass.head == 2 * 3 * 4 * 10  # logits at the prefill's last and 2 fed positions
    # ...or rejected after its first token: the second is decoded again on its own.
    rejected = count_flops(CFG, record({0: 9, 1: 9}, [(2, 0), (1, 1)]))
    assert rejected.decode == 2 * (decoder_layer_flops(TEXT, 2, 9)
                                   + decoder_layer_flops(TEXT, 1, 10))
    assert rejected.head == 2 * 4 * 4 * 10


def test_pruned_skipped_and_stopped_steps_count_what_ran():
    full = full_flops(CFG, LAYOUT)
    pruned = count_flops(CFG, record({0: 9, 1: 6}, [(1, 0), (1, 1)]))
    assert pruned.prefill == decoder_layer_flops(TEXT, 9, 0) + decoder_layer_flops(TEXT, 6, 0)
    assert pruned.decode == decoder_layer_flops(TEXT, 1, 9) + decoder_layer_flops(TEXT, 1, 10) \
        + decoder_layer_flops(TEXT, 1, 6) + decoder_layer_flops(TEXT, 1, 7)
    assert pruned.vision == full.vision
    skipped = count_flops(CFG, record({1: 9}, [(1, 0), (1, 1)]))  # a plan without layer 0
    assert skipped.prefill == decoder_layer_flops(TEXT, 9, 0)
    assert skipped.decode == full.decode // 2
    stopped = count_flops(CFG, record({0: 9}, [], head=0, stopped=True,
                                      scoring=[('gram', 4, 0)]))
    assert (stopped.prefill, stopped.decode, stopped.head) == (decoder_layer_flops(TEXT, 9, 0),
                                                               0, 0)
    assert stopped.select == scoring_flops('gram', 4, 4, 0) == 2 * 16 * 4 + 9 * 64


def test_projection_to_7b_shapes_keeps_the_plan():
    cfg = openvla_7b_config()
    text = 5  # BOS and the prompt: never pruned
    # Layer 0 on every token, layer 1 on half the visual tokens: on 7B, layer 0 full and
    # layers 1..31 on half of 256.
    rec = project(record({0: 9, 1: text + 2}, [(1, 0), (1, 1)], scoring=[('gram', 4, 0)]), cfg)
    assert rec.layout == SequenceLayout(256, 5, 3)
    assert rec.layer_tokens == {0: 261, **{j: text + 128 for j in range(1, 32)}}
    assert rec.scoring == [('gram', 256, 0)]
    assert count_flops(cfg, project(record({0: 9, 1: 9}, [(1, 0), (1, 1)]), cfg)) == \
        full_flops(cfg, rec.layout)
    # A gate that stopped after layer 0 stops after layer 0 there too.
    stopped = project(record({0: 9}, [], head=0, stopped=True), cfg)
    assert stopped.layer_tokens == {0: 261}
    # A plan without layer 1 of 2 skips the deeper half of 32.
    skipped = StepRecord(LAYOUT, 2, (0,), False, True, {0: 9}, [], 1)
    assert sorted(project(skipped, cfg).layer_tokens) == list(range(16))
    # MLP sparsity keeps its share of the wider MLP in every layer its layer stands for.
    sparse = project(record({0: 9, 1: 9}, [(1, 0)], mlp_kept={0: 4 / 6, 1: 4 / 6}), cfg)
    assert sparse.mlp_kept == {j: 4 / 6 for j in range(32)}
    dense = project(record({0: 9, 1: 9}, [(1, 0)]), cfg)
    mlp = 2 * 3 * cfg.text.hidden_size * round(cfg.text.intermediate_size / 3)  # per token
    tokens = sum(dense.layer_tokens.values()) + 32 * 1  # prefill, then one decoded token
    assert count_flops(cfg, dense).prefill + count_flops(cfg, dense).decode - \
        count_flops(cfg, sparse).prefill - count_flops(cfg, sparse).decode == mlp * tokens


def test_a_dit_heads_parts_project_onto_the_target_depth():
    small, big = tiny_cogact_config(), cogact_7b_config()
    layout = SequenceLayout(visual=small.num_patches, prompt=20, actions=0)
    plain = StepRecord.full(layout, small.text.num_hidden_layers, head=small.action_model)
    # The plain step projects onto the plain 7B step, head included.
    assert count_flops(big, project(plain, big)) == full_flops(big, replace(
        layout, visual=big.num_patches))
    cached = replace(plain, dit_parts={k: v // 5 for k, v in plain.dit_parts.items()})
    projected = project(cached, big)  # 2 of 10 steps computed: in all 12 DiT-B blocks
    assert projected.dit_parts == {'attn': 2 * 2 * 12, 'mlp': 2 * 2 * 12}
