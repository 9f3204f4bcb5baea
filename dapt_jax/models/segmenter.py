"""The part-segmentation network: Point-MAE's segmentation model with DAPT inside the blocks
(SPEC §8.2, §8.6).

  points [B, N, 3] ─ FPS + kNN ─ patch encoder ─ blocks ─ features of blocks 3, 7, 11
     (each through the final LayerNorm, [B, G, 3C])
  global = [max over tokens, mean over tokens, category one-hot → label_conv]   [B, 6C + 64]
  per point: 3-NN inverse-distance interpolation of the features from the G centres
     → [xyz, interpolated] → propagation MLP (1536, 1024)
  head per point: [propagated 1024, global] → 512 → 256 → num_parts logits

`dapt=True` (the project's design, §8.6): DAPT blocks (scale-shifts, dynamic adapters, one internal
prompt per block), a scale-shift on the patch tokens, a class token and its position (so the prompt
is inserted at index 1 as in classification), position added once before block 0 (or before every
block with `pos_every_block`); the features of a block are its last G tokens, through the final
LayerNorm and the final scale-shift. `dapt=False` is exactly Point-MAE's segmentation network:
plain blocks, no class token, position added before every block — Point-MAE segmentation
checkpoints convert into it.

Parameter paths: docs/architecture.md ("Segmentation").
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import layers
from dapt_jax.models import tokenizer
from dapt_jax.models import transformer
from dapt_jax.models.classifier import ModelConfigError

Array = jax.Array

# Required fields of a segmentation config's `model` section (docs/architecture.md).
SEG_MODEL_FIELDS = ('trans_dim', 'depth', 'num_heads', 'mlp_ratio', 'encoder_dims', 'num_group',
                    'group_size', 'rank', 'num_parts', 'num_classes', 'drop_path_rate',
                    'drop_adapter_rate', 'freeze_bn_stats', 'dtype', 'dapt', 'pos_every_block',
                    'feature_blocks')
# Optional fields and their defaults (Point-MAE's widths).
SEG_OPTIONAL_FIELDS = {'label_dims': 64, 'propagation_dims': (1536, 1024), 'head_dims': (512, 256),
                       'head_dropout_rate': 0.5, 'remat': False}
# What trains with DAPT (SPEC §8.6): the classifier's set (class token and its position, every
# scale-shift, every adapter) plus the whole segmentation head. `partition.FULL_FINETUNE_RULES`
# trains everything (the `full` and `pointmae` variants).
DAPT_SEG_RULES = (
    (r'^cls_(token|pos)$', 'trainable'),
    (r'tfts/', 'trainable'),
    (r'/adapter/', 'trainable'),
    (r'^(label_conv|propagation_0|convs\d|bns\d)/', 'trainable'),
    (r'.*', 'frozen'),
)
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
  """Point-MAE's part-segmentation network, with or without DAPT in the blocks.

  Attributes mirror the config fields of docs/architecture.md ("Segmentation"); `axis_name` names
  the device axis inside pmap / shard_map so BatchNorm statistics are synchronised.
  """
  trans_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_group: int = 128
  group_size: int = 32
  rank: int = 32
  num_parts: int = 50
  num_classes: int = 16  # object categories (the one-hot fed to label_conv)
  drop_path_rate: float = 0.1
  drop_adapter_rate: float = 0.0
  freeze_bn_stats: bool = False
  dtype: Any = jnp.float32
  dapt: bool = True
  pos_every_block: bool = False
  feature_blocks: Sequence[int] = (3, 7, 11)
  label_dims: int = 64
  propagation_dims: Sequence[int] = (1536, 1024)
  head_dims: Sequence[int] = (512, 256)
  head_dropout_rate: float = 0.5
  remat: bool = False
  axis_name: Optional[str] = None

  def tokenize(self, points: Array) -> tuple[Array, Array]:
    """points [B, N, 3] → (neighborhood [B, G, K, 3], centers [B, G, 3])."""
    return tokenizer.group_points(points, self.num_group, self.group_size)

  def __call__(self, points: Array, category: Array, train: bool = False,
               query: Optional[Array] = None) -> Array:
    """Per-point part logits.

    Args:
      points: [B, N, 3] the cloud the tokenizer sees.
      category: [B] int category of each shape.
      train: batch statistics, dropout, stochastic depth.
      query: [B, Q, 3] points to label (default: `points`); e.g. every point of a large cloud
        while the tokenizer sees a sample of it.

    Returns:
      [B, N (or Q), num_parts] float32 logits (before log-softmax).
    """
    neighborhood, centers = self.tokenize(points)
    return self.from_groups(points if query is None else query, neighborhood, centers, category,
                            train)

  def _blocks(self, x: Array, pos: Array, train: bool) -> list[Array]:
    """Runs the blocks; returns the last G tokens of each block in `feature_blocks`."""
    g = pos.shape[1] - (1 if self.dapt else 0)
    rates = layers.drop_path_rates(self.drop_path_rate, self.depth)
    block_cls = transformer.DAPTBlock if self.dapt else transformer.Block
    if self.remat:  # recompute each block's activations in the backward pass
      block_cls = nn.remat(block_cls, static_argnums=(2,))

    def make(i):
      if self.dapt:
        return block_cls(self.num_heads, self.mlp_ratio, self.rank, rates[i],
                         self.drop_adapter_rate, self.dtype, name=f'blocks_{i}')
      return block_cls(self.num_heads, self.mlp_ratio, rates[i], self.dtype, name=f'blocks_{i}')

    features = []
    every = self.pos_every_block or not self.dapt
    if not every:
      x = x + pos
    for i in range(self.depth):
      if every:
        if self.dapt:  # [cls, prompts so far, patches]: the prompts have no position
          zeros = jnp.zeros((x.shape[0], i, x.shape[-1]), pos.dtype)
          x = make(i)(x + jnp.concatenate([pos[:, :1], zeros, pos[:, 1:]], 1), train)
        else:
          x = make(i)(x + pos, train)
      else:
        x = make(i)(x, train)
      if i in self.feature_blocks:
        features.append(x[:, -g:])
    return features

  @nn.compact
  def from_groups(self, query: Array, neighborhood: Array, centers: Array, category: Array,
                  train: bool = False) -> Array:
    """query [B, Q, 3] points to label; neighborhood [B, G, K, 3]; centers [B, G, 3];
    category [B] → logits [B, Q, num_parts] float32."""
    b = centers.shape[0]
    c = self.trans_dim
    encoder_running = (not train) or self.freeze_bn_stats
    tokens = tokenizer.PatchEncoder(c, encoder_running, self.axis_name, self.dtype,
                                    name='encoder')(neighborhood.astype(self.dtype))
    pos = tokenizer.PosEmbed(c, self.dtype, name='pos_embed')(centers.astype(self.dtype))
    if self.dapt:
      tokens = layers.ScaleShift(name='patch_tfts')(tokens)
      trunc = nn.initializers.truncated_normal(stddev=0.02)
      cls_token = self.param('cls_token', trunc, (1, 1, c))
      cls_pos = self.param('cls_pos', trunc, (1, 1, c))
      tokens = jnp.concatenate(
          [jnp.broadcast_to(cls_token, (b, 1, c)).astype(tokens.dtype), tokens], 1)
      pos = jnp.concatenate([jnp.broadcast_to(cls_pos, (b, 1, c)).astype(pos.dtype), pos], 1)

    norm = layers.layer_norm('norm', self.dtype)
    norm_tfts = layers.ScaleShift(name='norm_tfts') if self.dapt else (lambda v: v)
    features = [norm_tfts(norm(f)) for f in self._blocks(tokens, pos, train)]
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


def _get(cfg: Any, field: str) -> Any:
  if isinstance(cfg, Mapping):
    if field not in cfg:
      raise ModelConfigError(f'model config: missing field {field!r}')
    return cfg[field]
  if not hasattr(cfg, field):
    raise ModelConfigError(f'model config: missing field {field!r}')
  return getattr(cfg, field)


def model_fields(cfg: Any) -> dict[str, Any]:
  """Every field of a segmentation model section (optional ones filled in), JSON-able."""
  out = {f: _get(cfg, f) for f in SEG_MODEL_FIELDS}
  for field, default in SEG_OPTIONAL_FIELDS.items():
    try:
      out[field] = _get(cfg, field)
    except ModelConfigError:
      out[field] = default
  return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in out.items()}


def build_model(cfg: Any, axis_name: Optional[str] = None) -> PartSegmenter:
  """Builds the segmentation network from a config's `model` section (mapping or ConfigDict).

  Raises:
    ModelConfigError: with a one-line message naming the offending field.
  """
  v = model_fields(cfg)
  for f in ('trans_dim', 'depth', 'num_heads', 'num_group', 'group_size', 'rank', 'num_parts',
            'num_classes', 'label_dims'):
    if not isinstance(v[f], int) or isinstance(v[f], bool) or v[f] < 1:
      raise ModelConfigError(f'model.{f}={v[f]!r}: must be a positive integer')
  if v['encoder_dims'] != v['trans_dim']:
    raise ModelConfigError(f"model.encoder_dims={v['encoder_dims']} must equal "
                           f"model.trans_dim={v['trans_dim']} (the tokens feed the blocks directly)")
  if v['trans_dim'] % v['num_heads']:
    raise ModelConfigError(f"model.num_heads={v['num_heads']} must divide "
                           f"model.trans_dim={v['trans_dim']}")
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
  for f in ('drop_path_rate', 'drop_adapter_rate', 'head_dropout_rate'):
    if not 0.0 <= float(v[f]) < 1.0:
      raise ModelConfigError(f'model.{f}={v[f]!r}: must be in [0, 1)')
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}
  if v['dtype'] not in dtypes:
    raise ModelConfigError(f"model.dtype={v['dtype']!r}: must be one of {sorted(dtypes)}")
  return PartSegmenter(
      trans_dim=v['trans_dim'], depth=v['depth'], num_heads=v['num_heads'],
      mlp_ratio=float(v['mlp_ratio']), num_group=v['num_group'], group_size=v['group_size'],
      rank=v['rank'], num_parts=v['num_parts'], num_classes=v['num_classes'],
      drop_path_rate=float(v['drop_path_rate']), drop_adapter_rate=float(v['drop_adapter_rate']),
      freeze_bn_stats=bool(v['freeze_bn_stats']), dtype=dtypes[v['dtype']], dapt=bool(v['dapt']),
      pos_every_block=bool(v['pos_every_block']), feature_blocks=tuple(blocks),
      label_dims=v['label_dims'], propagation_dims=tuple(v['propagation_dims']),
      head_dims=tuple(v['head_dims']), head_dropout_rate=float(v['head_dropout_rate']),
      remat=bool(v['remat']), axis_name=axis_name)


def init_variables(net: PartSegmenter, key: jax.Array, num_points: int,
                   batch_size: int = 2) -> dict:
  """Initial {'params', 'batch_stats'} for clouds of `num_points` points.

  Runs the tokenizer on a dummy cloud, so `num_points` must be at least `num_group` and
  `group_size`.
  """
  if num_points < max(net.num_group, net.group_size):
    raise ModelConfigError(
        f'num_points={num_points} is smaller than model.num_group={net.num_group} or '
        f'model.group_size={net.group_size}')
  params_key, dropout_key, data_key = jax.random.split(key, 3)
  dummy = jax.random.normal(data_key, (batch_size, num_points, 3), jnp.float32)
  category = jnp.zeros((batch_size,), jnp.int32)
  variables = jax.jit(net.init, static_argnames='train')(
      {'params': params_key, 'dropout': dropout_key}, dummy, category, train=False)
  return {'params': variables['params'], 'batch_stats': variables['batch_stats']}

