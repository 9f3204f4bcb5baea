r"""The demo's comparison: what a pre-trained backbone buys, on the same held-out generated clouds.

    python -m dapt_jax.demo.compare                     # measured: docs/demo-comparison.md
    python -m dapt_jax.demo.compare --epochs 10 --out runs/demo_long
    python -m dapt_jax.demo.compare --pose upright --train-clouds 100 --epochs 60 \
        --backbone runs/pretrain_upright --out runs/demo_upright_few

Fine-tunes the demo classifier (configs/synthetic.py: 64 wide, 2 blocks, 10 shape classes, 1,024
training and 256 test clouds) four ways, one after the other, with the same recipe and seed:

  dapt_pretrained     DAPT's trainable set on the backbone this project pre-trained
                      (assets/pretrained/synthetic_small, scripts/pretrain_demo_backbone.sh)
  linear_pretrained   only the classification head on that backbone (linear probing)
  full_pretrained     every parameter, starting from that backbone (full fine-tuning)
  dapt_random         DAPT's trainable set on a randomly initialised backbone

and, asked for with `--rows`, full_random (every parameter, from a random backbone).

`--pose upright` generates the clouds rotated about the vertical axis only, `--train-clouds N`
fine-tunes on N labelled clouds instead of 1,024 (the test clouds stay the same). It writes to
--out: `comparison.json` (one record per row: name, trainable_params,
total_params, accuracy — the final epoch's test accuracy as a fraction —, seconds, peak RSS, the
equivalent main.py command), `comparison.md` (the table), `comparison.png` (a plot), `run.json`
and each row's training workdir. --out must be new, empty or an earlier comparison's folder (its
outputs are replaced); every argument, row config and the backbone's shapes are checked before
anything there is written or removed. Time and memory are measured in this process (peak RSS
since a reset before each row; on CPU it includes XLA's compiler), so they compare rows, not
machines.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import time
from typing import Optional, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_BACKBONE = 'assets/pretrained/synthetic_small'
DEFAULT_OUT = 'runs/demo'
DEFAULT_EPOCHS = 6
ROWS = ('dapt_pretrained', 'linear_pretrained', 'full_pretrained', 'dapt_random')
EXTRA_ROWS = ('full_random',)  # only when asked for with --rows
# data.synthetic_pose's values (dapt_jax.data.synthetic.POSES, which imports JAX; a test keeps
# the two equal so argument parsing stays light).
POSES = ('so3', 'upright')
DESCRIPTIONS = {
    'dapt_pretrained': 'DAPT, pre-trained backbone',
    'linear_pretrained': 'linear probing (head only), pre-trained backbone',
    'full_pretrained': 'full fine-tuning, pre-trained backbone',
    'dapt_random': 'DAPT, random backbone',
    'full_random': 'full fine-tuning, random backbone',
}
MIB = 2 ** 20
# What a comparison writes into --out besides one training workdir per row (named as the row).
OUTPUT_FILES = ('comparison.json', 'comparison.md', 'comparison.png', 'run.json')


def row_config(name: str, backbone: Optional[str], epochs: int, seed: int = 0,
               pose: str = 'so3', train_clouds: Optional[int] = None):
  """The fine-tuning config of one row: configs/synthetic.py with the row's partition and start.

  Every row trains epochs 0..`epochs` at the same rate (no warm-up: lr 1e-3 from the first step,
  cosine over the run), evaluates once at the end, and keeps one checkpoint.
  """
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  rules = {'dapt': partition.DAPT_RULES, 'linear': partition.LINEAR_PROBE_RULES,
           'full': partition.FULL_FINETUNE_RULES}[name.split('_')[0]]
  c = synthetic.get_config()
  c.unlock()
  c.seed = seed
  c.partition_rules = tuple(rules)
  c.init_from = backbone if name.endswith('_pretrained') else None
  c.data.synthetic_pose = pose
  if train_clouds is not None:
    c.data.synthetic_num_train = train_clouds
  c.num_epochs = epochs
  c.model.head_dropout_rate = 0.0  # a few epochs only: the release's 0.5 would slow every row
  c.optim.warmup_epochs = 0
  c.eval.every_epochs = epochs
  c.checkpoint.every_epochs = epochs
  c.checkpoint.keep = 1
  c.progress_bar = False
  c.lock()
  return c


def command_line(name: str, backbone: Optional[str], epochs: int, workdir: str,
                 pose: str = 'so3', train_clouds: Optional[int] = None) -> str:
  """A command that trains this row on its own (main.py where the partition is the config's)."""
  if not name.startswith('dapt'):
    more = f' --pose {pose}' if pose != 'so3' else ''
    more += f' --train-clouds {train_clouds}' if train_clouds is not None else ''
    more += f' --backbone {backbone}' if name.endswith('_pretrained') else ''
    return f'python -m dapt_jax.demo.compare --rows {name} --epochs {epochs}{more}'
  parts = ['python main.py --config=configs/synthetic.py', f'--workdir={workdir}',
           f'--config.num_epochs={epochs}', '--config.optim.warmup_epochs=0',
           '--config.model.head_dropout_rate=0',
           f'--config.eval.every_epochs={epochs}']
  if pose != 'so3':
    parts.append(f'--config.data.synthetic_pose={pose}')
  if train_clouds is not None:
    parts.append(f'--config.data.synthetic_num_train={train_clouds}')
  if name.endswith('_pretrained'):
    parts.append(f'--config.init_from={backbone}')
  return ' '.join(parts)


def run_row(name: str, backbone: Optional[str], epochs: int, workdir: str, seed: int,
            pose: str = 'so3', train_clouds: Optional[int] = None) -> dict:
  """Trains one row in this process; returns its record."""
  import jax  # pylint: disable=g-import-not-at-top
  from dapt_jax import train  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import memory  # pylint: disable=g-import-not-at-top
  config = row_config(name, backbone, epochs, seed, pose, train_clouds)
  memory.reset_peak_rss()
  t0 = time.time()
  summary = train.train_and_evaluate(config, workdir)
  seconds = time.time() - t0
  peak = memory.peak_rss_since_reset_bytes()
  trainable = int(summary['trainable_parameters'])
  return {
      'name': name,
      'description': DESCRIPTIONS[name],
      'trainable_params': trainable,
      'total_params': int(summary['total_parameters']),
      'accuracy': float(summary['final_accuracy']),
      'mean_class_accuracy': float(summary['final_mean_class_accuracy']),
      'seconds': round(seconds, 1),
      'peak_rss_mib': round(peak / MIB, 1),
      # AdamW keeps two moments per trainable parameter (float32); frozen ones keep none.
      'optimizer_state_mib': round(2 * 4 * trainable / MIB, 3),
      'epochs': f'0..{epochs}',
      'steps': int(summary['steps']),
      'backend': jax.default_backend(),
      'command': command_line(name, backbone, epochs, workdir, pose, train_clouds),
  }


def table(records: Sequence[dict]) -> str:
  lines = ['| run | trainable params | test accuracy | time (s) | peak RSS (MiB) | '
           'optimizer state (MiB) |', '|---|---:|---:|---:|---:|---:|']
  for r in records:
    lines.append(f"| {r['name']} ({r['description']}) | {r['trainable_params']:,} of "
                 f"{r['total_params']:,} | {100 * r['accuracy']:.1f} % | {r['seconds']:.0f} | "
                 f"{r['peak_rss_mib']:.0f} | {r['optimizer_state_mib']:.2f} |")
  return '\n'.join(lines)


def plot(records: Sequence[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7.5, 3.2))
  names = [r['name'] for r in records][::-1]
  acc = [100 * r['accuracy'] for r in records][::-1]
  colors = ['#4363d8' if n.startswith('dapt') else '#a9a9a9' for n in names]
  bars = ax.barh(names, acc, color=colors)
  for bar, r in zip(bars, records[::-1]):
    ax.text(bar.get_width() + 1, bar.get_y() + bar.get_height() / 2,
            f"{100 * r['accuracy']:.1f} %  ({r['trainable_params']:,} trainable, "
            f"{r['seconds']:.0f} s)", va='center', fontsize=8)
  ax.axvline(10, color='k', lw=0.8, ls=':')
  ax.text(10.5, -0.45, 'chance', fontsize=7)
  ax.set_xlim(0, 140)
  ax.set_xlabel('test accuracy on 256 held-out generated clouds (%)')
  ax.set_title('Fine-tuning the demo classifier: pre-trained vs random backbone', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def earlier_outputs(out: str) -> list[str]:
  """What an earlier comparison wrote into `out` (to replace); nothing is written or removed here.

  Raises:
    ValueError: `out` is a file, or a folder holding anything a comparison does not write (the
      message is the one line to show).
  """
  if not os.path.exists(out):
    return []
  if not os.path.isdir(out):
    raise ValueError(f'--out {out}: is a file, not a folder; choose a new or empty folder')
  entries = sorted(os.listdir(out))
  foreign = [e for e in entries
             if not (e in OUTPUT_FILES or (e in ROWS + EXTRA_ROWS
                                           and os.path.isdir(os.path.join(out, e))))]
  if foreign:
    raise ValueError(f'--out {out}: holds {foreign[0]!r}, which the comparison did not write; '
                     'choose a new or empty folder')
  return entries


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m dapt_jax.demo.compare',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--backbone', default=DEFAULT_BACKBONE,
                 help='pre-trained backbone (a converted dir or a pre-training workdir)')
  p.add_argument('--out', default=DEFAULT_OUT,
                 help='output folder: new, empty, or an earlier comparison (whose outputs are '
                      'replaced); a folder holding anything else is refused')
  p.add_argument('--epochs', type=int, default=DEFAULT_EPOCHS,
                 help='fine-tuning epochs per row (runs epochs 0..E)')
  p.add_argument('--rows', default=','.join(ROWS),
                 help=f'comma-separated rows: any of {ROWS + EXTRA_ROWS} (default: the first four)')
  p.add_argument('--seed', type=int, default=0, help='config.seed of every row')
  p.add_argument('--pose', default='so3', choices=POSES,
                 help="the generated clouds' poses (data.synthetic_pose): any 3-D rotation, or "
                      'rotated about the vertical axis only')
  p.add_argument('--train-clouds', type=int, default=None,
                 help='labelled training clouds (data.synthetic_num_train; default: the '
                      "config's 1,024); the 256 test clouds stay the same")
  args = p.parse_args(argv)
  rows = [r.strip() for r in args.rows.split(',') if r.strip()]
  unknown = [r for r in rows if r not in ROWS + EXTRA_ROWS]
  if unknown or not rows:
    print(f'error: --rows: unknown {", ".join(unknown) or "(none given)"}; choose from '
          f'{", ".join(ROWS + EXTRA_ROWS)}', file=sys.stderr)
    return 2
  if args.epochs < 1:
    print('error: --epochs must be at least 1', file=sys.stderr)
    return 2
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  batch = synthetic.get_config().batch_size
  if args.train_clouds is not None and args.train_clouds < batch:
    print(f'error: --train-clouds {args.train_clouds}: need at least one batch ({batch} clouds)',
          file=sys.stderr)
    return 2
  backbone = os.path.abspath(args.backbone)
  if any(r.endswith('_pretrained') for r in rows) and not os.path.isdir(backbone):
    print(f'error: {backbone}: no such backbone directory (make one with '
          'bash scripts/pretrain_demo_backbone.sh)', file=sys.stderr)
    return 2
  out = os.path.abspath(args.out)
  from dapt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top  (light)
  try:
    earlier = earlier_outputs(out)
    workdir_lib.check_writable(out, '--out')
  except (ValueError, workdir_lib.WorkdirError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(levelname)s %(message)s')
  logging.getLogger('absl').setLevel(logging.ERROR)

  from dapt_jax import errors  # pylint: disable=g-import-not-at-top
  from dapt_jax import pretrained  # pylint: disable=g-import-not-at-top
  from dapt_jax import train  # pylint: disable=g-import-not-at-top
  from dapt_jax import validate  # pylint: disable=g-import-not-at-top
  # Every row's config (the backbone's shapes included) is checked before anything is written.
  for name in rows:
    try:
      validate.check_run(row_config(name, backbone, args.epochs, args.seed, args.pose,
                                    args.train_clouds), None, 'train')
    except errors.UserError as e:
      print(f'error: {name}: {errors.one_line(e)}', file=sys.stderr)
      return 2
  if earlier:
    import shutil  # pylint: disable=g-import-not-at-top
    for entry in earlier:  # only what an earlier comparison wrote (earlier_outputs saw to that)
      path = os.path.join(out, entry)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    print(f'replacing the earlier comparison in {args.out} ({", ".join(earlier)})')
  os.makedirs(out, exist_ok=True)
  origin = pretrained.load_report(backbone) if os.path.isdir(backbone) else None
  if origin:
    print(f"backbone: {args.backbone} (pre-trained by `{origin.get('command', '?')}`, seed "
          f"{origin.get('seed', '?')}, commit {origin.get('git_commit', '?')})")
  records = []
  t_all = time.time()
  for i, name in enumerate(rows, 1):
    print(f'[{i}/{len(rows)}] {name}: {DESCRIPTIONS[name]} ...', flush=True)
    try:
      record = run_row(name, backbone, args.epochs, os.path.join(out, name), args.seed,
                       args.pose, args.train_clouds)
    except (errors.UserError, pretrained.PretrainedError, train.TrainingError, ValueError) as e:
      print(f'error: {name}: {str(e).splitlines()[0]}', file=sys.stderr)
      return 2
    records.append(record)
    print(f"    accuracy {100 * record['accuracy']:.1f} %, {record['trainable_params']:,} "
          f"trainable, {record['seconds']:.0f} s", flush=True)
  result = {'rows': records, 'epochs': f'0..{args.epochs}', 'seed': args.seed, 'pose': args.pose,
            'train_clouds': args.train_clouds,
            'backbone': args.backbone, 'backbone_report': origin,
            'total_seconds': round(time.time() - t_all, 1)}
  with open(os.path.join(out, 'comparison.json'), 'w') as f:
    json.dump(records, f, indent=1)
    f.write('\n')
  with open(os.path.join(out, 'run.json'), 'w') as f:
    json.dump(result, f, indent=1)
    f.write('\n')
  md = table(records)
  with open(os.path.join(out, 'comparison.md'), 'w') as f:
    f.write(md + '\n')
  plot(records, os.path.join(out, 'comparison.png'))
  print()
  print(md)
  print(f"\nwrote {out}/comparison.json, comparison.md, comparison.png "
        f"({result['total_seconds']:.0f} s in all)")
  return 0


if __name__ == '__main__':
  sys.exit(main())
