r"""The quick start: fine-tune DAPT on generated shapes, evaluate it, and classify a file.

    python -m dapt_jax.demo.quickstart                  # or: bash scripts/demo.sh
    python -m dapt_jax.demo.quickstart --shape=cone --workdir=runs/mine
    python -m dapt_jax.demo.quickstart --config.num_epochs=20   # any main.py --config.* override

No files needed. It runs main.py's three public commands, one after the other, printing each
before it runs, exactly as you would type them:

  1. train    python main.py --config=configs/synthetic.py --workdir=W <the recipe below>
  2. eval     the same with --mode=eval            (writes W/eval_test.json)
  3. predict  the same with --mode=predict --input=W/<shape>.ply
              (one generated cloud the run never saw, written as an ASCII PLY file first;
              writes W/predictions.csv)

and ends with two lines: the test accuracy and the prediction for the file.

The recipe is configs/synthetic.py (the small demo classifier: 64 wide, 2 blocks, DAPT's
trainable set on a randomly initialised backbone, 1,024 training and 256 test clouds of 10 shape
classes) with upright clouds (rotated about the vertical axis only, as ModelNet40's aligned
shapes), epochs 0..6, lr 1e-3 from the first step and no head dropout: the settings that
`python -m dapt_jax.demo.compare --pose upright` measured at 89.5 % (docs/demo-comparison.md).

W (default runs/quickstart) must be new, empty, or a previous quick start's folder: the demo
replaces only what it and main.py wrote there, and refuses a folder holding anything else.
Exit status: 0 done; 2 a mistake (one `error:` line, nothing written); otherwise main.py's.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence

from dapt_jax import errors
from dapt_jax import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = 'configs/synthetic.py'
DEFAULT_WORKDIR = 'runs/quickstart'
DEFAULT_SHAPE = 'torus'
# The fine-tuning recipe on top of configs/synthetic.py (see the module docstring).
RECIPE = ('--config.data.synthetic_pose=upright', '--config.num_epochs=6',
          '--config.optim.warmup_epochs=0', '--config.model.head_dropout_rate=0',
          '--config.eval.every_epochs=6', '--config.checkpoint.every_epochs=6')
# The cloud to classify comes from another seed than the run's data (data.synthetic_seed = 0).
PREDICT_SEED = 2024
MARKER = 'quickstart.json'  # written first into W: says the folder is the demo's to replace
# What main.py writes into a classification workdir (dapt_jax.train.RUN_OUTPUTS and its lock).
MAIN_OUTPUTS = ('checkpoints', 'metrics.jsonl', 'metrics.jsonl.tmp', 'tensorboard', 'curves.png',
                'config.json', 'config.json.tmp', 'eval_*.json', 'predictions_*.npz',
                'classes.json', 'predictions.csv', '.lock')


class QuickstartError(errors.UserError):
  """A mistake in the quick start's arguments or workdir."""


def _shown(path: str) -> str:
  """A path as the printed commands show it: relative to the repository when inside it."""
  try:
    return str(pathlib.Path(path).relative_to(ROOT))
  except ValueError:
    return path


def _ours(name: str, cloud_name: str) -> bool:
  return name in (MARKER, cloud_name, cloud_name + '.tmp') or any(
      fnmatch.fnmatch(name, p) for p in MAIN_OUTPUTS)


