"""On-device transforms: FPS pool and subset properties, augmentation ranges, determinism, jit."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dapt_jax.data import augment
from dapt_jax.models.tokenizer import farthest_point_sample


def _clouds(b, p, seed=0):
  return np.random.default_rng(seed).normal(size=(b, p, 3)).astype(np.float32)


def _row_ids(rows, cloud):
  """Index in `cloud` [P, 3] of every row of `rows` [N, 3] (asserting each is present)."""
  d = ((np.asarray(rows)[:, None] - cloud[None]) ** 2).sum(-1)
  assert np.all(d.min(1) < 1e-10), 'a row is not a point of the cloud'
  return d.argmin(1)


@pytest.fixture
def no_aug(monkeypatch):
  monkeypatch.setattr(augment, 'scale_translate', lambda key, points: points)


def test_scale_translate_ranges_are_per_cloud_and_per_axis():
  pts = np.zeros((256, 2, 3), np.float32)
  pts[:, 1] = 1.0
  out = np.asarray(augment.scale_translate(jax.random.key(0), jnp.asarray(pts)))
  shift, scale = out[:, 0], out[:, 1] - out[:, 0]
  assert (scale >= 2 / 3 - 1e-6).all() and (scale <= 1.5 + 1e-6).all()
  assert (np.abs(shift) <= 0.2 + 1e-6).all()
  # Spread over the ranges, independent per axis and per cloud.
  assert scale.min() < 0.72 and scale.max() > 1.45 and shift.min() < -0.18 and shift.max() > 0.18
  assert np.abs(np.corrcoef(scale.T)[0, 1]) < 0.3
  assert len(np.unique(scale[:, 0])) == 256


def test_train_view_is_a_random_subset_of_the_fps_pool(no_aug):
  pts = _clouds(3, 300)
  pool = np.asarray(farthest_point_sample(jnp.asarray(pts), 200))
  out = np.asarray(augment.train_view(jax.random.key(1), jnp.asarray(pts), 64, 200))
  assert out.shape == (3, 64, 3) and out.dtype == np.float32
  for b in range(3):
    ids = _row_ids(out[b], pts[b])
    assert len(set(ids)) == 64  # without replacement
    assert set(ids) <= set(pool[b].tolist())  # drawn from the FPS pool of point_all points
  # Per-cloud subsets; a different key gives a different subset and order.
  other = np.asarray(augment.train_view(jax.random.key(2), jnp.asarray(pts), 64, 200))
  assert not np.array_equal(_row_ids(other[0], pts[0]), _row_ids(out[0], pts[0]))


def test_train_view_pool_is_capped_at_the_cloud_and_order_is_random(no_aug):
  pts = _clouds(2, 100)
  out = np.asarray(augment.train_view(jax.random.key(0), jnp.asarray(pts), 100, 2400))
  ids = _row_ids(out[0], pts[0])
  assert sorted(ids) == list(range(100))  # every point once (pool = whole cloud)
  assert list(ids) != list(np.asarray(farthest_point_sample(jnp.asarray(pts), 100))[0])
  fast = np.asarray(augment.train_view(jax.random.key(0), jnp.asarray(pts), 100, 2400,
                                       skip_full_fps=True))
  assert sorted(_row_ids(fast[1], pts[1])) == list(range(100))
  with pytest.raises(ValueError, match='distinct points'):
    augment.train_view(jax.random.key(0), jnp.asarray(pts), 101, 2400)


def test_train_view_applies_scale_and_translate():
  pts = _clouds(16, 64)
  out = np.asarray(augment.train_view(jax.random.key(3), jnp.asarray(pts), 64, 64))
  # All points kept, so the per-axis extent ratio is exactly the scale.
  ratio = (out.max(1) - out.min(1)) / (pts.max(1) - pts.min(1))
  assert (ratio > 2 / 3 - 1e-4).all() and (ratio < 1.5 + 1e-4).all()
  assert np.std(ratio) > 0.05
  centre_shift = out.mean(1) - pts.mean(1) * ratio
  assert (np.abs(centre_shift) <= 0.2 + 1e-4).all()


def test_eval_view_is_deterministic_fps():
  pts = jnp.asarray(_clouds(2, 500))
  a, b = augment.eval_view(pts, 128), augment.eval_view(pts, 128)
  np.testing.assert_array_equal(a, b)
  idx = np.asarray(farthest_point_sample(pts, 128))
  np.testing.assert_array_equal(a, np.take_along_axis(np.asarray(pts), idx[..., None], 1))
  assert len(np.unique(np.asarray(a)[0], axis=0)) == 128
  with pytest.raises(ValueError):
    augment.eval_view(pts, 501)


def test_vote_views(no_aug):
  pts = _clouds(2, 150)
  views = np.asarray(augment.vote_views(jax.random.key(0), jnp.asarray(pts), 32, 120, 5))
  assert views.shape == (5, 2, 32, 3)
  pool = np.asarray(farthest_point_sample(jnp.asarray(pts), 120))
  subsets = [frozenset(_row_ids(views[v, 1], pts[1])) for v in range(5)]
  assert all(len(s) == 32 and s <= set(pool[1].tolist()) for s in subsets)
  assert len(set(subsets)) == 5  # every vote draws its own subset


def test_views_jit_and_match_eager():
  pts = jnp.asarray(_clouds(2, 48))
  key = jax.random.key(4)
  train = jax.jit(augment.train_view, static_argnums=(2, 3))
  np.testing.assert_allclose(train(key, pts, 16, 32), augment.train_view(key, pts, 16, 32),
                             atol=1e-6)
  np.testing.assert_array_equal(train(key, pts, 16, 32), train(key, pts, 16, 32))
  votes = jax.jit(augment.vote_views, static_argnums=(2, 3, 4))(key, pts, 16, 32, 3)
  assert votes.shape == (3, 2, 16, 3)
  evals = jax.jit(augment.eval_view, static_argnums=1)(pts, 16)
  np.testing.assert_array_equal(evals, augment.eval_view(pts, 16))


def test_augment_import_pulls_no_tfds_or_grain():
  code = ('import sys, dapt_jax.data.augment, dapt_jax.data; '
          'bad = [m for m in sys.modules if m.split(".")[0] in '
          '("tensorflow_datasets", "grain", "tensorflow", "h5py", "array_record")]; '
          'print(bad); assert not bad')
  res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
  assert res.returncode == 0, res.stdout + res.stderr
