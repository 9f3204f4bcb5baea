"""Markdown tables from benchmark records: training and evaluation side by side with
JAX/PyTorch ratios, DAPT against full fine-tuning, memory accounting, XLA's FLOP counts, the
compilation cache, the accelerator projection, the profile, scaling, bfloat16, and the targets."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from dapt_jax.bench import accelerator
from dapt_jax.bench import profile as profile_lib

MIB = 2 ** 20
MODE_NAMES = {'dapt': 'DAPT', 'full': 'full fine-tuning', 'linear': 'linear probing'}


def _ok(r: dict) -> bool:
  return r.get('status') == 'ok'


def _fmt(x: Any, spec: str = '.2f', suffix: str = '') -> str:
  if x is None:
    return '–'
  return f'{x:{spec}}{suffix}'


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
  return a / b if a is not None and b else None


def _mem(r: Optional[dict]) -> Optional[float]:
  """The workload's memory in MiB: the device peak, or on CPU the peak RSS above the baseline."""
  if not r or not _ok(r) or r.get('peak_bytes') is None:
    return None
  net = r.get('peak_net_bytes')
  return (net if net is not None else r['peak_bytes']) / MIB


def _find(records: Iterable[dict], **match) -> Optional[dict]:
  for r in records:
    if all(r.get(k) == v for k, v in match.items()) and _ok(r):
      return r
  return None


def _main(records: Iterable[dict]) -> list[dict]:
  """The tables' own measurements (not the compile-cache or profiling runs)."""
  return [r for r in records if r.get('role') in (None, 'main')]


def _headline(records: list[dict]) -> list[dict]:
  """float32 records at the default shape (N = 2048, the config's G)."""
  return [r for r in _main(records) if r.get('dtype') == 'float32'
          and r.get('num_points') == 2048 and r.get('num_group') in (None, 128)]


