"""How one PyTorch module's tensors lie against a Flax module's leaves, and the plain Point-MAE
classifier every release layout builds on (SPEC §3; the naming is drawn in docs/architecture.md).

A key map is a sequence of rows `(Flax module path, PyTorch module prefix, kind, part[, alias])`;
the kind fixes the leaf names and the transposes, the part says which checkpoints provide it.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

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

# Model parts, for deciding what a checkpoint must provide and for reporting what it did not.
BACKBONE = 'backbone'    # the frozen Point-MAE encoder: every pre-training layout has all of it
CLS = 'cls'              # cls_token, cls_pos: some pre-training checkpoints have them
DAPT = 'dapt'            # scale-shifts and adapters: only in a DAPT fine-tuned checkpoint
HEAD = 'head'            # the classification head: only in a fine-tuned checkpoint
PEFT = 'peft'            # another PEFT method's additions (dapt_jax/models/peft): only fine-tuned
SEG_HEAD = 'seg_head'    # the segmentation head: only in a segmentation checkpoint
DECODER = 'decoder'      # the autoencoder's decoder side: only in a pre-training checkpoint
PARTS = (BACKBONE, CLS, DAPT, HEAD, PEFT, SEG_HEAD, DECODER)

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

# BatchNorm's step counter: no Flax counterpart; dropped going in, written as 0 going out.
NUM_BATCHES_TRACKED = 'num_batches_tracked'
COUNTER_REASON = 'BatchNorm step counter (no Flax counterpart)'


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor: its Flax variable (collection + `/`-joined path) and its release key."""
  collection: str   # 'params' or 'batch_stats'
  path: str         # e.g. 'blocks_0/attn/qkv/kernel'
  torch_key: str    # e.g. 'blocks.blocks.0.attn.qkv.weight'
  kind: str         # how the array is laid out on each side (see the kinds above)
  part: str         # one of PARTS
  aliases: tuple[str, ...] = ()  # other release keys holding the same tensor (IDPT's BatchNorms)

  @property
  def name(self) -> str:
    """`collection/path`, the name reports use."""
    return f'{self.collection}/{self.path}'

  @property
  def counters(self) -> tuple[str, ...]:
    """The BatchNorm step counters written beside this tensor (its running_var's), if any."""
    if self.kind != BATCH_NORM or not self.path.endswith('/var'):
      return ()
    return tuple(k[:-len('running_var')] + NUM_BATCHES_TRACKED
                 for k in (self.torch_key,) + self.aliases)

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


def entries(rows: Iterable[tuple]) -> list[Entry]:
  """Every tensor of the modules `rows` name, in their order."""
  out = []
  for fpath, tprefix, kind, part, *alias in rows:
    if kind == PARAM:
      out.append(Entry('params', fpath, tprefix, kind, part))
      continue
    for collection, fleaf, tleaf in _LEAVES[kind]:
      if kind == SCALE_SHIFT:
        parent, _, n = tprefix.partition('|')
        key = f'{parent}tfts_{tleaf}_{n}'
      else:
        key = f'{tprefix}.{tleaf}'
      aliases = tuple(f'{a}.{tleaf}' for a in alias)
      out.append(Entry(collection, f'{fpath}/{fleaf}', key, kind, part, aliases))
  return out


# ---------------------------------------------------------------------------------------------
# The plain Point-MAE classifier, in its state-dict order: cls_token, cls_pos, encoder, pos_embed,
# blocks (each norm1, norm2, mlp, attn), norm, cls_head_finetune (SPEC §6.5). For SCALE_SHIFT the
# PyTorch column is the parent prefix plus the pair's number, joined as `{prefix}tfts_{g|b}_{n}`.

CLS_ROWS = (
    ('cls_token', 'cls_token', PARAM, CLS),
    ('cls_pos', 'cls_pos', PARAM, CLS),
)
ENCODER_ROWS = (  # the patch encoder (mini-PointNet)
    ('encoder/fc1', 'encoder.first_conv.0', CONV1D, BACKBONE),
    ('encoder/bn1', 'encoder.first_conv.1', BATCH_NORM, BACKBONE),
    ('encoder/fc2', 'encoder.first_conv.3', CONV1D, BACKBONE),
    ('encoder/fc3', 'encoder.second_conv.0', CONV1D, BACKBONE),
    ('encoder/bn2', 'encoder.second_conv.1', BATCH_NORM, BACKBONE),
    ('encoder/fc4', 'encoder.second_conv.3', CONV1D, BACKBONE),
)
POS_EMBED_ROWS = (
    ('pos_embed/fc1', 'pos_embed.0', DENSE, BACKBONE),
    ('pos_embed/fc2', 'pos_embed.2', DENSE, BACKBONE),
)
PLAIN_BLOCK_ROWS = (  # under `blocks_{i}` ⇄ `blocks.blocks.{i}.`
    ('norm1', 'norm1', LAYER_NORM, BACKBONE),
    ('norm2', 'norm2', LAYER_NORM, BACKBONE),
    ('mlp/fc1', 'mlp.fc1', DENSE, BACKBONE),
    ('mlp/fc2', 'mlp.fc2', DENSE, BACKBONE),
    ('attn/qkv', 'attn.qkv', DENSE_NO_BIAS, BACKBONE),
    ('attn/proj', 'attn.proj', DENSE, BACKBONE),
)
NORM_ROW = ('norm', 'norm', LAYER_NORM, BACKBONE)
HEAD_ROWS = (
    ('head/fc1', 'cls_head_finetune.0', DENSE, HEAD),
    ('head/bn1', 'cls_head_finetune.1', BATCH_NORM, HEAD),
    ('head/fc2', 'cls_head_finetune.4', DENSE, HEAD),
    ('head/bn2', 'cls_head_finetune.5', BATCH_NORM, HEAD),
    ('head/fc3', 'cls_head_finetune.8', DENSE, HEAD),
)


def block_rows(depth: int, rows: Iterable[tuple], flax: str = 'blocks_{}/',
               torch: str = 'blocks.blocks.{}.') -> Iterable[tuple]:
  """`rows` of one block, for each of `depth` blocks, under the blocks' prefixes."""
  rows = tuple(rows)
  for i in range(depth):
    for fpath, tprefix, *rest in rows:
      yield (flax.format(i) + fpath, torch.format(i) + tprefix, *rest)


def plain_rows(depth: int, before: Iterable[tuple] = (), block: Iterable[tuple] = (),
               after: Iterable[tuple] = ()) -> Iterable[tuple]:
  """The plain Point-MAE classifier with a method's additions: `before` the encoder (after the
  class token), `block` at the end of every block, `after` the blocks (before the final norm)."""
  yield from CLS_ROWS
  yield from before
  yield from ENCODER_ROWS + POS_EMBED_ROWS
  yield from block_rows(depth, PLAIN_BLOCK_ROWS + tuple(block))
  yield from after
  yield NORM_ROW
  yield from HEAD_ROWS
