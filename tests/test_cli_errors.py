"""Every user mistake through the real entry points: one `error:` line, exit status 2, no
traceback, nothing written, and the corrected command then works in the same workdir. Also:
kill -9 inside the best checkpoint's save, SIGTERM's exit status, resumed metrics, the workdir
lock, --config.overwrite, and the converter's and benchmark's argument mistakes.

Each command runs `python main.py` (or `-m convert`, `-m dapt_jax.bench`) in a subprocess on 2
forced CPU devices with a tiny model on a tiny synthetic dataset, sharing a persistent compilation
cache. Refusals cost one process start each; the successful runs stop after a step or two
(--config.max_steps).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from dapt_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu',
       'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'DAPT_JAX_DEBUG': ''}
TINY = ['--config.model.trans_dim=32', '--config.model.encoder_dims=32', '--config.model.depth=1',
        '--config.model.num_heads=2', '--config.model.num_group=8', '--config.model.group_size=8',
        '--config.model.rank=4', '--config.model.num_classes=4', '--config.data.num_points=64',
        '--config.data.point_all=80', '--config.data.synthetic_points=128',
        '--config.data.synthetic_num_train=32', '--config.data.synthetic_num_test=16',
        '--config.data.synthetic_num_classes=4', '--config.batch_size=8',
        '--config.eval.batch_size=8', '--config.num_epochs=1', '--config.progress_bar=False',
        '--config.log_every_steps=1', '--config.eval.every_epochs=1']


def run(args, module=None, timeout=300):
  cmd = [sys.executable] + (['-m', module] if module else ['main.py']) + [str(a) for a in args]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def base(paths, config='configs/synthetic.py', workdir=None):
  return [f'--config={config}', *TINY, f'--config.data.tfds_data_dir={paths["tfds"]}',
          f'--workdir={workdir or paths["w"]}']


def assert_refused(r, *fragments):
  """Status 2, exactly one line starting `error:` naming every fragment, no traceback."""
  out = r.stdout + r.stderr
  assert r.returncode == 2, out[-3000:]
  lines = [line for line in r.stderr.splitlines() if 'error:' in line]
  assert len(lines) == 1 and lines[0].startswith('error: '), out[-3000:]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  for bad in ('Traceback', 'Event loop is closed', 'was never awaited'):
    assert bad not in out, out[-3000:]
  return lines[0]


def snapshot(path):
  """{relative path: (size, mtime_ns)} of every file under path, and every folder; None if
  path does not exist."""
  if not os.path.lexists(path):
    return None
  if not os.path.isdir(path):
    st = os.stat(path)
    return {'.': (st.st_size, st.st_mtime_ns)}
  out = {}
  for root, dirs, files in os.walk(path):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), path) + '/'] = None
    for f in files:
      st = os.stat(os.path.join(root, f))
      out[os.path.relpath(os.path.join(root, f), path)] = (st.st_size, st.st_mtime_ns)
  return out


def unwritable_dir(tmp_path):
  """A folder this process cannot write in (permission bits do not stop root: use /sys)."""
  if os.geteuid() != 0:
    d = tmp_path / 'readonly'
    d.mkdir()
    d.chmod(0o555)
    return str(d)
  try:
    workdir_lib._probe('/sys')  # pylint: disable=protected-access
  except OSError:
    return '/sys'
  pytest.skip('no unwritable folder available to root here')


@pytest.fixture(scope='module')
def paths(tmp_path_factory):
  top = tmp_path_factory.mktemp('cli')
  # Every run compiles the same tiny steps: JAX's persistent cache makes that once (~3x faster).
  ENV.update(JAX_COMPILATION_CACHE_DIR=str(top / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return {'top': top, 'tfds': str(top / 'tfds'), 'w': str(top / 'w')}


# ---------------------------------------------------------------------------------------------
# Refused before anything is written: the workdir is not even created.

CASES = {
    # id: (extra args, fragments of the error line); '--config=' in extra replaces the config
    'misspelled_field': (['--config.batchsize=8'], ['--config.batchsize',
                                                    'did you mean --config.batch_size']),
    'misspelled_nested_field': (['--config.optim.learning_rate=1e-3'],
                                ['--config.optim.learning_rate', 'lr']),
    'wrong_type': (['--config.batch_size=abc'], ['config.batch_size', 'int']),
    'unknown_flag': (['--bogus=1'], ['bogus']),
    'unknown_variant': (['--config=configs/scanobjectnn.py:nope'], ["unknown variant 'nope'"]),
    'missing_config_file': (['--config=configs/nothere.py'], ['configs/nothere.py', 'no such file']),
    'batch_zero': (['--config.batch_size=0'], ['config.batch_size=0']),
    'batch_negative': (['--config.batch_size=-8'], ['config.batch_size=-8']),
    'batch_not_divisible': (['--config.batch_size=7'], ['config.batch_size=7', '2 devices']),
    'eval_batch_not_divisible': (['--config.eval.batch_size=7'],
                                 ['config.eval.batch_size=7', '2 devices']),
    'parallel_unknown': (['--config.parallel=bogus'], ['config.parallel', 'shard_map']),
    'dtype_unknown': (['--config.model.dtype=float16'], ['config.model.dtype']),
    'num_points_above_stored': (['--config.data.num_points=200', '--config.data.point_all=240'],
                                ['config.data.num_points=200', '128 points']),
    'point_all_below_num_points': (['--config.data.point_all=40'], ['config.data.point_all=40']),
    'num_group_above_num_points': (['--config.model.num_group=100'],
                                   ['config.model.num_group=100']),
    'group_size_above_num_points': (['--config.model.group_size=100'],
                                    ['config.model.group_size=100']),
    'heads_do_not_divide_width': (['--config.model.num_heads=3'], ['config.model.num_heads=3']),
    'classes_differ_from_data': (['--config.model.num_classes=7'],
                                 ['config.model.num_classes=7', '4 classes']),
    'lr_negative': (['--config.optim.lr=-1'], ['config.optim.lr=-1']),
    'lr_zero': (['--config.optim.lr=0'], ['config.optim.lr=0']),
    'votes_zero': (['--config.eval.votes=0'], ['config.eval.votes=0']),
    'epochs_negative': (['--config.num_epochs=-1'], ['config.num_epochs=-1']),
    'max_steps_zero': (['--config.max_steps=0'], ['config.max_steps=0']),
    'bad_partition_rule': (['--config.partition_rules=(("(", "trainable"),)'],
                           ['config.partition_rules', 'regex']),
    'partition_rules_miss_a_parameter': (['--config.partition_rules=(("^head/", "trainable"),)'],
                                         ['config.partition_rules', 'matches no partition rule']),
    'init_from_missing': (['--config.init_from={top}/nothing'],
                          ['config.init_from', 'no such directory']),
    'init_from_not_a_checkpoint': (['--config.init_from={top}'], ['not a converted checkpoint']),
    'modelnet40_data_missing': (['--config=configs/modelnet40.py',
                                 '--config.data.data_dir={top}/nowhere'],
                                ['ModelNet40', 'nowhere']),
    'eval_with_nothing_to_evaluate': (['--mode=eval'], ['nothing to evaluate']),
    'synthetic_pose_unknown': (['--config.data.synthetic_pose=sideways'],
                               ['data.synthetic_pose', "'sideways'", 'so3, upright']),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_refused_before_the_workdir_is_touched(case, paths):
  extra, fragments = CASES[case]
  extra = [a.format(top=paths['top']) for a in extra]
  config = next((a.split('=', 1)[1] for a in extra if a.startswith('--config=')),
                'configs/synthetic.py')
  extra = [a for a in extra if not a.startswith('--config=')]
  assert not os.path.exists(paths['w'])
  assert_refused(run(base(paths, config) + extra), *fragments)
  assert not os.path.exists(paths['w']), f'{case} left {os.listdir(paths["w"])}'


def test_workdir_that_is_a_file_or_cannot_be_created(paths, tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('keep me')
  assert_refused(run(base(paths, workdir=a_file)), str(a_file), 'is a file')
  assert a_file.read_text() == 'keep me'
  locked = unwritable_dir(tmp_path)
  before = snapshot(locked) if locked != '/sys' else None
  assert_refused(run(base(paths, workdir=locked)), locked, 'is not writable')
  assert_refused(run(base(paths, workdir=f'{locked}/run')), f'{locked}/run', 'not writable')
  assert not os.path.exists(f'{locked}/run')
  if before is not None:
    assert snapshot(locked) == before


def _h5(path, clouds, classes):
  import h5py  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, 'w') as f:
    f['data'] = rng.normal(size=(clouds, 128, 3)).astype(np.float32)
    f['label'] = (np.arange(clouds) % classes).astype(np.int64)


def test_scanobjectnn_data_dir_mistakes_then_the_fix(paths, tmp_path):
  """The issue's commonest experience: a wrong data_dir, then the right one, same workdir."""
  data = tmp_path / 'ScanObjectNN'
  _h5(data / 'main_split' / 'training_objectdataset_augmentedrot_scale75.h5', 30, 15)
  _h5(data / 'main_split' / 'test_objectdataset_augmentedrot_scale75.h5', 15, 15)
  workdir = str(tmp_path / 'scan')
  args = base(paths, 'configs/scanobjectnn.py:hardest', workdir) + [
      '--config.model.num_classes=15', '--config.max_steps=1']
  for data_dir, fragment in ((tmp_path / 'nowhere', 'nowhere'), ('', 'main_split'),
                             (tmp_path, str(tmp_path))):
    assert_refused(run(args + [f'--config.data.data_dir={data_dir}']), 'ScanObjectNN', fragment)
    assert not os.path.exists(workdir)
  assert_refused(run(args + [f'--config.data.data_dir={data}', '--config.data.num_points=256',
                             '--config.data.point_all=256']),
                 'config.data.num_points=256', '128 points')
  ok = run(args + [f'--config.data.data_dir={data}'])
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert 'stopped after step 1' in ok.stdout


