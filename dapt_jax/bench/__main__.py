r"""python -m dapt_jax.bench [--quick] [--out DIR]

Measures dapt-jax against the PyTorch reference on the devices present and writes
DIR/bench.json (every record) and DIR/bench.md (the tables). See docs/benchmarks.md.

  --quick       batch 8, 1 warm-up + 4 timed steps, a reduced scaling set: < 10 min on 2 CPU cores
  --loader      the input pipeline alone instead (python -m dapt_jax.bench.loader; loader.md)
  --predict     serving throughput instead: predictor.predict, the exported StableHLO artifact
                (and ONNX if installed) at batch 1, 8, 64 (dapt_jax/bench/predict.py; predict.md)
  (default)     batch 32 then doubling up to --max-batch while it fits, 3 warm-up + 20 timed steps
  --profile     also a jax.profiler trace of the DAPT step (DIR/profile) and its per-op time table
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

from dapt_jax import errors


class UsageError(errors.UserError):
  """A bad command-line argument; one line."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):  # one `error:` line, not argparse's usage block
    raise UsageError(f'{message} (see python -m dapt_jax.bench --help)')


def _check_args(args) -> None:
  """Refuses bad values before anything runs or is written."""
  choices = {'frameworks': ('jax', 'torch'), 'modes': ('dapt', 'full', 'linear')}
  for field, allowed in choices.items():
    given = [x.strip() for x in getattr(args, field).split(',')]
    bad = [x for x in given if x not in allowed]
    if bad or not given:
      raise UsageError(f'--{field}={getattr(args, field)}: {bad[0] if bad else "empty"!r} is not '
                       f'one of {", ".join(allowed)} (a comma list)')
  if args.batches:
    try:
      batches = [int(b) for b in args.batches.split(',')]
    except ValueError:
      batches = [0]
    if min(batches) < 1:
      raise UsageError(f'--batches={args.batches}: must be a comma list of positive integers')
  for field, minimum in (('max_batch', 1), ('warmup', 0), ('steps', 1)):
    value = getattr(args, field)
    if value is not None and value < minimum:
      raise UsageError(f'--{field.replace("_", "-")}={value}: must be >= {minimum}')
  if args.model:
    try:
      model = json.loads(args.model)
    except ValueError as e:
      raise UsageError(f'--model: not valid JSON ({e})') from None
    if not isinstance(model, dict):
      raise UsageError(f'--model={args.model}: must be a JSON object, e.g. \'{{"depth": 2}}\'')
    from dapt_jax.bench import jax_side  # pylint: disable=g-import-not-at-top
    try:
      jax_side.check_model(model)
    except ValueError as e:
      raise UsageError(str(e)) from None
  from dapt_jax import workdir  # pylint: disable=g-import-not-at-top
  try:
    workdir.check_writable(args.out, what='--out')
  except workdir.WorkdirError as e:
    raise UsageError(str(e)) from None


def _parse(argv):
  p = _Parser(prog='python -m dapt_jax.bench', description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='the short setting (see above)')
  p.add_argument('--out', default='runs/bench', help='output folder for bench.json / bench.md')
  p.add_argument('--frameworks', default='jax,torch', help='comma list of jax, torch')
  p.add_argument('--modes', default='dapt,full,linear', help='comma list of dapt, full, linear')
  p.add_argument('--batches', default=None,
                 help='comma list of batch sizes (turns off the search for the largest batch)')
  p.add_argument('--max-batch', type=int, default=512, help='largest batch the search tries')
  p.add_argument('--warmup', type=int, default=None, help='untimed steps after compilation')
  p.add_argument('--steps', type=int, default=None, help='timed steps (median reported)')
  p.add_argument('--no-scaling', action='store_true', help='skip the N / G scaling table')
  p.add_argument('--no-bf16', action='store_true', help='skip the bfloat16 comparison')
  p.add_argument('--parallel', default='shard_map', choices=('shard_map', 'pmap'))
  p.add_argument('--model', default=None,
                 help='JSON object of model config overrides, e.g. \'{"depth": 2}\' (smoke runs)')
  p.add_argument('--loader', action='store_true',
                 help='measure the input pipeline alone (dapt_jax.bench.loader) instead')
  p.add_argument('--predict', action='store_true',
                 help='serving throughput of predictor.predict and the exported artifacts '
                      '(dapt_jax.bench.predict) instead')
  p.add_argument('--config', default=None,
                 help='--predict: the model config, FILE.py[:VARIANT] (default: '
                      'configs/scanobjectnn.py:hardest)')
  p.add_argument('--profile', action='store_true',
                 help='also write a jax.profiler trace of the DAPT step to OUT/profile and a '
                      'per-op time table (bench.md)')
  p.add_argument('--no-compile-cache', action='store_true',
                 help='skip the first-against-second start check of the compilation cache')
  p.add_argument('--policies', default='all',
                 help="comma list of model.remat_policy values to measure the DAPT step with "
                      "besides the default ('' for none)")
  p.add_argument('--one', default=None, help=argparse.SUPPRESS)  # child: one JSON spec
  # Training memory against batch size for the PEFT methods (dapt_jax/bench/memory_sweep.py).
  p.add_argument('--memory-sweep', action='store_true',
                 help='training memory vs batch (16..512, or --batches) for every PEFT method: '
                 'DIR/memory_sweep.png/.md/.json')
  p.add_argument('--methods', default=None,
                 help='--memory-sweep: comma list of PEFT methods (default: all eight)')
  p.add_argument('--points', type=int, default=2048, help='--memory-sweep: points per cloud')
  p.add_argument('--measure-up-to', type=int, default=None,
                 help='--memory-sweep: run the step (measure) only up to this batch; larger '
                      "batches get XLA's compiled estimate alone (default: every batch that fits)")
  p.add_argument('--memory-one', default=None, help=argparse.SUPPRESS)  # child: one JSON spec
  args = p.parse_args(argv)
  if args.one is None and args.memory_one is None:
    _check_args(args)
    if args.methods is not None:
      from dapt_jax.bench import memory_sweep  # pylint: disable=g-import-not-at-top
      bad = [m for m in args.methods.split(',') if m not in memory_sweep.METHODS]
      if bad or not args.memory_sweep:
        raise UsageError(f'--methods={args.methods}: ' + (
            f'{bad[0]!r} is not one of {", ".join(memory_sweep.METHODS)}' if bad
            else 'only with --memory-sweep'))
    if args.measure_up_to is not None and (args.measure_up_to < 1 or not args.memory_sweep):
      raise UsageError(f'--measure-up-to={args.measure_up_to}: '
                       + ('must be >= 1' if args.memory_sweep else 'only with --memory-sweep'))
    if args.config is not None and not args.predict:
      raise UsageError(f'--config={args.config}: only with --predict')
    if args.points < 32:
      raise UsageError(f'--points={args.points}: must be >= 32')
  return args


