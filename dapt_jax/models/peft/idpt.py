"""IDPT: an instance-aware dynamic prompt made by a DGCNN module (SPEC §9, ICCV 2023 release).

Before one block (the last by default) the patch tokens [B, G, C] go through three EdgeConv
layers and a fusion layer; the max over tokens is one prompt, inserted after the class token with
its own position `prompt_pos`, which stays frozen at its random initial value (its release name
lacks `cls`, so the release never trains it). EdgeConv layer l: for each token its k nearest
tokens in feature space (squared Euclidean, itself included), edge features [x_j − x_i, x_i]
(2C), a 1×1 convolution 2C→C without bias, BatchNorm over B·G·k values, LeakyReLU(0.2), max over
the k neighbours. Fusion: concat of the three outputs (3C) → Linear 3C→C without bias, BatchNorm
over B·G, LeakyReLU(0.2); max over the G tokens. Initial values as the release's (PyTorch's
default for the convolutions, BatchNorm 1/0, prompt_pos truncated normal std 0.02).

Parameter names follow the release's module (conv1..3 and conv5/bn5: it has no conv4). Its
release keys are Point-MAE's plus `prompt_pos` and the module's, under the encoder's `blocks.cls`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers
from dapt_jax.models import release_keys as rk
from dapt_jax.models.peft import base

Array = jax.Array

NEGATIVE_SLOPE = 0.2
EDGE_LAYERS = ('1', '2', '3')


def knn_feature_indices(x: Array, k: int) -> Array:
  """x: [B, G, C] → [B, G, k] indices of each token's k nearest tokens (itself included)."""
  inner = jnp.einsum('bic,bjc->bij', x, x)
  sq = jnp.sum(x * x, axis=-1)
  neg_dist = 2.0 * inner - sq[:, :, None] - sq[:, None, :]   # −‖x_i − x_j‖²
  _, idx = jax.lax.top_k(neg_dist, k)
  return idx


def edge_features(x: Array, k: int) -> Array:
  """x: [B, G, C] → [B, G, k, 2C]: [x_j − x_i, x_i] over each token's k nearest tokens."""
  idx = knn_feature_indices(x, k)
  neighbours = jax.vmap(lambda xb, ib: xb[ib])(x, idx)             # [B, G, k, C]
  center = jnp.broadcast_to(x[:, :, None, :], neighbours.shape)
  return jnp.concatenate([neighbours - center, center], axis=-1)


class EdgeConvPrompt(nn.Module):
  """The DGCNN prompt module: patch tokens [B, G, C] → (prompt [B, 1, C], prompt_pos [1, 1, C])."""
  k: int = 20
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array, train: bool) -> tuple[Array, Array]:
    c = tokens.shape[-1]

    def conv_bn_act(h, i):
      h = nn.Dense(c, use_bias=False, kernel_init=layers.torch_linear_kernel_init,
                   dtype=self.dtype, name=f'conv{i}')(h)
      h = layers.TorchBatchNorm(use_running_average=not train, axis_name=self.axis_name,
                                name=f'bn{i}')(h)
      return nn.leaky_relu(h, NEGATIVE_SLOPE)

    h, outputs = tokens, []
    for i in EDGE_LAYERS:
      h = jnp.max(conv_bn_act(edge_features(h, self.k), i), axis=2)   # [B, G, C]
      outputs.append(h)
    h = conv_bn_act(jnp.concatenate(outputs, axis=-1), '5')             # [B, G, C]
    prompt = jnp.max(h, axis=1, keepdims=True)
    prompt_pos = self.param('prompt_pos', nn.initializers.truncated_normal(stddev=0.02),
                            (1, 1, c))
    return prompt, prompt_pos


