"""Errors raised for bad input: one line that says what is wrong and what to do.

`UserError.key` names the config field (or 'workdir') whose value fixes the
problem, when there is one; the command line turns it into the flag to pass.
Library messages speak of config keys (`data.local_dir`), never of flags.
"""


class UserError(ValueError):
  """Bad input from the user: a value, a file or a directory that cannot work."""

  def __init__(self, message: str, *, key: str | None = None):
    super().__init__(message)
    self.key = key


class DataError(UserError):
  """Data that is missing, malformed or inconsistent (wrong shape, labels out of range)."""


class DataUnavailableError(DataError):
  """A dataset that can be neither found locally nor downloaded."""


def one_line(error, limit: int = 200) -> str:
  """`error` as one line of at most `limit` characters, for embedding."""
  return ' '.join(str(error).split())[:limit]
