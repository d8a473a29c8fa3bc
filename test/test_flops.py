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

"""The analytic FLOPs counter against a count by hand for a tiny configuration."""

from flashvla_ros.accel.flops import decoder_layer_flops, openvla_step_flops, vit_flops
from flashvla_ros.policy.config import OpenVLAConfig, TextConfig, ViTConfig

TOWER = ViTConfig(embed_dim=4, depth=3, num_heads=2, mlp_dim=8, patch_size=2, image_size=4,
                  reg_tokens=1)
TEXT = TextConfig(vocab_size=10, hidden_size=4, intermediate_size=6, num_hidden_layers=2,
                  num_attention_heads=2)
CFG = OpenVLAConfig(vision=(TOWER, TOWER), text=TEXT, norm_stats={})


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
    prompt = 5  # BOS + 4 tokens: prefill is BOS + 4 patches + 4 = 9 tokens
    f = openvla_step_flops(CFG, prompt_tokens=prompt, action_tokens=3)
    vision = 2 * vit_flops(TOWER)
    projector = 2 * 4 * (8 * 32 + 32 * 4 + 4 * 4)  # fused dim 8 -> 32 -> 4 -> 4, 4 patches
    assert f.vision == vision + projector
    assert f.prefill == 2 * decoder_layer_flops(TEXT, 9, 0)
    # Two decode steps (the third token needs no forward pass), caches of 9 then 10.
    assert f.decode == 2 * (decoder_layer_flops(TEXT, 1, 9) + decoder_layer_flops(TEXT, 1, 10))
    assert f.head == 2 * 3 * 4 * 10
    assert f.total == f.vision + f.prefill + f.decode + f.head


def test_decode_calls_count_what_ran():
    # A draft of 2 tokens verified in one pass (cache of 9 after the prefill)...
    one_pass = openvla_step_flops(CFG, 5, 3, decode_calls=[(2, 0)])
    assert one_pass.decode == 2 * decoder_layer_flops(TEXT, 2, 9)
    assert one_pass.head == 2 * 3 * 4 * 10  # logits at the prefill's last and 2 fed positions
    # ...or rejected after its first token: the second is decoded again on its own.
    rejected = openvla_step_flops(CFG, 5, 3, decode_calls=[(2, 0), (1, 1)])
    assert rejected.decode == 2 * (decoder_layer_flops(TEXT, 2, 9)
                                   + decoder_layer_flops(TEXT, 1, 10))
    assert rejected.head == 2 * 4 * 4 * 10
    assert openvla_step_flops(CFG, 5, 3, decode_calls=[(1, 0), (1, 1)]) == openvla_step_flops(
        CFG, 5, 3)


def test_pruned_layers_count_fewer_flops():
    full = openvla_step_flops(CFG, 5, 3)
    pruned = openvla_step_flops(CFG, 5, 3, prefill_tokens_per_layer=[9, 6])
    assert pruned.prefill == decoder_layer_flops(TEXT, 9, 0) + decoder_layer_flops(TEXT, 6, 0)
    assert pruned.decode < full.decode and pruned.vision == full.vision
