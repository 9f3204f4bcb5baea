"""PointGST: the Point Cloud Spectral Adapter (PCSA) in every block (SPEC §9, GST release).

Spectral bases (no parameters; computed once per cloud from the FPS centres, no gradient):
  - global: U [G, G], the eigenvectors (ascending eigenvalues) of the normalised Laplacian
    L = I − D^-½ W D^-½ of the centres' graph, W_ij = 1 / (d_ij / d_min + δ_ij), D = row sums of
    W + 1e-6, d_min = the smallest positive centre distance over the whole batch (over all
    devices under pmap / shard_map, so results do not depend on the device count; padded
    rows of an evaluation batch left out, so they do not depend on the padding either);
  - local: the centres sorted by their z-order key (of centre × 100), cut into G / local runs of
    `local` consecutive centres; one basis per run, as above (d_min over every run of the batch).

PCSA on a block's tokens x [B, T, C] (taken after the attention residual; its output is added
after the MLP residual, unscaled):
  h = down(x) [B, T, r];  a = SiLU(h) for every token;
  on the patch tokens' pre-activation p = h[:, -G:]:
    global  s = U p;        s = s + SiLU(adapt1(LN1(s)));  g = Uᵀ s
    local   s = U_l p_l;    s = s + SiLU(adapt1(LN2(s)));  l = U_lᵀ s   (per run, back in order)
  a[:, -G:] += g + l;  return up(a).
`adapt1` is shared by both branches. Init: down Xavier-uniform (bias PyTorch's default), up and
adapt1 zero (so the adapter starts as the zero function), LayerNorms 1/0.

As released (GST:models/PGST.py:39), U is applied un-transposed (`U p`, U's columns being the
eigenvectors) and undone with Uᵀ; kept, since the published numbers came from it.

Deviations from the release, both forced by determinism:
  - Eigenvector signs: an eigensolver may return any eigenvector or its negative, and PCSA's
    nonlinearity makes the result depend on the choice (the release's signs are whatever its
    GPU solver gives). Each eigenvector is flipped so that its largest-magnitude component (the
    first, on ties) is positive. Within a repeated eigenvalue the basis is not unique at all;
    it is whatever the solver returns (generic clouds have distinct eigenvalues).
  - Distances: exact pairwise differences, so the self-distance is exactly 0. The release uses
    torch.cdist, whose matrix-product form (for more than 25 points) leaves rounding noise on the
    diagonal (about 1e-3 in float32) that can become its d_min; d_min here is the smallest true
    positive distance. Two distinct centres at the same place (a zero off-diagonal distance, an
    infinite weight in the release) count as the closest pair (weight 1).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers
from dapt_jax.models import release_keys as rk
from dapt_jax.models import transformer
from dapt_jax.models.peft import base

Array = jax.Array

DEGREE_EPS = 1e-6
ZORDER_SCALE = 100.0   # centres are quantised to 1/100 before the z-order key
ZORDER_BITS = 16       # each coordinate's 16-bit two's complement (the release's key depth)


class Bases(NamedTuple):
  """What every PCSA of a forward pass shares (all without gradient)."""
  global_basis: Array   # [B, G, G]
  local_basis: Array    # [B, G / local, local, local]
  order: Array          # [B, G] int32: centres in z-order (sorted position → centre index)
  inverse: Array        # [B, G] int32: centre index → sorted position


def _canonical_signs(vectors: Array) -> Array:
  """Flips each eigenvector (column) so its largest-|.| component (first on ties) is positive."""
  idx = jnp.argmax(jnp.abs(vectors), axis=-2)                               # [..., n]
  lead = jnp.take_along_axis(vectors, idx[..., None, :], axis=-2)           # [..., 1, n]
  return vectors * jnp.where(lead < 0, -1.0, 1.0).astype(vectors.dtype)


def _min_positive(d: Array, axis_name: Optional[str], valid: Optional[Array]) -> Array:
  """The smallest positive entry of d [M, n, n] over the graphs `valid` [M] marks (all when
  None) and every device; 1 when there is none."""
  positive = d > 0
  if valid is not None:
    positive = positive & valid[:, None, None]
  m = jnp.min(jnp.where(positive, d, jnp.inf))
  if axis_name is not None:
    m = jax.lax.pmin(m, axis_name)
  return jnp.where(jnp.isfinite(m), m, 1.0)


def graph_basis(points: Array, axis_name: Optional[str] = None,
                valid: Optional[Array] = None) -> Array:
  """points: [M, n, 3] → [M, n, n]: each graph's Laplacian eigenvectors as columns, ascending
  eigenvalues, signs canonicalised; d_min over the M graphs `valid` [M] marks (padding left
  out; all when None) and every device."""
  n = points.shape[-2]
  diff = points[:, :, None, :] - points[:, None, :, :]
  d = jnp.sqrt(jnp.sum(diff * diff, axis=-1))                               # [M, n, n]
  d_min = _min_positive(d, axis_name, valid)
  eye = jnp.eye(n, dtype=points.dtype)
  d = jnp.where((d > 0) | (eye > 0), d, d_min)   # coincident distinct centres: closest pair
  w = 1.0 / (d / d_min + eye)
  inv_sqrt = jax.lax.rsqrt(jnp.sum(w, axis=-1) + DEGREE_EPS)
  lap = eye - inv_sqrt[:, :, None] * w * inv_sqrt[:, None, :]
  _, vectors = jnp.linalg.eigh(lap)
  return _canonical_signs(vectors)


def _spread_bits(v: Array) -> Array:
  """The 8 low bits of v, bit i moved to bit 3i (int32)."""
  out = jnp.zeros_like(v)
  for i in range(8):
    out = out | (((v >> i) & 1) << (3 * i))
  return out


def zorder_keys(centers: Array) -> tuple[Array, Array]:
  """The release's z-order key of centre × 100 as (high 24 bits, low 24 bits), int32 each.

  Coordinates are truncated toward zero and taken as 16-bit two's complement; the key
  interleaves their bits as (y, x, z) from the most significant end of each 3-bit group, which
  is what the release's `xyz2key(c[..., 1], c[..., 0], c[..., 2])` computes.
  """
  q = jnp.trunc(centers * ZORDER_SCALE).astype(jnp.int32) & ((1 << ZORDER_BITS) - 1)
  x, y, z = q[..., 0], q[..., 1], q[..., 2]

  def key(shift):
    return ((_spread_bits((y >> shift) & 255) << 2) | (_spread_bits((x >> shift) & 255) << 1)
            | _spread_bits((z >> shift) & 255))

  return key(8), key(0)


def zorder(centers: Array) -> tuple[Array, Array]:
  """centers [B, G, 3] → (order, inverse) [B, G] int32: a stable sort by the z-order key."""
  hi, lo = zorder_keys(centers)
  iota = jnp.broadcast_to(jnp.arange(centers.shape[1], dtype=jnp.int32), hi.shape)
  _, _, order = jax.lax.sort((hi, lo, iota), dimension=-1, is_stable=True, num_keys=2)
  inverse = jnp.argsort(order, axis=-1).astype(jnp.int32)
  return order, inverse


def _gather_rows(x: Array, idx: Array) -> Array:
  """x [B, G, D], idx [B, G] → x[b, idx[b]]."""
  return jnp.take_along_axis(x, idx[..., None], axis=1)


def spectral_bases(centers: Array, local: int, axis_name: Optional[str] = None,
                   valid: Optional[Array] = None) -> Bases:
  """centers [B, G, 3] → the bases every PCSA of the forward pass uses (no gradient).

  `valid` [B] bool marks the real clouds of a padded evaluation batch: d_min is taken over
  those only, so a cloud's logits do not depend on the padding beside it.
  """
  centers = jax.lax.stop_gradient(centers)
  b, g, _ = centers.shape
  global_basis = graph_basis(centers, axis_name, valid)
  order, inverse = zorder(centers)
  runs = _gather_rows(centers, order).reshape(b * (g // local), local, 3)
  run_valid = None if valid is None else jnp.repeat(valid.astype(bool), g // local)
  local_basis = graph_basis(runs, axis_name, run_valid).reshape(b, g // local, local, local)
  return Bases(global_basis, local_basis, order, inverse)


class PCSA(nn.Module):
  """The spectral adapter of one block: x [B, T, C] (patch tokens last) → [B, T, C]."""
  rank: int = 36
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, bases: Bases) -> Array:
    b, _, c = x.shape
    u, u_local = bases.global_basis.astype(self.dtype), bases.local_basis.astype(self.dtype)
    g = u.shape[-1]
    runs, local = u_local.shape[1], u_local.shape[2]
    h = nn.Dense(self.rank, kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=layers.torch_linear_bias_init(c), dtype=self.dtype, name='down')(x)
    adapt = nn.Dense(self.rank, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                     name='adapt1')

    def spectral(s, norm_name):
      return s + nn.silu(adapt(layers.layer_norm(norm_name, self.dtype)(s)))

    p = h[:, -g:]                                                # pre-activation, patches
    s = spectral(jnp.einsum('bij,bjr->bir', u, p), 'norm1')
    glob = jnp.einsum('bji,bjr->bir', u, s)                      # Uᵀ s
    p_runs = _gather_rows(p, bases.order).reshape(b, runs, local, self.rank)
    s = spectral(jnp.einsum('bnij,bnjr->bnir', u_local, p_runs), 'norm2')
    loc = jnp.einsum('bnji,bnjr->bnir', u_local, s).reshape(b, g, self.rank)
    loc = _gather_rows(loc, bases.inverse)
    a = nn.silu(h)
    a = jnp.concatenate([a[:, :-g], a[:, -g:] + glob + loc], axis=1)
    return nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype, name='up')(a)


@dataclasses.dataclass(frozen=True)
class Additions(transformer.Additions):
  """PCSA reads the stream after the attention residual; its output is added after the MLP
  residual: x = x + DropPath(Mlp(norm2(x))) + PCSA(x)."""
  rank: int = 36
  dtype: Any = jnp.float32

  def before_mlp(self, x, context, carry, train):
    carry['pcsa'] = PCSA(self.rank, self.dtype, name='pcsa')(x, context)

  def after_block(self, x, carry, train):
    return x + carry['pcsa']


# The release's keys of one block's PCSA (GST:models/PGST.py), after Point-MAE's block's.
_RELEASE_BLOCK_ROWS = (
    ('pcsa/norm1', 'gft_adapter.norm_ly1', rk.LAYER_NORM, rk.PEFT),
    ('pcsa/norm2', 'gft_adapter.norm_ly2', rk.LAYER_NORM, rk.PEFT),
    ('pcsa/down', 'gft_adapter.down', rk.DENSE, rk.PEFT),
    ('pcsa/up', 'gft_adapter.up', rk.DENSE, rk.PEFT),
    ('pcsa/adapt1', 'gft_adapter.adapt1', rk.DENSE, rk.PEFT),
)


def _release_rows(depth: int) -> Iterable[tuple]:
  return rk.plain_rows(depth, block=_RELEASE_BLOCK_ROWS)


def _infer(tensors: Mapping[str, Any]) -> dict[str, Any]:
  down = tensors.get('blocks.blocks.0.gft_adapter.down.weight')
  return {} if down is None else {'pgst_rank': int(down.shape[0])}


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  """PointGST: PCSA of width `pgst_rank` in every block; local runs of `pgst_local` centres."""
  NAME = 'pointgst'
  OPTIONS = {'pgst_rank': 36, 'pgst_local': 32}
  RELEASE = rk.Release('PointGST', _release_rows, r'\.gft_adapter\.',
                       'PointGST fine-tuned model (release key layout, *.gft_adapter.*)', _infer,
                       rk.fixed_head(2, NAME))

  pgst_rank: int = 36
  pgst_local: int = 32

  def check(self, backbone):
    base.positive_int('pgst_rank', self.pgst_rank)
    local = base.positive_int('pgst_local', self.pgst_local)
    if local < 2 or backbone['num_group'] % local:
      raise base.ModelConfigError(f'model.pgst_local={local}: must be at least 2 and divide '
                                  f"model.num_group={backbone['num_group']}")

  def context(self, centers, enc, valid=None):
    return spectral_bases(centers, self.pgst_local, enc.axis_name, valid)

  def block_additions(self, index, enc):
    return Additions(self.pgst_rank, enc.dtype)

  def own_rules(self):
    return ((r'/pcsa/', base.TRAINABLE),)
