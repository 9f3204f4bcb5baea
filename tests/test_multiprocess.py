"""Two real processes on 127.0.0.1, started as README ("Several GPUs, several hosts") documents.

Each process gets 2 CPU devices (4 in all) and runs

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=<0|1> \
        python main.py --config=configs/synthetic.py --workdir=W --distributed <tiny overrides>

training a tiny model for 2 epochs of 4 steps (global batch 16, 64 clouds), evaluating 20 test
clouds (eval batch 8, so the last batch is half padding and process 1's part of it is all padding)
and saving. The same command with one process and 4 devices is the reference. For pmap and
shard_map alike the test asserts: each process sees 4 devices; the two processes' parts of every
training batch are disjoint and together are the one-process run's global batch; the checkpoints
have exactly the one-process run's layout (written once: no second process's data files, every
commit marker) and restore; evaluation counts each of the 20 test clouds once; the final state
matches the one-process run (tolerance below); a run stopped by both processes after step 6 and
started again ends bit for bit where the uninterrupted two-process run ends. A run whose
process 1, or process 0 (which hosts JAX's coordination service), is killed (SIGKILL) during
epoch 1 ends on the other within a bound, with status 3 and one `error:` line naming the killed
process and step 4, and the same command then resumes it to the one-process run's parameters;
re-running a finished run's command writes nothing.

Bounded: every launch has a timeout, processes are killed (their process group) whatever happens,
the coordinator listens on a free loopback port. A persistent compilation cache shared by the
launches keeps the whole module to a few minutes on 2 cores.
"""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dapt_jax import checkpoints as ckpt_lib
from dapt_jax import multihost
from dapt_jax import partition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_TIMEOUT_S = 600  # per launch; a healthy launch takes ~30 s on 2 idle cores
STEPS_PER_EPOCH, EPOCHS, NUM_TEST = 4, 2, 20
LAST_STEP = STEPS_PER_EPOCH * EPOCHS
LR = 0.05


def _overrides(tfds_dir):
  """The synthetic config made tiny. optim.eps=1 (instead of 1e-8) turns Adam's update into
  ~lr·m̂ for these gradients (|g| < 1): with eps=1e-8 the update is lr·sign-like for every entry
  whose gradient is rounding noise (e.g. biases before a training-mode BatchNorm), so two runs
  that round differently would differ by ~lr in those entries after one step, and the
  comparison below could not tell rounding from a bug. lr=0.05 makes the parameters move by
  ~1e-2 over the run, the size of what a bug would change."""
  fields = {
      'model.trans_dim': 32, 'model.encoder_dims': 32, 'model.depth': 1, 'model.num_heads': 2,
      'model.num_group': 8, 'model.group_size': 8, 'model.rank': 4, 'model.num_classes': 4,
      'data.num_points': 64, 'data.point_all': 80, 'data.synthetic_points': 128,
      'data.synthetic_num_train': 64, 'data.synthetic_num_test': NUM_TEST,
      'data.synthetic_num_classes': 4, 'data.tfds_data_dir': tfds_dir,
      'batch_size': 16, 'num_epochs': EPOCHS - 1, 'optim.warmup_epochs': 0, 'optim.lr': LR,
      'optim.eps': 1.0, 'eval.every_epochs': 1, 'eval.batch_size': 8,
      'checkpoint.every_epochs': 1, 'checkpoint.keep': 2, 'log_every_steps': 1,
      'progress_bar': False,
  }
  return [f'--config.{k}={v}' for k, v in fields.items()]


