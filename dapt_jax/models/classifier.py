"""The DAPT classifier: tokenizer → DAPT blocks → pooled tokens → head (SPEC §1–2)."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax import errors
from dapt_jax.models import layers
from dapt_jax.models import tokenizer
from dapt_jax.models import transformer

Array = jax.Array

HEAD_TOKENS = ('cls', 'prompt', 'patch')

# What each block keeps for the backward pass (model.remat_policy):
#   'matmuls'  the outputs of its weight matmuls (transformer.SAVED_NAMES); LayerNorms,
#              scale-shifts, GELU, softmax and the attention products are recomputed from them
#              and the block input (exact: the same operations run again on the same values);
#   'all'      whatever autodiff keeps (no recomputation);
#   'inputs'   the block input only: the whole block is recomputed (what `remat=True` selects).
REMAT_POLICIES = ('matmuls', 'all', 'inputs')


def _apply_block(block: nn.Module, x: Array, train: bool) -> Array:
  return block(x, train)


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


def run_block(block: nn.Module, x: Array, train: bool, policy: str) -> Array:
  """`block(x, train)`, keeping for the backward pass what `policy` says (REMAT_POLICIES).

  Recomputation alone is not enough: XLA may schedule a block's recomputation anywhere after the
  forward pass (an `optimization_barrier` does not survive XLA:CPU's early passes), and XLA:CPU
  moves all twelve to the start of the backward pass, where they are all live at once. So the
  backward pass is a custom VJP that first makes the saved activations depend on the incoming
  cotangent (`_after`): block i is recomputed only when the backward pass reaches it. Parameter
  paths are unchanged (the lifted transforms act on `block`'s own scope), and so are the values:
  the VJP is JAX's own, of the same function, on the same saved values.
  """
  if policy == 'all':
    return block(x, train)
  saveable = (jax.checkpoint_policies.save_only_these_names(*transformer.SAVED_NAMES)
              if policy == 'matmuls' else jax.checkpoint_policies.nothing_saveable)
  remat_apply = nn.remat(_apply_block, static_argnums=(2,), policy=saveable)

  def fwd(mdl, x, train):
    return nn.vjp(lambda m, v: remat_apply(m, v, train), mdl, x)

  def bwd(train, vjp_fn, y_t):
    del train
    return _after(vjp_fn, y_t)(y_t)

  ordered = nn.custom_vjp(_apply_block, forward_fn=fwd, backward_fn=bwd, nondiff_argnums=(2,))
  return ordered(block, x, train)


# The model fields a config's `model` section must hold (see docs/architecture.md).
MODEL_FIELDS = ('trans_dim', 'depth', 'num_heads', 'mlp_ratio', 'encoder_dims', 'num_group',
                'group_size', 'rank', 'num_classes', 'drop_path_rate', 'drop_adapter_rate',
                'head_tokens', 'freeze_bn_stats', 'dtype')


class ModelConfigError(errors.UserError, ValueError):
  """A model config that cannot build a model; the message is one line naming the field."""


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


class DAPTClassifier(nn.Module):
  """Point-MAE ViT-S encoder with DAPT's adapters, prompts and scale-shifts, and a head.

  Attributes mirror the config fields of docs/architecture.md. `axis_name` names the device axis
  when the model runs inside pmap / shard_map, so BatchNorm statistics are synchronised.
  """
  trans_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_group: int = 128
  group_size: int = 32
  rank: int = 64
  num_classes: int = 15
  drop_path_rate: float = 0.0
  drop_adapter_rate: float = 0.0
  head_tokens: Sequence[str] = HEAD_TOKENS
  freeze_bn_stats: bool = False
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  head_dropout_rate: float = 0.5  # the release's fixed head dropout; tests set 0 for parity
  remat: bool = False  # recompute each block's activations in the backward pass (less memory)
  remat_policy: str = 'matmuls'  # what blocks keep for the backward pass (REMAT_POLICIES)
  fps_impl: str = 'xla'  # farthest point sampling: 'xla' or 'pallas' (tokenizer.fps)

  def tokenize(self, points: Array) -> tuple[Array, Array]:
    """points [B, N, 3] → (neighborhood [B, G, K, 3], centers [B, G, 3])."""
    return tokenizer.group_points(points, self.num_group, self.group_size, self.fps_impl)

  def __call__(self, points: Array, train: bool = False) -> Array:
    """points: [B, N, 3] float32 → logits [B, num_classes] float32 (float64 for dtype float64)."""
    points = points.astype(jnp.promote_types(points.dtype, self.dtype))  # float64 model: FPS too
    neighborhood, centers = self.tokenize(points)
    return self.from_groups(neighborhood, centers, train)

  @nn.compact
  def from_groups(self, neighborhood: Array, centers: Array, train: bool = False) -> Array:
    """neighborhood: [B, G, K, 3] relative coordinates; centers: [B, G, 3] → logits."""
    b = centers.shape[0]
    c = self.trans_dim
    g = centers.shape[1]
    encoder_running = (not train) or self.freeze_bn_stats
    tokens = tokenizer.PatchEncoder(c, encoder_running, self.axis_name, self.dtype,
                                    name='encoder')(neighborhood.astype(self.dtype))
    tokens = layers.ScaleShift(name='patch_tfts')(tokens)
    trunc = nn.initializers.truncated_normal(stddev=0.02)
    cls_token = self.param('cls_token', trunc, (1, 1, c))
    cls_pos = self.param('cls_pos', trunc, (1, 1, c))
    pos = tokenizer.PosEmbed(c, self.dtype, name='pos_embed')(centers.astype(self.dtype))

    x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, c)).astype(tokens.dtype), tokens], 1)
    pos = jnp.concatenate([jnp.broadcast_to(cls_pos, (b, 1, c)).astype(pos.dtype), pos], 1)
    x = x + pos

    policy = 'inputs' if self.remat else self.remat_policy
    for i, rate in enumerate(layers.drop_path_rates(self.drop_path_rate, self.depth)):
      block = transformer.DAPTBlock(self.num_heads, self.mlp_ratio, self.rank, rate,
                                    self.drop_adapter_rate, self.dtype, name=f'blocks_{i}')
      x = run_block(block, x, train, policy)

    x = layers.ScaleShift(name='norm_tfts')(layers.layer_norm('norm', self.dtype)(x))
    features = []
    if 'cls' in self.head_tokens:
      features.append(x[:, 0])
    if 'prompt' in self.head_tokens:
      features.append(jnp.mean(x[:, 1:-g], axis=1))
    if 'patch' in self.head_tokens:
      features.append(jnp.max(x[:, -g:], axis=1))
    f = jnp.concatenate(features, axis=-1)
    return ClassifierHead(self.num_classes, self.head_dropout_rate, self.axis_name, self.dtype,
                          name='head')(f, train)


def _get(cfg: Any, field: str) -> Any:
  if isinstance(cfg, Mapping):
    if field not in cfg:
      raise ModelConfigError(f'model config: missing field {field!r}')
    return cfg[field]
  if not hasattr(cfg, field):
    raise ModelConfigError(f'model config: missing field {field!r}')
  return getattr(cfg, field)


def build_model(cfg: Any, axis_name: Optional[str] = None) -> DAPTClassifier:
  """Builds the classifier from a config's `model` section (a mapping or ConfigDict).

  Raises:
    ModelConfigError: with a one-line message naming the offending field.
  """
  v = {f: _get(cfg, f) for f in MODEL_FIELDS}
  # Optional fields (older configs and converted-checkpoint configs may not carry them).
  optional = {}
  for field, default in (('head_dropout_rate', 0.5), ('remat', False), ('peft', 'dapt'),
                         ('remat_policy', 'matmuls'), ('fps_impl', 'xla')):
    try:
      optional[field] = _get(cfg, field)
    except ModelConfigError:
      optional[field] = default
  head_tokens = tuple(v['head_tokens'])
  if not head_tokens or any(t not in HEAD_TOKENS for t in head_tokens):
    raise ModelConfigError(
        f'model.head_tokens={head_tokens!r}: choose a non-empty subset of {HEAD_TOKENS}')
  if len(set(head_tokens)) != len(head_tokens):
    raise ModelConfigError(f'model.head_tokens={head_tokens!r}: duplicate entries')
  if v['encoder_dims'] != v['trans_dim']:
    raise ModelConfigError(f"model.encoder_dims={v['encoder_dims']} must equal "
                           f"model.trans_dim={v['trans_dim']} (the tokens feed the blocks directly)")
  for f in ('trans_dim', 'depth', 'num_heads', 'num_group', 'group_size', 'rank', 'num_classes'):
    if not isinstance(v[f], int) or v[f] < 1:
      raise ModelConfigError(f'model.{f}={v[f]!r}: must be a positive integer')
  if v['trans_dim'] % v['num_heads']:
    raise ModelConfigError(f"model.num_heads={v['num_heads']} must divide "
                           f"model.trans_dim={v['trans_dim']}")
  for f in ('drop_path_rate', 'drop_adapter_rate'):
    if not 0.0 <= float(v[f]) < 1.0:
      raise ModelConfigError(f'model.{f}={v[f]!r}: must be in [0, 1)')
  if optional['remat_policy'] not in REMAT_POLICIES:
    raise ModelConfigError(f"model.remat_policy={optional['remat_policy']!r}: must be one of "
                           f'{REMAT_POLICIES}')
  if optional['fps_impl'] not in tokenizer.FPS_IMPLS:
    raise ModelConfigError(f"model.fps_impl={optional['fps_impl']!r}: must be one of "
                           f'{tokenizer.FPS_IMPLS}')
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}
  if v['dtype'] not in dtypes:
    raise ModelConfigError(f"model.dtype={v['dtype']!r}: must be one of {sorted(dtypes)}")
  if v['dtype'] == 'float64' and not jax.config.jax_enable_x64:
    raise ModelConfigError("model.dtype='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1")
  # Keep the tokens in the order the head concatenates them, whatever order the config lists.
  head_tokens = tuple(t for t in HEAD_TOKENS if t in head_tokens)
  if optional['peft'] != 'dapt':  # the other PEFT methods, on Point-MAE's plain backbone
    from dapt_jax.models import peft  # pylint: disable=g-import-not-at-top
    return peft.build_classifier(
        cfg, optional['peft'], axis_name=axis_name, trans_dim=v['trans_dim'], depth=v['depth'],
        num_heads=v['num_heads'], mlp_ratio=float(v['mlp_ratio']), num_group=v['num_group'],
        group_size=v['group_size'], num_classes=v['num_classes'],
        drop_path_rate=float(v['drop_path_rate']), freeze_bn_stats=bool(v['freeze_bn_stats']),
        dtype=dtypes[v['dtype']], head_dropout_rate=float(optional['head_dropout_rate']),
        remat=bool(optional['remat']))
  return DAPTClassifier(
      trans_dim=v['trans_dim'], depth=v['depth'], num_heads=v['num_heads'],
      mlp_ratio=float(v['mlp_ratio']), num_group=v['num_group'], group_size=v['group_size'],
      rank=v['rank'], num_classes=v['num_classes'],
      drop_path_rate=float(v['drop_path_rate']),
      drop_adapter_rate=float(v['drop_adapter_rate']), head_tokens=head_tokens,
      freeze_bn_stats=bool(v['freeze_bn_stats']), dtype=dtypes[v['dtype']], axis_name=axis_name,
      head_dropout_rate=float(optional['head_dropout_rate']), remat=bool(optional['remat']),
      remat_policy=optional['remat_policy'], fps_impl=optional['fps_impl'])


def init_variables(net: DAPTClassifier, key: jax.Array, num_points: int,
                   batch_size: int = 2) -> dict:
  """Initial {'params', 'batch_stats'} for a cloud of `num_points` points.

  Runs the tokenizer on a dummy cloud, so `num_points` must be at least `num_group` and
  `group_size`. Variables are float32 (float64 when the model's dtype is float64).
  """
  if num_points < max(net.num_group, net.group_size):
    raise ModelConfigError(
        f'num_points={num_points} is smaller than model.num_group={net.num_group} or '
        f'model.group_size={net.group_size}')
  params_key, dropout_key, data_key = jax.random.split(key, 3)
  dummy = jax.random.normal(data_key, (batch_size, num_points, 3), jnp.float32)
  variables = jax.jit(net.init, static_argnames='train')(
      {'params': params_key, 'dropout': dropout_key}, dummy, train=False)
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  if net.dtype == jnp.float64:  # float64 checks: parameters and statistics in float64 as well
    variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
  return variables
