"""Independent PyTorch reference of Point-MAE pre-training (the masked autoencoder).

Written from ``/work/shared/SPEC.md`` §6.2–6.5 (not from the Flax code), reusing the grouping, the
patch encoder and DropPath of ``tests/torch_reference.py``. It is the numerical oracle for
``dapt_jax.models.mae`` (forward, loss and gradients in float64) and for the converter's Point-MAE
export: ``TorchPointMAE().state_dict()`` has exactly the 209-entry key layout of a Point-MAE
pre-training checkpoint's ``base_model`` (SPEC §6.5), in the same order, so an exported
``{'base_model': sd}`` must load into it with ``load_state_dict(..., strict=True)``.

Shapes: B batch, N points, G groups, K points per group, M masked groups, V = G − M visible,
C width.

Public API
----------
- ``chamfer_l2(pred, target)``: Point-MAE's ``cdl2`` value on [B', K, 3] point sets.
- ``rand_mask(B, G, M, generator)``, ``block_mask(center, seed_index, M)``: the two mask types.
- ``TorchPointMAE(...)`` with ``forward(pts, mask)``, ``forward_from_groups(neighborhood, center,
  mask) -> (pred, target)`` and ``loss_from_groups(...)``.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn as nn

from tests.torch_reference import DropPath, PatchEncoder, torch_group

__all__ = ["chamfer_l2", "rand_mask", "block_mask", "PlainBlock", "TorchPointMAE"]


# --------------------------------------------------------------------------------------------
# Loss and masks
# --------------------------------------------------------------------------------------------


def chamfer_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Point-MAE's ``cdl2`` (SPEC §6.2.5): mean over all points of the squared distance to the
    nearest point of the other set, both directions, summed (not halved, no square root).

    Args:
      pred: [B', P, 3]; target: [B', Q, 3] (nearest partners are searched within each set b).
    Returns:
      scalar: mean(d1 over B'·P) + mean(d2 over B'·Q).
    """
    diff = pred.unsqueeze(2) - target.unsqueeze(1)  # [B', P, Q, 3]
    sq = (diff * diff).sum(dim=-1)  # [B', P, Q]
    # torch.min over a dim returns the first minimal index and routes the gradient to it alone,
    # the CUDA kernel's behaviour (2 (p - g*) to the arg-min partner).
    d1 = sq.min(dim=2).values  # [B', P]
    d2 = sq.min(dim=1).values  # [B', Q]
    return d1.mean() + d2.mean()


def rand_mask(batch: int, num_group: int, num_mask: int, generator: torch.Generator) -> torch.Tensor:
    """'rand' masking: per cloud, exactly ``num_mask`` of ``num_group`` groups, uniformly at random
    (a random permutation per cloud). Returns bool [B, G], True = masked."""
    mask = torch.zeros(batch, num_group, dtype=torch.bool)
    for b in range(batch):
        perm = torch.randperm(num_group, generator=generator)
        mask[b, perm[:num_mask]] = True
    return mask


def block_mask(center: torch.Tensor, seed_index: Sequence[int], num_mask: int) -> torch.Tensor:
    """'block' masking (SPEC §6.2.1): per cloud, sort all centres by Euclidean distance to the
    centre ``seed_index[b]`` and mask the ``num_mask`` nearest (itself included).

    center: [B, G, 3]. Returns bool [B, G]. Ties are broken by lower index (stable sort).
    """
    B, G, _ = center.shape
    mask = torch.zeros(B, G, dtype=torch.bool)
    for b in range(B):
        d = torch.norm(center[b, seed_index[b]].reshape(1, 3) - center[b], p=2, dim=-1)  # [G]
        order = torch.sort(d, stable=True).indices
        mask[b, order[:num_mask]] = True
    return mask


# --------------------------------------------------------------------------------------------
# Plain transformer (Point-MAE's block: no scale-shifts, no adapter)
# --------------------------------------------------------------------------------------------


