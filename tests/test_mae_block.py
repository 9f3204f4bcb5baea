"""Point-MAE's plain transformer block (`transformer.Block`): parameter paths, and the forward
against a NumPy evaluation of SPEC §1's block written out by hand (float32 both sides; tolerance
1e-5 absolute on outputs of order 1, a few hundred float32 roundings of ~6e-8 each)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dapt_jax.models import transformer
from dapt_jax.models.peft import dapt as dapt_lib


def _np_block(p, x, num_heads):
  def ln(v, s, b):
    mu = v.mean(-1, keepdims=True)
    var = ((v - mu) ** 2).mean(-1, keepdims=True)
    return (v - mu) / np.sqrt(var + 1e-5) * s + b

  def gelu(v):
    return 0.5 * v * (1.0 + np.vectorize(math.erf)(v / math.sqrt(2.0)))

  b, t, c = x.shape
  h = ln(x, p['norm1']['scale'], p['norm1']['bias'])
  qkv = (h @ p['attn']['qkv']['kernel']).reshape(b, t, 3, num_heads, c // num_heads)
  q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))          # [B, H, T, D]
  logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(c // num_heads)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w = w / w.sum(-1, keepdims=True)
  o = (w @ v).transpose(0, 2, 1, 3).reshape(b, t, c)
  x = x + o @ p['attn']['proj']['kernel'] + p['attn']['proj']['bias']
  h = ln(x, p['norm2']['scale'], p['norm2']['bias'])
  h = gelu(h @ p['mlp']['fc1']['kernel'] + p['mlp']['fc1']['bias'])
  return x + h @ p['mlp']['fc2']['kernel'] + p['mlp']['fc2']['bias']


def test_block_parameter_paths_are_the_dapt_blocks_minus_dapt_parts():
  x = jnp.ones((2, 5, 16))
  plain = transformer.Block(num_heads=4, mlp_ratio=4.0).init(jax.random.PRNGKey(0), x, train=False)
  dapt = transformer.Block(num_heads=4, mlp_ratio=4.0, additions=dapt_lib.Additions(rank=4)).init(
      jax.random.PRNGKey(0), x, train=False)
  assert set(plain) == {'params'}
  plain_paths = set(traverse_util.flatten_dict(plain['params'], sep='/'))
  dapt_paths = {p for p in traverse_util.flatten_dict(dapt['params'], sep='/')
                if 'tfts' not in p and not p.startswith('adapter/')}
  assert plain_paths == dapt_paths
  assert 'attn/qkv/bias' not in plain_paths


def test_block_forward_matches_numpy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 16)).astype(np.float32)
  block = transformer.Block(num_heads=4, mlp_ratio=2.0)
  params = block.init(jax.random.PRNGKey(1), jnp.asarray(x), train=False)['params']
  # Randomise everything (LayerNorm 1/0 and zero biases at init would hide mistakes).
  flat = traverse_util.flatten_dict(params)
  flat = {k: rng.normal(0.0, 0.3, v.shape).astype(np.float32) for k, v in flat.items()}
  params = traverse_util.unflatten_dict(flat)
  got = np.asarray(block.apply({'params': params}, jnp.asarray(x), train=False))
  want = _np_block(jax.tree.map(np.asarray, params), x.astype(np.float64), 4)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_block_kernel_init_and_drop_path_in_training():
  x = jnp.ones((8, 3, 16))
  block = transformer.Block(num_heads=2, mlp_ratio=1.0, drop_path_rate=0.5,
                            kernel_init=jax.nn.initializers.zeros)
  v = block.init(jax.random.PRNGKey(0), x, train=False)
  assert not np.any(np.asarray(v['params']['mlp']['fc1']['kernel']))
  # With zero kernels and biases both branches are zero, so the block is the identity whatever
  # drop-path does; with random kernels, training mode differs between dropout keys.
  y = block.apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  block = transformer.Block(num_heads=2, mlp_ratio=1.0, drop_path_rate=0.5)
  v = block.init(jax.random.PRNGKey(0), x, train=False)
  xr = jax.random.normal(jax.random.PRNGKey(5), x.shape)
  y1 = block.apply(v, xr, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  y2 = block.apply(v, xr, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  assert not np.allclose(np.asarray(y1), np.asarray(y2))
