"""Part segmentation through the shared training loop (dapt_jax/tasks/segmentation.py): views,
training to well above chance on the synthetic parts, eval_test.json, the figure
(dapt_jax/figures.py), and --mode=predict --category= (dapt_jax/predict_parts.py, in-process and
through main.py)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dapt_jax
from dapt_jax import data as data_lib
from dapt_jax import evaluate
from dapt_jax import figures
from dapt_jax import predict_parts
from dapt_jax import segmentation_metrics as M
from dapt_jax import serve
from dapt_jax import train
from dapt_jax.data import clouds as clouds_lib
from dapt_jax.data import synthetic_parts
from dapt_jax.tasks import segmentation as seg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny DAPT segmentation model on 3 synthetic categories (table, chair, lamp: 8 parts).
CONFIG = '''
from configs import shapenetpart


def get_config(arg=None):
  c = shapenetpart.get_config('synthetic')
  c.unlock()
  c.model.update(trans_dim=32, encoder_dims=32, depth=2, num_heads=2, num_group=16, group_size=8,
                 rank=4, feature_blocks=(0, 1), label_dims=8, propagation_dims=(32, 32),
                 head_dims=(32, 16), num_classes=3, num_parts=8, drop_path_rate=0.0)
  c.data.update(num_points=128, point_all=128, synthetic_points=256, pool_points=256,
                synthetic_num_train=96, synthetic_num_test=24, synthetic_num_categories=3,
                tfds_data_dir={tfds!r})
  c.update(batch_size=16, num_epochs=12, log_every_steps=6, progress_bar=False)
  c.optim.lr = 1e-2
  c.eval.update(every_epochs=6, batch_size=8)
  c.checkpoint.update(every_epochs=6)
  c.lock()
  return c
'''


def load_config(path):
  import importlib.util
  spec = importlib.util.spec_from_file_location('tiny_seg_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A trained workdir (12 epochs of 6 steps) and its config file."""
  tmp = tmp_path_factory.mktemp('seg_task')
  config_path = tmp / 'tiny_seg.py'
  config_path.write_text(CONFIG.format(tfds=str(tmp / 'tfds')))
  config = load_config(str(config_path))
  workdir = str(tmp / 'run')
  summary = train.train_and_evaluate(config, workdir)
  return config, str(config_path), workdir, summary


# ---------------------------------------------------------------------------------------------


def test_views_draw_the_shape_own_rows_with_replacement_and_augment_in_range():
  pool = jnp.concatenate([jnp.arange(10.0)[:, None] * jnp.ones(3), jnp.full((6, 3), 99.0)])
  part = jnp.concatenate([jnp.arange(10), jnp.full((6,), 7)]).astype(jnp.int32)
  pts, lab = seg.sample_view(jax.random.PRNGKey(0), pool, part, jnp.int32(10), 4000, False)
  pts, lab = np.asarray(pts), np.asarray(lab)
  assert pts.shape == (4000, 3) and set(lab.tolist()) == set(range(10))  # rows 10.. never drawn
  np.testing.assert_array_equal(pts[:, 0], lab)                          # points and labels pair
  counts = np.bincount(lab, minlength=10)
  assert counts.min() > 320 and counts.max() < 480                       # ~uniform (400 each)
  aug, lab2 = seg.sample_view(jax.random.PRNGKey(1), pool, part, jnp.int32(10), 500, True)
  aug, lab2 = np.asarray(aug), np.asarray(lab2)
  # one isotropic scale and one shift per cloud: aug = lab * s + t with s in [0.8, 1.25]
  s = (aug[:, 0] - aug[0, 0]) / np.where(lab2 != lab2[0], lab2 - lab2[0], np.nan)
  s = np.nanmean(s)
  assert 0.8 <= s <= 1.25
  shift = aug[0] - lab2[0] * s
  assert np.all(np.abs(shift) <= 0.1 + 1e-6)
  np.testing.assert_allclose(aug, lab2[:, None] * s + shift, atol=1e-5)
  keys = seg.eval_keys(jnp.array([3, 3, 4]))
  assert np.array_equal(keys[0], keys[1]) and not np.array_equal(keys[0], keys[2])


