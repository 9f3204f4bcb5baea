r"""python -m dapt_jax.bench.loader --out DIR   (or: python -m dapt_jax.bench --loader --out DIR)

The input pipeline alone: training clouds per second that `dapt_jax.data.TrainLoader` delivers
from prepared array_record files, with one process and with two (each reading its half of every
global batch, as two hosts do). No model, no devices.

It prepares a synthetic dataset (`synthetic_shapes`, 2048 clouds of 2048 x 3 points by default,
the size of a ScanObjectNN cloud) under DIR/tfds, reads it once so the page cache is warm, then
times `--epochs` shuffled epochs per setting. Reported per setting: clouds/s (wall clock) and
clouds per CPU-second of the reading processes (what one idle core sustains, independent of
other load on the machine), plus the machine's load average, since on a shared machine the wall
figure falls with it. Writes DIR/loader.json and DIR/loader.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

TARGET_CLOUDS_PER_S = 5000  # one H100 at issue 11's speed goal
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _parse(argv):
  p = argparse.ArgumentParser(prog='python -m dapt_jax.bench.loader', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', default='runs/bench_loader', help='output folder')
  p.add_argument('--clouds', type=int, default=2048, help='training clouds in the dataset')
  p.add_argument('--points', type=int, default=2048, help='points per cloud')
  p.add_argument('--batch', type=int, default=32, help='global batch size')
  p.add_argument('--epochs', type=int, default=10, help='timed epochs per setting')
  p.add_argument('--tfds-data-dir', default=None, help='where to prepare it (default: OUT/tfds)')
  p.add_argument('--worker', default=None, help=argparse.SUPPRESS)  # child: JSON arguments
  return p.parse_args(argv)


def _data_config(tfds_dir: str, clouds: int, points: int):
  from dapt_jax import data  # pylint: disable=g-import-not-at-top
  dc = data.default_data_config('synthetic_shapes')
  dc.tfds_data_dir = tfds_dir
  dc.synthetic_num_train, dc.synthetic_num_test, dc.synthetic_points = clouds, 32, points
  return dc


def _cpu_seconds() -> float:
  u = resource.getrusage(resource.RUSAGE_SELF)
  return u.ru_utime + u.ru_stime


def _time_loader(source: Any, batch: int, epochs: int, process_index: int = 0,
                 process_count: int = 1) -> dict:
  """Iterates `epochs` epochs of a TrainLoader; wall and CPU time of the iteration alone."""
  from dapt_jax import data  # pylint: disable=g-import-not-at-top
  loader = data.TrainLoader(source, batch, seed=0, process_index=process_index,
                            process_count=process_count)
  wall, cpu, clouds = time.time(), _cpu_seconds(), 0
  for epoch in range(epochs):
    for b in loader.epoch(epoch):
      clouds += b['points'].shape[0]
  return {'clouds': clouds, 'start': wall, 'end': time.time(), 'cpu_s': _cpu_seconds() - cpu}


def _worker(spec: dict) -> None:
  """One of the two reading processes: opens the data, says READY, starts on 'go' (stdin)."""
  from dapt_jax import data  # pylint: disable=g-import-not-at-top
  source, _ = data.get_source(_data_config(spec['tfds'], spec['clouds'], spec['points']),
                              'train')
  print('READY', flush=True)
  sys.stdin.readline()
  rec = _time_loader(source, spec['batch'], spec['epochs'], spec['process'], 2)
  print('LOADER_RECORD ' + json.dumps(rec), flush=True)


def _two_processes(args, tfds_dir: str) -> list[dict]:
  spec = {'tfds': tfds_dir, 'clouds': args.clouds, 'points': args.points, 'batch': args.batch,
          'epochs': args.epochs}
  procs = [subprocess.Popen([sys.executable, '-m', 'dapt_jax.bench.loader', '--worker',
                             json.dumps(dict(spec, process=p))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=_ROOT)
           for p in range(2)]
  records = []
  try:
    for proc in procs:  # both have imported and opened the dataset ...
      line = 'start'
      while line and line.strip() != 'READY':
        line = proc.stdout.readline()
      if not line:
        raise RuntimeError(f'loader worker failed before reading (exit {proc.wait()})')
    for proc in procs:  # ... before either starts reading
      proc.stdin.write('go\n')
      proc.stdin.flush()
    for proc in procs:
      out, _ = proc.communicate(timeout=900)
      lines = [l for l in out.splitlines() if l.startswith('LOADER_RECORD ')]
      if proc.returncode or not lines:
        raise RuntimeError(f'loader worker failed (exit {proc.returncode})')
      records.append(json.loads(lines[-1].split(' ', 1)[1]))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return records


def _summary(name: str, records: list[dict]) -> dict:
  clouds = sum(r['clouds'] for r in records)
  wall = max(r['end'] for r in records) - min(r['start'] for r in records)
  cpu = sum(r['cpu_s'] for r in records)
  return {'setting': name, 'processes': len(records), 'clouds': clouds, 'wall_s': wall,
          'clouds_per_s': clouds / wall, 'clouds_per_cpu_s': clouds / cpu if cpu else None}


def run(args) -> dict:
  from dapt_jax import data  # pylint: disable=g-import-not-at-top
  tfds_dir = os.path.abspath(args.tfds_data_dir or os.path.join(args.out, 'tfds'))
  dc = _data_config(tfds_dir, args.clouds, args.points)
  t = time.time()
  source, info = data.get_source(dc, 'train')  # prepares on first use
  prepare_s = time.time() - t
  source.get_batch(np.arange(len(source)))  # warm the page cache
  load_before = os.getloadavg()
  results = [_summary('one process', [_time_loader(source, args.batch, args.epochs)])]
  results.append(_summary('two processes', _two_processes(args, tfds_dir)))
  load_after = os.getloadavg()
  return {
      'date': datetime.date.today().isoformat(),
      'host': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
              f'Python {platform.python_version()}',
      'dataset': f'{info.num_examples} clouds x {info.points_per_cloud} x 3 float32, '
                 f'array_record (TFDS synthetic_shapes) in {info.prepared_dir}',
      'prepare_s': prepare_s, 'batch': args.batch, 'epochs': args.epochs,
      'load_average_1min': [load_before[0], load_after[0]],
      'target_clouds_per_s': TARGET_CLOUDS_PER_S, 'results': results,
  }


def render_markdown(report: dict) -> str:
  lines = [f"Loader benchmark, {report['date']}: {report['host']}",
           f"Dataset: {report['dataset']}; global batch {report['batch']}, shuffled epochs; "
           f"1-min load average {report['load_average_1min'][0]:.1f} before, "
           f"{report['load_average_1min'][1]:.1f} after.", '',
           '| setting | processes | clouds/s (wall) | clouds per CPU-second | '
           f">= {report['target_clouds_per_s']:,} clouds/s |",
           '|---|---|---|---|---|']
  for r in report['results']:
    ok = 'yes' if r['clouds_per_s'] >= report['target_clouds_per_s'] else 'no'
    per_cpu = f"{r['clouds_per_cpu_s']:,.0f}" if r['clouds_per_cpu_s'] else '-'
    lines.append(f"| {r['setting']} | {r['processes']} | {r['clouds_per_s']:,.0f} | {per_cpu} | "
                 f'{ok} |')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> None:
  args = _parse(argv if argv is not None else sys.argv[1:])
  if args.worker is not None:
    _worker(json.loads(args.worker))
    return
  os.makedirs(args.out, exist_ok=True)
  report = run(args)
  with open(os.path.join(args.out, 'loader.json'), 'w') as f:
    json.dump(report, f, indent=1)
  md = render_markdown(report)
  with open(os.path.join(args.out, 'loader.md'), 'w') as f:
    f.write(md)
  print(md)


if __name__ == '__main__':
  main()
