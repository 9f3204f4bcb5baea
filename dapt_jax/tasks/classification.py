"""Classification (SPEC §1–5): the DAPT classifier, cross-entropy, accuracy metrics.

The training view is SPEC §4's (FPS pool, random subset, scale and translate per cloud), the
evaluation view FPS to N, optionally with voting.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from dapt_jax import evaluate as eval_lib
from dapt_jax.models import classifier as model_lib
from dapt_jax import steps
from dapt_jax.data import augment
from dapt_jax.tasks import base

AXIS = steps.AXIS
sample_keys = steps.sample_keys


@dataclasses.dataclass(frozen=True)
class Views:
  """How clouds become model inputs (config.data fields and eval.votes)."""
  num_points: int
  point_all: int
  votes: int = 1
  skip_full_fps: bool = False
  augment: bool = True  # False: train on the evaluation view (config.data.augment)
  fps_impl: str = 'xla'  # model.fps_impl: 'xla' or 'pallas' (the same indices)

  def train(self, key: jax.Array, points: jax.Array) -> jax.Array:
    if not self.augment:
      return augment.eval_view(points, self.num_points, self.fps_impl)
    keys = sample_keys(key, points.shape[0])
    return augment.train_views_per_sample(keys, points, self.num_points, self.point_all,
                                          self.skip_full_fps, self.fps_impl)


def classification_loss(net: Any, variables: dict, batch: dict, key: jax.Array, views: Views
                        ) -> tuple[jax.Array, tuple[dict, Any]]:
  """Cross-entropy on the training views of this device's batch {'points', 'label'}."""
  aug_key, drop_key = jax.random.split(key)
  points = batch['points'].astype(jnp.promote_types(batch['points'].dtype, net.dtype))
  points = views.train(aug_key, points)  # (a float64 model views clouds in float64)
  drop_key = jax.random.fold_in(drop_key, jax.lax.axis_index(AXIS))
  labels = batch['label']
  logits, updates = net.apply(variables, points, train=True, rngs={'dropout': drop_key},
                              mutable=['batch_stats'])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, ({'accuracy': accuracy}, updates['batch_stats'])


def classification_logits(net: Any, variables: dict, points: jax.Array, views: Views,
                          valid: Optional[jax.Array] = None) -> jax.Array:
  """Logits [b, classes]. votes == 1: deterministic FPS to N. votes > 1: the logits of `votes`
  random views (subset + scale/translate, keyed by the sample's position and a fixed seed)
  averaged. `valid` [b] bool marks the real clouds of a padded batch (what a method that couples
  the clouds of a batch, PointGST's d_min, leaves the padding out of)."""
  apply = lambda pts: net.apply(variables, pts, train=False, valid=valid)
  if views.votes <= 1:
    return apply(augment.eval_view(points, views.num_points, views.fps_impl))
  keys = sample_keys(jax.random.PRNGKey(0), points.shape[0])
  stacked = augment.vote_views_per_sample(keys, points, views.num_points, views.point_all,
                                          views.votes, fps_impl=views.fps_impl)
  return jnp.mean(jax.lax.map(apply, stacked), axis=0)


class ClassificationTask(base.Task):
  """DAPT (or any partition of it) fine-tuned for shape classification."""
  name = 'classification'
  best_metric = 'accuracy'
  higher_is_better = True
  device_fields = ('points', 'mask')
  prediction = 'classes'

  def __init__(self, config: Any, votes: Optional[int] = None, views: Optional[Views] = None):
    """config: the run's config (None with explicit `views`: steps only, e.g. benchmarks)."""
    super().__init__(config)
    if views is None:
      dc = config.data
      views = Views(int(dc.num_points), int(dc.point_all),
                    int(config.eval.votes if votes is None else votes),
                    bool(dc.get('skip_full_fps', False)), bool(dc.get('augment', True)),
                    str(config.model.get('fps_impl', 'xla')))
    self.views = views

  def build_model(self, axis_name=None):
    return model_lib.build_model(self.config.model, axis_name=axis_name)

  def init_variables(self, net, key):
    return model_lib.init_variables(net, key, self.config.data.num_points)

  def sources(self):
    from dapt_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    config = self.config
    dc = config.data
    train_source, train_info = data_lib.get_source(dc, dc.train_split)
    eval_source, eval_info = data_lib.get_source(dc, dc.eval_split)
    if train_info.num_classes != config.model.num_classes:
      raise base.TaskError(f'config.model.num_classes={config.model.num_classes} but dataset '
                           f'{dc.name} has {train_info.num_classes} classes')
    if train_info.points_per_cloud < dc.num_points:
      raise base.TaskError(f'config.data.num_points={dc.num_points} exceeds the '
                           f'{train_info.points_per_cloud} points per stored cloud of {dc.name}')
    return train_source, eval_source, eval_info

  def train_loss(self, net, variables, batch, key):
    return classification_loss(net, variables, batch, key, self.views)

  def eval_outputs(self, net, variables, batch):
    return {'logits': classification_logits(net, variables, batch['points'], self.views,
                                            batch.get('mask'))}

  def eval_metrics(self, outputs, batch, info):
    return eval_lib.classification_metrics(outputs['logits'], batch['label'], info.num_classes,
                                           info.class_names)

  def saved_predictions(self, outputs, batch):
    return {'logits': outputs['logits'], 'labels': batch['label'], 'index': batch['index']}

  def scalars(self, metrics):
    return {'accuracy': metrics['accuracy'],
            'mean_class_accuracy': metrics['mean_class_accuracy']}

  def describe(self, metrics):
    return (f"accuracy {100 * metrics['accuracy']:.2f} % (mean class "
            f"{100 * metrics['mean_class_accuracy']:.2f} %)")


def make_steps(parallel: steps.DataParallel, net: Any, tx: optax.GradientTransformation,
               num_points: int, point_all: int, votes: int = 1, skip_full_fps: bool = False):
  """Classification's wrapped (train_step, eval_step) from explicit view settings, without a
  config (benchmarks, tests); the eval step returns logits [b, classes]."""
  task = ClassificationTask(None, views=Views(num_points, point_all, votes, skip_full_fps))
  train = parallel.wrap_train(functools.partial(steps.train_step, task=task, net=net, tx=tx))
  evaluate = parallel.wrap_eval(
      lambda state, batch: steps.eval_step(state, batch, task=task, net=net)['logits'])
  return train, evaluate
