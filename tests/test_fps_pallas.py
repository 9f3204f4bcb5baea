"""The Pallas FPS kernel (Pallas interpret mode on CPU) gives the XLA version's indices exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dapt_jax.models import fps_pallas
from dapt_jax.models import classifier as model_lib
from dapt_jax.models import tokenizer
from dapt_jax.data import augment


def both(points, num_samples):
  points = jnp.asarray(points, jnp.float32)
  want = np.asarray(jax.jit(tokenizer.farthest_point_sample, static_argnums=1)(points, num_samples))
  got = np.asarray(fps_pallas.farthest_point_sample(points, num_samples, interpret=True))
  return got, want


def test_many_random_clouds():
  # 96 clouds of three kinds: Gaussian, uniform in a cube, quantised (many exact distance ties).
  rng = np.random.default_rng(0)
  gauss = rng.normal(size=(32, 80, 3))
  cube = rng.uniform(-1, 1, size=(32, 80, 3))
  quant = np.round(rng.uniform(-2, 2, size=(32, 80, 3)))
  got, want = both(np.concatenate([gauss, cube, quant]), 24)
  assert got.shape == (96, 24) and got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  assert all(len(set(row)) == 24 for row in got[:64])  # continuous clouds: distinct picks


def test_grid_ties_and_near_origin_points():
  grid = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing='ij'), -1).reshape(-1, 3)
  near = np.array([[0.0, 0.0, 0.0], [0.01, 0.0, 0.02], [0.0, -0.03, 0.0], [0.0316, 0.0, 0.0]])
  cloud = np.concatenate([grid, near]).astype(np.float32)                 # 129 points: N not 2^k
  rng = np.random.default_rng(1)
  clouds = np.stack([cloud, rng.permutation(cloud), (cloud * 0.5)[::-1].copy(),
                     np.concatenate([near, grid]).astype(np.float32)])     # near-origin first
  got, want = both(clouds, 45)                                             # G not 2^k
  np.testing.assert_array_equal(got, want)
  for b in range(len(clouds)):
    assert ((clouds[b][got[b][1:]] ** 2).sum(-1) > 1e-3).all()


def test_all_near_origin_and_every_point_sampled():
  cloud = np.zeros((2, 16, 3), np.float32)
  cloud[0, 5] = [1.0, 0.0, 0.0]
  got, want = both(cloud, 4)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got[0], [0, 5, 5, 5])
  np.testing.assert_array_equal(got[1], [0, 0, 0, 0])
  # G = N: the whole cloud reordered (the training view's FPS of 2048 of 2048 points).
  pts = np.random.default_rng(2).normal(size=(3, 50, 3))
  got, want = both(pts, 50)
  np.testing.assert_array_equal(got, want)
  assert all(sorted(row) == list(range(50)) for row in got)


def test_model_and_augmentation_use_the_switch():
  pts = jnp.asarray(np.random.default_rng(3).normal(size=(2, 64, 3)), jnp.float32)
  for impl in ('xla', 'pallas'):
    nb, c = tokenizer.group_points(pts, 8, 4, fps_impl=impl)
    if impl == 'xla':
      want = (nb, c)
  np.testing.assert_array_equal(np.asarray(nb), np.asarray(want[0]))
  np.testing.assert_array_equal(np.asarray(c), np.asarray(want[1]))
  key = jax.random.PRNGKey(0)
  views = [augment.train_view(key, pts, 32, 48, fps_impl=impl) for impl in ('xla', 'pallas')]
  np.testing.assert_array_equal(np.asarray(views[0]), np.asarray(views[1]))
  evals = [augment.eval_view(pts, 32, fps_impl=impl) for impl in ('xla', 'pallas')]
  np.testing.assert_array_equal(np.asarray(evals[0]), np.asarray(evals[1]))
  tiny = dict(trans_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, encoder_dims=16, num_group=8,
              group_size=4, rank=4, num_classes=3, drop_path_rate=0.0, drop_adapter_rate=0.0,
              head_tokens=('cls', 'patch'), freeze_bn_stats=False, dtype='float32')
  assert model_lib.build_model(dict(tiny, fps_impl='pallas')).fps_impl == 'pallas'
  with pytest.raises(model_lib.ModelConfigError, match='fps_impl'):
    model_lib.build_model(dict(tiny, fps_impl='cuda'))
  # The classification task hands the config's choice to its training and evaluation views.
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from dapt_jax.tasks import classification  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config()
  with config.unlocked():
    config.model.fps_impl = 'pallas'
  assert classification.ClassificationTask(config).views.fps_impl == 'pallas'
