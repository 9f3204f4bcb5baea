"""Part-segmentation metrics as ShapeNetPart reports them (SPEC §8.4).

  * Prediction: per point, the argmax over the logits of the parts of the shape's own category
    only (the category is known at test time).
  * Shape IoU: for every part l of the shape's category, |gt = l ∧ pred = l| / |gt = l ∨ pred = l|,
    or 1 when l is absent from both; averaged over the category's parts.
  * Instance mIoU: mean shape IoU over all shapes. Class mIoU: mean over categories of their shapes'
    mean (categories without shapes are left out). Point accuracy: fraction of points right.

Pure NumPy (and one jit-able JAX function for the on-device restriction), no data stack imports.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# ShapeNetPart (shapenetcore_partanno_segmentation_benchmark_v0_normal): category index = line of
# synsetoffset2category.txt; global part ids per category (SPEC §8.1).
SHAPENET_PART_CATEGORIES = ('Airplane', 'Bag', 'Cap', 'Car', 'Chair', 'Earphone', 'Guitar', 'Knife',
                            'Lamp', 'Laptop', 'Motorbike', 'Mug', 'Pistol', 'Rocket', 'Skateboard',
                            'Table')
SHAPENET_PART_PARTS = ((0, 1, 2, 3), (4, 5), (6, 7), (8, 9, 10, 11), (12, 13, 14, 15), (16, 17, 18),
                       (19, 20, 21), (22, 23), (24, 25, 26, 27), (28, 29), (30, 31, 32, 33, 34, 35),
                       (36, 37), (38, 39, 40), (41, 42, 43), (44, 45, 46), (47, 48, 49))
SHAPENET_PART_NUM_PARTS = 50


def part_mask(category_parts: Sequence[Sequence[int]], num_parts: int) -> np.ndarray:
  """[categories, num_parts] bool: which global part ids belong to each category.

  Raises:
    ValueError: a part id outside [0, num_parts), a category without parts, or a part listed under
      two categories.
  """
  mask = np.zeros((len(category_parts), num_parts), bool)
  for c, parts in enumerate(category_parts):
    if not len(parts):
      raise ValueError(f'category {c} has no parts')
    for p in parts:
      if not 0 <= int(p) < num_parts:
        raise ValueError(f'category {c}: part id {p} is outside [0, {num_parts})')
      mask[c, int(p)] = True
  if (mask.sum(0) > 1).any():
    raise ValueError(f'part {int(np.flatnonzero(mask.sum(0) > 1)[0])} belongs to two categories')
  return mask


def restricted_argmax(logits: jax.Array, category: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-point part prediction among the parts of each shape's category (jit-able).

  Args:
    logits: [B, N, num_parts].
    category: [B] int.
    mask: [categories, num_parts] bool (`part_mask`).

  Returns:
    [B, N] int32 global part ids; ties go to the lower part id.
  """
  allowed = jnp.asarray(mask)[category]                                  # [B, num_parts]
  masked = jnp.where(allowed[:, None, :], logits, -jnp.inf)
  return jnp.argmax(masked, axis=-1).astype(jnp.int32)


