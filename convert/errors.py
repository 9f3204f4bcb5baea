"""Errors the converter reports to its user as one line each."""
from dapt_jax.errors import UserError


class ConvertError(UserError):
  """A user-facing conversion failure; the message is one line, no traceback."""


class UnsafeCheckpointError(ConvertError):
  """The file's pickle asks for something other than tensors and plain containers."""
