"""The one encoder every model family runs: Point-MAE's transformer with a PEFT method in it.

  neighborhood [B, G, K, 3] ─ patch encoder (mini-PointNet) ─ method.patch_tokens ─ tokens
  centers [B, G, 3] ─ position embedding ─ pos
  [class token, tokens] + [class position, pos]     (with `class_token`)
  for block i: x = Block_i(method.block_input(i, x, pos))     (every block's output is kept)
  norm: final LayerNorm, then method.final_norm

`Encoder` is not a Flax module of its own: it runs inside the calling family's compact method, so
its parameters sit at the family's top level (`encoder/...`, `pos_embed/...`, `cls_token`,
`blocks_i/...`, `norm/...`, the method's own) — the paths the converter, the partition rules and
every checkpoint use (docs/architecture.md). The masked autoencoder runs the two halves apart
(`embed`, then `encode` on the visible tokens only).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers
from dapt_jax.models import tokenizer
from dapt_jax.models import transformer
from dapt_jax.models.peft import base

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Output:
  """An encoder pass: `blocks[i]` is block i's output [B, T_i, C]; `norm` the final norm (one
  module, so applying it to several outputs shares its parameters); `enc` the shapes."""
  blocks: list
  norm: Callable[[Array], Array]
  enc: base.Encoding

  def patches(self, method: base.Method, index: int = -1) -> Array:
    """The patch tokens [B, G, C] of block `index`'s output (not normalised)."""
    return method.patches(self.blocks[index], self.enc)


@dataclasses.dataclass(frozen=True)
class Encoder:
  """Point-MAE's encoder with `method`'s additions (see the module docstring).

  Attributes mirror the model config fields (docs/architecture.md); `remat_policy` is one of
  transformer.REMAT_POLICIES ('inputs' when `remat`); `freeze_bn_stats` keeps the patch encoder's
  BatchNorm on its running averages in training.
  """
  method: base.Method
  trans_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  class_token: bool = True
  freeze_bn_stats: bool = False
  remat_policy: str = 'all'
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None

  def embed(self, neighborhood: Array, train: bool) -> Array:
    """neighborhood [B, G, K, 3] → patch tokens [B, G, C] (before the method's patch hook)."""
    running = (not train) or self.freeze_bn_stats
    return tokenizer.PatchEncoder(self.trans_dim, running, self.axis_name, self.dtype,
                                  name='encoder')(neighborhood.astype(self.dtype))

  def encode(self, module: nn.Module, tokens: Array, centers: Array, train: bool,
             valid: Optional[Array] = None) -> Output:
    """tokens [B, G, C] from `embed` (or a subset of them), centers [B, G, 3] of those tokens.

    `module` is the calling family (its compact method is running): the class token and its
    position are its parameters. `valid` [B] bool marks the real clouds of a padded batch (for
    methods whose blocks couple the clouds of a batch).
    """
    b, g, c = tokens.shape
    method = self.method
    enc = base.Encoding(lead=int(self.class_token), num_patches=g, width=c, depth=self.depth,
                        axis_name=self.axis_name, dtype=self.dtype)
    x = method.patch_tokens(tokens)
    pos = tokenizer.PosEmbed(c, self.dtype, name='pos_embed')(centers.astype(self.dtype))
    if self.class_token:
      trunc = nn.initializers.truncated_normal(stddev=0.02)
      cls_token = module.param('cls_token', trunc, (1, 1, c))
      cls_pos = module.param('cls_pos', trunc, (1, 1, c))
      x = jnp.concatenate([base.broadcast(cls_token, b, x.dtype), x], 1)
      pos = jnp.concatenate([base.broadcast(cls_pos, b, pos.dtype), pos], 1)

    context = method.context(centers, enc, valid)
    state = method.start(enc)
    outputs = []
    for i, rate in enumerate(layers.drop_path_rates(self.drop_path_rate, self.depth)):
      x_in, pos = method.block_input(i, x, pos, state, enc, train)
      block = transformer.Block(self.num_heads, self.mlp_ratio, rate, self.dtype,
                                additions=method.block_additions(i, enc), name=f'blocks_{i}')
      x = transformer.run_block(block, x_in, context, train, self.remat_policy)
      outputs.append(x)
    norm, after_norm = layers.layer_norm('norm', self.dtype), method.final_norm()
    return Output(outputs, lambda v: after_norm(norm(v)), enc)

  def __call__(self, module: nn.Module, neighborhood: Array, centers: Array, train: bool,
               valid: Optional[Array] = None) -> Output:
    """embed + encode over every group."""
    return self.encode(module, self.embed(neighborhood, train), centers, train, valid)
