"""The PEFT methods with a public release checkpoint, one entry each, keyed by config.model.peft.

Everything method-specific in convert/ is here: a release's keys (as key map rows), how its
fine-tuned checkpoints are recognised, and what their tensors say about the model. LoRA and the
bottleneck adapter are the project's own designs and have none. The IDPT and PointGST releases
are Point-MAE forks, so their keys are the plain Point-MAE classifier's plus their additions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from convert import kinds as k
from convert.errors import ConvertError


def _fixed_head(pieces: int, method: str) -> Callable[[int, int], dict]:
  """A head whose input is `pieces` × trans_dim by the method's design: only checked."""
  def check(width: int, c: int) -> dict[str, Any]:
    if width != pieces * c:
      raise ConvertError(f'the head input width {width} is not {pieces} × trans_dim {c}, as a '
                         f'{method} model has')
    return {}
  return check


@dataclasses.dataclass(frozen=True)
class Release:
  """One method's release checkpoint."""
  name: str                                 # the method as its paper names it, for messages
  rows: Callable[[int], Iterable[tuple]]    # depth → its classifier's key map rows, in order
  own_keys: str | None = None   # regex of keys only its fine-tuned checkpoints have (release key)
  description: str = ''         # its fine-tuned checkpoint's layout, for people
  # Model fields its tensors (release keys) determine, beyond the backbone's width and depth.
  infer: Callable[[Mapping[str, np.ndarray]], dict] = lambda tensors: {}
  # (head input width, trans_dim) → the head fields that width determines, or a ConvertError.
  infer_head: Callable[[int, int], dict] | None = None


# DAPT (github.com/LMD0311/DAPT): scale-shift pairs on the patch encoder, every sub-layer and the
# final norm, and an adapter in every block; its blocks register attn before mlp.
_DAPT_OWN = r'(^|\.)tfts_(gamma|beta)_\d+$|(^|\.)Adapter_MLP\.'
_DAPT_BLOCK_ROWS = (
    ('norm1', 'norm1', k.LAYER_NORM, k.BACKBONE),
    ('norm1_tfts', '|1', k.SCALE_SHIFT, k.DAPT),
    ('attn/qkv', 'attn.qkv', k.DENSE_NO_BIAS, k.BACKBONE),
    ('attn/qkv_tfts', 'attn.|1', k.SCALE_SHIFT, k.DAPT),
    ('attn/proj', 'attn.proj', k.DENSE, k.BACKBONE),
    ('attn/proj_tfts', 'attn.|2', k.SCALE_SHIFT, k.DAPT),
    ('norm2', 'norm2', k.LAYER_NORM, k.BACKBONE),
    ('norm2_tfts', '|2', k.SCALE_SHIFT, k.DAPT),
    ('mlp/fc1', 'mlp.fc1', k.DENSE, k.BACKBONE),
    ('mlp/fc1_tfts', 'mlp.|1', k.SCALE_SHIFT, k.DAPT),
    ('mlp/fc2', 'mlp.fc2', k.DENSE, k.BACKBONE),
    ('mlp/fc2_tfts', 'mlp.|2', k.SCALE_SHIFT, k.DAPT),
    ('adapter/norm', 'Adapter_MLP.adapter_layer_norm_before', k.LAYER_NORM, k.DAPT),
    ('adapter/scale', 'Adapter_MLP.scale', k.DENSE, k.DAPT),
    ('adapter/down_proj', 'Adapter_MLP.down_proj', k.DENSE, k.DAPT),
    ('adapter/up_proj', 'Adapter_MLP.up_proj', k.DENSE, k.DAPT),
    ('prompt_tfts', '|3', k.SCALE_SHIFT, k.DAPT),
)


def _dapt_rows(depth: int) -> Iterable[tuple]:
  yield from k.ENCODER_ROWS
  yield ('patch_tfts', '|1', k.SCALE_SHIFT, k.DAPT)
  yield from k.CLS_ROWS + k.POS_EMBED_ROWS
  yield from k.block_rows(depth, _DAPT_BLOCK_ROWS)
  yield k.NORM_ROW
  yield ('norm_tfts', '|2', k.SCALE_SHIFT, k.DAPT)
  yield from k.HEAD_ROWS


