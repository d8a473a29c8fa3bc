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

"""The whole OpenVLA policy against an oracle pipeline built from transformers and the spec."""

import math
import os

import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from flashvla_ros.policy import (
    InputError,
    NonFiniteOutputError,
    Observation,
    load_policy,
    set_cpu_threads,
)
from flashvla_ros.policy.preprocess import preprocess
from flashvla_ros.policy.tokenizer import load_tokenizer

PARTS = {'preprocess', 'vision', 'prefill', 'decode', 'head', 'total'}


def oracle_action(policy, tiny_dir, rgb, instruction):
    """Spell out OpenVLA's predict_action: HF Llama generate over [BOS, patches, prompt]."""
    model = policy.model
    tok = load_tokenizer(tiny_dir)
    prompt = f'In: What action should the robot take to {instruction.lower()}?\nOut:'
    ids = tok(prompt)['input_ids']
    if ids[-1] != 29871:
        ids = [*ids, 29871]
    t = model.cfg.text
    hf = LlamaForCausalLM(HFLlamaConfig(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, rms_norm_eps=t.rms_norm_eps,
        rope_theta=t.rope_theta, max_position_embeddings=t.max_position_embeddings,
        tie_word_embeddings=False)).eval()
    hf.load_state_dict(model.language_model.state_dict())
    with torch.no_grad():
        patches = model.encode_image(preprocess(rgb, 224))
        emb = hf.get_input_embeddings()(torch.tensor([ids]))
        seq = torch.cat([emb[:, :1], patches, emb[:, 1:]], dim=1)
        out = hf.generate(inputs_embeds=seq, max_new_tokens=7, do_sample=False,
                          attention_mask=torch.ones(seq.shape[:2], dtype=torch.long),
                          pad_token_id=32000)
    tokens = out[0, -7:].numpy()
    centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    x = centers[np.clip(32000 - tokens - 1, 0, 254)]
    q01 = np.array([-0.05, -0.05, -0.05, -0.2, -0.2, -0.2, 0.0])
    q99 = np.array([0.05, 0.05, 0.05, 0.2, 0.2, 0.2, 1.0])
    mask = np.array([True] * 6 + [False])
    return tokens.tolist(), np.where(mask, 0.5 * (x + 1) * (q99 - q01) + q01, x)


def scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)


@pytest.mark.parametrize('instruction', ['pick up the red block', 'Put the SPONGE in the bowl'])
def test_policy_matches_oracle(tiny_policy, tiny_dir, instruction):
    for seed in range(3):
        rgb = scene(seed)
        action = tiny_policy.predict(Observation(rgb, instruction))
        tokens, values = oracle_action(tiny_policy, tiny_dir, rgb, instruction)
        assert action.token_ids == tokens
        assert np.allclose(action.values, values, atol=1e-12)
        assert action.values.shape == (7,)
        assert set(action.timings_ms) == PARTS
        assert action.info.visual_tokens == 256 and action.info.layers_run == 4


def test_prompt_follows_openvla(tiny_policy):
    ids = tiny_policy.prompt_ids('Pick Up the Cup').tolist()
    text = tiny_policy.tokenizer.decode(ids)
    assert text == '<s> In: What action should the robot take to pick up the cup?\nOut: '
    assert ids[0] == 1 and ids[-1] == 29871 and ids[-2] != 29871
    assert tiny_policy.tokenizer.convert_ids_to_tokens(ids[-2]) == ':'


def test_predictions_are_deterministic_and_cache_is_reused(tiny_policy):
    rgb = scene(7)
    a = tiny_policy.predict(Observation(rgb, 'reach the blue cup'))
    b = tiny_policy.predict(Observation(rgb, 'reach the blue cup'))
    assert a.token_ids == b.token_ids and np.array_equal(a.values, b.values)


@pytest.mark.parametrize('instruction, message', [
    ('', 'empty'), ('   ', 'whitespace'), ('x' * 5000, 'characters'), ('go ' * 300, 'token'),
])
def test_bad_instructions_are_rejected(tiny_policy, instruction, message):
    with pytest.raises(InputError, match=message):
        tiny_policy.predict(Observation(scene(0), instruction))


def test_bad_image_is_rejected(tiny_policy):
    with pytest.raises(InputError, match='uint8'):
        tiny_policy.predict(Observation(scene(0).astype(np.float64), 'pick up the cup'))


def test_nan_weights_raise_instead_of_acting(tiny_dir):
    policy = load_policy(str(tiny_dir))
    with torch.no_grad():
        policy.model.projector.fc3.bias.fill_(math.nan)
    with pytest.raises(NonFiniteOutputError):
        policy.predict(Observation(scene(0), 'pick up the cup'))


def test_bfloat16_policy_runs(tiny_dir):
    policy = load_policy(str(tiny_dir), dtype='bfloat16')
    assert policy.dtype == torch.bfloat16
    action = policy.predict(Observation(scene(1), 'pick up the cup'))
    assert np.isfinite(action.values).all()


def test_cpu_threads_leave_a_core_to_the_node_unless_set():
    before = torch.get_num_threads()
    try:
        assert set_cpu_threads(3) == 3 and torch.get_num_threads() == 3
        torch.set_num_threads(before)
        expected = max(1, min(before, (os.cpu_count() or 1) - 1))
        assert set_cpu_threads(0) == expected == torch.get_num_threads()
        with pytest.raises(ValueError, match='cpu_threads must be >= 0'):
            set_cpu_threads(-1)
    finally:
        torch.set_num_threads(before)
