"""Independent PyTorch reference implementation of the DAPT classifier.

Written from ``/work/shared/SPEC.md`` (sections 1, 2 and 4). It is the numerical oracle that the
Flax model (``dapt_jax``), the checkpoint converter (``convert/``) and the benchmarks are compared
against, so it favours plain, explicit arithmetic over speed.

Shapes: B = batch, N = points per cloud, G = groups (patch tokens), K = points per group,
C = width (``trans_dim``), r = adapter rank, D = depth (number of blocks).

``TorchDAPT().state_dict()`` has exactly the key layout of the public DAPT release (see the
right-hand column of ``docs/architecture.md``), so a released fine-tuned ``base_model`` dict loads
into it with ``load_state_dict(..., strict=True)``.

Public API
----------
- ``torch_fps(xyz, num) -> LongTensor[B, num]``
- ``torch_knn_group(xyz, centers, k) -> (neighborhood [B, G, K, 3], idx [B, G, K])``
- ``torch_group(xyz, num_group, group_size) -> (neighborhood [B, G, K, 3], center [B, G, 3])``
- ``TorchDAPT(...)`` with ``forward(pts)``, ``forward_from_groups(neighborhood, center)``,
  ``forward_features(neighborhood, center)``, ``group(pts)``
- ``trainable_names(model)``, ``set_release_trainable(model)``, ``count_params(model, trainable_only)``
- ``VARIANTS``: the four SPEC §4 fine-tuning configurations as constructor keyword dicts.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "torch_fps",
    "torch_knn_group",
    "torch_group",
    "DropPath",
    "Attention",
    "Mlp",
    "DynamicAdapter",
    "Block",
    "TransformerEncoder",
    "PatchEncoder",
    "TorchDAPT",
    "trainable_names",
    "set_release_trainable",
    "count_params",
    "HEAD_TOKEN_ORDER",
    "VARIANTS",
]

#: Canonical order of the head-input pieces (cls token, prompt mean, patch max).
HEAD_TOKEN_ORDER: Tuple[str, ...] = ("cls", "prompt", "patch")

#: FPS never picks (after the first centre) a point whose squared norm is <= this.
FPS_MIN_SQ_NORM = 1e-3
#: Initial running minimum squared distance in FPS.
FPS_INIT_DIST = 1e10


# --------------------------------------------------------------------------------------------
# Grouping: farthest point sampling + kNN (no weights)
# --------------------------------------------------------------------------------------------


def _sq_dist_to(xyz: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distance ``dx*dx + dy*dy + dz*dz`` (summed in that order).

    Args:
      xyz: [..., M, 3] points.
      c: [..., 1, 3] (or broadcastable) reference points.
    Returns:
      [..., M] squared distances.
    """
    d = xyz - c
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
    return dx * dx + dy * dy + dz * dz


@torch.no_grad()
def torch_fps(xyz: torch.Tensor, num: int) -> torch.Tensor:
    """Farthest point sampling, with the semantics of the release's CUDA kernel (SPEC §1).

    - the first centre is index 0 (whatever its norm);
    - every point keeps a running minimum squared distance to the chosen set, starting at 1e10;
    - the next centre is the argmax of that distance over the *eligible* points (squared norm
      ``x*x + y*y + z*z > 1e-3``), first index on ties; ineligible points are never chosen after
      the first centre (their running distance is never updated); if no point is eligible the
      next centre is index 0.

    Vectorised over batch and points; a Python loop runs over the ``num`` iterations only.

    Args:
      xyz: [B, N, 3] float tensor.
      num: number of centres to pick.
    Returns:
      LongTensor [B, num] of point indices.
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"xyz must be [B, N, 3], got {tuple(xyz.shape)}")
    B, N, _ = xyz.shape
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    eligible = (x * x + y * y + z * z) > FPS_MIN_SQ_NORM  # [B, N]
    dist = torch.full((B, N), FPS_INIT_DIST, dtype=xyz.dtype, device=xyz.device)
    neg_one = torch.full_like(dist, -1.0)
    out = torch.zeros((B, num), dtype=torch.long, device=xyz.device)
    batch = torch.arange(B, device=xyz.device)
    far = torch.zeros((B,), dtype=torch.long, device=xyz.device)
    for i in range(num):
        out[:, i] = far
        if i == num - 1:
            break
        c = xyz[batch, far].unsqueeze(1)  # [B, 1, 3]
        d = _sq_dist_to(xyz, c)  # [B, N]
        dist = torch.where(eligible, torch.minimum(dist, d), dist)
        # Ineligible points score -1, below any real distance; all -1 -> argmax gives index 0.
        # torch.argmax returns the first maximal index on ties.
        far = torch.argmax(torch.where(eligible, dist, neg_one), dim=1)
    return out


@torch.no_grad()
def _knn_indices(xyz: torch.Tensor, centers: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, G, k] of the k nearest points of ``xyz`` [B, N, 3] to each centre [B, G, 3].

    Distances are squared Euclidean (dx*dx + dy*dy + dz*dz from explicit differences); neighbours
    are sorted nearest first, ties broken by the lower point index (stable sort).
    """
    d = _sq_dist_to(xyz.unsqueeze(1), centers.unsqueeze(2))  # [B, G, N]
    order = torch.sort(d, dim=-1, stable=True).indices
    return order[..., :k]


