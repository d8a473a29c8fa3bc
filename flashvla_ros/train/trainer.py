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

"""
flashvla-train: train the embedded default OpenVLA-architecture policy on mock-world data.

The model is OpenVLA's architecture scaled down: fused DINOv2/SigLIP-style towers (224 px,
patch 14, 256 visual tokens), the fused GELU projector and a Llama decoder, with a Llama-style
tokenizer trained on the instruction vocabulary whose last 256 base ids are the action tokens.

The recipe (why it learns on 2 CPU cores where plain cross-entropy did not):
- the main loss is cross-entropy on the 7 action tokens against Gaussian soft targets over
  neighbouring bins (ordinal structure; decoding stays OpenVLA's argmax);
- training-only auxiliary heads give dense signal to what the policy must perceive: per
  visual token, which objects its patch shows and the patch's offset from the gripper (so
  the towers compute the relation the action needs); and, from the hidden state that
  predicts the first action token, the offsets of the target block and zone from the
  gripper. They are dropped when saving: the checkpoint is plain OpenVLA;
- position embeddings start as 2-D sin-cos patch coordinates;
- expert data with noise injection covers states off the expert's path.

`--data data/libero` trains on the scripted expert's LIBERO demonstrations instead, their
frames read from the cache `libero_frames` draws (`--libero-frames`); the mock world's
auxiliary losses need its state and are left out there (`libero_train`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json
import math
from pathlib import Path
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..policy.actions import ActionCodec, NormStats
from ..policy.checkpoint import expand_path, load_model, save_checkpoint
from ..policy.config import OpenVLAConfig, TextConfig, ViTConfig
from ..policy.dit import DiTConfig, diffusion_loss
from ..policy.instruction import PROMPT, check_instruction, prompt_tokens
from ..policy.layout import SequenceLayout
from ..policy.llama import Llama
from ..policy.openvla import OpenVLA
from ..policy.preprocess import preprocess
from ..policy.presets import init_weights
from ..policy.tokenizer import SPACE, build_llama_tokenizer, save_tokenizer_files
from ..sim.tasks import PUSH_DIRECTIONS
from ..sim.world import BLOCK_COLOURS, LABELS, TABLE_SIZE, ZONE_COLOURS, label_map, render
from . import dataset as ds
from .plots import plot_losses, run_title


@dataclass
class TrainConfig:
    steps: int = 4000
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 150
    weight_decay: float = 0.01
    soft_sigma_bins: float = 2.0
    aux_vision: float = 1.0
    aux_state: float = 10.0
    seed: int = 0
    threads: int = 2
    device: str = 'auto'  # cuda when present, else cpu
    # The model: 'tokens' (OpenVLA's action tokens) or 'diffusion' (a CogACT-style DiT head).
    head: str = 'tokens'
    layers: int = 4  # decoder layers
    intermediate: int = 344  # decoder MLP width
    dit_hidden: int = 64
    dit_depth: int = 2
    dit_heads: int = 4
    noise_draws: int = 8  # diffusion: noise draws per VLM forward (CogACT's repeated steps)
    # diffusion: chunk labels are the expert's plan from each state ('plan') or the labels of
    # the following steps ('next', what datasets without plans give)
    chunk_labels: str = 'plan'
    init_vision: str = ''  # copy the vision towers and projector from this checkpoint
    grow_llm: str = ''  # grow the decoder from this checkpoint's (depth up-scaling)
    save_every: int = 250  # steps between resumable training states (train_state.pt)
    # LayerDrop: each decoder layer from LAYER_DROP_FROM on is skipped in a batch with this
    # probability, so that the model stands calibrated layer pruning (EfficientVLA)
    layer_drop: float = 0.0


def instruction_corpus() -> list[str]:
    """Every instruction the mock world can give, in OpenVLA's prompt format."""
    tasks = [f'move to the {c} block' for c in BLOCK_COLOURS]
    tasks += [f'put the {c} block in the {z} zone' for c in BLOCK_COLOURS for z in ZONE_COLOURS]
    tasks += [f'push the {c} block {d}' for c in BLOCK_COLOURS for d in PUSH_DIRECTIONS]
    return [PROMPT.format(t) for t in tasks]


