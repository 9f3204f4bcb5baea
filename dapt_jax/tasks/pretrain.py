"""Pre-training (SPEC §6): Point-MAE's masked autoencoder, Chamfer-L2 reconstruction loss.

Views (SPEC §6.1), per cloud and keyed by its global index: a random `num_points` of the stored
points without replacement, then `pc_norm` (subtract the centroid, divide by the largest point
norm); in training also a random anisotropic scale U(2/3, 3/2)³ and translation U(−0.2, 0.2)³.
No FPS of the input. Every dataset works: ShapeNet-55 (`shapenet55`), the generated shapes, or
any labelled set (its labels are ignored).

Evaluation: the mean Chamfer-L2 loss on the evaluation split, each cloud's view and mask drawn
from fixed keys (its index), so the number is deterministic and comparable across epochs.
Point-MAE keeps its last checkpoint and selects nothing by validation (its validation is
switched off), so `best_metric` is None: `checkpoints/best` is never written and `init_from`
a pre-training workdir reads its last checkpoint.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dapt_jax.models import mae
from dapt_jax import steps
from dapt_jax.data import augment
from dapt_jax.tasks import base

AXIS = steps.AXIS
EVAL_SEED = 0  # root of the evaluation views' and masks' keys


def random_subset(key: jax.Array, cloud: jax.Array, num_points: int) -> jax.Array:
  """`num_points` distinct points of one cloud [P, 3], in random order → [num_points, 3]."""
  return cloud[jax.random.permutation(key, cloud.shape[0])[:num_points]]


def pc_norm(cloud: jax.Array) -> jax.Array:
  """Centre one cloud [P, 3] on its centroid and scale its farthest point to norm 1."""
  cloud = cloud - jnp.mean(cloud, axis=0, keepdims=True)
  return cloud / jnp.max(jnp.sqrt(jnp.sum(cloud * cloud, axis=-1)))


@dataclasses.dataclass(frozen=True)
class Views:
  """How stored clouds become model inputs during pre-training."""
  num_points: int

  def one(self, key: jax.Array, cloud: jax.Array, augmented: bool) -> jax.Array:
    k_subset, k_aug = jax.random.split(key)
    x = pc_norm(random_subset(k_subset, cloud.astype(jnp.float32), self.num_points))
    return augment.scale_translate(k_aug, x[None])[0] if augmented else x

  def batch(self, keys: jax.Array, points: jax.Array, augmented: bool) -> jax.Array:
    """keys [b], points [b, P, 3] → [b, num_points, 3]."""
    return jax.vmap(lambda k, c: self.one(k, c, augmented))(keys, points)


def per_cloud_loss(net: Any, variables: dict, points: jax.Array, keys: jax.Array,
                   views: Views, train: bool, dropout_key: jax.Array | None = None
                   ) -> tuple[jax.Array, Any]:
  """Chamfer-L2 per cloud [b] (and the updated BatchNorm statistics in training).

  keys: one key per cloud; each gives the cloud's view and its mask.
  """
  view_keys, mask_keys = jnp.split(jax.vmap(lambda k: jax.random.split(k))(keys), 2, axis=1)
  x = views.batch(view_keys[:, 0], points, augmented=train)
  if train:
    (pred, target), updates = net.apply(variables, x, mask_keys[:, 0], train=True,
                                        rngs={'dropout': dropout_key}, mutable=['batch_stats'])
    return mae.chamfer_l2_per_cloud(pred, target), updates['batch_stats']
  pred, target = net.apply(variables, x, mask_keys[:, 0], train=False)
  return mae.chamfer_l2_per_cloud(pred, target), variables['batch_stats']


class UnlabelledSource(Sequence):
  """Any point-cloud source with its labels (and other fields) dropped: items {'points'}."""

  def __init__(self, source: Any):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {'points': np.asarray(self.source[i]['points'], np.float32)}

  def get_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    if hasattr(self.source, 'get_batch'):
      return {'points': np.asarray(self.source.get_batch(indices)['points'], np.float32)}
    return {'points': np.stack([self[int(i)]['points'] for i in indices])}


class PretrainTask(base.Task):
  """Point-MAE masked-autoencoder pre-training; every parameter normally trains."""
  name = 'pretrain'
  best_metric = None          # Point-MAE keeps the last checkpoint (see the module docstring)
  higher_is_better = False    # the logged metric, Chamfer loss, is lower-is-better
  device_fields = ('points', 'index')

  def __init__(self, config: Any):
    super().__init__(config)
    self.views = Views(int(config.data.num_points))

  def build_model(self, axis_name=None):
    return mae.build_model(self.config.model, axis_name=axis_name)

  def init_variables(self, net, key):
    return mae.init_variables(net, key, self.config.data.num_points)

  def sources(self):
    from dapt_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    dc = self.config.data
    train_source, train_info = data_lib.get_source(dc, dc.train_split)
    eval_source, eval_info = data_lib.get_source(dc, dc.eval_split)
    for info in (train_info, eval_info):
      if info.points_per_cloud < dc.num_points:
        raise base.TaskError(f'config.data.num_points={dc.num_points} exceeds the '
                             f'{info.points_per_cloud} points per stored cloud of {dc.name} '
                             f'({info.split})')
    return UnlabelledSource(train_source), UnlabelledSource(eval_source), eval_info

  def train_loss(self, net, variables, batch, key):
    view_key, drop_key = jax.random.split(key)
    keys = steps.sample_keys(view_key, batch['points'].shape[0])
    drop_key = jax.random.fold_in(drop_key, jax.lax.axis_index(AXIS))
    losses, batch_stats = per_cloud_loss(net, variables, batch['points'], keys, self.views,
                                         train=True, dropout_key=drop_key)
    loss = jnp.mean(losses)
    return loss, ({'loss_x1000': 1000.0 * loss}, batch_stats)

  def eval_outputs(self, net, variables, batch):
    # Keyed by the sample's position in the split: the same view and mask every evaluation.
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(EVAL_SEED), i))(
        batch['index'])
    losses, _ = per_cloud_loss(net, variables, batch['points'], keys, self.views, train=False)
    return {'loss': losses}

  def eval_metrics(self, outputs, batch, info):
    losses = np.asarray(outputs['loss'], np.float64)
    return {'loss': float(losses.mean()), 'loss_x1000': float(1000.0 * losses.mean()),
            'num_samples': int(losses.shape[0])}

  def saved_predictions(self, outputs, batch):
    return {'loss': outputs['loss'], 'index': batch['index']}

  def scalars(self, metrics):
    return {'loss': metrics['loss'], 'loss_x1000': metrics['loss_x1000']}

  def describe(self, metrics):
    return (f"Chamfer-L2 {metrics['loss_x1000']:.3f} ×1e-3 over "
            f"{metrics['num_samples']} clouds")
