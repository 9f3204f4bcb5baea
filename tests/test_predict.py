"""--mode=predict (dapt_jax.predict): a file, a folder or a glob → predictions.csv with the run's
class names, batched over the 8 forced CPU devices with a padded last batch; bad inputs are one
line with nothing written; small clouds are resampled with a warning or refused."""
import csv
import json
import logging
import os
import shutil
import warnings

import numpy as np
import pytest

from dapt_jax import data
from dapt_jax import evaluate
from dapt_jax import predict
from dapt_jax import predict_io
from dapt_jax import train
from dapt_jax.data import folder_example as fx
from tests import test_data_folder
from tests.conftest import made_once

NAMES = ['box', 'cone', 'cylinder']


def _train_tiny_run(tmp):
  root = tmp / 'clouds'
  fx.make_example(str(root), 4, 4, seed=2)
  train.train_and_evaluate(test_data_folder.tiny_config(root, tmp), str(tmp / 'run'))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A tiny model trained for one epoch on a generated example folder: (folder, workdir, config).

  Trained once per test run (this module, test_serve and test_export use it); the example
  folder and its prepared data are shared read-only, the workdir is this module's own copy.
  """
  tmp = made_once(tmp_path_factory, 'predict_run', _train_tiny_run)
  root = tmp / 'clouds'
  workdir = str(tmp_path_factory.mktemp('predict') / 'run')
  shutil.copytree(tmp / 'run', workdir)
  return root, workdir, test_data_folder.tiny_config(root, tmp)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_find_inputs_file_folder_and_glob(tmp_path):
  for rel in ('a/1.ply', 'a/b/2.npy', 'c.STL', 'notes.md', '.hidden.npy'):
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    (tmp_path / rel).write_text('x')
  found = predict_io.find_inputs(str(tmp_path))
  assert [os.path.relpath(p, tmp_path) for p in found] == ['c.STL', 'a/1.ply', 'a/b/2.npy']
  assert predict_io.find_inputs(str(tmp_path / 'notes.md')) == [str(tmp_path / 'notes.md')]
  assert predict_io.find_inputs(f'{tmp_path}/**/*.npy') == [str(tmp_path / 'a' / 'b' / '2.npy')]
  with pytest.raises(evaluate.InputError, match=r'matches no cloud or mesh file \(1 file'):
    predict_io.find_inputs(f'{tmp_path}/*.md')
  with pytest.raises(evaluate.InputError, match='no such file'):
    predict_io.find_inputs(str(tmp_path / 'missing.ply'))
  os.makedirs(tmp_path / 'empty')
  with pytest.raises(evaluate.InputError, match='no cloud or mesh files in this folder'):
    predict_io.find_inputs(str(tmp_path / 'empty'))


def test_a_folder_gives_the_csv_with_class_names_batched_over_devices(run, tmp_path, caplog):
  root, workdir, config = run
  inputs = tmp_path / 'in'
  shutil.copytree(root / 'test', inputs)
  small = np.random.default_rng(0).normal(size=(20, 3))  # < the 96 stored, >= group_size 8
  fx.write_npy(str(inputs / 'small.npy'), small)
  with caplog.at_level(logging.WARNING, logger='dapt_jax'):
    result = predict.predict(config, workdir, str(inputs))
  files = predict_io.find_inputs(str(inputs))
  assert result.files == files and len(files) == 13  # 8 + a last batch of 5 padded to 8
  warned = [r.getMessage() for r in caplog.records if 'resampled' in r.getMessage()]
  assert len(warned) == 1 and 'small.npy (20)' in warned[0] and 'fewer than 96' in warned[0]
  rows = _rows(os.path.join(workdir, 'predictions.csv'))
  assert [r['file'] for r in rows] == files
  assert list(rows[0]) == ['file', 'class', 'probability', 'class_2', 'probability_2',
                           'class_3', 'probability_3']  # top-5 capped at the 3 classes
  for i, r in enumerate(rows):
    assert sorted([r['class'], r['class_2'], r['class_3']]) == NAMES
    assert float(r['probability']) == pytest.approx(result.probs[i].max(), abs=1e-6)
    assert r['class'] == NAMES[int(np.argmax(result.probs[i]))]
    assert float(r['probability']) >= float(r['probability_2']) >= float(r['probability_3'])
  np.testing.assert_allclose(result.probs.sum(1), 1, atol=1e-12)
  summary = predict.summary(result)
  assert summary.startswith('13 files: ') and summary.endswith(f'wrote {workdir}/predictions.csv')
  # Batched and padded over 8 devices = one file on its own. The same float32 network runs on
  # the same points, only grouped differently, so logits differ by float32 rounding at most
  # (~1e-7 relative); 1e-5 on probabilities leaves a wide margin. Without --workdir, from the
  # training workdir as init_from: printed, not written.
  last = files.index(str(inputs / 'small.npy'))
  single = predict.predict(_with(config, init_from=workdir), None, files[last])
  assert single.csv_path is None and single.files == [files[last]]
  np.testing.assert_allclose(single.probs[0], result.probs[last], atol=1e-5, rtol=0)
  assert predict.summary(single).splitlines()[0].startswith('1. ')


def test_class_names_come_from_the_run_never_from_an_evaluation_file(run, tmp_path):
  root, workdir, config = run
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  with open(os.path.join(copy, 'eval_test.json'), 'w') as f:  # a stale file of another run
    json.dump({'class_names': ['chair', 'table', 'lamp', 'sofa']}, f)
  assert predict.class_names(config, copy) == (NAMES, os.path.join(copy, 'classes.json'))
  os.remove(os.path.join(copy, 'classes.json'))  # a run from before classes.json: its folders
  assert predict.class_names(config, copy)[0] == NAMES
  assert predict.class_names(_with(config, init_from=workdir), copy)[0] == NAMES
  with open(os.path.join(copy, 'classes.json'), 'w') as f:
    json.dump({'class_names': ['a', 'b']}, f)
  with pytest.raises(data.DataError, match=r'model.num_classes=3 but .*classes.json has 2'):
    predict.predict(_with(config, **{'model.num_classes': 3}), copy, str(root / 'test'))
  # A different preparation than the run's would feed the model other clouds: refused.
  with pytest.raises(data.DataError, match="data.folder_normalize='center' differs"):
    predict.predict(_with(config, **{'data.folder_normalize': 'center'}), workdir,
                    str(root / 'test'))


def _with(config, **fields):
  import copy as copy_lib  # pylint: disable=g-import-not-at-top
  c = copy_lib.deepcopy(config)
  for k, v in fields.items():
    *section, name = k.split('.')
    (c[section[0]] if section else c)[name] = v
  return c


def _fresh_copy(workdir, tmp_path):
  """(a copy of the trained workdir without predictions.csv, where its CSV would go)."""
  out = tmp_path / 'out'
  shutil.copytree(workdir, out)
  csv_path = out / 'predictions.csv'
  if csv_path.exists():
    csv_path.unlink()
  return out, csv_path


def test_bad_inputs_are_one_line_and_write_nothing(run, tmp_path):
  _, workdir, config = run
  out, csv_path = _fresh_copy(workdir, tmp_path)
  inputs = tmp_path / 'in'
  os.makedirs(inputs)
  good = np.random.default_rng(0).normal(size=(300, 3))
  fx.write_npy(str(inputs / 'a_good.npy'), good)
  cases = [
      # issue 17: an ASCII .ply declaring 300 vertices but holding 20 rows
      ('b_short.ply', 'ply\nformat ascii 1.0\nelement vertex 300\nproperty float x\n'
       'property float y\nproperty float z\nend_header\n' + '0.1 0.2 0.3\n' * 20,
       'declares 300 data rows (300 vertex) but the file holds 20'),
      ('c_empty.txt', '', 'empty file, expected rows of x y z'),
      ('d_three.xyz', '0 0 0\n1 0 0\n0 1 0\n', '3 point(s), fewer than the minimum of 8'),
      ('e_nan.txt', '0 0 0\n' * 10 + 'nan 0 0\n', 'NaN/inf'),
  ]
  for name, text, problem in cases:
    bad = inputs / name
    bad.write_text(text)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      with pytest.raises(data.DataError) as e:
        predict.predict(config, str(out), str(inputs))
    assert not [w for w in caught if 'numpy' in w.filename], caught  # just the one line
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith(str(bad)) and problem in msg, msg
    assert not csv_path.exists()
    bad.unlink()
  fx.write_npy(str(inputs / 'b_other.npy'), good)
  with pytest.raises(evaluate.InputError, match='give one'):  # two files need a workdir
    predict.predict(_with(config, init_from=workdir), None, str(inputs / '*'))
  with pytest.raises(evaluate.InputError, match='needs --workdir'):
    predict.predict(config, None, str(inputs / 'a_good.npy'))


def test_output_names_follow_the_relative_path_and_never_collide(tmp_path):
  paths = [str(tmp_path / 'a' / 'chair.ply'), str(tmp_path / 'b' / 'chair.ply'),
           str(tmp_path / 'lamp.xyz')]
  assert predict_io.output_names(paths, str(tmp_path), '_parts') == [
      'a__chair_parts', 'b__chair_parts', 'lamp_parts']
  assert predict_io.input_root(f'{tmp_path}/**/*.ply') == str(tmp_path)
  with pytest.raises(evaluate.InputError) as e:  # same name but for the extension: refused
    predict_io.output_names([str(tmp_path / 'chair.ply'), str(tmp_path / 'chair.npy')],
                            str(tmp_path), '_parts')
  assert str(e.value) == (f'{tmp_path}/chair.ply and {tmp_path}/chair.npy would both be written '
                          'as chair_parts.*; rename one of them or predict them separately')


def test_every_bad_file_of_a_folder_is_named_in_one_error(run, tmp_path):
  _, workdir, config = run
  out = tmp_path / 'out'
  shutil.copytree(workdir, out)
  (out / 'predictions.csv').write_text('file,class,probability\nearlier.npy,box,0.9\n')
  inputs = tmp_path / 'in'
  os.makedirs(inputs / 'sub')
  fx.write_npy(str(inputs / 'a_good.npy'), np.random.default_rng(0).normal(size=(300, 3)))
  (inputs / 'b_empty.txt').write_text('')
  (inputs / 'sub' / 'c_three.xyz').write_text('0 0 0\n1 0 0\n0 1 0\n')
  with pytest.raises(data.DataError) as e:
    predict.predict(config, str(out), str(inputs))
  msg = str(e.value)
  assert '\n' not in msg and msg.startswith('2 of 3 input files cannot be used: '), msg
  assert f'{inputs}/b_empty.txt: ' in msg and f'{inputs}/sub/c_three.xyz: ' in msg
  assert 'a_good' not in msg  # the good file is not a culprit, and the earlier csv stays
  assert (out / 'predictions.csv').read_text() == 'file,class,probability\nearlier.npy,box,0.9\n'



def test_replacing_predictions_csv_is_said_and_a_foreign_file_is_kept(run, tmp_path):
  root, workdir, config = run
  out, csv_path = _fresh_copy(workdir, tmp_path)
  first = predict.predict(config, str(out), str(root / 'test'))
  assert first.replaced is None and predict.summary(first).endswith(f'wrote {csv_path}')
  one = sorted(os.listdir(root / 'test' / 'box'))[0]
  second = predict.predict(config, str(out), str(root / 'test' / 'box' / one))
  assert second.replaced == len(first.files) and len(_rows(csv_path)) == 1
  assert predict.summary(second).splitlines()[-1] == (
      f'wrote {csv_path} (replacing the earlier one of {len(first.files)} file(s))')
  csv_path.write_text('my notes\n')  # not written by --mode=predict: never replaced
  with pytest.raises(evaluate.InputError, match='is not a predictions file written by'):
    predict.predict(config, str(out), str(root / 'test'))
  assert csv_path.read_text() == 'my notes\n'


def test_a_workdir_that_does_not_exist_is_named(run, tmp_path):
  root, workdir, config = run
  missing = tmp_path / 'no_such_run'
  with pytest.raises(evaluate.InputError) as e:
    predict.run(_with(config, init_from=workdir), str(missing), str(root / 'test'))
  assert str(e.value).startswith(f'--workdir={missing}: no such folder')
  assert not missing.exists()
  with pytest.raises(evaluate.InputError, match='only part-segmentation configs take a category'):
    predict.run(config, workdir, str(root / 'test'), 'Chair')
