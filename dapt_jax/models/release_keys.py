"""How the PyTorch release checkpoints name a model's parameters, as data (SPEC §3, §6.5): the
vocabulary each PEFT method's `RELEASE` (dapt_jax/models/peft/<method>.py) is written in, and the
plain Point-MAE classifier every release builds on. The naming is drawn in docs/architecture.md;
`python -m convert` (convert/) reads the releases through the method registry and does the
reading, writing and transposing.

A key map is a sequence of rows `(Flax module path, PyTorch module prefix, kind, part[, alias])`;
the kind fixes the leaf names and the transposes, the part says which checkpoints provide it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

from dapt_jax import errors

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


class ReleaseError(errors.UserError, ValueError):
  """A release checkpoint's tensors that do not determine the model; the message is one line."""


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


# ---------------------------------------------------------------------------------------------
# A method's release


@dataclasses.dataclass(frozen=True)
class Release:
  """One PEFT method's release checkpoint (a method's `RELEASE`)."""
  name: str                                 # the method as its paper names it, for messages
  rows: Callable[[int], Iterable[tuple]]    # depth → its classifier's key map rows, in order
  own_keys: str | None = None   # regex of keys only its fine-tuned checkpoints have (release key)
  description: str = ''         # its fine-tuned checkpoint's layout, for people
  # Model fields its tensors (release keys → PyTorch-layout arrays) determine, beyond the
  # backbone's width and depth.
  infer: Callable[[Mapping[str, Any]], dict] = lambda tensors: {}
  # (head input width, trans_dim) → the head fields that width determines, or a ReleaseError.
  infer_head: Callable[[int, int], dict] | None = None
  # Its part-segmentation network as this project exports it (its release's names for its own
  # parts, Point-MAE's for the rest), for people; '' where such files are not told apart.
  segmentation: str = ''


# The plain Point-MAE classifier's release: the methods that add nothing have it, and it is where
# a backbone's keys come from for the methods without a release and for the other families.
PLAIN = Release('Point-MAE', plain_rows)


def fixed_head(pieces: int, method: str) -> Callable[[int, int], dict]:
  """`infer_head` of a head whose input is `pieces` × trans_dim by the method's design: only
  checked."""
  def check(width: int, c: int) -> dict[str, Any]:
    if width != pieces * c:
      raise ReleaseError(f'the head input width {width} is not {pieces} × trans_dim {c}, as a '
                         f'{method} model has')
    return {}
  return check
