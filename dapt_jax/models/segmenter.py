"""The segmenter family: Point-MAE's part-segmentation network on the encoder with a PEFT method
(SPEC §8.2, §8.6).

  points [B, N, 3] ─ FPS + kNN ─ encoder (models/encoder.py, method = config.model.peft)
     ─ patch tokens of blocks 3, 7, 11 (each through the final norm, [B, G, 3C])
  global = [max over tokens, mean over tokens, category one-hot → label_conv]   [B, 6C + 64]
  per point: 3-NN inverse-distance interpolation of the features from the G centres
     → [xyz, interpolated] → propagation MLP (1536, 1024)
  head per point: [propagated 1024, global] → 512 → 256 → num_parts logits

With DAPT (`model.peft='dapt'`, the project's design, §8.6) the encoder has DAPT's blocks, a
class token and its position (so the prompt is inserted at index 1 as in classification) and
the position added once before block 0 (or before every block with `pos_every_block`). With the
plain backbone (`full`: exactly Point-MAE's segmentation network, into which Point-MAE
segmentation checkpoints convert) or any other method there is no class token, and the position
goes before every block as the method says. The features of a block are its patch tokens.

Parameter paths: docs/architecture.md ("Segmentation").
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
from dapt_jax.models.config import ModelConfigError
from dapt_jax.models.peft import base
from dapt_jax.models.peft import dapt

Array = jax.Array

# Required fields of a segmentation config's `model` section (docs/architecture.md).
SEG_MODEL_FIELDS = config_lib.BACKBONE_FIELDS + ('rank', 'num_parts', 'num_classes',
                                                 'drop_adapter_rate', 'freeze_bn_stats',
                                                 'feature_blocks')
# Optional fields and their defaults (Point-MAE's widths).
SEG_OPTIONAL_FIELDS = {'peft': 'dapt', 'pos_every_block': False, 'label_dims': 64,
                       'propagation_dims': (1536, 1024), 'head_dims': (512, 256),
                       'head_dropout_rate': 0.5, 'remat': False}
# What trains besides the method's own parameters: the whole segmentation head.
HEAD_RULES = ((r'^(label_conv|propagation_0|convs\d|bns\d)/', 'trainable'),)
# The 3 nearest centres interpolate each point's features; weights 1 / (d² + this), normalised.
INTERPOLATION_NEIGHBOURS = 3
INTERPOLATION_EPS = 1e-8
LABEL_LEAKY_SLOPE = 0.2


def interpolation_weights(query: Array, centers: Array, k: int = INTERPOLATION_NEIGHBOURS) -> Array:
  """Inverse squared-distance weights of every query point's k nearest centres, as a dense matrix.

  Args:
    query: [B, Q, 3]; centers: [B, G, 3] (G ≥ k).

  Returns:
    [B, Q, G]: row q holds w_j = (1 / (d_j² + 1e-8)) / Σ_i (1 / (d_i² + 1e-8)) at its k nearest
    centres j (squared Euclidean, lower index first on ties) and 0 elsewhere. Multiplying it with
    the centres' features interpolates them (PointNet++ feature propagation).
  """
  dtype = jnp.promote_types(query.dtype, jnp.float32)
  q = query.astype(dtype)
  c = centers.astype(dtype)
  diff = q[:, :, None, :] - c[:, None, :, :]
  d2 = jnp.sum(diff * diff, axis=-1)                                   # [B, Q, G]
  neg, idx = jax.lax.top_k(-d2, k)                                     # nearest first
  recip = 1.0 / (-neg + INTERPOLATION_EPS)
  w = recip / jnp.sum(recip, axis=-1, keepdims=True)                  # [B, Q, k]
  onehot = jax.nn.one_hot(idx, c.shape[1], dtype=dtype)                # [B, Q, k, G]
  return jnp.einsum('bqk,bqkg->bqg', w, onehot)


def max_over_tokens(f: Array) -> Array:
  """f [B, G, F] → [B, F], the maximum over G, with its gradient sent to the maximal element.

  Written as argmax + gather rather than `jnp.max`: the gradient of `jnp.max` finds the maximal
  elements by comparing the operand with the result again, and under jit XLA may recompute the
  operand (here a fused LayerNorm + scale-shift) with different rounding, so the comparison can
  miss and the gradient is lost — measured on CPU, where it changed the backbone's gradients
  entirely. The gather uses the indices computed once in the forward pass.
  """
  idx = jax.lax.stop_gradient(jnp.argmax(f, axis=1))
  return jnp.take_along_axis(f, idx[:, None, :], axis=1)[:, 0]


class CategoryEmbed(nn.Module):
  """`label_conv`: one-hot category → Linear (no bias) → BatchNorm → LeakyReLU(0.2)."""
  num_classes: int
  features: int = 64
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, category: Array, train: bool) -> Array:
    """category: [B] int → [B, features]. The BatchNorm reduces over the B shapes."""
    onehot = jax.nn.one_hot(category, self.num_classes, dtype=self.dtype)
    h = nn.Dense(self.features, use_bias=False, kernel_init=layers.torch_linear_kernel_init,
                 dtype=self.dtype, name='conv')(onehot)
    h = layers.TorchBatchNorm(use_running_average=not train, axis_name=self.axis_name,
                              name='bn')(h)
    return nn.leaky_relu(h, LABEL_LEAKY_SLOPE)


class FeaturePropagation(nn.Module):
  """`propagation_0`: interpolate the centres' features to the points, prepend xyz, then
  (Linear → BatchNorm → ReLU) per width of `dims`."""
  dims: Sequence[int] = (1536, 1024)
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query: Array, centers: Array, features: Array, train: bool) -> Array:
    """query [B, Q, 3], centers [B, G, 3], features [B, G, F] → [B, Q, dims[-1]]."""
    w = interpolation_weights(query, centers).astype(self.dtype)
    interp = jnp.einsum('bqg,bgf->bqf', w, features.astype(self.dtype))
    h = jnp.concatenate([query.astype(self.dtype), interp], axis=-1)
    for i, width in enumerate(self.dims):
      h = layers.torch_dense(width, h.shape[-1], f'conv_{i}', self.dtype)(h)
      h = layers.TorchBatchNorm(use_running_average=not train, axis_name=self.axis_name,
                                name=f'bn_{i}')(h)
      h = nn.relu(h)
    return h


class PointGlobalDense(nn.Module):
  """A Linear over [per-point features, per-shape features] with one kernel, as Point-MAE's
  `convs1` (3392 → 512), computed without broadcasting the per-shape part to every point.

  kernel [F_point + F_global, out] (rows in that order), bias [out], PyTorch's default init.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, per_point: Array, per_shape: Array) -> Array:
    """per_point [B, Q, Fp], per_shape [B, Fg] → [B, Q, features]."""
    fp, fg = per_point.shape[-1], per_shape.shape[-1]
    fan_in = fp + fg
    kernel = self.param('kernel', layers.torch_linear_kernel_init, (fan_in, self.features))
    bias = self.param('bias', layers.torch_linear_bias_init(fan_in), (self.features,))
    kernel = kernel.astype(self.dtype)
    point_part = jnp.einsum('bqf,fo->bqo', per_point.astype(self.dtype), kernel[:fp])
    shape_part = per_shape.astype(self.dtype) @ kernel[fp:] + bias.astype(self.dtype)
    return point_part + shape_part[:, None, :]


