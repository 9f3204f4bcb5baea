"""The one exception type for user mistakes (bad config, file, flag): entry points print its
message as a single `error: ...` line and exit with status 2."""


class UserError(Exception):
  """A mistake the user can fix; the message is one line naming the field or file."""
