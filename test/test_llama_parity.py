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


def greedy(model: Llama, embeds: torch.Tensor, steps: int, use_cache: bool) -> list[int]:
    if use_cache:
        model.setup_cache(embeds.shape[1] + steps)
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


@pytest.mark.parametrize('use_cache', [True, False])
@torch.no_grad()
def test_greedy_tokens_match_generate(use_cache):
    ours, hf = make_pair(CONFIGS['mha'], seed=2)
    embeds = torch.randn(1, 33, 64)
    expected = hf.generate(inputs_embeds=embeds, max_new_tokens=7, do_sample=False,
                           attention_mask=torch.ones(1, 33, dtype=torch.long), pad_token_id=0)
    assert greedy(ours, embeds, 7, use_cache) == expected[0, -7:].tolist()


@torch.no_grad()
def test_layer_hook_can_drop_tokens_and_keep_positions():
    """A hook that keeps every token changes nothing; one that drops tokens shrinks the cache."""
    ours, _ = make_pair(CONFIGS['mha'])
    embeds = torch.randn(1, 20, 64)
    ours.setup_cache(32)
    plain = ours(embeds, torch.arange(20))

    def keep_all(i, h, pos):
        return (h, pos) if i == 0 else None

    ours.reset_cache()
    assert torch.equal(ours(embeds, torch.arange(20), layer_hook=keep_all), plain)

    def drop_odd(i, h, pos):
        if i == 0:
            keep = torch.tensor([j for j in range(20) if j % 2 == 0 or j == 19])
            return h[:, keep], pos[keep]
        return None

    ours.reset_cache()
    ours(embeds, torch.arange(20), layer_hook=drop_odd)
    lengths = [layer.self_attn.cache.length for layer in ours.model.layers]
    assert lengths == [20, 11, 11]


def test_cache_overflow_is_an_error():
    ours, _ = make_pair(CONFIGS['mha'])
    ours.setup_cache(8)
    with pytest.raises(ValueError, match='overflow'):
        ours(torch.randn(1, 9, 64), torch.arange(9))