IMAGE_SIZE = 224  # the towers' input (ViTConfig's default), as the mock world renders it
PATCH = 28  # 224 px / 28 = 8 x 8 = 64 visual tokens: 2 CPU cores can train it in an hour


def model_config(base_vocab: int, norm_stats: dict, cfg: TrainConfig | None = None
                 ) -> OpenVLAConfig:
    dino = ViTConfig(embed_dim=64, depth=3, num_heads=4, mlp_dim=256, reg_tokens=4,
                     layer_scale=True, patch_size=PATCH)
    siglip = ViTConfig(embed_dim=64, depth=3, num_heads=4, mlp_dim=256, class_token=False,
                       attn_pool=True, patch_size=PATCH)
    padded = math.ceil((base_vocab + 1) / 64) * 64  # + <PAD>, padded as OpenVLA does
    cfg = cfg or TrainConfig()
    text = TextConfig(vocab_size=padded, hidden_size=128, intermediate_size=cfg.intermediate,
                      num_hidden_layers=cfg.layers, num_attention_heads=8,
                      max_position_embeddings=512, pad_token_id=base_vocab)
    head = None if cfg.head == 'tokens' else DiTConfig(
        hidden_size=cfg.dit_hidden, depth=cfg.dit_depth, num_heads=cfg.dit_heads,
        action_dim=len(next(iter(norm_stats.values()))['action']['q01']), token_size=128)
    return OpenVLAConfig(vision=(dino, siglip), text=text, norm_stats=norm_stats,
                         timm_model_ids=('flashvla_mock_dinov2_reg4', 'flashvla_mock_siglip'),
                         action_model=head)


class AuxHeads(nn.Module):
    """
    Training-only heads (never saved): per-patch objects, and task-relevant positions.

    A diffusion model also regresses its chunk's first `AUX_ACTIONS` actions from the
    cognition token: the DiT's noise-prediction loss alone sends the LLM a weak, noisy signal
    (measured: after 1800 steps a probe on the cognition token could not tell the actions apart
    and the head sampled almost unconditionally), where the token head gets a dense one.
    """

    def __init__(self, dim: int, action_dim: int = 0) -> None:
        super().__init__()
        self.patch_objects = nn.Linear(dim, len(LABELS))
        self.patch_offsets = nn.Linear(dim, 2)
        self.positions = nn.Linear(dim, 6)
        if action_dim:
            self.actions = nn.Linear(dim, AUX_ACTIONS * action_dim)


AUX_ACTIONS = 4  # actions of the chunk the cognition token must predict directly


