"""The segmentation network (dapt_jax/models/segmenter.py): parameter counts (SPEC §8.2, §8.6)
and float64 parity with the independent PyTorch reference (tests/torch_reference_seg.py).

Parity runs both sides in float64 (JAX with x64 enabled inside a fixture that restores the flag)
on the same groups (the reference's FPS + kNN), with every weight and BatchNorm statistic
randomised. Tolerance: max |jax − torch| ≤ 1e-10 · max |torch| per compared tensor (logits,
BatchNorm statistics, each gradient tensor). Float64 leaves ~1e-16 relative per operation, and
these networks are a few hundred operations deep, so 1e-10 leaves a wide margin on any x86-64
while still catching any real difference (a wrong constant, order or reduction shows at ≥ 1e-7).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dapt_jax import partition
from dapt_jax.models import segmenter as S

# SPEC §8.2 / §8.6 at full size: backbone 21,825,024 + head 5,238,706; DAPT (r = 32) adds
# 12 · (1,537 + 769 · 32) + 112,128 + 768.
FULL = dict(trans_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, encoder_dims=384, num_group=128,
            group_size=32, rank=32, num_parts=50, num_classes=16, drop_path_rate=0.1,
            drop_adapter_rate=0.0, freeze_bn_stats=False, dtype='float32', dapt=True,
            pos_every_block=False, feature_blocks=(3, 7, 11))

TINY = dict(trans_dim=24, depth=4, num_heads=2, mlp_ratio=2.0, encoder_dims=24, num_group=8,
            group_size=6, rank=4, num_parts=7, num_classes=3, drop_path_rate=0.0,
            drop_adapter_rate=0.0, freeze_bn_stats=False, dtype='float64', dapt=True,
            pos_every_block=False, feature_blocks=(1, 2, 3), label_dims=5,
            propagation_dims=(20, 16), head_dims=(12, 10), head_dropout_rate=0.0)


def _counts(fields, rules):
  net = S.build_model(fields)
  shapes = jax.eval_shape(lambda k: S.init_variables(net, k, 2048), jax.random.PRNGKey(0))
  labels = partition.label_params(shapes['params'], rules)
  total = partition.count(shapes['params'], labels)['total']
  return total['trainable'], total['total']


def test_parameter_counts_match_spec():
  assert _counts(FULL, partition.method_rules('dapt', 'segmenter')) == (5_665_342, 27_490_366)
  assert _counts(dict(FULL, rank=64), partition.method_rules('dapt', 'segmenter')) == (5_960_638, 27_785_662)
  assert _counts(FULL, partition.FULL_FINETUNE_RULES) == (27_490_366, 27_490_366)


def test_parameter_count_pointmae():
  assert _counts(dict(FULL, dapt=False), partition.FULL_FINETUNE_RULES) == (27_063_730,) * 2


def test_bad_config_one_line_errors():
  with pytest.raises(S.ModelConfigError, match='feature_blocks'):
    S.build_model(dict(TINY, feature_blocks=(1, 4)))
  with pytest.raises(S.ModelConfigError, match='num_heads'):
    S.build_model(dict(TINY, num_heads=5))
  with pytest.raises(S.ModelConfigError, match='head_dims'):
    S.build_model(dict(TINY, head_dims=(12,)))
  with pytest.raises(S.ModelConfigError, match="missing field 'num_parts'"):
    S.build_model({k: v for k, v in TINY.items() if k != 'num_parts'})
  with pytest.raises(S.ModelConfigError, match='dtype'):
    S.build_model(dict(TINY, dtype='float16'))


def test_interpolation_weights_by_hand():
  # Centres on the x axis at 0, 1, 3, 10; a point at x = 0.5 has nearest 0 and 1 (d² 0.25 each)
  # and 3 (d² 6.25); a point on a centre takes (almost) all of that centre.
  centers = jnp.array([[[0., 0, 0], [1, 0, 0], [3, 0, 0], [10, 0, 0]]])
  query = jnp.array([[[0.5, 0, 0], [3, 0, 0]]])
  w = np.asarray(S.interpolation_weights(query, centers))
  r = 1 / (np.array([0.25, 0.25, 6.25]) + 1e-8)
  np.testing.assert_allclose(w[0, 0], np.r_[r / r.sum(), 0], rtol=1e-6)
  assert w[0, 1, 2] > 1 - 1e-6 and w[0, 1, 3] == 0
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)


def test_query_points_and_train_mode_shapes():
  fields = dict(TINY, dtype='float32', head_dropout_rate=0.5, drop_path_rate=0.1)
  net = S.build_model(fields)
  # The model's shapes with random values (initialising would compile the network once more).
  shapes = jax.eval_shape(lambda k: S.init_variables(net, k, 40), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape) + 1.0,
                                                 x.dtype), shapes)
  pts = jax.random.normal(jax.random.PRNGKey(1), (2, 40, 3))
  cat = jnp.array([0, 2])
  out = jax.jit(lambda v, p, c: net.apply(v, p, c))(variables, pts, cat)
  assert out.shape == (2, 40, 7) and out.dtype == jnp.float32
  more = jax.random.normal(jax.random.PRNGKey(2), (2, 55, 3))
  out, upd = jax.jit(lambda v, p, c, q: net.apply(v, p, c, train=True, query=q,
                                                  mutable=['batch_stats'],
                                                  rngs={'dropout': jax.random.PRNGKey(3)}))(
                                                      variables, pts, cat, more)
  assert out.shape == (2, 55, 7) and set(upd['batch_stats']) == set(variables['batch_stats'])


# ---------------------------------------------------------------------------------------------
# float64 parity with the PyTorch reference

torch = pytest.importorskip('torch')
from tests import torch_reference as R  # noqa: E402
from tests import torch_reference_seg as RS  # noqa: E402

RTOL = 1e-10


def make_reference(fields, seed):
  torch.manual_seed(seed)
  ref = RS.TorchPartSeg(
      **{k: fields[k] for k in ('trans_dim', 'depth', 'num_heads', 'mlp_ratio', 'num_group',
                                'group_size', 'rank', 'num_parts', 'num_classes',
                                'drop_path_rate', 'drop_adapter_rate', 'dapt', 'pos_every_block',
                                'feature_blocks', 'label_dims', 'propagation_dims', 'head_dims')},
      head_dropout=fields['head_dropout_rate']).double()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if 'up_proj' in name:  # zero at init: randomise so the adapters act
        p.normal_(0.0, 0.1)
    for name, b in ref.named_buffers():
      if name.endswith('running_mean'):
        b.normal_(0.0, 0.1)
      elif name.endswith('running_var'):
        b.uniform_(0.5, 1.5)
  return ref


def flax_pair(fields, seed):
  ref = make_reference(fields, seed)
  net = S.build_model(fields)
  variables = RS.seg_torch_to_flax(ref.state_dict())
  shapes = jax.eval_shape(lambda k: S.init_variables(net, k, 64), jax.random.PRNGKey(0))
  for col in ('params', 'batch_stats'):
    want = {p: s.shape for p, s in partition.flatten(shapes[col]).items()}
    got = {p: v.shape for p, v in partition.flatten(variables[col]).items()}
    assert got == want, col
  return ref, net, jax.tree.map(jnp.asarray, variables)


def inputs(seed, b=3, n=40, num_group=8, group_size=6, num_classes=3):
  g = torch.Generator().manual_seed(seed)
  pts = torch.randn(b, n, 3, generator=g, dtype=torch.float64)
  nb, center = R.torch_group(pts, num_group, group_size)
  cat = torch.arange(b) % num_classes
  return pts, nb, center, cat


def close(got, want, what):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, what
  scale = np.abs(want).max()
  err = np.abs(got - want).max()
  assert err <= RTOL * scale, f'{what}: max error {err:.3e} vs scale {scale:.3e}'


VARIANTS = {
    'dapt': dict(TINY),
    'dapt_pos_every_block': dict(TINY, pos_every_block=True),
    'pointmae': dict(TINY, dapt=False),
}


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_eval_logits_match_reference(x64, variant):
  fields = VARIANTS[variant]
  ref, net, variables = flax_pair(fields, seed=1)
  ref.eval()
  pts, nb, center, cat = inputs(2)
  with torch.no_grad():
    want = ref.forward_from_groups(pts, nb, center, cat).numpy()
  apply = jax.jit(lambda v, *a: net.apply(v, *a, method=net.from_groups))
  got = apply(variables, *[jnp.asarray(x.numpy()) for x in (pts, nb, center, cat)])
  assert got.dtype == jnp.float64
  close(got, want, f'{variant} logits')
  # other query points than the tokenizer's
  q = torch.randn(3, 40, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
  with torch.no_grad():
    want_q = ref.forward_from_groups(q, nb, center, cat).numpy()
  got_q = apply(variables, *[jnp.asarray(x.numpy()) for x in (q, nb, center, cat)])
  close(got_q, want_q, f'{variant} logits at other query points')


# In training mode a bias right before a BatchNorm is cancelled by the batch-mean subtraction (the
# patch encoder's second bias too: it shifts the pooled and the per-point halves of the next
# layer's input alike), and so are the final LayerNorm's bias and scale-shift's beta (it shifts every interpolated and pooled feature by the same
# vector, which reaches the head only through BatchNorm'd layers): their gradient is exactly zero
# and only rounding noise is left on either side.
ZERO_GRADIENT = ('convs1.bias', 'convs2.bias', 'propagation_0.mlp_convs.0.bias',
                 'propagation_0.mlp_convs.1.bias', 'tfts_beta_2', 'encoder.first_conv.0.bias',
                 'encoder.first_conv.3.bias', 'encoder.second_conv.0.bias', 'norm.bias')


@pytest.mark.parametrize('variant,rules', [('dapt', 'dapt'), ('pointmae', 'full')])
def test_train_forward_statistics_and_gradients_match_reference(x64, variant, rules):
  fields = VARIANTS[variant]
  ref, net, variables = flax_pair(fields, seed=3)
  ref.train()
  pts, nb, center, cat = inputs(4, b=4)
  labels = torch.randint(0, fields['num_parts'], (4, 40), generator=torch.Generator().manual_seed(6))
  logits = ref.forward_from_groups(pts, nb, center, cat)
  loss = F_nll(logits, labels)
  loss.backward()

  rule_set = partition.method_rules('dapt', 'segmenter') if rules == 'dapt' else partition.FULL_FINETUNE_RULES
  param_labels = partition.label_params(variables['params'], rule_set)
  trainable, frozen = partition.split(variables['params'], param_labels)
  args = [jnp.asarray(x.numpy()) for x in (pts, nb, center, cat)]
  y = jnp.asarray(labels.numpy())

  def loss_fn(trainable, frozen, stats, args, y):
    out, upd = net.apply({'params': partition.merge(trainable, frozen), 'batch_stats': stats},
                         *args, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.PRNGKey(0)}, method=net.from_groups)
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), (out, upd)

  # Everything enters as an argument: closed-over arrays become constants XLA folds slowly.
  (got_loss, (out, upd)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      trainable, frozen, variables['batch_stats'], args, y)
  close(out, logits.detach().numpy(), 'train-mode logits')
  close(got_loss, loss.detach().numpy(), 'loss')
  # BatchNorm running statistics after one training forward (unbiased variance update)
  new_stats = partition.flatten(RS.seg_torch_to_flax(ref.state_dict())['batch_stats'])
  flat = partition.flatten(upd['batch_stats'])
  assert set(flat) == set(new_stats)
  for path, value in new_stats.items():
    close(flat[path], value, path)

  grads = partition.flatten(grads)
  # The last block's internal prompt is inserted after the last feature is taken: unused.
  unused_prompt = f"blocks.blocks.{fields['depth'] - 1}.tfts_" if fields['dapt'] else '-'
  unused_prompt = (unused_prompt + 'gamma_3', unused_prompt + 'beta_3')
  names = (RS.trainable_names(ref) if rules == 'dapt'
           else [n for n, _ in ref.named_parameters()])
  assert sorted(RS.flax_path_for_torch_key(n)[1] for n in names) == sorted(grads)
  for name, p in ref.named_parameters():
    if name not in names:
      continue
    want = p.grad.numpy()
    _, path, kind = RS.flax_path_for_torch_key(name)
    got = np.asarray(grads[path])
    if path.endswith('/kernel'):
      got = got.T.reshape(want.shape)
    if name in ZERO_GRADIENT or name.startswith(unused_prompt):
      assert np.abs(want).max() <= 1e-12 and np.abs(got).max() <= 1e-12, name
      continue
    assert np.abs(want).max() > 1e-8, name
    close(got, want, f'gradient of {name}')


def F_nll(logits, labels):
  """NLL of log-softmax over all B·N points (SPEC §8.2.5)."""
  logp = torch.log_softmax(logits, dim=-1)
  return torch.nn.functional.nll_loss(logp.reshape(-1, logp.shape[-1]), labels.reshape(-1))
