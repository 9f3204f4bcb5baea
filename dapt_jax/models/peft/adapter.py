"""Bottleneck adapters (Houlsby et al. 2019; a project design: no point-cloud release has one).

Two adapters per block, in series with each sub-layer's output before its residual add:
x = x + DropPath(A1(Attn(norm1(x)))); x = x + DropPath(A2(Mlp(norm2(x)))), where
A(h) = h + up(GELU(down(h))), down C→d and up d→C with biases. down starts as PyTorch's default
Linear (U(±1/√C)), up and both biases at zero, so each adapter starts as the identity and
training starts from the backbone's function. Trainable: the adapters, the class token and
position, and the head (the backbone's LayerNorms stay frozen, unlike Houlsby's original).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers
from dapt_jax.models import transformer

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


class AdapterBlock(nn.Module):
  """Point-MAE's block with a bottleneck adapter after attention and after the MLP."""
  num_heads: int
  mlp_ratio: float
  bottleneck: int = 32
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    c = x.shape[-1]
    drop_path = layers.DropPath(self.drop_path_rate)
    h = transformer.Attention(self.num_heads, self.dtype, scale_shift=False,
                              name='attn')(layers.layer_norm('norm1', self.dtype)(x))
    x = x + drop_path(Bottleneck(self.bottleneck, self.dtype, name='adapter1')(h), not train)
    m = transformer.Mlp(int(c * self.mlp_ratio), self.dtype, scale_shift=False,
                        name='mlp')(layers.layer_norm('norm2', self.dtype)(x))
    return x + drop_path(Bottleneck(self.bottleneck, self.dtype, name='adapter2')(m), not train)
