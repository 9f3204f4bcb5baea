"""python -m dapt_jax.sweep: runs per fold/seed, summary.json/summary.md, skipping finished runs,
resuming an interrupted one, and one-line errors. End to end on generated few-shot folds with a
tiny model (each run is a main.py child process)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import modelnet_fewshot
from configs import scanobjectnn
from dapt_jax import sweep
from dapt_jax.data import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ('--config.model.trans_dim=32', '--config.model.encoder_dims=32', '--config.model.depth=1',
        '--config.model.num_heads=2', '--config.model.num_group=8', '--config.model.group_size=8',
        '--config.model.rank=4', '--config.progress_bar=False', '--config.parallel=shard_map',
        '--config.data.num_points=64', '--config.data.point_all=80', '--config.batch_size=8',
        '--config.num_epochs=1', '--config.eval.batch_size=8', '--config.data.shot=4',
        '--config.log_every_steps=1')


def _sweep(*args):
  return subprocess.run([sys.executable, '-m', 'dapt_jax.sweep', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=900,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''})


def test_parse_ints():
  assert sweep.parse_ints('0-9', 'folds') == list(range(10))
  assert sweep.parse_ints('2,0,1,1', 'seeds') == [0, 1, 2]
  assert sweep.parse_ints('0-2,7', 'folds') == [0, 1, 2, 7]
  for bad in ('3-1', 'a', '', '1,,2', '-1'):
    with pytest.raises(sweep.SweepError, match='--folds'):
      sweep.parse_ints(bad, 'folds')


def test_mean_and_population_std():
  values = [0.95, 0.97, 0.9, 1.0]
  stats = sweep.mean_std(values)
  assert stats['n'] == 4
  assert stats['mean'] == pytest.approx(np.mean(values), rel=1e-15)
  assert stats['std'] == pytest.approx(np.std(values, ddof=0), rel=1e-12)
  assert stats['std_sample'] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
  assert sweep.mean_std([0.5])['std'] == 0.0 and sweep.mean_std([0.5])['std_sample'] is None
  assert sweep.mean_std([])['mean'] is None


def test_plan_names_and_overrides():
  config = modelnet_fewshot.get_config()
  runs = sweep.plan_runs(config, {'folds': '0-1', 'seeds': '0,2'}, [])
  assert [r.name for r in runs] == ['fold0_seed0', 'fold0_seed2', 'fold1_seed0', 'fold1_seed2']
  assert runs[3].overrides == ('--config.data.fold=1', '--config.seed=2')
  assert sweep.run_config(config, runs[3]).data.fold == 1
  assert sweep.run_config(config, runs[3]).seed == 2
  seeds_only = sweep.plan_runs(scanobjectnn.get_config(), {'folds': None, 'seeds': '0,1,2'}, [])
  assert [r.name for r in seeds_only] == ['seed0', 'seed1', 'seed2']
  with pytest.raises(sweep.SweepError, match='--folds needs a few-shot config'):
    sweep.plan_runs(scanobjectnn.get_config(), {'folds': '0-9', 'seeds': '0'}, [])
  with pytest.raises(sweep.SweepError, match='--config.seed=3 conflicts with --seeds'):
    sweep.plan_runs(config, {'seeds': '0,1'}, ['--config.seed=3'])
  assert sweep.config_overrides(['--workdir=x', '--config.optim.lr', '0.1', '--config.seed=2',
                                 '--seeds=1']) == ['--config.optim.lr=0.1', '--config.seed=2']


def test_summary_tables():
  config = modelnet_fewshot.get_config()
  rows = [{'run': 'fold0_seed0', 'fold': 0, 'seed': 0, 'status': 'finished',
           'final_accuracy': 0.9, 'best_accuracy': 0.95, 'best_epoch': 3},
          {'run': 'fold1_seed0', 'fold': 1, 'seed': 0, 'status': 'finished',
           'final_accuracy': 0.8, 'best_accuracy': 0.85, 'best_epoch': 7},
          {'run': 'fold2_seed0', 'fold': 2, 'seed': 0, 'status': 'unfinished'}]
  summary = sweep.summarize(rows, config, 'python -m dapt_jax.sweep ...')
  assert (summary['finished'], summary['total']) == (2, 3)
  assert summary['final_accuracy']['mean'] == pytest.approx(0.85)
  assert summary['final_accuracy']['std'] == pytest.approx(0.05)  # population
  assert summary['best_accuracy']['mean'] == pytest.approx(0.9)
  assert summary['published'] == 'Point-MAE full fine-tuning 96.3 ± 2.5'
  md = sweep.format_markdown(summary)
  assert '| best epoch (selected on test; what papers report) | 90.00 ± 5.00 |' in md
  assert '| final epoch (no selection; honest) | 85.00 ± 5.00 |' in md
  assert 'population' in md and '| fold2_seed0 | 2 | 0 | — | — | — | unfinished |' in md


def _summary(workdir):
  with open(workdir / 'summary.json') as f:
    return json.load(f)


def _evals(run_dir):
  rows = [json.loads(line) for line in open(run_dir / 'metrics.jsonl') if line.strip()]
  return {r['epoch']: r for r in rows if r['split'] == 'eval'}


def test_sweep_runs_resumes_skips_and_summarises(tmp_path):
  data = tmp_path / 'ModelNetFewshot'
  testing.write_modelnet_fewshot(str(data), way=5, shot=4, folds=2, test_per_class=3, points=128)
  workdir = tmp_path / 'fs'
  common = ('--config=configs/modelnet_fewshot.py:5way10shot', f'--workdir={workdir}',
            f'--config.data.data_dir={data}', f'--config.data.tfds_data_dir={tmp_path / "tfds"}',
            *TINY)

  # Interrupted: fold 0 stops inside its last epoch (20 shapes, batch 8: 2 steps an epoch,
  # epochs 0..1, so 4 steps; stop at 3).
  out = _sweep(*common, '--folds=0', '--config.max_steps=3')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'fold0_seed0: stopped before its last epoch' in out.stdout
  s = _summary(workdir)
  assert (s['finished'], s['total']) == (0, 1) and s['runs'][0]['status'] == 'unfinished'

  # Both folds: fold 0 resumes from step 3, fold 1 runs; the summary covers both.
  out = _sweep(*common, '--folds=0-1')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'Resumed from step 3' in (workdir / 'fold0_seed0' / 'train.log').read_text()
  s = _summary(workdir)
  assert (s['finished'], s['total']) == (2, 2)
  for row in s['runs']:
    evals = _evals(workdir / row['run'])
    assert sorted(evals) == [1]  # evaluated after every epoch but 0; the last is epoch 1
    assert row['final_accuracy'] == evals[1]['accuracy'] == row['best_accuracy']
    assert row['best_epoch'] == 1 and row['status'] == 'finished'
    train_steps = [json.loads(line)['step'] for line in open(workdir / row['run'] / 'metrics.jsonl')
                   if json.loads(line)['split'] == 'train']
    assert train_steps == [1, 2, 3, 4]  # the resumed run repeated no step
  finals = [r['final_accuracy'] for r in s['runs']]
  assert s['final_accuracy']['mean'] == pytest.approx(np.mean(finals))
  assert s['final_accuracy']['std'] == pytest.approx(np.std(finals))
  md = (workdir / 'summary.md').read_text()
  assert 'fold1_seed0' in md and 'population' in md and 'best epoch' in md
  assert 'Published' not in md  # 5-way 4-shot: no published figure to set beside it

  # Again: nothing to do, nothing changes.
  before = (workdir / 'summary.json').read_text()
  out = _sweep(*common, '--folds=0-1')
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count('finished before, skipped') == 2
  assert json.loads((workdir / 'summary.json').read_text())['runs'] == json.loads(before)['runs']

  # A different config for the same runs is refused before anything runs.
  out = _sweep(*common, '--folds=0-1', '--config.optim.lr=0.1')
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and 'differs in: optim' in last


def test_user_mistakes_are_one_line_errors(tmp_path):
  cases = [
      (('--config=configs/scanobjectnn.py:hardest', '--folds=0-9'), '--folds needs a few-shot'),
      (('--config=configs/modelnet_fewshot.py', '--folds=9-0'), '--folds='),
      (('--config=configs/modelnet_fewshot.py', '--seeds=0,1', '--config.seed=4'),
       'conflicts with --seeds'),
      (('--config=configs/modelnet_fewshot.py',), '--workdir is required'),
  ]
  for args, expected in cases:
    workdir = () if '--workdir' in expected else (f'--workdir={tmp_path / "w"}',)
    out = _sweep(*args, *workdir)
    assert out.returncode == 2, (args, out.stderr[-2000:])
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and expected in last and 'Traceback' not in out.stderr
  assert not (tmp_path / 'w').exists()  # validated before touching the workdir


def test_sigterm_is_passed_to_the_running_run():
  """The sweep's handler forwards SIGTERM to the child (main.py saves on it) and remembers it."""
  import signal
  forward = sweep._Forward()  # pylint: disable=protected-access
  child = subprocess.Popen(
      [sys.executable, '-c', 'import signal, sys, time\n'
       'signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n'
       'print("ready", flush=True)\ntime.sleep(120)'], stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == 'ready'
    forward.child = child
    forward(signal.SIGTERM, None)
    assert child.wait(timeout=60) == 7
    assert forward.requested
  finally:
    if child.poll() is None:
      child.kill()
