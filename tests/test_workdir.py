"""The workdir lock (busy, stale, the O_EXCL fallback) and the writability check."""
import json
import os
import socket
import subprocess
import sys

import pytest

from dapt_jax import errors
from dapt_jax import workdir


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, '-c', 'pass'])
  p.wait()
  return p.pid


def test_second_holder_is_refused_naming_the_first(tmp_path):
  w = str(tmp_path / 'w')
  with workdir.lock(w):
    with open(os.path.join(w, workdir.LOCK_FILE)) as f:
      record = json.load(f)
    assert record['pid'] == os.getpid() and record['host'] == socket.gethostname()
    with pytest.raises(workdir.WorkdirBusy, match=f'pid {os.getpid()} on host'):
      with workdir.lock(w):  # another open file: flock refuses it as it would another process
        pass
    assert isinstance(workdir.WorkdirBusy('x'), errors.UserError)
  assert not os.path.exists(w)  # created by the lock, left empty: removed


def test_workdir_with_outputs_is_kept_and_the_lock_file_removed(tmp_path):
  w = tmp_path / 'w'
  with workdir.lock(str(w)):
    (w / 'config.json').write_text('{}')
  assert sorted(os.listdir(w)) == ['config.json']


def test_stale_lock_of_a_dead_run_is_taken_over(tmp_path, caplog):
  w = tmp_path / 'w'
  w.mkdir()
  pid = _dead_pid()
  (w / workdir.LOCK_FILE).write_text(json.dumps({'pid': pid, 'host': socket.gethostname()}))
  with caplog.at_level('WARNING', logger='dapt_jax'):
    with workdir.lock(str(w)):
      assert json.loads((w / workdir.LOCK_FILE).read_text())['pid'] == os.getpid()
  assert f'pid {pid}' in caplog.text
  assert not (w / workdir.LOCK_FILE).exists()


def test_without_flock_a_live_holder_is_refused_and_a_dead_one_replaced(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir, '_acquire_flock', lambda path, w: None)
  w = tmp_path / 'w'
  w.mkdir()
  lock_file = w / workdir.LOCK_FILE
  lock_file.write_text(json.dumps({'pid': os.getpid(), 'host': socket.gethostname()}))
  with pytest.raises(workdir.WorkdirBusy, match='in use by another run'):
    with workdir.lock(str(w)):
      pass
  assert lock_file.exists()  # not ours to remove
  lock_file.write_text(json.dumps({'pid': _dead_pid(), 'host': socket.gethostname()}))
  with workdir.lock(str(w)):
    assert json.loads(lock_file.read_text())['pid'] == os.getpid()
  assert not lock_file.exists()


def test_disabled_lock_writes_nothing(tmp_path):
  with workdir.lock(str(tmp_path / 'w'), enabled=False):
    pass
  assert not (tmp_path / 'w').exists()


def test_check_writable(tmp_path):
  workdir.check_writable(str(tmp_path / 'new' / 'deeper'))  # creatable
  assert not (tmp_path / 'new').exists()
  before = sorted(os.listdir(tmp_path))
  workdir.check_writable(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == before  # the probe is gone
  a_file = tmp_path / 'f'
  a_file.write_text('x')
  with pytest.raises(workdir.WorkdirError, match='is a file'):
    workdir.check_writable(str(a_file))
  with pytest.raises(workdir.WorkdirError, match='is a file'):
    workdir.check_writable(str(a_file / 'below'))
  with pytest.raises(workdir.WorkdirError, match='empty'):
    workdir.check_writable('')
