"""Multi-host start, and what a process does when a peer process is lost.

A lost peer (killed, crashed, or no longer answering) shows up first in a collective that it no
longer joins (which then fails or blocks), and JAX's own answer comes later: when the
coordination service (run by process 0) misses a peer's heartbeats for `heartbeat_timeout_seconds`
every other process ends in a C++ fatal error (SIGABRT, ~100 lines of C++ stack), after a
survivor whose collective already failed has also waited in the shutdown barrier.

Here a watchdog thread in every process beats a counter in the coordination service's key-value
store every second and reads the others'. A peer whose counter stays still for `timeout_s`
(DAPT_JAX_PEER_TIMEOUT_S, default 60 s), or a coordination service that stops answering for that
long, is lost: the watchdog prints one line,

    error: lost process 1 of 2 (...); re-run the same command on every host to resume from step N

(N: the last complete checkpoint, which the re-run resumes from) and ends the process with the
preemption status (3), so a scheduler requeues the job. JAX's own heartbeat timeout is set well
above `timeout_s`, so the watchdog speaks first. A collective that fails in the main thread
meanwhile is held back quietly by `hold_if_peer_lost` until the watchdog decides.

When process 0 itself dies, the coordination service dies with it, and JAX's client in every
other process ends that process at once (a C++ fatal error: SIGABRT and ~100 lines of stack),
before Python can act. The client's only hook for this (`missed_heartbeat_callback`) cannot
call Python in this jaxlib (its absl::Status argument has no Python form: std::bad_cast, then
the same abort), and no `jax.distributed.initialize` argument or JAX config flag
(`jax_enable_recoverability` included) changes it. So `supervise` runs a multi-process command
again as a child process (killed with it) and only watches it: the child's output passes
through (its stderr without the abort's lines), and a child that the lost service aborts
becomes the same one line,

    error: lost process 0 of 2 (the coordination service ...); re-run the same command on ...

and status 3.
"""
from __future__ import annotations

import atexit
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

from dapt_jax import errors

TIMEOUT_ENV = 'DAPT_JAX_PEER_TIMEOUT_S'  # seconds without a peer's beat before it is lost
TIMEOUT_S = 60  # a beat needs the GIL: room for a long call that holds it, well under 2 min
BEAT_S = 1.0
_KEY = 'dapt_jax/beat/'
_ENDED = 'ended'  # a process's last beat when it ends normally: its peers stop watching it

SUPERVISED_ENV = 'DAPT_JAX_SUPERVISED'  # set in the child: the fd that reports its process index
HOLD_S = 3.0  # C++ log lines are held this long: an abort's first lines precede its fatal line
# A line of absl's C++ log ("E1207 05:41:01.961468    3219 file.cc:289] ..."), or its start.
_CPP_LOG = re.compile(rb'[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ \]]+:\d+\] ')
_MAYBE_CPP_LOG = re.compile(rb'[IWEF](\d|$)')
# The fatal line JAX's client prints before it aborts the process over a coordination error.
_COORDINATION_FATAL = re.compile(rb'F\d{4} .*(distributed service|coordination service)')

_state = {'resume_dir': None, 'process': 0, 'processes': 1, 'timeout_s': TIMEOUT_S}
_ending = threading.Lock()  # held by whichever path ends the process first
_stop = threading.Event()  # set at exit: the watchdog's threads end before the interpreter does
_threads: list[threading.Thread] = []
STOP_WAIT_S = 10.0  # a beat is one key-value call to a live service: milliseconds


def timeout_s() -> int:
  value = os.environ.get(TIMEOUT_ENV, '').strip()
  if not value:
    return TIMEOUT_S
  if not value.isdigit() or int(value) < 3:
    errors.fail(f'{TIMEOUT_ENV}={value!r}: expected a whole number of seconds >= 3')
  return int(value)


