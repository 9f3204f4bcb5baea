"""The benchmark plan and its child processes.

One child per configuration (`python -m dapt_jax.bench --one '<spec>'`): it prints its record as
one line starting with `RECORD_PREFIX`. A child that dies (out of host memory: killed by the
kernel) or reports an out-of-memory error is recorded with status 'oom'.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Optional

from dapt_jax.bench import memory
from dapt_jax.bench import spec as spec_lib

RECORD_PREFIX = 'BENCH_RECORD '
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every record holds these (None where not measured); measured extras may follow.
RECORD_FIELDS = ('framework', 'mode', 'batch', 'num_points', 'num_group', 'group_size', 'dtype',
                 'warmup', 'steps', 'status', 'device', 'platform', 'version', 'compile_s',
                 'step_s', 'samples_per_s', 'peak_bytes', 'peak_source', 'baseline_rss_bytes',
                 'peak_net_bytes', 'eval_step_s', 'eval_samples_per_s', 'group_s', 'group_share',
                 'train_view_s', 'train_view_share', 'trainable_params', 'total_params',
                 'wall_s', 'error', 'role')

# What a record is for (`role`): the tables' measurements, the two starts of the compile-cache
# check, and the profiled run.
ROLES = ('main', 'cache_first', 'cache_second', 'profile', 'policy_all', 'policy_inputs')


def _is_oom(text: str) -> bool:
  return any(s in text for s in ('RESOURCE_EXHAUSTED', 'OutOfMemoryError', 'out of memory',
                                 'MemoryError'))


def measure(spec: dict) -> dict:
  """Runs one spec in this process (the child's work) and returns its record."""
  t = time.perf_counter()
  rec: dict[str, Any] = {f: None for f in RECORD_FIELDS}
  rec.update({k: spec[k] for k in ('framework', 'mode', 'batch', 'num_points', 'num_group',
                                   'group_size', 'dtype', 'warmup', 'steps')})
  rec['status'] = 'ok'
  try:
    if spec['framework'] == 'jax':
      from dapt_jax.bench import jax_side  # pylint: disable=g-import-not-at-top
      rec.update(jax_side.measure(spec))
    else:
      from dapt_jax.bench import torch_side  # pylint: disable=g-import-not-at-top
      rec.update(torch_side.measure(spec))
  except Exception as e:  # pylint: disable=broad-except
    text = f'{type(e).__name__}: {e}'
    rec.update(status='oom' if _is_oom(text) else 'error', error=text.splitlines()[0][:500])
    if rec['status'] == 'error':
      traceback.print_exc()
  rec['wall_s'] = time.perf_counter() - t
  return rec


def run_child(spec: dict, timeout_s: Optional[float] = None) -> dict:
  """Runs one spec in a fresh Python process; returns its record."""
  env = dict(os.environ)
  env.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # GPU: allocate what is used
  env['PYTHONPATH'] = os.pathsep.join([_ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
  cmd = [sys.executable, '-m', 'dapt_jax.bench', '--one', spec_lib.dumps(spec)]
  t = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    out, err, rc = proc.stdout, proc.stderr, proc.returncode
  except subprocess.TimeoutExpired as e:
    out, err, rc = (e.stdout or b''), (e.stderr or b''), 'timeout'
    out = out.decode() if isinstance(out, bytes) else out
    err = err.decode() if isinstance(err, bytes) else err
  for line in reversed(out.splitlines()):
    if line.startswith(RECORD_PREFIX):
      rec = json.loads(line[len(RECORD_PREFIX):])
      rec['process_wall_s'] = time.perf_counter() - t  # the whole child: start to exit
      return rec
  rec = {f: None for f in RECORD_FIELDS}
  rec.update({k: spec[k] for k in ('framework', 'mode', 'batch', 'num_points', 'num_group',
                                   'group_size', 'dtype', 'warmup', 'steps')})
  killed = rc in (-9, 137) or _is_oom(err)
  tail = (err.strip().splitlines() or [''])[-1][:500]
  rec.update(status='oom' if killed else ('timeout' if rc == 'timeout' else 'error'),
             error=f'child exit {rc}: {tail}', wall_s=time.perf_counter() - t)
  return rec


class Plan:
  """What a run measures, from the command-line settings."""

  def __init__(self, quick: bool, frameworks, modes, batches: Optional[list[int]],
               max_batch: int, scaling: bool, bf16: bool, warmup: Optional[int],
               steps: Optional[int], model: Optional[dict] = None,
               config_budget_s: Optional[float] = None, parallel: str = 'shard_map',
               cache_dir: Optional[str] = None, profile_dir: Optional[str] = None,
               policies: tuple[str, ...] = ('all',)):
    self.quick = quick
    self.frameworks = list(frameworks)
    self.modes = list(modes)
    self.warmup = warmup if warmup is not None else (1 if quick else 3)
    self.steps = steps if steps is not None else (4 if quick else 20)
    # quick: batch 8 only (no search); full: batch 32, then doubling up to max_batch.
    self.batches = batches or ([8] if quick else [32])
    self.search = batches is None and not quick
    self.max_batch = max_batch
    self.scaling = scaling
    self.bf16 = bf16
    self.model = model or {}
    self.parallel = parallel
    # First against second start with the persistent compilation cache (None: not checked).
    self.cache_dir = cache_dir
    # A profiler trace of the DAPT step (None: not taken).
    self.profile_dir = profile_dir
    # The DAPT step again with these model.remat_policy values ('all': no recomputation), to
    # show what the default 'matmuls' policy costs in time and saves in memory.
    self.policies = tuple(policies)
    # A configuration predicted to take longer than this is not started (batch search).
    self.config_budget_s = config_budget_s or (300.0 if quick else 1800.0)
    if quick:
      self.scaling_batch = self.batches[0]  # (2048, 128) is the headline DAPT record
      self.scaling_points = [(4096, 128), (2048, 256)]
    else:
      self.scaling_batch = 8
      self.scaling_points = ([(n, 128) for n in (1024, 2048, 4096, 8192)] +
                             [(2048, g) for g in (64, 256, 512)])

  def spec(self, **fields) -> dict:
    base = dict(warmup=self.warmup, steps=self.steps, model=self.model, parallel=self.parallel)
    base.update(fields)
    return spec_lib.make_spec(**base)


def failures(records: list[dict], plan: Plan) -> list[dict]:
  """The records of runs that failed. Running out of memory is a measurement, not a failure,
  only where the batch search tried a doubled batch (it stops there); anywhere else it is."""
  def searched(r):
    return plan.search and r.get('role') == 'main' and r['batch'] not in plan.batches
  return [r for r in records
          if r.get('status') != 'ok' and not (r.get('status') == 'oom' and searched(r))]


def _fits_next(rec: dict, plan: Plan, mem_limit: int) -> bool:
  """Whether doubling the batch is predicted to fit in host memory and the time budget."""
  if rec.get('status') != 'ok' or rec['batch'] * 2 > plan.max_batch:
    return False
  if rec.get('peak_source') == 'process peak RSS':
    predicted = rec['baseline_rss_bytes'] + 2 * rec['peak_net_bytes']
    if predicted > mem_limit:
      return False
  predicted_s = (rec.get('compile_s') or 0) + 2 * rec['step_s'] * (plan.warmup + plan.steps + 2)
  return predicted_s <= plan.config_budget_s


def run(plan: Plan, log: Callable[[str], None] = print,
        child: Callable[[dict], dict] = run_child) -> list[dict]:
  """Runs the plan; returns every record."""
  records: list[dict] = []
  mem_limit = int(0.8 * memory.available_bytes())

  def go(spec, role='main'):
    log(f'[bench] {spec["framework"]:5s} {spec["mode"]:6s} batch={spec["batch"]:<4d} '
        f'N={spec["num_points"]} G={spec["num_group"] or "cfg"} {spec["dtype"]} ...')
    rec = child(spec)
    rec['role'] = role
    records.append(rec)
    if rec['status'] == 'ok' and rec.get('step_s'):
      log(f'        {rec["samples_per_s"]:.2f} samples/s, step {rec["step_s"]*1e3:.0f} ms, '
          f'compile {rec["compile_s"] or 0:.1f} s, peak {rec["peak_bytes"]/2**20:.0f} MiB '
          f'({rec["wall_s"]:.0f} s)')
    else:
      log(f'        {rec["status"]}: {rec.get("error")}')
    return rec

  from dapt_jax.bench import torch_side  # pylint: disable=g-import-not-at-top
  frameworks = [f for f in plan.frameworks if f != 'torch' or torch_side.available()]
  if 'torch' in plan.frameworks and 'torch' not in frameworks:
    log('[bench] torch is not installed: measuring the JAX side only')

  for fw in frameworks:
    for mode in plan.modes:
      batches = list(plan.batches)
      i = 0
      while i < len(batches):
        b = batches[i]
        # Evaluation does not depend on the trainable set: measure it with the first mode.
        rec = go(plan.spec(framework=fw, mode=mode, batch=b, eval=(mode == plan.modes[0]),
                           grouping=(mode == 'dapt')))
        if plan.search and i == len(batches) - 1 and _fits_next(rec, plan, mem_limit):
          batches.append(b * 2)
        i += 1

  if plan.bf16 and 'jax' in frameworks:
    go(plan.spec(framework='jax', mode='dapt', batch=plan.batches[0], dtype='bfloat16',
                 eval=True))

  if plan.scaling and 'jax' in frameworks:
    for n, g in plan.scaling_points:
      go(plan.spec(framework='jax', mode='dapt', batch=plan.scaling_batch, num_points=n,
                   num_group=g, grouping=True))
  if 'jax' in frameworks:
    for policy in plan.policies:
      go(plan.spec(framework='jax', mode='dapt', batch=plan.batches[0],
                   model={**plan.model, 'remat_policy': policy}), f'policy_{policy}')

  if plan.cache_dir and 'jax' in frameworks:
    # Two fresh processes compile the same DAPT step; the second finds the first's executables.
    shutil.rmtree(plan.cache_dir, ignore_errors=True)
    for role in ('cache_first', 'cache_second'):
      go(plan.spec(framework='jax', mode='dapt', batch=plan.batches[0], warmup=0, steps=1,
                   compile_cache_dir=plan.cache_dir), role)

  if plan.profile_dir and 'jax' in frameworks:
    go(plan.spec(framework='jax', mode='dapt', batch=plan.batches[0], warmup=1,
                 steps=max(3, min(plan.steps, 5)), profile_dir=plan.profile_dir), 'profile')
  return records
