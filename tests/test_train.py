"""Training: data parallelism (1 vs 8 devices, pmap vs shard_map), exact resumption,
checkpoints, preemption, failure behaviour, evaluation and prediction outputs.

Runs on CPU with 8 forced host devices (tests/conftest.py) and a tiny model on a small
synthetic dataset. Parameter agreement tolerance: 1e-5 max abs (derived in the device test).
"""
import json
import os
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from configs import synthetic
from dapt_jax import checkpoints as ckpt_lib
from dapt_jax import optim
from dapt_jax import partition
from dapt_jax import predict
from dapt_jax import reporting
from dapt_jax import steps as steps_lib
from dapt_jax import tasks
from dapt_jax import train
from dapt_jax import weights
from dapt_jax.tasks import classification

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path, **overrides):
  c = synthetic.get_config()
  c.unlock()
  c.model.update(trans_dim=32, encoder_dims=32, depth=2, num_heads=2, num_group=8, group_size=8,
                 rank=4, num_classes=4, drop_path_rate=0.0, drop_adapter_rate=0.0,
                 head_dropout_rate=0.0)
  c.data.update(num_points=64, point_all=80, synthetic_points=128, synthetic_num_train=64,
                synthetic_num_test=20, synthetic_num_classes=4,
                tfds_data_dir=str(tmp_path / 'tfds'))
  c.update(batch_size=16, num_epochs=2, log_every_steps=1, progress_bar=False,
           parallel='shard_map')  # pmap is covered by the device-equivalence test
  c.eval.update(every_epochs=1, batch_size=8)
  c.checkpoint.update(every_epochs=1, keep=2)
  for k, v in overrides.items():
    target = c
    *path, last = k.split('.')
    for p in path:
      target = target[p]
    target[last] = v
  c.lock()
  return c


def final_params(workdir, config):
  net, variables, labels = weights.build(config, tasks.get_task(config))
  tx = optim.make_optimizer(config.optim, labels, lambda s: 0.0)
  template = jax.tree.map(np.asarray, steps_lib.create_state(variables, labels, tx,
                                                             jax.random.PRNGKey(0)))
  ckpts = ckpt_lib.Checkpoints(workdir)
  state, meta = ckpts.restore(template, 'last')
  ckpts.close()
  return state, meta


def train_losses(workdir):
  return [r['loss'] for r in reporting.read_metrics(workdir) if r['split'] == 'train']


def _run_steps(config, devices, mode, num_steps=3):
  """A few steps of the real step function on the given devices; returns losses and state."""
  net, variables, labels = weights.build(config, tasks.get_task(config))
  tx = optim.make_optimizer(config.optim, labels, optim.make_schedule(config.optim, 2, 4))
  state = jax.tree.map(np.asarray, steps_lib.create_state(variables, labels, tx,
                                                          jax.random.PRNGKey(1)))
  parallel = steps_lib.DataParallel(mode, config.batch_size, devices=devices)
  train_step, _ = classification.make_steps(parallel, net, tx, config.data.num_points,
                                           config.data.point_all)
  state_dev = parallel.put_state(state)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(num_steps):
    batch = {'points': rng.normal(size=(config.batch_size, 128, 3)).astype(np.float32),
             'label': rng.integers(0, 4, config.batch_size).astype(np.int32)}
    state_dev, m = train_step(state_dev, parallel.put_batch(batch))
    losses.append(float(parallel.unreplicate_metrics(m)['loss']))
  return np.array(losses), parallel.get_state(state_dev)


def _assert_states_close(a, b, atol=1e-5):
  for tree in ('trainable', 'batch_stats'):
    fa, fb = partition.flatten(getattr(a, tree)), partition.flatten(getattr(b, tree))
    assert fa.keys() == fb.keys()
    for k in fa:
      np.testing.assert_allclose(fa[k], fb[k], atol=atol, rtol=0, err_msg=k)


