"""The Flax model against SPEC §4's parameter counts and the independent PyTorch reference.

Tolerances: logits ≤ 1e-4 max abs difference (float32); BatchNorm running statistics ≤ 1e-5
max abs; gradients against the reference in float64: ≤ 1e-4 relative error per parameter tensor,
max|g_flax − g_torch64| / max|g_torch64|, or 4 × PyTorch float32's own error where that is larger.
"""
import copy
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dapt_jax import model as model_lib
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
  labels = partition.label_params(shapes['params'], cfg.partition_rules)
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


def flax_from_reference(cfg, ref, head_dropout_rate=0.5):
  net = model_lib.build_model(cfg).clone(head_dropout_rate=head_dropout_rate)
  variables = release_weights.torch_to_flax(ref.state_dict(), cfg['depth'])
  # Every Flax variable must be filled, with its own shape.
  shapes = jax.eval_shape(lambda k: model_lib.init_variables(net, k, 128), jax.random.PRNGKey(0))
  for col in ('params', 'batch_stats'):
    want = {p: s.shape for p, s in partition.flatten(shapes[col]).items()}
    got = {p: v.shape for p, v in partition.flatten(variables[col]).items()}
    assert got == want
  return net, jax.tree.map(jnp.asarray, variables)


def random_clouds(batch, n, seed):
  return np.random.default_rng(seed).normal(size=(batch, n, 3)).astype(np.float32)


def test_eval_logits_match_reference_tiny():
  ref = make_reference(TINY).eval()
  net, variables = flax_from_reference(TINY, ref)
  pts = random_clouds(4, 128, 0)
  want = ref(torch.from_numpy(pts)).detach().numpy()
  got = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, pts))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize('head_tokens', [('cls', 'prompt'), ('cls', 'patch'), ('prompt',)])
def test_eval_logits_match_reference_head_token_choices(head_tokens):
  cfg = dict(TINY, head_tokens=head_tokens, depth=2)
  ref = make_reference(cfg, seed=1).eval()
  net, variables = flax_from_reference(cfg, ref)
  pts = random_clouds(2, 96, 1)
  want = ref(torch.from_numpy(pts)).detach().numpy()
  got = np.asarray(net.apply(variables, pts, train=False))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_eval_logits_match_reference_full_size_pb_t50_rs():
  cfg = dict(load_config('scanobjectnn', 'hardest').model)
  ref = make_reference(cfg, seed=2).eval()
  net, variables = flax_from_reference(cfg, ref)
  pts = random_clouds(2, 2048, 2)
  with torch.no_grad():
    want = ref(torch.from_numpy(pts)).numpy()
  got = np.asarray(jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, pts))
  assert got.shape == (2, 15)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def _train_mode_pair(seed=3):
  ref = make_reference(TINY, seed=seed).train()
  ref.cls_head_finetune[3].p = 0.0
  ref.cls_head_finetune[7].p = 0.0
  net, variables = flax_from_reference(TINY, ref, head_dropout_rate=0.0)
  return ref, net, variables


def test_train_mode_forward_and_batchnorm_statistics_match_reference():
  ref, net, variables = _train_mode_pair()
  pts = random_clouds(6, 128, 3)
  want = ref(torch.from_numpy(pts)).detach().numpy()
  got, updates = net.apply(variables, pts, train=True, mutable=['batch_stats'],
                           rngs={'dropout': jax.random.PRNGKey(0)})
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)
  new_stats = release_weights.torch_to_flax(ref.state_dict(), TINY['depth'])['batch_stats']
  flat_want = partition.flatten(new_stats)
  flat_got = partition.flatten(updates['batch_stats'])
  assert set(flat_got) == set(flat_want)
  for path, value in flat_want.items():
    old = partition.flatten(variables['batch_stats'])[path]
    assert not np.allclose(old, value)  # the statistics did move
    np.testing.assert_allclose(np.asarray(flat_got[path]), value, atol=1e-5, rtol=0,
                               err_msg=path)