class PlainAttention(nn.Module):
    """Multi-head self-attention, qkv Linear without bias, proj Linear with bias.
    ``forward(x [B, T, C]) -> [B, T, C]``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(dim=2)  # [B, T, H, D] each
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        w = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim), dim=-1)
        return self.proj((w @ v).transpose(1, 2).reshape(B, T, C))


class PlainMlp(nn.Module):
    """fc1 (C -> hidden), exact GELU, fc2 (hidden -> C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PlainBlock(nn.Module):
    """x = x + DropPath(attn(norm1(x))); x = x + DropPath(mlp(norm2(x))).

    Submodules are registered in Point-MAE's order (norm1, norm2, mlp, attn), which fixes the
    order of the state dict's keys.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = PlainMlp(dim, int(dim * mlp_ratio))
        self.attn = PlainAttention(dim, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _linspace(rate: float, depth: int) -> list:
    return [r.item() for r in torch.linspace(0, rate, depth)]


class _BlockStack(nn.Module):
    """``blocks`` of plain blocks; each applied as ``x = block(x + pos)``."""

    def __init__(self, dim, depth, num_heads, mlp_ratio, drop_path_rate):
        super().__init__()
        self.blocks = nn.ModuleList(
            [PlainBlock(dim, num_heads, mlp_ratio, r) for r in _linspace(drop_path_rate, depth)]
        )

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x + pos)
        return x


class _Encoder(nn.Module):
    """``MAE_encoder``: patch encoder, position embedding, blocks (under ``blocks.blocks``), norm."""

    def __init__(self, dim, depth, num_heads, mlp_ratio, drop_path_rate):
        super().__init__()
        self.encoder = PatchEncoder(dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        self.blocks = _BlockStack(dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.norm = nn.LayerNorm(dim, eps=1e-5)


class _Decoder(nn.Module):
    """``MAE_decoder``: blocks directly under ``blocks`` (no second ``blocks.``), norm."""

    def __init__(self, dim, depth, num_heads, mlp_ratio, drop_path_rate):
        super().__init__()
        self.blocks = nn.ModuleList(
            [PlainBlock(dim, num_heads, mlp_ratio, r) for r in _linspace(drop_path_rate, depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-5)


class TorchPointMAE(nn.Module):
    """Point-MAE's pre-training model in the checkpoint's key layout (SPEC §6.5).

    Args:
      trans_dim: C. depth: encoder blocks. num_heads: encoder heads. mlp_ratio: MLP hidden / C.
      num_group: G. group_size: K. drop_path_rate: stochastic depth (linspace 0..rate over the
      encoder blocks, and separately over the decoder blocks). mask_ratio: M = int(ratio · G).
      decoder_depth, decoder_num_heads: the decoder's blocks and heads.

    Initialised as SPEC §6.3: MAE_encoder Linear/Conv1d trunc-normal std 0.02 (clipped at ±2,
    i.e. effectively plain normal), bias 0, LayerNorm 1/0; MAE_decoder Linear Xavier-uniform,
    bias 0, LayerNorm 1/0; decoder_pos_embed and increase_dim PyTorch defaults; mask_token
    trunc-normal std 0.02. The model is in training mode after construction.
    """

    def __init__(
        self,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_group: int = 64,
        group_size: int = 32,
        drop_path_rate: float = 0.1,
        mask_ratio: float = 0.6,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
    ):
        super().__init__()
        self.trans_dim = trans_dim
        self.num_group = num_group
        self.group_size = group_size
        self.num_mask = int(mask_ratio * num_group)
        # Registration order = state-dict order: own parameter first, then the children.
        self.mask_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.MAE_encoder = _Encoder(trans_dim, depth, num_heads, mlp_ratio, drop_path_rate)
        self.decoder_pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        self.MAE_decoder = _Decoder(trans_dim, decoder_depth, decoder_num_heads, mlp_ratio, drop_path_rate)
        self.increase_dim = nn.Sequential(nn.Conv1d(trans_dim, 3 * group_size, 1))
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.MAE_encoder.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.MAE_decoder.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    # -- forward ----------------------------------------------------------------------------

    def group(self, pts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``pts`` [B, N, 3] -> (neighborhood [B, G, K, 3], center [B, G, 3])."""
        return torch_group(pts, self.num_group, self.group_size)

    def forward_from_groups(
        self, neighborhood: torch.Tensor, center: torch.Tensor, mask: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(prediction [B·M, K, 3], target [B·M, K, 3]) given the mask [B, G] bool.

        Visible tokens and masked targets are taken with boolean indexing (batch-major, groups
        in ascending order), as Point-MAE does.
        """
        B, G, K, _ = neighborhood.shape
        C = self.trans_dim
        if not bool((mask.sum(dim=1) == self.num_mask).all()):
            raise ValueError(f"every cloud must have exactly {self.num_mask} masked groups")
        enc = self.MAE_encoder
        tokens = enc.encoder(neighborhood)  # [B, G, C]: every group passes the patch encoder
        x_vis = tokens[~mask].reshape(B, -1, C)
        pos = enc.pos_embed(center[~mask].reshape(B, -1, 3))
        x_vis = enc.norm(enc.blocks(x_vis, pos))  # [B, V, C]

        pos_vis = self.decoder_pos_embed(center[~mask]).reshape(B, -1, C)
        pos_mask = self.decoder_pos_embed(center[mask]).reshape(B, -1, C)
        M = pos_mask.shape[1]
        x = torch.cat([x_vis, self.mask_token.expand(B, M, -1)], dim=1)
        pos_full = torch.cat([pos_vis, pos_mask], dim=1)
        for blk in self.MAE_decoder.blocks:
            x = blk(x + pos_full)
        x = self.MAE_decoder.norm(x[:, -M:])  # [B, M, C]

        pred = self.increase_dim(x.transpose(1, 2)).transpose(1, 2)  # [B, M, 3K]
        pred = pred.reshape(B * M, K, 3)
        target = neighborhood[mask].reshape(B * M, K, 3)
        return pred, target

    def loss_from_groups(self, neighborhood, center, mask) -> torch.Tensor:
        pred, target = self.forward_from_groups(neighborhood, center, mask)
        return chamfer_l2(pred, target)

    def forward(self, pts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``pts`` [B, N, 3] and a mask [B, G] -> the ``cdl2`` loss (scalar)."""
        neighborhood, center = self.group(pts)
        return self.loss_from_groups(neighborhood, center, mask)
