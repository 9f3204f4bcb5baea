"""On-device input transforms (SPEC §4): pure JAX, jit-able, explicit keys, no loops over points.

These run inside the per-device step on that device's batch. FPS follows the release kernel's rules
(`dapt_jax.models.tokenizer.farthest_point_sample`). This module imports neither TFDS nor grain.

  train_view      FPS to min(point_all, P), random subset of num_points (random order), scale+shift
  eval_view       FPS to num_points, nothing random (also the training view with augment=False)
  vote_views      num_votes train-style views of each cloud (FPS computed once)
  scale_translate per-cloud anisotropic scale U(2/3, 3/2) and translation U(-0.2, 0.2) per axis
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dapt_jax.models.tokenizer import fps
from dapt_jax.models.tokenizer import gather_points

Array = jax.Array

SCALE_RANGE = (2.0 / 3.0, 3.0 / 2.0)
TRANSLATE_RANGE = (-0.2, 0.2)


def _as_float(points: Array) -> Array:
  """float32 (float64 clouds, in the 64-bit checks against the reference, stay float64)."""
  return points.astype(jnp.promote_types(points.dtype, jnp.float32))


def scale_translate(key: Array, points: Array) -> Array:
  """points: [B, N, 3] → points * s + t, with s ~ U(2/3, 3/2)^3 and t ~ U(-0.2, 0.2)^3 per cloud."""
  k_scale, k_shift = jax.random.split(key)
  shape = (points.shape[0], 1, 3)
  points = _as_float(points)
  scale = jax.random.uniform(k_scale, shape, points.dtype, *SCALE_RANGE)
  shift = jax.random.uniform(k_shift, shape, points.dtype, *TRANSLATE_RANGE)
  return points * scale + shift


def _fps_pool(points: Array, point_all: int, skip_full_fps: bool, fps_impl: str = 'xla'
              ) -> Array:
  """[B, P, 3] → [B, min(point_all, P), 3], the FPS pool the random subsets are drawn from."""
  m = min(int(point_all), points.shape[1])
  if skip_full_fps and m == points.shape[1]:
    return points  # FPS of every point is a reordering; the subset below reorders anyway
  return gather_points(points, fps(points, m, fps_impl))


def _random_subset(key: Array, pool: Array, num_points: int) -> Array:
  """[B, M, 3] → [B, num_points, 3]: per cloud, distinct points in random order."""
  batch, m, _ = pool.shape
  if num_points > m:
    raise ValueError(f'cannot draw {num_points} distinct points from a pool of {m}')
  order = jnp.argsort(jax.random.uniform(key, (batch, m)), axis=1)[:, :num_points]
  return gather_points(pool, order)


def train_view(key: Array, points: Array, num_points: int, point_all: int,
               skip_full_fps: bool = False, fps_impl: str = 'xla') -> Array:
  """The training input of SPEC §4.

  Args:
    key: PRNG key.
    points: [B, P, 3] float32.
    num_points: N ≤ min(point_all, P).
    point_all: FPS target before the subset (capped at P).
    skip_full_fps: when point_all ≥ P the FPS keeps every point (bar the kernel's near-origin
      rule) and only reorders them; True skips that FPS to save its sequential loop. False (default)
      reproduces the release exactly.
    fps_impl: 'xla' or 'pallas' (`tokenizer.fps`; the same indices).

  Returns:
    [B, N, 3] float32.
  """
  k_subset, k_aug = jax.random.split(key)
  pool = _fps_pool(_as_float(points), point_all, skip_full_fps, fps_impl)
  return scale_translate(k_aug, _random_subset(k_subset, pool, num_points))


def eval_view(points: Array, num_points: int, fps_impl: str = 'xla') -> Array:
  """points: [B, P, 3] → [B, num_points, 3] by FPS (deterministic); requires num_points ≤ P."""
  if num_points > points.shape[1]:
    raise ValueError(f'eval_view: {num_points} points requested from clouds of {points.shape[1]}')
  points = _as_float(points)
  return gather_points(points, fps(points, num_points, fps_impl))


def vote_views(key: Array, points: Array, num_points: int, point_all: int, num_votes: int,
               skip_full_fps: bool = False, fps_impl: str = 'xla') -> Array:
  """`num_votes` training-style views per cloud (voting): [B, P, 3] → [V, B, N, 3].

  The FPS pool is computed once and shared; every view draws its own subset, scale and shift.
  """
  pool = _fps_pool(_as_float(points), point_all, skip_full_fps, fps_impl)

  def one(k):
    k_subset, k_aug = jax.random.split(k)
    return scale_translate(k_aug, _random_subset(k_subset, pool, num_points))

  return jax.vmap(one)(jax.random.split(key, num_votes))


def train_views_per_sample(keys: Array, points: Array, num_points: int, point_all: int,
                           skip_full_fps: bool = False, fps_impl: str = 'xla') -> Array:
  """`train_view` with one key per cloud: keys [B] (e.g. folded from each sample's global index,
  so the result does not depend on how a batch is split over devices). FPS runs batched once;
  only the random subset and scale/translate are per cloud.

  points: [B, P, 3] → [B, num_points, 3].
  """
  pool = _fps_pool(_as_float(points), point_all, skip_full_fps, fps_impl)

  def one(key, cloud):
    k_subset, k_aug = jax.random.split(key)
    return scale_translate(k_aug, _random_subset(k_subset, cloud[None], num_points))[0]

  return jax.vmap(one)(keys, pool)


def vote_views_per_sample(keys: Array, points: Array, num_points: int, point_all: int,
                          num_votes: int, skip_full_fps: bool = False, fps_impl: str = 'xla'
                          ) -> Array:
  """`vote_views` with one key per cloud: keys [B], points [B, P, 3] → [V, B, num_points, 3]."""
  pool = _fps_pool(_as_float(points), point_all, skip_full_fps, fps_impl)

  def one(key, cloud):
    def view(k):
      k_subset, k_aug = jax.random.split(k)
      return scale_translate(k_aug, _random_subset(k_subset, cloud[None], num_points))[0]
    return jax.vmap(view)(jax.random.split(key, num_votes))

  return jnp.swapaxes(jax.vmap(one)(keys, pool), 0, 1)
