"""`main.py --mode=tsne`: a 2-D t-SNE of the features a classifier feeds its head (SPEC §10.3).

For every cloud of the evaluation split (`config.eval.split`, each exactly once; the evaluation
view: FPS to N points, no augmentation), the head input of the workdir's best checkpoint (else
`--config.init_from`): DAPT's [cls, prompt mean, patch max] of its variant, Point-MAE's / the
other methods' [cls, patch max], IDPT's [cls, prompt, patch max]. Embedded with scikit-learn's
`TSNE(n_components=2, init='pca', random_state=0)`, every other argument at its default, each
axis min-max normalised to [0, 1], drawn 8 × 8 in with one colour per class (the DAPT release's
15 colours; more classes take evenly spaced hues), marker size 8, axes off.

Writes into the workdir: `tsne_<split>.png`, `tsne_<split>.npy` (the embedding, [S, 2] float32,
in source order) and `tsne_<split>_labels.npy` ([S] int). scikit-learn is imported only here.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from flax import linen as nn

from dapt_jax import errors
from dapt_jax.models import classifier as model_lib
from dapt_jax.data import augment
from dapt_jax.tasks import classification

# The DAPT release's t-SNE colours (SPEC §10.3), one per class.
COLOURS = ('#e6194B', '#3cb44b', '#4363d8', '#f58231', '#42d4f4', '#f032e6', '#fabed4',
           '#469990', '#dcbeff', '#9A6324', '#800000', '#000075', '#a9a9a9', '#888870', '#000000')


class TSNEError(errors.UserError):
  """A t-SNE that cannot run (a task without a classification head, missing scikit-learn)."""


def head_input(net: Any, variables: dict, points: jax.Array) -> jax.Array:
  """The [b, F] features `net`'s classification head receives (evaluation mode)."""
  captured = []

  def grab(next_fun, args, kwargs, context):
    if isinstance(context.module, model_lib.ClassifierHead) and context.method_name == '__call__':
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(grab):
    net.apply(variables, points, train=False)
  if len(captured) != 1:
    raise TSNEError(f'the model has {len(captured)} classification heads; --mode=tsne needs one')
  return captured[0]


class FeatureTask(classification.ClassificationTask):
  """Classification whose evaluation outputs are the head's input features (no metrics)."""

  def eval_outputs(self, net, variables, batch):
    points = augment.eval_view(batch['points'], self.views.num_points)
    return {'features': head_input(net, variables, points)}

  def eval_metrics(self, outputs, batch, info):
    return {}


def embed(features: np.ndarray) -> np.ndarray:
  """features [S, F] → t-SNE embedding [S, 2], each axis min-max normalised to [0, 1]."""
  try:
    from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise TSNEError('--mode=tsne needs scikit-learn: pip install -r requirements.txt') from None
  if len(features) < 2:
    raise TSNEError(f't-SNE needs at least 2 samples, the split has {len(features)}')
  # sklearn requires perplexity < n_samples; its default (30) is kept whenever it can be.
  perplexity = min(30.0, max(1.0, (len(features) - 1) / 3.0))
  emb = TSNE(n_components=2, init='pca', random_state=0, perplexity=perplexity).fit_transform(
      np.asarray(features, np.float64))
  lo, hi = emb.min(axis=0), emb.max(axis=0)
  return ((emb - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)


def colours(num_classes: int) -> list:
  if num_classes <= len(COLOURS):
    return list(COLOURS[:num_classes])
  import matplotlib  # pylint: disable=g-import-not-at-top
  cmap = matplotlib.colormaps['hsv']
  return [cmap(i / num_classes) for i in range(num_classes)]


def plot(embedding: np.ndarray, labels: np.ndarray, num_classes: int, path: str,
         title: str = '') -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  palette = colours(num_classes)
  fig = plt.figure(figsize=(8, 8))
  ax = fig.add_subplot(1, 1, 1)
  ax.scatter(embedding[:, 0], embedding[:, 1], s=8, c=[palette[int(l)] for l in labels])
  ax.axis('off')
  if title:
    ax.set_title(title, fontsize=9)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)


def run(config: Any, workdir: str) -> dict:
  """--mode=tsne: features of the evaluation split → embedding, PNG and .npy in the workdir.

  Returns {'png', 'npy', 'num_samples', 'feature_dim', 'checkpoint', 'split'}.
  """
  from dapt_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax import train  # pylint: disable=g-import-not-at-top
  if config.get('task', 'classification') != 'classification':
    raise TSNEError(f"--mode=tsne is for classification, not config.task={config.task!r}")
  config = data_lib.classes.fit_to_data(config)
  # The weights --mode=eval would evaluate (best checkpoint, else init_from).
  _, outputs, host, origin, info = train.evaluate_split(config, workdir,
                                                        FeatureTask(config, votes=1))
  split = config.eval.split
  features = np.asarray(outputs['features'], np.float64)
  order = np.argsort(host['index'], kind='stable')           # source order
  features, sample_labels = features[order], np.asarray(host['label'])[order]
  embedding = embed(features)
  os.makedirs(workdir, exist_ok=True)
  png = os.path.join(workdir, f'tsne_{split}.png')
  npy = os.path.join(workdir, f'tsne_{split}.npy')
  if jax.process_index() == 0:
    np.save(npy, embedding)
    np.save(os.path.join(workdir, f'tsne_{split}_labels.npy'), sample_labels.astype(np.int64))
    method = config.model.get('peft', 'dapt')
    plot(embedding, sample_labels, info.num_classes, png,
         f'{method}: head input ({features.shape[1]}-D) of {len(features)} {split} clouds')
  return {'png': png, 'npy': npy, 'num_samples': int(len(features)),
          'feature_dim': int(features.shape[1]), 'checkpoint': origin, 'split': split}
