"""Few-shot ModelNet40: the fold reader and TFDS builder on generated folds in the official layout
(pickles of NumPy arrays and scalars, as Point-BERT's files), the configs, and training plus
evaluation through main.py (tiny model, few steps), also on real ModelNet40 shapes when
../shared/data is present."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from configs import modelnet_fewshot
from dapt_jax import data as data_lib
from dapt_jax.data import modelnet_files
from dapt_jax.data import testing
from tests.conftest import SHARED_DATA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINI = SHARED_DATA / 'modelnet40_mini' / 'modelnet40_normal_resampled'


def data_config(tmp_path, data_dir, way=5, shot=2, fold=0):
  dc = data_lib.default_data_config('modelnet_fewshot')
  dc.update(data_dir=str(data_dir), tfds_data_dir=str(tmp_path / 'tfds'), way=way, shot=shot,
            fold=fold)
  return dc


def unit_sphere(xyz):
  """Independent of the library: centre on the mean, divide by the largest norm."""
  centred = xyz - xyz.mean(axis=1, keepdims=True)
  return centred / np.linalg.norm(centred, axis=-1).max(axis=1)[:, None, None]


@pytest.mark.parametrize('underscore', [False, True])
def test_fold_reads_back_as_written(tmp_path, underscore):
  root = tmp_path / 'ModelNetFewshot'
  written = testing.write_modelnet_fewshot(str(root), way=5, shot=2, folds=2, test_per_class=3,
                                           points=64, underscore=underscore)
  for fold in (0, 1):
    dc = data_config(tmp_path, root, fold=fold)
    for split, n in (('train', 10), ('test', 15)):
      source, info = data_lib.get_source(dc, split)
      got = source.get_batch(np.arange(len(source)))
      xyz, labels = written[fold][split]
      assert len(source) == n and info.num_examples == n
      np.testing.assert_array_equal(got['label'], labels)
      np.testing.assert_allclose(got['points'], unit_sphere(xyz.astype(np.float64)), atol=1e-6)
      # The 40-way head's label space: the fold's classes in label order, then the rest.
      names = modelnet_files.DEFAULT_CLASS_NAMES
      assert info.num_classes == 40
      assert info.class_names[:5] == [names[c] for c in written[fold]['classes']]
      assert sorted(info.class_names) == sorted(names)


def test_a_changed_fold_is_rebuilt(tmp_path):
  root = tmp_path / 'fs'
  testing.write_modelnet_fewshot(str(root), 5, 2, test_per_class=3, points=64, seed=0)
  dc = data_config(tmp_path, root)
  first = data_lib.get_source(dc, 'train')[0].get_batch([0])['points']
  path = root / '5way2shot' / '0.pkl'
  before = os.stat(path).st_mtime_ns
  testing.write_modelnet_fewshot(str(root), 5, 2, test_per_class=3, points=64, seed=1)
  os.utime(path, ns=(before + 10**9, before + 10**9))
  second = data_lib.get_source(dc, 'train')[0].get_batch([0])['points']
  assert not np.array_equal(first, second)


class _Evil:
  def __reduce__(self):
    return (os.system, ('touch PWNED',))


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    pickle.dump(obj, f)


def test_bad_folds_give_one_line_errors_and_write_nothing(tmp_path):
  root = tmp_path / 'fs'
  good = testing.write_modelnet_fewshot(str(root), 5, 2, test_per_class=3, points=64)
  del good
  path = str(root / '5way2shot' / '0.pkl')
  with open(path, 'rb') as f:
    fold = pickle.load(f)  # our own file, written just above

  def error_for(obj=None, **dc_fields):
    if obj is not None:
      _write(path, obj)
    dc = data_config(tmp_path, root)
    dc.update(**dc_fields)
    with pytest.raises(data_lib.DataError) as e:
      data_lib.get_source(dc, 'train')
    message = str(e.value)
    assert '\n' not in message
    return message

  missing = error_for(fold=3)
  assert 'missing' in missing and '5way2shot/3.pkl' in missing
  assert 'data.shot=3' in error_for(shot=3)  # no 5way3shot folder: names the task
  assert 'data.way' in error_for(way=0)
  # A 5-way 2-shot fold read as a 4-shot one (same folder name forced by a rename).
  os.rename(root / '5way2shot', root / '5way4shot')
  assert 'expected 4 each for data.shot=4' in error_for(shot=4)
  os.rename(root / '5way4shot', root / '5way2shot')
  assert 'not a plain array pickle' in error_for({'train': [_Evil()], 'test': []})
  assert not os.path.exists('PWNED') and not (tmp_path / 'PWNED').exists()
  assert 'keys train and test' in error_for([fold['train'], fold['test']])
  bad_label = dict(fold, train=[(fold['train'][0][0], 7, fold['train'][0][2])] + fold['train'][1:])
  assert 'label 7' in error_for(bad_label)
  nan = fold['train'][0][0].copy()
  nan[3, 1] = np.nan
  assert 'NaN' in error_for(dict(fold, train=[(nan,) + tuple(fold['train'][0][1:])]
                                 + fold['train'][1:]))
  assert 'expected a float (points, 6)' in error_for(
      dict(fold, test=[(np.zeros((64, 6), np.int32), 0, np.int32(1))]))
  with open(path, 'wb') as f:
    f.write(pickle.dumps(fold)[:1000])  # truncated
  assert 'truncated or corrupt' in error_for()
  # Nothing was prepared from any of these.
  prepared = tmp_path / 'tfds' / 'modelnet_fewshot'
  assert not prepared.exists() or not any(prepared.rglob('*.array_record*'))


@pytest.mark.parametrize('variant,way,shot', [('5way10shot', 5, 10), ('5way20shot', 5, 20),
                                              ('10way10shot', 10, 10), ('10way20shot', 10, 20)])
def test_configs_follow_point_mae_fewshot_recipe(variant, way, shot):
  c = modelnet_fewshot.get_config(variant)
  assert (c.data.way, c.data.shot, c.data.fold, c.data.name) == (way, shot, 0, 'modelnet_fewshot')
  assert (c.num_epochs, c.optim.warmup_epochs, c.optim.lr, c.optim.weight_decay) == (
      150, 10, 5e-4, 0.05)
  assert (c.batch_size, c.optim.clip_grad_norm, c.data.num_points, c.data.point_all) == (
      32, 10.0, 1024, 1200)
  m = c.model
  assert (m.num_group, m.group_size, m.rank, m.num_classes, m.drop_path_rate) == (
      64, 32, 72, 40, 0.1)
  assert tuple(m.head_tokens) == ('cls', 'patch')
  assert modelnet_fewshot.get_config().data.way == 5  # default 5way10shot
  with pytest.raises(ValueError, match='unknown variant'):
    modelnet_fewshot.get_config('3way1shot')


TINY_FLAGS = ('--config.model.trans_dim=32', '--config.model.encoder_dims=32',
              '--config.model.depth=1', '--config.model.num_heads=2',
              '--config.model.num_group=8', '--config.model.group_size=8',
              '--config.model.rank=4', '--config.progress_bar=False',
              '--config.parallel=shard_map', '--config.log_every_steps=1')


def _main(*args):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})


def _train(tmp_path, data_dir, shot, *extra):
  workdir = tmp_path / 'run'
  out = _main('--config=configs/modelnet_fewshot.py:5way10shot', f'--workdir={workdir}',
              f'--config.data.data_dir={data_dir}', f'--config.data.shot={shot}',
              f'--config.data.tfds_data_dir={tmp_path / "tfds"}', *TINY_FLAGS, *extra)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out


def test_trains_and_evaluates_through_main(tmp_path):
  """5-way 10-shot fold 0, the README's first few-shot command (TFDS once refused it: a built-in
  config had the name of its prepared copy)."""
  root = tmp_path / 'ModelNetFewshot'
  testing.write_modelnet_fewshot(str(root), way=5, shot=10, test_per_class=3, points=128)
  workdir, out = _train(tmp_path, root, 10, '--config.data.num_points=64',
                        '--config.data.point_all=80', '--config.batch_size=8',
                        '--config.num_epochs=1', '--config.eval.batch_size=8')
  assert 'final: accuracy' in out.stdout
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  evals = [r for r in rows if r['split'] == 'eval']
  assert [r['epoch'] for r in evals] == [1]  # epochs 0..1, evaluated after every epoch but 0
  assert 0.0 <= evals[0]['accuracy'] <= 1.0 and 'mean_class_accuracy' in evals[0]
  assert sum(r['split'] == 'train' for r in rows) == 12  # 50 shapes / 8 = 6 steps an epoch
  # A missing fold: one line, exit 2, before any training.
  missing = _main('--config=configs/modelnet_fewshot.py:5way10shot', f'--workdir={tmp_path}/w2',
                  f'--config.data.data_dir={root}', '--config.data.fold=7',
                  f'--config.data.tfds_data_dir={tmp_path / "tfds"}')
  assert missing.returncode == 2 and 'Traceback' not in missing.stderr
  last = missing.stderr.strip().splitlines()[-1]
  assert last.startswith('error: modelnet_fewshot: missing') and '5way10shot/7.pkl' in last


@pytest.mark.skipif(not MINI.is_dir(), reason='../shared/data/modelnet40_mini is absent')
def test_trains_on_real_modelnet40_shapes(tmp_path):
  """A 5-way 1-shot fold of real shapes: the five classes with two shapes in the sample, one
  shape each for training and one for testing."""
  shapes = {}
  for line in open(MINI / 'filelist.txt'):
    cls = line.strip().split('/')[0]
    shapes.setdefault(cls, []).append(MINI / line.strip())
  names = list(modelnet_files.DEFAULT_CLASS_NAMES)
  clouds = {}
  for cls in [c for c, files in sorted(shapes.items()) if len(files) >= 2][:5]:
    rows = [np.loadtxt(f, delimiter=',', dtype=np.float32) for f in shapes[cls][:2]]
    keep = np.linspace(0, len(rows[0]) - 1, 1024).astype(int)  # 10,000 rows → 1,024
    clouds[names.index(cls)] = np.stack([r[keep] for r in rows])
  root = tmp_path / 'fs'
  written = testing.write_modelnet_fewshot(str(root), way=5, shot=1, test_per_class=1,
                                           clouds_by_class=clouds)
  dc = data_config(tmp_path, root, shot=1)
  source, _ = data_lib.get_source(dc, 'train')
  got = source.get_batch(np.arange(len(source)))['points']
  np.testing.assert_allclose(got, unit_sphere(written[0]['train'][0].astype(np.float64)),
                             atol=1e-6)
  assert np.allclose(np.linalg.norm(got, axis=-1).max(axis=1), 1.0, atol=1e-6)
  workdir, out = _train(tmp_path, root, 1, '--config.data.num_points=256',
                        '--config.data.point_all=300', '--config.batch_size=4',
                        '--config.num_epochs=1', '--config.eval.batch_size=4')
  evals = [json.loads(line) for line in open(workdir / 'metrics.jsonl')
           if json.loads(line)['split'] == 'eval']
  assert len(evals) == 1 and 'final: accuracy' in out.stdout
