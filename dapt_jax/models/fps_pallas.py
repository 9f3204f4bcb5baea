"""Farthest point sampling as one Pallas kernel (`model.fps_impl='pallas'`).

The XLA formulation (`tokenizer.farthest_point_sample`) is a `fori_loop` whose every iteration is
a few separate device kernels (distance update, argmax, gather of the chosen point): on a GPU the
2,048 iterations of the training view's FPS cost 2,048 × (launch latencies) per step. Here one
program per cloud runs the whole loop on chip: the cloud's coordinates and the running distances
stay in registers / on-chip memory, and only the G indices are written back.

Same rules and the same float32 arithmetic as the XLA version, so the indices are identical
(tests/test_fps_pallas.py checks this in Pallas interpret mode): first centre index 0, running
minimum squared distance starting at 1e10, next centre the argmax with the first index on ties,
points with squared norm <= 1e-3 never chosen after the first (they start at -1).

Portability: the kernel uses only element-wise ops, full-vector reductions and a `fori_loop`
(no dynamic indexing, no scalar stores), and pads N and G to powers of two (Triton's block rule);
padded points start at -1 like ineligible ones, so they are never chosen before a real point.
GPU (Triton) and TPU (Mosaic) lower it; on CPU it runs only in interpret mode, which is what the
tests and `interpret=True` use. Opt-in until it has been measured on a GPU (docs/benchmarks.md).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

Array = jax.Array

# The release kernel's constants (kept equal to tokenizer.FPS_*; imported there from here would
# make the tokenizer depend on Pallas at import time).
MIN_SQUARED_NORM = 1e-3
INITIAL_DISTANCE = 1e10


def _next_pow2(n: int) -> int:
  return 1 << max(0, (int(n) - 1).bit_length())


def _fps_kernel(x_ref, y_ref, z_ref, out_ref, *, num_samples: int, num_points: int):
  """One cloud: x/y/z_ref [1, Np] coordinates, out_ref [1, Gp] int32 indices."""
  x, y, z = x_ref[0, :], y_ref[0, :], z_ref[0, :]
  n_pad = x.shape[0]
  g_pad = out_ref.shape[1]
  iota = jax.lax.broadcasted_iota(jnp.int32, (n_pad,), 0)
  slots = jax.lax.broadcasted_iota(jnp.int32, (g_pad,), 0)
  eligible = (x * x + y * y + z * z > MIN_SQUARED_NORM) & (iota < num_points)
  dist = jnp.where(eligible, jnp.float32(INITIAL_DISTANCE), jnp.float32(-1.0))

  def pick(values, index):
    # The coordinate at `index` as a masked sum: one term is non-zero, so it is exact.
    return jnp.sum(jnp.where(iota == index, values, jnp.float32(0.0)))

  def body(i, carry):
    dist, indices, lx, ly, lz = carry
    dx, dy, dz = x - lx, y - ly, z - lz
    dist = jnp.minimum(dist, dx * dx + dy * dy + dz * dz)
    best = jnp.max(dist)
    nxt = jnp.min(jnp.where(dist == best, iota, n_pad))   # argmax, first index on ties
    indices = jnp.where(slots == i, nxt, indices)
    return dist, indices, pick(x, nxt), pick(y, nxt), pick(z, nxt)

  indices = jnp.zeros((g_pad,), jnp.int32)
  carry = (dist, indices, pick(x, 0), pick(y, 0), pick(z, 0))
  _, indices, _, _, _ = jax.lax.fori_loop(1, num_samples, body, carry)
  out_ref[0, :] = indices


@functools.partial(jax.jit, static_argnames=('num_samples', 'interpret'))
def farthest_point_sample(points: Array, num_samples: int, interpret: bool = False) -> Array:
  """points: [B, N, 3] → [B, num_samples] int32 indices (the XLA version's, exactly).

  interpret: run the kernel through Pallas's interpreter (CPU, tests); False lowers it for the
  accelerator (GPU / TPU).
  """
  points = points.astype(jnp.float32)
  batch, n, _ = points.shape
  n_pad, g_pad = _next_pow2(n), _next_pow2(num_samples)
  coords = jnp.moveaxis(points, -1, 0)                            # [3, B, N]
  coords = jnp.pad(coords, ((0, 0), (0, 0), (0, n_pad - n)))
  kernel = functools.partial(_fps_kernel, num_samples=num_samples, num_points=n)
  in_spec = pl.BlockSpec((1, n_pad), lambda b: (b, 0))
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((batch, g_pad), jnp.int32),
      grid=(batch,),
      in_specs=[in_spec, in_spec, in_spec],
      out_specs=pl.BlockSpec((1, g_pad), lambda b: (b, 0)),
      interpret=interpret,
  )(coords[0], coords[1], coords[2])
  return out[:, :num_samples]
