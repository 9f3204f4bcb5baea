"""Point-MAE's masked autoencoder for pre-training (SPEC §6.2–6.3).

    points [B, N, 3] → FPS + kNN groups [B, G, K, 3] and centres [B, G, 3]
    mask [B, G] bool, exactly M = ⌊mask_ratio·G⌋ True per cloud (random or block)
    encoder: patch tokens of ALL groups → the G − M visible ones in group order → x + pos before
             every plain block → LayerNorm                                 [B, G − M, C]
    decoder: [visible, mask token × M] + decoder position of [visible, masked] centres before
             every plain block → LayerNorm of the last M tokens            [B, M, C]
    increase_dim: Dense C → 3K per token                                   [B, M, K, 3]
    loss: Chamfer L2 (squared distances) between each predicted group and its true group.

Because M is fixed, every shape is static (jit- and pmap-friendly); masks come from explicit keys.

The encoder's parameter paths (`encoder/*`, `pos_embed/*`, `blocks_i/*`, `norm/*`, and the
patch encoder's BatchNorm statistics) are exactly the DAPT classifier's backbone paths, so a
pre-trained tree initialises the classifier through `--config.init_from`; the pre-training-only
paths are `PRETRAIN_ONLY_PREFIXES` (docs/architecture.md lists them all).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from dapt_jax.models import config as config_lib
from dapt_jax.models import encoder as encoder_lib
from dapt_jax.models import layers
from dapt_jax.models import tokenizer
from dapt_jax.models import transformer
from dapt_jax.models.peft import full

Array = jax.Array

MASK_TYPES = ('rand', 'block')

# Top-level parameter names only the masked autoencoder has (its decoder side). A backbone made
# by pre-training carries them; a fine-tuning model does not, and ignores them when loading.
PRETRAIN_ONLY_PREFIXES = ('mask_token', 'decoder_pos_embed', 'decoder', 'increase_dim')

# The model fields a pre-training config's `model` section holds (docs/architecture.md).
MODEL_FIELDS = ('trans_dim', 'depth', 'num_heads', 'mlp_ratio', 'encoder_dims', 'num_group',
                'group_size', 'drop_path_rate', 'mask_ratio', 'mask_type', 'decoder_depth',
                'decoder_num_heads', 'dtype')


class MAEConfigError(config_lib.ModelConfigError):
  """A pre-training model config that cannot build a model; one-line message naming the field."""


def is_pretrain_only(path: str) -> bool:
  """Whether a `/`-joined parameter path belongs to the decoder side of the autoencoder."""
  return path.split('/', 1)[0] in PRETRAIN_ONLY_PREFIXES


def num_masked(num_group: int, mask_ratio: float) -> int:
  """M = ⌊mask_ratio · G⌋, as Point-MAE computes it (38 of 64 at ratio 0.6)."""
  return int(mask_ratio * num_group)


# ---------------------------------------------------------------------------------------------
# Masks and the loss (pure functions; one cloud at a time, batched with vmap)


def random_mask(key: Array, num_group: int, num_mask: int) -> Array:
  """Point-MAE's 'rand' mask for one cloud: `num_mask` of `num_group` groups, uniformly.

  Returns [G] bool (True = masked).
  """
  perm = jax.random.permutation(key, num_group)
  return jnp.zeros((num_group,), bool).at[perm[:num_mask]].set(True)


def block_mask_around(centers: Array, seed: Array, num_mask: int) -> Array:
  """The `num_mask` centres nearest to centre `seed` (itself included; Euclidean distance; ties
  by lower index). centers: [G, 3]; seed: scalar int. Returns [G] bool (True = masked)."""
  g = centers.shape[0]
  dist = jnp.sqrt(jnp.sum(jnp.square(centers[seed][None] - centers), axis=-1))
  order = jnp.argsort(dist, stable=True)
  return jnp.zeros((g,), bool).at[order[:num_mask]].set(True)


def block_seed(key: Array, num_group: int) -> Array:
  """The block mask's random centre: uniform over 0..G−1 (inclusive)."""
  return jax.random.randint(key, (), 0, num_group)


