"""Issue 23's data, sweep and benchmark cases through the real entry points: every mistake is one
`error:` line (exit 2, no traceback) found before anything is prepared, built, trained or
written; nothing of the user's is deleted; a preempted sweep exits 3; the corrected command works.

Subprocesses run on 2 forced CPU devices with a tiny model and share a persistent compilation
cache; the runs that train stop after a step (--config.max_steps).
"""
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dapt_jax import data as data_lib
from dapt_jax.bench import __main__ as bench_main
from dapt_jax.bench import runner
from dapt_jax.data import builders
from dapt_jax.data import checks
from dapt_jax.data import classes
from dapt_jax.data import folder
from dapt_jax.data import modelnet_files
from dapt_jax.data import shapenet_part
from dapt_jax.data import staging
from dapt_jax.data import testing
from tests import test_cli_errors as cli_tests
from tests import test_data_folder as folder_tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ('--config.model.trans_dim=32', '--config.model.encoder_dims=32', '--config.model.depth=1',
        '--config.model.num_heads=2', '--config.model.num_group=8', '--config.model.group_size=8',
        '--config.model.rank=4', '--config.progress_bar=False', '--config.parallel=shard_map',
        '--config.data.num_points=64', '--config.data.point_all=80', '--config.batch_size=8',
        '--config.num_epochs=1', '--config.eval.batch_size=8', '--config.log_every_steps=1')
