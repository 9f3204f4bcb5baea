"""Process memory: peak RSS (cumulative over the process, hence one configuration per child)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys


def peak_rss_bytes() -> int:
  """The process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == 'darwin' else peak * 1024)


def available_bytes() -> int:
  """MemAvailable from /proc/meminfo (Linux); physical memory elsewhere."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def _status_kib(field: str) -> int | None:
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except OSError:
    pass
  return None


def reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark (Linux: `5` to /proc/self/clear_refs), so that what
  follows (training) is measured apart from what came before (XLA's compiler). False where the
  platform cannot; the peak then stays cumulative."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
  except OSError:
    return False
  return _status_kib('VmHWM') is not None


def peak_rss_since_reset_bytes() -> int:
  """VmHWM (peak RSS since the last reset) where the kernel reports it; else ru_maxrss."""
  kib = _status_kib('VmHWM')
  return kib * 1024 if kib is not None else peak_rss_bytes()


def release_free_heap() -> bool:
  """Returns the C heap's free pages to the kernel (glibc `malloc_trim(0)`); False elsewhere.

  XLA's compiler frees about a gigabyte of host memory after compiling the full-size step, but
  glibc keeps it mapped: without this, that compiler memory is counted in the RSS of every
  training step that follows (it was, in the first benchmark's JAX figures).
  """
  name = ctypes.util.find_library('c')
  if not name:
    return False
  try:
    return bool(ctypes.CDLL(name).malloc_trim(0) or True)
  except (OSError, AttributeError):
    return False


def current_rss_bytes() -> int | None:
  kib = _status_kib('VmRSS')
  return kib * 1024 if kib is not None else None
