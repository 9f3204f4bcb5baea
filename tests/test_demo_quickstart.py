"""The quick start (`python -m dapt_jax.demo.quickstart`, what `bash scripts/demo.sh` runs): its
three main.py steps on a tiny model end with an accuracy line and a prediction line that agree
with the files written; it refuses folders it did not write, before anything runs, and a mistake
in an override leaves no folder behind.

Each case is one subprocess on 2 forced CPU devices; the run trains a tiny model for two short
epochs on a tiny generated set (the persistent compilation cache makes a second run faster).
"""
import csv
import json
import os
import subprocess
import sys

import pytest

from dapt_jax.demo import quickstart
from tests import test_cli_errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# main.py's tiny model and data from the CLI tests, after the demo's recipe: later overrides win,
# so the same three commands run on a tiny model (checkpointed every epoch, as the demo's run is).
ENV = test_cli_errors.ENV
TINY = [*test_cli_errors.TINY, '--config.checkpoint.every_epochs=1']


def _quickstart(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'dapt_jax.demo.quickstart', *map(str, args)],
                        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def _refused(proc):
  """Status 2 and exactly one `error:` line, no traceback; returns that line."""
  assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
  assert 'Traceback' not in proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1, proc.stderr
  return errors[0]


def test_the_demo_steps_end_with_the_accuracy_and_the_prediction(tmp_path):
  workdir = tmp_path / 'qs'
  proc = _quickstart(f'--workdir={workdir}', '--shape=cone', *TINY,
                     f'--config.data.tfds_data_dir={tmp_path / "tfds"}')
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  out = proc.stdout.splitlines()
  for step in ('[1/3 train] python main.py', '[2/3 eval] python main.py',
               '[3/3 predict] python main.py'):
    assert any(line.startswith(step) for line in out), step
  accuracy, prediction = out[-2], out[-1]
  with open(workdir / 'eval_test.json') as f:
    result = json.load(f)
  assert accuracy == (f"test accuracy: {100 * result['accuracy']:.1f} % on 16 held-out clouds of "
                      '4 shapes (chance 25 %)')
  with open(workdir / 'predictions.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 1 and rows[0]['file'].endswith('cone.ply')
  assert rows[0]['class'] in result['class_names']
  assert prediction == (f"prediction: {workdir / 'cone.ply'} is a {rows[0]['class']} "
                        f"({100 * float(rows[0]['probability']):.1f} %; it was generated as a "
                        'cone)')
  # The file predicted is an ordinary PLY cloud: the project's own reader takes it.
  from dapt_jax.data import clouds
  assert clouds.read_cloud(str(workdir / 'cone.ply')).shape == (1024, 3)
  # It is a quick start folder now: check_workdir would replace exactly these entries.
  assert set(quickstart.check_workdir(str(workdir))) == set(os.listdir(workdir))


def test_folders_it_did_not_write_are_refused_before_anything_runs(tmp_path):
  mine = tmp_path / 'mine'
  mine.mkdir()
  (mine / 'notes.txt').write_text('keep\n')
  line = _refused(_quickstart(f'--workdir={mine}', *TINY))
  assert 'not a quick start folder' in line and str(mine) in line
  assert os.listdir(mine) == ['notes.txt']
  # A quick start folder someone added a file to: that file is named, nothing is removed.
  (mine / quickstart.MARKER).write_text(json.dumps({'cloud': 'cone.ply'}))
  (mine / 'config.json').write_text('{}')
  line = _refused(_quickstart(f'--workdir={mine}', *TINY))
  assert "'notes.txt'" in line
  assert sorted(os.listdir(mine)) == ['config.json', 'notes.txt', quickstart.MARKER]
  afile = tmp_path / 'file'
  afile.write_text('x')
  assert 'is a file' in _refused(_quickstart(f'--workdir={afile}'))
  assert 'cannot be created' in _refused(_quickstart(f'--workdir={afile / "sub"}'))
  assert afile.read_text() == 'x'
  assert 'not one of' in _refused(_quickstart(f'--workdir={tmp_path / "new"}', '--shape=blob'))
  assert "'--epochs'" in _refused(_quickstart(f'--workdir={tmp_path / "new"}', '--epochs', '3'))
  assert not (tmp_path / 'new').exists()


def test_a_mistaken_override_leaves_no_folder(tmp_path):
  workdir = tmp_path / 'qs'
  line = _refused(_quickstart(f'--workdir={workdir}', '--config.batchsize=8'))
  assert 'batchsize' in line
  assert not workdir.exists()


@pytest.mark.parametrize('name', ['checkpoints', 'eval_test.json', 'predictions.csv', '.lock'])
def test_main_py_outputs_count_as_the_demos_own(tmp_path, name):
  (tmp_path / quickstart.MARKER).write_text(json.dumps({'cloud': 'torus.ply'}))
  (tmp_path / name).mkdir()
  (tmp_path / 'torus.ply').write_text('ply\n')
  assert quickstart.check_workdir(str(tmp_path)) == sorted([quickstart.MARKER, name, 'torus.ply'])
