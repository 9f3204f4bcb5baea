"""Evaluation does not depend on padding (issue: the last evaluation batch is padded with copies
of sample 0, and PointGST's d_min is taken over the whole batch).

The same 8 clouds are evaluated by the classification task's real evaluation step (2 devices,
shard_map) in a batch of 8 (no padding) and in a batch of 16 (8 padded rows, mask False, as
`data.loader.EvalLoader` pads). In float64 both sides compute the same arithmetic on the real
clouds, so they agree to rounding of a few ulps (tolerance 1e-9 on logits of order 1; the
padding changed them by 0.07–0.18 before); with the mask withheld the padded copies move d_min
and the logits visibly, which shows the check can fail.
"""
import jax
import numpy as np

from configs import synthetic
from dapt_jax import optim
from dapt_jax import partition
from dapt_jax import steps as steps_lib
from dapt_jax import tasks

TOL = 1e-9


def pointgst_config():
  c = synthetic.get_config()
  c.unlock()
  c.model.update(trans_dim=16, encoder_dims=16, depth=2, num_heads=2, num_group=8, group_size=8,
                 num_classes=4, peft='pointgst', pgst_rank=4, pgst_local=4, dtype='float64',
                 drop_path_rate=0.0)
  c.data.update(num_points=64, point_all=64)
  c.eval.batch_size = 16
  c.lock()
  return c


def test_padded_rows_do_not_change_the_real_clouds_logits(x64):
  config = pointgst_config()
  task = tasks.get_task(config)
  net = task.build_model(axis_name=steps_lib.AXIS)
  variables = task.init_variables(task.build_model(), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  # PCSA starts as the zero function (up and adapt1 zero): randomise it so the bases matter.
  flat = partition.flatten(variables['params'])
  flat = {k: (rng.normal(0.0, 0.3, v.shape) if '/pcsa/' in k else v) for k, v in flat.items()}
  variables = dict(variables, params=partition.unflatten(flat))
  labels = partition.label_params(variables['params'], partition.rules_for(config))
  tx = optim.make_optimizer(config.optim, labels, lambda step: 0.0)
  state = steps_lib.create_state(variables, labels, tx, jax.random.PRNGKey(1))

  # Clouds of different spreads, so each has its own smallest centre distance; the padding
  # repeats a denser cloud that is not among them (as the loader repeats the split's sample 0).
  clouds = rng.normal(size=(8, 64, 3)) * rng.uniform(0.5, 2.0, size=(8, 1, 1))
  pad = rng.normal(size=(1, 64, 3)) * 0.05

  def logits(points, mask):
    parallel = steps_lib.DataParallel('shard_map', len(points), devices=jax.devices()[:2])
    _, eval_step = steps_lib.make_task_steps(parallel, task, net, tx)
    batch = {'points': points, 'mask': mask} if mask is not None else {'points': points}
    out = eval_step(parallel.put_state(state), parallel.put_batch(batch))
    return parallel.gather(out['logits'])

  plain = logits(clouds, np.ones(8, bool))
  padded_points = np.concatenate([clouds, np.repeat(pad, 8, axis=0)])
  padded = logits(padded_points, np.arange(16) < 8)
  assert plain.dtype == np.float64 and padded.shape == (16, 4)
  np.testing.assert_allclose(padded[:8], plain, rtol=0, atol=TOL)
  # Without the mask the padded copies take part in d_min: the real clouds' logits move.
  unmasked = logits(padded_points, None)
  assert np.abs(unmasked[:8] - plain).max() > 1e3 * TOL
