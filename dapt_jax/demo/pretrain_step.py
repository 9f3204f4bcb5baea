r"""Pre-training step time and memory, measured (docs/benchmarks.md, "Pre-training").

    python -m dapt_jax.demo.pretrain_step                       # ViT-S autoencoder, batches 4 and 8
    python -m dapt_jax.demo.pretrain_step --variant synthetic --batches 8,32

Each batch size runs in its own child process (peak RSS is per process): the real per-device
train step of `configs/pretrain_shapenet.py[:variant]` (views, masks, the autoencoder, Chamfer-L2,
AdamW on every parameter) over all local devices, on random stored clouds of the dataset's size
(8,192 points for ShapeNet-55), so no data files are needed. Reported: compile time, median step
time, samples/s, and the peak resident memory of the training loop (the kernel's high-water mark,
reset after compilation; on a GPU, the device's peak bytes). Memory per sample is the slope
between the two largest batches.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Sequence


def measure(variant: str, batch: int, steps: int, stored_points: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import pretrain_shapenet  # pylint: disable=g-import-not-at-top
  from dapt_jax import optim  # pylint: disable=g-import-not-at-top
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  from dapt_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax import tasks  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import memory  # pylint: disable=g-import-not-at-top

  config = pretrain_shapenet.get_config(variant)
  task = tasks.get_task(config)
  net = task.build_model(axis_name=steps_lib.AXIS)
  variables = jax.tree.map(np.asarray, task.init_variables(net.clone(axis_name=None),
                                                          jax.random.PRNGKey(0)))
  labels = partition.label_params(variables['params'], config.partition_rules)
  tx = optim.make_optimizer(config.optim, labels, lambda s: config.optim.lr)
  state = steps_lib.create_state(variables, labels, tx, jax.random.PRNGKey(1))
  parallel = steps_lib.DataParallel('shard_map', batch)
  train_step, _ = steps_lib.make_task_steps(parallel, task, net, tx)
  state = parallel.put_state(jax.tree.map(np.asarray, state))
  rng = np.random.default_rng(0)
  batches = [parallel.put_batch({'points': rng.normal(size=(batch, stored_points, 3)).astype(
      np.float32)}) for _ in range(2)]
  t0 = time.time()
  state, m = train_step(state, batches[0])
  jax.block_until_ready(m)
  compile_s = time.time() - t0
  memory.reset_peak_rss()
  times = []
  for i in range(steps):
    t0 = time.time()
    state, m = train_step(state, batches[i % 2])
    jax.block_until_ready(m)
    times.append(time.time() - t0)
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  peak = (stats or {}).get('peak_bytes_in_use') or memory.peak_rss_since_reset_bytes()
  step_s = float(np.median(times))
  return {'variant': variant, 'batch': batch, 'devices': jax.device_count(),
          'platform': device.platform, 'compile_s': round(compile_s, 1),
          'step_ms': round(1000 * step_s, 1), 'samples_per_s': round(batch / step_s, 2),
          'peak_mib': round(peak / 2 ** 20, 1), 'loss': float(m['loss']),
          'params': int(sum(np.size(x) for x in jax.tree.leaves(variables['params'])))}


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m dapt_jax.demo.pretrain_step',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--variant', default='shapenet55', help='configs/pretrain_shapenet.py variant')
  p.add_argument('--batches', default='4,8', help='comma-separated global batch sizes')
  p.add_argument('--steps', type=int, default=5, help='timed steps per batch size')
  p.add_argument('--stored-points', type=int, default=None,
                 help='points per stored cloud (default: 8192 for shapenet55, else 1024)')
  p.add_argument('--child', type=int, default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  stored = args.stored_points or (8192 if args.variant == 'shapenet55' else 1024)
  if args.child is not None:
    print(json.dumps(measure(args.variant, args.child, args.steps, stored)))
    return 0
  records = []
  for b in [int(x) for x in args.batches.split(',')]:
    r = subprocess.run([sys.executable, '-m', 'dapt_jax.demo.pretrain_step', '--variant',
                        args.variant, '--steps', str(args.steps), '--stored-points', str(stored),
                        '--child', str(b)], capture_output=True, text=True)
    if r.returncode != 0:
      print(f'error: batch {b}: {(r.stderr.strip().splitlines() or ["?"])[-1]}', file=sys.stderr)
      return 2
    records.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(json.dumps(records[-1]), flush=True)
  if len(records) >= 2:
    a, b = records[-2], records[-1]
    per_sample = (b['peak_mib'] - a['peak_mib']) / (b['batch'] - a['batch'])
    print(f'memory per sample (slope between batches {a["batch"]} and {b["batch"]}): '
          f'{per_sample:.1f} MiB')
  return 0


if __name__ == '__main__':
  sys.exit(main())
