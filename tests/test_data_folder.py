"""The folder dataset: layout, classes, stratified split, preparation, change detection, every bad
input as one line with nothing prepared, and training + evaluation + prediction through main.py
on a generated folder of mixed cloud and mesh formats."""
import csv
import glob
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import folder as folder_config
from dapt_jax import data
from dapt_jax import train
from dapt_jax.data import classes
from dapt_jax.data import clouds
from dapt_jax.data import folder
from dapt_jax.data import folder_example as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = dict(trans_dim=32, encoder_dims=32, depth=2, num_heads=2, num_group=8, group_size=8,
                  rank=4, drop_path_rate=0.0, drop_adapter_rate=0.0, head_dropout_rate=0.0)
TINY_DATA = dict(num_points=64, point_all=80, folder_points=96, folder_mesh_points=256,
                 folder_min_points=16)


def _dc(root, tmp_path, **fields):
  dc = data.default_data_config('folder')
  dc.data_dir, dc.tfds_data_dir = str(root), str(tmp_path / 'tfds')
  dc.update(dict(TINY_DATA, **fields))
  return dc


def tiny_config(root, tmp_path, **data_fields):
  c = folder_config.get_config()
  c.model.update(TINY_MODEL)
  c.data.update(dict(TINY_DATA, data_dir=str(root), tfds_data_dir=str(tmp_path / 'tfds'),
                     **data_fields))
  c.update(batch_size=8, num_epochs=1, log_every_steps=1, progress_bar=False,
           parallel='shard_map')
  c.eval.batch_size = 8
  return c


def _raises(fn, *patterns):
  with pytest.raises(data.DataError) as e:
    fn()
  msg = str(e.value)
  assert '\n' not in msg, msg
  for p in patterns:
    assert p in msg, (p, msg)
  return msg


def _prepared(tmp_path):
  """Everything under the tfds folder that is a prepared (or half-prepared) copy."""
  return [p for p in glob.glob(str(tmp_path / 'tfds' / 'folder' / '*' / '*'))]


