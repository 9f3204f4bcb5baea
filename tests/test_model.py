"""The Flax model against SPEC §4's parameter counts and the independent PyTorch reference.

Parity is checked in float64 on both sides (JAX under `jax.enable_x64`, the reference in
`.double()`), so the tolerances come from float64 rounding and hold on any CPU; see F64_RTOL.
One float32 check (F32_RTOL) confirms that the float32 model, as trained, agrees to within float32
rounding.
"""
import copy
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dapt_jax.models import classifier as model_lib
from dapt_jax import partition

# (config file, variant) → (trainable, total) from SPEC §4.
SPEC_COUNTS = {
    ('scanobjectnn', 'objbg'): (1_087_771, 22_912_795),
    ('scanobjectnn', 'objonly'): (989_467, 22_814_491),
    ('scanobjectnn', 'hardest'): (1_087_771, 22_912_795),
    ('modelnet40', None): (1_069_716, 22_894_740),
}

TINY = dict(trans_dim=48, depth=3, num_heads=4, mlp_ratio=4.0, encoder_dims=48, num_group=16,
            group_size=8, rank=8, num_classes=5, drop_path_rate=0.0, drop_adapter_rate=0.0,
            head_tokens=('cls', 'prompt', 'patch'), freeze_bn_stats=False, dtype='float32')


def load_config(name, variant=None):
  return importlib.import_module(f'configs.{name}').get_config(variant)


@pytest.mark.parametrize('name,variant', list(SPEC_COUNTS))
def test_parameter_counts_match_spec(name, variant):
  cfg = load_config(name, variant)
  net = model_lib.build_model(cfg.model)
  shapes = jax.eval_shape(lambda k: model_lib.init_variables(net, k, cfg.data.num_points),
                          jax.random.PRNGKey(0))
  labels = partition.label_params(shapes['params'], partition.rules_for(cfg))
  counts = partition.count(shapes['params'], labels)
  assert (counts['total']['trainable'], counts['total']['total']) == SPEC_COUNTS[(name, variant)]
  # Scale-shift pairs alone: 112,128 (SPEC §2).
  tfts = sum(math.prod(x.shape) for p, x in partition.flatten(shapes['params']).items()
             if 'tfts/' in p)
  assert tfts == 112_128


def test_bad_model_config_gives_one_line_error():
  bad = dict(TINY, head_tokens=('cls', 'mean'))
  with pytest.raises(model_lib.ModelConfigError, match='head_tokens'):
    model_lib.build_model(bad)
  with pytest.raises(model_lib.ModelConfigError, match='num_heads'):
    model_lib.build_model(dict(TINY, num_heads=5))
  with pytest.raises(model_lib.ModelConfigError, match="missing field 'rank'"):
    model_lib.build_model({k: v for k, v in TINY.items() if k != 'rank'})


# ---------------------------------------------------------------------------------------------
# Parity with the PyTorch reference (torch is a test-only dependency).
#
# Why float64: in float32 the rounding of long sums depends on the order in which XLA and PyTorch
# add terms, which varies with the CPU's vector width (AVX2, AVX-512) and the library's blocking,
# so a float32 tolerance tight enough to catch a bug is either loose or tuned to one machine.
# In float64 the same differences are ~1e9 times smaller.
#
# F64_RTOL, derived: unit roundoff u = 2**-53 = 1.1e-16. The standard worst-case bound for a sum of
# n terms is n·u relative to the sum of their magnitudes. The longest sum in these models has
# n = 1536 terms (the MLP's fc2 at full size; 512 for the tiny model's encoder), so one layer is off
# by at most ~1.7e-13; the full-size forward is ~110 layers deep (4 encoder, 12 blocks × 9, 3 head),
# which compounds to ~2e-11 if every layer's error added up in the worst direction. Normalisation
# (LayerNorm, BatchNorm divide by a standard deviation) and the cancellation in gradients (sums of
# terms of both signs over the batch and tokens) amplify relative error by the ratio of the summed
# magnitudes to the result, measured below 1e3 here; rounding errors add like a random walk, so the
# observed errors are ~1e-14..1e-12. 1e-10 is above all of that on any IEEE-754 CPU and far below
# what a real discrepancy gives (a wrong epsilon, a missing term or a transposed weight: >= 1e-6).
F64_RTOL = 1e-10
# F32_RTOL, derived the same way for the float32 model against the float64 reference (so only the
# float32 side rounds): unit roundoff 2**-24 = 6.0e-8 (machine epsilon 1.19e-7 / 2) × 512 summed
# terms (the tiny model's longest sum) × ~30 layers (4 encoder, 3 blocks × 9, 3 head) = 9.2e-4
# worst case relative to the largest logit, with no cancellation in an eval-mode forward pass. We
# use 1e-3: loose for a parity check (float64 does that), but a bfloat16 path (u = 3.9e-3) or a
# missing cast would break it.
F32_RTOL = 1e-3

