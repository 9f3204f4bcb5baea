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

Prediction (`--mode=predict --input=FILE --category=NAME`): the cloud is normalised to the unit
sphere, the tokenizer sees 2,048 of its points (drawn with replacement, seeded), and every point
of the file is labelled through the feature propagation (the head is per point, so this is the
network's own interpolation, not a copy of labels). Writes `<stem>_parts.npy` (int32 global part
ids) and `<stem>_parts.ply` (xyz coloured by part) into the workdir.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dapt_jax import segmentation_metrics as metrics_lib
from dapt_jax.models import segmenter as model_lib
from dapt_jax import steps
from dapt_jax.data import part_source
from dapt_jax.tasks import base

log = logging.getLogger('dapt_jax')

AXIS = steps.AXIS
EVAL_SEED = 0  # root of the evaluation views' keys (one per sample index)
SCALE_RANGE = (0.8, 1.25)  # isotropic, per cloud (SPEC §8.1)
SHIFT_RANGE = (-0.1, 0.1)  # per axis, per cloud
FIGURE_FILE = 'segmentation.png'
FIGURE_SHAPES = 8
PREDICT_CHUNK = 8192  # query points per forward pass when labelling a large cloud
# Part colours for figures and .ply files (cycled over the part ids of a category).
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [128, 128, 0]], np.uint8)


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
  device_fields = ('points', 'part', 'num_points', 'category', 'index')

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
    self.check_model(train_info)
    return train_source, eval_source, eval_info

  def check_model(self, info: Any) -> None:
    """The model's categories and parts must be the dataset's."""
    m = self.config.model
    if int(m.num_classes) != info.num_classes:
      raise base.TaskError(f'config.model.num_classes={m.num_classes} but {info.name} has '
                           f'{info.num_classes} categories')
    if int(m.num_parts) != info.num_parts:
      raise base.TaskError(f'config.model.num_parts={m.num_parts} but {info.name} has '
                           f'{info.num_parts} part ids')

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
    logits = net.apply(variables, points, batch['category'], train=False)
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


# ---------------------------------------------------------------------------------------------
# Outside the training loop: a figure of test shapes, and labelling a cloud from a file.


def _load(config: Any, workdir: Optional[str]):
  """(net, variables, where they came from) of the workdir's best checkpoint (else init_from).

  A training workdir's checkpoint holds every variable, so the model is not initialised (that
  would compile the whole network once more) but only shaped; otherwise (`init_from` alone)
  initialised and merged as training does.
  """
  from dapt_jax import checkpoints as ckpt_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax import train  # pylint: disable=g-import-not-at-top
  if workdir and ckpt_lib.is_workdir(workdir):
    task = SegmentationTask(config)
    net = task.build_model()
    shapes = jax.eval_shape(lambda k: task.init_variables(net, k), jax.random.PRNGKey(0))
    variables = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
    labels = None
  else:
    net, variables, labels = train.build(config)
  variables, origin = train._variables_for_eval(config, workdir, net, variables, labels)  # pylint: disable=protected-access
  return net.clone(axis_name=None), variables, origin


def colours(part: np.ndarray, category_parts: Any) -> np.ndarray:
  """uint8 [N, 3] colours of global part ids: the k-th part of its category gets PALETTE[k]."""
  local = np.zeros(int(max(max(p) for p in category_parts)) + 1, np.int64)
  for parts in category_parts:
    local[list(parts)] = np.arange(len(parts))
  return PALETTE[local[np.asarray(part)] % len(PALETTE)]


def save_figure(config: Any, workdir: str, num_shapes: int = FIGURE_SHAPES) -> Optional[str]:
  """Writes `<workdir>/segmentation.png`: the first test shapes of different categories, ground
  truth above and prediction below, coloured by part. Returns the path (None on other hosts)."""
  if jax.process_index() != 0:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  task = SegmentationTask(config)
  source, info = part_source.get_part_source(config.data, config.eval.split)
  net, variables, _ = _load(config, workdir)
  # One shape per category first (in split order), then more as needed.
  first: dict = {}
  for i in range(len(source)):
    c = int(source[i]['category'])
    first.setdefault(c, i)
    if len(first) == info.num_classes or len(first) >= num_shapes:
      break
  chosen = sorted(first.values())[:num_shapes]
  batch = source.get_batch(chosen)
  batch['index'] = np.asarray(chosen, np.int32)
  dtype = jnp.promote_types(jnp.float32, net.dtype)
  points, target = jax.jit(lambda b: task.views.batch(eval_keys(b['index']), b, False, dtype))(
      batch)
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
  path = os.path.join(workdir, FIGURE_FILE)
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)
  return path


@dataclasses.dataclass
class PartPrediction:
  input: str
  category: str
  part: np.ndarray  # [R] int32 global part ids, one per input point
  npy_path: Optional[str]
  ply_path: Optional[str]
  counts: dict  # part id → points