def _dapt_infer(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  down = tensors.get('blocks.blocks.0.Adapter_MLP.down_proj.weight')
  return {} if down is None else {'rank': int(down.shape[0])}


def _dapt_head(width: int, c: int) -> dict[str, Any]:
  """DAPT's head reads any of the class token, the prompt and the patch tokens: only all three
  (3 C) are told apart by width."""
  n, rem = divmod(width, c)
  if rem or not 1 <= n <= 3:
    raise ConvertError(f'the head input width {width} is not 1-3 × trans_dim {c}; pass --config')
  if n < 3:
    choices = {1: 'cls, prompt or patch', 2: 'cls+prompt, cls+patch or prompt+patch'}[n]
    raise ConvertError(
        f'the head input width {width} = {n} × trans_dim could be {choices}; pass --config to '
        'say which (e.g. configs/scanobjectnn.py:objonly is cls+prompt, configs/modelnet40.py is '
        'cls+patch)')
  return {'head_tokens': ['cls', 'prompt', 'patch']}


# VPT-deep (as released with IDPT): a prompt and its position per block, before the encoder.
def _vpt_rows(depth: int) -> Iterable[tuple]:
  before = [(f'vpt/prompt_{i}', f'cls_prompt_list.{i}', k.PARAM, k.PEFT) for i in range(depth)]
  before += [(f'vpt/prompt_pos_{i}', f'cls_prompt_pos_list.{i}', k.PARAM, k.PEFT)
             for i in range(depth)]
  return k.plain_rows(depth, before=before)


def _vpt_infer(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  prompts = tensors.get('cls_prompt_list.0')
  return {'vpt_prompts': int(prompts.shape[1])} if prompts is not None and prompts.ndim == 3 else {}


# IDPT's DGCNN prompt module (IDPT:models/dgcnn.py DGCNNView, under the encoder's `blocks.cls`).
# Each BatchNorm is registered twice in the release (as bn<n> and inside conv<n>), so its state
# dict holds the same tensors under both names: the second is an alias.
_IDPT_ROWS = (
    ('idpt/bn1', 'blocks.cls.bn1', k.BATCH_NORM, k.PEFT, 'blocks.cls.conv1.1'),
    ('idpt/bn2', 'blocks.cls.bn2', k.BATCH_NORM, k.PEFT, 'blocks.cls.conv2.1'),
    ('idpt/bn3', 'blocks.cls.bn3', k.BATCH_NORM, k.PEFT, 'blocks.cls.conv3.1'),
    ('idpt/bn5', 'blocks.cls.bn5', k.BATCH_NORM, k.PEFT, 'blocks.cls.conv5.1'),
    ('idpt/conv1', 'blocks.cls.conv1.0', k.CONV2D_NO_BIAS, k.PEFT),
    ('idpt/conv2', 'blocks.cls.conv2.0', k.CONV2D_NO_BIAS, k.PEFT),
    ('idpt/conv3', 'blocks.cls.conv3.0', k.CONV2D_NO_BIAS, k.PEFT),
    ('idpt/conv5', 'blocks.cls.conv5.0', k.CONV1D_NO_BIAS, k.PEFT),
)

# PointGST's PCSA at the end of every block (GST:models/PGST.py).
_PGST_BLOCK_ROWS = (
    ('pcsa/norm1', 'gft_adapter.norm_ly1', k.LAYER_NORM, k.PEFT),
    ('pcsa/norm2', 'gft_adapter.norm_ly2', k.LAYER_NORM, k.PEFT),
    ('pcsa/down', 'gft_adapter.down', k.DENSE, k.PEFT),
    ('pcsa/up', 'gft_adapter.up', k.DENSE, k.PEFT),
    ('pcsa/adapt1', 'gft_adapter.adapt1', k.DENSE, k.PEFT),
)


def _pgst_infer(tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
  down = tensors.get('blocks.blocks.0.gft_adapter.down.weight')
  return {} if down is None else {'pgst_rank': int(down.shape[0])}


# The method of a classification config without model.peft.
DEFAULT = 'dapt'
# The plain Point-MAE classifier's release: where a backbone's keys come from when the method has
# no release (LoRA, the adapter), and the layout the other families' backbones share.
PLAIN = 'full'

RELEASES = {
    'dapt': Release('DAPT', _dapt_rows, _DAPT_OWN, 'DAPT fine-tuned model (release key layout)',
                    _dapt_infer, _dapt_head),
    'full': Release('Point-MAE', k.plain_rows),
    'linear': Release('Point-MAE', k.plain_rows),
    'vpt_deep': Release('VPT-deep', _vpt_rows, r'^cls_prompt(_pos)?_list\.',
                        'VPT-deep fine-tuned model (IDPT release key layout, cls_prompt_list.*)',
                        _vpt_infer, _fixed_head(2, 'vpt_deep')),
    'idpt': Release('IDPT', lambda depth: k.plain_rows(
                        depth, before=[('idpt/prompt_pos', 'prompt_pos', k.PARAM, k.PEFT)],
                        after=_IDPT_ROWS),
                    r'^blocks\.cls\.|^prompt_pos$',
                    'IDPT fine-tuned model (release key layout, blocks.cls.*)',
                    infer_head=_fixed_head(3, 'idpt')),
    'pointgst': Release('PointGST', lambda depth: k.plain_rows(depth, block=_PGST_BLOCK_ROWS),
                        r'\.gft_adapter\.',
                        'PointGST fine-tuned model (release key layout, *.gft_adapter.*)',
                        _pgst_infer, _fixed_head(2, 'pointgst')),
}


def release_rows(method: str, depth: int) -> Iterable[tuple]:
  """The key map rows of `method`'s classifier of `depth` blocks, in its release's order.

  Raises:
    ValueError: `method` has no release layout.
  """
  if method not in RELEASES:
    raise ValueError(f'model.peft={method!r} has no release checkpoint layout (the project\'s '
                     f'own design); convertible: {", ".join(RELEASES)}')
  return RELEASES[method].rows(depth)