def check_workdir(workdir: str) -> list[str]:
  """Returns what a previous quick start left in `workdir` (to replace); refuses anything else.

  Raises:
    QuickstartError: `workdir` is a file, or a folder holding files the demo did not write.
    workdir_lib.WorkdirError: `workdir` cannot be created or written to.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise QuickstartError(f'--workdir {workdir}: is a file, not a folder; choose another --workdir')
  workdir_lib.check_writable(workdir)  # a folder that cannot be made is one line too
  if not os.path.exists(workdir):
    return []
  entries = sorted(os.listdir(workdir))
  if not entries:
    return []
  try:
    with open(os.path.join(workdir, MARKER)) as f:
      cloud_name = str(json.load(f).get('cloud', ''))
  except (OSError, ValueError, AttributeError):  # no marker, or not one the demo wrote
    raise QuickstartError(f'--workdir {workdir}: not empty and not a quick start folder (no '
                          f'readable {MARKER}); choose a new or empty --workdir') from None
  foreign = [e for e in entries if not _ours(e, cloud_name)]
  if foreign:
    raise QuickstartError(f'--workdir {workdir}: holds {foreign[0]!r}, which the quick start did '
                          'not write; move it away or choose another --workdir')
  return entries


def write_cloud(path: str, shape: str) -> None:
  """Writes one generated upright cloud of `shape` ([1024, 3]) as an ASCII PLY file."""
  from dapt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  label = synthetic.SHAPE_NAMES.index(shape)
  n = len(synthetic.SHAPE_NAMES)
  points, labels = synthetic.generate(n, 1024, n, seed=PREDICT_SEED, pose='upright')
  cloud = points[int(list(labels).index(label))]
  header = ['ply', 'format ascii 1.0', f'comment a generated {shape} (dapt_jax.demo.quickstart)',
            f'element vertex {len(cloud)}', 'property float x', 'property float y',
            'property float z', 'end_header']
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write('\n'.join(header) + '\n')
    f.writelines(f'{x:.6f} {y:.6f} {z:.6f}\n' for x, y, z in cloud)
  os.replace(tmp, path)


def _run(step: str, argv: list[str]) -> int:
  """Runs one main.py command from the repository root, its output streaming through."""
  print(f'\n[{step}] python {" ".join(argv)}', flush=True)
  return subprocess.call([sys.executable, *argv], cwd=ROOT)


def accuracy_line(workdir: str) -> str:
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    result = json.load(f)
  chance = 100 / len(result['class_names'])
  return (f"test accuracy: {100 * result['accuracy']:.1f} % on {result['num_samples']} held-out "
          f"clouds of {len(result['class_names'])} shapes (chance {chance:.0f} %)")


def prediction_line(workdir: str, cloud: str, shape: str) -> str:
  with open(os.path.join(workdir, 'predictions.csv'), newline='') as f:
    row = next(csv.DictReader(f))
  return (f"prediction: {_shown(cloud)} is a {row['class']} "
          f"({100 * float(row['probability']):.1f} %; it was generated as a {shape})")


def run(workdir: str, shape: str, overrides: Sequence[str]) -> int:
  """The three steps; returns the exit status."""
  leftovers = check_workdir(workdir)
  from dapt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  shapes = synthetic.SHAPE_NAMES[:10]  # configs/synthetic.py's classes
  if shape not in shapes:
    raise QuickstartError(f'--shape {shape}: not one of the demo\'s classes ({", ".join(shapes)})')
  t0 = time.time()
  for name in leftovers:  # a previous quick start's outputs only (check_workdir saw to that)
    path = os.path.join(workdir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  if leftovers:
    print(f'replaced the previous quick start in {_shown(workdir)}')
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  cloud = os.path.join(workdir, f'{shape}.ply')
  with open(os.path.join(workdir, MARKER), 'w') as f:
    json.dump({'written_by': 'python -m dapt_jax.demo.quickstart',
               'cloud': os.path.basename(cloud)}, f)
  common = ['main.py', f'--config={CONFIG}', f'--workdir={_shown(workdir)}', *RECIPE, *overrides]
  code = _run('1/3 train', common)
  if code != 0:
    if code == errors.EXIT_USER_ERROR:  # main.py refused before writing: leave no trace either
      os.remove(os.path.join(workdir, MARKER))
      if created and not os.listdir(workdir):
        os.rmdir(workdir)
    return code
  code = _run('2/3 eval', [*common, '--mode=eval'])
  if code != 0:
    return code
  write_cloud(cloud, shape)
  print(f'\nwrote {_shown(cloud)}: a generated {shape} the run never saw')
  code = _run('3/3 predict', [*common, '--mode=predict', f'--input={_shown(cloud)}'])
  if code != 0:
    return code
  print(f'\n== quick start done in {time.time() - t0:.0f} s; everything is in {_shown(workdir)} ==')
  print(accuracy_line(workdir))
  print(prediction_line(workdir, cloud, shape))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog='python -m dapt_jax.demo.quickstart',
                              description=__doc__.split('\n\n')[0],
                              epilog='Any --config.FIELD=VALUE is passed to all three commands.')
  p.add_argument('--workdir', default=DEFAULT_WORKDIR,
                 help='the run folder: new, empty, or a previous quick start (replaced)')
  p.add_argument('--shape', default=DEFAULT_SHAPE, help='the class of the cloud to classify')
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not (a.startswith('--config.') and '=' in a)]
  if bad:
    return errors.report(QuickstartError(
        f'unexpected argument {bad[0]!r}: give --workdir, --shape or --config.FIELD=VALUE'))
  return errors.run_cli(run, os.path.abspath(args.workdir), args.shape, rest, exit=False)


if __name__ == '__main__':
  sys.exit(main())
