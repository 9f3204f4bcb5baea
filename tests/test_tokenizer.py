"""FPS, kNN grouping and the patch encoder's shapes."""
import numpy as np
import jax
import jax.numpy as jnp

from dapt_jax.models import tokenizer


def numpy_fps(points: np.ndarray, num: int) -> np.ndarray:
  """A plain loop over the kernel's rules, for one cloud [N, 3] (independent of the JAX code)."""
  n = points.shape[0]
  temp = np.full(n, 1e10, np.float32)
  out = [0]
  last = 0
  for _ in range(1, num):
    best, besti = -1.0, 0
    for k in range(n):
      x, y, z = points[k]
      if x * x + y * y + z * z <= 1e-3:
        continue
      dx, dy, dz = points[k] - points[last]
      d = np.float32(dx * dx + dy * dy + dz * dz)
      temp[k] = min(temp[k], d)
      if temp[k] > best:  # strict: the first index wins a tie
        best, besti = temp[k], k
    out.append(besti)
    last = besti
  return np.array(out, np.int32)


def test_fps_matches_kernel_rules_with_near_origin_points_and_ties():
  rng = np.random.default_rng(0)
  # A grid gives many exact distance ties; add points at and near the origin, which must never
  # be chosen after the first centre.
  grid = np.stack(np.meshgrid(*[np.arange(-2, 3)] * 3, indexing='ij'), -1).reshape(-1, 3)
  near = np.array([[0.0, 0.0, 0.0], [0.01, 0.0, 0.02], [0.0, -0.03, 0.0]])
  cloud = np.concatenate([grid, near]).astype(np.float32)
  clouds = np.stack([cloud, rng.permutation(cloud), (cloud * 0.5)[::-1].copy()])
  got = np.asarray(jax.jit(tokenizer.farthest_point_sample, static_argnums=1)(clouds, 40))
  for b in range(clouds.shape[0]):
    want = numpy_fps(clouds[b], 40)
    np.testing.assert_array_equal(got[b], want)
    norms = (clouds[b][got[b][1:]] ** 2).sum(-1)
    assert (norms > 1e-3).all()


def test_fps_first_point_near_origin_and_all_near_origin():
  cloud = np.zeros((1, 16, 3), np.float32)
  cloud[0, 5] = [1.0, 0.0, 0.0]
  got = np.asarray(tokenizer.farthest_point_sample(jnp.asarray(cloud), 4))
  # Index 0 first; then the only eligible point; then nothing is eligible any more except the
  # one already chosen, whose running distance is 0 (still > -1, so it is chosen again).
  np.testing.assert_array_equal(got[0], numpy_fps(cloud[0], 4))
  np.testing.assert_array_equal(got[0], [0, 5, 5, 5])


def test_fps_random_clouds_distinct_indices():
  rng = np.random.default_rng(1)
  pts = rng.normal(size=(3, 300, 3)).astype(np.float32)
  got = np.asarray(tokenizer.farthest_point_sample(jnp.asarray(pts), 64))
  for b in range(3):
    assert len(set(got[b].tolist())) == 64
    np.testing.assert_array_equal(got[b], numpy_fps(pts[b], 64))


def test_knn_group_matches_brute_force():
  rng = np.random.default_rng(2)
  pts = rng.normal(size=(2, 200, 3)).astype(np.float32)
  centers = pts[:, :10]
  neigh, idx = tokenizer.knn_group(jnp.asarray(pts), jnp.asarray(centers), 8)
  neigh, idx = np.asarray(neigh), np.asarray(idx)
  for b in range(2):
    for g in range(10):
      d = ((pts[b] - centers[b, g]) ** 2).sum(-1)
      want = np.argsort(d, kind='stable')[:8]
      assert set(idx[b, g].tolist()) == set(want.tolist())
      assert idx[b, g, 0] == g  # the centre itself is its own nearest neighbour
      np.testing.assert_allclose(neigh[b, g], pts[b, idx[b, g]] - centers[b, g], atol=1e-6)


def test_group_points_shapes_and_jit():
  pts = jax.random.normal(jax.random.PRNGKey(0), (2, 128, 3))
  neigh, centers = jax.jit(tokenizer.group_points, static_argnums=(1, 2))(pts, 16, 8)
  assert neigh.shape == (2, 16, 8, 3) and centers.shape == (2, 16, 3)
  # Each group's first neighbour is the centre itself: relative coordinate zero.
  np.testing.assert_allclose(np.asarray(neigh[:, :, 0]), 0.0, atol=1e-6)


def test_fps_under_pmap():
  n = jax.local_device_count()
  pts = jax.random.normal(jax.random.PRNGKey(0), (n, 2, 64, 3))
  got = jax.pmap(lambda p: tokenizer.farthest_point_sample(p, 8))(pts)
  for d in range(n):
    np.testing.assert_array_equal(np.asarray(got[d]),
                                  np.asarray(tokenizer.farthest_point_sample(pts[d], 8)))
