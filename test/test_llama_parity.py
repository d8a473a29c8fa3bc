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

"""Our Llama decoder against transformers' LlamaForCausalLM on identical weights."""

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from flashvla_ros.policy.config import TextConfig
from flashvla_ros.policy.llama import Llama

CONFIGS = {
    'mha': TextConfig(vocab_size=300, hidden_size=64, intermediate_size=172, num_hidden_layers=3,
                      num_attention_heads=4, max_position_embeddings=256),
    'gqa': TextConfig(vocab_size=300, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, rope_theta=500.0,
                      max_position_embeddings=256),
}


def make_pair(cfg: TextConfig, seed: int = 0) -> tuple[Llama, LlamaForCausalLM]:
    torch.manual_seed(seed)
    ours = Llama(cfg)
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.1 if p.ndim > 1 else 1.0)
    hf_cfg = HFLlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=False,
    )
    hf_cfg._attn_implementation = 'eager'  # an independent attention path as the oracle
    hf = LlamaForCausalLM(hf_cfg).eval()
    result = hf.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return ours.eval(), hf


@pytest.mark.parametrize('name', sorted(CONFIGS))
@torch.no_grad()
def test_logits_match_without_cache(name):
    ours, hf = make_pair(CONFIGS[name])
    embeds = torch.randn(1, 40, CONFIGS[name].hidden_size)
    expected = hf(inputs_embeds=embeds, use_cache=False).logits
    got = ours(embeds, torch.arange(40), last_only=False)
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize('name', sorted(CONFIGS))
@torch.no_grad()
def test_logits_match_with_cache_step_by_step(name):
    cfg = CONFIGS[name]
    ours, hf = make_pair(cfg, seed=1)
    embeds = torch.randn(1, 30, cfg.hidden_size)
    expected = hf(inputs_embeds=embeds, use_cache=False).logits[0]
    ours.setup_cache(64)
    prefill = ours(embeds[:, :22], torch.arange(22), last_only=False)[0]
    steps = [ours(embeds[:, i:i + 1], torch.tensor([i]))[0] for i in range(22, 30)]
    got = torch.cat([prefill, torch.stack(steps)])
    assert (got - expected).abs().max().item() < 1e-4
    # A chunk of several tokens on top of a filled cache takes the general mask path.
    ours.reset_cache()
    ours(embeds[:, :10], torch.arange(10))
    chunk = ours(embeds[:, 10:30], torch.arange(10, 30), last_only=False)[0]
    assert (chunk - expected[10:]).abs().max().item() < 1e-4


def greedy(model: Llama, embeds: torch.Tensor, steps: int, use_cache: bool | str) -> list[int]:
    if use_cache:
        model.setup_cache(embeds.shape[1] + steps, static=use_cache == 'static')
    else:
        model.drop_cache()
    seq, tokens = embeds, []
    logits = model(seq, torch.arange(seq.shape[1]))
    for _ in range(steps):
        tokens.append(int(logits[0].argmax()))
        nxt = model.embed(torch.tensor([[tokens[-1]]]))
        if use_cache:
            logits = model(nxt, torch.tensor([seq.shape[1]]))
            seq = torch.cat([seq, nxt], dim=1)
        else:
            seq = torch.cat([seq, nxt], dim=1)
            logits = model(seq, torch.arange(seq.shape[1]))
    return tokens


@pytest.mark.parametrize('use_cache', [True, 'static', False])
@torch.no_grad()
def test_greedy_tokens_match_generate(use_cache):
    ours, hf = make_pair(CONFIGS['mha'], seed=2)
    embeds = torch.randn(1, 33, 64)
    expected = hf.generate(inputs_embeds=embeds, max_new_tokens=7, do_sample=False,
                           attention_mask=torch.ones(1, 33, dtype=torch.long), pad_token_id=0)
    assert greedy(ours, embeds, 7, use_cache) == expected[0, -7:].tolist()


