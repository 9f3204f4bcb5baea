r"""python -m dapt_jax.bench --memory-sweep --out DIR [--methods dapt,full,idpt] [--batches 16,32]

Training memory against batch size for every PEFT method (the DAPT paper's Fig. 2(c), SPEC
§10.2: DAPT against full fine-tuning and IDPT, batch 16..512), on the PB-T50-RS shapes (N 2048,
G 128, K 32; `--model` overrides model fields, e.g. a tiny model for a smoke run).

One child process per (method, batch). The real train step (`tasks.classification.make_steps`,
one device, state donated) is compiled for the batch from abstract shapes, and XLA's memory
analysis of the compiled program gives its footprint: arguments + outputs + temporaries −
aliased (donated) bytes. When that fits the device (GPU/TPU: under 90 % of the allocator's limit; CPU: under half
the host's available memory, which other processes share), the step runs (1 warm-up + 2 steps)
and the peak is measured: the allocator's peak (GPU/TPU), or the process's peak RSS during the
steps minus its RSS before the training state was made (CPU). Otherwise the compiled estimate
is all there is. The plot marks which is which (filled: measured; open: XLA's estimate).

Writes DIR/memory_sweep.json (every record), DIR/memory_sweep.md and DIR/memory_sweep.png.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

from dapt_jax.bench import memory

RECORD_PREFIX = 'MEMORY_RECORD '
BATCHES = (16, 32, 64, 128, 256, 512)
METHODS = ('dapt', 'full', 'linear', 'vpt_deep', 'idpt', 'pointgst', 'lora', 'adapter')
DEVICE_FIT_FRACTION = 0.9   # of the accelerator allocator's limit
HOST_FIT_FRACTION = 0.5     # of the host's available memory (CPU runs share it)
# The paper's Fig. 2(c) labels at batch 512 (SPEC §10.2; dataset, points and GPU unverified).
PAPER_512 = {'idpt': 20.4, 'full': 16.0, 'dapt': 10.4}
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_config(method: str, batch: int, model: dict, num_points: int):
  from configs import scanobjectnn  # pylint: disable=g-import-not-at-top
  cfg = scanobjectnn.get_config('hardest')
  with cfg.unlocked():
    for field, value in model.items():
      if field not in cfg.model:
        raise ValueError(f'model override {field!r}: not a model config field')
      cfg.model[field] = tuple(value) if isinstance(value, list) else value
    cfg.model.peft = method
    cfg.data.num_points = num_points
    cfg.data.point_all = int(round(num_points * 1200 / 1024))
    cfg.batch_size = batch
  return cfg


def _current_rss() -> Optional[int]:
  kib = memory._status_kib('VmRSS')  # pylint: disable=protected-access
  return None if kib is None else kib * 1024


def measure(method: str, batch: int, model: dict, num_points: int, run: bool = True) -> dict:
  """One (method, batch) in this process: XLA's compiled estimate, then, if it fits, a measured
  peak. Returns the record."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import classifier as model_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax import optim  # pylint: disable=g-import-not-at-top
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  from dapt_jax import steps  # pylint: disable=g-import-not-at-top
  from dapt_jax.tasks import classification  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import clouds  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import jax_side  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  dev = jax.devices()[0]
  rec: dict[str, Any] = {'method': method, 'batch': batch, 'num_points': num_points,
                         'platform': dev.platform,
                         'device': f'{dev.platform}: {getattr(dev, "device_kind", "?")}'}
  cfg = build_config(method, batch, model, num_points)
  rec.update(num_group=cfg.model.num_group, group_size=cfg.model.group_size,
             trans_dim=cfg.model.trans_dim, depth=cfg.model.depth)
  net = model_lib.build_model(cfg.model, axis_name=steps.AXIS)
  shapes = jax.eval_shape(lambda k: model_lib.init_variables(net.clone(axis_name=None), k,
                                                              num_points), jax.random.PRNGKey(0))
  labels = partition.label_params(shapes['params'], partition.rules_for(cfg))
  counts = partition.count(shapes['params'], labels)['total']
  rec.update(trainable_params=counts['trainable'], total_params=counts['total'])
  tx = optim.make_optimizer(cfg.optim, labels, optim.make_schedule(cfg.optim, cfg.num_epochs, 100))
  parallel = steps.DataParallel('shard_map', batch, devices=jax.devices()[:1])
  train_step, _ = classification.make_steps(parallel, net, tx, num_points, cfg.data.point_all)
  replicated = NamedSharding(parallel.mesh, P())
  sharded = NamedSharding(parallel.mesh, P(steps.AXIS))
  state_shapes = jax.eval_shape(
      lambda v: steps.create_state(v, labels, tx, jax.random.PRNGKey(1)), shapes)
  abstract = lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh)
  state_abs = jax.tree.map(lambda s: abstract(s, replicated), state_shapes)
  batch_abs = {'points': jax.ShapeDtypeStruct((batch, num_points, 3), np.float32,
                                              sharding=sharded),
               'label': jax.ShapeDtypeStruct((batch,), np.int32, sharding=sharded)}
  t = time.perf_counter()
  compiled = train_step.lower(state_abs, batch_abs).compile()
  rec['compile_s'] = time.perf_counter() - t
  ma = compiled.memory_analysis()
  parts = {k: int(getattr(ma, f'{k}_size_in_bytes', 0) or 0)
           for k in ('argument', 'output', 'temp', 'alias', 'generated_code')}
  rec['analysis'] = parts
  rec['estimate_bytes'] = parts['argument'] + parts['output'] + parts['temp'] - parts['alias']

  stats = dev.memory_stats() if hasattr(dev, 'memory_stats') else None
  if stats and stats.get('bytes_limit'):
    rec['capacity_bytes'] = int(stats['bytes_limit'])
    limit = DEVICE_FIT_FRACTION * rec['capacity_bytes']
  else:
    rec['capacity_bytes'] = memory.available_bytes()
    limit = HOST_FIT_FRACTION * rec['capacity_bytes']
  rec['fits'] = rec['estimate_bytes'] < limit
  rec['measured_bytes'] = None
  if run and rec['fits']:
    memory.reset_peak_rss()
    before = _current_rss()
    variables = jax_side._random_variables(net, num_points, 0)  # pylint: disable=protected-access
    state = parallel.put_state(steps.create_state(variables, labels, tx, jax.random.PRNGKey(1)))
    del variables
    host_batch = clouds.ellipsoid_batch(batch, num_points, cfg.model.num_classes, 0)
    dev_batch = parallel.put_batch(host_batch)
    for _ in range(3):
      state, metrics = compiled(state, dev_batch)
    jax.block_until_ready(metrics)
    rec['loss_finite'] = bool(np.isfinite(np.asarray(jax.device_get(metrics['loss']))).all())
    peak = jax_side.device_peak_bytes()
    if peak is not None:
      rec.update(measured_bytes=peak, measured_source='device allocator peak')
    else:
      rec.update(measured_bytes=memory.peak_rss_since_reset_bytes() - (before or 0),
                 measured_source='process peak RSS during the steps minus RSS before the state')
  rec['wall_s'] = time.perf_counter() - t0
  return rec


