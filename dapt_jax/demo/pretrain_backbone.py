r"""Pre-trains the demo's small backbone on generated shapes and ships it as a converted
checkpoint directory (what `--config.init_from` reads).

    python -m dapt_jax.demo.pretrain_backbone                 # or: bash scripts/pretrain_demo_backbone.sh
    python -m dapt_jax.demo.pretrain_backbone --seed 3 --out /tmp/my_backbone

Runs `main.py`'s training (`configs/pretrain_shapenet.py:demo`, Point-MAE's masked autoencoder)
in `--workdir` (re-running resumes an interrupted run), then writes `--out`: an orbax checkpoint
of the whole autoencoder's {'params', 'batch_stats'} (its last step; the classifier takes the
encoder and sets the decoder aside) and `report.json` recording the exact command, seed, git
commit, config, final test-split Chamfer loss, steps and wall time. Offline; nothing is
downloaded.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import time
from typing import Sequence

CONFIG = 'configs/pretrain_shapenet.py:demo'
DEFAULT_WORKDIR = 'runs/pretrain_demo'
DEFAULT_OUT = 'assets/pretrained/synthetic_small'
FORMAT = 'dapt-jax pre-trained backbone, version 1'
COMMIT_FILE = 'git_commit.txt'


def git_commit(root: str) -> str:
  """HEAD's hash, with '+dirty' when tracked files differ from it ('unknown' outside git)."""
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  return head + ('+dirty' if dirty else '')


def load_config(spec: str, seed: int):
  """`path.py[:arg]`'s get_config(arg) with `seed` set."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_pretrain_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.seed = seed
  return config


def _training_wall_seconds(workdir: str) -> float | None:
  """From the first save (the frozen parameters, written when training starts) to the last."""
  root = os.path.join(workdir, 'checkpoints')
  try:
    start = os.path.getmtime(os.path.join(root, 'frozen'))
    last = os.path.join(root, 'last')
    end = max(os.path.getmtime(os.path.join(last, s)) for s in os.listdir(last))
  except (OSError, ValueError):
    return None
  return round(end - start, 1)


def _last_eval(workdir: str) -> dict:
  path = os.path.join(workdir, 'metrics.jsonl')
  last = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if record.get('split') == 'eval':
          last = record
  return last


def readme(report: dict) -> str:
  """What a person reads beside the shipped backbone."""
  wall = report.get('train_wall_seconds')
  wall_text = f'{wall / 3600:.1f} h' if wall else 'unknown'
  m = report['model']
  return f"""# A small Point-MAE backbone pre-trained by dapt-jax

Made by `{report['command']}`
(`bash scripts/pretrain_demo_backbone.sh` runs the same), seed {report['seed']}, at git commit
`{report['git_commit']}`, on {report['machine']} ({report['date']}; training took {wall_text} of
wall time). Offline: the data are generated shapes (`synthetic_shapes`, seed
{report['data']['synthetic_seed']}, {report['data']['synthetic_num_train']} training clouds, other
clouds than the demo fine-tunes on).

Model: Point-MAE's masked autoencoder, {m['trans_dim']} wide, {m['depth']} encoder blocks
({m['num_heads']} heads), {m['decoder_depth']} decoder blocks, {m['num_group']} groups of
{m['group_size']} from {report['data']['num_points']} points, {int(100 * m['mask_ratio'])} % masked.
Recipe: epochs {report['recipe']['epochs']}, batch {report['recipe']['batch_size']}, AdamW lr
{report['recipe']['lr']}, weight decay {report['recipe']['weight_decay']}. Test-split Chamfer-L2 at
the end: {report['final_eval'].get('loss_x1000', float('nan')):.3f} × 1e-3.

