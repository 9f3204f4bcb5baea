"""Test set-up: 8 forced CPU devices for the multi-device tests (set before JAX is imported),
the repository root on sys.path, and the shared sample data location."""
import os
import pathlib
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))

# Real sample data lives beside the checkout; tests that need it skip when it is absent.
SHARED_DATA = ROOT.parent / 'shared' / 'data'
