"""Readers for the official dataset files, with validation.

Every reader returns plain NumPy arrays and raises `DataError` with a one-line message naming the
file and the problem (wrong shape or dtype, non-finite coordinates, labels outside the class range,
a truncated or unreadable file). Pickles are read with an allow-list unpickler that only rebuilds
NumPy arrays, lists, tuples, dicts and numbers, so a `.dat` file cannot execute code.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, Optional, Sequence

import numpy as np

from dapt_jax.data.errors import DataError


# ----------------------------------------------------------------------------------------------
# Array checks shared by all formats.


def check_points(path: str, points: np.ndarray, what: str = 'points') -> np.ndarray:
  """points: [S, P, 3+] floating → float32 [S, P, 3]; finite. Raises DataError naming `path`."""
  if not isinstance(points, np.ndarray) or points.dtype.kind != 'f':
    dtype = getattr(points, 'dtype', type(points).__name__)
    raise DataError(f'{path}: {what} have dtype {dtype}, expected float32')
  if points.ndim != 3 or points.shape[-1] < 3 or points.shape[1] < 1:
    raise DataError(f'{path}: {what} have shape {points.shape}, expected (samples, points, 3)')
  xyz = np.asarray(points[..., :3], np.float32)
  finite = np.isfinite(xyz).all(axis=(1, 2))
  if not finite.all():
    bad = np.flatnonzero(~finite)
    raise DataError(f'{path}: {what} contain NaN/inf coordinates in {bad.size} sample(s), '
                    f'first at sample {int(bad[0])}')
  return xyz


def check_labels(path: str, labels: Any, num_samples: int, num_classes: int) -> np.ndarray:
  """labels: [S] or [S, 1] integers in [0, num_classes) → int32 [S]."""
  labels = np.asarray(labels)
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim != 1 or labels.shape[0] != num_samples:
    raise DataError(f'{path}: labels have shape {labels.shape}, expected ({num_samples},) '
                    f'to match the {num_samples} samples')
  if labels.dtype.kind == 'f':
    if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
      raise DataError(f'{path}: labels have non-integer values (dtype {labels.dtype})')
  elif labels.dtype.kind not in 'iu':
    raise DataError(f'{path}: labels have dtype {labels.dtype}, expected integers')
  out_of_range = (labels < 0) | (labels >= num_classes)
  if out_of_range.any():
    i = int(np.flatnonzero(out_of_range)[0])
    raise DataError(f'{path}: label {labels[i]} at sample {i} is outside the class range '
                    f'[0, {num_classes})')
  return labels.astype(np.int32)


# ----------------------------------------------------------------------------------------------
# HDF5 (ScanObjectNN, modelnet40_ply_hdf5_2048).


def read_h5(path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """An h5 file with `data` [S, P, 3] float and `label` [S] or [S, 1] int.

  Returns (points float32 [S, P, 3], labels int32 [S]). Other datasets in the file (`mask`,
  `normal`, `faceId`) are ignored.
  """
  import h5py  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found')
  try:
    with h5py.File(path, 'r') as f:
      for key in ('data', 'label'):
        if key not in f:
          raise DataError(f'{path}: no dataset {key!r} in the file (has: {", ".join(sorted(f.keys())) or "nothing"})')
      data, label = f['data'], f['label']
      if data.dtype.kind != 'f':
        raise DataError(f'{path}: dataset \'data\' has dtype {data.dtype}, expected float32')
      if len(data.shape) != 3 or data.shape[-1] != 3:
        raise DataError(f'{path}: dataset \'data\' has shape {data.shape}, expected (samples, points, 3)')
      points = data[()]
      labels = label[()]
  except DataError:
    raise
  except (OSError, KeyError, ValueError, RuntimeError) as e:
    raise DataError(f'{path}: unreadable or truncated HDF5 file ({_one_line(e)})') from e
  points = check_points(path, points, "dataset 'data'")
  return points, check_labels(path, labels, points.shape[0], num_classes)


# ----------------------------------------------------------------------------------------------
# ModelNet40 raw text (`modelnet40_normal_resampled/<class>/<class>_0001.txt`).


def read_modelnet_txt(path: str, min_rows: int = 1) -> np.ndarray:
  """One shape as rows of `x,y,z,nx,ny,nz` → float32 [R, 3] (xyz only).

  Parsing is done by NumPy's C text reader on the whole file at once (`np.fromstring`), about
  50× faster than `np.loadtxt` on these files.
  """
  raw = _read_bytes(path)
  try:
    text = raw.decode('ascii')
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not a text file (byte {e.start} is not ASCII)') from e
  lines = [ln for ln in text.split('\n') if ln.strip()]
  if not lines:
    raise DataError(f'{path}: empty file, expected rows of x,y,z,nx,ny,nz')
  cols = lines[0].count(',') + 1
  if cols != 6:
    raise DataError(f'{path}: first row has {cols} comma-separated values, expected 6 '
                    '(x,y,z,nx,ny,nz)')
  flat = ','.join(lines)
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # NumPy only warns when it stops early on a bad token
    try:
      values = np.fromstring(flat, dtype=np.float64, sep=',')  # text mode, not deprecated
    except (ValueError, DeprecationWarning):
      values = None
  if values is None or values.size != 6 * len(lines):
    bad = next((i for i, ln in enumerate(lines) if ln.count(',') != 5), None)
    where = f'row {bad + 1} has {lines[bad].count(",") + 1} values' if bad is not None else \
        'a value is not a number'
    raise DataError(f'{path}: malformed or truncated text ({where}), expected {len(lines)} rows of '
                    '6 numbers')
  rows = values.reshape(len(lines), 6)
  if not np.isfinite(rows[:, :3]).all():
    r = int(np.flatnonzero(~np.isfinite(rows[:, :3]).all(axis=1))[0])
    raise DataError(f'{path}: NaN/inf coordinates at row {r + 1}')
  if rows.shape[0] < min_rows:
    raise DataError(f'{path}: has {rows.shape[0]} points, need at least {min_rows}')
  return rows[:, :3].astype(np.float32)


def read_name_list(path: str, what: str) -> list[str]:
  """A text file with one name per line (blank lines ignored)."""
  try:
    with open(path, 'r', encoding='utf-8') as f:
      names = [ln.strip() for ln in f if ln.strip()]
  except FileNotFoundError as e:
    raise DataError(f'{path}: {what} not found') from e
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'{path}: unreadable {what} ({_one_line(e)})') from e
  if not names:
    raise DataError(f'{path}: {what} is empty')
  return names


# ----------------------------------------------------------------------------------------------
# Point-BERT `.dat` pickles, read without executing code.


def _numpy_globals() -> dict[tuple[str, str], Any]:
  """The few callables a NumPy array pickle needs, under both NumPy 1 and NumPy 2 module names."""
  try:
    from numpy._core import multiarray, numeric  # pylint: disable=g-import-not-at-top
  except ImportError:  # NumPy 1.x
    from numpy.core import multiarray, numeric  # pylint: disable=g-import-not-at-top
  allowed = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype}
  for mod in ('numpy.core', 'numpy._core'):
    allowed[(f'{mod}.multiarray', '_reconstruct')] = multiarray._reconstruct  # pylint: disable=protected-access
    allowed[(f'{mod}.multiarray', 'scalar')] = multiarray.scalar
    if hasattr(numeric, '_frombuffer'):
      allowed[(f'{mod}.numeric', '_frombuffer')] = numeric._frombuffer  # pylint: disable=protected-access
  return allowed


class _ForbiddenGlobal(pickle.UnpicklingError):
  """A pickle asked for a callable outside the allow-list."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
  """Refuses every global except NumPy's array/dtype/scalar rebuilders."""

  _allowed = None

  def find_class(self, module: str, name: str) -> Any:
    if _ArrayOnlyUnpickler._allowed is None:
      _ArrayOnlyUnpickler._allowed = _numpy_globals()
    obj = _ArrayOnlyUnpickler._allowed.get((module, name))
    if obj is None:
      raise _ForbiddenGlobal(f'refusing to load {module}.{name}: only NumPy arrays, lists '
                                   'and numbers are allowed')
    return obj