# ---------------------------------------------------------------------------------------------
# An existing run: refusals leave it exactly as it was; the corrected command resumes it.


@pytest.fixture(scope='module')
def trained(paths):
  """The corrected command, in the workdir every refusal above left untouched: one step."""
  if not os.path.exists(os.path.join(paths['w'], 'config.json')):
    assert not os.path.exists(paths['w'])
    r = run(base(paths) + ['--config.max_steps=1'])
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'stopped after step 1 (max_steps)' in r.stdout
  return paths['w']


def test_refusals_leave_a_run_untouched_it_resumes_and_overwrite_replaces_it(paths, trained,
                                                                             tmp_path):
  before = snapshot(trained)
  cases = [
      (['--config.batchsize=8'], ['did you mean --config.batch_size']),
      (['--config.batch_size=7'], ['config.batch_size=7']),
      (['--config.optim.lr=1e-2'], ['different config', 'optim', '--config.overwrite=True']),
      (['--mode=eval', '--config.eval.batch_size=7'], ['config.eval.batch_size=7']),
      (['--mode=eval', '--config.eval.votes=0'], ['config.eval.votes=0']),
  ]
  for extra, fragments in cases:
    assert_refused(run(base(paths) + ['--config.max_steps=2'] + extra), *fragments)
    assert snapshot(trained) == before, extra
  # A converted checkpoint with a truncated array file: one line, no asyncio noise at exit.
  from dapt_jax import checkpoints, pretrained  # pylint: disable=g-import-not-at-top
  variables, _ = checkpoints.workdir_variables(trained)
  converted = str(tmp_path / 'converted')
  pretrained.save_converted(converted, variables, {'layout': 'test'})
  data_files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(converted, 'd'))
                for f in fs]
  with open(data_files[0], 'r+b') as f:
    f.truncate(os.path.getsize(data_files[0]) // 2)
  fresh = str(tmp_path / 'fresh')
  assert_refused(run(base(paths, workdir=fresh) + [f'--config.init_from={converted}']),
                 converted)
  assert not os.path.exists(fresh)
  # A checkpoint of another model.
  assert_refused(run(base(paths, workdir=fresh) + [f'--config.init_from={trained}',
                                                   '--config.model.rank=8']),
                 'config.init_from', 'adapter', 'shape')
  assert not os.path.exists(fresh)
  # The corrected command resumes.
  ok = run(base(paths) + ['--config.max_steps=2'])
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert 'stopped after step 2 (max_steps)' in ok.stdout
  rows = [json.loads(line) for line in open(os.path.join(trained, 'metrics.jsonl'))]
  assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2]

  # --mode=eval without a best checkpoint says what it evaluated; then --config.overwrite=True
  # with another config replaces every output of this run, evaluation outputs included.
  ev = run(base(paths) + ['--mode=eval'])
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert 'no best checkpoint: the last one, step 2' in ev.stdout
  assert {'eval_test.json', 'predictions_test.npz'} <= set(os.listdir(trained))
  assert json.load(open(os.path.join(trained, 'config.json')))['optim']['lr'] != 2e-3
  new = run(base(paths) + ['--config.max_steps=1', '--config.optim.lr=2e-3',
                           '--config.overwrite=True'])
  assert new.returncode == 0, new.stderr[-3000:]
  left = set(os.listdir(trained))
  assert not {'eval_test.json', 'predictions_test.npz', workdir_lib.LOCK_FILE} & left, left
  assert json.load(open(os.path.join(trained, 'config.json')))['optim']['lr'] == 2e-3
  rows = [json.loads(line) for line in open(os.path.join(trained, 'metrics.jsonl'))]
  assert [r['step'] for r in rows] == [1]  # the replaced run's rows went with it
  assert os.listdir(os.path.join(trained, 'checkpoints', 'last')) == ['1']