def test_one_and_eight_devices_and_pmap_and_shard_map_agree(tmp_path):
  assert jax.device_count() == 8, 'tests/conftest.py forces 8 CPU devices'
  # The runs differ only in the order in which devices' partial sums are added, i.e. in float32
  # rounding: about sqrt(L·n)·u = sqrt(25 × 512) × 6e-8 = 6.8e-6 relative for a quantity L = 25
  # layers deep (4 encoder, 2 blocks × 9, 3 head) over sums of n <= 512 terms, independent
  # roundings adding in quadrature (losses ~1.4: 1e-5). optim.eps=1 makes Adam's update ~lr·g
  # instead of lr·sign(g), so rounding noise in near-zero gradients is not blown up to ±lr; then
  # 3 steps of lr 0.05 with |g| <= 10 (the clip norm) move parameters apart by about
  # 3 × 0.05 × 6.8e-6 × 10 = 1e-5 (atol), while they move by ~1e-2 (checked below), which is
  # what a wrong shard or a missing mean would change.
  config = tiny_config(tmp_path, **{'optim.eps': 1.0, 'optim.lr': 0.05,
                                    'optim.warmup_epochs': 0})
  losses1, state1 = _run_steps(config, jax.devices()[:1], 'pmap')
  losses8, state8 = _run_steps(config, jax.devices(), 'pmap')
  losses_sm, state_sm = _run_steps(config, jax.devices(), 'shard_map')
  np.testing.assert_allclose(losses8, losses1, atol=1e-5, rtol=0)
  np.testing.assert_allclose(losses_sm, losses8, atol=1e-5, rtol=0)
  _assert_states_close(state1, state8)
  _assert_states_close(state8, state_sm)
  assert int(state8.step) == 3
  # Something was learned: the trainable parameters moved.
  _, variables, labels = weights.build(config, tasks.get_task(config))
  start, _ = partition.split(variables['params'], labels)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(start),
                                                jax.tree.leaves(state8.trainable))]
  assert sum(m > 0 for m in moved) > len(moved) // 2 and max(moved) > 1e-3


def test_batch_must_divide_over_devices():
  with pytest.raises(ValueError, match='does not divide evenly over 8 devices'):
    steps_lib.DataParallel('pmap', 12)


def test_train_eval_outputs_and_exact_resume(tmp_path):
  # Uninterrupted run: epochs 0..2 of 4 steps each.
  full_dir = str(tmp_path / 'full')
  config = tiny_config(tmp_path)
  summary = train.train_and_evaluate(config, full_dir)
  assert summary['stopped'] == 'finished' and summary['steps'] == 12
  assert summary['final_accuracy'] is not None
  full_state, _ = final_params(full_dir, config)

  # Interrupted after step 5 (inside epoch 1), then the same command again.
  part_dir = str(tmp_path / 'part')
  summary = train.train_and_evaluate(tiny_config(tmp_path, max_steps=5), part_dir)
  assert summary['stopped'] == 'max_steps' and summary['steps'] == 5
  state5, meta5 = final_params(part_dir, config)
  assert int(state5.step) == 5 and meta5['loader'] == {**meta5['loader'], 'epoch': 1, 'batch': 1}
  summary = train.train_and_evaluate(config, part_dir)
  assert summary['steps'] == 12
  resumed_state, _ = final_params(part_dir, config)
  for tree in ('trainable', 'batch_stats', 'opt_state'):
    for a, b in zip(jax.tree.leaves(getattr(full_state, tree)),
                    jax.tree.leaves(getattr(resumed_state, tree))):
      np.testing.assert_array_equal(a, b)
  assert train_losses(part_dir) == train_losses(full_dir)

  # Files a person reads.
  records = reporting.read_metrics(full_dir)
  evals = [r for r in records if r['split'] == 'eval']
  assert [r['epoch'] for r in evals] == [1, 2]  # never after epoch 0
  assert os.path.exists(os.path.join(full_dir, 'curves.png'))
  assert os.listdir(os.path.join(full_dir, 'tensorboard'))
  ckdir = os.path.join(full_dir, 'checkpoints')
  assert sorted(os.listdir(os.path.join(ckdir, 'last'))) == ['12', '8']  # keep = 2
  assert len(os.listdir(os.path.join(ckdir, 'best'))) == 1
  assert os.path.isdir(os.path.join(ckdir, 'frozen'))

  # --mode=eval: every test sample counted once, outputs written.
  metrics = train.evaluate_workdir(config, full_dir)
  assert metrics['num_samples'] == 20
  with open(os.path.join(full_dir, 'eval_test.json')) as f:
    saved = json.load(f)
  assert saved['num_samples'] == 20 and len(saved['confusion_matrix']) == 4
  assert sum(map(sum, saved['confusion_matrix'])) == 20
  preds = np.load(os.path.join(full_dir, 'predictions_test.npz'))
  assert preds['logits'].shape == (20, 4) and preds['labels'].shape == (20,)
  acc = float(np.mean(preds['logits'].argmax(-1) == preds['labels']))
  assert acc == pytest.approx(saved['accuracy'])

  # Voting gives a valid result over the same samples.
  voted = train.evaluate_workdir(tiny_config(tmp_path, **{'eval.votes': 3}), full_dir)
  assert voted['num_samples'] == 20 and voted['votes'] == 3

  # --mode=predict on the formats a user may have.
  cloud = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
  paths = {'npy': tmp_path / 'c.npy', 'txt': tmp_path / 'c.txt', 'ply': tmp_path / 'c.ply'}
  np.save(paths['npy'], cloud)
  np.savetxt(paths['txt'], cloud, delimiter=',')
  with open(paths['ply'], 'wb') as f:
    f.write(b'ply\nformat binary_little_endian 1.0\nelement vertex 200\n'
            b'property float x\nproperty float y\nproperty float z\nend_header\n')
    f.write(cloud.astype('<f4').tobytes())
  # One call over the three files (one compilation): the same cloud read from each format
  # gets the same ranking of classes.
  result = predict.predict(config, full_dir, str(tmp_path / 'c.*'))
  assert sorted(result.files) == sorted(str(p) for p in paths.values())
  results = [result.top(i) for i in range(len(result.files))]
  for top in results:
    assert len(top) == 4 and abs(sum(p for _, p in top) - 1.0) < 1e-5
    assert [n for n, _ in top] == [n for n, _ in results[0]]


