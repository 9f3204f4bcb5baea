"""A workdir written before the models/ restructuring still resumes and evaluates.

tests/fixtures/workdir_v0 is a tiny DAPT run on generated shapes made by commit acb302b (the last
commit before dapt_jax/models/ existed), stopped by max_steps after epoch 0 of 2: its
checkpoints hold the parameter tree under the paths of that time. Resuming it through main.py
must restore every array (a renamed or missing path fails the restore) and finish the run; the
evaluation then reads its best checkpoint.
"""
import json
import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'workdir_v0')
# The command that made the fixture, less --config.max_steps=4 (a field a resume may change).
FLAGS = ['--config=configs/synthetic.py', '--config.model.trans_dim=32',
         '--config.model.encoder_dims=32', '--config.model.depth=2', '--config.model.num_heads=2',
         '--config.model.num_group=8', '--config.model.group_size=8', '--config.model.rank=4',
         '--config.model.num_classes=4', '--config.data.num_points=64',
         '--config.data.point_all=80', '--config.data.synthetic_points=128',
         '--config.data.synthetic_num_train=64', '--config.data.synthetic_num_test=20',
         '--config.data.synthetic_num_classes=4', '--config.batch_size=16',
         '--config.num_epochs=2', '--config.eval.every_epochs=1', '--config.eval.batch_size=8',
         '--config.checkpoint.every_epochs=1', '--config.progress_bar=False']


def run(args):
  return subprocess.run([sys.executable, 'main.py'] + args, cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_a_workdir_from_before_the_restructuring_resumes_and_evaluates(tmp_path):
  workdir = str(tmp_path / 'workdir_v0')
  shutil.copytree(FIXTURE, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    before = [json.loads(line) for line in f]
  assert max(r_['step'] for r_ in before) == 4

  r = run(FLAGS + [f'--workdir={workdir}'])
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'final: accuracy' in r.stdout, r.stdout
  assert 'Resumed from step 4' in r.stderr, r.stderr[-3000:]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert max(r_['step'] for r_ in records) == 12  # epochs 0..2 of 4 steps
  assert records[:len(before)] == before  # the old records are kept

  r = run(FLAGS + [f'--workdir={workdir}', '--mode=eval'])
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    result = json.load(f)
  assert result['num_samples'] == 20 and 0.0 <= result['accuracy'] <= 1.0
