r"""Training step time and peak memory of the other tasks: part segmentation (DAPT against full
fine-tuning and Point-MAE's own network) and Point-MAE pre-training.

    python -m dapt_jax.bench.tasks --out runs/bench_tasks                      # recipe batches, GPU
    python -m dapt_jax.bench.tasks --batch 2 --steps 3 --out runs/bench_tasks  # CPU

Each variant runs in its own process (peak memory is per process) with the full-size model of its
config: `seg_dapt`, `seg_full`, `seg_pointmae` are `configs/shapenetpart.py`'s variants (2,048
points per shape, generated part objects); `pretrain` is `configs/pretrain_shapenet.py` (ViT-S
encoder, 4-block decoder, 1,024 points drawn from stored clouds of 8,192). The step is the real
training step of the task (`steps.make_task_steps`: views, forward, backward over the trainable
partition, AdamW). Reported: compile time, median step time after compilation, samples/s, and
peak memory during training (GPU / TPU: the allocator's peak; CPU: the process's peak RSS after
compilation), also per sample. Writes `tasks_bench.json` and `tasks_bench.md` to `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Sequence

VARIANTS = ('seg_dapt', 'seg_full', 'seg_pointmae', 'pretrain')
RECIPE_BATCH = {'seg_dapt': 16, 'seg_full': 16, 'seg_pointmae': 16, 'pretrain': 128}
PRETRAIN_STORED_POINTS = 8192  # ShapeNet-55's clouds; the step draws num_points of them


def measure(variant: str, batch: int, points: int, num_steps: int, seed: int = 0) -> dict:
  """One variant in this process → its record."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import shapenetpart  # pylint: disable=g-import-not-at-top
  from dapt_jax import optim  # pylint: disable=g-import-not-at-top
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  from dapt_jax import steps  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import memory  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench.jax_side import device_peak_bytes  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import synthetic_parts  # pylint: disable=g-import-not-at-top
  from dapt_jax.tasks import segmentation  # pylint: disable=g-import-not-at-top

  if variant == 'pretrain':
    from configs import pretrain_shapenet  # pylint: disable=g-import-not-at-top
    from dapt_jax.tasks import pretrain  # pylint: disable=g-import-not-at-top
    cfg = pretrain_shapenet.get_config()
    with cfg.unlocked():
      cfg.batch_size = batch
      cfg.parallel = 'shard_map'
    task = pretrain.PretrainTask(cfg)
  else:
    cfg = shapenetpart.get_config(variant[len('seg_'):])
    with cfg.unlocked():
      cfg.batch_size = batch
      cfg.data.num_points = points
      cfg.data.point_all = points
      cfg.data.pool_points = points
      cfg.parallel = 'shard_map'
    task = segmentation.SegmentationTask(cfg)
  net = task.build_model(axis_name=steps.AXIS)
  # Random values of the model's shapes, without compiling init (the step time does not depend
  # on the values).
  shapes = jax.eval_shape(lambda k: task.init_variables(net.clone(axis_name=None), k),
                          jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)

  def value(path, s):
    if len(s.shape) >= 2:
      return (0.02 * rng.standard_normal(s.shape)).astype(np.float32)
    ones = path.rsplit('/', 1)[-1] in ('scale', 'gamma', 'var')
    return (np.ones if ones else np.zeros)(s.shape, np.float32)

  variables = {c: partition.unflatten({p: value(p, s) for p, s in
                                       partition.flatten(shapes[c]).items()})
               for c in ('params', 'batch_stats')}
  labels = partition.label_params(variables['params'], partition.rules_for(cfg))
  counts = partition.count(variables['params'], labels)['total']
  tx = optim.make_optimizer(cfg.optim, labels, optim.make_schedule(cfg.optim, cfg.num_epochs, 100))
  state = steps.create_state(variables, labels, tx, jax.random.PRNGKey(seed + 1))
  del variables
  parallel = steps.DataParallel(cfg.parallel, batch)
  train_step, _ = steps.make_task_steps(parallel, task, net, tx)
  state = parallel.put_state(state)
  if variant == 'pretrain':  # generated shapes stand in for ShapeNet-55's stored clouds
    from dapt_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    pts, _ = synthetic.generate(batch, PRETRAIN_STORED_POINTS, 10, seed)
    host = {'points': pts.astype(np.float32), 'index': np.arange(batch, dtype=np.int32)}
    points = int(cfg.data.num_points)
  else:  # objects of 8 categories, part ids inside ShapeNetPart's 50, categories inside its 16
    pts, part, category = synthetic_parts.generate(batch, points, 8, seed)
    host = {'points': pts, 'part': part, 'num_points': np.full(batch, points, np.int32),
            'category': category, 'label': category}
  device_batch = parallel.put_batch(host)

  dev = jax.devices()[0]
  rec = {'variant': variant, 'batch': batch, 'points': points, 'platform': dev.platform,
         'device': f'{dev.platform}: {getattr(dev, "device_kind", "?")} x{jax.device_count()}',
         'trainable_params': counts[partition.TRAINABLE], 'total_params': counts['total']}
  t = time.perf_counter()
  compiled = train_step.lower(state, device_batch).compile()
  rec['compile_s'] = time.perf_counter() - t
  memory.reset_peak_rss()
  holder = {'state': state}
  times = []
  for i in range(num_steps + 1):  # the first call is a warm-up
    t = time.perf_counter()
    holder['state'], metrics = compiled(holder['state'], device_batch)
    jax.block_until_ready(metrics)
    if i:
      times.append(time.perf_counter() - t)
  rec.update(step_s=statistics.median(times), step_times_s=times,
             step_ms_per_sample=1e3 * statistics.median(times) / batch,
             samples_per_s=batch / statistics.median(times),
             loss_finite=bool(np.isfinite(float(np.ravel(jax.device_get(metrics['loss']))[0]))))
  peak = device_peak_bytes()
  if peak is not None:
    rec.update(peak_bytes=peak, peak_source='device peak_bytes_in_use')
  else:
    rec.update(peak_bytes=memory.peak_rss_since_reset_bytes(),
               peak_source='process peak RSS after compilation')
  rec['peak_mib_per_sample'] = rec['peak_bytes'] / 2**20 / batch
  return rec


