"""The classifier family: the encoder with a PEFT method, pooled tokens, a classification head.

  points [B, N, 3] ─ FPS + kNN ─ encoder (models/encoder.py, method = config.model.peft)
    ─ final norm ─ [class token, mean of the prompts, max over the patches] (the method's choice;
      DAPT's from model.head_tokens) ─ head (Linear 256, BN, ReLU, Dropout, ×2, Linear) ─ logits

Every method's classifier is this one module (SPEC §1–2 for DAPT, §9 for the others); the
parameter paths are docs/architecture.md's.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import config as config_lib
from dapt_jax.models import encoder as encoder_lib
from dapt_jax.models import layers
from dapt_jax.models import peft
from dapt_jax.models import tokenizer
from dapt_jax.models import transformer
from dapt_jax.models.config import ModelConfigError  # pylint: disable=unused-import
from dapt_jax.models.peft import base
from dapt_jax.models.peft import dapt

Array = jax.Array

HEAD_TOKENS = dapt.HEAD_TOKENS
REMAT_POLICIES = transformer.REMAT_POLICIES

# The model fields a classification config's `model` section must hold (docs/architecture.md).
MODEL_FIELDS = config_lib.BACKBONE_FIELDS + ('rank', 'num_classes', 'drop_adapter_rate',
                                             'head_tokens', 'freeze_bn_stats')
OPTIONAL_FIELDS = {'head_dropout_rate': 0.5, 'remat': False, 'peft': 'dapt',
                   'remat_policy': 'matmuls', 'fps_impl': 'xla'}
# What trains besides the method's own parameters (every method but `full` adds the class token).
HEAD_RULES: base.Rules = ((r'^head/', base.TRAINABLE),)


class ClassifierHead(nn.Module):
  """Linear→256, BN, ReLU, Dropout 0.5, Linear→256, BN, ReLU, Dropout 0.5, Linear→classes."""
  num_classes: int
  dropout_rate: float = 0.5
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: Array, train: bool) -> Array:
    """f: [B, F] → logits [B, num_classes] (float32)."""
    for i in (1, 2):
      fan_in = f.shape[-1]
      f = layers.torch_dense(256, fan_in, f'fc{i}', self.dtype)(f)
      f = layers.TorchBatchNorm(use_running_average=not train, axis_name=self.axis_name,
                                name=f'bn{i}')(f)
      f = nn.relu(f)
      f = nn.Dropout(self.dropout_rate, deterministic=not train)(f)
    logits = layers.torch_dense(self.num_classes, f.shape[-1], 'fc3', self.dtype)(f)
    return layers.at_least_float32(logits)


class Classifier(nn.Module):
  """Point-MAE's encoder with `method`'s additions, and a classification head.

  Attributes mirror the config fields of docs/architecture.md. `axis_name` names the device axis
  when the model runs inside pmap / shard_map, so BatchNorm statistics are synchronised.
  """
  method: base.Method = dapt.Method()
  trans_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_group: int = 128
  group_size: int = 32
  num_classes: int = 15
  drop_path_rate: float = 0.0
  head_tokens: Sequence[str] = HEAD_TOKENS
  freeze_bn_stats: bool = False
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  head_dropout_rate: float = 0.5  # the release's fixed head dropout; tests set 0 for parity
  remat: bool = False  # recompute each block's activations in the backward pass (less memory)
  remat_policy: str = 'matmuls'  # what blocks keep for the backward pass (REMAT_POLICIES)
  fps_impl: str = 'xla'  # farthest point sampling: 'xla' or 'pallas' (tokenizer.fps)

  @property
  def encoder(self) -> encoder_lib.Encoder:
    return encoder_lib.Encoder(
        self.method, self.trans_dim, self.depth, self.num_heads, self.mlp_ratio,
        self.drop_path_rate, class_token=True, freeze_bn_stats=self.freeze_bn_stats,
        remat_policy='inputs' if self.remat else self.remat_policy, dtype=self.dtype,
        axis_name=self.axis_name)

  def tokenize(self, points: Array) -> tuple[Array, Array]:
    """points [B, N, 3] → (neighborhood [B, G, K, 3], centers [B, G, 3])."""
    return tokenizer.group_points(points, self.num_group, self.group_size, self.fps_impl)

  def __call__(self, points: Array, train: bool = False, valid: Optional[Array] = None) -> Array:
    """points: [B, N, 3] float32 → logits [B, num_classes] float32 (float64 for dtype float64).
    `valid` [B] bool: the real clouds of a padded batch (None: all)."""
    points = points.astype(jnp.promote_types(points.dtype, self.dtype))  # float64 model: FPS too
    neighborhood, centers = self.tokenize(points)
    return self.from_groups(neighborhood, centers, train, valid)

  @nn.compact
  def from_groups(self, neighborhood: Array, centers: Array, train: bool = False,
                  valid: Optional[Array] = None) -> Array:
    """neighborhood: [B, G, K, 3] relative coordinates; centers: [B, G, 3] → logits.

    The head reads the chosen tokens of the normalised last block output (tsne.head_input
    captures that input).
    """
    out = self.encoder(self, neighborhood, centers, train, valid)
    x = out.norm(out.blocks[-1])
    tokens = self.method.head_tokens(self.head_tokens)
    f = []
    if 'cls' in tokens:
      f.append(x[:, 0])
    if 'prompt' in tokens:
      f.append(jnp.mean(self.method.prompts(x, out.enc), axis=1))
    if 'patch' in tokens:
      f.append(jnp.max(self.method.patches(x, out.enc), axis=1))
    f = jnp.concatenate(f, axis=-1)
    return ClassifierHead(self.num_classes, self.head_dropout_rate, self.axis_name, self.dtype,
                          name='head')(f, train)


def check_config(cfg: Any) -> dict[str, Any]:
  """Checks a classification config's `model` section; returns the build arguments.

  Raises:
    ModelConfigError: with a one-line message naming the offending field.
  """
  v = config_lib.read(cfg, MODEL_FIELDS, OPTIONAL_FIELDS)
  config_lib.check_backbone(v)
  config_lib.positive_int('num_classes', v['num_classes'])
  config_lib.rate('head_dropout_rate', v['head_dropout_rate'])
  head_tokens = v['head_tokens']
  if (isinstance(head_tokens, str) or not isinstance(head_tokens, (tuple, list)) or not head_tokens
      or any(t not in HEAD_TOKENS for t in head_tokens) or len(set(head_tokens)) != len(head_tokens)):
    raise ModelConfigError(f'model.head_tokens={head_tokens!r}: must be a non-empty tuple of '
                           f'distinct entries from {", ".join(HEAD_TOKENS)}')
  if v['remat_policy'] not in REMAT_POLICIES:
    raise ModelConfigError(f"model.remat_policy={v['remat_policy']!r}: must be one of "
                           f'{REMAT_POLICIES}')
  if v['fps_impl'] not in tokenizer.FPS_IMPLS:
    raise ModelConfigError(f"model.fps_impl={v['fps_impl']!r}: must be one of "
                           f'{tokenizer.FPS_IMPLS}')
  method = peft.get(v['peft']).from_config(cfg, v)
  config_lib.check_x64(v)
  return dict(
      method=method, trans_dim=v['trans_dim'], depth=v['depth'], num_heads=v['num_heads'],
      mlp_ratio=float(v['mlp_ratio']), num_group=v['num_group'], group_size=v['group_size'],
      num_classes=v['num_classes'], drop_path_rate=float(v['drop_path_rate']),
      # Kept in the order the head concatenates them, whatever order the config lists.
      head_tokens=tuple(t for t in HEAD_TOKENS if t in head_tokens),
      freeze_bn_stats=bool(v['freeze_bn_stats']), dtype=config_lib.DTYPES[v['dtype']],
      head_dropout_rate=float(v['head_dropout_rate']), remat=bool(v['remat']),
      remat_policy=v['remat_policy'], fps_impl=v['fps_impl'])


def build_model(cfg: Any, axis_name: Optional[str] = None) -> Classifier:
  """The classifier from a config's `model` section (a mapping or ConfigDict)."""
  return Classifier(axis_name=axis_name, **check_config(cfg))


def init_variables(net: Classifier, key: jax.Array, num_points: int,
                   batch_size: int = 2) -> dict:
  """Initial {'params', 'batch_stats'} for a cloud of `num_points` points.

  Runs the tokenizer on a dummy cloud, so `num_points` must be at least `num_group` and
  `group_size`. Variables are float32 (float64 when the model's dtype is float64).
  """
  config_lib.check_points(net, num_points)
  params_key, dropout_key, data_key = jax.random.split(key, 3)
  dummy = jax.random.normal(data_key, (batch_size, num_points, 3), jnp.float32)
  return config_lib.init(net, params_key, dropout_key, dummy)


def trainable_rules(method: base.Method) -> base.Rules:
  """The partition rules of `method` on the classifier."""
  return method.trainable_rules(HEAD_RULES)
