"""VPT-deep as IDPT's release implements it for point clouds (SPEC §9).

Every block gets its own P learned prompt tokens with their own learned positions: before block
i the sequence is cut back to [cls, patches] (the previous block's prompts are dropped) and block
i's prompts are appended, so the block sees [cls, patches, prompts_i] + [cls_pos, patch pos,
prompt_pos_i]. The head reads the class token and the patch tokens only (the prompts trail
the patches). Trainable: the prompts, their positions, the class token and position, the head
(the release's `cls` name rule). Release keys (IDPT's release): Point-MAE's plus
`cls_prompt_list.{i}`, `cls_prompt_pos_list.{i}`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import release_keys as rk
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


def _release_rows(depth: int) -> Iterable[tuple]:
  """Point-MAE's classifier with every block's prompt, then every prompt position, before the
  encoder."""
  before = [(f'vpt/prompt_{i}', f'cls_prompt_list.{i}', rk.PARAM, rk.PEFT) for i in range(depth)]
  before += [(f'vpt/prompt_pos_{i}', f'cls_prompt_pos_list.{i}', rk.PARAM, rk.PEFT)
             for i in range(depth)]
  return rk.plain_rows(depth, before=before)


def _infer(tensors: Mapping[str, Any]) -> dict[str, Any]:
  prompts = tensors.get('cls_prompt_list.0')
  return {'vpt_prompts': int(prompts.shape[1])} if prompts is not None and prompts.ndim == 3 else {}


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  """VPT-deep with `vpt_prompts` prompts per block."""
  NAME = 'vpt_deep'
  OPTIONS = {'vpt_prompts': 10}
  RELEASE = rk.Release(
      'VPT-deep', _release_rows, r'^cls_prompt(_pos)?_list\.',
      'VPT-deep fine-tuned model (IDPT release key layout, cls_prompt_list.*)', _infer,
      rk.fixed_head(2, NAME))

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