def _free_loopback_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(base, name, parallel, processes, extra=(), workdir_name=None, env_extra=None):
  """Starts main.py as `processes` processes (1: plain; 2: README's multi-host start) on the
  workdir `workdir_name` (default: `name`); logs and loader index logs go by `name`.

  Returns (workdir, index-log folder, [Popen per process], [log path per process]).
  """
  workdir = os.path.join(base, workdir_name or name)
  index_dir = os.path.join(base, 'indices', name)
  args = [sys.executable, 'main.py', '--config=configs/synthetic.py', f'--workdir={workdir}',
          f'--config.parallel={parallel}', *_overrides(os.path.join(base, 'tfds')), *extra]
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'XLA_'))}
  env.update(JAX_PLATFORMS='cpu', DAPT_JAX_LOG_INDICES=index_dir,
             JAX_COMPILATION_CACHE_DIR=os.path.join(base, 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={4 // processes}',
             **(env_extra or {}))
  if processes > 1:
    address = f'127.0.0.1:{_free_loopback_port()}'
    # JAX's coordinator would listen on every interface ([::]:port) unless told otherwise.
    env.update(JAX_COORDINATOR_ADDRESS=address, JAX_COORDINATOR_BIND_ADDRESS=address,
               JAX_NUM_PROCESSES=str(processes))
    args.append('--distributed')
  procs, logs = [], []
  try:
    for p in range(processes):
      log_path = os.path.join(base, f'{name}.process{p}.log')
      logs.append(log_path)
      with open(log_path, 'w') as out:
        procs.append(subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                      env=dict(env, JAX_PROCESS_ID=str(p)),
                                      start_new_session=True))
  except BaseException:
    _reap(procs)
    raise
  return workdir, index_dir, procs, logs


def _reap(procs):
  """Kills (their process groups) and waits for whichever of `procs` still run."""
  for proc in procs:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()


def _launch(base, name, parallel, processes, extra=(), workdir_name=None):
  """`_start`, then waits: returns (workdir, index-log folder, [log text per process]) and
  asserts every process exited 0."""
  workdir, index_dir, procs, logs = _start(base, name, parallel, processes, extra, workdir_name)
  try:
    for proc in procs:
      proc.wait(timeout=LAUNCH_TIMEOUT_S)
  finally:
    _reap(procs)  # whatever is left (a timeout, a failed sibling, an interrupt)
  texts = [open(path).read() for path in logs]
  for p, (proc, text) in enumerate(zip(procs, texts)):
    assert proc.returncode == 0, f'{name} process {p} exited {proc.returncode}:\n{text[-3000:]}'
  return workdir, index_dir, texts


def _devices(log_text):
  m = re.search(r'Devices: (\d+) \(\w+\), processes: (\d+)', log_text)
  assert m, 'no device line in the log'
  return int(m.group(1)), int(m.group(2))


def _index_log(index_dir, processes):
  """{('train', epoch, batch) | ('eval', batch): {process: indices}} from the loaders' logs."""
  out = {}
  for p in range(processes):
    with open(os.path.join(index_dir, f'indices_{p}.jsonl')) as f:
      for line in f:
        r = json.loads(line)
        key = (r['loader'], r['epoch'], r['batch']) if r['loader'] == 'train' else (
            'eval', r['batch'])
        assert p not in out.setdefault(key, {}), f'{key} read twice by process {p}'
        out[key][p] = r['indices']
  return out


def _metrics(workdir, split):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['split'] == split]


def _layout(workdir):
  """Relative paths under checkpoints/, with orbax's content-hashed data files as '*'."""
  root = os.path.join(workdir, 'checkpoints')
  paths = set()
  for folder, dirs, files in os.walk(root):
    rel = os.path.relpath(folder, root)
    for name in dirs + files:
      hashed = os.path.basename(folder) == 'd'
      paths.add(os.path.join(rel, '*' if hashed else name))
  return paths


def _steps(workdir, which):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints', which)))


def _final(workdir):
  """Final {'params', 'batch_stats'} through the library's own restore (what init_from and
  --mode=eval read), flattened, and the final save's data position."""
  variables, step = ckpt_lib.workdir_variables(workdir, 'last')
  assert step == LAST_STEP
  with open(os.path.join(workdir, 'checkpoints', 'last', str(step), 'meta', 'metadata')) as f:
    meta = json.load(f)
  flat = {f'{c}/{k}': np.asarray(v) for c in variables
          for k, v in partition.flatten(variables[c]).items()}
  return flat, meta


