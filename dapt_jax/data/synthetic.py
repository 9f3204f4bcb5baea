"""Synthetic 3-D shape clouds, generated from a seed with vectorised NumPy (no files needed).

Each cloud is one of up to 12 primitive surfaces in a random pose (any 3-D rotation, or with
`pose='upright'` a rotation about the vertical axis only, as ModelNet40's aligned shapes) with
anisotropic scale, surface noise, a random planar occlusion (a slab of the shape cut away) and
background clutter (a floor patch and scattered points), centred and scaled to the unit sphere
like the real datasets. The nuisances make neighbouring classes (sphere vs capsule, cube vs
octahedron, cone vs pyramid) overlap enough that a classifier has to learn shape, not a single
statistic.
"""
from __future__ import annotations

import numpy as np

from dapt_jax.data.preprocess import normalize_unit_sphere

SHAPE_NAMES = ('sphere', 'cube', 'cylinder', 'cone', 'torus', 'pyramid', 'capsule', 'tetrahedron',
               'spring', 'cross', 'octahedron', 'annulus')
MIN_CLASSES = 2
POSES = ('so3', 'upright')  # uniformly random 3-D rotation | random rotation about z only

# Nuisance ranges.
_SCALE_RANGE = (0.75, 1.33)  # per-axis scale in the object frame
_NOISE_RANGE = (0.005, 0.02)  # std of Gaussian surface noise, per cloud
_OCCLUDED_MAX = 0.3  # at most this fraction of the surface is cut away
_CLUTTER_MAX = 0.15  # at most this fraction of the points is background
_OVERSAMPLE = 1.5  # candidate points per output point (≥ 1 / (1 − _OCCLUDED_MAX))


# ----------------------------------------------------------------------------------------------
# Surface samplers: (rng, n clouds, m points) → [n, m, 3] in a roughly unit-sized object frame.


def _unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  v = rng.normal(size=shape + (3,))
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _mesh(rng: np.random.Generator, n: int, m: int, verts: np.ndarray,
          faces: np.ndarray) -> np.ndarray:
  """Area-uniform samples on a triangle mesh."""
  a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
  area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1)
  f = rng.choice(len(faces), size=(n, m), p=area / area.sum())
  u, v = rng.random((n, m, 1)), rng.random((n, m, 1))
  flip = (u + v) > 1
  u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
  return a[f] + u * (b[f] - a[f]) + v * (c[f] - a[f])


def _box_mesh(half: tuple[float, float, float], centre=(0.0, 0.0, 0.0)):
  corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
  verts = corners * np.asarray(half) + np.asarray(centre)
  quads = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
  faces = [t for q in quads for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))]
  return verts, np.asarray(faces)


def _sphere(rng, n, m):
  return _unit_vectors(rng, (n, m))


def _cube(rng, n, m):
  return _mesh(rng, n, m, *_box_mesh((0.8, 0.8, 0.8)))


def _cylinder(rng, n, m, radius=0.6, half_height=1.0):
  side = rng.random((n, m)) < (2 * half_height) / (2 * half_height + radius)  # area ratio
  ang = rng.uniform(0, 2 * np.pi, (n, m))
  r = np.where(side, radius, radius * np.sqrt(rng.random((n, m))))
  z = np.where(side, rng.uniform(-half_height, half_height, (n, m)),
               np.where(rng.random((n, m)) < 0.5, -half_height, half_height))
  return np.stack([r * np.cos(ang), r * np.sin(ang), z], -1)


def _cone(rng, n, m, radius=0.8, height=2.0):
  slant = np.hypot(radius, height)
  side = rng.random((n, m)) < slant / (slant + radius)
  ang = rng.uniform(0, 2 * np.pi, (n, m))
  s = np.sqrt(rng.random((n, m)))  # fraction of the way from apex (lateral) / centre (base)
  r = radius * s
  z = np.where(side, height / 2 - height * s, -height / 2)
  return np.stack([r * np.cos(ang), r * np.sin(ang), z], -1)


