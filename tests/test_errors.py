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
