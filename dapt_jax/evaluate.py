"""Evaluation: accuracy, mean class accuracy, confusion matrix, predictions, and reading a single
cloud from a file for `--mode=predict`."""
from __future__ import annotations

import os
from typing import Callable, Iterable, Optional, Sequence

import numpy as np


class InputError(ValueError):
  """A point-cloud file that cannot be read; the message is one line naming the file."""


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int,
                           class_names: Optional[Sequence[str]] = None) -> dict:
  """Overall and mean class accuracy, per-class accuracy and the confusion matrix.

  logits: [S, classes]; labels: [S]. Classes absent from `labels` are left out of the mean class
  accuracy (their per-class accuracy is None).
  """
  labels = np.asarray(labels, np.int64)
  preds = np.argmax(logits, axis=-1)
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, preds), 1)
  support = confusion.sum(axis=1)
  per_class = [float(confusion[c, c] / support[c]) if support[c] else None
               for c in range(num_classes)]
  present = [a for a in per_class if a is not None]
  names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
  return {
      'accuracy': float(np.mean(preds == labels)) if labels.size else 0.0,
      'mean_class_accuracy': float(np.mean(present)) if present else 0.0,
      'per_class_accuracy': dict(zip(names, per_class)),
      'confusion_matrix': confusion.tolist(),
      'num_samples': int(labels.size),
  }


def collect(eval_fn: Callable, put_batch: Callable, gather: Callable,
            batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
  """Runs `eval_fn` over padded, masked batches; returns (logits, labels) of the real samples
  only, each sample exactly once, in loader order.

  `gather` turns device outputs and host-local arrays into whole global batches (on several
  hosts each reads only its part of every batch)."""
  all_logits, all_labels = [], []
  for batch in batches:
    mask = np.asarray(gather(np.asarray(batch['mask'], bool)), bool)
    logits = gather(eval_fn(put_batch({'points': batch['points']})))
    all_logits.append(logits[mask])
    all_labels.append(np.asarray(gather(np.asarray(batch['label'])))[mask])
  if not all_logits:
    return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
  return np.concatenate(all_logits), np.concatenate(all_labels)


def softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, class_names: Sequence[str], k: int = 5) -> list[tuple[str, float]]:
  """[(class name, probability)] of the k most likely classes for one cloud's logits [classes]."""
  probs = softmax(np.asarray(logits, np.float64)[None])[0]
  order = np.argsort(-probs)[:k]
  return [(class_names[i], float(probs[i])) for i in order]


# ---------------------------------------------------------------------------------------------
# Reading one cloud for --mode=predict.

def _read_ply(path: str) -> np.ndarray:
  with open(path, 'rb') as f:
    if f.readline().strip() != b'ply':
      raise InputError(f'{path}: not a PLY file (no "ply" magic line)')
    fmt, count, props, in_vertex = None, None, [], False
    while True:
      line = f.readline()
      if not line:
        raise InputError(f'{path}: PLY header has no end_header')
      words = line.decode('ascii', 'replace').split()
      if not words:
        continue
      if words[0] == 'format':
        fmt = words[1]
      elif words[0] == 'element':
        in_vertex = words[1] == 'vertex'
        if in_vertex:
          count = int(words[2])
      elif words[0] == 'property' and in_vertex:
        if words[1] == 'list':
          raise InputError(f'{path}: list properties on vertices are not supported')
        props.append((words[2], words[1]))
      elif words[0] == 'end_header':
        break
    if count is None or not {'x', 'y', 'z'} <= {n for n, _ in props}:
      raise InputError(f'{path}: PLY file has no vertex element with x, y, z')
    types = {'float': 'f4', 'float32': 'f4', 'double': 'f8', 'float64': 'f8', 'uchar': 'u1',
             'uint8': 'u1', 'char': 'i1', 'int8': 'i1', 'short': 'i2', 'int16': 'i2',
             'ushort': 'u2', 'uint16': 'u2', 'int': 'i4', 'int32': 'i4', 'uint': 'u4',
             'uint32': 'u4'}
    names = [n for n, _ in props]
    if fmt == 'ascii':
      rows = np.loadtxt(f, max_rows=count, ndmin=2)
      cols = [names.index(a) for a in 'xyz']
      return rows[:, cols]
    if fmt not in ('binary_little_endian', 'binary_big_endian'):
      raise InputError(f'{path}: unsupported PLY format {fmt!r}')
    order = '<' if fmt == 'binary_little_endian' else '>'
    try:
      dtype = np.dtype([(n, order + types[t]) for n, t in props])
    except KeyError as e:
      raise InputError(f'{path}: unsupported PLY property type {e.args[0]!r}') from None
    data = np.frombuffer(f.read(dtype.itemsize * count), dtype=dtype, count=count)
    return np.stack([data['x'], data['y'], data['z']], axis=-1)


def read_cloud(path: str) -> np.ndarray:
  """One point cloud [P, 3] float32 from .npy, .txt / .xyz / .pts (x y z [...] per line, comma or
  space separated), .ply (ascii or binary) or .h5 (dataset 'data' or 'points'; first cloud)."""
  if not os.path.isfile(path):
    raise InputError(f'{path}: no such file')
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext == '.npy':
      arr = np.load(path, allow_pickle=False)
    elif ext in ('.txt', '.xyz', '.pts', '.csv'):
      with open(path) as f:
        text = f.read().replace(',', ' ')
      arr = np.loadtxt(text.splitlines(), ndmin=2)
    elif ext == '.ply':
      arr = _read_ply(path)
    elif ext in ('.h5', '.hdf5'):
      import h5py  # pylint: disable=g-import-not-at-top
      with h5py.File(path, 'r') as f:
        key = next((k for k in ('data', 'points') if k in f), None)
        if key is None:
          raise InputError(f'{path}: no dataset named "data" or "points" (found {list(f)})')
        arr = np.asarray(f[key])
      if arr.ndim == 3:
        arr = arr[0]
    else:
      raise InputError(f'{path}: unsupported extension {ext!r} (use .npy, .txt, .xyz, .ply, .h5)')
  except InputError:
    raise
  except Exception as e:  # a reader's own error, reported in one line with the file
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise InputError(f'{path}: cannot read ({msg})') from None
  arr = np.asarray(arr)
  if arr.ndim != 2 or arr.shape[1] < 3:
    raise InputError(f'{path}: expected an array of shape [points, 3+], got {arr.shape}')
  pts = arr[:, :3].astype(np.float32)
  if pts.shape[0] == 0:
    raise InputError(f'{path}: the cloud has no points')
  if not np.isfinite(pts).all():
    raise InputError(f'{path}: NaN or infinite coordinates')
  return pts


def fit_points(points: np.ndarray, num_points: int, seed: int = 0) -> np.ndarray:
  """A cloud with at least `num_points` points: smaller clouds are padded by repeating random
  points (FPS then picks distinct ones first)."""
  if points.shape[0] >= num_points:
    return points
  rng = np.random.default_rng(seed)
  extra = rng.choice(points.shape[0], num_points - points.shape[0], replace=True)
  return np.concatenate([points, points[extra]])