def _torus(rng, n, m, big=0.75, small=0.25):
  phi, theta = rng.uniform(0, 2 * np.pi, (2, n, m))
  ring = big + small * np.cos(theta)
  return np.stack([ring * np.cos(phi), ring * np.sin(phi), small * np.sin(theta)], -1)


def _pyramid(rng, n, m):
  verts = np.array([[-0.9, -0.9, -0.8], [0.9, -0.9, -0.8], [0.9, 0.9, -0.8], [-0.9, 0.9, -0.8],
                    [0, 0, 1.0]])
  faces = np.array([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4], [0, 1, 2], [0, 2, 3]])
  return _mesh(rng, n, m, verts, faces)


def _capsule(rng, n, m, radius=0.45, half_len=0.6):
  side = rng.random((n, m)) < (2 * half_len) / (2 * half_len + 2 * radius)
  ang = rng.uniform(0, 2 * np.pi, (n, m))
  tube = np.stack([radius * np.cos(ang), radius * np.sin(ang),
                   rng.uniform(-half_len, half_len, (n, m))], -1)
  cap = radius * _unit_vectors(rng, (n, m))
  cap[..., 2] += np.sign(cap[..., 2]) * half_len
  return np.where(side[..., None], tube, cap)


def _tetrahedron(rng, n, m):
  verts = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) * 0.8
  faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
  return _mesh(rng, n, m, verts, faces)


def _spring(rng, n, m, turns=2.5, radius=0.65, tube=0.13):
  t = rng.random((n, m))
  w = 2 * np.pi * turns
  centre = np.stack([radius * np.cos(w * t), radius * np.sin(w * t), 2 * t - 1], -1)
  tangent = np.stack([-radius * w * np.sin(w * t), radius * w * np.cos(w * t),
                      np.full_like(t, 2.0)], -1)
  tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)
  g = rng.normal(size=(n, m, 3))
  g -= (g * tangent).sum(-1, keepdims=True) * tangent
  return centre + tube * g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)


def _cross(rng, n, m):
  meshes = [_box_mesh(h) for h in ((1.0, 0.22, 0.22), (0.22, 1.0, 0.22), (0.22, 0.22, 1.0))]
  verts = np.concatenate([v for v, _ in meshes])
  faces = np.concatenate([f + 8 * i for i, (_, f) in enumerate(meshes)])
  return _mesh(rng, n, m, verts, faces)


def _octahedron(rng, n, m):
  verts = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
  faces = np.array([[a, b, c] for a in (0, 1) for b in (2, 3) for c in (4, 5)])
  return _mesh(rng, n, m, verts, faces)


def _annulus(rng, n, m, inner=0.45, outer=1.0):
  r = np.sqrt(rng.uniform(inner ** 2, outer ** 2, (n, m)))
  ang = rng.uniform(0, 2 * np.pi, (n, m))
  return np.stack([r * np.cos(ang), r * np.sin(ang), np.zeros_like(r)], -1)


_SAMPLERS = (_sphere, _cube, _cylinder, _cone, _torus, _pyramid, _capsule, _tetrahedron, _spring,
             _cross, _octahedron, _annulus)
assert len(_SAMPLERS) == len(SHAPE_NAMES)


# ----------------------------------------------------------------------------------------------
# Nuisances, all vectorised over clouds.


def _rotations(rng: np.random.Generator, n: int) -> np.ndarray:
  """[n, 3, 3] uniformly random rotations (from unit quaternions)."""
  q = rng.normal(size=(n, 4))
  w, x, y, z = (q / np.linalg.norm(q, axis=-1, keepdims=True)).T
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
      np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
      np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)


def _upright_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
  """[n, 3, 3] rotations about the z axis by uniformly random angles (z stays up)."""
  a = rng.uniform(0, 2 * np.pi, n)
  c, s, zero, one = np.cos(a), np.sin(a), np.zeros(n), np.ones(n)
  return np.stack([np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1),
                   np.stack([zero, zero, one], -1)], 1)


