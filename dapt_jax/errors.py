"""User mistakes versus bugs, and how every command-line entry point reports them.

Every exception a user can cause and fix (a bad config field, a missing file, a busy workdir)
derives from `UserError`; its message is one line that names the field or file and the fix. An
entry point (main.py, `python -m convert`, `python -m dapt_jax.bench`, any new CLI) runs its body
through `run_cli` (or catches `UserError` and calls `report`), so the user sees

    error: <message>

on stderr and the process ends with `EXIT_USER_ERROR` (2), without a traceback. Anything else is
a bug and keeps its traceback. `DAPT_JAX_DEBUG=1` in the environment adds the traceback to user
errors too. This module imports nothing heavy (no JAX), so parsers can use it before JAX loads.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import traceback
from typing import Any, Callable, Iterator, NoReturn, Optional

EXIT_USER_ERROR = 2  # a user mistake: one `error:` line, nothing written
EXIT_PREEMPTED = 3   # training stopped on SIGTERM after saving; re-run the command to resume
DEBUG_ENV = 'DAPT_JAX_DEBUG'  # set to 1 for tracebacks of user errors as well


class UserError(Exception):
  """A mistake the user can fix; the message is one line naming the field/file and the fix."""


def debug() -> bool:
  """Whether user errors should also print their traceback (DAPT_JAX_DEBUG=1)."""
  return os.environ.get(DEBUG_ENV, '').strip().lower() not in ('', '0', 'false', 'no')


def one_line(e: BaseException) -> str:
  """The first non-empty line of an exception's message (its type name if it has none)."""
  for line in str(e).splitlines():
    if line.strip():
      return line.strip()
  return type(e).__name__


def _flush() -> None:
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass


def exit_now(code: int) -> NoReturn:
  """Ends the process at once with `code`, skipping interpreter exit handlers.

  After a failed save or restore, background threads of the checkpoint library may still wait
  on barriers or event loops; a normal exit would then hang for minutes or print their
  tracebacks. A user error has nothing left to clean up, so the process just ends.
  """
  _flush()
  os._exit(code)  # pylint: disable=protected-access


def end_quietly(line: str, code: int) -> NoReturn:
  """Ends the process at once with `code` after `line` on stderr; callable from any thread.

  Other threads are muted first, and the line goes straight to the stderr file descriptor (a
  muted stream would drop it when the caller is not the main thread).
  """
  mute_other_threads()
  _flush()
  os.write(2, (line.rstrip('\n') + '\n').encode())
  os._exit(code)  # pylint: disable=protected-access


class _MainThreadOnly:
  """A text stream that passes on what the main thread writes and drops other threads' writes."""

  def __init__(self, stream: Any):
    self._stream = stream

  def write(self, text: str) -> int:
    if threading.current_thread() is threading.main_thread():
      return self._stream.write(text)
    return len(text)

  def writelines(self, lines) -> None:
    for line in lines:
      self.write(line)

  def __getattr__(self, name: str) -> Any:  # flush, fileno, encoding, isatty, ...
    return getattr(self._stream, name)


def mute_other_threads() -> Callable[[], None]:
  """From now on, only the main thread's writes to sys.stdout/sys.stderr are shown.

  For a process that is about to end with a user error: other threads (the checkpoint library's
  I/O threads, see `quiet_if_it_fails`) must not print into or around its one `error:` line.
  Returns a function that undoes this call (a no-op if the streams were already muted).
  """
  saved = {}
  for name in ('stdout', 'stderr'):
    stream = getattr(sys, name)
    if stream is not None and not isinstance(stream, _MainThreadOnly):
      saved[name] = _MainThreadOnly(stream)
      setattr(sys, name, saved[name])

  def unmute() -> None:
    for name, wrapper in saved.items():
      if getattr(sys, name) is wrapper:  # unless someone replaced it since
        setattr(sys, name, wrapper._stream)  # pylint: disable=protected-access
  return unmute


@contextlib.contextmanager
def quiet_if_it_fails() -> Iterator[None]:
  """Mutes other threads' output for the block, and for good if the block raises.

  For checkpoint reads: when orbax fails on a damaged checkpoint, reads it started are still in
  flight in tensorstore's threads, and when they finish after orbax has closed its event loop,
  each prints that loop's traceback ('Event loop is closed') to stderr, during the failed call
  and for a while after it, i.e. around and inside the one `error:` line the user gets; the
  tasks it abandoned are later logged by asyncio as 'Task exception was never retrieved' (from
  whichever thread collects them), so after a failure asyncio's log is silenced as well.
  """
  unmute = mute_other_threads()
  try:
    yield
  except BaseException:
    logging.getLogger('asyncio').setLevel(logging.CRITICAL)
    raise  # and the streams stay muted
  unmute()


def report(e: BaseException) -> int:
  """Prints `error: <first line>` (plus the traceback with DAPT_JAX_DEBUG=1); returns 2."""
  if debug():
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
  print(f'error: {one_line(e)}', file=sys.stderr, flush=True)
  return EXIT_USER_ERROR


def fail(message: str) -> NoReturn:
  """Reports a user mistake found by an entry point itself and exits with status 2."""
  mute_other_threads()
  print(f'error: {message}', file=sys.stderr, flush=True)
  exit_now(EXIT_USER_ERROR)


def run_cli(fn: Callable[..., Optional[int]], *args: Any, exit: bool = True,  # pylint: disable=redefined-builtin
            **kwargs: Any) -> int:
  """Runs an entry point's body; a `UserError` becomes one `error:` line and status 2.

  `fn` returns None (success) or an exit status. With `exit` (the default, for `__main__`) the
  process ends with that status (at once for a user error: see `exit_now`); otherwise the status
  is returned, for in-process callers such as tests.
  """
  try:
    result = fn(*args, **kwargs)
    code = 0 if result is None else int(result)
  except UserError as e:
    if exit:  # nothing but this line is said from here on
      mute_other_threads()
    code = report(e)
    if exit:
      exit_now(code)
  except KeyboardInterrupt:
    print('error: interrupted', file=sys.stderr, flush=True)
    code = 130
  if exit:
    sys.exit(code)
  return code