def restricted_argmax_np(logits: np.ndarray, category: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """NumPy twin of `restricted_argmax` (for host-side use and tests)."""
  allowed = np.asarray(mask, bool)[np.asarray(category, np.int64)]
  masked = np.where(allowed[:, None, :], np.asarray(logits), -np.inf)
  return np.argmax(masked, axis=-1).astype(np.int32)


def part_counts(pred: np.ndarray, gt: np.ndarray, num_parts: int) -> tuple[np.ndarray, ...]:
  """Per shape and part: (intersection, union, gt count), each [S, num_parts] int64.

  pred, gt: [S, N] int global part ids in [0, num_parts).
  """
  pred = np.asarray(pred, np.int64)
  gt = np.asarray(gt, np.int64)
  if pred.shape != gt.shape or pred.ndim != 2:
    raise ValueError(f'pred {pred.shape} and gt {gt.shape} must both be [shapes, points]')
  for name, x in (('pred', pred), ('gt', gt)):
    if x.size and (x.min() < 0 or x.max() >= num_parts):
      raise ValueError(f'{name} holds a part id outside [0, {num_parts})')
  s = pred.shape[0]
  offset = (np.arange(s, dtype=np.int64) * num_parts)[:, None]
  size = s * num_parts

  def count(ids):
    return np.bincount(ids.ravel(), minlength=size).reshape(s, num_parts)

  gt_count = count(gt + offset)
  pred_count = count(pred + offset)
  hit = pred == gt
  inter = np.bincount((gt + offset)[hit], minlength=size).reshape(s, num_parts)
  return inter, gt_count + pred_count - inter, gt_count


def shape_ious(pred: np.ndarray, gt: np.ndarray, category: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
  """IoU of every shape, averaged over its category's parts (absent from both = 1).

  Args:
    pred, gt: [S, N] int global part ids. category: [S] int. mask: `part_mask(...)`.

  Returns:
    [S] float64.
  """
  mask = np.asarray(mask, bool)
  category = np.asarray(category, np.int64)
  inter, union, _ = part_counts(pred, gt, mask.shape[1])
  iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)            # [S, num_parts]
  own = mask[category]                                                    # [S, num_parts]
  return (iou * own).sum(1) / own.sum(1)


def segmentation_metrics(pred: np.ndarray, gt: np.ndarray, category: np.ndarray,
                         category_parts: Sequence[Sequence[int]], num_parts: int,
                         category_names: Optional[Sequence[str]] = None) -> dict:
  """Instance and class mIoU, per-category IoU, point accuracy and per-part accuracy.

  Args:
    pred: [S, N] predicted global part ids (already restricted to each shape's category).
    gt: [S, N] ground-truth part ids. category: [S] category index per shape.
    category_parts: the global part ids of each category.
    num_parts: total number of part ids.
    category_names: names for the per-category entries (default: the indices as strings).

  Returns:
    {'instance_miou', 'class_miou', 'accuracy', 'mean_part_accuracy', 'per_category_iou'
    {name: IoU or None when the category has no shapes}, 'per_category_shapes' {name: count},
    'num_shapes', 'num_points'}; IoUs and accuracies are fractions.
  """
  mask = part_mask(category_parts, num_parts)
  category = np.asarray(category, np.int64)
  pred = np.asarray(pred)
  gt = np.asarray(gt)
  names = list(category_names) if category_names is not None else [
      str(c) for c in range(len(category_parts))]
  if len(names) != len(category_parts):
    raise ValueError(f'{len(names)} category names for {len(category_parts)} categories')
  if category.shape != pred.shape[:1]:
    raise ValueError(f'category {category.shape} does not match pred {pred.shape}')
  if category.size and (category.min() < 0 or category.max() >= len(category_parts)):
    raise ValueError(f'a category index is outside [0, {len(category_parts)})')
  ious = shape_ious(pred, gt, category, mask)
  per_category, shapes = {}, {}
  for c, name in enumerate(names):
    sel = category == c
    shapes[name] = int(sel.sum())
    per_category[name] = float(ious[sel].mean()) if sel.any() else None
  present = [v for v in per_category.values() if v is not None]
  # Per-part point accuracy over the parts that occur in the ground truth (the reference's
  # class_avg_accuracy).
  _, _, gt_count = part_counts(pred, gt, num_parts)
  seen = gt_count.sum(0)
  correct = np.bincount(np.asarray(gt, np.int64)[pred == gt], minlength=num_parts)
  part_acc = correct[seen > 0] / seen[seen > 0]
  return {
      'instance_miou': float(ious.mean()) if ious.size else 0.0,
      'class_miou': float(np.mean(present)) if present else 0.0,
      'accuracy': float(np.mean(pred == gt)) if gt.size else 0.0,
      'mean_part_accuracy': float(part_acc.mean()) if part_acc.size else 0.0,
      'per_category_iou': per_category,
      'per_category_shapes': shapes,
      'num_shapes': int(pred.shape[0]),
      'num_points': int(gt.size),
  }