def _occlude_and_pick(rng: np.random.Generator, pts: np.ndarray, num_points: int) -> np.ndarray:
  """Cuts away a random slab (≤ _OCCLUDED_MAX of the points) and keeps num_points of the rest."""
  n, m, _ = pts.shape
  direction = _unit_vectors(rng, (n,))
  proj = np.einsum('nmk,nk->nm', pts, direction)
  frac = rng.uniform(0, _OCCLUDED_MAX, n)
  cut = np.take_along_axis(np.sort(proj, axis=1), ((1 - frac) * (m - 1)).astype(int)[:, None], 1)
  keep = proj <= cut
  order = np.argsort(np.where(keep, rng.random((n, m)), 2.0), axis=1)[:, :num_points]
  return np.take_along_axis(pts, order[..., None], axis=1)


def _add_clutter(rng: np.random.Generator, pts: np.ndarray) -> np.ndarray:
  """Replaces up to _CLUTTER_MAX of the points with a floor patch and scattered points."""
  n, m, _ = pts.shape
  lo, hi = pts.min(1, keepdims=True), pts.max(1, keepdims=True)
  centre, half = (lo + hi) / 2, (hi - lo) / 2 * 1.3
  scatter = centre + half * rng.uniform(-1, 1, (n, m, 3))
  floor = scatter.copy()
  floor[..., 2] = lo[..., 2] - rng.uniform(0, 0.05, (n, m))
  clutter = np.where(rng.random((n, m, 1)) < 0.5, floor, scatter)
  replace = rng.random((n, m)) < rng.uniform(0, _CLUTTER_MAX, (n, 1))
  return np.where(replace[..., None], clutter, pts)


def generate(num_samples: int, num_points: int, num_classes: int, seed: int,
             stream: int = 0, pose: str = 'so3') -> tuple[np.ndarray, np.ndarray]:
  """Generates a labelled set of synthetic clouds.

  Args:
    num_samples: S clouds, classes balanced (counts differ by at most one), in random order.
    num_points: P points per cloud.
    num_classes: the first `num_classes` of SHAPE_NAMES.
    seed: the whole output is a function of (seed, stream).
    stream: distinguishes splits generated from the same seed (train 0, test 1).
    pose: 'so3' (any rotation) or 'upright' (rotations about z only); see POSES.

  Returns:
    points float32 [S, P, 3] (centred, unit sphere), labels int32 [S].
  """
  if not MIN_CLASSES <= num_classes <= len(SHAPE_NAMES):
    raise ValueError(f'synthetic_num_classes must be in [{MIN_CLASSES}, {len(SHAPE_NAMES)}], '
                     f'got {num_classes}')
  if pose not in POSES:
    raise ValueError(f'synthetic pose must be one of {POSES}, got {pose!r}')
  if num_samples < 0 or num_points < 1:
    raise ValueError(f'need num_samples ≥ 0 and num_points ≥ 1, got {num_samples}, {num_points}')
  rng = np.random.default_rng([seed, stream])
  labels = rng.permutation(np.arange(num_samples) % num_classes).astype(np.int32)
  m = int(np.ceil(num_points * _OVERSAMPLE))
  pts = np.empty((num_samples, m, 3))
  for c in range(num_classes):
    sel = np.flatnonzero(labels == c)
    if sel.size:
      pts[sel] = _SAMPLERS[c](rng, sel.size, m)
  pts *= rng.uniform(*_SCALE_RANGE, (num_samples, 1, 3))
  rotations = _rotations if pose == 'so3' else _upright_rotations
  pts = np.einsum('nij,nmj->nmi', rotations(rng, num_samples), pts)
  pts += rng.normal(size=pts.shape) * rng.uniform(*_NOISE_RANGE, (num_samples, 1, 1))
  pts = _occlude_and_pick(rng, pts, num_points)
  pts = _add_clutter(rng, pts)
  return normalize_unit_sphere(pts), labels
