"""Errors raised by the data layer: one line that says what is wrong and what to do."""


class DataError(ValueError):
  """Data that is missing, malformed or inconsistent (wrong shape, labels out of range)."""


class DataUnavailableError(DataError):
  """A dataset that can be neither found locally nor downloaded."""


def one_line(error, limit: int = 200) -> str:
  """`error` as one line of at most `limit` characters, for embedding."""
  return ' '.join(str(error).split())[:limit]
