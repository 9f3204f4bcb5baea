"""ShapeNetPart's official folder (`shapenetcore_partanno_segmentation_benchmark_v0_normal/`), found
under `data_dir` and read with validation (SPEC §8.1).

    synsetoffset2category.txt                          `<Name> <synset>` per line; index = line order
    <synset>/<model>.txt                               `x y z nx ny nz label` per point
    train_test_split/shuffled_{train,val,test}_file_list.json
                                                       JSON lists of `shape_data/<synset>/<model>`

As the reference loader does, a split holds the `.txt` files of each category folder (sorted by name,
categories in file order) whose model id is listed in that split's JSON; ids without a file are
skipped. Each shape keeps xyz only (normals dropped), normalised to the unit sphere over all of its
points, and its per-point part labels (global ids 0..49, checked against the category's parts).

The prepared copy keeps every point of every shape; the 2,048 points the model sees are drawn at
load time (`dapt_jax.data.part_source`, `dapt_jax.tasks.segmentation`). Nothing here imports TFDS.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Callable, Iterator, Optional

import numpy as np

from dapt_jax import segmentation_metrics
from dapt_jax.data import readers
from dapt_jax.data.errors import DataError
from dapt_jax.data.preprocess import normalize_unit_sphere

CATEGORY_FILE = 'synsetoffset2category.txt'
SPLIT_DIR = 'train_test_split'
SPLIT_FILES = {s: f'shuffled_{s}_file_list.json' for s in ('train', 'val', 'test')}
SPLITS = tuple(SPLIT_FILES)
CATEGORY_NAMES = segmentation_metrics.SHAPENET_PART_CATEGORIES
CATEGORY_PARTS = segmentation_metrics.SHAPENET_PART_PARTS
NUM_PARTS = segmentation_metrics.SHAPENET_PART_NUM_PARTS
# The official synset of each category, in the official line order (SPEC §8.1).
SYNSETS = ('02691156', '02773838', '02954340', '02958343', '03001627', '03261776', '03467517',
           '03624134', '03636649', '03642806', '03790512', '03797390', '03948459', '04099429',
           '04225987', '04379243')
# Columns of a shape file: x y z nx ny nz label.
COLUMNS = 7

INSTRUCTIONS = (
    'Download shapenetcore_partanno_segmentation_benchmark_v0_normal (linked from the Point-MAE / '
    'PointNet++ data instructions), unzip it, and point data.data_dir at the folder that holds '
    f'{CATEGORY_FILE}, {SPLIT_DIR}/ and the 16 synset folders.')


@dataclasses.dataclass(frozen=True)
class Plan:
  """What will be read: the categories and, per split, (category index, model id, path)."""
  root: str
  synsets: tuple[str, ...]
  files: dict  # split → list of (category, model id, path)

  def all_files(self) -> list[str]:
    """Every file the prepared copy depends on (for the source fingerprint)."""
    lists = [os.path.join(self.root, CATEGORY_FILE)]
    lists += [os.path.join(self.root, SPLIT_DIR, SPLIT_FILES[s]) for s in SPLITS]
    return lists + sorted({p for s in SPLITS for _, _, p in self.files[s]})


def read_categories(path: str) -> tuple[str, ...]:
  """`<Name> <synset>` lines → the synsets in line order; must be the 16 official categories."""
  lines = readers.read_name_list(path, 'category list')
  names, synsets = [], []
  for i, line in enumerate(lines):
    words = line.split()
    if len(words) != 2:
      raise DataError(f'{path}: line {i + 1} is {line!r}, expected "<Name> <synset>"')
    names.append(words[0])
    synsets.append(words[1])
  if tuple(synsets) != SYNSETS or tuple(n.lower() for n in names) != tuple(
      n.lower() for n in CATEGORY_NAMES):
    raise DataError(f'{path}: expected the 16 official ShapeNetPart categories in the official '
                    f'order ({", ".join(f"{n} {s}" for n, s in zip(CATEGORY_NAMES, SYNSETS))}), '
                    f'found {len(names)}: {", ".join(f"{n} {s}" for n, s in zip(names, synsets))}')
  return tuple(synsets)


def read_split_ids(path: str) -> set[str]:
  """A split list: JSON list of `shape_data/<synset>/<model>` → the set of model ids."""
  raw = readers._read_bytes(path)  # pylint: disable=protected-access
  try:
    entries = json.loads(raw.decode('utf-8'))
  except (UnicodeDecodeError, ValueError) as e:
    raise DataError(f'{path}: not a JSON file ({readers._one_line(e)})') from e  # pylint: disable=protected-access
  if not isinstance(entries, list):
    raise DataError(f'{path}: expected a JSON list of "shape_data/<synset>/<model>" strings, got a '
                    f'{type(entries).__name__}')
  ids = set()
  for i, entry in enumerate(entries):
    parts = entry.split('/') if isinstance(entry, str) else []
    if len(parts) < 3:
      raise DataError(f'{path}: entry {i} is {entry!r}, expected "shape_data/<synset>/<model>"')
    ids.add(parts[2])
  return ids


def plan(root: str) -> Plan:
  """Checks the layout under `root` and lists every split's files, as the reference loader does.

  Raises:
    DataError: a missing list or category folder, or a malformed list (one line naming the file).
  """
  cat_file = os.path.join(root, CATEGORY_FILE)
  split_paths = {s: os.path.join(root, SPLIT_DIR, f) for s, f in SPLIT_FILES.items()}
  readers.require_files([cat_file] + list(split_paths.values()), 'shapenet_part', INSTRUCTIONS,
                        hint=f'data.data_dir={root!r}')
  synsets = read_categories(cat_file)
  ids = {s: read_split_ids(p) for s, p in split_paths.items()}
  files = {s: [] for s in SPLITS}
  for c, synset in enumerate(synsets):
    folder = os.path.join(root, synset)
    if not os.path.isdir(folder):
      raise DataError(f'{folder}: category folder of {CATEGORY_NAMES[c]} not found. {INSTRUCTIONS}')
    names = sorted(n for n in os.listdir(folder) if n.endswith('.txt'))
    for split in SPLITS:
      files[split] += [(c, n[:-4], os.path.join(folder, n)) for n in names if n[:-4] in ids[split]]
  for split in ('train', 'test'):
    if not files[split]:
      raise DataError(f'{split_paths[split]}: none of its shapes has a file under {root}')
  return Plan(root=root, synsets=synsets, files=files)


def read_shape(path: str, category: int) -> tuple[np.ndarray, np.ndarray]:
  """One shape file → (xyz float32 [R, 3] as stored, part labels int32 [R]).

  Raises:
    DataError: unreadable or malformed text, non-finite coordinates, or a label that is not one of
      the category's parts.
  """
  raw = readers._read_bytes(path)  # pylint: disable=protected-access
  try:
    text = raw.decode('ascii')
  except UnicodeDecodeError as e:
    raise DataError(f'{path}: not a text file (byte {e.start} is not ASCII)') from e
  lines = [ln for ln in text.split('\n') if ln.strip()]
  if not lines:
    raise DataError(f'{path}: empty file, expected rows of x y z nx ny nz label')
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # NumPy only warns when it stops early on a bad token
    try:
      values = np.fromstring(' '.join(lines), dtype=np.float64, sep=' ')
    except (ValueError, DeprecationWarning):
      values = None
  if values is None or values.size != COLUMNS * len(lines):
    bad = next((i for i, ln in enumerate(lines) if len(ln.split()) != COLUMNS), None)
    where = (f'row {bad + 1} has {len(lines[bad].split())} values' if bad is not None
             else 'a value is not a number')
    raise DataError(f'{path}: malformed or truncated text ({where}), expected {len(lines)} rows of '
                    f'{COLUMNS} numbers (x y z nx ny nz label)')
  rows = values.reshape(len(lines), COLUMNS)
  xyz = rows[:, :3]
  if not np.isfinite(xyz).all():
    r = int(np.flatnonzero(~np.isfinite(xyz).all(axis=1))[0])
    raise DataError(f'{path}: NaN/inf coordinates at row {r + 1}')
  label = rows[:, -1]
  allowed = CATEGORY_PARTS[category]
  bad = ~np.isin(label, allowed)
  if bad.any():
    r = int(np.flatnonzero(bad)[0])
    raise DataError(f'{path}: part label {label[r]:g} at row {r + 1} is not a part of '
                    f'{CATEGORY_NAMES[category]} ({allowed[0]}..{allowed[-1]})')
  return xyz.astype(np.float32), label.astype(np.int32)


def examples(p: Plan, split: str,
             progress: Optional[Callable[[int], None]] = None) -> Iterator[tuple[int, dict]]:
  """(key, example) for every shape of `split` in reference order; xyz normalised to the unit
  sphere over all of the shape's points (`pc_normalize`)."""
  for i, (category, model_id, path) in enumerate(p.files[split]):
    xyz, part = read_shape(path, category)
    points = normalize_unit_sphere(xyz[None])[0]
    if progress is not None:
      progress(1)
    yield i, {'points': points, 'part': part, 'category': category, 'model_id': model_id}


