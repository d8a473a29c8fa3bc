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
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
import json
import math
from pathlib import Path
import time

import cv2
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..policy.actions import ActionCodec, NormStats
from ..policy.checkpoint import expand_path, load_model, save_checkpoint
from ..policy.config import OpenVLAConfig, TextConfig, ViTConfig
from ..policy.llama import rotate_half
from ..policy.openvla import PROMPT, OpenVLA
from ..policy.preprocess import DINO_MEAN, DINO_STD, SIGLIP_MEAN, SIGLIP_STD
from ..policy.presets import init_weights
from ..policy.tokenizer import SPACE, build_llama_tokenizer, save_tokenizer_files
from ..sim.tasks import PUSH_DIRECTIONS
from ..sim.world import BLOCK_COLOURS, LABELS, TABLE_SIZE, ZONE_COLOURS, label_map, render
from . import dataset as ds


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


def instruction_corpus() -> list[str]:
    """Every instruction the mock world can give, in OpenVLA's prompt format."""
    tasks = [f'move to the {c} block' for c in BLOCK_COLOURS]
    tasks += [f'put the {c} block in the {z} zone' for c in BLOCK_COLOURS for z in ZONE_COLOURS]
    tasks += [f'push the {c} block {d}' for c in BLOCK_COLOURS for d in PUSH_DIRECTIONS]
    return [PROMPT.format(t) for t in tasks]


PATCH = 28  # 224 px / 28 = 8 x 8 = 64 visual tokens: 2 CPU cores can train it in an hour


def model_config(base_vocab: int, norm_stats: dict) -> OpenVLAConfig:
    dino = ViTConfig(embed_dim=64, depth=3, num_heads=4, mlp_dim=256, reg_tokens=4,
                     layer_scale=True, patch_size=PATCH)
    siglip = ViTConfig(embed_dim=64, depth=3, num_heads=4, mlp_dim=256, class_token=False,
                       attn_pool=True, patch_size=PATCH)
    padded = math.ceil((base_vocab + 1) / 64) * 64  # + <PAD>, padded as OpenVLA does
    text = TextConfig(vocab_size=padded, hidden_size=128, intermediate_size=344,
                      num_hidden_layers=4, num_attention_heads=8, max_position_embeddings=512,
                      pad_token_id=base_vocab)
    return OpenVLAConfig(vision=(dino, siglip), text=text, norm_stats=norm_stats,
                         timm_model_ids=('flashvla_mock_dinov2_reg4', 'flashvla_mock_siglip'))