def write_ply(path: str, xyz: np.ndarray, rgb: np.ndarray, part: np.ndarray) -> None:
  """Binary little-endian PLY: x y z (float32), red green blue (uint8), part (int32)."""
  n = xyz.shape[0]
  header = ('ply\nformat binary_little_endian 1.0\n'
            f'comment dapt-jax part segmentation\nelement vertex {n}\n'
            'property float x\nproperty float y\nproperty float z\n'
            'property uchar red\nproperty uchar green\nproperty uchar blue\n'
            'property int part\nend_header\n')
  rec = np.zeros(n, dtype=[('xyz', '<f4', 3), ('rgb', 'u1', 3), ('part', '<i4')])
  rec['xyz'], rec['rgb'], rec['part'] = xyz, rgb, part
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(header.encode('ascii'))
    f.write(rec.tobytes())
  os.replace(tmp, path)


def category_index(name: Optional[str], class_names: list) -> int:
  """The category `name` names (case-insensitive; a number is an index)."""
  from dapt_jax import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  if not name:
    raise eval_lib.InputError('--mode=predict for part segmentation needs --category=NAME (one of '
                              f'{", ".join(class_names)})')
  lowered = [n.lower() for n in class_names]
  if name.lower() in lowered:
    return lowered.index(name.lower())
  if name.isdigit() and int(name) < len(class_names):
    return int(name)
  raise eval_lib.InputError(f'--category={name}: not a category of this model (one of '
                            f'{", ".join(class_names)})')


def predict_parts(config: Any, workdir: Optional[str], input_spec: str,
                  category: Optional[str]) -> list[PartPrediction]:
  """Labels every point of every cloud `input_spec` names (a file, folder or glob) as parts of
  `category`; writes `<stem>_parts.npy` and `<stem>_parts.ply` into the workdir."""
  from dapt_jax import evaluate as eval_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax import predict as predict_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import classes as classes_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import clouds  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import preprocess  # pylint: disable=g-import-not-at-top

  if workdir is None:
    raise eval_lib.InputError('--mode=predict for part segmentation needs --workdir (the run to '
                              'load, and where the labelled clouds are written)')
  task = SegmentationTask(config)
  names = classes_lib.read(workdir) or classes_lib.read(config.init_from) or names_of(config)
  c = category_index(category, names)
  paths = predict_lib.find_inputs(input_spec)
  minimum = int(config.model.group_size)
  raw = []
  for p in paths:  # every file read and checked before the model is built
    cloud = clouds.read_cloud(p, seed=0)
    if cloud.shape[0] < minimum:
      raise eval_lib.InputError(f'{p}: {cloud.shape[0]} point(s), fewer than one patch of '
                                f'{minimum}')
    raw.append(preprocess.normalize_unit_sphere(cloud[None].astype(np.float32))[0])
  net, variables, origin = _load(config, workdir)
  log.info('Labelling %d cloud(s) as %s with %s', len(paths), names[c], origin)
  n = int(config.data.num_points)

  @jax.jit
  def label(variables, points, query, category):
    logits = net.apply(variables, points, category, train=False, query=query)
    return metrics_lib.restricted_argmax(logits, category, task.mask)

  out = []
  for path, cloud in zip(paths, raw):
    rng = np.random.default_rng(clouds.stable_seed(os.path.abspath(path)))
    sample = cloud[rng.choice(cloud.shape[0], n, replace=True)][None]
    parts = []
    for start in range(0, cloud.shape[0], PREDICT_CHUNK):
      q = cloud[start:start + PREDICT_CHUNK]
      pad = PREDICT_CHUNK - q.shape[0] if cloud.shape[0] > PREDICT_CHUNK else 0
      q = np.concatenate([q, np.repeat(q[:1], pad, 0)]) if pad else q
      got = np.asarray(label(variables, sample, q[None], jnp.array([c], jnp.int32)))[0]
      parts.append(got[:got.shape[0] - pad])
    part = np.concatenate(parts).astype(np.int32)
    stem = os.path.join(workdir, os.path.splitext(os.path.basename(path))[0] + '_parts')
    npy_path, ply_path = None, None
    if jax.process_index() == 0:
      npy_path, ply_path = stem + '.npy', stem + '.ply'
      with open(npy_path + '.tmp', 'wb') as f:
        np.save(f, part)
      os.replace(npy_path + '.tmp', npy_path)
      write_ply(ply_path, cloud, colours(part, task.category_parts), part)
    ids, counts = np.unique(part, return_counts=True)
    out.append(PartPrediction(path, names[c], part, npy_path, ply_path,
                              {int(i): int(k) for i, k in zip(ids, counts)}))
  return out


def names_of(config: Any) -> list:
  """The category names of the config's dataset (without preparing it)."""
  if str(config.data.name) == 'shapenet_part':
    return list(metrics_lib.SHAPENET_PART_CATEGORIES)
  from dapt_jax.data import synthetic_parts  # pylint: disable=g-import-not-at-top
  return list(synthetic_parts.CATEGORY_NAMES[:int(config.model.num_classes)])


def predict_summary(results: list[PartPrediction]) -> str:
  lines = []
  for r in results:
    parts = ', '.join(f'part {i}: {k}' for i, k in sorted(r.counts.items()))
    lines.append(f'{r.input}: {len(r.part)} points as {r.category} ({parts})')
    if r.npy_path:
      lines.append(f'wrote {r.npy_path} and {r.ply_path}')
  return '\n'.join(lines)