class PartSegmenter(nn.Module):
  """Point-MAE's part-segmentation network with `method` in its encoder.

  Attributes mirror the config fields of docs/architecture.md ("Segmentation"); `axis_name` names
  the device axis inside pmap / shard_map so BatchNorm statistics are synchronised.
  """
  method: base.Method = dapt.Method(rank=32)
  trans_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_group: int = 128
  group_size: int = 32
  num_parts: int = 50
  num_classes: int = 16  # object categories (the one-hot fed to label_conv)
  drop_path_rate: float = 0.1
  freeze_bn_stats: bool = False
  dtype: Any = jnp.float32
  feature_blocks: Sequence[int] = (3, 7, 11)
  label_dims: int = 64
  propagation_dims: Sequence[int] = (1536, 1024)
  head_dims: Sequence[int] = (512, 256)
  head_dropout_rate: float = 0.5
  remat: bool = False
  axis_name: Optional[str] = None

  @property
  def encoder(self) -> encoder_lib.Encoder:
    return encoder_lib.Encoder(
        self.method, self.trans_dim, self.depth, self.num_heads, self.mlp_ratio,
        self.drop_path_rate, class_token=self.method.SEGMENTER_CLASS_TOKEN,
        freeze_bn_stats=self.freeze_bn_stats, remat_policy='inputs' if self.remat else 'all',
        dtype=self.dtype, axis_name=self.axis_name)

  def tokenize(self, points: Array) -> tuple[Array, Array]:
    """points [B, N, 3] → (neighborhood [B, G, K, 3], centers [B, G, 3])."""
    return tokenizer.group_points(points, self.num_group, self.group_size)

  def __call__(self, points: Array, category: Array, train: bool = False,
               query: Optional[Array] = None, valid: Optional[Array] = None) -> Array:
    """Per-point part logits.

    Args:
      points: [B, N, 3] the cloud the tokenizer sees.
      category: [B] int category of each shape.
      train: batch statistics, dropout, stochastic depth.
      query: [B, Q, 3] points to label (default: `points`); e.g. every point of a large cloud
        while the tokenizer sees a sample of it.
      valid: [B] bool, the real shapes of a padded batch (None: all).

    Returns:
      [B, N (or Q), num_parts] float32 logits (before log-softmax).
    """
    neighborhood, centers = self.tokenize(points)
    return self.from_groups(points if query is None else query, neighborhood, centers, category,
                            train, valid)

  @nn.compact
  def from_groups(self, query: Array, neighborhood: Array, centers: Array, category: Array,
                  train: bool = False, valid: Optional[Array] = None) -> Array:
    """query [B, Q, 3] points to label; neighborhood [B, G, K, 3]; centers [B, G, 3];
    category [B] → logits [B, Q, num_parts] float32."""
    out = self.encoder(self, neighborhood, centers, train, valid)
    features = [out.norm(out.patches(self.method, i)) for i in self.feature_blocks]
    f = jnp.concatenate(features, axis=-1)                               # [B, G, 3C]

    label = CategoryEmbed(self.num_classes, self.label_dims, self.axis_name, self.dtype,
                          name='label_conv')(category, train)
    per_shape = jnp.concatenate([max_over_tokens(f), jnp.mean(f, axis=1), label], axis=-1)
    h = FeaturePropagation(tuple(self.propagation_dims), self.axis_name, self.dtype,
                           name='propagation_0')(query, centers, f, train)

    def bn(name):
      return layers.TorchBatchNorm(use_running_average=not train, axis_name=self.axis_name,
                                   name=name)

    h = nn.relu(bn('bns1')(PointGlobalDense(self.head_dims[0], self.dtype, name='convs1')(
        h, per_shape)))
    h = nn.Dropout(self.head_dropout_rate, deterministic=not train)(h)
    h = layers.torch_dense(self.head_dims[1], h.shape[-1], 'convs2', self.dtype)(h)
    h = nn.relu(bn('bns2')(h))
    logits = layers.torch_dense(self.num_parts, h.shape[-1], 'convs3', self.dtype)(h)
    return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def model_fields(cfg: Any) -> dict[str, Any]:
  """Every field of a segmentation model section (optional ones filled in), JSON-able."""
  out = config_lib.read(cfg, SEG_MODEL_FIELDS, SEG_OPTIONAL_FIELDS)
  if config_lib.has(cfg, 'dapt'):  # written before model.peft reached segmentation
    out['peft'] = 'dapt' if config_lib.get(cfg, 'dapt') else 'full'
  return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in out.items()}