torch = pytest.importorskip('torch')
from tests import release_weights  # noqa: E402
from tests import torch_reference  # noqa: E402


def make_reference(cfg, seed=0):
  """A reference model with every weight and BatchNorm statistic randomised (nothing zero)."""
  torch.manual_seed(seed)
  kwargs = {k: cfg[k] for k in ('trans_dim', 'depth', 'num_heads', 'mlp_ratio', 'num_group',
                                'group_size', 'rank', 'num_classes', 'drop_path_rate',
                                'drop_adapter_rate', 'head_tokens')}
  ref = torch_reference.TorchDAPT(**kwargs)
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if 'up_proj' in name:  # zero at init: randomise so the adapters do something
        p.normal_(0.0, 0.05)
    for name, b in ref.named_buffers():
      if name.endswith('running_mean'):
        b.normal_(0.0, 0.1)
      elif name.endswith('running_var'):
        b.uniform_(0.5, 1.5)
  return ref


def flax_from_reference(cfg, ref, head_dropout_rate=0.5, dtype=jnp.float64):
  """The Flax model (computing in `dtype`) and variables holding `ref`'s weights.

  Under the x64 fixture `ref` is cast to float64 (in place).
  The reference is initialised in float32, so its weights convert exactly and both sides start
  from identical values whatever they then compute in.
  """
  net = model_lib.build_model(cfg).clone(head_dropout_rate=head_dropout_rate, dtype=dtype)
  variables = release_weights.torch_to_flax(ref.state_dict(), cfg['depth'])
  # Every Flax variable must be filled, with its own shape.
  shapes = jax.eval_shape(lambda k: model_lib.init_variables(net, k, 128), jax.random.PRNGKey(0))
  for col in ('params', 'batch_stats'):
    want = {p: s.shape for p, s in partition.flatten(shapes[col]).items()}
    got = {p: v.shape for p, v in partition.flatten(variables[col]).items()}
    assert got == want
  if dtype == jnp.float64:
    assert jax.config.jax_enable_x64, 'float64 parity needs the x64 fixture'
  if jax.config.jax_enable_x64:
    ref.double()  # the reference always computes in float64 where JAX can hold its results
  return net, jax.tree.map(lambda v: jnp.asarray(v, dtype), variables)


def random_clouds(batch, n, seed, dtype=np.float64):
  return np.random.default_rng(seed).normal(size=(batch, n, 3)).astype(np.float32).astype(dtype)


