"""Bottleneck adapters (Houlsby et al. 2019; a project design: no point-cloud release has one).

Two adapters per block, in series with each sub-layer's output before its residual add:
x = x + DropPath(A1(Attn(norm1(x)))); x = x + DropPath(A2(Mlp(norm2(x)))), where
A(h) = h + up(GELU(down(h))), down C→d and up d→C with biases. down starts as PyTorch's default
Linear (U(±1/√C)), up and both biases at zero, so each adapter starts as the identity and
training starts from the backbone's function. Trainable: the adapters, the class token and
position, and the head (the backbone's LayerNorms stay frozen, unlike Houlsby's original).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers
from dapt_jax.models import transformer
from dapt_jax.models.peft import base

Array = jax.Array


class Bottleneck(nn.Module):
  """h + up(GELU(down(h))), bottleneck width `dim`; the identity at initialisation."""
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array) -> Array:
    c = h.shape[-1]
    z = nn.Dense(self.dim, kernel_init=layers.torch_linear_kernel_init, dtype=self.dtype,
                 name='down')(h)
    z = nn.gelu(z, approximate=False)
    return h + nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype, name='up')(z)


@dataclasses.dataclass(frozen=True)
class Additions(transformer.Additions):
  """A bottleneck adapter on the attention output and on the MLP output."""
  dim: int = 32
  dtype: Any = jnp.float32

  def after_attention(self, h, train):
    return Bottleneck(self.dim, self.dtype, name='adapter1')(h)

  def mlp_output(self, y, m, carry, train):
    return Bottleneck(self.dim, self.dtype, name='adapter2')(m)


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  """Two adapters per block of bottleneck width `adapter_dim`."""
  NAME = 'adapter'
  OPTIONS = {'adapter_dim': 32}

  adapter_dim: int = 32

  def check(self, backbone):
    base.positive_int('adapter_dim', self.adapter_dim)

  def block_additions(self, index, enc):
    return Additions(self.adapter_dim, enc.dtype)

  def own_rules(self):
    return ((r'/adapter[12]/', base.TRAINABLE),)