@pytest.fixture(scope='module')
def base(tmp_path_factory):
  return str(tmp_path_factory.mktemp('multiprocess'))


@pytest.fixture(scope='module')
def reference(base):
  """One process with 4 devices: the same global batch, seed and device count. It also prepares
  the dataset once, as README asks before a multi-host run."""
  workdir, index_dir, (text,) = _launch(base, 'one_process', 'shard_map', 1)
  assert _devices(text) == (4, 1)
  return workdir, _index_log(index_dir, 1)


# The two-process runs differ from the one-process run only in the order in which the 4
# devices' partial results are summed (gradients and BatchNorm statistics: an all-reduce across
# processes instead of within one); every device computes on the same samples with the same
# program. Rounding: a quantity L ≈ 16 layers deep built from sums of up to n = 512 terms carries
# a relative rounding error of about sqrt(L·n)·u = 90 × 6.0e-8 = 5.4e-6 (u = 2**-24; independent
# roundings add in quadrature; the worst case L·n·u = 4.9e-4 is not reached). Through T = 8 steps
# whose update is ~lr·g (eps=1, see _overrides) with gradient entries |g| <= G = 10 (the clip
# norm), parameters then differ by at most T·lr·5.4e-6·G = 2.2e-5. A wrong shard, a missing
# cross-process mean or a lost step moves them by ~1e-2 (epoch 1 alone moves them that much).
PARAMS_ATOL = 2.2e-5
# BatchNorm running statistics average batch means of activations; their rounding is ~5.4e-6
# relative to the activations, not to the means, which are up to ~20x smaller after the
# cancellation in a roughly centred batch mean: 1e-4 relative to the statistic's scale (or 1).
STATS_RTOL = 1e-4


def _assert_matches_reference(flat, ref_flat):
  assert flat.keys() == ref_flat.keys()
  for path, want in ref_flat.items():
    got = flat[path]
    assert got.shape == want.shape and got.dtype == want.dtype, path
    if path.startswith('batch_stats/'):
      assert np.abs(got - want).max() <= STATS_RTOL * max(1.0, np.abs(want).max()), path
    else:  # frozen parameters never change; trainable ones within the rounding bound
      assert np.abs(got - want).max() <= PARAMS_ATOL, path


