"""Transformer blocks with DAPT's additions: scale-shift pairs, the Dynamic Adapter and the
internal prompt (SPEC §2); and Point-MAE's plain block (`Block`, SPEC §1 / §6.2)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from dapt_jax.models import layers

Array = jax.Array

# The block values a DAPT block keeps for its backward pass under the 'matmuls' remat policy
# (model.remat_policy): the outputs of its weight matmuls. Everything else in the block
# (LayerNorms, scale-shifts, GELU, softmax, the attention products) is elementwise or cheap and is
# recomputed from these and the block's input. Outside `jax.checkpoint` the names do nothing.
SAVED_NAMES = ('qkv', 'proj', 'fc1', 'fc2', 'adapter_scale', 'adapter_down', 'adapter_up')


def _dense(features: int, name: str, dtype: Any, use_bias: bool = True,
           kernel_init: Callable = layers.backbone_kernel_init) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, kernel_init=kernel_init, dtype=dtype, name=name)


def _scale_shift(enabled: bool, name: str, x: Array) -> Array:
  """DAPT's scale-shift pair when `enabled`, the identity (no parameters) otherwise."""
  return layers.ScaleShift(name=name)(x) if enabled else x


class Attention(nn.Module):
  """Multi-head self-attention; qkv without bias; scale-shifts after qkv and after proj.

  `scale_shift=False` drops the scale-shifts (Point-MAE's plain attention); `kernel_init` is the
  qkv/proj kernel initialiser (Point-MAE's decoder uses Xavier-uniform). `dense`, when given,
  makes the qkv and proj layers instead of nn.Dense, with `_dense`'s signature (LoRA uses it to
  add its low-rank update; dapt_jax/models/peft/lora.py).
  """
  num_heads: int
  dtype: Any = jnp.float32
  scale_shift: bool = True
  kernel_init: Callable = layers.backbone_kernel_init
  dense: Optional[Callable[..., nn.Module]] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x: [B, T, C] → [B, T, C]."""
    b, t, c = x.shape
    h = self.num_heads
    make_dense = self.dense or _dense
    qkv = make_dense(3 * c, 'qkv', self.dtype, use_bias=False, kernel_init=self.kernel_init)(x)
    qkv = _scale_shift(self.scale_shift, 'qkv_tfts', checkpoint_name(qkv, 'qkv'))
    qkv = qkv.reshape(b, t, 3, h, c // h)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]          # [B, T, H, D]
    scale = (c // h) ** -0.5
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * scale
    weights = jax.nn.softmax(layers.at_least_float32(logits), axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, t, c)
    out = make_dense(c, 'proj', self.dtype, kernel_init=self.kernel_init)(out)
    return _scale_shift(self.scale_shift, 'proj_tfts', checkpoint_name(out, 'proj'))


class Mlp(nn.Module):
  """fc1 → scale-shift → GELU → fc2 → scale-shift (`scale_shift=False`: no scale-shifts)."""
  hidden_dim: int
  dtype: Any = jnp.float32
  scale_shift: bool = True
  kernel_init: Callable = layers.backbone_kernel_init

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    h = _dense(self.hidden_dim, 'fc1', self.dtype, kernel_init=self.kernel_init)(x)
    h = _scale_shift(self.scale_shift, 'fc1_tfts', checkpoint_name(h, 'fc1'))
    h = nn.gelu(h, approximate=False)
    h = _dense(c, 'fc2', self.dtype, kernel_init=self.kernel_init)(h)
    return _scale_shift(self.scale_shift, 'fc2_tfts', checkpoint_name(h, 'fc2'))


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


class Block(nn.Module):
  """Point-MAE's plain pre-norm transformer block (no scale-shifts, adapter or prompt).

  x = x + DropPath(Attention(norm1(x))); x = x + DropPath(Mlp(norm2(x))). Parameter paths are the
  DAPTBlock's minus DAPT's parts: norm1, attn/qkv, attn/proj, norm2, mlp/fc1, mlp/fc2. Input and
  output [B, T, C].

  Attributes:
    kernel_init: initialiser of the four Dense kernels (trunc-normal std 0.02 for Point-MAE's
      encoder, Xavier-uniform for its decoder; biases are zero either way).
  """
  num_heads: int
  mlp_ratio: float
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Callable = layers.backbone_kernel_init

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    c = x.shape[-1]
    drop_path = layers.DropPath(self.drop_path_rate)
    h = Attention(self.num_heads, self.dtype, scale_shift=False, kernel_init=self.kernel_init,
                  name='attn')(layers.layer_norm('norm1', self.dtype)(x))
    x = x + drop_path(h, not train)
    m = Mlp(int(c * self.mlp_ratio), self.dtype, scale_shift=False, kernel_init=self.kernel_init,
            name='mlp')(layers.layer_norm('norm2', self.dtype)(x))
    return x + drop_path(m, not train)
