"""Point-MAE's transformer block (SPEC §1 / §6.2), with the places where a PEFT method plugs in its
additions (`Additions`), and `run_block`, which runs a block under a rematerialisation policy.

One `Block` serves every model family and every method: Point-MAE's plain pre-norm block is the
block with no additions; DAPT, LoRA, the bottleneck adapters and PointGST each supply an
`Additions` object (their modules in dapt_jax/models/peft/) that adds its parameters beside the
backbone's, under the block's own scope, so the backbone's parameter paths never change."""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from dapt_jax.models import layers

Array = jax.Array

# The block values a block keeps for its backward pass under the 'matmuls' remat policy
# (model.remat_policy): the outputs of its weight matmuls. Everything else in the block
# (LayerNorms, scale-shifts, GELU, softmax, the attention products) is elementwise or cheap and is
# recomputed from these and the block's input. Outside `jax.checkpoint` the names do nothing.
SAVED_NAMES = ('qkv', 'proj', 'fc1', 'fc2')


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



class Additions:
  """What a PEFT method adds to one block; every hook defaults to adding nothing.

  Hooks run inside `Block.__call__`, so any module they create is the block's child (its path is
  `blocks_i/<name>`). `carry` is a dict a block call shares between its hooks. Subclasses are
  frozen dataclasses (hashable, as Flax module attributes must be).
  """
  scale_shift: bool = False  # DAPT's scale-shift pairs after the norms, qkv, proj, fc1 and fc2
  dense: Optional[Callable[..., nn.Module]] = None  # makes attention's qkv / proj (LoRA)
  saved_names: tuple[str, ...] = ()  # checkpoint names of its own matmul outputs (remat policy)

  def after_attention(self, h: Array, train: bool) -> Array:
    """The attention output before DropPath and the residual add."""
    return h

  def before_mlp(self, x: Array, context: Any, carry: dict, train: bool) -> None:
    """Sees the stream after the attention residual (PointGST's spectral adapter reads it)."""

  def mlp_output(self, y: Array, m: Array, carry: dict, train: bool) -> Array:
    """The MLP output `m` (from the normalised stream `y`) before DropPath and the residual."""
    return m

  def after_block(self, x: Array, carry: dict, train: bool) -> Array:
    """The block output (DAPT inserts its prompt here)."""
    return x


NO_ADDITIONS = Additions()


class Block(nn.Module):
  """A pre-norm transformer block: [B, T, C] → [B, T', C] (T' = T unless a method inserts tokens).

    h = Attention(norm1(x));            x = x + DropPath(additions.after_attention(h))
    additions.before_mlp(x)
    y = norm2(x); m = Mlp(y);           x = x + DropPath(additions.mlp_output(y, m))
    x = additions.after_block(x)

  With `additions.scale_shift`, DAPT's scale-shift pairs follow norm1, norm2 and every weight
  matmul. Point-MAE's block is `Block` with no additions: parameters norm1, attn/qkv (no bias),
  attn/proj, norm2, mlp/fc1, mlp/fc2.

  Attributes:
    kernel_init: initialiser of the four backbone Dense kernels (trunc-normal std 0.02 for
      Point-MAE's encoder, Xavier-uniform for its decoder; biases are zero either way).
  """
  num_heads: int
  mlp_ratio: float
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  kernel_init: Callable = layers.backbone_kernel_init
  additions: Additions = NO_ADDITIONS

  @nn.compact
  def __call__(self, x: Array, context: Any = None, train: bool = False) -> Array:
    """x: [B, T, C]; context: what the method computed once per forward pass (or None)."""
    c = x.shape[-1]
    add = self.additions
    ss = add.scale_shift
    drop_path = layers.DropPath(self.drop_path_rate)
    carry: dict = {}
    h = _scale_shift(ss, 'norm1_tfts', layers.layer_norm('norm1', self.dtype)(x))
    h = Attention(self.num_heads, self.dtype, scale_shift=ss, kernel_init=self.kernel_init,
                  dense=add.dense, name='attn')(h)
    x = x + drop_path(add.after_attention(h, train), not train)
    add.before_mlp(x, context, carry, train)
    y = _scale_shift(ss, 'norm2_tfts', layers.layer_norm('norm2', self.dtype)(x))
    m = Mlp(int(c * self.mlp_ratio), self.dtype, scale_shift=ss, kernel_init=self.kernel_init,
            name='mlp')(y)
    x = x + drop_path(add.mlp_output(y, m, carry, train), not train)
    return add.after_block(x, carry, train)


# What each block keeps for the backward pass (model.remat_policy):
#   'matmuls'  the outputs of its weight matmuls (SAVED_NAMES plus the method's own); LayerNorms,
#              scale-shifts, GELU, softmax and the attention products are recomputed from them
#              and the block input (exact: the same operations run again on the same values);
#   'all'      whatever autodiff keeps (no recomputation);
#   'inputs'   the block input only: the whole block is recomputed (what `remat=True` selects).
REMAT_POLICIES = ('matmuls', 'all', 'inputs')


def _apply_block(block: nn.Module, x: Array, context: Any, train: bool) -> Array:
  return block(x, context, train)


def _after(values: Any, cotangent: Array) -> Any:
  """`values` with every floating array of rank ≥ 3 (the saved activations) multiplied by a 1
  computed from `cotangent`, so that nothing computed from them can run before the cotangent
  exists. `(s - s) + 1` is exactly 1 for a finite s, and XLA does not fold it (it would be wrong
  for an infinite s), so the product is the value itself, bit for bit, sign of zero included.
  """
  s = cotangent.reshape(-1)[0]
  one = (s - s) + 1

  def tie(v):
    if jnp.ndim(v) >= 3 and jnp.issubdtype(v.dtype, jnp.floating):
      return v * one.astype(v.dtype)
    return v

  return jax.tree.map(tie, values)


def run_block(block: Block, x: Array, context: Any, train: bool, policy: str) -> Array:
  """`block(x, context, train)`, keeping for the backward pass what `policy` says.

  Recomputation alone is not enough: XLA may schedule a block's recomputation anywhere after the
  forward pass (an `optimization_barrier` does not survive XLA:CPU's early passes), and XLA:CPU
  moves all twelve to the start of the backward pass, where they are all live at once. So the
  backward pass is a custom VJP that first makes the saved activations depend on the incoming
  cotangent (`_after`): block i is recomputed only when the backward pass reaches it. Parameter
  paths are unchanged (the lifted transforms act on `block`'s own scope), and so are the values:
  the VJP is JAX's own, of the same function, on the same saved values. `context` (a method's
  per-forward-pass values, e.g. PointGST's spectral bases) is an input like `x`.
  """
  if policy == 'all':
    return block(x, context, train)
  names = SAVED_NAMES + tuple(block.additions.saved_names)
  saveable = (jax.checkpoint_policies.save_only_these_names(*names)
              if policy == 'matmuls' else jax.checkpoint_policies.nothing_saveable)
  remat_apply = nn.remat(_apply_block, static_argnums=(3,), policy=saveable)

  def fwd(mdl, x, context, train):
    return nn.vjp(lambda m, v, ctx: remat_apply(m, v, ctx, train), mdl, x, context)

  def bwd(train, vjp_fn, y_t):
    del train
    return _after(vjp_fn, y_t)(y_t)

  ordered = nn.custom_vjp(_apply_block, forward_fn=fwd, backward_fn=bwd, nondiff_argnums=(3,))
  return ordered(block, x, context, train)
