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

Not covered: when process 0 itself dies, JAX's client in every other process ends the process
(SIGABRT) as soon as the connection to the coordination service breaks, before Python can act.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

from dapt_jax import errors

TIMEOUT_ENV = 'DAPT_JAX_PEER_TIMEOUT_S'  # seconds without a peer's beat before it is lost
TIMEOUT_S = 60  # a beat needs the GIL: room for a long call that holds it, well under 2 min
BEAT_S = 1.0
_KEY = 'dapt_jax/beat/'

_state = {'resume_dir': None, 'process': 0, 'processes': 1, 'timeout_s': TIMEOUT_S}
_ending = threading.Lock()  # held by whichever path ends the process first


def timeout_s() -> int:
  value = os.environ.get(TIMEOUT_ENV, '').strip()
  if not value:
    return TIMEOUT_S
  if not value.isdigit() or int(value) < 3:
    errors.fail(f'{TIMEOUT_ENV}={value!r}: expected a whole number of seconds >= 3')
  return int(value)


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
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  client = distributed.global_state.client  # the coordination service's key-value store
  threading.Thread(target=_watch, args=(client,), name='dapt_jax-peers', daemon=True).start()
  # Open the cross-process communicators now, while the processes are in step: CPU hosts'
  # collectives (gloo) fail when processes first reach one more than 30 s apart, as happens when
  # one compiles slower. One device per process (checkpoint barriers), then every device (steps).
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  multihost_utils.sync_global_devices('dapt_jax: processes up')
  jax.pmap(lambda x: jax.lax.psum(x, 'all'), axis_name='all')(
      jax.numpy.ones(jax.local_device_count())).block_until_ready()


def _watch(client) -> None:
  """Beats this process's counter; ends the process when a peer's stays still for timeout_s."""
  me, n, timeout = _state['process'], _state['processes'], _state['timeout_s']
  seen = {p: (None, time.monotonic()) for p in range(n) if p != me}  # last value, when it moved
  answered = [time.monotonic()]  # when the coordination service last answered

  def beat():
    count = 0
    while True:
      count += 1
      client.key_value_set(f'{_KEY}{me}', str(count), allow_overwrite=True)
      for p, (value, since) in list(seen.items()):
        try:
          new = client.key_value_try_get(f'{_KEY}{p}')
        except Exception:  # pylint: disable=broad-except
          new = None  # not beating yet
        if new != value:
          seen[p] = (new, time.monotonic())
      answered[0] = time.monotonic()
      time.sleep(BEAT_S)

  def beat_until_it_fails():
    try:
      beat()
    except Exception:  # pylint: disable=broad-except
      pass  # the service is unreachable: `answered` stops moving

  threading.Thread(target=beat_until_it_fails, name='dapt_jax-beat', daemon=True).start()
  while True:
    time.sleep(BEAT_S / 2)
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


def lost_peer_message(lost: list[int], processes: int, step: Optional[int]) -> str:
  who = (f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))}" if lost
         else 'a peer process')
  rerun = 're-run the same command on every host'
  return (f'lost {who} of {processes} (no sign of life for {_state["timeout_s"]} s: killed, '
          f'crashed or cut off); '
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
