"""Synthetic part-segmentation shapes, generated from a seed (no files needed).

Every category is an object glued from 2–4 labelled primitive parts (boxes, cylinders, cones,
spheres, tori) with proportions drawn per shape, so a part cannot be told by its height alone.
Like ShapeNetPart: objects are upright, part ids are global and consecutive per category, points
are sampled on the surface (each part in proportion to its area), lightly noisy, and normalised to
the unit sphere. A random turn about the up axis and a small tilt vary the pose.

    points, part, category = generate(num_samples=512, num_points=1024, num_categories=8, seed=0)
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dapt_jax.data.preprocess import normalize_unit_sphere

# (category, its parts): part ids are global, assigned in this order.
CATEGORIES = (
    ('table', ('top', 'legs')),
    ('chair', ('seat', 'back', 'legs')),
    ('lamp', ('base', 'pole', 'shade')),
    ('mug', ('body', 'handle')),
    ('airplane', ('fuselage', 'wings', 'tail', 'engines')),
    ('rocket', ('body', 'nose', 'fins')),
    ('umbrella', ('canopy', 'shaft')),
    ('car', ('body', 'cabin', 'wheels')),
)
CATEGORY_NAMES = tuple(name for name, _ in CATEGORIES)
MIN_CATEGORIES = 2
_NOISE_RANGE = (0.002, 0.01)  # std of Gaussian surface noise, per shape
_TILT = 0.15  # max tilt (radians) about a horizontal axis


def category_parts(num_categories: int) -> tuple[tuple[int, ...], ...]:
  """Global part ids of each of the first `num_categories` categories."""
  out, start = [], 0
  for _, parts in CATEGORIES[:num_categories]:
    out.append(tuple(range(start, start + len(parts))))
    start += len(parts)
  return tuple(out)


def num_parts(num_categories: int) -> int:
  return sum(len(p) for _, p in CATEGORIES[:num_categories])


# ----------------------------------------------------------------------------------------------
# Primitive surfaces: (rng, m) → [m, 3] points, and their areas (for the point budget).


def _box(rng, m, centre, half):
  half = np.asarray(half, float)
  faces = np.array([half[1] * half[2], half[0] * half[2], half[0] * half[1]])  # x, y, z faces
  axis = rng.choice(3, m, p=np.repeat(faces, 1) / faces.sum())
  p = rng.uniform(-1, 1, (m, 3))
  p[np.arange(m), axis] = rng.choice((-1.0, 1.0), m)
  return centre + p * half


def _box_area(half):
  a, b, c = half
  return 8 * (a * b + b * c + a * c)


def _cylinder(rng, m, centre, radius, half_height, axis=2, caps=True):
  side_area = 2 * np.pi * radius * 2 * half_height
  cap_area = 2 * np.pi * radius ** 2 if caps else 0.0
  side = rng.random(m) < side_area / (side_area + cap_area)
  ang = rng.uniform(0, 2 * np.pi, m)
  r = np.where(side, radius, radius * np.sqrt(rng.random(m)))
  h = np.where(side, rng.uniform(-half_height, half_height, m),
               np.where(rng.random(m) < 0.5, -half_height, half_height))
  local = np.stack([r * np.cos(ang), r * np.sin(ang), h], -1)
  return centre + np.roll(local, axis - 2, axis=-1)


def _cylinder_area(radius, half_height, caps=True):
  return 2 * np.pi * radius * 2 * half_height + (2 * np.pi * radius ** 2 if caps else 0.0)


def _cone(rng, m, base, radius, height, open_base=False):
  """Apex up (+z) from a base circle at `base`; an open base for a lamp shade."""
  slant = np.hypot(radius, height)
  lateral = np.pi * radius * slant
  disc = 0.0 if open_base else np.pi * radius ** 2
  side = rng.random(m) < lateral / (lateral + disc)
  ang = rng.uniform(0, 2 * np.pi, m)
  s = np.sqrt(rng.random(m))
  r = radius * s
  z = np.where(side, height * (1 - s), 0.0)
  return base + np.stack([r * np.cos(ang), r * np.sin(ang), z], -1)


def _cone_area(radius, height, open_base=False):
  return np.pi * radius * np.hypot(radius, height) + (0.0 if open_base else np.pi * radius ** 2)


def _cap(rng, m, centre, radius, max_polar):
  """A spherical cap around +z (polar angle ≤ max_polar), area-uniform."""
  cos_t = rng.uniform(np.cos(max_polar), 1.0, m)
  sin_t = np.sqrt(1 - cos_t ** 2)
  ang = rng.uniform(0, 2 * np.pi, m)
  return centre + radius * np.stack([sin_t * np.cos(ang), sin_t * np.sin(ang), cos_t], -1)


def _cap_area(radius, max_polar):
  return 2 * np.pi * radius ** 2 * (1 - np.cos(max_polar))


def _half_torus(rng, m, centre, big, small):
  """A handle: half a torus in the xz plane, bulging towards +x."""
  phi = rng.uniform(-np.pi / 2, np.pi / 2, m)
  theta = rng.uniform(0, 2 * np.pi, m)
  ring = big + small * np.cos(theta)
  return centre + np.stack([ring * np.cos(phi), small * np.sin(theta), ring * np.sin(phi)], -1)


def _half_torus_area(big, small):
  return 2 * np.pi ** 2 * big * small


# Each builder: rng → list of parts, each (sampler(m) → [m, 3], area).
Part = tuple[Callable[[int], np.ndarray], float]


def _table(rng) -> list[Part]:
  w, d = rng.uniform(0.7, 1.2), rng.uniform(0.4, 0.9)
  h, t = rng.uniform(0.5, 0.9), rng.uniform(0.03, 0.08)
  leg = rng.uniform(0.03, 0.07)
  top = ((0, 0, h), (w, d, t))
  corners = [(sx * (w - 2 * leg), sy * (d - 2 * leg)) for sx in (-1, 1) for sy in (-1, 1)]
  legs_half = (leg, leg, h / 2)

  def legs(m):
    which = rng.integers(0, 4, m)
    out = np.empty((m, 3))
    for k, (x, y) in enumerate(corners):
      sel = which == k
      out[sel] = _box(rng, int(sel.sum()), np.array([x, y, h / 2]), legs_half)
    return out

  return [(lambda m: _box(rng, m, np.array(top[0]), top[1]), _box_area(top[1])),
          (legs, 4 * _box_area(legs_half))]


def _chair(rng) -> list[Part]:
  w = rng.uniform(0.4, 0.6)
  seat_h, t = rng.uniform(0.4, 0.6), rng.uniform(0.03, 0.07)
  back_h = rng.uniform(0.4, 0.8)
  leg = rng.uniform(0.025, 0.05)
  seat_half = (w, w, t)
  back_half = (w, t, back_h / 2)
  legs_half = (leg, leg, seat_h / 2)
  corners = [(sx * (w - leg), sy * (w - leg)) for sx in (-1, 1) for sy in (-1, 1)]

  def legs(m):
    which = rng.integers(0, 4, m)
    out = np.empty((m, 3))
    for k, (x, y) in enumerate(corners):
      sel = which == k
      out[sel] = _box(rng, int(sel.sum()), np.array([x, y, seat_h / 2]), legs_half)
    return out

  return [(lambda m: _box(rng, m, np.array([0, 0, seat_h]), seat_half), _box_area(seat_half)),
          (lambda m: _box(rng, m, np.array([0, w - t, seat_h + t + back_h / 2]), back_half),
           _box_area(back_half)),
          (legs, 4 * _box_area(legs_half))]


def _lamp(rng) -> list[Part]:
  base_r, base_h = rng.uniform(0.25, 0.45), rng.uniform(0.03, 0.08)
  pole_r, pole_h = rng.uniform(0.02, 0.05), rng.uniform(0.6, 1.2)
  shade_r, shade_h = rng.uniform(0.25, 0.5), rng.uniform(0.25, 0.5)
  top = base_h * 2 + pole_h
  return [(lambda m: _cylinder(rng, m, np.array([0, 0, base_h]), base_r, base_h),
           _cylinder_area(base_r, base_h)),
          (lambda m: _cylinder(rng, m, np.array([0, 0, 2 * base_h + pole_h / 2]), pole_r,
                               pole_h / 2, caps=False), _cylinder_area(pole_r, pole_h / 2, False)),
          (lambda m: _cone(rng, m, np.array([0, 0, top - shade_h * 0.6]), shade_r, shade_h,
                           open_base=True), _cone_area(shade_r, shade_h, True))]


def _mug(rng) -> list[Part]:
  r, hh = rng.uniform(0.3, 0.45), rng.uniform(0.3, 0.5)
  big, small = rng.uniform(0.15, 0.25), rng.uniform(0.03, 0.06)
  return [(lambda m: _cylinder(rng, m, np.array([0, 0, hh]), r, hh), _cylinder_area(r, hh)),
          (lambda m: _half_torus(rng, m, np.array([r, 0, hh]), big, small),
           _half_torus_area(big, small))]


def _airplane(rng) -> list[Part]:
  length, fr = rng.uniform(1.4, 2.0), rng.uniform(0.08, 0.14)
  span, chord, wt = rng.uniform(0.8, 1.3), rng.uniform(0.15, 0.3), rng.uniform(0.015, 0.03)
  tail_h = rng.uniform(0.15, 0.3)
  eng_r, eng_l = rng.uniform(0.04, 0.07), rng.uniform(0.12, 0.22)
  wing_x = rng.uniform(-0.1, 0.15) * length
  wing_half = (chord / 2, span, wt)
  tail_half = (chord / 3, wt, tail_h / 2)
  eng_y = span * rng.uniform(0.35, 0.6)

  def engines(m):
    side = np.where(rng.random(m) < 0.5, -1.0, 1.0)
    pts = _cylinder(rng, m, np.zeros(3), eng_r, eng_l / 2, axis=0)
    return pts + np.stack([np.full(m, wing_x), side * eng_y, np.full(m, -fr - eng_r)], -1)

  return [(lambda m: _cylinder(rng, m, np.zeros(3), fr, length / 2, axis=0),
           _cylinder_area(fr, length / 2)),
          (lambda m: _box(rng, m, np.array([wing_x, 0, 0]), wing_half), _box_area(wing_half)),
          (lambda m: _box(rng, m, np.array([-length / 2 + chord / 3, 0, fr + tail_h / 2]),
                          tail_half), _box_area(tail_half)),
          (engines, 2 * _cylinder_area(eng_r, eng_l / 2))]


def _rocket(rng) -> list[Part]:
  r, hh = rng.uniform(0.12, 0.2), rng.uniform(0.5, 0.8)
  nose_h = rng.uniform(0.2, 0.45)
  fin_w, fin_h, fin_t = rng.uniform(0.1, 0.2), rng.uniform(0.15, 0.3), rng.uniform(0.01, 0.025)
  fin_half = (fin_w / 2, fin_t, fin_h / 2)

  def fins(m):
    k = rng.integers(0, 4, m)
    pts = _box(rng, m, np.array([r + fin_w / 2, 0, fin_h / 2]), fin_half)
    ang = k * np.pi / 2
    c, s = np.cos(ang), np.sin(ang)
    return np.stack([c * pts[:, 0] - s * pts[:, 1], s * pts[:, 0] + c * pts[:, 1], pts[:, 2]], -1)

  return [(lambda m: _cylinder(rng, m, np.array([0, 0, hh]), r, hh, caps=False),
           _cylinder_area(r, hh, False)),
          (lambda m: _cone(rng, m, np.array([0, 0, 2 * hh]), r, nose_h, open_base=True),
           _cone_area(r, nose_h, True)),
          (fins, 4 * _box_area(fin_half))]


def _umbrella(rng) -> list[Part]:
  radius, polar = rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.1)
  shaft_r, shaft_h = rng.uniform(0.015, 0.035), rng.uniform(0.8, 1.3)
  top = shaft_h
  return [(lambda m: _cap(rng, m, np.array([0, 0, top - radius * np.cos(polar)]), radius, polar),
           _cap_area(radius, polar)),
          (lambda m: _cylinder(rng, m, np.array([0, 0, shaft_h / 2]), shaft_r, shaft_h / 2),
           _cylinder_area(shaft_r, shaft_h / 2))]


def _car(rng) -> list[Part]:
  length, width, hb = rng.uniform(0.8, 1.2), rng.uniform(0.35, 0.5), rng.uniform(0.12, 0.2)
  cabin_l, hc = length * rng.uniform(0.4, 0.65), rng.uniform(0.1, 0.2)
  wheel_r, wheel_w = rng.uniform(0.1, 0.16), rng.uniform(0.04, 0.08)
  body_half = (length, width, hb)
  cabin_half = (cabin_l / 2, width * 0.9, hc)
  z0 = wheel_r
  axle_x = length * 0.7

  def wheels(m):
    k = rng.integers(0, 4, m)
    pts = _cylinder(rng, m, np.zeros(3), wheel_r, wheel_w / 2, axis=1)
    sx = np.where(k % 2 == 0, -1.0, 1.0)
    sy = np.where(k < 2, -1.0, 1.0)
    return pts + np.stack([sx * axle_x, sy * (width + wheel_w / 2), np.full(m, z0)], -1)

  return [(lambda m: _box(rng, m, np.array([0, 0, z0 + hb]), body_half), _box_area(body_half)),
          (lambda m: _box(rng, m, np.array([-length * 0.1, 0, z0 + 2 * hb + hc]), cabin_half),
           _box_area(cabin_half)),
          (wheels, 4 * _cylinder_area(wheel_r, wheel_w / 2))]


_BUILDERS = (_table, _chair, _lamp, _mug, _airplane, _rocket, _umbrella, _car)
assert len(_BUILDERS) == len(CATEGORIES)


def _pose(rng) -> np.ndarray:
  """A random turn about z, then a small tilt about a random horizontal axis: [3, 3]."""
  yaw = rng.uniform(0, 2 * np.pi)
  c, s = np.cos(yaw), np.sin(yaw)
  turn = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
  axis_ang = rng.uniform(0, 2 * np.pi)
  k = np.array([np.cos(axis_ang), np.sin(axis_ang), 0.0])
  t = rng.uniform(-_TILT, _TILT)
  kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
  tilt = np.eye(3) + np.sin(t) * kx + (1 - np.cos(t)) * kx @ kx  # Rodrigues
  return tilt @ turn


def _one(rng, category: int, num_points: int, part_offset: int) -> tuple[np.ndarray, np.ndarray]:
  parts = _BUILDERS[category](rng)
  areas = np.array([a for _, a in parts])
  counts = rng.multinomial(num_points, areas / areas.sum())
  # Every part gets at least one point so every label occurs.
  while (counts == 0).any():
    counts[np.argmax(counts)] -= 1
    counts[np.argmin(counts)] += 1
  pts = np.concatenate([sample(int(n)) for (sample, _), n in zip(parts, counts)])
  labels = np.repeat(np.arange(len(parts)) + part_offset, counts)
  pts = pts @ _pose(rng).T
  pts += rng.normal(size=pts.shape) * rng.uniform(*_NOISE_RANGE)
  order = rng.permutation(num_points)
  return pts[order], labels[order]


def generate(num_samples: int, num_points: int, num_categories: int, seed: int,
             stream: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Generates a part-labelled set of synthetic shapes.

  Args:
    num_samples: S shapes, categories balanced (counts differ by at most one), in random order.
    num_points: P points per shape (at least the number of parts of every category used).
    num_categories: the first `num_categories` of CATEGORIES.
    seed: the output is a function of (seed, stream).
    stream: distinguishes splits generated from the same seed (train 0, test 1).

  Returns:
    points float32 [S, P, 3] (centred, unit sphere), part int32 [S, P] (global part ids),
    category int32 [S].
  """
  if not MIN_CATEGORIES <= num_categories <= len(CATEGORIES):
    raise ValueError(f'synthetic_parts_num_categories must be in [{MIN_CATEGORIES}, '
                     f'{len(CATEGORIES)}], got {num_categories}')
  if num_samples < 0 or num_points < 4:
    raise ValueError(f'need num_samples ≥ 0 and num_points ≥ 4, got {num_samples}, {num_points}')
  rng = np.random.default_rng([seed, stream])
  category = rng.permutation(np.arange(num_samples) % num_categories).astype(np.int32)
  offsets = [p[0] for p in category_parts(num_categories)]
  points = np.empty((num_samples, num_points, 3))
  part = np.empty((num_samples, num_points), np.int32)
  for i, c in enumerate(category):
    points[i], part[i] = _one(rng, int(c), num_points, offsets[c])
  if num_samples:
    points = normalize_unit_sphere(points)
  return points.astype(np.float32), part, category