def block_mask(key: Array, centers: Array, num_mask: int) -> Array:
  """Point-MAE's 'block' mask for one cloud: a random centre and its `num_mask` nearest centres.

  centers: [G, 3]. Returns [G] bool (True = masked).
  """
  return block_mask_around(centers, block_seed(key, centers.shape[0]), num_mask)


def make_masks(keys: Array, centers: Array, num_mask: int, mask_type: str = 'rand') -> Array:
  """One mask per cloud from one key per cloud: keys [B], centers [B, G, 3] → [B, G] bool."""
  if mask_type == 'rand':
    return jax.vmap(lambda k: random_mask(k, centers.shape[1], num_mask))(keys)
  if mask_type == 'block':
    return jax.vmap(lambda k, c: block_mask(k, c, num_mask))(keys, centers)
  raise MAEConfigError(f'model.mask_type={mask_type!r}: must be one of {MASK_TYPES}')


def split_by_mask(mask: Array, num_mask: int) -> tuple[Array, Array]:
  """Indices of the visible and masked groups, each in ascending group order.

  mask: [B, G] bool with exactly `num_mask` True per row.
  Returns (visible [B, G − M] int32, masked [B, M] int32).
  """
  order = jnp.argsort(mask.astype(jnp.int32), axis=1, stable=True).astype(jnp.int32)
  g = mask.shape[1]
  return order[:, :g - num_mask], order[:, g - num_mask:]


def _nearest_sq_dist(a: Array, b: Array) -> Array:
  """For every point of `a` [..., P, 3], the squared distance to its nearest point of `b`
  [..., Q, 3] → [..., P]. The partner is the first index of the minimum (as the CUDA kernel),
  and the distance is recomputed from that partner, so the gradient is 2(a − b*) to exactly
  that one point, ties included."""
  diff = a[..., :, None, :] - b[..., None, :, :]                     # [..., P, Q, 3]
  sq = jnp.sum(diff * diff, axis=-1)
  partner = jnp.argmin(jax.lax.stop_gradient(sq), axis=-1)           # [..., P]
  nearest = jnp.take_along_axis(b, partner[..., None], axis=-2)      # [..., P, 3]
  d = a - nearest
  return jnp.sum(d * d, axis=-1)


def chamfer_l2_per_cloud(pred: Array, target: Array) -> Array:
  """Point-MAE's `cdl2` loss, per cloud: pred, target [B, M, K, 3] → [B].

  Per group, d1[i] = min_j ‖p_i − g_j‖² and d2[j] = min_i ‖g_j − p_i‖² (squared, no sqrt);
  a cloud's value is mean(d1) + mean(d2) over its M·K points each. The mean of this over the
  batch equals `cdl2` over all B·M groups (every cloud has the same number of points).
  """
  dtype = jnp.promote_types(pred.dtype, jnp.float32)  # bfloat16 → float32; float64 stays
  pred, target = pred.astype(dtype), target.astype(dtype)
  d1 = _nearest_sq_dist(pred, target)                                # [B, M, K]
  d2 = _nearest_sq_dist(target, pred)
  return jnp.mean(d1, axis=(1, 2)) + jnp.mean(d2, axis=(1, 2))


def chamfer_l2(pred: Array, target: Array) -> Array:
  """`cdl2` over the whole batch (scalar): mean of `chamfer_l2_per_cloud`."""
  return jnp.mean(chamfer_l2_per_cloud(pred, target))


# ---------------------------------------------------------------------------------------------
# The model


class DecoderPosEmbed(nn.Module):
  """Decoder position embedding: Linear 3→128, GELU, Linear 128→C, PyTorch's default init."""
  trans_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, centers: Array) -> Array:
    """centers: [B, T, 3] → [B, T, C]."""
    h = layers.torch_dense(128, 3, 'fc1', self.dtype)(centers)
    h = nn.gelu(h, approximate=False)
    return layers.torch_dense(self.trans_dim, 128, 'fc2', self.dtype)(h)