def test_num_epochs_0_trains_one_epoch_and_evaluates_it(tmp_path):
  """Epochs run 0..num_epochs, as in the release, which never evaluates epoch 0; the last epoch
  is always evaluated here, so a num_epochs=0 run ends with its accuracy and a best checkpoint
  (before, it ended with neither and main.py called it "already complete")."""
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(tiny_config(tmp_path, num_epochs=0), workdir)
  assert summary['stopped'] == 'finished' and summary['steps'] == 4
  assert summary['final_accuracy'] is not None and summary['best_epoch'] == 0
  assert [r['epoch'] for r in reporting.read_metrics(workdir) if r['split'] == 'eval'] == [0]
  assert os.listdir(os.path.join(workdir, 'checkpoints', 'best')) == ['4']


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'nan')
  good = tiny_config(tmp_path, max_steps=4)
  train.train_and_evaluate(good, workdir)
  before, _ = final_params(workdir, good)
  bad = tiny_config(tmp_path, overwrite=True, **{'optim.lr': 1e30, 'optim.warmup_lr_init': 1e30,
                                                 'optim.min_lr': 1e30, 'optim.clip_grad_norm': 0.0})
  # Same workdir, different config: the refusal path is tested through main.py in
  # tests/test_cli_errors.py (with --config.overwrite=True replacing the run); here overwrite=True
  # would wipe the run, so point the bad run at a copy of the good one instead.
  import shutil
  bad_dir = str(tmp_path / 'nan_copy')
  shutil.copytree(workdir, bad_dir)
  with open(os.path.join(bad_dir, train.CONFIG_FILE), 'w') as f:
    json.dump(train._config_dict(bad), f)
  with pytest.raises(train.TrainingError, match='non-finite loss'):
    train.train_and_evaluate(bad, bad_dir)
  after, _ = final_params(bad_dir, good)
  assert int(after.step) == int(before.step) == 4
  for a, b in zip(jax.tree.leaves(before.trainable), jax.tree.leaves(after.trainable)):
    np.testing.assert_array_equal(a, b)