def safe_load_pickle(path: str, allow_dicts: bool = False) -> Any:
  """Unpickles `path` allowing only NumPy arrays (non-object dtypes) and scalars, lists, tuples,
  numbers, and (with `allow_dicts`) dicts with string keys."""
  data = _read_bytes(path)
  try:
    obj = _ArrayOnlyUnpickler(io.BytesIO(data)).load()
  except _ForbiddenGlobal as e:
    raise DataError(f'{path}: not a plain array pickle ({_one_line(e)})') from e
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
          MemoryError, ImportError) as e:
    raise DataError(f'{path}: truncated or corrupt pickle ({type(e).__name__}: {_one_line(e)})') from e
  _check_plain(path, obj, allow_dicts)
  return obj


def _check_plain(path: str, obj: Any, allow_dicts: bool = False) -> None:
  """Rejects object arrays and anything but lists, tuples, numbers and numeric arrays."""
  stack = [obj]
  while stack:
    x = stack.pop()
    if isinstance(x, np.ndarray):
      if x.dtype.hasobject:
        raise DataError(f'{path}: pickle holds an object-dtype array; only numeric arrays are allowed')
    elif isinstance(x, (list, tuple)):
      stack.extend(x)
    elif isinstance(x, dict) and allow_dicts:  # the few-shot folds: {'train': [...], ...}
      if not all(isinstance(k, str) for k in x):
        raise DataError(f'{path}: pickle holds a dict with non-string keys; only string keys are '
                        'allowed')
      stack.extend(x.values())
    elif isinstance(x, (int, float, np.generic)) and not isinstance(x, np.object_):
      pass
    else:
      allowed = 'arrays, lists, dicts and numbers' if allow_dicts else 'arrays, lists and numbers'
      raise DataError(f'{path}: pickle holds a {type(x).__name__}; only {allowed} are allowed')


