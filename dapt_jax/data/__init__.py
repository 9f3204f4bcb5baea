"""Datasets for DAPT: TFDS builders, host-side loaders and on-device augmentation.

    from dapt_jax import data
    dc = data.default_data_config('scan_object_nn/hardest')
    source, info = data.get_source(dc, dc.train_split)   # prepares the TFDS copy on first use
    loader = data.TrainLoader(source, global_batch_size=32, seed=0)
    for batch in loader.epoch(0): ...                    # host numpy batches
    x = data.augment.train_view(key, batch['points'], dc.num_points, dc.point_all)  # on device

Importing this package (or `dapt_jax.data.augment`) does not import TFDS, grain or h5py; they are
loaded when a dataset is first prepared or opened.
"""
from dapt_jax.data.config import DATASET_NAMES
from dapt_jax.data.config import DEFAULT_TFDS_DATA_DIR
from dapt_jax.data.config import default_data_config
from dapt_jax.data.errors import DataError
from dapt_jax.data.loader import EvalLoader
from dapt_jax.data.loader import TrainLoader


def get_source(dc, split):
  """See `dapt_jax.data.sources.get_source` (imported lazily: it pulls in TFDS); the
  part-segmentation datasets: `dapt_jax.data.part_source.get_part_source`."""
  from dapt_jax.data import part_source  # pylint: disable=g-import-not-at-top
  if dc.name in part_source.PART_DATASETS:  # items with per-point part labels
    return part_source.get_part_source(dc, split)
  from dapt_jax.data import sources  # pylint: disable=g-import-not-at-top
  return sources.get_source(dc, split)


def check_presence(dc):
  """See `dapt_jax.data.checks.check_presence`: the files are there (cheap; nothing prepared)."""
  from dapt_jax.data import checks  # pylint: disable=g-import-not-at-top
  return checks.check_presence(dc)


def check_contents(dc):
  """See `dapt_jax.data.checks.check_contents`: the files' contents (before any preparation)."""
  from dapt_jax.data import checks  # pylint: disable=g-import-not-at-top
  checks.check_contents(dc)


def __getattr__(name):
  # `data.augment`, `data.sources`, ... as attributes without importing them eagerly.
  import importlib  # pylint: disable=g-import-not-at-top
  if name in ('augment', 'sources', 'checks', 'builders', 'readers', 'synthetic', 'preprocess',
              'modelnet_files', 'scanobjectnn_files', 'clouds', 'folder', 'folder_example',
              'classes'):
    return importlib.import_module(f'dapt_jax.data.{name}')
  if name in ('ArraySource', 'PointCloudSource', 'SourceInfo'):
    return getattr(importlib.import_module('dapt_jax.data.sources'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
