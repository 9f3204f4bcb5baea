"""What a compiled step does, read from its HLO text: sequential loops, matmul FLOPs by source.

Used by the benchmark's accelerator model (`accelerator.py`) and the per-op tables
(`profile.py`). Only the text forms JAX prints are parsed (`compiled.as_text()` after XLA's
optimisations, `lowered.as_text(dialect='hlo')` before them), so nothing here needs a device.
"""
from __future__ import annotations

import collections
import math
import re
from typing import Iterable

# One HLO instruction line: `%name = <shape> opcode(operands), attributes`. The shape of a tuple
# holds spaces, so the opcode is found as the first `word(` after the `=`.
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_SHAPE = re.compile(r'([a-z]\w*)\[([\d,]*)\]')
_DIMS = re.compile(r'(lhs|rhs)_(contracting|batch)_dims=\{([\d,]*)\}')
_COMP = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_CALLS = re.compile(r'(?:body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)')

_BYTES = {'f64': 8, 's64': 8, 'u64': 8, 'c64': 8, 'f32': 4, 's32': 4, 'u32': 4, 'bf16': 2,
          'f16': 2, 's16': 2, 'u16': 2, 's8': 1, 'u8': 1, 'pred': 1}


def op_names(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (opcode, op_name metadata)} for every instruction of the module."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m:
      meta = _OP_NAME.search(line)
      out[m.group(1)] = (m.group(3), meta.group(1) if meta else '')
  return out


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
  """{computation name: its instruction lines}, and the entry computation's name."""
  comps: dict[str, list[str]] = {}
  entry, current = '', None
  for line in hlo_text.splitlines():
    if current is None:
      m = _COMP.match(line)
      if m and not line.lstrip().startswith('HloModule'):
        current = m.group(2)
        comps[current] = []
        if m.group(1):
          entry = current
    elif line.strip() == '}':
      current = None
    else:
      comps[current].append(line)
  return comps, entry


def while_loops(hlo_text: str) -> list[dict]:
  """Every while loop reachable from the entry computation: its name, op_name, trip count (None
  when XLA could not infer one), and how many times it runs per step (the product of the trip
  counts of the loops around it)."""
  comps, entry = _computations(hlo_text)
  loops: list[dict] = []

  def walk(comp: str, outer: int, seen: tuple) -> None:
    for line in comps.get(comp, ()):
      m = _INSTR.match(line)
      if not m:
        continue
      callees = _CALLS.findall(line)
      if m.group(3) == 'while':
        trip = _TRIP.search(line)
        n = int(trip.group(1)) if trip else None
        meta = _OP_NAME.search(line)
        loops.append({'name': m.group(1), 'op_name': meta.group(1) if meta else '',
                      'trip_count': n, 'runs_per_step': outer})
        body = re.search(r'body=%?([\w.\-]+)', line)
        if body and body.group(1) not in seen:
          walk(body.group(1), outer * (n or 1), seen + (body.group(1),))
      else:
        for c in callees:
          if c not in seen and c in comps:
            walk(c, outer, seen + (c,))

  walk(entry, 1, (entry,))
  return loops


def is_rng_loop(loop: dict) -> bool:
  """Threefry's rolled rounds: a CPU-only lowering (GPU and TPU unroll them)."""
  return 'threefry' in loop['op_name'] or '_bernoulli' in loop['op_name'] or (
      '_uniform' in loop['op_name'])


def loop_summary(hlo_text: str) -> dict:
  """Sequential iterations per step: all loops, and those an accelerator keeps (not RNG)."""
  loops = while_loops(hlo_text)
  kept = [l for l in loops if not is_rng_loop(l)]
  iters = lambda ls: sum((l['trip_count'] or 1) * l['runs_per_step'] for l in ls)
  return {'loops': len(loops), 'iterations': iters(loops), 'accelerator_loops': len(kept),
          'accelerator_iterations': iters(kept),
          'accelerator_loop_trips': sorted(((l['trip_count'] or 0) for l in kept), reverse=True)}