This directory is a converted checkpoint (orbax, `{{'params', 'batch_stats'}}` of the whole
autoencoder) plus `report.json`. Use it as `--config.init_from` for `configs/synthetic.py`-sized
models (the decoder side is set aside), or export it with
`python -m convert --to-torch {os.path.relpath(DEFAULT_OUT)} pretrain.pth` (Point-MAE's layout).
"""


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m dapt_jax.demo.pretrain_backbone',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', default=DEFAULT_WORKDIR, help='training workdir (resumed if present)')
  p.add_argument('--out', default=DEFAULT_OUT, help='the backbone directory to write')
  p.add_argument('--seed', type=int, default=0, help='config.seed (init, masks, views, order)')
  p.add_argument('--config', default=CONFIG, help='the pre-training config')
  p.add_argument('--force', action='store_true', help='replace --out if it exists')
  args = p.parse_args(argv)
  root = os.getcwd()
  out = os.path.abspath(args.out)
  if os.path.lexists(out) and not args.force:
    print(f'error: {out} already exists (pass --force to replace it)', file=sys.stderr)
    return 2
  try:
    os.makedirs(os.path.dirname(out), exist_ok=True)
  except OSError as e:
    print(f'error: {os.path.dirname(out)}: cannot create ({e.strerror})', file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  logging.getLogger('absl').setLevel(logging.WARNING)

  from dapt_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from dapt_jax import errors  # pylint: disable=g-import-not-at-top
  from dapt_jax import pretrained  # pylint: disable=g-import-not-at-top
  from dapt_jax import train  # pylint: disable=g-import-not-at-top
  config = load_config(args.config, args.seed)
  commit = git_commit(root)
  resumed = os.path.isdir(os.path.join(args.workdir, 'checkpoints'))
  # The commit the training started from (kept across resumptions; the export may be later).
  commit_file = os.path.join(args.workdir, COMMIT_FILE)
  if not os.path.exists(commit_file):
    os.makedirs(args.workdir, exist_ok=True)
    with open(commit_file, 'w') as f:
      f.write(commit + '\n')
  with open(commit_file) as f:
    train_commit = f.read().strip()
  t0 = time.time()
  try:
    summary = train.train_and_evaluate(config, args.workdir)
    if summary['stopped'] not in ('finished',):
      print(f"error: pre-training stopped ({summary['stopped']}); re-run to resume",
            file=sys.stderr)
      return 2
    variables, step = checkpoints.workdir_variables(args.workdir, 'last')
  except (errors.UserError, train.TrainingError, checkpoints.CheckpointError, ValueError) as e:
    print(f'error: {str(e).splitlines()[0]}', file=sys.stderr)
    return 2
  seconds = time.time() - t0
  last_eval = _last_eval(args.workdir)
  report = {
      'format': FORMAT,
      'what': 'Point-MAE masked autoencoder pre-trained by dapt-jax on generated shapes '
              '(encoder = the classifier backbone; decoder kept for export)',
      'command': f'python -m dapt_jax.demo.pretrain_backbone --seed {args.seed} --config '
                 f'{args.config} --workdir {args.workdir} --out {args.out}',
      'config': args.config,
      'seed': args.seed,
      'git_commit': train_commit,
      'export_git_commit': commit,
      'task': 'pretrain',
      'model': {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.model.items()},
      'data': {k: config.data[k] for k in ('name', 'num_points', 'synthetic_num_train',
                                              'synthetic_num_test', 'synthetic_points',
                                              'synthetic_seed')},
      'recipe': {'epochs': f'0..{config.num_epochs}', 'batch_size': config.batch_size,
                 'lr': config.optim.lr, 'weight_decay': config.optim.weight_decay,
                 'warmup_epochs': config.optim.warmup_epochs},
      'step': int(step),
      'final_eval': {k: last_eval[k] for k in ('epoch', 'loss', 'loss_x1000') if k in last_eval},
      'train_seconds_this_invocation': round(seconds, 1),
      'train_wall_seconds': _training_wall_seconds(args.workdir),
      'resumed': resumed,
      'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}',
      'date': datetime.date.today().isoformat(),
  }
  try:
    pretrained.save_converted(out, variables, report, force=args.force)
  except pretrained.PretrainedError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  with open(os.path.join(out, 'README.md'), 'w') as f:
    f.write(readme(report))
  print(f'wrote {out} (step {step}, test Chamfer-L2 '
        f"{report['final_eval'].get('loss_x1000', float('nan')):.3f} x1e-3; trained at commit "
        f'{train_commit})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