FEWSHOT = '--config=configs/modelnet_fewshot.py:5way10shot'


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp('jax_cache')
  return {**cli_tests.ENV, 'JAX_COMPILATION_CACHE_DIR': str(cache),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def _run(env, args, module=None, timeout=300):
  cmd = [sys.executable] + (['-m', module] if module else ['main.py']) + [str(a) for a in args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope='module')
def fewshot(tmp_path_factory):
  """Folds 0 and 1 of a 5-way 10-shot task (the README's first few-shot command), tiny clouds."""
  top = tmp_path_factory.mktemp('fewshot')
  testing.write_modelnet_fewshot(str(top / 'fs'), way=5, shot=10, folds=2, test_per_class=2,
                                 points=96)
  return {'data': str(top / 'fs'), 'tfds': str(top / 'tfds'), 'top': top}


def _fewshot_args(fs):
  return [FEWSHOT, f'--config.data.data_dir={fs["data"]}',
          f'--config.data.tfds_data_dir={fs["tfds"]}', *TINY]


# ---------------------------------------------------------------------------------------------
# Item 1: no built-in TFDS config may clash with the user's own.


@pytest.mark.parametrize('make', [
    lambda d: builders.ModelNetFewshot(
        data_dir=d, config=builders.fewshot_config(5, 10, 0, 'x.pkl',
                                                   modelnet_files.DEFAULT_CLASS_NAMES)),
    lambda d: builders.SyntheticShapes(data_dir=d,
                                       config=builders.synthetic_config(2000, 500, 1024, 10, 0)),
    lambda d: builders.SyntheticParts(
        data_dir=d, config=builders.synthetic_parts_config(1024, 256, 2048, 8, 0)),
], ids=['fewshot_5way10shot_fold0', 'synthetic_defaults', 'synthetic_parts_defaults'])
def test_run_time_configs_never_clash_with_a_built_in_one(tmp_path, make):
  builder = make(str(tmp_path))  # TFDS raised "Cannot name a custom BuilderConfig ..." here
  assert not builder.BUILDER_CONFIGS


def test_fewshot_5way10shot_fold0_through_the_sweep_after_its_refusals(env, fewshot):
  workdir = fewshot['top'] / 'sweep'
  args = [*_fewshot_args(fewshot), f'--workdir={workdir}']
  # Item 6: a missing fold, found before fold 0 trains; nothing written, nothing prepared.
  cli_tests.assert_refused(_run(env, [*args, '--folds=0,20'], 'dapt_jax.sweep'), 'fold20_seed0',
                           '5way10shot/20.pkl')
  assert not workdir.exists() and not os.path.exists(fewshot['tfds'])
  # Misspelled and mistyped overrides: main.py's one line, not absl's FATAL or tracebacks.
  cli_tests.assert_refused(_run(env, [*args, '--folds=0', '--config.batchsize=8'],
                                'dapt_jax.sweep'), 'did you mean --config.batch_size')
  cli_tests.assert_refused(_run(env, [*args, '--folds=0', '--config.num_epochs=abc'],
                                'dapt_jax.sweep'), '--config.num_epochs=abc', 'int')
  # A model main.py refuses, in the second method only: refused before the first trains.
  cli_tests.assert_refused(_run(env, [*args, '--folds=0', '--methods=dapt,full',
                                      '--config.model.num_heads=3'], 'dapt_jax.sweep'),
                           'num_heads=3')
  assert not workdir.exists()
  # The corrected command: 5-way 10-shot fold 0 prepares and trains.
  out = _run(env, [*args, '--folds=0', '--config.max_steps=1'], 'dapt_jax.sweep')
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'fold0_seed0: stopped before its last epoch' in out.stdout
  assert (workdir / 'fold0_seed0' / 'checkpoints').is_dir()


def test_fewshot_fold_of_the_wrong_structure_is_refused_before_the_model(env, fewshot, tmp_path):
  data = tmp_path / 'fs'
  os.makedirs(data / '5way10shot')
  with open(data / '5way10shot' / '0.pkl', 'wb') as f:
    pickle.dump([[], []], f)  # a list, not {'train': ..., 'test': ...}
  workdir, tfds = tmp_path / 'w', tmp_path / 'tfds'
  out = _run(env, [FEWSHOT, f'--config.data.data_dir={data}', f'--config.data.tfds_data_dir={tfds}',
                   f'--workdir={workdir}', *TINY])
  cli_tests.assert_refused(out, '5way10shot/0.pkl', 'keys train and test')
  assert 'Parameters' not in out.stderr + out.stdout  # the model was never built
  assert not workdir.exists() and not tfds.exists()


# ---------------------------------------------------------------------------------------------
# Item 6: a preempted sweep exits 3; a second sweep on a busy workdir writes nothing into the run.


def test_sigterm_exits_3_and_a_second_sweep_is_refused_without_touching_the_run(env, fewshot):
  workdir = fewshot['top'] / 'busy'
  args = [sys.executable, '-m', 'dapt_jax.sweep', *_fewshot_args(fewshot), f'--workdir={workdir}',
          '--folds=1']
  first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    log = workdir / 'fold1_seed0' / 'train.log'
    deadline = time.time() + 120
    while not (log.exists() and 'main.py' in log.read_text()) and time.time() < deadline:
      assert first.poll() is None, first.communicate()
      time.sleep(0.2)
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    cli_tests.assert_refused(second, str(workdir), 'in use by another run')
    first.send_signal(signal.SIGTERM)
    stdout, stderr = first.communicate(timeout=180)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 3, stderr[-3000:]
  assert 're-run the same command to resume' in stdout and 'Traceback' not in stderr
  assert 'in use' not in log.read_text()


# ---------------------------------------------------------------------------------------------
# Item 5: the folder dataset's classes and symbolic links.


def test_folder_needs_two_classes_and_refuses_alias_loop_and_dangling_links(env, tmp_path):
  root = tmp_path / 'd'
  folder_tests._layout(root, {'a': 3})  # pylint: disable=protected-access
  config = folder_tests.tiny_config(root, tmp_path)
  folder_tests._raises(lambda: classes.fit_to_data(config),  # pylint: disable=protected-access
                       os.path.join('d', 'train'), 'one class folder (a)', 'at least two')
  folder_tests._layout(root, {'b': 3})  # pylint: disable=protected-access
  cases = {  # link → (target, what the line says)
      root / 'train' / 'alias': ('../train', 'inside the dataset itself'),  # the loop
      root / 'train' / 'up': ('../..', 'a folder holding it'),  # a loop through the parent
      root / 'train' / 'c': ('../train/a', 'inside the dataset itself'),  # an alias of class a
      root / 'train' / 'a' / 'same.npy': ('0.npy', 'inside the dataset itself'),
      root / 'train' / 'b' / 'gone.npy': ('nowhere.npy', 'dangling'),
      root / 'train' / 'gone': (str(tmp_path / 'nowhere'), 'dangling'),
  }
  for link, (target, what) in cases.items():
    os.symlink(target, link)
    folder_tests._raises(lambda: folder.plan(str(root)), str(link), what)  # pylint: disable=protected-access
    os.remove(link)
  # A class folder linked from outside the dataset is followed.
  folder_tests._layout(tmp_path / 'elsewhere', {'c': 3})  # pylint: disable=protected-access
  os.symlink(tmp_path / 'elsewhere' / 'train' / 'c', root / 'train' / 'c')
  assert folder.plan(str(root)).class_names == ('a', 'b', 'c')
  # Through main.py: one line naming the dangling link, nothing prepared, no workdir.
  os.symlink('nowhere.ply', root / 'train' / 'a' / 'gone.ply')
  workdir = tmp_path / 'w'
  out = _run(env, folder_tests._flags(root, tmp_path) + [f'--workdir={workdir}'])  # pylint: disable=protected-access
  cli_tests.assert_refused(out, str(root / 'train' / 'a' / 'gone.ply'), 'dangling')
  assert not workdir.exists() and folder_tests._prepared(tmp_path) == []  # pylint: disable=protected-access


# ---------------------------------------------------------------------------------------------
# Item 8: segmentation files checked before anything is prepared or built; a failed rebuild
# leaves the good prepared copy of another data_dir untouched.


def test_segmentation_files_are_checked_before_preparation(env, tmp_path):
  root = tmp_path / 'snp'
  written = shapenet_part.write_tree(str(root), {'train': 3, 'val': 1, 'test': 2},
                                     points=(40, 60))
  category, model_id, _, _ = written['test'][0]
  path = root / shapenet_part.SYNSETS[category] / f'{model_id}.txt'
  good = path.read_text()
  dc = data_lib.default_data_config('shapenet_part')
  dc.update(data_dir=str(root), tfds_data_dir=str(tmp_path / 'tfds'))
  checks.check_contents(dc)
  rows = [line.split() for line in good.splitlines()]
  bad_files = {
      'no normals': ('\n'.join(' '.join(r[:3] + r[6:]) for r in rows), 'row 1 has 4 values'),
      'no labels': ('\n'.join(' '.join(r[:6]) for r in rows), 'row 1 has 6 values'),
      'bad label': ('\n'.join(' '.join(r[:6] + ['49']) for r in rows), 'part label 49'),
  }
  for text, fragment in bad_files.values():
    path.write_text(text)
    with pytest.raises(data_lib.DataError, match=fragment):
      checks.check_contents(dc)
  # Through main.py with the full-size model: refused before the model or any data is made.
  workdir = tmp_path / 'w'
  out = _run(env, ['--config=configs/shapenetpart.py', f'--config.data.data_dir={root}',
                   f'--config.data.tfds_data_dir={tmp_path / "tfds"}', f'--workdir={workdir}'])
  cli_tests.assert_refused(out, str(path), 'part label 49')
  assert not workdir.exists() and not (tmp_path / 'tfds').exists()
  path.write_text(good)
  checks.check_contents(dc)  # the corrected files pass


def test_a_failed_rebuild_keeps_the_good_prepared_copy(tmp_path):
  good, bad = tmp_path / 'good', tmp_path / 'bad'
  testing.write_modelnet_dat(str(good), 6, 4, points=64)
  testing.write_modelnet_dat(str(bad), 6, 4, points=64)
  dat = bad / modelnet_files.DAT_FILES['train']
  dat.write_bytes(dat.read_bytes()[:300])  # truncated
  tfds_dir = tmp_path / 'tfds'

  def dc(data_dir):
    c = data_lib.default_data_config('modelnet40')
    c.update(data_dir=str(data_dir), tfds_data_dir=str(tfds_dir))
    return c

  source, info = data_lib.get_source(dc(good), 'train')
  expected = source.get_batch(range(len(source)))['points']
  before = cli_tests.snapshot(info.prepared_dir)
  with pytest.raises(data_lib.DataError, match='truncated'):
    data_lib.get_source(dc(bad), 'train')  # shares the prepared folder: a rebuild, which fails
  assert cli_tests.snapshot(info.prepared_dir) == before  # untouched, and reused as it is
  assert not [n for n in os.listdir(tfds_dir) if n.startswith(staging.STAGING_PREFIX)]
  source, _ = data_lib.get_source(dc(good), 'train')
  np.testing.assert_array_equal(source.get_batch(range(len(source)))['points'], expected)
  assert cli_tests.snapshot(info.prepared_dir) == before


# ---------------------------------------------------------------------------------------------
# Item 7: the benchmarks refuse a bad model or batch, and fail when a sub-run fails.


def test_bench_refuses_a_bad_model_or_batch_before_any_run(env, tmp_path):
  out_dir = tmp_path / 'bench'
  cli_tests.assert_refused(_run(env, ['--model', '{"depthh": 2}', '--out', out_dir, '--quick'],
                                'dapt_jax.bench'), "'depthh'", "did you mean 'depth'")
  cli_tests.assert_refused(_run(env, ['--model', '{"depth": 0}', '--out', out_dir, '--quick'],
                                'dapt_jax.bench'), 'config.model.depth=0')
  assert not out_dir.exists()
  for batch in ('0', '-2'):
    cli_tests.assert_refused(_run(env, ['--batch', batch, '--out', out_dir],
                                  'dapt_jax.bench.tasks'), f'--batch={batch}', 'positive')
  assert not out_dir.exists()


def test_bench_exits_non_zero_when_a_sub_run_fails(tmp_path, monkeypatch, capsys):
  def fake_run(plan, log=print):
    del log
    ok = {**{f: None for f in runner.RECORD_FIELDS}, **plan.spec(batch=8), 'status': 'ok',
          'role': 'main', 'device': 'cpu', 'step_s': 0.1, 'samples_per_s': 80.0,
          'compile_s': 1.0, 'peak_bytes': 2**20, 'peak_net_bytes': 2**20,
          'baseline_rss_bytes': 2**20, 'peak_source': 'process peak RSS',
          'trainable_params': 10, 'total_params': 100}
    return [ok, dict(ok, mode='full', status='error', error='ValueError: boom')]

  monkeypatch.setattr(runner, 'run', fake_run)
  argv = ['--quick', '--out', str(tmp_path / 'b'), '--frameworks', 'jax', '--no-compile-cache']
  assert bench_main.main(argv) == 1
  line = [l for l in capsys.readouterr().err.splitlines() if l.startswith('error: ')]
  assert len(line) == 1 and '1 of 2 benchmark runs failed' in line[0] and 'boom' in line[0]
  assert (tmp_path / 'b' / 'bench.md').exists()  # what was measured is kept
  # Out of memory is a failure too, except where the batch search tried a doubled batch.
  plan = runner.Plan(quick=False, frameworks=['jax'], modes=['dapt'], batches=None, max_batch=64,
                     scaling=False, bf16=False, warmup=1, steps=1)
  oom = {'status': 'oom', 'role': 'main', 'batch': 64}
  assert runner.failures([oom], plan) == []
  assert runner.failures([dict(oom, batch=32)], plan) == [dict(oom, batch=32)]


def test_a_run_folder_held_by_another_run_is_refused_without_writing_to_its_log(tmp_path):
  from dapt_jax import sweep  # pylint: disable=g-import-not-at-top
  from dapt_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  run = sweep.Run(name='fold0_seed0', values=(('fold', 0),), overrides=('--config.data.fold=0',))
  log = tmp_path / run.name / sweep.RUN_LOG
  os.makedirs(log.parent)
  log.write_text('the running run\n')
  with workdir_lib.lock(str(log.parent)):  # a main.py started by hand in the run's folder
    with pytest.raises(workdir_lib.WorkdirBusy, match='in use by another run'):
      sweep.run_one(run, str(tmp_path), 'configs/modelnet_fewshot.py', [], sweep._Forward())  # pylint: disable=protected-access
  assert log.read_text() == 'the running run\n'


# ---------------------------------------------------------------------------------------------
# Items 3 and 8 (model side): init_from must hold every frozen parameter; a backbone of another
# width into folder data, and a segmentation model's part count, are refused before anything is
# prepared.

BACKBONE = os.path.join(ROOT, 'assets', 'pretrained', 'synthetic_small')  # 64 wide, 2 blocks


def test_init_from_and_part_count_are_checked_before_anything_is_prepared(env, tmp_path):
  workdir = tmp_path / 'w'
  # The 2-block demo backbone into a 4-block model: blocks 2-3 would stay random and frozen.
  out = _run(env, ['--config=configs/synthetic.py', f'--workdir={workdir}',
                   f'--config.init_from={BACKBONE}', '--config.model.depth=4',
                   f'--config.data.tfds_data_dir={tmp_path / "tfds"}'])
  cli_tests.assert_refused(out, 'does not hold', 'frozen parameter', 'blocks_2/')
  assert not workdir.exists() and not (tmp_path / 'tfds').exists()
  # A 64-wide backbone into the 384-wide folder config: refused before the folder is prepared.
  root = tmp_path / 'clouds'
  folder_tests._layout(root, {'a': 3, 'b': 3})  # pylint: disable=protected-access
  out = _run(env, ['--config=configs/folder.py', f'--workdir={workdir}',
                   f'--config.data.data_dir={root}', f'--config.init_from={BACKBONE}',
                   f'--config.data.tfds_data_dir={tmp_path / "tfds"}'])
  cli_tests.assert_refused(out, 'blocks_0/', 'has shape', "this config's model needs")
  assert not workdir.exists() and folder_tests._prepared(tmp_path) == []  # pylint: disable=protected-access
  # A segmentation model whose part count is not the dataset's: refused before preparation.
  out = _run(env, ['--config=configs/shapenetpart.py:synthetic', f'--workdir={workdir}',
                   '--config.model.num_parts=10', f'--config.data.tfds_data_dir={tmp_path / "tfds"}'])
  cli_tests.assert_refused(out, 'config.model.num_parts=10', 'part ids')
  assert not workdir.exists() and not (tmp_path / 'tfds').exists()
