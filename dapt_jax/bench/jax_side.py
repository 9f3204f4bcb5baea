"""One measurement with dapt_jax's real steps (`dapt_jax.tasks.classification.make_steps`):
compile time, the median train / eval step, peak memory, XLA's own analysis of the compiled step
(memory plan, FLOPs, bytes, loops), FPS + kNN alone, and optionally a profiler trace."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from dapt_jax.bench import clouds
from dapt_jax.bench import memory
from dapt_jax.bench import spec as spec_lib


def _median_time(fn: Callable[[], Any], warmup: int, steps: int) -> tuple[float, list[float]]:
  import jax  # pylint: disable=g-import-not-at-top
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def _random_variables(net, num_points: int, seed: int) -> dict:
  """Variables of the model's shapes with random values, without compiling `net.init`.

  Throughput does not depend on the values; `init_variables` would compile the whole forward
  pass once more (about 40 s for the full-size model on 2 CPU cores).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  key = jax.random.PRNGKey(seed)
  shapes = jax.eval_shape(
      lambda k: net.clone(axis_name=None).init({'params': k, 'dropout': k},
                                               jnp.zeros((2, num_points, 3)), train=False), key)
  rng = np.random.default_rng(seed)

  def value(path, s):
    name = path[-1]
    if len(s.shape) >= 2:
      return (0.02 * rng.standard_normal(s.shape)).astype(np.float32)
    if name in ('scale', 'gamma', 'var'):
      return np.ones(s.shape, np.float32)
    return np.zeros(s.shape, np.float32)

  out = {}
  for col in ('params', 'batch_stats'):
    flat = traverse_util.flatten_dict(shapes[col])
    out[col] = traverse_util.unflatten_dict({p: value(p, s) for p, s in flat.items()})
  return out


def build_config(spec: dict):
  """The PB-T50-RS config with the spec's shape, dtype and model overrides applied."""
  from configs import scanobjectnn  # pylint: disable=g-import-not-at-top
  cfg = scanobjectnn.get_config('hardest')
  with cfg.unlocked():
    for field, value in spec['model'].items():
      if field not in cfg.model:
        raise ValueError(f'model override {field!r}: not a model config field')
      cfg.model[field] = tuple(value) if isinstance(value, list) else value
    if spec['num_group'] is not None:
      cfg.model.num_group = spec['num_group']
    if spec['group_size'] is not None:
      cfg.model.group_size = spec['group_size']
    cfg.model.dtype = spec['dtype']
    cfg.data.num_points = spec['num_points']
    cfg.data.point_all = spec_lib.point_all(spec['num_points'])
    cfg.batch_size = spec['batch']
    cfg.parallel = spec['parallel']
  return cfg


def resident_bytes(tree) -> int:
  """Bytes the arrays of `tree` hold on the devices (every addressable shard counted)."""
  import jax  # pylint: disable=g-import-not-at-top
  total = 0
  for leaf in jax.tree.leaves(tree):
    shards = getattr(leaf, 'addressable_shards', None)
    total += sum(s.data.nbytes for s in shards) if shards else getattr(leaf, 'nbytes', 0)
  return int(total)


def compiled_stats(compiled, batch: int) -> dict:
  """What XLA says about a compiled step: its static memory plan, its FLOP and byte counts, its
  matmul FLOPs by part of the model, and its sequential loops (see hlo_stats.py)."""
  from dapt_jax.bench import hlo_stats  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {'hlo_batch': batch}
  try:
    ma = compiled.memory_analysis()
    out.update(xla_argument_bytes=int(ma.argument_size_in_bytes),
               xla_temp_bytes=int(ma.temp_size_in_bytes),
               xla_peak_bytes=int(ma.argument_size_in_bytes + ma.output_size_in_bytes
                                  - ma.alias_size_in_bytes + ma.temp_size_in_bytes))
  except Exception:  # pylint: disable=broad-except  (a backend without the analysis)
    pass
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out.update(flops_per_step=float(cost.get('flops', 0.0)),
               bytes_accessed_per_step=float(cost.get('bytes accessed', 0.0)),
               transcendentals_per_step=float(cost.get('transcendentals', 0.0)))
  except Exception:  # pylint: disable=broad-except
    pass
  hlo = compiled.as_text()
  dots = hlo_stats.dot_flops(hlo)
  out.update(dot_flops_per_step=float(sum(d['flops'] for d in dots)),
             dot_bytes_per_step=float(sum(d['bytes'] for d in dots)),
             dot_groups={k: v['flops'] for k, v in hlo_stats.group_dots(dots).items()},
             entry_kernels=hlo_stats.entry_kernels(hlo), **hlo_stats.loop_summary(hlo))
  return out