class MAEDecoder(nn.Module):
  """Plain blocks (Xavier-uniform kernels), each `x = block(x + pos)`; LayerNorm of the last
  `num_mask` tokens. x, pos: [B, T, C] → [B, M, C]."""
  depth: int
  num_heads: int
  mlp_ratio: float
  drop_path_rate: float
  num_mask: int
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: Array, pos: Array, train: bool) -> Array:
    policy = 'inputs' if self.remat else 'all'
    for i, rate in enumerate(layers.drop_path_rates(self.drop_path_rate, self.depth)):
      block = transformer.Block(self.num_heads, self.mlp_ratio, rate, self.dtype,
                                nn.initializers.xavier_uniform(), name=f'blocks_{i}')
      x = transformer.run_block(block, x + pos, None, train, policy)
    return layers.layer_norm('norm', self.dtype)(x[:, -self.num_mask:])


class MaskedAutoencoder(nn.Module):
  """Point-MAE pre-training model. Attributes mirror the config fields in MODEL_FIELDS.

  `axis_name` names the device axis inside pmap / shard_map (synchronised BatchNorm).
  """
  trans_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  num_group: int = 64
  group_size: int = 32
  drop_path_rate: float = 0.1
  mask_ratio: float = 0.6
  mask_type: str = 'rand'
  decoder_depth: int = 4
  decoder_num_heads: int = 6
  dtype: Any = jnp.float32
  axis_name: Optional[str] = None
  remat: bool = False

  @property
  def num_mask(self) -> int:
    return num_masked(self.num_group, self.mask_ratio)

  def tokenize(self, points: Array) -> tuple[Array, Array]:
    """points [B, N, 3] → (neighborhood [B, G, K, 3], centers [B, G, 3])."""
    return tokenizer.group_points(points, self.num_group, self.group_size)

  def __call__(self, points: Array, mask_keys: Array, train: bool = False
               ) -> tuple[Array, Array]:
    """points: [B, N, 3] float32; mask_keys: [B] keys, one per cloud.

    Returns (prediction, target), each [B, M, K, 3] float32 (centre-relative coordinates of the
    masked groups, ascending group order).
    """
    neighborhood, centers = self.tokenize(points)
    mask = make_masks(mask_keys, centers, self.num_mask, self.mask_type)
    return self.from_groups(neighborhood, centers, mask, train)

  @nn.compact
  def from_groups(self, neighborhood: Array, centers: Array, mask: Array, train: bool = False
                  ) -> tuple[Array, Array]:
    """neighborhood [B, G, K, 3], centers [B, G, 3], mask [B, G] bool (exactly M True per row)
    → (prediction, target) [B, M, K, 3]."""
    b, g, k, _ = neighborhood.shape
    c = self.trans_dim
    m = self.num_mask
    vis_idx, mask_idx = split_by_mask(mask, m)

    # Encoder: the patch encoder sees every group (its BatchNorm statistics span all B·G·K
    # points, as in Point-MAE); only the visible tokens enter the blocks.
    encoder = encoder_lib.Encoder(
        full.Method(), c, self.depth, self.num_heads, self.mlp_ratio, self.drop_path_rate,
        class_token=False, remat_policy='inputs' if self.remat else 'all', dtype=self.dtype,
        axis_name=self.axis_name)
    tokens = encoder.embed(neighborhood, train)
    x = jnp.take_along_axis(tokens, vis_idx[..., None], axis=1)               # [B, V, C]
    centers_vis = tokenizer.gather_points(centers, vis_idx)                     # [B, V, 3]
    centers_mask = tokenizer.gather_points(centers, mask_idx)                   # [B, M, 3]
    out = encoder.encode(self, x, centers_vis, train)
    x = out.norm(out.blocks[-1])

    # Decoder on [visible, mask tokens] with its own position embedding.
    mask_token = self.param('mask_token', layers.backbone_kernel_init, (1, 1, c))
    dec_pos = DecoderPosEmbed(c, self.dtype, name='decoder_pos_embed')
    pos_full = jnp.concatenate([dec_pos(centers_vis.astype(self.dtype)),
                                dec_pos(centers_mask.astype(self.dtype))], axis=1)
    x_full = jnp.concatenate([x, jnp.broadcast_to(mask_token, (b, m, c)).astype(x.dtype)], 1)
    y = MAEDecoder(self.decoder_depth, self.decoder_num_heads, self.mlp_ratio,
                   self.drop_path_rate, m, self.dtype, self.remat, name='decoder')(
                       x_full, pos_full.astype(x_full.dtype), train)        # [B, M, C]

    # Per token, 3K coordinates; channel 3k + d is coordinate d of point k.
    pred = layers.torch_dense(3 * k, c, 'increase_dim', self.dtype)(y)
    out_dtype = jnp.promote_types(pred.dtype, jnp.float32)
    pred = pred.astype(out_dtype).reshape(b, m, k, 3)
    target = jnp.take_along_axis(neighborhood, mask_idx[:, :, None, None], axis=1)
    return pred, target.astype(out_dtype)