class Batcher:
    """
    Renders frames and labels for dataset steps and tokenizes prompts and actions.

    Prompts and pixels go through the policy's own functions (`prompt_tokens`, `preprocess`):
    a frame trains on exactly the inputs it is served with (test_train.py checks it).
    """

    def __init__(self, data: dict, tokenizer, codec: ActionCodec, stats: NormStats,
                 chunk: int = 0) -> None:
        self.data, self.tok, self.codec, self.stats = data, tokenizer, codec, stats
        self.chunk = chunk  # diffusion: actions per target chunk (0: action tokens)
        self.eos = tokenizer.token_to_id('</s>')
        self.space_id = tokenizer.token_to_id(SPACE)
        self.pad = tokenizer.token_to_id('<PAD>')
        self.prompts: dict[str, list[int]] = {}

    def prompt_ids(self, instruction: str) -> list[int]:
        """Return the prompt as the policy builds it (diffusion: ending in the cognition token)."""
        if instruction not in self.prompts:
            self.prompts[instruction] = prompt_tokens(
                lambda text: self.tok.encode(text).ids, check_instruction(instruction),
                self.space_id, [self.eos] if self.chunk else [])
        return self.prompts[instruction]

    def __call__(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Return the batch of steps `idx`: `assemble`'s, and the mock world's auxiliary labels."""
        d = self.data
        frames, patch_labels, positions, offsets, focus = [], [], [], [], []
        for i in idx:
            state = ds.state_at(d, int(i))
            frames.append(render(state))
            labels = label_map(state)
            patch_labels.append(patch_objects(labels))
            objects = patch_labels[-1]
            zone_i = int(d['target_zone'][i])
            block = objects[:, LABELS.index(state.blocks[int(d['target_block'][i])].colour)]
            zone = objects[:, LABELS.index(state.zones[zone_i].colour)] if zone_i >= 0 \
                else np.zeros_like(block)
            focus.append(np.stack([block, objects[:, LABELS.index('gripper')], zone]))
            target = state.blocks[int(d['target_block'][i])].pos
            zone_i = int(d['target_zone'][i])
            zone = state.zones[zone_i].pos if zone_i >= 0 else target
            # Offsets from the gripper: what the action needs (scaled to about -1..1).
            positions.append(np.concatenate([target - state.ee, zone - state.ee, state.ee])
                             / TABLE_SIZE)
            offsets.append((self.centres - state.ee) / TABLE_SIZE)
        return {**self.assemble(idx, frames),
                'patch_labels': torch.from_numpy(np.stack(patch_labels)),
                'positions': torch.from_numpy(np.stack(positions)).float(),
                'patch_offsets': torch.from_numpy(np.stack(offsets)).float(),
                'focus': torch.from_numpy(np.stack(focus)).float()}

    def assemble(self, idx: np.ndarray, frames: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """
        Return pixels, prompt (+ action) tokens and labels of steps `idx` shown as `frames`.

        What any world's batch holds: `data` needs `action`, `episode` and `ep_instruction`.
        """
        d = self.data
        pixels = torch.cat([preprocess(frame, IMAGE_SIZE) for frame in frames])
        instructions = d['ep_instruction'][d['episode'][idx]]
        prompts = [self.prompt_ids(str(s)) for s in instructions]
        actions = self.codec.encode(self.stats.normalize(d['action'][idx]))  # [B, 7]
        # Tokens: the prompt then the action tokens (teacher forcing); diffusion: the prompt,
        # whose last token (the cognition token, EOS) conditions the head.
        tail = [[]] * len(idx) if self.chunk else actions[:, :-1].tolist()
        length = max(len(p) for p in prompts) + len(tail[0])
        text = np.full((len(idx), length), self.pad, dtype=np.int64)
        # The sequence index of the prompt's last token, which predicts action 0 (BOS is
        # before the visual tokens, so prompt token j sits at grid ** 2 + j).
        first = np.zeros(len(idx), dtype=np.int64)
        for b, p in enumerate(prompts):
            row = [*p, *tail[b]]
            text[b, :len(row)] = row
            first[b] = self.grid ** 2 + len(p) - 1
        extra = {'chunks': torch.from_numpy(chunk_targets(d, self.stats, idx, self.chunk)).float()
                 } if self.chunk else {}
        return {**extra, 'pixels': pixels, 'text': torch.from_numpy(text),
                'first': torch.from_numpy(first), 'actions': torch.from_numpy(actions)}

    grid = IMAGE_SIZE // PATCH
    # Table coordinates of the patch centres, row-major from the image's top-left.
    _c = (np.arange(grid) + 0.5) / grid * TABLE_SIZE
    centres = np.stack([np.tile(_c, grid), np.repeat(TABLE_SIZE - _c, grid)], axis=1)


def chunk_targets(data: dict, stats: NormStats, idx: np.ndarray, chunk: int) -> np.ndarray:
    """
    Normalised chunk labels of steps `idx` [B, chunk, 7]: the expert's plan from each state.

    A dataset without plans (older ones) takes the labels of steps i .. i + chunk - 1 of i's
    episode, and past the episode's end zero motion with the last gripper label.
    """
    if 'plan' in data and data['plan'].shape[1] >= chunk:
        return np.clip(stats.normalize(data['plan'][idx, :chunk].astype(np.float64)), -1.0, 1.0)
    out = []
    for i in idx:
        e = data['episode'][i]
        rows = [j for j in range(i, i + chunk) if j < len(data['episode'])
                and data['episode'][j] == e]
        labels = stats.normalize(data['action'][rows])
        pad = np.repeat(labels[-1:], chunk - len(rows), axis=0)
        pad[:, :-1] = stats.normalize(np.zeros((1, labels.shape[1])))[:, :-1]
        out.append(np.concatenate([labels, pad]))
    return np.clip(np.stack(out), -1.0, 1.0)


def patch_objects(labels: np.ndarray) -> np.ndarray:
    """[H, W] class map -> [grid * grid, classes]: which objects each patch shows."""
    g = labels.shape[0] // PATCH
    cells = labels.reshape(g, PATCH, g, PATCH).transpose(0, 2, 1, 3).reshape(g * g, -1)
    return np.stack([(cells == c).any(1) for c in range(len(LABELS))], 1).astype(np.float32)


def soft_targets(tokens: torch.Tensor, codec: ActionCodec, vocab: int, sigma: float):
    """Gaussian over neighbouring action bins around each target token: [B, 7, vocab]."""
    bins = torch.arange(codec.n_bins, device=tokens.device)
    token_of_bin = codec.vocab_size - 1 - bins  # bin index k <-> token V - 1 - k
    target_bin = codec.vocab_size - 1 - tokens  # [B, 7]
    w = torch.exp(-0.5 * ((bins.view(1, 1, -1) - target_bin.unsqueeze(-1)) / sigma) ** 2)
    w = w / w.sum(-1, keepdim=True)
    out = torch.zeros(*tokens.shape, vocab, device=tokens.device)
    out[..., token_of_bin] = w
    return out


def losses(model: OpenVLA, aux: AuxHeads, batch: dict, codec: ActionCodec, sigma: float,
           noise_draws: int = 8, skip: frozenset[int] = frozenset()):
    """
    Return the action, vision (+ attention focus) and state losses, and token accuracy.

    The decoder layers in `skip` do not run (LayerDrop). A batch without the mock world's
    state labels (LIBERO's) has no vision loss and, as state loss, only the diffusion head's
    direct regression of the first actions.
    """
    mock = 'patch_labels' in batch  # the mock world's training-only state labels
    llm = model.language_model
    patches = model.encode_image(batch['pixels'])  # [B, 256, D]
    emb = llm.embed(batch['text'])
    layout = SequenceLayout(visual=patches.shape[1], prompt=emb.shape[1])  # actions in the text
    seq = layout.assemble(emb, patches)
    plan = [i for i in range(llm.num_layers) if i not in skip]
    hidden, weights = run_with_attention(llm, seq, layout.positions(seq.device), plan,
                                         FOCUS_LAYER if mock else -1)
    focus_loss = seq.new_zeros(()) if weights is None else \
        attention_focus_loss(weights, batch, layout)
    hidden = llm.model.norm(hidden)
    if 'chunks' in batch:  # diffusion: the cognition token's state conditions the head
        b = torch.arange(hidden.shape[0], device=seq.device)
        h = hidden[b, batch['first']][:, None]  # [B, 1, D]
        action_loss = diffusion_loss(model.action_model.net,
                                     batch['chunks'].repeat_interleave(noise_draws, 0),
                                     h.repeat_interleave(noise_draws, 0))
        accuracy = torch.tensor(float('nan'))
    else:
        steps = batch['first'].unsqueeze(1) + torch.arange(batch['actions'].shape[1],
                                                           device=seq.device)  # [B, 7]
        h = hidden.gather(1, steps.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        logits = llm.lm_head(h)
        target = soft_targets(batch['actions'], codec, logits.shape[-1], sigma)
        action_loss = -(target * F.log_softmax(logits.float(), -1)).sum(-1).mean()
        accuracy = (logits.argmax(-1) == batch['actions']).float().mean()
    vision_loss = state_loss = seq.new_zeros(())
    if mock:
        vision_loss = F.binary_cross_entropy_with_logits(aux.patch_objects(patches),
                                                         batch['patch_labels'])
        vision_loss = vision_loss + 10 * F.mse_loss(aux.patch_offsets(patches),
                                                    batch['patch_offsets'])
        state_loss = F.mse_loss(aux.positions(h[:, 0]), batch['positions'])
    if 'chunks' in batch:  # what the head needs, said directly to the cognition token
        first = batch['chunks'][:, :AUX_ACTIONS].flatten(1)
        state_loss = state_loss + F.mse_loss(aux.actions(h[:, 0]), first)
    return action_loss, vision_loss + focus_loss, state_loss, accuracy


FOCUS_LAYER = 1  # layer 0 can bring the instruction's words to the query position first
LAYER_DROP_FROM = 2  # the layers before run on every visual token (EfficientVLA's token_layer)


def run_with_attention(llm: Llama, hidden: torch.Tensor, positions: torch.Tensor,
                       plan: list[int] | None, layer: int
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Run the decoder layers of `plan` on `hidden`; return their output and `layer`'s attention.

    The attention weights [B, H, T, S] are `Llama.run`'s 'attention_weights' probe (softmax
    in fp32, differentiable), None when `layer` is not in the plan (None: every layer). The
    training model never sets up KV caches, so each layer attends causally over the whole
    sequence.
    """
    seen: dict[str, torch.Tensor] = {}

    def keep(i: int, _hidden: torch.Tensor, probe) -> None:
        if i == layer:
            seen['weights'] = probe['attention_weights']

    out = llm.run(hidden, positions, plan, probes={layer: {'attention_weights'}},
                  after_layer=keep)
    assert out is not None  # the callback never stops the step
    return out[0], seen.get('weights')


def attention_focus_loss(weights: torch.Tensor, batch: dict, layout: SequenceLayout
                         ) -> torch.Tensor:
    """
    Supervise where three heads of one layer look from the first-action position.

    Head 0 should attend to the named block's patches, head 1 to the gripper's, head 2 to
    the named zone's (pick-and-place only): -log of the attention mass on those patches.
    `weights` are that layer's attention weights [B, H, T, S].
    """
    b = torch.arange(weights.shape[0], device=weights.device)
    p = weights.transpose(1, 2)[b, batch['first']]  # [B, H, S]: from the first-action query
    p = p[:, :3, layout.visual_span]  # the three heads, on the patches
    target = batch['focus'] > 0  # [B, 3, patches]
    mass = (p * target).sum(-1).clamp_min(torch.finfo(p.dtype).tiny)  # log(0): no inf loss
    used = target.any(-1)
    return -mass[used].log().mean()


AUX_FILE = 'aux_heads.pt'  # training state beside the checkpoint; never part of the model


def train(data_dir: Path, out: Path, cfg: TrainConfig, log=print,
          init: Path | None = None, stop_after: int | None = None,
          libero_frames: Path | None = None) -> dict | None:
    """
    Train (or continue an interrupted run in `out`) and save the checkpoint there.

    `stop_after` ends the run after that step (a multiple of `save_every`) with its state
    saved, as an interruption would, and the model as it stands written; it returns None.
    `data_dir` is a mock-world dataset, or LIBERO demonstrations whose frames are cached in
    `libero_frames` (`libero_train`).
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    if cfg.chunk_labels not in ('plan', 'next'):
        raise ValueError(f"chunk_labels must be 'plan' or 'next', not {cfg.chunk_labels!r}")
    from . import libero_train  # it imports this module: here, not at the top

    libero = None
    if libero_train.is_libero_data(data_dir):  # LIBERO demonstrations, their cached frames
        libero = libero_train.load(data_dir, libero_frames or libero_train.FRAMES_DIR, out,
                                   init, log)
        data, norm, corpus, key = libero.data, libero.norm_stats, libero.corpus, libero.key
    else:
        data = ds.load(data_dir)
        norm = json.loads((data_dir / 'norm_stats.json').read_text())
        corpus, key = instruction_corpus(), 'mock_world'
    tok = build_llama_tokenizer(corpus, merges=300)
    base_vocab = tok.get_vocab_size(with_added_tokens=False)
    config = model_config(base_vocab, norm, cfg)
    codec = ActionCodec(vocab_size=base_vocab, n_bins=config.n_action_bins)
    _, stats = NormStats.select(norm, key)
    model = OpenVLA(config)
    init_model(model)
    head = config.action_model
    aux = AuxHeads(config.text.hidden_size, head.action_dim if head is not None else 0)
    if init is not None:  # continue training (e.g. after a DAgger round)
        model.load_state_dict(load_model(init)[0].state_dict())
        if (Path(init) / AUX_FILE).is_file():
            aux.load_state_dict(torch.load(Path(init) / AUX_FILE, weights_only=True))
    else:
        if cfg.init_vision:  # vision towers and projector from a trained model (same shapes)
            trained = load_model(expand_path(cfg.init_vision))[0].state_dict()
            model.load_state_dict({k: v for k, v in trained.items()
                                   if k.startswith(('vision_backbone.', 'projector.'))},
                                  strict=False)
        if cfg.grow_llm:
            grown = grown_decoder(expand_path(cfg.grow_llm), cfg.layers)
            own = model.state_dict()
            other = sorted(k for k, v in grown.items() if own[k].shape != v.shape)
            if other:  # another tokenizer's vocabulary (LIBERO's): its own embeddings
                log(f'--grow-llm: kept the new model\'s {", ".join(other)} (other shapes)')
            model.load_state_dict({k: v for k, v in grown.items() if k not in other},
                                  strict=False)
    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu')
                          if cfg.device == 'auto' else cfg.device)
    model.to(device)
    aux.to(device)
    params = [*model.parameters(), *aux.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    chunk = config.action_model.chunk if config.action_model is not None else 0
    if cfg.chunk_labels == 'next':
        data = {k: v for k, v in data.items() if k != 'plan'}
    batcher = Batcher(data, tok, codec, stats, chunk=chunk) if libero is None else \
        libero.batcher(tok, codec, stats, chunk)
    history: list[dict] = []
    done, before = 0, 0.0  # steps and seconds of an interrupted run, when resuming
    state_file = out / STATE_FILE
    if state_file.is_file():
        done, before, history = resume(state_file, cfg, model, aux, opt, rng)
        log(f'resuming {state_file} after step {done}')
        if stop_after is not None and done >= stop_after:
            write_model(out, model, aux, config, tok, cfg, history, before, data, device, log)
            return None
    start = time.perf_counter() - before
    n = len(data['action'])
    for step in range(done + 1, cfg.steps + 1):
        cosine = 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        lr = cfg.lr * min(1.0, step / cfg.warmup) * cosine
        for g in opt.param_groups:
            g['lr'] = lr
        batch = {k: v.to(device) for k, v in batcher(rng.integers(0, n, cfg.batch)).items()}
        skip = frozenset(i for i in range(LAYER_DROP_FROM, cfg.layers)
                         if rng.random() < cfg.layer_drop) if cfg.layer_drop else frozenset()
        a, v, s, acc = losses(model, aux, batch, codec, cfg.soft_sigma_bins, cfg.noise_draws,
                              skip)
        loss = a + cfg.aux_vision * v + cfg.aux_state * s
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append({'step': step, 'loss': loss.item(), 'action_loss': a.item(),
                        'vision_loss': v.item(),
                        'state_loss': s.item(), 'token_accuracy': acc.item(), 'lr': lr})
        if step % cfg.save_every == 0 and step < cfg.steps:
            save_state(state_file, cfg, model, aux, opt, rng, step,
                       time.perf_counter() - start, history)
            if step == stop_after:  # a usable snapshot too; the run can still continue
                write_model(out, model, aux, config, tok, cfg, history,
                            time.perf_counter() - start, data, device, log)
                return None
        if step % 25 == 0 or step == cfg.steps:
            el = time.perf_counter() - start
            recent = history[-25:]
            log(f'step {step}/{cfg.steps} | action loss '
                f'{np.mean([h["action_loss"] for h in recent]):.3f} | token acc '
                f'{np.mean([h["token_accuracy"] for h in recent]):.3f} | vision '
                f'{np.mean([h["vision_loss"] for h in recent]):.4f} | state '
                f'{np.mean([h["state_loss"] for h in recent]):.4f} | {el / step:.2f} s/step | '
                f'eta {el / step * (cfg.steps - step) / 60:.1f} min')
    summary = write_model(out, model, aux, config, tok, cfg, history,
                          time.perf_counter() - start, data, device, log)
    state_file.unlink(missing_ok=True)  # finished: the checkpoint is the result
    return summary


def write_model(out: Path, model: OpenVLA, aux: AuxHeads, config: OpenVLAConfig, tok,
                cfg: TrainConfig, history: list[dict], seconds: float, data: dict, device,
                log=print) -> dict:
    """Save the checkpoint, the auxiliary heads, train_log.json and loss.png in `out`."""
    save_checkpoint(out, {k: v.detach().cpu() for k, v in model.state_dict().items()}, config,
                    dtype='float32')
    torch.save({k: v.detach().cpu() for k, v in aux.state_dict().items()}, out / AUX_FILE)
    save_tokenizer_files(tok, out, model_max_length=config.text.max_position_embeddings)
    summary = {'config': asdict(cfg), 'seconds': seconds, 'samples': len(data['action']),
               'episodes': len(data['ep_seed']), 'device': str(device),
               'steps_done': len(history), 'history': compact(history)}
    (out / 'train_log.json').write_text(json.dumps(summary) + '\n')
    try:  # the curves are a picture of train_log.json: never lose a run for want of them
        plot_losses(summary['history'], out / 'loss.png', title=run_title(summary),
                    diffusion=cfg.head == 'diffusion')
    except ImportError as exc:
        log(f'no loss.png ({exc}); draw it later with flashvla-train --plot-log '
            f'{out / "train_log.json"}')
    return summary


def init_model(model: OpenVLA) -> None:
    """
    Initialise: normal 0.02 weights, 2-D sin-cos patch coordinates as position embeddings.

    A diffusion head's output layer starts at zero, as CogACT's does.
    """
    init_weights(model, lambda name: None if name.endswith('pos_embed') else 0.02)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('pos_embed'):
                p.copy_(sincos_2d(int(math.isqrt(p.shape[1])), p.shape[2]).unsqueeze(0))
            elif name.startswith('action_model.net.final_layer.'):
                p.zero_()


def grown_decoder(path: Path, layers: int) -> dict[str, torch.Tensor]:
    """
    Return a `layers`-deep decoder grown from a shallower trained one (depth up-scaling).

    Trained layer i fills layers i * r .. i * r + r - 1 (r = layers / its depth), each with its
    residual branches (o_proj, down_proj) scaled by 1 / r, so that the r copies together first
    make about the update the one layer made; embeddings, final norm and LM head are copied.
    """
    trained = {k: v for k, v in load_model(path)[0].state_dict().items()
               if k.startswith('language_model.')}
    prefix = 'language_model.model.layers.'
    depth = len({k[len(prefix):].split('.')[0] for k in trained if k.startswith(prefix)})
    if layers % depth:
        raise ValueError(f'--grow-llm: {layers} layers is not a multiple of {depth}')
    r = layers // depth
    grown = {}
    for key, value in trained.items():
        if not key.startswith(prefix):
            grown[key] = value
            continue
        index, rest = key[len(prefix):].split('.', 1)
        scale = 1.0 / r if rest.endswith(('o_proj.weight', 'down_proj.weight')) else 1.0
        for copy in range(r):
            grown[f'{prefix}{int(index) * r + copy}.{rest}'] = value * scale
    return grown


STATE_FILE = 'train_state.pt'  # a run's resumable state, beside its checkpoint until it ends


def save_state(path: Path, cfg: TrainConfig, model: OpenVLA, aux: AuxHeads, opt, rng,
               step: int, seconds: float, history: list[dict]) -> None:
    """Write everything a run needs to continue (atomically: an interrupted write is no state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    torch.save({'config': asdict(cfg), 'step': step, 'seconds': seconds,
                'history': compact(history), 'model': model.state_dict(),
                'aux': aux.state_dict(), 'optimizer': opt.state_dict(),
                'numpy_rng': json.dumps(rng.bit_generator.state),
                'torch_rng': torch.get_rng_state()}, tmp)
    tmp.replace(path)


def resume(path: Path, cfg: TrainConfig, model: OpenVLA, aux: AuxHeads, opt, rng
           ) -> tuple[int, float, list[dict]]:
    """Load a saved state into the run; refuse one written with other settings."""
    state = torch.load(path, weights_only=True)
    if state['config'] != asdict(cfg):
        changed = sorted(k for k in state['config'] if state['config'][k] != asdict(cfg)[k])
        raise ValueError(f'{path} was written with other settings ({changed}); continue with '
                         'the same options, or delete it to start again')
    model.load_state_dict(state['model'])
    aux.load_state_dict(state['aux'])
    opt.load_state_dict(state['optimizer'])
    rng.bit_generator.state = json.loads(state['numpy_rng'])
    torch.set_rng_state(state['torch_rng'])
    return state['step'], state['seconds'], list(state['history'])


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """MAE-style fixed 2-D sin-cos embedding [grid * grid, dim] (row-major patches)."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing='ij')
    parts = []
    for coord in (xs.flatten(), ys.flatten()):
        angles = coord[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


def compact(history: list[dict]) -> list[dict]:
    """Round the history to 5 significant digits: the record stays small enough for docs/."""
    return [{k: v if isinstance(v, int) else float(f'{v:.5g}') for k, v in r.items()}
            for r in history]