def test_sigterm_saves_before_exiting(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'term')
  config = tiny_config(tmp_path, num_epochs=200)
  # SIGTERM shortly after the run installs its handler (not at a fixed time from the start, which
  # on a loaded host could come before the handler and end the test process itself).
  timers = []
  enter = train._Preemption.__enter__

  def enter_then_signal(self):
    result = enter(self)
    timers.append(threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM)))
    timers[-1].start()
    return result

  monkeypatch.setattr(train._Preemption, '__enter__', enter_then_signal)
  try:
    summary = train.train_and_evaluate(config, workdir)
  finally:
    for t in timers:
      t.cancel()
  assert summary['stopped'] == 'preempted'
  state, meta = final_params(workdir, config)
  assert int(state.step) == summary['steps'] > 0
  assert meta['epoch_done'] is False


def _main(*args, timeout=300):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})


def test_main_reports_user_errors_in_one_line(tmp_path):
  missing = _main('--config=configs/scanobjectnn.py:hardest', f'--workdir={tmp_path}/w',
                  f'--config.data.data_dir={tmp_path}/nowhere',
                  f'--config.data.tfds_data_dir={tmp_path}/tfds')
  assert missing.returncode == 2
  last = missing.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and 'nowhere' in last and 'Traceback' not in missing.stderr
  typo = _main('--config=configs/synthetic.py', f'--workdir={tmp_path}/w2',
               '--config.optim.learning_rate=1.0')
  assert typo.returncode != 0 and 'learning_rate' in typo.stderr
  bad_input = _main('--config=configs/synthetic.py', f'--workdir={tmp_path}',
                    '--mode=predict', f'--input={tmp_path}/missing.ply')
  assert bad_input.returncode == 2
  assert bad_input.stderr.strip().splitlines()[-1] == f'error: {tmp_path}/missing.ply: no such file'
  no_workdir = _main('--config=configs/synthetic.py', f'--workdir={tmp_path}/w3',
                     '--mode=predict', f'--input={tmp_path}/missing.ply')
  assert no_workdir.returncode == 2 and 'Traceback' not in no_workdir.stderr
  assert no_workdir.stderr.strip().splitlines()[-1] == (
      f'error: --workdir={tmp_path}/w3: no such folder; --mode=predict reads a training run '
      'from its workdir and writes its outputs there')


def test_training_workdir_converts_to_torch_and_loads_as_init_from(tmp_path):
  torch = pytest.importorskip('torch')
  from convert import __main__ as convert_main
  from tests import torch_reference
  workdir = str(tmp_path / 'run')
  config = tiny_config(tmp_path, max_steps=2)
  train.train_and_evaluate(config, workdir)
  dst = str(tmp_path / 'run.pth')
  assert convert_main.main(['--to-torch', workdir, dst]) == 0
  sd = torch.load(dst, weights_only=True)['base_model']
  m = config.model
  ref = torch_reference.TorchDAPT(
      trans_dim=m.trans_dim, depth=m.depth, num_heads=m.num_heads, num_group=m.num_group,
      group_size=m.group_size, rank=m.rank, num_classes=m.num_classes,
      head_tokens=m.head_tokens)
  ref.load_state_dict(sd, strict=True)
  ref.eval()
  # The workdir also serves as --config.init_from, and both models agree.
  cfg2 = tiny_config(tmp_path, init_from=workdir)
  net, variables, _ = weights.build(cfg2, tasks.get_task(cfg2))
  # Compared in float64 on both sides, so the check holds to float64 rounding on any CPU (the
  # 1e-10 relative bound is derived in tests/test_model.py, F64_RTOL).
  pts = np.random.default_rng(1).normal(size=(3, 64, 3))
  with jax.enable_x64(True):
    got = np.asarray(net.clone(axis_name=None, dtype=np.float64).apply(
        jax.tree.map(lambda v: np.asarray(v, np.float64), variables), pts, train=False))
  with torch.no_grad():
    want = ref.double()(torch.from_numpy(pts)).numpy()
  assert got.dtype == want.dtype == np.float64
  assert np.abs(got - want).max() <= 1e-10 * np.abs(want).max()
