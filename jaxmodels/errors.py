"""User-facing error types. Each carries one line: what is wrong and what to do.

`USER_ERRORS` is what the experiment CLI turns into a one-line message and exit
code 2 instead of a traceback; their `key` (a config key, or 'workdir') becomes
the flag to change.
"""


class UserError(ValueError):
  """Bad input from the user: a value, a file or a directory that cannot work.

  `key` names the config field (or 'workdir') whose value fixes the problem, when there
  is one; the command line turns it into the flag to pass. Library messages speak of
  config keys (`data.local_dir`), never of flags.
  """

  def __init__(self, message: str, *, key: str | None = None):
    super().__init__(message)
    self.key = key


class DataError(UserError):
  """Data that is missing, malformed or inconsistent (wrong shape, labels out of range)."""


class DataUnavailableError(DataError):
  """A dataset that can be neither found locally nor downloaded."""


class ConfigError(UserError):
  """A config key that does not exist or a value that is out of range."""


class InputError(UserError):
  """A batch or array whose shape, dtype or values do not fit the model."""


class CheckpointError(UserError):
  """A checkpoint that does not fit this run (other model or config) or cannot be read."""


class NonFiniteError(FloatingPointError):
  """The loss or gradient norm became NaN/inf; `step` is the first bad step when known."""

  def __init__(self, message: str, step: int | None = None):
    super().__init__(message)
    self.step = step


class Preempted(Exception):  # noqa: N818 - a signal, not a failure.
  """SIGTERM/SIGINT (or a pod preemption notice) stopped the run after saving at `step`."""

  def __init__(self, step: int):
    super().__init__(f'preempted: saved a checkpoint at step {step}, which a run in the same '
                     'workdir resumes from')
    self.step = step


USER_ERRORS = (UserError,)


def one_line(error, limit: int = 200) -> str:
  """`error` as one line of at most `limit` characters, for embedding in another message."""
  return ' '.join(str(error).split())[:limit]

__all__ = ['UserError', 'ConfigError', 'InputError', 'DataError', 'DataUnavailableError',
           'CheckpointError', 'NonFiniteError', 'Preempted', 'USER_ERRORS', 'one_line']
