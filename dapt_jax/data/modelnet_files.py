"""ModelNet40's three accepted on-disk forms, found under `data_dir`, and how each is read.

1. `dat`: Point-BERT's cache `modelnet40_{train,test}_8192pts_fps.dat` (what the release trained on).
2. `txt`: the raw `modelnet40_normal_resampled` release — `modelnet40_shape_names.txt`,
   `modelnet40_{train,test}.txt` and `<class>/<shape_id>.txt` files of `x,y,z,nx,ny,nz` rows;
   prepared once with the cache's recipe (FPS to 8192 points).
3. `h5`: `modelnet40_ply_hdf5_2048` — `ply_data_{train,test}<k>.h5` (2048 points per shape).

Every form ends as xyz centred and scaled to the unit sphere (SPEC §4).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Optional

import numpy as np

from dapt_jax.data import readers
from dapt_jax.data.errors import DataError

DEFAULT_CLASS_NAMES = (
    'airplane', 'bathtub', 'bed', 'bench', 'bookshelf', 'bottle', 'bowl', 'car', 'chair', 'cone',
    'cup', 'curtain', 'desk', 'door', 'dresser', 'flower_pot', 'glass_box', 'guitar', 'keyboard',
    'lamp', 'laptop', 'mantel', 'monitor', 'night_stand', 'person', 'piano', 'plant', 'radio',
    'range_hood', 'sink', 'sofa', 'stairs', 'stool', 'table', 'tent', 'toilet', 'tv_stand', 'vase',
    'wardrobe', 'xbox')

SPLITS = ('train', 'test')
FORMATS = ('dat', 'txt', 'h5')
DAT_FILES = {s: f'modelnet40_{s}_8192pts_fps.dat' for s in SPLITS}
TXT_NAMES_FILE = 'modelnet40_shape_names.txt'
TXT_LIST_FILES = {s: f'modelnet40_{s}.txt' for s in SPLITS}
H5_NAMES_FILE = 'shape_names.txt'

INSTRUCTIONS = (
    'Get one of: Point-BERT\'s modelnet40_{train,test}_8192pts_fps.dat (linked from the Point-BERT / '
    'Point-MAE DATASET.md); the raw modelnet40_normal_resampled release (class folders of '
    'x,y,z,nx,ny,nz text files plus modelnet40_shape_names.txt and modelnet40_{train,test}.txt); or '
    'modelnet40_ply_hdf5_2048 (ply_data_{train,test}*.h5). Point data.data_dir at the folder that '
    'holds them (default data/ModelNet/modelnet40_normal_resampled).')


@dataclasses.dataclass(frozen=True)
class Plan:
  """What will be read: the format, the class list and every file per split."""
  source_format: str
  root: str
  class_names: tuple[str, ...]
  names_file: str  # where class_names came from ('' for the built-in list)
  files: dict  # split → list of paths
  labels: dict  # split → int32 labels (txt only: from the folder name), else None

  def all_files(self) -> list[str]:
    extra = [self.names_file] if self.names_file else []
    if self.source_format == 'txt':
      extra += [os.path.join(self.root, TXT_LIST_FILES[s]) for s in SPLITS]
    return extra + [p for s in SPLITS for p in self.files[s]]


def _h5_files(root: str, split: str) -> list[str]:
  def key(p):
    m = re.search(r'(\d+)\.h5$', p)
    return int(m.group(1)) if m else -1
  return sorted(glob.glob(os.path.join(root, f'ply_data_{split}*.h5')), key=key)


def _class_names(path: str) -> tuple[tuple[str, ...], str]:
  if os.path.isfile(path):
    return tuple(readers.read_name_list(path, 'class list')), path
  return DEFAULT_CLASS_NAMES, ''


def detect_format(root: str) -> Optional[str]:
  """The first form present in `root` (dat, then txt, then h5), or None."""
  if all(os.path.isfile(os.path.join(root, f)) for f in DAT_FILES.values()):
    return 'dat'
  if all(os.path.isfile(os.path.join(root, f))
         for f in (TXT_NAMES_FILE, *TXT_LIST_FILES.values())):
    return 'txt'
  if all(_h5_files(root, s) for s in SPLITS):
    return 'h5'
  return None


def plan(root: str, source_format: str = 'auto') -> Plan:
  """Finds the files of `source_format` ('auto' detects) under `root`; DataError if any are missing."""
  if source_format not in ('auto',) + FORMATS:
    raise DataError(f'data.source_format: {source_format!r} is not one of auto, dat, txt, h5')
  fmt = detect_format(root) if source_format == 'auto' else source_format
  if fmt is None:
    raise DataError(
        f'ModelNet40: no dataset files in data.data_dir={root!r}: expected '
        f'{os.path.join(root, DAT_FILES["train"])} and {DAT_FILES["test"]} (Point-BERT .dat), or '
        f'{os.path.join(root, TXT_NAMES_FILE)} with {TXT_LIST_FILES["train"]}, '
        f'{TXT_LIST_FILES["test"]} and class folders (modelnet40_normal_resampled), or '
        f'{os.path.join(root, "ply_data_train0.h5")} and ply_data_test0.h5 '
        f'(modelnet40_ply_hdf5_2048). {INSTRUCTIONS}')
  if fmt == 'dat':
    files = {s: [os.path.join(root, DAT_FILES[s])] for s in SPLITS}
    readers.require_files([f[0] for f in files.values()], 'ModelNet40 (dat)', INSTRUCTIONS)
    names, names_file = _class_names(os.path.join(root, TXT_NAMES_FILE))
    return Plan('dat', root, names, names_file, files, {s: None for s in SPLITS})
  if fmt == 'h5':
    files = {s: _h5_files(root, s) for s in SPLITS}
    if not all(files.values()):
      readers.require_files([os.path.join(root, f'ply_data_{s}0.h5') for s in SPLITS],
                            'ModelNet40 (h5)', INSTRUCTIONS)
    names, names_file = _class_names(os.path.join(root, H5_NAMES_FILE))
    return Plan('h5', root, names, names_file, files, {s: None for s in SPLITS})
  # Raw text release.
  names_file = os.path.join(root, TXT_NAMES_FILE)
  readers.require_files([names_file] + [os.path.join(root, TXT_LIST_FILES[s]) for s in SPLITS],
                        'ModelNet40 (txt)', INSTRUCTIONS)
  names = tuple(readers.read_name_list(names_file, 'class list'))
  index = {n: i for i, n in enumerate(names)}
  files, labels = {}, {}
  for s in SPLITS:
    list_file = os.path.join(root, TXT_LIST_FILES[s])
    ids = readers.read_name_list(list_file, 'shape list')
    paths, labs = [], []
    for shape_id in ids:
      cls = shape_id.rsplit('_', 1)[0]
      if cls not in index:
        raise DataError(f'{list_file}: shape {shape_id!r} has class {cls!r}, which is not in '
                        f'{TXT_NAMES_FILE}')
      paths.append(os.path.join(root, cls, shape_id + '.txt'))
      labs.append(index[cls])
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      more = f' and {len(missing) - 3} more' if len(missing) > 3 else ''
      raise DataError(f'{list_file}: lists {len(missing)} shape file(s) that do not exist: '
                      f'{", ".join(missing[:3])}{more}')
    files[s], labels[s] = paths, np.asarray(labs, np.int32)
  return Plan('txt', root, names, names_file, files, labels)


def load_split(p: Plan, split: str, num_points: int = 8192) -> tuple[np.ndarray, np.ndarray]:
  """Reads, validates and prepares one split → (points float32 [S, P, 3], labels int32 [S])."""
  from dapt_jax.data import preprocess  # pylint: disable=g-import-not-at-top  (pulls in JAX)

  num_classes = len(p.class_names)
  if p.source_format == 'dat':
    points, labels = readers.read_modelnet_dat(p.files[split][0], num_classes)
  elif p.source_format == 'h5':
    parts = [readers.read_h5(f, num_classes) for f in p.files[split]]
    widths = {pts.shape[1] for pts, _ in parts}
    if len(widths) != 1:
      raise DataError(f'{p.root}: ply_data_{split}*.h5 files hold different point counts '
                      f'{sorted(widths)}')
    points = np.concatenate([x for x, _ in parts])
    labels = np.concatenate([y for _, y in parts])
  else:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

    paths = p.files[split]
    with tqdm(total=len(paths), desc=f'ModelNet40 {split}: FPS to {num_points} points',
              unit='shape') as bar:
      clouds = (readers.read_modelnet_txt(f, min_rows=num_points) for f in paths)
      points = preprocess.fps_clouds(clouds, num_points, progress=bar.update)
    labels = p.labels[split]
  return preprocess.normalize_unit_sphere(points), labels
