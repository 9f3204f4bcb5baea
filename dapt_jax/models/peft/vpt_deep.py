"""VPT-deep as IDPT's release implements it for point clouds (SPEC §9).

Every block gets its own P learned prompt tokens with their own learned positions: before block
i the sequence is cut back to [cls, patches] (the previous block's prompts are dropped) and block
i's prompts are appended, so the block sees [cls, patches, prompts_i] + [cls_pos, patch pos,
prompt_pos_i]. The head reads the class token and the patch tokens only (the prompts trail
the patches). Trainable: the prompts, their positions, the class token and position, the head
(the release's `cls` name rule).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models.peft import base

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


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  """VPT-deep with `vpt_prompts` prompts per block."""
  NAME = 'vpt_deep'
  OPTIONS = {'vpt_prompts': 10}

  vpt_prompts: int = 10

  def check(self, backbone):
    base.positive_int('vpt_prompts', self.vpt_prompts)

  def start(self, enc):
    return DeepPrompts(self.vpt_prompts, enc.depth, name='vpt')(enc.width)

  def block_input(self, index, x, pos, state, enc, train):
    """[lead, patches, prompts_i] + [lead pos, patch pos, prompt_pos_i]; the previous block's
    prompts are dropped."""
    prompt, prompt_pos = state[index]
    b = x.shape[0]
    x = jnp.concatenate([x[:, :enc.lead + enc.num_patches], base.broadcast(prompt, b, x.dtype)], 1)
    xp = jnp.concatenate([pos, base.broadcast(prompt_pos, b, pos.dtype)], axis=1)
    return x + xp, pos

  def patches(self, x, enc):
    return x[:, enc.lead:enc.lead + enc.num_patches]

  def prompts(self, x, enc):
    return x[:, enc.lead + enc.num_patches:]

  def own_rules(self):
    return ((r'^vpt/', base.TRAINABLE),)
