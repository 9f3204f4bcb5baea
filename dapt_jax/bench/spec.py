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
