"""The one exception the data pipeline raises for bad or missing input."""
from __future__ import annotations

from dapt_jax.errors import UserError


class DataError(UserError, ValueError):
  """Missing, malformed or inconsistent dataset files.

  The message is one line that names the file (or config field) and the problem, so a command-line
  entry point can print it and exit non-zero before any training starts.
  """