# ---------------------------------------------------------------------------------------------
# Building from a config


def check_config(cfg: Any) -> dict[str, Any]:
  """Checks a pre-training config's `model` section; returns the build arguments.

  Raises:
    MAEConfigError: one line naming the offending field.
  """
  try:
    v = config_lib.read(cfg, MODEL_FIELDS, {'remat': False})
    config_lib.check_backbone(v, dtypes=('float32', 'bfloat16'))
    config_lib.positive_int('decoder_depth', v['decoder_depth'])
    config_lib.positive_int('decoder_num_heads', v['decoder_num_heads'])
  except config_lib.ModelConfigError as e:
    raise MAEConfigError(str(e)) from None
  if v['trans_dim'] % v['decoder_num_heads']:
    raise MAEConfigError(f"model.decoder_num_heads={v['decoder_num_heads']} must divide "
                         f"model.trans_dim={v['trans_dim']}")
  m = num_masked(v['num_group'], float(v['mask_ratio']))
  if not 0 < m < v['num_group']:
    raise MAEConfigError(f"model.mask_ratio={v['mask_ratio']!r}: masks {m} of "
                         f"{v['num_group']} groups; at least one must be masked and one visible")
  if v['mask_type'] not in MASK_TYPES:
    raise MAEConfigError(f"model.mask_type={v['mask_type']!r}: must be one of {MASK_TYPES}")
  return dict(
      trans_dim=v['trans_dim'], depth=v['depth'], num_heads=v['num_heads'],
      mlp_ratio=float(v['mlp_ratio']), num_group=v['num_group'], group_size=v['group_size'],
      drop_path_rate=float(v['drop_path_rate']), mask_ratio=float(v['mask_ratio']),
      mask_type=str(v['mask_type']), decoder_depth=v['decoder_depth'],
      decoder_num_heads=v['decoder_num_heads'], dtype=config_lib.DTYPES[v['dtype']],
      remat=bool(v['remat']))


def build_model(cfg: Any, axis_name: Optional[str] = None) -> MaskedAutoencoder:
  """The masked autoencoder from a pre-training config's `model` section."""
  return MaskedAutoencoder(axis_name=axis_name, **check_config(cfg))


def init_variables(net: MaskedAutoencoder, key: Array, num_points: int,
                   batch_size: int = 2) -> dict:
  """Initial {'params', 'batch_stats'} for clouds of `num_points` points."""
  try:
    config_lib.check_points(net, num_points)
  except config_lib.ModelConfigError as e:
    raise MAEConfigError(str(e)) from None
  params_key, dropout_key, data_key, mask_key = jax.random.split(key, 4)
  dummy = jax.random.normal(data_key, (batch_size, num_points, 3), jnp.float32)
  mask_keys = jax.random.split(mask_key, batch_size)
  return config_lib.init(net, params_key, dropout_key, dummy, mask_keys)