def _cloud(path, n=40, seed=0, scale=1.0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pts = np.random.default_rng(seed).normal(size=(n, 3)) * scale
  fx.write_npy(str(path), pts)
  return pts


def _layout(root, counts, split='train', n=40):
  """counts: class → number of .npy clouds written under root/split/class/."""
  k = 0
  for c, m in counts.items():
    for i in range(m):
      _cloud(root / split / c / f'{i}.npy', n=n, seed=k)
      k += 1


def test_plan_classes_labels_val_and_ignored_files(tmp_path):
  root = tmp_path / 'd'
  _layout(root, {'b': 2, 'a': 3, 'c': 1})
  _cloud(root / 'train' / 'a' / 'sub' / 'deep.npy')  # nested folders are read
  (root / 'train' / 'a' / '.hidden.npy').write_text('ignored: hidden')
  (root / 'train' / 'a' / 'notes.md').write_text('ignored: not a cloud')
  (root / 'train' / 'README.txt').write_text('ignored: outside a class folder')
  _layout(root, {'a': 1, 'c': 2}, split='test')
  _layout(root, {'b': 1}, split='val')
  p = folder.plan(str(root))
  assert p.class_names == ('a', 'b', 'c') and p.splits == ('train', 'val', 'test')
  assert not p.test_from_train
  assert [os.path.relpath(f, root / 'train') for f in p.files['train']] == [
      'a/0.npy', 'a/1.npy', 'a/2.npy', 'a/sub/deep.npy', 'b/0.npy', 'b/1.npy', 'c/0.npy']
  assert p.labels['train'] == (0, 0, 0, 0, 1, 1, 2) and p.labels['test'] == (0, 2, 2)
  assert p.labels['val'] == (1,)
  assert sorted(os.path.basename(f) for f in p.ignored) == ['README.txt', 'notes.md']


def test_stratified_split_without_a_test_folder(tmp_path):
  root = tmp_path / 'd'
  _layout(root, {'many': 10, 'few': 5, 'one': 1})
  p = folder.plan(str(root), test_fraction=0.2, split_seed=0)
  assert p.test_from_train and p.splits == ('train', 'test')
  names = p.class_names
  count = lambda split, c: p.labels[split].count(names.index(c))
  assert [count('test', c) for c in ('many', 'few', 'one')] == [2, 1, 0]
  assert [count('train', c) for c in ('many', 'few', 'one')] == [8, 4, 1]
  assert not set(p.files['train']) & set(p.files['test'])
  assert folder.plan(str(root), 0.2, 0).files == p.files  # a function of the seed
  others = [folder.plan(str(root), 0.2, s).files['test'] for s in range(1, 6)]
  assert any(o != p.files['test'] for o in others)
  half = folder.plan(str(root), 0.5, 0).labels['test']
  assert [half.count(names.index(c)) for c in ('many', 'few', 'one')] == [5, 2, 0]


def test_prepared_clouds_classes_and_normalisation(tmp_path, caplog):
  root = tmp_path / 'ex'
  fx.make_example(str(root), 3, 2, seed=1)
  _cloud(root / 'train' / 'box' / 'small.npy', n=20, seed=9)  # fewer than folder_points
  dc = _dc(root, tmp_path)
  with caplog.at_level(logging.WARNING, logger='dapt_jax'):
    source, info = data.get_source(dc, 'train')
  assert info.class_names == ['box', 'cone', 'cylinder'] and info.num_classes == 3
  assert len(source) == 10 and info.points_per_cloud == 96
  batch = source.get_batch(range(len(source)))
  assert batch['label'].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
  pts = batch['points']
  small = 3  # train/box/small.npy sorts after box_000..box_002
  np.testing.assert_allclose(np.linalg.norm(pts, axis=-1).max(1), 1, atol=1e-5)  # unit sphere
  np.testing.assert_allclose(np.delete(pts, small, 0).mean(1), 0, atol=1e-5)  # centred
  np.testing.assert_allclose(np.unique(pts[small], axis=0).mean(0), 0, atol=1e-5)  # before copies
  warned = [r.getMessage() for r in caplog.records if 'resampled with replacement' in r.getMessage()]
  assert len(warned) == 1 and 'small.npy (20)' in warned[0] and '1 cloud(s)' in warned[0]
  # FPS keeps distinct points of big clouds; the small one holds its 20 points and copies.
  assert all(len(np.unique(p, axis=0)) == 96 for p in pts[:3])
  assert len(np.unique(pts[small], axis=0)) == 20
  test_source, test_info = data.get_source(dc, 'test')
  assert len(test_source) == 6 and test_info.class_names == info.class_names

  # 'center' keeps the metric scale; z-up files are turned to y-up.
  metric = tmp_path / 'metric'
  raw = _cloud(metric / 'train' / 'a' / '0.npy', n=96, seed=3, scale=5.0)
  _cloud(metric / 'train' / 'b' / '0.npy', n=96, seed=4)
  _cloud(metric / 'train' / 'b' / '1.npy', n=96, seed=5)  # the one held out for test
  got = data.get_source(_dc(metric, tmp_path, folder_normalize='center'), 'train')[0][0]['points']
  np.testing.assert_allclose(np.sort(np.linalg.norm(got, axis=1)),
                             np.sort(np.linalg.norm(raw - raw.mean(0), axis=1)), rtol=1e-5)
  zup = data.get_source(_dc(metric, tmp_path, folder_normalize='none', folder_up_axis='z'),
                        'train')[0][0]['points']
  np.testing.assert_allclose(np.sort(zup[:, 1]), np.sort(raw[:, 2]), rtol=1e-6)


def test_changed_files_rebuild_and_unchanged_reuse(tmp_path):
  root = tmp_path / 'd'
  _layout(root, {'a': 2, 'b': 2})
  dc = _dc(root, tmp_path)
  _, info = data.get_source(dc, 'train')
  stamp = os.path.join(info.prepared_dir, 'dataset_info.json')
  before = os.stat(stamp).st_mtime_ns
  data.get_source(dc, 'train')
  assert os.stat(stamp).st_mtime_ns == before  # unchanged: reused
  time.sleep(0.01)
  new = _cloud(root / 'train' / 'a' / '0.npy', n=40, seed=99)  # changed content
  got = data.get_source(dc, 'train')[0][0]['points']
  assert os.stat(stamp).st_mtime_ns != before  # rebuilt
  want = clouds.normalize(new.astype(np.float32).astype(np.float64), 'unit_sphere')
  np.testing.assert_allclose(np.unique(got, axis=0), np.unique(want.astype(np.float32), axis=0),
                             atol=1e-6)
  _cloud(root / 'train' / 'c' / '0.npy')  # a new class: a new prepared copy with 3 classes
  assert data.get_source(dc, 'train')[1].class_names == ['a', 'b', 'c']


def _bad_layouts():
  def missing(root):
    return str(root / 'nowhere'), ('no such folder',)

  def no_train(root):
    os.makedirs(root / 'test' / 'a')
    return str(root), ('no train/ folder',)

  def no_classes(root):
    os.makedirs(root / 'train')
    return str(root), ('no class folders',)

  def empty_class(root):
    _layout(root, {'a': 2})
    os.makedirs(root / 'train' / 'b')
    (root / 'train' / 'b' / 'notes.md').write_text('not a cloud')
    return str(root), (os.path.join('train', 'b'), 'empty class')

  def unknown_test_class(root):
    _layout(root, {'a': 2, 'b': 2})
    _layout(root, {'a': 1, 'z': 1}, split='test')
    return str(root), (os.path.join('test', 'z'), "class 'z' is not in train/",
                       'train has: a, b')

  def corrupt(root):
    _layout(root, {'a': 2, 'b': 2})
    (root / 'train' / 'b' / 'broken.ply').write_text(
        'ply\nformat ascii 1.0\nelement vertex 300\nproperty float x\nproperty float y\n'
        'property float z\nend_header\n' + '0 0 0\n' * 20)
    return str(root), ('broken.ply', 'declares 300 data rows')

  def nan(root):
    _layout(root, {'a': 2, 'b': 2})
    pts = np.zeros((40, 3), np.float32)
    pts[7, 1] = np.nan
    fx.write_npy(str(root / 'train' / 'a' / 'nan.npy'), pts)
    return str(root), ('nan.npy', 'NaN/inf')

  def nothing_to_hold_out(root):
    _layout(root, {'a': 1, 'b': 1})
    return str(root), ('no test/ folder', '2 files')

  def too_few(root):
    _layout(root, {'a': 2, 'b': 2})
    _cloud(root / 'train' / 'b' / 'tiny.npy', n=3)
    return str(root), ('tiny.npy', '3 point(s), fewer than the minimum of 16')

  return [missing, no_train, no_classes, empty_class, unknown_test_class, corrupt, nan,
          nothing_to_hold_out, too_few]


@pytest.mark.parametrize('make', _bad_layouts(), ids=lambda f: f.__name__)
def test_bad_input_is_one_line_and_nothing_is_prepared(tmp_path, make):
  data_dir, patterns = make(tmp_path / 'd')
  config = tiny_config(data_dir, tmp_path)
  workdir = tmp_path / 'run'
  _raises(lambda: train.train_and_evaluate(config, str(workdir)), *patterns)
  assert not workdir.exists()
  assert _prepared(tmp_path) == []


def test_num_classes_from_the_folders_or_a_clear_mismatch(tmp_path):
  root = tmp_path / 'd'
  _layout(root, {'a': 4, 'b': 4, 'c': 4})
  config = tiny_config(root, tmp_path)
  assert config.model.num_classes == 0
  fitted = classes.fit_to_data(config)
  assert fitted.model.num_classes == 3 and config.model.num_classes == 0  # a copy
  config.model.num_classes = 3
  assert classes.fit_to_data(config).model.num_classes == 3
  config.model.num_classes = 5
  _raises(lambda: classes.fit_to_data(config), 'model.num_classes=5',
          os.path.join('d', 'train'), '3 classes (a, b, c)', 'num_classes=0')
  config.model.num_classes = 0
  config.batch_size = 16
  _raises(lambda: classes.fit_to_data(config), 'holds 9 clouds', 'batch_size=16')
  with pytest.raises(data.DataError, match='folder_test_fraction'):
    folder.settings(dict(folder_test_fraction=1.0))
  with pytest.raises(data.DataError, match='folder_up_axis'):
    folder.settings(dict(folder_up_axis='x'))


def _main(*args, timeout=600):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})


