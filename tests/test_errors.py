"""`errors.run_cli`: a user error is one line and status 2 (its traceback only with
DAPT_JAX_DEBUG=1); a bug keeps its traceback."""
import os
import subprocess
import sys

from dapt_jax import errors


def test_run_cli_user_error_is_one_line_and_status_2():
  code = '''
import sys
from dapt_jax import errors
class Oops(errors.UserError): pass
def body():
  raise Oops("config.x=1: must be 2\\nsecond line")
errors.run_cli(body)
'''
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                     env={**os.environ, errors.DEBUG_ENV: ''}, timeout=60)
  assert r.returncode == 2 and r.stderr == 'error: config.x=1: must be 2\n'
  r = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                     env={**os.environ, errors.DEBUG_ENV: '1'}, timeout=60)
  assert r.returncode == 2 and 'Traceback' in r.stderr
  assert r.stderr.strip().splitlines()[-1] == 'error: config.x=1: must be 2'
  bug = code.replace('raise Oops(', 'raise KeyError(')
  r = subprocess.run([sys.executable, '-c', bug], cwd=root, capture_output=True, text=True,
                     timeout=60)
  assert r.returncode == 1 and 'Traceback' in r.stderr  # a bug keeps its traceback


def test_after_a_user_error_other_threads_cannot_print_into_the_error_line():
  """A background thread that prints a traceback while run_cli reports (as the checkpoint
  library's I/O threads can after a failed read) is dropped: stderr is exactly the one line.

  The thread is made to write while the message is being formatted, i.e. after run_cli has
  decided to exit; without muting, its text would land in stderr every time.
  """
  code = '''
import sys, threading
from dapt_jax import errors
go, wrote = threading.Event(), threading.Event()
def noise():
  go.wait()
  sys.stderr.write("Traceback (most recent call last):\\n  RuntimeError: Event loop is closed\\n")
  sys.stderr.flush()
  wrote.set()
threading.Thread(target=noise, daemon=True).start()
class Oops(errors.UserError):
  def __str__(self):
    go.set()
    assert wrote.wait(30)
    return "ckpt: not a converted checkpoint"
def body():
  raise Oops()
errors.run_cli(body)
'''
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True,
                     env={**os.environ, errors.DEBUG_ENV: ''}, timeout=60)
  assert (r.returncode, r.stderr) == (2, 'error: ckpt: not a converted checkpoint\n'), r.stderr


def _from_a_thread(text):
  import threading  # pylint: disable=g-import-not-at-top
  worker = threading.Thread(target=lambda: print(text, file=sys.stderr, flush=True))
  worker.start()
  worker.join()


def test_mute_other_threads_keeps_the_main_thread_and_can_be_undone(monkeypatch, capsys):
  import threading  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sys, 'stderr', sys.stderr)  # restored after the test
  monkeypatch.setattr(sys, 'stdout', sys.stdout)
  unmute = errors.mute_other_threads()
  errors.mute_other_threads()()  # already muted: one wrapper, and its undo does nothing
  _from_a_thread('dropped')
  worker = threading.Thread(target=lambda: sys.stderr.writelines(['also dropped\n']))
  worker.start()
  worker.join()
  print('from main', file=sys.stderr)
  print('out', flush=True)
  unmute()
  _from_a_thread('shown again')
  captured = capsys.readouterr()
  assert captured.err == 'from main\nshown again\n' and captured.out == 'out\n'


def test_quiet_if_it_fails_restores_after_success_and_stays_quiet_after_a_failure(monkeypatch,
                                                                                 capsys):
  import logging  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(sys, 'stderr', sys.stderr)
  monkeypatch.setattr(sys, 'stdout', sys.stdout)
  asyncio_log = logging.getLogger('asyncio')
  level = asyncio_log.level
  with errors.quiet_if_it_fails():
    _from_a_thread('during a read that works')
  _from_a_thread('after it')
  try:
    with errors.quiet_if_it_fails():
      raise ValueError('a damaged checkpoint')
  except ValueError:
    pass
  _from_a_thread('after a failed read')
  assert capsys.readouterr().err == 'after it\n'
  assert asyncio_log.level == logging.CRITICAL  # its abandoned tasks are not logged either
  asyncio_log.setLevel(level)
