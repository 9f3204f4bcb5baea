"""Independent PyTorch reference of PointGST (Point Cloud Spectral Adapter in every block),
written from /work/shared/SPEC.md §9 and the PointGST paper.

The numerical oracle for dapt_jax/models/peft/pointgst.py (tests/test_peft_parity.py). State-dict keys
follow the release's layout (`blocks.blocks.{i}.gft_adapter.*`).

The two determinism choices dapt-jax documents are made here too, so both sides compute the same
function: eigenvector signs are canonicalised (largest-|.| component positive), and centre
distances are exact differences (self-distance exactly 0) rather than torch.cdist's
matrix-product form. The z-order key is computed bit by bit on the full 48-bit integer (the
JAX side splits it into two 24-bit halves).

Public API: ``graph_basis(points)``, ``zorder_key(centers)``, ``spectral_bases(center, local)``,
``PCSA``, ``PGSTBlock``, ``PointGSTClassifier`` (forward, forward_from_groups, head_input,
trainable_names).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests import torch_reference_idpt as M


def laplacian(points: torch.Tensor) -> torch.Tensor:
    """points [M, n, 3] → [M, n, n]: I − D^-½ W D^-½, W_ij = 1 / (d_ij / d_min + δ_ij),
    D = rowsum(W) + 1e-6, d_min the smallest positive distance over all M graphs."""
    n = points.shape[1]
    d = ((points[:, :, None, :] - points[:, None, :, :]) ** 2).sum(-1).sqrt()
    d_min = d[d > 0].min()
    eye = torch.eye(n, dtype=points.dtype)
    w = 1.0 / (d / d_min + eye)
    deg = torch.diag_embed(torch.rsqrt(w.sum(-1) + 1e-6))
    return eye - deg @ w @ deg


def graph_basis(points: torch.Tensor) -> torch.Tensor:
    """points [M, n, 3] → [M, n, n]: the Laplacian's eigenvectors (columns, ascending
    eigenvalues), each column's largest-|.| entry made positive."""
    _, vec = torch.linalg.eigh(laplacian(points))
    lead = vec.gather(1, vec.abs().argmax(dim=1, keepdim=True))          # [M, 1, n]
    return vec * torch.where(lead < 0, -1.0, 1.0).to(vec.dtype)


def zorder_key(centers: torch.Tensor) -> torch.Tensor:
    """centers [B, G, 3] → int64 keys: bit i of (y, x, z) at 3i+2, 3i+1, 3i, where each coordinate
    is trunc(100·c) as 16-bit two's complement."""
    q = torch.trunc(centers * 100.0).long() & 0xFFFF
    key = torch.zeros(q.shape[:-1], dtype=torch.long)
    for i in range(16):
        for coord, offset in ((1, 2), (0, 1), (2, 0)):
            key |= ((q[..., coord] >> i) & 1) << (3 * i + offset)
    return key


def spectral_bases(center: torch.Tensor, local: int):
    """(U [B,G,G], U_local [B,G/local,local,local], order [B,G], inverse [B,G])."""
    b, g, _ = center.shape
    u = graph_basis(center)
    order = torch.argsort(zorder_key(center), dim=-1, stable=True)
    inverse = torch.argsort(order, dim=-1)
    runs = torch.gather(center, 1, order[..., None].expand(-1, -1, 3))
    u_local = graph_basis(runs.reshape(b * (g // local), local, 3))
    return u, u_local.reshape(b, g // local, local, local), order, inverse


class PCSA(nn.Module):
    """PCSA, release layout (norm_ly1, norm_ly2, down, up, adapt1)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.rank = rank
        self.norm_ly1 = nn.LayerNorm(rank)
        self.norm_ly2 = nn.LayerNorm(rank)
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        self.adapt1 = nn.Linear(rank, rank)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.down.weight)
            for p in (self.up.weight, self.up.bias, self.adapt1.weight, self.adapt1.bias):
                nn.init.zeros_(p)

    def branch(self, s, norm):
        return s + F.silu(self.adapt1(norm(s)))

    def forward(self, x, bases):
        u, u_local, order, inverse = bases
        b, _, _ = x.shape
        g = u.shape[-1]
        runs, local = u_local.shape[1], u_local.shape[2]
        h = self.down(x)
        p = h[:, -g:]
        glob = u.transpose(-1, -2) @ self.branch(u @ p, self.norm_ly1)
        pr = torch.gather(p, 1, order[..., None].expand(-1, -1, self.rank))
        pr = pr.reshape(b, runs, local, self.rank)
        loc = u_local.transpose(-1, -2) @ self.branch(u_local @ pr, self.norm_ly2)
        loc = torch.gather(loc.reshape(b, g, self.rank), 1,
                           inverse[..., None].expand(-1, -1, self.rank))
        a = F.silu(h)
        a = torch.cat([a[:, :-g], a[:, -g:] + glob + loc], dim=1)
        return self.up(a)


class PGSTBlock(M.PlainBlock):
    """x + DropPath(Attn(norm1 x)) → t = PCSA(x) → x + DropPath(Mlp(norm2 x)) + t."""

    def __init__(self, dim, num_heads, mlp_ratio, drop_path=0.0, rank=36):
        super().__init__(dim, num_heads, mlp_ratio, drop_path)
        self.gft_adapter = PCSA(dim, rank)

    def forward(self, x, bases):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        t = self.gft_adapter(x, bases)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x + t


class PointGSTClassifier(M.PointMAEClassifier):
    """Point-MAE's classifier with PCSA in every block (pos before every block)."""

    def __init__(self, *args, rank: int = 36, local: int = 32, **kwargs):
        self._rank = rank
        self.local = local
        super().__init__(*args, **kwargs)

    def make_blocks(self, dim, depth, num_heads, mlp_ratio, rates):
        return M._Blocks([PGSTBlock(dim, num_heads, mlp_ratio, r, self._rank) for r in rates])

    def run_blocks(self, x, pos, center):
        bases = spectral_bases(center.detach(), self.local)
        for blk in self.blocks.blocks:
            x = blk(x + pos, bases)
        return x

    def trainable_names(self) -> List[str]:
        """The release's `part: adapt`: names containing 'adapt' or 'cls'."""
        return [n for n, _ in self.named_parameters() if 'adapt' in n or 'cls' in n]