def _count_files(folder: str | None) -> int | None:
  import os  # pylint: disable=g-import-not-at-top
  if not folder:
    return None
  path = os.path.expanduser(folder)
  return sum(len(files) for _, _, files in os.walk(path)) if os.path.isdir(path) else 0


def _profile(one_step: Callable[[], Any], hlo_text: str, trace_dir: str, steps: int) -> dict:
  """A jax.profiler trace of `steps` train steps in `trace_dir`, and its per-op table."""
  import jax  # pylint: disable=g-import-not-at-top
  from dapt_jax.bench import profile  # pylint: disable=g-import-not-at-top
  jax.profiler.start_trace(trace_dir)
  try:
    for i in range(steps):
      with jax.profiler.StepTraceAnnotation('train', step_num=i):
        jax.block_until_ready(one_step())
  finally:
    jax.profiler.stop_trace()
  xplane = profile.latest_xplane(trace_dir)
  if xplane is None:
    return {'trace_dir': trace_dir, 'error': 'the profiler wrote no trace'}
  table = profile.op_table(xplane, hlo_text, steps)
  return {'trace_dir': trace_dir, 'xplane': xplane, 'steps': steps, 'source': table['source'],
          'total_ms': table['total_ms'], 'groups': table['groups'], 'ops': table['ops'][:40]}


