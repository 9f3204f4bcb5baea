"""Fidelity of the published baselines: dapt_jax/models/peft against independent PyTorch references
(tests/torch_reference_idpt.py, tests/torch_reference_pointgst.py), in float64 on both sides
(JAX with x64 enabled for these tests only).

Compared for one batch of clouds, grouped once by the reference's FPS + kNN and fed to both:
eval-mode logits, train-mode logits, BatchNorm statistics after a train-mode pass, and the
gradients of every trainable parameter (the partition's rules against each release's name rule).
Tolerance: max |jax − torch| / max |torch| ≤ 1e-10 per tensor (float64 carries ~1e-16; the
eigensolvers of the two sides differ by rounding, amplified by 1 / eigenvalue gap, and the test
clouds have gaps above 1e-4). Gradients that are exactly zero in exact arithmetic (a bias whose
constant a training-mode BatchNorm subtracts again) are compared as rounding noise (≤ 1e-12
absolute on both sides).
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dapt_jax.models import classifier as model_lib
from dapt_jax import partition

torch = pytest.importorskip('torch')
from tests import torch_reference as R  # noqa: E402
from tests import torch_reference_idpt as RI  # noqa: E402
from tests import torch_reference_pointgst as RG  # noqa: E402

RTOL = 1e-10
ZERO_ATOL = 1e-12

TINY = dict(trans_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_group=16, group_size=8,
            num_classes=5)
FLAX_TINY = dict(TINY, encoder_dims=32, rank=4, drop_path_rate=0.0, drop_adapter_rate=0.0,
                 head_tokens=('cls', 'patch'), freeze_bn_stats=False, dtype='float32',
                 head_dropout_rate=0.0, vpt_prompts=3, idpt_k=5, idpt_prompt_layer=-1,
                 pgst_rank=6, pgst_local=8)


def make_reference(method, seed):
  torch.manual_seed(seed)
  kw = dict(TINY, head_dropout=0.0)
  ref = {
      'full': lambda: RI.PointMAEClassifier(**kw),
      'vpt_deep': lambda: RI.VPTDeepClassifier(**kw, prompts=3),
      'idpt': lambda: RI.IDPTClassifier(**kw, k=5, prompt_layer=-1),
      'pointgst': lambda: RG.PointGSTClassifier(**kw, rank=6, local=8),
  }[method]().double()
  with torch.no_grad():  # randomise everything, zero-initialised parts included
    for name, p in ref.named_parameters():
      if name.endswith(('norm1.weight', 'norm2.weight', 'norm.weight', 'norm_ly1.weight',
                        'norm_ly2.weight')) or re.search(r'\.(bn\d|1|5)\.weight$', name):
        p.uniform_(0.5, 1.5)
      else:
        p.normal_(0.0, 0.2 if p.dim() > 1 else 0.05)
    for name, b in ref.named_buffers():
      if name.endswith('running_mean'):
        b.normal_(0.0, 0.1)
      elif name.endswith('running_var'):
        b.uniform_(0.5, 1.5)
  return ref


# -- release keys → Flax variables (written from docs/architecture.md, independent of convert/) --

_RENAMES = [
    (r'^encoder\.first_conv\.0\.', 'encoder/fc1/'), (r'^encoder\.first_conv\.1\.', 'encoder/bn1/'),
    (r'^encoder\.first_conv\.3\.', 'encoder/fc2/'), (r'^encoder\.second_conv\.0\.', 'encoder/fc3/'),
    (r'^encoder\.second_conv\.1\.', 'encoder/bn2/'), (r'^encoder\.second_conv\.3\.', 'encoder/fc4/'),
    (r'^pos_embed\.0\.', 'pos_embed/fc1/'), (r'^pos_embed\.2\.', 'pos_embed/fc2/'),
    (r'^blocks\.blocks\.(\d+)\.gft_adapter\.norm_ly(\d)\.', r'blocks_\1/pcsa/norm\2/'),
    (r'^blocks\.blocks\.(\d+)\.gft_adapter\.', r'blocks_\1/pcsa/'),
    (r'^blocks\.blocks\.(\d+)\.', r'blocks_\1/'),
    (r'^blocks\.cls\.(conv\d)\.0\.', r'idpt/\1/'),
    (r'^blocks\.cls\.', 'idpt/'),
    (r'^prompt_pos$', 'idpt/prompt_pos'),
    (r'^cls_prompt_list\.(\d+)$', r'vpt/prompt_\1'),
    (r'^cls_prompt_pos_list\.(\d+)$', r'vpt/prompt_pos_\1'),
    (r'^norm\.', 'norm/'),
    (r'^cls_head_finetune\.0\.', 'head/fc1/'), (r'^cls_head_finetune\.1\.', 'head/bn1/'),
    (r'^cls_head_finetune\.4\.', 'head/fc2/'), (r'^cls_head_finetune\.5\.', 'head/bn2/'),
    (r'^cls_head_finetune\.8\.', 'head/fc3/'),
]
_BATCH_NORMS = re.compile(r'(^encoder/bn\d|^head/bn\d|^idpt/bn\d)/')


def flax_name(key):
  """Release key → (collection, Flax path), or None for a duplicate / counter."""
  if key.endswith('num_batches_tracked') or re.match(r'^blocks\.cls\.conv\d\.1\.', key):
    return None
  path = key
  for pattern, repl in _RENAMES:
    path, n = re.subn(pattern, repl, path)
    if n:
      break
  path = path.replace('.', '/')
  leaf = path.rsplit('/', 1)[-1]
  is_bn = _BATCH_NORMS.match(path)
  if leaf in ('running_mean', 'running_var'):
    return 'batch_stats', path.rsplit('/', 1)[0] + ('/mean' if leaf == 'running_mean' else '/var')
  if leaf == 'weight':
    kernel = not (is_bn or re.search(r'norm\d?/weight$|/pcsa/norm\d/weight$', path))
    return 'params', path[:-len('weight')] + ('kernel' if kernel else 'scale')
  return 'params', path


def to_flax_value(key, value):
  v = value.detach().numpy()
  if key.endswith('weight') and v.ndim >= 2:  # Linear / Conv1d / Conv2d (1×1)
    v = v.reshape(v.shape[0], v.shape[1]).T
  return v


def torch_to_flax(ref):
  out = {'params': {}, 'batch_stats': {}}
  sd = ref.state_dict()
  for key, value in sd.items():
    m = re.match(r'^blocks\.cls\.conv(\d)\.1\.(.*)$', key)
    if m:  # the release's duplicate BatchNorm entries: same tensors as blocks.cls.bn<n>.*
      assert torch.equal(value, sd[f'blocks.cls.bn{m.group(1)}.{m.group(2)}'])
    named = flax_name(key)
    if named is not None:
      out[named[0]][named[1]] = to_flax_value(key, value)
  return {c: partition.unflatten(v) for c, v in out.items()}


def flax_model(method):
  net = model_lib.build_model(dict(FLAX_TINY, peft=method))
  return net.clone(dtype=jnp.float64)


def clouds(seed, batch=6, n=64):
  g = torch.Generator().manual_seed(seed)
  pts = torch.rand(batch, n, 3, generator=g, dtype=torch.float64) * 2.0 - 1.0
  return R.torch_group(pts, TINY['num_group'], TINY['group_size'])


def assert_close(got, want, name, rtol=RTOL):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (name, got.shape, want.shape)
  scale = np.abs(want).max()
  err = np.abs(got - want).max()
  assert err <= rtol * scale, f'{name}: relative error {err / scale:.2e}'


def check_distinct_spectra(center, local):
  """The test clouds must have distinct Laplacian eigenvalues (the bases are then unique up to
  sign) and distinct z-order keys (the local runs are then unique)."""
  u_local_runs = RG.spectral_bases(center, local)
  for pts in (center, torch.gather(center, 1, u_local_runs[2][..., None].expand(-1, -1, 3))
              .reshape(-1, local, 3)):
    lam = torch.linalg.eigvalsh(RG.laplacian(pts))
    assert (lam[:, 1:] - lam[:, :-1]).min() > 1e-4
  keys = RG.zorder_key(center)
  assert all(len(set(k.tolist())) == k.numel() for k in keys)


METHODS = ['full', 'vpt_deep', 'idpt', 'pointgst']


@pytest.mark.parametrize('method', METHODS)
def test_forward_statistics_and_gradients_match_reference(x64, method):
  seed = METHODS.index(method)
  ref = make_reference(method, seed=seed)
  net = flax_model(method)
  variables = jax.tree.map(jnp.asarray, torch_to_flax(ref))
  # Every variable of the Flax model is filled, with its shape.
  shapes = jax.eval_shape(lambda k: model_lib.init_variables(net.clone(dtype=jnp.float32), k, 64),
                          jax.random.PRNGKey(0))
  for col in ('params', 'batch_stats'):
    assert ({p: s.shape for p, s in partition.flatten(shapes[col]).items()}
            == {p: v.shape for p, v in partition.flatten(variables[col]).items()}), col
  nb, ctr = clouds(seed=10 + seed)
  if method == 'pointgst':
    check_distinct_spectra(ctr, FLAX_TINY['pgst_local'])
  groups = (nb.numpy(), ctr.numpy())

  # Evaluation mode: BatchNorm running statistics.
  ref.eval()
  with torch.no_grad():
    want = ref.forward_from_groups(nb, ctr).numpy()
  got = jax.jit(lambda v, a, b: net.apply(v, a, b, False, method='from_groups'))(
      variables, *groups)
  assert got.dtype == jnp.float64
  assert_close(got, want, f'{method} eval logits')

  # Training mode: batch statistics, updated running statistics, gradients of a loss.
  ref.train()
  labels = np.array([0, 1, 2, 3, 4, 0])
  logits_ref = ref.forward_from_groups(nb, ctr)
  loss = torch.nn.functional.cross_entropy(logits_ref, torch.from_numpy(labels))
  loss.backward()

  param_labels = partition.label_params(variables['params'], partition.METHOD_RULES[method])
  trainable, frozen = partition.split(variables['params'], param_labels)

  def loss_fn(trainable):
    logits, updates = net.apply({'params': partition.merge(trainable, frozen),
                                 'batch_stats': variables['batch_stats']}, *groups, True,
                                method='from_groups', mutable=['batch_stats'])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return ce, (logits, updates['batch_stats'])

  (jax_loss, (logits, stats)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      trainable)
  assert_close(logits, logits_ref.detach().numpy(), f'{method} train logits')
  assert_close(jax_loss, loss.item(), f'{method} loss')
  new_stats = partition.flatten(torch_to_flax(ref)['batch_stats'])
  got_stats = partition.flatten(stats)
  assert set(new_stats) == set(got_stats)
  for path, value in new_stats.items():
    assert_close(got_stats[path], value, f'{method} batch_stats/{path}')

  grads = partition.flatten(grads)
  names = ([n for n, _ in ref.named_parameters()] if method == 'full'
           else ref.trainable_names())
  # The partition's trainable set is the release's name rule, tensor for tensor.
  assert sorted(flax_name(n)[1] for n in names) == sorted(grads)
  # Exactly zero: biases whose per-channel constant a training-mode BatchNorm subtracts again (the
  # head's first two Linears; in the patch encoder the convolutions before bn1 and bn2, and
  # first_conv.3, which reaches bn2 only through the Linear second_conv.0, max-pool included; the
  # final LayerNorm's bias, which shifts every sample's head input by the same vector).
  zero = re.compile(r'^cls_head_finetune\.[04]\.bias$|^encoder\.first_conv\.[03]\.bias$'
                    r'|^encoder\.second_conv\.0\.bias$|^norm\.bias$')
  for name, p in ref.named_parameters():
    if name not in names:
      continue
    want = p.grad.numpy()
    got = np.asarray(grads[flax_name(name)[1]])
    if want.ndim >= 2 and not name.startswith(('cls_token', 'cls_pos', 'cls_prompt')):
      got = got.T.reshape(want.shape)
    if zero.match(name):
      assert np.abs(want).max() <= ZERO_ATOL and np.abs(got).max() <= ZERO_ATOL, name
      continue
    assert np.abs(want).max() > 1e-8, name
    assert_close(got, want, f'{method} grad {name}')
