"""Figures a run draws after training, chosen by its task (`Task.figure`).

    line = figures.after_training(config, workdir, summary)   # None: the task draws none

`segmentation`: `<workdir>/segmentation.png`, the first test shapes of different categories,
ground truth above and prediction below, coloured by part (`colours`, also the colours of the
labelled `.ply` files `--mode=predict` writes).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from dapt_jax import segmentation_metrics as metrics_lib
from dapt_jax import tasks
from dapt_jax import weights
from dapt_jax.data import part_source
from dapt_jax.tasks import segmentation

SEGMENTATION_FILE = 'segmentation.png'
SEGMENTATION_SHAPES = 8
# Part colours for figures and .ply files (cycled over the part ids of a category).
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [128, 128, 0]], np.uint8)


def colours(part: np.ndarray, category_parts: Any) -> np.ndarray:
  """uint8 [N, 3] colours of global part ids: the k-th part of its category gets PALETTE[k]."""
  local = np.zeros(int(max(max(p) for p in category_parts)) + 1, np.int64)
  for parts in category_parts:
    local[list(parts)] = np.arange(len(parts))
  return PALETTE[local[np.asarray(part)] % len(PALETTE)]


def _first_of_each_category(source: Any, num_classes: int, num_shapes: int) -> list[int]:
  """Split indices: one shape per category first (in split order), at most `num_shapes`."""
  first: dict = {}
  for i in range(len(source)):
    first.setdefault(int(source[i]['category']), i)
    if len(first) == num_classes or len(first) >= num_shapes:
      break
  return sorted(first.values())[:num_shapes]


def segmentation_figure(config: Any, workdir: str,
                        num_shapes: int = SEGMENTATION_SHAPES) -> Optional[str]:
  """Writes `<workdir>/segmentation.png` (see the module docstring) from the workdir's best
  checkpoint. Returns the path (None on other hosts than the first)."""
  if jax.process_index() != 0:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  task = segmentation.SegmentationTask(config)
  source, info = part_source.get_part_source(config.data, config.eval.split)
  net, variables, _ = weights.load_for_eval(config, workdir, task)
  chosen = _first_of_each_category(source, info.num_classes, num_shapes)
  batch = source.get_batch(chosen)
  batch['index'] = np.asarray(chosen, np.int32)
  dtype = jnp.promote_types(jnp.float32, net.dtype)
  points, target = jax.jit(
      lambda b: task.views.batch(segmentation.eval_keys(b['index']), b, False, dtype))(batch)
  logits = jax.jit(lambda v, p, c: net.apply(v, p, c, train=False))(variables, points,
                                                                     batch['category'])
  pred = np.asarray(metrics_lib.restricted_argmax(logits, batch['category'], task.mask))
  points, target = np.asarray(points), np.asarray(target)
  # Upright: ShapeNetPart is y-up, the synthetic objects z-up (matplotlib draws z up).
  axes = (0, 2, 1) if str(config.data.name) == 'shapenet_part' else (0, 1, 2)
  cols = min(4, len(chosen))
  rows = 2 * -(-len(chosen) // cols)  # ground truth above, prediction below, per shape
  fig = plt.figure(figsize=(3.2 * cols, 3.0 * rows))
  for k in range(len(chosen)):
    iou = metrics_lib.shape_ious(pred[k:k + 1], target[k:k + 1], batch['category'][k:k + 1],
                                 task.mask)[0]
    for row, (labels, title) in enumerate(((target[k], 'ground truth'),
                                           (pred[k], f'predicted (IoU {100 * iou:.0f} %)'))):
      slot = (2 * (k // cols) + row) * cols + k % cols + 1
      ax = fig.add_subplot(rows, cols, slot, projection='3d')
      xyz = points[k][:, axes]
      ax.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], s=2, linewidths=0,
                 c=colours(labels, info.category_parts) / 255.0)
      ax.set_title(f'{info.class_names[int(batch["category"][k])]}: {title}', fontsize=9)
      ax.set_axis_off()
      lim = np.abs(xyz).max()
      ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim), ax.set_zlim(-lim, lim)
  fig.tight_layout()
  path = os.path.join(workdir, SEGMENTATION_FILE)
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)
  return path


# Task.figure → (fn(config, workdir) → path or None, what the figure shows).
FIGURES: dict[str, tuple[Callable[[Any, str], Optional[str]], str]] = {
    'segmentation': (segmentation_figure, 'test shapes coloured by predicted parts'),
}


def after_training(config: Any, workdir: str, summary: dict) -> Optional[str]:
  """Draws the figure of the config's task once its run has a best checkpoint; returns the line
  main.py prints ('wrote PATH (what it shows)'), or None (no figure for this task, no
  evaluation has saved a best checkpoint yet, or not the first host)."""
  name = tasks.get_task(config).figure
  if name is None or summary.get('best_epoch') is None:
    return None
  draw, what = FIGURES[name]
  path = draw(config, workdir)
  return f'wrote {path} ({what})' if path else None
