"""Synthetic input: points on random ellipsoids (throughput does not depend on the data)."""
from __future__ import annotations

import numpy as np


def ellipsoid_batch(batch: int, num_points: int, num_classes: int, seed: int = 0
                    ) -> dict[str, np.ndarray]:
  """{'points': [B, N, 3] float32, 'label': [B] int32}: surface points of random ellipsoids
  (radii U(0.3, 1) per axis, a random offset U(-0.1, 0.1)), labels uniform over the classes."""
  rng = np.random.default_rng(seed)
  d = rng.normal(size=(batch, num_points, 3))
  d /= np.linalg.norm(d, axis=-1, keepdims=True)
  radii = rng.uniform(0.3, 1.0, size=(batch, 1, 3))
  offset = rng.uniform(-0.1, 0.1, size=(batch, 1, 3))
  points = (d * radii + offset).astype(np.float32)
  label = rng.integers(0, num_classes, size=batch).astype(np.int32)
  return {'points': points, 'label': label}