@pytest.mark.parametrize('parallel', ['pmap', 'shard_map'])
def test_two_processes_train_evaluate_save_and_resume_like_one(base, reference, parallel):
  ref_dir, ref_index = reference

  # --- An uninterrupted two-process run.
  workdir, index_dir, texts = _launch(base, f'{parallel}_uninterrupted', parallel, 2)
  assert [_devices(t) for t in texts] == [(4, 2), (4, 2)]  # every process sees 4 devices

  # Every training batch: two disjoint halves that together are the one-process global batch.
  index = _index_log(index_dir, 2)
  train_keys = [('train', e, j) for e in range(EPOCHS) for j in range(STEPS_PER_EPOCH)]
  assert sorted(k for k in index if k[0] == 'train') == train_keys
  for key in train_keys:
    part0, part1 = index[key][0], index[key][1]
    assert len(part0) == len(part1) == 8 and not set(part0) & set(part1), key
    assert part0 + part1 == ref_index[key][0], key

  # Evaluation: each test cloud read once over both processes, and counted once.
  eval_keys = sorted(k for k in index if k[0] == 'eval')
  assert eval_keys == [('eval', b) for b in range(-(-NUM_TEST // 8))]
  read = [i for k in eval_keys for p in (0, 1) for i in index[k][p] if i >= 0]
  assert read == list(range(NUM_TEST))
  assert index[eval_keys[-1]][1] == [-1] * 4  # process 1's part of the last batch: padding only
  (evaluation,), (ref_evaluation,) = _metrics(workdir, 'eval'), _metrics(ref_dir, 'eval')
  assert evaluation['num_samples'] == ref_evaluation['num_samples'] == NUM_TEST
  # Same predictions up to rounding: a near-tied cloud may flip, hence one cloud of slack.
  assert abs(evaluation['accuracy'] - ref_evaluation['accuracy']) <= 1 / NUM_TEST + 1e-12

  # Checkpoints: the one-process run's layout exactly (one writer, every commit marker, no
  # temporary folders left), at the expected steps, and restorable.
  assert _layout(workdir) == _layout(ref_dir)
  assert _steps(workdir, 'last') == [LAST_STEP - STEPS_PER_EPOCH, LAST_STEP]
  assert _steps(workdir, 'best') == [LAST_STEP]
  flat, meta = _final(workdir)
  ref_flat, ref_meta = _final(ref_dir)
  assert meta['loader'] == ref_meta['loader'] and meta['loader']['epoch'] == EPOCHS
  _assert_matches_reference(flat, ref_flat)

  # --- Stopped by both processes after step 6 (mid-epoch), then the same command again. The
  # loader's and the checkpoints' resume do not depend on the parallel mode: checked once.
  if parallel == 'pmap':
    return
  resumed = f'{parallel}_resumed'
  _, first_index, _ = _launch(base, f'{parallel}_stopped', parallel, 2,
                                  ['--config.max_steps=6'], workdir_name=resumed)
  assert _steps(os.path.join(base, resumed), 'last') == [4, 6]  # both stopped, after saving
  resumed_dir, second_index, _ = _launch(base, resumed, parallel, 2)
  # The data stream goes on exactly where it stopped ...
  first, second = _index_log(first_index, 2), _index_log(second_index, 2)
  assert sorted(k for k in first if k[0] == 'train') == train_keys[:6]
  assert sorted(k for k in second if k[0] == 'train') == train_keys[6:]
  assert {**first, **second} == {k: v for k, v in index.items() if k in first or k in second}
  # ... and the run ends bit for bit where the uninterrupted one did.
  resumed_flat, resumed_meta = _final(resumed_dir)
  assert resumed_meta['loader'] == meta['loader']
  for path, value in flat.items():
    np.testing.assert_array_equal(resumed_flat[path], value, err_msg=path)
  assert _metrics(resumed_dir, 'eval')[-1]['accuracy'] == evaluation['accuracy']


# The lost-peer watchdog's timeout for the kill test (dapt_jax/multihost.py; default 60 s), and
# the bound on the survivor's end after the kill: that timeout, then its 1 s beat and the
# exit, with room for 2 busy cores (the issue asks for "within about two minutes").
PEER_TIMEOUT_S = 5
SURVIVOR_BOUND_S = PEER_TIMEOUT_S + 25
STACK_MARKS = ('Traceback', 'Check failure', 'Fatal Python error', '*** ', 'Aborted', 'SIGABRT',
               'PC: ')


@pytest.mark.parametrize('victim', [1, 0])  # 0 also runs JAX's coordination service
def test_a_killed_process_ends_the_other_with_status_3_and_the_rerun_resumes(
    base, reference, victim):
  """SIGKILL one process (its process group: as when its host dies) once the epoch-0 checkpoint
  (step 4) is complete and epoch 1 runs; the survivor ends, within the bound, with status 3 and
  one `error:` line naming the killed process and step 4, and nothing else after its log lines
  (no traceback, no C++ error or stack lines); the same command on both then resumes from
  step 4 and ends with the one-process run's parameters (checked after the loss of process 1;
  the loss of process 0 leaves the same checkpoints)."""
  ref_dir, _ = reference
  name = f'killed{victim}'
  survivor_id = 1 - victim
  workdir, _, procs, logs = _start(base, name, 'shard_map', 2,
                                   env_extra={'DAPT_JAX_PEER_TIMEOUT_S': str(PEER_TIMEOUT_S)})
  try:
    step4 = os.path.join(workdir, 'checkpoints', 'last', str(STEPS_PER_EPOCH))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not os.path.isdir(step4) and time.monotonic() < deadline:
      assert all(p.poll() is None for p in procs), 'a process ended before the checkpoint'
      time.sleep(0.02)
    assert os.path.isdir(step4), 'no checkpoint at step 4 in time'
    os.killpg(procs[victim].pid, signal.SIGKILL)  # as when its host dies
    killed = time.monotonic()
    procs[victim].wait()
    procs[survivor_id].wait(timeout=SURVIVOR_BOUND_S)
    ended = time.monotonic() - killed
  finally:
    _reap(procs)
  survivor = open(logs[survivor_id]).read()
  assert procs[survivor_id].returncode == 3, survivor[-3000:]  # the preemption status: requeue
  assert ended <= SURVIVOR_BOUND_S
  error_lines = [line for line in survivor.splitlines() if line.startswith('error:')]
  assert len(error_lines) == 1, survivor[-3000:]
  assert re.match(rf'error: lost process {victim} of 2 \(.*\); re-run the same command on every '
                  r'host to resume from step 4$', error_lines[0]), error_lines[0]
  if victim == 0:
    assert 'coordination service' in error_lines[0], error_lines[0]
  assert survivor.rstrip().endswith(error_lines[0])  # nothing after it
  assert not any(mark in survivor for mark in STACK_MARKS), survivor[-3000:]
  assert not re.search(r'^[EF]\d{4} ', survivor, re.M), survivor[-3000:]  # no C++ error lines
  assert not re.search(r'^\s*@\s+0x', survivor, re.M), survivor[-3000:]  # no C++ stack frames
  assert 'final:' not in survivor and _steps(workdir, 'last') == [STEPS_PER_EPOCH]

  if victim == 0:
    return  # what is left on disk is the same either way: the resume is checked once, below
  # The same command on both hosts: resumes from step 4 and ends like the one-process run.
  _, _, texts = _launch(base, f'{name}_rerun', 'shard_map', 2, workdir_name=name)
  assert all('Resumed from step 4 ' in t for t in texts)
  flat, meta = _final(workdir)
  ref_flat, ref_meta = _final(ref_dir)
  assert meta['loader'] == ref_meta['loader']
  _assert_matches_reference(flat, ref_flat)


def test_lost_peer_line_names_the_processes_and_the_last_complete_checkpoint(tmp_path):
  """The resume step is the newest complete save (a save in progress is a temporary folder)."""
  last = tmp_path / 'checkpoints' / 'last'
  assert multihost.resume_step(str(tmp_path)) == 0  # nothing saved yet: from the start
  for name in ('4', '8', '12.orbax-checkpoint-tmp-1234'):
    (last / name).mkdir(parents=True)
  assert multihost.resume_step(str(tmp_path)) == 8
  assert multihost.resume_step(None) is None  # outside training
  line = multihost.lost_peer_message([1], 2, 8)
  assert line.startswith('lost process 1 of 2 (')
  assert line.endswith('; re-run the same command on every host to resume from step 8')
  assert multihost.lost_peer_message([0, 2], 3, None).startswith('lost processes 0, 2 of 3 (')
  assert multihost.lost_peer_message([0], 2, None).endswith('re-run the same command on every host')
  assert multihost.lost_peer_message([0], None, 4, 'why').startswith('lost process 0 (why); ')


# What a survivor of a lost process 0 writes to stderr just before JAX's client aborts it (as
# seen with this jaxlib), shortened.
_ABORT = b"""W1207 05:41:01.961405    3219 preemption_sync_manager.cc:147] Failed to retrieve ...
Additional GRPC error information from remote target coordination_service while calling ...
E1207 05:41:01.961513    3219 coordination_service_agent.cc:289] Polled an error from ...
F1207 05:41:01.961518    3219 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination ...
*** Check failure stack trace: ***
    @     0x7f059ca40634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
*** SIGABRT received at time=1796622061 on cpu 1 ***
PC: @     0x7f05a3f0c9fc  (unknown)  pthread_kill
Fatal Python error: Aborted
"""


@pytest.mark.parametrize('aborts', [False, True])
def test_the_supervisor_drops_exactly_the_lines_of_a_coordination_abort(capfdbinary, monkeypatch,
                                                                       aborts):
  """The child's stderr passes through unchanged (C++ warnings, a progress bar's partial line),
  unless JAX's client aborts over the lost coordination service: then the lines of the abort,
  from the warnings just before its fatal line on, are dropped."""
  monkeypatch.setattr(multihost, 'HOLD_S', 0.2)
  before = (b'2026-12-07 05:41:00,100 INFO step 5\n'
            b'W1207 05:41:00.200000    3219 gloo.cc:12] a warning of the C++ runtime\n'
            b'  its second line\n'
            b'2026-12-07 05:41:00,300 INFO step 6\n'
            b'\r 50%|#####     | 2/4')
  rest = _ABORT if aborts else b'\r100%|##########| 4/4\nTraceback (most recent call last):\n'
  read_fd, write_fd = os.pipe()
  fatal = []
  copier = threading.Thread(target=multihost._pass_stderr,  # pylint: disable=protected-access
                            args=(read_fd, fatal))
  copier.start()
  os.write(write_fd, before)
  time.sleep(0.5)  # more than HOLD_S: the C++ warning is passed on
  os.write(write_fd, b'\n' + rest)
  os.close(write_fd)
  copier.join(timeout=10)
  os.close(read_fd)
  out = capfdbinary.readouterr().err
  if aborts:
    assert out == before + b'\n' and fatal and b'client.h:80' in fatal[0]
  else:
    assert out == before + b'\n' + rest and not fatal


def _snapshot(workdir):
  """{relative path: (content hash, modification time)} of every file under `workdir`."""
  out = {}
  for folder, _, files in os.walk(workdir):
    for f in files:
      path = os.path.join(folder, f)
      with open(path, 'rb') as fh:
        out[os.path.relpath(path, workdir)] = (hashlib.sha256(fh.read()).hexdigest(),
                                               os.stat(path).st_mtime_ns)
  return out


@pytest.mark.parametrize('processes, extra, said', [
    (1, ['--config.max_steps=6'], 'stopped after step 6 (max_steps)'),
    (2, [], 'is already complete (8 steps)')])
def test_rerunning_a_finished_run_changes_nothing(base, reference, processes, extra, said):
  """The command of a run that has ended (its max_steps; its epochs) again, on one process or
  two: it says so and writes nothing (no file's content or time changes). The multi-process
  re-run of the one-process reference is the same command: the config holds no process count."""
  ref_dir, _ = reference
  name = f'finished{processes}'
  workdir = os.path.join(base, name)
  if extra:  # a run stopped by max_steps after step 6
    _launch(base, f'{name}_first', 'shard_map', processes, extra, workdir_name=name)
  else:
    shutil.copytree(ref_dir, workdir)
  before = _snapshot(workdir)
  _, _, texts = _launch(base, name, 'shard_map', processes, extra)
  assert all(said in t for t in texts[:1])
  assert _snapshot(workdir) == before


def test_the_watchdog_threads_end_before_the_interpreter_does(monkeypatch):
  """At exit (an atexit hook, before JAX's own) the watchdog's threads are stopped and joined:
  a daemon thread left inside a key-value call when the interpreter ends is unwound through C++
  frames, and the process aborts with status 134 after a run that succeeded. Here a stand-in
  client whose calls take 50 ms; the threads must have ended when `stop_watchdog` returns."""
  calls = []

  class SlowClient:
    def key_value_set(self, key, value, allow_overwrite):
      calls.append((key, value, allow_overwrite))
      time.sleep(0.05)

    def key_value_try_get(self, key):
      time.sleep(0.05)
      return '1'

  monkeypatch.setattr(multihost, '_stop', threading.Event())
  monkeypatch.setattr(multihost, '_threads', [])
  monkeypatch.setattr(multihost, 'BEAT_S', 0.1)
  monkeypatch.setitem(multihost._state, 'processes', 2)  # pylint: disable=protected-access
  multihost._start_thread(multihost._watch, SlowClient(),  # pylint: disable=protected-access
                          name='test-peers')
  deadline = time.monotonic() + 10
  while len(calls) < 3 and time.monotonic() < deadline:
    time.sleep(0.01)
  assert len(calls) >= 3 and calls[0] == ('dapt_jax/beat/0', '1', True)
  threads = list(multihost._threads)  # pylint: disable=protected-access
  assert [t.name for t in threads] == ['test-peers', 'dapt_jax-beat'] and all(
      t.is_alive() for t in threads)
  monkeypatch.setitem(multihost._state, 'client', SlowClient())  # pylint: disable=protected-access
  monkeypatch.setitem(multihost._state, 'ended', True)  # pylint: disable=protected-access
  multihost.stop_watchdog()
  assert not any(t.is_alive() for t in threads)
  assert calls[-1] == ('dapt_jax/beat/0', 'ended', True)  # the last word: ended normally
  beats = len(calls)
  time.sleep(0.3)
  assert len(calls) == beats  # no beat after the stop


@pytest.mark.parametrize('peer_says, lost', [('1', [1]), ('ended', None)])
def test_a_peer_that_ended_normally_is_never_lost(monkeypatch, peer_says, lost):
  """A peer whose counter stays still is lost after timeout_s, unless its last beat says it
  ended normally (process 0 may still be drawing curves when process 1 has finished)."""
  class Client:
    def key_value_set(self, key, value, allow_overwrite):
      pass

    def key_value_try_get(self, key):
      return peer_says

  verdicts = []
  monkeypatch.setattr(multihost, '_stop', threading.Event())
  monkeypatch.setattr(multihost, '_threads', [])
  monkeypatch.setattr(multihost, 'BEAT_S', 0.05)
  monkeypatch.setattr(multihost, '_end_lost', verdicts.append)
  monkeypatch.setitem(multihost._state, 'processes', 2)  # pylint: disable=protected-access
  monkeypatch.setitem(multihost._state, 'timeout_s', 0.3)  # pylint: disable=protected-access
  multihost._start_thread(multihost._watch, Client(),  # pylint: disable=protected-access
                          name='test-peers')
  # A still counter is lost 0.3 s after its last change (allow a busy machine 10 s for that); an
  # ended one is still not lost after more than three timeouts.
  deadline = time.monotonic() + (10.0 if lost else 1.0)
  while time.monotonic() < deadline and not verdicts:
    time.sleep(0.05)
  multihost.stop_watchdog()
  assert (verdicts[0] if verdicts else None) == lost


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='prctl(PR_SET_PDEATHSIG): Linux')
def test_the_supervised_child_dies_with_its_supervisor(tmp_path):
  """A scheduler that kills only the process it started (SIGKILL, not the process group) takes
  the supervised child with it, instead of leaving it to hold its devices and train on alone."""
  script = tmp_path / 'supervised.py'
  script.write_text('import os, sys, time\n'
                    f'sys.path.insert(0, {ROOT!r})\n'
                    'from dapt_jax import multihost\n'
                    'multihost.supervise()\n'
                    'print(os.getpid(), flush=True)\n'  # the child, from here on
                    'time.sleep(120)\n')
  parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
  try:
    child = int(parent.stdout.readline())
    assert child != parent.pid and os.getpgid(child) == parent.pid  # the supervisor's child
    os.kill(parent.pid, signal.SIGKILL)  # the parent only
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
      try:
        os.kill(child, 0)
      except ProcessLookupError:
        break  # gone (reaped by init)
      with open(f'/proc/{child}/stat') as f:
        if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
          break  # killed, not yet reaped
      time.sleep(0.05)
    else:
      pytest.fail(f'the child {child} outlived its supervisor by 30 s')
  finally:
    try:
      os.killpg(parent.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    parent.wait()
