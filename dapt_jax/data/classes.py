"""A run's class names: `classes.json` in the workdir, and `model.num_classes` from the data.

Training writes `<workdir>/classes.json` (`{"class_names": [...]}`, in label order) when it starts,
so prediction labels its outputs with the names of the run it loads, never with names from another
file. For the folder dataset `model.num_classes = 0` means "as many as the class folders".
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Optional, Sequence

from dapt_jax.data.errors import DataError

CLASSES_FILE = 'classes.json'


def write(workdir: str, class_names: Sequence[str]) -> str:
  """Writes `workdir/classes.json` atomically; returns its path."""
  path = os.path.join(workdir, CLASSES_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump({'class_names': [str(n) for n in class_names]}, f, indent=1)
  os.replace(tmp, path)
  return path


def read(directory: Optional[str]) -> Optional[list]:
  """The class names in `directory/classes.json`, or None when there is no such file."""
  if not directory:
    return None
  path = os.path.join(os.path.expanduser(directory), CLASSES_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      names = json.load(f)['class_names']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f'{path}: unreadable class list ({" ".join(str(e).split())})') from None
  if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
    raise DataError(f'{path}: "class_names" must be a non-empty list of strings')
  return names


def builtin(dc: Any, num_classes: int) -> Optional[list]:
  """The class names a dataset config implies without preparing anything (None if unknown):
  the benchmarks' official lists, the synthetic shapes, or the folder dataset's train/ folders."""
  name = str(dc.name)
  if name.startswith('scan_object_nn/'):
    from dapt_jax.data import scanobjectnn_files  # pylint: disable=g-import-not-at-top
    return list(scanobjectnn_files.CLASS_NAMES)
  if name == 'modelnet40':
    from dapt_jax.data import modelnet_files  # pylint: disable=g-import-not-at-top
    return list(modelnet_files.DEFAULT_CLASS_NAMES)
  if name == 'synthetic_shapes':
    from dapt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return list(synthetic.SHAPE_NAMES[:num_classes])
  if name == 'folder':
    from dapt_jax.data import folder  # pylint: disable=g-import-not-at-top
    return folder.class_names_in(str(dc.data_dir))
  return None


def with_num_classes(config: Any, class_names: Sequence[str], where: str) -> Any:
  """`config` with model.num_classes = len(class_names) when it is 0 (a copy); unchanged when it
  already agrees; DataError naming `where` when it disagrees."""
  k = int(config.model.num_classes)
  if k == len(class_names):
    return config
  if k == 0:
    config = copy.deepcopy(config)
    config.model.num_classes = len(class_names)
    return config
  shown = ', '.join(class_names[:8]) + (', ...' if len(class_names) > 8 else '')
  raise DataError(f'model.num_classes={k} but {where} has {len(class_names)} classes ({shown}); '
                  'set --config.model.num_classes=0 to take the count from the data')


def counted_by_preparing(config: Any) -> bool:
  """Whether the class count comes from preparing the data (the folder dataset): everything
  else about the run is worth checking before that."""
  return str(config.data.name) == 'folder'


def fit_to_data(config: Any) -> Any:
  """For the folder dataset: prepares the data (once; every bad file is found here, before a
  workdir is touched) and sets model.num_classes from its class folders. Other datasets: the
  config as it is (their class counts are fixed and checked when the data is opened)."""
  if not counted_by_preparing(config):
    return config
  from dapt_jax.data import sources  # pylint: disable=g-import-not-at-top  (pulls in TFDS)
  builder = sources.prepare_builder(config.data)
  names = list(builder.info.features['label'].names)
  train_dir = os.path.join(str(config.data.data_dir), 'train')
  split = str(config.data.train_split)
  if split in builder.info.splits:
    n = builder.info.splits[split].num_examples
    if n < int(config.batch_size):
      raise DataError(f'{train_dir}: the {split} split holds {n} clouds, fewer than one batch '
                      f'(batch_size={config.batch_size}); lower --config.batch_size')
  return with_num_classes(config, names, train_dir)
