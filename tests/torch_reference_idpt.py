"""Independent PyTorch references of Point-MAE's classifier (full fine-tuning / linear probing),
VPT-deep and IDPT, written from /work/shared/SPEC.md §9 and the IDPT paper (ICCV 2023).

The numerical oracle for dapt_jax/models/peft (tests/test_peft_parity.py). Plain, explicit arithmetic;
every model computes in whatever dtype its parameters have (float64 in the parity tests).
State-dict keys follow the releases' layouts (the IDPT release is a Point-MAE fork), so a state
dict of these models is what a released fine-tuned checkpoint's `base_model` holds, up to the
`module.` prefix; the converter tests use them as such.

Shared pieces (tokenizer, patch encoder, drop-path) come from tests/torch_reference.py.

Public API
----------
- ``PlainAttention``, ``PlainMlp``, ``PlainBlock``: Point-MAE's block (no DAPT parts).
- ``PointMAEClassifier(...)``: pos before every block; head on [cls, max patches].
- ``VPTDeepClassifier(..., prompts=10)``: per block its own prompts and prompt positions.
- ``IDPTClassifier(..., prompt_layer=-1, k=20)``: DGCNN prompt before one block.
- every classifier: ``forward(pts)``, ``forward_from_groups(neighborhood, center)``,
  ``head_input(...)`` (the features the head reads), ``trainable_names()`` (the release's set).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests import torch_reference as R


class PlainAttention(nn.Module):
    """softmax(q kᵀ / √d) v over heads; qkv Linear C→3C without bias, proj Linear C→C."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(b, t, 3, h, c // h)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))          # [B, H, T, D]
        w = torch.softmax(q @ k.transpose(-1, -2) * (c // h) ** -0.5, dim=-1)
        return self.proj((w @ v).transpose(1, 2).reshape(b, t, c))


class PlainMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class PlainBlock(nn.Module):
    """x + DropPath(Attn(norm1 x)); then x + DropPath(Mlp(norm2 x)). Modules registered in the
    release's order (norm1, norm2, mlp, attn), so state-dict keys come in its order too."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.drop_path = R.DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = PlainMlp(dim, int(dim * mlp_ratio))
        self.attn = PlainAttention(dim, num_heads)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _Blocks(nn.Module):
    """Holder so that block keys read `blocks.blocks.{i}.` as in the releases."""

    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


def classifier_head(in_dim: int, num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, 256), nn.BatchNorm1d(256, eps=1e-5, momentum=0.1), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(256, 256), nn.BatchNorm1d(256, eps=1e-5, momentum=0.1),
        nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, num_classes))


class PointMAEClassifier(nn.Module):
    """Point-MAE's fine-tuning classifier (the 'full' and 'linear' baselines).

    tokens = PatchEncoder(groups); x = [cls_token, tokens]; pos = [cls_pos, pos_embed(centres)];
    every block: x = block(x + pos); final LayerNorm; head on [x_cls, max over patch tokens].
    """

    head_pieces = 2

    def __init__(self, trans_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, num_group=128,
                 group_size=32, num_classes=15, drop_path_rate=0.0, head_dropout=0.5):
        super().__init__()
        self.trans_dim, self.depth = trans_dim, depth
        self.num_group, self.group_size = num_group, group_size
        self.encoder = R.PatchEncoder(trans_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = self.make_blocks(trans_dim, depth, num_heads, mlp_ratio, rates)
        self.norm = nn.LayerNorm(trans_dim, eps=1e-5)
        self.cls_head_finetune = classifier_head(trans_dim * self.head_pieces, num_classes,
                                                 head_dropout)
        with torch.no_grad():
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def make_blocks(self, dim, depth, num_heads, mlp_ratio, rates) -> nn.Module:
        return _Blocks([PlainBlock(dim, num_heads, mlp_ratio, r) for r in rates])

    # -- forward ------------------------------------------------------------------------------

    def tokens_and_pos(self, neighborhood, center):
        tokens = self.encoder(neighborhood)
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), self.pos_embed(center)], dim=1)
        return x, pos

    def run_blocks(self, x, pos, center):
        for blk in self.blocks.blocks:
            x = blk(x + pos)
        return x

    def head_input(self, neighborhood, center) -> torch.Tensor:
        x, pos = self.tokens_and_pos(neighborhood, center)
        x = self.norm(self.run_blocks(x, pos, center))
        g = center.shape[1]
        return torch.cat([x[:, 0], x[:, 1:1 + g].max(dim=1).values], dim=-1)

    def forward_from_groups(self, neighborhood, center):
        return self.cls_head_finetune(self.head_input(neighborhood, center))

    def forward(self, pts):
        return self.forward_from_groups(*R.torch_group(pts, self.num_group, self.group_size))

    # -- trainable sets (the releases' name rules) ----------------------------------------------

    def trainable_names(self) -> List[str]:
        """Linear probing / VPT / IDPT: the names containing 'cls' (IDPT's `part: only_new`)."""
        return [n for n, _ in self.named_parameters() if 'cls' in n]


class VPTDeepClassifier(PointMAEClassifier):
    """VPT-deep: before block i, x = [x[:, :1+G], prompts_i], pos = [pos[:, :1+G], prompt_pos_i]."""

    def __init__(self, *args, prompts: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        shape = (1, prompts, self.trans_dim)
        self.cls_prompt_list = nn.ParameterList(
            [nn.Parameter(torch.zeros(shape)) for _ in range(self.depth)])
        self.cls_prompt_pos_list = nn.ParameterList(
            [nn.Parameter(torch.zeros(shape)) for _ in range(self.depth)])
        with torch.no_grad():
            for p in list(self.cls_prompt_list) + list(self.cls_prompt_pos_list):
                nn.init.trunc_normal_(p, std=0.02)

    def run_blocks(self, x, pos, center):
        g = center.shape[1]
        b = x.shape[0]
        base_pos = pos
        for i, blk in enumerate(self.blocks.blocks):
            x = torch.cat([x[:, :1 + g], self.cls_prompt_list[i].expand(b, -1, -1)], dim=1)
            pos = torch.cat([base_pos, self.cls_prompt_pos_list[i].expand(b, -1, -1)], dim=1)
            x = blk(x + pos)
        return x


class EdgeConvPrompt(nn.Module):
    """IDPT's DGCNN prompt module on [B, C, G] token features → [B, 1, C].

    Three EdgeConv layers (k nearest tokens in feature space, itself included; edge feature
    [x_j − x_i, x_i]; 1×1 Conv2d 2C→C without bias; BatchNorm2d; LeakyReLU 0.2; max over k),
    concat (3C), Conv1d 3C→C without bias, BatchNorm1d, LeakyReLU 0.2, max over tokens. The
    BatchNorms are registered both by themselves and inside the conv stacks, so the state dict
    holds each twice (`bn1.*` and `conv1.1.*`), as the release's does.
    """

    def __init__(self, dim: int, k: int = 20):
        super().__init__()
        self.k = k
        self.bn1 = nn.BatchNorm2d(dim)
        self.bn2 = nn.BatchNorm2d(dim)
        self.bn3 = nn.BatchNorm2d(dim)
        self.bn5 = nn.BatchNorm1d(dim)
        act = lambda: nn.LeakyReLU(negative_slope=0.2)
        self.conv1 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), self.bn1, act())
        self.conv2 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), self.bn2, act())
        self.conv3 = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), self.bn3, act())
        self.conv5 = nn.Sequential(nn.Conv1d(3 * dim, dim, 1, bias=False), self.bn5, act())

    def edges(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, G] → [B, 2C, G, k]."""
        pts = x.transpose(1, 2)                                           # [B, G, C]
        d = ((pts[:, :, None, :] - pts[:, None, :, :]) ** 2).sum(-1)      # [B, G, G]
        idx = torch.topk(d, self.k, dim=-1, largest=False).indices        # [B, G, k]
        b = torch.arange(pts.shape[0]).view(-1, 1, 1)
        nb = pts[b, idx]                                                  # [B, G, k, C]
        ctr = pts[:, :, None, :].expand_as(nb)
        return torch.cat([nb - ctr, ctr], dim=-1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(self.edges(x)).max(dim=-1).values
        x2 = self.conv2(self.edges(x1)).max(dim=-1).values
        x3 = self.conv3(self.edges(x2)).max(dim=-1).values
        h = self.conv5(torch.cat([x1, x2, x3], dim=1))                    # [B, C, G]
        return h.max(dim=-1).values.unsqueeze(1)


class _PromptBlocks(_Blocks):
    def __init__(self, blocks, prompt_module):
        super().__init__(blocks)
        self.cls = prompt_module


class IDPTClassifier(PointMAEClassifier):
    """IDPT: before block `prompt_layer` the DGCNN prompt of the patch tokens is inserted after
    the class token with the (never trained) position `prompt_pos`; head on
    [cls, prompt, max patches]."""

    head_pieces = 3

    def __init__(self, *args, prompt_layer: int = -1, k: int = 20, **kwargs):
        self._k = k
        super().__init__(*args, **kwargs)
        self.prompt_layer = prompt_layer % self.depth
        self.prompt_pos = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        with torch.no_grad():
            nn.init.trunc_normal_(self.prompt_pos, std=0.02)

    def make_blocks(self, dim, depth, num_heads, mlp_ratio, rates):
        return _PromptBlocks([PlainBlock(dim, num_heads, mlp_ratio, r) for r in rates],
                             EdgeConvPrompt(dim, self._k))

    def run_blocks(self, x, pos, center):
        g = center.shape[1]
        b = x.shape[0]
        for i, blk in enumerate(self.blocks.blocks):
            if i == self.prompt_layer:
                prompt = self.blocks.cls(x[:, -g:].transpose(1, 2))
                x = torch.cat([x[:, :1], prompt, x[:, -g:]], dim=1)
                pos = torch.cat([pos[:, :1], self.prompt_pos.expand(b, -1, -1), pos[:, -g:]], 1)
            x = blk(x + pos)
        return x

    def head_input(self, neighborhood, center):
        x, pos = self.tokens_and_pos(neighborhood, center)
        x = self.norm(self.run_blocks(x, pos, center))
        return torch.cat([x[:, 0], x[:, 1], x[:, 2:].max(dim=1).values], dim=-1)
