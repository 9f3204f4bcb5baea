"""Random-access sources for part segmentation (`shapenet_part`, `synthetic_parts`).

A stored shape holds all of its points (ShapeNetPart shapes differ in size). Batches need one
shape, so every item is brought to a fixed pool of `pool_points`:

  * a shape with fewer points is repeated cyclically to fill the pool, and `num_points` says how
    many of the rows are its own;
  * a shape with more points keeps a fixed subset of `pool_points` of them (drawn without
    replacement from a generator seeded by the shape's index, so it never changes).

The model's points are drawn from the first `num_points` rows of the pool on device, uniformly with
replacement — the reference loader's `np.random.choice(len(shape), 2048, replace=True)` — fresh for
every training step (`dapt_jax.tasks.segmentation`). ShapeNetPart shapes hold at most a few
thousand points, so the default pool of 4,096 keeps every point.

Items: {'points' float32 [pool, 3], 'part' int32 [pool], 'num_points' int32, 'category' int32,
'label' int32 (= category)}.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from dapt_jax.data.errors import DataError

PART_DATASETS = ('shapenet_part', 'synthetic_parts')


@dataclasses.dataclass(frozen=True)
class PartInfo:
  """What the segmentation task needs to know about a split."""
  name: str  # dataset name as in the config
  split: str
  num_classes: int  # categories
  class_names: list  # category names
  category_parts: tuple  # global part ids of each category
  num_parts: int  # size of the part-label space (model outputs)
  num_examples: int
  pool_points: int
  prepared_dir: str


def fit_to_pool(points: np.ndarray, part: np.ndarray, pool: int,
                index: int) -> tuple[np.ndarray, np.ndarray, int]:
  """One shape ([R, 3], [R]) → (points [pool, 3], part [pool], rows that are the shape's own)."""
  r = points.shape[0]
  if r >= pool:
    if r > pool:
      keep = np.sort(np.random.default_rng([0x5EC, int(index)]).choice(r, pool, replace=False))
      points, part = points[keep], part[keep]
    return points, part, pool
  idx = np.arange(pool) % r
  return points[idx], part[idx], r


class PartCloudSource(Sequence):
  """Wraps a TFDS array_record data source of part-labelled shapes (see the module docstring)."""

  def __init__(self, data_source: Any, pool_points: int):
    self._source = data_source
    self.pool_points = int(pool_points)

  def __len__(self) -> int:
    return len(self._source)

  def _item(self, ex: dict, index: int) -> dict[str, np.ndarray]:
    points, part, n = fit_to_pool(np.asarray(ex['points'], np.float32),
                                  np.asarray(ex['part'], np.int32), self.pool_points, index)
    category = np.int32(ex['category'])
    return {'points': points, 'part': part, 'num_points': np.int32(n), 'category': category,
            'label': category}

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    if not -len(self) <= i < len(self):
      raise IndexError(f'index {i} out of range for a source of {len(self)} examples')
    i = int(i) % len(self)
    return self._item(self._source[i], i)

  def get_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Reads several shapes in one array_record call → stacked arrays."""
    indices = [int(i) for i in indices]
    items = [self._item(ex, i) for ex, i in zip(self._source.__getitems__(indices), indices)]
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def category_parts(dc: Any) -> tuple[tuple[int, ...], ...]:
  """The global part ids of each category of the dataset `dc.name`."""
  if dc.name == 'shapenet_part':
    from dapt_jax import segmentation_metrics  # pylint: disable=g-import-not-at-top
    return segmentation_metrics.SHAPENET_PART_PARTS
  if dc.name == 'synthetic_parts':
    from dapt_jax.data import synthetic_parts  # pylint: disable=g-import-not-at-top
    return synthetic_parts.category_parts(int(dc.synthetic_num_categories))
  raise DataError(f'data.name: {dc.name!r} is not a part-segmentation dataset; expected one of '
                  f'{", ".join(PART_DATASETS)}')


def get_part_source(dc: Any, split: str) -> tuple[PartCloudSource, PartInfo]:
  """Opens `split` of a part-segmentation dataset, preparing it first if needed.

  Raises:
    DataError: missing or malformed files, or a bad config field (one-line message).
  """
  from dapt_jax.data import sources  # pylint: disable=g-import-not-at-top
  parts = category_parts(dc)
  pool = int(dc.pool_points)
  if pool < 1:
    raise DataError(f'data.pool_points: {pool} must be at least 1')
  builder = sources.prepare_builder(dc)
  try:
    data_source = builder.as_data_source(split)
  except (ValueError, KeyError, AssertionError) as e:
    raise DataError(f'{dc.name}: cannot open split {split!r} (available: '
                    f'{", ".join(builder.info.splits.keys())}): {" ".join(str(e).split())}') from e
  source = PartCloudSource(data_source, pool)
  if not len(source):
    raise DataError(f'{dc.name}: split {split!r} is empty')
  names = list(builder.info.features['category'].names)
  info = PartInfo(name=dc.name, split=split, num_classes=len(names), class_names=names,
                  category_parts=tuple(tuple(p) for p in parts),
                  num_parts=max(max(p) for p in parts) + 1, num_examples=len(source),
                  pool_points=pool,
                  prepared_dir=os.fspath(builder.data_dir))
  return source, info
