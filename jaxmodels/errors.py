"""User-facing error types. Each carries one line: what is wrong and what to do.

`USER_ERRORS` is what the experiment CLI turns into a one-line message and a
non-zero exit instead of a traceback.
"""
from jaxmodels.data.errors import DataError, DataUnavailableError


class ConfigError(ValueError):
  """A config key that does not exist or a value that is out of range."""


class InputError(ValueError):
  """A batch or array whose shape, dtype or values do not fit the model."""


USER_ERRORS = (ConfigError, InputError, DataError)

__all__ = ['ConfigError', 'InputError', 'DataError', 'DataUnavailableError', 'USER_ERRORS']