def supervise(resume_dir: Optional[str] = None) -> None:
  """Runs this command again as a child process, waits for it and ends with its status.

  Returns at once in the child. The child's stdout is this process's; its stderr passes through
  line by line, except that C++ log lines are held for HOLD_S (with whatever follows them) and
  dropped with everything after them when JAX's client prints its fatal coordination error:
  that child then ends by SIGABRT, and this process prints the one lost-peer line (process 0
  when the child is another process: the coordination service is gone) and ends with status 3.
  SIGTERM is passed on to the child (a preemption; the child exits 3 after saving). SIGINT is
  not: a terminal sends it to the whole process group, the child included.

  `resume_dir`: as for `initialize`.
  """
  if os.environ.get(SUPERVISED_ENV):
    _state['report_fd'] = int(os.environ.pop(SUPERVISED_ENV))  # not for the child's children
    return
  read_fd, write_fd = os.pipe()
  child = subprocess.Popen([sys.executable, *sys.orig_argv[1:]], stderr=subprocess.PIPE,
                           env=dict(os.environ, **{SUPERVISED_ENV: str(write_fd)}),
                           pass_fds=(write_fd,), preexec_fn=_dies_with_parent())
  os.close(write_fd)
  signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
  signal.signal(signal.SIGINT, lambda signum, frame: None)
  fatal = []  # JAX's fatal coordination line, once seen
  pipe = threading.Thread(target=_pass_stderr, args=(child.stderr.fileno(), fatal), daemon=True)
  pipe.start()
  code = child.wait()
  pipe.join()
  if code >= 0 or not fatal:
    errors.exit_now(code if code >= 0 else 128 - code)  # as a shell reports a signal
  with os.fdopen(read_fd) as report:  # 'process processes', once initialised
    known = report.read().split()
  process, processes = (int(known[0]), int(known[1])) if len(known) == 2 else (
      int(os.environ.get('JAX_PROCESS_ID', '-1')), None)
  if process != 0:  # the service, hosted by process 0, is gone
    lost, why = [0], 'it ran the coordination service: killed, crashed or cut off'
  else:  # process 0's own service declared a peer lost before the watchdog did
    lost, why = [], 'reported by the coordination service'
  line = lost_peer_message(lost, processes, resume_step(resume_dir), why)
  errors.end_quietly(f'error: {line}', errors.EXIT_PREEMPTED)


def _dies_with_parent():
  """For Popen's preexec_fn: the child is killed (SIGKILL) when this process dies, as when a
  scheduler kills only the process it started; left running, it would hold its devices and
  train on alone until its peers' watchdogs end them. Linux only (prctl); None elsewhere."""
  if not sys.platform.startswith('linux'):
    return None
  import ctypes  # pylint: disable=g-import-not-at-top
  prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
  parent = os.getpid()

  def preexec():
    prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before that took effect
      os._exit(1)  # pylint: disable=protected-access

  return preexec


def _pass_stderr(fd: int, fatal: list) -> None:
  """Copies the child's stderr (`fd`) to ours, without the lines of a coordination abort.

  The abort's first lines (warnings and errors of failed RPCs) come just before its fatal
  line, so a C++ log line is held, with all that follows it, until HOLD_S pass without another.
  """
  buffer, held, hold_until, mid_line = b'', [], 0.0, False

  def emit(data: bytes) -> None:
    if not fatal and data:
      os.write(2, data)

  while True:
    if select.select([fd], [], [], HOLD_S / 4)[0]:
      chunk = os.read(fd, 1 << 16)
      if not chunk:
        break
      *lines, buffer = (buffer + chunk).split(b'\n')
      for line in lines:
        line, starts, mid_line = line + b'\n', not mid_line, False
        if starts and _COORDINATION_FATAL.match(line):
          fatal.append(line)  # the child is aborting: drop what is held and all that follows
        elif starts and _CPP_LOG.match(line):
          held.append(line)
          hold_until = time.monotonic() + HOLD_S
        elif held:
          held.append(line)
        else:
          emit(line)
      if buffer and not held and (mid_line or not _MAYBE_CPP_LOG.match(buffer)):
        emit(buffer)  # a progress bar's update (no newline yet) is shown at once
        buffer, mid_line = b'', True
    if held and time.monotonic() > hold_until:
      emit(b''.join(held))
      held.clear()
  emit(b''.join(held) + buffer)  # an end that is no coordination abort keeps its last lines


