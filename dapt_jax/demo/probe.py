r"""Linear probe of frozen backbones on the demo's generated clouds: does pre-training help at all?

    python -m dapt_jax.demo.probe                                   # the shipped backbone
    python -m dapt_jax.demo.probe --backbone runs/pretrain_upright --pose upright
    python -m dapt_jax.demo.probe --backbone A --backbone B --train-clouds 100

For a random backbone and each `--backbone` (a converted directory or a pre-training workdir of
the demo's size, configs/synthetic.py), the features Point-MAE's classifier hands its head
(`--config.model.peft=full`: the class token and the max over patch tokens after the final norm,
evaluation mode, FPS to 512 of each cloud's 1,024 points) are computed for the demo's training and
test clouds, standardised with the training clouds' statistics, and a logistic regression
(scikit-learn, L2, C = 1) is fit on the training clouds. The printed figure is its test accuracy.
Nothing is trained in the backbone, so this isolates what pre-training put into the frozen
features (docs/benchmarks.md, "The demo"). Chance is 10 %.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from dapt_jax.demo import compare

DEFAULT_BACKBONE = 'assets/pretrained/synthetic_small'
BATCH = 128


def feature_fn(net, num_points: int):
  """A function (variables, [S, P, 3] clouds) → [S, F] head-input features (evaluation view),
  compiled once per batch shape and run in batches of BATCH."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import augment  # pylint: disable=g-import-not-at-top
  from dapt_jax import tsne  # pylint: disable=g-import-not-at-top

  fn = jax.jit(lambda v, p: tsne.head_input(net, v, augment.eval_view(p, num_points)))

  def features(variables, points):
    return np.concatenate([np.asarray(fn(variables, points[i:i + BATCH]))
                           for i in range(0, len(points), BATCH)])
  return features


def probe_accuracy(train_x, train_y, test_x, test_y) -> float:
  """Test accuracy of a logistic regression on standardised features."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  scaler = StandardScaler().fit(train_x)
  clf = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(train_x), train_y)
  return float(clf.score(scaler.transform(test_x), test_y))


def probe(backbones: Sequence[Optional[str]], pose: str = 'so3',
          train_clouds: Optional[int] = None, seed: int = 0) -> list[tuple[str, float]]:
  """[(name, test accuracy)] for each backbone (None: randomly initialised with `seed`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import synthetic as synthetic_config  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import classifier as model_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax import pretrained  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  c = synthetic_config.get_config()
  dc = c.data
  num_train = dc.synthetic_num_train if train_clouds is None else train_clouds
  clouds = {split: synthetic.generate(n, dc.synthetic_points, dc.synthetic_num_classes,
                                      dc.synthetic_seed, stream, pose)
            for stream, (split, n) in enumerate((('train', num_train),
                                                 ('test', dc.synthetic_num_test)))}
  c.unlock()
  c.model.peft = 'full'
  c.lock()
  net = model_lib.build_model(c.model)
  init = model_lib.init_variables(net, jax.random.PRNGKey(seed), dc.num_points)
  features = feature_fn(net, dc.num_points)
  results = []
  for backbone in backbones:
    variables = init
    if backbone is not None:
      variables, _ = pretrained.merge_pretrained(init, pretrained.load_converted(backbone))
    f = {s: features(variables, x) for s, (x, _) in clouds.items()}
    acc = probe_accuracy(f['train'], clouds['train'][1], f['test'], clouds['test'][1])
    results.append(('random' if backbone is None else backbone, acc))
  return results


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m dapt_jax.demo.probe',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--backbone', action='append', default=None,
                 help=f'a backbone directory (repeatable; default {DEFAULT_BACKBONE})')
  p.add_argument('--pose', default='so3', choices=compare.POSES,
                 help="the generated clouds' poses (data.synthetic_pose)")
  p.add_argument('--train-clouds', type=int, default=None,
                 help="training clouds for the probe (default: the demo's 1,024)")
  p.add_argument('--seed', type=int, default=0, help='seed of the random backbone')
  args = p.parse_args(argv)
  from configs import synthetic as synthetic_config  # pylint: disable=g-import-not-at-top
  dc = synthetic_config.get_config().data
  backbones = args.backbone or [DEFAULT_BACKBONE]
  for b in backbones:
    if not os.path.isdir(b):
      print(f'error: --backbone {b}: no such directory', file=sys.stderr)
      return 2
  if args.train_clouds is not None and args.train_clouds < dc.synthetic_num_classes:
    print(f'error: --train-clouds {args.train_clouds}: need at least one cloud per class '
          f'({dc.synthetic_num_classes})', file=sys.stderr)
    return 2
  from dapt_jax import pretrained  # pylint: disable=g-import-not-at-top
  try:
    results = probe([None] + backbones, args.pose, args.train_clouds, args.seed)
  except pretrained.PretrainedError as e:
    print(f'error: {str(e).splitlines()[0]}', file=sys.stderr)
    return 2
  num_train = dc.synthetic_num_train if args.train_clouds is None else args.train_clouds
  print(f'linear probe of frozen features, {args.pose} clouds ({num_train:,} training, '
        f'{dc.synthetic_num_test:,} test; chance {100 / dc.synthetic_num_classes:.0f} %):')
  for name, acc in results:
    print(f'  {100 * acc:5.1f} %  {name}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
