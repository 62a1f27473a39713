"""JAX's persistent compilation cache: compiled programs are written to disk and reused by
later processes, so a second run of the same experiment skips most of its compile time."""
import os

import jax

ENV_VAR = 'JAXMODELS_COMPILATION_CACHE'
DEFAULT_DIR = os.path.join('~', '.cache', 'jaxmodels', 'xla')


def enable_compilation_cache(directory: str | None = None) -> str | None:
  """Turns the cache on in `directory` and returns it, or returns None when turned off.

  directory: None means ${JAXMODELS_COMPILATION_CACHE}, else JAX's own
  JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/jaxmodels/xla. '' or 'off'
  turns the cache off. Every program is cached, however quick its compile: the
  small ones add up to most of a CPU run's start-up.
  """
  if directory is None:
    directory = os.environ.get(ENV_VAR, jax.config.jax_compilation_cache_dir or DEFAULT_DIR)
  if directory in ('', 'off'):
    return None
  directory = os.path.expanduser(directory)
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory
