"""VPT-deep as IDPT's release implements it for point clouds (SPEC §9).

Every block gets its own P learned prompt tokens with their own learned positions: before block
i the sequence is cut back to [cls, patches] (the previous block's prompts are dropped) and block
i's prompts are appended, so the block sees [cls, patches, prompts_i] + [cls_pos, patch pos,
prompt_pos_i]. The head reads the class token and the patch tokens only. Trainable: the prompts,
their positions, the class token and position, the head (the release's `cls` name rule).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array


class DeepPrompts(nn.Module):
  """`prompt_{i}` and `prompt_pos_{i}` ([1, P, C], truncated normal std 0.02) for each block."""
  num_prompts: int
  depth: int

  @nn.compact
  def __call__(self, width: int) -> list[tuple[Array, Array]]:
    trunc = nn.initializers.truncated_normal(stddev=0.02)
    shape = (1, self.num_prompts, width)
    return [(self.param(f'prompt_{i}', trunc, shape), self.param(f'prompt_pos_{i}', trunc, shape))
            for i in range(self.depth)]


def encode(blocks: Sequence[nn.Module], prompts: Sequence[tuple[Array, Array]], x: Array,
           pos: Array, num_patches: int, train: bool) -> Array:
  """x, pos: [B, 1 + G, C] (cls first) → the last block's output [B, 1 + G + P, C]."""
  b, _, c = x.shape
  for block, (prompt, prompt_pos) in zip(blocks, prompts):
    x = x[:, :1 + num_patches]
    p = prompt.shape[1]
    x = jnp.concatenate([x, jnp.broadcast_to(prompt, (b, p, c)).astype(x.dtype)], axis=1)
    xp = jnp.concatenate([pos, jnp.broadcast_to(prompt_pos, (b, p, c)).astype(pos.dtype)], axis=1)
    x = block(x + xp, train)
  return x
