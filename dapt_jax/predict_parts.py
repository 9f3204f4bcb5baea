"""`--mode=predict` for part segmentation: every point of every input cloud labelled with a part
of the object category `--category` names.

    python main.py --config=configs/shapenetpart.py --workdir=runs/parts --mode=predict \\
        --input=scans/ --category=Chair

Each cloud is normalised to the unit sphere, the tokenizer sees `data.num_points` of its points
(drawn with replacement, seeded by the file's path), and every point of the file is labelled
through the feature propagation (the head is per point, so this is the network's own
interpolation, not a copy of labels). Writes `<name>_parts.npy` (int32 global part ids) and
`<name>_parts.ply` (xyz coloured by part, `figures.colours`) into the workdir, `<name>` being the
file's path relative to the input folder (`a/chair.ply` → `a__chair_parts.*`,
`dapt_jax.predict_io.output_names`). Every file is read and checked before the model is built.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional

import jax
import numpy as np

from dapt_jax import figures
from dapt_jax import predict_io
from dapt_jax import serve
from dapt_jax.data import classes as classes_lib
from dapt_jax.data import clouds
from dapt_jax.evaluate import InputError
from dapt_jax.tasks import segmentation

log = logging.getLogger('dapt_jax')

SUFFIX = '_parts'
PLY_COMMENT = 'dapt-jax part segmentation'


@dataclasses.dataclass
class PartPrediction:
  input: str
  category: str
  part: np.ndarray  # [R] int32 global part ids, one per input point
  npy_path: Optional[str]
  ply_path: Optional[str]
  counts: dict  # part id → points
  replaced: bool = False  # its output files existed (an earlier --mode=predict's) and were replaced


def write_ply(path: str, xyz: np.ndarray, rgb: np.ndarray, part: np.ndarray) -> None:
  """Binary little-endian PLY: x y z (float32), red green blue (uint8), part (int32)."""
  n = xyz.shape[0]
  header = ('ply\nformat binary_little_endian 1.0\n'
            f'comment {PLY_COMMENT}\nelement vertex {n}\n'
            'property float x\nproperty float y\nproperty float z\n'
            'property uchar red\nproperty uchar green\nproperty uchar blue\n'
            'property int part\nend_header\n')
  rec = np.zeros(n, dtype=[('xyz', '<f4', 3), ('rgb', 'u1', 3), ('part', '<i4')])
  rec['xyz'], rec['rgb'], rec['part'] = xyz, rgb, part
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(header.encode('ascii'))
    f.write(rec.tobytes())
  os.replace(tmp, path)


def category_index(name: Optional[str], class_names: list) -> int:
  """The category `name` names (case-insensitive; a number is an index)."""
  if not name:
    raise InputError('--mode=predict for part segmentation needs --category=NAME (one of '
                     f'{", ".join(class_names)})')
  lowered = [n.lower() for n in class_names]
  if name.lower() in lowered:
    return lowered.index(name.lower())
  if name.isdigit() and int(name) < len(class_names):
    return int(name)
  raise InputError(f'--category={name}: not a category of this model (one of '
                   f'{", ".join(class_names)})')


def _read(path: str, minimum: int) -> np.ndarray:
  """One file → float32 [R, 3] on the unit sphere; refuses fewer points than one patch."""
  cloud = clouds.read_cloud(path, seed=0)
  if cloud.shape[0] < minimum:
    raise InputError(f'{path}: {cloud.shape[0]} point(s), fewer than one patch of {minimum}')
  return serve.unit_sphere(cloud)


def predict_parts(config: Any, workdir: Optional[str], input_spec: str,
                  category: Optional[str]) -> list[PartPrediction]:
  """Labels every point of every cloud `input_spec` names (a file, folder or glob) as parts of
  `category`; writes `<name>_parts.npy` and `<name>_parts.ply` into the workdir."""
  if workdir is None:
    raise InputError('--mode=predict for part segmentation needs --workdir (the run to load, '
                     'and where the labelled clouds are written)')
  predict_io.check_workdir(workdir)
  segmentation.SegmentationTask(config)  # checks the config before any file is read
  names = (classes_lib.read(workdir) or classes_lib.read(config.init_from)
           or serve.category_names(config))
  c = category_index(category, names)
  paths = predict_io.find_inputs(input_spec)
  stems = [os.path.join(workdir, n)
           for n in predict_io.output_names(paths, predict_io.input_root(input_spec), SUFFIX)]
  minimum = int(config.model.group_size)
  raw = predict_io.read_all(paths, lambda p: _read(p, minimum))  # before the model is built
  predictor = serve.open_run(config, workdir)
  log.info('Labelling %d cloud(s) as %s with %s', len(paths), names[c], predictor.origin)

  out = []
  for path, cloud, stem in zip(paths, raw, stems):
    # The tokenizer's sample is seeded by the file's path: the same file, the same labels.
    part = predictor.label_cloud(cloud, c, clouds.stable_seed(os.path.abspath(path)))
    npy_path, ply_path = None, None
    replaced = bool(predict_io.replaced([stem + '.npy', stem + '.ply']))
    if jax.process_index() == 0:
      npy_path, ply_path = stem + '.npy', stem + '.ply'
      with open(npy_path + '.tmp', 'wb') as f:
        np.save(f, part)
      os.replace(npy_path + '.tmp', npy_path)
      write_ply(ply_path, cloud, figures.colours(part, predictor.task.category_parts), part)
    ids, counts = np.unique(part, return_counts=True)
    out.append(PartPrediction(path, names[c], part, npy_path, ply_path,
                              {int(i): int(k) for i, k in zip(ids, counts)}, replaced))
  return out


def summary(results: list[PartPrediction]) -> str:
  """What main.py prints: per cloud its points per part and the files written; one line naming
  the clouds whose earlier outputs were replaced."""
  lines = []
  for r in results:
    parts = ', '.join(f'part {i}: {k}' for i, k in sorted(r.counts.items()))
    lines.append(f'{r.input}: {len(r.part)} points as {r.category} ({parts})')
    if r.npy_path:
      lines.append(f'wrote {r.npy_path} and {r.ply_path}')
  replaced = [r.input for r in results if r.replaced]
  if replaced:
    lines.append(f'replaced the earlier --mode=predict outputs of {len(replaced)} cloud(s): '
                 + ', '.join(replaced))
  return '\n'.join(lines)
