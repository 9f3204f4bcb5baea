"""Few-shot ModelNet40 (SPEC §7): the Point-BERT / Point-MAE `ModelNetFewshot` folds.

Layout under `data_dir` (as distributed; Point-MAE's DATASET.md):

    5way10shot/0.pkl ... 9.pkl      5way20shot/...      10way10shot/...      10way20shot/...

(Point-MAE's loader spells the folders `5way_10shot`; either spelling is accepted.) Each pickle is
a dict `{'train': [...], 'test': [...]}` of `(points, label, orig)` triples: points a float
[P, 6] array (xyz + normals, P = 8192), label the task's class 0..way-1, orig that class's index
among the 40 ModelNet40 classes (a NumPy integer). `train` holds `shot` shapes per class, `test`
20 per class.

The pickle is read without executing code (`readers.safe_load_pickle`: NumPy arrays and scalars,
lists, tuples, string-keyed dicts and numbers only). Only xyz is kept, each shape centred and
scaled to the unit sphere. The model keeps the recipe's 40-way head, so the dataset's label space
is 40 classes: the fold's classes first, in label order (labels 0..way-1 as stored), then the
other ModelNet40 classes, which no sample carries (they count in no per-class average).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from dapt_jax.data import modelnet_files
from dapt_jax.data import readers
from dapt_jax.data.errors import DataError

SPLITS = ('train', 'test')
TEST_PER_CLASS = 20  # Point-BERT's folds hold 20 test shapes per class
INSTRUCTIONS = (
    'Get ModelNetFewshot (linked from the Point-BERT / Point-MAE DATASET.md) and point '
    'data.data_dir at the folder holding 5way10shot/, 5way20shot/, 10way10shot/ and 10way20shot/.')


def folder_names(way: int, shot: int) -> tuple[str, str]:
  """The two spellings of a task's folder: DATASET.md's and Point-MAE's loader's."""
  return f'{way}way{shot}shot', f'{way}way_{shot}shot'


def check_task(way: Any, shot: Any, fold: Any) -> tuple[int, int, int]:
  """data.way / data.shot / data.fold as ints, or a DataError naming the field."""
  out = []
  for field, value, low in (('way', way, 2), ('shot', shot, 1), ('fold', fold, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise DataError(f'data.{field}={value!r}: must be an integer ≥ {low}')
    out.append(int(value))
  return tuple(out)


def fold_path(root: str, way: int, shot: int, fold: int) -> str:
  """`root/<way>way<shot>shot/<fold>.pkl` (or the underscore spelling); DataError if neither."""
  tried = [os.path.join(root, name, f'{fold}.pkl') for name in folder_names(way, shot)]
  for path in tried:
    if os.path.isfile(path):
      return path
  present = sorted(n for n in (os.listdir(root) if os.path.isdir(root) else [])
                   if 'way' in n and os.path.isdir(os.path.join(root, n)))
  has = f' (it has: {", ".join(present)})' if present else ''
  raise DataError(f'modelnet_fewshot: missing {tried[0]} (or {tried[1]}) for data.way={way}, '
                  f'data.shot={shot}, data.fold={fold} in data.data_dir={root!r}{has}. '
                  f'{INSTRUCTIONS}')


@dataclasses.dataclass(frozen=True)
class Fold:
  """One fold, read and checked: per split xyz [S, P, 3] (unit sphere) and labels [S]."""
  path: str
  points: dict  # split → float32 [S, P, 3]
  labels: dict  # split → int32 [S]
  class_names: tuple  # 40 names: the fold's classes in label order, then the rest


def _triples(path: str, obj: Any, split: str) -> list:
  items = obj.get(split)
  if not isinstance(items, (list, tuple)) or not items:
    raise DataError(f'{path}: {split!r} must be a non-empty list of (points, label, class) '
                    f'triples, got {type(items).__name__}')
  for i, item in enumerate(items):
    if not isinstance(item, (list, tuple)) or len(item) != 3:
      raise DataError(f'{path}: {split}[{i}] is not a (points, label, class) triple')
  return items


def _integer(path: str, where: str, value: Any) -> int:
  arr = np.asarray(value)
  if arr.size != 1 or arr.dtype.kind not in 'iu':
    raise DataError(f'{path}: {where} is {value!r}, expected one integer')
  return int(arr.reshape(-1)[0])


def read_fold(path: str, way: int, shot: int) -> Fold:
  """Reads and validates one fold pickle (see the module docstring); DataError on any problem."""
  from dapt_jax.data import preprocess  # pylint: disable=g-import-not-at-top  (pulls in JAX)

  obj = readers.safe_load_pickle(path, allow_dicts=True)
  if not isinstance(obj, dict) or set(obj) != set(SPLITS):
    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise DataError(f'{path}: expected a dict with keys train and test, got {keys}')
  names = modelnet_files.DEFAULT_CLASS_NAMES
  label_to_orig: dict[int, int] = {}
  points, labels, widths = {}, {}, set()
  for split in SPLITS:
    items = _triples(path, obj, split)
    clouds, labs = [], []
    for i, (cloud, label, orig) in enumerate(items):
      cloud = np.asarray(cloud)
      if cloud.ndim != 2 or cloud.shape[1] < 3 or cloud.dtype.kind != 'f':
        raise DataError(f'{path}: {split}[{i}] points have shape {cloud.shape} and dtype '
                        f'{cloud.dtype}, expected a float (points, 6) array')
      widths.add(cloud.shape[0])
      if len(widths) > 1:
        raise DataError(f'{path}: {split}[{i}] has {cloud.shape[0]} points, other shapes '
                        f'{min(widths - {cloud.shape[0]})}; every shape must have as many')
      label = _integer(path, f'{split}[{i}] label', label)
      orig = _integer(path, f'{split}[{i}] class', orig)
      if not 0 <= label < way:
        raise DataError(f'{path}: {split}[{i}] has label {label}, outside 0..{way - 1} for '
                        f'data.way={way}')
      if not 0 <= orig < len(names):
        raise DataError(f'{path}: {split}[{i}] has ModelNet40 class {orig}, outside 0..39')
      if label_to_orig.setdefault(label, orig) != orig:
        raise DataError(f'{path}: label {label} stands for ModelNet40 classes '
                        f'{label_to_orig[label]} and {orig}')
      clouds.append(cloud[:, :3])
      labs.append(label)
    xyz = readers.check_points(path, np.stack(clouds), f'{split} points')
    points[split] = preprocess.normalize_unit_sphere(xyz)
    labels[split] = np.asarray(labs, np.int32)
  if sorted(label_to_orig) != list(range(way)):
    raise DataError(f'{path}: labels {sorted(label_to_orig)} are not 0..{way - 1}; is this a '
                    f'{way}-way fold?')
  if len(set(label_to_orig.values())) != way:
    raise DataError(f'{path}: two labels stand for the same ModelNet40 class')
  counts = np.bincount(labels['train'], minlength=way)
  if (counts != shot).any():
    raise DataError(f'{path}: train holds {counts.tolist()} shapes per class, expected {shot} '
                    f'each for data.shot={shot}; is this a {shot}-shot fold?')
  fold_classes = [names[label_to_orig[k]] for k in range(way)]
  rest = [n for n in names if n not in fold_classes]
  return Fold(path, points, labels, tuple(fold_classes + rest))


_CACHE: dict[tuple, Fold] = {}


def load_fold(path: str, way: int, shot: int) -> Fold:
  """`read_fold`, memoised on (path, size, mtime) for the life of the process (the dataset spec
  needs the class names and the builder the arrays; the file is read once)."""
  st = os.stat(path)
  key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, way, shot)
  if key not in _CACHE:
    _CACHE.clear()  # one fold at a time: they are tens of MB
    _CACHE[key] = read_fold(path, way, shot)
  return _CACHE[key]