def initialize(resume_dir: Optional[str] = None) -> None:
  """jax.distributed.initialize, the communicators opened, and the lost-peer watchdog started.

  `resume_dir`: the training workdir whose last complete checkpoint the lost-peer line names
  (None outside training: the line then only says to re-run).
  """
  import jax  # pylint: disable=g-import-not-at-top
  env = os.environ
  timeout = timeout_s()
  kwargs = dict(heartbeat_timeout_seconds=max(100, 3 * timeout))  # JAX's verdict comes later
  if env.get('JAX_COORDINATOR_ADDRESS') and env.get('JAX_NUM_PROCESSES'):
    kwargs.update(coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
                  num_processes=int(env['JAX_NUM_PROCESSES']),
                  process_id=int(env.get('JAX_PROCESS_ID', '0')))
  # else SLURM, TPU pods, ...: JAX detects the cluster itself.
  jax.distributed.initialize(**kwargs)
  _state.update(resume_dir=resume_dir, process=jax.process_index(),
                processes=jax.process_count(), timeout_s=timeout)
  if _state.get('report_fd') is not None:  # tell `supervise` who this process is
    os.write(_state['report_fd'], f'{jax.process_index()} {jax.process_count()}\n'.encode())
    os.close(_state.pop('report_fd'))
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client  # the coordination service's key-value store
  _state['client'] = client
  _start_thread(_watch, client, name='dapt_jax-peers')
  atexit.register(stop_watchdog)  # runs before JAX's own exit hooks (registered earlier)
  # Open the cross-process communicators now, while the processes are in step: CPU hosts'
  # collectives (gloo) fail when processes first reach one more than 30 s apart, as happens when
  # one compiles slower. One device per process (checkpoint barriers), then every device (steps).
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices('dapt_jax: processes up')
  jax.pmap(lambda x: jax.lax.psum(x, 'all'), axis_name='all')(
      jax.numpy.ones(jax.local_device_count())).block_until_ready()


def _start_thread(target, *args, name: str) -> None:
  thread = threading.Thread(target=target, args=args, name=name, daemon=True)
  _threads.append(thread)
  thread.start()


