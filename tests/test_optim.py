"""The optimizer built from the partition and the release's learning-rate schedule."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dapt_jax.models import classifier as model_lib
from dapt_jax import optim
from dapt_jax import partition
from tests.test_model import TINY


def opt_cfg(**kw):
  c = dict(lr=5e-4, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, clip_grad_norm=10.0,
           warmup_epochs=10, warmup_lr_init=1e-6, min_lr=1e-6)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def test_epoch_schedule_follows_release():
  c = opt_cfg()
  f = lambda t: (1e-6 + t * (5e-4 - 1e-6) / 10 if t < 10
                 else 1e-6 + 0.5 * (5e-4 - 1e-6) * (1 + math.cos(math.pi * t / 300)))
  lr = lambda e: optim.epoch_learning_rate(e, c.lr, 300, 10, 1e-6, 1e-6)
  assert lr(0) == pytest.approx(1e-6)
  for e in (1, 2, 5, 10, 11, 12, 150, 299, 300):
    assert lr(e) == pytest.approx(f(e - 1), rel=1e-12), e
  # Warm-up ends at f(9) = 4.5e-4; the cosine starts at t = 10, already below the base rate.
  assert lr(10) == pytest.approx(1e-6 + 9 * (5e-4 - 1e-6) / 10)
  assert lr(11) < 5e-4
  sched = optim.make_schedule(c, 300, steps_per_epoch=7)
  for step, epoch in ((0, 0), (6, 0), (7, 1), (20, 2), (7 * 150 + 3, 150), (7 * 300, 300)):
    assert float(sched(step)) == pytest.approx(lr(epoch), rel=1e-6)


def test_decay_mask():
  params = {'cls_token': jnp.zeros((1, 1, 4)), 'cls_pos': jnp.zeros((1, 1, 4)),
            'fc': {'kernel': jnp.zeros((4, 4)), 'bias': jnp.zeros(4)},
            'tfts': {'gamma': jnp.zeros(4)}}
  mask = optim.decay_mask(params)
  assert mask == {'cls_token': False, 'cls_pos': True, 'fc': {'kernel': True, 'bias': False},
                  'tfts': {'gamma': False}}


@pytest.fixture(scope='module')
def tiny():
  net = model_lib.build_model(TINY)
  variables = model_lib.init_variables(net, jax.random.PRNGKey(0), 64)
  labels = partition.label_params(variables['params'], partition.DAPT_RULES)
  return net, variables, labels


def test_optimizer_state_only_for_trainable_leaves(tiny):
  _, variables, labels = tiny
  tx = optim.make_optimizer(opt_cfg(), labels, optax.constant_schedule(1e-3))
  state = tx.init(variables['params'])
  n_trainable = partition.count(variables['params'], labels)['total']['trainable']
  # Adam's two moments, for the trainable leaves only.
  assert optim.count_state_elements(state) == 2 * n_trainable


def test_one_step_moves_every_trainable_and_no_frozen_parameter(tiny):
  net, variables, labels = tiny
  # The adapters start as the zero function (up projection zero), so their down / scale
  # projections get no gradient on the very first step; give up_proj a value first.
  params = partition.flatten(variables['params'])
  for i, path in enumerate(p for p in params if p.endswith('up_proj/kernel')):
    params[path] = 0.05 * jax.random.normal(jax.random.PRNGKey(10 + i), params[path].shape)
  variables = {'params': partition.unflatten(params), 'batch_stats': variables['batch_stats']}
  tx = optim.make_optimizer(opt_cfg(), labels, optax.constant_schedule(1e-3))
  trainable, frozen = partition.split(variables['params'], labels)
  opt_state = tx.init(variables['params'])
  pts = jax.random.normal(jax.random.PRNGKey(1), (4, 64, 3))
  y = jnp.array([0, 1, 2, 3])

  def loss_fn(trainable):
    logits, _ = net.apply({'params': partition.merge(trainable, frozen),
                           'batch_stats': variables['batch_stats']}, pts, train=True,
                          mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(2)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(trainable, frozen, opt_state):
    grads = jax.grad(loss_fn)(trainable)
    return optim.apply_trainable_gradients(tx, opt_state, trainable, frozen, grads)

  frozen_before = jax.tree.map(np.array, frozen)
  new_trainable, _ = step(trainable, frozen, opt_state)
  for path, old in partition.flatten(trainable).items():
    new = partition.flatten(new_trainable)[path]
    assert not np.array_equal(np.asarray(old), np.asarray(new)), f'{path} did not move'
  for path, old in partition.flatten(frozen_before).items():
    assert np.array_equal(old, np.asarray(partition.flatten(frozen)[path])), path
  # The merged tree still holds the frozen arrays bit for bit.
  merged = partition.flatten(partition.merge(new_trainable, frozen))
  for path, old in partition.flatten(frozen_before).items():
    assert np.array_equal(old, np.asarray(merged[path]))


def test_clipping_uses_trainable_gradients_only():
  labels = {'a': partition.TRAINABLE, 'b': partition.FROZEN}
  tx = optim.make_optimizer(opt_cfg(clip_grad_norm=1.0, weight_decay=0.0), labels,
                            optax.constant_schedule(1.0))
  params = {'a': jnp.zeros(2), 'b': jnp.zeros(2)}
  state = tx.init(params)
  updates, _ = tx.update({'a': jnp.array([3.0, 4.0]), 'b': jnp.array([1e6, 1e6])}, state, params)
  # Adam's first step is lr * sign-like g / |g|: unaffected by the huge frozen gradient.
  np.testing.assert_allclose(np.asarray(updates['a']), [-1.0, -1.0], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(updates['b']), [0.0, 0.0])


@pytest.mark.parametrize('epochs,warmup', [(300, 10), (150, 10), (4, 0)])
def test_schedule_matches_the_release_for_every_epoch(epochs, warmup):
  """Every epoch 0..epochs: the rate the project trains at equals SPEC §4's (epoch 0 at f(0),
  epoch e at f(e - 1)) and what the release's loop gives when timm's scheduler is stepped at
  the end of each epoch (tests/torch_train_reference.ReleaseCosineLR, restated independently).
  (300, 10): the paper recipe; (150, 10): few-shot; (4, 0): the trajectory test's."""
  from tests import torch_train_reference  # torch-free part

  base, init, floor = 5e-4, 1e-6, 1e-6

  def f(t):  # SPEC §4
    if t < warmup:
      return init + t * (base - init) / warmup
    if t >= epochs:
      return floor
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t / epochs))

  released = torch_train_reference.release_epoch_rates(base, epochs, warmup, init, floor)
  assert len(released) == epochs + 1  # epochs 0..epochs inclusive
  c = opt_cfg(warmup_epochs=warmup)
  steps_per_epoch = 3
  sched = optim.make_schedule(c, epochs, steps_per_epoch)
  for e in range(epochs + 1):
    want = f(max(e - 1, 0))
    assert released[e] == pytest.approx(want, rel=1e-12, abs=0), e
    assert optim.epoch_learning_rate(e, base, epochs, warmup, init, floor) == pytest.approx(
        want, rel=1e-12, abs=0), e
    # The per-step table is float32 (x64 off): relative rounding ≤ 2^-24 ≈ 6e-8.
    for step in (e * steps_per_epoch, (e + 1) * steps_per_epoch - 1):
      assert float(sched(step)) == pytest.approx(want, rel=1e-7, abs=0), (e, step)
  if warmup:
    assert released[0] == init and released[1] == init  # epoch 1 also trains at f(0)
