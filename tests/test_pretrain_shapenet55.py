"""The `shapenet55` builder over small trees in the Point-BERT / Point-MAE layout, its errors, and
pre-training from configs/pretrain_shapenet.py on such a tree through main.py."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from dapt_jax import data
from dapt_jax import reporting
from dapt_jax.data import shapenet55

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, tfds_dir):
  dc = data.default_data_config('shapenet55')
  dc.data_dir = str(data_dir)
  dc.tfds_data_dir = str(tfds_dir)
  return dc


def _error(dc, split='train'):
  with pytest.raises(data.DataError) as e:
    data.get_source(dc, split)
  message = str(e.value)
  assert '\n' not in message
  return message


def _no_prepared_copy(tfds_dir):
  """Nothing half-written: no finished copy and no TFDS incomplete folder."""
  root = os.path.join(tfds_dir, 'shapenet55')
  if not os.path.isdir(root):
    return True
  found = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
  return not any(f.endswith('dataset_info.json') for f in found) and not any(
      'incomplete' in d for d, _, _ in os.walk(root))


def test_default_config():
  dc = data.default_data_config('shapenet55')
  assert (dc.data_dir, dc.num_points) == ('data/ShapeNet55-34', 1024)
  assert 'shapenet55' in data.DATASET_NAMES


def test_builder_stores_every_cloud_as_listed(tmp_path):
  written = shapenet55.write_tree(str(tmp_path / 'sn'), {'train': 7, 'test': 4}, num_points=300)
  dc = _config(tmp_path / 'sn', tmp_path / 'tfds')
  for split, n in (('train', 7), ('test', 4)):
    source, info = data.get_source(dc, split)
    assert len(source) == n and info.points_per_cloud == 300
    assert info.class_names == ['02691156', '03001627', '04379243']
    for i, (name, cloud) in enumerate(written[split]):
      item = source[i]
      np.testing.assert_array_equal(item['points'], cloud)  # stored as is, list order
      assert info.class_names[int(item['label'])] == name.split('-')[0]
  batch = source.get_batch([3, 0])
  np.testing.assert_array_equal(batch['points'][1], written['test'][0][1])


def test_changed_files_rebuild_and_unchanged_reuse(tmp_path):
  root = tmp_path / 'sn'
  shapenet55.write_tree(str(root), {'train': 3, 'test': 2}, num_points=64, seed=1)
  dc = _config(root, tmp_path / 'tfds')
  source, info = data.get_source(dc, 'train')
  before = os.stat(os.path.join(info.prepared_dir, 'dataset_info.json')).st_mtime_ns
  data.get_source(dc, 'train')
  assert os.stat(os.path.join(info.prepared_dir, 'dataset_info.json')).st_mtime_ns == before
  time.sleep(0.01)
  name = (root / 'ShapeNet-55' / 'train.txt').read_text().split()[0]
  new = np.full((64, 3), 0.5, np.float32)
  np.save(root / 'shapenet_pc' / name, new)
  source, _ = data.get_source(dc, 'train')
  clouds = [source[i]['points'] for i in range(len(source))]
  assert any(np.array_equal(c, new) for c in clouds)


def test_errors_name_the_file_and_leave_nothing(tmp_path):
  root = tmp_path / 'sn'
  tfds_dir = tmp_path / 'tfds'
  msg = _error(_config(root, tfds_dir))
  assert 'ShapeNet-55/train.txt' in msg and 'shapenet_pc' in msg and 'Download' in msg
  shapenet55.write_tree(str(root), {'train': 3, 'test': 2}, num_points=64)
  lst = root / 'ShapeNet-55' / 'train.txt'
  good = lst.read_text()

  lst.write_text(good + 'not_a_cloud.txt\n')
  assert 'train.txt: line 4' in _error(_config(root, tfds_dir))
  lst.write_text(good + '02691156-missing.npy\n')
  msg = _error(_config(root, tfds_dir))
  assert msg.startswith(str(root / 'shapenet_pc' / '02691156-missing.npy')) and 'line 4' in msg
  lst.write_text(good)

  first = root / 'shapenet_pc' / good.split()[1]
  np.save(first, np.zeros((64, 4), np.float32))
  assert str(first) in _error(_config(root, tfds_dir)) and _no_prepared_copy(str(tfds_dir))
  np.save(first, np.zeros((63, 3), np.float32))
  msg = _error(_config(root, tfds_dir))
  assert str(first) in msg and '63 points, expected 64' in msg
  bad = np.zeros((64, 3), np.float32)
  bad[5, 1] = np.nan
  np.save(first, bad)
  assert 'NaN' in _error(_config(root, tfds_dir))
  first.write_bytes(b'not numpy')
  assert 'unreadable .npy' in _error(_config(root, tfds_dir))
  assert _no_prepared_copy(str(tfds_dir))


def _main(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='')
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=1200)


def test_pretraining_runs_on_a_shapenet55_tree_through_main(tmp_path):
  shapenet55.write_tree(str(tmp_path / 'sn'), {'train': 16, 'test': 6}, num_points=128)
  workdir = tmp_path / 'run'
  common = ['--config=configs/pretrain_shapenet.py', f'--workdir={workdir}',
            f'--config.data.data_dir={tmp_path / "sn"}',
            f'--config.data.tfds_data_dir={tmp_path / "tfds"}']
  tiny = ['--config.model.trans_dim=16', '--config.model.encoder_dims=16',
          '--config.model.depth=1', '--config.model.num_heads=2', '--config.model.num_group=8',
          '--config.model.group_size=8', '--config.model.decoder_depth=1',
          '--config.model.decoder_num_heads=2', '--config.data.num_points=64',
          '--config.batch_size=8', '--config.eval.batch_size=4', '--config.num_epochs=1',
          '--config.eval.every_epochs=1', '--config.progress_bar=False',
          '--config.parallel=shard_map']
  r = _main(*common, *tiny)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Chamfer-L2' in r.stdout and 'over 6 clouds' in r.stdout
  records = reporting.read_metrics(str(workdir))
  assert [x['step'] for x in records if x['split'] == 'train'][-1] == 4  # epochs 0..1, 2 each
  assert np.isfinite([x['loss'] for x in records if x['split'] == 'eval']).all()
  # More points than a stored cloud holds: one line naming the field.
  common[1] = f'--workdir={tmp_path / "run2"}'
  r = _main(*common, *tiny, '--config.data.num_points=200')
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'num_points=200' in r.stderr.strip().splitlines()[-1]
