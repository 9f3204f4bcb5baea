"""Small layers shared by the tokenizer, the transformer and the head.

`TorchBatchNorm` exists because Flax's BatchNorm updates its running variance with the biased
batch variance, while the release (PyTorch) uses the unbiased one; converted checkpoints and the
release's training dynamics depend on that detail (SPEC §1).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array


def at_least_float32(x: Array) -> Array:
  """`x` in float32 if it is narrower (bfloat16), else unchanged.

  Statistics, softmax and logits are computed in at least float32; float64 stays float64, so the
  whole model runs in float64 under `jax.enable_x64` (the parity tests compare it so).
  """
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def torch_linear_kernel_init(key, shape, dtype=jnp.float32):
  """PyTorch's default Linear weight init (Kaiming-uniform, a=√5): U(±1/√fan_in).

  Flax kernels are [in, out], so fan_in is shape[0].
  """
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_linear_bias_init(fan_in: int):
  """PyTorch's default Linear bias init: U(±1/√fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# Backbone weights are normally loaded from a checkpoint; without one they start the way the
# release initialises a model trained from scratch (timm's trunc_normal_(std=0.02), zero bias).
# timm truncates at absolute ±2, i.e. 100 standard deviations: a plain normal with std 0.02.
# (Flax's truncated_normal cuts at ±2 std, which would give std 0.0176.)
backbone_kernel_init = nn.initializers.normal(stddev=0.02)


def torch_dense(features: int, fan_in: int, name: str, dtype: Any = jnp.float32) -> nn.Dense:
  """A Dense layer initialised like PyTorch's nn.Linear."""
  return nn.Dense(features, kernel_init=torch_linear_kernel_init,
                  bias_init=torch_linear_bias_init(fan_in), dtype=dtype, name=name)


class ScaleShift(nn.Module):
  """Per-channel `x * gamma + beta` (the release's `tfts` pair) on the last axis.

  gamma ~ N(1, 0.02), beta ~ N(0, 0.02).
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    gamma = self.param('gamma', lambda k, s: 1.0 + 0.02 * jax.random.normal(k, s), (features,))
    beta = self.param('beta', lambda k, s: 0.02 * jax.random.normal(k, s), (features,))
    return x * gamma.astype(x.dtype) + beta.astype(x.dtype)


class TorchBatchNorm(nn.Module):
  """BatchNorm over all axes but the last, with PyTorch's semantics.

  Training normalises with the biased batch variance and updates `var` with the unbiased one
  (× n/(n−1)); momentum is PyTorch's 0.1. With `axis_name` set (inside pmap / shard_map), the
  statistics are computed over the whole global batch, so results do not depend on how many
  devices share it.

  Attributes:
    use_running_average: normalise with the running averages and leave them unchanged.
    momentum: PyTorch momentum (weight of the new batch statistic).
    axis_name: collective axis over which batch statistics are synchronised, or None.
  """
  use_running_average: bool = False
  momentum: float = 0.1
  epsilon: float = 1e-5
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = at_least_float32(x)
      axes = tuple(range(x.ndim - 1))
      n = math.prod(x.shape[:-1])
      mean = jnp.mean(xf, axis=axes)
      if self.axis_name is not None:
        mean = jax.lax.pmean(mean, self.axis_name)
      # Two-pass variance: the numerically safe form, and the one PyTorch computes.
      var = jnp.mean(jnp.square(xf - mean), axis=axes)
      if self.axis_name is not None:
        var = jax.lax.pmean(var, self.axis_name)
        n = n * jax.lax.psum(1, self.axis_name)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
        ra_var.value = (1.0 - m) * ra_var.value + m * var * (n / max(n - 1, 1))

    inv = jax.lax.rsqrt(var + self.epsilon) * scale
    y = (at_least_float32(x) - mean) * inv + bias
    return y.astype(x.dtype)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample, rescaling the kept ones."""
  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def layer_norm(name: str, dtype: Any = jnp.float32) -> nn.LayerNorm:
  """LayerNorm with PyTorch's eps and the two-pass variance."""
  return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, name=name)


def drop_path_rates(rate: float, depth: int) -> Sequence[float]:
  """Stochastic-depth rates rising linearly from 0 to `rate` over the blocks (torch.linspace)."""
  if depth == 1:
    return [0.0]
  return [rate * i / (depth - 1) for i in range(depth)]