def _child(spec_json: str) -> None:
  from dapt_jax.bench import runner  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import spec as spec_lib  # pylint: disable=g-import-not-at-top
  rec = runner.measure(spec_lib.make_spec(**json.loads(spec_json)))
  print(runner.RECORD_PREFIX + json.dumps(rec), flush=True)


def main(argv=None) -> int | None:
  args = _parse(argv if argv is not None else sys.argv[1:])
  if args.one is not None:
    _child(args.one)
    return
  if args.memory_one is not None or args.memory_sweep:
    from dapt_jax.bench import memory_sweep  # pylint: disable=g-import-not-at-top
    if args.memory_one is not None:
      memory_sweep.child(args.memory_one)
    else:
      memory_sweep.main(args.out, (args.methods or ','.join(memory_sweep.METHODS)).split(','),
                        [int(b) for b in args.batches.split(',')] if args.batches
                        else memory_sweep.BATCHES, json.loads(args.model) if args.model else {},
                        args.points, measure_up_to=args.measure_up_to)
    return
  if args.predict:
    from dapt_jax.bench import predict  # pylint: disable=g-import-not-at-top
    predict.main(args.out, args.config or predict.DEFAULT_CONFIG,
                 json.loads(args.model) if args.model else None,
                 [int(b) for b in args.batches.split(',')] if args.batches
                 else list(predict.DEFAULT_BATCHES),
                 predict.DEFAULT_WARMUP if args.warmup is None else args.warmup,
                 predict.DEFAULT_STEPS if args.steps is None else args.steps,
                 argv if argv is not None else sys.argv[1:])
    return
  if args.loader:
    from dapt_jax.bench import loader  # pylint: disable=g-import-not-at-top
    loader.main(['--out', args.out])
    return
  from dapt_jax.bench import report  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import runner  # pylint: disable=g-import-not-at-top
  plan = runner.Plan(
      quick=args.quick, frameworks=args.frameworks.split(','), modes=args.modes.split(','),
      batches=[int(b) for b in args.batches.split(',')] if args.batches else None,
      max_batch=args.max_batch, scaling=not args.no_scaling, bf16=not args.no_bf16,
      warmup=args.warmup, steps=args.steps, parallel=args.parallel,
      model=json.loads(args.model) if args.model else None,
      cache_dir=(None if args.no_compile_cache
                 else os.path.abspath(os.path.join(args.out, 'compile_cache'))),
      profile_dir=os.path.abspath(os.path.join(args.out, 'profile')) if args.profile else None,
      policies=tuple(p for p in args.policies.split(',') if p))
  os.makedirs(args.out, exist_ok=True)
  start = time.perf_counter()
  records = runner.run(plan, log=lambda s: print(s, flush=True))
  wall = time.perf_counter() - start
  devices = sorted({r['device'] for r in records if r.get('device')})
  baselines = {r['framework']: r['baseline_rss_bytes'] for r in records
               if r.get('baseline_rss_bytes')}
  header = {
      'date': datetime.date.today().isoformat(),
      'command': 'python -m dapt_jax.bench ' + ' '.join(sys.argv[1:] if argv is None else argv),
      'devices': '; '.join(devices),
      'host': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
              f'Python {platform.python_version()}',
      'setting': (f"{'quick' if plan.quick else 'full'}: {plan.warmup} warm-up + {plan.steps} "
                  'timed steps per configuration (median), synthetic ellipsoid clouds of N points, '
                  'batch resident on the device'),
      'memory': ('CPU: peak RSS of the configuration\'s own process minus its RSS after imports '
                 '(baseline after imports: '
                 + ', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in baselines.items())
                 + '); GPU: the allocator\'s peak'),
      'wall time': f'{wall / 60:.1f} min',
  }
  with open(os.path.join(args.out, 'bench.json'), 'w') as f:
    json.dump({'header': header, 'records': records}, f, indent=1)
  md = report.render_markdown(records, header)
  with open(os.path.join(args.out, 'bench.md'), 'w') as f:
    f.write(md)
  print(md)
  failed = runner.failures(records, plan)
  if failed:
    r = failed[0]
    print(f"error: {len(failed)} of {len(records)} benchmark runs failed (first: {r['framework']} "
          f"{r['mode']} batch {r['batch']} N={r['num_points']} {r['dtype']}, {r['status']}: "
          f"{r.get('error')}); the tables in {os.path.join(args.out, 'bench.md')} are incomplete",
          file=sys.stderr, flush=True)
    return 1


if __name__ == '__main__':
  errors.run_cli(main)