def entry_kernels(hlo_text: str) -> int:
  """Instructions the entry computation executes as kernels (not parameters, tuples, bitcasts,
  constants): a proxy for the number of device kernel launches outside loops."""
  comps, entry = _computations(hlo_text)
  skip = {'parameter', 'tuple', 'get-tuple-element', 'bitcast', 'constant'}
  n = 0
  for line in comps.get(entry, ()):
    m = _INSTR.match(line)
    if m and m.group(3) not in skip:
      n += 1
  return n


def _shape_dims(text: str) -> list[tuple[str, list[int]]]:
  return [(t, [int(d) for d in dims.split(',') if d]) for t, dims in _SHAPE.findall(text)]


def source_label(op_name: str) -> str:
  """A short source label from an op_name: the module path without jit/jvp wrappers, block
  indices folded (`blocks_*`), and `[bwd]` for the backward pass."""
  backward = 'transpose(' in op_name
  parts = []
  for p in op_name.split('/'):
    if not p or p.startswith(('jit(', 'jvp(', 'transpose(', 'vmap(', 'pjit(', 'checkpoint',
                               'rematted_computation', 'shard_map', 'Classifier')):
      continue
    if re.match(r'blocks_\d+\.', p):  # Flax's lifted-transform frames (remat, custom VJP)
      continue
    parts.append(re.sub(r'blocks_\d+', 'blocks_*', p))
  label = '/'.join(parts) or '(other)'
  return label + (' [bwd]' if backward else '')


def dot_flops(hlo_text: str) -> list[dict]:
  """Every dot of an HLO module (best before optimisation, where no dot is fused away): FLOPs
  (2 × output elements × contracted size), operand and output bytes, and the source label."""
  shapes: dict[str, tuple[str, list[int]]] = {}
  dots = []
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    own = _shape_dims(m.group(2))
    if len(own) == 1:
      shapes[m.group(1)] = own[0]
    if m.group(3) == 'dot':
      dots.append((m, line))
  out = []
  for m, line in dots:
    args = m.group(4).split(')')[0]
    operands = _shape_dims(args)          # printed with shapes, or only names:
    if len(operands) < 2:
      names = re.findall(r'%([\w.\-]+)', args)
      operands = [shapes[n] for n in names if n in shapes]
    if len(operands) < 2 or m.group(1) not in shapes:
      continue
    dims = {(a, b): [int(x) for x in v.split(',') if x] for a, b, v in _DIMS.findall(line)}
    lhs = operands[0][1]
    contracted = math.prod(lhs[i] for i in dims.get(('lhs', 'contracting'), []))
    out_t, out_dims = shapes[m.group(1)]
    nbytes = sum(math.prod(d) * _BYTES.get(t, 4) for t, d in operands[:2])
    nbytes += math.prod(out_dims) * _BYTES.get(out_t, 4)
    meta = _OP_NAME.search(line)
    out.append({'name': m.group(1), 'flops': 2 * math.prod(out_dims) * contracted,
                'bytes': nbytes, 'source': source_label(meta.group(1) if meta else '')})
  return out


def group_dots(dots: Iterable[dict]) -> dict[str, dict]:
  """Dot FLOPs and bytes summed per part of the model: the patch encoder, the position
  embedding, the blocks, the head, FPS / kNN (distance products), forward and backward apart."""
  groups: dict[str, dict] = collections.defaultdict(lambda: {'flops': 0, 'bytes': 0, 'dots': 0})
  for d in dots:
    src = d['source']
    part = ('encoder' if src.startswith('encoder') else
            'position embedding' if src.startswith('pos_embed') else
            'blocks' if src.startswith('blocks_') else
            'head' if src.startswith('head') else 'other')
    key = f"{part} {'backward' if src.endswith('[bwd]') else 'forward'}"
    groups[key]['flops'] += d['flops']
    groups[key]['bytes'] += d['bytes']
    groups[key]['dots'] += 1
  return dict(groups)
