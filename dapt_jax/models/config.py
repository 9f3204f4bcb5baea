"""Reading and checking a config's `model` section: what every model family shares.

A `model` section is any mapping or ConfigDict. Each family (classifier, segmenter, mae) lists
its required fields and optional fields with defaults; the backbone checks below run for all of
them, so a mistake reads the same whichever family is built.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp

from dapt_jax import errors

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}

# Fields every family's backbone has (Point-MAE's transformer).
BACKBONE_FIELDS = ('trans_dim', 'depth', 'num_heads', 'mlp_ratio', 'encoder_dims', 'num_group',
                   'group_size', 'drop_path_rate', 'dtype')


class ModelConfigError(errors.UserError, ValueError):
  """A model config that cannot build a model; the message is one line naming the field."""


def has(cfg: Any, field: str) -> bool:
  return field in cfg if isinstance(cfg, Mapping) else hasattr(cfg, field)


def get(cfg: Any, field: str, *default: Any) -> Any:
  """`cfg.field`; without a default a missing field is a ModelConfigError naming it."""
  if has(cfg, field):
    return cfg[field] if isinstance(cfg, Mapping) else getattr(cfg, field)
  if default:
    return default[0]
  raise ModelConfigError(f'model config: missing field {field!r}')


def read(cfg: Any, required: Iterable[str], optional: Mapping[str, Any]) -> dict[str, Any]:
  """{field: value} of the required fields (each must be present) and the optional ones."""
  values = {f: get(cfg, f) for f in required}
  values.update({f: get(cfg, f, default) for f, default in optional.items()})
  return values


def positive_int(name: str, value: Any) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ModelConfigError(f'model.{name}={value!r}: must be a positive integer')
  return value


def number(name: str, value: Any) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise ModelConfigError(f'model.{name}={value!r}: must be a finite number')
  return float(value)


def rate(name: str, value: Any) -> float:
  if not 0.0 <= number(name, value) < 1.0:
    raise ModelConfigError(f'model.{name}={value!r}: must be in [0, 1)')
  return float(value)


def boolean(name: str, value: Any) -> bool:
  if not isinstance(value, bool):
    raise ModelConfigError(f'model.{name}={value!r}: must be True or False')
  return value


def check_backbone(v: Mapping[str, Any], dtypes: Iterable[str] = tuple(DTYPES)) -> None:
  """The checks every family's backbone fields pass (v as `read` returns it)."""
  for f in ('trans_dim', 'depth', 'num_heads', 'num_group', 'group_size'):
    positive_int(f, v[f])
  if v['encoder_dims'] != v['trans_dim']:
    raise ModelConfigError(f"model.encoder_dims={v['encoder_dims']} must equal "
                           f"model.trans_dim={v['trans_dim']} (the tokens feed the blocks directly)")
  if v['trans_dim'] % v['num_heads']:
    raise ModelConfigError(f"model.num_heads={v['num_heads']} must divide "
                           f"model.trans_dim={v['trans_dim']}")
  if number('mlp_ratio', v['mlp_ratio']) <= 0:
    raise ModelConfigError(f"model.mlp_ratio={v['mlp_ratio']!r}: must be > 0")
  rate('drop_path_rate', v['drop_path_rate'])
  for f in ('freeze_bn_stats', 'remat'):
    if f in v:
      boolean(f, v[f])
  dtypes = tuple(dtypes)
  if v['dtype'] not in dtypes:
    raise ModelConfigError(f"model.dtype={v['dtype']!r}: must be one of {sorted(dtypes)}")


def check_x64(v: Mapping[str, Any]) -> None:
  """A float64 model needs 64-bit JAX (checked last: every other mistake is named first)."""
  if v['dtype'] == 'float64' and not jax.config.jax_enable_x64:
    raise ModelConfigError("model.dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1")


def check_points(net: Any, num_points: int) -> None:
  """A dummy cloud for `init` needs at least num_group and group_size points."""
  if num_points < max(net.num_group, net.group_size):
    raise ModelConfigError(
        f'num_points={num_points} is smaller than model.num_group={net.num_group} or '
        f'model.group_size={net.group_size}')


def init(net: Any, params_key: jax.Array, dropout_key: jax.Array, *dummy_args: Any) -> dict:
  """`net.init` under jit → {'params', 'batch_stats'}; float64 models get float64 variables."""
  variables = jax.jit(net.init, static_argnames='train')(
      {'params': params_key, 'dropout': dropout_key}, *dummy_args, train=False)
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  if getattr(net, 'dtype', None) == jnp.float64:
    variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
  return variables
