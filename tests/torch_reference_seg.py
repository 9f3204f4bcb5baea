"""Independent PyTorch reference of the part-segmentation network (SPEC §8.2, §8.6).

Written from ``/work/shared/SPEC.md``, reusing the classifier reference's pieces
(``tests/torch_reference.py``: FPS, kNN grouping, the patch encoder, the DAPT block). Channel-first
Conv1d layers as Point-MAE writes them, so the arithmetic is laid out differently from the Flax
model. ``TorchPartSeg(dapt=False).state_dict()`` has exactly the key layout of Point-MAE's
segmentation checkpoints (``model_state_dict``, SPEC §8.5).

Shapes: B batch, N points, G centres, K group size, C width, P parts.

Public API
----------
- ``PlainBlock`` (Point-MAE's transformer block), ``interpolate(xyz, centers, features)``
- ``TorchPartSeg(...)`` with ``forward(pts, category)`` and
  ``forward_from_groups(query, neighborhood, center, category)`` → logits [B, N, P]
- ``seg_torch_to_flax(state_dict)`` / ``flax_path_for_torch_key(key)``: the test-side naming map
  (written from docs/architecture.md, independently of ``convert/``)
- ``trainable_names(model)``: the project's DAPT segmentation trainable set (§8.6)
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests import torch_reference as R


class PlainAttention(nn.Module):
    """Point-MAE attention: qkv Linear C -> 3C (no bias), softmax(q k^T / sqrt(d)) v, proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, T, C))


class PlainMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PlainBlock(nn.Module):
    """Point-MAE's pre-norm block: x + DropPath(attn(norm1 x)); x + DropPath(mlp(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        # Registered in Point-MAE's order, so state_dict() lists norm1, norm2, mlp, attn (§6.5).
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.drop_path = R.DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = PlainMlp(dim, int(dim * mlp_ratio))
        self.attn = PlainAttention(dim, num_heads)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PlainEncoder(nn.Module):
    def __init__(self, dim, depth, num_heads, mlp_ratio, drop_path_rate):
        super().__init__()
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(
            [PlainBlock(dim, num_heads, mlp_ratio, rates[i]) for i in range(depth)])


def interpolate(xyz: torch.Tensor, centers: torch.Tensor, features: torch.Tensor,
                k: int = 3) -> torch.Tensor:
    """PointNet++ feature propagation weights, channel-first.

    xyz [B, 3, N]; centers [B, 3, G]; features [B, D, G] -> [B, D, N]: for every point its k
    nearest centres (squared distance from explicit differences; stable sort, lower index first
    on ties), weights 1/(d^2 + 1e-8) normalised to sum 1.
    """
    diff = xyz.unsqueeze(3) - centers.unsqueeze(2)          # [B, 3, N, G]
    d2 = (diff * diff).sum(1)                                 # [B, N, G]
    d2, idx = torch.sort(d2, dim=-1, stable=True)
    d2, idx = d2[..., :k], idx[..., :k]                       # [B, N, k]
    recip = 1.0 / (d2 + 1e-8)
    w = recip / recip.sum(-1, keepdim=True)
    B, D, _ = features.shape
    gathered = torch.gather(features.unsqueeze(2).expand(B, D, idx.shape[1], -1), 3,
                            idx.unsqueeze(1).expand(B, D, -1, -1))   # [B, D, N, k]
    return (gathered * w.unsqueeze(1)).sum(-1)


class Propagation(nn.Module):
    """``propagation_0``: mlp_convs / mlp_bns (Conv1d k=1, BatchNorm1d, ReLU per width)."""

    def __init__(self, in_channel: int, dims: Sequence[int]):
        super().__init__()
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        last = in_channel
        for width in dims:
            self.mlp_convs.append(nn.Conv1d(last, width, 1))
            self.mlp_bns.append(nn.BatchNorm1d(width))
            last = width

    def forward(self, xyz1, xyz2, points1, points2):
        """xyz1 [B, 3, N] query; xyz2 [B, 3, G] centres; points1 [B, 3, N]; points2 [B, D, G]."""
        h = torch.cat([points1, interpolate(xyz1, xyz2, points2)], dim=1)
        for conv, bn in zip(self.mlp_convs, self.mlp_bns):
            h = F.relu(bn(conv(h)))
        return h


class TorchPartSeg(nn.Module):
    """Point-MAE's segmentation network; with ``dapt=True`` the project's DAPT design (§8.6).

    In training mode after construction; every parameter requires grad (use ``trainable_names``).
    """

    def __init__(self, trans_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, num_group=128,
                 group_size=32, rank=32, num_parts=50, num_classes=16, drop_path_rate=0.1,
                 drop_adapter_rate=0.0, dapt=True, pos_every_block=False,
                 feature_blocks=(3, 7, 11), label_dims=64, propagation_dims=(1536, 1024),
                 head_dims=(512, 256), head_dropout=0.5):
        super().__init__()
        self.dapt = dapt
        self.pos_every_block = pos_every_block or not dapt
        self.feature_blocks = tuple(feature_blocks)
        self.num_group, self.group_size = num_group, group_size
        self.num_classes = num_classes
        C = trans_dim
        self.encoder = R.PatchEncoder(C)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, C))
        if dapt:
            self.blocks = R.TransformerEncoder(C, depth, num_heads, mlp_ratio, rank,
                                               drop_path_rate, drop_adapter_rate)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
            self.cls_pos = nn.Parameter(torch.zeros(1, 1, C))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.cls_pos, std=0.02)
            self.tfts_gamma_1, self.tfts_beta_1 = R._new_tfts(C)   # on the patch tokens
            self.tfts_gamma_2, self.tfts_beta_2 = R._new_tfts(C)   # after the final norm
        else:
            self.blocks = PlainEncoder(C, depth, num_heads, mlp_ratio, drop_path_rate)
        self.norm = nn.LayerNorm(C, eps=1e-5)
        self.label_conv = nn.Sequential(nn.Conv1d(num_classes, label_dims, 1, bias=False),
                                        nn.BatchNorm1d(label_dims), nn.LeakyReLU(0.2))
        f = C * len(self.feature_blocks)
        self.propagation_0 = Propagation(f + 3, propagation_dims)
        self.convs1 = nn.Conv1d(propagation_dims[-1] + 2 * f + label_dims, head_dims[0], 1)
        self.dp1 = nn.Dropout(head_dropout)
        self.convs2 = nn.Conv1d(head_dims[0], head_dims[1], 1)
        self.convs3 = nn.Conv1d(head_dims[1], num_parts, 1)
        self.bns1 = nn.BatchNorm1d(head_dims[0])
        self.bns2 = nn.BatchNorm1d(head_dims[1])

    def group(self, pts):
        return R.torch_group(pts, self.num_group, self.group_size)

    def features(self, neighborhood, center):
        """-> [B, len(feature_blocks) * C, G]: the normed last-G tokens of the chosen blocks."""
        x = self.encoder(neighborhood)                       # [B, G, C]
        pos = self.pos_embed(center)
        G = x.shape[1]
        if self.dapt:
            B = x.shape[0]
            x = R._tfts(x, self.tfts_gamma_1, self.tfts_beta_1)
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], 1)
            pos = torch.cat([self.cls_pos.expand(B, -1, -1), pos], 1)
        if not self.pos_every_block:
            x = x + pos
        out = []
        for i, blk in enumerate(self.blocks.blocks):
            if self.pos_every_block:
                if self.dapt:   # [cls, i prompts, patches]; prompts get no position
                    p = torch.cat([pos[:, :1], pos.new_zeros(pos.shape[0], i, pos.shape[2]),
                                   pos[:, 1:]], 1)
                    x = blk(x + p)
                else:
                    x = blk(x + pos)
            else:
                x = blk(x)
            if i in self.feature_blocks:
                h = self.norm(x[:, -G:])
                if self.dapt:
                    h = R._tfts(h, self.tfts_gamma_2, self.tfts_beta_2)
                out.append(h.transpose(1, 2))
        return torch.cat(out, 1)

    def forward_from_groups(self, query, neighborhood, center, category):
        """query [B, Q, 3]; neighborhood [B, G, K, 3]; center [B, G, 3]; category [B] long
        -> logits [B, Q, P] (before log-softmax)."""
        f = self.features(neighborhood, center)              # [B, F, G]
        B, _, Q = f.shape[0], None, query.shape[1]
        onehot = F.one_hot(category, self.num_classes).to(f.dtype).unsqueeze(-1)
        label = self.label_conv(onehot)                       # [B, 64, 1]
        g = torch.cat([f.max(2, keepdim=True).values, f.mean(2, keepdim=True), label], 1)
        xyz = query.transpose(1, 2)
        h = self.propagation_0(xyz, center.transpose(1, 2), xyz, f)
        h = torch.cat([h, g.expand(-1, -1, Q)], 1)
        h = self.dp1(F.relu(self.bns1(self.convs1(h))))
        h = F.relu(self.bns2(self.convs2(h)))
        return self.convs3(h).transpose(1, 2)

    def forward(self, pts, category):
        neighborhood, center = self.group(pts)
        return self.forward_from_groups(pts, neighborhood, center, category)


_HEAD = ('label_conv.', 'propagation_0.', 'convs', 'bns')


def trainable_names(model: nn.Module) -> List[str]:
    """The DAPT segmentation trainable set: SPEC §2's (cls, tfts, Adapter) plus the whole head."""
    return [n for n, _ in model.named_parameters()
            if any(m in n for m in ('cls', 'tfts', 'Adapter')) or n.startswith(_HEAD)]


# ---------------------------------------------------------------------------------------------
# Test-side naming map, written from docs/architecture.md ("Segmentation").