def stop_watchdog() -> None:
  """Ends the watchdog's threads and waits for them (at exit, before JAX shuts down).

  They must not be left to the interpreter's end: Python ends a daemon thread that is inside a
  C++ call (a key-value request) by unwinding its stack when the call returns, which the C++
  frames do not allow, and the process then aborts (status 134) after a run that succeeded.
  """
  _stop.set()
  deadline = time.monotonic() + STOP_WAIT_S
  for thread in _threads:
    if thread is not threading.current_thread():
      thread.join(timeout=max(0.0, deadline - time.monotonic()))
  if _state.get('ended') and _state.get('client') is not None:
    try:  # after the beats: nothing overwrites it
      _state['client'].key_value_set(f"{_KEY}{_state['process']}", _ENDED, allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass  # the service is gone: every process is ending anyway


def mark_ended() -> None:
  """This process ends normally: at exit its last beat says so, and its peers stop watching
  it. Without it, a peer still finishing its own work (process 0 draws the curves, writes the
  summary) would take this one's silence after `timeout_s` for a lost process. A process that
  ends by an error does not call it: its peers then report it lost, as they should."""
  _state['ended'] = True


def _watch(client) -> None:
  """Beats this process's counter; ends the process when a peer's stays still for timeout_s."""
  me, n, timeout = _state['process'], _state['processes'], _state['timeout_s']
  seen = {p: (None, time.monotonic()) for p in range(n) if p != me}  # last value, when it moved
  answered = [time.monotonic()]  # when the coordination service last answered

  def beat():
    count = 0
    while not _stop.is_set():
      count += 1
      client.key_value_set(f'{_KEY}{me}', str(count), allow_overwrite=True)
      for p, (value, since) in list(seen.items()):
        try:
          new = client.key_value_try_get(f'{_KEY}{p}')
        except Exception:  # pylint: disable=broad-except
          new = None  # not beating yet
        if new == _ENDED:
          seen.pop(p)  # it ended normally: never lost
        elif new != value:
          seen[p] = (new, time.monotonic())
      answered[0] = time.monotonic()
      _stop.wait(BEAT_S)

  def beat_until_it_fails():
    try:
      beat()
    except Exception:  # pylint: disable=broad-except
      pass  # the service is unreachable: `answered` stops moving

  _start_thread(beat_until_it_fails, name='dapt_jax-beat')
  while not _stop.wait(BEAT_S / 2):
    now = time.monotonic()
    lost = sorted(p for p, (_, since) in seen.items() if now - since > timeout)
    if now - answered[0] > timeout:  # the service, hosted by process 0, no longer answers
      lost = sorted(set(lost) | ({0} - {me}))
    if lost:
      _end_lost(lost)


def resume_step(workdir: Optional[str]) -> Optional[int]:
  """The step of `workdir`'s last complete checkpoint (0 if none); None without a workdir."""
  if not workdir:
    return None
  last = os.path.join(workdir, 'checkpoints', 'last')
  steps = [int(s) for s in os.listdir(last) if s.isdigit()] if os.path.isdir(last) else []
  return max(steps, default=0)  # a save in progress is still a temporary folder


def lost_peer_message(lost: list[int], processes: Optional[int], step: Optional[int],
                      why: Optional[str] = None) -> str:
  """'lost process 1 of 2 (why); re-run ... to resume from step N' (`processes` None: unknown)."""
  who = (f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))}" if lost
         else 'a peer process')
  why = why or f'no sign of life for {_state["timeout_s"]} s: killed, crashed or cut off'
  rerun = 're-run the same command on every host'
  return (f'lost {who}{f" of {processes}" if processes else ""} ({why}); '
          + (f'{rerun} to resume from step {step}' if step is not None else rerun))


def _end_lost(lost: list[int]) -> None:
  """One line, then exit status 3 (from the watchdog thread)."""
  if not _ending.acquire(blocking=False):
    return  # the main thread is already ending the process with its own message
  try:
    errors.mute_other_threads()
    line = lost_peer_message(lost, _state['processes'], resume_step(_state['resume_dir']))
  except BaseException:  # pylint: disable=broad-except
    line = lost_peer_message(lost, _state['processes'], None)
  errors.end_quietly(f'error: {line}', errors.EXIT_PREEMPTED)


def hold_if_peer_lost(exc: BaseException) -> None:
  """In a multi-process run, lets a lost peer explain the exception that ended the main thread.

  A collective that a lost peer no longer joins fails (or blocks) before the watchdog is sure
  the peer is lost; the watchdog then ends the process. Until then nothing else is printed (no
  traceback, no C++ error lines). Returns at once in a one-process run and for a user error (the
  caller reports it; a lost-peer report stays silent from then on); otherwise once the watchdog
  has had its time, when no peer was lost and the exception is the program's own.
  """
  if _state['processes'] <= 1:
    return
  if isinstance(exc, (errors.UserError, KeyboardInterrupt)):
    if not _ending.acquire(blocking=False):  # a lost-peer report is ending the process
      time.sleep(60)
    return
  import jax  # pylint: disable=g-import-not-at-top
  unmute = errors.mute_other_threads()
  jax.config.update('jax_logging_level', 'CRITICAL')  # the C++ runtime's error lines too
  deadline = time.monotonic() + _state['timeout_s'] + 5 * BEAT_S
  while time.monotonic() < deadline and not _ending.locked():
    time.sleep(0.2)
  if _ending.locked():  # the watchdog is ending the process
    time.sleep(60)
  unmute()
