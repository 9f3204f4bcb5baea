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

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers
from dapt_jax.models import transformer
from dapt_jax.models.peft import base

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


@functools.lru_cache(maxsize=None)
def _factory(rank: int, alpha: float) -> Callable[..., nn.Module]:
  # One factory object per (rank, alpha): module attributes compare equal across calls.
  return lora_dense(rank, alpha)


@dataclasses.dataclass(frozen=True)
class Additions(transformer.Additions):
  """Attention's qkv and proj made by `lora_dense`."""
  dense: Callable[..., nn.Module] = None


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  """LoRA of rank `lora_rank`, scaled by `lora_alpha / lora_rank`."""
  NAME = 'lora'
  OPTIONS = {'lora_rank': 8, 'lora_alpha': 8.0}

  lora_rank: int = 8
  lora_alpha: float = 8.0

  def check(self, backbone):
    base.positive_int('lora_rank', self.lora_rank)
    if not float(self.lora_alpha) > 0.0:
      raise base.ModelConfigError(f'model.lora_alpha={self.lora_alpha!r}: must be positive')

  def block_additions(self, index, enc):
    return Additions(dense=_factory(self.lora_rank, float(self.lora_alpha)))

  def own_rules(self):
    return ((r'/lora_[ab]$', base.TRAINABLE),)
