"""Transformer blocks with DAPT's additions: scale-shift pairs, the Dynamic Adapter and the
internal prompt (SPEC §2)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from dapt_jax import layers

Array = jax.Array

# The block values a DAPT block keeps for its backward pass under the 'matmuls' remat policy
# (model.remat_policy): the outputs of its weight matmuls. Everything else in the block
# (LayerNorms, scale-shifts, GELU, softmax, the attention products) is elementwise or cheap and is
# recomputed from these and the block's input. Outside `jax.checkpoint` the names do nothing.
SAVED_NAMES = ('qkv', 'proj', 'fc1', 'fc2', 'adapter_scale', 'adapter_down', 'adapter_up')


def _dense(features: int, name: str, dtype: Any, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=layers.backbone_kernel_init,
                  dtype=dtype, name=name)


class Attention(nn.Module):
  """Multi-head self-attention; qkv without bias; scale-shifts after qkv and after proj."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, T, C] → [B, T, C]."""
    b, t, c = x.shape
    h = self.num_heads
    qkv = checkpoint_name(_dense(3 * c, 'qkv', self.dtype, use_bias=False)(x), 'qkv')
    qkv = layers.ScaleShift(name='qkv_tfts')(qkv)
    qkv = qkv.reshape(b, t, 3, h, c // h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]          # [B, T, H, D]
    scale = (c // h) ** -0.5
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * scale
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, t, c)
    out = checkpoint_name(_dense(c, 'proj', self.dtype)(out), 'proj')
    return layers.ScaleShift(name='proj_tfts')(out)


class Mlp(nn.Module):
  """fc1 → scale-shift → GELU → fc2 → scale-shift."""
  hidden_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    h = checkpoint_name(_dense(self.hidden_dim, 'fc1', self.dtype)(x), 'fc1')
    h = layers.ScaleShift(name='fc1_tfts')(h)
    h = nn.gelu(h, approximate=False)
    h = checkpoint_name(_dense(c, 'fc2', self.dtype)(h), 'fc2')
    return layers.ScaleShift(name='fc2_tfts')(h)


class DynamicAdapter(nn.Module):
  """The Dynamic Adapter: a bottleneck MLP whose output is scaled per token.

  z = LN(y); s = ReLU(Linear C→1 (z)); d = Dropout(GELU(Linear C→r (z))); a = Linear r→C (d) * s.
  Starts as the zero function (up projection zero).
  """
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


class DAPTBlock(nn.Module):
  """A pre-norm transformer block with the Dynamic Adapter and the internal prompt.

  Input [B, T, C] holding [cls, prompts..., patches]; output [B, T + 1, C] with this block's
  prompt inserted at position 1.
  """
  num_heads: int
  mlp_ratio: float
  rank: int
  drop_path_rate: float = 0.0
  drop_adapter_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    c = x.shape[-1]
    drop_path = layers.DropPath(self.drop_path_rate)
    h = layers.ScaleShift(name='norm1_tfts')(layers.layer_norm('norm1', self.dtype)(x))
    x = x + drop_path(Attention(self.num_heads, self.dtype, name='attn')(h), not train)

    y = layers.ScaleShift(name='norm2_tfts')(layers.layer_norm('norm2', self.dtype)(x))
    a = DynamicAdapter(self.rank, self.drop_adapter_rate, self.dtype, name='adapter')(y, train)
    m = Mlp(int(c * self.mlp_ratio), self.dtype, name='mlp')(y)
    x = x + drop_path(m + a, not train)

    # The internal prompt: one token summarising the adapter's activity over all tokens.
    p = jnp.mean(nn.gelu(a, approximate=False), axis=1, keepdims=True)
    p = layers.ScaleShift(name='prompt_tfts')(p)
    return jnp.concatenate([x[:, :1], p.astype(x.dtype), x[:, 1:]], axis=1)