def relative_error(got, want):
  """max|got − want| / max|want| (one number per tensor)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  return np.abs(got - want).max() / np.abs(want).max()


def _eval_logits(cfg, seed, batch, n, dtype=jnp.float64):
  ref = make_reference(cfg, seed=seed).eval()
  net, variables = flax_from_reference(cfg, ref, dtype=dtype)
  pts = random_clouds(batch, n, seed)
  with torch.no_grad():
    want = ref(torch.from_numpy(pts).double()).numpy()
  got = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(
      variables, pts.astype(dtype)))
  assert got.dtype == dtype and want.dtype == np.float64
  return got, want


def test_eval_logits_match_reference_tiny(x64):
  got, want = _eval_logits(TINY, seed=0, batch=4, n=128)
  assert relative_error(got, want) <= F64_RTOL


@pytest.mark.parametrize('head_tokens', [('cls', 'prompt'), ('cls', 'patch'), ('prompt',)])
def test_eval_logits_match_reference_head_token_choices(x64, head_tokens):
  got, want = _eval_logits(dict(TINY, head_tokens=head_tokens, depth=2), seed=1, batch=2, n=96)
  assert relative_error(got, want) <= F64_RTOL


def test_eval_logits_match_reference_full_size_pb_t50_rs(x64):
  cfg = dict(load_config('scanobjectnn', 'hardest').model)
  got, want = _eval_logits(cfg, seed=2, batch=2, n=2048)
  assert got.shape == (2, 15)
  assert relative_error(got, want) <= F64_RTOL


def test_float32_model_agrees_with_float64_reference_to_float32_rounding(x64):
  """The model as trained (float32) against the float64 reference; see F32_RTOL."""
  got, want = _eval_logits(TINY, seed=0, batch=4, n=128, dtype=jnp.float32)
  err = relative_error(got, want)
  assert err <= F32_RTOL
  assert err > 1e-12  # it really computed in float32 (float64 would agree to ~1e-15)


def _train_mode_pair(seed=3):
  ref = make_reference(TINY, seed=seed).train()
  ref.cls_head_finetune[3].p = 0.0
  ref.cls_head_finetune[7].p = 0.0
  net, variables = flax_from_reference(TINY, ref, head_dropout_rate=0.0)
  return ref, net, variables


def test_train_mode_forward_and_batchnorm_statistics_match_reference(x64):
  ref, net, variables = _train_mode_pair()
  pts = random_clouds(6, 128, 3)
  want = ref(torch.from_numpy(pts)).detach().numpy()
  got, updates = net.apply(variables, pts, train=True, mutable=['batch_stats'],
                           rngs={'dropout': jax.random.PRNGKey(0)})
  assert relative_error(got, want) <= F64_RTOL
  new_stats = {k: v.double() for k, v in ref.state_dict().items()}
  flat_want = partition.flatten(release_weights.torch_to_flax(new_stats, TINY['depth'],
                                                               np.float64)['batch_stats'])
  flat_got = partition.flatten(updates['batch_stats'])
  assert set(flat_got) == set(flat_want)
  for path, value in flat_want.items():
    old = partition.flatten(variables['batch_stats'])[path]
    assert not np.allclose(old, value)  # the statistics did move
    assert relative_error(flat_got[path], value) <= F64_RTOL, path


def test_frozen_bn_statistics_switch_keeps_encoder_statistics():
  cfg = dict(TINY, freeze_bn_stats=True)
  ref = make_reference(cfg, seed=4)
  net, variables = flax_from_reference(cfg, ref, head_dropout_rate=0.0, dtype=jnp.float32)
  _, updates = net.apply(variables, random_clouds(4, 128, 4, np.float32), train=True,
                         mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)})
  before = partition.flatten(variables['batch_stats'])
  after = partition.flatten(updates['batch_stats'])
  for path in before:
    moved = not np.array_equal(np.asarray(before[path]), np.asarray(after[path]))
    assert moved == path.startswith('head/'), path


# Gradients that are exactly zero in exact arithmetic, so only rounding noise is left on both
# sides and a relative comparison would compare noise with noise:
# - in training mode a bias right before a BatchNorm (the head's fc1 and fc2 biases) and the final
#   scale-shift's beta (it shifts every sample's head input by the same vector, so fc1's output by
#   the same vector) are removed by the BatchNorm's batch-mean subtraction;
# - the key third of each attention's qkv scale-shift beta adds q·beta_k to every logit of a query
#   row alike, and the softmax is invariant to that.
# These must be ~0 relative to the gradient scale (the largest gradient entry of any trainable
# tensor): their rounding noise is bounded like any other gradient's error, by F64_RTOL.
ZERO_GRADIENT = ('cls_head_finetune.0.bias', 'cls_head_finetune.4.bias', 'tfts_beta_2')


def _zero_part(name, width):
  """Index of the entries of release parameter `name` whose true gradient is zero, or None."""
  if name in ZERO_GRADIENT:
    return slice(None)
  if name.endswith('attn.tfts_beta_1'):  # [3C] laid out as q, k, v
    return slice(width, 2 * width)
  return None


def test_gradients_of_trainable_parameters_match_reference(x64):
  ref, net, variables = _train_mode_pair(seed=5)
  ref64 = copy.deepcopy(ref).double()
  labels = np.array([0, 1, 2, 3, 4, 0])
  pts = random_clouds(6, 128, 5)
  for r, x in ((ref, torch.from_numpy(pts)), (ref64, torch.from_numpy(pts).double())):
    torch_reference.set_release_trainable(r)
    torch.nn.functional.cross_entropy(r(x), torch.from_numpy(labels)).backward()
  grads64 = dict(ref64.named_parameters())

  rules = partition.DAPT_RULES
  param_labels = partition.label_params(variables['params'], rules)
  trainable, frozen = partition.split(variables['params'], param_labels)

  def loss_fn(trainable):
    out, _ = net.apply({'params': partition.merge(trainable, frozen),
                        'batch_stats': variables['batch_stats']}, pts, train=True,
                       mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)})
    return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

  grads = partition.flatten(jax.jit(jax.grad(loss_fn))(trainable))
  key_map = release_weights.flax_key_for_torch_param(TINY['depth'])
  torch_trainable = torch_reference.trainable_names(ref)
  assert sorted(key_map[n] for n in torch_trainable) == sorted(grads)
  for name, p in ref.named_parameters():
    if name not in torch_trainable:
      continue
    want32 = p.grad.numpy().astype(np.float64)
    want = grads64[name].grad.numpy()
    got = np.asarray(grads[key_map[name]], np.float64)
    if want.ndim == 2:
      got = got.T
    got = got.reshape(want.shape)
    if name in ZERO_GRADIENT:
      # Mathematically zero: every side must be rounding noise.
      assert max(np.abs(want32).max(), np.abs(got).max()) <= 1e-6, name
      assert np.abs(want).max() <= 1e-12, name
      continue
    scale = np.abs(want).max()
    assert scale > 1e-5, name
    rel = np.abs(got - want).max() / scale
    torch_rel = np.abs(want32 - want).max() / scale
    assert rel <= max(1e-4, 4 * torch_rel), (
        f'{name}: relative error {rel:.2e} (PyTorch float32: {torch_rel:.2e})')


REMAT_CFG = dict(TINY, depth=2, drop_path_rate=0.2, drop_adapter_rate=0.3)


def _remat_loss_and_grads(net, params, batch_stats, pts, weights):
  def loss(p):
    out, _ = net.apply({'params': p, 'batch_stats': batch_stats}, pts, train=True,
                       mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(1)})
    return jnp.sum(out * weights), out
  # Jitted: op-by-op dispatch of the whole model is far slower than compiling it once.
  (_, out), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return out, g


@pytest.fixture(scope='module')
def no_remat_reference():
  """Inputs, logits and gradients of `remat_policy='all'` (nothing recomputed), computed once."""
  net = model_lib.build_model(dict(REMAT_CFG, remat_policy='all')).clone(head_dropout_rate=0.0)
  variables = model_lib.init_variables(net, jax.random.PRNGKey(0), 96)
  flat = partition.flatten(variables['params'])
  rng = np.random.default_rng(0)
  for path in flat:
    if 'up_proj' in path:  # zero at init: make the adapters do something
      flat[path] = rng.normal(0.0, 0.05, flat[path].shape).astype(np.float32)
  params = partition.unflatten(flat)
  pts = random_clouds(8, 96, 7)
  weights = rng.normal(size=(8, TINY['num_classes'])).astype(np.float32)
  inputs = (params, variables['batch_stats'], pts, weights)
  return inputs, _remat_loss_and_grads(net, *inputs)


@pytest.mark.parametrize('overrides', [{'remat_policy': 'matmuls'}, {'remat_policy': 'inputs'},
                                       {'remat': True}])
def test_remat_changes_nothing_but_memory(overrides, no_remat_reference):
  """Recomputing block activations (`model.remat_policy`, `model.remat`) changes no value:
  logits and gradients equal those of `remat_policy='all'`, with dropout and stochastic depth on
  (the recomputation must draw the forward pass's masks: a different mask would change the
  gradients by O(1)). Tolerance: recomputation may fuse differently, and the head's training-mode
  BatchNorm over 4 samples amplifies float32 rounding, so 1e-4 of the largest gradient entry."""
  inputs, (out, g) = no_remat_reference
  net_remat = model_lib.build_model(dict(REMAT_CFG, **overrides)).clone(head_dropout_rate=0.0)
  out_remat, g_remat = _remat_loss_and_grads(net_remat, *inputs)
  np.testing.assert_allclose(np.asarray(out_remat), np.asarray(out), atol=1e-4 * np.abs(out).max())
  assert jax.tree.structure(g) == jax.tree.structure(g_remat)
  scale = max(np.abs(a).max() for a in jax.tree.leaves(g))
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4 * scale, rtol=0)


def test_unknown_remat_policy_is_a_config_error():
  with pytest.raises(model_lib.ModelConfigError, match='remat_policy'):
    model_lib.build_model(dict(TINY, remat_policy='dots'))
