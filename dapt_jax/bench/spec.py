"""What one benchmark child measures: a flat JSON-able dict (the spec) and its defaults."""
from __future__ import annotations

import json
from typing import Any

MODES = ('dapt', 'full', 'linear')
FRAMEWORKS = ('jax', 'torch')

DEFAULTS: dict[str, Any] = {
    'framework': 'jax',      # 'jax' (dapt_jax.steps) or 'torch' (tests/torch_reference.py)
    'mode': 'dapt',          # trainable set: 'dapt' (release), 'full' (everything), 'linear' (head)
    'batch': 32,             # global batch
    'num_points': 2048,      # N: points fed to the model (the input clouds hold this many too)
    'num_group': None,       # G; None: the config's (128)
    'group_size': None,      # K; None: the config's (32)
    'dtype': 'float32',      # compute dtype: 'float32' or 'bfloat16' (parameters stay float32)
    'warmup': 3,             # untimed steps after compilation
    'steps': 20,             # timed steps (the median is reported)
    'train': True,           # measure the train step
    'eval': False,           # also measure the eval step (after the training peak is read)
    'grouping': False,       # also time FPS + kNN and the training view alone
    'model': {},             # overrides of the config's model fields (tests: a tiny model)
    'parallel': 'shard_map',  # dapt_jax.steps.DataParallel mode: 'shard_map' or 'pmap'
    'seed': 0,
    'compile_cache_dir': None,  # JAX: turn the persistent compilation cache on in this folder
    'profile_dir': None,     # JAX: write a jax.profiler trace of a few train steps here
}


def make_spec(**fields: Any) -> dict[str, Any]:
  """A complete spec from the defaults and `fields`; unknown fields are an error."""
  unknown = sorted(set(fields) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'unknown benchmark spec field(s): {unknown}; known: {sorted(DEFAULTS)}')
  spec = dict(DEFAULTS)
  spec.update(fields)
  if spec['framework'] not in FRAMEWORKS:
    raise ValueError(f"framework={spec['framework']!r}: choose one of {FRAMEWORKS}")
  if spec['mode'] not in MODES:
    raise ValueError(f"mode={spec['mode']!r}: choose one of {MODES}")
  if spec['dtype'] not in ('float32', 'bfloat16'):
    raise ValueError(f"dtype={spec['dtype']!r}: choose 'float32' or 'bfloat16'")
  return spec


def point_all(num_points: int) -> int:
  """The release's FPS pool size before the random subset: 1200 for 1024, 2400 for 2048."""
  return int(round(num_points * 1200 / 1024))


def dumps(spec: dict[str, Any]) -> str:
  return json.dumps(spec, sort_keys=True)


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
  from dapt_jax.bench import jax_side  # pylint: disable=g-import-not-at-top
  from configs import scanobjectnn  # pylint: disable=g-import-not-at-top

  fields = scanobjectnn.get_config('hardest').model
  unknown = [k for k in model if k not in fields]
  if unknown:
    import difflib  # pylint: disable=g-import-not-at-top
    close = difflib.get_close_matches(unknown[0], list(fields.keys()), n=1, cutoff=0.6)
    hint = f'; did you mean {close[0]!r}?' if close else f' (model fields: {", ".join(fields)})'
    raise ValueError(f'--model: {unknown[0]!r} is not a model config field{hint}')
  try:
    cfg = jax_side.build_config(make_spec(model=model))
  except (TypeError, ValueError, KeyError) as e:
    raise ValueError(f'--model: {errors.one_line(e)}') from None
  jax.config.update('jax_platforms', 'cpu')
  try:
    validate.check_run(cfg, None, 'summary', num_devices=1, num_processes=1)
  except errors.UserError as e:
    raise ValueError(f'--model: {errors.one_line(e)}') from None
