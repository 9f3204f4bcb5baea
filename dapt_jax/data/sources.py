"""`get_source`: prepare (once) and open a dataset split as a random-access source.

The prepared TFDS copy lives under `tfds_data_dir/<dataset>/<config>/<version>/`. Next to its files
we keep `dapt_source.json`, a fingerprint of the user's files (real path, size and mtime of every file
read). When `data_dir` points at other or changed files, the fingerprint differs and the copy is
rebuilt instead of silently reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np

from dapt_jax.data import config as config_lib
from dapt_jax.data.errors import DataError

STAMP_FILE = 'dapt_source.json'


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What the training code needs to know about a split."""
  name: str  # dataset name as in the config, e.g. 'scan_object_nn/hardest'
  split: str
  num_classes: int
  class_names: list
  num_examples: int
  points_per_cloud: int  # P of every stored cloud
  prepared_dir: str  # the TFDS folder read ('' for in-memory sources)


class ArraySource(Sequence):
  """An in-memory source over arrays: points [S, P, 3] float32, labels [S] int."""

  def __init__(self, points: np.ndarray, labels: np.ndarray):
    self.points = np.asarray(points, np.float32)
    self.labels = np.asarray(labels, np.int32)
    if self.points.ndim != 3 or self.labels.shape != self.points.shape[:1]:
      raise ValueError(f'points {self.points.shape} and labels {self.labels.shape} do not match')

  def __len__(self) -> int:
    return self.points.shape[0]

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {'points': self.points[i], 'label': self.labels[i]}

  def get_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    idx = np.asarray(indices, np.int64)
    return {'points': self.points[idx], 'label': self.labels[idx]}


class PointCloudSource(Sequence):
  """Wraps a TFDS array_record data source: items are {'points': float32 [P, 3], 'label': int32}."""

  def __init__(self, data_source: Any):
    self._source = data_source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    if not -len(self) <= i < len(self):
      raise IndexError(f'index {i} out of range for a source of {len(self)} examples')
    ex = self._source[int(i) % len(self)]
    return {'points': np.asarray(ex['points'], np.float32), 'label': np.int32(ex['label'])}

  def get_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Reads several examples in one array_record call → stacked arrays."""
    examples = self._source.__getitems__([int(i) for i in indices])
    return {'points': np.stack([np.asarray(e['points'], np.float32) for e in examples]),
            'label': np.asarray([e['label'] for e in examples], np.int32)}


# ----------------------------------------------------------------------------------------------


def _opt(dc: Any, field: str, default: Any) -> Any:
  """Optional fields this module added on top of the training code's data config."""
  try:
    value = dc[field] if isinstance(dc, dict) else getattr(dc, field)
  except (AttributeError, KeyError):
    return default
  return default if value is None else value


