"""ShapeNet-55 in the Point-BERT / Point-MAE layout, found under `data_dir` and read with
validation (SPEC §6.1). Unlabelled pre-training data; the taxonomy is kept as the label.

    ShapeNet-55/train.txt, ShapeNet-55/test.txt   one file name per line: `<taxonomy>-<model>.npy`
    shapenet_pc/<taxonomy>-<model>.npy            one cloud, float [8192, 3] in the official files

The prepared copy stores every listed cloud as it is (all its points, list order). The 1,024
points the model sees are drawn at training time, per cloud and keyed (a random subset without
replacement, then centred and scaled by `pc_norm`; `dapt_jax.tasks.pretrain`). Nothing here
imports TFDS.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterator

import numpy as np

from dapt_jax.data import readers
from dapt_jax.data.errors import DataError

LIST_DIR = 'ShapeNet-55'
CLOUD_DIR = 'shapenet_pc'
SPLITS = ('train', 'test')
OFFICIAL_POINTS = 8192

INSTRUCTIONS = (
    'Download ShapeNet55-34 (Point-BERT\'s DATASET.md, which Point-MAE\'s points to), unzip it and '
    f'point data.data_dir at the folder that holds {LIST_DIR}/ and {CLOUD_DIR}/.')


@dataclasses.dataclass(frozen=True)
class Plan:
  """What will be read: per split, (taxonomy, model id, path) in list order; the taxonomies."""
  root: str
  files: dict  # split → list of (taxonomy, model id, path)
  taxonomies: tuple[str, ...]  # sorted; a cloud's label is its taxonomy's index here

  def list_path(self, split: str) -> str:
    return os.path.join(self.root, LIST_DIR, f'{split}.txt')

  def all_files(self) -> list[str]:
    """Every file the prepared copy depends on (for the source fingerprint)."""
    return ([self.list_path(s) for s in SPLITS]
            + [p for s in SPLITS for _, _, p in self.files[s]])


def parse_name(name: str) -> tuple[str, str]:
  """`<taxonomy>-<model>.npy` → (taxonomy, model): the text before the first '-', and between it
  and the extension. Raises ValueError when the name has not that form."""
  if not name.endswith('.npy') or '-' not in name or '/' in name:
    raise ValueError(name)
  taxonomy, _, rest = name.partition('-')
  model = rest[:-len('.npy')]
  if not taxonomy or not model:
    raise ValueError(name)
  return taxonomy, model


def read_list(path: str) -> list[tuple[str, str, str]]:
  """A split list → [(taxonomy, model, file name)] in line order; names must be well formed and
  distinct."""
  names = readers.read_name_list(path, 'split list')
  out, seen = [], set()
  for i, name in enumerate(names):
    try:
      taxonomy, model = parse_name(name)
    except ValueError:
      raise DataError(f'{path}: line {i + 1} is {name!r}, expected "<taxonomy>-<model>.npy"'
                      ) from None
    if name in seen:
      raise DataError(f'{path}: line {i + 1} lists {name} a second time')
    seen.add(name)
    out.append((taxonomy, model, name))
  return out


def plan(root: str) -> Plan:
  """Checks the layout under `root`: both lists readable, every listed cloud present.

  Raises:
    DataError: a missing list, folder or cloud, or a malformed list (one line naming the file).
  """
  lists = {s: os.path.join(root, LIST_DIR, f'{s}.txt') for s in SPLITS}
  cloud_dir = os.path.join(root, CLOUD_DIR)
  readers.require_files(list(lists.values()) + [cloud_dir], 'shapenet55', INSTRUCTIONS,
                        hint=f'data.data_dir={root!r}')
  files, taxonomies = {}, set()
  for split, list_path in lists.items():
    entries = read_list(list_path)
    files[split] = []
    for line, (taxonomy, model, name) in enumerate(entries, 1):
      path = os.path.join(cloud_dir, name)
      if not os.path.isfile(path):
        raise DataError(f'{path}: not found (listed in {list_path}, line {line})')
      files[split].append((taxonomy, model, path))
      taxonomies.add(taxonomy)
  return Plan(root=root, files=files, taxonomies=tuple(sorted(taxonomies)))


def read_cloud(path: str, num_points: int | None = None) -> np.ndarray:
  """One `.npy` cloud → float32 [P, 3]; finite; exactly `num_points` rows when given.

  Read without pickles (a `.npy` that needs one is refused).
  """
  try:
    cloud = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f'{path}: unreadable .npy file ({readers._one_line(e)})') from e  # pylint: disable=protected-access
  if not isinstance(cloud, np.ndarray) or cloud.ndim != 2 or cloud.shape[1] != 3:
    raise DataError(f'{path}: array of shape {getattr(cloud, "shape", "?")}, expected '
                    f'({num_points or "points"}, 3)')
  if num_points is not None and cloud.shape[0] != num_points:
    raise DataError(f'{path}: {cloud.shape[0]} points, expected {num_points} like the other '
                    'clouds of the dataset')
  return readers.check_points(path, cloud[None])[0]


def examples(p: Plan, split: str) -> Iterator[tuple[int, dict]]:
  """(key, example) for every cloud of `split` in list order; all clouds must have as many points
  as the first one of the train list."""
  first = p.files['train'][0][2] if p.files['train'] else p.files[split][0][2]
  num_points = read_cloud(first).shape[0]
  label = {t: i for i, t in enumerate(p.taxonomies)}
  for i, (taxonomy, model, path) in enumerate(p.files[split]):
    yield i, {'points': read_cloud(path, num_points), 'label': label[taxonomy],
              'name': f'{taxonomy}-{model}'}


def write_tree(root: str, clouds_per_split: dict[str, int], num_points: int = 256,
               taxonomies: tuple[str, ...] = ('02691156', '03001627', '04379243'),
               seed: int = 0) -> dict[str, list[tuple[str, np.ndarray]]]:
  """Writes a small tree in the official layout (for tests and smoke runs): random clouds
  (anisotropic Gaussian blobs) of `num_points` rows, taxonomy i % len(taxonomies).

  Returns split → [(name, cloud float32 [num_points, 3])] in list order.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, LIST_DIR), exist_ok=True)
  os.makedirs(os.path.join(root, CLOUD_DIR), exist_ok=True)
  written = {}
  serial = 0
  for split in SPLITS:
    rows = []
    for i in range(clouds_per_split.get(split, 0)):
      name = f'{taxonomies[i % len(taxonomies)]}-{rng.integers(1 << 40):010x}{serial:04d}.npy'
      serial += 1
      cloud = (rng.normal(size=(num_points, 3)) * rng.uniform(0.2, 1.0, 3)).astype(np.float32)
      np.save(os.path.join(root, CLOUD_DIR, name), cloud)
      rows.append((name, cloud))
    with open(os.path.join(root, LIST_DIR, f'{split}.txt'), 'w') as f:
      f.write(''.join(n + '\n' for n, _ in rows))
    written[split] = rows
  return written