def write_tree(root: str, shapes_per_split: dict[str, int], points: tuple[int, int] = (300, 500),
               seed: int = 0, extra_ids: int = 2) -> dict[str, list[tuple[int, str, np.ndarray,
                                                                            np.ndarray]]]:
  """Writes a small tree in the official layout (for tests and smoke runs).

  Every split gets `shapes_per_split[split]` shapes spread over the 16 categories (category
  i % 16), each a random cloud of `points` rows (a uniform count in that range) with part labels
  from its category. Each split list also names `extra_ids` ids without a file (the official lists
  do too; the reader skips them), and every category folder holds one stray file that no list
  names.

  Returns:
    split → [(category, model id, xyz float32 [R, 3] as written, labels int32 [R])], in the order
    a reader returns them (categories in order, files sorted by name within each).
  """
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, SPLIT_DIR), exist_ok=True)
  with open(os.path.join(root, CATEGORY_FILE), 'w') as f:
    f.write(''.join(f'{n}\t{s}\n' for n, s in zip(CATEGORY_NAMES, SYNSETS)))
  written = {}
  serial = 0
  for split in SPLITS:
    entries, shapes = [], []
    for i in range(shapes_per_split.get(split, 0)):
      c = i % len(SYNSETS)
      model_id = f'{rng.integers(1 << 40):010x}{serial:04d}'
      serial += 1
      rows = int(rng.integers(points[0], points[1] + 1))
      xyz = (rng.normal(size=(rows, 3)) * rng.uniform(0.2, 2.0, 3)).astype(np.float32)
      normals = rng.normal(size=(rows, 3))
      labels = rng.choice(CATEGORY_PARTS[c], rows).astype(np.int32)
      folder = os.path.join(root, SYNSETS[c])
      os.makedirs(folder, exist_ok=True)
      table = np.concatenate([xyz, normals, labels[:, None]], 1)
      np.savetxt(os.path.join(folder, model_id + '.txt'), table,
                 fmt=['%.6f'] * 6 + ['%.1f'])
      # what a reader gets back is the text, so keep what the text holds
      xyz = np.loadtxt(os.path.join(folder, model_id + '.txt'))[:, :3].astype(np.float32)
      entries.append(f'shape_data/{SYNSETS[c]}/{model_id}')
      shapes.append((c, model_id, xyz, labels))
    entries += [f'shape_data/{SYNSETS[k % 16]}/missing{split}{k}' for k in range(extra_ids)]
    order = rng.permutation(len(entries))
    with open(os.path.join(root, SPLIT_DIR, SPLIT_FILES[split]), 'w') as f:
      json.dump([entries[k] for k in order], f)
    written[split] = sorted(shapes, key=lambda s: (s[0], s[1] + '.txt'))
  for c, synset in enumerate(SYNSETS):
    folder = os.path.join(root, synset)
    os.makedirs(folder, exist_ok=True)
    np.savetxt(os.path.join(folder, 'zz_unlisted.txt'),
               np.concatenate([np.zeros((4, 6)), np.full((4, 1), CATEGORY_PARTS[c][0])], 1))
  return written