def _table(records: Sequence[dict]) -> str:
  full = next((r for r in records if r['variant'] == 'seg_full'), None)
  lines = ['| variant | batch | points | trainable / total | step (s) | ms / sample | samples/s | '
           'peak memory | MiB / sample | vs seg_full |', '|---|---:|---:|---|---:|---:|---:|---|---:|---|']
  for r in records:
    rel = ''
    if full is not None and r is not full and r['variant'].startswith('seg_'):
      rel = (f"time {r['step_s'] / full['step_s']:.2f}x, memory "
             f"{r['peak_bytes'] / full['peak_bytes']:.2f}x")
    lines.append(f"| {r['variant']} | {r['batch']} | {r['points']} | {r['trainable_params']:,} / "
                 f"{r['total_params']:,} | {r['step_s']:.3f} | {r['step_ms_per_sample']:.0f} | "
                 f"{r['samples_per_s']:.2f} | {r['peak_bytes'] / 2**30:.2f} GiB "
                 f"({r['peak_source']}) | {r['peak_mib_per_sample']:.0f} | {rel} |")
  return f"Training step by task, {records[0]['device']}\n\n" + '\n'.join(lines) + '\n'


class _Parser(argparse.ArgumentParser):

  def error(self, message):  # one `error:` line and status 2, not argparse's usage block
    print(f'error: {message} (see python -m dapt_jax.bench.tasks --help)', file=sys.stderr)
    sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
  p = _Parser(prog='python -m dapt_jax.bench.tasks',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--batch', type=int, default=None,
                 help="global batch (default: each config's recipe, 16 / 128 for pre-training)")
  p.add_argument('--points', type=int, default=2048,
                 help='points per segmentation shape (default 2048; pre-training uses 1024)')
  p.add_argument('--steps', type=int, default=5, help='timed steps after one warm-up')
  p.add_argument('--variants', default=','.join(VARIANTS), help='comma-separated variants')
  p.add_argument('--out', default=None, help='folder for seg_bench.json / seg_bench.md')
  p.add_argument('--one', default=None, help=argparse.SUPPRESS)  # child: one variant
  args = p.parse_args(argv)
  for flag, value in (('batch', args.batch), ('points', args.points), ('steps', args.steps)):
    if value is not None and value < 1:  # 0 would have meant the recipe batch, silently
      print(f'error: --{flag}={value}: must be a positive integer', file=sys.stderr)
      return 2
  if args.one:
    print('RECORD ' + json.dumps(measure(args.one, args.batch or RECIPE_BATCH[args.one],
                                         args.points, args.steps)))
    return 0
  variants = [v for v in args.variants.split(',') if v]
  unknown = [v for v in variants if v not in VARIANTS] or ([] if variants else [''])
  if unknown:
    print(f'error: --variants: unknown {unknown[0]!r} (choose from {", ".join(VARIANTS)})',
          file=sys.stderr)
    return 2
  records = []
  for v in variants:
    child = subprocess.run(
        [sys.executable, '-m', 'dapt_jax.bench.tasks', '--one', v,
         f'--batch={args.batch or RECIPE_BATCH[v]}', f'--points={args.points}',
         f'--steps={args.steps}'],
        capture_output=True, text=True, check=False)
    line = next((l for l in child.stdout.splitlines() if l.startswith('RECORD ')), None)
    if child.returncode or line is None:
      last = (child.stderr.strip().splitlines() or ['(no output)'])[-1]
      print(f'error: variant {v} failed (exit status {child.returncode}): {last}',
            file=sys.stderr)
      return 1
    records.append(json.loads(line[len('RECORD '):]))
    print(f"{v}: {records[-1]['step_s']:.3f} s/step, "
          f"{records[-1]['peak_bytes'] / 2**30:.2f} GiB", flush=True)
  table = _table(records)
  print(table)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'tasks_bench.json'), 'w') as f:
      json.dump(records, f, indent=1)
    with open(os.path.join(args.out, 'tasks_bench.md'), 'w') as f:
      f.write(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