def training_table(records: list[dict]) -> str:
  head = _headline(records)
  keys = sorted({(r['mode'], r['batch']) for r in head},
                key=lambda k: (list(MODE_NAMES).index(k[0]), k[1]))
  lines = ['| mode | batch | trainable | JAX samples/s | PyTorch samples/s | JAX / PyTorch | '
           'JAX step ms | PyTorch step ms | JAX compile s | JAX memory MiB | '
           'PyTorch memory MiB | JAX / PyTorch memory | JAX XLA plan MiB |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for mode, b in keys:
    j = _find(head, framework='jax', mode=mode, batch=b)
    t = _find(head, framework='torch', mode=mode, batch=b)
    failed = [r for r in head if r['mode'] == mode and r['batch'] == b and not _ok(r)]
    note = ''.join(f" ({r['framework']}: {r['status']})" for r in failed)
    tp = (j or t or {}).get('trainable_params')
    lines.append(
        f"| {MODE_NAMES[mode]}{note} | {b} | {_fmt(tp, ',')} | "
        f"{_fmt(j and j['samples_per_s'])} | {_fmt(t and t['samples_per_s'])} | "
        f"{_fmt(_ratio(j and j['samples_per_s'], t and t['samples_per_s']), '.2f', '×')} | "
        f"{_fmt(j and j['step_s'] * 1e3, '.0f')} | {_fmt(t and t['step_s'] * 1e3, '.0f')} | "
        f"{_fmt(j and j['compile_s'], '.1f')} | {_fmt(_mem(j), '.0f')} | {_fmt(_mem(t), '.0f')} | "
        f"{_fmt(_ratio(_mem(j), _mem(t)), '.2f', '×')} | "
        f"{_fmt(j and j.get('xla_peak_bytes') and j['xla_peak_bytes'] / MIB, '.0f')} |")
  return '\n'.join(lines)


def memory_table(records: list[dict]) -> str:
  """How each training memory figure is made up (CPU: process RSS; see docs/benchmarks.md)."""
  lines = ['| framework | mode | batch | state MiB | RSS rise in the steps MiB | '
           'training memory MiB | peak RSS − after imports MiB | XLA plan MiB |',
           '|---|---|---:|---:|---:|---:|---:|---:|']
  mib = lambda r, k: _fmt(r.get(k) and r[k] / MIB, '.0f')
  for r in sorted((r for r in _headline(records) if _ok(r)),
                  key=lambda r: (r['framework'], list(MODE_NAMES).index(r['mode']), r['batch'])):
    lines.append(f"| {r['framework']} | {MODE_NAMES[r['mode']]} | {r['batch']} | "
                 f"{mib(r, 'state_bytes')} | {mib(r, 'rss_rise_bytes')} | {_fmt(_mem(r), '.0f')} | "
                 f"{mib(r, 'rss_net_of_imports_bytes')} | {mib(r, 'xla_peak_bytes')} |")
  return '\n'.join(lines)


HAND_GFLOP = {'encoder forward': 4.0, 'transformer forward': 6.2,
              'transformer activation-gradient backward': 6.2}


def flops_table(records: list[dict]) -> str:
  """XLA's FLOP counts of the compiled training steps, per sample, against the hand count."""
  lines = ['| mode | batch | N | XLA FLOPs / sample (G) | matmul FLOPs / sample (G) | encoder | '
           'blocks fwd | blocks bwd | head + other | sequential loop iterations (accelerator) | '
           'kernels outside loops |', '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in _main(records):
    if r['framework'] != 'jax' or r.get('dtype') != 'float32' or not _ok(r) or not r.get(
        'dot_groups'):
      continue
    g = {k: v / r['batch'] / 1e9 for k, v in r['dot_groups'].items()}
    enc = g.get('encoder forward', 0) + g.get('encoder backward', 0)
    fwd, bwd = g.get('blocks forward', 0), g.get('blocks backward', 0)
    rest = sum(v for k, v in g.items() if not k.startswith(('encoder', 'blocks')))
    lines.append(
        f"| {MODE_NAMES[r['mode']]} | {r['batch']} | {r['num_points']} | "
        f"{r['flops_per_step'] / r['batch'] / 1e9:.2f} | "
        f"{r['dot_flops_per_step'] / r['batch'] / 1e9:.2f} | {enc:.2f} | {fwd:.2f} | {bwd:.2f} | "
        f"{rest:.2f} | {r.get('accelerator_iterations')} "
        f"({' + '.join(str(t) for t in r.get('accelerator_loop_trips') or [])}) | "
        f"{r.get('entry_kernels')} |")
  return '\n'.join(lines)


def cache_table(records: list[dict]) -> str:
  first = _find(records, role='cache_first')
  second = _find(records, role='cache_second')
  lines = ['| start | train-step compile s (trace + XLA) | of which tracing s | '
           'process start to exit s | cache files after |', '|---|---:|---:|---:|---:|']
  for name, r in (('first (empty cache)', first), ('second (same config, fresh process)', second)):
    if r:
      lines.append(f"| {name} | {_fmt(r['compile_s'], '.1f')} | {_fmt(r.get('lower_s'), '.1f')} | "
                   f"{_fmt(r.get('process_wall_s'), '.1f')} | {r.get('cache_files_after')} |")
  ratio = _ratio(second and second['compile_s'], first and first['compile_s'])
  lines.append('')
  lines.append(f"Second start / first start, compile time: {_fmt(ratio, '.0%')}.")
  return '\n'.join(lines)


def eval_table(records: list[dict]) -> str:
  head = [r for r in _headline(records) if r.get('eval_samples_per_s')]
  lines = ['| batch | JAX samples/s | PyTorch samples/s | JAX / PyTorch | JAX eval compile s |',
           '|---:|---:|---:|---:|---:|']
  for b in sorted({r['batch'] for r in head}):
    j = _find(head, framework='jax', batch=b)
    t = _find(head, framework='torch', batch=b)
    lines.append(f"| {b} | {_fmt(j and j['eval_samples_per_s'])} | "
                 f"{_fmt(t and t['eval_samples_per_s'])} | "
                 f"{_fmt(_ratio(j and j['eval_samples_per_s'], t and t['eval_samples_per_s']), '.2f', '×')} | "
                 f"{_fmt(j and j.get('eval_compile_s'), '.1f')} |")
  return '\n'.join(lines)


def dapt_vs_full_table(records: list[dict]) -> str:
  head = _headline(records)
  lines = ['| framework | batch | DAPT / full: step time | DAPT / full: memory | '
           'linear / full: step time | linear / full: memory |', '|---|---:|---:|---:|---:|---:|']
  for fw in ('jax', 'torch'):
    for b in sorted({r['batch'] for r in head if r['framework'] == fw}):
      d, f, l = (_find(head, framework=fw, mode=m, batch=b) for m in ('dapt', 'full', 'linear'))
      if not f:
        continue
      lines.append(
          f"| {fw} | {b} | {_fmt(_ratio(d and d['step_s'], f['step_s']), '.0%')} | "
          f"{_fmt(_ratio(_mem(d), _mem(f)), '.0%')} | "
          f"{_fmt(_ratio(l and l['step_s'], f['step_s']), '.0%')} | "
          f"{_fmt(_ratio(_mem(l), _mem(f)), '.0%')} |")
  return '\n'.join(lines)


def scaling_table(records: list[dict]) -> str:
  rows = [r for r in records if r.get('framework') == 'jax' and r.get('mode') == 'dapt'
          and r.get('dtype') == 'float32' and r.get('group_s') is not None]
  rows.sort(key=lambda r: (r['batch'], r['num_group'] != 128, r['num_points'], r['num_group']))
  lines = ['| N points | G groups | batch | step ms | samples/s | memory MiB | FPS + kNN ms | '
           'FPS + kNN share | training-view FPS ms | training-view share |',
           '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(
        f"| {r['num_points']} | {r['num_group']} | {r['batch']} | {_fmt(r['step_s'] * 1e3, '.0f')} | "
        f"{_fmt(r['samples_per_s'])} | {_fmt(_mem(r), '.0f')} | {_fmt(r['group_s'] * 1e3, '.1f')} | "
        f"{_fmt(r.get('group_share'), '.1%')} | {_fmt(r['train_view_s'] * 1e3, '.1f')} | "
        f"{_fmt(r.get('train_view_share'), '.1%')} |")
  failed = [r for r in records if r.get('framework') == 'jax' and r.get('mode') == 'dapt'
            and not _ok(r) and (r.get('num_points') != 2048 or r.get('num_group') not in (None, 128))]
  for r in failed:
    lines.append(f"| {r['num_points']} | {r['num_group']} | {r['batch']} | {r['status']} "
                 '| | | | | | |')
  return '\n'.join(lines)


def bf16_table(records: list[dict]) -> str:
  lines = ['| compute dtype | batch | step ms | samples/s | eval samples/s | compile s | '
           'memory MiB |', '|---|---:|---:|---:|---:|---:|---:|']
  bf = [r for r in records if r.get('dtype') == 'bfloat16' and r.get('framework') == 'jax'
        and _ok(r)]
  for r16 in bf:
    r32 = _find(_main(records), framework='jax', mode='dapt', batch=r16['batch'], dtype='float32',
                num_points=r16['num_points'], num_group=r16['num_group'])
    for r in (r32, r16):
      if r:
        lines.append(f"| {r['dtype']} | {r['batch']} | {_fmt(r['step_s'] * 1e3, '.0f')} | "
                     f"{_fmt(r['samples_per_s'])} | {_fmt(r.get('eval_samples_per_s'))} | "
                     f"{_fmt(r['compile_s'], '.1f')} | {_fmt(_mem(r), '.0f')} |")
  return '\n'.join(lines)


def policy_table(records: list[dict]) -> str:
  """The DAPT step with the default block-residual policy against the others measured."""
  lines = ['| model.remat_policy | batch | step ms | samples/s | training memory MiB | '
           'XLA plan MiB | step time vs matmuls | memory vs matmuls |',
           '|---|---:|---:|---:|---:|---:|---:|---:|']
  extra = [r for r in records if str(r.get('role', '')).startswith('policy_') and _ok(r)]
  for r in extra:
    base = _find(_headline(records), framework='jax', mode='dapt', batch=r['batch'])
    for name, x in (('matmuls (default)', base), (r['role'][len('policy_'):], r)):
      if not x:
        continue
      lines.append(
          f"| {name} | {x['batch']} | {_fmt(x['step_s'] * 1e3, '.0f')} | "
          f"{_fmt(x['samples_per_s'])} | {_fmt(_mem(x), '.0f')} | "
          f"{_fmt(x.get('xla_peak_bytes') and x['xla_peak_bytes'] / MIB, '.0f')} | "
          f"{_fmt(_ratio(x['step_s'], base and base['step_s']), '.0%')} | "
          f"{_fmt(_ratio(_mem(x), _mem(base)), '.0%')} |")
  return '\n'.join(lines)


def targets(records: list[dict], batch: int = 32) -> list[str]:
  """One line per target (issues #6 and #14): the measured value and met / not met.

  Falls back to the smallest measured batch when `batch` was not measured (--quick).
  """
  head = _headline(records)
  batches = sorted({r['batch'] for r in head})
  if batches and batch not in batches:
    batch = batches[0]
  jx = {m: _find(head, framework='jax', mode=m, batch=batch) for m in MODE_NAMES}
  th = {m: _find(head, framework='torch', mode=m, batch=batch) for m in MODE_NAMES}
  d, f = jx['dapt'], jx['full']
  platform = (d or {}).get('platform')
  out = []

  def line(name, value, limit, ok_if_le, fmt):
    if value is None:
      out.append(f'- {name}: not measured.')
      return
    met = value <= limit if ok_if_le else value >= limit
    out.append(f"- {name}: {fmt(value)} (target {'≤' if ok_if_le else '≥'} {fmt(limit)}) — "
               f"{'met' if met else 'NOT met'}.")

  pct = lambda v: f'{v:.0%}'
  times = lambda v: f'{v:.2f}×'
  line(f'DAPT training memory / full fine-tuning (JAX, batch {batch})',
       _ratio(_mem(d), _mem(f)), 0.50, True, pct)
  line(f'DAPT training memory JAX / PyTorch (batch {batch})',
       _ratio(_mem(d), _mem(th['dapt'])), 1.0, True, times)
  line(f'DAPT step time / full fine-tuning (JAX, batch {batch})',
       _ratio(d and d['step_s'], f and f['step_s']), 0.75, True, pct)
  limit = 1.0 if platform == 'cpu' else 1.5
  for m in MODE_NAMES:
    line(f'{MODE_NAMES[m]} training throughput JAX / PyTorch ({platform}, batch {batch})',
         _ratio(jx[m] and jx[m]['samples_per_s'], th[m] and th[m]['samples_per_s']), limit, False,
         times)
  pol = _find(records, role='policy_all')
  line('DAPT step time, remat_policy matmuls (default) / all (no recomputation)',
       _ratio(d and pol and d['step_s'], pol and pol['step_s']), 1.10, True, pct)
  first, second = _find(records, role='cache_first'), _find(records, role='cache_second')
  line('Train-step compile time, second start / first start (persistent cache)',
       _ratio(second and second['compile_s'], first and first['compile_s']), 0.20, True, pct)
  g = _find([r for r in head if r.get('group_share') is not None], framework='jax', mode='dapt')
  line('FPS + kNN share of a DAPT step (JAX, N = 2048, G = 128'
       + (f", batch {g['batch']})" if g else ')'), g and g['group_share'], 0.10, True, pct)
  return out


def render_markdown(records: list[dict], header: Optional[dict] = None) -> str:
  """The full Markdown report; `header` holds run facts (device, date, command, ...)."""
  parts = []
  if header:
    parts.append('\n'.join(f'- {k}: {v}' for k, v in header.items()))
  parts += ['### Training (median step after compilation)', training_table(records),
            '### Evaluation (forward only, FPS to N included)', eval_table(records),
            '### DAPT and linear probing against full fine-tuning', dapt_vs_full_table(records),
            '### Training memory, how each figure is made up', memory_table(records)]
  if any(str(r.get('role', '')).startswith('policy_') for r in records):
    parts += ['### Block residuals: what the backward pass keeps (JAX, DAPT)',
              policy_table(records)]
  if any(r.get('dot_groups') for r in records):
    parts += ['### What XLA compiles (per sample; matmul FLOPs by part of the model)',
              flops_table(records)]
  if any(r.get('role') == 'cache_first' for r in records):
    parts += ['### Compilation cache: first against second start (JAX, DAPT)',
              cache_table(records)]
  # The headline DAPT record (N = 2048), else any JAX DAPT record with XLA's counts.
  d = next((r for r in _headline(records) + _main(records) if r['framework'] == 'jax'
            and r['mode'] == 'dapt' and _ok(r) and r.get('dot_flops_per_step')), None)
  if d:
    parts += [f'### Projected {accelerator.H100["name"]} training step (model, not measured)',
              accelerator.render(d)]
  prof = next((r for r in records if r.get('role') == 'profile' and _ok(r)), None)
  if prof and prof.get('profile', {}).get('ops'):
    parts += [f"### Profile (JAX, DAPT, batch {prof['batch']}; trace in "
              f"`{prof['profile']['trace_dir']}`)", profile_lib.render(prof['profile'])]
  if any(r.get('group_s') is not None for r in records):
    parts += ['### Scaling (JAX, DAPT)', scaling_table(records)]
  if any(r.get('dtype') == 'bfloat16' for r in records):
    parts += ['### bfloat16 compute (JAX, DAPT; parameters and optimizer state float32)',
              bf16_table(records)]
  parts += ['### Targets', '\n'.join(targets(records))]
  failed = [r for r in records if not _ok(r)]
  if failed:
    parts += ['### Configurations that did not finish', '\n'.join(
        f"- {r['framework']} {r['mode']} batch {r['batch']} N={r['num_points']} "
        f"G={r['num_group']} {r['dtype']}: {r['status']} ({r.get('error')})" for r in failed)]
  return '\n\n'.join(parts) + '\n'