def read_modelnet_dat(path: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Point-BERT's cache: a pickle of [list of [P, 6] float arrays, list of labels].

  Returns (points float32 [S, P, 3] — xyz only, as stored — and labels int32 [S]).
  """
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found')
  obj = safe_load_pickle(path)
  if not isinstance(obj, (list, tuple)) or len(obj) != 2:
    raise DataError(f'{path}: expected a pickled pair [list of point arrays, list of labels], '
                    f'got a {type(obj).__name__} of length {len(obj) if hasattr(obj, "__len__") else "?"}')
  clouds, labels = obj
  if len(clouds) != len(labels):
    raise DataError(f'{path}: {len(clouds)} point arrays but {len(labels)} labels')
  if not len(clouds):
    raise DataError(f'{path}: holds no samples')
  shapes = {np.shape(c) for c in clouds}
  if len(shapes) != 1:
    raise DataError(f'{path}: point arrays have different shapes {sorted(shapes)[:3]}, expected '
                    'one (points, 6) shape')
  shape = shapes.pop()
  if len(shape) != 2 or shape[1] < 3:
    raise DataError(f'{path}: point arrays have shape {shape}, expected (points, 6)')
  if any(np.asarray(c).dtype.kind != 'f' for c in clouds):
    raise DataError(f'{path}: point arrays have dtype {next(np.asarray(c).dtype for c in clouds if np.asarray(c).dtype.kind != "f")}, expected float32')
  points = np.stack([np.asarray(c)[:, :3] for c in clouds])  # xyz only: halves peak memory
  points = check_points(path, points)
  label_arr = np.asarray([np.asarray(l).reshape(-1)[0] if np.size(l) == 1 else np.nan
                          for l in labels])
  if np.isnan(label_arr.astype(np.float64)).any():
    raise DataError(f'{path}: every label must be one integer')
  return points, check_labels(path, label_arr, points.shape[0], num_classes)


def _one_line(e: BaseException) -> str:
  return ' '.join(str(e).split()) or type(e).__name__


def _read_bytes(path: str) -> bytes:
  """The whole file, or a DataError naming it."""
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    raise DataError(f'{path}: unreadable file ({_one_line(e)})') from e


def require_files(paths: Sequence[str], dataset: str, instructions: str,
                  hint: Optional[str] = None) -> None:
  """Raises one DataError listing every missing path and where the files come from."""
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    hint = f' ({hint})' if hint else ''
    raise DataError(f'{dataset}: missing {", ".join(missing)}{hint}. {instructions}')