def torch_knn_group(
    xyz: torch.Tensor, centers: torch.Tensor, k: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Group the K nearest points around each centre (SPEC §1 "groups").

    Args:
      xyz: [B, N, 3] points.
      centers: [B, G, 3] centres (normally points of ``xyz`` chosen by FPS, so each centre is its
        own nearest neighbour at distance 0).
      k: K, points per group.
    Returns:
      neighborhood: [B, G, K, 3], neighbour coordinates minus their centre (differentiable in
        ``xyz`` and ``centers``; the index selection itself is not).
      idx: LongTensor [B, G, K], indices into N, nearest first (ties: lower index first).
    """
    if k > xyz.shape[1]:
        raise ValueError(f"group size {k} exceeds number of points {xyz.shape[1]}")
    idx = _knn_indices(xyz, centers, k)
    B, G, K = idx.shape
    batch = torch.arange(B, device=xyz.device).view(B, 1, 1)
    neighborhood = xyz[batch, idx] - centers.unsqueeze(2)  # [B, G, K, 3]
    return neighborhood, idx


def torch_group(
    xyz: torch.Tensor, num_group: int, group_size: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """FPS + kNN: ``xyz`` [B, N, 3] -> (neighborhood [B, G, K, 3], center [B, G, 3])."""
    fps_idx = torch_fps(xyz, num_group)  # [B, G]
    batch = torch.arange(xyz.shape[0], device=xyz.device).view(-1, 1)
    center = xyz[batch, fps_idx]  # [B, G, 3]
    neighborhood, _ = torch_knn_group(xyz, center, group_size)
    return neighborhood, center


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


def _new_tfts(dim: int) -> Tuple[nn.Parameter, nn.Parameter]:
    """A scale-shift pair: gamma ~ N(1, 0.02), beta ~ N(0, 0.02), both [dim]."""
    gamma = nn.Parameter(torch.empty(dim))
    beta = nn.Parameter(torch.empty(dim))
    nn.init.normal_(gamma, mean=1.0, std=0.02)
    nn.init.normal_(beta, mean=0.0, std=0.02)
    return gamma, beta


def _tfts(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per-channel ``x * gamma + beta`` on the last axis ([..., dim])."""
    return x * gamma + beta


class DropPath(nn.Module):
    """Stochastic depth per sample: in training, each sample's residual branch is kept with
    probability 1 - rate and then divided by (1 - rate); identity in eval or when rate == 0.

    ``forward(x [B, ...]) -> [B, ...]``.
    """

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        if keep > 0.0:
            mask = mask / keep
        return x * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Attention(nn.Module):
    """Multi-head self-attention with the two DAPT scale-shifts.

    qkv: Linear C -> 3C (no bias), then scale-shift ``tfts_{gamma,beta}_1`` [3C];
    softmax(q k^T * head_dim**-0.5) v; proj: Linear C -> C, then scale-shift ``tfts_*_2`` [C].
    ``forward(x [B, T, C]) -> [B, T, C]``.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.tfts_gamma_1, self.tfts_beta_1 = _new_tfts(dim * 3)
        self.tfts_gamma_2, self.tfts_beta_2 = _new_tfts(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = _tfts(self.qkv(x), self.tfts_gamma_1, self.tfts_beta_1)  # [B, T, 3C]
        qkv = qkv.reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, T, hd]
        attn = (q @ k.transpose(-2, -1)) * self.scale  # [B, H, T, T]
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, T, C)
        out = self.proj(out)
        return _tfts(out, self.tfts_gamma_2, self.tfts_beta_2)


class Mlp(nn.Module):
    """fc1 (C -> hidden), scale-shift ``tfts_*_1`` [hidden], exact GELU, fc2 (hidden -> C),
    scale-shift ``tfts_*_2`` [C]. ``forward(x [B, T, C]) -> [B, T, C]``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.tfts_gamma_1, self.tfts_beta_1 = _new_tfts(hidden)
        self.tfts_gamma_2, self.tfts_beta_2 = _new_tfts(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _tfts(self.fc1(x), self.tfts_gamma_1, self.tfts_beta_1)
        h = self.act(h)
        return _tfts(self.fc2(h), self.tfts_gamma_2, self.tfts_beta_2)


class DynamicAdapter(nn.Module):
    """DAPT's Dynamic Adapter (release name ``Adapter_MLP``).

    z = LayerNorm(y); s = ReLU(scale(z)) [.., 1]; d = Dropout(GELU(down_proj(z))) [.., r];
    a = up_proj(d) * s.  Init: down/scale weights Kaiming-uniform(a=sqrt(5)), up weight zero,
    all three biases zero (the adapter starts as the zero function).
    ``forward(y [B, T, C]) -> a [B, T, C]``.
    """

    def __init__(self, dim: int, rank: int, dropout: float = 0.0):
        super().__init__()
        self.adapter_layer_norm_before = nn.LayerNorm(dim, eps=1e-5)
        self.scale = nn.Linear(dim, 1)
        self.down_proj = nn.Linear(dim, rank)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.up_proj = nn.Linear(rank, dim)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down_proj.bias)
            nn.init.kaiming_uniform_(self.scale.weight, a=math.sqrt(5))
            nn.init.zeros_(self.scale.bias)
            nn.init.zeros_(self.up_proj.weight)
            nn.init.zeros_(self.up_proj.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z = self.adapter_layer_norm_before(y)
        s = F.relu(self.scale(z))  # [B, T, 1]
        d = self.dropout(self.act(self.down_proj(z)))  # [B, T, r]
        return self.up_proj(d) * s


class Block(nn.Module):
    """One DAPT block. ``forward(x [B, T, C]) -> [B, T + 1, C]``.

    1. x = x + DropPath(Attn(ss1(norm1(x))))
    2. y = ss2(norm2(x)); a = Adapter(y)
    3. x = x + DropPath(Mlp(y) + a)          (independent per-sample mask from step 1)
    4. p = ss3(mean over all T tokens of GELU(a))   [B, 1, C]
    5. x = [x[:, :1], p, x[:, 1:]]
    (ssN = scale-shift ``tfts_{gamma,beta}_N``.)
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        rank: int = 64,
        drop_path: float = 0.0,
        drop_adapter: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.Adapter_MLP = DynamicAdapter(dim, rank, drop_adapter)
        self.drop_path1 = DropPath(drop_path)
        self.drop_path2 = DropPath(drop_path)
        self.prompt_act = nn.GELU()
        self.tfts_gamma_1, self.tfts_beta_1 = _new_tfts(dim)
        self.tfts_gamma_2, self.tfts_beta_2 = _new_tfts(dim)
        self.tfts_gamma_3, self.tfts_beta_3 = _new_tfts(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(_tfts(self.norm1(x), self.tfts_gamma_1, self.tfts_beta_1)))
        y = _tfts(self.norm2(x), self.tfts_gamma_2, self.tfts_beta_2)
        a = self.Adapter_MLP(y)
        x = x + self.drop_path2(self.mlp(y) + a)
        p = self.prompt_act(a).mean(dim=1, keepdim=True)  # [B, 1, C]
        p = _tfts(p, self.tfts_gamma_3, self.tfts_beta_3)
        return torch.cat([x[:, :1], p, x[:, 1:]], dim=1)


class TransformerEncoder(nn.Module):
    """``blocks`` (ModuleList of D Blocks, drop-path rates linspace(0, drop_path_rate, D)).
    ``forward(x [B, T, C]) -> [B, T + D, C]`` ordered [cls, p_D, ..., p_1, rest...]."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        rank: int,
        drop_path_rate: float,
        drop_adapter_rate: float,
    ):
        super().__init__()
        rates = [r.item() for r in torch.linspace(0, drop_path_rate, depth)]
        self.blocks = nn.ModuleList(
            [
                Block(dim, num_heads, mlp_ratio, rank, drop_path=rates[i], drop_adapter=drop_adapter_rate)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class PatchEncoder(nn.Module):
    """Point-MAE mini-PointNet, shared over groups; Conv1d(kernel 1) layers as in the release.

    first_conv: Conv1d 3->128, BN(128), ReLU, Conv1d 128->256; max over K -> 256 global;
    concat [global broadcast, per-point] -> 512;
    second_conv: Conv1d 512->512, BN(512), ReLU, Conv1d 512->C_out; max over K.
    BatchNorm statistics reduce over B*G*K values per channel.
    ``forward(neighborhood [B, G, K, 3]) -> tokens [B, G, C_out]``.
    """

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, 128, 1),
            nn.BatchNorm1d(128, eps=1e-5, momentum=0.1),
            nn.ReLU(),
            nn.Conv1d(128, 256, 1),
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(512, 512, 1),
            nn.BatchNorm1d(512, eps=1e-5, momentum=0.1),
            nn.ReLU(),
            nn.Conv1d(512, out_dim, 1),
        )

    def forward(self, neighborhood: torch.Tensor) -> torch.Tensor:
        B, G, K, _ = neighborhood.shape
        h = neighborhood.reshape(B * G, K, 3).transpose(1, 2)  # [BG, 3, K]
        h = self.first_conv(h)  # [BG, 256, K]
        g = h.max(dim=2, keepdim=True).values  # [BG, 256, 1]
        h = torch.cat([g.expand(-1, -1, K), h], dim=1)  # [BG, 512, K]
        h = self.second_conv(h)  # [BG, C_out, K]
        return h.max(dim=2).values.reshape(B, G, self.out_dim)


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------


def _canonical_head_tokens(head_tokens: Iterable[str]) -> Tuple[str, ...]:
    given = tuple(head_tokens)
    unknown = [t for t in given if t not in HEAD_TOKEN_ORDER]
    if unknown or not given or len(set(given)) != len(given):
        raise ValueError(
            f"head_tokens must be a non-empty subset (no repeats) of {HEAD_TOKEN_ORDER}, got {given}"
        )
    return tuple(t for t in HEAD_TOKEN_ORDER if t in given)


class TorchDAPT(nn.Module):
    """DAPT classifier on the Point-MAE ViT backbone, release key layout.

    Args:
      trans_dim: C.  depth: D blocks.  num_heads: attention heads.  mlp_ratio: MLP hidden = C*ratio.
      encoder_dims: patch-encoder output width; must equal trans_dim (the release has no
        projection between them); None -> trans_dim.
      num_group: G (FPS centres).  group_size: K (kNN size).  rank: adapter bottleneck r.
      num_classes: logits width.  drop_path_rate: max stochastic-depth rate (linear over blocks).
      drop_adapter_rate: dropout after the adapter's GELU.
      head_tokens: non-empty subset of ('cls', 'prompt', 'patch'); the head input is the
        concatenation, in that canonical order, of the cls token, the mean of the D prompt tokens
        and the max over the G patch tokens, all taken from the final normed sequence.

    The model is in training mode after construction (``nn.Module`` default): batch statistics
    in every BatchNorm and running averages updated, as the release fine-tunes. All parameters
    have ``requires_grad=True``; call ``set_release_trainable`` for the release's trainable set.
    """

    def __init__(
        self,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        encoder_dims: int | None = None,
        num_group: int = 128,
        group_size: int = 32,
        rank: int = 64,
        num_classes: int = 15,
        drop_path_rate: float = 0.0,
        drop_adapter_rate: float = 0.0,
        head_tokens: Sequence[str] = ("cls", "prompt", "patch"),
    ):
        super().__init__()
        encoder_dims = trans_dim if encoder_dims is None else encoder_dims
        if encoder_dims != trans_dim:
            raise ValueError(
                f"encoder_dims ({encoder_dims}) must equal trans_dim ({trans_dim}): the release "
                "feeds the patch encoder's output straight into the transformer"
            )
        self.head_tokens = _canonical_head_tokens(head_tokens)
        if "prompt" in self.head_tokens and depth < 1:
            raise ValueError("head token 'prompt' needs depth >= 1")
        self.trans_dim = trans_dim
        self.depth = depth
        self.num_group = num_group
        self.group_size = group_size
        self.num_classes = num_classes

        self.encoder = PatchEncoder(encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        self.blocks = TransformerEncoder(
            trans_dim, depth, num_heads, mlp_ratio, rank, drop_path_rate, drop_adapter_rate
        )
        self.norm = nn.LayerNorm(trans_dim, eps=1e-5)
        head_in = trans_dim * len(self.head_tokens)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(head_in, 256),
            nn.BatchNorm1d(256, eps=1e-5, momentum=0.1),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, 256),
            nn.BatchNorm1d(256, eps=1e-5, momentum=0.1),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(256, num_classes),
        )
        # Patch-token scale-shift (after the encoder) and final one (after the last LayerNorm).
        self.tfts_gamma_1, self.tfts_beta_1 = _new_tfts(trans_dim)
        self.tfts_gamma_2, self.tfts_beta_2 = _new_tfts(trans_dim)
        with torch.no_grad():
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            nn.init.trunc_normal_(self.cls_pos, std=0.02)

    # -- pieces ---------------------------------------------------------------------------

    def group(self, pts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``pts`` [B, N, 3] -> (neighborhood [B, G, K, 3], center [B, G, 3]) by FPS + kNN."""
        return torch_group(pts, self.num_group, self.group_size)

    def forward_features(self, neighborhood: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """Encoder + transformer + final norm and scale-shift.

        Args:
          neighborhood: [B, G, K, 3] centre-relative groups.  center: [B, G, 3].
        Returns:
          [B, 1 + D + G, C], ordered [cls, p_D, ..., p_1, patch_1..patch_G].
        """
        tokens = self.encoder(neighborhood)  # [B, G, C]
        tokens = _tfts(tokens, self.tfts_gamma_1, self.tfts_beta_1)
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)  # [B, 1+G, C]
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), self.pos_embed(center)], dim=1)
        x = x + pos  # position added once, before the first block (release behaviour)
        x = self.blocks(x)  # [B, 1+D+G, C]
        return _tfts(self.norm(x), self.tfts_gamma_2, self.tfts_beta_2)

    def head_input(self, x: torch.Tensor, num_patches: int) -> torch.Tensor:
        """Select/pool head input from the final sequence ``x`` [B, 1+D+G, C] -> [B, C * n_pieces]."""
        parts: List[torch.Tensor] = []
        if "cls" in self.head_tokens:
            parts.append(x[:, 0])
        if "prompt" in self.head_tokens:
            parts.append(x[:, 1 : x.shape[1] - num_patches].mean(dim=1))
        if "patch" in self.head_tokens:
            parts.append(x[:, x.shape[1] - num_patches :].max(dim=1).values)
        return torch.cat(parts, dim=-1)

    def forward_from_groups(self, neighborhood: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] from precomputed groups (bypasses FPS/kNN).

        Args:
          neighborhood: [B, G, K, 3] centre-relative groups.  center: [B, G, 3].
        """
        x = self.forward_features(neighborhood, center)
        return self.cls_head_finetune(self.head_input(x, center.shape[1]))

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        """``pts`` [B, N, 3] -> logits [B, num_classes] (FPS G centres, kNN K, then the network)."""
        neighborhood, center = self.group(pts)
        return self.forward_from_groups(neighborhood, center)


# --------------------------------------------------------------------------------------------
# Trainable set and counts
# --------------------------------------------------------------------------------------------

_TRAINABLE_MARKERS = ("cls", "tfts", "Adapter")


def _is_release_trainable(name: str) -> bool:
    return any(m in name for m in _TRAINABLE_MARKERS)


def trainable_names(model: nn.Module) -> List[str]:
    """Names of the release's trainable parameters: those containing 'cls', 'tfts' or 'Adapter'
    (cls_token, cls_pos, cls_head_finetune.*, every tfts_* pair, every Adapter_MLP.*).
    Order follows ``model.named_parameters()``."""
    return [n for n, _ in model.named_parameters() if _is_release_trainable(n)]


def set_release_trainable(model: nn.Module) -> nn.Module:
    """Set ``requires_grad`` True on the release's trainable set, False elsewhere. Returns model.
    (BatchNorm buffers are unaffected: the frozen encoder's BN still updates running stats in
    training mode, as in the release.)"""
    for n, p in model.named_parameters():
        p.requires_grad_(_is_release_trainable(n))
    return model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (buffers excluded); ``trainable_only`` uses the release set
    by name (independent of current ``requires_grad`` flags)."""
    return sum(
        p.numel() for n, p in model.named_parameters() if not trainable_only or _is_release_trainable(n)
    )


#: The four SPEC §4 fine-tuning configurations (constructor kwargs for TorchDAPT).
VARIANTS: Dict[str, Dict[str, object]] = {
    "obj_bg": dict(
        num_group=128, group_size=32, rank=64, num_classes=15, drop_path_rate=0.3,
        drop_adapter_rate=0.5, head_tokens=("cls", "prompt", "patch"),
    ),
    "obj_only": dict(
        num_group=128, group_size=32, rank=64, num_classes=15, drop_path_rate=0.1,
        drop_adapter_rate=0.0, head_tokens=("cls", "prompt"),
    ),
    "pb_t50_rs": dict(
        num_group=128, group_size=32, rank=64, num_classes=15, drop_path_rate=0.3,
        drop_adapter_rate=0.2, head_tokens=("cls", "prompt", "patch"),
    ),
    "modelnet40": dict(
        num_group=64, group_size=32, rank=72, num_classes=40, drop_path_rate=0.1,
        drop_adapter_rate=0.0, head_tokens=("cls", "patch"),
    ),
}