def check_config(cfg: Any) -> dict[str, Any]:
  """Checks a segmentation config's `model` section; returns the build arguments.

  Raises:
    ModelConfigError: with a one-line message naming the offending field.
  """
  v = model_fields(cfg)
  config_lib.check_backbone(v)
  for f in ('num_parts', 'num_classes', 'label_dims'):
    config_lib.positive_int(f, v[f])
  if v['num_group'] < INTERPOLATION_NEIGHBOURS:
    raise ModelConfigError(f"model.num_group={v['num_group']}: feature propagation needs at least "
                           f'{INTERPOLATION_NEIGHBOURS} centres')
  blocks = [int(i) for i in v['feature_blocks']]
  if not blocks or sorted(set(blocks)) != blocks or blocks[0] < 0 or blocks[-1] >= v['depth']:
    raise ModelConfigError(f"model.feature_blocks={v['feature_blocks']!r}: need increasing block "
                           f"indices in [0, {v['depth']})")
  for f, n in (('propagation_dims', None), ('head_dims', 2)):
    dims = v[f]
    if (not dims or (n is not None and len(dims) != n)
        or any(not isinstance(d, int) or d < 1 for d in dims)):
      raise ModelConfigError(f'model.{f}={dims!r}: need {n or "one or more"} positive widths')
  config_lib.rate('head_dropout_rate', v['head_dropout_rate'])
  method = peft.get(v['peft']).from_config(cfg, v)
  config_lib.check_x64(v)
  return dict(
      method=method, trans_dim=v['trans_dim'], depth=v['depth'], num_heads=v['num_heads'],
      mlp_ratio=float(v['mlp_ratio']), num_group=v['num_group'], group_size=v['group_size'],
      num_parts=v['num_parts'], num_classes=v['num_classes'],
      drop_path_rate=float(v['drop_path_rate']), freeze_bn_stats=bool(v['freeze_bn_stats']),
      dtype=config_lib.DTYPES[v['dtype']], feature_blocks=tuple(blocks),
      label_dims=v['label_dims'], propagation_dims=tuple(v['propagation_dims']),
      head_dims=tuple(v['head_dims']), head_dropout_rate=float(v['head_dropout_rate']),
      remat=bool(v['remat']))


def build_model(cfg: Any, axis_name: Optional[str] = None) -> PartSegmenter:
  """The segmentation network from a config's `model` section (mapping or ConfigDict)."""
  return PartSegmenter(axis_name=axis_name, **check_config(cfg))


def init_variables(net: PartSegmenter, key: jax.Array, num_points: int,
                   batch_size: int = 2) -> dict:
  """Initial {'params', 'batch_stats'} for clouds of `num_points` points.

  Runs the tokenizer on a dummy cloud, so `num_points` must be at least `num_group` and
  `group_size`.
  """
  config_lib.check_points(net, num_points)
  params_key, dropout_key, data_key = jax.random.split(key, 3)
  dummy = jax.random.normal(data_key, (batch_size, num_points, 3), jnp.float32)
  category = jnp.zeros((batch_size,), jnp.int32)
  return config_lib.init(net, params_key, dropout_key, dummy, category)


def trainable_rules(method: base.Method) -> base.Rules:
  """The partition rules of `method` on the segmenter."""
  return method.trainable_rules(HEAD_RULES)
