"""Cheap presence checks for a dataset, run before a run touches its workdir or builds a model.

`check_presence(dc)` looks at the user's files without preparing the dataset (it stats them and
reads at most their headers) and returns what it learned: the class count, the points stored per
cloud where that is known without reading the data, and the split names. It raises `DataError`
(one line naming the file or field) for a missing, unreadable or malformed file.

Each dataset registers its own check:

    @checks.register('my_dataset')          # an exact `data.name`, or a prefix ending in '/'
    def _check_mine(dc) -> checks.DataFacts: ...
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from dapt_jax.data.errors import DataError


@dataclasses.dataclass(frozen=True)
class DataFacts:
  """What a presence check learned about a dataset without preparing it."""
  num_classes: Optional[int] = None  # None: only known once the data is prepared
  points_per_cloud: Optional[int] = None  # points stored per cloud; None: not known cheaply
  splits: tuple[str, ...] = ('train', 'test')  # split names (TFDS slices such as train[:10%] allowed)


Check = Callable[[Any], DataFacts]
_CHECKS: dict[str, Check] = {}


def register(name: str) -> Callable[[Check], Check]:
  """Registers `fn(dc) -> DataFacts` for `data.name == name` (or every name under `name/`)."""
  def decorate(fn: Check) -> Check:
    _CHECKS[name] = fn
    return fn
  return decorate


def registered() -> tuple[str, ...]:
  return tuple(sorted(_CHECKS))


def _lookup(name: str) -> Optional[Check]:
  if name in _CHECKS:
    return _CHECKS[name]
  prefixes = [p for p in _CHECKS if p.endswith('/') and name.startswith(p) and len(name) > len(p)]
  return _CHECKS[max(prefixes, key=len)] if prefixes else None


def check_presence(dc: Any) -> DataFacts:
  """Checks that the files `dc` (a config's `data` section) names are there and readable."""
  check = _lookup(str(dc.name))
  if check is None:
    from dapt_jax.data import config as config_lib  # pylint: disable=g-import-not-at-top
    if str(dc.name) not in config_lib.DATASET_NAMES:
      raise DataError(f'data.name: unknown dataset {dc.name!r}; expected one of '
                      f'{", ".join(config_lib.DATASET_NAMES)}')
    # A dataset without a cheap check (folder, shapenet_part, synthetic_parts, shapenet55): its
    # files are checked, with one-line errors, when it is prepared; nothing is known before.
    data_dir = _data_dir(dc)
    if data_dir and not os.path.isdir(data_dir):
      raise DataError(f'data.data_dir={str(dc.data_dir)!r}: no such directory')
    return DataFacts(num_classes=None, points_per_cloud=None,
                     splits=tuple(s for s in ('train', 'val', 'test', 'train+val')))
  return check(dc)


def _data_dir(dc: Any) -> str:
  return os.path.expanduser(str(getattr(dc, 'data_dir', '') or ''))


def _h5_header(path: str) -> tuple[int, int]:
  """(samples, points per cloud) of an h5 file with `data` [S, P, 3] and `label` [S(, 1)], read
  from the header only."""
  import h5py  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise DataError(f'{path}: not a file')
  try:
    with h5py.File(path, 'r') as f:
      for key in ('data', 'label'):
        if key not in f:
          raise DataError(f'{path}: no dataset {key!r} in the file (has: '
                          f'{", ".join(sorted(f.keys())) or "nothing"})')
      shape, labels = f['data'].shape, f['label'].shape
  except DataError:
    raise
  except (OSError, KeyError, ValueError, RuntimeError) as e:
    detail = ' '.join(str(e).split()) or type(e).__name__
    raise DataError(f'{path}: unreadable or truncated HDF5 file ({detail})') from None
  if len(shape) != 3 or shape[-1] != 3 or not shape[0] or not shape[1]:
    raise DataError(f"{path}: dataset 'data' has shape {shape}, expected (samples, points, 3)")
  if not labels or labels[0] != shape[0]:
    raise DataError(f"{path}: dataset 'label' has shape {labels}, expected ({shape[0]},)")
  return int(shape[0]), int(shape[1])


@register('scan_object_nn/')
def _scan_object_nn(dc: Any) -> DataFacts:
  from dapt_jax.data import scanobjectnn_files  # pylint: disable=g-import-not-at-top
  variant = str(dc.name).split('/', 1)[1]
  if variant not in scanobjectnn_files.VARIANTS:
    raise DataError(f'data.name: unknown ScanObjectNN variant {variant!r}; expected one of '
                    f'{", ".join("scan_object_nn/" + v for v in scanobjectnn_files.VARIANTS)}')
  files = scanobjectnn_files.split_files(_data_dir(dc), variant)
  widths = {split: _h5_header(path)[1] for split, path in files.items()}
  if len(set(widths.values())) != 1:
    raise DataError(f'ScanObjectNN ({variant}): the train and test files hold different point '
                    f'counts ({widths["train"]} and {widths["test"]})')
  return DataFacts(num_classes=len(scanobjectnn_files.CLASS_NAMES),
                   points_per_cloud=widths['train'])


@register('modelnet40')
def _modelnet40(dc: Any) -> DataFacts:
  from dapt_jax.data import modelnet_files  # pylint: disable=g-import-not-at-top
  fmt = str(getattr(dc, 'source_format', 'auto'))
  num_points = getattr(dc, 'modelnet_points', 8192)
  if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
    raise DataError(f'data.modelnet_points={num_points!r}: must be a positive integer')
  plan = modelnet_files.plan(_data_dir(dc), fmt)
  unreadable = [p for p in plan.all_files() if not os.access(p, os.R_OK)]
  if unreadable:
    raise DataError(f'{unreadable[0]}: not readable'
                    + (f' (and {len(unreadable) - 1} more)' if len(unreadable) > 1 else ''))
  if plan.source_format == 'h5':
    widths = {_h5_header(p)[1] for s in modelnet_files.SPLITS for p in plan.files[s]}
    if len(widths) != 1:
      raise DataError(f'{plan.root}: the ply_data_*.h5 files hold different point counts '
                      f'{sorted(widths)}')
    stored = widths.pop()
  elif plan.source_format == 'txt':
    stored = num_points  # prepared by FPS to this many points
  else:
    stored = None  # the .dat pickle: only known once read
  return DataFacts(num_classes=len(plan.class_names), points_per_cloud=stored)


@register('synthetic_shapes')
def _synthetic(dc: Any) -> DataFacts:
  from dapt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  for field in ('synthetic_num_train', 'synthetic_num_test', 'synthetic_points',
                'synthetic_num_classes', 'synthetic_seed'):
    value = getattr(dc, field)
    if isinstance(value, bool) or not isinstance(value, int):
      raise DataError(f'data.{field}={value!r}: must be an integer')
  for field in ('synthetic_num_train', 'synthetic_num_test', 'synthetic_points'):
    if getattr(dc, field) < 1:
      raise DataError(f'data.{field}={getattr(dc, field)}: must be at least 1')
  k = dc.synthetic_num_classes
  if not synthetic.MIN_CLASSES <= k <= len(synthetic.SHAPE_NAMES):
    raise DataError(f'data.synthetic_num_classes={k}: must be in [{synthetic.MIN_CLASSES}, '
                    f'{len(synthetic.SHAPE_NAMES)}]')
  return DataFacts(num_classes=k, points_per_cloud=dc.synthetic_points)


@register('modelnet_fewshot')
def _modelnet_fewshot(dc: Any) -> DataFacts:
  from dapt_jax.data import fewshot  # pylint: disable=g-import-not-at-top
  way, shot, fold = fewshot.check_task(getattr(dc, 'way', 5), getattr(dc, 'shot', 10),
                                       getattr(dc, 'fold', 0))
  path = fewshot.fold_path(_data_dir(dc), way, shot, fold)
  if not os.access(path, os.R_OK):
    raise DataError(f'{path}: not readable')
  # The 40-way head's label space (the fold's own classes are labels 0..way-1); the stored point
  # count is only known once the pickle is read.
  return DataFacts(num_classes=40, points_per_cloud=None)


# Part segmentation. Shapes are sampled with replacement to data.num_points, so any count works
# (points_per_cloud None).
@register('shapenet_part')
def _shapenet_part(dc: Any) -> DataFacts:
  from dapt_jax.data import shapenet_part  # pylint: disable=g-import-not-at-top
  plan = shapenet_part.plan(_data_dir(dc))  # the lists parsed, the category folders listed
  return DataFacts(num_classes=len(plan.synsets), points_per_cloud=None,
                   splits=shapenet_part.SPLITS)


@register('synthetic_parts')
def _synthetic_parts(dc: Any) -> DataFacts:
  from dapt_jax.data import synthetic_parts  # pylint: disable=g-import-not-at-top
  for field in ('synthetic_num_train', 'synthetic_num_test', 'synthetic_points',
                'synthetic_num_categories', 'synthetic_seed', 'pool_points'):
    value = getattr(dc, field)
    if isinstance(value, bool) or not isinstance(value, int):
      raise DataError(f'data.{field}={value!r}: must be an integer')
  for field, low in (('synthetic_num_train', 1), ('synthetic_num_test', 1),
                     ('synthetic_points', 4), ('pool_points', 1)):
    if getattr(dc, field) < low:
      raise DataError(f'data.{field}={getattr(dc, field)}: must be at least {low}')
  k = dc.synthetic_num_categories
  if not synthetic_parts.MIN_CATEGORIES <= k <= len(synthetic_parts.CATEGORIES):
    raise DataError(f'data.synthetic_num_categories={k}: must be in '
                    f'[{synthetic_parts.MIN_CATEGORIES}, {len(synthetic_parts.CATEGORIES)}]')
  return DataFacts(num_classes=k, points_per_cloud=None)


# ----------------------------------------------------------------------------------------------
# Contents: what a preparation would find wrong in the files themselves, found before anything is
# prepared or a model built (run by `dapt_jax.validate` after the presence check).

_CONTENT_CHECKS: dict[str, Callable[[Any], None]] = {}


def register_contents(name: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
  """Registers `fn(dc)` that reads `data.name == name`'s source files and raises DataError."""
  def decorate(fn):
    _CONTENT_CHECKS[name] = fn
    return fn
  return decorate


def check_contents(dc: Any) -> None:
  """Reads and checks every source file of `dc` that its preparation would read, unless a prepared
  copy of exactly these files exists (it was checked when it was made). Writes nothing.

  Raises:
    DataError: one line naming the file and what is wrong in it.
  """
  check = _CONTENT_CHECKS.get(str(dc.name))
  if check is not None:
    check(dc)


@register_contents('modelnet_fewshot')
def _fewshot_contents(dc: Any) -> None:
  # The fold's structure, labels and clouds; memoised, so the builder of this process does not
  # read the pickle again.
  from dapt_jax.data import fewshot  # pylint: disable=g-import-not-at-top
  way, shot, fold = fewshot.check_task(getattr(dc, 'way', 5), getattr(dc, 'shot', 10),
                                       getattr(dc, 'fold', 0))
  fewshot.load_fold(fewshot.fold_path(_data_dir(dc), way, shot, fold), way, shot)


@register_contents('shapenet_part')
def _shapenet_part_contents(dc: Any) -> None:
  from dapt_jax.data import shapenet_part  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import sources  # pylint: disable=g-import-not-at-top
  if sources.prepare_builder(dc, prepare=False) is not None:
    return  # a prepared copy of these very files
  p = shapenet_part.plan(_data_dir(dc))
  for split in shapenet_part.SPLITS:  # columns (normals included), numbers, labels per category
    for category, _, path in p.files[split]:
      shapenet_part.read_shape(path, category)