# The prompt module's release keys (IDPT:models/dgcnn.py DGCNNView, under the encoder's
# `blocks.cls`). Each BatchNorm is registered twice in the release (as bn<n> and inside conv<n>),
# so its state dict holds the same tensors under both names: the second is an alias.
_RELEASE_ROWS = (
    ('idpt/bn1', 'blocks.cls.bn1', rk.BATCH_NORM, rk.PEFT, 'blocks.cls.conv1.1'),
    ('idpt/bn2', 'blocks.cls.bn2', rk.BATCH_NORM, rk.PEFT, 'blocks.cls.conv2.1'),
    ('idpt/bn3', 'blocks.cls.bn3', rk.BATCH_NORM, rk.PEFT, 'blocks.cls.conv3.1'),
    ('idpt/bn5', 'blocks.cls.bn5', rk.BATCH_NORM, rk.PEFT, 'blocks.cls.conv5.1'),
    ('idpt/conv1', 'blocks.cls.conv1.0', rk.CONV2D_NO_BIAS, rk.PEFT),
    ('idpt/conv2', 'blocks.cls.conv2.0', rk.CONV2D_NO_BIAS, rk.PEFT),
    ('idpt/conv3', 'blocks.cls.conv3.0', rk.CONV2D_NO_BIAS, rk.PEFT),
    ('idpt/conv5', 'blocks.cls.conv5.0', rk.CONV1D_NO_BIAS, rk.PEFT),
)


def _release_rows(depth: int) -> Iterable[tuple]:
  return rk.plain_rows(depth, before=[('idpt/prompt_pos', 'prompt_pos', rk.PARAM, rk.PEFT)],
                       after=_RELEASE_ROWS)


@dataclasses.dataclass(frozen=True)
class Method(base.Method):
  """IDPT: the prompt module before block `idpt_prompt_layer`, `idpt_k` neighbours."""
  NAME = 'idpt'
  OPTIONS = {'idpt_prompt_layer': -1, 'idpt_k': 20}
  RELEASE = rk.Release('IDPT', _release_rows, r'^blocks\.cls\.|^prompt_pos$',
                       'IDPT fine-tuned model (release key layout, blocks.cls.*)',
                       infer_head=rk.fixed_head(3, NAME))

  idpt_prompt_layer: int = -1
  idpt_k: int = 20

  def check(self, backbone):
    k = base.positive_int('idpt_k', self.idpt_k)
    if k > backbone['num_group']:
      raise base.ModelConfigError(
          f"model.idpt_k={k} exceeds model.num_group={backbone['num_group']} (each token needs "
          'that many neighbours)')
    layer, depth = self.idpt_prompt_layer, backbone['depth']
    if not isinstance(layer, int) or not -depth <= layer < depth:
      raise base.ModelConfigError(
          f'model.idpt_prompt_layer={layer!r}: must be a block index in [{-depth}, {depth - 1}] '
          '(negative counts from the end)')

  def block_input(self, index, x, pos, state, enc, train):
    """Blocks before the prompt layer see [lead, patches]; from it on, the prompt made from the
    patch tokens entering it sits after the lead tokens, with its own position."""
    if index == self.idpt_prompt_layer % enc.depth:
      g, lead = enc.num_patches, enc.lead
      module = EdgeConvPrompt(self.idpt_k, enc.axis_name, enc.dtype, name='idpt')
      prompt, prompt_pos = module(x[:, -g:], train)
      x = jnp.concatenate([x[:, :lead], prompt.astype(x.dtype), x[:, -g:]], axis=1)
      pos = jnp.concatenate([pos[:, :lead], base.broadcast(prompt_pos, x.shape[0], pos.dtype),
                             pos[:, -g:]], axis=1)
    return x + pos, pos

  def head_tokens(self, configured):
    return ('cls', 'prompt', 'patch')  # the release's cls_type 'all'

  def frozen_at_init(self):
    return (r'^idpt/prompt_pos$',)

  def trainable_rules(self, head_rules):
    # The prompt position is never trained by the release (its name lacks `cls`).
    return (((r'^idpt/prompt_pos$', base.FROZEN),) + base.CLS_RULES + tuple(head_rules)
            + ((r'^idpt/', base.TRAINABLE),) + base.EVERYTHING_ELSE_FROZEN)
