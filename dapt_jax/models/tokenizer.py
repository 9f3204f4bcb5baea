"""Point tokenizer: farthest point sampling, kNN grouping, the mini-PointNet patch encoder and the
centre position embedding (SPEC §1).

Everything here is batched, jit-able and free of Python loops over points, so it runs inside a
per-device step under `jax.pmap` / `jax.shard_map`.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers

Array = jax.Array

# The release's CUDA kernel skips points this close to the origin (squared norm), so after the
# first centre they are never chosen.
FPS_MIN_SQUARED_NORM = 1e-3
FPS_INITIAL_DISTANCE = 1e10


def farthest_point_sample(points: Array, num_samples: int) -> Array:
  """Farthest point sampling with the release kernel's rules.

  The first centre is index 0; every point keeps its running minimum squared distance to the
  chosen set (starting at 1e10); the next centre is the argmax of that distance, first index on
  ties; points with squared norm <= 1e-3 are never chosen after the first (if no point is
  eligible, index 0 is chosen again, as the kernel does).

  Args:
    points: [B, N, 3] float32.
    num_samples: number of centres G.

  Returns:
    [B, G] int32 indices into the N points.
  """
  points = layers.at_least_float32(points)
  batch, n, _ = points.shape
  eligible = jnp.sum(points * points, axis=-1) > FPS_MIN_SQUARED_NORM  # [B, N]
  x, y, z = points[..., 0], points[..., 1], points[..., 2]

  def body(i, carry):
    indices, dist, last = carry
    last_pt = jnp.take_along_axis(points, last[:, None, None], axis=1)[:, 0]  # [B, 3]
    dx = x - last_pt[:, 0:1]
    dy = y - last_pt[:, 1:2]
    dz = z - last_pt[:, 2:3]
    d = dx * dx + dy * dy + dz * dz
    # Ineligible points start at -1 and stay there (min with d >= 0), so they never win.
    dist = jnp.minimum(dist, d)
    nxt = jnp.argmax(dist, axis=-1).astype(jnp.int32)
    indices = indices.at[:, i].set(nxt)
    return indices, dist, nxt

  indices = jnp.zeros((batch, num_samples), jnp.int32)
  dist = jnp.where(eligible, FPS_INITIAL_DISTANCE, -1.0).astype(points.dtype)
  last = jnp.zeros((batch,), jnp.int32)
  indices, _, _ = jax.lax.fori_loop(1, num_samples, body, (indices, dist, last))
  return indices


FPS_IMPLS = ('xla', 'pallas')


def fps(points: Array, num_samples: int, impl: str = 'xla') -> Array:
  """`farthest_point_sample` by the chosen implementation (`model.fps_impl`); same indices.

  'xla': the `fori_loop` above. 'pallas': one kernel per cloud (`dapt_jax.models.fps_pallas`), lowered
  for the accelerator; on CPU, which Pallas cannot compile for, it runs in interpret mode (slow:
  for tests).
  """
  if impl == 'xla':
    return farthest_point_sample(points, num_samples)
  if impl == 'pallas':
    from dapt_jax.models import fps_pallas  # pylint: disable=g-import-not-at-top  (Pallas only if chosen)
    return fps_pallas.farthest_point_sample(points, num_samples,
                                            interpret=jax.default_backend() == 'cpu')
  raise ValueError(f'fps_impl={impl!r}: must be one of {FPS_IMPLS}')


def gather_points(points: Array, indices: Array) -> Array:
  """points: [B, N, D]; indices: [B, ...] int → [B, ..., D]."""
  batch = points.shape[0]
  flat = indices.reshape(batch, -1)
  out = jnp.take_along_axis(points, flat[..., None], axis=1)
  return out.reshape(indices.shape + points.shape[-1:])


def knn_group(points: Array, centers: Array, group_size: int) -> tuple[Array, Array]:
  """The K nearest points of every centre (squared Euclidean, the centre itself included).

  Args:
    points: [B, N, 3].
    centers: [B, G, 3].
    group_size: K.

  Returns:
    neighborhood: [B, G, K, 3], coordinates relative to the centre (neighbour − centre);
    indices: [B, G, K] int32.
  """
  diff = centers[:, :, None, :] - points[:, None, :, :]
  sq_dist = jnp.sum(diff * diff, axis=-1)  # [B, G, N]
  _, idx = jax.lax.top_k(-sq_dist, group_size)
  idx = idx.astype(jnp.int32)
  neighborhood = gather_points(points, idx) - centers[:, :, None, :]
  return neighborhood, idx


def group_points(points: Array, num_group: int, group_size: int, fps_impl: str = 'xla'
                 ) -> tuple[Array, Array]:
  """FPS centres, then kNN groups.

  Args:
    points: [B, N, 3] float32.
    fps_impl: 'xla' or 'pallas' (see `fps`).

  Returns:
    neighborhood [B, G, K, 3] (relative to the centres) and centers [B, G, 3].
  """
  points = layers.at_least_float32(points)
  center_idx = fps(points, num_group, fps_impl)
  centers = gather_points(points, center_idx)
  neighborhood, _ = knn_group(points, centers, group_size)
  return neighborhood, centers


class GlobalLocalDense(nn.Module):
  """A Dense layer over `concat([broadcast(g), f], -1)` that never builds the concatenation.

  The mini-PointNet's third layer sees every point's feature beside its group's max-pooled one.
  Its kernel [Fg + Ff, out] splits into the rows for g and the rows for f, so
  `concat(...) @ W = g @ W[:Fg] + f @ W[Fg:]`: the g product is computed once per group instead
  of once per point (half the layer's FLOPs) and the [B, G, K, Fg + Ff] input is never held.
  Parameters are a plain Dense's (`kernel`, `bias`), so checkpoints are unchanged.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, g: Array, f: Array) -> Array:
    """g: [..., 1, Fg] (one row per group); f: [..., K, Ff] → [..., K, features]."""
    fg = g.shape[-1]
    kernel = self.param('kernel', layers.backbone_kernel_init, (fg + f.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    out_g = jnp.dot(g.astype(self.dtype), kernel[:fg])
    out_f = jnp.dot(f.astype(self.dtype), kernel[fg:])
    return out_f + (out_g + bias)


class PatchEncoder(nn.Module):
  """Mini-PointNet shared over groups: one token per group.

  Attributes:
    encoder_dims: output width C.
    use_running_average: BatchNorm uses running statistics (eval, or frozen statistics).
    axis_name: collective axis for synchronised BatchNorm statistics.
  """
  encoder_dims: int
  use_running_average: bool = False
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, neighborhood: Array) -> Array:
    """neighborhood: [B, G, K, 3] → tokens [B, G, C]."""
    def dense(features, name):
      return nn.Dense(features, kernel_init=layers.backbone_kernel_init, dtype=self.dtype,
                      name=name)

    def bn(name):
      return layers.TorchBatchNorm(use_running_average=self.use_running_average,
                                   axis_name=self.axis_name, name=name)

    f = dense(128, 'fc1')(neighborhood)
    f = nn.relu(bn('bn1')(f))
    f = dense(256, 'fc2')(f)                                   # [B, G, K, 256]
    g = jnp.max(f, axis=2, keepdims=True)                      # [B, G, 1, 256]
    f = GlobalLocalDense(512, self.dtype, name='fc3')(g, f)    # = Dense(concat([g, f]))
    f = nn.relu(bn('bn2')(f))
    f = dense(self.encoder_dims, 'fc4')(f)
    return jnp.max(f, axis=2)


class PosEmbed(nn.Module):
  """Centre position embedding: Linear 3→128, GELU, Linear 128→C."""
  trans_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, centers: Array) -> Array:
    """centers: [B, G, 3] → [B, G, C]."""
    h = nn.Dense(128, kernel_init=layers.backbone_kernel_init, dtype=self.dtype,
                 name='fc1')(centers)
    h = nn.gelu(h, approximate=False)
    return nn.Dense(self.trans_dim, kernel_init=layers.backbone_kernel_init, dtype=self.dtype,
                    name='fc2')(h)
