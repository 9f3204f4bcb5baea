"""`--profile`: a `jax.profiler` trace of training steps and the per-op time table read from it.

The trace (`DIR/profile/plugins/profile/<run>/*.xplane.pb`) opens in TensorBoard's profile
plugin or Perfetto (`DIR/profile/.../*.trace.json.gz`). The table joins the trace's op events
with the compiled step's HLO, so each row names the op, its source in the model
(`blocks_*/mlp/fc1`, `[bwd]` for the backward pass) and its time per step.

Which events count: on a GPU / TPU, the device plane's `XLA Ops` line (one event per executed
op); on CPU, the host thunks whose names are instructions of the step's entry computation (a
while loop is one row with its whole loop inside).
"""
from __future__ import annotations

import collections
import glob
import os
from typing import Optional

from dapt_jax.bench import hlo_stats


def latest_xplane(trace_dir: str) -> Optional[str]:
  files = glob.glob(os.path.join(trace_dir, 'plugins', 'profile', '*', '*.xplane.pb'))
  return max(files, key=os.path.getmtime) if files else None


def _events(xplane_path: str, entry_names: set[str]):
  """(name, duration ns) of the op events: device `XLA Ops` lines, else entry-level host thunks."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  data = ProfileData.from_file(xplane_path)
  device = [p for p in data.planes if p.name.startswith('/device:')]
  out = []
  for plane in device:
    for line in plane.lines:
      if line.name in ('XLA Ops', 'XLA Ops (TPU)'):
        out += [(ev.name, ev.duration_ns) for ev in line.events]
  if out:
    return out, 'device XLA Ops'
  for plane in data.planes:
    if plane.name.startswith('/host:CPU'):
      for line in plane.lines:
        out += [(ev.name, ev.duration_ns) for ev in line.events if ev.name in entry_names]
  return out, 'host thunks of the entry computation'


def op_table(xplane_path: str, hlo_text: str, steps: int) -> dict:
  """Per-op time per step from a trace of `steps` steps of the program `hlo_text`.

  Returns {'source': which events, 'total_ms': per step, 'ops': rows sorted by time, 'groups':
  rows summed per source label}; a row is {op, opcode, source, calls, ms} per step.
  """
  names = hlo_stats.op_names(hlo_text)
  events, source = _events(xplane_path, set(names))
  per_op: dict[str, list] = collections.defaultdict(lambda: [0, 0])
  for name, ns in events:
    per_op[name][0] += 1
    per_op[name][1] += ns
  rows = []
  for name, (calls, ns) in per_op.items():
    opcode, op_name = names.get(name, ('?', ''))
    rows.append({'op': name, 'opcode': opcode, 'source': hlo_stats.source_label(op_name),
                 'calls': calls / steps, 'ms': ns / 1e6 / steps})
  rows.sort(key=lambda r: -r['ms'])
  groups: dict[str, dict] = collections.defaultdict(lambda: {'ms': 0.0, 'ops': 0})
  for r in rows:
    key = _group(r['source'], r['opcode'])
    groups[key]['ms'] += r['ms']
    groups[key]['ops'] += 1
  group_rows = sorted(({'group': k, **v} for k, v in groups.items()), key=lambda r: -r['ms'])
  return {'source': source, 'total_ms': sum(r['ms'] for r in rows), 'ops': rows,
          'groups': group_rows}


def _group(source: str, opcode: str) -> str:
  """Coarse parts of the step: FPS loops, kNN, the patch encoder, attention / MLP / adapter of
  the blocks (forward, backward), the head, the optimizer."""
  bwd = ' [bwd]' if source.endswith('[bwd]') else ''
  s = source.replace(' [bwd]', '')
  if opcode == 'while' and 'threefry' not in s and '_uniform' not in s:
    return 'while loops (FPS)'
  for prefix, name in (('encoder', 'patch encoder'), ('pos_embed', 'position embedding'),
                       ('head', 'head'), ('norm', 'final norm')):
    if s.startswith(prefix):
      return name + bwd
  if s.startswith('blocks_*'):
    part = s.split('/')[1] if '/' in s else ''
    part = part if part in ('attn', 'mlp', 'adapter') else 'norms, scale-shifts, prompt'
    return f'blocks: {part}{bwd}'
  if 'top_k' in s or 'knn' in s or 'sort' in s:
    return 'kNN / sort'
  if any(k in s for k in ('adam', 'optim', 'clip', 'apply_trainable', 'global_norm')):
    return 'optimizer'
  if 'threefry' in s or 'random' in s or '_uniform' in s or '_bernoulli' in s:
    return 'random numbers'
  return 'other' + bwd


def render(table: dict, top: int = 25) -> str:
  lines = [f"Per-op time per step ({table['source']}; {table['total_ms']:.1f} ms of ops per step)",
           '', '| part of the step | ms / step | share | ops |', '|---|---:|---:|---:|']
  total = table['total_ms'] or 1.0
  for g in table['groups']:
    lines.append(f"| {g['group']} | {g['ms']:.1f} | {g['ms'] / total:.1%} | {g['ops']} |")
  lines += ['', f'Top {top} ops:', '',
            '| op | opcode | source | calls / step | ms / step | share |',
            '|---|---|---|---:|---:|---:|']
  for r in table['ops'][:top]:
    lines.append(f"| {r['op']} | {r['opcode']} | {r['source']} | {r['calls']:.0f} | "
                 f"{r['ms']:.2f} | {r['ms'] / total:.1%} |")
  return '\n'.join(lines)