def test_frozen_bn_statistics_switch_keeps_encoder_statistics():
  cfg = dict(TINY, freeze_bn_stats=True)
  ref = make_reference(cfg, seed=4)
  net, variables = flax_from_reference(cfg, ref, head_dropout_rate=0.0)
  _, updates = net.apply(variables, random_clouds(4, 128, 4), train=True,
                         mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(0)})
  before = partition.flatten(variables['batch_stats'])
  after = partition.flatten(updates['batch_stats'])
  for path in before:
    moved = not np.array_equal(np.asarray(before[path]), np.asarray(after[path]))
    assert moved == path.startswith('head/'), path


# In training mode a bias right before a BatchNorm, and the final scale-shift's beta (which shifts
# every sample's head input by the same vector), are cancelled by the head's batch-mean
# subtraction: their true gradient is exactly zero, so only rounding noise is left to compare.
ZERO_GRADIENT = ('cls_head_finetune.0.bias', 'cls_head_finetune.4.bias', 'tfts_beta_2')


def test_gradients_of_trainable_parameters_match_reference():
  """JAX's float32 gradients against the reference run in float64 (the truth).

  Tolerance from float32 rounding: 1e-4 of the tensor's largest entry, or, for a gradient that is
  a sum with heavy cancellation (an adapter's scale bias sums signed terms over every token),
  4 times the error PyTorch's own float32 run makes on that tensor: float32 JAX must be as close
  to the truth as float32 PyTorch, not to PyTorch's rounding.
  """
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


@pytest.mark.parametrize('overrides', [{'remat_policy': 'matmuls'}, {'remat_policy': 'inputs'},
                                       {'remat': True}])
def test_remat_changes_nothing_but_memory(overrides):
  """Recomputing block activations (`model.remat_policy`, `model.remat`) changes no value:
  logits and gradients equal those of `remat_policy='all'`, with dropout and stochastic depth on
  (the recomputation must draw the forward pass's masks: a different mask would change the
  gradients by O(1)). Tolerance: recomputation may fuse differently, and the head's training-mode
  BatchNorm over 4 samples amplifies float32 rounding, so 1e-4 of the largest gradient entry."""
  cfg = dict(TINY, depth=2, drop_path_rate=0.2, drop_adapter_rate=0.3)
  net = model_lib.build_model(dict(cfg, remat_policy='all')).clone(head_dropout_rate=0.0)
  net_remat = model_lib.build_model(dict(cfg, **overrides)).clone(head_dropout_rate=0.0)
  variables = model_lib.init_variables(net, jax.random.PRNGKey(0), 96)
  flat = partition.flatten(variables['params'])
  rng = np.random.default_rng(0)
  for path in flat:
    if 'up_proj' in path:  # zero at init: make the adapters do something
      flat[path] = rng.normal(0.0, 0.05, flat[path].shape).astype(np.float32)
  params = partition.unflatten(flat)
  pts = random_clouds(8, 96, 7)
  weights = rng.normal(size=(8, TINY['num_classes'])).astype(np.float32)

  def loss(net, params):
    out, _ = net.apply({'params': params, 'batch_stats': variables['batch_stats']}, pts,
                       train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(1)})
    return jnp.sum(out * weights), out

  (_, out), g = jax.value_and_grad(lambda p: loss(net, p), has_aux=True)(params)
  (_, out_remat), g_remat = jax.value_and_grad(lambda p: loss(net_remat, p), has_aux=True)(params)
  np.testing.assert_allclose(np.asarray(out_remat), np.asarray(out), atol=1e-4 * np.abs(out).max())
  assert jax.tree.structure(g) == jax.tree.structure(g_remat)
  scale = max(np.abs(a).max() for a in jax.tree.leaves(g))
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4 * scale, rtol=0)


def test_unknown_remat_policy_is_a_config_error():
  with pytest.raises(model_lib.ModelConfigError, match='remat_policy'):
    model_lib.build_model(dict(TINY, remat_policy='dots'))