def fingerprint_files(paths: Sequence[str], extra: Any = None) -> str:
  """sha256 over (real path, size, mtime_ns) of every file, plus `extra` (JSON-able)."""
  h = hashlib.sha256(json.dumps(extra, sort_keys=True).encode())
  for p in paths:
    st = os.stat(p)
    h.update(f'{os.path.realpath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
  return h.hexdigest()


def _builder_spec(dc: Any) -> tuple[Any, dict[str, Any], Optional[str], Optional[str]]:
  """(builder class, constructor kwargs, manual_dir, fingerprint) for `dc`; checks files exist."""
  from dapt_jax.data import builders  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import modelnet_files  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import scanobjectnn_files  # pylint: disable=g-import-not-at-top

  name = dc.name
  data_dir = os.path.expanduser(str(_opt(dc, 'data_dir', '')))
  if name.startswith('scan_object_nn/'):
    variant = name.split('/', 1)[1]
    files = scanobjectnn_files.split_files(data_dir, variant)
    fp = fingerprint_files([files['train'], files['test']], extra={'variant': variant})
    return builders.ScanObjectNN, {'config': variant}, data_dir, fp
  if name == 'modelnet40':
    fmt = str(_opt(dc, 'source_format', 'auto'))
    num_points = int(_opt(dc, 'modelnet_points', 8192))
    plan = modelnet_files.plan(data_dir, fmt)
    if (fmt, num_points) == ('auto', 8192):
      config = 'default'
    else:
      config = builders.ModelNet40Config(
          name=f'{fmt}_fps{num_points}', description='ModelNet40 prepared from the user\'s files.',
          source_format=fmt, num_points=num_points)
    fp = fingerprint_files(plan.all_files(), extra={'format': plan.source_format,
                                                    'num_points': num_points})
    return builders.ModelNet40, {'config': config}, data_dir, fp
  if name == 'shapenet_part':
    from dapt_jax.data import shapenet_part  # pylint: disable=g-import-not-at-top
    plan = shapenet_part.plan(data_dir)
    return builders.ShapeNetPart, {}, data_dir, fingerprint_files(plan.all_files())
  if name == 'shapenet55':
    from dapt_jax.data import shapenet55  # pylint: disable=g-import-not-at-top
    plan = shapenet55.plan(data_dir)
    return (builders.ShapeNet55, {'config': builders.shapenet55_config(plan.taxonomies)},
            data_dir, fingerprint_files(plan.all_files()))
  if name == 'synthetic_parts':
    config = builders.synthetic_parts_config(
        int(dc.synthetic_num_train), int(dc.synthetic_num_test), int(dc.synthetic_points),
        int(_opt(dc, 'synthetic_num_categories', 8)), int(dc.synthetic_seed))
    return builders.SyntheticParts, {'config': config}, None, None
  if name == 'modelnet_fewshot':
    from dapt_jax.data import fewshot  # pylint: disable=g-import-not-at-top
    way, shot, fold = fewshot.check_task(_opt(dc, 'way', 5), _opt(dc, 'shot', 10),
                                         _opt(dc, 'fold', 0))
    path = fewshot.fold_path(data_dir, way, shot, fold)
    names = fewshot.load_fold(path, way, shot).class_names  # validates the file before building
    config = builders.fewshot_config(way, shot, fold, path, names)
    fp = fingerprint_files([path], extra={'way': way, 'shot': shot, 'fold': fold})
    return builders.ModelNetFewshot, {'config': config}, data_dir, fp

  if name == 'folder':
    from dapt_jax.data import folder  # pylint: disable=g-import-not-at-top
    s = folder.settings(dc)
    plan = folder.plan(data_dir, s.test_fraction, s.split_seed)
    config = builders.folder_config(data_dir, plan.class_names, s)
    fp = fingerprint_files(plan.all_files(), extra={'settings': dataclasses.asdict(s),
                                                    'classes': list(plan.class_names),
                                                    'splits': list(plan.splits)})
    return builders.Folder, {'config': config}, data_dir, fp
  if name == 'synthetic_shapes':
    config = builders.synthetic_config(
        int(dc.synthetic_num_train), int(dc.synthetic_num_test), int(dc.synthetic_points),
        int(dc.synthetic_num_classes), int(dc.synthetic_seed),
        str(_opt(dc, 'synthetic_pose', 'so3')))
    return builders.SyntheticShapes, {'config': config}, None, None
  raise DataError(f'data.name: unknown dataset {name!r}; expected one of '
                  f'{", ".join(config_lib.DATASET_NAMES)}')


def _drop_custom_config_warning(record: logging.LogRecord) -> bool:
  return not str(record.msg).startswith('Using custom data configuration')


def _read_stamp(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def prepare_builder(dc: Any, prepare: bool = True) -> Any:
  """Builds the TFDS dataset for `dc` if needed (or rebuilds it if the source files changed).

  With prepare=False nothing is built: the builder of a current prepared copy, or None.
  """
  if dc.name == 'synthetic_shapes':  # validated before anything is generated
    from dapt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    k = int(dc.synthetic_num_classes)
    if not synthetic.MIN_CLASSES <= k <= len(synthetic.SHAPE_NAMES):
      raise DataError(f'data.synthetic_num_classes: {k} is outside [{synthetic.MIN_CLASSES}, '
                      f'{len(synthetic.SHAPE_NAMES)}]')
    for field in ('synthetic_num_train', 'synthetic_num_test', 'synthetic_points'):
      if int(dc[field] if isinstance(dc, dict) else getattr(dc, field)) < 1:
        raise DataError(f'data.{field}: must be at least 1')
    pose = _opt(dc, 'synthetic_pose', 'so3')
    if pose not in synthetic.POSES:
      raise DataError(f'data.synthetic_pose: {pose!r} is not one of {", ".join(synthetic.POSES)}')
  if dc.name == 'synthetic_parts':  # validated before anything is generated
    from dapt_jax.data import synthetic_parts  # pylint: disable=g-import-not-at-top
    k = int(_opt(dc, 'synthetic_num_categories', 8))
    if not synthetic_parts.MIN_CATEGORIES <= k <= len(synthetic_parts.CATEGORIES):
      raise DataError(f'data.synthetic_num_categories: {k} is outside '
                      f'[{synthetic_parts.MIN_CATEGORIES}, {len(synthetic_parts.CATEGORIES)}]')
    for field, low in (('synthetic_num_train', 1), ('synthetic_num_test', 1),
                       ('synthetic_points', 4)):
      if int(dc[field] if isinstance(dc, dict) else getattr(dc, field)) < low:
        raise DataError(f'data.{field}: must be at least {low}')
  cls, kwargs, manual_dir, fp = _builder_spec(dc)
  tfds_dir = os.path.expanduser(str(_opt(dc, 'tfds_data_dir', config_lib.DEFAULT_TFDS_DATA_DIR)))

  def make(root=tfds_dir):
    # TFDS warns about every config built at run time ("Using custom data configuration"); ours
    # are all made that way on purpose, so keep that one line out of the user's log.
    absl_logger = logging.getLogger('absl')
    absl_logger.addFilter(_drop_custom_config_warning)
    try:
      return cls(data_dir=root, file_format='array_record', **kwargs)
    finally:
      absl_logger.removeFilter(_drop_custom_config_warning)

  builder = make()
  prepared = os.path.join(builder.data_dir, 'dataset_info.json')
  if os.path.exists(prepared):
    stamp = _read_stamp(os.path.join(builder.data_dir, STAMP_FILE))
    if stamp is not None and stamp.get('fingerprint') == fp:
      return builder
  if not prepare:
    return None
  if os.path.exists(prepared):
    logging.warning('%s: the prepared copy in %s was made from other source files; rebuilding '
                    '(it stays until the new copy is complete).', dc.name, builder.data_dir)
  from dapt_jax.data import staging  # pylint: disable=g-import-not-at-top
  staging.prepare(make, os.fspath(builder.data_dir), tfds_dir, manual_dir, STAMP_FILE,
                  {'fingerprint': fp, 'data_dir': manual_dir, 'name': dc.name})
  builder = make()
  return builder


def get_source(dc: Any, split: str) -> tuple[PointCloudSource, SourceInfo]:
  """Opens `split` of the dataset named by `dc.name`, preparing it first if needed (the
  part-segmentation datasets open through `part_source.get_part_source`; `data.get_source`
  chooses).

  Args:
    dc: the data config (fields in `default_data_config`).
    split: a TFDS split name ('train', 'test', or a slice such as 'train[:10%]').

  Returns:
    (source, info): `source[i]` → {'points': float32 [P, 3], 'label': int32}; `info` a SourceInfo.

  Raises:
    DataError: missing or malformed files, or a bad config field (one-line message).
  """
  builder = prepare_builder(dc)
  try:
    data_source = builder.as_data_source(split)
  except (ValueError, KeyError, AssertionError) as e:
    raise DataError(f'{dc.name}: cannot open split {split!r} (available: '
                    f'{", ".join(builder.info.splits.keys())}): {" ".join(str(e).split())}') from e
  source = PointCloudSource(data_source)
  if not len(source):
    raise DataError(f'{dc.name}: split {split!r} is empty')
  names = list(builder.info.features['label'].names)
  info = SourceInfo(name=dc.name, split=split, num_classes=len(names), class_names=names,
                    num_examples=len(source), points_per_cloud=int(source[0]['points'].shape[0]),
                    prepared_dir=os.fspath(builder.data_dir))
  return source, info
