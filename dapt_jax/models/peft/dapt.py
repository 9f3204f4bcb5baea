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
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from dapt_jax.models import layers
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


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  """DAPT; `rank` r of the adapters, their dropout, and where the position is added."""
  NAME = 'dapt'
  OPTIONS = {'rank': 64, 'drop_adapter_rate': 0.0, 'pos_every_block': False}
  SEGMENTER_CLASS_TOKEN = True  # the prompt goes in after it, as in classification

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