def test_busy_workdir_is_refused_naming_the_holder(paths, tmp_path):
  workdir = str(tmp_path / 'busy')
  with workdir_lib.lock(workdir):
    line = assert_refused(run(base(paths, workdir=workdir)), workdir, 'in use by another run',
                          f'pid {os.getpid()}', socket.gethostname())
    assert 'another --workdir' in line
    assert sorted(os.listdir(workdir)) == [workdir_lib.LOCK_FILE]
  assert not os.path.exists(workdir)  # the lock made it, and the lock removed it


# ---------------------------------------------------------------------------------------------
# kill -9 inside the best checkpoint's save; SIGTERM; metrics after resumes.


def _complete_steps(folder):
  return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def _run_until(args, condition, timeout=240):
  """Starts main.py; polls `condition()` every millisecond; returns the process once it holds
  (or None when the run ended first)."""
  proc = subprocess.Popen([sys.executable, 'main.py', *args], cwd=ROOT, env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + timeout
  while proc.poll() is None and time.time() < deadline:
    if condition():
      return proc
    time.sleep(0.001)
  proc.kill()
  proc.communicate()
  return None


def test_kill_9_inside_the_best_save_then_sigterm_then_resume(paths, tmp_path):
  args = base(paths, workdir=str(tmp_path / 'k')) + ['--config.num_epochs=40']
  best = tmp_path / 'k' / 'checkpoints' / 'best'
  last = tmp_path / 'k' / 'checkpoints' / 'last'
  in_best_save = lambda: best.is_dir() and any('orbax-checkpoint-tmp' in n
                                               for n in os.listdir(best))
  proc = _run_until(args, in_best_save)
  assert proc is not None, 'the run ended before a best save was seen'
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  # Right after the kill: the record of the last save never names a best that is not on disk.
  last_step = _complete_steps(last)[-1]
  meta = json.load(open(last / str(last_step) / 'meta' / 'metadata'))
  if meta['best_epoch'] >= 0:
    assert _complete_steps(best), 'the last save names a best checkpoint that is not on disk'
  old_best = _complete_steps(best)
  for step in old_best:  # an earlier best survives the kill, complete
    assert (best / str(step) / 'state').is_dir() and (best / str(step) / 'meta').is_dir()

  # Resume; preempt it with SIGTERM once it trains again: status 3, state saved.
  rows_before = sum(1 for _ in open(tmp_path / 'k' / 'metrics.jsonl'))
  resumed = lambda: sum(1 for _ in open(tmp_path / 'k' / 'metrics.jsonl')) > rows_before + 2
  proc = _run_until(args, resumed)
  assert proc is not None, 'the resumed run ended before it was preempted'
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 3, out[-3000:]
  assert '(preempted)' in out and 'Traceback' not in out
  assert 'Taking over the lock' in out  # the killed run's lock file, its flock gone with it
  assert not any('orbax-checkpoint-tmp' in n for n in os.listdir(best))  # cleaned up on resume

  # Finish a few steps later; the best checkpoint is on disk and eval uses it.
  preempted_at = _complete_steps(last)[-1]
  done = run(args + [f'--config.max_steps={preempted_at + 12}'])
  assert done.returncode == 0, done.stderr[-3000:]
  best_steps = _complete_steps(best)
  assert best_steps and not any('tmp' in n for n in os.listdir(best))
  ev = run(args + ['--mode=eval'])
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert f'best checkpoint, step {best_steps[-1]}' in ev.stdout
  # One row per step and split, whatever was redone after the kill.
  rows = [json.loads(line) for line in open(tmp_path / 'k' / 'metrics.jsonl')]
  keys = [(r['split'], r['step']) for r in rows]
  assert len(keys) == len(set(keys)), keys
  train_steps = [s for split, s in keys if split == 'train']
  assert train_steps == list(range(1, preempted_at + 13))


# ---------------------------------------------------------------------------------------------
# The converter and the benchmark.


def test_convert_to_an_unwritable_folder_ends_at_once_with_one_line(tmp_path):
  src = tmp_path / 'model.pth'
  src.write_bytes(b'not read: the destination is checked first')
  locked = unwritable_dir(tmp_path)
  start = time.time()
  r = run([src, f'{locked}/ckpt'], module='convert', timeout=120)
  assert_refused(r, f'{locked}/ckpt', 'cannot write')
  assert time.time() - start < 60
  assert not os.path.exists(f'{locked}/ckpt')


def test_bench_argument_mistakes(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  assert_refused(run(['--modes', 'bogus'], module='dapt_jax.bench'), '--modes', 'bogus')
  assert_refused(run(['--frameworks', 'jax,tf'], module='dapt_jax.bench'), 'tf')
  assert_refused(run(['--out', a_file], module='dapt_jax.bench'), str(a_file), 'is a file')
  assert_refused(run(['--steps', '0'], module='dapt_jax.bench'), '--steps=0')
  assert_refused(run(['--nope'], module='dapt_jax.bench'), '--nope')
  assert a_file.read_text() == 'x'
