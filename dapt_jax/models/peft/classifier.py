"""Point-MAE's classifier with one PEFT method's additions (SPEC §9).

The backbone is Point-MAE's fine-tuning model: patch encoder, class token and its position,
centre position embedding, plain pre-norm blocks with the position embedding added before EVERY
block (`x = block(x + pos)`, unlike DAPT, which adds it once), final LayerNorm, and the head on
[class token, max over the patch tokens]. The backbone's parameter paths are DAPT's (encoder/...,
pos_embed/..., blocks_i/{norm1,attn,norm2,mlp}/..., norm/..., head/...), so one converted
Point-MAE checkpoint initialises every method.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers
from dapt_jax.models import classifier as model_lib
from dapt_jax.models import tokenizer
from dapt_jax.models import transformer
from dapt_jax.models.peft import Options
from dapt_jax.models.peft import adapter
from dapt_jax.models.peft import idpt
from dapt_jax.models.peft import lora
from dapt_jax.models.peft import pointgst
from dapt_jax.models.peft import vpt

Array = jax.Array


class PEFTClassifier(nn.Module):
  """Point-MAE ViT-S encoder with the additions of `method`, and a classification head.

  Attributes: `method` (see dapt_jax.models.peft.METHODS) and its `options`; the rest as
  model.DAPTClassifier (no adapter rank, adapter dropout or head-token choice: each method has
  its release's head input).
  """
  method: str
  options: Options = Options()
  trans_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_group: int = 128
  group_size: int = 32
  num_classes: int = 15
  drop_path_rate: float = 0.0
  freeze_bn_stats: bool = False
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  head_dropout_rate: float = 0.5
  remat: bool = False

  def tokenize(self, points: Array) -> tuple[Array, Array]:
    """points [B, N, 3] → (neighborhood [B, G, K, 3], centers [B, G, 3])."""
    return tokenizer.group_points(points, self.num_group, self.group_size)

  def __call__(self, points: Array, train: bool = False) -> Array:
    """points: [B, N, 3] float32 → logits [B, num_classes] float32 (float64 for dtype float64)."""
    points = points.astype(jnp.promote_types(points.dtype, self.dtype))  # float64 model: FPS too
    neighborhood, centers = self.tokenize(points)
    return self.from_groups(neighborhood, centers, train)

  def _block(self, i: int, rate: float) -> nn.Module:
    """Block i of this method (its static arguments are those after the token arrays)."""
    o = self.options
    common = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, drop_path_rate=rate,
                  dtype=self.dtype, name=f'blocks_{i}')
    if self.method == 'pointgst':
      cls, static = pointgst.PGSTBlock, (3,)
      common.update(rank=o.pgst_rank)
    elif self.method == 'lora':
      cls, static = lora.LoRABlock, (2,)
      common.update(rank=o.lora_rank, alpha=o.lora_alpha)
    elif self.method == 'adapter':
      cls, static = adapter.AdapterBlock, (2,)
      common.update(bottleneck=o.adapter_dim)
    else:  # full, linear, vpt_deep, idpt: Point-MAE's own block
      cls, static = transformer.Block, (2,)
    if self.remat:
      cls = nn.remat(cls, static_argnums=static)
    return cls(**common)

  @nn.compact
  def from_groups(self, neighborhood: Array, centers: Array, train: bool = False) -> Array:
    """neighborhood: [B, G, K, 3] relative coordinates; centers: [B, G, 3] → logits."""
    b, g = centers.shape[:2]
    c = self.trans_dim
    encoder_running = (not train) or self.freeze_bn_stats
    tokens = tokenizer.PatchEncoder(c, encoder_running, self.axis_name, self.dtype,
                                    name='encoder')(neighborhood.astype(self.dtype))
    trunc = nn.initializers.truncated_normal(stddev=0.02)
    cls_token = self.param('cls_token', trunc, (1, 1, c))
    cls_pos = self.param('cls_pos', trunc, (1, 1, c))
    pos = tokenizer.PosEmbed(c, self.dtype, name='pos_embed')(centers.astype(self.dtype))
    x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, c)).astype(tokens.dtype), tokens], 1)
    pos = jnp.concatenate([jnp.broadcast_to(cls_pos, (b, 1, c)).astype(pos.dtype), pos], 1)

    rates = layers.drop_path_rates(self.drop_path_rate, self.depth)
    blocks = [self._block(i, rate) for i, rate in enumerate(rates)]
    o = self.options
    if self.method == 'vpt_deep':
      prompts = vpt.DeepPrompts(o.vpt_prompts, self.depth, name='vpt')(c)
      x = vpt.encode(blocks, prompts, x, pos, g, train)
    elif self.method == 'idpt':
      prompt_module = idpt.EdgeConvPrompt(o.idpt_k, self.axis_name, self.dtype, name='idpt')
      layer = o.idpt_prompt_layer % self.depth
      x = idpt.encode(blocks, prompt_module, layer, x, pos, g, train)
    elif self.method == 'pointgst':
      bases = pointgst.spectral_bases(centers, o.pgst_local, self.axis_name)
      for block in blocks:
        x = block(x + pos, bases, train)
    else:
      for block in blocks:
        x = block(x + pos, train)

    x = layers.layer_norm('norm', self.dtype)(x)
    if self.method == 'idpt':  # [cls, prompt, max over patches] (the release's cls_type 'all')
      f = jnp.concatenate([x[:, 0], x[:, 1], jnp.max(x[:, -g:], axis=1)], axis=-1)
    else:  # [cls, max over patches]; VPT's trailing prompts are left out
      f = jnp.concatenate([x[:, 0], jnp.max(x[:, 1:1 + g], axis=1)], axis=-1)
    return model_lib.ClassifierHead(self.num_classes, self.head_dropout_rate, self.axis_name,
                                    self.dtype, name='head')(f, train)
