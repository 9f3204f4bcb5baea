r"""The `folder` dataset: your own point clouds and meshes, one per file, in class folders.

    my_clouds/train/<class>/...   every file in any format of `dapt_jax.data.clouds`, nested
    my_clouds/test/<class>/...    folders allowed; optional: without test/, a stratified split
    my_clouds/val/<class>/...     of train/ by seed (data.folder_test_fraction, folder_split_seed);
                                  optional

Classes are the folder names under train/, sorted. Each cloud is prepared once, as the benchmarks
are: meshes sampled uniformly on their surface (data.folder_mesh_points), turned to y-up
(data.folder_up_axis), farthest-point sampled to data.folder_points (clouds with fewer points are
resampled with replacement, with a warning; fewer than data.folder_min_points are refused), then
normalised (data.folder_normalize: unit_sphere | center | none). `--mode=predict` applies the same
preparation to the files it reads.

A small example folder (mixed formats, meshes included):

    python -m dapt_jax.data.folder --make-example my_clouds
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from dapt_jax.data import clouds
from dapt_jax.data.errors import DataError

log = logging.getLogger('dapt_jax')

SPLIT_DIRS = ('train', 'val', 'test')


@dataclasses.dataclass(frozen=True)
class Settings:
  """How each cloud is prepared (the data.folder_* fields)."""
  points: int = 2048  # points per stored cloud
  mesh_points: int = 8192  # points sampled on a mesh surface before FPS
  min_points: int = 32  # fewer points than this: refused
  normalize: str = 'unit_sphere'  # 'unit_sphere' | 'center' | 'none'
  up_axis: str = 'y'  # the files' up axis: 'y' (as the benchmarks) or 'z' (turned to y-up)
  test_fraction: float = 0.2  # without test/: share of each class held out
  split_seed: int = 0  # without test/: seed of that split

  def validate(self) -> 'Settings':
    clouds.check_prepare_fields(self.points, self.mesh_points, self.normalize, self.up_axis,
                                self.min_points)
    if not 0.0 < self.test_fraction < 1.0:
      raise DataError(f'data.folder_test_fraction: {self.test_fraction} must be in (0, 1)')
    return self


def settings(dc: Any) -> Settings:
  """The folder fields of a data config (defaults for any it lacks), validated."""
  def get(field, default):
    try:
      value = dc[field] if isinstance(dc, dict) else getattr(dc, field)
    except (AttributeError, KeyError):
      return default
    return default if value is None else value
  d = Settings()
  return Settings(points=int(get('folder_points', d.points)),
                  mesh_points=int(get('folder_mesh_points', d.mesh_points)),
                  min_points=int(get('folder_min_points', d.min_points)),
                  normalize=str(get('folder_normalize', d.normalize)),
                  up_axis=str(get('folder_up_axis', d.up_axis)),
                  test_fraction=float(get('folder_test_fraction', d.test_fraction)),
                  split_seed=int(get('folder_split_seed', d.split_seed))).validate()


# ----------------------------------------------------------------------------------------------
# Finding the files.


@dataclasses.dataclass(frozen=True)
class Plan:
  """Every file per split, its label, and what was left out."""
  root: str
  class_names: tuple
  files: dict  # split → tuple of paths
  labels: dict  # split → tuple of class indices
  test_from_train: bool  # no test/ folder: test is a stratified part of train/
  ignored: tuple  # files skipped (unsupported extension, or outside a class folder)

  @property
  def splits(self) -> tuple:
    return tuple(s for s in SPLIT_DIRS if s in self.files)

  def all_files(self) -> list:
    return [p for s in self.splits for p in self.files[s]]


def _visible(name: str) -> bool:
  return not name.startswith('.')


def _inside(path: str, root: str) -> bool:
  return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_link(path: str, root_real: str) -> None:
  """Refuses a symbolic link that dangles or points into the dataset itself (`root_real`, the
  real path of data.data_dir) or above it: such a link makes a class an alias of other clouds
  (counted twice, under a second label) or a loop. A link to anywhere else is followed."""
  if not os.path.islink(path):
    return
  target = os.readlink(path)
  if not os.path.exists(path):
    raise DataError(f'{path}: a dangling symbolic link (to {target}, which does not exist); '
                    'remove it or point it at the files')
  real = os.path.realpath(path)
  if _inside(real, root_real) or _inside(root_real, real):
    where = 'inside the dataset itself' if _inside(real, root_real) else 'a folder holding it'
    raise DataError(f'{path}: a symbolic link to {real}, {where} (an alias or a loop: its clouds '
                    'would count again); remove it, or link to files outside data.data_dir')


def _class_files(class_dir: str, ignored: list, root_real: str) -> list:
  found, seen = [], {os.path.realpath(class_dir)}
  for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
    keep = []
    for d in sorted(d for d in dirnames if _visible(d)):
      sub = os.path.join(dirpath, d)
      check_link(sub, root_real)
      real = os.path.realpath(sub)
      if real in seen:  # a link outside the dataset that leads back to a folder already read
        raise DataError(f'{sub}: a symbolic link to {real}, which is read already (a loop); '
                        'remove it')
      seen.add(real)
      keep.append(d)
    dirnames[:] = keep
    for name in sorted(filenames):
      if not _visible(name):
        continue
      path = os.path.join(dirpath, name)
      check_link(path, root_real)
      (found if os.path.splitext(name)[1].lower() in clouds.EXTENSIONS else ignored).append(path)
  return found


def _scan_split(split_dir: str, ignored: list, root_real: str) -> dict:
  """class name → sorted files, for one split folder."""
  entries = sorted(e for e in os.listdir(split_dir) if _visible(e))
  for e in entries:
    check_link(os.path.join(split_dir, e), root_real)
  classes = [e for e in entries if os.path.isdir(os.path.join(split_dir, e))]
  ignored.extend(os.path.join(split_dir, e) for e in entries if e not in classes)
  if not classes:
    raise DataError(f'{split_dir}: no class folders; expected {split_dir}/<class>/<files>')
  out = {}
  for c in classes:
    files = _class_files(os.path.join(split_dir, c), ignored, root_real)
    if not files:
      raise DataError(f'{os.path.join(split_dir, c)}: empty class: no cloud or mesh files '
                      f'({" ".join(clouds.EXTENSIONS)})')
    out[c] = files
  return out


def class_names_in(root: str) -> Optional[list]:
  """The class folder names under `root/train`, sorted, or None when there are none."""
  train_dir = os.path.join(os.path.expanduser(root or ''), 'train')
  if not root or not os.path.isdir(train_dir):
    return None
  names = sorted(e for e in os.listdir(train_dir)
                 if _visible(e) and os.path.isdir(os.path.join(train_dir, e)))
  return names or None


def stratified_split(files_by_class: dict, fraction: float, seed: int) -> tuple[dict, dict]:
  """Holds out round(fraction × n) files of each class with n ≥ 2 (at least one, never all).

  Each class is split with its own generator (seed, class name), so adding a class leaves the
  split of the others unchanged. Returns (train, test) as class → files, in file order.
  """
  train, test = {}, {}
  for c, files in files_by_class.items():
    n = len(files)
    k = min(max(int(round(fraction * n)), 1), n - 1) if n >= 2 else 0
    held = set(np.random.default_rng([seed, clouds.stable_seed(c)]).permutation(n)[:k].tolist())
    train[c] = [f for i, f in enumerate(files) if i not in held]
    test[c] = [f for i, f in enumerate(files) if i in held]
  return train, test


def plan(root: str, test_fraction: float = 0.2, split_seed: int = 0) -> Plan:
  """Scans `root` (the data.data_dir); DataError for a missing or malformed layout."""
  root = os.path.expanduser(str(root or ''))
  if not root:
    raise DataError('data.data_dir: empty; set --config.data.data_dir to a folder holding '
                    'train/<class>/<files>')
  if not os.path.isdir(root):
    raise DataError(f'data.data_dir={root!r}: no such folder')
  train_dir = os.path.join(root, 'train')
  if not os.path.isdir(train_dir):
    raise DataError(f'{root}: no train/ folder; expected {root}/train/<class>/<files> (and '
                    'optionally test/ and val/)')
  ignored: list = []
  root_real = os.path.realpath(root)
  check_link(train_dir, root_real)
  by_split = {'train': _scan_split(train_dir, ignored, root_real)}
  names = tuple(by_split['train'])
  if len(names) < 2:
    raise DataError(f'{train_dir}: one class folder ({names[0]}); a classifier needs at least two '
                    f'classes, each a folder {train_dir}/<class>/<files>')
  for split in ('val', 'test'):
    split_dir = os.path.join(root, split)
    if os.path.lexists(split_dir):
      check_link(split_dir, root_real)
    if os.path.isdir(split_dir):
      by_split[split] = _scan_split(split_dir, ignored, root_real)
      extra = [c for c in by_split[split] if c not in names]
      if extra:
        raise DataError(f'{os.path.join(split_dir, extra[0])}: class {extra[0]!r} is not in train/ '
                        f'(train has: {", ".join(names)})')
  test_from_train = 'test' not in by_split
  if test_from_train:
    by_split['train'], by_split['test'] = stratified_split(by_split['train'], test_fraction,
                                                           split_seed)
    if not any(by_split['test'].values()):
      raise DataError(f'{root}: no test/ folder, and no class has the 2 files needed to hold one '
                      f'out for a test split; add {root}/test/<class>/<files>')
    by_split['test'] = {c: f for c, f in by_split['test'].items() if f}
  index = {c: i for i, c in enumerate(names)}
  files, labels = {}, {}
  for split in SPLIT_DIRS:
    if split in by_split:
      pairs = [(f, index[c]) for c, fs in by_split[split].items() for f in fs]
      files[split] = tuple(f for f, _ in pairs)
      labels[split] = tuple(l for _, l in pairs)
  return Plan(root, names, files, labels, test_from_train, tuple(ignored))


# ----------------------------------------------------------------------------------------------
# Preparing clouds.


def read(path: str, s: Settings, min_points: int, seed: int) -> np.ndarray:
  """One file → float32 [R, 3] in the y-up frame; DataError when it has < min_points points."""
  points = clouds.read_cloud(path, mesh_points=s.mesh_points, seed=seed)
  if points.shape[0] < min_points:
    raise DataError(f'{path}: {points.shape[0]} point(s), fewer than the minimum of {min_points}')
  return clouds.rotate_up(points, s.up_axis)


def _pad_pow2(cloud: np.ndarray) -> np.ndarray:
  """Pads with copies of point 0 to the next power of two, so FPS compiles for few widths
  (copies sit at distance 0 from the first centre and are never chosen over a distinct point)."""
  width = 1 << (int(cloud.shape[0]) - 1).bit_length()
  return np.concatenate([cloud, np.repeat(cloud[:1], width - cloud.shape[0], 0)])


def prepare(raw: Sequence[np.ndarray], s: Settings, seeds: Sequence[int],
            progress: Optional[Callable[[int], None]] = None) -> tuple[np.ndarray, list]:
  """Clouds [R_i, 3] → (float32 [S, s.points, 3], indices of the clouds that were resampled).

  More than s.points points: farthest point sampling (from index 0, batched and jitted, as the
  ModelNet40 preparation), then normalised per s.normalize; fewer: normalised, then every point
  plus others drawn with replacement (seeded by `seeds[i]`).
  """
  from dapt_jax.data import preprocess  # pylint: disable=g-import-not-at-top  (pulls in JAX)

  out = np.zeros((len(raw), s.points, 3), np.float32)
  resampled = [i for i, c in enumerate(raw) if c.shape[0] < s.points]
  for i in range(len(raw)):
    if raw[i].shape[0] <= s.points:  # normalised before the copies are drawn: they bias no mean
      cloud = clouds.normalize(raw[i].astype(np.float64), s.normalize)
      out[i] = clouds.resample(cloud, s.points, np.random.default_rng(seeds[i]))
      if progress is not None:
        progress(1)
  big = sorted((i for i in range(len(raw)) if raw[i].shape[0] > s.points),
               key=lambda i: raw[i].shape[0])  # similar widths share a batch
  if big:
    sampled = preprocess.fps_clouds((_pad_pow2(raw[i]) for i in big), s.points, progress=progress)
    for i, cloud in zip(big, sampled):  # normalised after FPS, as the ModelNet40 preparation
      out[i] = clouds.normalize(cloud.astype(np.float64), s.normalize)
  return out, resampled


def warn_resampled(paths: Sequence[str], sizes: Sequence[int], target: int, what: str) -> None:
  """One warning line for every cloud that had fewer points than `target`."""
  if not paths:
    return
  shown = ', '.join(f'{p} ({n})' for p, n in zip(paths[:3], sizes[:3]))
  more = f' and {len(paths) - 3} more' if len(paths) > 3 else ''
  log.warning('%s: %d cloud(s) have fewer than %d points and were resampled with replacement: '
              '%s%s', what, len(paths), target, shown, more)


def load_split(p: Plan, split: str, s: Settings) -> tuple[np.ndarray, np.ndarray]:
  """Reads and prepares one split → (points float32 [S, s.points, 3], labels int32 [S])."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  paths = p.files[split]
  seeds = [clouds.stable_seed(os.path.relpath(f, p.root)) for f in paths]  # order-independent
  raw = []
  with tqdm(total=len(paths), desc=f'folder {split}: reading', unit='file', leave=False) as bar:
    for path, seed in zip(paths, seeds):  # the bar is cleared before an error line
      raw.append(read(path, s, s.min_points, seed))
      bar.update(1)
  with tqdm(total=len(paths), desc=f'folder {split}: sampling to {s.points} points',
            unit='cloud', leave=False) as bar:
    points, resampled = prepare(raw, s, seeds, progress=bar.update)
  warn_resampled([paths[i] for i in resampled], [raw[i].shape[0] for i in resampled], s.points,
                 f'{p.root} {split}')
  return points, np.asarray(p.labels[split], np.int32)


def warn_ignored(p: Plan) -> None:
  if p.ignored:
    more = f' and {len(p.ignored) - 3} more' if len(p.ignored) > 3 else ''
    log.warning('%s: ignored %d file(s) outside class folders or with other extensions: %s%s '
                '(cloud and mesh files: %s)', p.root, len(p.ignored), ', '.join(p.ignored[:3]),
                more, ' '.join(clouds.EXTENSIONS))


def main(argv: Optional[Sequence[str]] = None) -> int:
  import argparse  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from dapt_jax.data import folder_example  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(prog='python -m dapt_jax.data.folder', description=(
      'Tools for the folder dataset (data.name=folder).'))
  parser.add_argument('--make-example', metavar='DIR', required=True,
                      help='write a small example folder (train/ and test/, 3 classes, mixed '
                      'cloud and mesh formats) to DIR, which must not exist')
  parser.add_argument('--per-class', type=int, nargs=2, default=(16, 8), metavar=('TRAIN', 'TEST'),
                      help='files per class in train/ and test/ (default 16 8)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  try:
    written = folder_example.make_example(args.make_example, *args.per_class, seed=args.seed)
  except DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {len(written)} files to {args.make_example}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
