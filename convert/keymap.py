"""Flax variable paths ⇄ the DAPT release's PyTorch keys, with the transposes (SPEC §3).

The naming itself is defined in docs/architecture.md; this module is its executable form for the
converter. Each row names a Flax module, the PyTorch module it comes from, what kind of layer it
is (which fixes the leaf names and the transposes), and which part of the model it belongs to.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping

import numpy as np

from dapt_jax.partition import flatten

# Layer kinds: how a module's Flax leaves are named and laid out against PyTorch's.
CONV1D = 'conv1d'        # Conv1d, kernel 1: weight [out, in, 1] ⇄ kernel [in, out]; bias
DENSE = 'dense'          # Linear: weight [out, in] ⇄ kernel [in, out]; bias
DENSE_NO_BIAS = 'dense_no_bias'  # Linear(bias=False): weight only (the attention's qkv)
LAYER_NORM = 'layer_norm'  # weight ⇄ scale, bias ⇄ bias
BATCH_NORM = 'batch_norm'  # as LayerNorm, plus running_mean/var ⇄ batch_stats mean/var
SCALE_SHIFT = 'scale_shift'  # `tfts_gamma_n`, `tfts_beta_n` on the parent module ⇄ gamma, beta
PARAM = 'param'          # a bare parameter, same shape on both sides (cls_token, cls_pos)
CONV1D_NO_BIAS = 'conv1d_no_bias'  # Conv1d(bias=False), kernel 1: weight [out, in, 1] ⇄ [in, out]
CONV2D_NO_BIAS = 'conv2d_no_bias'  # Conv2d(bias=False), kernel 1×1: [out, in, 1, 1] ⇄ [in, out]

# Model parts, for deciding what a pre-trained backbone must provide.
BACKBONE = 'backbone'    # the frozen Point-MAE encoder: every pre-training layout has all of it
CLS = 'cls'              # cls_token, cls_pos: some pre-training checkpoints have them
DAPT = 'dapt'            # scale-shifts and adapters: only in a DAPT fine-tuned checkpoint
HEAD = 'head'            # the classification head: only in a fine-tuned checkpoint
PEFT = 'peft'            # another PEFT method's additions (dapt_jax/models/peft): only fine-tuned

# (Flax module path, PyTorch module prefix, kind, part). For SCALE_SHIFT the PyTorch column is
# the parent prefix plus the pair's number, joined as `{prefix}tfts_{gamma|beta}_{n}`.
_MODEL_ROWS = (
    ('encoder/fc1', 'encoder.first_conv.0', CONV1D, BACKBONE),
    ('encoder/bn1', 'encoder.first_conv.1', BATCH_NORM, BACKBONE),
    ('encoder/fc2', 'encoder.first_conv.3', CONV1D, BACKBONE),
    ('encoder/fc3', 'encoder.second_conv.0', CONV1D, BACKBONE),
    ('encoder/bn2', 'encoder.second_conv.1', BATCH_NORM, BACKBONE),
    ('encoder/fc4', 'encoder.second_conv.3', CONV1D, BACKBONE),
    ('patch_tfts', '|1', SCALE_SHIFT, DAPT),
    ('cls_token', 'cls_token', PARAM, CLS),
    ('cls_pos', 'cls_pos', PARAM, CLS),
    ('pos_embed/fc1', 'pos_embed.0', DENSE, BACKBONE),
    ('pos_embed/fc2', 'pos_embed.2', DENSE, BACKBONE),
)
_BLOCK_ROWS = (  # under `blocks_{i}` ⇄ `blocks.blocks.{i}.`
    ('norm1', 'norm1', LAYER_NORM, BACKBONE),
    ('norm1_tfts', '|1', SCALE_SHIFT, DAPT),
    ('attn/qkv', 'attn.qkv', DENSE_NO_BIAS, BACKBONE),
    ('attn/qkv_tfts', 'attn.|1', SCALE_SHIFT, DAPT),
    ('attn/proj', 'attn.proj', DENSE, BACKBONE),
    ('attn/proj_tfts', 'attn.|2', SCALE_SHIFT, DAPT),
    ('norm2', 'norm2', LAYER_NORM, BACKBONE),
    ('norm2_tfts', '|2', SCALE_SHIFT, DAPT),
    ('mlp/fc1', 'mlp.fc1', DENSE, BACKBONE),
    ('mlp/fc1_tfts', 'mlp.|1', SCALE_SHIFT, DAPT),
    ('mlp/fc2', 'mlp.fc2', DENSE, BACKBONE),
    ('mlp/fc2_tfts', 'mlp.|2', SCALE_SHIFT, DAPT),
    ('adapter/norm', 'Adapter_MLP.adapter_layer_norm_before', LAYER_NORM, DAPT),
    ('adapter/scale', 'Adapter_MLP.scale', DENSE, DAPT),
    ('adapter/down_proj', 'Adapter_MLP.down_proj', DENSE, DAPT),
    ('adapter/up_proj', 'Adapter_MLP.up_proj', DENSE, DAPT),
    ('prompt_tfts', '|3', SCALE_SHIFT, DAPT),
)
_TAIL_ROWS = (
    ('norm', 'norm', LAYER_NORM, BACKBONE),
    ('norm_tfts', '|2', SCALE_SHIFT, DAPT),
    ('head/fc1', 'cls_head_finetune.0', DENSE, HEAD),
    ('head/bn1', 'cls_head_finetune.1', BATCH_NORM, HEAD),
    ('head/fc2', 'cls_head_finetune.4', DENSE, HEAD),
    ('head/bn2', 'cls_head_finetune.5', BATCH_NORM, HEAD),
    ('head/fc3', 'cls_head_finetune.8', DENSE, HEAD),
)

# Flax leaf name → PyTorch leaf name, per kind ('params' unless noted).
_LEAVES = {
    CONV1D: (('params', 'kernel', 'weight'), ('params', 'bias', 'bias')),
    DENSE: (('params', 'kernel', 'weight'), ('params', 'bias', 'bias')),
    DENSE_NO_BIAS: (('params', 'kernel', 'weight'),),
    LAYER_NORM: (('params', 'scale', 'weight'), ('params', 'bias', 'bias')),
    BATCH_NORM: (('params', 'scale', 'weight'), ('params', 'bias', 'bias'),
                 ('batch_stats', 'mean', 'running_mean'), ('batch_stats', 'var', 'running_var')),
    SCALE_SHIFT: (('params', 'gamma', 'gamma'), ('params', 'beta', 'beta')),
    CONV1D_NO_BIAS: (('params', 'kernel', 'weight'),),
    CONV2D_NO_BIAS: (('params', 'kernel', 'weight'),),
}
_CONV_TAIL = {CONV1D: 1, CONV1D_NO_BIAS: 1, CONV2D_NO_BIAS: 2}  # trailing kernel-size axes

# ---------------------------------------------------------------------------------------------
# The other PEFT methods (dapt_jax/models/peft) with a public release: Point-MAE's classifier layout
# (the IDPT and PointGST releases are Point-MAE forks), plus each method's additions. In each
# release's state-dict order: a model's own parameters, then encoder, pos_embed, blocks, norm,
# head; a Point-MAE block registers norm1, norm2, mlp, attn (SPEC §6.5).
_PLAIN_MODEL_ROWS = (
    ('cls_token', 'cls_token', PARAM, CLS),
    ('cls_pos', 'cls_pos', PARAM, CLS),
) + tuple(r for r in _MODEL_ROWS if r[3] == BACKBONE)
# (A Point-MAE block's own rows are `_PLAIN_BLOCK_ROWS`, shared with the masked autoencoder below.)
_PLAIN_TAIL_ROWS = tuple(r for r in _TAIL_ROWS if r[3] != DAPT)
# PointGST's PCSA in every block (GST:models/PGST.py).
_PGST_BLOCK_ROWS = (
    ('pcsa/norm1', 'gft_adapter.norm_ly1', LAYER_NORM, PEFT),
    ('pcsa/norm2', 'gft_adapter.norm_ly2', LAYER_NORM, PEFT),
    ('pcsa/down', 'gft_adapter.down', DENSE, PEFT),
    ('pcsa/up', 'gft_adapter.up', DENSE, PEFT),
    ('pcsa/adapt1', 'gft_adapter.adapt1', DENSE, PEFT),
)
# IDPT's DGCNN prompt module (IDPT:models/dgcnn.py DGCNNView, under the encoder's `blocks.cls`).
# Each BatchNorm is registered twice in the release (as bn<n> and inside conv<n>), so its state
# dict holds the same tensors under both names: the second is an alias.
_IDPT_ROWS = (
    ('idpt/bn1', 'blocks.cls.bn1', BATCH_NORM, PEFT, 'blocks.cls.conv1.1'),
    ('idpt/bn2', 'blocks.cls.bn2', BATCH_NORM, PEFT, 'blocks.cls.conv2.1'),
    ('idpt/bn3', 'blocks.cls.bn3', BATCH_NORM, PEFT, 'blocks.cls.conv3.1'),
    ('idpt/bn5', 'blocks.cls.bn5', BATCH_NORM, PEFT, 'blocks.cls.conv5.1'),
    ('idpt/conv1', 'blocks.cls.conv1.0', CONV2D_NO_BIAS, PEFT),
    ('idpt/conv2', 'blocks.cls.conv2.0', CONV2D_NO_BIAS, PEFT),
    ('idpt/conv3', 'blocks.cls.conv3.0', CONV2D_NO_BIAS, PEFT),
    ('idpt/conv5', 'blocks.cls.conv5.0', CONV1D_NO_BIAS, PEFT),
)
# Methods with a release layout; LoRA and the bottleneck adapter are the project's own designs.
RELEASE_METHODS = ('dapt', 'full', 'linear', 'vpt_deep', 'idpt', 'pointgst')
METHOD_NAMES = {'dapt': 'DAPT', 'full': 'Point-MAE', 'linear': 'Point-MAE', 'vpt_deep': 'VPT-deep',
                'idpt': 'IDPT', 'pointgst': 'PointGST'}

# BatchNorm's step counter: no Flax counterpart; dropped going in, written as 0 going out.
NUM_BATCHES_TRACKED = 'num_batches_tracked'


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor: its Flax variable (collection + `/`-joined path) and its release key."""
  collection: str   # 'params' or 'batch_stats'
  path: str         # e.g. 'blocks_0/attn/qkv/kernel'
  torch_key: str    # e.g. 'blocks.blocks.0.attn.qkv.weight'
  kind: str         # how the array is laid out on each side (see the kinds above)
  part: str         # BACKBONE, CLS, DAPT, HEAD or PEFT
  aliases: tuple[str, ...] = ()  # other release keys holding the same tensor (IDPT's BatchNorms)

  @property
  def name(self) -> str:
    """`collection/path`, the name reports use."""
    return f'{self.collection}/{self.path}'

  @property
  def transposed(self) -> bool:
    return (self.kind in (CONV1D, DENSE, DENSE_NO_BIAS, CONV1D_NO_BIAS, CONV2D_NO_BIAS)
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


def _module_rows(depth: int, method: str = 'dapt') -> Iterable[tuple]:
  """(Flax module, PyTorch module, kind, part[, alias]) rows of `method`'s model."""
  if method not in RELEASE_METHODS:
    raise ValueError(f'model.peft={method!r} has no release checkpoint layout (the project\'s '
                     f'own design); convertible: {", ".join(RELEASE_METHODS)}')
  if method == 'dapt':
    yield from _MODEL_ROWS
  else:
    yield from _PLAIN_MODEL_ROWS[:2]
    if method == 'idpt':
      yield ('idpt/prompt_pos', 'prompt_pos', PARAM, PEFT)
    if method == 'vpt_deep':
      for i in range(depth):
        yield (f'vpt/prompt_{i}', f'cls_prompt_list.{i}', PARAM, PEFT)
      for i in range(depth):
        yield (f'vpt/prompt_pos_{i}', f'cls_prompt_pos_list.{i}', PARAM, PEFT)
    yield from _PLAIN_MODEL_ROWS[2:]
  plain = tuple((fpath, tprefix, kind, BACKBONE) for fpath, tprefix, kind in _PLAIN_BLOCK_ROWS)
  block_rows = {'dapt': _BLOCK_ROWS, 'pointgst': plain + _PGST_BLOCK_ROWS}.get(method, plain)
  for i in range(depth):
    for fpath, tprefix, kind, part in block_rows:
      yield f'blocks_{i}/{fpath}', f'blocks.blocks.{i}.{tprefix}', kind, part
  if method == 'idpt':
    yield from _IDPT_ROWS
  yield from (_TAIL_ROWS if method == 'dapt' else _PLAIN_TAIL_ROWS)


def _entries_for_module(fpath: str, tprefix: str, kind: str, part: str,
                        alias: str | None = None) -> Iterable[Entry]:
  if kind == PARAM:
    yield Entry('params', fpath, tprefix, kind, part)
    return
  for collection, fleaf, tleaf in _LEAVES[kind]:
    if kind == SCALE_SHIFT:
      parent, _, n = tprefix.partition('|')
      key = f'{parent}tfts_{tleaf}_{n}'
    else:
      key = f'{tprefix}.{tleaf}'
    aliases = (f'{alias}.{tleaf}',) if alias else ()
    yield Entry(collection, f'{fpath}/{fleaf}', key, kind, part, aliases)


def all_entries(depth: int, method: str = 'dapt') -> list[Entry]:
  """Every tensor of `method`'s model of `depth` blocks, in the release's module order."""
  return [e for row in _module_rows(depth, method) for e in _entries_for_module(*row)]


def batch_norm_counters(depth: int, method: str = 'dapt') -> list[str]:
  """The release keys of the BatchNorm step counters (`...num_batches_tracked`)."""
  return [f'{row[1]}.{NUM_BATCHES_TRACKED}' for row in _module_rows(depth, method)
          if row[2] == BATCH_NORM]


def _leaf_names(variables: Mapping[str, Mapping]) -> set[str]:
  """'collection/path' of every leaf of {'params', 'batch_stats'}."""
  return {f'{c}/{p}' for c in ('params', 'batch_stats') for p in flatten(variables.get(c, {}))}


def _count(have: set[str], template: str) -> int:
  """How many consecutive indices 0, 1, ... `template.format(i)` finds in `have`."""
  n = 0
  while template.format(n) in have:
    n += 1
  return n


def _exactly(entries: list[Entry], have: set[str], table: str) -> list[Entry]:
  """`entries` if they name exactly the leaves in `have`; else a ValueError naming the first
  leaf `table` does not cover, or the first entry the model lacks."""
  extra = sorted(have - {e.name for e in entries})
  if extra:
    raise ValueError(f'the model has {extra[0]} which {table} does not cover'
                     + (f' (and {len(extra) - 1} more)' if len(extra) > 1 else ''))
  missing = [e.name for e in entries if e.name not in have]
  if missing:
    raise ValueError(f'the model lacks {missing[0]} which {table} expects')
  return entries


def entries_for_variables(variables: Mapping[str, Mapping], method: str = 'dapt') -> list[Entry]:
  """The entries of exactly the leaves of `variables` ({'params', 'batch_stats'}) of a model of
  `method` (config.model.peft).

  Raises:
    ValueError: a leaf the naming table does not cover (a model change not mirrored here), a
      table entry the model lacks, or a method without a release layout.
  """
  have = _leaf_names(variables)
  depth = _count(have, 'params/blocks_{}/norm1/scale')
  return _exactly(all_entries(depth, method), have, 'convert/keymap.py')


_BLOCK_KEY = re.compile(r'^blocks\.blocks\.(\d+)\.')


def block_index(torch_key: str) -> int | None:
  """The block number of a release key, or None outside the blocks."""
  m = _BLOCK_KEY.match(torch_key)
  return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# Point-MAE's pre-training model (dapt_jax.models.mae.MaskedAutoencoder) ⇄ its checkpoint's keys
# (SPEC §6.5). The encoder rows are the classifier's backbone rows under `MAE_encoder.`; the
# decoder side exists only here. Rows are in the checkpoint's order (own parameter first, then
# MAE_encoder, decoder_pos_embed, MAE_decoder, increase_dim; per block norm1, norm2, mlp, attn).

DECODER = 'decoder'      # the autoencoder's decoder side: only in a pre-training checkpoint

_PLAIN_BLOCK_ROWS = (
    ('norm1', 'norm1', LAYER_NORM),
    ('norm2', 'norm2', LAYER_NORM),
    ('mlp/fc1', 'mlp.fc1', DENSE),
    ('mlp/fc2', 'mlp.fc2', DENSE),
    ('attn/qkv', 'attn.qkv', DENSE_NO_BIAS),
    ('attn/proj', 'attn.proj', DENSE),
)


def _mae_module_rows(depth: int, decoder_depth: int) -> Iterable[tuple[str, str, str, str]]:
  yield 'mask_token', 'mask_token', PARAM, DECODER
  for fpath, tprefix, kind, part in _MODEL_ROWS:
    if part == BACKBONE:
      yield fpath, f'MAE_encoder.{tprefix}', kind, part
  for i in range(depth):
    for fpath, tprefix, kind in _PLAIN_BLOCK_ROWS:
      yield f'blocks_{i}/{fpath}', f'MAE_encoder.blocks.blocks.{i}.{tprefix}', kind, BACKBONE
  yield 'norm', 'MAE_encoder.norm', LAYER_NORM, BACKBONE
  yield 'decoder_pos_embed/fc1', 'decoder_pos_embed.0', DENSE, DECODER
  yield 'decoder_pos_embed/fc2', 'decoder_pos_embed.2', DENSE, DECODER
  for i in range(decoder_depth):
    for fpath, tprefix, kind in _PLAIN_BLOCK_ROWS:
      yield f'decoder/blocks_{i}/{fpath}', f'MAE_decoder.blocks.{i}.{tprefix}', kind, DECODER
  yield 'decoder/norm', 'MAE_decoder.norm', LAYER_NORM, DECODER
  yield 'increase_dim', 'increase_dim.0', CONV1D, DECODER


def mae_entries(depth: int, decoder_depth: int) -> list[Entry]:
  """Every tensor of a masked autoencoder, in the Point-MAE checkpoint's order."""
  return [e for row in _mae_module_rows(depth, decoder_depth) for e in _entries_for_module(*row)]


def mae_batch_norm_counters(depth: int, decoder_depth: int) -> list[str]:
  """The checkpoint keys of the patch encoder's BatchNorm step counters."""
  return [f'{tprefix}.{NUM_BATCHES_TRACKED}'
          for _, tprefix, kind, _ in _mae_module_rows(depth, decoder_depth)
          if kind == BATCH_NORM]


def is_mae_variables(variables: Mapping[str, Mapping]) -> bool:
  """Whether a variable tree is a masked autoencoder's (it has the decoder's mask token)."""
  return 'mask_token' in variables.get('params', {})


def mae_entries_for_variables(variables: Mapping[str, Mapping]) -> list[Entry]:
  """The entries of exactly the leaves of a masked autoencoder's `variables`.

  Raises:
    ValueError: a leaf the table does not cover, or a table entry the tree lacks.
  """
  have = _leaf_names(variables)
  depth = _count(have, 'params/blocks_{}/norm1/scale')
  decoder_depth = _count(have, 'params/decoder/blocks_{}/norm1/scale')
  return _exactly(mae_entries(depth, decoder_depth), have, 'the Point-MAE key map')


# ---------------------------------------------------------------------------------------------
# The part-segmentation network (dapt_jax.segmenter.PartSegmenter) ⇄ Point-MAE's
# segmentation checkpoint keys (`model_state_dict`, SPEC §8.5), in that checkpoint's order:
# encoder, pos_embed, blocks, norm, label_conv, propagation_0, convs1..3, bns1..2. With DAPT the
# classifier's DAPT rows (patch and final scale-shifts, class token and position, the DAPT blocks)
# take the place of the plain ones, under the DAPT release's names.

SEG_HEAD = 'seg_head'    # the segmentation head: only in a segmentation checkpoint

_CONV1D_NO_BIAS = 'conv1d_no_bias'  # label_conv.0: Conv1d(bias=False), the weight only
# Point-MAE's plain block, in its registration order (norm1, norm2, mlp, attn; SPEC §6.5).
_SEG_PLAIN_BLOCK_ROWS = (
    ('norm1', 'norm1', LAYER_NORM),
    ('norm2', 'norm2', LAYER_NORM),
    ('mlp/fc1', 'mlp.fc1', DENSE),
    ('mlp/fc2', 'mlp.fc2', DENSE),
    ('attn/qkv', 'attn.qkv', DENSE_NO_BIAS),
    ('attn/proj', 'attn.proj', DENSE),
)


def _seg_module_rows(depth: int, dapt: bool, propagation_layers: int
                     ) -> Iterable[tuple[str, str, str, str]]:
  for row in _MODEL_ROWS:
    if dapt or row[3] == BACKBONE:
      yield row
  for i in range(depth):
    if dapt:
      for fpath, tprefix, kind, part in _BLOCK_ROWS:
        yield f'blocks_{i}/{fpath}', f'blocks.blocks.{i}.{tprefix}', kind, part
    else:
      for fpath, tprefix, kind in _SEG_PLAIN_BLOCK_ROWS:
        yield f'blocks_{i}/{fpath}', f'blocks.blocks.{i}.{tprefix}', kind, BACKBONE
  yield 'norm', 'norm', LAYER_NORM, BACKBONE
  if dapt:
    yield 'norm_tfts', '|2', SCALE_SHIFT, DAPT
  yield 'label_conv/conv', 'label_conv.0', _CONV1D_NO_BIAS, SEG_HEAD
  yield 'label_conv/bn', 'label_conv.1', BATCH_NORM, SEG_HEAD
  for i in range(propagation_layers):
    yield f'propagation_0/conv_{i}', f'propagation_0.mlp_convs.{i}', CONV1D, SEG_HEAD
  for i in range(propagation_layers):
    yield f'propagation_0/bn_{i}', f'propagation_0.mlp_bns.{i}', BATCH_NORM, SEG_HEAD
  for name in ('convs1', 'convs2', 'convs3'):
    yield name, name, CONV1D, SEG_HEAD
  for name in ('bns1', 'bns2'):
    yield name, name, BATCH_NORM, SEG_HEAD


def _seg_entries_for_module(fpath: str, tprefix: str, kind: str, part: str) -> Iterable[Entry]:
  if kind == _CONV1D_NO_BIAS:
    yield from (e for e in _entries_for_module(fpath, tprefix, CONV1D, part)
                if e.torch_key.endswith('.weight'))
  else:
    yield from _entries_for_module(fpath, tprefix, kind, part)


def seg_entries(depth: int, dapt: bool, propagation_layers: int = 2) -> list[Entry]:
  """Every tensor of a segmentation network, in the checkpoint's order."""
  return [e for row in _seg_module_rows(depth, dapt, propagation_layers)
          for e in _seg_entries_for_module(*row)]


def seg_batch_norm_counters(depth: int, dapt: bool, propagation_layers: int = 2) -> list[str]:
  """The checkpoint keys of the BatchNorm step counters (`...num_batches_tracked`)."""
  return [f'{tprefix}.{NUM_BATCHES_TRACKED}'
          for _, tprefix, kind, _ in _seg_module_rows(depth, dapt, propagation_layers)
          if kind == BATCH_NORM]


def is_seg_variables(variables: Mapping[str, Mapping]) -> bool:
  """Whether a variable tree is a segmentation network's (it has the category embedding)."""
  return 'label_conv' in variables.get('params', {})


def seg_entries_for_variables(variables: Mapping[str, Mapping]) -> list[Entry]:
  """The entries of exactly the leaves of a segmentation network's `variables`.

  Raises:
    ValueError: a leaf the table does not cover, or a table entry the tree lacks.
  """
  have = _leaf_names(variables)
  depth = _count(have, 'params/blocks_{}/norm1/scale')
  layers = _count(have, 'params/propagation_0/conv_{}/kernel')
  return _exactly(seg_entries(depth, 'params/patch_tfts/gamma' in have, layers), have,
                  'the segmentation key map')