def run_child(method: str, batch: int, model: dict, num_points: int, run: bool,
              timeout_s: Optional[float] = None) -> dict:
  """`measure` in a fresh process (peak memory is per process)."""
  env = dict(os.environ)
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  env['PYTHONPATH'] = os.pathsep.join([_ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
  spec = json.dumps({'method': method, 'batch': batch, 'model': model, 'num_points': num_points,
                     'run': run})
  cmd = [sys.executable, '-m', 'dapt_jax.bench', '--memory-one', spec]
  try:
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    out, err, code = proc.stdout, proc.stderr, proc.returncode
  except subprocess.TimeoutExpired:
    out, err, code = '', 'timeout', 'timeout'
  for line in reversed(out.splitlines()):
    if line.startswith(RECORD_PREFIX):
      return json.loads(line[len(RECORD_PREFIX):])
  detail = (err.strip().splitlines() or ['(no output)'])[-1][:300]
  status = 'oom' if any(s in err for s in ('RESOURCE_EXHAUSTED', 'out of memory')) or code in (
      -9, 137) else 'error'
  return {'method': method, 'batch': batch, 'num_points': num_points, 'status': status,
          'error': f'exit {code}: {detail}', 'estimate_bytes': None, 'measured_bytes': None}


def sweep(methods: Sequence[str], batches: Sequence[int], model: dict, num_points: int,
          run: bool = True, log: Callable[[str], None] = print,
          timeout_s: Optional[float] = None, measure_up_to: Optional[int] = None) -> list[dict]:
  """measure_up_to: run (measure) only batches up to this one; larger ones get XLA's estimate
  alone (a slow host: each measured step at a large batch takes minutes on a CPU)."""
  records = []
  total = len(methods) * len(batches)
  for i, method in enumerate(methods):
    for j, batch in enumerate(batches):
      measured = run and (measure_up_to is None or batch <= measure_up_to)
      rec = run_child(method, batch, model, num_points, measured, timeout_s)
      rec.setdefault('status', 'ok')
      if run and not measured and rec.get('fits'):
        rec['not_run'] = f'not run (batch above --measure-up-to {measure_up_to})'
      records.append(rec)
      gib = lambda b: '—' if b is None else f'{b / 2**30:.2f} GiB'
      log(f'[{i * len(batches) + j + 1}/{total}] {method} batch {batch}: estimate '
          f"{gib(rec.get('estimate_bytes'))}, measured {gib(rec.get('measured_bytes'))}"
          + (f" ({rec['status']}: {rec.get('error')})" if rec['status'] != 'ok' else ''))
  return records


def unit(records: Sequence[dict]) -> tuple[str, float]:
  """('GiB', 2**30), or ('MiB', 2**20) when every value is under 1 GiB (small smoke runs)."""
  values = [v for r in records for v in (r.get('estimate_bytes'), r.get('measured_bytes'))
            if v is not None]
  return ('GiB', 2.0**30) if values and max(values) >= 2**30 else ('MiB', 2.0**20)


def shown_bytes(rec: dict) -> tuple[Optional[int], bool]:
  """(bytes to plot, measured?) of a record: the measurement where there is one."""
  if rec.get('measured_bytes') is not None:
    return rec['measured_bytes'], True
  return rec.get('estimate_bytes'), False


def plot(records: Sequence[dict], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 5.5))
  name, scale = unit(records)
  methods = list(dict.fromkeys(r['method'] for r in records))
  cmap = matplotlib.colormaps['tab10']
  for k, method in enumerate(methods):
    rows = sorted((r for r in records if r['method'] == method and shown_bytes(r)[0] is not None),
                  key=lambda r: r['batch'])
    if not rows:
      continue
    colour = cmap(k % 10)
    xs = [r['batch'] for r in rows]
    ys = [shown_bytes(r)[0] / scale for r in rows]
    ax.plot(xs, ys, '-', color=colour, label=method, linewidth=1.5)
    for x, y, r in zip(xs, ys, rows):
      measured = shown_bytes(r)[1]
      ax.plot([x], [y], 'o', color=colour, markersize=7,
              markerfacecolor=colour if measured else 'white', markeredgewidth=1.5)
  ax.set_xscale('log', base=2)
  batches = sorted({r['batch'] for r in records})
  ax.set_xticks(batches)
  ax.set_xticklabels([str(b) for b in batches])
  ax.set_xlabel('batch size')
  ax.set_ylabel(f'training memory ({name})')
  ax.grid(alpha=0.3)
  handles, names = ax.get_legend_handles_labels()
  handles += [Line2D([], [], marker='o', color='gray', linestyle='', markerfacecolor='gray'),
              Line2D([], [], marker='o', color='gray', linestyle='', markerfacecolor='white')]
  names += ['measured (ran)', "XLA's compiled estimate (not run)"]
  ax.legend(handles, names, fontsize=8, loc='upper left')
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def render_markdown(records: Sequence[dict], header: dict) -> str:
  name, scale = unit(records)
  lines = ['# Training memory against batch size', '']
  lines += [f'- {k}: {v}' for k, v in header.items()]
  lines += ['', f'{name}; **m** = measured (the step ran), **e** = XLA\'s compiled estimate '
            '(arguments + outputs + temporaries − donated), the batch not run.', '']
  batches = sorted({r['batch'] for r in records})
  methods = list(dict.fromkeys(r['method'] for r in records))
  lines.append('| method | trainable | ' + ' | '.join(str(b) for b in batches) + ' |')
  lines.append('|---|---:|' + '---:|' * len(batches))
  for method in methods:
    rows = {r['batch']: r for r in records if r['method'] == method}
    trainable = next((r.get('trainable_params') for r in rows.values()
                      if r.get('trainable_params')), None)
    cells = []
    for b in batches:
      r = rows.get(b)
      value, measured = shown_bytes(r) if r else (None, False)
      cells.append('—' if value is None else f"{value / scale:.2f} {'m' if measured else 'e'}")
    lines.append(f"| {method} | {trainable or 0:,} | " + ' | '.join(cells) + ' |')
  lines += ['', f'Both numbers for each configuration ({name}):', '',
            '| method | batch | estimate | measured | source |', '|---|---:|---:|---:|---|']
  for r in records:
    est, meas = r.get('estimate_bytes'), r.get('measured_bytes')
    lines.append(f"| {r['method']} | {r['batch']} | "
                 f"{'—' if est is None else f'{est / scale:.2f}'} | "
                 f"{'—' if meas is None else f'{meas / scale:.2f}'} | "
                 f"{r.get('measured_source') or r.get('error') or r.get('not_run') or 'not run (does not fit)'} |")
  lines += ['', "The paper's Fig. 2(c) at batch 512 (its dataset, point count and GPU unverified): "
            + ', '.join(f'{m} {v} GB' for m, v in PAPER_512.items()) + '.']
  return '\n'.join(lines) + '\n'


def main(out: str, methods: Sequence[str], batches: Sequence[int], model: dict,
         num_points: int, run: bool = True, measure_up_to: Optional[int] = None) -> list[dict]:
  import datetime  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise SystemExit(f'error: --methods: unknown {unknown[0]!r}; choose from {", ".join(METHODS)}')
  os.makedirs(out, exist_ok=True)
  start = time.perf_counter()
  records = sweep(methods, batches, model, num_points, run,
                  log=lambda s: print(s, flush=True), measure_up_to=measure_up_to)
  devices = sorted({r['device'] for r in records if r.get('device')})
  header = {
      'date': datetime.date.today().isoformat(),
      'command': 'python -m dapt_jax.bench ' + ' '.join(sys.argv[1:]),
      'devices': '; '.join(devices) or '?',
      'host': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
      'shapes': f'N {num_points}, model overrides {json.dumps(model) if model else "none"} '
                '(PB-T50-RS config otherwise: G 128, K 32, width 384, 12 blocks)',
      'memory': 'GPU/TPU: allocator peak; CPU: peak RSS during the steps minus RSS before the '
                'state; estimates: XLA memory_analysis of the compiled train step',
      'wall time': f'{(time.perf_counter() - start) / 60:.1f} min',
  }
  with open(os.path.join(out, 'memory_sweep.json'), 'w') as f:
    json.dump({'header': header, 'records': records}, f, indent=1)
  with open(os.path.join(out, 'memory_sweep.md'), 'w') as f:
    f.write(render_markdown(records, header))
  plot(records, os.path.join(out, 'memory_sweep.png'),
       f"training memory vs batch, {header['devices']}; {header['shapes']}")
  print(f"wrote {os.path.join(out, 'memory_sweep.png')}, memory_sweep.md, memory_sweep.json")
  return records


def child(spec_json: str) -> None:
  spec = json.loads(spec_json)
  rec = measure(spec['method'], spec['batch'], spec['model'], spec['num_points'], spec['run'])
  print(RECORD_PREFIX + json.dumps(rec), flush=True)
