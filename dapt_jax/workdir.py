"""A training workdir: checked before use, and locked while a run writes to it.

    workdir.check_writable(path)      # WorkdirError unless path is (or can become) a writable dir
    with workdir.lock(path):          # WorkdirBusy if another live run holds it
      ...train...

The lock is `WORKDIR/.lock`, a file holding the owner's pid, host and start time, held with an
exclusive `fcntl.flock` for the run's lifetime: the operating system drops it when the owner dies
(kill -9 included), so a lock left by a dead run is taken over, never obeyed. Where the filesystem
has no flock, the file is created with O_EXCL and a lock whose pid no longer runs on this host is
taken over. Only process 0 of a multi-process run locks (the others write nothing of their own).
On release the lock file is removed; a workdir the lock itself created is removed too when the
run left nothing else in it, so a run that failed before writing leaves no trace.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import tempfile
from typing import Iterator, Optional

from dapt_jax import errors

LOCK_FILE = '.lock'


class WorkdirError(errors.UserError, ValueError):
  """A workdir that cannot be used (a file, not writable); one-line message."""


class WorkdirBusy(errors.UserError, RuntimeError):
  """Another live run holds the workdir's lock; the message names it."""


def _probe(directory: str) -> None:
  """Creates and removes a file in `directory` (permission bits do not stop root; this does)."""
  fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=directory)
  os.close(fd)
  os.remove(probe)


def check_writable(path: str, what: str = '--workdir') -> None:
  """Raises WorkdirError unless `path` is a writable directory, or can be created as one.

  Writes nothing that stays: a probe file is created and removed in `path` (or, when `path` does
  not exist yet, in its nearest existing ancestor).
  """
  if not path:
    raise WorkdirError(f'{what} is empty')
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.lexists(path) and not os.path.isdir(path):
    raise WorkdirError(f'{what}={path}: is a file, not a directory; give a directory path')
  target = path
  while not os.path.exists(target):
    parent = os.path.dirname(target)
    if parent == target:
      break
    target = parent
  if not os.path.isdir(target):
    raise WorkdirError(f'{what}={path}: {target} is a file, so the directory cannot be created')
  try:
    _probe(target)
  except OSError as e:
    where = 'is not writable' if target == path else f'cannot be created: {target} is not writable'
    raise WorkdirError(f'{what}={path}: {where} ({e.strerror or e}); choose a directory you '
                       'may write to') from None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read_holder(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _describe(holder: dict) -> str:
  if not holder:
    return 'another process'
  started = f", started {holder['started']}" if holder.get('started') else ''
  return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{started}"


def _busy(workdir: str, holder: dict) -> WorkdirBusy:
  return WorkdirBusy(f'{workdir} is in use by another run ({_describe(holder)}); wait for it to '
                     'finish or stop it, or use another --workdir')


def _record() -> str:
  return json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                     'started': datetime.datetime.now().isoformat(timespec='seconds')})


def _acquire_flock(path: str, workdir: str) -> Optional[int]:
  """The lock's fd held with flock; None when the filesystem has no flock."""
  import fcntl  # pylint: disable=g-import-not-at-top
  for _ in range(10):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise _busy(workdir, _read_holder(path)) from None
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return None
      raise
    # The previous holder may have removed the file between our open and flock: lock the file
    # that is at the path now.
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if not same:
      os.close(fd)
      continue
    previous = _read_holder(path)
    if previous and previous.get('pid') != os.getpid():
      import logging  # pylint: disable=g-import-not-at-top
      logging.getLogger('dapt_jax').warning(
          'Taking over the lock of %s left by a run that is gone (%s).', workdir,
          _describe(previous))
    os.ftruncate(fd, 0)
    os.write(fd, _record().encode())
    os.fsync(fd)
    return fd
  raise _busy(workdir, _read_holder(path))


def _acquire_exclusive(path: str, workdir: str) -> None:
  """O_EXCL creation; a lock of a dead pid on this host is taken over."""
  for _ in range(3):
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      holder = _read_holder(path)
      same_host = holder.get('host') == socket.gethostname()
      if same_host and isinstance(holder.get('pid'), int) and not _pid_alive(holder['pid']):
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
        continue
      raise _busy(workdir, holder) from None
    os.write(fd, _record().encode())
    os.close(fd)
    return
  raise _busy(workdir, _read_holder(path))


@contextlib.contextmanager
def lock(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds `workdir`'s lock for the block (creating the directory if needed).

  Raises:
    WorkdirBusy: another live run holds it (the message names its pid and host).
  """
  if not enabled:
    yield
    return
  workdir = os.path.abspath(os.path.expanduser(workdir))
  created = not os.path.isdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = _acquire_flock(path, workdir)
    if fd is None:
      _acquire_exclusive(path, workdir)
  except BaseException:
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)
    raise
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.remove(path)
    if fd is not None:
      os.close(fd)  # releases the flock
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)  # only if the run left nothing in it