class AuxHeads(nn.Module):
    """Training-only heads (never saved): per-patch objects, and task-relevant positions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.patch_objects = nn.Linear(dim, len(LABELS))
        self.patch_offsets = nn.Linear(dim, 2)
        self.positions = nn.Linear(dim, 6)


class Batcher:
    """Renders frames and labels for dataset steps and tokenizes prompts and actions."""

    def __init__(self, data: dict, tokenizer, codec: ActionCodec, stats: NormStats) -> None:
        self.data, self.tok, self.codec, self.stats = data, tokenizer, codec, stats
        self.space_id = tokenizer.token_to_id(SPACE)
        self.pad = tokenizer.token_to_id('<PAD>')
        self.prompts: dict[str, list[int]] = {}
        mean = torch.tensor(DINO_MEAN + SIGLIP_MEAN).view(1, 6, 1, 1)
        std = torch.tensor(DINO_STD + SIGLIP_STD).view(1, 6, 1, 1)
        self.mean, self.std = mean, std

    def prompt_ids(self, instruction: str) -> list[int]:
        if instruction not in self.prompts:
            ids = self.tok.encode(PROMPT.format(instruction.lower())).ids
            self.prompts[instruction] = ids if ids[-1] == self.space_id else [*ids, self.space_id]
        return self.prompts[instruction]

    def __call__(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
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
        pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
        pixels = (torch.cat([pixels, pixels], dim=1) - self.mean) / self.std
        instructions = d['ep_instruction'][d['episode'][idx]]
        prompts = [self.prompt_ids(str(s)) for s in instructions]
        actions = self.codec.encode(self.stats.normalize(d['action'][idx]))  # [B, 7]
        length = max(len(p) for p in prompts) + actions.shape[1] - 1
        text = np.full((len(idx), length), self.pad, dtype=np.int64)
        first = np.zeros(len(idx), dtype=np.int64)  # sequence index predicting action 0
        for b, p in enumerate(prompts):
            row = [*p, *actions[b, :-1]]
            text[b, :len(row)] = row
            first[b] = self.grid ** 2 + len(p) - 1
        return {'pixels': pixels, 'text': torch.from_numpy(text),
                'first': torch.from_numpy(first), 'actions': torch.from_numpy(actions),
                'patch_labels': torch.from_numpy(np.stack(patch_labels)),
                'positions': torch.from_numpy(np.stack(positions)).float(),
                'patch_offsets': torch.from_numpy(np.stack(offsets)).float(),
                'focus': torch.from_numpy(np.stack(focus)).float()}

    grid = 224 // PATCH
    # Table coordinates of the patch centres, row-major from the image's top-left.
    _c = (np.arange(grid) + 0.5) / grid * TABLE_SIZE
    centres = np.stack([np.tile(_c, grid), np.repeat(TABLE_SIZE - _c, grid)], axis=1)


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


def losses(model: OpenVLA, aux: AuxHeads, batch: dict, codec: ActionCodec, sigma: float):
    llm = model.language_model
    patches = model.encode_image(batch['pixels'])  # [B, 256, D]
    emb = llm.embed(batch['text'])
    seq = torch.cat([emb[:, :1], patches, emb[:, 1:]], dim=1)
    positions = torch.arange(seq.shape[1], device=seq.device)
    cos, sin = llm.rotary(positions, seq.dtype)
    hidden, focus_loss = seq, seq.new_zeros(())
    for i, layer in enumerate(llm.model.layers):
        if i == FOCUS_LAYER:
            focus_loss = attention_focus_loss(layer, hidden, cos, sin, batch)
        hidden = layer(hidden, cos, sin)
    hidden = llm.model.norm(hidden)
    steps = batch['first'].unsqueeze(1) + torch.arange(batch['actions'].shape[1],
                                                       device=seq.device)  # [B, 7]
    h = hidden.gather(1, steps.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    logits = llm.lm_head(h)
    target = soft_targets(batch['actions'], codec, logits.shape[-1], sigma)
    action_loss = -(target * F.log_softmax(logits.float(), -1)).sum(-1).mean()
    vision_loss = F.binary_cross_entropy_with_logits(aux.patch_objects(patches),
                                                     batch['patch_labels'])
    vision_loss = vision_loss + 10 * F.mse_loss(aux.patch_offsets(patches),
                                                batch['patch_offsets'])
    state_loss = F.mse_loss(aux.positions(h[:, 0]), batch['positions'])
    accuracy = (logits.argmax(-1) == batch['actions']).float().mean()
    return action_loss, vision_loss + focus_loss, state_loss, accuracy


FOCUS_LAYER = 1  # layer 0 can bring the instruction's words to the query position first


def attention_focus_loss(layer, hidden, cos, sin, batch) -> torch.Tensor:
    """
    Supervise where three heads of one layer look from the first-action position.

    Head 0 should attend to the named block's patches, head 1 to the gripper's, head 2 to
    the named zone's (pick-and-place only): -log of the attention mass on those patches.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    b = torch.arange(x.shape[0], device=x.device)
    q = attn.q_proj(x[b, batch['first']]).view(len(b), attn.n_heads, attn.head_dim)
    k = attn.k_proj(x).view(*x.shape[:2], attn.n_kv, attn.head_dim)
    k = k.repeat_interleave(attn.n_heads // attn.n_kv, dim=2)
    rot = batch['first']
    q = q * cos[rot].unsqueeze(1) + rotate_half(q) * sin[rot].unsqueeze(1)
    k = k * cos[None, :, None] + rotate_half(k) * sin[None, :, None]
    scores = torch.einsum('bhd,bthd->bht', q[:, :3], k[:, :, :3]) / math.sqrt(attn.head_dim)
    visible = torch.arange(x.shape[1], device=x.device)[None, :] <= batch['first'][:, None]
    scores = scores.masked_fill(~visible[:, None, :], float('-inf'))
    log_p = scores.log_softmax(-1)[:, :, 1:1 + batch['focus'].shape[-1]]  # the patches
    target = batch['focus'] > 0  # [B, 3, patches]
    mass = torch.logsumexp(log_p.masked_fill(~target, float('-inf')), dim=-1)
    used = target.any(-1)
    return -(mass[used]).mean()


AUX_FILE = 'aux_heads.pt'  # training state beside the checkpoint; never part of the model


def train(data_dir: Path, out: Path, cfg: TrainConfig, log=print,
          init: Path | None = None) -> dict:
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    data = ds.load(data_dir)
    norm = json.loads((data_dir / 'norm_stats.json').read_text())
    tok = build_llama_tokenizer(instruction_corpus(), merges=300)
    base_vocab = tok.get_vocab_size(with_added_tokens=False)
    config = model_config(base_vocab, norm)
    codec = ActionCodec(vocab_size=base_vocab, n_bins=config.n_action_bins)
    _, stats = NormStats.select(norm, 'mock_world')
    model = OpenVLA(config)
    init_model(model)
    aux = AuxHeads(config.text.hidden_size)
    if init is not None:  # continue training (e.g. after a DAgger round)
        model.load_state_dict(load_model(init)[0].state_dict())
        if (Path(init) / AUX_FILE).is_file():
            aux.load_state_dict(torch.load(Path(init) / AUX_FILE, weights_only=True))
    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu')
                          if cfg.device == 'auto' else cfg.device)
    model.to(device)
    aux.to(device)
    params = [*model.parameters(), *aux.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    batcher = Batcher(data, tok, codec, stats)
    history: list[dict] = []
    start = time.perf_counter()
    n = len(data['action'])
    for step in range(1, cfg.steps + 1):
        cosine = 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        lr = cfg.lr * min(1.0, step / cfg.warmup) * cosine
        for g in opt.param_groups:
            g['lr'] = lr
        batch = {k: v.to(device) for k, v in batcher(rng.integers(0, n, cfg.batch)).items()}
        a, v, s, acc = losses(model, aux, batch, codec, cfg.soft_sigma_bins)
        loss = a + cfg.aux_vision * v + cfg.aux_state * s
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        history.append({'step': step, 'loss': loss.item(), 'action_loss': a.item(),
                        'vision_loss': v.item(),
                        'state_loss': s.item(), 'token_accuracy': acc.item(), 'lr': lr})
        if step % 25 == 0 or step == cfg.steps:
            el = time.perf_counter() - start
            recent = history[-25:]
            log(f'step {step}/{cfg.steps} | action loss '
                f'{np.mean([h["action_loss"] for h in recent]):.3f} | token acc '
                f'{np.mean([h["token_accuracy"] for h in recent]):.3f} | vision '
                f'{np.mean([h["vision_loss"] for h in recent]):.4f} | state '
                f'{np.mean([h["state_loss"] for h in recent]):.4f} | {el / step:.2f} s/step | '
                f'eta {el / step * (cfg.steps - step) / 60:.1f} min')
    seconds = time.perf_counter() - start
    model.cpu()
    aux.cpu()
    save_checkpoint(out, model.state_dict(), config, dtype='float32')
    torch.save(aux.state_dict(), out / AUX_FILE)
    save_tokenizer_files(tok, out, model_max_length=config.text.max_position_embeddings)
    summary = {'config': asdict(cfg), 'seconds': seconds, 'samples': len(data['action']),
               'episodes': len(data['ep_seed']), 'device': str(device), 'history': history}
    (out / 'train_log.json').write_text(json.dumps(summary) + '\n')
    plot_losses(history, out / 'loss.png')
    return summary


def init_model(model: OpenVLA) -> None:
    """Initialise: normal 0.02 weights, 2-D sin-cos patch coordinates as position embeddings."""
    init_weights(model, lambda name: None if name.endswith('pos_embed') else 0.02)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('pos_embed'):
                p.copy_(sincos_2d(int(math.isqrt(p.shape[1])), p.shape[2]).unsqueeze(0))


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


def plot_losses(history: list[dict], path: Path, size=(720, 420)) -> None:
    """Draw the loss curves with OpenCV (no plotting dependency): log-scale y."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    keys = [('action_loss', (200, 60, 30)), ('vision_loss', (40, 150, 40)),
            ('state_loss', (30, 30, 200))]
    values = {k: np.array([r[k] for r in history]) for k, _ in keys}
    k = max(1, len(history) // 200)
    smooth = {n: np.convolve(v, np.ones(k) / k, mode='valid') for n, v in values.items()}
    lo = math.log10(max(1e-5, min(v.min() for v in smooth.values())))
    hi = math.log10(max(v.max() for v in smooth.values()))
    left, right, top, bottom = 60, w - 20, 20, h - 40
    cv2.rectangle(img, (left, top), (right, bottom), (0, 0, 0), 1)
    for (name, colour), row in zip(keys, range(3), strict=True):
        v = smooth[name]
        xs = left + (right - left) * np.arange(len(v)) / max(1, len(v) - 1)
        ys = bottom - (bottom - top) * (np.log10(np.maximum(v, 1e-5)) - lo) / max(hi - lo, 1e-9)
        pts = np.stack([xs, ys], 1).astype(np.int32)
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        cv2.putText(img, name, (right - 170, top + 20 + 20 * row), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, colour, 1, cv2.LINE_AA)
    cv2.putText(img, f'step 1..{len(history)}  (log y: {10 ** lo:.3g}..{10 ** hi:.3g})',
                (left, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=expand_path, required=True, help='flashvla-dataset output')
    parser.add_argument('--out', type=expand_path, required=True, help='checkpoint directory')
    parser.add_argument('--init', type=expand_path,
                        help='start from this checkpoint (fine-tuning)')
    for f, default in asdict(TrainConfig()).items():
        parser.add_argument(f'--{f.replace("_", "-")}', type=type(default), default=default)
    args = parser.parse_args(argv)
    cfg = TrainConfig(**{f: getattr(args, f) for f in asdict(TrainConfig())})
    summary = train(args.data, args.out, cfg, init=args.init)
    print(f'trained {cfg.steps} steps in {summary["seconds"] / 60:.1f} min -> {args.out}')


if __name__ == '__main__':
    main()