def device_peak_bytes() -> int | None:
  """The allocator's peak over the local devices (GPU / TPU); None where it keeps no statistics."""
  import jax  # pylint: disable=g-import-not-at-top
  peaks = []
  for d in jax.local_devices():
    stats = d.memory_stats() if hasattr(d, 'memory_stats') else None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def measure(spec: dict) -> dict:
  """Runs one spec; returns the record (see runner.RECORD_FIELDS)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import classifier as model_lib  # pylint: disable=g-import-not-at-top
  from dapt_jax import optim  # pylint: disable=g-import-not-at-top
  from dapt_jax import partition  # pylint: disable=g-import-not-at-top
  from dapt_jax import steps  # pylint: disable=g-import-not-at-top
  from dapt_jax.tasks import classification  # pylint: disable=g-import-not-at-top
  from dapt_jax.models import tokenizer  # pylint: disable=g-import-not-at-top
  from dapt_jax.data import augment  # pylint: disable=g-import-not-at-top

  baseline = memory.peak_rss_bytes()
  if spec['compile_cache_dir']:
    from dapt_jax import compile_cache  # pylint: disable=g-import-not-at-top
    compile_cache.enable(spec['compile_cache_dir'], min_compile_seconds=0.0)
  dev = jax.devices()[0]
  rec: dict[str, Any] = {
      'framework': 'jax', 'version': jax.__version__, 'platform': dev.platform,
      'device': f'{dev.platform}: {getattr(dev, "device_kind", "?")} x{jax.device_count()}',
      'baseline_rss_bytes': baseline}

  cfg = build_config(spec)
  n, b = spec['num_points'], spec['batch']
  net = model_lib.build_model(cfg.model, axis_name=steps.AXIS)
  variables = _random_variables(net, n, spec['seed'])
  labels = partition.label_params(variables['params'], partition.PRESETS[spec['mode']])
  counts = partition.count(variables['params'], labels)['total']
  rec.update(trainable_params=counts[partition.TRAINABLE], total_params=counts['total'],
             num_group=cfg.model.num_group, group_size=cfg.model.group_size)
  tx = optim.make_optimizer(cfg.optim, labels, optim.make_schedule(cfg.optim, cfg.num_epochs, 100))
  state = steps.create_state(variables, labels, tx, jax.random.PRNGKey(spec['seed'] + 1))
  del variables
  parallel = steps.DataParallel(cfg.parallel, b)
  train_step, eval_step = classification.make_steps(parallel, net, tx, n, cfg.data.point_all)
  state = parallel.put_state(state)
  host_batch = clouds.ellipsoid_batch(b, n, cfg.model.num_classes, spec['seed'])
  batch = parallel.put_batch(host_batch)

  if spec['train']:
    cache_files = _count_files(spec['compile_cache_dir'])
    t = time.perf_counter()
    lowered = train_step.lower(state, batch)
    rec['lower_s'] = time.perf_counter() - t
    compiled = lowered.compile()
    rec['compile_s'] = time.perf_counter() - t  # tracing + lowering + XLA's compilation
    if spec['compile_cache_dir']:
      rec.update(cache_files_before=cache_files,
                 cache_files_after=_count_files(spec['compile_cache_dir']))
    rec['compile_peak_rss_bytes'] = memory.peak_rss_bytes()
    rec.update(compiled_stats(compiled, b))
    rec['state_bytes'] = resident_bytes((state, batch))
    # XLA's compiler can use more host memory than the step; measure the step on its own:
    # give the compiler's freed heap back to the kernel, then reset the peak mark.
    memory.release_free_heap()
    rss_before = memory.current_rss_bytes()
    rec['peak_reset_after_compile'] = memory.reset_peak_rss()
    holder = {'state': state}

    def one_step():
      holder['state'], holder['metrics'] = compiled(holder['state'], batch)  # state donated
      return holder['state'], holder['metrics']

    step_s, times = _median_time(one_step, spec['warmup'], spec['steps'])
    rec.update(step_s=step_s, step_times_s=times, samples_per_s=b / step_s,
               loss_finite=bool(jnp.isfinite(jnp.ravel(holder['metrics']['loss'])[0])))
    # Peak memory of training, read before evaluation and the extra timings run.
    device_peak = device_peak_bytes()
    if device_peak is not None:
      rec.update(peak_bytes=device_peak, peak_source='device peak_bytes_in_use')
    else:
      peak = memory.peak_rss_since_reset_bytes()
      rec.update(peak_bytes=peak, peak_source='process peak RSS',
                 rss_net_of_imports_bytes=peak - baseline)
      if rec['peak_reset_after_compile'] and rss_before is not None:
        # The training working set: the resident state and batch, plus how far the process grew
        # above its size just before the first step (activations, gradients, XLA's temporaries,
        # the runtime's own allocations). The compiled program's code is not in it.
        rec.update(rss_rise_bytes=peak - rss_before,
                   peak_net_bytes=peak - rss_before + rec['state_bytes'])
      else:  # the compiler's memory cannot be told apart: the cumulative measure
        rec['peak_net_bytes'] = peak - baseline
    if spec['profile_dir']:
      rec['profile'] = _profile(one_step, compiled.as_text(), spec['profile_dir'],
                                min(3, spec['steps']))
    state = holder['state']

  if spec['eval']:
    t = time.perf_counter()
    compiled_eval = eval_step.lower(state, batch).compile()
    rec['eval_compile_s'] = time.perf_counter() - t
    eval_s, _ = _median_time(lambda: compiled_eval(state, batch), 1, max(3, spec['steps'] // 2))
    rec.update(eval_step_s=eval_s, eval_samples_per_s=b / eval_s)

  if spec['grouping']:
    points = jnp.asarray(host_batch['points'])
    g, k = cfg.model.num_group, cfg.model.group_size
    impl = cfg.model.fps_impl
    group = jax.jit(lambda p: tokenizer.group_points(p, g, k, impl))
    view = jax.jit(lambda key, p: augment.train_view(key, p, n, cfg.data.point_all,
                                                     fps_impl=impl))
    reps = max(3, spec['steps'] // 2)
    rec['group_s'], _ = _median_time(lambda: group(points), 1, reps)
    rec['train_view_s'], _ = _median_time(lambda: view(jax.random.PRNGKey(0), points), 1, reps)
    if 'step_s' in rec:
      rec['group_share'] = rec['group_s'] / rec['step_s']
      rec['train_view_share'] = rec['train_view_s'] / rec['step_s']
  return rec


def check_model(model: dict) -> None:
  """Checks `--model` overrides as main.py checks a config, before any benchmark starts.

  The overrides are applied to the config every benchmark builds (PB-T50-RS, `jax_side`), which
  then goes through `dapt_jax.validate.check_run` (every field's type and range, the model's
  own checks, its parameter shapes and partition). The shapes are traced on the CPU of this
  process: it only starts the children that measure, so it must not take the accelerator.

  Raises:
    ValueError: one line naming the field and what is wrong with it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from dapt_jax import errors  # pylint: disable=g-import-not-at-top
  from dapt_jax import validate  # pylint: disable=g-import-not-at-top
  from configs import scanobjectnn  # pylint: disable=g-import-not-at-top

  fields = scanobjectnn.get_config('hardest').model
  unknown = [k for k in model if k not in fields]
  if unknown:
    import difflib  # pylint: disable=g-import-not-at-top
    close = difflib.get_close_matches(unknown[0], list(fields.keys()), n=1, cutoff=0.6)
    hint = f'; did you mean {close[0]!r}?' if close else f' (model fields: {", ".join(fields)})'
    raise ValueError(f'--model: {unknown[0]!r} is not a model config field{hint}')
  try:
    cfg = build_config(spec_lib.make_spec(model=model))
  except (TypeError, ValueError, KeyError) as e:
    raise ValueError(f'--model: {errors.one_line(e)}') from None
  jax.config.update('jax_platforms', 'cpu')
  try:
    validate.check_run(cfg, None, 'summary', num_devices=1, num_processes=1)
  except errors.UserError as e:
    raise ValueError(f'--model: {errors.one_line(e)}') from None
