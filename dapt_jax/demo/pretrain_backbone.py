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
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  logging.getLogger('absl').setLevel(logging.WARNING)

  from dapt_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from dapt_jax import errors  # pylint: disable=g-import-not-at-top
  from dapt_jax import pretrained  # pylint: disable=g-import-not-at-top
  from dapt_jax import train  # pylint: disable=g-import-not-at-top
  config = load_config(args.config, args.seed)
  commit = git_commit(root)
  resumed = os.path.isdir(os.path.join(args.workdir, 'checkpoints'))
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
      'git_commit': commit,
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
      'resumed': resumed,
      'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}',
      'date': datetime.date.today().isoformat(),
  }
  try:
    pretrained.save_converted(out, variables, report, force=args.force)
  except pretrained.PretrainedError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {out} (step {step}, test Chamfer-L2 '
        f"{report['final_eval'].get('loss_x1000', float('nan')):.3f} x1e-3; commit {commit})")
  return 0


if __name__ == '__main__':
  sys.exit(main())
