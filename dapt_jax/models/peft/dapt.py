"""DAPT (CVPR 2024, SPEC §2): scale-shift pairs, a Dynamic Adapter beside every MLP, and one
internal prompt per block made from the adapter's output.

Per block (input [B, T, C] = [cls, prompts so far..., patches]):
  h = SS(norm1(x)); x = x + DropPath(Attn(h))        (scale-shifts after qkv and proj too)
  y = SS(norm2(x)); a = Adapter(y); x = x + DropPath(Mlp(y) + a)   (and after fc1, fc2)
  prompt = SS(mean over tokens of GELU(a)), inserted at index 1 → output [B, T + 1, C]
The Dynamic Adapter: z = LN(y); s = ReLU(Linear C→1 (z)); d = Dropout(GELU(Linear C→r (z)));
a = Linear r→C (d) · s, zero at initialisation (up projection zero). Also a scale-shift on the
patch tokens and after the final norm; the position is added once, before block 0
(`pos_every_block`: before every block, the prompts getting none).

Trainable (the release's names containing `cls`, `tfts` or `Adapter`): the class token and its
position, the head, every scale-shift, every adapter.

Release (github.com/LMD0311/DAPT): scale-shift pairs `tfts_{gamma,beta}_n` on the patch encoder,
every sub-layer and the final norm, `Adapter_MLP` in every block; its blocks register attn before
mlp (the naming is drawn in docs/architecture.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from dapt_jax.models import layers
from dapt_jax.models import release_keys as rk
from dapt_jax.models import transformer
from dapt_jax.models.peft import base

Array = jax.Array

HEAD_TOKENS = ('cls', 'prompt', 'patch')


class DynamicAdapter(nn.Module):
  """y [B, T, C] → a [B, T, C] (see the module docstring)."""
  rank: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, y: Array, train: bool) -> Array:
    c = y.shape[-1]
    z = layers.layer_norm('norm', self.dtype)(y)
    s = nn.Dense(1, kernel_init=layers.torch_linear_kernel_init, dtype=self.dtype,
                 name='scale')(z)
    s = nn.relu(checkpoint_name(s, 'adapter_scale'))
    d = nn.Dense(self.rank, kernel_init=layers.torch_linear_kernel_init, dtype=self.dtype,
                 name='down_proj')(z)
    d = checkpoint_name(d, 'adapter_down')
    d = nn.gelu(d, approximate=False)
    d = nn.Dropout(self.dropout_rate, deterministic=not train)(d)
    a = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype, name='up_proj')(d)
    return checkpoint_name(a, 'adapter_up') * s


@dataclasses.dataclass(frozen=True)
class Additions(transformer.Additions):
  """DAPT's block: scale-shifts, the adapter beside the MLP, the prompt after the block."""
  rank: int = 64
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  scale_shift: bool = True
  saved_names: tuple[str, ...] = ('adapter_scale', 'adapter_down', 'adapter_up')

  def mlp_output(self, y, m, carry, train):
    a = DynamicAdapter(self.rank, self.dropout_rate, self.dtype, name='adapter')(y, train)
    carry['adapter'] = a
    return m + a

  def after_block(self, x, carry, train):
    # The internal prompt: one token summarising the adapter's activity over all tokens.
    p = jnp.mean(nn.gelu(carry['adapter'], approximate=False), axis=1, keepdims=True)
    p = layers.ScaleShift(name='prompt_tfts')(p)
    return jnp.concatenate([x[:, :1], p.astype(x.dtype), x[:, 1:]], axis=1)


# The release's keys of one block, in its order.
_RELEASE_BLOCK_ROWS = (
    ('norm1', 'norm1', rk.LAYER_NORM, rk.BACKBONE),
    ('norm1_tfts', '|1', rk.SCALE_SHIFT, rk.DAPT),
    ('attn/qkv', 'attn.qkv', rk.DENSE_NO_BIAS, rk.BACKBONE),
    ('attn/qkv_tfts', 'attn.|1', rk.SCALE_SHIFT, rk.DAPT),
    ('attn/proj', 'attn.proj', rk.DENSE, rk.BACKBONE),
    ('attn/proj_tfts', 'attn.|2', rk.SCALE_SHIFT, rk.DAPT),
    ('norm2', 'norm2', rk.LAYER_NORM, rk.BACKBONE),
    ('norm2_tfts', '|2', rk.SCALE_SHIFT, rk.DAPT),
    ('mlp/fc1', 'mlp.fc1', rk.DENSE, rk.BACKBONE),
    ('mlp/fc1_tfts', 'mlp.|1', rk.SCALE_SHIFT, rk.DAPT),
    ('mlp/fc2', 'mlp.fc2', rk.DENSE, rk.BACKBONE),
    ('mlp/fc2_tfts', 'mlp.|2', rk.SCALE_SHIFT, rk.DAPT),
    ('adapter/norm', 'Adapter_MLP.adapter_layer_norm_before', rk.LAYER_NORM, rk.DAPT),
    ('adapter/scale', 'Adapter_MLP.scale', rk.DENSE, rk.DAPT),
    ('adapter/down_proj', 'Adapter_MLP.down_proj', rk.DENSE, rk.DAPT),
    ('adapter/up_proj', 'Adapter_MLP.up_proj', rk.DENSE, rk.DAPT),
    ('prompt_tfts', '|3', rk.SCALE_SHIFT, rk.DAPT),
)


