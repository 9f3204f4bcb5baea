"""How one PyTorch module's tensors lie against a Flax module's leaves (SPEC §3): the leaf names
and transposes of each layer kind, and the tensors (`Entry`) of a key map's rows.

The rows themselves, their kinds and parts, and the plain Point-MAE classifier every release
builds on are model data: dapt_jax/models/release_keys.py, and each PEFT method's `RELEASE`.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from dapt_jax.models import release_keys as rk

# Flax leaf name → PyTorch leaf name, per kind ('params' unless noted).
_LEAVES = {
    rk.CONV1D: (('params', 'kernel', 'weight'), ('params', 'bias', 'bias')),
    rk.DENSE: (('params', 'kernel', 'weight'), ('params', 'bias', 'bias')),
    rk.DENSE_NO_BIAS: (('params', 'kernel', 'weight'),),
    rk.LAYER_NORM: (('params', 'scale', 'weight'), ('params', 'bias', 'bias')),
    rk.BATCH_NORM: (('params', 'scale', 'weight'), ('params', 'bias', 'bias'),
                    ('batch_stats', 'mean', 'running_mean'), ('batch_stats', 'var', 'running_var')),
    rk.SCALE_SHIFT: (('params', 'gamma', 'gamma'), ('params', 'beta', 'beta')),
    rk.CONV1D_NO_BIAS: (('params', 'kernel', 'weight'),),
    rk.CONV2D_NO_BIAS: (('params', 'kernel', 'weight'),),
}
# Trailing kernel-size axes of the convolutions' PyTorch weights.
_CONV_TAIL = {rk.CONV1D: 1, rk.CONV1D_NO_BIAS: 1, rk.CONV2D_NO_BIAS: 2}

# BatchNorm's step counter: no Flax counterpart; dropped going in, written as 0 going out.
NUM_BATCHES_TRACKED = 'num_batches_tracked'
COUNTER_REASON = 'BatchNorm step counter (no Flax counterpart)'


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor: its Flax variable (collection + `/`-joined path) and its release key."""
  collection: str   # 'params' or 'batch_stats'
  path: str         # e.g. 'blocks_0/attn/qkv/kernel'
  torch_key: str    # e.g. 'blocks.blocks.0.attn.qkv.weight'
  kind: str         # how the array is laid out on each side (release_keys' layer kinds)
  part: str         # one of release_keys.PARTS
  aliases: tuple[str, ...] = ()  # other release keys holding the same tensor (IDPT's BatchNorms)

  @property
  def name(self) -> str:
    """`collection/path`, the name reports use."""
    return f'{self.collection}/{self.path}'

  @property
  def counters(self) -> tuple[str, ...]:
    """The BatchNorm step counters written beside this tensor (its running_var's), if any."""
    if self.kind != rk.BATCH_NORM or not self.path.endswith('/var'):
      return ()
    return tuple(k[:-len('running_var')] + NUM_BATCHES_TRACKED
                 for k in (self.torch_key,) + self.aliases)

  @property
  def transposed(self) -> bool:
    return (self.kind in (rk.CONV1D, rk.DENSE, rk.DENSE_NO_BIAS, rk.CONV1D_NO_BIAS,
                          rk.CONV2D_NO_BIAS)
            and self.path.endswith('/kernel'))

  def torch_shape(self, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of a tensor whose Flax shape is `flax_shape`."""
    if not self.transposed:
      return tuple(flax_shape)
    return tuple(reversed(flax_shape)) + (1,) * _CONV_TAIL.get(self.kind, 0)

  def to_flax(self, value: np.ndarray) -> np.ndarray:
    """PyTorch layout → Flax layout (the shape must already be checked)."""
    if not self.transposed:
      return np.ascontiguousarray(value)
    value = value.reshape(value.shape[:2])  # drops the 1 (×1) kernel axes of a convolution
    return np.ascontiguousarray(value.T)

  def to_torch(self, value: np.ndarray) -> np.ndarray:
    """Flax layout → PyTorch layout."""
    if not self.transposed:
      return np.ascontiguousarray(value)
    value = np.ascontiguousarray(value.T)
    return value.reshape(value.shape + (1,) * _CONV_TAIL.get(self.kind, 0))


def entries(rows: Iterable[tuple]) -> list[Entry]:
  """Every tensor of the modules `rows` name, in their order."""
  out = []
  for fpath, tprefix, kind, part, *alias in rows:
    if kind == rk.PARAM:
      out.append(Entry('params', fpath, tprefix, kind, part))
      continue
    for collection, fleaf, tleaf in _LEAVES[kind]:
      if kind == rk.SCALE_SHIFT:
        parent, _, n = tprefix.partition('|')
        key = f'{parent}tfts_{tleaf}_{n}'
      else:
        key = f'{tprefix}.{tleaf}'
      aliases = tuple(f'{a}.{tleaf}' for a in alias)
      out.append(Entry(collection, f'{fpath}/{fleaf}', key, kind, part, aliases))
  return out