_MODULES = [  # (regex over the PyTorch module key, Flax module path, kind)
    (r'encoder\.first_conv\.0', 'encoder/fc1', 'conv'),
    (r'encoder\.first_conv\.1', 'encoder/bn1', 'bn'),
    (r'encoder\.first_conv\.3', 'encoder/fc2', 'conv'),
    (r'encoder\.second_conv\.0', 'encoder/fc3', 'conv'),
    (r'encoder\.second_conv\.1', 'encoder/bn2', 'bn'),
    (r'encoder\.second_conv\.3', 'encoder/fc4', 'conv'),
    (r'pos_embed\.0', 'pos_embed/fc1', 'linear'),
    (r'pos_embed\.2', 'pos_embed/fc2', 'linear'),
    (r'blocks\.blocks\.(\d+)\.attn\.qkv', r'blocks_\1/attn/qkv', 'linear'),
    (r'blocks\.blocks\.(\d+)\.attn\.proj', r'blocks_\1/attn/proj', 'linear'),
    (r'blocks\.blocks\.(\d+)\.mlp\.(fc[12])', r'blocks_\1/mlp/\2', 'linear'),
    (r'blocks\.blocks\.(\d+)\.(norm[12])', r'blocks_\1/\2', 'ln'),
    (r'blocks\.blocks\.(\d+)\.Adapter_MLP\.adapter_layer_norm_before', r'blocks_\1/adapter/norm',
     'ln'),
    (r'blocks\.blocks\.(\d+)\.Adapter_MLP\.(scale|down_proj|up_proj)', r'blocks_\1/adapter/\2',
     'linear'),
    (r'norm', 'norm', 'ln'),
    (r'label_conv\.0', 'label_conv/conv', 'conv'),
    (r'label_conv\.1', 'label_conv/bn', 'bn'),
    (r'propagation_0\.mlp_convs\.(\d+)', r'propagation_0/conv_\1', 'conv'),
    (r'propagation_0\.mlp_bns\.(\d+)', r'propagation_0/bn_\1', 'bn'),
    (r'convs([123])', r'convs\1', 'conv'),
    (r'bns([12])', r'bns\1', 'bn'),
]
_TFTS = [  # (regex over the PyTorch parameter key, Flax module path)
    (r'tfts_(gamma|beta)_1', 'patch_tfts'),
    (r'tfts_(gamma|beta)_2', 'norm_tfts'),
    (r'blocks\.blocks\.(\d+)\.tfts_(gamma|beta)_1', r'blocks_\1/norm1_tfts'),
    (r'blocks\.blocks\.(\d+)\.tfts_(gamma|beta)_2', r'blocks_\1/norm2_tfts'),
    (r'blocks\.blocks\.(\d+)\.tfts_(gamma|beta)_3', r'blocks_\1/prompt_tfts'),
    (r'blocks\.blocks\.(\d+)\.attn\.tfts_(gamma|beta)_1', r'blocks_\1/attn/qkv_tfts'),
    (r'blocks\.blocks\.(\d+)\.attn\.tfts_(gamma|beta)_2', r'blocks_\1/attn/proj_tfts'),
    (r'blocks\.blocks\.(\d+)\.mlp\.tfts_(gamma|beta)_1', r'blocks_\1/mlp/fc1_tfts'),
    (r'blocks\.blocks\.(\d+)\.mlp\.tfts_(gamma|beta)_2', r'blocks_\1/mlp/fc2_tfts'),
]
_LEAF = {'weight': 'scale', 'bias': 'bias'}


def flax_path_for_torch_key(key: str):
    """(collection, Flax path, kind) of a PyTorch key, or None for num_batches_tracked."""
    if key.endswith('num_batches_tracked'):
        return None
    if key in ('cls_token', 'cls_pos'):
        return 'params', key, 'param'
    for rx, path in _TFTS:
        m = re.fullmatch(rx, key)
        if m:
            leaf = 'gamma' if 'gamma' in key.rsplit('.', 1)[-1] else 'beta'
            return 'params', f'{m.expand(path)}/{leaf}', 'tfts'
    module, _, leaf = key.rpartition('.')
    for rx, path, kind in _MODULES:
        m = re.fullmatch(rx, module)
        if not m:
            continue
        fpath = m.expand(path)
        if leaf in ('running_mean', 'running_var'):
            return 'batch_stats', f'{fpath}/{leaf[8:]}', kind
        if kind in ('conv', 'linear'):
            return 'params', f'{fpath}/{"kernel" if leaf == "weight" else "bias"}', kind
        return 'params', f'{fpath}/{_LEAF[leaf]}', kind
    raise KeyError(f'no Flax path for {key}')


def seg_torch_to_flax(state_dict, dtype=np.float64) -> Dict[str, dict]:
    """{PyTorch key: tensor} -> {'params', 'batch_stats'} nested dicts of numpy arrays."""
    out = {'params': {}, 'batch_stats': {}}
    for key, value in state_dict.items():
        where = flax_path_for_torch_key(key)
        if where is None:
            continue
        collection, path, kind = where
        v = value.detach().cpu().numpy()
        if kind == 'conv' and path.endswith('/kernel'):
            v = v[:, :, 0].T
        elif kind == 'linear' and path.endswith('/kernel'):
            v = v.T
        node = out[collection]
        *parents, leaf = path.split('/')
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(v, dtype)
    return out