def _release_rows(depth: int) -> Iterable[tuple]:
  yield from rk.ENCODER_ROWS
  yield ('patch_tfts', '|1', rk.SCALE_SHIFT, rk.DAPT)
  yield from rk.CLS_ROWS + rk.POS_EMBED_ROWS
  yield from rk.block_rows(depth, _RELEASE_BLOCK_ROWS)
  yield rk.NORM_ROW
  yield ('norm_tfts', '|2', rk.SCALE_SHIFT, rk.DAPT)
  yield from rk.HEAD_ROWS


def _infer(tensors: Mapping[str, Any]) -> dict[str, Any]:
  down = tensors.get('blocks.blocks.0.Adapter_MLP.down_proj.weight')
  return {} if down is None else {'rank': int(down.shape[0])}


def _infer_head(width: int, c: int) -> dict[str, Any]:
  """DAPT's head reads any of the class token, the prompt and the patch tokens: only all three
  (3 C) are told apart by width."""
  n, rem = divmod(width, c)
  if rem or not 1 <= n <= 3:
    raise rk.ReleaseError(f'the head input width {width} is not 1-3 × trans_dim {c}; pass '
                          '--config')
  if n < 3:
    choices = {1: 'cls, prompt or patch', 2: 'cls+prompt, cls+patch or prompt+patch'}[n]
    raise rk.ReleaseError(
        f'the head input width {width} = {n} × trans_dim could be {choices}; pass --config to '
        'say which (e.g. configs/scanobjectnn.py:objonly is cls+prompt, configs/modelnet40.py is '
        'cls+patch)')
  return {'head_tokens': list(HEAD_TOKENS)}


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  """DAPT; `rank` r of the adapters, their dropout, and where the position is added."""
  NAME = 'dapt'
  OPTIONS = {'rank': 64, 'drop_adapter_rate': 0.0, 'pos_every_block': False}
  SEGMENTER_CLASS_TOKEN = True  # the prompt goes in after it, as in classification
  RELEASE = rk.Release(
      'DAPT', _release_rows, r'(^|\.)tfts_(gamma|beta)_\d+$|(^|\.)Adapter_MLP\.',
      'DAPT fine-tuned model (release key layout)', _infer, _infer_head,
      segmentation='DAPT part segmentation (dapt-jax export)')

  rank: int = 64
  drop_adapter_rate: float = 0.0
  pos_every_block: bool = False

  def check(self, backbone):
    base.positive_int('rank', self.rank)
    if not 0.0 <= float(self.drop_adapter_rate) < 1.0:
      raise base.ModelConfigError(
          f'model.drop_adapter_rate={self.drop_adapter_rate!r}: must be in [0, 1)')

  def patch_tokens(self, tokens):
    return layers.ScaleShift(name='patch_tfts')(tokens)

  def block_additions(self, index, enc):
    return Additions(self.rank, float(self.drop_adapter_rate), enc.dtype)

  def block_input(self, index, x, pos, state, enc, train):
    if self.pos_every_block:  # [lead, the prompts so far, patches]: the prompts have no position
      zeros = jnp.zeros((x.shape[0], index, x.shape[-1]), pos.dtype)
      return x + jnp.concatenate([pos[:, :enc.lead], zeros, pos[:, enc.lead:]], 1), pos
    return (x + pos if index == 0 else x), pos

  def final_norm(self):
    return layers.ScaleShift(name='norm_tfts')

  def head_tokens(self, configured: Sequence[str]) -> tuple[str, ...]:
    return tuple(configured)

  def own_rules(self):
    return ((r'tfts/', base.TRAINABLE), (r'/adapter/', base.TRAINABLE))
