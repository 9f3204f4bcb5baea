"""The masked autoencoder (dapt_jax.models.mae) against SPEC §6 and the independent PyTorch reference
(tests/torch_reference_mae.py).

Parity runs in float64 on both sides (JAX with x64 switched on by a fixture that restores the
flag afterwards), from the same groups and the same mask, with every weight and BatchNorm
statistic randomised. Tolerance: 1e-10 relative, measured per tensor as
max|jax − torch| / max|torch|. Both sides evaluate the same arithmetic in a different order;
float64 rounding (2^-53 ≈ 1.1e-16 per operation) accumulated over a few thousand operations stays
below 1e-12, so 1e-10 leaves two orders of magnitude on any x86-64 CPU, yet a wrong formula
(a missing position add, a halved loss, a wrong mask order) is off by far more.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dapt_jax.models import mae
from dapt_jax.models import classifier as model_lib
from dapt_jax import partition
from dapt_jax import pretrained

REL_TOL = 1e-10

TINY = dict(trans_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, encoder_dims=32, num_group=16,
            group_size=8, drop_path_rate=0.0, mask_ratio=0.6, mask_type='rand', decoder_depth=2,
            decoder_num_heads=2, dtype='float32')

FULL = dict(trans_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, encoder_dims=384, num_group=64,
            group_size=32, drop_path_rate=0.1, mask_ratio=0.6, mask_type='rand', decoder_depth=4,
            decoder_num_heads=6, dtype='float32')


def rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-300))


# ---------------------------------------------------------------------------------------------
# Sizes, names, masks, loss (no torch)


def test_full_size_counts_and_mask_size_match_spec():
  net = mae.build_model(FULL)
  assert net.num_mask == 38  # ⌊0.6 · 64⌋
  shapes = jax.eval_shape(lambda k: mae.init_variables(net, k, 1024), jax.random.PRNGKey(0))
  flat = partition.flatten(shapes['params'])
  assert len(flat) == 203
  assert sum(math.prod(x.shape) for x in flat.values()) == 29_006_432
  encoder = {p: x for p, x in flat.items() if not mae.is_pretrain_only(p)}
  assert sum(math.prod(x.shape) for x in encoder.values()) == 21_825_024
  assert len(partition.flatten(shapes['batch_stats'])) == 4


def test_encoder_paths_are_the_classifier_backbone_paths():
  net = mae.build_model(TINY)
  shapes = jax.eval_shape(lambda k: mae.init_variables(net, k, 64), jax.random.PRNGKey(0))
  cls_cfg = dict(trans_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, encoder_dims=32,
                 num_group=16, group_size=8, rank=4, num_classes=3, drop_path_rate=0.0,
                 drop_adapter_rate=0.0, head_tokens=('cls',), freeze_bn_stats=False,
                 dtype='float32')
  cls_net = model_lib.build_model(cls_cfg)
  cls_shapes = jax.eval_shape(lambda k: model_lib.init_variables(cls_net, k, 64),
                              jax.random.PRNGKey(0))
  for c in ('params', 'batch_stats'):
    enc = {p: x.shape for p, x in partition.flatten(shapes[c]).items()
           if not mae.is_pretrain_only(p)}
    backbone = {p: x.shape for p, x in partition.flatten(cls_shapes[c]).items()
                if not any(s in p for s in ('tfts', 'adapter/', 'cls_', 'head/'))}
    assert enc == backbone, c
  decoder_side = {p.split('/')[0] for p in partition.flatten(shapes['params'])
                  if mae.is_pretrain_only(p)}
  assert decoder_side == set(mae.PRETRAIN_ONLY_PREFIXES)


def test_pretrained_autoencoder_initialises_the_classifier_through_the_strict_merge():
  net = mae.build_model(TINY)
  variables = jax.tree.map(np.asarray, mae.init_variables(net, jax.random.PRNGKey(1), 64))
  cls_cfg = dict(trans_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, encoder_dims=32,
                 num_group=16, group_size=8, rank=4, num_classes=3, drop_path_rate=0.0,
                 drop_adapter_rate=0.0, head_tokens=('cls', 'patch'), freeze_bn_stats=False,
                 dtype='float32')
  cls_vars = jax.tree.map(np.asarray, model_lib.init_variables(
      model_lib.build_model(cls_cfg), jax.random.PRNGKey(2), 64))
  merged, report = pretrained.merge_pretrained(cls_vars, variables)
  flat = partition.flatten(merged['params'])
  src = partition.flatten(variables['params'])
  for p, x in src.items():
    if mae.is_pretrain_only(p):
      assert f'params/{p}' in report['ignored']
    else:
      np.testing.assert_array_equal(flat[p], x)
  np.testing.assert_array_equal(merged['batch_stats']['encoder']['bn1']['var'],
                                variables['batch_stats']['encoder']['bn1']['var'])
  assert 'params/blocks_0/adapter/up_proj/kernel' in report['freshly_initialised']
  # Anything else the classifier lacks is still an error.
  bad = {'params': dict(variables['params'], stray={'kernel': np.zeros(3)})}
  with pytest.raises(pretrained.PretrainedError, match='stray'):
    pretrained.merge_pretrained(cls_vars, bad)


def test_bad_configs_name_the_field():
  for field, value, match in (('mask_ratio', 0.0, 'mask_ratio'), ('mask_ratio', 1.0, 'mask_ratio'),
                              ('mask_type', 'grid', 'mask_type'),
                              ('decoder_num_heads', 5, 'decoder_num_heads'),
                              ('encoder_dims', 16, 'encoder_dims'), ('dtype', 'float16', 'dtype')):
    with pytest.raises(mae.MAEConfigError, match=match):
      mae.build_model(dict(TINY, **{field: value}))
  with pytest.raises(mae.MAEConfigError, match="missing field 'decoder_depth'"):
    mae.build_model({k: v for k, v in TINY.items() if k != 'decoder_depth'})


def test_random_masks_have_exactly_m_masked_and_are_uniform():
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  masks = np.asarray(jax.jit(lambda k: mae.make_masks(k, jnp.zeros((4000, 64, 3)), 38))(keys))
  assert masks.shape == (4000, 64) and (masks.sum(1) == 38).all()
  assert len({m.tobytes() for m in masks}) == 4000
  # Every group is masked with probability 38/64 ≈ 0.594; over 4000 draws the standard error is
  # 0.0078, so ±0.05 is more than 6 of them (a deterministic draw: the keys are fixed).
  assert np.abs(masks.mean(0) - 38 / 64).max() < 0.05


def test_block_mask_matches_reference_and_visible_tokens_keep_group_order():
  torch = pytest.importorskip('torch')
  from tests import torch_reference_mae as ref
  rng = np.random.default_rng(0)
  centers = rng.normal(size=(5, 64, 3))
  keys = jax.random.split(jax.random.PRNGKey(3), 5)
  got = np.asarray(mae.make_masks(keys, jnp.asarray(centers, jnp.float32), 38, 'block'))
  seeds = [int(mae.block_seed(k, 64)) for k in keys]
  want = ref.block_mask(torch.from_numpy(centers.astype(np.float32)), seeds, 38).numpy()
  np.testing.assert_array_equal(got, want)
  assert len(set(seeds)) > 1
  vis, masked = mae.split_by_mask(jnp.asarray(got), 38)
  for b in range(5):
    np.testing.assert_array_equal(np.asarray(vis[b]), np.flatnonzero(~got[b]))
    np.testing.assert_array_equal(np.asarray(masked[b]), np.flatnonzero(got[b]))


def test_chamfer_is_squared_and_not_halved():
  pred = jnp.asarray([[[[0.0, 0, 0], [2.0, 0, 0]]]])     # [B=1, M=1, K=2, 3]
  target = jnp.asarray([[[[0.0, 0, 0], [0.0, 0, 1.0]]]])
  # d1 = (0, min(4, 5)) → mean 2; d2 = (0, min(1, 5)) → mean 0.5.
  assert float(mae.chamfer_l2(pred, target)) == pytest.approx(2.5, abs=1e-6)
  # Partners are searched within a group only: swapping the groups of one side changes the loss.
  a = jnp.asarray([[[[0.0, 0, 0]], [[5.0, 0, 0]]]])
  b = jnp.asarray([[[[5.0, 0, 0]], [[0.0, 0, 0]]]])
  assert float(mae.chamfer_l2(a, a)) == 0.0
  assert float(mae.chamfer_l2(a, b)) == pytest.approx(50.0)


# ---------------------------------------------------------------------------------------------
# Parity with the PyTorch reference in float64

torch = pytest.importorskip('torch')
from convert import keymap  # noqa: E402
from tests import torch_reference_mae as ref  # noqa: E402
from tests.torch_reference import torch_group  # noqa: E402


def make_reference(seed=0, **overrides):
  kw = dict(trans_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_group=16, group_size=8,
            drop_path_rate=0.0, mask_ratio=0.6, decoder_depth=2, decoder_num_heads=2)
  kw.update(overrides)
  torch.manual_seed(seed)
  model = ref.TorchPointMAE(**kw).double()
  with torch.no_grad():  # nothing at its init value (LayerNorm 1/0 and zero biases hide bugs)
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.3 if p.dim() < 2 else 1.0 / math.sqrt(p.shape[-1]))
              + (1.0 if name.endswith(('norm1.weight', 'norm2.weight', 'norm.weight')) else 0.0))
    for name, b in model.named_buffers():
      if name.endswith('running_mean'):
        b.copy_(torch.randn_like(b) * 0.1)
      elif name.endswith('running_var'):
        b.copy_(torch.rand_like(b) + 0.5)
  return model, kw


def jax_variables(model, kw):
  """The reference's weights as Flax variables (float64), through the converter's key map."""
  sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}  # no aliasing
  out = {'params': {}, 'batch_stats': {}}
  for e in keymap.mae_entries(kw['depth'], kw['decoder_depth']):
    out[e.collection][e.path] = e.to_flax(sd[e.torch_key])
  return {c: partition.unflatten(v) for c, v in out.items()}


def jax_net(kw):
  return mae.MaskedAutoencoder(
      trans_dim=kw['trans_dim'], depth=kw['depth'], num_heads=kw['num_heads'],
      mlp_ratio=kw['mlp_ratio'], num_group=kw['num_group'], group_size=kw['group_size'],
      drop_path_rate=kw['drop_path_rate'], mask_ratio=kw['mask_ratio'],
      decoder_depth=kw['decoder_depth'], decoder_num_heads=kw['decoder_num_heads'],
      dtype=jnp.float64)


def groups_and_mask(kw, batch=3, num_points=96, seed=0):
  rng = np.random.default_rng(seed)
  pts = torch.from_numpy(rng.normal(size=(batch, num_points, 3)))
  neighborhood, center = torch_group(pts, kw['num_group'], kw['group_size'])
  gen = torch.Generator().manual_seed(seed)
  mask = ref.rand_mask(batch, kw['num_group'], int(kw['mask_ratio'] * kw['num_group']), gen)
  return neighborhood, center, mask


def test_forward_and_loss_match_reference_float64_train_and_eval(x64):
  model, kw = make_reference()
  net = jax_net(kw)
  variables = jax_variables(model, kw)
  neighborhood, center, mask = groups_and_mask(kw)
  args = (jnp.asarray(neighborhood.numpy()), jnp.asarray(center.numpy()),
          jnp.asarray(mask.numpy()))
  m = net.num_mask
  b = center.shape[0]

  # Training mode: BatchNorm on batch statistics, running averages updated (drop-path 0).
  model.train()
  pred_t, target_t = model.forward_from_groups(neighborhood, center, mask)
  loss_t = ref.chamfer_l2(pred_t, target_t)
  apply = jax.jit(functools.partial(net.apply, method=net.from_groups),
                  static_argnames=('train', 'mutable'))
  (pred, target), updates = apply(variables, *args, train=True, mutable=('batch_stats',))
  assert pred.dtype == jnp.float64
  assert rel_err(pred.reshape(b * m, -1, 3), pred_t.detach().numpy()) < REL_TOL
  np.testing.assert_array_equal(np.asarray(target).reshape(b * m, -1, 3), target_t.numpy())
  assert rel_err(mae.chamfer_l2(pred, target), loss_t.item()) < REL_TOL
  sd = model.state_dict()
  for bn, tkey in (('bn1', 'first_conv.1'), ('bn2', 'second_conv.1')):
    for leaf, tleaf in (('mean', 'running_mean'), ('var', 'running_var')):
      got = updates['batch_stats']['encoder'][bn][leaf]
      assert rel_err(got, sd[f'MAE_encoder.encoder.{tkey}.{tleaf}'].numpy()) < REL_TOL

  # Evaluation mode: running averages (those just updated on both sides).
  model.eval()
  variables = {'params': variables['params'], 'batch_stats': updates['batch_stats']}
  with torch.no_grad():
    loss_e = model.loss_from_groups(neighborhood, center, mask)
  pred, target = apply(variables, *args, train=False)
  assert rel_err(mae.chamfer_l2(pred, target), loss_e.item()) < REL_TOL
  assert abs(loss_e.item() - loss_t.item()) > 1e-6  # the two modes really differ


def test_loss_is_the_reference_chamfer_on_random_sets_with_ties(x64):
  rng = np.random.default_rng(1)
  pred = rng.normal(size=(4, 6, 8, 3))
  target = rng.normal(size=(4, 6, 8, 3))
  target[:, :, 1] = target[:, :, 0]  # exact duplicates: ties go to the first index
  pt = torch.from_numpy(pred).requires_grad_(True)
  tt = torch.from_numpy(target).requires_grad_(True)
  loss_t = ref.chamfer_l2(pt.reshape(24, 8, 3), tt.reshape(24, 8, 3))
  loss_t.backward()
  loss, (gp, gt) = jax.value_and_grad(mae.chamfer_l2, argnums=(0, 1))(jnp.asarray(pred),
                                                                       jnp.asarray(target))
  assert rel_err(loss, loss_t.item()) < REL_TOL
  assert rel_err(gp, pt.grad.numpy()) < REL_TOL
  assert rel_err(gt, tt.grad.numpy()) < REL_TOL
  # The duplicate that is never first gets no gradient from d2's side... only from d1 partners
  # that chose index 0: so its gradient is exactly the reference's (checked above) and zero
  # wherever the reference's is.
  np.testing.assert_array_equal(np.asarray(gt)[:, :, 1] == 0, tt.grad.numpy()[:, :, 1] == 0)


def test_gradients_match_reference_float64(x64):
  model, kw = make_reference(seed=4)
  net = jax_net(kw)
  variables = jax_variables(model, kw)
  neighborhood, center, mask = groups_and_mask(kw, seed=4)
  model.train()
  loss_t = model.loss_from_groups(neighborhood, center, mask)
  loss_t.backward()
  grads_t = {n: p.grad.numpy() for n, p in model.named_parameters()}

  def loss_fn(params):
    (pred, target), _ = net.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                  jnp.asarray(neighborhood.numpy()), jnp.asarray(center.numpy()),
                                  jnp.asarray(mask.numpy()), train=True, mutable=['batch_stats'],
                                  method=net.from_groups)
    return mae.chamfer_l2(pred, target)

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  assert rel_err(loss, loss_t.item()) < REL_TOL
  flat = partition.flatten(grads)
  scale = max(np.abs(g).max() for g in grads_t.values())
  checked = 0
  for e in keymap.mae_entries(kw['depth'], kw['decoder_depth']):
    if e.collection != 'params':
      continue
    got = e.to_torch(np.asarray(flat[e.path]))
    want = grads_t[e.torch_key]
    if e.path in ('encoder/fc1/bias', 'encoder/fc2/bias', 'encoder/fc3/bias'):
      # Zero gradient in exact arithmetic: fc1 and fc3 feed a training-mode BatchNorm (which
      # removes any per-channel constant), and fc2's bias shifts both the per-point features and
      # their max by the same constant, i.e. fc3's output by a per-channel constant. Both sides
      # give float64 noise, so compare against the model's gradient scale instead.
      assert np.abs(got).max() < 1e-12 * scale and np.abs(want).max() < 1e-12 * scale
    else:
      assert rel_err(got, want) < REL_TOL, e.name
    checked += 1
  assert checked == len(grads_t) and np.abs(grads_t['mask_token']).max() > 0


def test_full_forward_from_points_uses_the_models_grouping_and_mask():
  """`__call__` = tokenize → make_masks(keys) → from_groups (float32, same process)."""
  net = mae.build_model(dict(TINY, mask_type='block'))
  pts = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 3))
  keys = jax.random.split(jax.random.PRNGKey(1), 2)
  variables = mae.init_variables(net, jax.random.PRNGKey(2), 64)
  pred, target = net.apply(variables, pts, keys, train=False)
  nb, centers = net.tokenize(pts)
  mask = mae.make_masks(keys, centers, net.num_mask, 'block')
  pred2, target2 = net.apply(variables, nb, centers, mask, train=False, method=net.from_groups)
  np.testing.assert_array_equal(np.asarray(pred), np.asarray(pred2))
  np.testing.assert_array_equal(np.asarray(target), np.asarray(target2))
  assert pred.shape == (2, net.num_mask, 8, 3)


def test_init_follows_spec():
  """SPEC §6.3: encoder trunc-normal 0.02 / zero bias; decoder Xavier-uniform / zero bias;
  decoder_pos_embed and increase_dim PyTorch defaults; LayerNorm 1/0; mask token std 0.02."""
  cfg = dict(TINY, trans_dim=128, encoder_dims=128, num_heads=4, decoder_num_heads=4)
  net = mae.build_model(cfg)
  v = mae.init_variables(net, jax.random.PRNGKey(0), 64)
  p = {k: np.asarray(x) for k, x in partition.flatten(v['params']).items()}
  k = p['blocks_0/mlp/fc1/kernel']
  assert abs(k.std() - 0.02) < 0.001 and np.abs(k).max() > 0.06  # untruncated at 2 std
  assert not p['blocks_0/mlp/fc1/bias'].any() and not p['encoder/fc1/bias'].any()
  d = p['decoder/blocks_0/attn/qkv/kernel']              # [128, 384]
  bound = math.sqrt(6.0 / (128 + 384))
  assert np.abs(d).max() <= bound and abs(d.std() - bound / math.sqrt(3)) < 0.1 * bound
  assert not p['decoder/blocks_0/mlp/fc2/bias'].any()
  for name, fan_in in (('decoder_pos_embed/fc2', 128), ('increase_dim', 128)):
    b = 1.0 / math.sqrt(fan_in)
    assert np.abs(p[f'{name}/kernel']).max() <= b and np.abs(p[f'{name}/bias']).max() <= b
    assert p[f'{name}/bias'].any()
  for ln in ('norm', 'decoder/norm', 'blocks_1/norm2'):
    assert (p[f'{ln}/scale'] == 1).all() and not p[f'{ln}/bias'].any()
  assert abs(p['mask_token'].std() - 0.02) < 0.006