def test_trains_to_well_above_chance_and_evaluates(run):
  config, _, workdir, summary = run
  assert summary['stopped'] == 'finished' and summary['best_metric'] == 'instance_miou'
  records = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  evals = [r for r in records if r['split'] == 'eval']
  assert [r['epoch'] for r in evals] == [6, 12]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', 'best'))

  m = train.evaluate_workdir(config, workdir)
  saved = json.load(open(os.path.join(workdir, 'eval_test.json')))
  for key in ('instance_miou', 'class_miou', 'accuracy', 'per_category_iou'):
    assert saved[key] == pytest.approx(m[key]) if key != 'per_category_iou' else saved[key]
  assert set(saved['per_category_iou']) == {'table', 'chair', 'lamp'}
  assert saved['num_samples'] == 24 and saved['class_names'] == ['table', 'chair', 'lamp']
  preds = np.load(os.path.join(workdir, 'predictions_test.npz'))
  assert preds['pred'].shape == preds['target'].shape == (24, 128)
  # The evaluation draw is fixed: the best checkpoint scores what it scored during training.
  best = next(r for r in evals if r['epoch'] == summary['best_epoch'])
  assert m['instance_miou'] == pytest.approx(best['instance_miou'], abs=1e-12)
  # predictions stay inside each shape's category
  parts = synthetic_parts.category_parts(3)
  for p, c in zip(preds['pred'], preds['category']):
    assert set(p.tolist()) <= set(parts[c])
  # Chance: the best constant answer (each category's most frequent part everywhere) and a
  # uniformly random part of the category, on the same targets.
  target, category = preds['target'], preds['category']
  common = {c: np.bincount(target[category == c].ravel()).argmax() for c in range(3)}
  majority = np.stack([np.full(128, common[c]) for c in category])
  rng = np.random.default_rng(0)
  uniform = np.stack([rng.choice(parts[c], 128) for c in category])
  chance = max(M.segmentation_metrics(x, target, category, parts, 8)['instance_miou']
               for x in (majority, uniform))
  assert chance < 0.35
  assert m['instance_miou'] > chance + 0.15, (m['instance_miou'], chance)
  assert m['accuracy'] > 0.7


def test_figure_and_predict_in_process(run, tmp_path):
  config, _, workdir, _ = run
  line = figures.after_training(config, workdir, {'best_epoch': 12})
  path = os.path.join(workdir, 'segmentation.png')
  assert line == f'wrote {path} (test shapes coloured by predicted parts)'
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  cloud = synthetic_parts.generate(1, 300, 3, seed=5)[0][0] * 2.0 + 1.0  # any scale and place
  np.save(tmp_path / 'thing.npy', cloud)
  [r] = predict_parts.predict_parts(config, workdir, str(tmp_path / 'thing.npy'), 'Chair')
  assert r.category == 'chair' and r.part.shape == (300,)
  labels = np.load(r.npy_path)
  np.testing.assert_array_equal(labels, r.part)
  assert set(labels.tolist()) <= {2, 3, 4}  # chair's parts
  with open(r.ply_path, 'rb') as f:
    head = f.read(400).split(b'end_header\n')[0].decode()
  assert 'element vertex 300' in head and 'property uchar red' in head
  # The Python API (dapt_jax.serve) on the same run: --mode=predict is built on it.
  predictor = dapt_jax.load(workdir)
  seed = clouds_lib.stable_seed(os.path.abspath(tmp_path / 'thing.npy'))
  np.testing.assert_array_equal(predictor.label_cloud(serve.unit_sphere(cloud), 1, seed), r.part)
  parts = predictor.segment(cloud, 'Chair')  # the sample drawn with seed 0, not the path's
  assert parts.shape == (300,) and parts.dtype == np.int32 and set(parts.tolist()) <= {2, 3, 4}
  assert predictor.segment(np.stack([cloud, cloud]), 1).shape == (2, 300)
  with pytest.raises(serve.ServeError, match=r"category='sofa': not a category of this model"):
    predictor.segment(cloud, 'sofa')