@pytest.mark.parametrize('static', [False, True])
@torch.no_grad()
def test_after_layer_can_drop_tokens_and_keep_positions(static):
    """Keeping every token changes nothing; dropping tokens shrinks the later layers' caches."""
    ours, _ = make_pair(CONFIGS['mha'])
    embeds = torch.randn(1, 20, 64)
    ours.setup_cache(32, static=static)
    plain = ours(embeds, torch.arange(20))
    ours.reset_cache()
    hidden, _ = ours.run(embeds, torch.arange(20), None, None,
                         lambda i, h, probe: torch.arange(20) if i == 0 else None)
    assert torch.equal(ours.logits(hidden), plain)

    keep = torch.tensor([j for j in range(20) if j % 2 == 0 or j == 19])
    ours.reset_cache()
    seen = {}
    hidden, positions = ours.run(embeds, torch.arange(20), None, None,
                                 lambda i, h, probe: keep if i == 0 else None, seen)
    assert seen == {0: 20, 1: 11, 2: 11} and positions.tolist() == keep.tolist()
    caches = [layer.self_attn.cache for layer in ours.model.layers]
    if static:  # dropped tokens are slots never filled
        assert [int(c.filled.sum()) for c in caches] == [20, 11, 11]
        assert caches[1].filled[keep].all()
    else:
        assert [c.length for c in caches] == [20, 11, 11]
    # The same tokens through the other cache: the two paths agree.
    other, _ = make_pair(CONFIGS['mha'])
    other.setup_cache(32, static=not static)
    again, _ = other.run(embeds, torch.arange(20), None, None,
                         lambda i, h, probe: keep if i == 0 else None)
    assert (ours.logits(hidden) - other.logits(again)).abs().max().item() < 1e-5


@torch.no_grad()
def test_plan_skips_layers_and_probes_report_what_the_layer_computed():
    ours, hf = make_pair(CONFIGS['mha'], seed=3)
    embeds = torch.randn(1, 12, 64)
    seen, probes = {}, {}

    def grab(i, h, found):
        probes[i] = found

    ours.run(embeds, torch.arange(12), [0, 2], {0: {'attention_output'},
                                                2: {'attention_weights', 'attention_output'}},
             grab, seen)
    assert seen == {0: 12, 2: 12}  # layer 1 never ran
    assert set(probes[0]) == {'attention_output'} and set(probes[2]) == {
        'attention_weights', 'attention_output'}  # a layer exposes every probe asked of it
    layer = ours.model.layers[0]
    cos, sin = ours.rotary(torch.arange(12), embeds.dtype)
    expected, _ = layer.self_attn(layer.input_layernorm(embeds), cos, sin)
    assert torch.allclose(probes[0]['attention_output'], expected, atol=1e-6)
    weights = probes[2]['attention_weights']  # [1, heads, 12, 12]: causal rows summing to 1
    assert weights.shape == (1, 4, 12, 12)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 4, 12))
    assert (weights.triu(1) == 0).all()
    out = hf(inputs_embeds=embeds, output_attentions=True, use_cache=False)
    assert (weights - out.attentions[2]).abs().max().item() > 0  # layer 1 was skipped here...
    probes.clear()
    ours.run(embeds, torch.arange(12), None, {2: {'attention_weights'}}, grab)
    weights = probes[2]['attention_weights']
    assert (weights - out.attentions[2]).abs().max().item() < 1e-5  # ...and matches when not
    ours.setup_cache(32, static=True)  # position slots: the weights still index the tokens
    ours.reset_cache()
    ours.run(embeds, torch.arange(12), None, {2: {'attention_weights'}}, grab)
    assert probes[2]['attention_weights'].shape == (1, 4, 12, 12)
    assert (probes[2]['attention_weights'] - weights).abs().max().item() < 1e-6
    with pytest.raises(ValueError, match='unknown probe'):
        ours.run(embeds, torch.arange(12), None, {2: {'attention_scores'}}, grab)
    with pytest.raises(TypeError, match='set of probe kinds'):
        ours.run(embeds, torch.arange(12), None, {2: 'attention_weights'}, grab)


def test_cache_overflow_is_an_error():
    ours, _ = make_pair(CONFIGS['mha'])
    ours.setup_cache(8)
    with pytest.raises(ValueError, match='overflow'):
        ours(torch.randn(1, 9, 64), torch.arange(9))
