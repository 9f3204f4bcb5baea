"""LoRA on the attention projections (a project design; no point-cloud release has one).

Each block's fused qkv projection (C→3C, no bias) and output projection (C→C) get a low-rank
update, as PEFT libraries apply LoRA to a ViT's `qkv` and `proj`: y = x W (+ b) +
(alpha / rank) · (x A) B with A [in, rank] and B [rank, out]. A starts Kaiming-uniform
(PyTorch's default Linear init, U(±1/√in)), B at zero, so training starts from the backbone's
function; no LoRA dropout. The backbone weights keep their paths (`attn/qkv/kernel`), the update
sits beside them (`attn/qkv/lora_a`, `attn/qkv/lora_b`). Trainable: the A/B pairs, the class
token and position, and the head.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers
from dapt_jax.models import transformer

Array = jax.Array


class LoRADense(nn.Module):
  """A Dense layer (frozen in practice) plus a trainable low-rank update."""
  features: int
  rank: int
  alpha: float
  use_bias: bool = True
  kernel_init: Callable = layers.backbone_kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    fan_in = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (fan_in, self.features))
    lora_a = self.param('lora_a', layers.torch_linear_kernel_init, (fan_in, self.rank))
    lora_b = self.param('lora_b', nn.initializers.zeros, (self.rank, self.features))
    x = x.astype(self.dtype)
    y = x @ kernel.astype(self.dtype)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(self.dtype)
    update = (x @ lora_a.astype(self.dtype)) @ lora_b.astype(self.dtype)
    return y + (self.alpha / self.rank) * update


def lora_dense(rank: int, alpha: float) -> Callable[..., nn.Module]:
  """A `dense` factory for transformer.Attention that makes LoRADense layers."""

  def make(features, name, dtype, use_bias=True, kernel_init=layers.backbone_kernel_init):
    return LoRADense(features, rank, alpha, use_bias, kernel_init, dtype, name=name)

  return make


class LoRABlock(nn.Module):
  """Point-MAE's block whose attention projections carry LoRA updates. [B, T, C] → same."""
  num_heads: int
  mlp_ratio: float
  rank: int = 8
  alpha: float = 8.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    c = x.shape[-1]
    drop_path = layers.DropPath(self.drop_path_rate)
    attn = transformer.Attention(self.num_heads, self.dtype, scale_shift=False,
                                 dense=_factory(self.rank, self.alpha), name='attn')
    x = x + drop_path(attn(layers.layer_norm('norm1', self.dtype)(x)), not train)
    m = transformer.Mlp(int(c * self.mlp_ratio), self.dtype, scale_shift=False,
                        name='mlp')(layers.layer_norm('norm2', self.dtype)(x))
    return x + drop_path(m, not train)


@functools.lru_cache(maxsize=None)
def _factory(rank: int, alpha: float) -> Callable[..., nn.Module]:
  # One factory object per (rank, alpha): module attributes compare equal across calls.
  return lora_dense(rank, alpha)