def test_predict_a_folder_names_outputs_by_relative_path_and_every_bad_file(run, tmp_path):
  config, _, workdir, _ = run
  inputs = tmp_path / 'scans'
  for sub, seed in (('a', 7), ('b', 8)):  # two files of the same name in two folders
    os.makedirs(inputs / sub)
    np.savetxt(inputs / sub / 'chair.xyz', synthetic_parts.generate(1, 150, 3, seed=seed)[0][0])
  results = predict_parts.predict_parts(config, workdir, str(inputs), 'chair')
  assert [r.npy_path for r in results] == [os.path.join(workdir, 'a__chair_parts.npy'),
                                           os.path.join(workdir, 'b__chair_parts.npy')]
  for r in results:
    np.testing.assert_array_equal(np.load(r.npy_path), r.part)
    assert os.path.isfile(r.ply_path) and not r.replaced
  assert not np.array_equal(results[0].part, results[1].part)  # neither overwrote the other
  again = predict_parts.predict_parts(config, workdir, str(inputs / 'a' / 'chair.xyz'), 'chair')
  assert again[0].npy_path == os.path.join(workdir, 'chair_parts.npy') and not again[0].replaced
  again = predict_parts.predict_parts(config, workdir, str(inputs), 'chair')
  assert all(r.replaced for r in again)
  assert predict_parts.summary(again).splitlines()[-1] == (
      f'replaced the earlier --mode=predict outputs of 2 cloud(s): {inputs}/a/chair.xyz, '
      f'{inputs}/b/chair.xyz')
  # Bad files: every one named in one line, before the model is built; nothing written.
  (inputs / 'a' / 'empty.txt').write_text('')
  (inputs / 'b' / 'few.xyz').write_text('0 0 0\n1 0 0\n')
  before = sorted(os.listdir(workdir))
  with pytest.raises(data_lib.DataError) as e:
    predict_parts.predict_parts(config, workdir, str(inputs), 'chair')
  msg = str(e.value)
  assert '\n' not in msg and msg.startswith('2 of 4 input files cannot be used: ')
  assert f'{inputs}/a/empty.txt: ' in msg and f'{inputs}/b/few.xyz: 2 point(s)' in msg
  assert sorted(os.listdir(workdir)) == before
  with pytest.raises(evaluate.InputError, match=r'^--workdir=\S+/nope: no such folder'):
    predict_parts.predict_parts(config, str(tmp_path / 'nope'), str(inputs / 'a'), 'chair')
  assert not (tmp_path / 'nope').exists()


def test_predict_through_main(run, tmp_path):
  _, config_path, workdir, _ = run
  cloud = synthetic_parts.generate(1, 200, 3, seed=6)[0][0]
  np.savetxt(tmp_path / 'lamp.xyz', cloud)

  def main(*args):
    return subprocess.run([sys.executable, 'main.py', f'--config={config_path}',
                           f'--workdir={workdir}', '--mode=predict', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})

  missing = main(f'--input={tmp_path}/lamp.xyz')
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1] == (
      'error: --mode=predict for part segmentation needs --category=NAME (one of table, chair, '
      'lamp)')
  unknown = main(f'--input={tmp_path}/lamp.xyz', '--category=Mug')
  assert unknown.returncode == 2 and 'not a category of this model' in unknown.stderr
  ok = main(f'--input={tmp_path}/lamp.xyz', '--category=lamp')
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert '200 points as lamp' in ok.stdout
  labels = np.load(os.path.join(workdir, 'lamp_parts.npy'))
  assert labels.shape == (200,) and set(labels.tolist()) <= {5, 6, 7}
