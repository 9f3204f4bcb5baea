"""Writers of small dataset files in the exact official formats, for tests and smoke runs.

Each writer returns the arrays it wrote so a test can compare what a builder reads back.
"""
from __future__ import annotations

import os
import pickle
from typing import Optional

import numpy as np

from dapt_jax.data import modelnet_files
from dapt_jax.data import scanobjectnn_files


def random_clouds(rng: np.random.Generator, num: int, points: int, channels: int = 3) -> np.ndarray:
  """[num, points, channels] float32, roughly unit scale, far from degenerate."""
  return rng.normal(size=(num, points, channels)).astype(np.float32)


def write_scanobjectnn(root: str, variant: str, num_train: int, num_test: int, points: int = 2048,
                       seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Writes `<root>/<folder>/{training,test}_objectdataset<suffix>.h5` with data/label/mask."""
  import h5py  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  folder, suffix = scanobjectnn_files.VARIANTS[variant]
  os.makedirs(os.path.join(root, folder), exist_ok=True)
  out = {}
  for split, prefix, n in (('train', 'training', num_train), ('test', 'test', num_test)):
    data = random_clouds(rng, n, points)
    label = rng.integers(0, len(scanobjectnn_files.CLASS_NAMES), n).astype(np.int64)
    mask = rng.integers(-1, 2, (n, points)).astype(np.int64)  # official: per-point object mask
    with h5py.File(os.path.join(root, folder, f'{prefix}_objectdataset{suffix}.h5'), 'w') as f:
      f['data'], f['label'], f['mask'] = data, label, mask
    out[split] = (data, label.astype(np.int32))
  return out


def write_modelnet_txt(root: str, shapes: dict[str, list[str]], rows: int = 10000,
                       seed: int = 0) -> dict[str, np.ndarray]:
  """The `modelnet40_normal_resampled` layout for the listed shape ids per split.

  Args:
    root: the folder to create (the one data_dir names).
    shapes: split → shape ids such as 'chair_0001' (class = the id without its `_NNNN`).
    rows: points per file (10,000 in the release).

  Returns:
    shape id → the [rows, 6] values written.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, modelnet_files.TXT_NAMES_FILE), 'w') as f:
    f.write('\n'.join(modelnet_files.DEFAULT_CLASS_NAMES) + '\n')
  written = {}
  for split, ids in shapes.items():
    with open(os.path.join(root, modelnet_files.TXT_LIST_FILES[split]), 'w') as f:
      f.write(''.join(f'{i}\n' for i in ids))
    for shape_id in ids:
      cls = shape_id.rsplit('_', 1)[0]
      os.makedirs(os.path.join(root, cls), exist_ok=True)
      values = np.concatenate([rng.normal(size=(rows, 3)) * 0.5, rng.normal(size=(rows, 3))], 1)
      np.savetxt(os.path.join(root, cls, shape_id + '.txt'), values, fmt='%.6f', delimiter=',')
      written[shape_id] = values.astype(np.float32)
  return written


def write_modelnet_dat(root: str, num_train: int, num_test: int, points: int = 8192,
                       seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Point-BERT's `modelnet40_{train,test}_8192pts_fps.dat`: pickle of [arrays [P, 6], labels]."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  out = {}
  for split, n in (('train', num_train), ('test', num_test)):
    clouds = random_clouds(rng, n, points, 6)
    labels = rng.integers(0, 40, n)
    with open(os.path.join(root, modelnet_files.DAT_FILES[split]), 'wb') as f:
      # As Point-BERT stores them: a list of float32 arrays and a list of int32 arrays of shape (1,).
      pickle.dump([list(clouds), [np.array([l], np.int32) for l in labels]], f)
    out[split] = (clouds[..., :3], labels.astype(np.int32))
  return out


def write_modelnet_h5(root: str, train_sizes: list[int], test_sizes: list[int], points: int = 2048,
                      seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """`modelnet40_ply_hdf5_2048`: ply_data_{split}<k>.h5 (data, label [S, 1] uint8, normal, faceId)."""
  import h5py  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, modelnet_files.H5_NAMES_FILE), 'w') as f:
    f.write('\n'.join(modelnet_files.DEFAULT_CLASS_NAMES) + '\n')
  out = {}
  for split, sizes in (('train', train_sizes), ('test', test_sizes)):
    parts = []
    for k, n in enumerate(sizes):
      data = random_clouds(rng, n, points)
      label = rng.integers(0, 40, (n, 1)).astype(np.uint8)
      with h5py.File(os.path.join(root, f'ply_data_{split}{k}.h5'), 'w') as f:
        f['data'], f['label'] = data, label
        f['normal'] = random_clouds(rng, n, points)
        f['faceId'] = rng.integers(0, 100, (n, points)).astype(np.int32)
      parts.append((data, label[:, 0].astype(np.int32)))
    with open(os.path.join(root, f'{split}_files.txt'), 'w') as f:
      f.write(''.join(f'data/modelnet40_ply_hdf5_2048/ply_data_{split}{k}.h5\n'
                      for k in range(len(sizes))))
    out[split] = (np.concatenate([p for p, _ in parts]), np.concatenate([l for _, l in parts]))
  return out


def write_modelnet_fewshot(root: str, way: int, shot: int, folds: int = 1, test_per_class: int = 20,
                           points: int = 8192, seed: int = 0, underscore: bool = False,
                           clouds_by_class: Optional[dict[int, np.ndarray]] = None
                           ) -> dict[int, dict]:
  """Point-BERT's ModelNetFewshot: `<root>/<way>way<shot>shot/<fold>.pkl` (or `<way>way_<shot>shot`).

  Each pickle is {'train': [...], 'test': [...]} of (points float32 [P, 6], label int,
  ModelNet40 class index as a NumPy int32 scalar), shuffled, as the release's generator writes
  them. Clouds come from `clouds_by_class` (ModelNet40 class index → [n, P, 6] float32; the
  fold's classes are drawn from its keys) or are random, one class at a time offset so the
  classes differ.

  Returns:
    fold → {'train': (xyz [S, P, 3] as written, labels [S]), 'test': ..., 'classes': [way
    ModelNet40 indices in label order]}.
  """
  rng = np.random.default_rng(seed)
  folder = f'{way}way_{shot}shot' if underscore else f'{way}way{shot}shot'
  os.makedirs(os.path.join(root, folder), exist_ok=True)
  out = {}
  for fold in range(folds):
    pool = sorted(clouds_by_class) if clouds_by_class is not None else list(range(40))
    classes = [int(c) for c in rng.choice(pool, way, replace=False)]
    splits = {'train': [], 'test': []}
    for label, cls in enumerate(classes):
      for split, n in (('train', shot), ('test', test_per_class)):
        if clouds_by_class is not None:
          have = clouds_by_class[cls]
          picked = have[rng.choice(len(have), n, replace=len(have) < n)]
        else:
          picked = random_clouds(rng, n, points, 6)
          picked[..., :3] += 3.0 * rng.normal(size=(1, 1, 3))  # a per-class offset
        splits[split] += [(np.asarray(c, np.float32), label, np.int32(cls)) for c in picked]
    for split in splits:
      order = rng.permutation(len(splits[split]))
      splits[split] = [splits[split][i] for i in order]
    with open(os.path.join(root, folder, f'{fold}.pkl'), 'wb') as f:
      pickle.dump(splits, f)
    out[fold] = {s: (np.stack([t[0][:, :3] for t in v]), np.asarray([t[1] for t in v], np.int32))
                 for s, v in splits.items()}
    out[fold]['classes'] = classes
  return out