def _flags(data_dir, tmp_path):
  model = [f'--config.model.{k}={v}' for k, v in TINY_MODEL.items()]
  fields = [f'--config.data.{k}={v}' for k, v in TINY_DATA.items()]
  return ['--config=configs/folder.py', f'--config.data.data_dir={data_dir}',
          f'--config.data.tfds_data_dir={tmp_path / "tfds"}', '--config.batch_size=8',
          '--config.eval.batch_size=8', '--config.num_epochs=1', '--config.progress_bar=False',
          '--config.parallel=shard_map', *model, *fields]


def test_train_evaluate_and_predict_through_main(tmp_path):
  root = tmp_path / 'my_clouds'
  made = subprocess.run([sys.executable, '-m', 'dapt_jax.data.folder', '--make-example', str(root),
                         '--per-class', '4', '2'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert made.returncode == 0, made.stderr
  exts = {os.path.splitext(p)[1] for p in glob.glob(str(root / '*' / '*' / '*'))}
  assert {'.off', '.obj', '.stl', '.npy', '.ply', '.pcd', '.txt', '.h5'} <= exts
  workdir = tmp_path / 'run'
  flags = _flags(root, tmp_path)
  trained = _main(*flags, f'--workdir={workdir}')
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert 'final: accuracy' in trained.stdout
  with open(workdir / 'classes.json') as f:
    assert json.load(f) == {'class_names': ['box', 'cone', 'cylinder']}
  with open(workdir / 'config.json') as f:
    assert json.load(f)['model']['num_classes'] == 3  # taken from the folders

  evaluated = _main(*flags, f'--workdir={workdir}', '--mode=eval')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(workdir / 'eval_test.json') as f:
    assert json.load(f)['num_samples'] == 6

  predicted = _main(*flags, f'--workdir={workdir}', '--mode=predict', f'--input={root}/test')
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  with open(workdir / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['file'] for r in rows) == sorted(glob.glob(str(root / 'test' / '*' / '*')))
  assert {r['class'] for r in rows} <= {'box', 'cone', 'cylinder'}
  for r in rows:
    probs = [float(r['probability']), float(r['probability_2']), float(r['probability_3'])]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    assert {r['class'], r['class_2'], r['class_3']} == {'box', 'cone', 'cylinder'}
  assert f'wrote {workdir}/predictions.csv' in predicted.stdout

  # A bad file: one line, exit 2, no workdir; the failed rebuild leaves the copy of the old files
  # exactly as it was (issue 23: a failed preparation never costs a good copy), nothing half-made.
  def files():
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(str(tmp_path / 'tfds' / '**'),
                                                         recursive=True) if os.path.isfile(p)}
  kept = files()
  (root / 'train' / 'cone' / 'broken.stl').write_bytes(b'\0' * 80 + b'\x05\0\0\0' + b'\0' * 50)
  other = tmp_path / 'run2'
  bad = _main(*flags, f'--workdir={other}')
  assert bad.returncode == 2 and 'Traceback' not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1] == (
      f'error: {root}/train/cone/broken.stl: binary STL declares 5 triangles (334 bytes) but '
      'the file has 134 bytes')
  assert not other.exists()
  assert files() == kept and os.listdir(tmp_path / 'tfds') == ['folder']
