"""Part segmentation (SPEC §8): Point-MAE's segmentation network with DAPT, per-point NLL, IoU.

Views. A stored shape is a pool of points (`dapt_jax.data.part_source`: the shape's own
`num_points` rows first). The model sees `data.num_points` (2,048) of them drawn uniformly with
replacement — the reference loader's `np.random.choice(len(shape), 2048, replace=True)` — and in
training one isotropic scale U(0.8, 1.25) and a shift U(−0.1, 0.1)³ per cloud (SPEC §8.1). The
draws are keyed per sample: by its global position in the batch and the step in training
(fresh every step), by its index in the split in evaluation (the reference's test draw is random
too; here it is the same every evaluation, so epochs compare).

Loss: the negative log-likelihood of the log-softmax over all B·N points, every part id allowed
(no masking to the category in training, as the reference). Evaluation: per point the argmax over
the parts of the shape's category; shape IoU, instance / class mIoU, per-category IoU, point
accuracy (`dapt_jax.segmentation_metrics`). `checkpoints/best` follows the instance mIoU (the
reference saves on it).

After training the run draws `segmentation.png` (`dapt_jax.figures`); `--mode=predict` labels the
points of users' clouds (`dapt_jax.predict_parts`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dapt_jax import segmentation_metrics as metrics_lib
from dapt_jax.models import segmenter as model_lib
from dapt_jax import steps
from dapt_jax.data import part_source
from dapt_jax.tasks import base

AXIS = steps.AXIS
EVAL_SEED = 0  # root of the evaluation views' keys (one per sample index)
SCALE_RANGE = (0.8, 1.25)  # isotropic, per cloud (SPEC §8.1)
SHIFT_RANGE = (-0.1, 0.1)  # per axis, per cloud


def sample_view(key: jax.Array, pool: jax.Array, part: jax.Array, count: jax.Array,
                num_points: int, augment: bool) -> tuple[jax.Array, jax.Array]:
  """One shape's view: `num_points` of its first `count` pool rows, uniformly with replacement,
  then (augment) an isotropic scale and a shift.

  pool [P, 3], part [P], count scalar int → (points [num_points, 3], part [num_points]).
  """
  k_idx, k_scale, k_shift = jax.random.split(key, 3)
  u = jax.random.uniform(k_idx, (num_points,))
  idx = jnp.minimum((u * count).astype(jnp.int32), count - 1)
  points, labels = pool[idx], part[idx]
  if augment:
    scale = jax.random.uniform(k_scale, (), points.dtype, *SCALE_RANGE)
    shift = jax.random.uniform(k_shift, (3,), points.dtype, *SHIFT_RANGE)
    points = points * scale + shift
  return points, labels


@dataclasses.dataclass(frozen=True)
class Views:
  num_points: int
  augment: bool = True

  def batch(self, keys: jax.Array, batch: dict, train: bool, dtype: Any
            ) -> tuple[jax.Array, jax.Array]:
    """keys [b]; batch {'points' [b, P, 3], 'part' [b, P], 'num_points' [b]} → views."""
    pool = batch['points'].astype(jnp.promote_types(batch['points'].dtype, dtype))
    return jax.vmap(lambda k, p, l, n: sample_view(k, p, l, n, self.num_points,
                                                   train and self.augment))(
                                                       keys, pool, batch['part'],
                                                       batch['num_points'])


def eval_keys(index: jax.Array) -> jax.Array:
  """The evaluation draw of every sample, from its index in the split: [b] → keys [b]."""
  root = jax.random.PRNGKey(EVAL_SEED)
  return jax.vmap(lambda i: jax.random.fold_in(root, i))(index)


class SegmentationTask(base.Task):
  """DAPT (or full fine-tuning, or Point-MAE's own network) for part segmentation."""
  name = 'segmentation'
  best_metric = 'instance_miou'
  higher_is_better = True
  device_fields = ('points', 'part', 'num_points', 'category', 'index', 'mask')
  figure = 'segmentation'
  prediction = 'parts'

  def __init__(self, config: Any):
    super().__init__(config)
    dc = config.data
    self.views = Views(int(dc.num_points), bool(dc.get('augment', True)))
    self.category_parts = part_source.category_parts(dc)
    self.num_parts = max(max(p) for p in self.category_parts) + 1
    self.mask = metrics_lib.part_mask(self.category_parts, self.num_parts)

  # -- model --------------------------------------------------------------------------------

  def build_model(self, axis_name=None):
    return model_lib.build_model(self.config.model, axis_name=axis_name)

  def init_variables(self, net, key):
    return model_lib.init_variables(net, key, self.config.data.num_points)

  # -- data ---------------------------------------------------------------------------------

  def sources(self):
    config = self.config
    dc = config.data
    train_source, train_info = part_source.get_part_source(dc, dc.train_split)
    eval_source, eval_info = part_source.get_part_source(dc, dc.eval_split)
    self.check_model(train_info.name, train_info.num_classes, train_info.num_parts)
    return train_source, eval_source, eval_info

  def check_config(self):
    """The dataset's categories and part ids are known from its name alone."""
    self.check_model(self.config.data.name, len(self.category_parts), self.num_parts)

  def check_model(self, name: str, num_categories: int, num_parts: int) -> None:
    """The model's categories and parts must be the dataset's."""
    m = self.config.model
    if int(m.num_classes) != num_categories:
      raise base.TaskError(f'config.model.num_classes={m.num_classes} but {name} has '
                           f'{num_categories} categories')
    if int(m.num_parts) != num_parts:
      raise base.TaskError(f'config.model.num_parts={m.num_parts} but {name} has '
                           f'{num_parts} part ids')

  # -- per-device steps ---------------------------------------------------------------------

  def train_loss(self, net, variables, batch, key):
    view_key, drop_key = jax.random.split(key)
    keys = steps.sample_keys(view_key, batch['points'].shape[0])
    points, target = self.views.batch(keys, batch, True, net.dtype)
    drop_key = jax.random.fold_in(drop_key, jax.lax.axis_index(AXIS))
    logits, updates = net.apply(variables, points, batch['category'], train=True,
                                rngs={'dropout': drop_key}, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == target)
    return loss, ({'accuracy': accuracy}, updates['batch_stats'])

  def eval_outputs(self, net, variables, batch):
    points, target = self.views.batch(eval_keys(batch['index']), batch, False, net.dtype)
    logits = net.apply(variables, points, batch['category'], train=False,
                       valid=batch.get('mask'))
    pred = metrics_lib.restricted_argmax(logits, batch['category'], self.mask)
    return {'pred': pred, 'target': target}

  # -- host side ----------------------------------------------------------------------------

  def eval_metrics(self, outputs, batch, info):
    m = metrics_lib.segmentation_metrics(outputs['pred'], outputs['target'], batch['category'],
                                         info.category_parts, info.num_parts, info.class_names)
    m['num_samples'] = m['num_shapes']
    return m

  def saved_predictions(self, outputs, batch):
    return {'pred': outputs['pred'], 'target': outputs['target'],
            'category': batch['category'], 'index': batch['index']}

  def scalars(self, metrics):
    return {k: metrics[k] for k in ('instance_miou', 'class_miou', 'accuracy')}

  def describe(self, metrics):
    return (f"instance mIoU {100 * metrics['instance_miou']:.2f} %, class mIoU "
            f"{100 * metrics['class_miou']:.2f} %, point accuracy "
            f"{100 * metrics['accuracy']:.2f} %")
