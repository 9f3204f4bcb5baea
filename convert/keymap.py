"""Each model family's key map: its Flax variable paths ⇄ its checkpoint's keys (SPEC §3, §6.5,
§8.5). All three build on a release's classifier rows (each PEFT method's `RELEASE`, read through
convert/methods.py); the naming itself is drawn in docs/architecture.md.

A family's rows function takes the PEFT method whose keys its backbone uses and the
`collection/path` names of the model's leaves (which fix its depth and the like).
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from convert import kinds
from convert import methods
from dapt_jax.models import release_keys as rk
from dapt_jax.partition import flatten

_BLOCKS = 'params/blocks_{}/norm1/scale'


def leaf_names(variables: Mapping[str, Mapping]) -> set[str]:
  """'collection/path' of every leaf of {'params', 'batch_stats'}."""
  return {f'{c}/{p}' for c in ('params', 'batch_stats') for p in flatten(variables.get(c, {}))}


def _count(have: set[str], template: str) -> int:
  """How many consecutive indices 0, 1, ... `template.format(i)` finds in `have`."""
  n = 0
  while template.format(n) in have:
    n += 1
  return n


def classifier_rows(method: str, have: set[str]) -> Iterable[tuple]:
  """The classifier: exactly its release's rows."""
  return methods.release_rows(method, _count(have, _BLOCKS))


def segmenter_rows(method: str, have: set[str]) -> Iterable[tuple]:
  """Point-MAE's part-segmentation network (`model_state_dict`): the classifier's rows without its
  head (and without the class token where the network has none, as Point-MAE's own), then the
  segmentation head: label_conv, propagation_0, convs1..3, bns1..2."""
  cls = 'params/cls_token' in have
  for row in methods.release_rows(method, _count(have, _BLOCKS)):
    if row[3] != rk.HEAD and (cls or row[3] != rk.CLS):
      yield row
  yield 'label_conv/conv', 'label_conv.0', rk.CONV1D_NO_BIAS, rk.SEG_HEAD
  yield 'label_conv/bn', 'label_conv.1', rk.BATCH_NORM, rk.SEG_HEAD
  layers = _count(have, 'params/propagation_0/conv_{}/kernel')
  for i in range(layers):
    yield f'propagation_0/conv_{i}', f'propagation_0.mlp_convs.{i}', rk.CONV1D, rk.SEG_HEAD
  for i in range(layers):
    yield f'propagation_0/bn_{i}', f'propagation_0.mlp_bns.{i}', rk.BATCH_NORM, rk.SEG_HEAD
  for name in ('convs1', 'convs2', 'convs3'):
    yield name, name, rk.CONV1D, rk.SEG_HEAD
  for name in ('bns1', 'bns2'):
    yield name, name, rk.BATCH_NORM, rk.SEG_HEAD


def _mae_rows(method: str, depth: int, decoder_depth: int) -> Iterable[tuple]:
  yield 'mask_token', 'mask_token', rk.PARAM, rk.DECODER
  for fpath, tprefix, *rest in methods.release_rows(method, depth):
    if rest[1] not in (rk.HEAD, rk.CLS):
      yield (fpath, f'MAE_encoder.{tprefix}', *rest)
  yield 'decoder_pos_embed/fc1', 'decoder_pos_embed.0', rk.DENSE, rk.DECODER
  yield 'decoder_pos_embed/fc2', 'decoder_pos_embed.2', rk.DENSE, rk.DECODER
  yield from ((f, t, kind, rk.DECODER) for f, t, kind, _ in rk.block_rows(
      decoder_depth, rk.PLAIN_BLOCK_ROWS, 'decoder/blocks_{}/', 'MAE_decoder.blocks.{}.'))
  yield 'decoder/norm', 'MAE_decoder.norm', rk.LAYER_NORM, rk.DECODER
  yield 'increase_dim', 'increase_dim.0', rk.CONV1D, rk.DECODER


def mae_rows(method: str, have: set[str]) -> Iterable[tuple]:
  """Point-MAE's masked autoencoder, in its checkpoint's order: mask_token, the encoder rows under
  `MAE_encoder.`, decoder_pos_embed, MAE_decoder, increase_dim."""
  return _mae_rows(method, _count(have, _BLOCKS),
                   _count(have, 'params/decoder/blocks_{}/norm1/scale'))


def mae_entries(depth: int, decoder_depth: int) -> list[kinds.Entry]:
  """Every tensor of a masked autoencoder, in the Point-MAE checkpoint's order."""
  return kinds.entries(_mae_rows(methods.PLAIN, depth, decoder_depth))


def entries_for_variables(variables: Mapping[str, Mapping], method: str = methods.DEFAULT,
                          rows=classifier_rows, table: str = 'convert/keymap.py'
                          ) -> list[kinds.Entry]:
  """The entries of exactly the leaves of `variables` ({'params', 'batch_stats'}) of a model of
  `method` (config.model.peft) whose key map is `rows`.

  Raises:
    ValueError: a leaf the key map does not cover (a model change not mirrored here), a key map
      entry the model lacks, or a method without a release layout.
  """
  have = leaf_names(variables)
  entries = kinds.entries(rows(method, have))
  extra = sorted(have - {e.name for e in entries})
  if extra:
    raise ValueError(f'the model has {extra[0]} which {table} does not cover'
                     + (f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''))
  missing = [e.name for e in entries if e.name not in have]
  if missing:
    raise ValueError(f'the model lacks {missing[0]} which {table} expects')
  return entries


_BLOCK_KEY = re.compile(r'^blocks\.blocks\.(\d+)\.')


def block_index(torch_key: str) -> int | None:
  """The block number of a release key, or None outside the blocks."""
  m = _BLOCK_KEY.match(torch_key)
  return int(m.group(1)) if m else None
