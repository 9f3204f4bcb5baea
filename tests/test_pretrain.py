"""Pre-training end to end (dapt_jax/tasks/pretrain.py, configs/pretrain_shapenet.py): the views,
data parallelism, training from the config with exact resumption, evaluation, the workdir as a
DAPT backbone, and the export to Point-MAE's checkpoint layout and back.

A tiny autoencoder on a small generated set (CPU, 8 forced host devices from tests/conftest.py).
Tolerances: device-count agreement 1e-5 absolute (float32 sums in another order); the exported
model's loss against the PyTorch reference 1e-5 relative (float32 on both sides: a few thousand
roundings of 6e-8 each through a 1-block encoder and decoder, seen at ≲1e-6).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pretrain_shapenet
from dapt_jax import checkpoints as ckpt_lib
from dapt_jax.models import mae
from dapt_jax import optim
from dapt_jax import partition
from dapt_jax import reporting
from dapt_jax import steps as steps_lib
from dapt_jax import tasks
from dapt_jax import train
from dapt_jax import weights
from dapt_jax.tasks import pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = dict(trans_dim=16, encoder_dims=16, depth=1, num_heads=2, num_group=8,
                  group_size=8, decoder_depth=1, decoder_num_heads=2, drop_path_rate=0.0)
TINY_CONFIG_FILE = '''
from configs import pretrain_shapenet

def get_config(arg=None):
  c = pretrain_shapenet.get_config('synthetic')
  c.unlock()
  c.model.update({model})
  c.lock()
  return c
'''.format(model=repr(TINY_MODEL))


def tiny_config(tmp_path, **overrides):
  c = pretrain_shapenet.get_config('synthetic')
  c.unlock()
  c.model.update(TINY_MODEL)
  c.data.update(num_points=64, synthetic_points=96, synthetic_num_train=64,
                synthetic_num_test=20, synthetic_num_classes=4,
                tfds_data_dir=str(tmp_path.parent / 'tfds'))
  c.update(batch_size=16, num_epochs=2, log_every_steps=1, progress_bar=False)
  c.eval.update(every_epochs=1, batch_size=8)
  c.checkpoint.update(every_epochs=1, keep=2)
  c.optim.update(warmup_epochs=1, warmup_lr_init=1e-3)  # so that the few steps move something
  for k, v in overrides.items():
    target = c
    *path, last = k.split('.')
    for p in path:
      target = target[p]
    target[last] = v
  c.lock()
  return c


def restored_state(workdir, config):
  net, variables, labels = weights.build(config, tasks.get_task(config))
  tx = optim.make_optimizer(config.optim, labels, lambda s: 0.0)
  template = jax.tree.map(np.asarray, steps_lib.create_state(variables, labels, tx,
                                                             jax.random.PRNGKey(0)))
  ckpts = ckpt_lib.Checkpoints(workdir)
  state, meta = ckpts.restore(template, 'last')
  ckpts.close()
  return state, meta


# ---------------------------------------------------------------------------------------------
# Views


def test_views_subset_then_pc_norm_then_scale_translate():
  rng = np.random.default_rng(0)
  cloud = (rng.normal(size=(300, 3)) * [3.0, 1.0, 0.5] + [5.0, -2.0, 1.0]).astype(np.float32)
  views = pretrain.Views(num_points=128)
  x = np.asarray(views.one(jax.random.PRNGKey(1), jnp.asarray(cloud), augmented=False))
  # Distinct points of the cloud, then centred on their own centroid with max norm 1.
  assert x.shape == (128, 3)
  sub = np.asarray(pretrain.random_subset(jax.random.split(jax.random.PRNGKey(1))[0],
                                          jnp.asarray(cloud), 128))
  assert len({r.tobytes() for r in sub}) == 128
  assert all(any(np.array_equal(r, c) for c in cloud) for r in sub[:10])
  centred = sub - sub.mean(0)
  np.testing.assert_allclose(x, centred / np.linalg.norm(centred, axis=1).max(), atol=1e-6)
  np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-6)
  assert abs(np.linalg.norm(x, axis=1).max() - 1.0) < 1e-6
  # Training: per-cloud anisotropic scale U(2/3, 3/2) and shift U(-0.2, 0.2) on top.
  y = np.asarray(views.one(jax.random.PRNGKey(1), jnp.asarray(cloud), augmented=True))
  scale = np.std(y, 0) / np.std(x, 0)
  shift = y.mean(0) - x.mean(0) * scale
  assert np.all((scale > 2 / 3 - 1e-4) & (scale < 1.5 + 1e-4)) and np.all(np.abs(shift) < 0.2 + 1e-5)
  np.testing.assert_allclose(y, x * scale + shift, atol=1e-5)


def _steps(config, devices, mode, num_steps=2):
  task = tasks.get_task(config)
  net, variables, labels = weights.build(config, task)
  tx = optim.make_optimizer(config.optim, labels, lambda s: 1e-3)
  state = jax.tree.map(np.asarray, steps_lib.create_state(variables, labels, tx,
                                                          jax.random.PRNGKey(1)))
  parallel = steps_lib.DataParallel(mode, config.batch_size, devices=devices)
  train_step, eval_step = steps_lib.make_task_steps(parallel, task, net, tx)
  state_dev = parallel.put_state(state)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(num_steps):
    batch = {'points': rng.normal(size=(config.batch_size, 96, 3)).astype(np.float32)}
    state_dev, m = train_step(state_dev, parallel.put_batch(batch))
    losses.append(float(parallel.unreplicate_metrics(m)['loss']))
  batch = {'points': rng.normal(size=(config.batch_size, 96, 3)).astype(np.float32),
           'index': np.arange(config.batch_size, dtype=np.int32)}
  per_cloud = parallel.gather(eval_step(state_dev, parallel.put_batch(batch))['loss'])
  return np.array(losses), parallel.get_state(state_dev), per_cloud


def test_one_and_eight_devices_agree(tmp_path):
  """1 device (pmap) against 8 (shard_map): the same losses, parameters, BatchNorm statistics
  and evaluation. Adam's epsilon is raised to 1e-3 here: the patch encoder's biases before
  BatchNorm have exactly zero gradient in exact arithmetic, and with eps 1e-8 Adam turns the
  sign of the float noise (which depends on the summation order, hence the device count) into a
  full ±lr step; that is the optimizer, not data parallelism, so the test removes it."""
  assert jax.device_count() == 8, 'tests/conftest.py forces 8 CPU devices'
  config = tiny_config(tmp_path, **{'optim.eps': 1e-3})
  l1, s1, e1 = _steps(config, jax.devices()[:1], 'pmap')
  l8, s8, e8 = _steps(config, jax.devices(), 'shard_map')
  np.testing.assert_allclose(l8, l1, atol=1e-5, rtol=0)
  for tree in ('trainable', 'batch_stats'):
    fa, fb = partition.flatten(getattr(s1, tree)), partition.flatten(getattr(s8, tree))
    assert fa.keys() == fb.keys()
    for k in fa:
      np.testing.assert_allclose(fa[k], fb[k], atol=1e-5, rtol=0, err_msg=k)
  np.testing.assert_allclose(e8, e1, atol=1e-5, rtol=0)
  assert e1.shape == (16,) and np.all(np.isfinite(e1)) and len(set(e1.tolist())) == 16


# ---------------------------------------------------------------------------------------------
# Training from the config


@pytest.fixture(scope='module')
def pretrain_run(tmp_path_factory):
  """An uninterrupted run and one stopped at step 5 then resumed (epochs 0..2, 4 steps each)."""
  tmp = tmp_path_factory.mktemp('pretrain')
  config = tiny_config(tmp / 'x')
  full_dir = str(tmp / 'full')
  summary = train.train_and_evaluate(config, full_dir)
  part_dir = str(tmp / 'part')
  stopped = train.train_and_evaluate(tiny_config(tmp / 'x', max_steps=5), part_dir)
  resumed = train.train_and_evaluate(config, part_dir)
  return {'tmp': tmp, 'config': config, 'full': full_dir, 'part': part_dir, 'summary': summary,
          'stopped': stopped, 'resumed': resumed}


def test_pretraining_runs_from_the_config_and_resumes_exactly(pretrain_run):
  r = pretrain_run
  assert r['summary']['stopped'] == 'finished' and r['summary']['steps'] == 12
  assert r['stopped']['stopped'] == 'max_steps' and r['stopped']['steps'] == 5
  assert r['resumed']['steps'] == 12
  # Everything trains (Point-MAE's recipe), and the count is the model's.
  assert r['summary']['trainable_parameters'] == r['summary']['total_parameters'] > 0
  full, _ = restored_state(r['full'], r['config'])
  part, _ = restored_state(r['part'], r['config'])
  for tree in ('trainable', 'batch_stats', 'opt_state'):
    for a, b in zip(jax.tree.leaves(getattr(full, tree)), jax.tree.leaves(getattr(part, tree))):
      np.testing.assert_array_equal(a, b)
  losses = lambda d: [x['loss'] for x in reporting.read_metrics(d) if x['split'] == 'train']
  assert losses(r['part']) == losses(r['full']) and len(losses(r['full'])) == 12
  # Evaluation after epochs 1 and 2 (never 0): the test split's Chamfer loss; no best checkpoint.
  evals = [x for x in reporting.read_metrics(r['full']) if x['split'] == 'eval']
  assert [x['epoch'] for x in evals] == [1, 2]
  assert all(np.isfinite(x['loss']) and x['loss_x1000'] == pytest.approx(1000 * x['loss'])
             for x in evals)
  assert r['summary']['best_metric'] is None and r['summary']['final_loss'] == evals[-1]['loss']
  ckdir = os.path.join(r['full'], 'checkpoints')
  assert sorted(os.listdir(os.path.join(ckdir, 'last'))) == ['12', '8']
  assert not os.listdir(os.path.join(ckdir, 'best'))
  assert os.path.exists(os.path.join(r['full'], 'curves.png'))


def test_eval_mode_reads_the_last_checkpoint_and_counts_every_cloud(pretrain_run):
  r = pretrain_run
  metrics = train.evaluate_workdir(r['config'], r['full'])
  assert metrics['num_samples'] == 20
  last_eval = [x for x in reporting.read_metrics(r['full']) if x['split'] == 'eval'][-1]
  assert metrics['loss'] == pytest.approx(last_eval['loss'], rel=1e-6)
  saved = np.load(os.path.join(r['full'], 'predictions_test.npz'))
  assert sorted(saved['index'].tolist()) == list(range(20))
  assert float(saved['loss'].mean()) == pytest.approx(metrics['loss'], rel=1e-6)


def test_pretraining_workdir_initialises_the_dapt_classifier(pretrain_run):
  from configs import synthetic
  r = pretrain_run
  c = synthetic.get_config()
  c.unlock()
  c.model.update(trans_dim=16, encoder_dims=16, depth=1, num_heads=2, num_group=8, group_size=8,
                 rank=4, num_classes=4)
  c.data.update(num_points=64, point_all=80)
  c.init_from = r['full']
  c.lock()
  net, variables, labels = weights.build(c, tasks.get_task(c))
  saved, _ = ckpt_lib.workdir_variables(r['full'], 'last')
  got = partition.flatten(variables['params'])
  for path, value in partition.flatten(saved['params']).items():
    if mae.is_pretrain_only(path):
      assert path not in got
    else:
      np.testing.assert_array_equal(got[path], value)
  np.testing.assert_array_equal(variables['batch_stats']['encoder']['bn2']['mean'],
                                saved['batch_stats']['encoder']['bn2']['mean'])
  logits = net.clone(axis_name=None).apply(
      variables, np.random.default_rng(0).normal(size=(2, 64, 3)).astype(np.float32))
  assert logits.shape == (2, 4) and np.all(np.isfinite(np.asarray(logits)))


# ---------------------------------------------------------------------------------------------
# Export to Point-MAE's layout and back

torch = pytest.importorskip('torch')


def test_export_loads_strictly_in_the_reference_and_reads_back_bit_exactly(pretrain_run, tmp_path,
                                                                          capsys):
  from convert.__main__ import main as convert_main
  from tests import torch_reference_mae as ref
  r = pretrain_run
  pth = str(tmp_path / 'pretrain.pth')
  assert convert_main(['--to-torch', r['full'], pth]) == 0
  assert "Point-MAE's pre-training layout" in capsys.readouterr().out
  ckpt = torch.load(pth, weights_only=True)
  assert list(ckpt) == ['base_model']
  sd = ckpt['base_model']
  m = r['config'].model
  model = ref.TorchPointMAE(trans_dim=m.trans_dim, depth=m.depth, num_heads=m.num_heads,
                            mlp_ratio=m.mlp_ratio, num_group=m.num_group, group_size=m.group_size,
                            drop_path_rate=m.drop_path_rate, mask_ratio=m.mask_ratio,
                            decoder_depth=m.decoder_depth, decoder_num_heads=m.decoder_num_heads)
  assert list(sd) == list(model.state_dict())  # same keys, same order
  model.load_state_dict(sd, strict=True)
  for k, v in sd.items():
    assert v.dtype == (torch.int64 if k.endswith('num_batches_tracked') else torch.float32), k

  # The exported model computes the same loss as the JAX one (evaluation mode, same groups/mask).
  saved, _ = ckpt_lib.workdir_variables(r['full'], 'last')
  net = mae.build_model(r['config'].model)
  pts = jnp.asarray(np.random.default_rng(3).normal(size=(4, 64, 3)), jnp.float32)
  nb, centers = net.tokenize(pts)
  mask = mae.make_masks(jax.random.split(jax.random.PRNGKey(0), 4), centers, net.num_mask)
  pred, target = net.apply(saved, nb, centers, mask, train=False, method=net.from_groups)
  model.eval()
  with torch.no_grad():
    want = model.loss_from_groups(torch.from_numpy(np.array(nb)),
                                  torch.from_numpy(np.array(centers)),
                                  torch.from_numpy(np.array(mask))).item()
  assert abs(float(mae.chamfer_l2(pred, target)) - want) <= 1e-5 * abs(want)

  # Back to Flax: with the pre-training config, the whole autoencoder, bit for bit ...
  cfg_file = tmp_path / 'tiny_pretrain.py'
  cfg_file.write_text(TINY_CONFIG_FILE)
  back = tmp_path / 'back'
  assert convert_main([pth, str(back), '--config', str(cfg_file)]) == 0
  from dapt_jax import pretrained
  loaded = pretrained.load_converted(str(back))
  for c in ('params', 'batch_stats'):
    a, b = partition.flatten(saved[c]), partition.flatten(loaded[c])
    assert a.keys() == b.keys()
    for k in a:
      assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
  # ... and out again: the same file contents.
  again = str(tmp_path / 'again.pth')
  assert convert_main(['--to-torch', str(back), again]) == 0
  sd2 = torch.load(again, weights_only=True)['base_model']
  assert list(sd2) == list(sd) and all(torch.equal(sd[k], sd2[k]) for k in sd)

  # Without a pre-training config it is a DAPT backbone: the encoder, bit for bit.
  backbone = tmp_path / 'backbone'
  cls_cfg = tmp_path / 'tiny_cls.py'
  cls_cfg.write_text('from configs import synthetic\n\ndef get_config(arg=None):\n'
                     '  c = synthetic.get_config()\n  c.unlock()\n'
                     '  c.model.update(trans_dim=16, encoder_dims=16, depth=1, num_heads=2,\n'
                     '                 num_group=8, group_size=8, rank=4, num_classes=4)\n'
                     '  c.lock()\n  return c\n')
  assert convert_main([pth, str(backbone), '--config', str(cls_cfg)]) == 0
  enc = pretrained.load_converted(str(backbone))
  flat_enc, flat_saved = partition.flatten(enc['params']), partition.flatten(saved['params'])
  assert set(flat_enc) == {p for p in flat_saved if not mae.is_pretrain_only(p)}
  for k, v in flat_enc.items():
    assert np.array_equal(v, flat_saved[k]), k
  with open(backbone / 'report.json') as f:
    report = json.load(f)
  assert report['layout'] == 'point_mae' and report['counts']['ignored'] > 0


def test_export_refuses_a_mismatched_config_in_one_line(pretrain_run, tmp_path, capsys):
  from convert.__main__ import main as convert_main
  r = pretrain_run
  pth = tmp_path / 'p.pth'
  assert convert_main(['--to-torch', r['full'], str(pth)]) == 0
  capsys.readouterr()
  bad = tmp_path / 'wide.py'
  bad.write_text(TINY_CONFIG_FILE.replace("'trans_dim': 16", "'trans_dim': 32").replace(
      "'encoder_dims': 16", "'encoder_dims': 32"))
  out = tmp_path / 'out'
  assert convert_main([str(pth), str(out), '--config', str(bad)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: shape mismatch for ') and not out.exists()
